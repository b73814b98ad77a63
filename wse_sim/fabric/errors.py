"""Errors raised by the fabric models (routes, packet engine).

Both carry a complete one-line message, like every :class:`wse_sim.errors.WseSimError`.
"""

from __future__ import annotations

from wse_sim.errors import WseSimError


class RouteError(WseSimError, ValueError):
    """A route is invalid: it leaves the grid, uses a faulty PE or link, names a colour out of
    range, or reuses a colour at a router with a different receive port or transmit set."""


class FabricDeadlock(WseSimError, RuntimeError):
    """Packets are in flight and none can ever move again.

    Attributes:
        cycle: the wait-for cycle as ``[(router (row, col), port, colour), ...]``: each buffer
            waits for room in the next one and the last waits for the first. Empty when the
            fabric stalled without a cycle (a packet waiting on something outside the fabric).
        time_cycles: simulated time at which the deadlock was detected.
        stuck_packets: packets still held in buffers.
    """

    def __init__(
        self,
        message: str,
        cycle: list[tuple[tuple[int, int], str, int]],
        time_cycles: float,
        stuck_packets: int,
    ):
        super().__init__(message)
        self.cycle = cycle
        self.time_cycles = time_cycles
        self.stuck_packets = stuck_packets
