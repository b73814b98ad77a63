"""Fabric under synthetic load: latency and accepted throughput vs offered load, per pattern.

Runs the packet engine (``wse_sim.fabric``) on a ``k x k`` mesh with the WSE-2 router
(1-wavelet-per-cycle links, 1-cycle hops [HPDC24], colour buffers of
``fabric.router_buffer_wavelets``) under open-loop traffic of each pattern (uniform random,
transpose, bit-complement, hotspot, nearest neighbour), dimension-order (XY) routed, at
offered loads given as fractions of the uniform-traffic bisection bound ``4 / k`` wavelets
per node per cycle. For each point: mean / p50 / p99 latency of the packets injected in the
measurement window and the accepted throughput.

What to look for: uniform traffic saturates below ``4 / k`` (XY routing and finite buffers
waste some of the bisection) and above half of it, and its latency turns up sharply there;
transpose and bit-complement saturate earlier (all of their traffic crosses the bisection);
nearest-neighbour traffic hardly notices the load.

Writes ``fabric_load_latency.csv`` and ``fabric_load_latency.png`` into ``--out``.

Every option is checked before anything runs (:mod:`gpt_workload.experiment_args`): a bad
one is a one-line ``fabric_load_latency.py: error: ...`` on stderr, exit status 2, nothing
written; a mesh too large for the host's memory is refused with the estimate
(:mod:`wse_sim.fabric.footprint`).
``--peer booksim2`` also runs BookSim2 (built from the project's ``shared/peers`` by
:mod:`wse_sim.fabric.booksim`) on the uniform pattern at the same sizes, loads and measurement
window, 1-flit packets, and writes both curves side by side into
``fabric_load_latency_booksim2.csv`` and ``.png`` (the README's fabric section explains the
difference from the two router models).

Example::

    python experiments/fabric_load_latency.py --k 8,16 --packet-wavelets 4
    python experiments/fabric_load_latency.py --k 8,16 --patterns uniform --packet-wavelets 1 \
        --peer booksim2
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from gpt_workload.experiment_args import (
    ArgumentParser,
    check_arch,
    check_float,
    check_host_memory,
    check_int,
    check_out_dir,
    check_peer,
    parse_floats,
    parse_ints,
    parse_names,
    run_main,
)
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError
from wse_sim.fabric.compiled import CompiledFabric
from wse_sim.fabric.footprint import traffic_bytes
from wse_sim.fabric.topology import Mesh
from wse_sim.fabric.traffic import PATTERNS, bisection_bound, check_load, run_traffic

PROG = Path(__file__).name


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = ArgumentParser(
        prog=PROG,
        description="Latency and accepted throughput vs offered load on a k x k mesh, per "
        "traffic pattern (packet engine). Writes fabric_load_latency.csv and .png."
    )
    p.add_argument("--k", default="8,16", help="mesh sizes, comma-separated integers >= 2")
    p.add_argument(
        "--patterns", default=",".join(PATTERNS), help="traffic patterns (default: %(default)s)"
    )
    p.add_argument(
        "--loads",
        default="0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.2",
        help="offered loads as fractions of the bisection bound 4/k, > 0 and at most one "
        "packet per node per cycle (packet-wavelets x k / 4)",
    )
    p.add_argument("--packet-wavelets", type=int, default=4, help="packet size >= 1 (1 = exact)")
    p.add_argument("--arch", default="wse2", help="preset whose fabric fields are used")
    p.add_argument("--warmup", type=float, default=500, help="warm-up cycles, >= 0")
    p.add_argument("--measure", type=float, default=1500, help="measurement window, cycles, >= 1")
    p.add_argument("--seed", type=int, default=1, help="traffic seed, >= 0")
    p.add_argument("--out", default="results/fabric_load_latency", help="output directory")
    p.add_argument(
        "--peer", default=None, help="also run this peer simulator side by side: booksim2"
    )
    args = p.parse_args(argv)
    check_peer("--peer", args.peer)
    return args


def validate(args: argparse.Namespace) -> None:
    """Check every option before anything runs or is written.

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed; a
            mesh (and its traffic) that would not fit host memory, with the estimate.
    """
    fabric = check_arch("--arch", args.arch).fabric
    ks = parse_ints("--k", args.k, 2, example="8,16")
    for pat in parse_names("--patterns", args.patterns, "traffic patterns"):
        if pat not in PATTERNS:
            raise ConfigError(
                f"--patterns {args.patterns!r} is not allowed: {pat!r} is not a traffic "
                f"pattern; expected some of {', '.join(PATTERNS)}"
            )
    loads = parse_floats("--loads", args.loads, 0, lo_open=True, example="0.1,0.5,1")
    pw = check_int("--packet-wavelets", args.packet_wavelets, 1)
    warmup = check_float("--warmup", args.warmup, 0)
    measure = check_float("--measure", args.measure, 1)
    check_int("--seed", args.seed, 0)
    if pw > warmup + measure:
        raise ConfigError(
            f"--packet-wavelets {pw} is not allowed: expected at most the {warmup + measure:g} "
            "cycles of --warmup + --measure (a packet takes a cycle per wavelet on a link)"
        )
    # injection_schedule's bounds: at most one packet per node per cycle, a mean gap that
    # its int64 draws hold
    top = min(pw / bisection_bound(k) for k in ks)
    if max(loads) > top:
        raise ConfigError(
            f"--loads {args.loads!r} is not allowed: expected fractions of 4/k in (0, "
            f"{top:g}] (one {pw}-wavelet packet per node per cycle on the {min(ks)}x{min(ks)} "
            "mesh)"
        )
    for k in ks:
        try:
            check_load(min(loads) * bisection_bound(k), pw)
        except ConfigError as exc:
            raise ConfigError(f"--loads {args.loads!r} is not allowed on k={k}: {exc}") from None
    for k in ks:
        need = traffic_bytes(
            k, k, fabric.colours, max(loads) * bisection_bound(k), pw, warmup + measure
        )
        what = (
            f"a {k}x{k} mesh with {warmup + measure:g} cycles of traffic at load "
            f"{max(loads):g} x 4/k"
        )
        given = f"k={k}, warmup + measure = {warmup + measure:g} cycles"
        check_host_memory("--k/--warmup/--measure", given, need, what)
    check_out_dir("--out", args.out)


def run(args: argparse.Namespace) -> list[dict]:
    """One CSV row per (k, pattern, load); the options are those :func:`validate` accepts."""
    fabric = load_arch(args.arch).fabric
    rows = []
    for k in parse_ints("--k", args.k, 2):
        bound = bisection_bound(k)
        for pattern in parse_names("--patterns", args.patterns):
            for frac in parse_floats("--loads", args.loads, 0, lo_open=True):
                res, _ = run_traffic(
                    Mesh(k, k),
                    pattern,
                    frac * bound,
                    packet_wavelets=args.packet_wavelets,
                    warmup_cycles=args.warmup,
                    measure_cycles=args.measure,
                    seed=args.seed,
                    engine_factory=lambda m: CompiledFabric.from_arch(m, fabric),
                )
                row = res.to_dict()
                row.update(k=k, load_fraction=frac, bisection_bound=bound)
                rows.append(row)
    return rows


def saturation(rows: list[dict]) -> dict[tuple[int, str], float]:
    """Saturation throughput per (k, pattern): the most accepted over the offered loads."""
    out: dict[tuple[int, str], float] = {}
    for r in rows:
        key = (r["k"], r["pattern"])
        out[key] = max(out.get(key, 0.0), r["accepted"])
    return out


def plot(rows: list[dict], path: Path):
    """Latency and accepted throughput vs offered load, one row of panels per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in rows})
    pats = list(dict.fromkeys(r["pattern"] for r in rows))
    fig, axes = plt.subplots(len(ks), 2, figsize=(12, 4.2 * len(ks)), squeeze=False)
    for i, k in enumerate(ks):
        bound = bisection_bound(k)
        for pat in pats:
            pts = sorted(
                (r for r in rows if r["k"] == k and r["pattern"] == pat),
                key=lambda r: r["offered"],
            )
            x = [r["offered"] for r in pts]
            axes[i][0].semilogy(x, [r["latency_mean"] for r in pts], "o-", label=pat, ms=3)
            axes[i][1].plot(x, [r["accepted"] for r in pts], "o-", label=pat, ms=3)
        for ax in axes[i]:
            ax.axvline(bound, color="k", ls=":", lw=1)
            ax.set_xlabel("offered load (wavelets / node / cycle)")
        xmax = max(r["offered"] for r in rows if r["k"] == k)
        axes[i][1].plot([0, xmax], [0, xmax], color="0.7", lw=1, label="accepted = offered")
        axes[i][1].axhline(bound, color="k", ls=":", lw=1, label="bisection bound 4/k")
        axes[i][1].axhline(bound / 2, color="k", ls="--", lw=0.8, label="half the bound")
        axes[i][0].set_ylabel("mean latency (cycles)")
        axes[i][1].set_ylabel("accepted throughput (wavelets / node / cycle)")
        axes[i][0].set_title(f"{k}x{k} mesh, XY routing: latency")
        axes[i][1].set_title(f"{k}x{k} mesh: accepted vs offered")
        axes[i][1].legend(fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def run_peer(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """BookSim2 on uniform traffic at each (k, load) of ``rows``: one row per point with
    both simulators' accepted throughput and mean latency.

    Raises:
        ConfigError: BookSim2 cannot be built here (the reason in the message).
    """
    from wse_sim.fabric.booksim import booksim_binary, run_booksim

    binary, why = booksim_binary()
    if binary is None:
        raise ConfigError(f"--peer booksim2: {why}")
    out = []
    for r in rows:
        if r["pattern"] != "uniform":
            continue
        # BookSim warms up for one sample period, then measures one
        b = run_booksim(
            binary, r["k"], r["offered"], int(args.measure), seed=args.seed, warmup_periods=1
        )
        out.append(
            {
                "k": r["k"],
                "load_fraction": r["load_fraction"],
                "offered": r["offered"],
                "ours_accepted": r["accepted"],
                "ours_latency_mean": r["latency_mean"],
                "booksim_accepted": b["accepted_flit_rate"],
                "booksim_latency_mean": b["packet_latency"],
                "booksim_network_latency": b["network_latency"],
                "booksim_hops": b["hops"],
            }
        )
    return out


def plot_peer(prows: list[dict], path: Path):
    """Latency and accepted throughput vs offered load, ours and BookSim2's, per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in prows})
    fig, axes = plt.subplots(len(ks), 2, figsize=(12, 4.2 * len(ks)), squeeze=False)
    for i, k in enumerate(ks):
        pts = sorted((r for r in prows if r["k"] == k), key=lambda r: r["offered"])
        x = [r["offered"] for r in pts]
        for who, name in (("ours", "wse-sim packet engine"), ("booksim", "BookSim2")):
            axes[i][0].semilogy(x, [r[f"{who}_latency_mean"] for r in pts], "o-", label=name)
            axes[i][1].plot(x, [r[f"{who}_accepted"] for r in pts], "o-", label=name)
        axes[i][1].plot([0, max(x)], [0, max(x)], color="0.7", lw=1, label="accepted = offered")
        for ax in axes[i]:
            ax.axvline(bisection_bound(k), color="k", ls=":", lw=1)
            ax.set_xlabel("offered load (wavelets / node / cycle)")
        axes[i][0].set_ylabel("mean latency (cycles)")
        axes[i][1].set_ylabel("accepted (wavelets / node / cycle)")
        axes[i][0].set_title(f"{k}x{k} mesh, uniform, XY: latency")
        axes[i][1].set_title(f"{k}x{k}: accepted vs offered (dotted: bound 4/k)")
        axes[i][0].legend(fontsize=7)
        axes[i][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def main(argv=None) -> int:
    """Check the options, run, write the CSV and the PNG, print the saturation points; returns
    the exit status (2 and one line on stderr for a bad option, before anything runs or is
    written)."""
    return run_main(PROG, lambda: _main(argv))


def _main(argv) -> int:
    args = parse_args(argv)
    validate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = run(args)
    if args.peer:
        prows = run_peer(args, rows)
        with open(out / "fabric_load_latency_booksim2.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(prows[0]))
            w.writeheader()
            w.writerows(prows)
        plot_peer(prows, out / "fabric_load_latency_booksim2.png")
        for k in sorted({r["k"] for r in prows}):
            ours = max(r["ours_accepted"] for r in prows if r["k"] == k)
            bs = max(r["booksim_accepted"] for r in prows if r["k"] == k)
            print(f"k={k:3d} uniform saturation: wse-sim {ours:.3f}, BookSim2 {bs:.3f}")
    with open(out / "fabric_load_latency.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "fabric_load_latency.png")
    for (k, pat), sat in sorted(saturation(rows).items()):
        b = bisection_bound(k)
        print(f"k={k:3d} {pat:15s} saturation {sat:.3f} = {sat / b:.2f} x bound 4/k={b:.3f}")
    print(f"wrote {out / 'fabric_load_latency.csv'} and .png in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
