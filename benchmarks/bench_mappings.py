"""Speed of the mapping machinery, as ratios against baselines measured in the same run.

Run: ``python benchmarks/bench_mappings.py [--quick] [--out benchmarks/results/mappings.json]``.

* **Planning** (:func:`gpt_workload.mappings.gemm.gemm_plan`): the NumPy planners against the
  original per-line Python loops (``tests/_gemm_reference.py``, the same plans exactly), per
  algorithm on a 32 x 32 block (Cannon's loops are O(p^3), so the reference is kept small),
  and the NumPy planner alone on a 70 x 750 band (a layer-pipelined band before folding).
* **Numerics** (:func:`gpt_workload.mappings.gemm.gemm_numerics`): GFLOP/s of each
  algorithm's ordered fp32 accumulation on a Cerebras-GPT-111M FFN-up shape (2048 x 768 x
  3072, P = 12) next to ``numpy.matmul`` (BLAS, unordered) of the same shape.

Timings are the best of ``--repeat`` calls after a warm-up call (which also JIT-compiles).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gpt_workload.mappings.gemm import GEMM_ALGORITHMS, gemm_numerics, gemm_plan
from wse_sim.arch import load_arch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _gemm_reference import reference_plan  # noqa: E402
from bench_kernels import _best  # noqa: E402  (this folder is on sys.path when run)


def bench_planning(repeat: int, p: int) -> list[dict]:
    """Per algorithm: NumPy planner vs reference loops on a p x p block, and the NumPy planner
    on a 70 x 750 band (square 250 x 250 for Cannon/MeshGEMM)."""
    arch = load_arch("wse2")
    rows = []
    for alg in GEMM_ALGORITHMS:
        kw = dict(M=8 * p, K=768, N=3072, pr=p, pc=p, precision="fp16", arch=arch)
        fast = _best(lambda kw=kw, a=alg: gemm_plan(a, **kw), repeat)
        ref = _best(lambda kw=kw, a=alg: reference_plan(a, **kw), max(1, repeat // 3))
        big = (250, 250) if alg in ("cannon", "meshgemm") else (70, 750)
        bkw = dict(M=8 * big[0], K=768, N=3072, pr=big[0], pc=big[1], precision="fp16", arch=arch)
        band = _best(lambda kw=bkw, a=alg: gemm_plan(a, **kw), repeat)
        rows.append(
            {
                "algorithm": alg,
                "block": [p, p],
                "numpy_planner_s": fast,
                "reference_loops_s": ref,
                "speedup": ref / fast,
                "large_block": list(big),
                "large_block_numpy_planner_s": band,
            }
        )
    return rows


def bench_numerics(repeat: int, tokens: int) -> list[dict]:
    """GFLOP/s of each algorithm's ordered GEMM numerics vs numpy.matmul (same shape)."""
    rng = np.random.default_rng(0)
    K, N, P = 768, 3072, 12
    A = rng.standard_normal((tokens, K), dtype=np.float32)
    B = rng.standard_normal((K, N), dtype=np.float32)
    flop = 2.0 * tokens * K * N
    blas = _best(lambda: A @ B, repeat)
    rows = [{"algorithm": "numpy.matmul (BLAS)", "s": blas, "gflop_s": flop / blas / 1e9}]
    for alg in GEMM_ALGORITHMS:
        pr = P if alg in ("cannon", "meshgemm") else 1
        t = _best(lambda a=alg, pr=pr: gemm_numerics(a, A, B, pr, P), repeat)
        rows.append({"algorithm": alg, "s": t, "gflop_s": flop / t / 1e9, "vs_blas": blas / t})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks, print them and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per measurement")
    ap.add_argument("--out", default="benchmarks/results/mappings.json", help="JSON output")
    args = ap.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    plan = bench_planning(repeat, 16 if args.quick else 32)
    num = bench_numerics(repeat, 256 if args.quick else 2048)
    print("gemm_plan: NumPy planner vs the reference loops (same plans)")
    for r in plan:
        print(
            f"  {r['algorithm']:9s} {r['block'][0]}x{r['block'][1]}: "
            f"{r['numpy_planner_s'] * 1e3:8.2f} ms vs {r['reference_loops_s'] * 1e3:9.2f} ms "
            f"({r['speedup']:6.1f}x); {r['large_block'][0]}x{r['large_block'][1]}: "
            f"{r['large_block_numpy_planner_s'] * 1e3:8.2f} ms"
        )
    print("gemm_numerics: ordered fp32 accumulation vs numpy.matmul")
    for r in num:
        extra = f" ({r['vs_blas']:.2f}x BLAS)" if "vs_blas" in r else ""
        print(f"  {r['algorithm']:20s} {r['s'] * 1e3:8.1f} ms {r['gflop_s']:7.2f} GFLOP/s{extra}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"planning": plan, "numerics": num}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
