"""``wse-sim validate``: the table of measured figures against the simulator on the command
line (registered by :mod:`gpt_workload.cli`).

Errors are the project's (:class:`wse_sim.errors.WseSimError`): ``wse-sim``'s ``main`` prints
them as one line and exits 2.
"""

from __future__ import annotations

import argparse

from gpt_workload.cli.console import console

VALIDATE_EPILOG = (
    "Exit status: 0 when every calibration row is within its tolerance; 1 when a calibration "
    "row leaves it; 2 on bad input (a data file with an unknown scenario field, a missing "
    "source, a non-positive value ...: one line naming the row and the field). Rows whose "
    "scenario cannot be expressed yet (a model family that training does not lower, no "
    "generation job) are reported with the reason and do not fail; neither do predictions."
)


def add_parser(sub) -> None:
    """Add ``validate`` to the subcommands ``sub``."""
    v = sub.add_parser(
        "validate",
        help="run the measured-figures table: measured vs simulated, error, role",
        description="Run every measured figure of the data file (default: the shipped "
        "measured.toml, shared/reference/measured.md) through its scenario and print measured, "
        "simulated, error, tolerance, role and the parameters each calibration row set.",
        epilog=VALIDATE_EPILOG,
    )
    v.add_argument("--data", help="measured-figures TOML file (default: the shipped one)")
    v.add_argument(
        "--fidelity",
        default="analytic",
        help="analytic (default: every row in seconds), event or packet",
    )
    v.add_argument("--out", metavar="DIR", help="write validation.csv and parity.png here")
    v.add_argument("--only", metavar="ID[,ID...]", help="run only these row ids")
    v.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    """``wse-sim validate``: print the table; ``--out`` writes CSV and the parity plot."""
    from rich.table import Table

    from gpt_workload.experiment_args import check_fidelity, check_out_dir, parse_names
    from gpt_workload.validation.table import (
        CANNOT,
        OUT,
        exit_status,
        fmt_value,
        parity_plot,
        validate,
        write_csv,
    )

    check_fidelity("--fidelity", args.fidelity)
    out = check_out_dir("--out", args.out) if args.out else None
    only = parse_names("--only", args.only, "row ids") if args.only else None
    rows = validate(args.data, fidelity=args.fidelity, only=only)
    con = console(150, 150)
    t = Table(title=f"validation against measured figures ({args.fidelity})", title_justify="left")
    for col, just in (("id", "left"), ("measured", "right"),
                      ("simulated", "right"), ("units", "left"), ("error", "right"),
                      ("tol.", "right"), ("role", "left"), ("sets", "left"),
                      ("status", "left")):  # fmt: skip
        t.add_column(col, justify=just, overflow="fold")
    for r in rows:
        err = "-" if r.error_pct is None else f"{r.error_pct:+.1f}%"
        style = {OUT: "red", CANNOT: "yellow"}.get(r.status)
        role = r.role if r.role == "prediction" else "calibration"
        sets = "\n".join(r.sets) if r.sets else ("-" if r.role == "prediction" else "(none)")
        t.add_row(r.id, fmt_value(r.measured), fmt_value(r.simulated), r.units, err,
                  f"{r.tolerance_pct:g}%", role, sets, r.status, style=style)  # fmt: skip
    con.print(t)
    for r in rows:
        if r.status == CANNOT:
            con.print(f"{r.id}: cannot run: {r.reason}")
    n_cal = sum(r.role == "calibration" and r.status != CANNOT for r in rows)
    n_bad = sum(r.role == "calibration" and r.status == OUT for r in rows)
    con.print(
        f"{len(rows)} rows: {n_cal} calibration rows ran, {n_bad} outside tolerance; "
        f"{sum(r.status == CANNOT for r in rows)} cannot run; "
        f"{sum(r.wall_s for r in rows):.1f} s"
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        csv_p = write_csv(rows, out / "validation.csv")
        png = parity_plot(rows, out / "parity.png")
        con.print(f"wrote {csv_p} and {png}")
    return exit_status(rows)
