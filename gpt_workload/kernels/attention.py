"""Causal self-attention kernels: the online (flash-style) softmax shared by every tiled form,
head-parallel attention on tile arrays, and grouped-query attention on token rows (forward
with its probabilities kept, backward). Layout and arithmetic rules: :mod:`gpt_workload.kernels`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from gpt_workload.kernels._common import (
    _as_f32,
    _axpy,
    _check_out,
    _check_seq,
    _no_alias,
    _same,
    _scale,
    _scale_add,
    _zero,
)

_f32 = _as_f32

__all__ = ["attention_tiled", "gqa_attention_bwd", "gqa_attention_fwd", "online_softmax_av"]

# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def online_softmax_av(scores, n_keys, m, v, acc, blk, out):  # pragma: no cover - jit
    """``out = softmax(scores[:n_keys]) @ v[:n_keys]`` by the online (flash-style) softmax.

    The one block loop of every tiled attention kernel (:func:`attention_tiled`,
    :func:`gpt_workload.kernels.split_heads.attention_split`). Key blocks are ``m`` keys each,
    in order (block ``b`` holds keys ``b*m .. min(b*m + m, n_keys) - 1``: a segment's keys,
    in the order the segments arrive). Start ``mx = -inf, l = 0, o = 0``; per block:
    ``bm = max_i z_i`` (``i`` ascending), ``mx' = max(mx, bm)``, ``c = exp(mx - mx')``,
    ``e_i = exp(z_i - mx')``, ``bl = sum_i e_i`` and ``bo[d] = sum_i e_i * v_i[d]`` (``i``
    ascending), ``l = l*c + bl``, ``o[d] = o[d]*c + bo[d]``, ``mx = mx'``; finally
    ``out[d] = o[d] / l``. float32, one rounding per operation.

    Args:
        scores: float32 ``[>= n_keys]`` scaled scores ``z``.
        n_keys: keys taking part (``>= 1``).
        m: keys per block (``>= 1``).
        v: float32 ``[>= n_keys, dh]`` values, one row per key.
        acc, blk: float32 ``[dh]`` scratch (overwritten).
        out: float32 ``[dh]``, written.
    """
    dh = acc.shape[0]
    run_max = np.float32(-np.inf)
    run_sum = np.float32(0)
    _zero(acc, dh)
    for kb in range((n_keys + m - 1) // m):
        i0 = kb * m
        i1 = min(i0 + m, n_keys)
        blk_max = np.float32(-np.inf)
        for i in range(i0, i1):
            blk_max = max(blk_max, scores[i])
        new_max = max(run_max, blk_max)
        corr = np.float32(math.exp(np.float32(run_max - new_max)))
        blk_sum = np.float32(0)
        _zero(blk, dh)
        for i in range(i0, i1):
            e = np.float32(math.exp(np.float32(scores[i] - new_max)))
            blk_sum = blk_sum + e
            _axpy(blk, e, v[i], dh)
        run_sum = run_sum * corr + blk_sum
        _scale_add(acc, corr, blk, dh)
        run_max = new_max
    for d in range(dh):
        out[d] = acc[d] / run_sum


@numba.njit(parallel=True, cache=True)
def _attention_kernel(qkv, segs_per_seq, seq_len, scale, out, d_head):  # pragma: no cover
    """Numba body of :func:`attention_tiled` (same arguments, all validated)."""
    n_seg, n_pe, m, _ = qkv.shape
    hp = out.shape[3] // d_head
    n_seqs = n_seg // segs_per_seq
    t_pad = segs_per_seq * m
    k_off = hp * d_head
    v_off = 2 * hp * d_head
    # One work unit = one head of one sequence (a PE's head over all its segments).
    for unit in numba.prange(n_seqs * n_pe * hp):
        seq = unit // (n_pe * hp)
        j = (unit // hp) % n_pe
        h = unit % hp
        base = seq * segs_per_seq
        qo = h * d_head
        ko = k_off + h * d_head
        vo = v_off + h * d_head
        # keys of the whole sequence, transposed so the score loop runs over keys; values of
        # the whole sequence, one row per key
        k_t = np.zeros((d_head, t_pad), np.float32)
        v_r = np.zeros((t_pad, d_head), np.float32)
        for sp in range(segs_per_seq):
            for t2 in range(m):
                for d in range(d_head):
                    k_t[d, sp * m + t2] = qkv[base + sp, j, t2, ko + d]
                    v_r[sp * m + t2, d] = qkv[base + sp, j, t2, vo + d]
        scores = np.empty(t_pad, np.float32)
        acc = np.empty(d_head, np.float32)
        blk = np.empty(d_head, np.float32)
        for sp in range(segs_per_seq):
            s = base + sp
            for t in range(m):
                q = sp * m + t
                if q >= seq_len:
                    for d in range(d_head):
                        out[s, j, t, qo + d] = 0
                    continue
                n_keys = q + 1
                # score[i] = (sum_d q[d] * k_i[d], d ascending from 0) * scale
                _zero(scores, n_keys)
                for d in range(d_head):
                    qd = qkv[s, j, t, qo + d]
                    _axpy(scores, qd, k_t[d], n_keys)
                _scale(scores, scale, n_keys)
                # online softmax, one key block per segment (keys sp*m.. of block sp), in
                # arrival order: ceil((q + 1) / m) = sp + 1 blocks
                online_softmax_av(scores, n_keys, m, v_r, acc, blk, out[s, j, t, qo : qo + d_head])


def attention_tiled(
    qkv_tiles: np.ndarray,
    segs_per_seq: int,
    seq_len: int,
    scale: float,
    out_tiles: np.ndarray,
    *,
    d_head: int,
) -> np.ndarray:
    """Head-parallel causal self-attention with an online (flash-style) softmax.

    PE ``j`` holds ``hp`` heads (``j*hp .. j*hp+hp-1``); the last dim of its qkv tile is
    ``[q of its hp heads | k of its hp heads | v of its hp heads]``, each head-major with
    ``d_head`` features (use
    :func:`gpt_workload.mappings.weight_streaming.layout.qkv_column_permutation` on the fused
    QKV weight to get this order). The output tile of PE ``j`` holds its ``hp`` heads'
    outputs, head-major.

    Exact order, per segment ``s`` (position ``p = s % S_seq`` in its sequence, first segment
    ``base = s - p``), valid query slot ``t`` (``q = p*m + t < seq_len``) and head:

    * scores ``z_i = (sum_{d ascending from 0} q[d] * k_i[d]) * scale`` for key positions
      ``i = 0..q`` (causal; padded positions never take part);
    * key blocks are the segments ``base, base+1, .., s`` in that order (the order in which
      K/V blocks arrive along the chain); block ``b`` holds keys ``b*m .. min(b*m+m, q+1)-1``;
    * start ``mx = -inf, l = 0, o = 0``; per block: ``bm = max_i z_i`` (``i`` ascending),
      ``mx' = max(mx, bm)``, ``c = exp(mx - mx')``, ``e_i = exp(z_i - mx')``,
      ``bl = sum_i e_i`` and ``bo[d] = sum_i e_i * v_i[d]`` (``i`` ascending from 0),
      ``l = l*c + bl``, ``o[d] = o[d]*c + bo[d]``, ``mx = mx'``;
    * ``out[d] = o[d] / l``. Padded query slots get 0.

    Args:
        qkv_tiles: float32 ``[S, P, m, 3 * hp * d_head]``.
        segs_per_seq: segments per sequence ``S_seq``.
        seq_len: tokens per sequence ``T``.
        scale: score scale, normally ``1 / sqrt(d_head)`` (rounded to float32).
        out_tiles: float32 ``[S, P, m, hp * d_head]``, written in place; must not overlap
            ``qkv_tiles``.
        d_head: head dimension ``dh`` (not derivable from the shapes alone).

    Returns:
        ``out_tiles``.

    Raises:
        TypeError: an array argument is not a numpy.ndarray.
        ValueError: wrong dtype, shape or overlap, or inconsistent ``(segs_per_seq,
            seq_len)``.
    """
    qkv_tiles = _as_f32("qkv_tiles", qkv_tiles, 4)
    n_seg, n_pe, m, width = qkv_tiles.shape
    if d_head < 1 or width % (3 * d_head):
        raise ValueError(f"qkv tile width {width} is not a multiple of 3*d_head={3 * d_head}")
    hp = width // (3 * d_head)
    _check_out("out_tiles", out_tiles, (n_seg, n_pe, m, hp * d_head))
    _check_seq(n_seg, m, segs_per_seq, seq_len)
    _no_alias("qkv_tiles", qkv_tiles, "out_tiles", out_tiles)
    _attention_kernel(qkv_tiles, segs_per_seq, seq_len, np.float32(scale), out_tiles, d_head)
    return out_tiles


# --------------------------------------------------------------------------------------------
# grouped-query attention
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _gqa_sizes(q, seq_len, n_head, n_kv):  # pragma: no cover - jit
    """``(sequences, head size, query heads per K/V head)`` of a GQA kernel's ``q [B*T, H*dh]``."""
    return q.shape[0] // seq_len, q.shape[1] // n_head, n_head // n_kv


@numba.njit(cache=True, inline="always")
def _gqa_unit(unit, seq_len, n_kv, dh):  # pragma: no cover - jit
    """Work unit ``unit`` (one K/V head of one sequence) as ``(sequence b, K/V head kh, first
    row b*T, first column kh*dh)``."""
    b = unit // n_kv
    kh = unit % n_kv
    return b, kh, b * seq_len, kh * dh


@numba.njit(parallel=True, cache=True)
def _gqa_fwd_kernel(q, k, v, seq_len, n_head, n_kv, scale, out, probs):  # pragma: no cover
    n_seq, dh, group = _gqa_sizes(q, seq_len, n_head, n_kv)
    for unit in numba.prange(n_seq * n_kv):
        b, kh, r0, ko = _gqa_unit(unit, seq_len, n_kv, dh)
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
    n_seq, dh, group = _gqa_sizes(q, seq_len, n_head, n_kv)
    # one unit = one K/V head of one sequence: it owns dk, dv of that head (no races)
    for unit in numba.prange(n_seq * n_kv):
        b, kh, r0, ko = _gqa_unit(unit, seq_len, n_kv, dh)
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
