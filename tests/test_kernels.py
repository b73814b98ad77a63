"""Tests of gpt_workload.mappings.weight_streaming.layout and gpt_workload.kernels.

Each kernel is compared with a plain float64 NumPy implementation of the same math. The
tolerances are a-priori error bounds derived from the float32 unit roundoff ``u = 2**-24`` and
the reduction lengths (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.:
``gamma_n = n u / (1 - n u)``, Lemma 3.1; inner products and sums in any order, §3.1 and
eq. (4.3)), never a number observed in a run. Where a kernel uses no transcendental function
it is also compared *bitwise* with a float32 NumPy emulation of its documented reduction order.

Assumption for transcendental functions: the C library's ``expf``, ``logf``, ``erff`` and
``tanhf`` err by at most 2 ulp, i.e. a relative error of at most ``_FN = 4 u`` (glibc documents
<= 2 ulp for these on x86-64); with NUMBA_DISABLE_JIT=1 they are float64 functions rounded to
float32, which is better. Bounds marked "first order" neglect O(u^2) terms; they carry a factor
``_SECOND_ORDER`` that covers those terms for the tiny ``n u`` used here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_workload import kernels as kn
from gpt_workload.mappings.weight_streaming.layout import TileLayout, qkv_column_permutation
from wse_sim.errors import ConfigError

U = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff (error of the references themselves)
_FN = 4 * U  # assumed relative error bound of expf/logf/erff/tanhf (2 ulp)
_SECOND_ORDER = 1.01

# (K, T, m, P): P = 1; m divides T; m does not divide T (padding); several sequences.
LAYOUTS = [(1, 5, 5, 1), (1, 7, 3, 2), (2, 9, 4, 3), (3, 8, 4, 2), (2, 6, 4, 1), (1, 3, 8, 2)]


def gamma(n: int, u: float = U) -> float:
    """Higham's gamma_n = n u / (1 - n u)."""
    assert n * u < 1
    return n * u / (1 - n * u)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _lay(k: int, t: int, m: int, p: int) -> TileLayout:
    return TileLayout(n_seq=k, seq_len=t, m=m, P=p)


def _seq(lay: TileLayout) -> dict[str, int]:
    return {"segs_per_seq": lay.segs_per_seq, "seq_len": lay.seq_len}


def _assert_padding_zero(lay: TileLayout, tiles: np.ndarray) -> None:
    """Padded token slots of a tile array are exactly 0."""
    invalid = ~lay.valid_mask()  # [S, m]
    assert np.all(tiles.transpose(0, 2, 1, 3)[invalid] == 0)


