"""Storage precisions of activations and weights: the workload's numeric helpers.

The precision itself is :class:`wse_sim.precision.Precision` (bytes per element, unit
roundoff, accumulation precision, FMAC-rate field), parsed once at the boundary; this module
adds what only the workload's numerics need: rounding a tensor to a storage format.

The simulated wafer *stores* activations and weights in fp32, fp16 or bf16 but does every
multiply and every accumulation in fp32. The numerical kernels (:mod:`gpt_workload.kernels`)
therefore always compute in float32 on float32 arrays; the effect of 16-bit storage is
modelled by the caller, which rounds each stored tensor with :func:`round_storage` between
kernels.

Unit roundoffs follow Higham, *Accuracy and Stability of Numerical Algorithms* (2nd ed.,
SIAM 2002), §2.1: with ``t`` significand bits (implicit bit included) and round-to-nearest,
``u = 2**-t``: fp32 t=24, fp16 t=11, bf16 t=8.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from wse_sim.precision import PRECISIONS, Precision

__all__ = [
    "PRECISIONS",
    "Precision",
    "bytes_per_element",
    "check_precision",
    "round_storage",
    "unit_roundoff",
]


def check_precision(precision: str | Precision) -> Precision:
    """Parse a storage-precision name (:meth:`wse_sim.precision.Precision.parse`).

    Args:
        precision: one of :data:`PRECISIONS` (``"fp32"``, ``"fp16"``, ``"bf16"``) or a
            :class:`~wse_sim.precision.Precision`.

    Returns:
        The :class:`~wse_sim.precision.Precision` (equal to the name it was given).

    Raises:
        ConfigError: the name is not one of :data:`PRECISIONS`, e.g.
            ``precision='fp8' is not supported; allowed: fp32, fp16, bf16``.
    """
    return Precision.parse(precision)


def unit_roundoff(precision: str | Precision) -> float:
    """Unit roundoff ``u`` of a storage format (round-to-nearest).

    ``u = 2**-24`` for fp32, ``2**-11`` for fp16, ``2**-8`` for bf16 (Higham, *Accuracy and
    Stability of Numerical Algorithms*, §2.1). For any real ``x`` in the normal range of the
    format, ``fl(x) = x (1 + d)`` with ``|d| <= u``.

    Args:
        precision: one of :data:`PRECISIONS`.

    Returns:
        ``u`` as a Python float (dimensionless).

    Raises:
        ConfigError: unknown precision.
    """
    return Precision.parse(precision).unit_roundoff


def bytes_per_element(precision: str | Precision) -> int:
    """Storage size of one element: 4 for fp32, 2 for fp16 and bf16.

    Args:
        precision: one of :data:`PRECISIONS`.

    Returns:
        Bytes per stored element (int).

    Raises:
        ConfigError: unknown precision.
    """
    return Precision.parse(precision).bytes_per_element


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bf16 (round-to-nearest-even) and widen back to float32."""
    bits = x.view(np.uint32)
    # Round to nearest, ties to even, on the upper 16 bits. Finite values that round past
    # the largest bf16 carry into the exponent and become +-inf exactly as IEEE rounding does;
    # +-inf maps to itself. No overflow of uint32: the largest non-NaN pattern is 0xFF800000.
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + (np.uint32(0x7FFF) + lsb)) & np.uint32(0xFFFF0000)
    # NaN: keep sign and the upper payload bits, force the quiet bit so the result stays NaN
    # even if the payload lived only in the discarded low half.
    nan_bits = (bits & np.uint32(0xFFFF0000)) | np.uint32(0x00400000)
    out = np.where(np.isnan(x), nan_bits, rounded)
    return out.view(np.float32)


