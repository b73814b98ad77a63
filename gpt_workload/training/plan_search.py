"""The step plan of a training run: the fastest plan that fits, searched by simulated time.

A weight-streaming compiler chooses how one system's share of the batch runs: the segment
width ``P`` (PEs per segment, :func:`gpt_workload.mappings.weight_streaming.head_split.allowed_pes_per_segment`), the
micro-batch size (each micro-batch streams every weight again) and where the activations
live (``store``, ``recompute``, ``offload``: :mod:`gpt_workload.training.lowering`). The
plan that merely *fits* with the fewest micro-batches
(:func:`gpt_workload.training.lowering.plan_training`) is not the fastest in general:

* **The segment width sets how much of the wafer works.** A micro-batch of ``b`` sequences
  is cut into ``q`` segments of ``m`` tokens each, and ``b q`` segments of ``P`` PEs must fit
  the grid's ``rows x floor(cols / P)`` slots; ``m`` is an integer, so the segments fill the
  grid only where ``b ceil(T / m)`` lands close to the slot count. GPT-J 6B on a CS-3
  (``T1``: 2 micro-batches of 60 x 2,048 tokens): at ``P = 16`` (one head per PE) ``m = 3``
  gives 40,980 of 54,990 slots, 74 % of the PEs; at ``P = 32`` (each head on 2 PEs,
  :mod:`gpt_workload.mappings.weight_streaming.head_split`) ``m = 5`` gives 24,600 of 26,910, 89 %. Every GEMM's
  time is its per-PE work, so the step follows the busy fraction of the wafer (3.38 s vs
  2.79 s). The published layout ties the hidden split to nothing but the wafer
  (``shared/reference/wafer_mappings.md`` section 3: hidden along x, batch x sequence along
  y), so the compiler is free to pick ``P``.
* **More micro-batches can fill the grid better** (a smaller ``b`` with a smaller ``m``), at
  the price of streaming the weights once more per micro-batch;
* **Recomputation against checkpoint offload**: both fit where ``store`` does not; offload
  frees SRAM for longer GEMM accumulator chunks and costs I/O that may or may not hide.

None of these terms dominates everywhere, so the search times the candidates with the
``analytic`` backend (the whole step: micro-batches, weight and checkpoint streams, gradient
egress, optimizer; the closed forms the ``event`` backend refines) and keeps the fastest,
as :mod:`gpt_workload.mappings.weight_streaming.search` does for the forward layout:

* ``P``: every allowed width;
* policies: every one the ``checkpoint_offload`` choice allows
  (:data:`gpt_workload.training.lowering.OFFLOAD_CHOICES`);
* micro-batches: for each ``P`` and policy, from the fewest whose SRAM need fits
  (:func:`gpt_workload.training.lowering.policy_needs`; ``store`` usually needs many more
  than ``recompute``, which needs more than ``offload``) up to twice as many, keeping only
  counts whose main micro-batch occupies more PEs than every smaller count did (another
  count re-streams the weights for nothing).

Candidates are timed in increasing order of a lower bound on their step time (the model's
``3 x forward`` FLOPs, plus the recomputed forward, spread over the PEs the layout keeps
busy at the per-PE peak; and the weight and checkpoint bytes over the I/O); the search
stops when the next bound is no better than the best time, so it finds the fastest
candidate without timing all of them. Ties within :data:`KEEP_WITHIN` go to the plan that
fits with the fewest micro-batches (``plan_training``'s, at the layout's own ``P``):
the backends agree to fractions of a percent, so a smaller gain is not a reason to change
the plan. Results are cached per (model, arch, workload, precision, systems, choice).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from gpt_workload.mappings.weight_streaming.head_split import allowed_pes_per_segment
from gpt_workload.mappings.weight_streaming.plan import _block_bytes, plan_layout
from gpt_workload.models import build_graph
from gpt_workload.precision import bytes_per_element
from gpt_workload.training.lowering import (
    OFFLOAD_CHOICES,
    TrainingPlan,
    _held,
    check_offload,
    plan_training,
    policy_needs,
)
from wse_sim.arch import ArchConfig
from wse_sim.errors import FitError

__all__ = ["KEEP_WITHIN", "PlanChoice", "candidate_plans", "search_training_plan"]

#: relative gain below which the fewest-micro-batch plan at the layout's own ``P`` is kept
KEEP_WITHIN = 0.01
#: the micro-batch counts tried at a ``P`` go up to this many times the fewest that fit
MAX_MICRO_FACTOR = 2

_CACHE: dict = {}
_CACHE_MAX = 32


@dataclass(frozen=True)
class PlanChoice:
    """The searched plan.

    Attributes:
        plan: the fastest :class:`TrainingPlan` (its ``search`` field summarises the search).
        analytic_s: its step time by the ``analytic`` backend, seconds.
        tried: ``(P, micro-batches, policy, seconds or None if pruned)`` per candidate.
    """

    plan: TrainingPlan
    analytic_s: float
    tried: tuple[tuple[int, int, str, float | None], ...]


def _with(base: TrainingPlan, cfg, batch: int, n: int, policy: str, mode: str) -> TrainingPlan:
    """``base`` (a one-micro-batch plan of ``ceil(batch / n)`` sequences) run ``n`` times
    for ``batch`` sequences under ``policy``."""
    b = base.layout.b
    return dataclasses.replace(
        base, batch=batch, n_micro=n, b_last=batch - (n - 1) * b, policy=policy,
        sram_need_bytes=base.needs[policy], stored_bytes_per_pe=_held(cfg, base.memory, policy),
        checkpoint_offload=mode,
    )  # fmt: skip


def candidate_plans(cfg, arch: ArchConfig, batch: int, seq_len: int, precision: str,
                    checkpoint_offload: str = "auto") -> list[TrainingPlan]:  # fmt: skip
    """Every candidate plan of the search (module docstring), the fewest-micro-batch plan at
    the layout's own ``P`` first (when it fits; else the first candidate that does).

    Raises:
        ConfigError: bad batch, seq_len or checkpoint_offload. FitError: no plan fits at any
            ``P`` (the reason at the layout's own ``P``).
    """
    allowed = OFFLOAD_CHOICES[check_offload(checkpoint_offload)]
    usable = arch.pe.sram_usable_bytes
    s = bytes_per_element(precision)
    own = own_error = None
    try:
        own = plan_training(cfg, arch, batch, seq_len, precision, checkpoint_offload)
    except FitError as exc:  # another width may fit
        own_error = exc
    out = [own] if own else []
    for P in allowed_pes_per_segment(cfg, arch.wafer.cols):
        try:
            p0 = own if own and P == own.layout.P else plan_training(
                cfg, arch, batch, seq_len, precision, checkpoint_offload, P=P)  # fmt: skip
        except FitError:
            continue
        if p0.passes > 1:  # a split sequence: one pass per micro-batch, nothing to vary
            out += [dataclasses.replace(p0, policy=p, sram_need_bytes=p0.needs[p],
                                        stored_bytes_per_pe=_held(cfg, p0.memory, p))
                    for p in allowed if p0.needs[p] <= usable]  # fmt: skip
            continue

        def fits(n: int, policy: str, P=P) -> bool:
            L = plan_layout(cfg, arch, math.ceil(batch / n), seq_len, precision, P=P)
            return L.n_micro == 1 and policy_needs(cfg, arch, L, s)[0][policy] <= usable

        for policy in allowed:
            if not fits(batch, policy):
                continue
            lo, hi = p0.n_micro - 1, batch  # the fewest micro-batches that fit this policy
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if fits(mid, policy) else (mid, hi)
            busy = 0
            for n in range(hi, min(batch, MAX_MICRO_FACTOR * hi) + 1):
                b = math.ceil(batch / n)
                if math.ceil(batch / b) != n:  # the same micro-batch size as a smaller n
                    continue
                L = plan_layout(cfg, arch, b, seq_len, precision, P=P)
                if L.n_active_pe <= busy or not fits(n, policy):
                    continue
                busy = L.n_active_pe
                base = plan_training(cfg, arch, b, seq_len, precision, checkpoint_offload, P=P)
                out.append(_with(base, cfg, batch, n, policy, checkpoint_offload))
    if not out:
        raise own_error
    # the own plan appears again among the P = p_own candidates: keep its first copy
    seen, uniq = set(), []
    for p in out:
        key = (p.layout.P, p.n_micro, p.policy, p.passes)
        if key not in seen:
            seen.add(key)
            uniq.append(p)
    return uniq


def lower_bound_s(cfg, arch: ArchConfig, plan: TrainingPlan, precision: str,
                  systems: int = 1) -> float:  # fmt: skip
    """A lower bound on the step time of ``plan`` (seconds), no lowering needed.

    Compute: the training FLOPs (``3 x`` the forward's matrix FLOPs of the plan's tokens,
    plus the layers' forward again when the policy recomputes) of each micro-batch over the
    PEs its layout keeps busy, at the per-PE peak (``2 x fmac_per_cycle x clock``);
    every kernel takes at least its average PE's work; plus, per micro-batch, the add of
    the partial weight gradient arriving down the column to every PE's own (``ceil(K / P)
    x N`` elements per linear, whatever the tokens per segment:
    :meth:`gpt_workload.training.bwd_kernels.BwdKernels.dw`). I/O: the layer weights streamed twice
    per micro-batch (forward and backward) plus the checkpoints streamed back in, over
    ``io.ingress_bytes_per_s``.
    """
    g = build_graph(cfg)
    T = plan.pass_tokens or plan.seq_len
    fwd = g.forward_flops(1, T)["matrix"]  # one sequence (or pass) of T tokens
    head = sum(g.flops(op, 1, T)[0] for op in g.epilogue)
    rec = plan.policy in ("recompute", "offload")
    per_seq = 3 * fwd + (fwd - head if rec else 0)
    pe = arch.pe
    per_pe = 2 * pe.fmac_per_cycle(precision) * pe.clock_hz
    L = plan.layout
    last = L.n_active_pe  # the last micro-batch may be smaller, spread over more PEs
    if plan.b_last != L.b:
        last = plan_layout(cfg, arch, plan.b_last, T, precision, P=L.P).n_active_pe
    compute = per_seq * ((plan.n_micro - 1) * L.b / L.n_active_pe + plan.b_last / last) / per_pe
    dims = g.dims
    adds = sum(math.ceil(dims[op.attrs["n_in"]] / L.P) * dims[op.attrs["n_out"]]
               for op in (*g.layer * cfg.n_layer, *g.epilogue) if op.kind in ("linear", "lm_head"))
    compute += plan.n_micro * adds / (per_pe / 2)  # fmt: skip
    s = bytes_per_element(precision)
    layers = _block_bytes(cfg, s, T)[1] * cfg.n_layer
    io = (2 * layers * plan.n_micro + plan.offload_bytes_per_step) / arch.io.ingress_bytes_per_s
    return max(compute, io)


def search_training_plan(
    cfg,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str,
    checkpoint_offload: str,
    time_plan: Callable[[TrainingPlan], float],
    systems: int = 1,
) -> PlanChoice:
    """The fastest candidate plan (module docstring) by ``time_plan(plan)`` (its step time
    in seconds by the ``analytic`` backend).

    Args:
        batch: this system's sequences per step.
        systems: data-parallel systems (part of the cache key; ``time_plan`` times them).

    Raises:
        ConfigError, FitError: as :func:`candidate_plans`.
    """
    plain = type(arch) is ArchConfig
    ck = (repr(cfg), repr(arch), batch, seq_len, precision, checkpoint_offload, systems)
    if plain and ck in _CACHE:
        return _CACHE[ck]
    cands = candidate_plans(cfg, arch, batch, seq_len, precision, checkpoint_offload)
    bounds = [lower_bound_s(cfg, arch, p, precision, systems) for p in cands]
    own_t = time_plan(cands[0])
    best, best_t = cands[0], own_t
    times: dict[int, float] = {0: own_t}
    for i in sorted(range(1, len(cands)), key=lambda i: bounds[i]):
        if bounds[i] >= best_t:
            break
        t = time_plan(cands[i])
        times[i] = t
        if t < best_t:
            best, best_t = cands[i], t
    if best is not cands[0] and best_t > own_t * (1 - KEEP_WITHIN):
        best, best_t = cands[0], own_t
    tried = tuple((p.layout.P, p.n_micro, p.policy, times.get(i)) for i, p in enumerate(cands))
    summary = {
        "candidates": len(cands),
        "timed": len(times),
        "analytic_s": best_t,
        "fewest_micro_batches_plan": {
            "pes_per_segment": cands[0].layout.P,
            "micro_batches": cands[0].n_micro,
            "activations": cands[0].policy,
            "analytic_s": own_t,
        },
        "chosen": {"pes_per_segment": best.layout.P, "micro_batches": best.n_micro,
                   "activations": best.policy},
    }  # fmt: skip
    out = PlanChoice(dataclasses.replace(best, search=summary), best_t, tried)
    if plain:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[ck] = out
    return out