# ---------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", LAYOUTS)
def test_to_tiles_index_map(shape: tuple[int, int, int, int]) -> None:
    lay = _lay(*shape)
    width = 2 * lay.P
    x = _rng(0).standard_normal((lay.n_seq, lay.seq_len, width)).astype(np.float32)
    tiles = lay.to_tiles(x)
    ft = width // lay.P
    assert tiles.shape == (lay.n_segments, lay.P, lay.m, ft) and tiles.dtype == np.float32
    assert lay.n_segments == lay.n_seq * -(-lay.seq_len // lay.m)
    for s in range(lay.n_segments):
        for j in range(lay.P):
            for t in range(lay.m):
                pos = (s % lay.segs_per_seq) * lay.m + t
                want = (
                    x[s // lay.segs_per_seq, pos, j * ft : (j + 1) * ft]
                    if pos < lay.seq_len
                    else np.zeros(ft)
                )
                assert np.array_equal(tiles[s, j, t], want)
    assert np.array_equal(lay.from_tiles(tiles, width), x)


def test_pad_to_and_errors() -> None:
    lay = _lay(2, 5, 2, 4)
    x = _rng(1).standard_normal((2, 5, 10)).astype(np.float32)
    with pytest.raises(ConfigError, match="not divisible by P=4"):
        lay.to_tiles(x)
    assert lay.padded_width(10) == 12 and lay.tile_width(10, pad_to=12) == 3
    tiles = lay.to_tiles(x, pad_to=12)
    assert tiles.shape == (6, 4, 2, 3)
    assert np.all(tiles[:, 3, :, 1:] == 0)  # columns 10, 11
    assert np.array_equal(lay.from_tiles(tiles, 10), x)
    for bad in (8, 14, 0):
        with pytest.raises(ConfigError):
            lay.to_tiles(x, pad_to=bad)
    with pytest.raises(ConfigError):
        lay.to_tiles(x[:, :4])
    with pytest.raises(ConfigError):
        lay.from_tiles(tiles[:5], 10)
    with pytest.raises(ConfigError):
        lay.from_tiles(tiles, 13)
    for bad_field in ({"m": 0}, {"P": -1}, {"seq_len": 2.5}, {"n_seq": True}):
        with pytest.raises(ConfigError):
            TileLayout(**{"n_seq": 1, "seq_len": 4, "m": 2, "P": 1, **bad_field})
    assert lay.valid_mask().tolist() == [[True, True], [True, True], [True, False]] * 2
    assert lay.padded_tokens == 6 and lay.segs_per_seq == 3


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 13),
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 3),
    st.booleans(),
)
def test_tiles_round_trip_property(k: int, t: int, m: int, p: int, ft: int, pad: bool) -> None:
    lay = _lay(k, t, m, p)
    width = p * ft - (1 if pad and p * ft > 1 else 0)
    x = _rng(k * 1000 + t).standard_normal((k, t, width)).astype(np.float32)
    pad_to = lay.padded_width(width) if width % p else None
    tiles = lay.to_tiles(x, pad_to=pad_to)
    assert np.array_equal(lay.from_tiles(tiles, width), x)
    _assert_padding_zero(lay, tiles)
    if pad_to is not None:
        flat = tiles.transpose(0, 2, 1, 3).reshape(lay.n_segments, m, pad_to)
        assert np.all(flat[..., width:] == 0)


# ---------------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------------


