"""Causal attention with each head's features split over ``k`` PEs (Numba, float32).

The numerics of the weight-streaming layout with ``P = k n_head`` PEs per segment
(:mod:`gpt_workload.mappings.weight_streaming.head_split`): PE ``c`` of a head (``c = 0 .. k - 1``)
holds features
``c dh/k .. (c + 1) dh/k - 1`` of the head's query, key and value. Order, per (sequence,
head, query position ``t``):

* PE ``c`` forms the partial scores ``p_c[i] = sum_d q[d] k_i[d]`` over its features
  (``d`` ascending) for the causal keys ``i = 0 .. t``;
* the partials are reduced along the head's chain in PE order, ``z = ((p_0 + p_1) + p_2)
  ...`` (each PE adds its own partial to the running sum it receives), then scaled, ``z_i =
  z_i * scale``; every PE of the head holds the same ``z`` after the broadcast back;
* the softmax and ``softmax(z) V`` run per PE on its own features of ``V`` exactly as
  :func:`gpt_workload.kernels.attention_tiled` does, by the same helper
  (:func:`gpt_workload.kernels.attention.online_softmax_av`): an online softmax over key
  blocks of ``m`` keys (the segments, in arrival order), ``mx' = max(mx, max_i z_i)``, ``c =
  exp(mx - mx')``, ``e_i = exp(z_i - mx')``, ``l = l c + sum_i e_i``, ``o[d] = o[d] c +
  sum_i e_i v_i[d]`` (``i`` ascending), ``out[d] = o[d] / l``.

With ``k = 1`` this is :func:`gpt_workload.kernels.attention_tiled`'s arithmetic, bit for
bit. Grouped-query attention: query head ``h`` reads K/V head ``h // (n_head / n_kv)``.
"""

from __future__ import annotations

import numba
import numpy as np

from gpt_workload.kernels.attention import online_softmax_av
from wse_sim.errors import ConfigError

__all__ = ["attention_split", "attention_split_tiled"]


@numba.njit(parallel=True, cache=True)
def _split_kernel(q, k, v, group, n_split, m, scale, out):  # pragma: no cover - jit
    """Numba body of :func:`attention_split` (arguments validated there)."""
    B, H, T, dh = q.shape
    ds = dh // n_split
    for unit in numba.prange(B * H):
        b = unit // H
        h = unit % H
        g = h // group
        scores = np.empty(T, np.float32)
        part = np.empty(T, np.float32)
        acc = np.empty(dh, np.float32)
        blk = np.empty(dh, np.float32)
        for t in range(T):
            n_keys = t + 1
            for c in range(n_split):  # PE c of the head, then the chain adds its partial
                for i in range(n_keys):
                    part[i] = 0
                for d in range(c * ds, (c + 1) * ds):
                    qd = q[b, h, t, d]
                    for i in range(n_keys):
                        part[i] = part[i] + qd * k[b, g, i, d]
                if c == 0:
                    for i in range(n_keys):
                        scores[i] = part[i]
                else:
                    for i in range(n_keys):
                        scores[i] = scores[i] + part[i]
            for i in range(n_keys):
                scores[i] = scores[i] * scale
            online_softmax_av(scores, n_keys, m, v[b, g], acc, blk, out[b, h, t])


def attention_split(q, k, v, n_split: int, m: int, scale: float) -> np.ndarray:
    """Causal attention in the split-head order of the module docstring.

    Args:
        q: float32 ``[B, H, T, dh]``; k, v: float32 ``[B, H_kv, T, dh]`` (``H_kv`` divides
            ``H``).
        n_split: PEs per head ``k`` (divides ``dh``).
        m: keys per online-softmax block (the layout's tokens per segment).
        scale: score scale (rounded to float32).

    Returns:
        float32 ``[B, H, T, dh]``.

    Raises:
        ConfigError: shapes that do not match, ``n_split`` not dividing ``dh``, ``m < 1``.
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    k = np.ascontiguousarray(k, dtype=np.float32)
    v = np.ascontiguousarray(v, dtype=np.float32)
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ConfigError(f"attention_split: q {q.shape}, k {k.shape}, v {v.shape} not 4-D")
    B, H, T, dh = q.shape
    if k.shape[0] != B or k.shape[2:] != (T, dh) or k.shape[1] < 1 or H % k.shape[1]:
        raise ConfigError(f"attention_split: k/v {k.shape} do not match q {q.shape}")
    if n_split < 1 or dh % n_split or m < 1:
        raise ConfigError(
            f"attention_split: n_split={n_split} must divide d_head={dh}, m={m} must be >= 1"
        )
    out = np.empty_like(q)
    _split_kernel(q, k, v, H // k.shape[1], n_split, m, np.float32(scale), out)
    return out


def attention_split_tiled(qkv_tiles, tl, n_head: int, d_head: int, scale: float, out_tiles):
    """:func:`attention_split` on the weight-streaming tiles of a fused QKV (gpt2).

    ``qkv_tiles`` ``[S, P, m, 3 dh/k]``: PE ``j`` holds ``[q | k | v]`` of features ``(j %
    k) dh/k ..`` of head ``j // k`` (``k = P / n_head``; the QKV weight's columns permuted by
    :func:`gpt_workload.mappings.weight_streaming.layout.qkv_column_permutation` ``(n_head k, dh /
    k, P)``);
    ``out_tiles`` ``[S, P, m, dh/k]`` gets each PE's features of its head's output (padded
    token slots 0). ``tl``: the :class:`gpt_workload.mappings.weight_streaming.layout.TileLayout`.
    """
    S, P, m, w = qkv_tiles.shape
    ks = P // n_head
    ds = d_head // ks
    K, segs, T = tl.n_seq, tl.segs_per_seq, tl.seq_len
    a = np.asarray(qkv_tiles, np.float32).reshape(K, segs, n_head, ks, m, 3, ds)
    a = a.transpose(5, 0, 2, 1, 4, 3, 6).reshape(3, K, n_head, segs * m, d_head)[:, :, :, :T]
    o = attention_split(a[0], a[1], a[2], ks, m, scale)
    full = np.zeros((K, n_head, segs * m, d_head), np.float32)
    full[:, :, :T] = o
    full = full.reshape(K, n_head, segs, m, ks, ds).transpose(0, 2, 1, 4, 3, 5)
    out_tiles[...] = full.reshape(S, P, m, ds)
    return out_tiles
