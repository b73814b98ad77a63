"""Shared pieces of the kernels: argument checks (Python side) and the inner loops that the
Numba kernels inline (see :mod:`gpt_workload.kernels` for the layout and arithmetic rules).
"""

from __future__ import annotations

import numba
import numpy as np

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


def _same(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}")


def _check_tiles(out, shape, n_seg, segs_per_seq):
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"out_tiles must be a float32 array of shape {shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out_tiles must be C-contiguous and writeable")
    if segs_per_seq < 1 or n_seg % segs_per_seq:
        raise ValueError(f"segs_per_seq={segs_per_seq} does not divide the {n_seg} segments")
