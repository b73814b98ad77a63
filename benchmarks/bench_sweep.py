"""Benchmark of sweeps: ``analytic`` points per minute, this tree against the code path of a
baseline revision, measured in the same run.

Points: Cerebras-GPT-111M and 1.3B on the WSE-2 under the default mapping (its layout
searched by analytic time), a grid of SRAM per PE x batch x I/O bandwidth. ``--grid issue``
(default) is the scale issue 15 names, 10,000 points: 2 models x 10 SRAM sizes (32 - 96 KiB)
x 10 batches (4 - 240) x 50 I/O bandwidths (75 - 369 GB/s); ``--grid small`` the 320-point
grid of earlier measurements (2 x 4 SRAM x 5 batches x 8 bandwidths). Measured:

* ``baseline_serial``: the baseline revision's ``run_point`` in one process over whole
  groups of points (a group: one model, SRAM and batch, every bandwidth), every
  ``--baseline-groups``-th group (default 7 on the issue grid: 29 groups, 1,450 points, every
  SRAM size and batch; every group of the small grid). Whole groups, because the baseline
  shares candidate lowerings between the points of a group, so a thinned-out subset would
  understate it. The revision is extracted with ``git archive`` into a temporary directory
  and run in a subprocess; ``--baseline-rev``;
* ``serial``: this tree's ``run_points`` (``run_point`` over every point, in one process,
  cold cache);
* ``sweep_serial``: ``run_sweep(workers=0)``: the same plus the row journal (a line per
  row, fsync per batch) and the final table;
* ``sweep_dask_warm``: ``run_sweep()`` on an already running local cluster (one worker per
  core), journal and table included: what ``wse-sim sweep`` does.

The baseline's rows and this tree's rows of the same points are compared value for value
(``rows_identical`` of ``baseline_points``).
Beside wall time, CPU time is recorded (this process, plus every Dask worker's for the
cluster): on a machine shared with other work the wall clock says little, and
``*_points_per_min_idle_estimate`` is the rate the same CPU seconds give on idle cores (one
for the serial paths, ``cores`` for the cluster).

Usage:
    python benchmarks/bench_sweep.py [--grid issue|small] [--baseline-rev REV]
        [--baseline-groups K] [--skip-serial] [--out benchmarks/results/sweep.json]

Prints a table and writes JSON. Nothing here asserts a time: machines are noisy; read the
ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpt_workload.sweep import (
    SweepSpec,
    default_workers,
    open_client,
    run_point,
    run_points,
    run_sweep,
)

#: the code path this work started from (main at the start of the session that made
#: lookups in the lowering cache constant-time and the builder replicate layers); earlier
#: steps: ``5049fdd`` (lazy per-PE maps), ``8d44ca1`` (before shared candidate lowerings)
BASELINE_REV = "5e9b992"
MODELS = ["cerebras-gpt-111m", "cerebras-gpt-1.3b"]
#: the axes of each grid: SRAM bytes per PE, batches, I/O bandwidths (bytes per second)
GRIDS = {
    "issue": (
        [32768 + 7282 * i for i in range(10)],
        [4, 8, 15, 30, 45, 60, 90, 120, 180, 240],
        [75e9 + 6e9 * i for i in range(50)],
    ),
    "small": (
        [32768, 49152, 65536, 98304],
        [8, 30, 60, 120, 240],
        [150e9 * (0.5 + 0.25 * i) for i in range(8)],
    ),
}

_BASELINE_SCRIPT = """
import pickle, sys, time
from gpt_workload.sweep import run_point
points = pickle.load(open(sys.argv[1], "rb"))
run_point(points[0])  # imports and first-call costs, as for the new path
t0, c0 = time.perf_counter(), time.process_time()
rows = [run_point(p) for p in points]
dt, dc = time.perf_counter() - t0, time.process_time() - c0
pickle.dump((dt, dc, rows), open(sys.argv[2], "wb"))
"""


def make_spec(grid: str) -> SweepSpec:
    """The points of ``grid`` (:data:`GRIDS`): model x SRAM per PE x batch x I/O bandwidth
    (the last varying fastest)."""
    srams, batches, ios = GRIDS[grid]
    return SweepSpec.from_dict(
        {
            "base": {"arch": "wse2", "fidelity": "analytic"},
            "grid": {
                "model": MODELS,
                "pe.sram_bytes": srams,
                "batch": batches,
                "io.ingress_bytes_per_s": ios,
            },
        },
        name="bench",
    )


def baseline(points: list, rev: str, tmp: Path) -> tuple[float, float, list]:
    """Wall seconds, CPU seconds and rows of ``rev``'s ``run_point`` over ``points`` (a
    subprocess)."""
    src = tmp / "baseline_src"
    src.mkdir()
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    (tmp / "points.pkl").write_bytes(pickle.dumps(points))
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run(
        [sys.executable, "-c", _BASELINE_SCRIPT, str(tmp / "points.pkl"), str(tmp / "out.pkl")],
        check=True,
        env=env,
        cwd=src,
    )
    return pickle.loads((tmp / "out.pkl").read_bytes())


def same(a: dict, b: dict) -> bool:
    """Rows equal value for value (NaN equal to NaN)."""
    return a.keys() == b.keys() and all(
        a[k] == b[k]
        or (isinstance(a[k], float) and isinstance(b[k], float))
        and math.isnan(a[k])
        and math.isnan(b[k])
        for k in a
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="issue")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--baseline-groups", type=int, default=None,
                    help="time the baseline on every K-th group (default 7 for the issue "
                    "grid, 1 for the small one)")
    ap.add_argument("--skip-serial", action="store_true",
                    help="time only the baseline and the Dask sweep")
    ap.add_argument("--out", default="benchmarks/results/sweep.json")
    a = ap.parse_args()
    spec = make_spec(a.grid)
    n = len(spec.points)
    group = len(GRIDS[a.grid][2])  # points per (model, SRAM, batch): the I/O axis
    # 7 is prime to the axes' lengths, so every 7th group covers every SRAM size and batch
    stride = max(a.baseline_groups or (7 if a.grid == "issue" else 1), 1)
    picked = [i for i in range(n) if (i // group) % stride == 0]
    res: dict = {
        "grid": a.grid,
        "points": n,
        "baseline_points": len(picked),
        "fidelity": "analytic",
        "models": MODELS,
        "arch": "wse2",
        "baseline_rev": a.baseline_rev,
        "load_average_at_start": os.getloadavg()[0],
        "cores": default_workers(),
        "machine": platform.processor() or platform.machine(),
    }
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        timings["baseline_serial"], cpu["baseline_serial"], base_rows = baseline(
            [spec.points[i] for i in picked], a.baseline_rev, Path(tmp)
        )
        run_point(spec.points[0])  # imports and first-call costs
        from gpt_workload.mappings.weight_streaming.head_split import clear_class_cache
        from gpt_workload.sweep import cache as sweep_cache

        def cold() -> None:
            """Every cache a point fills emptied (the lowering cache and the mapping's
            attention classes), so each timed path starts as a fresh process would."""
            sweep_cache.worker_cache().clear()
            clear_class_cache()

        rows = None
        if not a.skip_serial:
            cold()
            t0, c0 = time.perf_counter(), time.process_time()
            rows = run_points(spec.points)
            timings["serial"] = time.perf_counter() - t0
            cpu["serial"] = time.process_time() - c0
            res["cache"] = repr(sweep_cache.worker_cache())
            cold()
            t0, c0 = time.perf_counter(), time.process_time()
            run_sweep(spec, output=Path(tmp, "serial.parquet"), workers=0)
            timings["sweep_serial"] = time.perf_counter() - t0
            cpu["sweep_serial"] = time.process_time() - c0
        with open_client() as client:
            warm = SweepSpec.from_dict(
                {"base": {"arch": "wse2", "fidelity": "analytic", "batch": 8},
                 "grid": {"model": MODELS}}, name="warmup")  # fmt: skip
            run_sweep(warm, output=Path(tmp, "warmup.parquet"), client=client)
            w0 = sum(client.run(time.process_time).values())
            t0, c0 = time.perf_counter(), time.process_time()
            run_sweep(spec, output=Path(tmp, "warm.parquet"), client=client)
            timings["sweep_dask_warm"] = time.perf_counter() - t0
            cpu["sweep_dask_warm"] = (
                time.process_time() - c0 + sum(client.run(time.process_time).values()) - w0
            )
        if rows is None:  # the rows of the baseline's points, untimed
            cold()
            picked_rows = [run_point(spec.points[i]) for i in picked]
        else:
            picked_rows = [rows[i] for i in picked]
            res["rows_ok"] = sum(r["status"] == "ok" for r in rows)
        res["rows_identical"] = sum(
            same(x, y) for x, y in zip(picked_rows, base_rows, strict=True)
        )
    count = {k: (len(picked) if k == "baseline_serial" else n) for k in timings}
    base = count["baseline_serial"] / timings["baseline_serial"] * 60
    base_cpu = count["baseline_serial"] / cpu["baseline_serial"] * 60
    for k, s in timings.items():
        m = count[k]
        res[f"{k}_s"] = s
        res[f"{k}_points_per_min"] = m / s * 60
        res[f"{k}_over_baseline"] = m / s * 60 / base
        # CPU time (this process, plus the Dask workers for the cluster): the wall time the
        # same work takes on an otherwise idle machine, one core for the serial paths, the
        # cores shared for the cluster
        cores = res["cores"] if k == "sweep_dask_warm" else 1
        res[f"{k}_cpu_s"] = cpu[k]
        res[f"{k}_points_per_cpu_min"] = m / cpu[k] * 60
        res[f"{k}_points_per_min_idle_estimate"] = m / (cpu[k] / cores) * 60
        res[f"{k}_cpu_over_baseline"] = m / cpu[k] * 60 / base_cpu
    res["load_average_at_end"] = os.getloadavg()[0]
    for k, v in res.items():
        print(f"{k:36s} {v:.4g}" if isinstance(v, float) else f"{k:36s} {v}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
