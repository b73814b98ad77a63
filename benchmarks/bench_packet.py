"""Benchmark of the packet engine against BookSim2, and of the ``packet`` backend on big grids.

1. **Engine vs BookSim2**, side by side in one run: the same pattern (uniform random), routing
   (XY / dimension order), 1-wavelet (1-flit) packets, mesh size (8 x 8, 16 x 16, 32 x 32),
   offered load (0.05 and 0.3 wavelets per node per cycle) and injection window
   (``--cycles``), each run ``--repeats`` times; the medians of wavelet-hops (flit-hops) per
   wall second and per CPU second of each, and their ratio. Our engine is the compiled one
   (:class:`wse_sim.fabric.compiled.CompiledFabric`), fed in 64-cycle windows as
   ``wse_sim.fabric.traffic.run_traffic`` does, and runs until every wavelet is delivered;
   BookSim2 (built from ``shared/peers`` by :mod:`wse_sim.fabric.booksim`; skipped with a
   message when the build tools are missing) simulates one sample period of the same length
   (its flit-hops: accepted flits x mean hops). ``--reference`` adds the pure-Python engine.
   Both counts are each simulator's own; the loads above a mesh's bisection bound (0.3 on
   16 x 16 and 32 x 32) saturate both, so the flit-hops then differ.
2. **Transformer block**: wall and CPU time of ``run_packet`` on the Cerebras-GPT-shaped
   block of ``tests/test_fidelity_agreement.py`` in the lowering's own chunks
   (``--block-grids``, default 32, 64 and 128: ``grid32`` resized), with the PE programs
   compiled into the engine's loop (``pe_programs="compiled"``, the default) and, on grids up
   to ``--before-max`` (default 32), as Python callbacks (``"python"``, the code path before
   they were compiled; same result, checked), and ``event`` / ``analytic`` relative to it.
   ``--reference`` adds the reference engine there too.

Usage:
    python benchmarks/bench_packet.py [--sizes 8,16,32] [--loads 0.05,0.3] [--cycles 1000]
        [--repeats 3] [--reference] [--block-grids 32,64,128] [--before-max 32]
        [--out benchmarks/results/packet.json]

``--sizes ''`` times the blocks only and keeps the engine comparison already in ``--out``.

Prints a table and writes JSON. Nothing here asserts a time: machines are noisy (this one is
shared; CPU seconds are less noisy than wall seconds), read the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from wse_sim.fabric.booksim import booksim_binary, run_booksim
from wse_sim.fabric.compiled import CompiledFabric
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.engines import warm_up
from wse_sim.fabric.topology import Mesh
from wse_sim.fabric.traffic import injection_schedule


def our_engine(k: int, ts, ss, ds, reference: bool = False) -> dict:
    """The injections through our engine (compiled, or the reference): wavelet-hops, wall
    and CPU seconds, events."""
    cls = PacketFabric if reference else CompiledFabric
    w0, c0 = time.perf_counter(), time.process_time()
    eng = cls(Mesh(k, k), packet_wavelets=1)
    eng.set_routing(0, "xy")
    step = 64.0
    state = [0]

    def feed(w: float) -> None:
        i = state[0]
        hi = int(np.searchsorted(ts, w + step, side="left"))
        if reference:
            for j in range(i, hi):
                eng.inject(int(ss[j]), 0, 1, float(ts[j]), dst=int(ds[j]))
        else:
            eng.inject_many(ss[i:hi], 0, 1.0, ts[i:hi], ds[i:hi])
        state[0] = hi
        if hi < len(ts):
            eng.schedule(w + step, feed, w + step)

    eng.schedule(0.0, feed, 0.0)
    eng.run()
    return {
        "wavelet_hops": eng.wavelet_hops(),
        "wall_s": time.perf_counter() - w0,
        "cpu_s": time.process_time() - c0,
        "events": eng.events,
        "cycles": eng.now,
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def versus_booksim(sizes, loads, cycles, repeats, seed, reference) -> list[dict]:
    """Rows of the engine-vs-BookSim2 comparison (medians over ``repeats``)."""
    binary, why = booksim_binary()
    if binary is None:
        print(f"BookSim2 skipped: {why}")
    rows = []
    hdr = f"{'k':>3} {'load':>5} {'ours Mhop/s':>11} {'BookSim Mhop/s':>14} {'ratio':>6}"
    print(hdr + f" {'cpu ratio':>9} {'ours s':>7} {'BookSim s':>9}")
    for k in sizes:
        for load in loads:
            ts, ss, ds = injection_schedule(Mesh(k, k), "uniform", load, 1, cycles, seed)
            warm_up()  # compile / load the cache outside the timing
            ours = [our_engine(k, ts, ss, ds) for _ in range(repeats)]
            row = {"k": k, "load": load, "cycles": cycles, "wavelets": len(ts)}
            for key in ("wavelet_hops", "wall_s", "cpu_s", "events", "cycles"):
                row[f"ours_{key}"] = _median(ours, key)
            row["ours_hops_per_s"] = _median(ours, "wavelet_hops") / row["ours_wall_s"]
            row["ours_hops_per_cpu_s"] = _median(ours, "wavelet_hops") / row["ours_cpu_s"]
            if reference:
                ref = our_engine(k, ts, ss, ds, reference=True)
                row["reference_wall_s"] = ref["wall_s"]
                row["reference_hops_per_s"] = ref["wavelet_hops"] / ref["wall_s"]
                row["compiled_vs_reference"] = row["ours_hops_per_s"] / row["reference_hops_per_s"]
            if binary is not None:
                bs = [run_booksim(binary, k, load, cycles, seed=seed + 1) for _ in range(repeats)]
                for key in ("flit_hops", "wall_s", "cpu_s", "hops", "accepted_flit_rate"):
                    row[f"booksim_{key}"] = _median(bs, key)
                row["booksim_hops_per_s"] = row["booksim_flit_hops"] / row["booksim_wall_s"]
                row["booksim_hops_per_cpu_s"] = row["booksim_flit_hops"] / row["booksim_cpu_s"]
                row["ratio"] = row["ours_hops_per_s"] / row["booksim_hops_per_s"]
                row["ratio_cpu"] = row["ours_hops_per_cpu_s"] / row["booksim_hops_per_cpu_s"]
                print(
                    f"{k:3d} {load:5.2f} {row['ours_hops_per_s'] / 1e6:11.2f} "
                    f"{row['booksim_hops_per_s'] / 1e6:14.2f} {row['ratio']:6.2f} "
                    f"{row['ratio_cpu']:9.2f} {row['ours_wall_s']:7.2f} "
                    f"{row['booksim_wall_s']:9.2f}",
                    flush=True,
                )
            else:
                print(f"{k:3d} {load:5.2f} {row['ours_hops_per_s'] / 1e6:11.2f}", flush=True)
            rows.append(row)
    return rows


def block_backend(grid: int, engine: str = "compiled", pe_programs: str = "compiled") -> dict:
    """Wall and CPU time of ``run_packet`` on the transformer block on a ``grid x grid``
    arch, and ``event`` / ``analytic`` relative to it."""
    from gpt_workload.config import GPTConfig
    from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
    from wse_sim.arch import load_arch
    from wse_sim.timing.analytic import run_analytic
    from wse_sim.timing.event import run_event
    from wse_sim.timing.packet import run_packet

    cfg = GPTConfig(
        name="cerebras-gpt-block-4h",
        n_layer=1,
        n_head=4,
        d_model=256,
        d_ff=1024,
        vocab_size=512,
        n_positions=2048,
    )
    arch = load_arch(
        "grid32", ["io.ingress_bytes_per_s=1e12", f"wafer.rows={grid}", f"wafer.cols={grid}"]
    )
    prog = lower_weight_streaming(cfg, arch, 8, 128, "fp16")
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_packet(prog, arch, engine=engine, pe_programs=pe_programs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ev, an = run_event(prog, arch).total_s, run_analytic(prog, arch).total_s
    hops = res.extra["fabric"]["wavelet_hops"]
    return {
        "grid": [prog.rows, prog.cols],
        "engine": engine,
        "pe_programs": pe_programs,
        "packet_wavelets": res.extra["packet_wavelets"],
        "wall_s": wall,
        "cpu_s": cpu,
        "events": res.events,
        "wavelet_hops": hops,
        "wavelet_hops_per_s": hops / wall,
        "simulated_s": res.total_s,
        "event_vs_packet": ev / res.total_s - 1,
        "analytic_vs_packet": an / res.total_s - 1,
    }


def main(argv=None) -> int:
    """Run the comparisons and print/write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="8,16,32", help="mesh sizes k (k x k)")
    ap.add_argument("--loads", default="0.05,0.3", help="wavelets per node per cycle")
    ap.add_argument("--cycles", type=int, default=1000, help="injection window, cycles")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", action="store_true", help="also time the Python engine")
    ap.add_argument("--block-grids", default="32,64,128", help="block grids ('' to skip)")
    ap.add_argument(
        "--before-max", type=int, default=32,
        help="largest block grid also timed with the PE programs in Python",
    )  # fmt: skip
    ap.add_argument("--out", default="benchmarks/results/packet.json")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    loads = [float(x) for x in args.loads.split(",") if x]
    out = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}",
        "cycles": args.cycles,
        "repeats": args.repeats,
        "points": versus_booksim(
            sizes, loads, args.cycles, args.repeats, args.seed, args.reference
        ),
        "block_backend": [],
    }
    old = Path(args.out)
    if not sizes and old.exists():  # block timings only: keep the file's engine comparison
        prev = json.loads(old.read_text())
        for key in ("cycles", "repeats", "points"):
            out[key] = prev.get(key, out[key])
        print(f"--sizes '': engine-vs-BookSim2 points kept from {old}")
    warm_up()
    for g in (int(x) for x in args.block_grids.split(",") if x):
        modes = [("compiled", "compiled")]
        if g <= args.before_max:
            modes.append(("compiled", "python"))
            if args.reference:
                modes.append(("reference", "python"))
        rows = []
        for engine, pe in modes:
            b = block_backend(g, engine, pe)
            rows.append(b)
            out["block_backend"].append(b)
            print(
                f"run_packet ({engine} engine, {pe} PE programs), transformer block on "
                f"{b['grid'][0]}x{b['grid'][1]}: {b['wall_s']:.1f} s wall ({b['cpu_s']:.1f} s "
                f"CPU), {b['events']:,} events, {b['wavelet_hops']:,.0f} wavelet-hops, "
                f"{b['simulated_s'] * 1e6:.6f} us simulated; event {b['event_vs_packet']:+.3%}, "
                f"analytic {b['analytic_vs_packet']:+.3%}",
                flush=True,
            )
        for r in rows[1:]:
            if (r["simulated_s"], r["events"], r["wavelet_hops"]) != (
                rows[0]["simulated_s"], rows[0]["events"], rows[0]["wavelet_hops"]
            ):
                raise RuntimeError(f"{r['engine']}/{r['pe_programs']} disagrees on the block")
        if len(rows) > 1:
            print(f"  compiled PE programs: {rows[1]['cpu_s'] / rows[0]['cpu_s']:.1f}x less CPU")
    p = Path(args.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=2))
    print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
