"""Packet- and wavelet-level model of the WSE fabric: routers, colours, credits.

One router per PE with ports ``N``, ``E``, ``S``, ``W`` and ``RAMP`` ([CSL], see
``shared/reference/wse_hardware.md``). What is modelled:

* **Colours** are virtual channels. Each router holds one input buffer per (input port,
  colour) of ``buffer_wavelets`` wavelets. A colour is routed either by the static rules of a
  :class:`~wse_sim.fabric.routing.RouteTable` (the WSE way: one receive port, one or several
  transmit ports, multicast by copying) or, for network studies, per packet by its
  destination in dimension order (``"xy"`` or ``"yx"``, as a packet-switched NoC does).
* **Links** carry ``link_wavelets_per_cycle`` 32-bit wavelets per cycle per direction
  ([HPDC24]: 1). A packet of ``S`` wavelets occupies a link for ``S / rate`` cycles.
* **Flow control** is credit based and cut-through: a packet may start on a link when the
  next router's buffer for its colour has room for it (an empty buffer always takes one
  packet, so packets larger than the buffer still move); its head reaches the next router
  ``hop_latency_cycles`` later (plus ``turn_latency_cycles`` if it changes direction there)
  and it can leave again at once; its tail can never overtake the tail upstream. The buffer
  is freed when the packet's tail has left on every transmit port (multicast copies leave
  independently, each when its port is free; the buffer's next packet waits: FIFO per colour).
* **RAMP**: the PE injects through a port of ``ramp_wavelets_per_cycle`` that takes
  ``ramp_latency_cycles`` to reach the router, and receives the same way. Off-grid input
  (MemoryX weights) enters through edge ports at the link rate and hop latency.
* **Arbitration**: a port serves the buffers waiting for it round-robin, skipping those whose
  next buffer has no room. Ties in time break by a sequence number (deterministic).
* **Relays** (optional): a PE may forward what it receives on one colour onto another, with a
  bounded forwarding queue (a ring's PE-level store and forward); packets carry a relay
  budget ``ttl``.

Packet size ``packet_wavelets = 1`` is wavelet-exact; larger packets move as units
(virtual cut-through), trading detail for speed.

Zero-load latency of one packet of ``S`` wavelets over ``h`` hops and ``t`` turns, injected
and delivered through RAMPs (the closed form the tests hold the engine to)::

    2 * ramp_latency + h * hop_latency + t * turn_latency + S / min(link_rate, ramp_rate)

counted from the cycle the PE hands it to its RAMP to the cycle its last wavelet reaches the
destination PE.

**Deadlock**: a blocked port creates no events, so when the event queue runs dry (or no
packet has moved for ``deadlock_cycles``) with packets still in buffers, the engine builds the
wait-for graph of buffers (a buffer waits for the buffer its head packet needs room in) and
raises :class:`~wse_sim.fabric.errors.FabricDeadlock` naming the cycle; it never hangs.

Hot path: integer indices into flat lists (no dicts or objects per router), one ``heapq`` of
``(time, seq, kind, a, b)`` tuples, ``deque`` FIFOs; O(1) work per event plus a ``log`` for
the heap and a scan of the (few) buffers waiting on one port. Two shortcuts (commented where
they are): a packet whose single port is idle and unclaimed is granted without queueing for
it, and a buffer that nobody waits on is freed lazily, when it is next looked at, instead of
by an event at the cycle its packet's tail left (so peak occupancy may count such a packet
a little longer than it stays).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Callable

from wse_sim.fabric.engine_report import EngineReport
from wse_sim.fabric.errors import RouteError
from wse_sim.fabric.ports import (
    _DC,
    _DIR_INDEX,
    _DR,
    _MODES,
    _OPP,
    _STATIC,
    _XY,
    INF,
    RAMP,
    SLOT_EDGE,
    SLOT_NAMES,
    SLOT_PE,
    SLOTS,
    E,
    N,
    Packet,
    S,
    W,
)
from wse_sim.fabric.routing import RouteTable
from wse_sim.fabric.topology import Mesh

# event kinds
_ARRIVE, _PORT, _POP, _DELIVER, _CALL = range(5)

# shortcut for speed: module-level names are cheaper to look up than ``heapq.heappush``
_push = heapq.heappush
_heappop = heapq.heappop


DeliverFn = Callable[[int, Packet, float, float], None]


class PacketFabric(EngineReport):
    """The packet engine on a :class:`~wse_sim.fabric.topology.Mesh` (time unit: cycle).

    Args:
        mesh: grid and faults.
        hop_latency_cycles, turn_latency_cycles, ramp_latency_cycles: see module docstring.
        link_wavelets_per_cycle: link rate per direction.
        ramp_wavelets_per_cycle: PE <-> router rate each way.
        buffer_wavelets: input buffer per (router, input port, colour).
        colours: number of colours.
        packet_wavelets: largest packet :meth:`send` cuts a message into (1 = wavelet-exact).
        deadlock_cycles: cycles without any packet moving (while packets wait) after which
            the engine looks for a wait-for cycle.
        check: record every (packet, router) delivery so :meth:`conservation` can prove each
            wavelet arrived exactly once where its route leads (costs memory; for tests).

    Attributes:
        now: current simulated cycle.
        on_deliver: ``f(router index, packet, head_cycle, tail_cycle)`` called when a packet's
            head reaches a PE (``tail_cycle``: when its last wavelet will have arrived), or
            None. PE programs send from here.
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        hop_latency_cycles: float = 1,
        turn_latency_cycles: float = 1,
        ramp_latency_cycles: float = 1,
        link_wavelets_per_cycle: float = 1.0,
        ramp_wavelets_per_cycle: float = 1.0,
        buffer_wavelets: int = 8,
        colours: int = 24,
        packet_wavelets: int = 1,
        deadlock_cycles: float = 10_000,
        check: bool = False,
    ):
        if buffer_wavelets < 1 or packet_wavelets < 1 or colours < 1:
            raise ValueError("buffer_wavelets, packet_wavelets and colours must be >= 1")
        if link_wavelets_per_cycle <= 0 or ramp_wavelets_per_cycle <= 0:
            raise ValueError("link and RAMP rates must be > 0")
        self.mesh = mesh
        self.rows, self.cols = mesh.rows, mesh.cols
        self.hop = float(hop_latency_cycles)
        self.turn = float(turn_latency_cycles)
        self.ramp = float(ramp_latency_cycles)
        self.link_rate = float(link_wavelets_per_cycle)
        self.ramp_rate = float(ramp_wavelets_per_cycle)
        self.buffer = int(buffer_wavelets)
        self.C = int(colours)
        self.packet_wavelets = int(packet_wavelets)
        self.deadlock_cycles = float(deadlock_cycles)
        self.check = check
        self.on_deliver: DeliverFn | None = None
        nn = mesh.n_nodes
        C = self.C
        # neighbour index per (router, direction), -1 where there is no live link
        self._nbr = [-1] * (nn * 4)
        for n in range(nn):
            node = mesh.node(n)
            for d, name in enumerate(("N", "E", "S", "W")):
                nb = mesh.neighbor(node, name) if mesh.alive(node) else None
                if nb is not None:
                    self._nbr[n * 4 + d] = mesh.index(nb)
        # ports: o = n * SLOTS + p; p 0-3 links, 4 RAMP eject, 5 RAMP inject, 6-9 edge input
        npt = nn * SLOTS
        self._pfree = [0.0] * npt
        self._preq: list[deque | None] = [None] * npt
        self._pwake = [False] * npt
        self._pwav = [0.0] * npt  # wavelets sent per port (stats)
        self._pbase = [-2] * npt  # base buffer index of the next buffer (+ colour), -1 = PE
        self._pinv = [0.0] * npt  # cycles per wavelet
        for n in range(nn):
            o = n * SLOTS
            for d in range(4):
                nb = self._nbr[n * 4 + d]
                if nb >= 0:
                    self._pbase[o + d] = (nb * SLOTS + _OPP[d]) * C
                    self._pinv[o + d] = 1.0 / self.link_rate
                if self._is_edge(n, d):
                    self._pbase[o + SLOT_EDGE + d] = (n * SLOTS + d) * C
                    self._pinv[o + SLOT_EDGE + d] = 1.0 / self.link_rate
            self._pbase[o + RAMP] = -1
            self._pinv[o + RAMP] = 1.0 / self.ramp_rate
            self._pbase[o + SLOT_PE] = (n * SLOTS + RAMP) * C
            self._pinv[o + SLOT_PE] = 1.0 / self.ramp_rate
        # latency of (input slot, output port): hop (+ turn), RAMP latency, edge hop
        self._lat = [0.0] * (SLOTS * SLOTS)
        for s in range(SLOTS):
            for p in range(4):
                turn = self.turn if (s < 4 and p != _OPP[s]) else 0.0
                self._lat[s * SLOTS + p] = self.hop + turn
            self._lat[s * SLOTS + RAMP] = self.ramp
            self._lat[s * SLOTS + SLOT_PE] = self.ramp
            for d in range(4):
                self._lat[s * SLOTS + SLOT_EDGE + d] = self.hop
        # the port that feeds each buffer (n * SLOTS + slot), for credit returns; -1: none
        self._vup = [-1] * npt
        for n in range(nn):
            for s in range(4):
                nb = self._nbr[n * 4 + s]
                if nb >= 0:
                    self._vup[n * SLOTS + s] = nb * SLOTS + _OPP[s]
                elif self._is_edge(n, s):
                    self._vup[n * SLOTS + s] = n * SLOTS + SLOT_EDGE + s
            self._vup[n * SLOTS + RAMP] = n * SLOTS + SLOT_PE
            self._vup[n * SLOTS + SLOT_PE] = n * SLOTS + RAMP  # a relay feeds the PE queue
        # buffers: v = (n * SLOTS + slot) * C + colour
        nv = npt * C
        self._vq: list[deque | None] = [None] * nv
        self._vocc = [0.0] * nv
        self._node_occ = [0.0] * nn
        self._node_peak = [0.0] * nn
        # routing
        self._mode = [_STATIC] * C
        self._rules: list[dict[int, tuple[int, tuple[int, ...]]]] = [{} for _ in range(C)]
        self._vtx: dict[int, tuple[int, ...]] = {}  # cache: static transmit ports per buffer
        self._dorc: dict[tuple[int, int], tuple[int, ...]] = {}  # (buffer, dst) -> ports
        self._relay: dict[int, tuple[int, float]] = {}  # n * C + colour -> (colour out, cap)
        # shortcut for speed: a buffer whose head has left on every port and that nobody waits
        # on is released lazily (buffer -> cycle its tail left) instead of by a POP event; it
        # is settled when something next looks at that buffer (see _settle)
        self._lazy: dict[int, float] = {}
        # event queue
        self._heap: list = []
        self._seq = itertools.count()
        self._next = self._seq.__next__
        self.now = 0.0
        self._inflight = 0  # buffer entries plus pending arrivals
        self._last_move = 0.0
        self._pid = itertools.count()
        # stats
        self.events = 0
        self.packets_injected = 0
        self.wavelets_injected = 0.0
        self.wavelets_delivered = 0.0
        self.wavelets_expected = 0.0  # injected x PEs their routes reach
        self.packets_delivered = 0
        self._lat_log: list[float] = []
        self._deliv_log: list[float] = []  # tail cycle of each delivery (for throughput)
        self._deliv_size: list[float] = []
        self._delivered: Counter = Counter()
        self._expected: Counter = Counter()
        self._dest_cache: dict[tuple[int, int, int, int], tuple[int, ...]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arch(cls, mesh: Mesh, fabric, **kw) -> PacketFabric:
        """An engine with the rates and latencies of a
        :class:`wse_sim.arch.FabricConfig` (``kw`` overrides any argument)."""
        args = dict(
            hop_latency_cycles=fabric.hop_latency_cycles,
            turn_latency_cycles=fabric.turn_latency_cycles,
            ramp_latency_cycles=fabric.ramp_latency_cycles,
            link_wavelets_per_cycle=fabric.link_bits_per_cycle / 32.0,
            ramp_wavelets_per_cycle=fabric.ramp_wavelets_per_cycle,
            buffer_wavelets=fabric.router_buffer_wavelets,
            colours=fabric.colours,
        )
        args.update(kw)
        return cls(mesh, **args)

    def _is_edge(self, n: int, d: int) -> bool:
        r, c = divmod(n, self.cols)
        rr, cc = r + _DR[d], c + _DC[d]
        return not (0 <= rr < self.rows and 0 <= cc < self.cols)

    def install(self, table: RouteTable) -> None:
        """Load the static rules of ``table`` (replacing earlier rules of its colours).

        Raises:
            RouteError: a colour of the table exceeds this engine's colours.
        """
        for colour, rules in table.rules.items():
            if not 0 <= colour < self.C:
                raise RouteError(f"colour {colour} out of range 0-{self.C - 1}")
            conv = {}
            for node, (rx, tx) in rules.items():
                n = self.mesh.index(node)
                conv[n] = (_DIR_INDEX[rx], tuple(n * SLOTS + _DIR_INDEX[p] for p in sorted(tx)))
            self._rules[colour] = conv
            self._mode[colour] = _STATIC
        self._vtx.clear()
        self._dorc.clear()
        self._dest_cache.clear()

    def clear_routes(self) -> None:
        """Drop every static rule and relay (between kernels; the fabric must be empty).

        Raises:
            RuntimeError: packets are still in flight.
        """
        if self.in_flight:
            raise RuntimeError(f"clear_routes with {self._inflight} packets in flight")
        self._rules = [{} for _ in range(self.C)]
        self._mode = [_STATIC] * self.C
        self._vtx.clear()
        self._dorc.clear()
        self._relay.clear()
        self._dest_cache.clear()

    def set_routing(self, colour: int, mode: str) -> None:
        """Route ``colour`` per packet by destination: ``"xy"`` or ``"yx"`` (dimension order),
        or back to ``"static"`` rules."""
        self._mode[colour] = _MODES[mode]
        self._vtx.clear()
        self._dorc.clear()
        self._dest_cache.clear()

    def set_relay(self, node, colour_in: int, colour_out: int, capacity_wavelets: float) -> None:
        """PE ``node`` forwards packets it receives on ``colour_in`` (while their ``ttl`` > 0)
        onto ``colour_out`` through a forwarding queue of ``capacity_wavelets``; the queue is
        the PE's injection queue of ``colour_out``, shared with what the PE sends itself."""
        n = self.mesh.index(node) if isinstance(node, tuple) else int(node)
        self._relay[n * self.C + colour_in] = (colour_out, float(capacity_wavelets))
        self._dest_cache.clear()

    # ---------------------------------------------------------------------- sending
    def inject(
        self,
        node,
        colour: int,
        size: float,
        t: float | None = None,
        *,
        dst=None,
        tag=None,
        ttl: int = 0,
        tail_min: float | None = None,
        edge: str | None = None,
        pid: int | None = None,
    ) -> Packet:
        """Hand one packet of ``size`` wavelets to PE ``node``'s RAMP (or to the edge port on
        side ``edge``) at cycle ``t`` (default: now).

        Args:
            dst: destination router (``(r, c)`` or index) for per-packet routed colours.
            tail_min: the packet's last wavelet is not available before this cycle (a PE
                forwarding data it is still receiving: cut-through through the PE).

        Raises:
            RouteError: the colour's rule at ``node`` does not receive from the RAMP (or that
                edge), or a destination is missing for a per-packet routed colour.
        """
        n = self.mesh.index(node) if isinstance(node, tuple) else int(node)
        t = self.now if t is None else float(t)
        if t < self.now:
            raise ValueError(f"inject at cycle {t} before now={self.now}")
        slot = SLOT_PE if edge is None else SLOT_EDGE + _DIR_INDEX[edge]
        entry = RAMP if edge is None else _DIR_INDEX[edge]
        mode = self._mode[colour]
        if mode == _STATIC:
            rule = self._rules[colour].get(n)
            if rule is None or rule[0] != entry:
                raise RouteError(
                    f"router {self.mesh.node(n)} has no rule for colour {colour} receiving from "
                    f"{SLOT_NAMES[entry]}"
                )
            d = -1
        else:
            if dst is None:
                raise RouteError(f"colour {colour} is routed per packet: give dst")
            d = self.mesh.index(dst) if isinstance(dst, tuple) else int(dst)
        pkt = Packet(next(self._pid) if pid is None else pid, colour, size, n, d, t, tag, ttl)
        v = (n * SLOTS + slot) * self.C + colour
        self._vocc[v] += size
        self._inflight += 1
        self.packets_injected += 1
        self.wavelets_injected += size
        dests = self._dests(n, entry, colour, ttl, d)
        self.wavelets_expected += size * len(dests)
        if self.check:
            for dn in dests:
                self._expected[(pkt.pid, dn)] += 1
        tail = t if tail_min is None or tail_min < t else tail_min
        _push(self._heap, (t, self._next(), _ARRIVE, v, (pkt, tail)))
        return pkt

    def send(
        self, node, colour: int, n_wavelets: float, t: float | None = None, **kw
    ) -> list[Packet]:
        """Cut a message of ``n_wavelets`` into packets of at most ``packet_wavelets`` and
        inject them back to back at ``t`` (the RAMP serialises them)."""
        S = self.packet_wavelets
        k = max(int(-(-n_wavelets // S)), 1)
        out = []
        left = n_wavelets
        for _ in range(k):
            sz = S if left > S else left
            out.append(self.inject(node, colour, sz, t, **kw))
            left -= sz
        return out

    def schedule(self, t: float, fn: Callable, *args) -> None:
        """Call ``fn(*args)`` at cycle ``t`` (PE programs: compute finished, timers)."""
        _push(self._heap, (float(t), self._next(), _CALL, fn, args))

    # ------------------------------------------------------------------------- run
    def peek(self) -> float:
        """Cycle of the next event, or ``inf``."""
        return self._heap[0][0] if self._heap else INF

    @property
    def in_flight(self) -> int:
        """Packets held in buffers or on their way into one (at ``now``)."""
        self._flush(self.now)
        return self._inflight

    def run(self, until: float = INF) -> float:
        """Process events with time < ``until`` (all of them by default); return ``now``.

        Raises:
            FabricDeadlock: packets are stuck in a wait-for cycle (or stalled for good).
        """
        heap = self._heap
        pop = _heappop
        arrive, port, popk, deliver = self._arrive, self._arb_event, self._pop, self._deliver
        limit = self.deadlock_cycles
        while heap and heap[0][0] < until:
            t, _, kind, a, b = pop(heap)
            self.now = t
            self.events += 1
            if kind == _ARRIVE:
                arrive(a, b, t)
            elif kind == _PORT:
                port(a, t)
            elif kind == _POP:
                popk(a, t)
            elif kind == _DELIVER:
                deliver(a, b, t)
            else:
                a(*b)
            # shortcut for speed: the stall test is one comparison per event; the wait-for
            # graph is only built once nothing has moved for ``deadlock_cycles``
            if t - self._last_move > limit and self._inflight:
                self._flush(t)
                if self._inflight:
                    self._check_deadlock(t, stalled=False)
                self._last_move = t
        if not heap and self._lazy:
            self.now = max(self.now, max(self._lazy.values()))
            self._flush(self.now)
        if not heap and self._inflight:
            self._check_deadlock(self.now, stalled=True)
        return self.now

    # ---------------------------------------------------------------- event handlers
    def _arrive(self, v: int, b, t: float) -> None:
        if v in self._lazy:
            self._settle(v, t)
        q = self._vq[v]
        if q is None:
            q = self._vq[v] = deque()
        # entry: [packet, tail cycle at this buffer, ports still to send on, latest tail out]
        q.append([b[0], b[1], 0, t])
        if len(q) == 1:
            self._head_ready(v, t)

    def _tx(self, v: int, pkt: Packet) -> tuple[int, ...]:
        """Ports the head packet of buffer ``v`` leaves on."""
        C = self.C
        ns = v // C
        slot = ns % SLOTS
        n = ns // SLOTS
        if slot >= SLOT_PE:
            # PE queue -> RAMP inject port; edge queue -> edge port (cached: never changes)
            ports = self._vtx[v] = (n * SLOTS + slot,)
            return ports
        mode = self._mode[pkt.colour]
        if mode == _STATIC:
            ports = self._vtx.get(v)
            if ports is None:
                rule = self._rules[pkt.colour].get(n)
                if rule is None or rule[0] != slot:
                    raise RouteError(
                        f"colour {pkt.colour} reaches router {self.mesh.node(n)} from "
                        f"{SLOT_NAMES[slot]} but has no rule receiving it there"
                    )
                ports = self._vtx[v] = rule[1]
            return ports
        cols = self.cols
        r, c = divmod(n, cols)
        dr, dc = divmod(pkt.dst, cols)
        if mode == _XY:
            p = E if dc > c else W if dc < c else S if dr > r else N if dr < r else RAMP
        else:
            p = S if dr > r else N if dr < r else E if dc > c else W if dc < c else RAMP
        if p != RAMP and self._nbr[n * 4 + p] < 0:
            raise RouteError(
                f"packet for {self.mesh.node(pkt.dst)} on colour {pkt.colour} would leave "
                f"{self.mesh.node(n)} going {SLOT_NAMES[p]} across a fault or the grid edge"
            )
        ports = self._dorc[(v, pkt.dst)] = (n * SLOTS + p,)
        return ports

    def _head_ready(self, v: int, t: float) -> None:
        e = self._vq[v][0]
        pkt = e[0]
        # shortcut for speed: transmit ports are cached per buffer (static rules) or per
        # (buffer, destination) (per-packet routing), so the routing decision is a dict lookup
        ports = self._vtx.get(v)
        if ports is None:
            ports = self._dorc.get((v, pkt.dst))
            if ports is None:
                ports = self._tx(v, pkt)
        e[2] = len(ports)
        e[3] = t
        preq, pfree, pwake = self._preq, self._pfree, self._pwake
        if len(ports) == 1:
            # shortcut for speed: one port, idle, nobody waiting for it, room downstream:
            # grant at once, without the request queue and the arbitration round
            o = ports[0]
            if pfree[o] <= t and not preq[o] and not pwake[o]:
                base = self._pbase[o]
                if base >= 0:
                    dv = base + pkt.colour
                    if dv in self._lazy:
                        self._settle(dv, t)
                    occ = self._vocc[dv]
                    if not occ or occ + pkt.size <= self.buffer:
                        self._grant(o, v, e, pkt, dv, None, t)
                        return
                elif not self._relay:
                    self._grant(o, v, e, pkt, -1, None, t)
                    return
        for o in ports:
            rq = preq[o]
            if rq is None:
                rq = preq[o] = deque()
            rq.append(v)
            if not pwake[o]:
                if pfree[o] <= t:
                    self._arb(o, t)
                else:
                    pwake[o] = True
                    _push(self._heap, (pfree[o], self._next(), _PORT, o, None))

    def _arb_event(self, o: int, t: float) -> None:
        self._pwake[o] = False
        self._arb(o, t)

    def _arb(self, o: int, t: float) -> None:
        """Port ``o`` is free at ``t``: grant the first waiting buffer (round-robin) whose
        packet fits in the next buffer."""
        rq = self._preq[o]
        if not rq:
            return
        if self._pfree[o] > t:
            if not self._pwake[o]:
                self._pwake[o] = True
                _push(self._heap, (self._pfree[o], self._next(), _PORT, o, None))
            return
        base = self._pbase[o]
        vocc = self._vocc
        cap = self.buffer
        for _ in range(len(rq)):
            v = rq.popleft()
            e = self._vq[v][0]
            pkt = e[0]
            size = pkt.size
            relay = None
            if base >= 0:
                dv = base + pkt.colour
                if dv in self._lazy:
                    self._settle(dv, t)
                occ = vocc[dv]
                if occ and occ + size > cap:
                    rq.append(v)  # no room downstream: wait for a credit
                    continue
            else:
                dv = -1
                if self._relay and pkt.ttl > 0:
                    n = o // SLOTS
                    relay = self._relay.get(n * self.C + pkt.colour)
                    if relay is not None:
                        dv = (n * SLOTS + SLOT_PE) * self.C + relay[0]
                        if dv in self._lazy:
                            self._settle(dv, t)
                        occ = vocc[dv]
                        if occ and occ + size > relay[1]:
                            rq.append(v)
                            continue
            self._grant(o, v, e, pkt, dv, relay, t)
            if rq and not self._pwake[o]:
                self._pwake[o] = True
                _push(self._heap, (self._pfree[o], self._next(), _PORT, o, None))
            return

    def _grant(self, o, v, e, pkt, dv, relay, t) -> None:
        size = pkt.size
        tail = t + size * self._pinv[o]
        if e[1] > tail:
            tail = e[1]  # cut-through: the tail cannot leave before it has arrived
        self._pfree[o] = tail
        self._pwav[o] += size
        C = self.C
        lat = self._lat[((v // C) % SLOTS) * SLOTS + o % SLOTS]
        heap, nxt_seq = self._heap, self._next
        if dv >= 0:
            self._vocc[dv] += size
            if relay is None:
                nd = dv // (SLOTS * C)
                node_occ = self._node_occ
                occ = node_occ[nd] + size
                node_occ[nd] = occ
                if occ > self._node_peak[nd]:
                    self._node_peak[nd] = occ
                nxt = pkt
            else:
                nxt = Packet(pkt.pid, relay[0], size, pkt.src, -1, pkt.t_inject, pkt.tag)
                nxt.ttl = pkt.ttl - 1
                _push(heap, (t + lat, nxt_seq(), _DELIVER, o // SLOTS, (pkt, tail + lat)))
            self._inflight += 1
            _push(heap, (t + lat, nxt_seq(), _ARRIVE, dv, (nxt, tail + lat)))
        else:
            _push(heap, (t + lat, nxt_seq(), _DELIVER, o // SLOTS, (pkt, tail + lat)))
        e[2] -= 1
        if tail > e[3]:
            e[3] = tail
        if e[2] == 0:
            up = self._vup[v // self.C]
            if len(self._vq[v]) > 1 or (up >= 0 and self._preq[up]):
                _push(heap, (e[3], nxt_seq(), _POP, v, None))
            else:
                self._lazy[v] = e[3]
        self._last_move = t

    def _settle(self, v: int, t: float) -> None:
        """Buffer ``v`` holds a lazily released head: free it if its tail has left by ``t``,
        else turn the release into a POP event (something now waits on that buffer)."""
        T = self._lazy.pop(v)
        if T <= t:
            self._release(v)
        else:
            _push(self._heap, (T, self._next(), _POP, v, None))

    def _release(self, v: int) -> None:
        e = self._vq[v].popleft()
        size = e[0].size
        self._vocc[v] -= size
        self._inflight -= 1
        ns = v // self.C
        if ns % SLOTS < SLOT_PE:
            self._node_occ[ns // SLOTS] -= size

    def _flush(self, t: float) -> None:
        """Release every lazily held head whose tail has left by ``t``."""
        if self._lazy:
            for v in [v for v, T in self._lazy.items() if T <= t]:
                del self._lazy[v]
                self._release(v)

    def _pop(self, v: int, t: float) -> None:
        q = self._vq[v]
        e = q.popleft()
        size = e[0].size
        self._vocc[v] -= size
        self._inflight -= 1
        ns = v // self.C
        if ns % SLOTS < SLOT_PE:
            self._node_occ[ns // SLOTS] -= size
        # credit return: wake the single port that feeds this buffer
        up = self._vup[ns]
        if up >= 0 and self._preq[up]:
            self._arb(up, t)
        if q:
            self._head_ready(v, t)

    def _deliver(self, n: int, b, t_head: float) -> None:
        pkt, t_tail = b
        self.packets_delivered += 1
        self.wavelets_delivered += pkt.size
        self._lat_log.append(t_tail - pkt.t_inject)
        self._deliv_log.append(t_tail)
        self._deliv_size.append(pkt.size)
        if self.check:
            self._delivered[(pkt.pid, n)] += 1
        if self.on_deliver is not None:
            self.on_deliver(n, pkt, t_head, t_tail)
