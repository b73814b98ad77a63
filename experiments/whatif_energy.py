"""What-if: tokens per joule and tokens per second against SRAM per PE, clock and SIMD width,
for training (default Cerebras-GPT-1.3B on ``wse2``), with the Pareto front marked.

Every point is one timed training step (:func:`gpt_workload.training.train.train`, timing
only, ``analytic`` by default) and its energy (:mod:`wse_sim.energy`, the preset's energies
per action). What changes with each knob, and what is held (stated so the figure can be read):

* **SRAM per PE** (``pe.sram_bytes``): more sequences per micro-batch, so fewer weight passes
  per step. A larger bank costs more per access: the SRAM energy per byte is scaled by
  ``(7.5 + 0.5 log2(S / S0)) / 7.5`` pJ per 64-bit access, [J21]'s 7 nm growth from 8 KB
  (7.5 pJ) to 32 KB (8.5 pJ), relative to the preset's size ``S0``.
* **Clock** (``pe.clock_hz``): faster compute and fabric (the MemoryX I/O is unchanged).
  A faster clock needs a higher supply voltage; with ``V`` proportional to ``f`` around the
  nominal point every dynamic energy per action scales by ``(f / f0)^x``,
  ``x = --dvfs-exponent`` (default 2: ``E ~ V^2``; 0 holds them, the optimistic case).
* **SIMD width** (``pe.fmac_fp16_per_cycle`` and ``fmac_bf16_per_cycle``): the FMAC lanes
  per cycle; the SRAM ports are widened in proportion (``sram_read/write_bytes_per_cycle``),
  as each lane reads two elements and writes one per cycle ([HC34]'s port model).
  Energy per lane is held. A width is a power of two, 1 to 64 (``--simd``): the published
  widths are 4 (WSE-1/2) and 8 (WSE-3) [NP], [WL], and the SRAM is 8 x 32-bit banks read
  as 2 x 64-bit words per cycle at width 4 [HC34]; scaling those ports by ``W / 4`` gives
  whole 32-bit banks only for powers of two (width 3 would need 1.5 64-bit read ports).
  Lanes are counted from the width, so a fractional width (``2.5``) is refused too (the arch
  requires whole ``pe.fmac_fp16/bf16_per_cycle``).
* **Clock range**: ``--clock-ghz`` within 0.5x..2x the arch's clock (0.55..2.2 GHz on the
  presets' 1.1 GHz [HC34]; the SDK's timing examples use 0.85 GHz [CSL]). The dynamic-energy
  rule below (``V`` proportional to ``f``) is a first-order model of voltage scaling near the
  nominal point; a factor of two either way is where it stops being defensible (near the
  threshold voltage below, past the process's maximum supply above), so points outside are
  refused rather than extrapolated (``--clock-ghz 100`` would report a GW-class wafer).
* **Static power per PE** follows the PE's size and clock: proportional to its area, taken as
  half SRAM (scaling with ``S / S0``) and half logic (scaling with the SIMD width), and half
  of it the clock tree, proportional to ``f / f0``: ``static = static0 x (S/S0 + W/W0) / 2 x
  (1 + f/f0) / 2``. The splits are assumptions (Cerebras publishes none; energy.md section 3
  puts the clock at 20-35 % of dynamic power); the preset point keeps the preset's value.

Every option is checked before anything runs (:mod:`gpt_workload.experiment_args`): a bad one
is a one-line ``whatif_energy.py: error: ...`` on stderr, exit status 2, nothing written.

Writes ``whatif_energy.csv`` (one row per point, ``pareto`` = on the front of tokens/s and
tokens/J) and ``whatif_energy.png`` into ``--out``.

Example::

    python experiments/whatif_energy.py --out experiments/figures
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
from pathlib import Path

from gpt_workload.experiment_args import (
    ArgumentParser,
    check_arch,
    check_arch_field,
    check_fidelity,
    check_int,
    check_model,
    check_out_dir,
    check_precision,
    check_seq_len,
    parse_floats,
    parse_ints,
    run_main,
)
from gpt_workload.plots import save
from gpt_workload.report import si
from wse_sim.errors import ConfigError, WseSimError
from wse_sim.precision import PRECISIONS

PROG = Path(__file__).name
KIB = 1024
COLUMNS = (
    "sram_kib", "clock_ghz", "simd", "status", "error", "batch", "micro_batches",
    "step_time_s", "tokens_per_s", "step_j", "tokens_per_j", "j_per_token", "flop_per_j",
    "wafer_avg_w", "system_avg_w", "peak_w", "compute_j", "sram_j", "fabric_j", "io_j",
    "static_j", "mfu", "pareto",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = ArgumentParser(
        prog=PROG,
        description="Tokens/J and tokens/s of training vs SRAM per PE, clock and SIMD width "
        "(Pareto front marked). Writes whatif_energy.csv and whatif_energy.png.",
    )
    p.add_argument("--model", default="cerebras-gpt-1.3b", help="model (default: %(default)s)")
    p.add_argument("--arch", default="wse2", help="arch preset or TOML (default: %(default)s)")
    p.add_argument(
        "--sram-kib",
        default="48,64,96,128",
        help="comma-separated SRAM per PE in KiB (default: %(default)s)",
    )
    p.add_argument(
        "--clock-ghz", default="0.85,1.1,1.4", help="comma-separated clocks, GHz (default: "
        "%(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--simd", default="2,4,8", help="comma-separated fp16 FMACs per cycle (default: "
        "%(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=int, default=None,
        help="global sequences per step (default: the model's published training batch)",
    )  # fmt: skip
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default: "
                   "%(default)s)")  # fmt: skip
    p.add_argument(
        "--precision",
        default="fp16",
        choices=PRECISIONS,
        help="fp16, bf16 or fp32 (default: %(default)s)",
    )
    p.add_argument("--fidelity", default="analytic", help="analytic or event (default: "
                   "%(default)s)")  # fmt: skip
    p.add_argument(
        "--dvfs-exponent", type=float, default=2.0,
        help="dynamic energy per action x (f/f0)^X, 0..3 (default: %(default)s; 0 = held)",
    )  # fmt: skip
    p.add_argument("--out", default="results/whatif_energy", help="output directory, created "
                   "if missing (default: %(default)s)")  # fmt: skip
    return p.parse_args(argv)


#: SIMD widths allowed (powers of two, see the module docstring)
SIMD_WIDTHS = (1, 2, 4, 8, 16, 32, 64)
#: clock range, as a factor of the arch's own clock (module docstring)
CLOCK_RANGE = (0.5, 2.0)


def knobs(
    args: argparse.Namespace, clock0_ghz: float = 1.1
) -> tuple[list[float], list[float], list[int]]:
    """``(SRAM KiB, clock GHz, SIMD width)`` lists of the options; ``clock0_ghz`` is the
    arch's clock (``pe.clock_hz``, 1.1 GHz on every preset [HC34]).

    Raises:
        ConfigError: SRAM not finite numbers > 0; a clock outside :data:`CLOCK_RANGE` x
            ``clock0_ghz``; a SIMD width not in :data:`SIMD_WIDTHS`.
    """
    lo, hi = (round(f * clock0_ghz, 6) for f in CLOCK_RANGE)
    simd = parse_ints("--simd", args.simd, 1, SIMD_WIDTHS[-1], example="2,4,8")
    for w in simd:
        if w not in SIMD_WIDTHS:
            raise ConfigError(
                f"--simd {args.simd!r} is not allowed: SIMD widths are powers of two "
                f"({', '.join(map(str, SIMD_WIDTHS))}); {w} is not"
            )
    return (
        parse_floats("--sram-kib", args.sram_kib, 0, lo_open=True),
        parse_floats("--clock-ghz", args.clock_ghz, lo, hi,
                     example=f"{lo:g}..{hi:g} GHz: 0.5x..2x the arch's {clock0_ghz:g} GHz"),
        simd,
    )  # fmt: skip


DYNAMIC_FIELDS = (
    "fmac_fp16_pj", "fmac_bf16_pj", "fmac_fp32_pj", "wavelet_hop_pj", "ramp_wavelet_pj",
    "router_buffer_write_pj", "router_buffer_read_pj",
)  # fmt: skip


def overrides(
    arch, sram_kib: float, clock_ghz: float, simd: float, dvfs_exponent: float = 2.0
) -> list[str]:
    """The arch overrides of one point (see the module docstring for what is scaled)."""
    pe, e = arch.pe, arch.energy
    size = int(sram_kib * KIB)
    grow = (7.5 + 0.5 * math.log2(size / pe.sram_bytes)) / 7.5  # [J21] 8 KB -> 32 KB
    w = simd / pe.fmac_fp16_per_cycle
    f = clock_ghz * 1e9 / pe.clock_hz
    v2 = f**dvfs_exponent
    static = e.static_pe_w * (size / pe.sram_bytes + w) / 2 * (1 + f) / 2
    return [
        *(f"energy.{k}={getattr(e, k) * v2!r}" for k in DYNAMIC_FIELDS),
        f"energy.static_pe_w={static!r}",
        f"pe.sram_bytes={size}",
        f"pe.clock_hz={clock_ghz * 1e9!r}",
        f"pe.fmac_fp16_per_cycle={simd!r}",
        f"pe.fmac_bf16_per_cycle={simd!r}",
        f"pe.sram_read_bytes_per_cycle={max(1, round(pe.sram_read_bytes_per_cycle * w))}",
        f"pe.sram_write_bytes_per_cycle={max(1, round(pe.sram_write_bytes_per_cycle * w))}",
        f"energy.sram_read_pj_per_byte={e.sram_read_pj_per_byte * grow * v2!r}",
        f"energy.sram_write_pj_per_byte={e.sram_write_pj_per_byte * grow * v2!r}",
    ]


def validate(args: argparse.Namespace) -> None:
    """Check every option before anything runs or is written.

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed.
    """
    cfg = check_model("--model", args.model)
    arch = check_arch("--arch", args.arch)
    sram, clock, simd = knobs(args, arch.pe.clock_hz / 1e9)
    for text, v in zip(args.sram_kib.split(","), sram, strict=True):
        check_arch_field("--sram-kib", text.strip(), arch, "pe.sram_bytes", int(v * KIB))
    for text, v in zip(args.clock_ghz.split(","), clock, strict=True):
        check_arch_field("--clock-ghz", text.strip(), arch, "pe.clock_hz", v * 1e9)
    for text, v in zip(args.simd.split(","), simd, strict=True):
        check_arch_field("--simd", text.strip(), arch, "pe.fmac_fp16_per_cycle", v)
    if not (math.isfinite(args.dvfs_exponent) and 0 <= args.dvfs_exponent <= 3):
        raise ConfigError(
            f"--dvfs-exponent {args.dvfs_exponent!r} is not allowed: expected a number in 0..3"
        )
    for s, c, w in itertools.product(sram, clock, simd):  # every combination is a valid arch
        try:
            arch.with_overrides(overrides(arch, s, c, w, args.dvfs_exponent))
        except ConfigError as exc:
            raise ConfigError(
                f"--sram-kib {s:g} with --clock-ghz {c:g} and --simd {w:g} is not allowed on "
                f"{arch.name}: {exc}"
            ) from None
    if args.batch is not None:
        check_int("--batch", args.batch, 1, 100_000)
    check_seq_len("--seq-len", args.seq_len, [cfg])
    check_precision("--precision", args.precision)
    check_fidelity("--fidelity", args.fidelity, ("analytic", "event"))
    check_out_dir("--out", args.out)


def point(args, arch, sram_kib: float, clock_ghz: float, simd: float) -> dict:
    """One training step at the point; a model that does not fit is an error row."""
    from gpt_workload.training.train import train

    row: dict = {"sram_kib": sram_kib, "clock_ghz": clock_ghz, "simd": simd}
    try:
        rep = train(
            args.model,
            args.arch,
            steps=1,
            batch=args.batch,
            seq_len=args.seq_len,
            precision=args.precision,
            fidelity=args.fidelity,
            check_sequences=0,
            overrides=overrides(arch, sram_kib, clock_ghz, simd, args.dvfs_exponent),
        )
    except WseSimError as exc:
        return {**row, "status": "error", "error": " ".join(str(exc).split())}
    e = rep.energy
    c = e["components_j_per_system"]
    return {
        **row,
        "status": "ok",
        "error": "",
        "batch": rep.batch,
        "micro_batches": rep.training["micro_batches"],
        "step_time_s": rep.step_time_s,
        "tokens_per_s": rep.tokens_per_s,
        "step_j": e["step_j"],
        "tokens_per_j": e["tokens_per_j"],
        "j_per_token": e["j_per_token"],
        "flop_per_j": e["flop_per_j"],
        "wafer_avg_w": e["wafer_avg_w"],
        "system_avg_w": e["system_avg_w"],
        "peak_w": e["peak_w"],
        **{f"{k}_j": c[k] for k in ("compute", "sram", "fabric", "io", "static")},
        "mfu": rep.mfu,
    }


def mark_pareto(rows: list[dict]) -> None:
    """Set ``pareto`` on every ok row that no other ok row beats on both tokens/s and tokens/J
    (at least as good on both, better on one); a row with undefined tokens/J (0 J) is on no
    front."""
    ok = [r for r in rows if r["status"] == "ok" and r["tokens_per_j"] is not None]
    for r in rows:
        r["pareto"] = r in ok and not any(
            o["tokens_per_s"] >= r["tokens_per_s"]
            and o["tokens_per_j"] >= r["tokens_per_j"]
            and (o["tokens_per_s"] > r["tokens_per_s"] or o["tokens_per_j"] > r["tokens_per_j"])
            for o in ok
        )


def figure(args, rows):
    """Tokens/J against tokens/s, colour = clock, marker = SIMD width, size = SRAM; the
    Pareto front joined."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.2), layout="constrained")
    ax = fig.subplots()
    ok = [r for r in rows if r["status"] == "ok" and r["tokens_per_j"] is not None]
    clocks = sorted({r["clock_ghz"] for r in ok})
    simds = sorted({r["simd"] for r in ok})
    srams = sorted({r["sram_kib"] for r in ok})
    markers = "os^Dvp*h"
    for r in ok:
        ci = clocks.index(r["clock_ghz"])
        ax.scatter(
            r["tokens_per_s"] / 1e3,
            r["tokens_per_j"],
            s=30 + 40 * srams.index(r["sram_kib"]),
            marker=markers[simds.index(r["simd"]) % len(markers)],
            color=f"C{ci}",
            alpha=0.75,
            edgecolor="k" if r["pareto"] else "none",
            linewidth=1.5,
        )
    front = sorted((r for r in ok if r["pareto"]), key=lambda r: r["tokens_per_s"])
    ax.plot([r["tokens_per_s"] / 1e3 for r in front], [r["tokens_per_j"] for r in front], "k--",
            lw=1, label="Pareto front (outlined points)")  # fmt: skip
    for i, c in enumerate(clocks):
        ax.scatter([], [], color=f"C{i}", label=f"clock {c:g} GHz")
    for i, w in enumerate(simds):
        ax.scatter([], [], color="grey", marker=markers[i % len(markers)], label=f"SIMD {w:g}")
    for i, s in enumerate(srams):
        ax.scatter([], [], color="white", edgecolor="grey", s=30 + 40 * i, label=f"SRAM {s:g} KiB")
    ax.set_xlabel("training throughput (thousand tokens/s)")
    ax.set_ylabel("tokens per joule (system: wafer + I/O + non-wafer static)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.set_title(
        f"{args.model} training on {args.arch}: {args.seq_len}-token sequences, "
        f"{args.precision}, {args.fidelity} timing\ndynamic energy x (f/f0)^"
        f"{args.dvfs_exponent:g}, static power with PE area and clock", fontsize=9,
    )  # fmt: skip
    return fig


