"""The ``packet`` timing backend: every router, colour and packet of the grid, and every PE.

Each kernel of the Program is expanded into real packet flows on real routes over the
lowering's geometry (``gpt_workload/mappings/weight_streaming/builder.py``), run by the packet
engine (:mod:`wse_sim.fabric.engine`), with each PE's compute as timed delays:

* **PEs**: every active PE of the kernel's class map runs its class's cycles in ``n_chunks``
  chunks; chunk ``i`` starts when chunk ``i - 1`` is done and its inputs have arrived (its
  share of the weights, its K/V blocks). Output transfers of chunk ``i`` leave when it is done.
* **Weights** (``multicast_2d``): MemoryX streams the block through
  :class:`wse_sim.scheduler.WeightStreamer` (the same process the ``event`` backend uses);
  when chunk ``i`` of the kernel's weights is on the wafer, every column's slice for chunk
  ``i`` enters at the column's north edge port and is multicast down the column (one static
  colour tree per column, delivering to every active PE). Every active PE receives
  ``link_bytes / active PEs`` bytes.
* **Partial sums** (``reduce_scatter_row``): along each segment of ``P`` PEs, a bidirectional
  chain: PE ``j`` receives from its west neighbour the running sums of its own slice and of
  every slice beyond it, farthest first, adds its partials, forwards the others east as they
  stream in and keeps its own, which comes last (and the mirror image westward); slice
  bytes = ``max_link_bytes / (P - 1)``. Alternating colours; cut-through through each PE.
  (Nearest-first order would hold every hop back by one slice.)
* **Segment all-reduce** (``allreduce_row``): chain reduce to the segment's east end, then a
  multicast back west; ``max_link_bytes`` each way (the busiest link, per direction).
* **Head all-reduce** (``allreduce_head``): as ``allreduce_row`` along each group of
  ``pes_per_head`` consecutive PEs of a segment (``Program.layout.pes_per_head``: a head
  split over several PEs all-reduces its partial attention scores).
* **Head exchange** (``exchange_head``): within each such group, PE ``c`` and PE ``c + h``
  (``h = hops``, ``c < h``) swap ``ramp_bytes`` (the rotate-half RoPE partners).
* **K/V** (``multicast_chain``): down each sequence's chain of segments, PE ``j`` of segment
  ``p`` sends its own block followed by every earlier block it received to PE ``j`` of segment
  ``p + 1`` (block bytes = ``max_link_bytes / hops``); attention chunk ``i`` of a segment waits
  for chunk ``i`` of what it receives.

Kernels run one after another (as in ``event``); colours are allocated per kernel by greedy
colouring of the static routes (the transfer's ``colour`` is tried first) and every route is
validated. A kernel's time splits as in the other backends: ``stall`` is the time its slowest
PE waited for weights still in MemoryX, ``compute`` that PE's cycles, ``fabric`` the rest.

The SimPy process of the weight stream and the packet engine run in lock step: the engine
processes its events up to the next SimPy event, then SimPy runs (a weight chunk arrives and
opens gates in the engine), and so on. The engine is the compiled one
(:mod:`wse_sim.fabric.compiled`) unless ``engine="reference"``; on it the PE programs above
(message dependencies, gates, chunks) run inside its compiled loop
(:mod:`wse_sim.fabric.compiled_flow`), not as Python callbacks. Grids above ``max_pes`` PEs
(128 x 128) are refused; use ``event`` for the whole wafer.
"""

from __future__ import annotations

import math
import time

import numpy as np
import simpy

from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError
from wse_sim.fabric.compiled import CompiledFabric
from wse_sim.fabric.compiled_flow import KernelFlow, MessageBlock, MessageTable, build_state
from wse_sim.fabric.engines import ENGINES
from wse_sim.fabric.dataflow import Dataflow
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.lines import LINE_PATTERNS
from wse_sim.fabric.lines import expand as expand_line
from wse_sim.fabric.ports import RAMP
from wse_sim.fabric.routing import RouteTable, tree_route, xy_path, xy_route
from wse_sim.fabric.stats import FabricStats
from wse_sim.fabric.topology import Mesh
from wse_sim.program import Kernel, Program, Transfer
from wse_sim.scheduler import WeightStreamer
from wse_sim.timing.common import (
    IOInterval,
    KernelTime,
    TimingResult,
    compute_cycles,
    per_pe_maps,
)

