"""Benchmark of the op-graph lowering (issue 12): lowering and event-timing wall seconds of
Llama-3.1-8B and -70B on ``wse3`` under ``weight_streaming``, as ratios of the default run
(Cerebras-GPT-111M on ``wse2``, gpt2's lowering) measured in the same process; and the
numerics' FLOP rate on a Llama-shaped model as a ratio of NumPy's float32 GEMM on the same
shapes.

Usage:
    python benchmarks/bench_families.py [--models llama-3.1-8b,llama-3.1-70b] [--arch wse3]
        [--repeat 1] [--out benchmarks/results/families.json]

Prints a table and writes JSON. Nothing here asserts a time: read the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np

from gpt_workload.mappings import parse_mapping
from gpt_workload.models import build_graph, init_model_weights, resolve_model
from gpt_workload.simulate import default_batch
from wse_sim.arch import load_arch
from wse_sim.precision import PRECISIONS
from wse_sim.timing.event import run_event

#: A Llama-shaped model small enough for the numerics on a laptop: GQA 4 query heads per
#: K/V head, SwiGLU d_ff = 3.5 d, untied head (shapes of Llama 3 scaled down).
NUMERICS_SHAPE = dict(n_layer=2, n_head=16, n_kv_heads=4, d_model=1024, d_ff=3584,
                      vocab_size=32000, rotary_dim=64)  # fmt: skip


def time_run(model: str, arch_name: str, precision: str, repeat: int) -> dict:
    """Best-of-``repeat`` lowering and event-timing wall seconds at the default batch."""
    cfg, arch = resolve_model(model), load_arch(arch_name)
    T = min(2048, cfg.n_positions)
    ws = parse_mapping("weight_streaming")
    batch = default_batch(cfg, arch, T, precision)
    low = ev = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        prog = ws.lower(cfg, arch, batch, T, precision)
        t1 = time.perf_counter()
        timing = run_event(prog, arch)
        t2 = time.perf_counter()
        low, ev = min(low, t1 - t0), min(ev, t2 - t1)
    total = timing.total_s
    mfu = prog.flops / (total * arch.peak_flops_per_s(precision))
    return {"model": cfg.name, "arch": arch.name, "batch": batch, "seq_len": T,
            "kernels": len(prog.kernels), "lowering_wall_s": low, "event_wall_s": ev,
            "simulated_time_s": total, "mfu": mfu}  # fmt: skip


def numerics_rate(T: int, repeat: int) -> dict:
    """The graph numerics' matrix FLOP rate on :data:`NUMERICS_SHAPE` and NumPy's float32
    GEMM rate on the same products (per layer Q, K, V, O, gate, up, down; per head QK^T and
    PV; the LM head), best of ``repeat``."""
    base = resolve_model("llama-3.1-8b")
    cfg = dataclasses.replace(base, name="llama-shaped", n_positions=T, **NUMERICS_SHAPE)
    w = init_model_weights(cfg, 0)
    arch = load_arch("wse3")
    ws = parse_mapping("weight_streaming")
    prog = ws.lower(cfg, arch, 1, T, "fp32")
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(1, T))
    flops = build_graph(cfg).forward_flops(1, T)["matrix"]
    ws.numerics(prog, cfg, w, tokens, "fp32")  # compile
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        ws.numerics(prog, cfg, w, tokens, "fp32")
        best = min(best, time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    d, kv, ff, V, dh, H = (cfg.d_model, cfg.kv_dim, cfg.d_ff, cfg.vocab_size, cfg.d_head,
                           cfg.n_head)  # fmt: skip
    x = rng.standard_normal((T, d), dtype=np.float32)
    hid = rng.standard_normal((T, ff), dtype=np.float32)
    mats = [rng.standard_normal(s, dtype=np.float32) for s in ((d, d), (d, kv), (d, ff))]
    down = rng.standard_normal((ff, d), dtype=np.float32)
    head = rng.standard_normal((d, V), dtype=np.float32)
    q = rng.standard_normal((H, T, dh), dtype=np.float32)
    np_best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _layer in range(cfg.n_layer):
            for mat, n in ((mats[0], 2), (mats[1], 2), (mats[2], 2)):
                for _ in range(n):
                    x @ mat
            hid @ down
            (q @ q.transpose(0, 2, 1)) @ q
        x @ head
        np_best = min(np_best, time.perf_counter() - t0)
    np_flops = cfg.n_layer * (2 * T * (2 * d * d + 2 * d * kv + 3 * d * ff) + 4 * H * T * T * dh)
    np_flops += 2 * T * d * V
    return {"shape": {**NUMERICS_SHAPE, "seq_len": T}, "numerics_wall_s": best,
            "numerics_flops_per_s": flops / best, "numpy_gemm_flops_per_s": np_flops / np_best,
            "ratio_numerics_over_numpy": (flops / best) / (np_flops / np_best)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama-3.1-8b,llama-3.1-70b")
    ap.add_argument("--arch", default="wse3")
    ap.add_argument("--precision", default="fp16", choices=PRECISIONS)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--numerics-seq-len", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results/families.json")
    a = ap.parse_args()
    base = time_run("cerebras-gpt-111m", "wse2", a.precision, max(a.repeat, 3))
    rows = [time_run(m, a.arch, a.precision, a.repeat) for m in a.models.split(",")]
    for r in rows:
        r["lowering_over_default"] = r["lowering_wall_s"] / base["lowering_wall_s"]
        r["event_over_default"] = r["event_wall_s"] / base["event_wall_s"]
    num = numerics_rate(a.numerics_seq_len, 2)
    print(f"{'model':<20} {'arch':<6} {'batch':>5} {'kernels':>7} {'lower s':>8} {'event s':>8} "
          f"{'x default':>9} {'sim ms':>9} {'MFU':>6}")  # fmt: skip
    for r in [base, *rows]:
        x = r.get("event_over_default", 1.0)
        print(f"{r['model']:<20} {r['arch']:<6} {r['batch']:>5} {r['kernels']:>7} "
              f"{r['lowering_wall_s']:>8.2f} {r['event_wall_s']:>8.2f} {x:>9.1f} "
              f"{r['simulated_time_s'] * 1e3:>9.2f} {r['mfu']:>6.1%}")  # fmt: skip
    print(f"numerics on {num['shape']}: {num['numerics_flops_per_s'] / 1e9:.2f} GFLOP/s, "
          f"NumPy GEMM {num['numpy_gemm_flops_per_s'] / 1e9:.2f} GFLOP/s, ratio "
          f"{num['ratio_numerics_over_numpy']:.3f}")  # fmt: skip
    out = {"machine": platform.platform(), "processor": platform.processor(),
           "default": base, "families": rows, "numerics": num}  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
