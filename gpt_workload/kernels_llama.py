"""Numba kernels of the ops the rotary families add: RMSNorm, rotary embedding, the SwiGLU
product and grouped-query attention, forward and backward.

Layout: token rows, as the training kernels (:mod:`gpt_workload.training.backward`): an
activation is float32 ``[N, F]`` with ``N = n_seq * T`` rows, sequence-major (row ``r`` is
position ``r % T`` of sequence ``r // T``). One parallel work unit is what one PE of the
head-per-PE weight-streaming layout computes: a token row for the norm and the element-wise
ops (a PE's features of its tokens), one (sequence, K/V head) for attention (the PE group
that holds the query heads sharing that K/V head, which the fabric multicasts to them).
Moving them onto the tile layout of :mod:`gpt_workload.kernels` comes with the lowering.

RMSNorm and rotary also come on that tile layout (:func:`rmsnorm_tiled`,
:func:`rotary_tiled`, ``[S, P, m, F // P]`` as :mod:`gpt_workload.layout`), the two forward
ops whose per-PE form differs from the row form: the norm's sum of squares is reduced across
the segment's PEs in the chain order of :func:`gpt_workload.kernels.layernorm_tiled`, and
rotary needs each slot's position and whole heads on a PE.

Arithmetic is float32 with one rounding per operation (no fastmath); reductions run in the
order each docstring states (ascending index). ``exp`` is the C library's float32 function.
Each public function validates its arguments (``ValueError``/``TypeError``) and calls one
``@njit(cache=True)`` kernel. Tests hold the forward against the float64 reference
(:mod:`gpt_workload.reference`) and the backward against torch autograd.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from gpt_workload.kernels import _as_f32 as _f32

__all__ = [
    "rmsnorm_tiled",
    "rotary_tiled",
    "gqa_attention_bwd",
    "gqa_attention_fwd",
    "rmsnorm_bwd",
    "rmsnorm_fwd",
    "rotary_bwd",
    "rotary_fwd",
    "rotary_tables_f32",
    "swiglu_bwd",
    "swiglu_fwd",
]



def _same(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}")


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


# --------------------------------------------------------------------------------------------
# SwiGLU product
# --------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _swiglu_fwd_kernel(gate, up, out):  # pragma: no cover - jit
    n, f = gate.shape
    one = np.float32(1)
    for r in numba.prange(n):
        for c in range(f):
            x = gate[r, c]
            sig = one / (one + np.float32(math.exp(-x)))
            out[r, c] = np.float32(x * sig) * up[r, c]


def swiglu_fwd(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``silu(gate) * up`` with ``silu(x) = x * sigmoid(x)``, ``sigmoid = 1 / (1 + exp(-x))``.

    Args:
        gate, up: float32 ``[N, f]``.
    """
    gate, up = _f32("gate", gate, 2), _f32("up", up, 2)
    _same("up", up, gate.shape)
    out = np.empty_like(gate)
    _swiglu_fwd_kernel(gate, up, out)
    return out


@numba.njit(parallel=True, cache=True)
def _swiglu_bwd_kernel(dy, gate, up, dgate, dup):  # pragma: no cover - jit
    n, f = gate.shape
    one = np.float32(1)
    for r in numba.prange(n):
        for c in range(f):
            x = gate[r, c]
            sig = one / (one + np.float32(math.exp(-x)))
            silu = np.float32(x * sig)
            dup[r, c] = dy[r, c] * silu
            dsilu = np.float32(sig * np.float32(one + np.float32(x * np.float32(one - sig))))
            dgate[r, c] = np.float32(dy[r, c] * up[r, c]) * dsilu


