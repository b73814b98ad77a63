"""Compare mappings: where the time goes (compute / fabric / weight-I/O stall / idle) for
every registered mapping, per model and arch, in total and per layer.

For each model x arch x mapping the forward pass of ``--batch`` sequences of ``--seq-len``
tokens is simulated (``--fidelity``, analytic by default; no numerics) and the report's
breakdown (``Report.breakdown``: per layer and op; ``Report.totals``) written to
``compare_mappings.csv``: one ``layer = "all"`` row per run with its totals, tokens/s and
MFU, then one row per (layer, op). A mapping that does not fit or is refused is one row with
``status = "error"`` and its one-line message. ``compare_mappings_totals.csv``: the
``layer = "all"`` rows of this run only (small: the README's figure folder keeps this one).
``compare_mappings.png``: per model x arch,
one stacked bar per mapping (compute, fabric not hidden, weight-I/O stall, idle; ms).

Resumable: runs already in the CSV (same model, arch, mapping, batch, seq_len, fidelity) are
not run again; delete the CSV to start over.

Example (the README's figure)::

    python experiments/compare_mappings.py --out results/compare_mappings
    cp results/compare_mappings/compare_mappings{.png,_totals.csv} experiments/figures/
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from gpt_workload.experiment_args import (
    ArgumentParser,
    check_arch,
    check_fidelity,
    check_model,
    check_out_dir,
    check_precision,
    fidelities_for,
    run_main,
)
from gpt_workload.mappings import MAPPINGS, parse_mapping
from gpt_workload.plots import save
from gpt_workload.simulate import MAX_BATCH, simulate
from wse_sim.errors import ConfigError, FitError
from wse_sim.precision import PRECISIONS

PROG = Path(__file__).name

FIELDS = [
    "model",
    "arch",
    "mapping",
    "batch",
    "seq_len",
    "fidelity",
    "status",
    "error",
    "layer",
    "op",
    "compute_s",
    "fabric_s",
    "stall_s",
    "idle_s",
    "total_s",
    "tokens_per_s",
    "mfu",
]
PHASES = (
    ("compute_s", "compute", "#4c72b0"),
    ("fabric_s", "fabric (not hidden)", "#55a868"),
    ("stall_s", "weight-I/O stall", "#c44e52"),
    ("idle_s", "idle", "#8c8c8c"),
)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = ArgumentParser(
        prog=PROG,
        description="Time every registered mapping on each model x arch and break the time "
        "into compute / fabric / weight-I/O stall / idle, in total and per layer. Writes "
        "compare_mappings.csv and compare_mappings.png.",
    )
    p.add_argument(
        "--model",
        default="cerebras-gpt-111m,cerebras-gpt-1.3b",
        help="model presets or config.json paths, comma-separated",
    )
    p.add_argument("--arch", default="wse2,wse3", help="arch presets, comma-separated")
    p.add_argument(
        "--batch",
        type=int,
        default=120,
        help="sequences per run (default 120: Cerebras-GPT-111M's published training batch)",
    )
    p.add_argument(
        "--seq-len", type=int, default=2048, help="tokens per sequence (default: %(default)s)"
    )
    p.add_argument(
        "--precision",
        default="fp16",
        choices=PRECISIONS,
        help="fp16, bf16 or fp32 (default: %(default)s)",
    )
    p.add_argument(
        "--fidelity", default="analytic", help="analytic, event or packet (default: %(default)s)"
    )
    p.add_argument(
        "--mappings",
        default="",
        help="mapping specs, comma-separated, NAME[:knob=value;...] (';' between knobs); "
        "default every registered mapping but auto",
    )
    p.add_argument(
        "--out", default="results/compare_mappings", help="output directory (default: %(default)s)"
    )
    return p.parse_args(argv)


def mapping_specs(arg: str) -> list[str]:
    """``--mappings`` as specs (``;`` between knobs becomes ``,``); all but auto if empty."""
    if not arg:
        return [n for n in MAPPINGS if n != "auto"]
    return [s.strip().replace(";", ",") for s in arg.split(",") if s.strip()]


def validate(args: argparse.Namespace) -> None:
    """Check every option before anything runs or is written.

    A mapping that is valid but does not fit a model x arch is not an error here: it becomes an
    error row of the run.

    Raises:
        ConfigError: one line naming the option, the value given and what is allowed.
    """
    n_positions = [check_model("--model", model).n_positions for model in args.model.split(",")]
    archs = [check_arch("--arch", arch) for arch in args.arch.split(",")]
    if not 1 <= args.batch <= MAX_BATCH:
        raise ConfigError(
            f"--batch {args.batch} is not allowed: expected an integer in 1..{MAX_BATCH}"
        )
    if not 1 <= args.seq_len <= min(n_positions):
        raise ConfigError(
            f"--seq-len {args.seq_len} is not allowed: expected an integer in "
            f"1..{min(n_positions)} (the smallest n_positions of --model)"
        )
    check_precision("--precision", args.precision)
    check_fidelity("--fidelity", args.fidelity, fidelities_for(archs))
    if args.mappings and not mapping_specs(args.mappings):
        raise ConfigError(f"--mappings {args.mappings!r} names no mapping")
    for typed in filter(None, (s.strip() for s in args.mappings.split(","))):
        name = typed.partition(":")[0].strip()
        if name not in MAPPINGS:
            raise ConfigError(
                f"--mappings {typed!r}: unknown mapping {name!r}; allowed: {', '.join(MAPPINGS)} "
                "(NAME[:knob=value;...], ',' between mappings, ';' between knobs)"
            )
        try:
            parse_mapping(typed.replace(";", ","))
        except ConfigError as exc:
            raise ConfigError(f"--mappings {typed!r}: {exc}") from None
    check_out_dir("--out", args.out)


def _key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in ("model", "arch", "mapping", "batch", "seq_len", "fidelity"))


def run_one(model, arch, spec, args) -> list[dict]:
    """Rows of one model x arch x mapping (an error row if it does not fit)."""
    base = {
        "model": model,
        "arch": arch,
        "mapping": spec,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "fidelity": args.fidelity,
    }
    try:
        rep = simulate(
            model,
            arch,
            mapping=spec,
            fidelity=args.fidelity,
            precision=args.precision,
            batch=args.batch,
            seq_len=args.seq_len,
            check_sequences=0,
        )
    except (FitError, ConfigError) as e:
        return [{**base, "status": "error", "error": str(e), "layer": "all", "op": "all"}]
    rows = [
        {
            **base,
            "status": "ok",
            "error": "",
            "layer": "all",
            "op": "all",
            **{k: rep.totals[k] for k in ("compute_s", "fabric_s", "stall_s", "idle_s")},
            "total_s": rep.simulated_time_s,
            "tokens_per_s": rep.tokens_per_s,
            "mfu": rep.mfu,
        }
    ]
    for r in rep.breakdown:
        rows.append(
            {
                **base,
                "status": "ok",
                "error": "",
                "layer": "" if r["layer"] is None else r["layer"],
                "op": r["op"],
                **{k: r[k] for k in ("compute_s", "fabric_s", "stall_s", "idle_s", "total_s")},
            }
        )
    return rows


def run(args: argparse.Namespace) -> tuple[list[dict], object]:
    """Run (resuming from the CSV), write the CSV and the PNG; returns (the per-run total
    rows, the figure).

    Raises:
        ConfigError: a bad option (:func:`validate`), before anything is run or written.
    """
    validate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare_mappings.csv"
    done = set()
    if path.exists():
        with open(path) as fh:
            done = {_key(r) for r in csv.DictReader(fh)}
    else:
        with open(path, "w", newline="") as fh:
            csv.DictWriter(fh, fieldnames=FIELDS).writeheader()
    specs = mapping_specs(args.mappings)
    for model in args.model.split(","):
        for arch in args.arch.split(","):
            for spec in specs:
                probe = {
                    "model": model,
                    "arch": arch,
                    "mapping": spec,
                    "batch": args.batch,
                    "seq_len": args.seq_len,
                    "fidelity": args.fidelity,
                }
                if _key(probe) in done:
                    continue
                rows = run_one(model, arch, spec, args)
                with open(path, "a", newline="") as fh:  # row by row: nothing lost on a kill
                    csv.DictWriter(fh, fieldnames=FIELDS).writerows(rows)
    with open(path) as fh:
        totals = [r for r in csv.DictReader(fh) if r["layer"] == "all"]
    totals = [
        r
        for r in totals
        if r["mapping"] in specs
        and r["model"] in args.model.split(",")
        and r["arch"] in args.arch.split(",")
        and r["batch"] == str(args.batch)
        and r["seq_len"] == str(args.seq_len)
        and r["fidelity"] == args.fidelity
    ]
    with open(out / "compare_mappings_totals.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(totals)
    fig = figure(args, totals, specs)
    save(fig, out / "compare_mappings.png")
    return totals, fig


def figure(args, totals: list[dict], specs: list[str]):
    """One panel per model x arch: a stacked bar per mapping (ms), errors marked."""
    from matplotlib.figure import Figure

    pairs = [(m, a) for m in args.model.split(",") for a in args.arch.split(",")]
    ncol = min(len(pairs), 2)
    nrow = -(-len(pairs) // ncol)
    fig = Figure(figsize=(7.5 * ncol, 4.2 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, (model, arch) in zip(axes, pairs, strict=False):
        rows = {r["mapping"]: r for r in totals if r["model"] == model and r["arch"] == arch}
        x = list(range(len(specs)))
        bottom = [0.0] * len(specs)
        for key, label, colour in PHASES:
            vals = [
                float(rows[s][key]) * 1e3 if s in rows and rows[s]["status"] == "ok" else 0.0
                for s in specs
            ]
            ax.bar(x, vals, bottom=bottom, color=colour, label=label)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        top = max(bottom) if max(bottom, default=0) > 0 else 1.0
        for i, s in enumerate(specs):
            r = rows.get(s)
            if r is None or r["status"] != "ok":
                ax.text(
                    i,
                    top * 0.02,
                    "does not fit" if r else "not run",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            else:
                ax.text(
                    i, bottom[i], f"{float(r['mfu']):.1%}", ha="center", va="bottom", fontsize=7
                )
        ax.set_ylim(0, top * 1.12)
        ax.set_xticks(x)
        ax.set_xticklabels(specs, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("mapping (registry spec; label above a bar: MFU)")
        ax.set_ylabel("simulated time (ms)")
        ax.set_title(f"{model} on {arch}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Forward pass of {args.batch} x {args.seq_len} tokens, {args.precision}, "
        f"{args.fidelity} timing: where the time goes per mapping"
    )
    return fig


def main(argv=None) -> int:
    """Run the experiment, print one line per run; returns the exit status."""

    def body() -> int:
        args = parse_args(argv)
        t0 = time.perf_counter()
        totals, _ = run(args)
        for r in totals:
            if r["status"] == "ok":
                print(
                    f"{r['model']:20s} {r['arch']:5s} {r['mapping']:28s} "
                    f"{float(r['total_s']) * 1e3:10.3f} ms  MFU {float(r['mfu']):6.1%}"
                )
            else:
                print(f"{r['model']:20s} {r['arch']:5s} {r['mapping']:28s} error: {r['error']}")
        out = Path(args.out)
        print(
            f"wrote {out / 'compare_mappings.csv'}, {out / 'compare_mappings.png'} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        if not any(r["status"] == "ok" for r in totals):
            print(f"{PROG}: error: every run failed (see the rows above)", file=sys.stderr)
            return 2
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
