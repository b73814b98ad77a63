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

Why the link-bandwidth curves are flat above 32 bit/cycle: every wavelet a PE sends or
receives also crosses its RAMP, the port between the PE and its router, and the presets
model that port at ``fabric.ramp_wavelets_per_cycle`` = 1 wavelet (4 B = 32 bit) per cycle
each way (not published; assumed equal to a link). Above 32 bit/cycle the link is no longer
the narrowest point: the RAMP is, so wider links change nothing. To see what wider links
would buy with a faster port, give ``--ramp-wavelets`` (e.g. ``1,2,4``): the link-bandwidth
sweep is then crossed with those RAMP rates (the hop-latency sweep stays at the preset's). The
same override works in any sweep spec or run (``fabric.ramp_wavelets_per_cycle = 4``,
``wse-sim run --set fabric.ramp_wavelets_per_cycle=4``). Without ``--ramp-wavelets`` the
points, and so the results, are the preset's.

Every option is checked before anything runs (:mod:`gpt_workload.experiment_args`): a bad
one is a one-line ``whatif_fabric.py: error: ...`` on stderr, exit status 2, nothing written.

Writes ``link_bandwidth.csv``, ``hop_latency.csv`` and ``whatif_fabric.png`` into ``--out``.

Example::

    python experiments/whatif_fabric.py --model cerebras-gpt-111m --batches 8,120
    python experiments/whatif_fabric.py --ramp-wavelets 1,4 --out results/whatif_fabric_ramp
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt_workload.experiment_args import (
    ArgumentParser,
    add_run_options,
    check_arch,
    check_arch_field,
    check_fidelity,
    check_fits,
    check_model,
    check_out_dir,
    check_precision,
    check_scheduler,
    check_seq_len,
    check_workers,
    fidelities_for,
    parse_floats,
    parse_ints,
    run_main,
)
from gpt_workload.plots import save
from gpt_workload.simulate import MAX_BATCH
from gpt_workload.sweep import SweepSpec, open_client, run_sweep

PROG = Path(__file__).name
RAMP_FIELD = "fabric.ramp_wavelets_per_cycle"
WAVELET_BITS = 32  # one wavelet is 4 bytes


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = ArgumentParser(
        prog=PROG,
        description="Sweep fabric link bandwidth and hop latency; throughput and fabric share. "
        "Writes link_bandwidth.csv, hop_latency.csv and whatif_fabric.png. Link bandwidth "
        "above 32 bit/cycle changes nothing at the presets' RAMP rate (the PE<->router port, "
        "fabric.ramp_wavelets_per_cycle = 1 wavelet of 4 B per cycle); --ramp-wavelets "
        "lifts it.",
    )
    p.add_argument(
        "--model",
        default="cerebras-gpt-111m",
        help="model preset or config.json path (default: %(default)s)",
    )
    p.add_argument("--arch", default="wse2", help="arch preset or TOML file (default: %(default)s)")
    p.add_argument(
        "--batches",
        default="8,120",
        help=f"comma-separated batches (sequences), each 1..{MAX_BATCH} (default: %(default)s)",
    )
    p.add_argument(
        "--link-bits",
        default="8,16,32,64,128",
        help="comma-separated link bandwidths, bits per link per cycle, each 1..4096 "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--hop-cycles",
        default="1,2,4,8,16,32,64",
        help="comma-separated hop latencies, cycles per hop, each 0..1000 (default: %(default)s)",
    )
    p.add_argument(
        "--ramp-wavelets",
        default=None,
        help="comma-separated PE<->router (RAMP) rates, wavelets (4 B) per cycle, each > 0 and "
        "<= 64, crossed with --link-bits in the link-bandwidth sweep (default: the arch's "
        "fabric.ramp_wavelets_per_cycle, 1 on wse2/wse3, which caps links at 32 bit/cycle)",
    )
    add_run_options(p, seq_len=2048, out="results/whatif_fabric")
    return p.parse_args(argv)


SWEEPS = (
    ("link_bandwidth", "fabric.link_bits_per_cycle", "link-bits"),
    ("hop_latency", "fabric.hop_latency_cycles", "hop-cycles"),
)


def values_of(args: argparse.Namespace, opt: str) -> list[int]:
    """The integers of ``--link-bits`` or ``--hop-cycles``.

    Raises:
        ConfigError: not a list of integers (ranges: :func:`validate`).
    """
    return parse_ints(f"--{opt}", getattr(args, opt.replace("-", "_")))


def ramp_rates(args: argparse.Namespace) -> list[float] | None:
    """``--ramp-wavelets`` as numbers, or None (the arch's own rate).

    Raises:
        ConfigError: not a list of finite numbers > 0.
    """
    if args.ramp_wavelets is None:
        return None
    return parse_floats("--ramp-wavelets", args.ramp_wavelets, 0, lo_open=True, example="1,2,4")


def validate(args: argparse.Namespace) -> None:
    """Check every option before anything runs or is written.

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed.
    """
    cfg = check_model("--model", args.model)
    arch = check_arch("--arch", args.arch)
    parse_ints("--batches", args.batches, 1, MAX_BATCH, example="8,120")
    for _, field, opt in SWEEPS:
        for v in values_of(args, opt):
            check_arch_field(f"--{opt}", v, arch, field, v)
    if args.ramp_wavelets is not None:
        texts = [t.strip() for t in args.ramp_wavelets.split(",")]
        for text, r in zip(texts, ramp_rates(args), strict=True):
            check_arch_field("--ramp-wavelets", text, arch, RAMP_FIELD, r)
    check_seq_len("--seq-len", args.seq_len, [cfg])
    check_precision("--precision", args.precision)
    check_fidelity("--fidelity", args.fidelity, fidelities_for([arch]))
    check_fits("--model", args.model, cfg, arch, args.seq_len, args.precision)
    check_workers("--workers", args.workers)
    check_scheduler("--scheduler", args.scheduler)
    check_out_dir("--out", args.out)


def run(args: argparse.Namespace) -> tuple[dict[str, list[dict]], object]:
    """Run both sweeps (one Dask client), write the CSVs and the PNG; returns (rows per
    sweep, figure). The options are those :func:`validate` accepts (:func:`main` checks
    them first)."""
    out = Path(args.out)
    batches = parse_ints("--batches", args.batches)
    ramps = ramp_rates(args)
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
            grid = {field: values_of(args, opt), "batch": batches}
            if ramps is not None and name == "link_bandwidth":
                grid[RAMP_FIELD] = ramps  # only when given: the default points stay the preset's
            spec = SweepSpec.from_dict({"base": base, "grid": grid}, name=name)
            res = run_sweep(spec, output=out / f"{name}.csv", fmt="csv", workers=0, client=client)
            results[name] = res.table.to_pylist()
    fig = figure(args, results, batches)
    save(fig, out / "whatif_fabric.png")
    return results, fig


def preset_ramp(args: argparse.Namespace) -> float:
    """The arch's own ``fabric.ramp_wavelets_per_cycle``."""
    return check_arch("--arch", args.arch).fabric.ramp_wavelets_per_cycle


def ramp_note(args: argparse.Namespace) -> str:
    """One line on the RAMP cap of the link-bandwidth sweep."""
    rates = ramp_rates(args)
    if rates is None:
        r = preset_ramp(args)
        return (
            f"note: links wider than {r * WAVELET_BITS:g} bit/cycle change nothing here: each "
            f"PE's RAMP (PE<->router port, {RAMP_FIELD} = {r:g} wavelet(s) of 4 B per cycle "
            f"on {args.arch}) is then the narrowest point; --ramp-wavelets 1,2,4 lifts it"
        )
    caps = ", ".join(f"{r * WAVELET_BITS:g}" for r in rates)
    return (
        f"note: at RAMP rates {', '.join(f'{r:g}' for r in rates)} wavelet(s) per cycle "
        f"({RAMP_FIELD}), links wider than {caps} bit/cycle respectively change nothing"
    )


def figure(args, results, batches):
    """2 x 2 panels: throughput and fabric share vs link bandwidth and vs hop latency; in the
    link panels a dotted grey line marks each RAMP rate's cap (one line style per RAMP rate
    when ``--ramp-wavelets`` is given)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    rates = ramp_rates(args)
    styles = ("-o", "--s", ":^", "-.v", "-D", "--x")
    for col, (name, field, _) in enumerate(SWEEPS):
        per_ramp = rates if rates is not None and name == "link_bandwidth" else [None]
        for j, ramp in enumerate(per_ramp):
            for i, b in enumerate(batches):
                pts = sorted(
                    (r[field], r)
                    for r in results[name]
                    if r["batch"] == b
                    and r["status"] == "ok"
                    and (ramp is None or r[RAMP_FIELD] == ramp)
                )
                xs = [x for x, _ in pts]
                label = f"batch {b}" + ("" if ramp is None else f", RAMP {ramp:g} wavelet/cycle")
                style = styles[j % len(styles)]
                axes[0, col].plot(
                    xs,
                    [r["tokens_per_s"] / 1e6 for _, r in pts],
                    style,
                    color=f"C{i}",
                    label=label,
                )
                axes[1, col].plot(
                    xs,
                    [100 * r["fabric_s"] / r["simulated_time_s"] for _, r in pts],
                    style,
                    color=f"C{i}",
                    label=label,
                )
        xlabel = (
            "link bandwidth (bits per link per cycle)"
            if field.endswith("link_bits_per_cycle")
            else "hop latency (cycles per hop)"
        )
        positive = all(r[field] > 0 for r in results[name] if r["status"] == "ok")
        for row in range(2):
            ax = axes[row, col]
            # hop latency 0 is allowed (fabric.hop_latency_cycles >= 0): log only without it
            ax.set_xscale("log", base=2) if positive else ax.set_xscale("symlog", base=2)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0, col].set_ylabel("throughput (million tokens/s)")
        axes[1, col].set_ylabel("fabric not hidden by compute (% of run time)")
    for r in rates if rates is not None else [preset_ramp(args)]:
        for row in range(2):
            axes[row, 0].axvline(r * WAVELET_BITS, color="0.5", ls=":", lw=1)
    axes[0, 0].axvline(32, color="k", ls=":", lw=1)
    axes[0, 1].axvline(1, color="k", ls=":", lw=1)
    if rates is None:
        r = preset_ramp(args)
        cap = (
            f"flat above {r * WAVELET_BITS:g} bit/cycle: the PE<->router RAMP port "
            f"({RAMP_FIELD} = {r:g},\nwavelets of 4 B per cycle) caps a PE's traffic; "
            "--ramp-wavelets lifts it"
        )
    else:
        cap = (
            "flat above each RAMP cap (grey: RAMP rate x 32 bit/cycle):\nthe PE<->router "
            f"port ({RAMP_FIELD}) caps a PE's traffic"
        )
    axes[0, 0].set_title(cap, fontsize=9)
    fig.suptitle(
        f"{args.model} on {args.arch} (dotted: preset), {args.seq_len}-token sequences, "
        f"{args.precision}, {args.fidelity} timing"
    )
    return fig


def main(argv=None) -> int:
    """Check the options, run the experiment and print a summary; returns the exit status
    (2 and one line on stderr for a bad option, before anything runs or is written)."""

    def body() -> int:
        args = parse_args(argv)
        validate(args)
        results, _ = run(args)
        for name, field, _ in SWEEPS:
            for r in results[name]:
                ramp = f" ramp {r[RAMP_FIELD]:g}" if RAMP_FIELD in r else ""
                if r["status"] == "ok":
                    share = r["fabric_s"] / r["simulated_time_s"]
                    print(
                        f"{field}={r[field]:4d}{ramp} batch {r['batch']:4d}: "
                        f"{r['tokens_per_s'] / 1e6:7.3f} M tokens/s, fabric {share:6.1%}"
                    )
                else:
                    print(f"{field}={r[field]:4d}{ramp} batch {r['batch']:4d}: {r['error']}")
            if name == "link_bandwidth":
                print(ramp_note(args))
        out = Path(args.out)
        print(
            f"wrote {out / 'link_bandwidth.csv'}, {out / 'hop_latency.csv'}, "
            f"{out / 'whatif_fabric.png'}"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