def run(args: argparse.Namespace) -> list[dict]:
    """Run every point, write the CSV and the PNG; returns the rows."""
    from wse_sim.arch import load_arch

    arch = load_arch(args.arch)
    sram, clock, simd = knobs(args, arch.pe.clock_hz / 1e9)
    rows = [point(args, arch, s, c, w) for s, c, w in itertools.product(sram, clock, simd)]
    mark_pareto(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "whatif_energy.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        wr.writeheader()
        wr.writerows(rows)
    if any(r["status"] == "ok" for r in rows):
        save(figure(args, rows), out / "whatif_energy.png")
    return rows


def main(argv=None) -> int:
    """Check the options, run the experiment and print one line per point; returns the exit
    status (2 and one line on stderr for a bad option, before anything runs or is written;
    2 when no point fits)."""

    def body() -> int:
        args = parse_args(argv)
        validate(args)
        rows = run(args)
        for r in rows:
            head = f"SRAM {r['sram_kib']:5g} KiB, {r['clock_ghz']:4g} GHz, SIMD {r['simd']:g}: "
            if r["status"] != "ok":
                print(head + r["error"])
                continue
            tpj = "undefined (0 J)" if r["tokens_per_j"] is None else f"{r['tokens_per_j']:.4g}"
            print(
                head + f"{r['tokens_per_s']:10,.0f} tokens/s, {tpj} tokens/J, "
                f"wafer {si(r['wafer_avg_w'], 'W')}" + ("  <- Pareto" if r["pareto"] else "")
            )
        out = Path(args.out)
        print(f"wrote {out / 'whatif_energy.csv'}, {out / 'whatif_energy.png'}")
        if not any(r["status"] == "ok" for r in rows):
            print(f"{PROG}: error: no point fits (see the rows above)", file=sys.stderr)
            return 2
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
