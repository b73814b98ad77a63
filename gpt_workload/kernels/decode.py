"""Numba per-PE kernels of a decode step: the tiled matrix-vector product and the new
token's attention over a KV cache spread over PEs.

Both follow the layout of :mod:`gpt_workload.generation.split` exactly, so the numbers are
the ones the wafer's reduction order gives, bit for bit:

* :func:`gemv_split` (``y = x W + b``, a :class:`~gpt_workload.generation.split.GemvSplit`
  over ``rows x cols`` PEs): PE ``(r, c)`` computes its partial ``x_r W_rc`` of rows
  ``k_bounds[r]:k_bounds[r+1]`` and columns ``n_bounds[c]:n_bounds[c+1]``, accumulating
  ``k`` ascending in float32 (one rounding per multiply and per add, no fused multiply-add);
  the ``rows`` partials of each output column are combined in
  :func:`~gpt_workload.generation.split.combine_order` order (``dst = dst + src``, float32);
  the bias is added to the combined sum (as :func:`gpt_workload.kernels.gemm_ws`). PEs
  whose tile is empty (a matrix narrower than the grid) are not visited: their partials are
  exact zeros, and the combine applies the fabric's order to the non-empty partials with
  the same float32 results (``v + 0`` kept where it differs from ``v``: ``-0.0``).
* :func:`attention_decode` (a :class:`~gpt_workload.generation.split.KVSplit` of the cached
  tokens in contiguous blocks): PE ``p`` holds block ``p`` of every K/V head and computes, for
  each query head ``h`` sharing K/V head ``h // (H / KV)`` (GQA), the partial softmax of its
  block: ``z_i = (sum_d q_d k_id) * scale`` (``d`` ascending), ``m = max_i z_i``,
  ``e_i = exp(z_i - m)``, ``l = sum_i e_i`` and ``o_d = sum_i e_i v_id`` (``i`` ascending).
  Partials merge in ``combine_order`` (the log-sum-exp merge of flash-decoding: ``M =
  max(m_a, m_b)``, ``a = exp(m_a - M)``, ``b = exp(m_b - M)``, ``l = l_a a + l_b b``, ``o =
  o_a a + o_b b``, symmetric in ``a`` and ``b``); the output is ``o / l`` at
  ``combine_root`` (the K-tree's root; partial 0 otherwise).

Arithmetic is float32, ``exp`` the C library's float32 function (as
:mod:`gpt_workload.kernels.rotary`). Each public function validates its arguments
(``TypeError`` / ``ValueError``) and calls ``@njit(cache=True)`` kernels; tests hold them to
NumPy references (``tests/test_kernels_decode.py``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numba
import numpy as np

from gpt_workload.generation.split import GemvSplit, KVSplit, combine_order, combine_root
from gpt_workload.kernels import _as_f32 as _f32

__all__ = [
    "GEMV_CHUNK",
    "PARALLEL_MIN_MACS",
    "attention_decode",
    "attention_partials",
    "gemv_partials",
    "gemv_split",
    "numba_threads",
]

#: Multiply-adds from which a kernel runs on all Numba threads; below it one thread (a
#: parallel launch costs tens of microseconds on an idle machine and milliseconds on a busy
#: one, more than a small decode product). The results do not depend on it.
PARALLEL_MIN_MACS = 1 << 24

#: Output columns per parallel work unit of :func:`gemv_split` (a unit never spans two PEs'
#: tiles, so the per-element order does not depend on it).
GEMV_CHUNK = 256


@contextmanager
def numba_threads(n: int):
    """Run the enclosed Numba kernels on ``n`` threads (restored afterwards). Per-element
    reduction orders never depend on the thread count, so neither do the numbers."""
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(old)



def _pairs(parts: int, reduce: str, k: int = 2) -> np.ndarray:
    """:func:`combine_order` as an int64 ``[n, 2]`` array (``(dst, src)`` rows)."""
    return np.asarray(combine_order(parts, reduce, k), dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------------------------
# tiled GEMV
# --------------------------------------------------------------------------------------------


@numba.njit(inline="always")
def _gemv_unit(x, w, units, part, u):  # pragma: no cover - jit
    r, k0, k1, n0, n1 = units[u, 0], units[u, 1], units[u, 2], units[u, 3], units[u, 4]
    part[r, :, n0:n1] = 0
    for k in range(k0, k1):  # k outer: each weight row is read once for all B vectors
        wk = w[k, n0:n1]
        for b in range(x.shape[0]):
            xv = x[b, k]
            acc = part[r, b, n0:n1]
            for n in range(n1 - n0):
                acc[n] = acc[n] + xv * wk[n]


@numba.njit(parallel=True, cache=True)
def _gemv_partials_parallel(x, w, units, part):  # pragma: no cover - jit
    for u in numba.prange(units.shape[0]):
        _gemv_unit(x, w, units, part, u)


@numba.njit(cache=True)
def _gemv_partials_serial(x, w, units, part):  # pragma: no cover - jit
    for u in range(units.shape[0]):
        _gemv_unit(x, w, units, part, u)


def gemv_partials(x: np.ndarray, w: np.ndarray, split: GemvSplit) -> np.ndarray:
    """Every PE's partial products of ``x W`` under ``split``, before the reduction.

    Args:
        x: float32 ``[B, K]`` (``B`` vectors, the live requests of a decode step).
        w: float32 ``[K, N]``.
        split: the tiling of ``w`` over ``rows x cols`` PEs.

    Returns:
        float32 ``[rows, B, N]``: ``out[r, b, n]`` is PE ``(r, c)``'s partial for the column
        block ``c`` holding ``n``: ``sum_{k in row block r} x[b, k] w[k, n]``, ``k``
        ascending, float32 (0 where the row block is empty).

    Raises:
        TypeError, ValueError: not float32 arrays of matching shapes.
    """
    rows, part = _nonempty_partials(x, w, split)
    full = np.zeros((split.rows, x.shape[0], w.shape[1]), np.float32)
    full[rows] = part
    return full


def _nonempty_partials(x: np.ndarray, w: np.ndarray,
                       split: GemvSplit) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The partials of the PE rows whose row block of ``w`` is not empty: ``(rows [R'],
    part [R', B, N])`` (see :func:`gemv_partials`); the other rows' partials are exact
    zeros. Only PEs whose tile has rows and columns are visited: a matrix narrower than the
    grid (64 wide on 994 x 750 PEs) leaves most tiles empty.

    Raises:
        TypeError, ValueError: not float32 arrays of matching shapes.
    """
    x, w = _f32("x", x, 2), _f32("w", w, 2)
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"x has {x.shape[1]} features but w has {w.shape[0]} rows")
    K, N = w.shape
    kb, nb = split.k_bounds(K), split.n_bounds(N)
    rows = np.flatnonzero(kb[1:] > kb[:-1])
    cols = np.flatnonzero(nb[1:] > nb[:-1])
    # column chunks of the non-empty column blocks (a chunk never spans two PEs' tiles)
    chunks = [(n0, min(n0 + GEMV_CHUNK, int(nb[c + 1])))
              for c in cols for n0 in range(int(nb[c]), int(nb[c + 1]), GEMV_CHUNK)]  # fmt: skip
    part = np.zeros((rows.shape[0], x.shape[0], N), np.float32)
    if rows.shape[0] and chunks:
        ch = np.asarray(chunks, dtype=np.int64).reshape(-1, 2)
        # unit = (index into part, k0, k1, n0, n1)
        units = np.empty((rows.shape[0] * ch.shape[0], 5), np.int64)
        units[:, 0] = np.repeat(np.arange(rows.shape[0]), ch.shape[0])
        units[:, 1] = np.repeat(kb[rows], ch.shape[0])
        units[:, 2] = np.repeat(kb[rows + 1], ch.shape[0])
        units[:, 3] = np.tile(ch[:, 0], rows.shape[0])
        units[:, 4] = np.tile(ch[:, 1], rows.shape[0])
        if x.shape[0] * K * N >= PARALLEL_MIN_MACS:
            with numba_threads(numba.config.NUMBA_NUM_THREADS):
                _gemv_partials_parallel(x, w, units, part)
        else:
            _gemv_partials_serial(x, w, units, part)
    return rows, part


