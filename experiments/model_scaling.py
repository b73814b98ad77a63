"""Model scaling: Cerebras-GPT 111M ... 13B on the WSE-2 and the WSE-3.

For every model and wafer, two points (timing only, ``analytic`` by default):

* ``published``: the model's published training batch (Dey et al. 2023; 111M: 120 ... 13B:
  720 sequences of 2,048 tokens), micro-batched where it does not fit one pass (each
  micro-batch streams every layer's weights again);
* ``max``: the largest batch that runs as one micro-batch.

Reports throughput, MFU, micro-batches and where the time goes (compute / fabric / weight-I/O
stall) per model. Writes ``model_scaling.csv`` and ``model_scaling.png`` into ``--out``.

Every option is checked before anything runs (:mod:`gpt_workload.experiment_args`): a bad
one is a one-line ``model_scaling.py: error: ...`` on stderr, exit status 2, nothing written.
Every ``--archs`` must hold one ``--seq-len`` sequence of every ``--models`` (the wafers do;
the small test grids ``grid8`` and ``grid32`` hold no Cerebras-GPT model), or the script
refuses it, naming the presets that do: a model x arch with no point at all has nothing to
plot.

Example::

    python experiments/model_scaling.py --archs wse2,wse3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gpt_workload.config import PUBLISHED_TRAINING, list_models
from gpt_workload.models import resolve_model
from gpt_workload.experiment_args import (
    ArgumentParser,
    add_run_options,
    check_arch,
    check_fidelity,
    check_fits,
    check_model,
    check_out_dir,
    check_precision,
    check_scheduler,
    check_seq_len,
    check_workers,
    connect_scheduler,
    fidelities_for,
    parse_names,
    run_main,
)
from gpt_workload.plots import save
from gpt_workload.sweep import SweepSpec, run_sweep

PROG = Path(__file__).name
PHASES = (
    ("compute_s", "compute", "#4c72b0"),
    ("fabric_s", "fabric", "#55a868"),
    ("stall_s", "weight-I/O stall", "#c44e52"),
    ("idle_s", "idle", "#8c8c8c"),
)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = ArgumentParser(
        prog=PROG,
        description="Cerebras-GPT 111M..13B on WSE-2 and WSE-3: throughput, MFU and time "
        "split at the published and the largest single-pass batch. Writes model_scaling.csv "
        "and model_scaling.png.",
    )
    p.add_argument(
        "--models",
        default=",".join(m.name for m in list_models()),
        help="comma-separated model presets or config.json paths (default: all Cerebras-GPT)",
    )
    p.add_argument(
        "--archs",
        default="wse2,wse3",
        help="comma-separated arch presets or TOML files, each holding one --seq-len sequence "
        "of every --models (default: %(default)s)",
    )
    add_run_options(p, seq_len=2048, out="results/model_scaling", models=True)
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    """Check every option before anything runs or is written, including that every arch
    holds one sequence of every model (cheap: the layout planner, no simulation).

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed.
    """
    models = parse_names("--models", args.models, "models")
    cfgs = [check_model("--models", m) for m in models]
    names = parse_names("--archs", args.archs, "archs")
    archs = [check_arch("--archs", a) for a in names]
    check_seq_len("--seq-len", args.seq_len, cfgs)
    check_precision("--precision", args.precision)
    check_fidelity("--fidelity", args.fidelity, fidelities_for(archs))
    for name, arch in zip(names, archs, strict=True):
        for cfg in cfgs:
            check_fits("--archs", name, cfg, arch, args.seq_len, args.precision)
    check_workers("--workers", args.workers)
    check_scheduler("--scheduler", args.scheduler)
    check_out_dir("--out", args.out)


def run(args: argparse.Namespace) -> tuple[list[dict], object]:
    """Run the sweep, write the CSV and the PNG; returns (rows, figure). The options are
    those :func:`validate` accepts (:func:`main` checks them first)."""
    out = Path(args.out)
    models = parse_names("--models", args.models)
    published = [
        PUBLISHED_TRAINING.get(resolve_model(m).name, {}).get("batch_sequences") for m in models
    ]
    # published batch per model (zip), or "max"; crossed with the archs
    spec = SweepSpec.from_dict(
        {
            "base": {
                "seq_len": args.seq_len,
                "precision": args.precision,
                "fidelity": args.fidelity,
            },
            "grid": {"arch": parse_names("--archs", args.archs)},
            "zip": [
                {
                    "model": models + models,
                    "batch": [b or "max" for b in published] + ["max"] * len(models),
                }
            ],
        },
        name="model_scaling",
    )
    with connect_scheduler(args.scheduler) as client:  # before anything is written
        res = run_sweep(
            spec, output=out / "model_scaling.csv", fmt="csv", workers=args.workers, client=client
        )
    rows = res.table.to_pylist()
    for r in rows:  # which of the two points this is, for readers of the CSV
        r["batch_kind"] = "max" if r["batch"] == "max" else "published"
    fig = figure(args, rows, models)
    save(fig, out / "model_scaling.png")
    return rows, fig


def figure(args, rows, models):
    """Three panels: tokens/s and MFU vs parameters, and the time split per model."""
    from matplotlib.figure import Figure

    params = {m: resolve_model(m).n_params for m in models}
    archs = parse_names("--archs", args.archs)
    fig = Figure(figsize=(17, 5), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for i, a in enumerate(archs):
        for kind, style in (("published", "-o"), ("max", "--s")):
            pts = [
                (params[r["model"]], r)
                for r in rows
                if r["arch"] == a and r["batch_kind"] == kind and r["status"] == "ok"
            ]
            pts.sort(key=lambda t: t[0])
            xs = [x for x, _ in pts]
            label = f"{a}, {'published batch' if kind == 'published' else 'largest single pass'}"
            ax1.plot(xs, [r["tokens_per_s"] for _, r in pts], style, color=f"C{i}", label=label)
            ax2.plot(xs, [100 * r["mfu"] for _, r in pts], style, color=f"C{i}", label=label)
    ax1.set_yscale("log")
    ax1.set_ylabel("throughput (tokens/s)")
    ax2.set_ylabel("MFU (% of peak FLOP/s)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("parameters (count)")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8)
    # time split at the published batch, per model x arch
    bars = [r for r in rows if r["batch_kind"] == "published" and r["status"] == "ok"]
    bars.sort(key=lambda r: (params[r["model"]], r["arch"]))
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for key, name, colour in PHASES:
        share = np.array([100 * r[key] / r["simulated_time_s"] for r in bars])
        ax3.bar(x, share, bottom=bottom, color=colour, label=name)
        bottom += share
    ax3.set_xticks(x)
    ax3.set_xticklabels(
        [f"{r['model'].replace('cerebras-gpt-', '')}\n{r['arch']}" for r in bars], fontsize=7
    )
    ax3.set_xlabel("model / arch (published batch)")
    ax3.set_ylabel("share of run time (%)")
    ax3.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Cerebras-GPT forward pass, {args.seq_len}-token sequences, {args.precision}, "
        f"{args.fidelity} timing"
    )
    return fig


def main(argv=None) -> int:
    """Check the options, run the experiment and print a summary; returns the exit status
    (2 and one line on stderr for a bad option, before anything runs or is written)."""

    def body() -> int:
        args = parse_args(argv)
        validate(args)
        rows, _ = run(args)
        for r in rows:
            if r["status"] == "ok":
                print(
                    f"{r['model']:18s} {r['arch']} {r['batch_kind']:9s} "
                    f"batch {r['batch_used']:5d} ({r['micro_batches']:2d} mb): "
                    f"{r['tokens_per_s'] / 1e6:8.3f} M tokens/s, MFU {r['mfu']:.1%}"
                )
            else:
                print(f"{r['model']:18s} {r['arch']} {r['batch_kind']}: {r['error']}")
        out = Path(args.out)
        print(f"wrote {out / 'model_scaling.csv'}, {out / 'model_scaling.png'}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
