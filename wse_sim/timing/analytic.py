"""The ``analytic`` timing backend: a closed form per kernel and per weight block.

Each kernel costs :func:`wse_sim.timing.common.active_cycles`. Weight streaming with
``weight_buffer_slots >= 2`` (double buffering) is the classic two-stage pipeline: block
``b + 1`` streams while the kernels of block ``b`` compute, so

    T = io_0 + sum_b max(C_b, io_{b+1})

with ``C_b`` the kernel time of block ``b`` and ``io_b = latency + bytes_b / ingress_bw``.
With one slot nothing overlaps: ``T = sum_b (io_b + C_b)``. Kernels that consume no weights
belong to the block of the kernel before them. Microseconds per run; used for sweeps.
"""

from __future__ import annotations

from wse_sim.arch import ArchConfig
from wse_sim.program import Program
from wse_sim.timing.common import (
    IOInterval,
    KernelTime,
    TimingResult,
    active_cycles,
    compute_cycles,
    per_pe_maps,
)


def run_analytic(program: Program, arch: ArchConfig) -> TimingResult:
    """Time ``program`` on ``arch`` in closed form.

    Returns:
        A :class:`TimingResult` whose kernel times sum (with stalls) to ``total_s``.
    """
    clk = arch.pe.clock_hz
    io = arch.io
    io_s = [
        io.ingress_latency_s + b.bytes / io.ingress_bytes_per_s if b.bytes else 0.0
        for b in program.weight_blocks
    ]
    # group kernels by the block they belong to (a weightless kernel joins the previous block)
    groups: list[list[int]] = []
    group_block: list[int] = []
    cur = None
    for i, k in enumerate(program.kernels):
        blk = k.weight_block if k.weight_block >= 0 else cur
        if blk != cur or not groups:
            groups.append([])
            group_block.append(blk if blk is not None else -1)
            cur = blk
        groups[-1].append(i)
    times: list[KernelTime] = []
    io_blocks: list[IOInterval] = []
    t = 0.0
    double = io.weight_buffer_slots >= 2
    for g, members in enumerate(groups):
        b = group_block[g]
        if b >= 0 and (not double or g == 0):
            stall = io_s[b]  # nothing hides this stream
        elif b >= 0 and double:
            prev_c = sum(times[i].duration_s - times[i].stall_s for i in groups[g - 1])
            stall = max(0.0, io_s[b] - prev_c)
        else:
            stall = 0.0
        if b >= 0 and io_s[b] > 0:
            # the block's stream ends when its first kernel may start
            blk = program.weight_blocks[b]
            io_blocks.append(IOInterval(blk.name, b, t + stall - io_s[b], t + stall, blk.bytes))
        for j, i in enumerate(members):
            k = program.kernels[i]
            act = active_cycles(k, arch) / clk
            comp = compute_cycles(k) / clk
            s = stall if j == 0 else 0.0
            times.append(
                KernelTime(
                    k.name,
                    k.op,
                    k.layer,
                    k.micro_batch,
                    t,
                    t + s + act,
                    s,
                    comp,
                    max(act - comp, 0.0),
                )
            )
            t += s + act
    busy, sram = per_pe_maps(program)
    return TimingResult(
        backend="analytic",
        total_s=t,
        kernels=times,
        io_busy_s=sum(b.bytes for b in program.weight_blocks) / io.ingress_bytes_per_s,
        idle_s=0.0,
        pe_busy_cycles=busy,
        sram_peak_bytes=sram,
        link_bytes=sum(tr.link_bytes for k in program.kernels for tr in k.transfers),
        io_blocks=io_blocks,
    )