def _gemm_emulated(
    x_tiles: np.ndarray, w: np.ndarray, b: np.ndarray | None, nt: int | None = None
) -> np.ndarray:
    """NumPy emulation of gemm_ws's documented order; returns acc [S, m, N]: each PE's
    partial by one float32 ``matmul`` per block of columns (the kernel's blocks: inside each
    output PE's ``nt`` columns, :data:`kn.GEMM_BLOCK_N` wide, rows in one block here: the
    tests' shapes have fewer rows than a block), then the chain over PEs, then the bias."""
    n_seg, n_pe, m, kt = x_tiles.shape
    n_cols = w.shape[1]
    nt = nt if nt is not None else -(-n_cols // n_pe)
    rows = [np.ascontiguousarray(x_tiles[:, j]).reshape(n_seg * m, kt) for j in range(n_pe)]
    acc = np.zeros((n_seg * m, n_cols), np.float32)
    for lo in range(0, n_cols, nt):
        for c0 in range(lo, min(lo + nt, n_cols), kn.GEMM_BLOCK_N):
            c1 = min(c0 + kn.GEMM_BLOCK_N, lo + nt, n_cols)
            blk = None
            for j in range(n_pe):
                part = rows[j] @ w[j * kt : (j + 1) * kt, c0:c1]
                blk = part if blk is None else blk + part
            acc[:, c0:c1] = blk
    acc = acc.reshape(n_seg, m, n_cols)
    return acc if b is None or b.size == 0 else acc + b


def _run_gemm(lay: TileLayout, kt: int, n_cols: int, seed: int, bias: bool, nt: int | None = None):
    rng = _rng(seed)
    width = lay.P * kt
    x = rng.standard_normal((lay.n_seq, lay.seq_len, width)).astype(np.float32)
    w = rng.standard_normal((width, n_cols)).astype(np.float32)
    b = rng.standard_normal(n_cols).astype(np.float32) if bias else None
    nt = nt if nt is not None else -(-n_cols // lay.P)
    x_tiles = lay.to_tiles(x)
    out = np.full((lay.n_segments, lay.P, lay.m, nt), np.nan, np.float32)
    kn.gemm_ws(x_tiles, w, b, out, **_seq(lay))
    return x, w, b, x_tiles, out


def _check_gemm_bound(lay, kt, x, w, b, out) -> None:
    """|Y - (XW + b)| <= (gamma_{kt+P+1} + gamma_{K+1}(u64)) (|X||W| + |b|) elementwise.

    Every product x_k w_kn is rounded once and then passes through at most kt additions in its
    PE's partial, at most P - 1 chain additions and the bias addition: depth <= kt + P + 1.
    """
    n_cols = w.shape[1]
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = np.zeros(n_cols) if b is None else b.astype(np.float64)
    ref = x64 @ w64 + b64
    mag = np.abs(x64) @ np.abs(w64) + np.abs(b64)
    bound = (gamma(kt + lay.P + 1) + gamma(w.shape[0] + 1, U64)) * mag
    got = lay.from_tiles(out, n_cols).astype(np.float64)
    assert np.all(np.abs(got - ref) <= bound)


GEMM_CASES = [
    # (K, T, m, P), kt, N, bias
    ((1, 5, 5, 1), 7, 9, True),
    ((1, 7, 3, 2), 4, 10, True),  # nt = 5
    ((2, 9, 4, 3), 3, 10, True),  # N not divisible by P: padded columns
    ((3, 8, 4, 2), 5, 150, False),  # nt = 75 > GEMM_BLOCK_N: two column blocks per PE
    ((2, 6, 4, 1), 2, 130, True),  # P = 1, three column blocks
    ((1, 3, 8, 2), 1, 1, True),  # kt = 1, N = 1: PE 1 holds only padding
    ((1, 6, 4, 5), 9, 70, True),  # P = 5: the chain order is observable bitwise
]


@pytest.mark.parametrize("case", GEMM_CASES)
def test_gemm_vs_float64(case) -> None:
    shape, kt, n_cols, bias = case
    lay = _lay(*shape)
    x, w, b, _, out = _run_gemm(lay, kt, n_cols, 10, bias)
    _check_gemm_bound(lay, kt, x, w, b, out)
    _assert_padding_zero(lay, out)
    flat = out.transpose(0, 2, 1, 3).reshape(lay.n_segments, lay.m, -1)
    assert np.all(flat[:, :, n_cols:] == 0)  # padded columns


@pytest.mark.parametrize("case", GEMM_CASES)
def test_gemm_bitwise_documented_order(case) -> None:
    shape, kt, n_cols, bias = case
    lay = _lay(*shape)
    _, w, b, x_tiles, out = _run_gemm(lay, kt, n_cols, 11, bias)
    acc = _gemm_emulated(x_tiles, w, b)  # [S, m, N]
    got = out.transpose(0, 2, 1, 3).reshape(lay.n_segments, lay.m, -1)[:, :, :n_cols]
    valid = lay.valid_mask()
    assert np.array_equal(got[valid], acc[valid])


def test_gemm_extra_output_padding_and_no_bias_forms() -> None:
    lay = _lay(1, 4, 2, 3)
    # nt = 6 > ceil(10/3) = 4: PE 2 holds only padded columns
    x, w, _, x_tiles, out = _run_gemm(lay, 2, 10, 12, False, nt=6)
    _check_gemm_bound(lay, 2, x, w, None, out)
    assert np.all(out[:, 2] == 0)
    out2 = np.empty_like(out)
    kn.gemm_ws(x_tiles, w, np.zeros(0, np.float32), out2, **_seq(lay))
    assert np.array_equal(out, out2)


def test_gemm_rejects_bad_arguments() -> None:
    lay = _lay(1, 4, 2, 2)
    x_tiles = lay.empty_tiles(4)
    w = np.zeros((4, 6), np.float32)
    out = lay.empty_tiles(6)
    seq = _seq(lay)
    with pytest.raises(ValueError):
        kn.gemm_ws(x_tiles, np.zeros((5, 6), np.float32), None, out, **seq)
    with pytest.raises(ValueError):
        kn.gemm_ws(x_tiles, w.astype(np.float64), None, out, **seq)
    with pytest.raises(ValueError):
        kn.gemm_ws(x_tiles, w, np.zeros(5, np.float32), out, **seq)
    with pytest.raises(ValueError):
        kn.gemm_ws(x_tiles, w, None, lay.empty_tiles(4), **seq)
    with pytest.raises(ValueError):
        kn.gemm_ws(x_tiles, w, None, out, segs_per_seq=2, seq_len=2)
    with pytest.raises(ValueError):
        kn.gemm_ws(x_tiles, np.zeros((4, 4), np.float32), None, x_tiles, **seq)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 9),
    st.integers(1, 5),
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 80),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_gemm_property(k, t, m, p, kt, n_cols, bias, seed) -> None:
    lay = _lay(k, t, m, p)
    x, w, b, _, out = _run_gemm(lay, kt, n_cols, seed, bias)
    _check_gemm_bound(lay, kt, x, w, b, out)
    _assert_padding_zero(lay, out)


