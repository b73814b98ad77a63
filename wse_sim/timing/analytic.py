"""The ``analytic`` timing backend: a closed form per kernel and per weight block.

Each kernel costs ``A_k`` = :func:`wse_sim.timing.common.active_cycles` once its weights are
there. Weights stream block by block (the Program's ``weight_blocks``, in order) through the
MemoryX ingress at bandwidth ``B`` after a first-byte latency ``L``; a block may start
streaming when the previous block has arrived and one of the ``S = weight_buffer_slots``
buffers is free, i.e. when the last kernel of block ``b - S`` has finished:

    s_b = max(e_{b-1}^{io}, r_{b-S}),        e_b^{io} = s_b + L + bytes_b / B

Kernels consume their block's bytes in order and start on the first of their ``n`` pipeline
chunks as soon as it has arrived (weights stream *through* the wafer); kernel ``k`` with
bytes ``[o_0, o_1)`` of block ``b``, after kernel ``k - 1`` ends at ``e_{k-1}``:

    start_k = max(e_{k-1}, s_b + L + (o_0 + w_k / n) / B)
    e_k     = max(start_k + A_k, s_b + L + o_1 / B + A_k / n)

so a kernel ends no earlier than its last weights arrive plus the compute of its last chunk.
Kernels with no weights run back to back. The time the kernel could not run for want of
weights, ``e_k - e_{k-1} - A_k``, is its weight-I/O stall. This is the event backend's model
without its chunk-level interleaving of compute and fabric and without link sharing.
Microseconds per run; used for sweeps.

Training programs (with ``gradient_blocks``) add the gradient egress, the same model as the
event backend's egress process: a kernel producing ``g`` gradient bytes (the ``j``-th such
kernel) first needs one of ``G = io.gradient_buffer_slots`` gradient buffers, free once the
egress of gradient ``j - G`` has finished, and hands its bytes to the egress when it ends:

    start_k >= x_{j-G},        x_j = max(e_k, x_{j-1}) + g / B_out

with ``B_out`` from :func:`wse_sim.timing.common.gradient_path`; waiting for the buffer is
stall. MemoryX's optimizer updates follow in closed form
(:func:`wse_sim.timing.common.optimizer_schedule`); the step ends after the last update.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from wse_sim.arch import ArchConfig
from wse_sim.program import Program
from wse_sim.timing._analytic_core import stream_total_s
from wse_sim.timing.common import (
    IOInterval,
    KernelTime,
    TimingResult,
    compute_cycles,
    derived,
    gradient_path,
    per_pe_maps,
    program_active_cycles,
    training_extra,
)


def run_analytic(program: Program, arch: ArchConfig) -> TimingResult:
    """Time ``program`` on ``arch`` in closed form (see the module docstring).

    Returns:
        A :class:`TimingResult` whose kernel times (stall + compute + fabric) tile
        ``[0, total_s]``; its per-PE maps are built when first read.
    """
    clk = arch.pe.clock_hz
    io = arch.io
    bw, lat, slots = io.ingress_bytes_per_s, io.ingress_latency_s, io.weight_buffer_slots
    blocks = program.weight_blocks
    last_use: dict[int, int] = {}
    for i, k in enumerate(program.kernels):
        if k.weight_block >= 0:
            last_use[k.weight_block] = i
    stream_start = [0.0] * len(blocks)
    stream_end = [0.0] * len(blocks)
    release = [0.0] * len(blocks)
    started = -1  # highest block whose stream start is known
    offset = [0.0] * len(blocks)
    times: list[KernelTime] = []
    io_blocks: list[IOInterval] = []
    t = 0.0
    grad = gradient_path(program, arch)
    g_slots = io.gradient_buffer_slots
    egress: list[tuple[int, float, float]] = []  # (gradient block, start, end)
    g_stall = 0.0
    acts = program_active_cycles(program, arch)
    for i, k in enumerate(program.kernels):
        act = acts[i] / clk
        b = k.weight_block
        t_prev = t
        if grad is not None and k.grad_bytes > 0 and len(egress) >= g_slots:
            # wait for a free gradient buffer: the egress of gradient j - G has finished
            free = egress[len(egress) - g_slots][2]
            if free > t:
                g_stall += free - t
                t = free
        if b >= 0:
            while started < b:  # schedule streams up to this block
                started += 1
                nb = blocks[started]
                prev_end = stream_end[started - 1] if started else 0.0
                free_at = release[started - slots] if started >= slots else 0.0
                stream_start[started] = max(prev_end, free_at)
                stream_end[started] = stream_start[started] + (
                    lat + nb.bytes / bw if nb.bytes else 0.0
                )
                if nb.bytes:
                    io_blocks.append(
                        IOInterval(
                            nb.name, nb.id, stream_start[started], stream_end[started], nb.bytes
                        )
                    )
            n = max(k.n_chunks, 1)
            base = stream_start[b] + (lat if blocks[b].bytes else 0.0)
            o0, o1 = offset[b], offset[b] + k.weight_bytes
            offset[b] = o1
            start = max(t, base + (o0 + k.weight_bytes / n) / bw)
            end = max(start + act, base + o1 / bw + act / n)
        else:
            end = t + act
        comp = compute_cycles(k) / clk
        if grad is not None and k.grad_bytes > 0:
            x0 = max(end, egress[-1][2] if egress else 0.0)
            egress.append((k.grad_block, x0, x0 + k.grad_bytes / grad[0]))
        t = t_prev
        times.append(
            KernelTime(
                k.name,
                k.op,
                k.layer,
                k.micro_batch,
                t,
                end,
                max(end - t - act, 0.0),
                comp,
                max(act - comp, 0.0),
            )
        )
        if b >= 0 and last_use[b] == i:
            release[b] = end
        t = end
    total, extra = t, {}
    if grad is not None:
        total, extra = training_extra(program, arch, t, egress, g_stall)
    return TimingResult(
        backend="analytic",
        total_s=total,
        kernels=times,
        io_busy_s=sum(b.bytes for b in blocks) / bw,
        idle_s=total - t,
        pe_busy_cycles=None,  # built on first read (per_pe): timing alone never reads them
        sram_peak_bytes=None,
        link_bytes=sum(tr.link_bytes for k in program.kernels for tr in k.transfers),
        io_blocks=io_blocks,
        extra=extra,
        per_pe=partial(per_pe_maps, program),
    )


def _kernel_plan(program: Program) -> tuple:
    """``(weight_block, weight_bytes, n_chunks >= 1, last use of its block)`` per kernel as
    arrays (int64, int64, int64, bool), with the weight blocks' bytes (int64), kept on the
    Program (and its shallow copies) for :func:`analytic_total_s`."""
    box = derived(program)
    stamp = (id(program.kernels), len(program.kernels), id(program.weight_blocks))
    hit = box.get("analytic_plan")
    if hit is not None and hit[0] == stamp:
        return hit[1]
    kernels = program.kernels
    block = np.fromiter((k.weight_block for k in kernels), np.int64, len(kernels))
    last = np.zeros(len(kernels), dtype=bool)
    if len(kernels):
        used = np.flatnonzero(block >= 0)
        # the last kernel of each block: the final occurrence of its index
        rev = used[::-1]
        _, first_in_rev = np.unique(block[rev], return_index=True)
        last[rev[first_in_rev]] = True
    plan = (
        block,
        np.fromiter((k.weight_bytes for k in kernels), np.int64, len(kernels)),
        np.fromiter((max(k.n_chunks, 1) for k in kernels), np.int64, len(kernels)),
        last,
        np.fromiter((b.bytes for b in program.weight_blocks), np.int64,
                    len(program.weight_blocks)),
    )  # fmt: skip
    box["analytic_plan"] = (stamp, plan)
    return plan


def _active_array(program: Program, arch: ArchConfig) -> np.ndarray:
    """:func:`program_active_cycles` as a float64 array, kept beside the list."""
    acts = program_active_cycles(program, arch)
    box = derived(program)
    hit = box.get("analytic_acts")
    if hit is not None and hit[0] is acts:
        return hit[1]
    arr = np.asarray(acts, dtype=np.float64)
    box["analytic_acts"] = (acts, arr)
    return arr


def analytic_total_s(program: Program, arch: ArchConfig) -> float:
    """``run_analytic(program, arch).total_s``, the same float operations in the same order,
    without the per-kernel and per-block records (what a layout search compares), compiled
    (:func:`wse_sim.timing._analytic_core.stream_total_s`). A training program
    (``gradient_blocks``) goes through :func:`run_analytic`."""
    if program.gradient_blocks:
        return run_analytic(program, arch).total_s
    io = arch.io
    block, wbytes, n_chunks, last, block_bytes = _kernel_plan(program)
    return float(
        stream_total_s(
            _active_array(program, arch),
            block,
            wbytes,
            n_chunks,
            last,
            block_bytes,
            float(arch.pe.clock_hz),
            float(io.ingress_bytes_per_s),
            float(io.ingress_latency_s),
            int(io.weight_buffer_slots),
        )
    )
