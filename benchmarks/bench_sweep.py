"""Benchmark of sweeps: points per minute at ``analytic`` fidelity, Dask sweep vs a plain
serial loop over the same points, measured in the same process.

Measured, on the same points (Cerebras-GPT-111M on the WSE-2, a grid of SRAM per PE x batch x
I/O bandwidth):

* ``serial_loop``: ``for point: simulate(...)``, nothing written;
* ``sweep_serial``: ``run_sweep(workers=0)``: the same loop plus the resumable part files
  (write, fsync, rename per point) and the final table;
* ``sweep_dask_cold``: ``run_sweep()`` on a fresh local cluster (one worker process per core),
  cluster start-up included;
* ``sweep_dask_warm``: the same on an already running cluster.

Usage:
    python benchmarks/bench_sweep.py [--points 160] [--out benchmarks/results/sweep.json]

Prints a table and writes JSON. Nothing here asserts a time: machines are noisy; read the
ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from gpt_workload.simulate import simulate
from gpt_workload.sweep import SweepSpec, default_workers, open_client, run_sweep


def make_spec(n_points: int) -> SweepSpec:
    """About ``n_points`` points: SRAM per PE x batch x I/O bandwidth."""
    srams = [32768, 49152, 65536, 98304]
    batches = [8, 30, 60, 120, 240]
    n_io = max(1, round(n_points / (len(srams) * len(batches))))
    return SweepSpec.from_dict(
        {
            "base": {"model": "cerebras-gpt-111m", "arch": "wse2", "fidelity": "analytic"},
            "grid": {
                "pe.sram_bytes": srams,
                "batch": batches,
                "io.ingress_bytes_per_s": [150e9 * (0.5 + 0.25 * i) for i in range(n_io)],
            },
        },
        name="bench",
    )


def serial_loop(spec: SweepSpec) -> float:
    """Seconds for a plain loop of simulate() over the spec's points."""
    t0 = time.perf_counter()
    for p in spec.points:
        overrides = [
            f"{k}={v!r}" for k, v in p.items() if k.startswith(("pe.", "io.")) and v is not None
        ]
        simulate(
            p["model"],
            p["arch"],
            fidelity=p["fidelity"],
            precision=p["precision"],
            batch=p["batch"],
            check_sequences=0,
            overrides=overrides,
            reference=False,
        )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=160)
    ap.add_argument("--out", default="benchmarks/results/sweep.json")
    a = ap.parse_args()
    spec = make_spec(a.points)
    n = len(spec.points)
    res: dict = {
        "points": n,
        "fidelity": "analytic",
        "model": "cerebras-gpt-111m",
        "arch": "wse2",
        "cores": default_workers(),
        "machine": platform.processor() or platform.machine(),
    }
    simulate("cerebras-gpt-111m", "wse2", fidelity="analytic", check_sequences=0)  # warm up
    timings = {"serial_loop": serial_loop(spec)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_sweep(spec, output=Path(tmp, "serial.parquet"), workers=0)
        timings["sweep_serial"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_sweep(spec, output=Path(tmp, "cold.parquet"))
        timings["sweep_dask_cold"] = time.perf_counter() - t0
        with open_client() as client:
            run_sweep(make_spec(8), output=Path(tmp, "warmup.parquet"), client=client)
            t0 = time.perf_counter()
            run_sweep(spec, output=Path(tmp, "warm.parquet"), client=client)
            timings["sweep_dask_warm"] = time.perf_counter() - t0
    base = n / timings["serial_loop"] * 60
    for k, s in timings.items():
        res[f"{k}_s"] = s
        res[f"{k}_points_per_min"] = n / s * 60
        res[f"{k}_over_serial_loop"] = n / s * 60 / base
    for k, v in res.items():
        print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
