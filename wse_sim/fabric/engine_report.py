"""What the packet engine reports about itself: the routers a route reaches, wavelet
conservation, link and RAMP statistics, and the deadlock diagnosis (the wait-for graph of
buffers and its cycle). A mixin of :class:`wse_sim.fabric.engine.PacketFabric`, which holds
the state it reads."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np

from wse_sim.fabric.errors import FabricDeadlock, RouteError
from wse_sim.fabric.ports import _OPP, _STATIC, RAMP, SLOT_NAMES, SLOT_PE, SLOTS


class EngineReport:
    """Conservation, statistics and deadlock detection of :class:`PacketFabric`."""

    # --------------------------------------------------------------- conservation
    def _dests(self, n: int, entry: int, colour: int, ttl: int, dst: int) -> tuple[int, ...]:
        """Routers whose PE a packet injected at ``n`` (through ``entry``) reaches."""
        if self._mode[colour] != _STATIC:
            return (dst,)
        key = (n, entry, colour, ttl)
        hit = self._dest_cache.get(key)
        if hit is not None:
            return hit
        out = []
        seen = set()
        stack = [(n, entry, colour, ttl)]
        while stack:
            m, rx, col, tl = stack.pop()
            if (m, col) in seen:
                raise RouteError(f"colour {col} loops through router {self.mesh.node(m)}")
            seen.add((m, col))
            rule = self._rules[col].get(m)
            if rule is None or rule[0] != rx:
                raise RouteError(
                    f"colour {col} reaches router {self.mesh.node(m)} from {SLOT_NAMES[rx]} "
                    "but has no rule receiving it there"
                )
            for o in rule[1]:
                p = o % SLOTS
                if p == RAMP:
                    out.append(m)
                    rl = self._relay.get(m * self.C + col)
                    if rl is not None and tl > 0:
                        stack.append((m, RAMP, rl[0], tl - 1))
                else:
                    nb = self._nbr[m * 4 + p]
                    if nb < 0:
                        raise RouteError(
                            f"colour {col} leaves router {self.mesh.node(m)} going "
                            f"{SLOT_NAMES[p]} across a fault or the grid edge"
                        )
                    stack.append((nb, _OPP[p], col, tl))
        res = self._dest_cache[key] = tuple(out)
        return res

    def conservation(self) -> dict:
        """Injected vs delivered wavelets, and (with ``check=True``) every (packet, router)
        pair that was delivered a number of times other than its route says (0 or > 1).

        Returns:
            ``{"injected_wavelets", "expected_wavelets", "delivered_wavelets", "in_flight",
            "missing", "duplicated", "unexpected"}``: ``expected`` counts each injected
            wavelet once per PE its route reaches (always kept); the last three are lists of
            (packet, router) pairs, empty when exact (kept only with ``check=True``).
        """
        out = {
            "injected_wavelets": self.wavelets_injected,
            "expected_wavelets": self.wavelets_expected,
            "delivered_wavelets": self.wavelets_delivered,
            "in_flight": self.in_flight,
            "missing": [],
            "duplicated": [],
            "unexpected": [],
        }
        if self.check:
            for k, want in self._expected.items():
                got = self._delivered.get(k, 0)
                if got < want:
                    out["missing"].append(k)
                elif got > want:
                    out["duplicated"].append(k)
            out["unexpected"] = [k for k in self._delivered if k not in self._expected]
        return out

    # ---------------------------------------------------------------------- stats
    def link_wavelets(self) -> np.ndarray:
        """Wavelets sent per router and output direction, float64 ``[rows, cols, 4]``
        (``N, E, S, W``)."""
        a = np.asarray(self._pwav, dtype=np.float64).reshape(self.rows, self.cols, SLOTS)
        return a[:, :, :4].copy()

    def ramp_wavelets(self) -> np.ndarray:
        """Wavelets through each RAMP, ``[rows, cols, 2]``: (to the PE, from the PE)."""
        a = np.asarray(self._pwav, dtype=np.float64).reshape(self.rows, self.cols, SLOTS)
        return a[:, :, [RAMP, SLOT_PE]].copy()

    def wavelet_hops(self) -> float:
        """Wavelets x router-to-router links crossed, whole run."""
        return float(self.link_wavelets().sum())

    def peak_occupancy(self) -> np.ndarray:
        """Peak wavelets held in each router's input buffers, ``[rows, cols]``."""
        return np.asarray(self._node_peak).reshape(self.rows, self.cols)

    def latencies(self) -> np.ndarray:
        """Latency of every delivery, injection to last wavelet at the PE, cycles."""
        return np.asarray(self._lat_log)

    def deliveries(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tail cycle, wavelets)`` of every delivery, in the order they happened."""
        return np.asarray(self._deliv_log), np.asarray(self._deliv_size)

    def reset_stats(self) -> None:
        """Forget latencies, deliveries and link counters (keep routes and packets)."""
        self._lat_log.clear()
        self._deliv_log.clear()
        self._deliv_size.clear()
        self._pwav = [0.0] * len(self._pwav)
        self._node_peak = list(self._node_occ)

    # ------------------------------------------------------------------- deadlock
    def _vc_name(self, v: int) -> tuple[tuple[int, int], str, int]:
        ns, col = divmod(v, self.C)
        n, slot = divmod(ns, SLOTS)
        return (self.mesh.node(n), SLOT_NAMES[slot], col)

    def _check_deadlock(self, t: float, stalled: bool) -> None:
        g = nx.DiGraph()
        stuck = 0
        for o, rq in enumerate(self._preq):
            if not rq:
                continue
            base = self._pbase[o]
            for v in rq:
                pkt = self._vq[v][0][0]
                if base >= 0:
                    dv = base + pkt.colour
                    if self._vocc[dv] and self._vocc[dv] + pkt.size > self.buffer:
                        g.add_edge(v, dv)
                elif self._relay and pkt.ttl > 0:
                    n = o // SLOTS
                    rl = self._relay.get(n * self.C + pkt.colour)
                    if rl is not None:
                        dv = (n * SLOTS + SLOT_PE) * self.C + rl[0]
                        if self._vocc[dv] and self._vocc[dv] + pkt.size > rl[1]:
                            g.add_edge(v, dv)
        for q in self._vq:
            if q:
                stuck += len(q)
        raise_if_deadlocked(g, self._vc_name, t, stuck, stalled)


def raise_if_deadlocked(
    g: nx.DiGraph, vc_name: Callable[[int], tuple], t: float, stuck: int, stalled: bool
) -> None:
    """Raise :class:`FabricDeadlock` when the wait-for graph ``g`` (nodes: virtual-channel
    indices, an edge ``a -> b``: the head packet of buffer ``a`` waits for room in ``b``) has
    a cycle, or when ``stalled`` (no event can move the ``stuck`` packets still in buffers at
    cycle ``t``); return otherwise. ``vc_name`` turns an index into (router, port, colour) for
    the message.

    Raises:
        FabricDeadlock: one line naming the cycle's buffers, or the stall; carries the cycle,
            ``t`` and ``stuck``.
    """
    try:
        cyc = [vc_name(a) for a, _ in nx.find_cycle(g)]
    except nx.NetworkXNoCycle:
        cyc = []
    if not cyc and not stalled:
        return
    if cyc:
        path = " -> ".join(f"{n} {p} colour {c}" for n, p, c in cyc)
        msg = (
            f"fabric deadlock at cycle {t:g}: {stuck} packets stuck in a wait-for cycle of "
            f"{len(cyc)} buffers (router, input port, colour): {path} -> back to {cyc[0][0]}"
        )
    else:
        msg = (
            f"fabric stalled at cycle {t:g}: {stuck} packets in buffers and no event can "
            "move them (no wait-for cycle; a PE program never consumed or sent)"
        )
    raise FabricDeadlock(msg, cyc, t, stuck)