WAVELET_BYTES = 4  # 32-bit wavelet payload [HPDC24]
PATTERNS = (
    "multicast_2d",
    "reduce_scatter_row",
    "allreduce_row",
    "multicast_chain",
    "allreduce_head",
    "exchange_head",
) + tuple(LINE_PATTERNS)  # the line collectives of the decode lowering: wse_sim.fabric.lines
INF = float("inf")


def _chain_path(
    a: tuple[int, int], b: tuple[int, int], lane: int, rows: int
) -> list[tuple[int, int]]:
    """Path from PE ``a`` to PE ``b`` of the next segment of a sequence. Neighbours in a
    column: one hop. A sequence that wraps to the next column of segments: the ``P`` parallel
    chains (``lane`` = feature position) cross over in different rows (up or down the column
    to row ``min(ra, rb) + lane``, wrapped into the grid's ``rows``, across, then to ``b``),
    so they share no link when there are rows enough; plain XY would push all ``P`` through
    the same row."""
    (ra, ca), (rb, cb) = a, b
    if ca == cb:
        return xy_path(a, b)
    turn_row = (min(ra, rb) + lane) % rows
    mid1, mid2 = (turn_row, ca), (turn_row, cb)
    return xy_path(a, mid1) + xy_path(mid1, mid2)[1:] + xy_path(mid2, b)[1:]


