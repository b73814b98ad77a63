"""Benchmark: the decode numerics' tiled GEMV on a grid much wider than the matrix.

:func:`gpt_workload.kernels.decode.gemv_split` visits only the PEs whose tile is not empty;
the baseline, measured in the same run, is the previous algorithm: a work unit for every PE
``(r, c)`` of the grid built in Python, every row's partial (zeros included) combined over
all rows in the fabric's order. Both give the same float32 result (checked, bit for bit).

Usage:
    python benchmarks/bench_gemv_empty_tiles.py [--grid 994x750] [--k 64] [--n 64]
        [--batch 1] [--reduce tree] [--repeat 3]

Prints the best-of-``--repeat`` seconds per call of each and their ratio. Nothing here
asserts a time: read the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpt_workload.generation.split import GemvSplit, combine_order
from gpt_workload.kernels.decode import GEMV_CHUNK, _gemv_partials_serial, gemv_split


def dense_gemv(x: np.ndarray, w: np.ndarray, split: GemvSplit) -> np.ndarray:
    """The baseline: every PE visited, every row's partial reduced (see the docstring)."""
    K, N = w.shape
    kb, nb = split.k_bounds(K), split.n_bounds(N)
    units = [(r, kb[r], kb[r + 1], n0, min(n0 + GEMV_CHUNK, nb[c + 1]))
             for r in range(split.rows) for c in range(split.cols)
             for n0 in range(int(nb[c]), int(nb[c + 1]), GEMV_CHUNK)]  # fmt: skip
    part = np.zeros((split.rows, x.shape[0], N), np.float32)
    _gemv_partials_serial(x, w, np.asarray(units, dtype=np.int64), part)
    for dst, src in combine_order(split.rows, split.reduce):
        np.add(part[dst], part[src], out=part[dst])
    return part[0]


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="994x750")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reduce", default="tree")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rows, cols = (int(v) for v in a.grid.split("x"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, a.k)).astype(np.float32)
    w = rng.standard_normal((a.k, a.n)).astype(np.float32)
    split = GemvSplit(rows, cols, a.reduce)
    got, want = gemv_split(x, w, None, split), dense_gemv(x, w, split)  # also compiles
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), "results differ"
    t_new = _best(lambda: gemv_split(x, w, None, split), a.repeat)
    t_old = _best(lambda: dense_gemv(x, w, split), a.repeat)
    print(f"gemv {a.k}x{a.n}, batch {a.batch}, grid {rows}x{cols}, {a.reduce}: "
          f"every PE {t_old * 1e3:.2f} ms, non-empty tiles only {t_new * 1e3:.3f} ms, "
          f"speed-up {t_old / t_new:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