# ---------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------


def _ln_emulated(x_tiles, g, b, eps):
    """float32 NumPy emulation of layernorm_tiled's documented order."""
    n_seg, n_pe, m, ft = x_tiles.shape
    width = np.float32(n_pe * ft)

    def chain_sum(vals):
        local = np.zeros((n_seg, n_pe, m), np.float32)
        for f in range(ft):
            local = local + vals[..., f]
        total = local[:, 0]
        for j in range(1, n_pe):
            total = total + local[:, j]
        return total  # [S, m]

    mean = chain_sum(x_tiles) / width
    d = x_tiles - mean[:, None, :, None]
    var = chain_sum(d * d) / width
    denom = np.sqrt(var + np.float32(eps))
    g_t = g.reshape(n_pe, 1, ft)
    b_t = b.reshape(n_pe, 1, ft)
    return (d / denom[:, None, :, None]) * g_t + b_t


def _ln_bound(x64, g64, b64, eps, n_pe, ft):
    """First-order bound on |LN_fl32(x) - LN(x)| per element (x64: [..., F]).

    mean: sum depth <= ft + P - 1, then a division: |dmu| <= e_mu = gamma_{ft+P} mean|x|.
    d = fl(x - mu^): |d^ - d| <= e_d = e_mu + u (|d| + e_mu).
    var: products rounded, depth <= ft + P - 1 sum, division: |var^ - var| <= e_v =
        mean(2 |d| e_d + e_d^2) + gamma_{ft+P+1} mean((|d| + e_d)^2).
    sigma = sqrt(var + eps): |sigma^ - sigma| <= e_s = e_v / sigma + 2 u sigma (+eps, sqrt).
    z = d / sigma: |z^ - z| <= e_d / sigma + |d| e_s / sigma^2 + u |z|.
    y = z g + b: |y^ - y| <= |g| |z^ - z| + u |z g| + u (|z g| + |b|).
    """
    width = n_pe * ft
    mu = x64.mean(-1, keepdims=True)
    d = x64 - mu
    e_mu = gamma(ft + n_pe) * np.abs(x64).mean(-1, keepdims=True)
    e_d = e_mu + U * (np.abs(d) + e_mu)
    var = (d * d).mean(-1, keepdims=True)
    e_v = (2 * np.abs(d) * e_d + e_d**2).sum(-1, keepdims=True) / width + gamma(ft + n_pe + 1) * (
        (np.abs(d) + e_d) ** 2
    ).mean(-1, keepdims=True)
    sigma = np.sqrt(var + np.float64(np.float32(eps)))
    e_s = e_v / sigma + 2 * U * sigma
    z = d / sigma
    e_z = e_d / sigma + np.abs(d) * e_s / sigma**2 + U * np.abs(z)
    ref = z * g64 + b64
    bound = np.abs(g64) * e_z + 2 * U * np.abs(z * g64) + U * np.abs(b64)
    return ref, _SECOND_ORDER * bound + 8 * U64 * (np.abs(ref) + 1)


