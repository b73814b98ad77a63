"""Benchmark of the main job: wall time of the default run, timing and numerics apart, and
the numerics' FLOP rate as a ratio of NumPy's own float32 GEMM on the same shapes, measured
in the same process.

Usage:
    python benchmarks/bench_default_run.py [--model cerebras-gpt-111m] [--arch wse2]
        [--repeat 3] [--out benchmarks/results/default_run.json]

Prints a table and writes JSON. Nothing here asserts a time: machines are noisy; read the
ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from gpt_workload.config import forward_flops_per_token
from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.models import resolve_model
from gpt_workload.numerics import run_numerics
from gpt_workload.simulate import default_batch
from gpt_workload.weights import init_weights
from wse_sim.arch import load_arch
from wse_sim.precision import PRECISIONS
from wse_sim.timing.analytic import run_analytic
from wse_sim.timing.event import run_event


def numpy_gemm_seconds(cfg, T: int, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` seconds for NumPy float32 matmuls of the forward pass's GEMM shapes
    (per layer QKV, projection, FFN up and down; per head QK^T and PV; the LM head) and the
    FLOPs they perform."""
    rng = np.random.default_rng(0)
    d, ff, V, dh = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.d_head
    x = rng.standard_normal((T, d), dtype=np.float32)
    hid = rng.standard_normal((T, ff), dtype=np.float32)
    ws = {
        s: rng.standard_normal(s, dtype=np.float32)
        for s in [(d, 3 * d), (d, d), (d, ff), (ff, d), (d, V)]
    }
    q = rng.standard_normal((cfg.n_head, T, dh), dtype=np.float32)
    flops = (
        cfg.n_layer * (2 * T * d * (3 * d + d + 2 * ff) + cfg.n_head * 4 * T * T * dh)
        + 2 * T * d * V
    )
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _layer in range(cfg.n_layer):
            x @ ws[(d, 3 * d)]
            x @ ws[(d, d)]
            x @ ws[(d, ff)]
            hid @ ws[(ff, d)]
            s = q @ q.transpose(0, 2, 1)
            s @ q
        x @ ws[(d, V)]
        best = min(best, time.perf_counter() - t0)
    return best, float(flops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cerebras-gpt-111m")
    ap.add_argument("--arch", default="wse2")
    ap.add_argument("--precision", default="fp16", choices=PRECISIONS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/default_run.json")
    a = ap.parse_args()
    cfg, arch = resolve_model(a.model), load_arch(a.arch)
    T = min(2048, cfg.n_positions)
    batch = default_batch(cfg, arch, T, a.precision)
    res: dict = {
        "model": cfg.name,
        "arch": arch.name,
        "batch": batch,
        "seq_len": T,
        "machine": platform.processor() or platform.machine(),
    }

    t0 = time.perf_counter()
    prog = lower_weight_streaming(cfg, arch, batch, T, a.precision)
    res["lowering_s"] = time.perf_counter() - t0
    for name, fn in (("event", run_event), ("analytic", run_analytic)):
        best = float("inf")
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = fn(prog, arch)
            best = min(best, time.perf_counter() - t0)
        res[f"timing_{name}_s"] = best
        res[f"simulated_{name}_s"] = out.total_s
    res["pes_simulated"] = prog.rows * prog.cols

    w = init_weights(cfg, seed=0)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(1, T))
    run_numerics(prog, cfg, w, tokens)  # JIT compile + warm caches
    best = float("inf")
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        run_numerics(prog, cfg, w, tokens)
        best = min(best, time.perf_counter() - t0)
    flops = forward_flops_per_token(cfg, T)["total"] * T
    res["numerics_s"] = best
    res["numerics_gflops_per_s"] = flops / best / 1e9
    np_s, np_flops = numpy_gemm_seconds(cfg, T, a.repeat)
    res["numpy_gemm_s"] = np_s
    res["numpy_gemm_gflops_per_s"] = np_flops / np_s / 1e9
    res["numerics_rate_over_numpy_gemm"] = (
        res["numerics_gflops_per_s"] / res["numpy_gemm_gflops_per_s"]
    )
    for k, v in res.items():
        print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
