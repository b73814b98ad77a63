"""chained_gemm: the partials combined in the documented order, whatever the threads."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_workload.blas_gemm import BLOCK_N, chained_gemm


def _run(parts, w, kb, reduce, bias, threads, row_block=8):
    out = np.full((parts[0].shape[0], w.shape[1]), np.nan, np.float32)

    def emit(r0, r1, c0, c1, acc):
        out[r0:r1, c0:c1] = acc

    chained_gemm(
        parts, w, kb, emit, reduce=reduce, bias=bias, threads=threads, row_block=row_block
    )
    return out


@pytest.mark.parametrize("reduce,P", [("chain", 5), ("tree", 4), ("chain", 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_order_and_thread_independence(reduce, P, seed) -> None:
    rng = np.random.default_rng(seed)
    R, kt, N = 37, 9, BLOCK_N + 70  # two column blocks, five row blocks
    parts = [rng.standard_normal((R, kt)).astype(np.float32) for _ in range(P)]
    w = rng.standard_normal((P * kt, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    kb = np.arange(0, P * kt + 1, kt)
    one = _run(parts, w, kb, reduce, bias, threads=1)
    two = _run(parts, w, kb, reduce, bias, threads=2)
    assert np.array_equal(one, two)
    # the documented order, block by block: per-PE matmul, then chain / pairwise tree, bias
    want = np.empty_like(one)
    for r0 in range(0, R, 8):
        for c0 in range(0, N, BLOCK_N):
            r1, c1 = min(r0 + 8, R), min(c0 + BLOCK_N, N)
            ps = [parts[j][r0:r1] @ w[kb[j] : kb[j + 1], c0:c1] for j in range(P)]
            if reduce == "tree":
                d = 1
                while d < P:
                    for x in range(0, P, 2 * d):
                        ps[x] = ps[x] + ps[x + d]
                    d *= 2
                acc = ps[0]
            else:
                acc = ps[0]
                for p in ps[1:]:
                    acc = acc + p
            want[r0:r1, c0:c1] = acc + bias[c0:c1]
    assert np.array_equal(one, want)
    ref = np.concatenate(parts, axis=1).astype(np.float64) @ w.astype(np.float64) + bias
    assert np.allclose(one, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reduce,P", [("chain", 5), ("tree", 4), ("chain", 1), ("tree", 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dest_views_get_the_emitted_blocks(reduce, P, with_bias) -> None:
    """Writing each block's last operation into ``dest`` pieces (here the ``[rows / m, m,
    columns]`` split of a tile array, cut at a column) gives what ``emit`` receives, bit
    for bit."""
    rng = np.random.default_rng(P)
    m, R, kt, N = 4, 40, 7, BLOCK_N + 33
    parts = [rng.standard_normal((R, kt)).astype(np.float32) for _ in range(P)]
    w = rng.standard_normal((P * kt, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    kb = np.arange(0, P * kt + 1, kt)
    want = _run(parts, w, kb, reduce, bias, threads=1)
    tiles = np.full((R // m, 2, m, N), np.nan, np.float32)  # PE axis 1, columns all on PE 0

    def dest(r0, r1, c0, c1):  # two pieces where the block holds column 100
        cuts = sorted({c0, c1, *([100] if c0 < 100 < c1 else [])})
        return [(a, b, tiles[r0 // m : r1 // m, 0, :, a:b]) for a, b in zip(cuts, cuts[1:])]

    chained_gemm(
        parts, w, kb, None, dest=dest, reduce=reduce, bias=bias, threads=2, row_block=8
    )
    assert np.array_equal(tiles[:, 0].reshape(R, N), want)
    assert np.isnan(tiles[:, 1]).all()