@pytest.mark.parametrize("shape", LAYOUTS)
@pytest.mark.parametrize("ft", [1, 5])
def test_layernorm(shape, ft) -> None:
    lay = _lay(*shape)
    width = lay.P * ft
    rng = _rng(20 + ft)
    # offset mean and scale to exercise the two-pass variance
    x = (3.0 + 2.0 * rng.standard_normal((lay.n_seq, lay.seq_len, width))).astype(np.float32)
    g = rng.standard_normal(width).astype(np.float32)
    b = rng.standard_normal(width).astype(np.float32)
    eps = 1e-5
    x_tiles = lay.to_tiles(x)
    out = np.full_like(x_tiles, np.nan)
    kn.layernorm_tiled(x_tiles, g, b, eps, out, **_seq(lay))
    _assert_padding_zero(lay, out)
    ref, bound = _ln_bound(
        x.astype(np.float64), g.astype(np.float64), b.astype(np.float64), eps, lay.P, ft
    )
    got = lay.from_tiles(out, width).astype(np.float64)
    assert np.all(np.abs(got - ref) <= bound)
    emu = _ln_emulated(x_tiles, g, b, eps).transpose(0, 2, 1, 3)
    valid = lay.valid_mask()
    assert np.array_equal(out.transpose(0, 2, 1, 3)[valid], emu[valid])
    # in place gives the same result
    kn.layernorm_tiled(x_tiles, g, b, eps, x_tiles, **_seq(lay))
    assert np.array_equal(x_tiles, out)


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------


def _attention_reference(q, k, v, n_head, scale):
    """Dense masked-softmax causal attention in float64; q, k, v: [K, T, H*dh]."""
    n_seq, seq_len, hd = q.shape
    dh = hd // n_head
    out = np.zeros_like(q)
    wmag = np.zeros_like(q)  # sum_i p_i |v_i|
    bound_terms = np.zeros((n_seq, seq_len, n_head))  # first-order relative weight error
    mask = np.tril(np.ones((seq_len, seq_len), bool))
    for h in range(n_head):
        sl = slice(h * dh, (h + 1) * dh)
        z = np.einsum("kqd,kid->kqi", q[..., sl], k[..., sl]) * scale
        zmag = np.einsum("kqd,kid->kqi", np.abs(q[..., sl]), np.abs(k[..., sl])) * scale
        z = np.where(mask, z, -np.inf)
        zmax = z.max(-1, keepdims=True)
        p = np.exp(z - zmax)
        p /= p.sum(-1, keepdims=True)
        out[..., sl] = p @ v[..., sl]
        wmag[..., sl] = p @ np.abs(v[..., sl])
        e_z = gamma(dh + 2) * np.where(mask, zmag, 0).max(-1)
        zmin = np.where(mask, z, np.inf).min(-1)
        bound_terms[..., h] = 2 * e_z + 2 * U * (zmax[..., 0] - zmin)
    return out, wmag, bound_terms


CASES_ATTN = [
    # (K, T, m, P), hp, dh
    ((1, 5, 5, 1), 1, 4),
    ((1, 7, 3, 2), 2, 3),
    ((2, 9, 4, 3), 1, 4),
    ((3, 8, 4, 2), 2, 5),
    ((2, 6, 4, 1), 2, 4),
    ((1, 11, 2, 2), 1, 8),
]