def gemv_split(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
               split: GemvSplit) -> np.ndarray:  # fmt: skip
    """``y = x W (+ bias)`` computed as the PEs of ``split`` do (see the module docstring).

    Args:
        x: float32 ``[B, K]``; w: float32 ``[K, N]``; bias: float32 ``[N]``, or None / empty.
        split: the :class:`GemvSplit` of this matrix.

    Returns:
        float32 ``[B, N]``.

    Raises:
        TypeError, ValueError: not float32 arrays of matching shapes.
    """
    rows, part = _nonempty_partials(x, w, split)
    # The fabric's combine order over all rows, applied to the non-empty partials only:
    # adding an empty (all +0.0) partial is ``v + 0.0``, which is ``v`` except that it
    # turns -0.0 into +0.0, so that case is kept (and a pair of empty partials is skipped).
    slot = {int(r): i for i, r in enumerate(rows)}
    root = combine_root(split.rows, split.reduce, split.k)
    y = np.zeros((x.shape[0], w.shape[1]), np.float32) if root not in slot else None
    for dst, src in combine_order(split.rows, split.reduce, split.k):
        d, s_ = slot.get(dst), slot.get(src)
        if s_ is not None and d is not None:
            np.add(part[d], part[s_], out=part[d])
        elif d is not None:
            np.add(part[d], np.float32(0.0), out=part[d])
        elif s_ is not None:
            np.add(part[s_], np.float32(0.0), out=part[s_])  # empty dst: 0.0 + src
            slot[dst] = s_
            slot.pop(src)
    if root in slot:
        y = part[slot[root]]
    if bias is not None and np.size(bias):
        bias = _f32("bias", bias, 1)
        if bias.shape[0] != w.shape[1]:
            raise ValueError(f"bias has length {bias.shape[0]}, expected {w.shape[1]}")
        np.add(y, bias, out=y)
    return y


