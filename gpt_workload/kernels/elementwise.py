"""Element-wise kernels: GELU (exact and tanh), the residual add and the SwiGLU product
(forward and backward). Layout and arithmetic rules: :mod:`gpt_workload.kernels`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from gpt_workload.kernels._common import _as_f32, _check_out, _same

_f32 = _as_f32

__all__ = ["add_tiled", "gelu_tiled", "swiglu_bwd", "swiglu_fwd"]

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


# --------------------------------------------------------------------------------------------
# SwiGLU product
# --------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _swiglu_fwd_kernel(gate, up, out):  # pragma: no cover - jit
    n, f = gate.shape
    one = np.float32(1)
    for r in numba.prange(n):
        for c in range(f):
            x = gate[r, c]
            sig = one / (one + np.float32(math.exp(-x)))
            out[r, c] = np.float32(x * sig) * up[r, c]


def swiglu_fwd(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``silu(gate) * up`` with ``silu(x) = x * sigmoid(x)``, ``sigmoid = 1 / (1 + exp(-x))``.

    Args:
        gate, up: float32 ``[N, f]``.
    """
    gate, up = _f32("gate", gate, 2), _f32("up", up, 2)
    _same("up", up, gate.shape)
    out = np.empty_like(gate)
    _swiglu_fwd_kernel(gate, up, out)
    return out


@numba.njit(parallel=True, cache=True)
def _swiglu_bwd_kernel(dy, gate, up, dgate, dup):  # pragma: no cover - jit
    n, f = gate.shape
    one = np.float32(1)
    for r in numba.prange(n):
        for c in range(f):
            x = gate[r, c]
            sig = one / (one + np.float32(math.exp(-x)))
            silu = np.float32(x * sig)
            dup[r, c] = dy[r, c] * silu
            dsilu = np.float32(sig * np.float32(one + np.float32(x * np.float32(one - sig))))
            dgate[r, c] = np.float32(dy[r, c] * up[r, c]) * dsilu


def swiglu_bwd(dy: np.ndarray, gate: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`swiglu_fwd`: ``dup = dy * silu(gate)``,
    ``dgate = dy * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate)))``.

    Returns:
        ``(dgate, dup)``, float32 ``[N, f]``.
    """
    dy, gate, up = _f32("dy", dy, 2), _f32("gate", gate, 2), _f32("up", up, 2)
    _same("up", up, gate.shape)
    _same("dy", dy, gate.shape)
    dgate, dup = np.empty_like(gate), np.empty_like(gate)
    _swiglu_bwd_kernel(dy, gate, up, dgate, dup)
    return dgate, dup
