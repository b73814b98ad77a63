"""Norms: LayerNorm on tile arrays, RMSNorm on token rows (forward, backward) and on tiles.

The row forms take float32 ``[N, F]`` token rows, sequence-major, as the training kernels;
the tile forms ``[S, P, m, F // P]`` (:mod:`gpt_workload.mappings.weight_streaming.layout`) reduce
a token's statistics
across the segment's PEs in chain order. Layout and arithmetic rules:
:mod:`gpt_workload.kernels`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from gpt_workload.kernels._common import _as_f32, _check_out, _check_seq, _check_tiles, _same

_f32 = _as_f32

__all__ = ["layernorm_tiled", "rmsnorm_bwd", "rmsnorm_fwd", "rmsnorm_tiled"]

# ---------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _zero_slot(out, s, t):  # pragma: no cover - jit
    """``out[s, :, t, :] = 0``: a padded token slot of a tile array."""
    for j in range(out.shape[1]):
        for f in range(out.shape[3]):
            out[s, j, t, f] = 0


@numba.njit(cache=True, inline="always")
def _slot_sum(x, s, t, square):  # pragma: no cover - jit
    """Sum over the features of token slot ``(s, t)`` of ``x`` (of ``x * x`` with ``square``)
    in float32, in the kernels' order: PE ``j`` sums its ``ft`` features ascending, then the
    chain ``acc = l_0; acc = acc + l_j`` over ``j = 1..P-1``."""
    total = np.float32(0)
    for j in range(x.shape[1]):
        local = np.float32(0)
        for f in range(x.shape[3]):
            v = x[s, j, t, f]
            local = local + (v * v if square else v)
        total = local if j == 0 else total + local
    return total


@numba.njit(parallel=True, cache=True)
def _layernorm_kernel(x, g, b, eps, out, segs_per_seq, seq_len):  # pragma: no cover - jit
    """Numba body of :func:`layernorm_tiled` (same arguments, all validated)."""
    n_seg, n_pe, m, ft = x.shape
    width = np.float32(n_pe * ft)
    for s in numba.prange(n_seg):
        base_pos = (s % segs_per_seq) * m
        for t in range(m):
            if base_pos + t >= seq_len:
                _zero_slot(out, s, t)
                continue
            mean = np.float32(_slot_sum(x, s, t, False) / width)
            total = np.float32(0)
            for j in range(n_pe):
                local = np.float32(0)
                for f in range(ft):
                    d = np.float32(x[s, j, t, f] - mean)
                    local = local + d * d
                total = local if j == 0 else total + local
            var = np.float32(total / width)
            denom = np.float32(math.sqrt(np.float32(var + eps)))
            for j in range(n_pe):
                for f in range(ft):
                    c = j * ft + f
                    y = np.float32(np.float32(x[s, j, t, f] - mean) / denom)
                    out[s, j, t, f] = y * g[c] + b[c]


def layernorm_tiled(
    x_tiles: np.ndarray,
    g: np.ndarray,
    b: np.ndarray,
    eps: float,
    out_tiles: np.ndarray,
    *,
    segs_per_seq: int,
    seq_len: int,
) -> np.ndarray:
    """LayerNorm over the feature dimension of a tile array (torch ``LayerNorm`` semantics).

    Reduction order (exact), per token slot ``(s, t)``: each PE ``j`` forms its local sum
    ``l_j = sum_f x[s, j, t, f]`` (``f`` ascending from 0); the chain ``acc = l_0;
    acc = acc + l_j`` for ``j = 1..P-1`` gives ``mean = acc / F``. The second pass does the
    same with ``d * d`` where ``d = x - mean``, giving the population variance
    ``var = acc / F``. Then ``denom = sqrt(var + eps)`` and
    ``out = ((x - mean) / denom) * g + b``. Every operation is rounded to float32.

    Args:
        x_tiles: float32 ``[S, P, m, ft]``, ``F = P * ft``.
        g: float32 ``[F]`` gain.
        b: float32 ``[F]`` bias.
        eps: variance epsilon (rounded to float32).
        out_tiles: float32 ``[S, P, m, ft]``, written in place; may be ``x_tiles`` itself.
        segs_per_seq: segments per sequence ``S_seq``.
        seq_len: tokens per sequence ``T``; padded slots get 0.

    Returns:
        ``out_tiles``.

    Raises:
        TypeError: an array argument is not a numpy.ndarray.
        ValueError: wrong dtype or shape, or inconsistent ``(segs_per_seq, seq_len)``.
    """
    x_tiles = _as_f32("x_tiles", x_tiles, 4)
    g = _as_f32("g", g, 1)
    b = _as_f32("b", b, 1)
    n_seg, n_pe, m, ft = x_tiles.shape
    if g.shape[0] != n_pe * ft or b.shape[0] != n_pe * ft:
        raise ValueError(f"g and b must have length F = {n_pe * ft}")
    _check_out("out_tiles", out_tiles, x_tiles.shape)
    _check_seq(n_seg, m, segs_per_seq, seq_len)
    _layernorm_kernel(x_tiles, g, b, np.float32(eps), out_tiles, segs_per_seq, seq_len)
    return out_tiles


# --------------------------------------------------------------------------------------------
# RMSNorm
# --------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _rmsnorm_fwd_kernel(x, g, eps, out, rstd):  # pragma: no cover - jit
    n, f = x.shape
    width = np.float32(f)
    for r in numba.prange(n):
        acc = np.float32(0)
        for c in range(f):
            acc = acc + x[r, c] * x[r, c]
        s = np.float32(1) / np.float32(math.sqrt(np.float32(acc / width + eps)))
        rstd[r] = s
        for c in range(f):
            out[r, c] = np.float32(x[r, c] * s) * g[c]


def rmsnorm_fwd(x: np.ndarray, g: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm of each row: ``y = (x * rstd) * g`` with ``rstd = 1 / sqrt(sum_c x_c^2 / F +
    eps)`` (sum over ``c`` ascending), as HF ``LlamaRMSNorm``.

    Args:
        x: float32 ``[N, F]``; g: float32 ``[F]``; eps: rounded to float32.

    Returns:
        ``(y [N, F], rstd [N])`` (``rstd`` is kept for the backward pass).
    """
    x = _f32("x", x, 2)
    g = _f32("g", g, 1)
    _same("g", g, (x.shape[1],))
    out = np.empty_like(x)
    rstd = np.empty(x.shape[0], np.float32)
    _rmsnorm_fwd_kernel(x, g, np.float32(eps), out, rstd)
    return out, rstd


