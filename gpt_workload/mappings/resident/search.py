"""Choosing the decode region and all-reduce by the simulator's own analytic step time.

WaferLLM picks its decode core counts by offline autotuning (He et al., OSDI 2025, section
4.4; decode grids of 240^2 to 720^2 in its repository, 360^2 for Llama-3-8B). Here the
candidates are the whole-grid layout and square regions of side ``P`` (multiples of
:data:`COARSE_STEP` up to the grid's shorter side, and that side; then the multiples of
:data:`SIDE_STEP` within ``COARSE_STEP`` of the best of those), each with the binary-tree
and the K-tree all-reduce (or only the ones asked for); every candidate whose weights, K/V
cache and buffers fit the SRAM (:func:`~gpt_workload.mappings.resident.layout.make_layout`)
is timed by the ``analytic`` backend on one decode step of ``batch`` requests at
``max_context`` (:class:`gpt_workload.generation.timing.StepTimer`), and the fastest wins
(the first of equal times, in candidate order). Nothing is fitted to a measurement.
"""

from __future__ import annotations

__all__ = ["COARSE_STEP", "SIDE_STEP", "candidate_sides", "search_layout"]

#: Step between the region sides of the first pass, and of the refinement around its best.
COARSE_STEP, SIDE_STEP = 32, 8


def candidate_sides(arch, near: int | None = None) -> list[int]:
    """Region sides tried: multiples of :data:`COARSE_STEP` up to the grid's shorter side
    and that side itself; with ``near``, the multiples of :data:`SIDE_STEP` less than
    ``COARSE_STEP`` away from it (within the grid)."""
    side = min(arch.wafer.rows, arch.wafer.cols)
    if near is None:
        return sorted(set(range(COARSE_STEP, side + 1, COARSE_STEP)) | {side})
    lo, hi = max(near - COARSE_STEP + 1, SIDE_STEP), min(near + COARSE_STEP - 1, side)
    return [p for p in range(lo, hi + 1) if p % SIDE_STEP == 0]


def search_layout(cfg, arch, *, precision, placement, systems, batch, max_context, gemv,
                  reduce, region, ktree_k):  # fmt: skip
    """The fastest fitting layout among the candidates (module docstring) and the table of
    what was tried: ``[{"region": P or 0, "reduce", "step_s" or None (does not fit)}]``.

    ``systems="auto"`` takes the fewest systems the whole-grid layout fits; the search then
    runs at that count.

    Raises:
        FitError: no candidate fits (the whole-grid layout's message: bytes short, systems
            needed); ConfigError: bad knobs (from :func:`make_layout`).
    """
    from gpt_workload.generation.timing import StepTimer
    from gpt_workload.mappings.resident.layout import _build, make_layout

    fixed = dict(precision=precision, placement=placement, batch=batch,
                 max_context=max_context, gemv=gemv, ktree_k=ktree_k)  # fmt: skip
    if systems == "auto":
        systems = make_layout(cfg, arch, systems="auto", reduce="tree", region=0,
                              **fixed).systems  # fmt: skip
    regions = [0] + candidate_sides(arch) if region == "auto" else [region]
    reduces = ("tree", "ktree") if reduce == "auto" else (reduce,)
    tried, best = [], None

    def candidates():
        yield from ((r, red) for r in regions for red in reduces)
        if region == "auto" and best is not None and best[1].region:
            done = {(t["region"], t["reduce"]) for t in tried}
            for r in candidate_sides(arch, near=best[1].region):
                yield from ((r, red) for red in reduces if (r, red) not in done)

    for r, red in candidates():
        lay = _build(cfg, arch, precision, placement, systems, batch, max_context, gemv, red,
                     r, ktree_k)  # fmt: skip
        if lay.worst_sram()["free"] < 0:
            tried.append({"region": r, "reduce": red, "step_s": None})
            continue
        t = StepTimer(lay, "analytic").decode_step([max_context] * batch)[0]
        tried.append({"region": r, "reduce": red, "step_s": t})
        if best is None or t < best[0]:
            best = (t, lay)
    if best is None:  # make_layout names the bytes short and the systems needed
        lay = make_layout(cfg, arch, systems=systems, reduce=reduces[0], region=regions[0],
                          **fixed)  # fmt: skip
        return lay, tried
    best[1].search = tried
    return best[1], tried
