"""GEMM in a mapping's reduction order, with each PE's partial product on BLAS.

A weight-streaming GEMM ``Y = X W`` splits the contraction over the ``P`` PEs of a segment:
PE ``j`` owns rows ``K_j`` of ``W`` and computes the partial ``p_j = X[:, K_j] W[K_j, :]``;
the mapping then combines the partials in its order, a chain ``((p_0 + p_1) + p_2) + ...``
along the segment or a balanced pairwise tree. That order is what makes the fp32 result of
one mapping differ from another's, and it is kept exactly here: every partial is rounded to
fp32 on its own, and the partials are added one at a time in the mapping's order.

Inside one PE the partial is a dot product of ``|K_j|`` terms that the PE accumulates in fp32
in a single running sum; here it is one ``sgemm`` call per (PE, block of rows x columns)
(``numpy.matmul``), which accumulates each output element's ``|K_j|`` products in fp32 in its
own order and with fused multiply-adds. So the per-PE partial agrees with the PE's sequential
sum to within fp32 roundoff (``|K_j| u`` relative to ``sum |x||w|``), and exactly whenever the
inputs are fp16 or bf16 values with ``|K_j|`` below the point where a partial sum needs more
than 24 bits, which is not in general; the combination across PEs, the part a mapping
decides, is exact. Work is real: each call multiplies a ``[rows, |K_j|]`` panel by a
``[|K_j|, BLOCK_N]`` panel (2048 x 64 x 256 on the default run).

Threads: blocks of columns are shared among ``threads`` Python threads (NumPy releases the
GIL in ``matmul``) while OpenBLAS runs single-threaded (set through its own
``openblas_set_num_threads``, found in NumPy's bundled library, restored afterwards); with
another BLAS the calls run in this thread on that BLAS's own threads. Results do not depend
on the thread count: each block is computed by one thread, whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Rows and columns of one block of the output (one set of per-PE BLAS calls).
BLOCK_ROWS = 512
BLOCK_N = 256

_LOCK = threading.Lock()
_BLAS: list = []


def _openblas() -> tuple[Callable, Callable] | None:
    """``(get_num_threads, set_num_threads)`` of the OpenBLAS NumPy bundles, or None."""
    if not _BLAS:
        found = None
        libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        for path in sorted(glob.glob(os.path.join(libdir, "*openblas*"))):
            try:
                lib = ctypes.CDLL(path)
            except OSError:  # pragma: no cover - unloadable
                continue
            for pre, suf in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "")):
                get = getattr(lib, f"{pre}_get_num_threads{suf}", None)
                put = getattr(lib, f"{pre}_set_num_threads{suf}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    found = (get, put)
                    break
            if found:
                break
        _BLAS.append(found)
    return _BLAS[0]


def default_threads() -> int:
    """Threads for the block loop: the cores this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[bool]:
    """OpenBLAS on one thread inside the block (yields False when it cannot be set)."""
    fns = _openblas()
    if fns is None:
        yield False
        return
    get, put = fns
    with _LOCK:
        old = get()
        put(1)
        try:
            yield True
        finally:
            put(old)


