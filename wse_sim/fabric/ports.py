"""Router ports, buffer slots, routing modes and the packet record of the packet engine
(:mod:`wse_sim.fabric.engine`; shared with the compiled engine and the statistics)."""

from __future__ import annotations

# port / buffer slot indices per router
N, E, S, W, RAMP = 0, 1, 2, 3, 4
SLOT_PE = 5  # the PE's injection queue (before the RAMP)
SLOT_EDGE = 6  # 6 + d: off-grid input queue entering through side d (edge routers only)
SLOTS = 10
SLOT_NAMES = ("N", "E", "S", "W", "RAMP", "PE-queue", "edge-N", "edge-E", "edge-S", "edge-W")
_DIR_INDEX = {"N": N, "E": E, "S": S, "W": W, "RAMP": RAMP}
_OPP = (S, W, N, E)
_DR = (-1, 0, 1, 0)
_DC = (0, 1, 0, -1)
INF = float("inf")



# routing modes per colour
_STATIC, _XY, _YX = 0, 1, 2
_MODES = {"static": _STATIC, "xy": _XY, "yx": _YX}


class Packet:
    """A packet of ``size`` wavelets on one colour.

    Attributes:
        pid: unique id (relayed copies keep it).
        colour: colour it travels on.
        size: wavelets.
        src: router index where it was injected.
        dst: destination router index (per-packet routed colours), or -1 (static routes).
        t_inject: cycle the PE (or edge) handed it to the fabric.
        tag: free data for the PE program that sent it.
        ttl: relays it may still take (see :meth:`PacketFabric.set_relay`).
    """

    __slots__ = ("pid", "colour", "size", "src", "dst", "t_inject", "tag", "ttl")

    def __init__(self, pid, colour, size, src, dst, t_inject, tag=None, ttl=0):
        self.pid = pid
        self.colour = colour
        self.size = size
        self.src = src
        self.dst = dst
        self.t_inject = t_inject
        self.tag = tag
        self.ttl = ttl

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Packet({self.pid}, colour={self.colour}, size={self.size}, src={self.src})"
