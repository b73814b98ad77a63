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

Writes ``whatif_sram.csv`` (the sweep table) and ``whatif_sram.png`` into ``--out``.

Example::

    python experiments/whatif_sram.py --models cerebras-gpt-111m,cerebras-gpt-1.3b
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt_workload.plots import save
from gpt_workload.sweep import SweepSpec, run_sweep

KIB = 1024


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = argparse.ArgumentParser(
        description="Sweep SRAM per PE (24-192 KiB): largest single micro-batch and throughput."
        " Writes whatif_sram.csv and whatif_sram.png."
    )
    p.add_argument(
        "--models",
        default="cerebras-gpt-111m,cerebras-gpt-1.3b",
        help="comma-separated model presets",
    )
    p.add_argument("--arch", default="wse2", help="arch preset or TOML")
    p.add_argument("--sram-kib", default="24,32,48,64,96,128,192", help="SRAM sizes per PE, KiB")
    p.add_argument("--batch", type=int, default=1024, help="fixed batch (sequences)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--fidelity", default="analytic")
    p.add_argument("--out", default="results/whatif_sram", help="output directory")
    p.add_argument("--workers", type=int, default=None, help="local Dask workers (0 = serial)")
    p.add_argument("--scheduler", help="existing Dask scheduler, tcp://HOST:PORT")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[list[dict], object]:
    """Run the sweep, write the CSV and the PNG; returns (rows, figure)."""
    out = Path(args.out)
    models = [m for m in args.models.split(",") if m]
    sizes = [int(float(k) * KIB) for k in args.sram_kib.split(",")]
    spec = SweepSpec.from_dict(
        {
            "base": {
                "arch": args.arch,
                "seq_len": args.seq_len,
                "precision": args.precision,
                "fidelity": args.fidelity,
            },
            "grid": {"model": models, "pe.sram_bytes": sizes, "batch": ["max", args.batch]},
        },
        name="whatif_sram",
    )
    res = run_sweep(
        spec,
        output=out / "whatif_sram.csv",
        fmt="csv",
        workers=args.workers,
        scheduler=args.scheduler,
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
    """Run the experiment and print a summary; returns the exit status."""
    args = parse_args(argv)
    rows, _ = run(args)
    for r in rows:
        what = (
            f"batch {r['batch_used']:5d} ({r['micro_batches']} micro-batch(es)), "
            f"{r['tokens_per_s'] / 1e6:7.3f} M tokens/s"
            if r["status"] == "ok"
            else r["error"]
        )
        print(f"{r['model']:18s} {r['pe.sram_bytes'] // KIB:4d} KiB batch={r['batch']:>4s}: {what}")
    print(f"wrote {Path(args.out) / 'whatif_sram.csv'}, {Path(args.out) / 'whatif_sram.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
