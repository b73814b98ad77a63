"""Causal self-attention kernels: the online (flash-style) softmax shared by every tiled form,
head-parallel attention on tile arrays, and grouped-query attention on token rows (forward
with its probabilities kept, backward). Layout and arithmetic rules: :mod:`gpt_workload.kernels`.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from gpt_workload.blas_gemm import default_threads
from gpt_workload.kernels._common import (
    _as_f32,
    _axpy,
    _check_out,
    _check_seq,
    _no_alias,
    _same,
    _scale_add,
    _zero,
)
from gpt_workload.kernels._expf import exp_f32

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
    ``out[d] = o[d] / l``. float32, one rounding per operation; ``exp`` is
    :func:`gpt_workload.kernels._expf.exp_f32`.

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
        corr = exp_f32(np.float32(run_max - new_max))
        blk_sum = np.float32(0)
        _zero(blk, dh)
        for i in range(i0, i1):
            e = exp_f32(np.float32(scores[i] - new_max))
            blk_sum = blk_sum + e
            _axpy(blk, e, v[i], dh)
        run_sum = run_sum * corr + blk_sum
        _scale_add(acc, corr, blk, dh)
        run_max = new_max
    for d in range(dh):
        out[d] = acc[d] / run_sum


#: Queries per tile of :func:`attention_tiled` (rounded down to whole segments, at least one)
#: and keys per chunk of its scores (whole blocks, at least one).
ATTENTION_QUERY_TILE = 64
ATTENTION_KEY_CHUNK = 128


@numba.njit(cache=True)
def _scores_t(kr, qt, c0, nkc, q0, lanes, scale, st):  # pragma: no cover - jit
    """``st[i, t] = (sum_d k_{c0+i}[d] q_{q0+t}[d], d ascending from 0) * scale`` for keys
    ``i < nkc`` and all ``lanes`` query slots of the tile (vectorised over the queries; the
    sum over ``d`` is the sequential one, eight terms per pass)."""
    dh = kr.shape[1]
    d8 = dh - dh % 8
    for i in range(nkc):
        kk = kr[c0 + i]
        srow = st[i]
        for t in range(lanes):
            srow[t] = 0
        for d in range(0, d8, 8):
            k0, k1, k2, k3 = kk[d], kk[d + 1], kk[d + 2], kk[d + 3]
            k4, k5, k6, k7 = kk[d + 4], kk[d + 5], kk[d + 6], kk[d + 7]
            g0, g1, g2, g3 = qt[d, q0:], qt[d + 1, q0:], qt[d + 2, q0:], qt[d + 3, q0:]
            g4, g5, g6, g7 = qt[d + 4, q0:], qt[d + 5, q0:], qt[d + 6, q0:], qt[d + 7, q0:]
            for t in range(lanes):
                srow[t] = (((((((srow[t] + k0 * g0[t]) + k1 * g1[t]) + k2 * g2[t])
                              + k3 * g3[t]) + k4 * g4[t]) + k5 * g5[t]) + k6 * g6[t]) + k7 * g7[t]
        for d in range(d8, dh):
            kd = kk[d]
            g = qt[d, q0:]
            for t in range(lanes):
                srow[t] = srow[t] + kd * g[t]
        for t in range(lanes):
            srow[t] = srow[t] * scale


@numba.njit(cache=True)
def _whole_blocks_t(st, nkc, m, lanes, vr, c0, mx, ls, ot, cor, bm, bs, bt):  # pragma: no cover
    """The online-softmax steps of :func:`online_softmax_av` for the ``nkc / m`` whole key
    blocks of a chunk (scores ``st[i, t]``, keys ``c0 + i``), every query slot of the tile
    at once: running max ``mx``, sum ``ls`` and output ``ot[d, t]`` updated in place, the
    same operations in the same order per query."""
    dh = vr.shape[1]
    nb = nkc // m
    for b in range(nb):  # block max, new running max, exponent arguments
        for t in range(lanes):
            bm[t] = -np.inf
        for i in range(b * m, b * m + m):
            srow = st[i]
            for t in range(lanes):
                bm[t] = max(bm[t], srow[t])
        crow = cor[b]
        for t in range(lanes):
            nm = max(mx[t], bm[t])
            crow[t] = np.float32(mx[t] - nm)
            mx[t] = nm
        for i in range(b * m, b * m + m):
            srow = st[i]
            for t in range(lanes):
                srow[t] = np.float32(srow[t] - mx[t])
    for i in range(nkc):  # the exponentials, vectorised
        srow = st[i]
        for t in range(lanes):
            srow[t] = exp_f32(srow[t])
    for b in range(nb):
        crow = cor[b]
        for t in range(lanes):
            crow[t] = exp_f32(crow[t])
    for b in range(nb):  # l = l c + sum_i e_i;  o[d] = o[d] c + sum_i e_i v_i[d]
        i0 = b * m
        crow = cor[b]
        for t in range(lanes):
            bs[t] = 0
        for i in range(i0, i0 + m):
            srow = st[i]
            for t in range(lanes):
                bs[t] = bs[t] + srow[t]
        for t in range(lanes):
            ls[t] = ls[t] * crow[t] + bs[t]
        if m == 4:  # the block sum in registers
            e0, e1, e2, e3 = st[i0], st[i0 + 1], st[i0 + 2], st[i0 + 3]
            v0, v1, v2, v3 = vr[c0 + i0], vr[c0 + i0 + 1], vr[c0 + i0 + 2], vr[c0 + i0 + 3]
            for d in range(dh):
                a0, a1, a2, a3 = v0[d], v1[d], v2[d], v3[d]
                orow = ot[d]
                for t in range(lanes):
                    blk = (((np.float32(0) + e0[t] * a0) + e1[t] * a1) + e2[t] * a2) + e3[t] * a3
                    orow[t] = orow[t] * crow[t] + blk
        else:
            for d in range(dh):
                for t in range(lanes):
                    bt[d, t] = 0
            for i in range(i0, i0 + m):
                ei = st[i]
                vi = vr[c0 + i]
                for d in range(dh):
                    a = vi[d]
                    brow = bt[d]
                    for t in range(lanes):
                        brow[t] = brow[t] + ei[t] * a
            for d in range(dh):
                orow = ot[d]
                brow = bt[d]
                for t in range(lanes):
                    orow[t] = orow[t] * crow[t] + brow[t]


def _attention_kernel(qkv, segs_per_seq, seq_len, scale, out, d_head) -> None:
    """Body of :func:`attention_tiled` (same arguments, all validated): one work unit per
    head of a sequence (a PE's head over all its segments), the units shared among the
    cores by Python threads (the compiled unit releases the GIL; a ``prange`` over units
    compiled three times slower, for no gain)."""
    n_seg, n_pe, _, _ = qkv.shape
    n_units = n_seg // segs_per_seq * n_pe * (out.shape[3] // d_head)

    def run(unit: int) -> None:
        _attention_unit(qkv, segs_per_seq, seq_len, scale, out, d_head, unit)

    n_thr = min(default_threads(), n_units)
    if n_thr <= 1:
        for unit in range(n_units):
            run(unit)
        return
    with ThreadPoolExecutor(max_workers=n_thr) as pool:
        list(pool.map(run, range(n_units)))


@numba.njit(cache=True, nogil=True)
def _attention_unit(qkv, segs_per_seq, seq_len, scale, out, d_head, unit):  # pragma: no cover
    """Work unit ``unit`` of :func:`_attention_kernel`: head ``unit % hp`` of PE ``(unit //
    hp) % P`` of sequence ``unit // (P hp)``.

    Per head, queries go in tiles of ``lanes`` (whole segments): the keys of the segments
    before the tile are whole blocks for every query of it, so their scores and online
    softmax run vectorised over the tile's queries (:func:`_scores_t`,
    :func:`_whole_blocks_t`); the tile's own keys (the causal diagonal) then run query by
    query, as :func:`online_softmax_av` does. Per query the operations and their order are
    those of :func:`attention_tiled`'s docstring either way."""
    n_seg, n_pe, m, _ = qkv.shape
    hp = out.shape[3] // d_head
    t_pad = segs_per_seq * m
    dh = d_head
    lanes = m * max(ATTENTION_QUERY_TILE // m, 1)
    kc = m * max(ATTENTION_KEY_CHUNK // m, 1)
    seq = unit // (n_pe * hp)
    j = (unit // hp) % n_pe
    h = unit % hp
    base = seq * segs_per_seq
    qo = h * dh
    ko = (hp + h) * dh
    vo = (2 * hp + h) * dh
    # queries feature-major (a tile's queries contiguous), keys and values one row per key
    qt = np.zeros((dh, t_pad + lanes), np.float32)
    kr = np.zeros((t_pad, dh), np.float32)
    vr = np.zeros((t_pad, dh), np.float32)
    for sp in range(segs_per_seq):
        for t2 in range(m):
            for d in range(dh):
                qt[d, sp * m + t2] = qkv[base + sp, j, t2, qo + d]
                kr[sp * m + t2, d] = qkv[base + sp, j, t2, ko + d]
                vr[sp * m + t2, d] = qkv[base + sp, j, t2, vo + d]
            if sp * m + t2 >= seq_len:  # padded query slot
                for d in range(dh):
                    out[base + sp, j, t2, qo + d] = 0
    st = np.empty((max(kc, lanes), lanes), np.float32)  # scores, then exps [key, query]
    cor = np.empty((kc // m, lanes), np.float32)
    mx = np.empty(lanes, np.float32)
    ls = np.empty(lanes, np.float32)
    bm = np.empty(lanes, np.float32)
    bs = np.empty(lanes, np.float32)
    ot = np.empty((dh, lanes), np.float32)
    bt = np.empty((dh, lanes), np.float32)
    acc = np.empty(dh, np.float32)
    blk = np.empty(dh, np.float32)
    for q0 in range(0, seq_len, lanes):
        nq = min(q0 + lanes, seq_len) - q0
        for t in range(lanes):
            mx[t] = -np.inf
            ls[t] = 0
        for d in range(dh):
            for t in range(lanes):
                ot[d, t] = 0
        for c0 in range(0, q0, kc):  # whole blocks before the tile
            nkc = min(c0 + kc, q0) - c0
            _scores_t(kr, qt, c0, nkc, q0, lanes, scale, st)
            _whole_blocks_t(st, nkc, m, lanes, vr, c0, mx, ls, ot, cor, bm, bs, bt)
        # the tile's own keys, query by query (keys q0 .. q of query q)
        _scores_t(kr, qt, q0, nq, q0, lanes, scale, st)
        for t in range(nq):
            q = q0 + t
            run_max = mx[t]
            run_sum = ls[t]
            for d in range(dh):
                acc[d] = ot[d, t]
            n_keys = q - q0 + 1
            for kb in range((n_keys + m - 1) // m):
                i0 = kb * m
                i1 = min(i0 + m, n_keys)
                blk_max = np.float32(-np.inf)
                for i in range(i0, i1):
                    blk_max = max(blk_max, st[i, t])
                new_max = max(run_max, blk_max)
                corr = exp_f32(np.float32(run_max - new_max))
                blk_sum = np.float32(0)
                _zero(blk, dh)
                for i in range(i0, i1):
                    e = exp_f32(np.float32(st[i, t] - new_max))
                    blk_sum = blk_sum + e
                    _axpy(blk, e, vr[q0 + i], dh)
                run_sum = run_sum * corr + blk_sum
                _scale_add(acc, corr, blk, dh)
                run_max = new_max
            s = base + q // m
            for d in range(dh):
                out[s, j, q % m, qo + d] = acc[d] / run_sum


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
    * ``out[d] = o[d] / l``. Padded query slots get 0. ``exp`` is
      :func:`gpt_workload.kernels._expf.exp_f32`.

    Implementation: per head, the queries in tiles of :data:`ATTENTION_QUERY_TILE` (whole
    segments); the key blocks before a tile are whole for each of its queries, so their
    scores, exponentials and block updates run vectorised across the tile's queries (keys
    in chunks of :data:`ATTENTION_KEY_CHUNK`); the tile's own keys then run query by query.
    The operations above and their order are the same per query either way, so the tiles
    change nothing in the result.

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