@pytest.mark.parametrize("case", CASES_ATTN)
def test_attention(case) -> None:
    shape, hp, dh = case
    lay = _lay(*shape)
    n_head = hp * lay.P
    hd = n_head * dh
    rng = _rng(30 + hp)
    qkv = (1.5 * rng.standard_normal((lay.n_seq, lay.seq_len, 3 * hd))).astype(np.float32)
    perm = qkv_column_permutation(n_head, dh, lay.P)
    qkv_tiles = lay.to_tiles(qkv[..., perm])
    scale = 1.0 / math.sqrt(dh)
    out = np.full((lay.n_segments, lay.P, lay.m, hp * dh), np.nan, np.float32)
    kn.attention_tiled(qkv_tiles, lay.segs_per_seq, lay.seq_len, scale, out, d_head=dh)
    _assert_padding_zero(lay, out)
    q64, k64, v64 = np.split(qkv.astype(np.float64), 3, axis=-1)
    ref, wmag, eta = _attention_reference(q64, k64, v64, n_head, float(np.float32(scale)))
    # First order: each weight e_i = exp(z_i - M) is computed with relative error <= eta:
    # score error (2 e_z), exp argument rounding (u |z - M|, plus u per online correction,
    # whose arguments telescope to <= range(z)) and expf itself (_FN for the weight and each
    # of the <= n_blocks corrections). A common factor cancels in o / l, so the output error
    # is <= 2 eta sum_i p_i |v_i| plus the summation errors of o and l (each term: product,
    # <= m block additions, then one multiply and one add per block) and the final division.
    n_blocks = lay.segs_per_seq
    eta = eta + _FN * (n_blocks + 1)
    depth = 2 + lay.m + 2 * n_blocks
    eta_full = np.repeat(eta, dh, axis=-1)
    bound = _SECOND_ORDER * (2 * eta_full + 2 * gamma(depth) + U) * wmag
    got = lay.from_tiles(out, hd).astype(np.float64)
    assert np.all(np.abs(got - ref) <= bound + 8 * U64 * np.abs(ref))


def test_qkv_column_permutation() -> None:
    perm = qkv_column_permutation(4, 2, 2)  # hp = 2, width = 8
    # PE 0: q heads 0,1 | k heads 0,1 | v heads 0,1
    assert perm[:12].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]
    assert sorted(perm.tolist()) == list(range(24))
    with pytest.raises(ConfigError):
        qkv_column_permutation(3, 2, 2)


def test_attention_rejects_bad_arguments() -> None:
    lay = _lay(1, 4, 2, 2)
    qkv = lay.empty_tiles(2 * 12)
    with pytest.raises(ValueError):
        kn.attention_tiled(qkv, 2, 4, 0.5, lay.empty_tiles(8), d_head=5)
    with pytest.raises(ValueError):
        kn.attention_tiled(qkv, 2, 4, 0.5, lay.empty_tiles(6), d_head=4)
    with pytest.raises(ValueError):
        kn.attention_tiled(qkv, 2, 5, 0.5, lay.empty_tiles(8), d_head=4)


# ---------------------------------------------------------------------------------------------
# element-wise, embedding
# ---------------------------------------------------------------------------------------------


