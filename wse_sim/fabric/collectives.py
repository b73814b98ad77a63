"""Collectives on rows, columns and the whole grid, run on the packet engine, and their models.

Algorithms (vectors of ``n`` 32-bit elements, one wavelet each):

* **broadcast**: one multicast tree from the root (XY tree: along the root's row, then the
  columns); no PE forwards anything.
* **reduce, chain**: every PE adds its vector to the running sum it receives and forwards it
  one hop towards the root (two alternating colours); cut-through through each PE.
* **reduce, tree**: recursive halving; at stage ``s`` PE ``i`` (``i mod 2^(s+1) = 2^s``)
  sends its partial sum ``2^s`` hops towards the root. One colour per stage.
* **all-reduce, chain**: chain reduce to one end of the line, then a multicast back (the
  segment all-reduce of the weight-streaming lowering).
* **all-reduce, ring**: reduce-scatter then all-gather around a folded ring (positions
  0, 2, 4, ..., 5, 3, 1 so each ring hop is at most two mesh hops), ``2 (p - 1)`` steps of
  ``ceil(n / p)`` elements, at least one wavelet per step (:func:`ring_chunk_wavelets`);
  :func:`latency_bound_cycles` is the time no schedule can beat.
* **2-D** (whole grid): reduce/all-reduce every row, then every column of the results.

Models beside the simulation:

* :func:`hpdc24_cycles`: the published wafer-scale model ``T = max(C, E/N + L) + (2 T_R + 1) D``
  of Luczynski et al., "Near-Optimal Wafer-Scale Reduce", HPDC 2024 ([HPDC24],
  ``shared/reference/wse_hardware.md``; < 4 % error on WSE-2): ``C`` the elements the busiest
  PE must receive, ``E`` the element-hops, ``N`` the links used, ``L`` the longest path in
  hops, ``D`` the store-and-forward depth, ``T_R ~ 2`` cycles. :func:`hpdc24_terms` gives our
  instantiation of ``C, E, N, L, D`` per algorithm.
* :func:`closed_form_cycles`: the same structure with this simulator's constants (hop, turn,
  RAMP latency and rate, PE forward latency), which the packet engine should meet at zero load.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from wse_sim.errors import ConfigError
from wse_sim.fabric.dataflow import Dataflow
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.routing import RouteTable, multicast_xy, xy_route
from wse_sim.fabric.topology import Mesh, Node
from wse_sim.program import Kernel, LayoutGeometry, PEClass, Program, Transfer

KINDS = ("broadcast", "reduce", "allreduce")
ALGORITHMS = {"broadcast": ("tree",), "reduce": ("chain", "tree"), "allreduce": ("chain", "ring")}
SCOPES = ("row", "column", "grid")


@dataclass
class CollectiveResult:
    """One simulated collective.

    Attributes:
        kind, algorithm, scope: what ran (``scope`` row/column/grid).
        n_pes: PEs taking part; distance_hops: longest root-to-leaf distance.
        message_wavelets: vector length per PE (wavelets = fp32 elements).
        time_cycles: simulated time until the last result wavelet is in place.
        closed_form_cycles: zero-load model with this fabric's constants.
        hpdc24_cycles: the published model [HPDC24] with its constants (``T_R = 2``,
            1-cycle hops), where it applies (reduce and all-reduce on a line), else NaN.
        wavelet_hops, packets, events, wall_s: work and host time.
    """

    kind: str
    algorithm: str
    scope: str
    n_pes: int
    distance_hops: int
    message_wavelets: float
    packet_wavelets: int
    time_cycles: float
    closed_form_cycles: float
    hpdc24_cycles: float
    wavelet_hops: float
    packets: int
    events: int
    wall_s: float

    def to_dict(self) -> dict:
        """Plain data (CSV row)."""
        return asdict(self)


# ----------------------------------------------------------------------------- models
def hpdc24_cycles(C: float, E: float, N: float, L: float, D: float, T_R: float = 2.0) -> float:
    """[HPDC24] ``T = max(C, E / N + L) + (2 T_R + 1) D`` (cycles)."""
    return max(C, (E / N if N else 0.0) + L) + (2.0 * T_R + 1.0) * D


def hpdc24_terms(kind: str, algorithm: str, p: int, n: float) -> tuple[float, ...]:
    """``(C, E, N, L, D)`` of a collective over a line of ``p`` PEs with ``n`` elements each,
    1-cycle hops (our instantiation of [HPDC24]'s terms).

    * chain reduce: every PE receives ``n`` (C), ``n (p-1)`` element-hops over ``p - 1``
      links, path ``p - 1``, depth ``p - 1``;
    * tree reduce: the root receives ``n`` per stage (C = ``n ceil(log2 p)``), stage ``s``
      moves ``n`` over ``2^s`` hops per pair, path ``p - 1``, depth = stages;
    * all-reduce = the reduce, then a broadcast back (C = n, path p - 1, no depth): the
      terms of the two phases add.
    """
    if p <= 1:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    if algorithm == "chain":
        C, E, N, L, D = n, n * (p - 1), p - 1, p - 1, p - 1
    elif algorithm == "tree":
        stages = math.ceil(math.log2(p))
        E = sum(n * len(range(1 << s, p, 2 << s)) * (1 << s) for s in range(stages))
        C, N, L, D = n * stages, p - 1, p - 1, stages
    else:
        raise ConfigError(f"no [HPDC24] terms for {kind}/{algorithm}")
    return (C, E, N, L, D)


def hpdc24_model(kind: str, algorithm: str, p: int, n: float, T_R: float = 2.0) -> float:
    """[HPDC24] cycles for ``kind`` (reduce / all-reduce) by ``algorithm`` on a line of ``p``
    PEs; all-reduce adds a broadcast ``max(n, n + p - 1)`` after the reduce. NaN where the
    model does not apply (ring, broadcast alone)."""
    if kind == "reduce" and algorithm in ("chain", "tree"):
        return hpdc24_cycles(*hpdc24_terms(kind, algorithm, p, n), T_R=T_R)
    if kind == "allreduce" and algorithm == "chain":
        red = hpdc24_cycles(*hpdc24_terms("reduce", "chain", p, n), T_R=T_R)
        return red + (n + p - 1 if p > 1 else 0.0)
    return float("nan")


def closed_form_cycles(
    kind: str, algorithm: str, p: int, n: float, eng: PacketFabric, fwd: float = 1.0
) -> float:
    """Zero-load time on a line of ``p`` PEs with this engine's constants (1 packet per
    message, cut-through PEs, forward latency ``fwd``): ``n / rate`` of serialisation plus
    the latency of the longest chain of hops and PE stages (for the tree reduce the larger
    of the overlapped, bandwidth-bound form and the chain of its ``ceil(log2 p)`` stages'
    latencies, so that a small vector never beats the stages' latency). NaN for the ring
    (its steps overlap in a way this simple form does not capture; see
    :func:`latency_bound_cycles`)."""
    if p <= 1:
        return 0.0
    ser = n / min(eng.link_rate, eng.ramp_rate)
    hop, ramp = eng.hop, eng.ramp
    stage = 2 * ramp + hop + fwd  # RAMP in, one hop, RAMP out, combine
    if kind == "broadcast":
        return 2 * ramp + (p - 1) * hop + ser
    if algorithm == "chain":
        red = ser + (p - 1) * stage
        if kind == "reduce":
            return red
        # the broadcast back shares each PE's RAMP with the reduce: it follows it
        return red + 2 * ramp + (p - 1) * hop + ser
    if algorithm == "tree" and kind == "reduce":
        stages = math.ceil(math.log2(p))
        # bandwidth-bound: the root's RAMP receives one vector per stage, then the last
        # stage's latency; latency-bound: stage s waits for stage s - 1 (the sender of stage
        # s first receives its own partners' sums), so every stage's latency adds
        # (2 RAMP + 2^s hops + combine), plus one vector's serialisation
        overlapped = ser * stages + (2 * ramp + (1 << (stages - 1)) * hop + fwd)
        chained = sum(2 * ramp + (1 << s) * hop + fwd for s in range(stages)) + ser
        return max(overlapped, chained)
    return float("nan")


# ---------------------------------------------------------------------------- helpers
def _line(mesh: Mesh, scope: str, index: int = 0) -> list[Node]:
    if scope == "row":
        return [(index, c) for c in range(mesh.cols)]
    if scope == "column":
        return [(r, index) for r in range(mesh.rows)]
    raise ConfigError(f"scope {scope!r} is not a line")


def folded_ring(p: int) -> list[int]:
    """Ring order of ``p`` PEs on a line with every ring hop at most two mesh hops."""
    evens = list(range(0, p, 2))
    odds = [i for i in range(p - 1, 0, -1) if i % 2 == 1]
    return evens + odds


class _Build:
    """Routes and messages of one collective on one engine."""

    def __init__(self, eng: PacketFabric, fwd: float):
        self.eng = eng
        self.table = RouteTable(eng.mesh, eng.C)
        self.pool = list(range(eng.C))
        self.flow: Dataflow | None = None
        self.fwd = fwd
        self.pending: list = []  # (src, route, size, deps, whole, key)
        self.ids: dict = {}
        self.results: list[tuple] = []  # (key, node) whose arrival ends the collective

    def route(self, route):
        return self.table.allocate(route, self.pool)

    def msg(self, key, src, route, size, deps=(), whole=()):
        self.pending.append((key, src, route, size, tuple(deps), tuple(whole)))

    def run(self) -> float:
        self.eng.install(self.table)
        self.flow = Dataflow(self.eng, self.fwd)
        for key, src, route, size, deps, whole in self.pending:
            d = tuple((self.ids[k], 0.0) for k in deps)
            w = tuple(self.ids[k] for k in whole)
            self.ids[key] = self.flow.message(
                src, route.colour, size, deps=d, whole=w, n_dests=len(route.dests)
            )
        self.eng.run()
        t = 0.0
        for key, node in self.results:
            got = self.flow.arrival(self.ids[key], node)
            if got is None:
                raise RuntimeError(f"collective message {key} never reached {node}")
            t = max(t, got[1])
        return t


def _reduce_line(b: _Build, line: list[Node], algorithm: str, n: float, tag, after=None):
    """Messages reducing ``line`` towards ``line[0]``; returns the keys delivered at the root
    (the root adds them: its result is ready ``fwd`` after the last tail). ``after`` maps a
    node to message keys that must have fully arrived there before it sends (2-D phases)."""
    after = after or {}
    p = len(line)
    final = []
    if p <= 1:
        return final
    if algorithm == "chain":
        order = line[::-1]  # from the far end towards the root
        prev = None
        for i in range(p - 1):
            a, c = order[i], order[i + 1]
            r = b.route(xy_route(0, a, c))
            key = (tag, "chain", i)
            b.msg(key, a, r, n, deps=() if prev is None else (prev,), whole=after.get(a, ()))
            prev = key
        final.append((prev, order[-1]))
    elif algorithm == "tree":
        children: dict[Node, list] = {x: [] for x in line}
        s = 0
        while (1 << s) < p:
            half = 1 << s
            for i in range(half, p, 2 * half):
                a, c = line[i], line[i - half]
                r = b.route(xy_route(0, a, c))
                key = (tag, "tree", s, i)
                b.msg(key, a, r, n, deps=tuple(children[a]), whole=after.get(a, ()))
                children[c].append(key)
            s += 1
        final.extend((k, line[0]) for k in children[line[0]])
    else:
        raise ConfigError(f"reduce algorithm {algorithm!r} unknown; allowed: chain, tree")
    return final


def ring_chunk_wavelets(n: float, p: int) -> float:
    """Wavelets one ring step moves: ``ceil(n / p)``, at least one. A wavelet carries one
    fp32 element and cannot be split, so with fewer elements than PEs every step still sends
    a whole wavelet (some carry padding); the vector is padded to ``p x chunk``."""
    return float(max(1, math.ceil(n / p - 1e-9)))


def latency_bound_cycles(
    kind: str, algorithm: str, p: int, n: float, eng: PacketFabric, fwd: float = 1.0
) -> float:
    """A lower bound on the time of a collective over a line of ``p`` PEs, ``n`` wavelets
    each, on ``eng`` (hop latency ``h``, RAMP latency ``r``, rates ``link_rate``,
    ``ramp_rate``), that no schedule of the algorithm can beat.

    * **any collective**: the far end's data must reach the other end: inject through a
      RAMP (``r``), ``p - 1`` hops (``(p - 1) h``), eject (``r``), and at least its
      serialisation ``n / rate`` (``rate = min(link_rate, ramp_rate)``) behind the head:
      ``2 r + (p - 1) h + n / rate``.
    * **ring all-reduce** (reduce-scatter then all-gather, ``2 (p - 1)`` steps): step
      ``s + 1`` of a PE forwards what step ``s`` delivered to it, so the ``2 (p - 1)``
      messages along one ring path form a dependency chain. Each message crosses at least
      one mesh hop between two PEs: ``2 r + h`` from its first wavelet leaving to its first
      wavelet arriving; each forward adds the PE's ``fwd`` (cut-through: ``2 (p - 1) - 1``
      forwards); the last one's tail arrives ``c / rate`` after its head, with ``c =``
      :func:`ring_chunk_wavelets` ``(n, p) >= 1`` (a step moves at least one wavelet):
      ``T >= 2 (p - 1) (2 r + h) + (2 p - 3) fwd + c / rate``. Independently, every ring
      link carries ``2 (p - 1)`` chunks one after another: ``T >= 2 (p - 1) c / rate``.
      The bound is the larger of the two and of the line bound above.

    Returns 0 for ``p <= 1``.
    """
    if p <= 1:
        return 0.0
    rate = min(eng.link_rate, eng.ramp_rate)
    line = 2 * eng.ramp + (p - 1) * eng.hop + n / rate
    if kind == "allreduce" and algorithm == "ring":
        c = ring_chunk_wavelets(n, p)
        steps = 2 * (p - 1)
        chain = steps * (2 * eng.ramp + eng.hop) + (steps - 1) * fwd + c / rate
        return max(line, chain, steps * c / rate)
    return line


def _ring_allreduce(b: _Build, line: list[Node], n: float, tag, after=None):
    """Folded-ring all-reduce over ``line``; returns (key, node) of the last deliveries.
    Each of the ``2 (p - 1)`` steps moves :func:`ring_chunk_wavelets` (at least one whole
    wavelet) and pays its hop and RAMP latency."""
    after = after or {}
    p = len(line)
    if p <= 1:
        return []
    ring = [line[i] for i in folded_ring(p)]
    routes = [b.route(xy_route(0, ring[i], ring[(i + 1) % p])) for i in range(p)]
    chunk = ring_chunk_wavelets(n, p)
    prev: list = [None] * p
    last = []
    for phase in ("rs", "ag"):
        for s in range(p - 1):
            cur = []
            for i in range(p):
                src = ring[i]
                dep = prev[(i - 1) % p]
                key = (tag, phase, s, i)
                whole = after.get(src, ()) if (phase, s) == ("rs", 0) else ()
                b.msg(key, src, routes[i], chunk, deps=() if dep is None else (dep,), whole=whole)
                cur.append(key)
            prev = cur
            if phase == "ag":
                last.extend((cur[i], ring[(i + 1) % p]) for i in range(p))
    return last


def run_collective(
    kind: str,
    algorithm: str,
    scope: str,
    mesh: Mesh,
    n_wavelets: float,
    *,
    eng: PacketFabric | None = None,
    fwd_latency_cycles: float = 1,
    packet_wavelets: int = 64,
    index: int = 0,
    check: bool = False,
) -> tuple[CollectiveResult, PacketFabric]:
    """Simulate one collective on ``mesh`` (a fresh engine unless ``eng`` is given).

    Args:
        kind: ``broadcast``, ``reduce`` or ``allreduce``.
        algorithm: ``tree`` (broadcast, reduce), ``chain`` (reduce, all-reduce), ``ring``
            (all-reduce).
        scope: ``row`` (row ``index``), ``column`` (column ``index``) or ``grid``.
        n_wavelets: vector length per PE.
        packet_wavelets: packet size the messages are cut into.
        check: engine conservation bookkeeping (tests).

    Raises:
        ConfigError: unknown kind, algorithm or scope.
    """
    if kind not in KINDS:
        raise ConfigError(f"collective {kind!r} unknown; allowed: {', '.join(KINDS)}")
    if algorithm not in ALGORITHMS[kind]:
        raise ConfigError(
            f"{kind} algorithm {algorithm!r} unknown; allowed: {', '.join(ALGORITHMS[kind])}"
        )
    if scope not in SCOPES:
        raise ConfigError(f"scope {scope!r} unknown; allowed: {', '.join(SCOPES)}")
    t0 = time.perf_counter()
    if eng is None:
        eng = PacketFabric(mesh, packet_wavelets=packet_wavelets, check=check)
    b = _Build(eng, fwd_latency_cycles)
    lines = (
        [_line(mesh, scope, index)]
        if scope != "grid"
        else [_line(mesh, "row", r) for r in range(mesh.rows)]
    )
    add_fwd = 0.0
    if kind == "broadcast":
        root = lines[0][0]
        nodes = [x for ln in lines for x in ln] if scope != "grid" else list(mesh.graph.nodes)
        dests = [x for x in nodes if x != root]
        r = b.route(multicast_xy(0, root, dests))
        b.msg("bcast", root, r, n_wavelets)
        b.results = [("bcast", x) for x in dests]
        p, dist = len(nodes), max((mesh.hops(root, x) for x in dests), default=0)
    elif kind == "reduce":
        finals = []
        for i, ln in enumerate(lines):
            finals += _reduce_line(b, ln, algorithm, n_wavelets, ("row", i))
        if scope == "grid":
            col = [ln[0] for ln in lines]
            after = {x: tuple(k for k, nd in finals if nd == x) for x in col}
            finals = _reduce_line(b, col, algorithm, n_wavelets, ("col", 0), after)
        b.results = finals
        add_fwd = fwd_latency_cycles  # the root adds the last partial
        p = len(lines[0]) if scope != "grid" else mesh.rows * mesh.cols
        dist = (len(lines[0]) - 1) + (mesh.rows - 1 if scope == "grid" else 0)
    else:
        finals = []
        for i, ln in enumerate(lines):
            if algorithm == "ring":
                finals += _ring_allreduce(b, ln, n_wavelets, ("row", i))
            else:
                red = _reduce_line(b, ln[::-1], "chain", n_wavelets, ("row", i))
                end = ln[-1]
                r = b.route(multicast_xy(0, end, ln[:-1])) if len(ln) > 1 else None
                if r is not None:
                    key = (("row", i), "bcast")
                    b.msg(key, end, r, n_wavelets, deps=tuple(k for k, _ in red))
                    finals += [(key, x) for x in ln[:-1]]
                finals += [(k, end) for k, _ in red]
        if scope == "grid":
            cols = [[ln[c] for ln in lines] for c in range(mesh.cols)]
            after = {}
            for k, nd in finals:
                after.setdefault(nd, []).append(k)
            after = {k2: tuple(v) for k2, v in after.items()}
            finals2 = []
            for j, cl in enumerate(cols):
                if algorithm == "ring":
                    finals2 += _ring_allreduce(b, cl, n_wavelets, ("col", j), after)
                else:
                    red = _reduce_line(b, cl[::-1], "chain", n_wavelets, ("col", j), after)
                    end = cl[-1]
                    if len(cl) > 1:
                        r = b.route(multicast_xy(0, end, cl[:-1]))
                        key = (("col", j), "bcast")
                        b.msg(key, end, r, n_wavelets, deps=tuple(k for k, _ in red))
                        finals2 += [(key, x) for x in cl[:-1]]
                    finals2 += [(k, end) for k, _ in red]
            finals = finals2
        b.results = finals
        p = len(lines[0]) if scope != "grid" else mesh.rows * mesh.cols
        dist = (len(lines[0]) - 1) + (mesh.rows - 1 if scope == "grid" else 0)
    t = b.run() + add_fwd if b.results else 0.0
    line_p = len(lines[0])
    nan = float("nan")
    line = scope != "grid"
    cf = closed_form_cycles(kind, algorithm, line_p, n_wavelets, eng, fwd_latency_cycles)
    cf = cf if line else nan
    hp = hpdc24_model(kind, algorithm, line_p, n_wavelets) if line else nan
    res = CollectiveResult(
        kind=kind,
        algorithm=algorithm,
        scope=scope,
        n_pes=p,
        distance_hops=dist,
        message_wavelets=float(n_wavelets),
        packet_wavelets=eng.packet_wavelets,
        time_cycles=t,
        closed_form_cycles=cf,
        hpdc24_cycles=hp,
        wavelet_hops=eng.wavelet_hops(),
        packets=eng.packets_injected,
        events=eng.events,
        wall_s=time.perf_counter() - t0,
    )
    return res, eng


# ------------------------------------------------------- micro-benchmark Programs
def collective_program(
    pattern: str,
    rows: int,
    cols: int,
    message_bytes: float,
    *,
    pes_per_segment: int | None = None,
    n_chunks: int = 8,
    precision: str = "fp32",
) -> Program:
    """A one-kernel :class:`Program` whose only work is one fabric transfer of the
    weight-streaming lowering, for holding the ``event`` and ``analytic`` backends to the
    ``packet`` one on pure communication. The transfer's fields follow the lowering's
    formulas (``gpt_workload/mappings/weight_streaming/builder.py``):

    * ``multicast_2d``: every PE receives ``message_bytes`` entering at the north edge of its
      column (busiest link carries ``message_bytes``; ``rows`` hops);
    * ``reduce_scatter_row``: segments of ``P`` PEs; each PE holds ``message_bytes`` of partial
      sums per output slice; the busiest link carries ``(P - 1) x message_bytes``;
    * ``allreduce_row``: segments of ``P``; ``message_bytes`` per PE reduced along the segment
      and broadcast back (``message_bytes`` each way on the busiest link, ``2 x
      message_bytes`` through every PE's RAMP, as the lowering counts them);
    * ``multicast_chain``: each column of ``rows`` segments (P = 1) is a sequence; each
      segment sends its ``message_bytes`` block to every later one (``(rows - 1) x`` on the
      busiest link).

    Raises:
        ConfigError: unknown pattern or a segment width that does not divide ``cols``.
    """
    P = pes_per_segment or cols
    if cols % P:
        raise ConfigError(f"pes_per_segment={P} must divide cols={cols}")
    n_pe = rows * cols
    m = message_bytes
    if pattern == "multicast_2d":
        tr = Transfer(
            "weight multicast", pattern, "vertical", m, n_pe * m, rows, 0, 0, ramp_bytes=m
        )
    elif pattern == "reduce_scatter_row":
        tr = Transfer(
            "partial-sum reduce-scatter",
            pattern,
            "horizontal",
            (P - 1) * m,
            (n_pe // P) * P * (P - 1) * m,
            P - 1,
            0,
            1,
            relays=max(P - 2, 0),
            ramp_bytes=(P + 1 if P >= 3 else P - 1) * m,
        )
    elif pattern == "allreduce_row":
        tr = Transfer(
            "segment all-reduce",
            pattern,
            "horizontal",
            m,  # per direction: the sum east, the result back west
            (n_pe // P) * 2 * (P - 1) * m,
            2 * (P - 1),
            0,
            3,
            relays=max(P - 1, 0),
            ramp_bytes=2 * m if P >= 3 else m * (P - 1),
        )
    elif pattern == "multicast_chain":
        P = 1
        q = rows
        tr = Transfer(
            "K/V multicast",
            pattern,
            "vertical",
            (q - 1) * m,
            cols * m * (q - 1) * q / 2,
            q - 1,
            0,
            2,
            relays=max(q - 2, 0),
            ramp_bytes=(q - 1) * m,
        )
    else:
        raise ConfigError(
            f"pattern {pattern!r} unknown; allowed: multicast_2d, reduce_scatter_row, "
            "allreduce_row, multicast_chain"
        )
    tokens = np.zeros((rows, cols), dtype=np.int16)
    pos = np.repeat(np.arange(rows, dtype=np.int16)[:, None], cols, axis=1)
    cmap = "position" if pattern == "multicast_chain" else "tokens"
    if cmap == "position":
        cls = tuple(PEClass(r, cols, 0.0, 0.0, 0.0) for r in range(rows))
    else:
        cls = (PEClass(0, n_pe, 0.0, 0.0, 0.0),)
    kernel = Kernel(f"micro.{pattern}", pattern, 0, 0, cls, cmap, (tr,), n_chunks=n_chunks)
    return Program(
        f"micro/{pattern}",
        rows,
        cols,
        precision,
        [kernel],
        [],
        {"tokens": tokens, "position": pos},
        LayoutGeometry(
            grid=(rows, cols),
            pes_per_segment=P,
            segments_per_sequence=rows if pattern == "multicast_chain" else 1,
        ),
    )
