"""Data-parallel scaling over SwarmX: training throughput vs number of systems.

For ``S = 1, 2, 4, 8, 16`` systems (``--systems``) a training step of ``--model`` (default
Cerebras-GPT-1.3B with its published global batch of 528 sequences of 2,048 tokens) is timed
on ``--arch`` (analytic fidelity, for speed) at the preset SwarmX bandwidth and at that
bandwidth divided by ``--cut`` (default 10). The global batch is split over the systems
(``ceil(batch / S)`` each); weights are broadcast and gradients reduced through a pipelined
binary SwarmX tree (:mod:`gpt_workload.training.train` states the formula and the assumed
SwarmX figures). With a cut SwarmX, the per-step weight broadcast and gradient reduce no
longer shrink with ``S`` while the compute does, so throughput scales sub-linearly and
approaches ``batch / (weight bytes streamed per step / min(ingress, swarmx))``.

Writes ``scaling_systems.csv`` (one row per (bandwidth, S): step time, samples/s, tokens/s,
speed-up over S = 1, MFU, micro-batches) and ``scaling_systems.png`` into ``--out``.

Example::

    python experiments/scaling_systems.py --out results/scaling
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from gpt_workload.config import PUBLISHED_TRAINING, forward_flops_per_token
from gpt_workload.models import resolve_model
from gpt_workload.experiment_args import (
    ArgumentParser,
    check_arch,
    check_arch_field,
    check_int,
    check_model,
    check_system_count,
    check_out_dir,
    parse_ints,
    run_main,
)
from gpt_workload.plots import save
from gpt_workload.simulate import MAX_BATCH
from gpt_workload.training.train import time_training_step
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError

PROG = Path(__file__).name


def run(model: str, arch: str, systems: list[int], cut: float, seq_len: int, batch: int | None):
    """Rows ``{"swarmx_bytes_per_s", "systems", "step_time_s", "samples_per_s", ...}``."""
    cfg = resolve_model(model)
    base = load_arch(arch)
    if batch is None:
        batch = default_batch(cfg.name)
    fpt = forward_flops_per_token(cfg, seq_len)["total"]
    rows = []
    for label, factor in (("preset", 1.0), (f"preset / {cut:g}", 1.0 / cut)):
        bw = base.io.swarmx_bytes_per_s * factor
        a = base.with_overrides([f"io.swarmx_bytes_per_s={bw!r}"])
        for s in systems:
            st = time_training_step(cfg, a, batch, seq_len, "fp16", s, "analytic")
            rows.append(
                {
                    "swarmx": label,
                    "swarmx_bytes_per_s": bw,
                    "systems": s,
                    "batch": batch,
                    "step_time_s": st.step_time_s,
                    "samples_per_s": batch / st.step_time_s,
                    "tokens_per_s": batch * seq_len / st.step_time_s,
                    "mfu": 3
                    * fpt
                    * batch
                    * seq_len
                    / (st.step_time_s * s * a.peak_flops_per_s("fp16")),
                    "micro_batches_per_system": st.micro_batches,
                }
            )
        first = rows[-len(systems)]["samples_per_s"]
        for r in rows[-len(systems) :]:
            r["speedup"] = r["samples_per_s"] / first
    return rows


def default_batch(name: str) -> int:
    """The published global batch of preset ``name`` (sequences); 64 for other models."""
    return int(PUBLISHED_TRAINING.get(name, {"batch_sequences": 64})["batch_sequences"])


def parse_counts(opt: str, text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``.

    Raises:
        ConfigError: naming ``opt``, the value and what is allowed (integers >= 1).
    """
    return parse_ints(opt, text, 1, example="1,2,4,8,16")


def validate(args: argparse.Namespace) -> tuple[list[int], Path]:
    """Check every option before anything runs; returns (systems, out).

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed.
    """
    cfg = check_model("--model", args.model)
    arch = check_arch("--arch", args.arch)
    systems = parse_counts("--systems", args.systems)
    check_system_count("--systems", args.systems, systems, arch)
    if not (math.isfinite(args.cut) and args.cut > 0):
        raise ConfigError(f"--cut {args.cut!r} is not allowed: expected a finite number > 0")
    bw = arch.io.swarmx_bytes_per_s / args.cut
    check_arch_field("--cut", args.cut, arch, "io.swarmx_bytes_per_s", bw)
    if not 2 <= args.seq_len <= cfg.n_positions:
        raise ConfigError(
            f"--seq-len {args.seq_len} is not allowed: expected an integer in "
            f"2..{cfg.n_positions} (n_positions of {cfg.name})"
        )
    if args.batch is not None:
        check_int("--batch", args.batch, 1, MAX_BATCH)
    batch = default_batch(cfg.name) if args.batch is None else args.batch
    if max(systems) > batch:
        raise ConfigError(
            f"--systems {max(systems)} is not allowed: at most the global batch of {batch} "
            "sequences (--batch; every system needs at least one sequence)"
        )
    out = check_out_dir("--out", args.out)
    return systems, out


def main(argv: list[str] | None = None) -> int:
    """Command line; writes the CSV and the PNG."""
    p = ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--model",
        default="cerebras-gpt-1.3b",
        help="model preset (wse-sim models list) or config.json path (default: %(default)s)",
    )
    p.add_argument(
        "--arch",
        default="wse2",
        help="arch preset (wse2, wse3, ...) or arch .toml file path (default: %(default)s)",
    )
    p.add_argument(
        "--systems",
        default="1,2,4,8,16",
        help="comma-separated numbers of systems S (data-parallel over SwarmX), each >= 1 and "
        "<= the global batch (default: %(default)s)",
    )
    p.add_argument(
        "--cut",
        type=float,
        default=10.0,
        help="divisor (> 0) of the preset SwarmX bandwidth (bytes/s) for the second curve "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=2048,
        help="tokens per sequence, 2..the model's n_positions (default: %(default)s)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="global batch in sequences, split over the systems (default: the model's "
        "published batch, 64 for a model without one)",
    )
    p.add_argument(
        "--out",
        default="results/scaling_systems",
        help="output directory for scaling_systems.csv and scaling_systems.png, created if "
        "missing (default: %(default)s)",
    )

    def body() -> int:
        a = p.parse_args(argv)
        systems, out = validate(a)
        rows = run(a.model, a.arch, systems, a.cut, a.seq_len, a.batch)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "scaling_systems.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        png = save(figure(a, rows, systems), out / "scaling_systems.png")
        print(f"wrote {out / 'scaling_systems.csv'} and {png}")
        return 0

    return run_main(PROG, body)


def figure(a: argparse.Namespace, rows: list[dict], systems: list[int]):
    """Samples/s vs systems, one curve per SwarmX bandwidth, and linear scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in dict.fromkeys(r["swarmx"] for r in rows):
        rs = [r for r in rows if r["swarmx"] == label]
        bw = rs[0]["swarmx_bytes_per_s"] / 1e9
        ax.plot([r["systems"] for r in rs], [r["samples_per_s"] for r in rs], "o-",
                label=f"SwarmX {bw:g} GB/s ({label})")  # fmt: skip
    r0 = rows[0]
    ax.plot(systems, [r0["samples_per_s"] * s / systems[0] for s in systems], "k:",
            label="linear scaling")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("systems S (data parallel)")
    ax.set_ylabel("training throughput (samples/s)")
    ax.set_title(f"{a.model} on {a.arch}, batch {r0['batch']} x {a.seq_len} tokens")
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
