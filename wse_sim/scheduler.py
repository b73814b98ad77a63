"""The weight-streaming scheduler: MemoryX -> wafer, block by block, with backpressure.

A SimPy process streams the Program's weight blocks in order (the order the lowering chose:
layer by layer, and again for every micro-batch) through the wafer edge at
``io.ingress_bytes_per_s``. Each block occupies one of ``io.weight_buffer_slots`` on-wafer
buffers from its first byte until the last kernel that consumes it finishes; when every slot is
taken the stream stops (backpressure) until a slot is released. With two slots this is double
buffering: the next layer streams while the current one computes.

Blocks are moved in ``chunks_per_block`` pieces so kernels can start on the first part of their
weights while the rest is still arriving (weights stream *through* the wafer); a kernel asks
:meth:`WeightStreamer.arrived` for an event that fires once a given byte offset of a block is
on the wafer. Time unit: PE cycles.
"""

from __future__ import annotations

import heapq
import itertools

import simpy

from wse_sim.arch import ArchConfig
from wse_sim.program import Kernel, Program


class WeightStreamer:
    """MemoryX ingress for one Program run.

    Args:
        env: the SimPy environment (time in PE cycles).
        program: its ``weight_blocks`` are streamed in order.
        arch: ``io.ingress_bytes_per_s``, ``io.ingress_latency_s``, ``io.weight_buffer_slots``
            and ``pe.clock_hz`` shape the stream.
        chunks_per_block: granularity of arrival notifications: each block arrives in this
            many equal pieces.

    Attributes:
        busy_cycles: cycles the ingress link spent transferring.
        events: discrete events this process generated.
        max_held: most blocks on the wafer at once (never more than the slots).
        block_times: ``[(block id, stream start, stream end), ...]`` in cycles.
        blocked_cycles: cycles the stream waited for a free slot (backpressure).
    """

    def __init__(
        self, env: simpy.Environment, program: Program, arch: ArchConfig, chunks_per_block: int = 64
    ):
        self.env = env
        self.program = program
        self.bytes_per_cycle = arch.io.ingress_bytes_per_s / arch.pe.clock_hz
        self.latency_cycles = arch.io.ingress_latency_s * arch.pe.clock_hz
        self.slots = simpy.Resource(env, capacity=arch.io.weight_buffer_slots)
        self.chunks_per_block = chunks_per_block
        self.level = [0.0] * len(program.weight_blocks)
        self._waiters: list[list[tuple[float, int, simpy.Event]]] = [
            [] for _ in program.weight_blocks
        ]
        self._seq = itertools.count()
        self._held: dict[int, simpy.Request] = {}
        self._last_use = self._compute_last_use(program)
        self.busy_cycles = 0.0
        self.events = 0
        self.max_held = 0
        self.block_times: list[tuple[int, float, float]] = []
        self.blocked_cycles = 0.0
        self.process = env.process(self._run())

    @staticmethod
    def _compute_last_use(program: Program) -> dict[int, str]:
        last: dict[int, str] = {}
        for k in program.kernels:
            if k.weight_block >= 0:
                last[k.weight_block] = k.name
        return last

    def _run(self):
        for blk in self.program.weight_blocks:
            req = self.slots.request()
            t0 = self.env.now
            yield req  # backpressure: wait for a free slot
            self.blocked_cycles += self.env.now - t0
            self._held[blk.id] = req
            self.max_held = max(self.max_held, len(self._held))
            if blk.bytes == 0:
                self._notify(blk.id, 0.0)
                continue
            start = self.env.now
            if self.latency_cycles:
                yield self.env.timeout(self.latency_cycles)
            step = blk.bytes / self.chunks_per_block
            dt = step / self.bytes_per_cycle
            for _ in range(self.chunks_per_block):
                yield self.env.timeout(dt)
                self.busy_cycles += dt
                self._notify(blk.id, step)
                self.events += 1
            self.block_times.append((blk.id, start, self.env.now))

    def _notify(self, blk: int, step: float) -> None:
        self.level[blk] += step
        heap = self._waiters[blk]
        while heap and heap[0][0] <= self.level[blk] + 1e-6:
            _, _, ev = heapq.heappop(heap)
            ev.succeed()

    def arrived(self, blk: int, offset: float) -> simpy.Event | None:
        """An event that fires when ``offset`` bytes of block ``blk`` are on the wafer, or
        ``None`` if they already are."""
        if self.level[blk] + 1e-6 >= offset:
            return None
        ev = self.env.event()
        heapq.heappush(self._waiters[blk], (offset, next(self._seq), ev))
        return ev

    def is_last_use(self, blk: int, kernel: Kernel) -> bool:
        """True if ``kernel`` is the last consumer of block ``blk``."""
        return self._last_use.get(blk) == kernel.name

    def release(self, blk: int) -> None:
        """Free the buffer slot of block ``blk`` (its last kernel finished)."""
        req = self._held.pop(blk, None)
        if req is not None:
            self.slots.release(req)
