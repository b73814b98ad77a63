"""exp_f32 (gpt_workload.kernels._expf): glibc's expf algorithm, vectorisable.

References: float64 ``exp`` rounded to float32 (independent; the algorithm's documented
bound is 0.502 ulp, so within 1 ulp of the correctly rounded value), and, where the C
library is glibc on x86-64 with FMA (the build the algorithm reproduces), the C library's
own ``expf`` bit for bit (Numba lowers ``math.exp`` of a float32 to it).
"""

from __future__ import annotations

import math
import platform

import numba
import numpy as np
import pytest

from gpt_workload.kernels._expf import exp_f32


def _glibc_fma() -> bool:
    """True where the C library's expf is glibc's FMA build (x86-64, glibc >= 2.28, FMA) and
    Numba compiles (under NUMBA_DISABLE_JIT=1 ``math.exp`` is Python's float64 one)."""
    if numba.config.DISABLE_JIT:
        return False
    lib, ver = platform.libc_ver()
    if lib != "glibc" or platform.machine() != "x86_64":
        return False
    if tuple(int(v) for v in ver.split(".")[:2]) < (2, 28):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return " fma " in f.read()
    except OSError:  # pragma: no cover
        return False


@numba.njit(cache=True)
def _jit_exp(x, out):  # pragma: no cover - jit
    for i in range(x.shape[0]):
        out[i] = exp_f32(x[i])


@numba.njit(cache=True)
def _libm_exp(x, out):  # pragma: no cover - jit
    for i in range(x.shape[0]):
        out[i] = np.float32(math.exp(x[i]))


@numba.njit(parallel=True, cache=True)
def _count_libm_mismatches(lo, hi):  # pragma: no cover - jit
    """Bit patterns ``lo .. hi - 1`` whose exp_f32 and libm expf differ (NaNs: any NaN)."""
    n_chunks = 256
    per = (hi - lo + n_chunks - 1) // n_chunks
    bad = np.zeros(n_chunks, np.int64)
    for c in numba.prange(n_chunks):
        bits = np.arange(lo + c * per, min(lo + (c + 1) * per, hi)).astype(np.uint32)
        x = bits.view(np.float32)
        for i in range(x.shape[0]):
            a = exp_f32(x[i])
            b = np.float32(math.exp(x[i]))
            if not (a == b or (a != a and b != b)):
                bad[c] += 1
    return bad.sum()


def _inputs(seed: int) -> np.ndarray:
    """Random bit patterns (all exponents, NaNs included) plus the edges of the ranges."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    edges = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72283, 88.72284, -103.972076, -103.97208,
         -87.33655, -103.27893, 1e-30, -1e-30, 1.0, -1.0, 0.5, -0.5],
        np.float32,
    )  # fmt: skip
    dense = np.linspace(-110, 90, 100_001, dtype=np.float32)
    return np.concatenate([bits.view(np.float32), edges, dense])


@pytest.mark.parametrize("seed", [0, 1])
def test_within_one_ulp_of_correctly_rounded(seed) -> None:
    x = _inputs(seed)
    got = np.empty_like(x)
    _jit_exp(x, got)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        ref = np.exp(x.astype(np.float64)).astype(np.float32)
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()
    g, r = got[~nan], ref[~nan]
    assert (g >= 0).all()
    assert np.array_equal(np.isinf(g), np.isinf(r))
    fin = np.isfinite(r)
    ulps = np.abs(g[fin].view(np.int32).astype(np.int64) - r[fin].view(np.int32))
    assert ulps.max() <= 1


@pytest.mark.skipif(not _glibc_fma(), reason="the C library's expf is not glibc's FMA build")
@pytest.mark.parametrize("seed", [0, 1])
def test_same_bits_as_the_c_library(seed) -> None:
    x = _inputs(seed)
    a, b = np.empty_like(x), np.empty_like(x)
    _jit_exp(x, a)
    _libm_exp(x, b)
    nan = np.isnan(b)
    assert np.isnan(a[nan]).all()
    assert np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


@pytest.mark.slow
@pytest.mark.skipif(not _glibc_fma(), reason="the C library's expf is not glibc's FMA build")
def test_same_bits_as_the_c_library_on_every_float32() -> None:
    assert _count_libm_mismatches(0, 2**32) == 0


def test_python_steps_match_the_compiled_ones() -> None:
    """The Python path (used under NUMBA_DISABLE_JIT=1) gives the compiled bits."""
    x = _inputs(2)[::97]
    got = np.empty_like(x)
    _jit_exp(x, got)
    py = np.array([exp_f32(v) for v in x], np.float32)
    nan = np.isnan(got)
    assert np.isnan(py[nan]).all()
    assert np.array_equal(py[~nan].view(np.uint32), got[~nan].view(np.uint32))
