"""The ``event`` timing backend: a SimPy discrete-event simulation of the whole wafer.

What runs as SimPy processes:

* **MemoryX ingress** (:class:`wse_sim.scheduler.WeightStreamer`): streams the Program's weight
  blocks in order through the wafer edge at the I/O bandwidth, in sub-block chunks, into
  ``weight_buffer_slots`` on-wafer buffers; it blocks (backpressure) while every slot holds a
  block whose kernels have not finished.
* **PE classes**: every symmetry class of a kernel is one process standing for all its PEs
  (the wafer is aggregated by symmetry, so the full grid costs what its classes cost). A
  class works through the kernel in ``n_chunks`` pipeline chunks: a chunk waits until its
  share of the kernel's weights has arrived, computes, then hands the chunk to the class's
  fabric stage.
* **Fabric stage**: per class, a process that sends each computed chunk over the class's
  links; transfers of one link group share a :class:`simpy.Resource` per class (the links a
  class uses are disjoint from other classes' links in the lowerings we ship), so two flows on
  the same links serialise chunk by chunk.
* Kernels run in program order with a barrier: kernel ``k + 1`` starts when every class of
  kernel ``k`` has computed, sent, and its last wavelet has crossed the path latency.

* **Gradient egress** (training programs only, those with ``gradient_blocks``): a process
  that moves each gradient-producing kernel's bytes off the wafer, FIFO, at the gradient
  path's bandwidth (:func:`wse_sim.timing.common.gradient_path`: the egress link, or SwarmX
  for several systems). Such a kernel first takes one of ``io.gradient_buffer_slots``
  gradient buffers (waiting for it is stall: egress backpressure) and frees it when its bytes
  have left, so stream-out overlaps the backward kernels that follow and stalls them when the
  egress is the bottleneck. MemoryX's optimizer updates follow in closed form
  (:func:`wse_sim.timing.common.optimizer_schedule`, no feedback to the wafer within a step).

Ties in the event queue break by SimPy's insertion sequence number, so runs are
deterministic.
"""

from __future__ import annotations

import numpy as np
import simpy

from wse_sim.arch import ArchConfig
from wse_sim.program import Kernel, Program
from wse_sim.scheduler import WeightStreamer
from wse_sim.timing.common import (
    IOInterval,
    KernelTime,
    TimingResult,
    gradient_path,
    latency_cycles,
    link_cycles,
    per_pe_maps,
    ramp_bytes_per_cycle,
    training_extra,
)


def _class_process(
    env: simpy.Environment,
    cls_cycles: float,
    transfers: list[tuple[str, float]],
    n: int,
    weights_at,
    wait_log: list[float] | None,
):
    """One PE class: ``n`` chunks of compute, each handed to one sender process per transfer.

    ``transfers`` is ``[(link_group, cycles), ...]``; senders of the same link group share one
    :class:`simpy.Resource`, so their chunks interleave FIFO (the links are shared); senders
    of different groups run in parallel.
    """
    groups = {g: simpy.Resource(env, capacity=1) for g, _ in transfers}
    stores = [simpy.Store(env) for _ in transfers]
    c_chunk = cls_cycles / n

    def sender(store, group, cycles):
        for _ in range(n):
            yield store.get()
            with groups[group].request() as req:
                yield req
                yield env.timeout(cycles / n)

    senders = [
        env.process(sender(st, g, cyc)) for st, (g, cyc) in zip(stores, transfers, strict=True)
    ]
    for i in range(n):
        ev = weights_at(i)
        if ev is not None and not ev.triggered:
            t0 = env.now
            yield ev
            if wait_log is not None:
                wait_log.append(env.now - t0)
        if c_chunk > 0:
            yield env.timeout(c_chunk)
        for st in stores:
            st.put(i)
    if senders:
        yield simpy.AllOf(env, senders)


def _representatives(k: Kernel, max_classes: int) -> list[float]:
    """Cycles of the PE classes to simulate for ``k``.

    Shortcut for speed: a kernel with more than ``max_classes`` classes (attention has one per
    segment position, up to ``seq_len``) is simulated with ``max_classes`` buckets of
    consecutive classes sorted by work, each at its slowest member's cycles. The kernel's end
    (the slowest class) is unchanged; per-PE busy cycles come from the Program, not from here.
    """
    cyc = sorted(c.cycles for c in k.classes)
    if len(cyc) <= max_classes:
        return cyc
    edges = np.linspace(0, len(cyc), max_classes + 1).astype(int)
    return [cyc[hi - 1] for hi in edges[1:] if hi > 0]


