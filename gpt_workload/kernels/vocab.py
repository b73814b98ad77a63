"""The two ops over the vocabulary: the token + position embedding into tiles and the
next-token cross-entropy (with argmax) from vocab-sliced logit tiles. Layout and arithmetic
rules: :mod:`gpt_workload.kernels`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from gpt_workload.kernels._common import _as_f32, _check_out, _check_seq

__all__ = ["cross_entropy_tiled", "embed_tiled", "mean_loss"]

# ---------------------------------------------------------------------------------------------
# embedding
# ---------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _embed_kernel(tokens, wte, wpe, out):  # pragma: no cover - jit
    """Numba body of :func:`embed_tiled` (validated arguments)."""
    n_seg, n_pe, m, dt = out.shape
    seq_len = tokens.shape[1]
    segs_per_seq = (seq_len + m - 1) // m
    for s in numba.prange(n_seg):
        seq = s // segs_per_seq
        base_pos = (s % segs_per_seq) * m
        for t in range(m):
            pos = base_pos + t
            if pos >= seq_len:
                for j in range(n_pe):
                    for f in range(dt):
                        out[s, j, t, f] = 0
                continue
            tok = tokens[seq, pos]
            for j in range(n_pe):
                for f in range(dt):
                    c = j * dt + f
                    out[s, j, t, f] = wte[tok, c] + wpe[pos, c]


def embed_tiled(
    tokens: np.ndarray,
    wte: np.ndarray,
    wpe: np.ndarray,
    m: int,
    P: int,
    out_tiles: np.ndarray,
) -> np.ndarray:
    """Token + position embedding straight into tiles: ``out = wte[token] + wpe[position]``.

    Args:
        tokens: int ``[K, T]`` token ids in ``[0, V)`` (converted to int64).
        wte: float32 ``[V, d]`` token embedding.
        wpe: float32 ``[n_pos, d]`` position embedding, ``n_pos >= T``.
        m: tokens per segment.
        P: PEs per segment; must divide ``d``.
        out_tiles: float32 ``[K * ceil(T/m), P, m, d // P]``, written in place; padded slots
            get 0.

    Returns:
        ``out_tiles``.

    Raises:
        TypeError: an array argument is not a numpy.ndarray.
        ValueError: wrong dtype or shape, token id out of range, ``T > n_pos`` or ``P`` not
            dividing ``d``.
    """
    tokens = np.ascontiguousarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"tokens must be an integer array [K, T], got {tokens.dtype} {tokens.shape}"
        )
    tokens = tokens.astype(np.int64, copy=False)
    wte = _as_f32("wte", wte, 2)
    wpe = _as_f32("wpe", wpe, 2)
    n_seq, seq_len = tokens.shape
    vocab, d_model = wte.shape
    if wpe.shape[1] != d_model or wpe.shape[0] < seq_len:
        raise ValueError(f"wpe has shape {wpe.shape}, need (>= {seq_len}, {d_model})")
    if m < 1 or P < 1 or d_model % P:
        raise ValueError(f"P={P} must divide d={d_model} and m={m} must be positive")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab})")
    n_seg = n_seq * (-(-seq_len // m))
    _check_out("out_tiles", out_tiles, (n_seg, P, m, d_model // P))
    _embed_kernel(tokens, wte, wpe, out_tiles)
    return out_tiles


# ---------------------------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _cross_entropy_kernel(logits, vocab, tokens, segs_per_seq, loss, amax):  # pragma: no cover
    """Numba body of :func:`cross_entropy_tiled` (validated arguments, outputs zeroed)."""
    n_seg, n_pe, m, vt = logits.shape
    seq_len = tokens.shape[1]
    for s in numba.prange(n_seg):
        seq = s // segs_per_seq
        base_pos = (s % segs_per_seq) * m
        for t in range(m):
            pos = base_pos + t
            if pos >= seq_len:
                continue
            # chain max over PEs of local maxima (first occurrence wins ties)
            g_max = np.float32(0)
            g_idx = -1
            for j in range(n_pe):
                n_valid = min(vt, vocab - j * vt)
                if n_valid <= 0:
                    break
                l_max = logits[s, j, t, 0]
                l_idx = 0
                for f in range(1, n_valid):
                    v = logits[s, j, t, f]
                    if v > l_max:
                        l_max = v
                        l_idx = f
                if j == 0 or l_max > g_max:
                    g_max = l_max
                    g_idx = j * vt + l_idx
            amax[seq, pos] = g_idx
            if pos == seq_len - 1:
                continue
            total = np.float32(0)
            for j in range(n_pe):
                n_valid = min(vt, vocab - j * vt)
                if n_valid <= 0:
                    break
                local = np.float32(0)
                for f in range(n_valid):
                    local = local + np.float32(math.exp(np.float32(logits[s, j, t, f] - g_max)))
                total = local if j == 0 else total + local
            target = tokens[seq, pos + 1]
            lt = logits[s, target // vt, t, target % vt]
            lse = np.float32(np.float32(math.log(total)) + g_max)
            loss[seq, pos] = lse - lt


def cross_entropy_tiled(
    logit_tiles: np.ndarray,
    vocab: int,
    tokens: np.ndarray,
    segs_per_seq: int,
    m: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Next-token cross-entropy and argmax from vocab-sliced logit tiles.

    The target of position ``q`` is ``tokens[k, q + 1]``; position ``T - 1`` has none and gets
    loss 0. Exact order per valid token: PE ``j``'s local max over its real columns
    (``j*vt + f < V``, ``f`` ascending); chain ``mx = max_0; mx = max(mx, max_j)`` for
    ``j = 1..P-1`` (PEs with no real column skipped); local ``sum_f exp(l - mx)`` (``f``
    ascending from 0), chained ``acc = s_0; acc = acc + s_j``;
    ``loss = (log(acc) + mx) - l[target]``. ``argmax`` is the lowest vocab id attaining the
    max (strict ``>`` in both the local scan and the chain).

    Args:
        logit_tiles: float32 ``[S, P, m, vt]`` with ``P * vt >= V``; columns ``>= V`` ignored.
        vocab: vocabulary size ``V``.
        tokens: int ``[K, T]`` token ids in ``[0, V)``.
        segs_per_seq: segments per sequence, ``ceil(T / m)``.
        m: tokens per segment (must equal ``logit_tiles.shape[2]``).

    Returns:
        ``(loss, argmax)``: float32 ``[K, T]`` per-token loss (0 at ``T - 1``; NaN-free for
        finite logits) and int64 ``[K, T]`` argmax of each position's logits.

    Raises:
        TypeError: an array argument is not a numpy.ndarray.
        ValueError: wrong dtype or shape, token id out of range, inconsistent sizes.
    """
    logit_tiles = _as_f32("logit_tiles", logit_tiles, 4)
    tokens = np.ascontiguousarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError("tokens must be an integer array [K, T]")
    tokens = tokens.astype(np.int64, copy=False)
    n_seg, n_pe, m_t, vt = logit_tiles.shape
    n_seq, seq_len = tokens.shape
    if m_t != m:
        raise ValueError(f"logit_tiles has m={m_t}, expected {m}")
    if n_pe * vt < vocab or vocab < 1:
        raise ValueError(f"logit tiles hold {n_pe * vt} columns < vocab {vocab}")
    if n_seg != n_seq * segs_per_seq:
        raise ValueError(f"{n_seg} segments != K*segs_per_seq = {n_seq * segs_per_seq}")
    _check_seq(n_seg, m, segs_per_seq, seq_len)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab})")
    loss = np.zeros((n_seq, seq_len), np.float32)
    amax = np.zeros((n_seq, seq_len), np.int64)
    _cross_entropy_kernel(logit_tiles, vocab, tokens, segs_per_seq, loss, amax)
    return loss, amax


def mean_loss(
    logit_tiles: np.ndarray,
    vocab: int,
    tokens: np.ndarray,
    segs_per_seq: int,
    m: int,
) -> float:
    """Mean next-token cross-entropy over the ``K * (T - 1)`` positions that have a target.

    The float32 per-token losses of :func:`cross_entropy_tiled` are summed in float64 (NumPy
    pairwise order) and divided by ``K * (T - 1)``.

    Args:
        logit_tiles, vocab, tokens, segs_per_seq, m: as in :func:`cross_entropy_tiled`.

    Returns:
        Mean loss in nats (Python float).

    Raises:
        TypeError: an array argument is not a numpy.ndarray.
        ValueError: as in :func:`cross_entropy_tiled`, or ``T < 2`` (no targets).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError("mean_loss needs tokens [K, T] with T >= 2")
    loss, _ = cross_entropy_tiled(logit_tiles, vocab, tokens, segs_per_seq, m)
    return float(loss.sum(dtype=np.float64) / (tokens.shape[0] * (tokens.shape[1] - 1)))
