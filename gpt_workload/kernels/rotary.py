"""Rotary position embedding: float32 tables, the row forms (forward, backward) and the tile
form for PEs that hold whole heads. Layout and arithmetic rules: :mod:`gpt_workload.kernels`.
"""

from __future__ import annotations

import numba
import numpy as np

from gpt_workload.kernels._common import _as_f32, _check_tiles, _same

_f32 = _as_f32

__all__ = ["rotary_bwd", "rotary_fwd", "rotary_tables_f32", "rotary_tiled"]

# --------------------------------------------------------------------------------------------
# rotary embedding
# --------------------------------------------------------------------------------------------


def rotary_tables_f32(seq_len: int, rotary_dim: int, theta: float, scaling=None):
    """float32 ``cos`` and ``sin`` ``[seq_len, rotary_dim // 2]`` of positions 0..T-1
    (:func:`gpt_workload.rope.rope_tables` in float64, rounded once)."""
    from gpt_workload.rope import rope_tables

    cos, sin = rope_tables(np.arange(seq_len), rotary_dim, theta, scaling)
    return cos.astype(np.float32), sin.astype(np.float32)


@numba.njit(parallel=True, cache=True)
def _rotary_kernel(
    x, seq_len, n_heads, rotary_dim, interleaved, cos, sin, sign, out
):  # pragma: no cover - jit
    n, width = x.shape
    dh = width // n_heads
    half = rotary_dim // 2
    for r in numba.prange(n):
        t = r % seq_len
        for c in range(width):
            out[r, c] = x[r, c]
        for h in range(n_heads):
            o = h * dh
            for i in range(half):
                if interleaved:
                    a, b = o + 2 * i, o + 2 * i + 1
                else:
                    a, b = o + i, o + half + i
                c_ = cos[t, i]
                s_ = sign * sin[t, i]
                x1, x2 = x[r, a], x[r, b]
                out[r, a] = np.float32(x1 * c_) - np.float32(x2 * s_)
                out[r, b] = np.float32(x2 * c_) + np.float32(x1 * s_)


def _rotary(x, seq_len, n_heads, rotary_dim, interleaved, cos, sin, sign):
    x = _f32("x", x, 2)
    cos, sin = _f32("cos", cos, 2), _f32("sin", sin, 2)
    n, width = x.shape
    if n_heads < 1 or width % n_heads:
        raise ValueError(f"width {width} is not a multiple of n_heads={n_heads}")
    if rotary_dim % 2 or not 0 < rotary_dim <= width // n_heads:
        raise ValueError(f"rotary_dim={rotary_dim} must be even, in (0, d_head={width // n_heads}]")
    if seq_len < 1 or n % seq_len:
        raise ValueError(f"seq_len={seq_len} does not divide the {n} rows")
    _same("cos", cos, (seq_len, rotary_dim // 2))
    _same("sin", sin, (seq_len, rotary_dim // 2))
    out = np.empty_like(x)
    _rotary_kernel(x, seq_len, n_heads, rotary_dim, interleaved, cos, sin, np.float32(sign), out)
    return out


def rotary_fwd(x: np.ndarray, seq_len: int, n_heads: int, rotary_dim: int, interleaved: bool,
               cos: np.ndarray, sin: np.ndarray) -> np.ndarray:  # fmt: skip
    """RoPE of each head's first ``rotary_dim`` features: pair ``(a, b)`` (adjacent features
    ``2i, 2i+1`` when ``interleaved``, GPT-J; else ``i, i + rotary_dim/2``, Llama) becomes
    ``(a*cos - b*sin, b*cos + a*sin)`` at the row's position; other features pass through.

    Args:
        x: float32 ``[n_seq * T, n_heads * d_head]``; cos, sin: float32 ``[T, rotary_dim/2]``
            (:func:`rotary_tables_f32`).
    """
    return _rotary(x, seq_len, n_heads, rotary_dim, interleaved, cos, sin, 1.0)


def rotary_bwd(dy: np.ndarray, seq_len: int, n_heads: int, rotary_dim: int, interleaved: bool,
               cos: np.ndarray, sin: np.ndarray) -> np.ndarray:  # fmt: skip
    """Gradient of :func:`rotary_fwd`: the rotation is orthogonal, so ``dx`` is ``dy``
    rotated by the opposite angle (``sin -> -sin``)."""
    return _rotary(dy, seq_len, n_heads, rotary_dim, interleaved, cos, sin, -1.0)


@numba.njit(parallel=True, cache=True)
def _rotary_tiled_kernel(x, cos, sin, out, segs_per_seq, seq_len, d_head, rotary_dim,
                         interleaved):  # pragma: no cover - jit  # fmt: skip
    n_seg, n_pe, m, ft = x.shape
    half = rotary_dim // 2
    for s in numba.prange(n_seg):
        base_pos = (s % segs_per_seq) * m
        for j in range(n_pe):
            for t in range(m):
                p = base_pos + t
                if p >= seq_len:
                    for f in range(ft):
                        out[s, j, t, f] = 0
                    continue
                for f in range(ft):
                    out[s, j, t, f] = x[s, j, t, f]
                for o in range(0, ft, d_head):
                    for i in range(half):
                        if interleaved:
                            a, b = o + 2 * i, o + 2 * i + 1
                        else:
                            a, b = o + i, o + half + i
                        x1, x2 = x[s, j, t, a], x[s, j, t, b]
                        out[s, j, t, a] = np.float32(x1 * cos[p, i]) - np.float32(x2 * sin[p, i])
                        out[s, j, t, b] = np.float32(x2 * cos[p, i]) + np.float32(x1 * sin[p, i])


def rotary_tiled(x_tiles: np.ndarray, cos: np.ndarray, sin: np.ndarray, out_tiles: np.ndarray,
                 *, segs_per_seq: int, seq_len: int, d_head: int, rotary_dim: int,
                 interleaved: bool) -> np.ndarray:  # fmt: skip
    """RoPE on a tile array whose PEs hold whole heads (``ft`` a multiple of ``d_head``), as
    :func:`rotary_fwd` per head; slot ``t`` of segment ``s`` is at position
    ``(s % segs_per_seq) * m + t``; padded slots get 0. ``out_tiles`` must not be
    ``x_tiles``. Purely local to each PE: no fabric traffic.

    Args:
        cos, sin: float32 ``[>= S_seq * m, rotary_dim // 2]`` (:func:`rotary_tables_f32`).
    """
    x_tiles = _f32("x_tiles", x_tiles, 4)
    cos, sin = _f32("cos", cos, 2), _f32("sin", sin, 2)
    n_seg, n_pe, m, ft = x_tiles.shape
    if d_head < 1 or ft % d_head:
        raise ValueError(f"tile width {ft} is not a multiple of d_head={d_head} (whole heads)")
    if rotary_dim % 2 or not 0 < rotary_dim <= d_head:
        raise ValueError(f"rotary_dim={rotary_dim} must be even, in (0, d_head={d_head}]")
    if cos.shape != sin.shape or cos.shape[0] < seq_len or cos.shape[1] != rotary_dim // 2:
        raise ValueError(f"cos/sin must be [>= {seq_len}, {rotary_dim // 2}], got {cos.shape}")
    _check_tiles(out_tiles, x_tiles.shape, n_seg, segs_per_seq)
    if np.shares_memory(x_tiles, out_tiles):
        raise ValueError("out_tiles must not overlap x_tiles")
    _rotary_tiled_kernel(x_tiles, cos, sin, out_tiles, segs_per_seq, seq_len, d_head,
                         rotary_dim, interleaved)  # fmt: skip
    return out_tiles