def _gelu_bounds(x64: np.ndarray, approximate: bool):
    """float64 GELU and a first-order bound on the float32 kernel's error.

    y = fl(fl(x * 0.5) * fl(1 + fn(a))) with x * 0.5 exact. With |fn^ - fn| <= d_fn:
    |y^ - y| <= |x / 2| (d_fn (1 + u) + u |1 + fn|) + u |y|.
    exact: a = fl(x fl(c)) has |a^ - a| <= 2u |a|; |erf'| <= 2/sqrt(pi) exp(-lo^2) on that
    interval (lo = its smallest |a|); erff adds _FN |erf|.
    tanh: inner = fl(k0 (x + k1 x^3)): rounding of k0, k1 (u each), x^3 (2u), k1 x^3 (u),
    the add (u) and the multiply (u): |d inner| <= 7u k0 (|x| + k1 |x|^3); |tanh'| = 1 - t^2
    at the smallest |inner| of the interval; tanhf adds _FN |t|.
    """
    if approximate:
        k0, k1 = math.sqrt(2 / math.pi), 0.044715
        inner = k0 * (x64 + k1 * x64**3)
        fn = np.tanh(inner)
        d_arg = 7 * U * k0 * (np.abs(x64) + k1 * np.abs(x64) ** 3)
        lo = np.maximum(np.abs(inner) - d_arg, 0)
        d_fn = (1 - np.tanh(lo) ** 2) * d_arg + _FN * np.abs(fn)
    else:
        a = x64 / math.sqrt(2)
        fn = np.vectorize(math.erf)(a)
        lo = np.abs(a) * (1 - 2 * U)
        d_fn = 2 / math.sqrt(math.pi) * np.exp(-(lo**2)) * 2 * U * np.abs(a) + _FN * np.abs(fn)
    ref = 0.5 * x64 * (1 + fn)
    bound = np.abs(0.5 * x64) * (d_fn * (1 + U) + U * np.abs(1 + fn)) + U * np.abs(ref)
    return ref, _SECOND_ORDER * bound + 8 * U64 * np.abs(ref)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu(approximate: bool) -> None:
    rng = _rng(40)
    x = np.concatenate(
        [rng.standard_normal(2000) * 3, np.linspace(-12, 12, 501), [0.0, -0.0, 1e-30, -1e-30]]
    ).astype(np.float32)
    tiles = x.reshape(1, 1, 1, -1).copy()
    out = np.empty_like(tiles)
    kn.gelu_tiled(tiles, approximate, out)
    ref, bound = _gelu_bounds(x.astype(np.float64), approximate)
    got = out.reshape(-1).astype(np.float64)
    assert np.all(np.abs(got - ref) <= bound)
    assert out.reshape(-1)[-4] == 0
    kn.gelu_tiled(tiles, approximate)  # in place
    assert np.array_equal(tiles, out)


def test_gelu_matches_torch_loosely() -> None:
    """Sanity check of the formulas against torch (exact and 'tanh' GELU)."""
    torch = pytest.importorskip("torch")
    x = np.linspace(-8, 8, 1001, dtype=np.float32)
    for approximate, mode in ((False, "none"), (True, "tanh")):
        out = kn.gelu_tiled(x.reshape(1, 1, 1, -1).copy(), approximate)
        ref = torch.nn.functional.gelu(torch.from_numpy(x).double(), approximate=mode).numpy()
        assert np.all(np.abs(out.reshape(-1) - ref) <= 16 * U * (np.abs(ref) + 1))


def test_add_tiled() -> None:
    rng = _rng(41)
    a = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    b = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    out = np.empty_like(a)
    assert kn.add_tiled(a, b, out) is out
    assert np.array_equal(out, a + b)
    kn.add_tiled(a, b, a)
    assert np.array_equal(a, out)
    with pytest.raises(ValueError):
        kn.add_tiled(a, b[:1], out)
    with pytest.raises(ValueError):
        kn.add_tiled(a, b.astype(np.float64), out)


@pytest.mark.parametrize("shape", LAYOUTS)
def test_embed(shape) -> None:
    lay = _lay(*shape)
    rng = _rng(42)
    vocab, d = 11, 2 * lay.P
    tokens = rng.integers(0, vocab, (lay.n_seq, lay.seq_len))
    wte = rng.standard_normal((vocab, d)).astype(np.float32)
    wpe = rng.standard_normal((lay.seq_len + 2, d)).astype(np.float32)
    out = np.full((lay.n_segments, lay.P, lay.m, 2), np.nan, np.float32)
    kn.embed_tiled(tokens, wte, wpe, lay.m, lay.P, out)
    ref = wte[tokens] + wpe[None, : lay.seq_len]
    assert np.array_equal(lay.from_tiles(out, d), ref)
    _assert_padding_zero(lay, out)
    with pytest.raises(ValueError):
        kn.embed_tiled(tokens + vocab, wte, wpe, lay.m, lay.P, out)
    with pytest.raises(ValueError):
        kn.embed_tiled(tokens, wte, wpe[: lay.seq_len - 1], lay.m, lay.P, out)