def chained_gemm(
    parts_a: list[np.ndarray],
    w: np.ndarray,
    k_bounds: np.ndarray,
    emit: Callable[[int, int, int, int, np.ndarray], None] | None,
    *,
    dest: Callable[[int, int, int, int], list[tuple[int, int, np.ndarray]]] | None = None,
    reduce: str = "chain",
    bias: np.ndarray | None = None,
    col_ranges: list[tuple[int, int]] | None = None,
    row_block: int = BLOCK_ROWS,
    threads: int | None = None,
) -> None:
    """``Y = sum_j parts_a[j] @ w[k_bounds[j]:k_bounds[j+1]] (+ bias)`` block by block.

    Per output block (rows ``[r0, r1)`` x columns ``[c0, c1)``): the partial of each PE ``j``
    is one ``matmul`` (fp32 result), then ``acc = p_0; acc = acc + p_1; ...`` (``chain``) or
    the pairwise tree ``p_x = p_x + p_{x+d}`` for ``d = 1, 2, 4, ...`` (``tree``, ``P`` a
    power of two), then ``acc = acc + bias[c]``; ``emit(r0, r1, c0, c1, acc)`` receives the
    block (a scratch buffer: copy it out before returning). With ``dest`` instead, the
    block's last operation (the last partial's add, the bias add, or a copy when there is
    neither) writes straight into the output: ``dest(r0, r1, c0, c1)`` returns pieces
    ``[(a0, a1, view), ...]`` covering columns ``[c0, c1)``, ``view`` holding the block's
    columns ``[a0, a1)`` as ``(r1 - r0) * (a1 - a0)`` elements whose last axis is the
    columns and whose leading axes split the rows in order (e.g. ``[tokens / m, m,
    columns]`` of one PE's slice of a tile array); same values, one pass over the output
    less.

    A BLAS call's results do not depend on the block's shape except when it is one row or
    one column (a matrix-vector path): blocks are whole :data:`BLOCK_N` columns wherever
    the ranges allow.

    Args:
        parts_a: ``P`` float32 C-contiguous ``[R, |K_j|]`` panels (the PEs' activations).
        w: float32 ``[K, N]``.
        k_bounds: int ``[P + 1]``, the rows of ``w`` each PE owns.
        emit: called once per block, from any of the threads (blocks never overlap);
            None when ``dest`` is given.
        dest: returns the output pieces of a block (see above), from any of the threads.
        reduce: ``chain`` or ``tree``.
        bias: float32 ``[N]`` or None.
        col_ranges: ``[(c0, c1), ...]`` column ranges cut into blocks of :data:`BLOCK_N`
            (default the whole ``[0, N)``); a block never straddles two ranges.
        row_block: rows per block (a multiple of the caller's token block, e.g. ``m``).
        threads: threads for the blocks (default :func:`default_threads`).
    """
    P = len(parts_a)
    R = parts_a[0].shape[0] if P else 0
    N = w.shape[1]
    ranges = col_ranges if col_ranges is not None else [(0, N)]
    blocks = [
        (r0, min(r0 + row_block, R), c0, min(c0 + BLOCK_N, hi))
        for lo, hi in ranges
        for c0 in range(lo, hi, BLOCK_N)
        for r0 in range(0, R, row_block)
    ]
    w_parts = [w[k_bounds[j] : k_bounds[j + 1]] for j in range(P)]
    local = threading.local()

    def run(block: tuple[int, int, int, int]) -> None:
        r0, r1, c0, c1 = block
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty((max(P, 1), row_block, BLOCK_N), np.float32)
        nr, nc = r1 - r0, c1 - c0
        ps = [buf[j, :nr, :nc] for j in range(P)]
        pieces = dest(r0, r1, c0, c1) if dest is not None else None

        def add(a: np.ndarray, b: np.ndarray, final: bool) -> None:
            """``a = a + b``, or into the output pieces when this is the last operation."""
            if not final or pieces is None:
                np.add(a, b, out=a)
                return
            for a0, a1, view in pieces:
                cs = slice(a0 - c0, a1 - c0)
                bb = b[cs] if b.ndim == 1 else b[:, cs].reshape(view.shape)
                np.add(a[:, cs].reshape(view.shape), bb, out=view)

        if reduce == "tree":
            for j in range(P):
                np.matmul(parts_a[j][r0:r1], w_parts[j][:, c0:c1], out=ps[j])
            d = 1
            while d < P:
                for x in range(0, P, 2 * d):
                    add(ps[x], ps[x + d], 2 * d >= P and bias is None)
                d *= 2
        else:
            np.matmul(parts_a[0][r0:r1], w_parts[0][:, c0:c1], out=ps[0])
            for j in range(1, P):
                np.matmul(parts_a[j][r0:r1], w_parts[j][:, c0:c1], out=ps[1])
                add(ps[0], ps[1], j == P - 1 and bias is None)
        if bias is not None:
            add(ps[0], bias[c0:c1], True)
        elif pieces is not None and P == 1:
            for a0, a1, view in pieces:
                np.copyto(view, ps[0][:, a0 - c0 : a1 - c0].reshape(view.shape))
        if pieces is None:
            emit(r0, r1, c0, c1, ps[0])

    n_thr = threads if threads is not None else default_threads()
    if n_thr <= 1 or len(blocks) <= 1:
        for b in blocks:
            run(b)
        return
    with _single_threaded_blas() as single:
        if not single:  # another BLAS: let it thread each call
            for b in blocks:
                run(b)
            return
        with ThreadPoolExecutor(max_workers=n_thr) as pool:
            list(pool.map(run, blocks, chunksize=max(1, len(blocks) // (8 * n_thr))))
