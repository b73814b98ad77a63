"""Tests of gpt_workload.precision: unit roundoffs and storage rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_workload.precision import (
    PRECISIONS,
    bytes_per_element,
    check_precision,
    round_storage,
    unit_roundoff,
)
from wse_sim.errors import ConfigError

# Smallest positive normal number of each format (IEEE 754 binary16; bf16 shares fp32's range).
_MIN_NORMAL = {"fp16": 2.0**-14, "bf16": 2.0**-126, "fp32": 2.0**-126}
_MAX_FINITE = {"fp16": 65504.0, "bf16": float(torch.finfo(torch.bfloat16).max)}


def _torch_bf16(x: np.ndarray) -> np.ndarray:
    """Reference bf16 rounding: torch's float32 -> bfloat16 -> float32 conversion."""
    return torch.from_numpy(x.copy()).to(torch.bfloat16).to(torch.float32).numpy()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equal, except that any NaN matches any NaN."""
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    return bool(
        np.array_equal(nan_a, nan_b)
        and np.array_equal(a[~nan_a].view(np.uint32), b[~nan_b].view(np.uint32))
    )


def _special_values() -> np.ndarray:
    """float32 values covering ties, NaN, inf, overflow, subnormals and signed zeros."""
    ties = []
    for upper in (0x3F80, 0x3F81, 0x4049, 0x404A, 0x0001, 0x0002, 0x7F7E, 0x7F7F, 0xBF80, 0xBF81):
        for lower in (0x7FFF, 0x8000, 0x8001, 0x0000, 0xFFFF):
            ties.append((upper << 16) | lower)
    bits = np.array(
        ties
        + [
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0xFFC00000,
            0x7F800001,
            0x7FBFFFFF,
            0x7F807FFF,
            0x00000000,
            0x80000000,
            0x00000001,
            0x807FFFFF,
            0x7F7FFFFF,
        ],
        dtype=np.uint32,
    )
    others = np.array(
        [
            1.0,
            -1.0,
            65504.0,
            65519.99,
            65520.0,
            7e4,
            -7e4,
            1e-8,
            6e-8,
            2.0**-24,
            2.0**-25,
            3e38,
            0.1,
            1 / 3,
        ],
        dtype=np.float32,
    )
    return np.concatenate([bits.view(np.float32), others])


def test_constants() -> None:
    assert PRECISIONS == ("fp32", "fp16", "bf16")
    assert unit_roundoff("fp32") == 2.0**-24
    assert unit_roundoff("fp16") == 2.0**-11
    assert unit_roundoff("bf16") == 2.0**-8
    assert [bytes_per_element(p) for p in PRECISIONS] == [4, 2, 2]
    for p in PRECISIONS:
        assert check_precision(p) == p
        # u is half the spacing of the format's significands just above 1
        eps = {
            "fp32": np.finfo(np.float32).eps,
            "fp16": np.finfo(np.float16).eps,
            "bf16": torch.finfo(torch.bfloat16).eps,
        }[p]
        assert unit_roundoff(p) == float(eps) / 2


@pytest.mark.parametrize("bad", ["fp8", "FP16", "", None, 16])
def test_check_precision_rejects(bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        check_precision(bad)  # type: ignore[arg-type]
    assert "allowed: fp32, fp16, bf16" in str(err.value)
    with pytest.raises(ConfigError):
        round_storage(np.zeros(3, np.float32), bad)  # type: ignore[arg-type]


def test_check_precision_message() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^precision='fp8' is not supported; "
        r"allowed: fp32, fp16, bf16$",
    ):
        check_precision("fp8")


def test_precision_type_carries_the_format() -> None:
    """wse_sim's Precision: sizes from the element types (NumPy, torch), ``u`` from their
    machine epsilon, the arch fields it names exist, and it stands in for its name."""
    from wse_sim.arch import load_arch
    from wse_sim.precision import Precision

    sizes = {"fp32": np.dtype(np.float32).itemsize, "fp16": np.dtype(np.float16).itemsize,
             "bf16": torch.empty(0, dtype=torch.bfloat16).element_size()}  # fmt: skip
    arch = load_arch("wse2")
    for p in Precision:
        assert Precision.parse(p.value) is p and Precision.parse(p) is p
        assert p == p.value and hash(p) == hash(p.value) and f"{p}" == p.value
        assert repr(p) == repr(p.value)
        assert p.bytes_per_element == sizes[p.value]
        assert p.unit_roundoff == unit_roundoff(p.value)
        assert p.accumulation is Precision.FP32
        assert arch.pe.fmac_per_cycle(p) == getattr(arch.pe, p.fmac_field)
        assert arch.energy.fmac_pj(p) == getattr(arch.energy, p.fmac_energy_field)
        assert check_precision(p.value) is p
    with pytest.raises(ConfigError, match=r"^--precision='int8' is not supported; allowed: "):
        Precision.parse("int8", "--precision")


def test_precision_range_matches_the_element_types() -> None:
    """max_finite is NumPy's / torch's finfo max; overflow_threshold is where rounding the
    float32 value to the format gives inf (round_storage, NumPy's float16 cast)."""
    from wse_sim.precision import Precision

    fmax = {"fp32": np.finfo(np.float32).max, "fp16": np.finfo(np.float16).max,
            "bf16": torch.finfo(torch.bfloat16).max}  # fmt: skip
    for p in (Precision.FP16, Precision.BF16):
        assert p.max_finite == float(fmax[p.value])
        at = np.float32(p.overflow_threshold)
        below = np.nextafter(at, np.float32(0))
        assert float(at) == p.overflow_threshold  # exactly a float32
        assert np.isinf(round_storage(np.array([at]), p.value))[0]
        assert round_storage(np.array([below]), p.value)[0] == p.max_finite
    assert Precision.FP32.max_finite == float(fmax["fp32"])


def test_fp32_is_copy() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y = round_storage(x, "fp32")
    assert y.dtype == np.float32 and np.array_equal(x, y)
    assert not np.shares_memory(x, y)


def test_fp16_matches_numpy_cast() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            _special_values(),
            rng.standard_normal(10_000).astype(np.float32) * np.float32(1000),
            (rng.standard_normal(10_000) * 1e-5).astype(np.float32),
            rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        ]
    )
    before = x.copy()
    y = round_storage(x, "fp16")
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert _same(y, ref)
    assert _same(x, before)  # input untouched
    assert np.isinf(round_storage(np.array([7e4, -7e4], np.float32), "fp16")).all()


