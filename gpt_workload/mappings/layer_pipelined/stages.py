"""Stages of the layer-pipelined mapping: how the model is cut (embedding, layer groups,
head) and what one stage costs on a band of ``rows x cols`` PEs per micro-batch (compute,
fabric, SRAM); :mod:`gpt_workload.mappings.layer_pipelined` describes the mapping."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpt_workload.config import GPTConfig
from gpt_workload.mappings.layer_pipelined.gemm_adapter import _gemm, _GemmCost
from gpt_workload.mappings.weight_streaming.plan import (
    ACC_BYTES,
    _segments_for,
    choose_P,
)
from gpt_workload.precision import bytes_per_element
from wse_sim.arch import ArchConfig
from wse_sim.program import Transfer


# ----------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        index: position in the pipeline (0 = embedding).
        kind: ``embed``, ``layers`` or ``head``.
        layers: transformer layers it holds (empty for embed and head).
        weight_bytes: its resident weights, bytes (storage precision).
    """

    index: int
    kind: str
    layers: tuple[int, ...]
    weight_bytes: int

    @property
    def name(self) -> str:
        """``embed``, ``L3`` or ``L0-L3``, ``head``."""
        if self.kind != "layers":
            return self.kind
        a, b = self.layers[0], self.layers[-1]
        return f"L{a}" if a == b else f"L{a}-L{b}"


def _layer_bytes(cfg: GPTConfig, s: int) -> int:
    d, ff = cfg.d_model, cfg.d_ff
    return (4 * d + 3 * d * d + 3 * d + d * d + d + d * ff + ff + ff * d + d) * s


def make_stages(cfg: GPTConfig, layers_per_stage: int, s: int) -> list[Stage]:
    """The stages: embedding (``wte`` + ``wpe``), ``ceil(n_layer / layers_per_stage)`` layer
    groups, head (``ln_f`` + its own copy of the tied ``wte``)."""
    d, V = cfg.d_model, cfg.vocab_size
    out = [Stage(0, "embed", (), (V * d + cfg.n_positions * d) * s)]
    for a in range(0, cfg.n_layer, layers_per_stage):
        ls = tuple(range(a, min(a + layers_per_stage, cfg.n_layer)))
        out.append(Stage(len(out), "layers", ls, len(ls) * _layer_bytes(cfg, s)))
    out.append(Stage(len(out), "head", (), (2 * d + V * d) * s))
    return out


@dataclass
class StageCost:
    """Work of one stage on one micro-batch (per PE of its region, cycles; bytes).

    Attributes:
        busy, overhead: arithmetic and vector-op setup cycles of the slowest PE.
        flops: model FLOPs of the stage for the micro-batch.
        group_bytes: busiest-link bytes per link group, summed over its ops.
        ramp_bytes: bytes through the busiest PE's RAMP, summed over its ops.
        hops, turns, relays: summed path-latency terms of its ops' longest transfers.
        sram: peak SRAM per PE, bytes; sram_parts: its terms.
        link_bytes: bytes x links over the region.
    """

    busy: float = 0.0
    overhead: float = 0.0
    flops: float = 0.0
    group_bytes: dict = field(default_factory=dict)
    ramp_bytes: float = 0.0
    hops: int = 0
    turns: int = 0
    relays: int = 0
    sram: int = 0
    sram_parts: dict = field(default_factory=dict)
    link_bytes: float = 0.0

    @property
    def compute(self) -> float:
        """busy + overhead cycles."""
        return self.busy + self.overhead

    def add_transfers(self, transfers) -> None:
        """Add an op's transfers: bytes per group summed, the longest path's latency terms."""
        longest = None
        for t in transfers:
            self.group_bytes[t.link_group] = (
                self.group_bytes.get(t.link_group, 0.0) + t.max_link_bytes
            )
            self.ramp_bytes += t.ramp_bytes
            self.link_bytes += t.link_bytes
            if longest is None or (t.hops + 3 * t.relays) > (longest.hops + 3 * longest.relays):
                longest = t
        if longest is not None:
            self.hops += longest.hops
            self.turns += longest.turns
            self.relays += longest.relays


