"""GEMM algorithms of :mod:`gpt_workload.mappings.gemm`: fabric traffic equals each algorithm's
textbook communication volume (derived here, independently of the module's explicit routing),
and the per-PE numerics equal A @ B within fp32 reduction-order error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_workload import kernels as kn
from gpt_workload.mappings.gemm import GEMM_ALGORITHMS, gemm_numerics, gemm_plan
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError

ARCH = load_arch("grid32")
SQUARE = [(4, 4), (8, 8), (5, 5)]
NON_SQUARE = [(2, 8), (3, 5), (5, 3)]


def _cannon_skew_block_hops(p: int, pos) -> int:
    """Block-hops of Cannon's initial alignment of one operand on a line: row i moves logical
    block l to logical (l - i) mod p, physical distance |pos(l) - pos((l - i) mod p)|."""
    return sum(abs(pos(ll) - pos((ll - i) % p)) for i in range(p) for ll in range(p))


def _ring_pos(p: int):
    """Interleaved ring placement, written independently of the module: walk even logical
    indices out along the line, odd positions back."""
    order = [None] * p  # physical position -> logical
    half = (p + 1) // 2
    for ll in range(p):
        x = 2 * ll if ll < half else 2 * (p - 1 - ll) + 1
        order[x] = ll
    assert sorted(order) == list(range(p))
    return lambda ll: order.index(ll)


def expected_wavelet_hops(alg, M, K, N, pr, pc, s, weights, reduce="chain") -> float:
    """Textbook volume in element x link crossings, times bytes, over 4-byte wavelets."""
    P = pr * pc
    b_stream = K * N * pr * s  # B descends each column: edge link + pr - 1 links
    if alg == "ws":
        psum = M * N * (pc - 1) if reduce == "chain" else M * N * pc * math.log2(pc) / 2
        b = b_stream if weights == "stream" else K * N * (pr - 1) * s
        return (psum * 4 + b) / 4
    if alg == "summa":
        b = b_stream if weights == "stream" else K * N * (pr - 1) * s
        return (M * K * (pc - 1) * s + b) / 4
    if alg in ("cannon", "meshgemm"):
        p = pr
        pos = (lambda x: x) if alg == "cannon" else _ring_pos(p)
        skew = _cannon_skew_block_hops(p, pos)  # per operand, block-hops
        # p - 1 shifts; each moves every line's p blocks by one ring step: a ring on a line
        # crosses every link twice, 2 (p - 1) block-hops per line, p lines
        shifts = (p - 1) * p * 2 * (p - 1)
        a_blk, b_blk = M * K / p**2, K * N / p**2
        a = a_blk * (skew + shifts) * s
        if weights == "stream":
            b = b_stream + b_blk * shifts * s
        else:
            b = b_blk * (skew + shifts) * s
        return (a + b) / 4
    if alg == "row_1d":
        return (K * N * P * s if weights == "stream" else K * N * (P - 1) * s) / 4
    if alg == "col_1d":
        return (M * K * (P - 1) * s + (b_stream if weights == "stream" else 0)) / 4
    raise AssertionError(alg)


def _shape(pr, pc):
    """Divisible by every block split the algorithms make (pr, pc, pr pc)."""
    q = pr * pc
    return 3 * q, 2 * q, 5 * q


@pytest.mark.parametrize("weights", ["stream", "resident"])
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
@pytest.mark.parametrize("alg", GEMM_ALGORITHMS)
@pytest.mark.parametrize("block", SQUARE + NON_SQUARE)
def test_traffic_equals_textbook_volume(alg, block, precision, weights):
    pr, pc = block
    M, K, N = _shape(pr, pc)
    s = 2 if precision == "fp16" else 4
    if alg in ("cannon", "meshgemm") and pr != pc:
        with pytest.raises(ConfigError, match="square"):
            gemm_plan(alg, M=M, K=K, N=N, pr=pr, pc=pc, precision=precision, arch=ARCH)
        return
    plan = gemm_plan(
        alg, M=M, K=K, N=N, pr=pr, pc=pc, precision=precision, arch=ARCH, weights=weights
    )
    want = expected_wavelet_hops(alg, M, K, N, pr, pc, s, weights)
    assert plan.wavelet_hops == pytest.approx(want, rel=1e-12)
    assert plan.flops_total == 2.0 * M * K * N
    # divisible shapes: every PE does an equal share
    assert plan.flops * pr * pc == pytest.approx(plan.flops_total)
    for t in plan.transfers:
        assert 0 < t.max_link_bytes <= t.link_bytes and t.ramp_bytes > 0


@pytest.mark.parametrize("block", [(2, 2), (4, 4), (8, 8), (1, 8)])
def test_tree_reduction_volume(block):
    pr, pc = block
    M, K, N = _shape(pr, pc)
    plan = gemm_plan("ws", M=M, K=K, N=N, pr=pr, pc=pc, precision="fp16", arch=ARCH, reduce="tree")
    assert plan.wavelet_hops == pytest.approx(
        expected_wavelet_hops("ws", M, K, N, pr, pc, 2, "stream", "tree")
    )
    chain = gemm_plan("ws", M=M, K=K, N=N, pr=pr, pc=pc, precision="fp16", arch=ARCH)
    # fewer store-and-forward stages, no less volume
    assert plan.n_steps == math.log2(pc) <= chain.n_steps
    assert plan.wavelet_hops >= chain.wavelet_hops


def test_tree_needs_power_of_two():
    with pytest.raises(ConfigError, match="power of two"):
        gemm_plan("ws", M=30, K=30, N=30, pr=1, pc=3, precision="fp16", arch=ARCH, reduce="tree")


@pytest.mark.parametrize("p", [3, 4, 5, 8])
def test_meshgemm_shifts_at_most_two_hops(p):
    M, K, N = _shape(p, p)
    kw = dict(M=M, K=K, N=N, pr=p, pc=p, precision="fp16", arch=ARCH)
    mesh, cannon = gemm_plan("meshgemm", **kw), gemm_plan("cannon", **kw)
    sh = {t.name: t for t in mesh.transfers}["A cyclic shifts"]
    assert sh.hops <= 2 * (p - 1)  # p - 1 synchronous steps of at most 2 hops
    csh = {t.name: t for t in cannon.transfers}["A cyclic shifts"]
    assert csh.hops == (p - 1) * (p - 1)  # Cannon's wrap-around block crosses the row


@pytest.mark.parametrize("alg", GEMM_ALGORITHMS)
def test_non_divisible_volumes(alg):
    """Formulas whose per-element link count does not depend on block sizes hold exactly on
    shapes the block does not divide."""
    if alg in ("cannon", "meshgemm"):
        pytest.skip("block sizes enter Cannon's volume")
    M, K, N, pr, pc = 37, 29, 41, 3, 5
    for weights in ("stream", "resident"):
        plan = gemm_plan(
            alg, M=M, K=K, N=N, pr=pr, pc=pc, precision="fp32", arch=ARCH, weights=weights
        )
        assert plan.wavelet_hops == pytest.approx(
            expected_wavelet_hops(alg, M, K, N, pr, pc, 4, weights)
        )


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(M=0), "M=0"),
        (dict(weights="disk"), "weights"),
        (dict(reduce="ring"), "reduce"),
    ],
)
def test_bad_input(kw, match):
    args = dict(M=8, K=8, N=8, pr=2, pc=2, precision="fp16", arch=ARCH) | kw
    with pytest.raises(ConfigError, match=match):
        gemm_plan("summa", **args)
    with pytest.raises(ConfigError, match="unknown"):
        gemm_plan("strassen", M=8, K=8, N=8, pr=2, pc=2, precision="fp16", arch=ARCH)


# ------------------------------------------------------------------------------ numerics
def _check_close(C, A, B):
    """|C - AB| <= gamma_K sum_k |a||b| (Higham, Accuracy and Stability, Thm 3.5: any
    summation order), gamma_K = K u / (1 - K u), u = 2^-24, plus one rounding of the result."""
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    K = A.shape[1]
    u = 2.0**-24
    gamma = (K + 1) * u / (1 - (K + 1) * u)
    bound = gamma * (np.abs(A64) @ np.abs(B64))
    assert C.dtype == np.float32
    assert np.all(np.abs(C - A64 @ B64) <= bound + 1e-30)


def _run(alg, M, K, N, pr, pc, seed, reduce="chain"):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C = gemm_numerics(alg, A, B, pr, pc, reduce)
    _check_close(C, A, B)
    return A, B, C


@pytest.mark.parametrize("alg", GEMM_ALGORITHMS)
@pytest.mark.parametrize("block", [(4, 4), (3, 5), (8, 2)])
def test_numerics_match_matmul(alg, block):
    pr, pc = block
    _run(alg, 24, 40, 20, pr, pc, seed=1)


def test_ws_chain_is_gemm_ws_bit_for_bit():
    """The ws chain order is exactly :func:`kernels.gemm_ws`'s (on tiles of one segment)."""
    rng = np.random.default_rng(2)
    P, m, kt, N = 4, 6, 8, 24
    x = rng.standard_normal((1, P, m, kt)).astype(np.float32)
    w = rng.standard_normal((P * kt, N)).astype(np.float32)
    out = np.zeros((1, P, m, N // P), np.float32)
    kn.gemm_ws(x, w, None, out, segs_per_seq=1, seq_len=m)
    A = x[0].transpose(1, 0, 2).reshape(m, P * kt)
    C = gemm_numerics("ws", A, w, 1, P, "chain")
    assert np.array_equal(out[0].transpose(1, 0, 2).reshape(m, N), C)


def test_orders_differ_and_tree_runs():
    A, B, _ = _run("ws", 16, 64, 16, 1, 8, seed=3, reduce="tree")
    cannon = gemm_numerics("cannon", A, B, 8, 8)
    assert np.array_equal(cannon, gemm_numerics("meshgemm", A, B, 8, 8))  # same logical order
    # Cannon's rotated start changes the rounding somewhere (k ascending does not)
    assert not np.array_equal(cannon, gemm_numerics("summa", A, B, 8, 8))


@settings(max_examples=40, deadline=None)
@given(
    alg=st.sampled_from(GEMM_ALGORITHMS),
    pr=st.integers(1, 4),
    pc=st.sampled_from([1, 2, 4]),
    M=st.integers(1, 9),
    K=st.integers(4, 17),
    N=st.integers(4, 11),
    seed=st.integers(0, 2**16),
    tree=st.booleans(),
)
def test_numerics_hypothesis(alg, pr, pc, M, K, N, seed, tree):
    pr = min(pr, M)
    _run(alg, M, K, N, pr, pc, seed, "tree" if tree and alg == "ws" else "chain")


# ------------------------------------------------------------------ fast plan == reference
def _plans_equal(alg, M, K, N, pr, pc, weights, reduce):
    """The vectorised ``gemm_plan`` and the original loops (``tests/_gemm_reference.py``)
    give equal GemmPlans, or both refuse the input."""
    from _gemm_reference import reference_plan

    kw = dict(M=M, K=K, N=N, pr=pr, pc=pc, precision="fp16", arch=ARCH)
    kw |= dict(weights=weights, reduce=reduce)
    try:
        ref = reference_plan(alg, **kw)
    except ConfigError as e:
        with pytest.raises(ConfigError, match=str(e)[:20]):
            gemm_plan(alg, **kw)
        return
    assert gemm_plan(alg, **kw) == ref


@pytest.mark.parametrize("reduce", ["chain", "tree"])
@pytest.mark.parametrize("weights", ["stream", "resident"])
@pytest.mark.parametrize("alg", GEMM_ALGORITHMS)
@pytest.mark.parametrize("block", [(1, 1), (1, 4), (4, 1), (3, 3), (6, 6), (2, 8), (3, 5), (5, 3)])
def test_fast_plan_equals_reference(alg, block, weights, reduce):
    pr, pc = block
    for M, K, N in ((37, 29, 41), (2, 3, 5), _shape(pr, pc)):  # (2, 3, 5): empty parts
        _plans_equal(alg, M, K, N, pr, pc, weights, reduce)


@settings(max_examples=60, deadline=None)
@given(
    alg=st.sampled_from(GEMM_ALGORITHMS),
    pr=st.integers(1, 7),
    pc=st.integers(1, 8),
    M=st.integers(1, 40),
    K=st.integers(1, 40),
    N=st.integers(1, 40),
    weights=st.sampled_from(["stream", "resident"]),
    reduce=st.sampled_from(["chain", "tree"]),
)
def test_fast_plan_equals_reference_hypothesis(alg, pr, pc, M, K, N, weights, reduce):
    if alg in ("cannon", "meshgemm") and pc % 2:
        pc = pr  # square blocks half of the time
    _plans_equal(alg, M, K, N, pr, pc, weights, reduce)