def swiglu_bwd(dy: np.ndarray, gate: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`swiglu_fwd`: ``dup = dy * silu(gate)``,
    ``dgate = dy * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate)))``.

    Returns:
        ``(dgate, dup)``, float32 ``[N, f]``.
    """
    dy, gate, up = _f32("dy", dy, 2), _f32("gate", gate, 2), _f32("up", up, 2)
    _same("up", up, gate.shape)
    _same("dy", dy, gate.shape)
    dgate, dup = np.empty_like(gate), np.empty_like(gate)
    _swiglu_bwd_kernel(dy, gate, up, dgate, dup)
    return dgate, dup


# --------------------------------------------------------------------------------------------
# grouped-query attention
# --------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _gqa_fwd_kernel(q, k, v, seq_len, n_head, n_kv, scale, out, probs):  # pragma: no cover
    n_seq = q.shape[0] // seq_len
    dh = q.shape[1] // n_head
    group = n_head // n_kv
    for unit in numba.prange(n_seq * n_kv):
        b = unit // n_kv
        kh = unit % n_kv
        r0 = b * seq_len
        ko = kh * dh
        for hg in range(group):
            h = kh * group + hg
            qo = h * dh
            for t in range(seq_len):
                mx = np.float32(-np.inf)
                for i in range(t + 1):
                    z = np.float32(0)
                    for d in range(dh):
                        z = z + q[r0 + t, qo + d] * k[r0 + i, ko + d]
                    z = z * scale
                    probs[b, h, t, i] = z
                    mx = max(mx, z)
                tot = np.float32(0)
                for i in range(t + 1):
                    e = np.float32(math.exp(np.float32(probs[b, h, t, i] - mx)))
                    probs[b, h, t, i] = e
                    tot = tot + e
                for i in range(t + 1):
                    probs[b, h, t, i] = probs[b, h, t, i] / tot
                for i in range(t + 1, seq_len):
                    probs[b, h, t, i] = 0
                for d in range(dh):
                    acc = np.float32(0)
                    for i in range(t + 1):
                        acc = acc + probs[b, h, t, i] * v[r0 + i, ko + d]
                    out[r0 + t, qo + d] = acc


def _check_gqa(q, k, v, seq_len, n_head, n_kv):
    q, k, v = _f32("q", q, 2), _f32("k", k, 2), _f32("v", v, 2)
    if n_head < 1 or n_kv < 1 or n_head % n_kv or q.shape[1] % n_head:
        raise ValueError(f"n_kv={n_kv} must divide n_head={n_head}, which must divide {q.shape[1]}")
    if seq_len < 1 or q.shape[0] % seq_len:
        raise ValueError(f"seq_len={seq_len} does not divide the {q.shape[0]} rows")
    kv_shape = (q.shape[0], n_kv * (q.shape[1] // n_head))
    _same("k", k, kv_shape)
    _same("v", v, kv_shape)
    return q, k, v


def gqa_attention_fwd(q: np.ndarray, k: np.ndarray, v: np.ndarray, seq_len: int, n_head: int,
                      n_kv: int, scale: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Causal grouped-query attention: query head ``h`` reads K/V head ``h // (n_head/n_kv)``.

    Per (sequence, head, query position t): ``z_i = (sum_d q_d k_{i,d}) * scale`` for keys
    ``i = 0..t`` (``d`` ascending), ``p_i = exp(z_i - max z) / sum_i exp(...)`` (``i``
    ascending), ``out_d = sum_i p_i v_{i,d}``.

    Args:
        q: float32 ``[n_seq*T, n_head*dh]``; k, v: float32 ``[n_seq*T, n_kv*dh]``.

    Returns:
        ``(out [n_seq*T, n_head*dh], probs [n_seq, n_head, T, T])`` (probs for the backward).
    """
    q, k, v = _check_gqa(q, k, v, seq_len, n_head, n_kv)
    out = np.empty_like(q)
    probs = np.empty((q.shape[0] // seq_len, n_head, seq_len, seq_len), np.float32)
    _gqa_fwd_kernel(q, k, v, seq_len, n_head, n_kv, np.float32(scale), out, probs)
    return out, probs


@numba.njit(parallel=True, cache=True)
def _gqa_bwd_kernel(
    dout, q, k, v, probs, seq_len, n_head, n_kv, scale, dq, dk, dv
):  # pragma: no cover - jit
    n_seq = q.shape[0] // seq_len
    dh = q.shape[1] // n_head
    group = n_head // n_kv
    # one unit = one K/V head of one sequence: it owns dk, dv of that head (no races)
    for unit in numba.prange(n_seq * n_kv):
        b = unit // n_kv
        kh = unit % n_kv
        r0 = b * seq_len
        ko = kh * dh
        for i in range(seq_len):
            for d in range(dh):
                dk[r0 + i, ko + d] = 0
                dv[r0 + i, ko + d] = 0
        ds = np.empty(seq_len, np.float32)
        for hg in range(group):
            h = kh * group + hg
            qo = h * dh
            for t in range(seq_len):
                # dp_i = sum_d dout_d v_{i,d};  ds_i = p_i (dp_i - sum_j p_j dp_j)
                dot = np.float32(0)
                for i in range(t + 1):
                    dp = np.float32(0)
                    for d in range(dh):
                        dp = dp + dout[r0 + t, qo + d] * v[r0 + i, ko + d]
                    ds[i] = dp
                    dot = dot + probs[b, h, t, i] * dp
                for i in range(t + 1):
                    p = probs[b, h, t, i]
                    ds[i] = np.float32(p * np.float32(ds[i] - dot)) * scale
                    for d in range(dh):
                        dv[r0 + i, ko + d] = dv[r0 + i, ko + d] + p * dout[r0 + t, qo + d]
                        dk[r0 + i, ko + d] = dk[r0 + i, ko + d] + ds[i] * q[r0 + t, qo + d]
                for d in range(dh):
                    acc = np.float32(0)
                    for i in range(t + 1):
                        acc = acc + ds[i] * k[r0 + i, ko + d]
                    dq[r0 + t, qo + d] = acc


def gqa_attention_bwd(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                      probs: np.ndarray, seq_len: int, n_head: int, n_kv: int,
                      scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Gradients of :func:`gqa_attention_fwd`: ``dV_i += p_i dout`` and ``dK_i += ds_i q``
    summed over the query heads of the K/V head's group (heads, then positions t, ascending),
    ``dq = sum_i ds_i k_i`` with ``ds_i = scale * p_i (dp_i - sum_j p_j dp_j)``,
    ``dp_i = dout . v_i``.

    Returns:
        ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v``.
    """
    q, k, v = _check_gqa(q, k, v, seq_len, n_head, n_kv)
    dout = _f32("dout", dout, 2)
    probs = _f32("probs", probs, 4)
    _same("dout", dout, q.shape)
    _same("probs", probs, (q.shape[0] // seq_len, n_head, seq_len, seq_len))
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _gqa_bwd_kernel(dout, q, k, v, probs, seq_len, n_head, n_kv, np.float32(scale), dq, dk, dv)
    return dq, dk, dv


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
                for j in range(n_pe):
                    for f in range(ft):
                        out[s, j, t, f] = 0
                continue
            total = np.float32(0)
            for j in range(n_pe):
                local = np.float32(0)
                for f in range(ft):
                    local = local + x[s, j, t, f] * x[s, j, t, f]
                total = local if j == 0 else total + local
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


def _check_tiles(out, shape, n_seg, segs_per_seq):
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"out_tiles must be a float32 array of shape {shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out_tiles must be C-contiguous and writeable")
    if segs_per_seq < 1 or n_seg % segs_per_seq:
        raise ValueError(f"segs_per_seq={segs_per_seq} does not divide the {n_seg} segments")


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