@numba.njit(parallel=True, cache=True)
def _rmsnorm_bwd_dx_kernel(dy, x, g, rstd, dx):  # pragma: no cover - jit
    n, f = x.shape
    width = np.float32(f)
    for r in numba.prange(n):
        s = rstd[r]
        dot = np.float32(0)
        for c in range(f):
            dot = dot + np.float32(dy[r, c] * g[c]) * x[r, c]
        k = np.float32(np.float32(dot * s) * np.float32(s * s)) / width
        for c in range(f):
            dx[r, c] = np.float32(np.float32(dy[r, c] * g[c]) * s) - np.float32(x[r, c] * k)


@numba.njit(cache=True)
def _rmsnorm_bwd_dg_kernel(dy, x, rstd, dg):  # pragma: no cover - jit
    n, f = x.shape
    for c in range(f):
        dg[c] = 0
    for r in range(n):
        s = rstd[r]
        for c in range(f):
            dg[c] = dg[c] + np.float32(dy[r, c] * np.float32(x[r, c] * s))


def rmsnorm_bwd(
    dy: np.ndarray, x: np.ndarray, g: np.ndarray, rstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`rmsnorm_fwd`: with ``u = dy * g``,
    ``dx = u * rstd - x * (rstd^3 / F) * sum_c u_c x_c`` and ``dg = sum_r dy * x * rstd``
    (rows ``r`` ascending).

    Returns:
        ``(dx [N, F], dg [F])``.
    """
    dy, x = _f32("dy", dy, 2), _f32("x", x, 2)
    g, rstd = _f32("g", g, 1), _f32("rstd", rstd, 1)
    _same("dy", dy, x.shape)
    _same("g", g, (x.shape[1],))
    _same("rstd", rstd, (x.shape[0],))
    dx = np.empty_like(x)
    dg = np.empty(x.shape[1], np.float32)
    _rmsnorm_bwd_dx_kernel(dy, x, g, rstd, dx)
    _rmsnorm_bwd_dg_kernel(dy, x, rstd, dg)
    return dx, dg


# --------------------------------------------------------------------------------------------
# tile-layout forms (weight-streaming mapping, head-per-PE)
# --------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _rmsnorm_tiled_kernel(x, g, eps, out, segs_per_seq, seq_len):  # pragma: no cover - jit
    n_seg, n_pe, m, ft = x.shape
    width = np.float32(n_pe * ft)
    for s in numba.prange(n_seg):
        base_pos = (s % segs_per_seq) * m
        for t in range(m):
            if base_pos + t >= seq_len:
                _zero_slot(out, s, t)
                continue
            total = _slot_sum(x, s, t, True)
            r = np.float32(1) / np.float32(math.sqrt(np.float32(total / width + eps)))
            for j in range(n_pe):
                for f in range(ft):
                    out[s, j, t, f] = np.float32(x[s, j, t, f] * r) * g[j * ft + f]


def rmsnorm_tiled(x_tiles: np.ndarray, g: np.ndarray, eps: float, out_tiles: np.ndarray, *,
                  segs_per_seq: int, seq_len: int) -> np.ndarray:  # fmt: skip
    """RMSNorm over the features of a tile array ``[S, P, m, ft]`` (``F = P * ft``).

    Reduction order, per token slot: PE ``j`` sums ``x^2`` over its ``ft`` features
    (ascending); the chain ``acc = l_0; acc = acc + l_j`` (``j = 1..P-1``) gives the sum;
    ``r = 1 / sqrt(acc / F + eps)``; ``out = (x * r) * g``. Padded slots (position ``>=
    seq_len``) get 0. ``out_tiles`` may be ``x_tiles``.

    Raises:
        TypeError, ValueError: as the other kernels (dtype, shapes, segment bookkeeping).
    """
    x_tiles = _f32("x_tiles", x_tiles, 4)
    g = _f32("g", g, 1)
    n_seg, n_pe, m, ft = x_tiles.shape
    _same("g", g, (n_pe * ft,))
    _check_tiles(out_tiles, x_tiles.shape, n_seg, segs_per_seq)
    _rmsnorm_tiled_kernel(x_tiles, g, np.float32(eps), out_tiles, segs_per_seq, seq_len)
    return out_tiles
