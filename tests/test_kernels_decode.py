"""Decode kernels (:mod:`gpt_workload.kernels.decode`) against NumPy references: the tiled
GEMV bit for bit against a float32 NumPy emulation of the same order and within rounding of
float64 ``x @ W``; the split-KV attention against a float64 softmax reference with GQA."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from gpt_workload.generation.split import GemvSplit, KVSplit, bounds, combine_order, combine_root
from gpt_workload.kernels.decode import (
    attention_decode,
    attention_partials,
    gemv_partials,
    gemv_split,
)
from wse_sim.errors import ConfigError


def _gemv_emulated(x, w, bias, split):
    """NumPy float32 emulation: per row block, k ascending (one rounding per * and +), the
    partials combined in ``combine_order``, then the bias."""
    kb = bounds(w.shape[0], split.rows)
    part = np.zeros((split.rows, x.shape[0], w.shape[1]), np.float32)
    for r in range(split.rows):
        for k in range(kb[r], kb[r + 1]):
            part[r] = part[r] + x[:, k : k + 1] * w[k][None, :]
    for dst, src in combine_order(split.rows, split.reduce, split.k):
        part[dst] = part[dst] + part[src]
    y = part[combine_root(split.rows, split.reduce, split.k)]
    return y if bias is None else y + bias


def _data(seed, B, K, N):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize(
    "split",
    [GemvSplit(1, 1), GemvSplit(4, 4), GemvSplit(2, 8, "tree"), GemvSplit(5, 3, "tree"),
     GemvSplit(7, 1, "chain"), GemvSplit(1, 6), GemvSplit(9, 4, "ktree"),
     GemvSplit(13, 2, "ktree", 3)],
)  # fmt: skip
@pytest.mark.parametrize("seed", [0])
def test_gemv_split_matches_emulation_bitwise(split, seed):
    x, w, b = _data(seed, 3, 37, 300)
    y = gemv_split(x, w, b, split)
    assert y.dtype == np.float32 and y.shape == (3, 300)
    np.testing.assert_array_equal(y, _gemv_emulated(x, w, b, split))
    ref = x.astype(np.float64) @ w.astype(np.float64) + b
    # Higham's bound for a float32 sum of K products and rows + 1 more additions
    mag = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64) + np.abs(b)
    assert (np.abs(y - ref) <= (37 + split.rows + 1) * 2.0**-24 * 1.01 * mag).all()


@settings(max_examples=25, deadline=None)
@given(
    K=st.integers(1, 40), N=st.integers(1, 600), rows=st.integers(1, 9), cols=st.integers(1, 9),
    reduce=st.sampled_from(["chain", "tree", "ktree"]), seed=st.integers(0, 2**16),
)  # fmt: skip
@example(K=3, N=1, rows=9, cols=9, reduce="tree", seed=0)  # more PEs than rows and columns
def test_gemv_split_property(K, N, rows, cols, reduce, seed):
    assume(rows * cols <= 64)
    x, w, _ = _data(seed, 2, K, N)
    split = GemvSplit(rows, cols, reduce)
    np.testing.assert_array_equal(gemv_split(x, w, None, split), _gemv_emulated(x, w, None, split))


def test_gemv_partials_are_row_block_products():
    x, w, _ = _data(1, 2, 20, 50)
    split = GemvSplit(3, 2)
    part = gemv_partials(x, w, split)
    kb = split.k_bounds(20)
    for r in range(3):
        ref = x[:, kb[r] : kb[r + 1]].astype(np.float64) @ w[kb[r] : kb[r + 1]].astype(np.float64)
        np.testing.assert_allclose(part[r], ref, rtol=1e-5, atol=1e-5)


def test_gemv_split_rejects_bad_input():
    x, w, b = _data(0, 2, 8, 5)
    with pytest.raises(ValueError, match="features"):
        gemv_split(x[:, :7], w, b, GemvSplit(1, 1))
    with pytest.raises(ValueError, match="float32"):
        gemv_split(x.astype(np.float64), w, b, GemvSplit(1, 1))
    with pytest.raises(ValueError, match="bias"):
        gemv_split(x, w, b[:4], GemvSplit(1, 1))


def _attention_ref(q, k, v, n_head, n_kv):
    """float64 softmax(q k^T / sqrt(dh)) v per query head, K/V head h // (H / KV)."""
    dh = q.shape[0] // n_head
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    out = np.empty(q.shape[0])
    for h in range(n_head):
        kh = h // (n_head // n_kv)
        z = k[:, kh * dh : (kh + 1) * dh] @ q[h * dh : (h + 1) * dh] / np.sqrt(dh)
        p = np.exp(z - z.max())
        out[h * dh : (h + 1) * dh] = (p / p.sum()) @ v[:, kh * dh : (kh + 1) * dh]
    return out


