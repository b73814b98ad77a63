"""Benchmark of the packet engine: wavelet-hops per wall second, against a naive SimPy model
with one process per router, on the same traffic in the same process.

The traffic: uniform random, XY routed, 1-wavelet packets (wavelet-exact), open loop on a
``k x k`` mesh at offered loads 0.05 and 0.3 wavelets per node per cycle (the bisection bound
of an 8 x 8 mesh is 0.5), injected over ``--cycles`` cycles and run until every wavelet is
delivered. Both models carry exactly the same wavelet-hops (the sum of the Manhattan
distances), which the script checks.

The naive model is what one writes first in SimPy: every router is a process that takes one
wavelet at a time from an unbounded ``Store``, waits one hop, and puts it into the next
router's store. It models less (no per-link bandwidth, colours, credits, turns or RAMPs) and
is still slower; the ratio is the point.

Also times the ``packet`` timing backend on the Cerebras-GPT-shaped block of
``tests/test_fidelity_agreement.py`` (32 x 32 grid, 1,024-wavelet packets).

Usage:
    python benchmarks/bench_packet.py [--k 8] [--cycles 4000] [--loads 0.05,0.3]
        [--out benchmarks/results/packet.json] [--no-block]

Prints a table and writes JSON. Nothing here asserts a time: machines are noisy; read the
ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import simpy

from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.topology import Mesh
from wse_sim.fabric.traffic import injection_schedule


def naive_simpy(k: int, ts, ss, ds) -> tuple[float, float, float]:
    """Route the injections through one SimPy process per router; ``(wavelet-hops,
    wall seconds, simulated cycles)``."""
    env = simpy.Environment()
    inbox = [simpy.Store(env) for _ in range(k * k)]
    hops = [0]
    left = [len(ts)]
    done = env.event()

    def router(n: int):
        r, c = divmod(n, k)
        while True:
            dst = yield inbox[n].get()
            yield env.timeout(1)  # one wavelet per cycle through the router, 1-cycle hop
            dr, dc = divmod(dst, k)
            if dc != c:
                nxt = n + (1 if dc > c else -1)
            elif dr != r:
                nxt = n + (k if dr > r else -k)
            else:
                left[0] -= 1
                if not left[0]:
                    done.succeed()
                continue
            hops[0] += 1
            inbox[nxt].put(dst)

    def feeder():
        for t, s, d in zip(ts, ss, ds, strict=True):
            if t > env.now:
                yield env.timeout(t - env.now)
            inbox[int(s)].put(int(d))

    for n in range(k * k):
        env.process(router(n))
    env.process(feeder())
    t0 = time.perf_counter()
    env.run(until=done)
    return float(hops[0]), time.perf_counter() - t0, env.now


def packet_engine(k: int, ts, ss, ds) -> tuple[float, float, float, int]:
    """The same injections through :class:`PacketFabric`; ``(wavelet-hops, wall seconds,
    simulated cycles, events)``."""
    eng = PacketFabric(Mesh(k, k), packet_wavelets=1)
    eng.set_routing(0, "xy")
    ts_l, ss_l, ds_l = ts.tolist(), ss.tolist(), ds.tolist()
    state = [0]
    step = 64.0

    def feed(w: float) -> None:
        # hand over the next window of injections (keeps the event heap small, as the naive
        # model's feeder process does)
        i, n = state[0], len(ts_l)
        while i < n and ts_l[i] < w + step:
            eng.inject(ss_l[i], 0, 1, ts_l[i], dst=ds_l[i])
            i += 1
        state[0] = i
        if i < n:
            eng.schedule(w + step, feed, w + step)

    t0 = time.perf_counter()
    eng.schedule(0.0, feed, 0.0)
    eng.run()
    return eng.wavelet_hops(), time.perf_counter() - t0, eng.now, eng.events


def block_backend() -> dict:
    """Wall time and wavelet-hops per second of ``run_packet`` on the 32 x 32 block."""
    from gpt_workload.config import GPTConfig
    from gpt_workload.lowering import lower_weight_streaming
    from wse_sim.arch import load_arch
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
    arch = load_arch("grid32", ["io.ingress_bytes_per_s=1e12"])
    prog = lower_weight_streaming(cfg, arch, 8, 128, "fp16")
    t0 = time.perf_counter()
    res = run_packet(prog, arch)
    wall = time.perf_counter() - t0
    hops = res.extra["fabric"]["wavelet_hops"]
    return {
        "grid": [32, 32],
        "packet_wavelets": res.extra["packet_wavelets"],
        "wall_s": wall,
        "events": res.events,
        "wavelet_hops": hops,
        "wavelet_hops_per_s": hops / wall,
        "events_per_s": res.events / wall,
        "simulated_s": res.total_s,
    }


def main(argv=None) -> int:
    """Run the comparison and print/write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=8, help="mesh size k x k")
    ap.add_argument("--cycles", type=float, default=4000, help="injection window, cycles")
    ap.add_argument("--loads", default="0.05,0.3", help="wavelets per node per cycle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-block", action="store_true", help="skip the 32 x 32 block run")
    ap.add_argument("--out", default="benchmarks/results/packet.json")
    args = ap.parse_args(argv)
    out = {"machine": platform.machine(), "k": args.k, "cycles": args.cycles, "loads": []}
    print(f"{'load':>5} {'model':>14} {'wavelet-hops':>13} {'wall s':>8} {'hops/s':>10} ratio")
    for load in (float(x) for x in args.loads.split(",")):
        ts, ss, ds = injection_schedule(
            Mesh(args.k, args.k), "uniform", load, 1, args.cycles, args.seed
        )
        h_n, w_n, _ = naive_simpy(args.k, ts, ss, ds)
        h_p, w_p, _, ev = packet_engine(args.k, ts, ss, ds)
        if h_n != h_p:
            raise RuntimeError(f"wavelet-hops differ: naive {h_n} vs packet {h_p}")
        row = {
            "load": load,
            "wavelets": len(ts),
            "wavelet_hops": h_p,
            "packet_wall_s": w_p,
            "packet_hops_per_s": h_p / w_p,
            "packet_events": ev,
            "naive_wall_s": w_n,
            "naive_hops_per_s": h_n / w_n,
            "speedup": w_n / w_p,
        }
        out["loads"].append(row)
        print(f"{load:5.2f} {'packet engine':>14} {h_p:13.0f} {w_p:8.2f} {h_p / w_p:10.0f}")
        print(
            f"{load:5.2f} {'naive SimPy':>14} {h_n:13.0f} {w_n:8.2f} {h_n / w_n:10.0f} "
            f"{row['speedup']:.2f}x slower"
        )
    if not args.no_block:
        out["block_backend"] = block_backend()
        b = out["block_backend"]
        print(
            f"run_packet on the 32x32 block: {b['wall_s']:.1f} s, {b['events']:,} events, "
            f"{b['wavelet_hops_per_s']:,.0f} wavelet-hops/s ({b['packet_wavelets']}-wavelet "
            "packets)"
        )
    p = Path(args.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=2))
    print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
