"""Collectives on the packet engine beside the published wafer-scale reduce model, and the
three fidelity levels on the lowering's communication patterns.

Part 1 (``collectives.csv``): row reduce (chain, tree), row all-reduce (chain = reduce then
multicast back; ring) and row broadcast, simulated wavelet by packet on a ``1 x p`` line of
the WSE-2 fabric, against message size ``n`` (fp32 elements = wavelets) and distance ``p - 1``,
beside the model of Luczynski et al., HPDC 2024 ([HPDC24] in
``shared/reference/wse_hardware.md``): ``T = max(C, E/N + L) + (2 T_R + 1) D`` with its
published ``T_R = 2`` cycles, and the same model with this fabric's RAMP latency. The
per-point difference is reported; the gap to the published constants is the RAMP latency
(``fabric.ramp_latency_cycles = 1`` here vs ``T_R ~ 2``): ``2 x (T_R - 1) x D`` cycles.

Part 2 (``fidelity_micro.csv``): one-kernel Programs of each weight-streaming transfer
pattern (``wse_sim.fabric.collectives.collective_program``) timed by ``packet``, ``event``
and ``analytic``, and their relative differences.

Writes ``collectives.csv``, ``fidelity_micro.csv`` and ``collectives.png`` into ``--out``.

Every option is checked before anything runs (:mod:`gpt_workload.experiment_args`): a bad
one is a one-line ``collectives.py: error: ...`` on stderr, exit status 2, nothing written; a
line or message too large for the host's memory is refused with the estimate
(:mod:`wse_sim.fabric.footprint`).

Example::

    python experiments/collectives.py --sizes 16,64,256,1024,4096,16384 --distances 4,8,16,32
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

from gpt_workload.experiment_args import (
    ArgumentParser,
    check_arch,
    check_host_memory,
    check_int,
    check_out_dir,
    parse_ints,
    run_main,
)
from wse_sim.arch import load_arch
from wse_sim.fabric.collectives import collective_program, hpdc24_model, run_collective
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.footprint import collective_bytes, transfer_program_bytes
from wse_sim.fabric.topology import Mesh
from wse_sim.timing.analytic import run_analytic
from wse_sim.timing.event import run_event
from wse_sim.timing.packet import run_packet

PROG = Path(__file__).name

ALGOS = [
    ("reduce", "chain"),
    ("reduce", "tree"),
    ("allreduce", "chain"),
    ("allreduce", "ring"),
    ("broadcast", "tree"),
]
MICRO = [
    ("reduce_scatter_row", 4, 32, 4),
    ("reduce_scatter_row", 4, 24, 12),
    ("allreduce_row", 4, 32, 4),
    ("allreduce_row", 4, 24, 12),
    ("multicast_chain", 16, 8, 1),
    ("multicast_2d", 32, 32, 4),
]


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = ArgumentParser(
        prog=PROG,
        description="Collective time vs message size and distance beside the [HPDC24] model, "
        "and packet vs event vs analytic on the lowering's transfer patterns. Writes "
        "collectives.csv, fidelity_micro.csv and collectives.png."
    )
    p.add_argument(
        "--sizes",
        default="16,64,256,1024,4096,16384",
        help="comma-separated elements per PE, integers >= 1 (default: %(default)s)",
    )
    p.add_argument(
        "--distances",
        default="4,8,16,32",
        help="comma-separated PEs in the row (p), 2..the arch's columns (default: %(default)s)",
    )
    p.add_argument("--p-fixed", type=int, default=16, help="p for the size sweep, 2..columns")
    p.add_argument("--n-fixed", type=int, default=1024, help="n for the distance sweep, >= 1")
    p.add_argument(
        "--packet-wavelets",
        type=int,
        default=4,
        help="packet size, >= 1 (<= half the router buffer keeps links busy; 1 = "
        "wavelet-exact)",
    )
    p.add_argument(
        "--micro-bytes",
        default="256,1024,4096,16384",
        help="comma-separated bytes per PE, integers >= 4 (one wavelet) (default: %(default)s)",
    )
    p.add_argument("--arch", default="grid32", help="preset or TOML for the fabric and Part 2")
    p.add_argument("--out", default="results/collectives", help="output directory")
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    """Check every option before anything runs or is written.

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed; a
            line whose packets would not fit host memory, with the estimate.
    """
    arch = check_arch("--arch", args.arch)
    cols = arch.wafer.cols
    note = f"a row of {arch.name} has {cols} PEs"
    sizes = parse_ints("--sizes", args.sizes, 1, example="16,1024")
    dists = parse_ints("--distances", args.distances, 2, cols, example="4,8")
    check_int("--p-fixed", args.p_fixed, 2, cols, note)
    check_int("--n-fixed", args.n_fixed, 1)
    check_int("--packet-wavelets", args.packet_wavelets, 1)
    micro = parse_ints("--micro-bytes", args.micro_bytes, 4, example="256,4096")
    colours = arch.fabric.colours
    for opt, given, p, n in [
        *(("--sizes", args.sizes, args.p_fixed, s) for s in sizes),
        ("--n-fixed", args.n_fixed, args.p_fixed, args.n_fixed),
        *(("--distances", args.distances, d, args.n_fixed) for d in dists),
    ]:
        need = collective_bytes(p, n, args.packet_wavelets, colours)
        what = (
            f"a collective of {n:,} wavelets per PE on a row of {p} PEs "
            f"({args.packet_wavelets}-wavelet packets)"
        )
        check_host_memory(opt, given, need, what)
    for pattern, rows, cols, P in MICRO:
        prog = collective_program(pattern, rows, cols, max(micro), pes_per_segment=P)
        link_bytes = prog.kernels[0].transfers[0].link_bytes
        need = transfer_program_bytes(rows, cols, colours, link_bytes)
        what = f"{pattern} of {max(micro):,} B per PE on a {rows}x{cols} grid"
        check_host_memory("--micro-bytes", args.micro_bytes, need, what)
    check_out_dir("--out", args.out)


def run_line(args: argparse.Namespace) -> list[dict]:
    """Part 1: one row per (kind, algorithm, p, n)."""
    arch = load_arch(args.arch)
    fab = arch.fabric
    sizes = parse_ints("--sizes", args.sizes, 1)
    dists = parse_ints("--distances", args.distances, 2)
    points = [(args.p_fixed, n) for n in sizes] + [(p, args.n_fixed) for p in dists]
    rows = []
    for kind, algo in ALGOS:
        for p, n in dict.fromkeys(points):
            res, _ = run_collective(
                kind,
                algo,
                "row",
                Mesh(1, p),
                n,
                eng=PacketFabric.from_arch(Mesh(1, p), fab, packet_wavelets=args.packet_wavelets),
                fwd_latency_cycles=fab.pe_forward_latency_cycles,
            )
            ours = hpdc24_model(kind, algo, p, n, T_R=float(fab.ramp_latency_cycles))
            row = res.to_dict()
            row.update(
                hpdc24_own_constants_cycles=ours,
                diff_vs_hpdc24=_rel(res.time_cycles, res.hpdc24_cycles),
                diff_vs_hpdc24_own_constants=_rel(res.time_cycles, ours),
                ideal_bandwidth_cycles=_ideal(kind, algo, p, n),
            )
            rows.append(row)
    return rows


def _rel(a: float, b: float) -> float:
    return a / b - 1 if b and not math.isnan(b) else float("nan")


def _ideal(kind: str, algo: str, p: int, n: float) -> float:
    """Bandwidth-only lower bound (1 wavelet per cycle per RAMP): n for broadcast and chain
    reduce, n log2 p at the tree root, 2 n for reduce + broadcast, 2 n (p-1)/p for the ring."""
    if p <= 1:
        return 0.0
    if kind == "allreduce":
        return 2 * n * (p - 1) / p if algo == "ring" else 2 * n
    if algo == "tree":
        return n * math.ceil(math.log2(p))
    return float(n)


def run_micro(args: argparse.Namespace) -> list[dict]:
    """Part 2: packet vs event vs analytic on one-kernel Programs."""
    arch = load_arch(args.arch)
    clk = arch.pe.clock_hz
    rows = []
    for pattern, r, c, P in MICRO:
        for nb in parse_ints("--micro-bytes", args.micro_bytes, 4):
            prog = collective_program(pattern, r, c, nb, pes_per_segment=P)
            t0 = time.perf_counter()
            pk = run_packet(prog, arch)
            wall = time.perf_counter() - t0
            ev = run_event(prog, arch).total_s
            an = run_analytic(prog, arch).total_s
            rows.append(
                {
                    "pattern": pattern,
                    "grid": f"{r}x{c}",
                    "pes_per_segment": P,
                    "message_bytes": nb,
                    "packet_cycles": pk.total_s * clk,
                    "event_cycles": ev * clk,
                    "analytic_cycles": an * clk,
                    "event_vs_packet": ev / pk.total_s - 1,
                    "analytic_vs_packet": an / pk.total_s - 1,
                    "packet_wall_s": wall,
                }
            )
    return rows


def plot(line: list[dict], micro: list[dict], args, path: Path):
    """Time vs n and vs distance beside the model; per-point differences; fidelity ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (a, b), (c, d) = axes
    colours = {algo: f"C{i}" for i, algo in enumerate(ALGOS)}
    for kind, algo in ALGOS:
        col = colours[(kind, algo)]
        pts = sorted(
            (r for r in line if (r["kind"], r["algorithm"]) == (kind, algo)),
            key=lambda r: (r["n_pes"], r["message_wavelets"]),
        )
        by_n = [r for r in pts if r["n_pes"] == args.p_fixed]
        by_p = [r for r in pts if r["message_wavelets"] == args.n_fixed]
        lab = f"{kind} {algo}"
        a.loglog([r["message_wavelets"] for r in by_n], [r["time_cycles"] for r in by_n], "o-",
                 color=col, label=lab, ms=3)  # fmt: skip
        b.plot([r["distance_hops"] for r in by_p], [r["time_cycles"] for r in by_p], "o-",
               color=col, label=lab, ms=3)  # fmt: skip
        if not math.isnan(by_n[0]["hpdc24_cycles"]):
            a.loglog([r["message_wavelets"] for r in by_n], [r["hpdc24_cycles"] for r in by_n],
                     "--", color=col, lw=1)  # fmt: skip
            b.plot([r["distance_hops"] for r in by_p], [r["hpdc24_cycles"] for r in by_p], "--",
                   color=col, lw=1)  # fmt: skip
            c.semilogx([r["message_wavelets"] for r in by_n],
                       [100 * r["diff_vs_hpdc24"] for r in by_n], "o-", color=col, label=lab,
                       ms=3)  # fmt: skip
            c.semilogx([r["message_wavelets"] for r in by_n],
                       [100 * r["diff_vs_hpdc24_own_constants"] for r in by_n], "x:", color=col,
                       ms=4)  # fmt: skip
    a.set_xlabel("message (fp32 elements = wavelets)")
    a.set_ylabel("time (cycles)")
    a.set_title(f"row of p={args.p_fixed} PEs; dashed: [HPDC24] model (T_R = 2)")
    b.set_xlabel(f"distance (hops), n={args.n_fixed}")
    b.set_ylabel("time (cycles)")
    b.set_title("time vs distance; dashed: [HPDC24] model")
    c.axhline(0, color="k", lw=0.8)
    c.set_xlabel("message (fp32 elements = wavelets)")
    c.set_ylabel("simulated / model - 1 (%)")
    c.set_title("o: vs published T_R = 2;  x: vs our RAMP latency")
    for i, (pattern, _rows, _cols, P) in enumerate(MICRO):
        pts = [m for m in micro if m["pattern"] == pattern and m["pes_per_segment"] == P]
        lab = f"{pattern} P={P}"
        d.semilogx([m["message_bytes"] for m in pts], [100 * m["event_vs_packet"] for m in pts],
                   "o-", color=f"C{i}", label=lab, ms=3)  # fmt: skip
        d.semilogx([m["message_bytes"] for m in pts],
                   [100 * m["analytic_vs_packet"] for m in pts], "x:", color=f"C{i}",
                   ms=4)  # fmt: skip
    for y in (-5, 5):
        d.axhline(y, color="k", ls="--", lw=0.8)
    d.set_xlabel("message per PE (bytes)")
    d.set_ylabel("event (o) / analytic (x) vs packet (%)")
    d.set_title("fidelity levels on the lowering's transfer patterns")
    for ax in (a, b, c, d):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv=None) -> int:
    """Check the options, run both parts, write the CSVs and the PNG, print the per-point
    differences; returns the exit status (2 and one line on stderr for a bad option, before
    anything runs or is written)."""
    return run_main(PROG, lambda: _main(argv))


