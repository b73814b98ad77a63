"""Time to train each Cerebras-GPT model with its published batch and token budget.

For every Cerebras-GPT preset (111M ... 13B; batch, steps and tokens from
:data:`gpt_workload.config.PUBLISHED_TRAINING`, i.e. Dey et al. 2023, arXiv 2304.03208) one
training step (``batch`` sequences of 2,048 tokens, fp16) is timed on ``--arch`` (analytic
fidelity) with 1 and 16 systems (``--systems``), and

    days = published steps x simulated step time / 86,400 s.

Assumptions (also in the README): every step is identical (the 13B's batch ramp 720 -> 1080
is taken at 1080); the simulated machine's unpublished figures (SwarmX bandwidth and
latency, MemoryX optimizer throughput) are the presets' stated assumptions; steps do not
overlap (the next step's first weight block, the embedding, waits for its update, which is
the step's last); no checkpointing, evaluation or data loading time; the per-PE cost model,
activation recomputation and micro-batching are the training lowering's
(:mod:`gpt_workload.training.lowering`). The paper trained all seven models on the
16-system Andromeda cluster but published no time to train, so there is nothing to compare
with.

Writes ``time_to_train.csv`` and ``time_to_train.md`` (a markdown table) into ``--out``.

Example::

    python experiments/time_to_train.py --out results/ttt
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from gpt_workload.config import PUBLISHED_TRAINING, forward_flops_per_token, resolve_model
from gpt_workload.training.train import time_training_step
from wse_sim.arch import load_arch


def run(arch: str, systems: list[int], models: list[str], seq_len: int = 2048) -> list[dict]:
    """One row per (model, systems) with step time, steps, days, MFU and micro-batches."""
    a = load_arch(arch)
    rows = []
    for m in models:
        pub = PUBLISHED_TRAINING[m]
        cfg = resolve_model(m)
        batch = int(pub["batch_sequences"])
        if m.endswith("13b"):
            batch = 1080  # batch ramps 720 -> 1080; the final batch is taken
        fpt = forward_flops_per_token(cfg, seq_len)["total"]
        for s in systems:
            st = time_training_step(cfg, a, batch, seq_len, "fp16", s, "analytic")
            steps = int(pub["steps"])
            rows.append(
                {
                    "model": m,
                    "systems": s,
                    "batch": batch,
                    "steps": steps,
                    "tokens": pub["tokens"],
                    "step_time_s": st.step_time_s,
                    "days": steps * st.step_time_s / 86400.0,
                    "mfu": 3
                    * fpt
                    * batch
                    * seq_len
                    / (st.step_time_s * s * a.peak_flops_per_s("fp16")),
                    "micro_batches_per_system": st.micro_batches,
                    "activations": st.program.meta["training"]["activations"],
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    out = [
        "| Model | Systems | Batch | Steps | Step time (s) | Days | MFU | Micro-batches/system |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['systems']} | {r['batch']} | {r['steps']:,} | "
            f"{r['step_time_s']:.3f} | {r['days']:.2f} | {r['mfu']:.1%} | "
            f"{r['micro_batches_per_system']} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line; writes the CSV and the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wse2")
    p.add_argument("--systems", default="1,16", help="comma-separated system counts")
    p.add_argument("--models", default=",".join(PUBLISHED_TRAINING), help="comma-separated presets")
    p.add_argument("--out", default="results/time_to_train")
    a = p.parse_args(argv)
    rows = run(a.arch, [int(x) for x in a.systems.split(",")], a.models.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "time_to_train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "time_to_train.md").write_text(markdown(rows))
    print(markdown(rows))
    print(f"wrote {out / 'time_to_train.csv'} and {out / 'time_to_train.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
