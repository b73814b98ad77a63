"""``wse-sim validate`` and ``wse-sim kernel gemm|collective``: the validation table and the
bare kernel scenarios on the command line (registered by :mod:`gpt_workload.cli`).

Errors are the project's (:class:`wse_sim.errors.WseSimError`): ``wse-sim``'s ``main`` prints
them as one line and exits 2.
"""

from __future__ import annotations

import argparse

from wse_sim.errors import ConfigError

VALIDATE_EPILOG = (
    "Exit status: 0 when every calibration row is within its tolerance; 1 when a calibration "
    "row leaves it; 2 on bad input (a data file with an unknown scenario field, a missing "
    "source, a non-positive value ...: one line naming the row and the field). Rows whose "
    "scenario cannot be expressed yet (a model family that training does not lower, no "
    "generation job) are reported with the reason and do not fail; neither do predictions."
)


def add_parser(sub) -> None:
    """Add ``validate`` and ``kernel`` to the subcommands ``sub``."""
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

    k = sub.add_parser("kernel", help="one bare GEMM or collective on a PE region")
    ksub = k.add_subparsers(dest="kernel_cmd", required=True)
    g = ksub.add_parser("gemm", help="C[M,N] = A[M,K] B[K,N] under a GEMM mapping")
    g.add_argument("--m", type=int, required=True, help="rows of A and C")
    g.add_argument("--k", type=int, required=True, help="inner dimension")
    g.add_argument("--n", type=int, required=True, help="columns of B and C")
    g.add_argument("--arch", default="wse2", help="arch preset or TOML")
    g.add_argument(
        "--mapping", default="summa", help="summa, cannon, meshgemm, ws, row_1d or col_1d"
    )
    g.add_argument("--region", help="ROWSxCOLS of PEs (default: the whole wafer)")
    place = g.add_mutually_exclusive_group()
    place.add_argument("--resident", dest="operands", action="store_const", const="resident",
                       help="A and B already on the PEs (default)")  # fmt: skip
    place.add_argument("--streamed", dest="operands", action="store_const", const="streamed",
                       help="B streams in from MemoryX")  # fmt: skip
    g.set_defaults(operands="resident")
    g.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16")
    g.add_argument("--fidelity", default="analytic", help="analytic, event or packet")
    g.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE", help="arch override")
    g.set_defaults(func=cmd_kernel_gemm)
    c = ksub.add_parser("collective", help="reduce / all-reduce / broadcast on a row of PEs")
    c.add_argument("--kind", default="reduce", help="reduce, allreduce or broadcast")
    c.add_argument(
        "--algorithm", default="chain", help="chain, tree (reduce), ring (allreduce), tree (broadcast)"
    )
    c.add_argument("--pes", type=int, required=True, help="PEs on the row")
    c.add_argument("--elements", type=int, required=True, help="fp32 elements per PE")
    c.add_argument("--arch", default="wse2", help="arch preset or TOML")
    c.add_argument("--fidelity", default="packet", help="packet (engine) or analytic (closed form)")
    c.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE", help="arch override")
    c.set_defaults(func=cmd_kernel_collective)


def _console(min_width: int = 120):
    import shutil

    from rich.console import Console

    # the terminal's width, but never narrower than the table needs
    return Console(
        highlight=False,
        soft_wrap=False,
        width=max(shutil.get_terminal_size((150, 24)).columns, min_width),
    )


def cmd_validate(args: argparse.Namespace) -> int:
    """``wse-sim validate``: print the table; ``--out`` writes CSV and the parity plot."""
    from rich.table import Table

    from gpt_workload.experiment_args import check_out_dir, parse_names
    from gpt_workload.validation.table import (
        CANNOT,
        OUT,
        exit_status,
        fmt_value,
        parity_plot,
        validate,
        write_csv,
    )

    out = check_out_dir("--out", args.out) if args.out else None
    only = parse_names("--only", args.only, "row ids") if args.only else None
    rows = validate(args.data, fidelity=args.fidelity, only=only)
    con = _console(150)
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


def _overrides(args) -> list[str]:
    return list(args.set or [])


def cmd_kernel_gemm(args: argparse.Namespace) -> int:
    """``wse-sim kernel gemm``: time, TFLOP/s and utilisation of one GEMM."""
    from gpt_workload.kernel_scenario import gemm_scenario, parse_region

    region = parse_region(args.region) if args.region else None
    r = gemm_scenario(
        args.m, args.k, args.n, arch=args.arch, mapping=args.mapping, region=region,
        operands=args.operands, precision=args.precision, fidelity=args.fidelity,
        overrides=_overrides(args),
    )  # fmt: skip
    _print_kv(
        f"GEMM {r.M} x {r.K} x {r.N} ({r.precision}, {r.operands}) by {r.mapping} on "
        f"{r.rows} x {r.cols} PEs of {r.arch} ({r.fidelity})",
        [
            ("time", f"{r.time_s * 1e3:.4g} ms ({r.cycles:,.0f} cycles)"),
            ("throughput", f"{r.tflops:.4g} TFLOP/s"),
            ("utilisation", f"{r.utilisation:.1%} of the region's {r.peak_flops_per_s / 1e12:.4g} TFLOP/s peak"),
            ("compute / PE", f"{r.compute_cycles:,.0f} cycles ({r.overhead_cycles:,.0f} vector-op setup)"),
            ("fabric", f"{r.fabric_cycles:,.0f} cycles busiest link group; latency {r.latency_cycles:,.0f}"),
            ("steps", f"{r.n_steps:,} (pipeline chunks)"),
            ("SRAM / PE", f"{r.sram_bytes:,} B"),
        ],
    )  # fmt: skip
    return 0


def cmd_kernel_collective(args: argparse.Namespace) -> int:
    """``wse-sim kernel collective``: cycles and link utilisation of one collective."""
    from gpt_workload.kernel_scenario import collective_scenario

    if args.fidelity not in ("packet", "analytic"):
        raise ConfigError(f"--fidelity {args.fidelity!r} is not allowed: expected packet or analytic")
    r = collective_scenario(
        args.kind, args.algorithm, args.pes, args.elements, arch=args.arch,
        fidelity=args.fidelity, overrides=_overrides(args),
    )  # fmt: skip

    def cyc(x):
        return "n/a" if x != x else f"{x:,.1f} cycles"

    _print_kv(
        f"{r.kind} ({r.algorithm}) of {r.elements:,} fp32 per PE on a row of {r.pes} PEs of "
        f"{r.arch} ({r.fidelity})",
        [
            ("time", f"{r.cycles:,.1f} cycles = {r.time_s * 1e6:.4g} us"),
            ("closed form", cyc(r.closed_form_cycles)),
            ("[HPDC24] model", cyc(r.hpdc24_cycles) + " (T_R = 2, 1-cycle hops)"),
            ("latency bound", cyc(r.latency_bound_cycles)),
            ("utilisation", f"{r.link_utilisation:.1%} of one link (vector / time)"),
        ],
    )
    return 0


def _print_kv(title: str, items: list[tuple[str, str]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value")
    for k, v in items:
        t.add_row(k, v)
    _console().print(t)