# --------------------------------------------------------------------------------------------
# attention of one new token over the KV cache
# --------------------------------------------------------------------------------------------


@numba.njit(inline="always")
def _attn_unit(q, k, v, tb, n_head, n_kv, scale, m, l, o, u):  # pragma: no cover - jit
    dh = q.shape[0] // n_head
    group = n_head // n_kv
    p = u // n_head
    h = u % n_head
    kh = h // group
    qo = h * dh
    ko = kh * dh
    i0, i1 = tb[p], tb[p + 1]
    z = np.empty(i1 - i0, np.float32)
    mx = np.float32(-np.inf)
    for i in range(i0, i1):
        acc = np.float32(0)
        for d in range(dh):
            acc = acc + q[qo + d] * k[i, ko + d]
        acc = acc * scale
        z[i - i0] = acc
        mx = max(mx, acc)
    tot = np.float32(0)
    for i in range(i0, i1):
        e = np.float32(math.exp(np.float32(z[i - i0] - mx)))
        z[i - i0] = e
        tot = tot + e
    for d in range(dh):
        acc = np.float32(0)
        for i in range(i0, i1):
            acc = acc + z[i - i0] * v[i, ko + d]
        o[p, h, d] = acc
    m[p, h] = mx
    l[p, h] = tot


@numba.njit(parallel=True, cache=True)
def _attn_partials_parallel(q, k, v, tb, n_head, n_kv, scale, m, l, o):  # pragma: no cover
    for u in numba.prange((tb.shape[0] - 1) * n_head):
        _attn_unit(q, k, v, tb, n_head, n_kv, scale, m, l, o, u)


@numba.njit(cache=True)
def _attn_partials_serial(q, k, v, tb, n_head, n_kv, scale, m, l, o):  # pragma: no cover
    for u in range((tb.shape[0] - 1) * n_head):
        _attn_unit(q, k, v, tb, n_head, n_kv, scale, m, l, o, u)