@pytest.mark.parametrize("n", [1, 7, 50])
@pytest.mark.parametrize(
    "split",
    [KVSplit(1, 64), KVSplit(3, 17, "chain"), KVSplit(4, 13, "tree"), KVSplit(64, 1, "tree"),
     KVSplit(9, 6, "ktree"), KVSplit(27, 2, "ktree", 3)],
)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
def test_attention_decode_matches_float64(n, split, heads):
    n_head, n_kv = heads
    dh = 8
    rng = np.random.default_rng(n)
    q = (2 * rng.standard_normal(n_head * dh)).astype(np.float32)
    k = rng.standard_normal((n, n_kv * dh)).astype(np.float32)
    v = rng.standard_normal((n, n_kv * dh)).astype(np.float32)
    if n > split.pes * split.block_tokens:  # more tokens than the split holds
        with pytest.raises(ConfigError, match="KV cache holds"):
            attention_decode(q, k, v, n_head, n_kv, 1 / np.sqrt(dh), split)
        return
    out = attention_decode(q, k, v, n_head, n_kv, 1 / np.sqrt(dh), split)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _attention_ref(q, k, v, n_head, n_kv), rtol=0, atol=2e-6)


def test_attention_partials_are_block_softmax_stats():
    n_head, n_kv, dh, n = 4, 2, 8, 23
    rng = np.random.default_rng(5)
    q = rng.standard_normal(n_head * dh).astype(np.float32)
    k = rng.standard_normal((n, n_kv * dh)).astype(np.float32)
    v = rng.standard_normal((n, n_kv * dh)).astype(np.float32)
    m, l, o, tb = attention_partials(q, k, v, n_head, n_kv, 1 / np.sqrt(dh), KVSplit(3, 8))
    np.testing.assert_array_equal(tb, [0, 8, 16, 23])
    for p in range(3):
        for h in range(n_head):
            kh = h // 2
            z = (k[tb[p] : tb[p + 1], kh * dh : (kh + 1) * dh].astype(np.float64)
                 @ q[h * dh : (h + 1) * dh] / np.sqrt(dh))  # fmt: skip
            e = np.exp(z - z.max())
            np.testing.assert_allclose(m[p, h], z.max(), rtol=1e-6)
            np.testing.assert_allclose(l[p, h], e.sum(), rtol=1e-6)
            ref_o = e @ v[tb[p] : tb[p + 1], kh * dh : (kh + 1) * dh]
            np.testing.assert_allclose(o[p, h], ref_o, rtol=1e-5, atol=1e-6)


def test_attention_split_changes_rounding_only():
    n_head, n_kv, dh, n = 4, 2, 16, 90
    rng = np.random.default_rng(9)
    q = (3 * rng.standard_normal(n_head * dh)).astype(np.float32)
    k = rng.standard_normal((n, n_kv * dh)).astype(np.float32)
    v = rng.standard_normal((n, n_kv * dh)).astype(np.float32)
    a = attention_decode(q, k, v, n_head, n_kv, 0.25, KVSplit(1, 128))
    b = attention_decode(q, k, v, n_head, n_kv, 0.25, KVSplit(3, 30, "tree"))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_attention_decode_rejects_bad_heads():
    q = np.zeros(32, np.float32)
    kv = np.zeros((3, 16), np.float32)
    with pytest.raises(ValueError, match="n_kv"):
        attention_decode(q, kv, kv, 4, 3, 0.25, KVSplit(1, 8))
    with pytest.raises(ValueError, match="k and v"):
        attention_decode(q, kv[:, :8], kv, 4, 2, 0.25, KVSplit(1, 8))


def test_parallel_kernels_give_the_serial_numbers(monkeypatch):
    """Above :data:`PARALLEL_MIN_MACS` the kernels run on all threads: same numbers."""
    import gpt_workload.kernels.decode as kd

    x, w, b = _data(3, 2, 50, 700)
    rng = np.random.default_rng(3)
    q = rng.standard_normal(32).astype(np.float32)
    k = rng.standard_normal((40, 16)).astype(np.float32)
    v = rng.standard_normal((40, 16)).astype(np.float32)
    split, kv = GemvSplit(3, 5, "tree"), KVSplit(3, 15, "tree")
    serial = gemv_split(x, w, b, split), attention_decode(q, k, v, 4, 2, 0.25, kv)
    monkeypatch.setattr(kd, "PARALLEL_MIN_MACS", 0)
    with kd.numba_threads(1):  # the decode step's setting: raised for the big kernels
        par = gemv_split(x, w, b, split), attention_decode(q, k, v, 4, 2, 0.25, kv)
    np.testing.assert_array_equal(serial[0], par[0])
    np.testing.assert_array_equal(serial[1], par[1])
