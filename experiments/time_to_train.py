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

from gpt_workload.config import PUBLISHED_TRAINING, forward_flops_per_token
from gpt_workload.models import resolve_model
from gpt_workload.experiment_args import (
    ArgumentParser,
    check_arch,
    check_system_count,
    check_out_dir,
    parse_ints,
    run_main,
)
from gpt_workload.training.train import time_training_step
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError

PROG = Path(__file__).name


def run(arch: str, systems: list[int], models: list[str], seq_len: int = 2048) -> list[dict]:
    """One row per (model, systems) with step time, steps, days, MFU and micro-batches."""
    a = load_arch(arch)
    rows = []
    for m in models:
        pub = PUBLISHED_TRAINING[m]
        cfg = resolve_model(m)
        batch = global_batch(m)
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
                    "activations": st.program.training.activations,
                }
            )
    return rows


def global_batch(model: str) -> int:
    """The published global batch (sequences) of ``model``; the 13B's ramp is taken at 1080."""
    if model.endswith("13b"):
        return 1080  # batch ramps 720 -> 1080; the final batch is taken
    return int(PUBLISHED_TRAINING[model]["batch_sequences"])


def parse_counts(opt: str, text: str) -> list[int]:
    """``"1,16"`` -> ``[1, 16]``.

    Raises:
        ConfigError: naming ``opt``, the value and what is allowed (integers >= 1).
    """
    return parse_ints(opt, text, 1, example="1,16")


def validate(args: argparse.Namespace) -> tuple[str, list[int], list[str], Path]:
    """Check every option before anything runs; returns (arch, systems, models, out).

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed.
    """
    arch = check_arch("--arch", args.arch)
    systems = parse_counts("--systems", args.systems)
    check_system_count("--systems", args.systems, systems, arch)
    models = [m.strip().lower() for m in args.models.split(",")]
    allowed = ", ".join(PUBLISHED_TRAINING)
    for m, given in zip(models, args.models.split(","), strict=True):
        if m not in PUBLISHED_TRAINING:
            raise ConfigError(
                f"--models {given.strip()!r} is not allowed: expected comma-separated presets "
                f"with a published training run, from {allowed}"
            )
    for m in models:
        if max(systems) > global_batch(m):
            raise ConfigError(
                f"--systems {max(systems)} is not allowed for {m}: at most its global batch of "
                f"{global_batch(m)} sequences (every system needs at least one sequence)"
            )
    out = check_out_dir("--out", args.out)
    return args.arch, systems, models, out


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
    p = ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--arch",
        default="wse2",
        help="arch preset (wse2, wse3, ...) or arch .toml file path (default: %(default)s)",
    )
    p.add_argument(
        "--systems",
        default="1,16",
        help="comma-separated numbers of systems (data-parallel over SwarmX), each >= 1 and <= "
        "the model's published global batch in sequences (default: %(default)s)",
    )
    p.add_argument(
        "--models",
        default=",".join(PUBLISHED_TRAINING),
        help="comma-separated Cerebras-GPT presets with a published training run "
        "(default: all of them: %(default)s)",
    )
    p.add_argument(
        "--out",
        default="results/time_to_train",
        help="output directory for time_to_train.csv and time_to_train.md, created if missing "
        "(default: %(default)s)",
    )

    def body() -> int:
        a = p.parse_args(argv)
        arch, systems, models, out = validate(a)
        rows = run(arch, systems, models)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "time_to_train.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (out / "time_to_train.md").write_text(markdown(rows))
        print(markdown(rows))
        print(f"wrote {out / 'time_to_train.csv'} and {out / 'time_to_train.md'}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