@numba.njit(cache=True)
def _attn_merge_kernel(m, l, o, pairs, root, out):  # pragma: no cover - jit
    n_head, dh = o.shape[1], o.shape[2]
    for h in range(n_head):
        for j in range(pairs.shape[0]):
            a_, b_ = pairs[j, 0], pairs[j, 1]
            mx = max(m[a_, h], m[b_, h])
            ea = np.float32(math.exp(np.float32(m[a_, h] - mx)))
            eb = np.float32(math.exp(np.float32(m[b_, h] - mx)))
            l[a_, h] = np.float32(l[a_, h] * ea) + np.float32(l[b_, h] * eb)
            for d in range(dh):
                o[a_, h, d] = np.float32(o[a_, h, d] * ea) + np.float32(o[b_, h, d] * eb)
            m[a_, h] = mx
        for d in range(dh):
            out[h * dh + d] = o[root, h, d] / l[root, h]


def attention_partials(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, n_kv: int,
                       scale: float, kv_split: KVSplit):  # fmt: skip
    """Each KV PE's partial softmax of one query token (see the module docstring).

    Returns:
        ``(m [P, H], l [P, H], o [P, H, dh], token_bounds)`` float32, ``P`` the PEs that hold
        cached tokens.

    Raises:
        TypeError, ValueError: bad arrays or head counts; ConfigError: more cached tokens
            than ``kv_split`` holds.
    """
    q, k, v = _f32("q", q, 1), _f32("k", k, 2), _f32("v", v, 2)
    if n_head < 1 or n_kv < 1 or n_head % n_kv or q.shape[0] % n_head:
        raise ValueError(f"n_kv={n_kv} must divide n_head={n_head}, which must divide {q.shape[0]}")
    dh = q.shape[0] // n_head
    n = k.shape[0]
    if n < 1 or k.shape != (n, n_kv * dh) or v.shape != k.shape:
        raise ValueError(f"k and v must be [n >= 1, {n_kv * dh}], got {k.shape} and {v.shape}")
    tb = kv_split.token_bounds(n)
    P = tb.shape[0] - 1
    m = np.empty((P, n_head), np.float32)
    l = np.empty((P, n_head), np.float32)
    o = np.empty((P, n_head, dh), np.float32)
    args = (q, k, v, tb, n_head, n_kv, np.float32(scale), m, l, o)
    if n * n_head * dh >= PARALLEL_MIN_MACS:
        with numba_threads(numba.config.NUMBA_NUM_THREADS):
            _attn_partials_parallel(*args)
    else:
        _attn_partials_serial(*args)
    return m, l, o, tb


def attention_decode(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, n_kv: int,
                     scale: float, kv_split: KVSplit) -> np.ndarray:  # fmt: skip
    """Attention of one new token over its cached keys and values, computed as the PEs of
    ``kv_split`` do (see the module docstring).

    Args:
        q: float32 ``[H * dh]`` query (rotated, for the rotary families).
        k, v: float32 ``[n, KV * dh]`` cached keys (rotated) and values of positions
            ``0..n-1``, the new token's included (a decode step attends to all of them).
        n_head, n_kv: query and K/V heads (``n_kv`` divides ``n_head``).
        scale: the score scale, ``1 / sqrt(dh)`` (rounded to float32).
        kv_split: how the ``n`` cached tokens are spread over PEs.

    Returns:
        float32 ``[H * dh]``.

    Raises:
        TypeError, ValueError: bad arrays or head counts; ConfigError: more cached tokens
            than ``kv_split`` holds.
    """
    m, l, o, tb = attention_partials(q, k, v, n_head, n_kv, scale, kv_split)
    out = np.empty(q.shape[0], np.float32)
    n, red, kk = tb.shape[0] - 1, kv_split.reduce, kv_split.k
    _attn_merge_kernel(m, l, o, _pairs(n, red, kk), combine_root(n, red, kk), out)
    return out
