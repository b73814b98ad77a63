"""The weight-streaming GEMM on tile arrays: PE-local BLAS partials chained along the segment
(:mod:`gpt_workload.kernels` states the layout and arithmetic rules)."""

from __future__ import annotations

import numpy as np

from gpt_workload.blas_gemm import BLOCK_N, BLOCK_ROWS, chained_gemm
from gpt_workload.kernels._common import _as_f32, _check_out, _check_seq, _no_alias

__all__ = ["GEMM_BLOCK_N", "gemm_ws"]

#: Output columns per BLAS block of :func:`gemm_ws` (:data:`gpt_workload.blas_gemm.BLOCK_N`).
GEMM_BLOCK_N = BLOCK_N

# ---------------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------------


def gemm_ws(
    x_tiles: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    out_tiles: np.ndarray,
    *,
    segs_per_seq: int,
    seq_len: int,
) -> np.ndarray:
    """Weight-streaming GEMM ``Y = X @ W + b`` on tile arrays.

    Reduction order: for each segment ``s``, PE ``j`` computes its partial
    ``p_j[t, n] = sum_{k<kt} x_tiles[s, j, t, k] * w[j*kt + k, n]`` in float32 (one BLAS
    ``sgemm`` per PE and block of tokens x columns: the PE's dot products, in BLAS's order
    with fused multiply-adds, see :mod:`gpt_workload.blas_gemm`). The partials are reduced
    along the row-group as a chain in PE order, each rounded to float32:
    ``acc = p_0; acc = acc + p_1; ...; acc = acc + p_{P-1}``; then ``acc = acc + bias[n]``
    (if a bias is given). The result is scattered: ``out_tiles[s, j', t, c] =
    acc[t, j'*nt + c]``; columns ``j'*nt + c >= N`` and padded token slots are set to 0.

    Implementation: :func:`gpt_workload.blas_gemm.chained_gemm` on the ``P`` panels
    ``x_tiles[:, j]`` (all segments' tokens at once), blocks of whole
    :data:`GEMM_BLOCK_N` columns (across output PEs' slices) shared among the cores, each
    block's last add writing into ``out_tiles``, slice by slice.
    The order above is per output element and does not depend on the blocks or the thread
    count.

    Args:
        x_tiles: float32 ``[S, P, m, kt]``, activations of width ``K = P * kt``.
        w: float32 ``[K, N]`` weight (input features x output features), C- or
            Fortran-contiguous (the latter is used without a copy).
        bias: float32 ``[N]``, or ``None`` / a length-0 array for no bias.
        out_tiles: float32 ``[S, P, m, nt]`` with ``P * nt >= N``, C-contiguous, written in
            place; must not overlap ``x_tiles``.
        segs_per_seq: segments per sequence ``S_seq``.
        seq_len: tokens per sequence ``T``; slots with position ``>= T`` get 0.

    Returns:
        ``out_tiles``.

    Raises:
        TypeError: an array argument is not a numpy.ndarray.
        ValueError: wrong dtype, shape or overlap of the arrays, or ``(segs_per_seq,
            seq_len)`` inconsistent with ``S`` and ``m``.
    """
    x_tiles = _as_f32("x_tiles", x_tiles, 4)
    if isinstance(w, np.ndarray) and w.ndim == 2 and w.flags.f_contiguous:
        w = _as_f32("w", w.T, 2).T  # a transpose (e.g. tied embeddings): BLAS reads it as is
    else:
        w = _as_f32("w", w, 2)
    bias = np.zeros(0, np.float32) if bias is None else _as_f32("bias", bias, 1)
    n_seg, n_pe, m, kt = x_tiles.shape
    if w.shape[0] != n_pe * kt:
        raise ValueError(f"w has {w.shape[0]} rows, expected P*kt = {n_pe * kt}")
    n_cols = w.shape[1]
    if bias.shape[0] not in (0, n_cols):
        raise ValueError(f"bias has length {bias.shape[0]}, expected 0 or {n_cols}")
    if not isinstance(out_tiles, np.ndarray):
        raise TypeError(f"out_tiles must be a numpy.ndarray, got {type(out_tiles).__name__}")
    if out_tiles.ndim != 4:
        raise ValueError(f"out_tiles must have 4 dimensions, got shape {out_tiles.shape}")
    nt = out_tiles.shape[3]
    if nt * n_pe < n_cols:
        raise ValueError(f"out_tiles width P*nt = {n_pe * nt} is smaller than N = {n_cols}")
    _check_out("out_tiles", out_tiles, (n_seg, n_pe, m, nt))
    _check_seq(n_seg, m, segs_per_seq, seq_len)
    _no_alias("x_tiles", x_tiles, "out_tiles", out_tiles)
    parts = [np.ascontiguousarray(x_tiles[:, j]).reshape(n_seg * m, kt) for j in range(n_pe)]

    def dest(r0: int, r1: int, c0: int, c1: int) -> list[tuple[int, int, np.ndarray]]:
        pieces = []  # the block's columns, output PE by output PE
        for jo in range(c0 // nt, (c1 - 1) // nt + 1):
            a0, a1 = max(c0, jo * nt), min(c1, jo * nt + nt)
            view = out_tiles[r0 // m : r1 // m, jo, :, a0 - jo * nt : a1 - jo * nt]
            pieces.append((a0, a1, view))
        return pieces

    chained_gemm(
        parts,
        w,
        np.arange(0, n_pe * kt + 1, kt),
        None,
        dest=dest,
        bias=bias if bias.shape[0] else None,
        row_block=max(m, BLOCK_ROWS // m * m),
    )
    for jo in range(n_pe):  # output columns beyond N
        if jo * nt + nt > n_cols:
            out_tiles[:, jo, :, max(n_cols - jo * nt, 0) :] = 0
    pad = segs_per_seq * m - seq_len  # padded slots at the end of each sequence's last segment
    if pad:
        out_tiles[segs_per_seq - 1 :: segs_per_seq, :, m - pad :, :] = 0
    return out_tiles
