"""PE programs on the packet engine: messages that wait for other messages.

A collective or a kernel's communication is a set of *messages*: a PE (or an edge port) sends
``size`` wavelets on a colour whose static route takes them to one or more PEs. A message may
wait on

* **packet dependencies**: data it forwards while still receiving it. Wavelet ``w`` of the
  message needs wavelet ``w - offset`` of another message delivered to its source PE (a chain
  reduction adds its own partial and forwards; a relay prepends its own block). Forwarding is
  cut-through through the PE: a packet leaves ``pe_forward_latency_cycles`` after the head of
  the packet it depends on arrives, and its tail cannot leave before that packet's tail has
  arrived plus the same latency ([HPDC24]: a store-and-forward stage costs ``2 T_R + 1``:
  RAMP out, combine, RAMP in);
* **whole dependencies**: every wavelet of another message must have arrived (store and
  forward of the whole message);
* **gates**: a number of external events (compute finished, weights arrived from MemoryX),
  each opened with :meth:`Dataflow.open_gate` at a given cycle.

A message is cut into packets of the engine's ``packet_wavelets``; each packet leaves when all
that it depends on is there. The engine's delivery hook records, per (message, PE), when the
first head and the last tail arrived and tells the messages waiting there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from wse_sim.fabric.engine import PacketFabric

INF = float("inf")


class _Msg:
    __slots__ = (
        "src",
        "colour",
        "size",
        "edge",
        "sizes",
        "pending",
        "head",
        "tail",
        "gates",
        "gate_t",
        "deps",
        "whole",
        "sent",
        "name",
        "S",
    )


class Dataflow:
    """Messages with dependencies, run by a :class:`PacketFabric` (installs its
    ``on_deliver`` hook).

    Args:
        engine: the packet engine (routes must be installed before messages start).
        forward_latency_cycles: cycles a PE adds to forward or combine what it receives.
        on_message: ``f(message id, router index, first head, last tail)`` called when a
            message has completely arrived at a PE.
    """

    def __init__(
        self,
        engine: PacketFabric,
        forward_latency_cycles: float = 1,
        on_message: Callable[[int, int, float, float], None] | None = None,
    ):
        self.eng = engine
        self.fwd = float(forward_latency_cycles)
        self.on_message = on_message
        self.msgs: list[_Msg] = []
        # (message, router) -> [packets arrived, first head, last tail, per-packet (head, tail)]
        self.arrived: dict[tuple[int, int], list] = {}
        # (message, router) -> [(dependent message, offset or None for whole), ...]
        self.dependents: dict[tuple[int, int], list[tuple[int, float | None]]] = {}
        self.expect: dict[int, int] = {}  # message -> PEs it must reach (for done())
        self.complete: dict[int, int] = {}  # message -> PEs it has fully reached
        engine.on_deliver = self._on_deliver

    def message(
        self,
        src,
        colour: int,
        size: float,
        *,
        deps: tuple[tuple[int, float], ...] = (),
        whole: tuple[int, ...] = (),
        gates: int = 0,
        edge: str | None = None,
        n_dests: int = 1,
        name: str = "",
        packet_wavelets: float | None = None,
    ) -> int:
        """Declare a message; it starts as soon as nothing holds it back.

        Args:
            src: sending PE ``(r, c)`` or router index (for ``edge``: the edge router).
            size: wavelets (> 0).
            deps: ``(message, offset)`` packet dependencies on messages delivered to ``src``.
            whole: messages that must have fully arrived at ``src`` first.
            gates: external gates to wait for (:meth:`open_gate`).
            edge: enter through this edge side of ``src`` (off-grid input) instead of a RAMP.
            n_dests: PEs the colour's route delivers it to (for :meth:`all_delivered`).
            packet_wavelets: packet size for this message (default: the engine's).

        Returns:
            The message id.
        """
        eng = self.eng
        m = _Msg()
        m.src = eng.mesh.index(src) if isinstance(src, tuple) else int(src)
        m.colour = colour
        m.size = float(size)
        m.edge = edge
        S = m.S = float(packet_wavelets or eng.packet_wavelets)
        k = max(math.ceil(m.size / S - 1e-9), 1)
        m.sizes = [float(S)] * (k - 1) + [m.size - S * (k - 1)]
        m.gates = gates
        m.gate_t = eng.now
        m.deps = [(d, float(o)) for d, o in deps]
        m.whole = list(whole)
        m.pending = [len(m.deps) + len(m.whole)] * k
        m.head = [eng.now] * k
        m.tail = [eng.now] * k
        m.sent = 0
        m.name = name
        mid = len(self.msgs)
        self.msgs.append(m)
        self.expect[mid] = n_dests
        # packets that take no wavelet from a packet dependency do not wait for it
        for d, offset in m.deps:
            dsize = self.msgs[d].size
            for j in range(k):
                lo = j * S - offset
                if lo + m.sizes[j] - 1 < 0 or lo > dsize - 1:
                    m.pending[j] -= 1
        for d, o in m.deps:
            self._watch(mid, d, m.src, o)
        for d in m.whole:
            self._watch(mid, d, m.src, None)
        if gates == 0:
            self._try_all(mid)
        return mid

    def _watch(self, mid: int, dep: int, node: int, offset: float | None) -> None:
        self.dependents.setdefault((dep, node), []).append((mid, offset))
        got = self.arrived.get((dep, node))
        if got is None:
            return
        if offset is None:  # already complete: counts once
            if got[0] == len(self.msgs[dep].sizes):
                self._dep_packet(mid, dep, len(got[3]) - 1, got[1], got[2], None, got)
            return
        for k, (h, t) in enumerate(got[3]):  # already (partly) there
            if h is not None:
                self._dep_packet(mid, dep, k, h, t, offset, got)

    def open_gate(self, mid: int, t: float) -> None:
        """One external gate of message ``mid`` opens at cycle ``t`` (>= now)."""
        m = self.msgs[mid]
        m.gates -= 1
        if t > m.gate_t:
            m.gate_t = t
        if m.gates == 0:
            self._try_all(mid)

    def _try_all(self, mid: int) -> None:
        m = self.msgs[mid]
        for k in range(len(m.sizes)):
            if m.pending[k] == 0:
                self._send(mid, k)

    def _send(self, mid: int, k: int) -> None:
        m = self.msgs[mid]
        if m.gates > 0 or m.pending[k] != 0 or m.head[k] is None:
            return
        t = max(m.head[k], m.gate_t, self.eng.now)
        tail = max(m.tail[k], t)
        m.head[k] = None  # sent
        m.sent += 1
        self.eng.inject(m.src, m.colour, m.sizes[k], t, tag=(mid, k), tail_min=tail, edge=m.edge)

    def _dep_packet(self, mid, dep, kd, h, t, offset, got) -> None:
        """Packet ``kd`` of ``dep`` arrived (head ``h``, tail ``t``) at the source of ``mid``."""
        m = self.msgs[mid]
        dm = self.msgs[dep]
        if offset is None:  # whole dependency: wait for every packet
            if got[0] < len(dm.sizes):
                return
            h2 = got[2] + self.fwd
            for k in range(len(m.sizes)):
                if m.head[k] is None:
                    continue
                m.pending[k] -= 1
                if h2 > m.head[k]:
                    m.head[k] = h2
                if h2 > m.tail[k]:
                    m.tail[k] = h2
                if m.pending[k] == 0:
                    self._send(mid, k)
            return
        S, Sd = m.S, dm.S
        nd = len(dm.sizes)
        nk = len(m.sizes)
        # packets k of ``mid`` whose last needed wavelet lies in packet kd of ``dep``: only
        # k near (kd * Sd + offset) / S can qualify (all the rest if kd is the last packet).
        # Shortcut for speed: scan that window, not every packet (O(1) per delivery).
        k_lo = max(int((kd * Sd + offset) // S) - 1, 0)
        k_hi = nk if kd == nd - 1 else min(int(((kd + 1) * Sd + offset) // S) + 2, nk)
        for k in range(k_lo, k_hi):
            if m.head[k] is None:
                continue
            lo = k * S - offset
            hi = k * S + m.sizes[k] - 1 - offset
            if hi < 0 or lo > dm.size - 1:
                continue  # no wavelet of this packet comes from ``dep``
            last = min(int(max(hi, 0) // Sd), nd - 1)
            if last != kd:
                continue
            first = min(int(max(lo, 0) // Sd), nd - 1)
            hf = got[3][first][0] if got[3][first][0] is not None else h
            m.pending[k] -= 1
            hh = hf + self.fwd
            tt = t + self.fwd
            if hh > m.head[k]:
                m.head[k] = hh
            if tt > m.tail[k]:
                m.tail[k] = tt
            if m.pending[k] == 0:
                self._send(mid, k)

    def _on_deliver(self, n: int, pkt, t_head: float, t_tail: float) -> None:
        tag = pkt.tag
        if tag is None:
            return
        mid, k = tag
        key = (mid, n)
        got = self.arrived.get(key)
        if got is None:
            got = self.arrived[key] = [
                0,
                t_head,
                t_tail,
                [(None, None)] * len(self.msgs[mid].sizes),
            ]
        got[0] += 1
        if t_head < got[1]:
            got[1] = t_head
        if t_tail > got[2]:
            got[2] = t_tail
        got[3][k] = (t_head, t_tail)
        for dmid, offset in self.dependents.get(key, ()):
            self._dep_packet(dmid, mid, k, t_head, t_tail, offset, got)
        if got[0] == len(self.msgs[mid].sizes):
            self.complete[mid] = self.complete.get(mid, 0) + 1
            if self.on_message is not None:
                self.on_message(mid, n, got[1], got[2])

    def all_delivered(self) -> bool:
        """Every message has fully reached all its PEs."""
        return all(self.complete.get(mid, 0) >= n for mid, n in self.expect.items())

    def arrival(self, mid: int, node) -> tuple[float, float] | None:
        """(first head, last tail) of message ``mid`` at PE ``node`` once complete, else None."""
        n = self.eng.mesh.index(node) if isinstance(node, tuple) else int(node)
        got = self.arrived.get((mid, n))
        if got is None or got[0] < len(self.msgs[mid].sizes):
            return None
        return got[1], got[2]
