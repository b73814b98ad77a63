"""``wse-sim run``: simulate one forward pass, print the report, the time and energy split."""

from __future__ import annotations

import argparse

import numpy as np

from gpt_workload.checks import check_token_ids, load_token_file
from gpt_workload.cli.console import (
    ALLOW_NONFINITE_HELP,
    check_output_paths,
    console,
    print_notices,
)
from wse_sim.errors import ConfigError
from wse_sim.precision import PRECISIONS

__all__ = ["add_parser", "cmd_run", "print_energy_table"]


def add_parser(sub) -> None:
    """Register ``run`` on the ``wse-sim`` subparsers ``sub``."""
    from gpt_workload.mappings import MAPPINGS

    r = sub.add_parser("run", help="simulate one forward pass (the main job)")
    r.add_argument(
        "--model",
        default="cerebras-gpt-111m",
        help="preset name, config.json path or checkpoint directory",
    )
    r.add_argument("--arch", default="wse2", help="preset name or arch TOML file")
    r.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence (default min(2048, n_positions))",
    )
    r.add_argument(
        "--batch",
        type=int,
        default=None,
        help="sequences timed (default: the "
        "published training batch, capped at what fits one micro-batch)",
    )
    r.add_argument("--precision", default="fp16", choices=PRECISIONS, help="fp32, fp16 or bf16")
    r.add_argument(
        "--mapping",
        default="weight_streaming",
        metavar="NAME[:knob=value,...]",
        help=f"lowering strategy: {', '.join(MAPPINGS)} (knobs: wse-sim mappings list)",
    )
    r.add_argument(
        "--fidelity",
        default="event",
        help="event (SimPy, whole wafer), analytic (closed form) or packet (every router)",
    )
    r.add_argument(
        "--check-sequences",
        type=int,
        default=None,
        help="sequences whose numerics run through the per-PE kernels (0 = none)",
    )
    r.add_argument("--tokens", help=".npy of int token ids [K, T] for the numerics")
    r.add_argument("--save-logits", help="write float32 logits [K, T, vocab] to this .npy")
    r.add_argument(
        "--set",
        action="append",
        metavar="LEVEL.FIELD=VALUE",
        help="override an arch field, e.g. --set pe.sram_bytes=98304 (repeatable)",
    )
    r.add_argument("--json", help="write the full report as JSON")
    r.add_argument("--plot", help="write PE-utilisation / SRAM maps (.npy, .png) to this dir")
    r.add_argument("--seed", type=int, default=0, help="weight init and token seed")
    r.add_argument("--trace", help="write the timeline as Chrome/Perfetto trace-event JSON")
    r.add_argument("--allow-nonfinite", action="store_true", help=ALLOW_NONFINITE_HELP)
    r.set_defaults(func=cmd_run)


def print_energy_table(con, rep, by: str = "op") -> None:
    """The energy split by op (or layer) and component, in joules, largest first."""
    from rich.table import Table

    from gpt_workload.report import energy_rows

    rows = energy_rows(rep, by)
    if not rows:
        return
    t = Table(
        title=f"where the energy goes (by {by}, joules; static over each {by}'s time)",
        title_justify="left",
    )
    comps = ("compute", "sram", "fabric", "io", "static")
    for col in (by, "total J", "compute J", "SRAM J", "fabric J", "I/O J", "static J", "share"):
        t.add_column(col, justify="left" if col == by else "right")
    tot = sum(r["total"] for r in rows) or 1.0
    for r in rows:
        t.add_row(str(r[by]), f"{r['total']:.4g}", *(f"{r[c]:.4g}" for c in comps),
                  f"{r['total'] / tot:.1%}")
    t.add_row("total", f"{tot:.4g}", *(f"{sum(r[c] for r in rows):.4g}" for c in comps),
              "100.0%", style="bold")
    con.print(t)


def cmd_run(args: argparse.Namespace) -> int:
    """Run ``simulate()`` with the command line's options; print, then write the outputs."""
    from rich.table import Table

    from gpt_workload.report import breakdown_rows, format_console
    from gpt_workload.simulate import simulate

    tokens = None
    if args.tokens:
        tokens = check_token_ids(load_token_file("--tokens", args.tokens), name="--tokens")
    check_output_paths(args)
    if args.save_logits and args.check_sequences == 0:
        raise ConfigError("--save-logits needs the numerics, but --check-sequences is 0")
    con = console()
    with con.status("simulating ..."):
        rep = simulate(
            args.model,
            args.arch,
            mapping=args.mapping,
            fidelity=args.fidelity,
            precision=args.precision,
            batch=args.batch,
            seq_len=args.seq_len,
            check_sequences=args.check_sequences,
            tokens=tokens,
            seed=args.seed,
            overrides=args.set or (),
            keep_logits=bool(args.save_logits),
            allow_nonfinite=args.allow_nonfinite,
        )
    print_notices(con, rep.notices)
    t = Table(title="wse-sim run", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in format_console(rep):
        t.add_row(k, v)
    con.print(t)
    if "mapping_search" in rep.layout:  # --mapping auto: the ranking it chose from
        from gpt_workload.mappings.auto import search_table

        con.print(search_table(rep.layout["mapping_search"]), markup=False)
    b = Table(
        title="where the time goes (by op, summed over layers and micro-batches)",
        title_justify="left",
    )
    cols = ("total_s", "compute_s", "fabric_s", "stall_s", "idle_s")
    for col in ("op", "total ms", "compute ms", "fabric ms", "I/O stall ms", "idle ms", "share"):
        b.add_column(col, justify="right" if col != "op" else "left")
    for row in breakdown_rows(rep):
        b.add_row(
            row["op"],
            *(f"{row[k] * 1e3:.3f}" for k in cols),
            f"{row['total_s'] / rep.simulated_time_s:.1%}",
        )
    b.add_row("total", *(f"{rep.totals[k] * 1e3:.3f}" for k in cols), "100.0%", style="bold")
    con.print(b)
    print_energy_table(con, rep)
    if args.json:
        rep.to_json(args.json)
        con.print(f"JSON report written to {args.json}")
    if args.save_logits:
        if rep.logits is None:
            raise ConfigError(
                f"--save-logits: no logits, the numerics were skipped "
                f"({rep.numerics.get('skipped')})"
            )
        np.save(args.save_logits, rep.logits.astype(np.float32))
        con.print(f"logits {rep.logits.shape} written to {args.save_logits}")
    if args.plot:
        for p in rep.save_maps(args.plot):
            con.print(f"wrote {p}")
    if args.trace:
        from gpt_workload.trace import write_trace

        con.print(f"Perfetto/Chrome trace written to {write_trace(rep, args.trace)}")
    return 0
