"""What-if: MemoryX I/O bandwidth (0.25x - 8x) vs batch - where weight streaming turns from
I/O-bound to compute-bound.

Closed form. Weight streaming double-buffers per layer: layer l+1's weights (``W`` bytes)
stream from MemoryX while layer l computes, so a layer is I/O-bound while ``W / BW`` exceeds
its compute time and compute-bound after. With the wafer computing at its peak, a layer of a
batch of ``B`` sequences of ``T`` tokens takes ``B T f / peak`` (``f`` = FLOPs per token of
one layer: ``2 N / n_layer`` plus causal attention, :func:`forward_flops_per_token`), so the
crossover batch is

    B* = peak x W / (BW x T x f).

Simulated. For each bandwidth the batch runs over the batches that fill the wafer at each
tokens-per-segment ``m`` (the largest batch with ``m`` tokens per segment: in between, the
layer time is a staircase in ``m``), each simulated; per run, the median over layers of a
layer's compute time (its kernels' time less the weight-I/O stall) ``C(B)`` and of its block's
stream time ``io``. The simulated crossover is where ``C(B)`` reaches ``io``, linearly
interpolated between the two batches that bracket it.

Assumptions, and why this model and range (defaults: Cerebras-GPT-13B on the WSE-2, 256-token
sequences, fp16, analytic timing):

* The fabric must not be the bottleneck. Each column of a segment receives its ``K/P x N``
  weight slice over one link (and one RAMP port into each PE), so the fabric multicasts
  weights at most ``P x 4 B x clock`` (P = PEs per segment = n_head): 176 GB/s for 13B
  (P = 40) on the WSE-2, only 53 GB/s for 111M (P = 12). Above that bandwidth weight
  streaming is never I/O-bound: small batches are fabric-bound, large ones compute-bound,
  and no crossover is reported ("never I/O-bound"). 13B is the preset whose fabric rate
  exceeds the WSE-2's 150 GB/s.
* The closed form assumes compute at peak. The simulated layer reaches ``eta`` of peak
  (reported per bandwidth, at the first batch past the crossover), and the simulated
  crossover is about ``eta x B*``. What ``eta`` loses, measured on 13B / WSE-2 / fp16 / 256
  tokens: idle columns (750 is not a multiple of 40: 4 %), the short last segment of each
  sequence when ``m`` does not divide 256 (0 - 2 %), causal attention's imbalance (the
  last segment of a sequence does the most work; short sequences keep it small), the
  weight-row pipeline's fill (at most 1/256 of the shorter of compute and fabric,
  :func:`gpt_workload.mappings.weight_streaming.plan.pipeline_chunks`), and the 16-cycle setup of
  every vector op.
  The setup grows with ``m``: each PE keeps an ``m x n_c`` fp32 accumulator in what SRAM
  is left, so ``n_c`` shrinks as ``m`` grows and the ops get shorter (3 % at ``m = 3``,
  4 % at ``m = 5``, 9 % at ``m = 9``). So in fp16 (4-wide SIMD) the crossover at 0.5x and
  1x I/O (``m`` = 2 - 5, ``eta`` 0.89 - 0.91) is within 10 % of the closed form (0.90,
  0.91 of it), and the one at 0.25x (``m`` = 9, ``eta`` 0.86) is 0.87 of it; in fp32
  (0.5 FMAC per cycle, so the per-op setup is small) ``eta`` is about 0.93 and the two
  agree within 8 % at 0.125x - 0.5x.

Every option is checked before anything runs (:mod:`gpt_workload.experiment_args`): a bad
one is a one-line ``whatif_io_bandwidth.py: error: ...`` on stderr, exit status 2, nothing
written. ``--fidelity`` is ``analytic`` or ``event``: ``packet`` simulates every router and is
refused for a whole wafer.

Writes ``points.csv`` (every simulated run), ``crossover.csv`` (per bandwidth: closed form,
simulated, ratio, eta, regime) and ``whatif_io_bandwidth.png`` into ``--out``. Runs the points
as a resumable sweep (:mod:`gpt_workload.sweep`): on a local Dask cluster by default, on an
existing one with ``--scheduler``, in this process with ``--workers 0``.

Example::

    python experiments/whatif_io_bandwidth.py --out results/io
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from gpt_workload.config import forward_flops_per_token
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
    connect_scheduler,
    fidelities_for,
    parse_floats,
    run_main,
)
from gpt_workload.mappings.weight_streaming.plan import max_batch_single_micro
from gpt_workload.models import resolve_model
from gpt_workload.plots import save
from gpt_workload.precision import bytes_per_element
from gpt_workload.simulate import simulate
from gpt_workload.sweep import SweepSpec, run_sweep
from wse_sim.arch import load_arch
from wse_sim.errors import FitError

PROG = Path(__file__).name


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = ArgumentParser(
        prog=PROG,
        description="Sweep MemoryX I/O bandwidth x batch; find where weight streaming turns "
        "from I/O-bound to compute-bound and compare with the closed form "
        "B* = peak W / (BW T f). Writes points.csv, crossover.csv and a PNG.",
    )
    p.add_argument(
        "--model",
        default="cerebras-gpt-13b",
        help="model preset or config.json (default: %(default)s)",
    )
    p.add_argument("--arch", default="wse2", help="arch preset or TOML file (default: %(default)s)")
    p.add_argument(
        "--scales",
        default="0.25,0.5,1,2,4,8",
        help="comma-separated I/O bandwidths as multiples (finite, > 0) of the arch's "
        "io.ingress_bytes_per_s (default: %(default)s)",
    )
    add_run_options(p, seq_len=256, out="results/whatif_io_bandwidth")
    return p.parse_args(argv)


def io_scales(args: argparse.Namespace) -> list[float]:
    """``--scales`` as numbers.

    Raises:
        ConfigError: not a list of finite numbers > 0.
    """
    return parse_floats("--scales", args.scales, 0, lo_open=True, example="0.5,1,2")


def validate(args: argparse.Namespace) -> None:
    """Check every option before anything runs or is written.

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed.
    """
    cfg = check_model("--model", args.model)
    arch = check_arch("--arch", args.arch)
    check_seq_len("--seq-len", args.seq_len, [cfg])
    check_precision("--precision", args.precision)
    check_fidelity("--fidelity", args.fidelity, fidelities_for([arch]))
    texts = [t.strip() for t in args.scales.split(",")]
    for text, s in zip(texts, io_scales(args), strict=True):
        bw = s * arch.io.ingress_bytes_per_s
        check_arch_field("--scales", text, arch, "io.ingress_bytes_per_s", bw)
    check_fits("--model", args.model, cfg, arch, args.seq_len, args.precision)
    check_workers("--workers", args.workers)
    check_scheduler("--scheduler", args.scheduler)
    check_out_dir("--out", args.out)


def classic_mapping(args) -> str:
    """The layout this experiment studies: ``P = n_head`` (or its largest divisor the grid
    fits) PEs per segment, whose fabric rate caps weight delivery (the module docstring);
    the default mapping would search wider segments
    (:mod:`gpt_workload.mappings.weight_streaming.search`)."""
    return "weight_streaming:pes_per_segment=heads"


def fill_batches(args) -> list[int]:
    """Batches that fill the wafer at m = 1, 2, ... tokens per segment, up to the largest
    batch that runs as one micro-batch."""
    cfg = resolve_model(args.model)
    arch = load_arch(args.arch)
    probe = simulate(
        cfg,
        arch,
        mapping=classic_mapping(args),
        fidelity="analytic",
        precision=args.precision,
        batch=1,
        seq_len=args.seq_len,
        check_sequences=0,
    )
    p = probe.layout["pes_per_segment"]
    n_segments = arch.wafer.rows * (arch.wafer.cols // p)  # segments the grid holds
    cap = max_batch_single_micro(cfg, arch, args.seq_len, args.precision)
    out = set()
    for m in range(1, args.seq_len + 1):
        b = n_segments // math.ceil(args.seq_len / m)
        if b > cap:
            break
        if b >= 1:
            out.add(b)
    return sorted(out | {cap})


def closed_form(args, bw_bytes_per_s: float) -> dict:
    """``B* = peak W / (BW T f)`` for one bandwidth, with its ingredients."""
    cfg = resolve_model(args.model)
    arch = load_arch(args.arch)
    peak = arch.peak_flops_per_s(args.precision)
    layer_params = (cfg.n_non_embedding_params - 2 * cfg.d_model) / cfg.n_layer
    w_bytes = layer_params * bytes_per_element(args.precision)
    # 2 FLOP per weight per token, plus causal attention (Kaplan et al. 2020)
    f_layer = 2 * layer_params + forward_flops_per_token(cfg, args.seq_len)["attention"] / (
        cfg.n_layer
    )
    return {
        "peak_flops_per_s": peak,
        "layer_weight_bytes": w_bytes,
        "layer_flops_per_token": f_layer,
        "closed_form_batch": peak * w_bytes / (bw_bytes_per_s * args.seq_len * f_layer),
    }


def weight_bytes_per_pe_cycle(arch) -> float:
    """Bytes of weights one PE column can take in per cycle: one link, and the PE's RAMP
    (router -> PE port) where the arch models it."""
    link = arch.fabric.link_bits_per_cycle / 8
    ramp = getattr(arch.fabric, "ramp_wavelets_per_cycle", None)
    return min(link, 4 * ramp) if ramp else link


def crossover(rows: list[dict], cf: dict, seq_len: int) -> dict:
    """The simulated crossover of one bandwidth from its rows (sorted by batch)."""
    rows = sorted(rows, key=lambda r: r["batch_used"])
    io = rows[0]["layer_io_s"]
    peak, f = cf["peak_flops_per_s"], cf["layer_flops_per_token"]

    def eta(r):
        return r["batch_used"] * seq_len * f / (r["layer_compute_s"] * peak)

    j = next((i for i, r in enumerate(rows) if r["layer_compute_s"] >= io), None)
    if j == 0:
        return {"regime": "never I/O-bound", "simulated_batch": None, "eta": eta(rows[0])}
    if j is None:
        return {
            "regime": "I/O-bound up to max batch",
            "simulated_batch": None,
            "eta": eta(rows[-1]),
        }
    a, b = rows[j - 1], rows[j]
    ca, cb = a["layer_compute_s"], b["layer_compute_s"]
    batch = a["batch_used"] + (io - ca) * (b["batch_used"] - a["batch_used"]) / (cb - ca)
    return {"regime": "crossover", "simulated_batch": batch, "eta": eta(b)}


def run(args: argparse.Namespace) -> tuple[list[dict], object]:
    """Sweep, find the crossovers, write the CSVs and the PNG; returns (the crossover rows,
    the figure). The options are those :func:`validate` accepts (:func:`main` checks them
    first).

    Raises:
        FitError: no point of some bandwidth ran (the first point's error, after the sweep
            table is written).
    """
    out = Path(args.out)
    arch = load_arch(args.arch)
    base_bw = arch.io.ingress_bytes_per_s
    scales = io_scales(args)
    batches = fill_batches(args)
    spec = SweepSpec.from_dict(
        {
            "base": {
                "model": args.model,
                "arch": args.arch,
                "seq_len": args.seq_len,
                "precision": args.precision,
                "fidelity": args.fidelity,
                "mapping": classic_mapping(args),
            },
            "grid": {
                "io.ingress_bytes_per_s": [s * base_bw for s in scales],
                "batch": batches,
            },
        },
        name="whatif_io_bandwidth",
    )
    with connect_scheduler(args.scheduler) as client:  # before anything is written
        res = run_sweep(
            spec, output=out / "points.csv", fmt="csv", workers=args.workers, client=client
        )
    every = res.table.to_pylist()
    rows = [r for r in every if r["status"] == "ok"]
    for s in scales:  # a bandwidth without a single run has no crossover to find
        if not any(r["io.ingress_bytes_per_s"] == s * base_bw for r in rows):
            first = next(r for r in every if r["io.ingress_bytes_per_s"] == s * base_bw)
            raise FitError(
                f"--scales {s:g}: no point ran ({first['error']}); see {out / 'points.csv'}"
            )
    fabric_bw = rows[0]["pes_per_segment"] * weight_bytes_per_pe_cycle(arch) * arch.pe.clock_hz
    table = []
    for s in scales:
        bw = s * base_bw
        mine = [r for r in rows if r["io.ingress_bytes_per_s"] == bw]
        cf = closed_form(args, bw)
        sim = crossover(mine, cf, args.seq_len)
        ratio = sim["simulated_batch"] / cf["closed_form_batch"] if sim["simulated_batch"] else None
        table.append(
            {
                "io_scale": s,
                "io_bytes_per_s": bw,
                "fabric_weight_bytes_per_s": fabric_bw,
                "closed_form_batch": cf["closed_form_batch"],
                "simulated_batch": sim["simulated_batch"],
                "simulated_over_closed_form": ratio,
                "eta_compute_over_peak": sim["eta"],
                "regime": sim["regime"],
                "layer_io_s": mine[0]["layer_io_s"],
                "layer_weight_bytes": cf["layer_weight_bytes"],
                "layer_flops_per_token": cf["layer_flops_per_token"],
                "peak_flops_per_s": cf["peak_flops_per_s"],
            }
        )
    with open(out / "crossover.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    fig = figure(args, rows, table, scales, base_bw)
    save(fig, out / "whatif_io_bandwidth.png")
    return table, fig


def main(argv=None) -> int:
    """Check the options, run the experiment and print the crossovers; returns the exit
    status (2 and one line on stderr for a bad option, before anything runs or is written)."""

    def body() -> int:
        args = parse_args(argv)
        validate(args)
        table, _ = run(args)
        out = Path(args.out)
        for t in table:
            sim = f"{t['simulated_batch']:.1f}" if t["simulated_batch"] else t["regime"]
            r = f" (x{t['simulated_over_closed_form']:.3f})" if t["simulated_batch"] else ""
            print(
                f"I/O {t['io_bytes_per_s'] / 1e9:7.1f} GB/s: closed form B* = "
                f"{t['closed_form_batch']:8.1f}, simulated {sim}{r}, "
                f"eta {t['eta_compute_over_peak']:.3f}"
            )
        print(
            f"wrote {out / 'points.csv'}, {out / 'crossover.csv'}, "
            f"{out / 'whatif_io_bandwidth.png'}"
        )
        return 0

    return run_main(PROG, body)


def figure(args, rows, table, scales, base_bw):
    """Three panels: per-layer time vs batch with each bandwidth's stream time; crossover
    batch vs bandwidth; throughput vs batch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 5), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    one = sorted(
        (r for r in rows if r["io.ingress_bytes_per_s"] == scales[0] * base_bw),
        key=lambda r: r["batch_used"],
    )
    bs = [r["batch_used"] for r in one]
    ax1.plot(
        bs, [r["layer_compute_s"] * 1e3 for r in one], "k-o", ms=3, label="simulated layer compute"
    )
    cf = table[0]
    ax1.plot(
        bs,
        [b * args.seq_len * cf["layer_flops_per_token"] / cf["peak_flops_per_s"] * 1e3 for b in bs],
        "k--",
        label="closed form: B T f / peak",
    )
    colours = [f"C{i}" for i in range(len(table))]
    for t, c in zip(table, colours, strict=True):
        ax1.axhline(
            t["layer_io_s"] * 1e3, lw=1, color=c, label=f"weight stream, {t['io_scale']:g}x I/O"
        )
        if t["simulated_batch"]:
            ax1.plot(
                [t["simulated_batch"]], [t["layer_io_s"] * 1e3], "o", color=c, mfc="none", ms=8
            )
    ax1.set_yscale("log")
    ax1.set_xlabel("batch (sequences)")
    ax1.set_ylabel("per-layer time (ms)")
    ax1.set_title("layer compute vs layer weight stream (circles: crossovers)")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)

    bw = [t["io_bytes_per_s"] / 1e9 for t in table]
    ax2.plot(bw, [t["closed_form_batch"] for t in table], "k--", label="closed form B*")
    pts = [(t["io_bytes_per_s"] / 1e9, t["simulated_batch"]) for t in table if t["simulated_batch"]]
    if pts:
        ax2.plot(*zip(*pts, strict=True), "o-", label="simulated crossover")
    ax2.axvline(
        table[0]["fabric_weight_bytes_per_s"] / 1e9,
        color="r",
        ls=":",
        label="fabric weight-multicast rate",
    )
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("MemoryX ingress bandwidth (GB/s)")
    ax2.set_ylabel("crossover batch (sequences)")
    ax2.set_title("I/O-bound below the line, compute-bound above")
    ax2.legend(fontsize=8)
    ax2.grid(which="both", alpha=0.3)

    for s, c in zip(scales, colours, strict=True):
        mine = sorted(
            (r for r in rows if r["io.ingress_bytes_per_s"] == s * base_bw),
            key=lambda r: r["batch_used"],
        )
        ax3.plot(
            [r["batch_used"] for r in mine],
            [r["tokens_per_s"] / 1e6 for r in mine],
            "-o",
            ms=3,
            color=c,
            label=f"{s:g}x I/O ({s * base_bw / 1e9:.0f} GB/s)",
        )
    ax3.set_xlabel("batch (sequences)")
    ax3.set_ylabel("throughput (million tokens/s)")
    ax3.set_title("whole forward pass")
    ax3.legend(fontsize=7)
    ax3.grid(alpha=0.3)
    fig.suptitle(
        f"{args.model} on {args.arch}, {args.seq_len}-token sequences, {args.precision}, "
        f"{args.fidelity} timing"
    )
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
