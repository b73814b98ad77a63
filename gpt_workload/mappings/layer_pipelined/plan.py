"""The pipeline plan of the layer-pipelined mapping: rows per stage band (balanced by work,
at least what SRAM needs), micro-batch size, the hand-off between bands and the per-tick
kernels and closed form (:mod:`gpt_workload.mappings.layer_pipelined`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpt_workload.checks import check_int
from gpt_workload.config import GPTConfig
from gpt_workload.mappings.layer_pipelined.stages import (
    Stage,
    StageCost,
    make_stages,
    stage_cost,
)
from gpt_workload.mappings.weight_streaming.plan import (
    check_workload,
    choose_P,
)
from gpt_workload.precision import bytes_per_element
from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError, FitError
from wse_sim.program import Kernel, PEClass, Transfer
from wse_sim.timing.common import link_cycles, ramp_bytes_per_cycle, transfer_latency_cycles

#: pipeline chunks per tick: compute and fabric of a region overlap as a 2-stage pipeline
TICK_CHUNKS = 8
#: most ticks (kernels) lowered; more micro-batches take minutes to time
MAX_TICKS = 20_000
MICRO_BATCH_AUTO = 0

COLOUR_HANDOFF = 4



# ------------------------------------------------------------------------------------- plan
@dataclass
class PipelinePlan:
    """Stages, their bands and the micro-batching of one layer-pipelined run.

    Attributes:
        stages: the stages; rows: band rows per stage; row0: first row of each band.
        b: sequences per micro-batch; n_micro: micro-batches; b_last: sequences in the last.
        costs: ``{b: [StageCost per stage]}`` for the micro-batch sizes used.
        fold: whether each band runs as a folded ``rows nseg x P`` grid (:func:`stage_cost`).
    """

    stages: list[Stage]
    rows: list[int]
    row0: list[int]
    b: int
    n_micro: int
    b_last: int
    batch: int
    seq_len: int
    algorithm: str
    costs: dict
    fold: bool = True

    @property
    def n_stages(self) -> int:
        """Stages in the pipeline."""
        return len(self.stages)

    def micro_size(self, i: int) -> int:
        """Sequences in micro-batch ``i``."""
        return self.b_last if i == self.n_micro - 1 else self.b


def _min_rows(stage, cfg, arch, precision, alg, b, T, usable, fold) -> tuple[int, StageCost]:
    """Fewest band rows whose per-PE SRAM need fits ``usable`` (binary search; the need
    falls with the rows)."""
    R = arch.wafer.rows
    c = stage_cost(stage, cfg, arch, precision, alg, R, b, T, fold)
    if c.sram > usable:
        return R + 1, c
    lo, hi = 0, R  # need(lo) > usable (or lo = 0), need(hi) <= usable
    best = c
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cm = stage_cost(stage, cfg, arch, precision, alg, mid, b, T, fold)
        if cm.sram <= usable:
            hi, best = mid, cm
        else:
            lo = mid
    return hi, best


def _balance(flops: list[float], mins: list[int], R: int) -> list[int]:
    """Rows per stage proportional to ``flops``, at least ``mins``, summing to at most ``R``
    (water-filling: stages below their minimum get it, the rest share what is left)."""
    fixed = [False] * len(flops)
    while True:
        left = R - sum(m for m, f in zip(mins, fixed, strict=True) if f)
        w = sum(fl for fl, f in zip(flops, fixed, strict=True) if not f) or 1.0
        rows = [
            m if f else max(int(left * fl / w), 1)
            for fl, m, f in zip(flops, mins, fixed, strict=True)
        ]
        newly = [i for i, r in enumerate(rows) if not fixed[i] and r < mins[i]]
        if not newly:
            break
        for i in newly:
            fixed[i] = True
    # hand the rounding remainder to the stages with the most FLOPs per row
    spare = R - sum(rows)
    while spare > 0:
        i = max(range(len(rows)), key=lambda j: flops[j] / rows[j])
        rows[i] += 1
        spare -= 1
    return rows


def plan_pipeline(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str,
    algorithm: str,
    micro_batch: int = MICRO_BATCH_AUTO,
    layers_per_stage: int = 1,
    fold: bool = True,
) -> PipelinePlan:
    """Stages, bands and micro-batches for ``batch`` sequences of ``seq_len`` tokens.

    ``micro_batch = 0`` (auto) tries 1, 2, 4, ... sequences up to ``batch`` and keeps the
    fastest by the closed form of the module docstring.

    Raises:
        ConfigError: bad batch or seq_len.
        FitError: the weights and one micro-batch's activations do not fit the wafer's SRAM;
            the message gives the bytes needed and available.
    """
    check_workload(cfg, batch, seq_len)
    s = bytes_per_element(precision)
    layers_per_stage = check_int("mapping layer_pipelined: layers_per_stage", layers_per_stage,
                                 1, cfg.n_layer, note=f"n_layer of {cfg.name}")  # fmt: skip
    micro_batch = check_int("mapping layer_pipelined: micro_batch", micro_batch, 0, batch,
                            note="the batch; 0 = the fastest by the closed form")  # fmt: skip
    stages = make_stages(cfg, layers_per_stage, s)
    R = arch.wafer.rows
    if len(stages) > R:
        raise FitError(
            f"layer-pipelined {cfg.name} needs {len(stages)} stages but {arch.name} has "
            f"{R} rows: raise layers_per_stage"
        )
    cands = [micro_batch] if micro_batch else sorted({1 << i for i in range(21)} | {batch})
    cands = [b for b in cands if b <= batch] or [batch]
    best, err = None, None
    for b in cands:
        try:
            plan = _plan_for(cfg, arch, stages, batch, seq_len, precision, algorithm, b, fold)
        except FitError as e:
            err = err or e
            if micro_batch:
                raise
            break  # larger micro-batches need more SRAM still
        t = pipeline_cycles(plan, arch, cfg, precision)
        if best is None or t < best[0]:
            best = (t, plan)
    if best is None:
        raise err
    return best[1]


def _plan_for(cfg, arch, stages, batch, T, precision, alg, b, fold=True) -> PipelinePlan:
    usable = arch.pe.sram_usable_bytes
    R, C = arch.wafer.rows, arch.wafer.cols
    mins, costs = [], []
    for st in stages:
        r, c = _min_rows(st, cfg, arch, precision, alg, b, T, usable, fold)
        mins.append(r)
        costs.append(c)
    if sum(mins) > R:
        weights = sum(st.weight_bytes for st in stages)
        need = sum(min(r, R) * C * c.sram for r, c in zip(mins, costs, strict=True))
        other = need - sum(
            min(r, R) * C * c.sram_parts["weights"] for r, c in zip(mins, costs, strict=True)
        )
        avail = arch.n_pe * usable
        short = [st.name for st, r in zip(stages, mins, strict=True) if r > R]
        why = (
            f"stage(s) {', '.join(short[:3])} do not fit even the whole grid"
            if short
            else f"the stages need {sum(mins)} of {R} rows"
        )
        raise FitError(
            f"layer-pipelined {cfg.name} on {arch.name} ({precision}, micro-batch {b} x {T} "
            f"tokens) needs {need:,} B of SRAM (weights {weights:,} B + activations, "
            f"accumulators and buffers {other:,} B) but {avail:,} B are usable "
            f"({arch.n_pe:,} PEs x {usable:,} B); {why}"
        )
    # balance by work: a stage's compute cycles on a reference band times its rows (most
    # terms scale as 1 / rows), so the bands' ticks come out alike
    ref = max(R // len(stages), 1)
    work = [
        max(stage_cost(st, cfg, arch, precision, alg, ref, b, T, fold).compute, 1.0) * ref
        for st in stages
    ]
    rows = _balance(work, mins, R)
    row0 = list(np.cumsum([0] + rows[:-1]))
    n_micro = math.ceil(batch / b)
    b_last = batch - (n_micro - 1) * b
    if n_micro + len(stages) - 1 > MAX_TICKS:
        raise ConfigError(
            f"batch={batch} in micro-batches of {b} needs {n_micro + len(stages) - 1:,} "
            f"pipeline ticks; at most {MAX_TICKS:,} are simulated: raise micro_batch"
        )
    costs = {}
    for bb in {b, b_last}:
        costs[bb] = [
            stage_cost(st, cfg, arch, precision, alg, r, bb, T, fold)
            for st, r in zip(stages, rows, strict=True)
        ]
    plan = PipelinePlan(
        stages, rows, [int(r) for r in row0], b, n_micro, b_last, batch, T, alg, costs, fold
    )
    for i, c in enumerate(costs[b]):
        if c.sram > usable:  # pragma: no cover - rows >= mins
            raise FitError(f"stage {stages[i].name}: {c.sram} B per PE > {usable} B usable")
    return plan


def _handoff(plan: PipelinePlan, s_idx: int, bb: int, cfg, arch, precision) -> Transfer:
    """Stage ``s_idx``'s micro-batch activation moving to the next band over the ``cols``
    vertical links between them."""
    C = arch.wafer.cols
    nbytes = bb * plan.seq_len * cfg.d_model * bytes_per_element(precision)
    hops = math.ceil((plan.rows[s_idx] + plan.rows[s_idx + 1]) / 2)
    return Transfer(
        "activation hand-off",
        "handoff",
        "vertical",
        nbytes / C,
        nbytes * hops,
        hops=hops,
        turns=0,
        colour=COLOUR_HANDOFF,
        ramp_bytes=nbytes / (plan.rows[s_idx + 1] * C),
    )


def region_traffic(c: StageCost, handoff: Transfer | None) -> tuple[dict, float, Transfer]:
    """One region's links in one tick: ``(busiest-link bytes per link group, bytes through
    its busiest RAMP, its latency path)``; its ops' bytes and its outgoing hand-off added per
    group, its ops' fill latencies and the hand-off's hops added on one path."""
    groups = dict(c.group_bytes)
    ramp, hops, link_bytes = c.ramp_bytes, c.hops, c.link_bytes
    if handoff is not None:
        groups[handoff.link_group] = groups.get(handoff.link_group, 0.0) + handoff.max_link_bytes
        ramp += handoff.ramp_bytes
        hops += handoff.hops
        link_bytes += handoff.link_bytes
    lat = Transfer(
        "region latency",
        "regions",
        "latency",
        0.0,
        link_bytes,
        hops,
        c.turns,
        COLOUR_HANDOFF,
        c.relays,
        ramp,
    )
    return groups, ramp, lat


def stage_tick_terms(
    c: StageCost, handoff: Transfer | None, arch: ArchConfig
) -> tuple[float, float, float]:
    """``(compute, fabric, latency)`` cycles of one region in one tick, as the backends count
    them: compute = busy + overhead; fabric = the larger of its busiest link group (bytes at
    the link rate, credit gaps included) and its RAMP; latency = its path's."""
    groups, ramp, lat = region_traffic(c, handoff)
    fab = max(
        [
            link_cycles(Transfer("g", "g", g, v, 0, 0, 0, 0), TICK_CHUNKS, arch)
            for g, v in groups.items()
            if v > 0
        ]
        + [ramp / ramp_bytes_per_cycle(arch)]
    )
    return c.compute, fab, transfer_latency_cycles(lat, TICK_CHUNKS, arch)


