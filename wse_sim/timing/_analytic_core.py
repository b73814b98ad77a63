"""The ``analytic`` backend's weight-stream recurrence, compiled (Numba).

:func:`stream_total_s` is :func:`wse_sim.timing.analytic.analytic_total_s`'s loop over the
kernels on arrays: the same float operations in the same order, so the same float (every
operand below ``2**53`` is exact in float64, so an integer converted before a division or an
addition gives the correctly rounded result Python's mixed int/float arithmetic gives). A
layout search times a few dozen candidate Programs per point and a sweep thousands of points,
which makes this loop the inner one of a sweep.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def stream_total_s(
    acts: np.ndarray,
    block: np.ndarray,
    wbytes: np.ndarray,
    n_chunks: np.ndarray,
    last_use: np.ndarray,
    block_bytes: np.ndarray,
    clock_hz: float,
    bw: float,
    lat: float,
    slots: int,
) -> float:
    """End of the last kernel, seconds (the module docstring of
    :mod:`wse_sim.timing.analytic` gives the recurrence).

    Args:
        acts: active cycles per kernel, float64 [K].
        block: weight block per kernel (-1: none), int64 [K].
        wbytes: weight bytes per kernel, int64 [K].
        n_chunks: pipeline chunks per kernel (>= 1), int64 [K].
        last_use: whether the kernel is its block's last user, bool [K].
        block_bytes: bytes of each weight block, int64 [B].
        clock_hz: PE clock; bw: ingress bytes per second; lat: ingress latency, seconds;
        slots: weight buffer slots.
    """
    nblk = block_bytes.shape[0]
    stream_start = np.zeros(nblk)
    stream_end = np.zeros(nblk)
    release = np.zeros(nblk)
    offset = np.zeros(nblk)
    started = -1
    t = 0.0
    for i in range(acts.shape[0]):
        act = acts[i] / clock_hz
        b = block[i]
        if b >= 0:
            while started < b:
                started += 1
                nbytes = block_bytes[started]
                prev_end = stream_end[started - 1] if started > 0 else 0.0
                free_at = release[started - slots] if started >= slots else 0.0
                s = prev_end if prev_end >= free_at else free_at
                stream_start[started] = s
                stream_end[started] = s + ((lat + nbytes / bw) if nbytes != 0 else 0.0)
            base = stream_start[b] + (lat if block_bytes[b] != 0 else 0.0)
            wb = wbytes[i]
            n = n_chunks[i]
            o0 = offset[b]
            o1 = o0 + wb
            offset[b] = o1
            ready = base + (o0 + wb / n) / bw
            start = t if t >= ready else ready
            a = start + act
            c = base + o1 / bw + act / n
            t = a if a >= c else c
            if last_use[i]:
                release[b] = t
        else:
            t = t + act
    return t
