"""Numerical kernels of the weight-streaming GPT mapping, on per-PE tile arrays.

Every activation tensor of width ``F`` is a float32 tile array ``tiles[S, P, m, F // P]`` (see
:mod:`gpt_workload.layout`): segment ``s`` of ``m`` tokens, PE ``j`` of its row-group, token
slot ``t``, local feature ``f``. Segment ``s`` is segment ``s % S_seq`` of sequence
``s // S_seq``, so token slot ``t`` of segment ``s`` has position
``(s % S_seq) * m + t``; it is *padding* when that position is ``>= seq_len``. Padded slots are
0 on input and every kernel writes 0 there.

All arithmetic is IEEE float32 with round-to-nearest, one rounding per ``+``, ``-``, ``*``,
``/`` and ``sqrt`` (no fused multiply-add, no fastmath, so results are deterministic and do not
depend on the thread count), except inside one PE's GEMM partial, a BLAS call (see
:func:`gemm_ws`). Each docstring states the order of every reduction, which mirrors the order
in which the wafer accumulates. ``exp``, ``log``, ``erf`` and ``tanh`` are the
C library's float32 functions when JIT-compiled (float64 rounded to float32 under
``NUMBA_DISABLE_JIT=1``), so only kernels without them are bit-reproducible across the two.

Each public function is a thin Python wrapper that validates shapes and dtypes (raising
``ValueError``, or ``TypeError`` for an argument that is not an ndarray) and calls a
``@njit(cache=True)`` kernel once; call it once per layer, never per element. Storage
rounding (fp16/bf16) is the caller's job, see :func:`gpt_workload.precision.round_storage`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from gpt_workload.blas_gemm import BLOCK_N, BLOCK_ROWS, chained_gemm

__all__ = [
    "GEMM_BLOCK_N",
    "add_tiled",
    "attention_tiled",
    "cross_entropy_tiled",
    "embed_tiled",
    "gelu_tiled",
    "gemm_ws",
    "layernorm_tiled",
    "mean_loss",
]

#: Output columns per BLAS block of :func:`gemm_ws` (:data:`gpt_workload.blas_gemm.BLOCK_N`).
GEMM_BLOCK_N = BLOCK_N

# ---------------------------------------------------------------------------------------------
# validation helpers (Python side)
# ---------------------------------------------------------------------------------------------


def _as_f32(name: str, a: np.ndarray, ndim: int) -> np.ndarray:
    """Return ``a`` as a C-contiguous float32 array of ``ndim`` dims.

    Raises TypeError if ``a`` is not an ndarray, ValueError on a wrong dtype or rank.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise ValueError(f"{name} must have dtype float32, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _check_out(name: str, out: np.ndarray, shape: tuple[int, ...]) -> None:
    """Require ``out`` to be a writeable C-contiguous float32 array of exactly ``shape``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise ValueError(f"{name} must have dtype float32, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")


def _check_seq(n_segments: int, m: int, segs_per_seq: int, seq_len: int) -> None:
    """Check that ``(segs_per_seq, seq_len)`` describe ``n_segments`` segments of ``m``."""
    if segs_per_seq < 1 or n_segments % segs_per_seq:
        raise ValueError(f"segs_per_seq={segs_per_seq} does not divide the {n_segments} segments")
    if not (segs_per_seq - 1) * m < seq_len <= segs_per_seq * m:
        raise ValueError(
            f"seq_len={seq_len} is inconsistent with segs_per_seq={segs_per_seq} and m={m}; "
            f"need ceil(seq_len / m) == segs_per_seq"
        )


def _no_alias(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """Raise ValueError if the two arrays may overlap in memory."""
    if np.may_share_memory(a, b):
        raise ValueError(f"{name_a} and {name_b} must not overlap in memory")


# ---------------------------------------------------------------------------------------------
# inner loops, inlined into the kernels (written as separate functions because LLVM vectorises
# them reliably there, and not always when they are nested directly inside a prange body)
# ---------------------------------------------------------------------------------------------


@numba.njit(inline="always")
def _zero(y, n):  # pragma: no cover - jit
    """``y[:n] = 0``."""
    for i in range(n):
        y[i] = 0


@numba.njit(inline="always")
def _scale(y, a, n):  # pragma: no cover - jit
    """``y[i] = y[i] * a`` for ``i < n``."""
    for i in range(n):
        y[i] = y[i] * a


@numba.njit(inline="always")
def _add(y, x, n):  # pragma: no cover - jit
    """``y[i] = y[i] + x[i]`` for ``i < n``."""
    for i in range(n):
        y[i] = y[i] + x[i]


@numba.njit(inline="always")
def _axpy(y, a, x, n):  # pragma: no cover - jit
    """``y[i] = y[i] + a * x[i]`` for ``i < n`` (product rounded, then the sum)."""
    for i in range(n):
        y[i] = y[i] + a * x[i]


@numba.njit(inline="always")
def _scale_add(y, a, x, n):  # pragma: no cover - jit
    """``y[i] = y[i] * a + x[i]`` for ``i < n`` (product rounded, then the sum)."""
    for i in range(n):
        y[i] = y[i] * a + x[i]


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
    ``x_tiles[:, j]`` (all segments' tokens at once), column blocks inside each output PE's
    slice, blocks shared among the cores. The order above is per output element and does not
    depend on the blocks or the thread count.

    Args:
        x_tiles: float32 ``[S, P, m, kt]``, activations of width ``K = P * kt``.
        w: float32 ``[K, N]`` weight (input features x output features).
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
    ranges = [(jo * nt, min(jo * nt + nt, n_cols)) for jo in range(n_pe) if jo * nt < n_cols]

    def emit(r0: int, r1: int, c0: int, c1: int, acc: np.ndarray) -> None:
        jo, lo = divmod(c0, nt)
        out_tiles[r0 // m : r1 // m, jo, :, lo : lo + c1 - c0] = acc.reshape(-1, m, c1 - c0)

    chained_gemm(
        parts,
        w,
        np.arange(0, n_pe * kt + 1, kt),
        emit,
        bias=bias if bias.shape[0] else None,
        col_ranges=ranges,
        row_block=max(m, BLOCK_ROWS // m * m),
    )
    for jo in range(n_pe):  # output columns beyond N
        if jo * nt + nt > n_cols:
            out_tiles[:, jo, :, max(n_cols - jo * nt, 0) :] = 0
    pad = segs_per_seq * m - seq_len  # padded slots at the end of each sequence's last segment
    if pad:
        out_tiles[segs_per_seq - 1 :: segs_per_seq, :, m - pad :, :] = 0
    return out_tiles


# ---------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _layernorm_kernel(x, g, b, eps, out, segs_per_seq, seq_len):  # pragma: no cover - jit
    """Numba body of :func:`layernorm_tiled` (same arguments, all validated)."""
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
                    local = local + x[s, j, t, f]
                total = local if j == 0 else total + local
            mean = np.float32(total / width)
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


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _attention_kernel(qkv, segs_per_seq, seq_len, scale, out, d_head):  # pragma: no cover
    """Numba body of :func:`attention_tiled` (same arguments, all validated)."""
    n_seg, n_pe, m, _ = qkv.shape
    hp = out.shape[3] // d_head
    n_seqs = n_seg // segs_per_seq
    t_pad = segs_per_seq * m
    k_off = hp * d_head
    v_off = 2 * hp * d_head
    neg_inf = np.float32(-np.inf)
    # One work unit = one head of one sequence (a PE's head over all its segments).
    for unit in numba.prange(n_seqs * n_pe * hp):
        seq = unit // (n_pe * hp)
        j = (unit // hp) % n_pe
        h = unit % hp
        base = seq * segs_per_seq
        qo = h * d_head
        ko = k_off + h * d_head
        vo = v_off + h * d_head
        # keys of the whole sequence, transposed so the score loop runs over keys
        k_t = np.zeros((d_head, t_pad), np.float32)
        for sp in range(segs_per_seq):
            for t2 in range(m):
                for d in range(d_head):
                    k_t[d, sp * m + t2] = qkv[base + sp, j, t2, ko + d]
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
                run_max = neg_inf
                run_sum = np.float32(0)
                _zero(acc, d_head)
                # online softmax, one key block per segment, in arrival order
                for kb in range(sp + 1):
                    i0 = kb * m
                    i1 = min(i0 + m, n_keys)
                    blk_max = neg_inf
                    for i in range(i0, i1):
                        blk_max = max(blk_max, scores[i])
                    new_max = max(run_max, blk_max)
                    corr = np.float32(math.exp(np.float32(run_max - new_max)))
                    blk_sum = np.float32(0)
                    _zero(blk, d_head)
                    for i in range(i0, i1):
                        e = np.float32(math.exp(np.float32(scores[i] - new_max)))
                        blk_sum = blk_sum + e
                        _axpy(blk, e, qkv[base + kb, j, i - i0, vo : vo + d_head], d_head)
                    run_sum = run_sum * corr + blk_sum
                    _scale_add(acc, corr, blk, d_head)
                    run_max = new_max
                for d in range(d_head):
                    out[s, j, t, qo + d] = acc[d] / run_sum


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
    ``d_head`` features (use :func:`gpt_workload.layout.qkv_column_permutation` on the fused
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


# ---------------------------------------------------------------------------------------------
# element-wise kernels
# ---------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _gelu_kernel(x, approximate, out):  # pragma: no cover - jit
    """Numba body of :func:`gelu_tiled` on flat contiguous arrays."""
    half = np.float32(0.5)
    one = np.float32(1.0)
    inv_sqrt2 = np.float32(1.0 / math.sqrt(2.0))
    k0 = np.float32(math.sqrt(2.0 / math.pi))
    k1 = np.float32(0.044715)
    for i in numba.prange(x.shape[0]):
        v = x[i]
        if approximate:
            inner = np.float32(k0 * np.float32(v + np.float32(k1 * np.float32(v * v * v))))
            out[i] = np.float32(half * v) * np.float32(one + np.float32(math.tanh(inner)))
        else:
            er = np.float32(math.erf(np.float32(v * inv_sqrt2)))
            out[i] = np.float32(v * half) * np.float32(one + er)


def gelu_tiled(x: np.ndarray, approximate: bool, out: np.ndarray | None = None) -> np.ndarray:
    """GELU, element-wise, in float32.

    * ``approximate=False`` (exact, torch ``nn.GELU()``): ``(x * 0.5) * (1 + erf(x * c))``
      with ``c = fl32(1/sqrt(2))``.
    * ``approximate=True`` (HF ``gelu_new``): ``(0.5 * x) * (1 + tanh(k0 * (x + k1 * x^3)))``
      with ``x^3 = (x*x)*x``, ``k0 = fl32(sqrt(2/pi))``, ``k1 = fl32(0.044715)``.

    GELU(0) = 0, so padded slots stay 0.

    Args:
        x: float32 array of any shape (normally tiles ``[S, P, m, ft]``), C-contiguous.
        approximate: use the tanh approximation.
        out: float32 array of the same shape, or None to work in place on ``x``.

    Returns:
        ``out`` (or ``x`` when in place).

    Raises:
        TypeError: an array argument is not a numpy.ndarray.
        ValueError: wrong dtype, shape or a non-contiguous in-place ``x``.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"x must have dtype float32, got {x.dtype}")
    if out is None:
        out = x
    else:
        x = np.ascontiguousarray(x)
    _check_out("out", out, x.shape)
    _gelu_kernel(x.reshape(-1), bool(approximate), out.reshape(-1))
    return out


@numba.njit(parallel=True, cache=True)
def _add_kernel(a, b, out):  # pragma: no cover - jit
    """Numba body of :func:`add_tiled` on flat contiguous arrays."""
    for i in numba.prange(a.shape[0]):
        out[i] = a[i] + b[i]


def add_tiled(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Residual add ``out = a + b`` (float32, element-wise, no bias).

    Args:
        a: float32 array of any shape.
        b: float32 array of the same shape.
        out: float32 array of the same shape, C-contiguous; may be ``a`` or ``b``.

    Returns:
        ``out``.

    Raises:
        TypeError: an array argument is not a numpy.ndarray.
        ValueError: wrong dtype or shape.
    """
    a = np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a
    b = np.ascontiguousarray(b) if isinstance(b, np.ndarray) else b
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        raise TypeError("a and b must be numpy.ndarrays")
    if a.dtype != np.float32 or b.dtype != np.float32:
        raise ValueError(f"a and b must be float32, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"a has shape {a.shape} but b has shape {b.shape}")
    _check_out("out", out, a.shape)
    _add_kernel(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


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