def run_event(program: Program, arch: ArchConfig, max_classes: int = 32) -> TimingResult:
    """Simulate ``program`` on ``arch`` with SimPy; time unit inside is the PE cycle.

    Args:
        max_classes: most PE classes simulated per kernel (see :func:`_representatives`).

    Returns:
        A :class:`TimingResult`; ``events`` counts SimPy events processed.
    """
    clk = arch.pe.clock_hz
    env = simpy.Environment()
    streamer = WeightStreamer(env, program, arch)
    times: list[KernelTime] = []
    n_events = [0]
    grad = gradient_path(program, arch)
    egress_log: list[tuple[int, float, float]] = []  # (gradient block, start, end), cycles
    g_stall = [0.0]
    if grad is not None:
        g_slots = simpy.Resource(env, capacity=arch.io.gradient_buffer_slots)
        g_queue = simpy.Store(env)
        n_grads = sum(1 for k in program.kernels if k.grad_bytes > 0)
        g_bpc = grad[0] / clk

        def egress():
            for _ in range(n_grads):
                blk, nbytes, req = yield g_queue.get()
                t0 = env.now
                yield env.timeout(nbytes / g_bpc)
                egress_log.append((blk, t0, env.now))
                g_slots.release(req)
                n_events[0] += 2

        egress_done = env.process(egress())

    def kernel_sequence():
        # per block: bytes already consumed by earlier kernels of the same block
        offset = {}
        for k in program.kernels:
            start = env.now
            g_req = None
            g_wait = 0.0
            if grad is not None and k.grad_bytes > 0:
                g_req = g_slots.request()
                yield g_req  # egress backpressure: a free gradient buffer
                g_wait = env.now - start
                g_stall[0] += g_wait
            n = max(k.n_chunks, 1)
            rbpc = ramp_bytes_per_cycle(arch)
            flows = [
                (t.link_group, link_cycles(t, n, arch)) for t in k.transfers if t.max_link_bytes > 0
            ]
            # every transfer of a PE also passes its one RAMP: a shared "ramp" group
            flows += [("ramp", t.ramp_bytes / rbpc) for t in k.transfers if t.ramp_bytes > 0]
            blk = k.weight_block
            base = offset.get(blk, 0)
            if blk >= 0:
                offset[blk] = base + k.weight_bytes

                def weights_at(i, blk=blk, base=base, wb=k.weight_bytes, n=n):
                    return streamer.arrived(blk, base + wb * (i + 1) / n)
            else:

                def weights_at(i):
                    return None

            reps = _representatives(k, max_classes)
            crit = max(reps)
            waits: list[float] = []
            procs = []
            for cyc in reps:
                procs.append(
                    env.process(
                        _class_process(
                            env, cyc, flows, n, weights_at, waits if cyc == crit else None
                        )
                    )
                )
                crit = None if cyc == crit else crit
                n_events[0] += (2 + 3 * len(flows)) * n
            yield simpy.AllOf(env, procs)
            lat = latency_cycles(k, arch)
            if lat:
                yield env.timeout(lat)
            if blk >= 0 and streamer.is_last_use(blk, k):
                streamer.release(blk)
            end = env.now
            if g_req is not None:
                g_queue.put((k.grad_block, k.grad_bytes, g_req))
            times.append(KernelTime.of(k, start, end, sum(waits) + g_wait, clk))

    done = env.process(kernel_sequence())
    env.run(until=done)
    kernels_end = env.now
    extra: dict = {}
    if grad is not None:
        env.run(until=egress_done)
    busy, sram = per_pe_maps(program)
    total = env.now / clk
    if grad is not None:
        total, extra = training_extra(
            program,
            arch,
            kernels_end / clk,
            [(b, t0 / clk, t1 / clk) for b, t0, t1 in egress_log],
            g_stall[0] / clk,
        )
    return TimingResult(
        backend="event",
        total_s=total,
        kernels=times,
        io_busy_s=streamer.busy_cycles / clk,
        idle_s=max(total - sum(t.duration_s for t in times), 0.0),
        pe_busy_cycles=busy,
        sram_peak_bytes=sram,
        link_bytes=sum(tr.link_bytes for k in program.kernels for tr in k.transfers),
        events=n_events[0] + streamer.events,
        io_blocks=[
            IOInterval(
                program.weight_blocks[b].name, b, t0 / clk, t1 / clk, program.weight_blocks[b].bytes
            )
            for b, t0, t1 in streamer.block_times
        ],
        extra={
            "max_blocks_buffered": streamer.max_held,
            "io_backpressure_s": streamer.blocked_cycles / clk,
            **extra,
        },
    )
