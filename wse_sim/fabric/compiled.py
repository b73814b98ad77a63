"""The compiled packet engine: :class:`~wse_sim.fabric.engine.PacketFabric`'s model on
preallocated arrays, its event loop in Numba (:mod:`wse_sim.fabric._compiled_core`).

Same model, same API, same results: colours (static rules or per-packet dimension order),
multicast, credit-based cut-through flow control, RAMPs and edge ports, turns, relays and
deadlock detection naming the wait-for cycle are those of the reference engine, whose
docstring describes them. ``tests/test_compiled_engine.py`` holds this engine to the reference
delivery for delivery (same order, head and tail cycles, per-link and per-RAMP counts, peak
occupancy, event count) on random traffic.

Python keeps the setup (routes, relays, conservation bookkeeping), statistics and the hooks:
``on_deliver`` and :meth:`schedule` callbacks run in Python when the loop hands them back,
with the tie-breaking keys they would have had in the reference (see the core's docstring),
so PE programs (:mod:`wse_sim.fabric.dataflow`) run unchanged; the ``packet`` backend's PE
programs can instead run inside the loop (:mod:`wse_sim.fabric.compiled_flow`, state in
``_W``). Injections made from Python are staged and pushed into the compiled heap in bulk.

Memory: about ``rows * cols * 10 * colours * 60`` bytes (buffers, request-queue nodes) plus
the events in flight; a 128 x 128 grid with 24 colours takes about 240 MB.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from wse_sim.fabric import _compiled_core as core
from wse_sim.fabric import _flow_core as fl
from wse_sim.fabric._loop_core import run_loop
from wse_sim.fabric.compiled_flow import empty_state
from wse_sim.fabric.engine import (
    _DIR_INDEX,
    _MODES,
    _OPP,
    _STATIC,
    INF,
    RAMP,
    SLOT_EDGE,
    SLOT_NAMES,
    SLOT_PE,
    SLOTS,
    Packet,
    PacketFabric,
)
from wse_sim.fabric.engine_report import raise_if_deadlocked
from wse_sim.fabric.errors import RouteError
from wse_sim.fabric.routing import RouteTable
from wse_sim.fabric.topology import Mesh

_KB = core.KEY_BITS


class CompiledFabric(PacketFabric):
    """The packet engine with its event loop compiled (arguments and attributes: see
    :class:`~wse_sim.fabric.engine.PacketFabric`; results are identical).

    Raises:
        ValueError: non-positive sizes, colours or rates (as the reference).
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
        self.C = C = int(colours)
        self.packet_wavelets = int(packet_wavelets)
        self.deadlock_cycles = float(deadlock_cycles)
        self.check = check
        self.on_deliver = None
        nn = mesh.n_nodes
        rows, cols = self.rows, self.cols
        nbr = np.full(nn * 4, -1, dtype=np.int64)
        for n in range(nn):
            node = mesh.node(n)
            if not mesh.alive(node):
                continue
            for d, name in enumerate(("N", "E", "S", "W")):
                nb = mesh.neighbor(node, name)
                if nb is not None:
                    nbr[n * 4 + d] = mesh.index(nb)
        self._nbr = nbr.tolist()  # the reference's _dests walks it
        self._nbr_a = nbr
        npt = nn * SLOTS
        n_idx = np.arange(nn)
        r_idx, c_idx = n_idx // cols, n_idx % cols
        pbase = np.full(npt, -2, dtype=np.int64)
        pinv = np.zeros(npt)
        vup = np.full(npt, -1, dtype=np.int64)
        dr, dc = (-1, 0, 1, 0), (0, 1, 0, -1)
        for d in range(4):
            nb = nbr[d::4]
            live = nb >= 0
            o = n_idx * SLOTS + d
            pbase[o[live]] = (nb[live] * SLOTS + _OPP[d]) * C
            pinv[o[live]] = 1.0 / self.link_rate
            rr, cc = r_idx + dr[d], c_idx + dc[d]
            edge = ~((rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols))
            oe = n_idx * SLOTS + SLOT_EDGE + d
            pbase[oe[edge]] = (n_idx[edge] * SLOTS + d) * C
            pinv[oe[edge]] = 1.0 / self.link_rate
            vup[(n_idx * SLOTS + d)[live]] = nb[live] * SLOTS + _OPP[d]
            vup[(n_idx * SLOTS + d)[edge]] = n_idx[edge] * SLOTS + SLOT_EDGE + d
        pbase[n_idx * SLOTS + RAMP] = -1
        pinv[n_idx * SLOTS + RAMP] = 1.0 / self.ramp_rate
        pbase[n_idx * SLOTS + SLOT_PE] = (n_idx * SLOTS + RAMP) * C
        pinv[n_idx * SLOTS + SLOT_PE] = 1.0 / self.ramp_rate
        vup[n_idx * SLOTS + RAMP] = n_idx * SLOTS + SLOT_PE
        vup[n_idx * SLOTS + SLOT_PE] = n_idx * SLOTS + RAMP
        lat = np.zeros(SLOTS * SLOTS)
        for s in range(SLOTS):
            for p in range(4):
                lat[s * SLOTS + p] = self.hop + (self.turn if (s < 4 and p != _OPP[s]) else 0.0)
            lat[s * SLOTS + RAMP] = self.ramp
            lat[s * SLOTS + SLOT_PE] = self.ramp
            for d in range(4):
                lat[s * SLOTS + SLOT_EDGE + d] = self.hop
        nv = npt * C
        i64 = np.int64
        self._pbase, self._pinv, self._vup, self._lat = pbase, pinv, vup, lat
        self._pfree = np.zeros(npt)
        self._pwake = np.zeros(npt, dtype=np.bool_)
        self._pwav = np.zeros(npt)
        self._rq_tail = np.full(npt, -1, dtype=i64)
        self._rq_len = np.zeros(npt, dtype=i64)
        self._rq_next = np.full(nv * 5, -1, dtype=np.int32 if nv * 5 < 2**31 else i64)
        self._vq_head = np.full(nv, -1, dtype=i64)
        self._vq_tail = np.full(nv, -1, dtype=i64)
        self._vq_len = np.zeros(nv, dtype=np.int32)
        self._vocc = np.zeros(nv)
        self._lazy_t = np.full(nv, -1.0)
        self._lazy_pos = np.zeros(nv, dtype=i64)
        self._lazy_list = np.zeros(1024, dtype=i64)
        self._node_occ = np.zeros(nn)
        self._node_peak = np.zeros(nn)
        # routing: modes per colour, static rules per (router, colour), relays
        self._mode = [_STATIC] * C
        self._mode_a = np.zeros(C, dtype=i64)
        self._rules: list[dict] = [{} for _ in range(C)]
        self._rule_rx = np.full(nn * C, -1, dtype=i64)
        self._rule_tx = np.zeros(nn * C, dtype=i64)
        self._relay: dict[int, tuple[int, float]] = {}
        self._relay_out = np.full(nn * C, -1, dtype=i64)
        self._relay_cap = np.zeros(nn * C)
        self._dest_cache: dict = {}
        self._vtx: dict = {}  # unused here; the reference's route methods clear them
        self._dorc: dict = {}
        # growable pools
        self._alloc_heap(1024)
        self._alloc_packets(1024)
        self._alloc_entries(1024)
        self._alloc_logs(1024)
        self._alloc_pending(256)
        self._I = np.zeros(core.I_LEN, dtype=i64)
        self._ports = np.zeros(5, dtype=i64)
        self._I[core.I_MINP] = -1
        self._F = np.zeros(core.F_LEN)
        self._tags: list = [None]  # tag 0 = None
        self._calls: list = []
        self._W = empty_state()  # PE programs run in the loop (compiled_flow); off
        self._stage_reset()
        self._cp = self._cj = 0  # key prefix and count for pushes made from Python
        self._pid_next = 0
        self.packets_injected = 0
        self.wavelets_injected = 0.0
        self.wavelets_expected = 0.0
        from collections import Counter

        self._delivered: Counter = Counter()
        self._expected: Counter = Counter()
        self._pack()

    # ------------------------------------------------------------------ pools
    def _alloc_heap(self, n):
        self._H = tuple(
            np.zeros(n, dtype=d) for d in (float, np.int64, np.int64, np.int64, np.int64, float)
        )

    def _alloc_packets(self, n):
        d = (np.int64, np.int64, float, np.int64, np.int64, float, np.int64, np.int64)
        self._P = tuple(np.zeros(n, dtype=x) for x in d)

    def _alloc_entries(self, n):
        self._en = [np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.int64), np.zeros(n)]
        nxt = np.arange(1, n + 1, dtype=np.int64)
        nxt[-1] = -1
        self._en.append(nxt)

    def _alloc_logs(self, n):
        self._L = (np.zeros(n), np.zeros(n), np.zeros(n))

    def _alloc_pending(self, n):
        d = (np.int64, np.int64, np.int64, np.int64, float, float)
        self._D = tuple(np.zeros(n, dtype=x) for x in d)

    @staticmethod
    def _grown(arrs, n):
        out = []
        for a in arrs:
            b = np.zeros(n, dtype=a.dtype)
            b[: len(a)] = a
            out.append(b)
        return tuple(out)

    def _grow(self):
        I = self._I
        m = int(self._W[0][fl.W_MARGIN]) if self._W[0][fl.W_ON] else 0  # the flow's margin
        if I[core.I_HN] + 64 + m > len(self._H[0]):
            self._H = self._grown(self._H, 2 * len(self._H[0]) + 64 + m)
        if I[core.I_NPK] + 8 + m > len(self._P[0]):
            self._P = self._grown(self._P, 2 * len(self._P[0]) + 8 + m)
        if I[core.I_NLOG] + 2 > len(self._L[0]):
            self._L = self._grown(self._L, 2 * len(self._L[0]))
        if I[core.I_NPEND] + 2 > len(self._D[0]):
            self._D = self._grown(self._D, 2 * len(self._D[0]))
        if I[core.I_FREE] < 0:
            n0 = len(self._en[0])
            en = list(self._grown(self._en, 2 * n0))
            en[4][n0:] = np.arange(n0 + 1, 2 * n0 + 1)
            en[4][-1] = -1
            I[core.I_FREE] = n0
            self._en = en
        if len(self._lazy_list) < len(self._en[0]):
            self._lazy_list = self._grown((self._lazy_list,), len(self._en[0]))[0]
        self._pack()

    def _pack(self):
        en = self._en
        if len(self._lazy_list) < len(en[0]):
            self._lazy_list = self._grown((self._lazy_list,), len(en[0]))[0]
        self._S = (
            self._vq_head, self._vq_tail, self._vq_len, self._vocc, self._lazy_t,
            self._lazy_list, self._lazy_pos, en[0], en[1], en[2], en[3], en[4], self._P[2],
            self._node_occ, self.C,
        )  # fmt: skip
        self._Q = (
            self._node_peak, self._lat, self._pinv, self._pfree, self._pwav, self._vup,
            self._rq_len,
        )  # fmt: skip
        self._R = (self._rq_tail, self._rq_len, self._rq_next)
        self._Rl = (self._relay_out, self._relay_cap)
        self._X = (self._pbase, self._pwake, float(self.buffer))
        self._T = (
            self._mode_a, self._rule_rx, self._rule_tx, self._nbr_a, self.cols, self._P[1],
            self._P[4],
        )  # fmt: skip
        self._caps = (
            len(self._H[0]), len(self._P[0]), len(self._L[0]), len(self._D[0]), len(en[0])
        )

    # ------------------------------------------------------------------ scalars
    @property
    def now(self) -> float:
        """Current simulated cycle."""
        return float(self._F[core.F_NOW])

    @now.setter
    def now(self, t: float) -> None:
        self._F[core.F_NOW] = t

    @property
    def events(self) -> int:
        """Events processed."""
        return int(self._I[core.I_EVENTS])

    @property
    def packets_delivered(self) -> int:
        """Packets delivered to PEs (a multicast counts once per PE)."""
        return int(self._I[core.I_PDELIV])

    @property
    def wavelets_delivered(self) -> float:
        """Wavelets delivered to PEs."""
        return float(self._F[core.F_WDELIV])

    # ------------------------------------------------------------------ routes
    def install(self, table: RouteTable) -> None:
        """Load the static rules of ``table`` (see the reference).

        Raises:
            RouteError: a colour of the table exceeds this engine's colours.
        """
        super().install(table)
        C = self.C
        for colour in table.rules:
            self._rule_rx[colour::C] = -1
            self._rule_tx[colour::C] = 0
            for n, (rx, tx) in self._rules[colour].items():
                self._rule_rx[n * C + colour] = rx
                bits = 0
                for o in tx:
                    bits |= 1 << (o % SLOTS)
                self._rule_tx[n * C + colour] = bits
            self._mode_a[colour] = _STATIC

    def clear_routes(self) -> None:
        """Drop every static rule and relay (the fabric must be empty).

        Raises:
            RuntimeError: packets are still in flight.
        """
        if self.in_flight:
            raise RuntimeError(f"clear_routes with {self.in_flight} packets in flight")
        super().clear_routes()
        self._rule_rx[:] = -1
        self._rule_tx[:] = 0
        self._mode_a[:] = _STATIC
        self._relay_out[:] = -1
        self._I[core.I_NRELAY] = 0

    def set_routing(self, colour: int, mode: str) -> None:
        """Route ``colour`` per packet (``"xy"``, ``"yx"``) or by ``"static"`` rules."""
        super().set_routing(colour, mode)
        self._mode_a[colour] = _MODES[mode]

    def set_relay(self, node, colour_in: int, colour_out: int, capacity_wavelets: float) -> None:
        """PE ``node`` forwards ``colour_in`` onto ``colour_out`` (see the reference)."""
        super().set_relay(node, colour_in, colour_out, capacity_wavelets)
        n = self.mesh.index(node) if isinstance(node, tuple) else int(node)
        self._relay_out[n * self.C + colour_in] = colour_out
        self._relay_cap[n * self.C + colour_in] = float(capacity_wavelets)
        self._I[core.I_NRELAY] = len(self._relay)

    # ------------------------------------------------------------------ sending
    def _stage_reset(self):
        self._st_t: list = []
        self._st_key: list = []
        self._st_v: list = []
        self._st_x: list = []
        self._st_pk: list = []  # (pid, colour, size, src, dst, t_inject, ttl, tag)
        self._st_kind: list = []
        self._st_a: list = []
        self._st_p: list = []

    def _key(self) -> int:
        # the key prefix and count live in Python between compiled runs (``_loop`` syncs)
        j = self._cj
        self._cj = j + 1
        return (self._cp << _KB) | j

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
        """Hand one packet to a RAMP or edge port (see the reference's ``inject``).

        Raises:
            RouteError: no rule receives the colour there, or ``dst`` missing.
            ValueError: ``t`` before now.
        """
        n = self.mesh.index(node) if isinstance(node, tuple) else int(node)
        now = self.now
        t = now if t is None else float(t)
        if t < now:
            raise ValueError(f"inject at cycle {t} before now={now}")
        slot = SLOT_PE if edge is None else SLOT_EDGE + _DIR_INDEX[edge]
        entry = RAMP if edge is None else _DIR_INDEX[edge]
        if self._mode[colour] == _STATIC:
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
        if pid is None:
            pid = self._pid_next
            self._pid_next += 1
        pkt = Packet(pid, colour, size, n, d, t, tag, ttl)
        v = (n * SLOTS + slot) * self.C + colour
        self.packets_injected += 1
        self.wavelets_injected += size
        dests = self._dests(n, entry, colour, ttl, d)
        self.wavelets_expected += size * len(dests)
        if self.check:
            for dn in dests:
                self._expected[(pid, dn)] += 1
        if tag is None:
            tg = 0
        else:
            tg = len(self._tags)
            self._tags.append(tag)
        self._st_pk.append((pid, colour, size, n, d, t, ttl, tg))
        self._st_t.append(t)
        self._st_key.append(self._key())
        self._st_kind.append(core.ARRIVE)
        self._st_a.append(v)
        self._st_p.append(len(self._st_pk) - 1)
        self._st_x.append(t if tail_min is None or tail_min < t else tail_min)
        return pkt

    def inject_many(self, src, colour: int, size: float, t, dst) -> None:
        """Hand packets of ``size`` wavelets on per-packet routed ``colour`` to the RAMPs of
        routers ``src`` at cycles ``t`` for routers ``dst`` (index arrays of equal length;
        untagged; the same as calling :meth:`inject` for each in order, without the
        per-packet Python cost).

        Raises:
            RouteError: ``colour`` is routed by static rules.
            ValueError: arrays of unequal length, or a cycle before now.
        """
        if self._mode[colour] == _STATIC:
            raise RouteError(f"inject_many needs a per-packet routed colour; {colour} is static")
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        t = np.asarray(t, dtype=float)
        k = len(src)
        if len(dst) != k or len(t) != k:
            raise ValueError("inject_many: src, t and dst must have the same length")
        if k == 0:
            return
        if t.min() < self.now:
            raise ValueError(f"inject at cycle {t.min()} before now={self.now}")
        self._flush_stage()
        I = self._I
        while I[core.I_NPK] + k + 8 > len(self._P[0]) or I[core.I_HN] + k + 64 > len(self._H[0]):
            self._H = self._grown(self._H, 2 * len(self._H[0]) + k)
            self._P = self._grown(self._P, 2 * len(self._P[0]) + k)
            self._pack()
        p0 = int(I[core.I_NPK])
        sl = slice(p0, p0 + k)
        pid0 = self._pid_next
        self._pid_next += k
        vals = (np.arange(pid0, pid0 + k), colour, size, src, dst, t, 0, 0)
        for arr, val in zip(self._P, vals, strict=True):
            arr[sl] = val
        I[core.I_NPK] = p0 + k
        v = (src * SLOTS + SLOT_PE) * self.C + colour
        np.add.at(self._vocc, v, size)
        I[core.I_INFLIGHT] += k
        self.packets_injected += k
        self.wavelets_injected += size * k
        self.wavelets_expected += size * k
        if self.check:
            for p, d in zip(range(pid0, pid0 + k), dst.tolist(), strict=True):
                self._expected[(p, d)] += 1
        j0 = self._cj
        self._cj = j0 + k
        keys = (self._cp << _KB) + j0 + np.arange(k, dtype=np.int64)
        kinds = np.full(k, core.ARRIVE, dtype=np.int64)
        core.bulk_push(self._H, I, t, kinds, v, np.arange(p0, p0 + k), t.copy(), keys)

    def schedule(self, t: float, fn, *args) -> None:
        """Call ``fn(*args)`` at cycle ``t``."""
        self._calls.append((fn, args))
        self._st_t.append(float(t))
        self._st_key.append(self._key())
        self._st_kind.append(core.CALL)
        self._st_a.append(len(self._calls) - 1)
        self._st_p.append(-1)
        self._st_x.append(0.0)

    def _flush_stage(self) -> None:
        if not self._st_t:
            return
        I = self._I
        npk = len(self._st_pk)
        ne = len(self._st_t)
        while I[core.I_NPK] + npk + 8 > len(self._P[0]) or I[core.I_HN] + ne + 64 > len(
            self._H[0]
        ):
            self._H = self._grown(self._H, 2 * len(self._H[0]) + ne)
            self._P = self._grown(self._P, 2 * len(self._P[0]) + npk)
            self._pack()
        p0 = int(I[core.I_NPK])
        if npk:
            cols = list(zip(*self._st_pk, strict=True))
            for arr, col in zip(self._P, cols, strict=True):
                arr[p0 : p0 + npk] = col
            I[core.I_NPK] = p0 + npk
            sizes = np.asarray(cols[2], dtype=float)
            vs = np.asarray([a for a, k in zip(self._st_a, self._st_kind, strict=True)
                             if k == core.ARRIVE], dtype=np.int64)  # fmt: skip
            np.add.at(self._vocc, vs, sizes)
            I[core.I_INFLIGHT] += npk
        kinds = np.asarray(self._st_kind, dtype=np.int64)
        ps = np.asarray(self._st_p, dtype=np.int64)
        ps[kinds == core.ARRIVE] += p0
        core.bulk_push(
            self._H, I, np.asarray(self._st_t, dtype=float), kinds,
            np.asarray(self._st_a, dtype=np.int64), ps, np.asarray(self._st_x, dtype=float),
            np.asarray(self._st_key, dtype=np.int64),
        )  # fmt: skip
        self._stage_reset()

    # ------------------------------------------------------------------------- run
    def peek(self) -> float:
        """Cycle of the next event, or ``inf``."""
        self._flush_stage()
        return float(self._H[0][0]) if self._I[core.I_HN] else INF

    @property
    def in_flight(self) -> int:
        """Packets held in buffers or on their way into one (at ``now``)."""
        self._flush_stage()
        core.flush(self._S, self._I, self.now)
        return int(self._I[core.I_INFLIGHT])

    def _loop(self, until: float) -> int:
        I = self._I
        I[core.I_CURP], I[core.I_CURJ] = self._cp, self._cj
        code = run_loop(
            until, self.deadlock_cycles, self._S, self._H, I, self._F, self._P, self._Q,
            self._R, self._Rl, self._X, self._T, self._L, self._D, self._caps, self._ports,
            self._W,
        )  # fmt: skip
        self._cp, self._cj = int(I[core.I_CURP]), int(I[core.I_CURJ])
        return code

    def run(self, until: float = INF) -> float:
        """Process events with time < ``until``; return ``now``.

        Raises:
            FabricDeadlock: packets stuck in a wait-for cycle (or stalled for good).
            RouteError: a packet meets no rule or would leave the grid.
        """
        I = self._I
        until = float(until)
        while True:
            self._flush_stage()
            I[core.I_WANT] = 1 if (self.on_deliver is not None or self.check) else 0
            code = self._loop(until)
            if I[core.I_NPEND]:
                self._run_pending()
            if code == core.PENDING:
                continue
            if code == core.GROW:
                self._grow()
            elif code == core.DEADLOCK_CHECK:
                self._check_deadlock(self.now, stalled=False)
                self._F[core.F_LAST] = self.now
            elif code in (core.ERR_NORULE, core.ERR_EDGE):
                self._route_error(code)
            elif not self._st_t:
                break
        if I[core.I_HN] == 0 and I[core.I_NLAZY]:
            lz = self._lazy_list[: I[core.I_NLAZY]]
            self.now = max(self.now, float(self._lazy_t[lz].max()))
            core.flush(self._S, I, self.now)
        if I[core.I_HN] == 0 and I[core.I_INFLIGHT]:
            self._check_deadlock(self.now, stalled=True)
        return self.now

    def _run_pending(self) -> None:
        I, F = self._I, self._F
        n = int(I[core.I_NPEND])
        Ps, kinds, As, pks, ths, tts = (a[:n].tolist() for a in self._D)
        I[core.I_NPEND] = 0
        I[core.I_MINP] = -1
        saveP, savej = self._cp, self._cj
        idx = np.maximum(self._D[3][:n], 0)
        pid, col, size, src, dst, tinj, ttl, tag = (a[idx].tolist() for a in self._P)
        tags = self._tags
        t_now = F[core.F_NOW]
        hook = self.on_deliver
        for q in range(n):
            self._cp = Ps[q]
            self._cj = 0
            F[core.F_NOW] = ths[q]
            if kinds[q] == core.DELIVER:
                pkt = Packet(
                    pid[q], col[q], size[q], src[q], dst[q], tinj[q], tags[tag[q]], ttl[q]
                )
                if self.check:
                    self._delivered[(pkt.pid, As[q])] += 1
                if hook is not None:
                    hook(As[q], pkt, ths[q], tts[q])
            else:
                fn, args = self._calls[As[q]]
                self._calls[As[q]] = None
                fn(*args)
        if Ps[n - 1] == saveP:
            savej = max(savej, self._cj)
        self._cp, self._cj = saveP, savej
        F[core.F_NOW] = t_now

    def _route_error(self, code: int) -> None:
        I = self._I
        col, n, p = int(I[core.I_E0]), int(I[core.I_E1]), int(I[core.I_E2])
        if code == core.ERR_NORULE:
            raise RouteError(
                f"colour {col} reaches router {self.mesh.node(n)} from {SLOT_NAMES[p]} but has "
                "no rule receiving it there"
            )
        dst = self.mesh.node(int(I[core.I_E3]))
        raise RouteError(
            f"packet for {dst} on colour {col} would leave {self.mesh.node(n)} going "
            f"{SLOT_NAMES[p]} across a fault or the grid edge"
        )

    # ---------------------------------------------------------------------- stats
    def link_wavelets(self) -> np.ndarray:
        """Wavelets sent per router and output direction, ``[rows, cols, 4]``."""
        return self._pwav.reshape(self.rows, self.cols, SLOTS)[:, :, :4].copy()

    def ramp_wavelets(self) -> np.ndarray:
        """Wavelets through each RAMP, ``[rows, cols, 2]``: (to the PE, from the PE)."""
        return self._pwav.reshape(self.rows, self.cols, SLOTS)[:, :, [RAMP, SLOT_PE]].copy()

    def peak_occupancy(self) -> np.ndarray:
        """Peak wavelets held in each router's input buffers, ``[rows, cols]``."""
        return self._node_peak.reshape(self.rows, self.cols).copy()

    def latencies(self) -> np.ndarray:
        """Latency of every delivery, cycles."""
        return self._L[0][: self._I[core.I_NLOG]].copy()

    def deliveries(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tail cycle, wavelets)`` of every delivery, in order."""
        n = self._I[core.I_NLOG]
        return self._L[1][:n].copy(), self._L[2][:n].copy()

    def reset_stats(self) -> None:
        """Forget latencies, deliveries and link counters (keep routes and packets)."""
        self._I[core.I_NLOG] = 0
        self._pwav[:] = 0.0
        self._node_peak[:] = self._node_occ

    # ------------------------------------------------------------------- deadlock
    def _check_deadlock(self, t: float, stalled: bool) -> None:
        g = nx.DiGraph()
        C = self.C
        en_pkt = self._en[0]
        P = self._P
        for o in np.flatnonzero(self._rq_len).tolist():
            base = int(self._pbase[o])
            node = int(self._rq_next[self._rq_tail[o]])
            for _ in range(int(self._rq_len[o])):
                v = node // 5
                k = en_pkt[self._vq_head[v]]
                col, size, ttl = int(P[1][k]), float(P[2][k]), int(P[6][k])
                if base >= 0:
                    dv = base + col
                    if self._vocc[dv] and self._vocc[dv] + size > self.buffer:
                        g.add_edge(v, dv)
                elif self._relay and ttl > 0:
                    n = o // SLOTS
                    rl = self._relay.get(n * C + col)
                    if rl is not None:
                        dv = (n * SLOTS + SLOT_PE) * C + rl[0]
                        if self._vocc[dv] and self._vocc[dv] + size > rl[1]:
                            g.add_edge(v, dv)
                node = int(self._rq_next[node])
        stuck = int(self._vq_len.sum())
        raise_if_deadlocked(g, self._vc_name, t, stuck, stalled)

