"""What-if: fabric link bandwidth and hop latency.

The fabric carries three things in weight streaming: each layer's weights, multicast down
every column (a column's PEs get their ``K/P x N`` slice over one link), the GEMM partial
sums reduce-scattered along each segment, and attention's K/V blocks multicast down each
sequence's chain of segments. This sweeps, one at a time around the preset,

* ``fabric.link_bits_per_cycle`` (8 - 128; the WSE-2 moves one 32-bit wavelet per link per
  cycle [HPDC24]), and
* ``fabric.hop_latency_cycles`` (1 - 64; 1 on the WSE-2 model [HPDC24], 2 measured on WSE-3
  [STUDY]),

at a small batch (few tokens per segment: the weight multicast is as long as the compute, so
the fabric shows) and at the published training batch, and reports throughput and the share
of the run the fabric is not hidden behind compute. Timing is ``analytic`` by default
(``--fidelity event`` for the SimPy model).

Writes ``link_bandwidth.csv``, ``hop_latency.csv`` and ``whatif_fabric.png`` into ``--out``.

Example::

    python experiments/whatif_fabric.py --model cerebras-gpt-111m --batches 8,120
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt_workload.plots import save
from gpt_workload.sweep import SweepSpec, open_client, run_sweep


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = argparse.ArgumentParser(
        description="Sweep fabric link bandwidth and hop latency; throughput and fabric share. "
        "Writes link_bandwidth.csv, hop_latency.csv and whatif_fabric.png."
    )
    p.add_argument("--model", default="cerebras-gpt-111m")
    p.add_argument("--arch", default="wse2")
    p.add_argument("--batches", default="8,120", help="comma-separated batches (sequences)")
    p.add_argument("--link-bits", default="8,16,32,64,128", help="bits per link per cycle")
    p.add_argument("--hop-cycles", default="1,2,4,8,16,32,64", help="cycles per hop")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--precision", default="fp16")
    p.add_argument("--fidelity", default="analytic")
    p.add_argument("--out", default="results/whatif_fabric", help="output directory")
    p.add_argument("--workers", type=int, default=None, help="local Dask workers (0 = serial)")
    p.add_argument("--scheduler", help="existing Dask scheduler, tcp://HOST:PORT")
    return p.parse_args(argv)


SWEEPS = (
    ("link_bandwidth", "fabric.link_bits_per_cycle", "link-bits"),
    ("hop_latency", "fabric.hop_latency_cycles", "hop-cycles"),
)


def run(args: argparse.Namespace) -> tuple[dict[str, list[dict]], object]:
    """Run both sweeps (one Dask client), write the CSVs and the PNG; returns (rows per
    sweep, figure)."""
    out = Path(args.out)
    batches = [int(b) for b in args.batches.split(",")]
    base = {
        "model": args.model,
        "arch": args.arch,
        "seq_len": args.seq_len,
        "precision": args.precision,
        "fidelity": args.fidelity,
    }
    results: dict[str, list[dict]] = {}
    with open_client(args.workers, args.scheduler) as client:
        for name, field, opt in SWEEPS:
            values = [int(v) for v in getattr(args, opt.replace("-", "_")).split(",")]
            spec = SweepSpec.from_dict(
                {"base": base, "grid": {field: values, "batch": batches}}, name=name
            )
            res = run_sweep(spec, output=out / f"{name}.csv", fmt="csv", workers=0, client=client)
            results[name] = res.table.to_pylist()
    fig = figure(args, results, batches)
    save(fig, out / "whatif_fabric.png")
    return results, fig


def figure(args, results, batches):
    """2 x 2 panels: throughput and fabric share vs link bandwidth and vs hop latency."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    for col, (name, field, _) in enumerate(SWEEPS):
        for i, b in enumerate(batches):
            pts = sorted(
                (r[field], r) for r in results[name] if r["batch"] == b and r["status"] == "ok"
            )
            xs = [x for x, _ in pts]
            axes[0, col].plot(
                xs,
                [r["tokens_per_s"] / 1e6 for _, r in pts],
                "-o",
                color=f"C{i}",
                label=f"batch {b}",
            )
            axes[1, col].plot(
                xs,
                [100 * r["fabric_s"] / r["simulated_time_s"] for _, r in pts],
                "-o",
                color=f"C{i}",
                label=f"batch {b}",
            )
        xlabel = (
            "link bandwidth (bits per link per cycle)"
            if field.endswith("link_bits_per_cycle")
            else "hop latency (cycles per hop)"
        )
        for row in range(2):
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0, col].set_ylabel("throughput (million tokens/s)")
        axes[1, col].set_ylabel("fabric not hidden by compute (% of run time)")
    axes[0, 0].axvline(32, color="k", ls=":", lw=1)
    axes[0, 1].axvline(1, color="k", ls=":", lw=1)
    fig.suptitle(
        f"{args.model} on {args.arch} (dotted: preset), {args.seq_len}-token sequences, "
        f"{args.precision}, {args.fidelity} timing"
    )
    return fig


def main(argv=None) -> int:
    """Run the experiment and print a summary; returns the exit status."""
    args = parse_args(argv)
    results, _ = run(args)
    for name, field, _ in SWEEPS:
        for r in results[name]:
            if r["status"] == "ok":
                share = r["fabric_s"] / r["simulated_time_s"]
                print(
                    f"{field}={r[field]:4d} batch {r['batch']:4d}: "
                    f"{r['tokens_per_s'] / 1e6:7.3f} M tokens/s, fabric {share:6.1%}"
                )
            else:
                print(f"{field}={r[field]:4d} batch {r['batch']:4d}: {r['error']}")
    out = Path(args.out)
    print(
        f"wrote {out / 'link_bandwidth.csv'}, {out / 'hop_latency.csv'}, "
        f"{out / 'whatif_fabric.png'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