class _Region:
    """A stage's band as a logical ``pr x pc`` grid, tokens over rows, features over
    columns; ``fold = (rows, nseg)`` when the grid is a folded band (``pr = rows nseg``,
    ``pc = P``; :func:`stage_cost`), ``None`` for the full-width band."""

    def __init__(
        self, cfg, arch, precision, pr: int, pc: int, alg: str, M: int, b: int, T: int, fold=None
    ):
        self.cfg, self.arch, self.precision, self.fold = cfg, arch, precision, fold
        self.pr, self.pc, self.alg, self.M, self.b, self.T = pr, pc, alg, M, b, T
        self.s = bytes_per_element(precision)
        self.W = arch.pe.fmac_per_cycle(precision)
        self.ov = arch.pe.vector_op_overhead_cycles
        self.mt = math.ceil(M / pr)  # tokens per PE row

    def tile(self, width: int) -> int:
        """Elements per PE of an ``M x width`` activation."""
        return self.mt * math.ceil(width / self.pc)

    def elementwise(self, c: StageCost, width: int, passes: float) -> None:
        """``passes`` vector passes over each PE's token rows of ``width / pc`` features."""
        c.busy += self.mt * passes * math.ceil(width / self.pc) / self.W
        c.overhead += self.mt * math.ceil(passes) * self.ov

    def row_allreduce(self, c: StageCost, values_per_token: int) -> None:
        """Chain all-reduce of a few fp32 values per token along each band row."""
        per = 2 * values_per_token * self.mt * ACC_BYTES
        pc = self.pc
        c.add_transfers(
            [
                Transfer(
                    "row all-reduce",
                    "allreduce_row",
                    "horizontal",
                    per / 2,
                    self.pr * 2 * (pc - 1) * values_per_token * self.mt * ACC_BYTES,
                    hops=2 * (pc - 1),
                    turns=0,
                    colour=3,
                    relays=max(pc - 1, 0),
                    ramp_bytes=per if pc >= 3 else per / 2 * (pc - 1),
                )
            ]
        )

    def layernorm(self, c: StageCost) -> None:
        """LayerNorm: 6 passes and a row all-reduce of 2 values per token."""
        self.elementwise(c, self.cfg.d_model, 6)
        self.row_allreduce(c, 2)

    def gemm(self, c: StageCost, K: int, N: int) -> _GemmCost:
        """A resident-weight GEMM ``[M, K] x [K, N]`` plus its bias pass."""
        g = _gemm(self.alg, self.M, K, N, self.pr, self.pc, self.precision, self.arch, self.fold)
        c.busy += g.busy
        c.overhead += g.overhead
        c.flops += g.flops
        c.add_transfers(g.transfers)
        return g

    def row_all_to_all(self, c: StageCost, width: int) -> None:
        """Regroup an ``M x width`` tensor within each band row (2-D tiles <-> head-parallel
        segments): a quarter of a row's bytes crosses its middle link each way."""
        row_bytes = self.mt * width * self.s
        c.add_transfers(
            [
                Transfer(
                    "row all-to-all",
                    "all_to_all_row",
                    "horizontal",
                    row_bytes / 4,
                    self.pr * row_bytes * self.pc / 4,
                    hops=self.pc - 1,
                    turns=0,
                    colour=5,
                    ramp_bytes=self.tile(width) * self.s,
                )
            ]
        )

    def attention(self, c: StageCost) -> int:
        """Head-parallel causal attention on segments of ``P`` PEs (see
        :mod:`gpt_workload.mappings.weight_streaming.builder`); the slowest segment position sets the cost. Returns
        its scratch bytes per PE."""
        cfg, W, ov, s = self.cfg, self.W, self.ov, self.s
        P = choose_P(cfg, self.pc)
        hp, dh = cfg.n_head // P, cfg.d_head
        n_segs = self.pr * (self.pc // P)
        rounds = math.ceil(self.b / n_segs)  # sequences per segment column, one after another
        m, q, m_last = _segments_for(min(self.b, n_segs), self.T, n_segs)
        p = q - 1
        mp = m_last
        pairs = mp * p * m + mp * (mp + 1) / 2
        c.busy += rounds * hp * (pairs * 2 * dh / W + pairs * 3 / W)
        c.overhead += rounds * hp * (2 * pairs + 3 * mp * (p + 1)) * ov
        T = self.T
        c.flops += self.b * cfg.n_head * (T * (T + 1) / 2) * 4.0 * dh
        kv_block = m * 2 * hp * dh * s
        c.add_transfers(
            [
                Transfer(
                    "K/V multicast",
                    "multicast_chain",
                    "vertical",
                    rounds * (q - 1) * kv_block,
                    self.b * P * kv_block * (q - 1) * q / 2,
                    hops=q - 1,
                    turns=0,
                    colour=2,
                    relays=max(q - 2, 0),
                    ramp_bytes=rounds * (q - 1) * kv_block,
                )
            ]
        )
        return 2 * kv_block + m * m * ACC_BYTES + 3 * m * ACC_BYTES + rounds * m * 4 * hp * dh * s


def stage_cost(
    stage: Stage,
    cfg: GPTConfig,
    arch: ArchConfig,
    precision: str,
    alg: str,
    pr: int,
    b: int,
    T: int,
    fold: bool = True,
) -> StageCost:
    """Work and SRAM per PE of ``stage`` on a band of ``pr`` rows for ``b`` sequences of ``T``
    tokens (one micro-batch).

    ``fold``: the band's ``cols`` columns are cut into ``nseg = cols // P`` segment columns of
    ``P = choose_P(cfg, cols)`` PEs (the weight-streaming lowering's segments; ``cols % P``
    columns idle) stacked as logical rows: every op runs on a ``pr nseg x P`` logical grid,
    so per-PE output tiles are ``~N / P`` features wide instead of ``N / cols`` and the
    vector-op setup is amortised. Weights are spread once over the ``pr nseg P`` active PEs.
    Without ``fold``: the ``pr x cols`` band as is."""
    C = arch.wafer.cols
    if fold:
        P = choose_P(cfg, C)
        nseg = C // P
        lpr, pc, fold_t = pr * nseg, P, (pr, nseg)
    else:
        lpr, pc, fold_t = pr, C, None
    M = b * T
    r = _Region(cfg, arch, precision, lpr, pc, alg, M, b, T, fold_t)
    c = StageCost()
    s, d, ff, V = r.s, cfg.d_model, cfg.d_ff, cfg.vocab_size
    n = lpr * pc
    x = r.tile(d) * s
    gemm_extra = 0
    live = 0
    if stage.kind == "embed":
        # gather each token's wte row from the PE holding it: a quarter of the tokens' bytes
        # crosses the band's narrower bisection each way
        tb = M * d * s
        c.add_transfers(
            [
                Transfer(
                    "table gather",
                    "gather",
                    "horizontal" if C <= pr else "vertical",
                    tb / 4 / min(pr, C),
                    tb * (pr + C) / 2,
                    hops=pr + C,
                    turns=1,
                    colour=0,
                    ramp_bytes=x,
                )
            ]
        )
        r.elementwise(c, d, 2)  # copy the row, add the position
        live = x
    elif stage.kind == "layers":
        h, qkv, att, hid = x, r.tile(3 * d) * s, x, r.tile(ff) * s
        for _ in stage.layers:
            r.layernorm(c)
            g1 = r.gemm(c, d, 3 * d)
            r.elementwise(c, 3 * d, 1)  # bias
            r.row_all_to_all(c, 3 * d)
            kv = r.attention(c)
            r.row_all_to_all(c, d)
            g2 = r.gemm(c, d, d)
            r.elementwise(c, d, 2)  # bias, residual
            r.layernorm(c)
            g3 = r.gemm(c, d, ff)
            r.elementwise(c, ff, 9)  # bias, GELU
            g4 = r.gemm(c, ff, d)
            r.elementwise(c, d, 2)  # bias, residual
        live = max(x + h + qkv, x + qkv + att + kv, x + h + hid, x + hid + h)
        gemm_extra = max(
            _extra(g, r, K, N) for g, K, N in ((g1, d, 3 * d), (g2, d, d), (g3, d, ff), (g4, ff, d))
        )
    else:  # head: ln_f, tied LM head fused with the cross-entropy statistics
        r.layernorm(c)
        g = r.gemm(c, d, V)
        r.elementwise(c, V, 4)  # running max, sum of exp, target logit, argmax
        r.row_allreduce(c, 3)
        live = 2 * x + 4 * r.mt * ACC_BYTES
        gemm_extra = _extra(g, r, d, V)
    weights = math.ceil(stage.weight_bytes / n)
    io = 2 * x  # the micro-batch arriving and the one leaving
    c.sram_parts = {"weights": weights, "activations": live, "gemm": gemm_extra, "handoff": io}
    c.sram = weights + live + gemm_extra + io
    return c


def _extra(g: _GemmCost, r: _Region, K: int, N: int) -> int:
    """Bytes per PE a GEMM needs besides the resident activations and weights: the plan's
    operand buffers and fp32 accumulators, at least the fp32 output tile."""
    return max(g.sram, r.mt * math.ceil(N / r.pc) * ACC_BYTES)
