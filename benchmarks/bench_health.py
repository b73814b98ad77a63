"""Benchmark of the numerical-health checks: the forward numerics of one sequence with the
:class:`gpt_workload.health.HealthTracker` checking every stored tensor, against the same
numerics with the checks replaced by no-ops, in the same process (best of ``--repeat``,
alternating so that machine noise hits both).

Usage:
    python benchmarks/bench_health.py [--model cerebras-gpt-111m] [--seq-len 512]
        [--repeat 3] [--out benchmarks/results/health.json]

Prints the two times and their ratio and writes JSON. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from gpt_workload import health
from gpt_workload.models import resolve_model
from gpt_workload.numerics import run_numerics
from gpt_workload.precision import round_storage
from gpt_workload.simulate import parse_mapping
from gpt_workload.weights import init_weights
from wse_sim.arch import load_arch
from wse_sim.precision import PRECISIONS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cerebras-gpt-111m")
    ap.add_argument("--arch", default="wse2")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--precision", default="fp16", choices=PRECISIONS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/health.json")
    a = ap.parse_args()
    cfg = resolve_model(a.model)
    arch = load_arch(a.arch)
    prog = parse_mapping("weight_streaming").lower(cfg, arch, 1, a.seq_len, a.precision)
    w = init_weights(cfg, 0)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(1, a.seq_len))
    run_numerics(prog, cfg, w, tokens, a.precision)  # JIT warm-up

    real = (health.HealthTracker.check, health.HealthTracker.check_weights)

    def off():
        health.HealthTracker.check = lambda self, *args, **kw: True
        health.HealthTracker.check_weights = lambda self, weights: True

    def on():
        health.HealthTracker.check, health.HealthTracker.check_weights = real

    best = {"checked": float("inf"), "unchecked": float("inf")}
    checked = 0
    for _ in range(a.repeat):
        for mode in ("checked", "unchecked"):
            on() if mode == "checked" else off()
            t0 = time.perf_counter()
            res = run_numerics(prog, cfg, w, tokens, a.precision)
            best[mode] = min(best[mode], time.perf_counter() - t0)
            if mode == "checked":
                checked = res.health.checked
    on()
    # the checks' own cost, isolated: one fast-path sum per stored tensor of the run
    x = round_storage(np.random.default_rng(2).standard_normal((a.seq_len, cfg.d_ff)), "fp16")
    tr = health.HealthTracker(a.precision)
    t0 = time.perf_counter()
    for _ in range(100):
        tr.check("x", 0, x)
    per_mb = (time.perf_counter() - t0) / 100 / (x.nbytes / 1e6)
    res = {
        "model": a.model,
        "seq_len": a.seq_len,
        "precision": a.precision,
        "tensors_checked_per_run": checked,
        "numerics_checked_s": best["checked"],
        "numerics_unchecked_s": best["unchecked"],
        "checked_over_unchecked": best["checked"] / best["unchecked"],
        "check_s_per_MB": per_mb,
        "host": platform.platform(),
        "cpus": __import__("os").cpu_count(),
    }
    for k, v in res.items():
        print(f"{k:>24}: {v}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
