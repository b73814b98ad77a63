"""What-if: SRAM per PE from 24 to 192 KiB - the largest micro-batch and the throughput.

Weight streaming keeps activations resident in PE SRAM (the residual stream, a layer's
temporaries and a GEMM accumulator per PE) and spreads the buffered weight blocks over every
PE. More SRAM per PE means more tokens per segment, so more sequences per micro-batch: fewer
weight passes for a given batch, and more work per weight byte.

For every SRAM size and model this runs two points (timing only, ``analytic`` by default):

* ``batch = "max"``: the largest batch that still runs as one micro-batch, and its
  throughput;
* ``batch = --batch`` (default 1,024 sequences): the throughput at a fixed batch,
  micro-batched when it does not fit one pass (each micro-batch streams the weights again).

Assumption: the runtime keeps its 4,176 B per PE ([STUDY]) whatever the SRAM size; only
``pe.sram_bytes`` changes. A model that cannot fit one sequence is reported as an error row.

Every option is checked before anything runs (:mod:`gpt_workload.experiment_args`): a bad
one is a one-line ``whatif_sram.py: error: ...`` on stderr, exit status 2, nothing written.

Writes ``whatif_sram.csv`` (the sweep table) and ``whatif_sram.png`` into ``--out``.

Example::

    python experiments/whatif_sram.py --models cerebras-gpt-111m,cerebras-gpt-1.3b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt_workload.experiment_args import (
    ArgumentParser,
    add_run_options,
    check_arch,
    check_arch_field,
    check_fidelity,
    check_int,
    check_model,
    check_out_dir,
    check_precision,
    check_scheduler,
    check_seq_len,
    check_workers,
    connect_scheduler,
    fidelities_for,
    parse_floats,
    parse_names,
    run_main,
)
from gpt_workload.plots import save
from gpt_workload.simulate import MAX_BATCH
from gpt_workload.sweep import SweepSpec, run_sweep

PROG = Path(__file__).name
KIB = 1024


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = ArgumentParser(
        prog=PROG,
        description="Sweep SRAM per PE (24-192 KiB): largest single micro-batch and throughput."
        " Writes whatif_sram.csv and whatif_sram.png.",
    )
    p.add_argument(
        "--models",
        default="cerebras-gpt-111m,cerebras-gpt-1.3b",
        help="comma-separated model presets or config.json paths (default: %(default)s)",
    )
    p.add_argument("--arch", default="wse2", help="arch preset or TOML file (default: %(default)s)")
    p.add_argument(
        "--sram-kib",
        default="24,32,48,64,96,128,192",
        help="comma-separated SRAM sizes per PE in KiB, finite and > the runtime's reserved "
        "SRAM (default: %(default)s)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=1024,
        help=f"fixed batch (sequences), 1..{MAX_BATCH} (default: %(default)s)",
    )
    add_run_options(p, seq_len=2048, out="results/whatif_sram", models=True)
    return p.parse_args(argv)


def sram_sizes(args: argparse.Namespace) -> list[int]:
    """``--sram-kib`` in bytes (``int(KiB x 1024)``).

    Raises:
        ConfigError: not a list of finite numbers > 0.
    """
    return [int(k * KIB) for k in parse_floats("--sram-kib", args.sram_kib, 0, lo_open=True)]


def validate(args: argparse.Namespace) -> None:
    """Check every option before anything runs or is written.

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed.
    """
    cfgs = [check_model("--models", m) for m in parse_names("--models", args.models, "models")]
    arch = check_arch("--arch", args.arch)
    sizes = sram_sizes(args)
    texts = [t.strip() for t in args.sram_kib.split(",")]
    for text, size in zip(texts, sizes, strict=True):
        check_arch_field("--sram-kib", text, arch, "pe.sram_bytes", size)
    check_int("--batch", args.batch, 1, MAX_BATCH)
    check_seq_len("--seq-len", args.seq_len, cfgs)
    check_precision("--precision", args.precision)
    check_fidelity("--fidelity", args.fidelity, fidelities_for([arch]))
    check_workers("--workers", args.workers)
    check_scheduler("--scheduler", args.scheduler)
    check_out_dir("--out", args.out)


def run(args: argparse.Namespace) -> tuple[list[dict], object]:
    """Run the sweep, write the CSV and the PNG; returns (rows, figure). The options are
    those :func:`validate` accepts (:func:`main` checks them first)."""
    out = Path(args.out)
    models = parse_names("--models", args.models)
    sizes = sram_sizes(args)
    spec = SweepSpec.from_dict(
        {
            "base": {
                "arch": args.arch,
                "seq_len": args.seq_len,
                "precision": args.precision,
                "fidelity": args.fidelity,
                # the layout whose SRAM limits this studies (P = n_head, widest spread); the
                # default mapping would also search wider segments (less SRAM per PE)
                "mapping": "weight_streaming:pes_per_segment=heads",
            },
            "grid": {"model": models, "pe.sram_bytes": sizes, "batch": ["max", args.batch]},
        },
        name="whatif_sram",
    )
    with connect_scheduler(args.scheduler) as client:  # before anything is written
        res = run_sweep(
            spec, output=out / "whatif_sram.csv", fmt="csv", workers=args.workers, client=client
        )
    rows = res.table.to_pylist()
    fig = figure(args, rows, models)
    save(fig, out / "whatif_sram.png")
    return rows, fig


def figure(args, rows, models):
    """Two panels: the largest single micro-batch, and throughput, vs SRAM per PE."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for i, m in enumerate(models):
        c = f"C{i}"
        for kind, style in (("max", "-o"), (str(args.batch), "--s")):
            pts = sorted(
                (r["pe.sram_bytes"] / KIB, r)
                for r in rows
                if r["model"] == m and r["batch"] == kind and r["status"] == "ok"
            )
            if not pts:
                continue
            xs = [x for x, _ in pts]
            if kind == "max":
                ax1.plot(xs, [r["batch_used"] for _, r in pts], style, color=c, label=m)
                label = f"{m}, largest single micro-batch"
            else:
                label = f"{m}, batch {args.batch} (micro-batched if needed)"
            ax2.plot(xs, [r["tokens_per_s"] / 1e6 for _, r in pts], style, color=c, label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("SRAM per PE (KiB)")
        ax.set_xticks([24, 32, 48, 64, 96, 128, 192])
        ax.set_xticklabels(["24", "32", "48", "64", "96", "128", "192"])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax1.set_yscale("log")
    ax2.set_yscale("log")
    ax1.set_ylabel("largest single micro-batch (sequences)")
    ax1.set_title("how many sequences fit one pass")
    ax2.set_ylabel("throughput (million tokens/s)")
    ax2.set_title("forward throughput")
    fig.suptitle(
        f"SRAM per PE on {args.arch}: {args.seq_len}-token sequences, {args.precision}, "
        f"{args.fidelity} timing (48 KiB = WSE-2/3)"
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
            what = (
                f"batch {r['batch_used']:5d} ({r['micro_batches']} micro-batch(es)), "
                f"{r['tokens_per_s'] / 1e6:7.3f} M tokens/s"
                if r["status"] == "ok"
                else r["error"]
            )
            kib = r["pe.sram_bytes"] / KIB
            print(f"{r['model']:18s} {kib:4g} KiB batch={r['batch']:>4s}: {what}")
        out = Path(args.out)
        print(f"wrote {out / 'whatif_sram.csv'}, {out / 'whatif_sram.png'}")
        if not any(r["status"] == "ok" for r in rows):
            print(f"{PROG}: error: no point fits (see the rows above)", file=sys.stderr)
            return 2
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
