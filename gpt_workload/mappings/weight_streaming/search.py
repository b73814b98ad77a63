"""``pes_per_segment=auto`` / ``tokens_per_segment=auto``: the layout search of the default
weight-streaming mapping.

The segment width ``P`` trades weight delivery against everything else. Distinct weights
enter over the segment's ``P`` columns (:func:`gpt_workload.mappings.weight_streaming.head_split.
weight_entry_bytes_per_s`), so a narrow segment starves an I/O-bound run; a wide one splits
heads over PEs (shorter vector ops and a score all-reduce in attention), holds fewer
segments per grid row (longer segments ``m``, so longer partial-sum reductions), and may need
more micro-batches. None of these terms dominates everywhere (a batch of one is I/O-bound,
the default batch of 120 x 2048 tokens is compute-bound), so no closed form ranks them; the
search simply times the candidates with the ``analytic`` backend (microseconds per kernel,
the same closed forms the event backend refines) and keeps the fastest:

* ``P``: every allowed value
(:func:`gpt_workload.mappings.weight_streaming.head_split.allowed_pes_per_segment`), or
  the given one;
* ``m``: for each ``P``, the widest spread the grid allows (``m_0``, the layout's own
  choice), then ``2 m_0, 4 m_0, ...`` while the time keeps falling (fewer, longer
  segments: fewer K/V blocks and vector ops per pair in attention, more idle PEs); or the
  given one.

Candidates that do not fit (:class:`wse_sim.errors.FitError`) are skipped. The layout's own
choice (``P`` = ``n_head`` or its largest divisor the grid fits, ``m_0``;
:func:`gpt_workload.mappings.weight_streaming.plan.choose_P`) is kept unless another candidate is
faster by more
than :data:`KEEP_WITHIN` (1 %): the three backends agree to fractions of a percent, so a
smaller gain is inside the model's own spread and not worth a different layout (and the
numerics of a run do not change on a rounding of the cost model). Other ties go to the
narrower segment. Results are cached per (model, arch, workload, precision, fixed knobs), so
``auto`` (which lowers its winner again) does not search twice. The search reads the arch's
I/O and clock fields (through the timing), so the layout, and the Program, depend on them: a
sweep over ``io.ingress_bytes_per_s`` lowers again where the search's reads differ
(:mod:`gpt_workload.sweep.cache` derives its key from the reads).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt_workload.mappings.weight_streaming.head_split import (
    allowed_pes_per_segment,
    check_pes_per_segment,
)
from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError, FitError

__all__ = ["LayoutChoice", "search_layout"]

#: relative gain below which the layout's own choice is kept
KEEP_WITHIN = 0.01

_CACHE: dict = {}
_CACHE_MAX = 64


@dataclass(frozen=True)
class LayoutChoice:
    """The searched layout.

    Attributes:
        P: PEs per segment; m: tokens per segment.
        analytic_s: its simulated time (``analytic``), seconds.
        tried: ``(P, m, seconds or None if it did not fit)`` for every candidate, in order.
    """

    P: int
    m: int
    analytic_s: float
    tried: tuple[tuple[int, int | None, float | None], ...]

    def describe(self) -> dict:
        """JSON-safe summary for ``Program.layout.search["layout_search"]``."""
        return {
            "pes_per_segment": self.P,
            "tokens_per_segment": self.m,
            "analytic_s": self.analytic_s,
            "candidates": len(self.tried),
            "fitted": sum(1 for t in self.tried if t[2] is not None),
        }


def search_layout(lower, cfg, arch, batch: int, seq_len: int, precision: str, *, P=None,
                  m=None, key=None) -> LayoutChoice:  # fmt: skip
    """The fastest ``(P, m)`` by ``analytic`` time (module docstring).

    Args:
        lower: ``lower(P, m) -> Program`` (the mapping's lowering at that layout).
        cfg, arch, batch, seq_len, precision: the run.
        P, m: fixed values (None: searched).
        key: hashable identity of ``lower`` for the cache (None: no caching).

    Raises:
        ConfigError: a fixed ``P`` that is not allowed; bad batch or seq_len (from the
            lowering).
        FitError: no candidate fits (the last candidate's reason).
    """
    from gpt_workload.mappings.weight_streaming.plan import choose_P
    from wse_sim.timing.analytic import analytic_total_s

    cols = arch.wafer.cols
    if P is not None:
        check_pes_per_segment(cfg, cols, P)
    if m is not None and not 1 <= m <= seq_len:
        raise ConfigError(f"tokens_per_segment={m} must be in 1..{seq_len} (seq_len)")
    # only a plain ArchConfig keys the cache: a recording view of one (the sweep's lowering
    # cache, :mod:`gpt_workload.sweep.cache`) must see every read the search makes
    plain = type(arch) is ArchConfig
    ck = (key, repr(cfg), repr(arch), batch, seq_len, precision, P, m)
    ck = ck if key is not None and plain else None
    if ck is not None and ck in _CACHE:
        return _CACHE[ck]
    tried: list = []
    best = None
    last_err: Exception | None = None
    for p in [P] if P is not None else allowed_pes_per_segment(cfg, cols):
        ms = [m] if m is not None else [None]
        prev = None
        while ms:
            mm = ms.pop()
            try:
                prog = lower(p, mm)
            except FitError as e:
                tried.append((p, mm, None))
                last_err = e
                break
            t = analytic_total_s(prog, arch)  # run_analytic(prog, arch).total_s
            got = prog.layout.tokens_per_segment
            tried.append((p, got, t))
            if best is None or t < best[2]:
                best = (p, got, t)
            # longer segments while the time keeps falling
            if m is None and (prev is None or t < prev) and got * 2 <= seq_len:
                prev = t
                ms.append(got * 2)
    if best is None:
        raise last_err or FitError("no weight-streaming layout fits")  # pragma: no cover
    # the layout's own choice (first m tried at its P), unless beaten by more than 1 %
    p0 = P if P is not None else choose_P(cfg, cols)
    own = next((t for t in tried if t[0] == p0 and t[2] is not None), None)
    if own is not None and (m is None or own[1] == m) and best[2] > own[2] * (1 - KEEP_WITHIN):
        best = own
    out = LayoutChoice(best[0], best[1], best[2], tuple(tried))
    if ck is not None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[ck] = out
    return out