def test_bf16_matches_torch_specials() -> None:
    x = _special_values()
    y = round_storage(x, "bf16")
    assert _same(y, _torch_bf16(x))
    # ties to even, explicitly
    up = np.array([0x3F808000, 0x3F818000], np.uint32).view(np.float32)
    assert round_storage(up, "bf16").view(np.uint32).tolist() == [0x3F800000, 0x3F820000]
    # NaN whose payload lives only in the discarded low half stays NaN
    assert np.isnan(round_storage(np.array([0x7F800001], np.uint32).view(np.float32), "bf16"))
    assert np.isposinf(round_storage(np.array([np.finfo(np.float32).max]), "bf16"))


def test_bf16_matches_torch_random_bits() -> None:
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    assert _same(round_storage(x, "bf16"), _torch_bf16(x))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_bf16_matches_torch_property(bit_list: list[int]) -> None:
    x = np.array(bit_list, dtype=np.uint32).view(np.float32)
    assert _same(round_storage(x, "bf16"), _torch_bf16(x))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_relative_error_bounded_by_u(precision: str) -> None:
    rng = np.random.default_rng(3)
    lo, hi = np.log2(_MIN_NORMAL[precision]), np.log2(_MAX_FINITE[precision]) - 1
    mag = np.exp2(rng.uniform(lo, hi, 50_000))
    x = (mag * rng.choice([-1.0, 1.0], mag.size)).astype(np.float32)
    x = x[np.abs(x) >= _MIN_NORMAL[precision]]
    y = round_storage(x, precision).astype(np.float64)
    rel = np.abs(y - x.astype(np.float64)) / np.abs(x.astype(np.float64))
    assert rel.max() <= unit_roundoff(precision)
    # the bound is attained (up to the float32 grid of the inputs): it is not loose
    assert rel.max() > 0.9 * unit_roundoff(precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_shape_and_idempotence(precision: str) -> None:
    x = np.random.default_rng(4).standard_normal((2, 3, 5)).astype(np.float32)
    y = round_storage(x, precision)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.array_equal(round_storage(y, precision), y)


@pytest.mark.parametrize("seed", [0, 1])
def test_fp16_rounding_equals_numpys_cast_bit_for_bit(seed):
    """The compiled fp16 rounding gives NumPy's ``astype(float16).astype(float32)`` bits on
    random float32 patterns (every exponent, both signs) and on the edges: zeros, the fp16
    subnormal grid and its midpoints, the largest finite fp16 (65504), the overflow midpoint
    65520 and its neighbours, float32 subnormals, +-inf, and NaN (NumPy's own cast)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    bits = bits[(bits & 0x7FFFFFFF) <= 0x7F800000]  # NaN patterns: checked below
    edges = np.array([0.0, -0.0, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14, 2.0**-14 - 2.0**-25,
                      65504.0, 65519.996, 65520.0, 65536.0, 1e-45, -1e-45, np.inf, -np.inf,
                      1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, -(1.0 + 2.0**-11)], np.float32)  # fmt: skip
    x = np.concatenate([bits.view(np.float32), edges])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    got = round_storage(x, "fp16")
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    withnan = np.array([1.0, np.nan, -np.nan, 70000.0], np.float32)
    r = round_storage(withnan, "fp16")
    assert np.isnan(r[1]) and np.isnan(r[2]) and r[0] == 1.0 and r[3] == np.inf
    assert round_storage(x.reshape(-1, 2)[:5], "fp16").shape == (5, 2)
