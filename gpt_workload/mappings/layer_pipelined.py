"""Layer-pipelined execution: every weight resident in SRAM, one wafer region per stage.

The model is cut into stages: the embedding, groups of ``layers_per_stage`` transformer
layers, and the head (final LayerNorm, tied LM head, cross-entropy statistics). Each stage
owns a band of whole grid rows (``rows_s x cols`` PEs; bands in stage order from the north
edge, so consecutive stages are neighbours) and keeps its weights there for the whole run:
nothing streams from MemoryX (the one-time weight load is reported in ``Program.notes``).
Micro-batches of ``micro_batch`` sequences flow from band to band over the fabric (GPipe:
Huang et al. 2019, "GPipe: Efficient Training of Giant Neural Networks using Pipeline
Parallelism", NeurIPS; Cerebras calls this "layer pipelined" execution, Lie 2022, "Cerebras
Architecture Deep Dive", Hot Chips 34). The tied embedding is held twice, by the first and
the last stage, as Megatron-LM does for pipeline parallelism (Narayanan et al. 2021, SC21).

**Regions.** A stage's rows are proportional to its work per micro-batch (its compute cycles
on a reference band times the band's rows: its FLOPs weighted by how efficiently its ops use
a PE, so the ticks come out alike), but never fewer than its SRAM needs: its weights, the
live activations of the micro-batch it works on, its fp32 GEMM accumulators and the
algorithm's panel buffers, and the hand-off buffers of the micro-batch arriving and the one
leaving. Within a band, data is laid out 2-D (tokens over the band's rows, features over its
columns) and each GEMM runs the ``gemm`` algorithm of :mod:`gpt_workload.mappings.gemm` on
the ``rows_s x cols`` grid with its weights resident; attention regroups the band into head-
parallel segments (as the weight-streaming lowering does) through a row all-to-all.

**Timing in the Program IR.** One kernel per pipeline tick (``n_micro + n_stages - 1``
ticks); its PE classes are the stages' regions (class ``s`` = stage ``s``; a stage with no
micro-batch in a tick is a class with no work). A region's work in a tick is the sum over
its ops (compute) and its links' bytes summed over its ops per link group (fabric); as the
regions use disjoint links, the tick's transfer per link group carries the *busiest*
region's bytes, and the tick's latency is the slowest region's (its ops' fill latencies
added). The backends then time each tick as ``max(C, F) + min(C, F) / n + latency`` with
``C`` the slowest active region's compute and ``F`` the busiest active region's links: the
tick lasts as long as the slowest active stage. Activations move to the next band over the
``cols`` vertical links between the bands (``Transfer`` "activation hand-off", hops = the
distance between the bands' centres).

Closed form (the tests hold the backends to it): with per-stage compute ``c_s``, fabric
``f_s`` and latency ``l_s`` (``Program.pipeline_stages``), stage ``s`` active in tick ``t``
iff ``0 <= t - s < n_micro``, and ``C_t, F_t, L_t`` their maxima over the active stages,

    total = sum_t [max(C_t, F_t) + min(C_t, F_t) / n + L_t],

``(n_micro + n_stages - 1) x tick`` when the stages are balanced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gpt_workload.config import GPTConfig
from gpt_workload.lowering import ACC_BYTES, _segments_for, check_workload, choose_P
from gpt_workload.mappings.base import Knob, Mapping, register
from gpt_workload.precision import bytes_per_element, check_precision
from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError, FitError
from wse_sim.program import (
    Kernel,
    LayoutGeometry,
    PEClass,
    PipelineGeometry,
    PipelineStage,
    Program,
    Transfer,
    Workload,
)
from wse_sim.timing.common import link_cycles, ramp_bytes_per_cycle, transfer_latency_cycles

#: pipeline chunks per tick: compute and fabric of a region overlap as a 2-stage pipeline
TICK_CHUNKS = 8
#: most ticks (kernels) lowered; more micro-batches take minutes to time
MAX_TICKS = 20_000
MICRO_BATCH_AUTO = 0

COLOUR_HANDOFF = 4


# ------------------------------------------------------------------------------ GEMM adapter
@dataclass(frozen=True)
class _GemmCost:
    """Per-PE cost of one resident-weight GEMM on a ``pr x pc`` region (from ``gemm_plan``).

    Attributes:
        busy, overhead: cycles per PE of the slowest PE; flops: whole GEMM (2 M K N).
        sram: per-PE working set of the algorithm (A, B, C tiles and buffers), bytes.
        transfers: its fabric transfers.
    """

    busy: float
    overhead: float
    flops: float
    sram: int
    transfers: tuple[Transfer, ...]


_PLANS: dict = {}


@dataclass(frozen=True)
class _PlanView:
    """The fields of a :class:`gpt_workload.mappings.gemm.GemmPlan` that :func:`_gemm` reads."""

    busy_cycles: float
    overhead_cycles: float
    flops_total: float
    sram_bytes: int
    transfers: tuple


def column_sources(alg: str, M: int, K: int, N: int, pr: int, pc: int, s: int) -> np.ndarray:
    """Bytes each logical PE ``(i, j)`` multicasts down its logical column in ``alg``'s
    resident-weight GEMM (``[pr, pc]``), as :mod:`gpt_workload.mappings.gemm` distributes
    them: ``ws`` ``B[K_j, N_i]`` (``split(K, pc)`` x ``split(N, pr)``); ``summa`` the B panel
    ``B[K_i, N_j]`` (``split(K, pr)`` x ``split(N, pc)``); ``row_1d``/``col_1d`` the whole of
    row ``i``'s B (A) parts, forwarded down every column by the 2-D all-gather tree.

    Raises:
        ConfigError: ``cannon``/``meshgemm`` (their column traffic is unicast shifts).
    """
    from gpt_workload.mappings.gemm import split

    sz = lambda n, q: np.diff(split(n, q))  # noqa: E731
    if alg == "ws":
        return np.outer(sz(N, pr), sz(K, pc)) * s
    if alg == "summa":
        return np.outer(sz(K, pr), sz(N, pc)) * s
    if alg in ("row_1d", "col_1d"):
        per = sz(K, pr * pc) * (N if alg == "row_1d" else M) * s
        return np.repeat(per.reshape(pr, pc).sum(axis=1, keepdims=True), pc, axis=1)
    raise ConfigError(
        f"mapping layer_pipelined: gemm={alg} needs a square block and a layer-pipelined band "
        f"never is one (folded: rows x (cols // P) by P; fold=off: rows x cols); use gemm=summa, "
        f"ws, row_1d or col_1d"
    )


def folded_column_multicast(
    name: str, nb: np.ndarray, rows: int, nseg: int, P: int, colour: int
) -> tuple[Transfer, Transfer]:
    """Physical traffic of multicasts down the logical columns of a folded band.

    The band is ``rows x (nseg P)`` PEs (idle columns beyond ``nseg P`` not counted); logical
    PE ``(g rows + r, j)`` sits at physical ``(r, g P + j)``: the ``nseg`` segment columns of
    width ``P`` are stacked as extra logical rows. ``nb[g rows + r, j]`` bytes go from that PE
    to every other PE of logical column ``j``: along physical row ``r`` to the same position
    ``j`` of every other segment column (``P`` links per segment step, passing through the
    routers of the PEs in between), then down and up physical column ``g' P + j`` of every
    segment column ``g'`` (a 2-D multicast tree, as the module's other multicasts).

    With ``T_j = sum_i nb[i, j]``, ``V[r, j] = sum_g nb[g rows + r, j]`` and the coarse prefix
    ``E[g, r, j] = sum_{g0 <= g} nb[g0 rows + r, j]`` (``W = T_rj - E`` westward):

    * vertical: each physical column of logical column ``j`` is a line of ``rows`` PEs fed
      ``V[r, j]`` at row ``r``: link ``r -> r + 1`` carries ``sum_{r0 <= r} V``, ``r + 1 ->
      r`` the rest; link-bytes ``nseg (rows - 1) sum_j T_j``;
    * horizontal: physical link ``c -> c + 1`` of row ``r`` carries ``E[g, r, j]`` for every
      ``(g, j)`` with ``g P + j <= c < (g + 1) P + j`` (the logical columns' segment steps
      overlap: about ``P`` of them cross every link), ``W`` westward likewise; link-bytes
      ``P (nseg - 1) sum_j T_j``;
    * RAMP: PE ``(g rows + r, j)`` takes in ``T_j - nb[g rows + r, j]``;
    * hops: horizontal ``P max(g0, nseg - 1 - g0)``, vertical ``max(r0, rows - 1 - r0)`` over
      the sources with bytes; the vertical transfer carries the whole path (one turn).

    Returns:
        ``(vertical, horizontal)`` :class:`Transfer` (bytes; the busiest directed link of
        each group; ``tests/test_layer_pipelined.py`` checks them against a per-link count).
    """
    nb = np.asarray(nb, np.float64).reshape(nseg, rows, P)  # [g, r, j]
    T = nb.sum(axis=(0, 1))  # [j]
    V = nb.sum(axis=0)  # [r, j]
    pre_v = np.cumsum(V, axis=0)
    v_fwd, v_back = pre_v[:-1], pre_v[-1:] - pre_v[:-1]
    E = np.cumsum(nb, axis=0)  # [g, r, j]
    Wb = E[-1:] - E
    n_links = nseg * P
    g = np.arange(nseg - 1)[:, None]
    j = np.arange(P)[None, :]
    lo = (g * P + j).ravel()  # first physical link of segment step g of logical column j
    h_fwd = np.zeros((rows, n_links + 1))
    h_back = np.zeros((rows, n_links + 1))
    for arr, load in ((h_fwd, E[:-1]), (h_back, Wb[:-1])):
        # lo = g P + j runs over 0 .. (nseg - 1) P - 1 once each: plain slice adds
        ld = load.transpose(1, 0, 2).reshape(rows, -1)  # [r, (g, j)]
        arr[:, : lo.size] += ld
        arr[:, P : P + lo.size] -= ld
    h_fwd, h_back = np.cumsum(h_fwd, axis=1), np.cumsum(h_back, axis=1)
    recv = T[None, None, :] - nb
    live = nb != 0
    gg, rr, _ = np.nonzero(live)
    h_hops = int(P * np.maximum(gg, nseg - 1 - gg).max(initial=0))
    v_hops = int(np.maximum(rr, rows - 1 - rr).max(initial=0))
    tot = float(T.sum())
    vert = Transfer(
        name,
        "multicast_col_folded",
        "vertical",
        float(max(v_fwd.max(initial=0.0), v_back.max(initial=0.0))),
        nseg * (rows - 1) * tot,
        hops=h_hops + v_hops,
        turns=1 if h_hops and v_hops else 0,
        colour=colour,
        ramp_bytes=float(recv.max(initial=0.0)),
    )
    horiz = Transfer(
        f"{name} (between segment columns)",
        "multicast_row_folded",
        "horizontal",
        float(max(h_fwd.max(initial=0.0), h_back.max(initial=0.0))),
        P * (nseg - 1) * tot,
        hops=h_hops,
        turns=0,
        colour=colour,
        ramp_bytes=0.0,
    )
    return vert, horiz


def _gemm(
    alg: str, M: int, K: int, N: int, pr: int, pc: int, precision: str, arch, fold=None
) -> _GemmCost:
    """``gemm_plan`` of :mod:`gpt_workload.mappings.gemm` for ``[M, K] x [K, N]`` with the
    weights resident on a logical ``pr x pc`` grid, as a :class:`_GemmCost` (cached).

    ``fold = (rows, nseg)``: the grid is a folded band (``pr = rows nseg``, ``pc = P``,
    :func:`folded_column_multicast`): the plan's transfers along logical rows stay inside a
    segment (physically contiguous, unchanged), and its multicasts down logical columns are
    replaced by their physical vertical and horizontal traffic."""
    key = (alg, M, K, N, pr, pc, precision, arch.pe, fold)
    if key not in _PLANS:
        from gpt_workload.mappings.gemm import gemm_plan

        if fold is not None and alg in ("cannon", "meshgemm") and pr != pc:
            column_sources(alg, M, K, N, pr, pc, 1)  # raises: needs a square block
        if alg == "summa":  # the same counts in closed form (held equal by the tests)
            p = summa_resident_closed_form(M, K, N, pr, pc, precision, arch)
            p = _PlanView(p.busy, p.overhead, p.flops, p.sram, p.transfers)
        else:
            if alg in ("cannon", "meshgemm") and pr != pc:
                column_sources(alg, M, K, N, pr, pc, 1)  # raises: bands are never square
            p = gemm_plan(
                alg, M=M, K=K, N=N, pr=pr, pc=pc, precision=precision, arch=arch, weights="resident"
            )
        trs = tuple(p.transfers)
        if fold is not None and fold[1] > 1:
            rows, nseg = fold
            s = bytes_per_element(precision)
            nb = column_sources(alg, M, K, N, pr, pc, s)
            out = []
            for t in trs:
                if t.link_group == "vertical":
                    out += folded_column_multicast(t.name, nb, rows, nseg, pc, t.colour)
                else:
                    out.append(t)
            trs = tuple(x for x in out if x.link_bytes > 0)
        sram = int(p.sram_bytes)
        if fold is not None and alg == "summa":
            # SUMMA's panel width is free (van de Geijn & Watts 1997): on the narrow folded
            # grid, panels of K / pc rows would need 2 (K / P) (N / P) s bytes of B buffers,
            # so the panels are each PE's own B block, kq = ceil(K / pr) rows (same bytes
            # moved, more steps): double-buffered A and B sub-panels and the fp32 tile
            s = bytes_per_element(precision)
            mt, nt, kq = -(-M // pr), -(-N // pc), -(-K // pr)
            sram = 2 * mt * kq * s + 2 * kq * nt * s + mt * nt * ACC_BYTES
        _PLANS[key] = _GemmCost(
            float(p.busy_cycles),
            float(p.overhead_cycles),
            float(p.flops_total),
            sram,
            trs,
        )
    return _PLANS[key]


def summa_resident_closed_form(
    M: int, K: int, N: int, pr: int, pc: int, precision: str, arch
) -> _GemmCost:
    """SUMMA with resident weights (van de Geijn & Watts 1997) in closed form, the counts of
    ``gemm_plan("summa", weights="resident")``: PE ``(i, j)`` holds ``A[M_i, K_j]`` and
    ``B[K_i, N_j]`` (parts of ``ceil`` / ``floor`` size); the busiest PE does
    ``ceil(M/pr) K ceil(N/pc)`` MACs in ``ceil(M/pr) K`` vector ops. Each A panel is multicast
    along its row: the busiest link carries every panel of row 0 but the smallest,
    ``ceil(M/pr) (K - floor(K/pc)) s`` bytes (the same through the busiest RAMP); each B panel
    down its column, ``ceil(N/pc) (K - floor(K/pr)) s``; link-bytes ``M K s (pc - 1)`` and
    ``K N s (pr - 1)``; paths ``pc - 1`` and ``pr - 1`` hops. SRAM: two A and two B panel
    buffers and the fp32 accumulator tile."""
    s = bytes_per_element(precision)
    W = arch.pe.fmac_per_cycle(precision)
    ov = arch.pe.vector_op_overhead_cycles
    mt, nt, kp = -(-M // pr), -(-N // pc), -(-K // pc)
    trs = []
    if pc > 1:
        a = mt * (K - K // pc) * s
        trs.append(
            Transfer(
                "A panel multicast",
                "multicast_row",
                "horizontal",
                a,
                M * K * s * (pc - 1),
                hops=pc - 1,
                turns=0,
                colour=6,
                ramp_bytes=a,
            )
        )
    if pr > 1:
        b = nt * (K - K // pr) * s
        trs.append(
            Transfer(
                "B panel multicast",
                "multicast_col",
                "vertical",
                b,
                K * N * s * (pr - 1),
                hops=pr - 1,
                turns=0,
                colour=7,
                ramp_bytes=b,
            )
        )
    sram = 2 * mt * kp * s + 2 * kp * nt * s + mt * nt * ACC_BYTES
    return _GemmCost(mt * K * nt / W, float(mt * K * ov), 2.0 * M * K * N, int(sram), tuple(trs))


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
        :mod:`gpt_workload.lowering`); the slowest segment position sets the cost. Returns
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
    if not isinstance(layers_per_stage, int) or not 1 <= layers_per_stage <= cfg.n_layer:
        raise ConfigError(
            f"mapping layer_pipelined: layers_per_stage={layers_per_stage!r} must be an integer "
            f"in 1..{cfg.n_layer} (n_layer of {cfg.name})"
        )
    if not isinstance(micro_batch, int) or not 0 <= micro_batch <= batch:
        raise ConfigError(
            f"mapping layer_pipelined: micro_batch={micro_batch!r} must be an integer in "
            f"0..{batch} (the batch; 0 = the fastest by the closed form)"
        )
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


def lower_layer_pipelined(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str,
    algorithm: str,
    micro_batch: int = MICRO_BATCH_AUTO,
    layers_per_stage: int = 1,
    spec: str = "layer_pipelined",
    fold: bool = True,
) -> Program:
    """Lower a layer-pipelined forward pass to a :class:`Program` (one kernel per tick).

    ``fold``: run each band as a folded ``rows nseg x P`` GEMM grid (:func:`stage_cost`).

    Raises:
        ConfigError: bad batch, seq_len or precision; FitError: does not fit in SRAM.
    """
    check_precision(precision)
    plan = plan_pipeline(
        cfg, arch, batch, seq_len, precision, algorithm, micro_batch, layers_per_stage, fold
    )
    R, C = arch.wafer.rows, arch.wafer.cols
    used = cols_used(fold, cfg, arch)
    cmap = np.full((R, C), -1, dtype=np.int16)
    for s_idx, (r0, r) in enumerate(zip(plan.row0, plan.rows, strict=True)):
        cmap[r0 : r0 + r, :used] = s_idx
    kernels = [
        tick_kernel(plan, t, cfg, arch, precision) for t in range(plan.n_micro + plan.n_stages - 1)
    ]
    weights = sum(st.weight_bytes for st in plan.stages)
    stages = []
    for s_idx, st in enumerate(plan.stages):
        c = plan.costs[plan.b][s_idx]
        h = (
            _handoff(plan, s_idx, plan.b, cfg, arch, precision)
            if s_idx < plan.n_stages - 1
            else None
        )
        comp, fab, lat = stage_tick_terms(c, h, arch)
        stages.append(
            PipelineStage(
                stage=st.name,
                rows=plan.rows[s_idx],
                first_row=plan.row0[s_idx],
                pes=plan.rows[s_idx] * used,
                weight_bytes=st.weight_bytes,
                flops_per_micro_batch=c.flops,
                compute_cycles=comp,
                fabric_cycles=fab,
                latency_cycles=lat,
                sram_bytes_per_pe=c.sram,
                sram_parts=c.sram_parts,
            )
        )
    P = choose_P(cfg, C)  # attention's head-parallel segments (in the layer bands)
    n_segs = plan.rows[1] * (C // P)
    m_att = _segments_for(min(plan.b, n_segs), seq_len, n_segs)[0]
    layout = LayoutGeometry(
        grid=(R, C),
        pes_per_segment=P,
        tokens_per_segment=m_att,
        sequences_per_micro_batch=plan.b,
        micro_batches=plan.n_micro,
        active_pes=int((cmap >= 0).sum()),
        pipeline=PipelineGeometry(
            stages=plan.n_stages,
            layers_per_stage=layers_per_stage,
            gemm=algorithm,
            fold=fold,
            gemm_grid_cols=P if fold else C,
            segment_columns=C // P if fold else 1,
            pipeline_ticks=len(kernels),
            rows_per_stage=tuple(plan.rows),
        ),
    )
    notes = {
        "tick_chunks": TICK_CHUNKS,
        "weight_load": {
            "bytes": weights,
            "seconds_at_ingress": weights / arch.io.ingress_bytes_per_s,
            "note": "one-time load of the resident weights from MemoryX, not in the timing",
        },
    }
    return Program(
        f"{cfg.name}/layer_pipelined", R, C, precision, kernels, [], {"stage": cmap}, layout,
        mapping=spec, workload=Workload(batch, seq_len, plan.n_micro, plan.b_last),
        pipeline_stages=tuple(stages), notes=notes,
    )  # fmt: skip


def _gemm_choices() -> tuple[str, ...]:
    try:
        from gpt_workload.mappings.gemm import GEMM_ALGORITHMS
    except ImportError:  # pragma: no cover - the GEMM module ships with the mappings
        return ("summa",)
    return tuple(GEMM_ALGORITHMS)


@register
class LayerPipelined(Mapping):
    """Layer-pipelined execution with every weight resident (module docstring).

    Knobs: ``gemm`` (the GEMM algorithm of every stage; default ``summa``: it runs on any
    ``rows_s x cols`` band, its weight tiles never move off their PE, and it only broadcasts
    panels along rows and columns, van de Geijn & Watts 1997), ``micro_batch`` (sequences per
    micro-batch; 0 = the fastest by the closed form), ``layers_per_stage``, ``fold`` (``on``:
    each band's GEMMs run on a ``rows (cols // P) x P`` logical grid, :func:`stage_cost`;
    ``off``: on the full ``rows x cols`` band, for comparison).
    """

    name = "layer_pipelined"
    mode = "layer_pipelined"
    #: the tick kernels' region transfers have no packet-level expansion
    packet_ok = False
    description = (
        "weights resident in SRAM; one wafer band per layer (plus embedding and head), "
        "micro-batches pipelined band to band (GPipe fill and drain)"
    )
    source = (
        "Huang et al. 2019, GPipe (NeurIPS); Lie 2022, Cerebras Architecture Deep Dive "
        "(Hot Chips 34): layer-pipelined mode; Narayanan et al. 2021 (SC21): tied embedding "
        "on the first and last stage"
    )
    knobs = (
        Knob("gemm", "str", "summa", "GEMM algorithm of every stage", choices=_gemm_choices()),
        Knob(
            "micro_batch",
            "int",
            MICRO_BATCH_AUTO,
            "sequences per micro-batch (0: fastest by the closed form)",
            lo=0,
        ),
        Knob("layers_per_stage", "int", 1, "transformer layers per pipeline stage", lo=1),
        Knob(
            "fold",
            "str",
            "on",
            "on: each band's segment columns of P PEs stacked as logical rows (a rows x "
            "cols//P by P GEMM grid); off: the full-width rows x cols band",
            choices=("on", "off"),
        ),
    )

    def lower(self, cfg, arch, batch: int, seq_len: int, precision: str) -> Program:
        """The layer-pipelined Program (:func:`lower_layer_pipelined`)."""
        self.check_family(cfg)
        return lower_layer_pipelined(
            cfg,
            arch,
            batch,
            seq_len,
            precision,
            self["gemm"],
            self["micro_batch"],
            self["layers_per_stage"],
            spec=self.spec,
            fold=self["fold"] == "on",
        )

    def max_batch_single_micro(self, cfg, arch, seq_len: int, precision: str) -> int:
        """Largest micro-batch (sequences) whose stages fit the wafer (doubling, then
        bisection over :func:`plan_pipeline` with a fixed micro-batch)."""
        self.check_family(cfg)

        def fits(b: int) -> bool:
            try:
                plan_pipeline(
                    cfg,
                    arch,
                    b,
                    seq_len,
                    precision,
                    self["gemm"],
                    b,
                    self["layers_per_stage"],
                    self["fold"] == "on",
                )
            except FitError:
                return False
            return True

        if not fits(1):
            plan_pipeline(
                cfg,
                arch,
                1,
                seq_len,
                precision,
                self["gemm"],
                1,
                self["layers_per_stage"],
                self["fold"] == "on",
            )
        lo, hi = 1, 2
        while fits(hi) and hi < 1 << 16:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def numerics(self, program, cfg, weights, tokens, precision: str):
        """Logits of ``tokens`` [K, T] computed stage by stage as the pipeline does: every
        GEMM in the ``gemm`` algorithm's order on its stage's band (``gemm_numerics``), the
        rest in fp32 with every stored tensor rounded to ``precision``."""
        return pipeline_numerics(program, cfg, weights, tokens, precision, self["gemm"])


def pipeline_numerics(program, cfg, weights, tokens, precision: str, algorithm: str):
    """See :meth:`LayerPipelined.numerics`; returns a :class:`NumericsResult` whose
    ``health`` tracker checked the weights and every stored tensor (op, layer, position).

    Raises:
        ConfigError: tokens of the wrong shape, dtype or range.
    """
    from gpt_workload.health import HealthTracker, rows_locator
    from gpt_workload.mappings.gemm import gemm_numerics
    from gpt_workload.numerics import NumericsResult, check_tokens
    from gpt_workload.precision import round_storage
    from gpt_workload.reference import gelu

    tokens = check_tokens(program, cfg, tokens)
    K, T = tokens.shape
    f32 = np.float32
    health = HealthTracker(precision, "weights")
    health.check_weights(weights)
    health.phase = "forward"
    loc = rows_locator(T)

    def rnd(a, op=None, layer=None):
        a = np.ascontiguousarray(a, dtype=f32)
        return round_storage(a, precision) if op is None else health.store(op, layer, a, loc)

    pl = program.layout.pipeline
    rows, pc = pl.rows_per_stage, pl.gemm_grid_cols
    nseg, lps = pl.segment_columns, pl.layers_per_stage
    M = K * T

    def gemm(a, w, stage):
        pr = min(rows[stage] * nseg, M)
        return np.asarray(
            gemm_numerics(algorithm, a, rnd(w), pr, min(pc, a.shape[1]), "chain"), dtype=f32
        )

    def ln(x, g, b, op="layernorm_f", layer=None):
        health.check_norm_input(op, layer, x, (1,), loc)
        mu = x.mean(-1, keepdims=True, dtype=f32)
        var = ((x - mu) ** 2).mean(-1, keepdims=True, dtype=f32)
        return (x - mu) / np.sqrt(var + f32(cfg.layer_norm_eps)) * rnd(g) + rnd(b)

    wte = rnd(weights.wte)
    x = rnd(wte[tokens].reshape(M, -1) + np.tile(rnd(weights.wpe[:T]), (K, 1)), "embedding")
    d, H, dh = cfg.d_model, cfg.n_head, cfg.d_head
    causal = np.triu(np.ones((T, T), dtype=bool), k=1)
    n_run = 1
    for li, lw in enumerate(weights.layers):
        st = 1 + li // lps
        h = rnd(ln(x, lw.ln_1_g, lw.ln_1_b, "layernorm_1", li), "layernorm_1", li)
        qkv = rnd(gemm(h, lw.attn_w, st) + rnd(lw.attn_b), "qkv", li)
        q, k, v = (qkv[:, i * d : (i + 1) * d].reshape(K, T, H, dh) for i in range(3))
        health.check_scores("attention", li, q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), T)
        sc = np.einsum("kqhe,kshe->khqs", q, k, dtype=f32) / f32(math.sqrt(dh))
        sc[:, :, causal] = -np.inf
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        att = np.einsum("khqs,kshe->kqhe", sc, v, dtype=f32).reshape(M, d)
        att = rnd(att, "attention", li)
        y = rnd(gemm(att, lw.proj_w, st) + rnd(lw.proj_b), "attn_proj", li)
        x = rnd(x + y, "residual_1", li)
        h = rnd(ln(x, lw.ln_2_g, lw.ln_2_b, "layernorm_2", li), "layernorm_2", li)
        u = rnd(gemm(h, lw.fc_w, st) + rnd(lw.fc_b), "ffn_up", li)
        u = rnd(gelu(u.astype(np.float64), cfg.activation).astype(f32), "gelu", li)
        y = rnd(gemm(u, lw.fc2_w, st) + rnd(lw.fc2_b), "ffn_down", li)
        x = rnd(x + y, "residual_2", li)
        n_run += 1
    h = rnd(ln(x, weights.ln_f_g, weights.ln_f_b), "layernorm_f")
    logits = gemm(h, weights.wte.T, len(rows) - 1).reshape(K, T, -1)
    health.check("lm_head", None, logits.reshape(M, -1), loc)
    lg = logits.astype(np.float64)
    mx = lg.max(-1)
    lse = mx + np.log(np.exp(lg - mx[..., None]).sum(-1))
    loss_tok = np.zeros((K, T), dtype=f32)
    if T > 1:
        picked = np.take_along_axis(lg[:, :-1], tokens[:, 1:, None], -1)[..., 0]
        loss_tok[:, :-1] = lse[:, :-1] - picked
    # a 1-token sequence has no next-token target: no loss (None), not a NaN
    loss = float(loss_tok[:, :-1].astype(np.float64).mean()) if T > 1 else None
    return NumericsResult(logits, loss_tok, loss, lg.argmax(-1), n_run + 1, health)