def _main(argv) -> int:
    args = parse_args(argv)
    validate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    line = run_line(args)
    micro = run_micro(args)
    _write(out / "collectives.csv", line)
    _write(out / "fidelity_micro.csv", micro)
    plot(line, micro, args, out / "collectives.png")
    for r in line:
        if not math.isnan(r["hpdc24_cycles"]):
            print(
                f"{r['kind']:9s} {r['algorithm']:5s} p={r['n_pes']:3d} "
                f"n={r['message_wavelets']:7.0f} sim={r['time_cycles']:9.0f} "
                f"HPDC24={r['hpdc24_cycles']:9.0f} ({100 * r['diff_vs_hpdc24']:+6.1f}%)  "
                f"own T_R={r['hpdc24_own_constants_cycles']:9.0f} "
                f"({100 * r['diff_vs_hpdc24_own_constants']:+6.1f}%)"
            )
    for m in micro:
        print(
            f"{m['pattern']:19s} P={m['pes_per_segment']:2d} {m['message_bytes']:6d} B "
            f"packet={m['packet_cycles']:9.0f} event {100 * m['event_vs_packet']:+6.1f}% "
            f"analytic {100 * m['analytic_vs_packet']:+6.1f}%"
        )
    print(f"wrote {out}/collectives.csv, fidelity_micro.csv, collectives.png "
          f"in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