def cols_used(fold: bool, cfg, arch) -> int:
    """Columns of a band that hold work: ``(cols // P) P`` folded (``cols % P`` idle, as in
    the weight-streaming lowering), all ``cols`` otherwise."""
    C = arch.wafer.cols
    return (C // choose_P(cfg, C)) * choose_P(cfg, C) if fold else C


def tick_kernel(plan: PipelinePlan, t: int, cfg, arch, precision) -> Kernel:
    """The kernel of pipeline tick ``t``: every region a class (idle ones without work), the
    busiest active region's bytes per link group and RAMP, and the slowest region's latency
    path."""
    S = plan.n_stages
    classes, flops = [], 0.0
    per_group: dict[str, float] = {}
    worst_lat, worst_cyc, worst_ramp, link_bytes = None, -1.0, 0.0, 0.0
    for s_idx in range(S):
        i = t - s_idx
        count = plan.rows[s_idx] * cols_used(plan.fold, cfg, arch)
        if not 0 <= i < plan.n_micro:
            classes.append(PEClass(s_idx, count, 0.0, 0.0, 0.0))
            continue
        bb = plan.micro_size(i)
        c = plan.costs[bb][s_idx]
        classes.append(PEClass(s_idx, count, c.busy, c.overhead, c.flops / count))
        flops += c.flops
        h = _handoff(plan, s_idx, bb, cfg, arch, precision) if s_idx < S - 1 else None
        groups, ramp, lat = region_traffic(c, h)
        for g, v in groups.items():
            per_group[g] = max(per_group.get(g, 0.0), v)
        worst_ramp = max(worst_ramp, ramp)
        link_bytes += lat.link_bytes
        cyc = transfer_latency_cycles(lat, TICK_CHUNKS, arch)
        if cyc > worst_cyc:
            worst_lat, worst_cyc = lat, cyc
    transfers = [
        Transfer(f"busiest region, {g}", "regions", g, v, 0.0, 0, 0, COLOUR_HANDOFF)
        for g, v in sorted(per_group.items())
        if v > 0
    ]
    if worst_lat is not None:
        transfers.append(
            Transfer(
                "slowest region path",
                "regions",
                "latency",
                0.0,
                link_bytes,
                worst_lat.hops,
                worst_lat.turns,
                COLOUR_HANDOFF,
                worst_lat.relays,
                worst_ramp,
            )
        )
    phase = "fill" if t < min(S - 1, plan.n_micro - 1) else "steady"
    if t >= plan.n_micro:
        phase = "drain"
    sram = max(plan.costs[plan.b][s].sram for s in range(S))
    return Kernel(
        f"tick{t}",
        f"pipeline_{phase}",
        -1,
        min(t, plan.n_micro - 1),
        tuple(classes),
        "stage",
        tuple(transfers),
        -1,
        0,
        int(sram),
        float(flops),
        TICK_CHUNKS,
    )


def tick_terms(plan: PipelinePlan, arch: ArchConfig, cfg, precision) -> list[list[tuple]]:
    """Per tick, the ``(compute, fabric, latency)`` cycles of each active region."""
    out = []
    cache: dict = {}
    for t in range(plan.n_micro + plan.n_stages - 1):
        row = []
        for s_idx in range(plan.n_stages):
            i = t - s_idx
            if 0 <= i < plan.n_micro:
                bb = plan.micro_size(i)
                if (bb, s_idx) not in cache:
                    h = (
                        _handoff(plan, s_idx, bb, cfg, arch, precision)
                        if s_idx < plan.n_stages - 1
                        else None
                    )
                    cache[bb, s_idx] = stage_tick_terms(plan.costs[bb][s_idx], h, arch)
                row.append(cache[bb, s_idx])
        out.append(row)
    return out


def pipeline_cycles(plan: PipelinePlan, arch: ArchConfig, cfg, precision) -> float:
    """Closed-form pipeline time, cycles: per tick, ``max(C, F) + min(C, F) / n + L`` over
    the active regions' maxima (module docstring)."""
    n = TICK_CHUNKS
    total = 0.0
    for row in tick_terms(plan, arch, cfg, precision):
        C = max(r[0] for r in row)
        F = max(r[1] for r in row)
        L = max(r[2] for r in row)
        total += max(C, F) + min(C, F) / n + L
    return total
