"""``exp_f32``: float32 ``exp`` that LLVM can vectorise, with the C library's bits.

The kernels' exponentials used to be calls to the C library's ``expf`` (Numba lowers
``math.exp`` on a float32 to it), one call per element, which no loop can vectorise. This is
the same function written out so that it inlines and vectorises: the algorithm of glibc's
``expf`` (since 2.28, from Arm's optimized-routines; ``sysdeps/ieee754/flt-32/e_expf.c``), as
its x86-64 FMA build (``__expf_fma``, what glibc selects on a CPU with FMA) computes it:

* ``kd = fma(N/ln 2, x, 2^52 * 1.5)`` (``N = 32``; the shift rounds ``x N / ln 2`` to an
  integer ``k`` held in the low bits of ``kd``), ``r = fma(N/ln 2, x, -(kd - shift))``;
* ``s = 2^(k/N)`` from a 32-entry table of ``2^(i/32)`` (entry ``i`` less ``i << 47`` in its
  bits) plus ``k << 47`` added to the bits;
* ``y = fma(fma(C0, r, C1), r * r, fma(C2, r, 1)) * s`` in float64 (``C0..C2`` the
  polynomial of ``2^(r/N)``, as in glibc), rounded once to float32;
* ``x > 0x1.62e42ep6`` gives ``inf``, ``x < -0x1.9fe368p6`` gives 0, NaN gives ``x + x``.

Accuracy (glibc's own figure for the algorithm): 0.502 ulp. Checked equal to this machine's
``__expf_fma`` on all 2^32 float32 inputs (``tests/test_expf.py``, the exhaustive case marked
slow), so on glibc x86-64 with FMA the kernels' results are the same bit for bit as with
``math.exp``; with another C library the two may differ in the last bit of some values
(both are faithful). Under ``NUMBA_DISABLE_JIT=1`` the same steps run in Python (exact
``fma`` through :class:`fractions.Fraction`), so kernels that use it give the same bits
there as compiled.
"""

from __future__ import annotations

import struct
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
from numba.core import types
from numba.extending import intrinsic, overload

__all__ = ["exp_f32"]

_N = 32  # table entries: 2^(i/N), i < N


def _bits(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def _from_bits(u: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", u & 0xFFFFFFFFFFFFFFFF))[0]


def _table() -> np.ndarray:
    """``bits(2^(i/N)) - (i << 47)`` for ``i < N``, ``2^(i/N)`` correctly rounded to float64
    (60 significant digits, then one rounding to binary)."""
    with localcontext() as ctx:
        ctx.prec = 60
        vals = [float(Fraction(Decimal(2) ** (Decimal(i) / _N))) for i in range(_N)]
    return np.array([_bits(v) - (i << 47) for i, v in enumerate(vals)], np.uint64)


_TAB = _table()
_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * _N
_SHIFT = float.fromhex("0x1.8p+52")
_C0 = float.fromhex("0x1.c6af84b912394p-5") / _N**3
_C1 = float.fromhex("0x1.ebfce50fac4f3p-3") / _N**2
_C2 = float.fromhex("0x1.62e42ff0c52d6p-1") / _N
_HI = np.float32(float.fromhex("0x1.62e42ep6"))  # above: exp overflows float32
_LO = np.float32(-float.fromhex("0x1.9fe368p6"))  # below: exp rounds to 0


def _fma_py(a: float, b: float, c: float) -> float:
    """``a * b + c`` rounded once (finite arguments)."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def exp_f32(x):
    """``exp(x)`` of a float32 as a float32: glibc's ``expf`` algorithm (module docstring).

    Callable from ``@njit`` code (where it inlines and vectorises) and from Python (the same
    steps, for ``NUMBA_DISABLE_JIT=1``).
    """
    x = np.float32(x)
    if x != x:
        with np.errstate(invalid="ignore"):  # a signalling NaN comes back quiet
            return x + x
    if x > _HI:
        return np.float32(np.inf)
    if x < _LO:
        return np.float32(0)
    xd = float(x)
    kd = _fma_py(_INV_LN2_N, xd, _SHIFT)
    ki = _bits(kd)
    kd = kd - _SHIFT
    r = _fma_py(_INV_LN2_N, xd, -kd)
    s = _from_bits(int(_TAB[ki % _N]) + (ki << 47))
    y = _fma_py(_fma_py(_C0, r, _C1), r * r, _fma_py(_C2, r, 1.0)) * s
    return np.float32(y)


@intrinsic
def _fma(typingctx, a, b, c):  # pragma: no cover - jit
    """``llvm.fma.f64``: ``a * b + c`` with one rounding."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@intrinsic
def _f64_bits(typingctx, x):  # pragma: no cover - jit
    """The bits of a float64 as a uint64."""
    sig = types.uint64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint64))

    return sig, codegen


@intrinsic
def _bits_f64(typingctx, u):  # pragma: no cover - jit
    """The float64 with the bits of a uint64."""
    sig = types.float64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@intrinsic
def _select(typingctx, cond, a, b):  # pragma: no cover - jit
    """``a if cond else b`` for two float32, as one LLVM ``select`` (no branch)."""
    sig = types.float32(types.boolean, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.select(*args)

    return sig, codegen


@overload(exp_f32)
def _exp_f32_jit(x):  # pragma: no cover - jit
    if not isinstance(x, types.Float):
        return None
    tab, inv, shift, c0, c1, c2 = _TAB, _INV_LN2_N, _SHIFT, _C0, _C1, _C2
    hi, lo = _HI, _LO

    def impl(x):
        xf = np.float32(x)
        xd = np.float64(xf)
        kd = _fma(inv, xd, shift)
        ki = _f64_bits(kd)
        kd = kd - shift
        r = _fma(inv, xd, -kd)
        s = _bits_f64(tab[ki & np.uint64(31)] + (ki << np.uint64(47)))
        y = _fma(_fma(c0, r, c1), r * r, _fma(c2, r, 1.0)) * s
        res = np.float32(y)
        # the special cases as selects (no branch), so that loops stay vectorisable
        res = _select(xf > hi, np.float32(np.inf), res)
        res = _select(xf < lo, np.float32(0), res)
        return _select(xf != xf, xf + xf, res)

    return impl