@njit(cache=True, nogil=True, parallel=True)
def _round_fp16_kernel(xf, xb, of, ob) -> bool:  # pragma: no cover - compiled by numba
    """IEEE binary16 round-to-nearest-even of float32 values, widened back to float32, on the
    bit patterns (``xf``/``xb``: float32 and uint32 views of the input, ``of``/``ob`` of the
    output, all 1-D). Returns True when the input holds a NaN (the caller then uses NumPy's
    cast, whose NaN payload rule is its own).

    Normal fp16 range (``|x| >= 2^-14``): keep 10 fraction bits, ties to even, by integer
    rounding of the float32 pattern (a carry moves into the exponent as IEEE rounding does);
    ``|x| >= 65520`` (the midpoint between 65504 and 2^16) and +-inf give +-inf; below 2^-14
    the fp16 subnormal grid is ``2^-24``: ``rint(|x| 2^24) 2^-24`` (both scalings exact)."""
    n_nan = 0
    two24 = np.float32(16777216.0)
    inv24 = np.float32(1.0 / 16777216.0)
    for i in prange(xb.size):  # element-wise: the same bits whatever the threads
        b = xb[i]
        s = b & np.uint32(0x80000000)
        a = b & np.uint32(0x7FFFFFFF)
        if a > np.uint32(0x7F800000):
            n_nan += 1
            ob[i] = b
        elif a >= np.uint32(0x477FF000):
            ob[i] = s | np.uint32(0x7F800000)
        elif a >= np.uint32(0x38800000):
            lsb = (a >> np.uint32(13)) & np.uint32(1)
            ob[i] = s | ((a + np.uint32(0xFFF) + lsb) & np.uint32(0xFFFFE000))
        else:  # written through ``of`` alone (``of`` and ``ob`` are views of one buffer)
            v = np.float32(np.rint(abs(xf[i]) * two24)) * inv24
            of[i] = -v if s else v
    return n_nan > 0


def _round_fp16(x32: np.ndarray) -> np.ndarray:
    """fp16 storage rounding of a C-contiguous float32 array into a new array: the compiled
    :func:`_round_fp16_kernel` (bit-identical to NumPy's ``astype(float16).astype(float32)``
    on every non-NaN float32 pattern, checked exhaustively over all 2^32; about 3x faster and
    without its float16 temporary), NumPy's cast when a NaN is present."""
    flat = x32.reshape(-1)
    out = np.empty_like(flat)
    if _round_fp16_kernel(flat, flat.view(np.uint32), out, out.view(np.uint32)):
        with np.errstate(over="ignore"):
            return x32.astype(np.float16).astype(np.float32)
    return out.reshape(x32.shape)


def round_storage(x: np.ndarray, precision: str | Precision) -> np.ndarray:
    """Round values to a storage format and return them widened back to float32.

    Models storing a tensor in ``precision`` and reading it back for fp32 arithmetic.

    * ``fp32``: a float32 copy of ``x`` (no rounding).
    * ``fp16``: IEEE binary16 round-to-nearest-even (the same bits as NumPy's ``float16``
      cast, :func:`_round_fp16`); magnitudes that round past 65504 become +-inf, tiny values
      become fp16 subnormals or +-0, NaN stays NaN.
    * ``bf16``: round-to-nearest-even to 8 significand bits by integer manipulation of the
      float32 bit pattern (same results as ``torch.Tensor.to(torch.bfloat16)``); overflow
      gives +-inf, +-inf and NaN are preserved (NaN payload may change, the result is NaN).

    For values in the normal range of the format the relative error is at most
    :func:`unit_roundoff` ``(precision)``.

    Args:
        x: array of any shape, dtype float32 (other real dtypes are first cast to float32,
            which is itself a rounding).
        precision: one of :data:`PRECISIONS`.

    Returns:
        New float32 array of the same shape (never a view of ``x``).

    Raises:
        ConfigError: unknown precision.
    """
    precision = Precision.parse(precision)
    if precision is Precision.FP16:
        return _round_fp16(np.ascontiguousarray(x, dtype=np.float32))
    x32 = np.array(x, dtype=np.float32, copy=True, order="C")
    if precision is Precision.FP32:
        return x32
    return _round_bf16(x32)