# ---------------------------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", LAYOUTS)
@pytest.mark.parametrize("vocab", [7, 12])
def test_cross_entropy(shape, vocab) -> None:
    lay = _lay(*shape)
    rng = _rng(50 + vocab)
    tokens = rng.integers(0, vocab, (lay.n_seq, lay.seq_len))
    logits = (4 * rng.standard_normal((lay.n_seq, lay.seq_len, vocab))).astype(np.float32)
    logits[..., vocab // 2] = logits.max(-1) + 1  # a tie for the max ...
    logits[..., vocab - 1] = logits[..., vocab // 2]  # ... across PEs: lowest id must win
    logits[0, 0, 0] = logits[0, 0].max()
    pad_to = lay.padded_width(vocab)
    tiles = lay.to_tiles(logits, pad_to=pad_to)
    vt = pad_to // lay.P
    for col in range(vocab, pad_to):  # junk in padded vocab columns must be ignored
        tiles[:, col // vt, :, col % vt] = 1e30
    loss, amax = kn.cross_entropy_tiled(tiles, vocab, tokens, lay.segs_per_seq, lay.m)
    assert loss.shape == amax.shape == (lay.n_seq, lay.seq_len)
    assert loss.dtype == np.float32 and amax.dtype == np.int64
    assert np.array_equal(amax, np.argmax(logits, -1))
    assert np.all(np.isfinite(loss)) and np.all(loss[:, -1] == 0)

    l64 = logits.astype(np.float64)
    mx = l64.max(-1)
    sumexp = np.exp(l64 - mx[..., None]).sum(-1)
    lse = np.log(sumexp) + mx
    tgt = np.take_along_axis(l64[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    ref = lse[:, :-1] - tgt
    # First order: each exp term has relative error <= u |l - M| (argument) + _FN; the sum
    # (depth <= vt + P - 1) adds gamma_{vt+P}; log S then errs by that relative error (times
    # 1) plus _FN |log S|; the add of M and the subtraction of l_t add u each on their result.
    rel_s = U * (mx - l64.min(-1)) + _FN + gamma(vt + lay.P)
    log_s = np.log(sumexp)
    bound = (rel_s + _FN * np.abs(log_s) + U * np.abs(lse))[:, :-1] + U * np.abs(ref)
    bound = _SECOND_ORDER * bound + 8 * U64 * (np.abs(ref) + np.abs(tgt))
    assert np.all(np.abs(loss[:, :-1] - ref) <= bound)
    mean = kn.mean_loss(tiles, vocab, tokens, lay.segs_per_seq, lay.m)
    assert mean == pytest.approx(
        float(loss.sum(dtype=np.float64)) / (lay.n_seq * (lay.seq_len - 1)), rel=1e-12
    )


def test_cross_entropy_rejects_bad_arguments() -> None:
    lay = _lay(1, 4, 2, 2)
    tiles = lay.empty_tiles(6)
    tokens = np.zeros((1, 4), np.int64)
    with pytest.raises(ValueError):
        kn.cross_entropy_tiled(tiles, 7, tokens, 2, 2)
    with pytest.raises(ValueError):
        kn.cross_entropy_tiled(tiles, 6, tokens + 6, 2, 2)
    with pytest.raises(ValueError):
        kn.cross_entropy_tiled(tiles, 6, tokens, 2, 3)
    with pytest.raises(ValueError):
        kn.mean_loss(lay.empty_tiles(6)[:1], 6, tokens[:, :1], 1, 2)