class _KernelRun:
    """One kernel's PEs, routes and messages on the engine."""

    def __init__(
        self,
        k: Kernel,
        program: Program,
        arch: ArchConfig,
        eng: PacketFabric,
        t0: float,
        route_cache: dict,
        pe_programs: str = "compiled",
    ):
        self.k = k
        self.eng = eng
        self.t0 = t0
        self.n = max(k.n_chunks, 1)
        mesh = eng.mesh
        cmap = program.class_maps[k.class_map]
        rc = np.argwhere(cmap >= 0)
        self.pes = [(int(r), int(c)) for r, c in rc]
        cls = cmap[rc[:, 0], rc[:, 1]].astype(np.int64) if len(rc) else np.zeros(0, np.int64)
        cyc = np.zeros(int(max([c.index for c in k.classes] + [int(cls.max(initial=0))])) + 1)
        for c in k.classes:
            cyc[c.index] = c.cycles
        self.chunk_cycles = cyc[cls] / self.n
        self.pidx = np.full(mesh.n_nodes, -1, dtype=np.int64)
        for i, p in enumerate(self.pes):
            self.pidx[mesh.index(p)] = i
        self.cmap = cmap
        layout = program.layout
        self.P = max(layout.pes_per_segment, 1)
        self.k_head = max(layout.pes_per_head or 1, 1)
        npe = len(self.pes)
        self.crit = int(np.argmax(self.chunk_cycles)) if npe else -1
        # per PE: next chunk, its pending inputs, when they are all there
        self.next_chunk = [0] * npe
        self.need = [[0] * self.n for _ in range(npe)]
        self.avail = [[t0] * self.n for _ in range(npe)]
        self.prev_done = [t0] * npe
        self.started = [False] * npe
        self.pes_done = 0
        self.out_gates: dict[tuple[int, int], list[int]] = {}
        self.input_of: dict[int, int] = {}  # message -> chunk it feeds at its destinations
        self.weights_at = [t0] * self.n  # when chunk i of the weights was on the wafer
        self.weight_gate_pe = False  # PEs wait for weights directly (no multicast transfer)
        self.weight_msgs: list[list[int]] = [[] for _ in range(self.n)]
        self.has_weights = False
        self.stall = 0.0
        self.last_tail = t0
        # shortcut for speed: kernels with the same class map and transfer patterns (every
        # GEMM of a layer) get the same routes; build them once and replay them in order
        sig = (
            k.class_map,
            self.P,
            tuple((t.pattern, t.colour, t.hops) for t in k.transfers if t.max_link_bytes > 0),
        )
        cached = route_cache.get(sig)
        if cached is None:
            self.table = RouteTable(mesh, eng.C)
            self._routes: list = []
            route_cache[sig] = (self.table, self._routes)
            self._replay = None
        else:
            self.table, routes = cached
            self._replay = iter(routes)
        self.flow: Dataflow | None = None
        self.fwd = float(arch.fabric.pe_forward_latency_cycles)
        self.pending_msgs: list = []
        self.cf: KernelFlow | None = None  # the PE programs compiled into the engine
        self.compiled = (
            pe_programs == "compiled" and isinstance(eng, CompiledFabric) and not eng.check
        )

    # ------------------------------------------------------------------ building
    def route(self, make, t: Transfer):
        """The next route: allocated on the first kernel of its kind, replayed after."""
        if self._replay is not None:
            return next(self._replay)
        r = self.table.allocate(make(), self.pool(t))
        self._routes.append(r)
        return r

    def unit_packet(self, unit_wavelets: float) -> float:
        """Packet size for a chain whose messages are whole multiples of ``unit_wavelets``
        (a slice, a block): at most the engine's packet size, and no larger than one unit,
        so a PE interleaves the two directions of a chain as the wavelet-exact model does
        (one packet per message of several units pipelines badly through shared RAMPs)."""
        return max(min(float(self.eng.packet_wavelets), math.ceil(unit_wavelets)), 1.0)

    def pool(self, t: Transfer) -> list[int]:
        C = self.eng.C
        return [(t.colour + i) % C for i in range(C)]

    def segments(self, width: int | None = None) -> list[list[tuple[int, int]]]:
        """Active PEs grouped into segments (same row, column // P), west to east; with
        ``width``, into groups of that many columns (a split head's PEs)."""
        w = width or self.P
        segs: dict[tuple[int, int], list] = {}
        for r, c in self.pes:
            segs.setdefault((r, c // w), []).append((r, c))
        return [sorted(v, key=lambda x: x[1]) for _, v in sorted(segs.items())]

    def build(self, has_weights: bool) -> None:
        k = self.k
        patterns = [t.pattern for t in k.transfers if t.max_link_bytes > 0]
        for p in patterns:
            if p not in PATTERNS:
                raise ConfigError(
                    f"kernel {k.name}: transfer pattern {p!r} has no packet-level expansion; "
                    f"known: {', '.join(PATTERNS)}"
                )
        self.has_weights = has_weights
        if has_weights and "multicast_2d" not in patterns:
            self.weight_gate_pe = True
        # (key, src, route, size, deps, gates, edge, feeds chunk or None, out gates, packet)
        msgs = []
        for t in k.transfers:
            if t.max_link_bytes <= 0:
                continue
            if t.pattern in LINE_PATTERNS:
                expand_line(self, t, msgs)
            else:
                getattr(self, "_" + t.pattern)(t, msgs, has_weights)
        self.eng.clear_routes()
        self.eng.install(self.table)
        if self.compiled:
            self._build_compiled(msgs)
            return
        self.flow = Dataflow(self.eng, self.fwd, on_message=self._on_message)
        ids: dict = {}
        for key, src, route, size, deps, gates, edge, feeds, outs, pw in msgs:
            d = tuple((ids[dk], off) for dk, off in deps)
            mid = self.flow.message(
                src,
                route.colour,
                size,
                deps=d,
                gates=gates,
                edge=edge,
                n_dests=len(route.dests),
                packet_wavelets=pw,
            )
            ids[key] = mid
            if feeds is not None:
                self.input_of[mid] = feeds
                for dn in route.dests:
                    pi = self.pidx[self.eng.mesh.index(dn)]
                    if pi >= 0:
                        self.need[pi][feeds] += 1
            for pe, chunk in outs:
                self.out_gates.setdefault((pe, chunk), []).append(mid)
            if edge is not None and gates:
                self.weight_msgs[key[-1]].append(mid)

    def _build_compiled(self, msgs: list) -> None:
        """The messages as a :class:`MessageTable`, run by the compiled engine in its loop
        (same order, same results as the :class:`Dataflow` path)."""
        tab = MessageTable(self.eng, msgs)
        wmsgs: list[list[int]] = [[] for _ in range(self.n)]
        for mid in np.flatnonzero((tab.entry != RAMP) & (tab.gates > 0)).tolist():
            wmsgs[tab.keys[mid][-1]].append(mid)
        W = build_state(
            tab, pidx=self.pidx, n=self.n, chunk_cycles=self.chunk_cycles, crit=self.crit,
            has_weights=self.has_weights, weight_gate_pe=self.weight_gate_pe,
            weight_msgs=wmsgs, fwd=self.fwd, t0=self.t0, t_now=self.eng.now,
        )  # fmt: skip
        self.cf = KernelFlow(self.eng, W, tab.n)
        self.cf.begin()

    def _multicast_2d(self, t: Transfer, msgs: list, has_weights: bool) -> None:
        per_pe = t.link_bytes / max(len(self.pes), 1)
        size = per_pe / WAVELET_BYTES / self.n
        cols: dict[int, list[int]] = {}
        for r, c in self.pes:
            cols.setdefault(c, []).append(r)
        for c, rows in sorted(cols.items()):
            src = (0, c)
            route = self.route(
                lambda src=src, rows=rows, c=c: tree_route(
                    0, src, [xy_path(src, (r, c)) for r in sorted(rows)], entry="N"
                ),
                t,
            )
            for i in range(self.n):
                key = ("mc2d", t.name, c, i)
                gates = 1 if has_weights else 0
                msgs.append((key, src, route, size, (), gates, "N", i, (), None))

    def _multicast_chain(self, t: Transfer, msgs: list, has_weights: bool) -> None:
        if t.hops <= 0:
            return
        kvb = t.max_link_bytes / t.hops / WAVELET_BYTES / self.n  # one block, one chunk
        pw = None  # one direction only: the engine's packet size
        P = self.P
        rows, cols = self.cmap.shape
        order = []  # segments in placement order g: column of segments by column of segments
        for sc in range(cols // P):
            for r in range(rows):
                pos = int(self.cmap[r, sc * P])
                if pos >= 0:
                    order.append((r, sc, pos))
        for g in range(len(order) - 1):
            (ra, sa, pa), (rb, sb, pb) = order[g], order[g + 1]
            if pb != pa + 1:
                continue  # next sequence
            for j in range(P):
                a, b = (ra, sa * P + j), (rb, sb * P + j)
                route = self.route(
                    lambda a=a, b=b, j=j: tree_route(0, a, [_chain_path(a, b, j, rows)]), t
                )
                for i in range(self.n):
                    key = ("kv", t.name, rb, sb, j, i)
                    prev = ("kv", t.name, ra, sa, j, i)
                    deps = ((prev, kvb),) if pa > 0 else ()
                    msgs.append((key, a, route, (pa + 1) * kvb, deps, 0, None, i, (), pw))

    def _reduce_scatter_row(self, t: Transfer, msgs: list, has_weights: bool) -> None:
        if self.P <= 1:
            return
        sl = t.max_link_bytes / (self.P - 1) / WAVELET_BYTES / self.n  # one slice, one chunk
        pw = self.unit_packet(sl)
        if self.compiled:
            self._reduce_scatter_block(t, msgs, sl, pw)
            return
        for seg in self.segments():
            m = len(seg)
            if m < 2:
                continue
            ids = [int(self.pidx[self.eng.mesh.index(x)]) for x in seg]
            east = [
                self.route(lambda j=j, seg=seg: xy_route(0, seg[j], seg[j + 1]), t)
                for j in range(m - 1)
            ]
            west = [
                self.route(lambda j=j, seg=seg: xy_route(0, seg[j], seg[j - 1]), t)
                for j in range(1, m)
            ]
            for i in range(self.n):
                for j in range(m - 1):
                    key = ("rse", t.name, seg[j], i)
                    deps = ((("rse", t.name, seg[j - 1], i), 0.0),) if j > 0 else ()
                    size = (m - 1 - j) * sl
                    msgs.append(
                        (key, seg[j], east[j], size, deps, 1, None, None, [(ids[j], i)], pw)
                    )
                for j in range(m - 1, 0, -1):
                    key = ("rsw", t.name, seg[j], i)
                    deps = ((("rsw", t.name, seg[j + 1], i), 0.0),) if j < m - 1 else ()
                    size = j * sl
                    msgs.append(
                        (key, seg[j], west[j - 1], size, deps, 1, None, None, [(ids[j], i)], pw)
                    )

    def _reduce_scatter_block(self, t: Transfer, msgs: list, sl: float, pw: float) -> None:
        """``_reduce_scatter_row``'s messages, same order, as one :class:`MessageBlock`
        (shortcut for speed: numpy per segment instead of a tuple per message)."""
        n = self.n
        index = self.eng.mesh.index
        routes: list = []
        parts: list = []
        for seg in self.segments():
            m = len(seg)
            if m < 2:
                continue
            nodes = np.asarray([index(x) for x in seg], np.int64)
            ids = self.pidx[nodes]
            r0 = len(routes)
            routes += [
                self.route(lambda j=j, seg=seg: xy_route(0, seg[j], seg[j + 1]), t)
                for j in range(m - 1)
            ]
            routes += [
                self.route(lambda j=j, seg=seg: xy_route(0, seg[j], seg[j - 1]), t)
                for j in range(1, m)
            ]
            je = np.arange(m - 1)
            jw = np.arange(m - 1, 0, -1)
            j = np.concatenate([je, jw])  # one chunk: east j = 0..m-2, then west j = m-1..1
            rid = r0 + np.concatenate([je, (m - 1) + jw - 1])
            size = np.concatenate([(m - 1 - je) * sl, jw * sl])
            dep = np.arange(2 * (m - 1)) - 1
            dep[[0, m - 1]] = -1  # the first of each direction depends on nothing
            k = 2 * (m - 1)
            base = np.arange(n)[:, None] * k
            parts.append((
                np.tile(nodes[j], n), np.tile(rid, n), np.tile(size, n),
                np.where(np.tile(dep, n) >= 0, (base + dep).ravel(), -1),
                np.tile(ids[j], n), np.repeat(np.arange(n), k),
            ))  # fmt: skip
        if not parts:
            return
        cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
        lens = [len(p[0]) for p in parts]
        off = np.repeat(np.cumsum([0] + lens[:-1]), lens)
        dep = np.where(cols[3] >= 0, cols[3] + off, -1)
        msgs.append(
            MessageBlock(
                cols[0], routes, cols[1], cols[2], 1, pw, dep, np.zeros(len(dep)), cols[4],
                cols[5],
            )
        )

    def _allreduce_head(self, t: Transfer, msgs: list, has_weights: bool) -> None:
        self._allreduce_row(t, msgs, has_weights, self.k_head)

    def _exchange_head(self, t: Transfer, msgs: list, has_weights: bool) -> None:
        h = max(int(t.hops), 1)
        x = t.ramp_bytes / WAVELET_BYTES / self.n
        pw = self.unit_packet(x)
        for grp in self.segments(self.k_head):
            ids = [int(self.pidx[self.eng.mesh.index(p)]) for p in grp]
            for c in range(min(h, len(grp) - h)):
                for a, b in ((c, c + h), (c + h, c)):
                    route = self.route(lambda a=a, b=b, g=grp: xy_route(0, g[a], g[b]), t)
                    for i in range(self.n):
                        key = ("xh", t.name, grp[a], i)
                        msgs.append((key, grp[a], route, x, (), 1, None, None, [(ids[a], i)], pw))

    def _allreduce_row(
        self, t: Transfer, msgs: list, has_weights: bool, width: int | None = None
    ) -> None:
        x = t.max_link_bytes / WAVELET_BYTES / self.n  # per direction: reduce east, result west
        pw = self.unit_packet(x)
        for seg in self.segments(width):
            m = len(seg)
            if m < 2:
                continue
            ids = [int(self.pidx[self.eng.mesh.index(p)]) for p in seg]
            chain = [
                self.route(lambda j=j, seg=seg: xy_route(0, seg[j], seg[j + 1]), t)
                for j in range(m - 1)
            ]
            end = seg[-1]
            bcast = self.route(
                lambda end=end, seg=seg: tree_route(
                    0, end, [xy_path(end, seg[0])], deliver_along=True
                ),
                t,
            )
            for i in range(self.n):
                for j in range(m - 1):
                    key = ("arr", t.name, seg[j], i)
                    deps = ((("arr", t.name, seg[j - 1], i), 0.0),) if j > 0 else ()
                    msgs.append((key, seg[j], chain[j], x, deps, 1, None, None, [(ids[j], i)], pw))
                key = ("arb", t.name, end, i)
                deps = ((("arr", t.name, seg[m - 2], i), 0.0),)
                msgs.append((key, end, bcast, x, deps, 1, None, None, [(ids[m - 1], i)], pw))

    # ------------------------------------------------------------------- running
    def start(self) -> None:
        if self.cf is not None:
            self.cf.start(self.t0)
            return
        for pi in range(len(self.pes)):
            self._try(pi, self.t0)

    def weights_arrived(self, i: int, t: float) -> None:
        """Chunk ``i`` of the kernel's weights is on the wafer at cycle ``t``."""
        if self.cf is not None:
            self.cf.weights_arrived(i, t)
            return
        self.weights_at[i] = t
        for mid in self.weight_msgs[i]:
            self.flow.open_gate(mid, t)
        if self.weight_gate_pe:
            for pi in range(len(self.pes)):
                self.need[pi][i] -= 1
                if t > self.avail[pi][i]:
                    self.avail[pi][i] = t
                if self.next_chunk[pi] == i and not self.started[pi]:
                    self._try(pi, t)

    def add_weight_gates(self) -> None:
        if self.weight_gate_pe and self.cf is None:  # (the compiled flow adds its own)
            for pi in range(len(self.pes)):
                for i in range(self.n):
                    self.need[pi][i] += 1

    def _on_message(self, mid: int, node: int, head: float, tail: float) -> None:
        if tail > self.last_tail:
            self.last_tail = tail
        chunk = self.input_of.get(mid)
        if chunk is None:
            return
        pi = self.pidx[node]
        if pi < 0:
            return
        self.need[pi][chunk] -= 1
        if tail > self.avail[pi][chunk]:
            self.avail[pi][chunk] = tail
        if self.next_chunk[pi] == chunk and not self.started[pi]:
            self._try(pi, self.eng.now)

    def _try(self, pi: int, now: float) -> None:
        i = self.next_chunk[pi]
        if i >= self.n or self.started[pi] or self.need[pi][i] > 0:
            return
        ready = self.prev_done[pi]
        t = max(ready, self.avail[pi][i], now)
        self.started[pi] = True
        if pi == self.crit and self.has_weights:
            w = self.weights_at[i]
            if w > ready:
                self.stall += min(w, t) - ready  # waiting for weights still in MemoryX
        self.eng.schedule(t + self.chunk_cycles[pi], self._done, pi, i)

    def _done(self, pi: int, i: int) -> None:
        t = self.eng.now
        self.prev_done[pi] = t
        self.started[pi] = False
        for mid in self.out_gates.get((pi, i), ()):
            self.flow.open_gate(mid, t)
        self.next_chunk[pi] = i + 1
        if i + 1 < self.n:
            self._try(pi, t)
        else:
            self.pes_done += 1

    def finish(self) -> None:
        """Take the compiled flow's results (stall, last tail, PEs' last chunk ends)."""
        if self.cf is not None:
            self.stall, self.last_tail = self.cf.stall, self.cf.last_tail
            self.prev_done = self.cf.prev_done()
            self.cf.finish()

    def done(self) -> bool:
        if self.cf is not None:
            return self.cf.done()
        return (
            self.pes_done == len(self.pes)
            and self.eng.in_flight == 0
            and (self.flow is None or self.flow.all_delivered())
        )


def run_packet(
    program: Program,
    arch: ArchConfig,
    *,
    packet_wavelets: int = 1024,
    max_pes: int = 128 * 128,
    check: bool = False,
    engine: str = "compiled",
    pe_programs: str = "compiled",
) -> TimingResult:
    """Simulate ``program`` on ``arch`` router by router; time unit inside is the PE cycle.

    Args:
        packet_wavelets: largest packet (1 = wavelet-exact; the default moves each chunk of a
            flow in a few packets, which keeps a 32 x 32 transformer block to seconds).
        max_pes: largest grid accepted (128 x 128: a transformer block there takes about
            a minute of CPU on a 2-core machine; see benchmarks/bench_packet.py).
        check: engine conservation bookkeeping (tests).
        engine: ``"compiled"`` (:class:`~wse_sim.fabric.compiled.CompiledFabric`, default)
            or ``"reference"`` (:class:`~wse_sim.fabric.engine.PacketFabric`, the
            pure-Python engine the compiled one is held to); same results.
        pe_programs: ``"compiled"`` (default: the PE programs run inside the compiled
            engine's loop, :mod:`wse_sim.fabric.compiled_flow`) or ``"python"`` (as Python
            callbacks, :class:`~wse_sim.fabric.dataflow.Dataflow`; always so on the reference
            engine or with ``check``); same results.

    Returns:
        A :class:`TimingResult`; ``extra`` holds the fabric statistics (``fabric`` summary,
        ``fabric_stats`` object with the link-utilisation maps, ``conservation``).

    Raises:
        ConfigError: grid larger than ``max_pes``, an unknown ``engine`` or
            ``pe_programs``, or a transfer
            pattern it cannot expand.
        FabricDeadlock: the routes deadlock (a lowering bug).
    """
    n_pe = program.rows * program.cols
    if n_pe > max_pes:
        raise ConfigError(
            f"fidelity=packet simulates every router: the {program.rows}x{program.cols} grid "
            f"({n_pe} PEs) exceeds {max_pes}; use fidelity=event (whole wafer) or a smaller "
            "grid such as arch grid32"
        )
    if engine not in ENGINES:
        raise ConfigError(f"packet engine {engine!r} unknown; choose from {', '.join(ENGINES)}")
    if pe_programs not in ("compiled", "python"):
        raise ConfigError(f"pe_programs {pe_programs!r} unknown; choose from compiled, python")
    wall0 = time.perf_counter()
    clk = arch.pe.clock_hz
    mesh = Mesh(program.rows, program.cols)
    eng = ENGINES[engine].from_arch(
        mesh, arch.fabric, packet_wavelets=packet_wavelets, check=check
    )
    env = simpy.Environment()
    streamer = WeightStreamer(env, program, arch)
    times: list[KernelTime] = []

    route_cache: dict = {}

    def kernel_sequence():
        offset: dict[int, float] = {}
        for k in program.kernels:
            start = env.now
            eng.now = max(eng.now, start)
            kr = _KernelRun(k, program, arch, eng, start, route_cache, pe_programs)
            blk = k.weight_block
            has_w = blk >= 0 and k.weight_bytes > 0
            kr.build(has_w)
            kr.add_weight_gates()
            if has_w:
                base = offset.get(blk, 0.0)
                offset[blk] = base + k.weight_bytes
                for i in range(kr.n):
                    ev = streamer.arrived(blk, base + k.weight_bytes * (i + 1) / kr.n)
                    if ev is None:
                        kr.weights_arrived(i, start)
                    else:
                        ev.callbacks.append(lambda _e, i=i, kr=kr: kr.weights_arrived(i, env.now))
            elif blk >= 0:
                offset.setdefault(blk, 0.0)
            kr.start()
            # lock step: the engine runs up to the next SimPy event, then SimPy runs
            while not kr.done():
                t_lim = env.peek()
                eng.run(until=t_lim)
                if kr.done():
                    break
                t_next = min(eng.peek(), t_lim)
                if t_next == INF:
                    raise RuntimeError(f"kernel {k.name} cannot finish (nothing left to run)")
                yield env.timeout(max(t_next - env.now, 0.0))
            kr.finish()
            end = max(eng.now, env.now, kr.last_tail, max(kr.prev_done, default=start))
            if end > env.now:
                yield env.timeout(end - env.now)
            if blk >= 0 and streamer.is_last_use(blk, k):
                streamer.release(blk)
            comp = compute_cycles(k)
            dur = end - start
            stall = min(kr.stall, max(dur - comp, 0.0))
            times.append(KernelTime.of(k, start, end, stall, clk))

    done = env.process(kernel_sequence())
    env.run(until=done)
    busy, sram = per_pe_maps(program)
    total = env.now / clk
    stats = FabricStats.from_engine(eng, env.now)
    return TimingResult(
        backend="packet",
        total_s=total,
        kernels=times,
        io_busy_s=streamer.busy_cycles / clk,
        idle_s=max(total - sum(t.duration_s for t in times), 0.0),
        pe_busy_cycles=busy,
        sram_peak_bytes=sram,
        link_bytes=stats.wavelet_hops * WAVELET_BYTES,
        events=eng.events + streamer.events,
        io_blocks=[
            IOInterval(
                program.weight_blocks[b].name, b, t0 / clk, t1 / clk, program.weight_blocks[b].bytes
            )
            for b, t0, t1 in streamer.block_times
        ],
        extra={
            "packet_wavelets": packet_wavelets,
            "engine": engine,
            "max_blocks_buffered": streamer.max_held,
            "io_backpressure_s": streamer.blocked_cycles / clk,
            "fabric": stats.summary(),
            "fabric_stats": stats,
            "conservation": eng.conservation(),
            "program_link_bytes": sum(tr.link_bytes for k in program.kernels for tr in k.transfers),
            "wall_s": time.perf_counter() - wall0,
        },
    )
