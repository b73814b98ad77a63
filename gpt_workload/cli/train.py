"""``wse-sim train``: time training steps on the wafer and run them numerically."""

from __future__ import annotations

import argparse

from gpt_workload.cli.console import (
    ALLOW_NONFINITE_HELP,
    check_output_paths,
    console,
    print_notices,
)
from wse_sim.precision import PRECISIONS

__all__ = ["add_parser", "cmd_train"]


def add_parser(sub) -> None:
    """Register ``train`` on the ``wse-sim`` subparsers ``sub``."""
    tr = sub.add_parser("train", help="simulate training steps (timing + numerics)")
    tr.add_argument(
        "--model",
        default="cerebras-gpt-111m",
        help="preset name, config.json or HF checkpoint directory of any family (the numerics "
        "fine-tune from its weights)",
    )
    tr.add_argument("--arch", default="wse2", help="preset name or arch TOML file (one system)")
    tr.add_argument("--steps", type=int, default=1, help="optimizer steps (>= 1)")
    tr.add_argument("--systems", type=int, default=1, help="data-parallel systems through SwarmX")
    tr.add_argument(
        "--batch",
        type=int,
        default=None,
        help="global sequences per step (default: the published training batch)",
    )
    tr.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence, 2..n_positions (default min(2048, n_positions))",
    )
    tr.add_argument("--precision", default="fp16", choices=PRECISIONS, help="fp32, fp16 or bf16")
    tr.add_argument("--fidelity", default="event", help="event (SimPy) or analytic")
    tr.add_argument(
        "--tokens",
        help="the numerics' data: a .npy of int token ids [N, T] (each step takes "
        "min(--check-sequences, N) rows in turn) or a UTF-8 text file (byte tokens; at least "
        "min(--seq-len, 64) bytes)",
    )
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate")
    tr.add_argument(
        "--check-sequences",
        type=int,
        default=4,
        help="sequences of the numerics' check batch (0 = no numerics)",
    )
    tr.add_argument(
        "--numerics-steps",
        type=int,
        default=None,
        metavar="N",
        help="run only the first N of the --steps numerically (0..--steps; default "
        "min(--steps, 20)); the timing covers all --steps, as every step has the same time; "
        "a progress bar with ETA shows on stderr when it is a terminal",
    )
    tr.add_argument("--seed", type=int, default=0, help="weight init and data seed")
    tr.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE")
    tr.add_argument(
        "--checkpoint-offload",
        default="auto",
        metavar="auto|on|off",
        help="stream the layer-input activation checkpoints to MemoryX and back: auto (when "
        "they do not fit the wafer in the fewest micro-batches), on (always) or off (never)",
    )
    tr.add_argument("--json", help="write the training report as JSON")
    tr.add_argument("--allow-nonfinite", action="store_true", help=ALLOW_NONFINITE_HELP)
    tr.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``train()`` with the command line's options; a progress bar on stderr (terminal
    only), the report's tables on stdout, then ``--json``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from gpt_workload.training.data import is_token_file
    from gpt_workload.training.train import train

    check_output_paths(args)
    ids = is_token_file(args.tokens)
    con = console()
    err = Console(stderr=True, highlight=False)
    # progress on stderr, only on a terminal (nothing at all when piped or redirected)
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    tasks: dict[str, int] = {}

    def on_numerics_step(done: int, total: int) -> None:
        if "numerics" not in tasks:
            bar.update(tasks["timing"], visible=False)
            tasks["numerics"] = bar.add_task("numerics: optimizer steps", total=total)
        bar.update(tasks["numerics"], completed=done)

    with bar:
        tasks["timing"] = bar.add_task("timing a training step", total=None)
        rep = train(
            args.model,
            args.arch,
            steps=args.steps,
            systems=args.systems,
            batch=args.batch,
            seq_len=args.seq_len,
            precision=args.precision,
            fidelity=args.fidelity,
            text=None if ids else args.tokens,
            tokens=args.tokens if ids else None,
            lr=args.lr,
            seed=args.seed,
            check_sequences=args.check_sequences,
            numerics_steps=args.numerics_steps,
            overrides=args.set or (),
            progress=on_numerics_step,
            allow_nonfinite=args.allow_nonfinite,
            checkpoint_offload=args.checkpoint_offload,
        )
    print_notices(con, rep.notices)
    t = Table(title="wse-sim train", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rep.console_rows():
        t.add_row(k, v)
    con.print(t)
    if rep.breakdown_s:
        b = Table(title="where a step's time goes", title_justify="left")
        for col in ("part", "ms per step", "share"):
            b.add_column(col, justify="right" if col != "part" else "left")
        for k, v in rep.breakdown_s.items():
            b.add_row(k.replace("_", " "), f"{v * 1e3:.3f}", f"{v / rep.step_time_s:.1%}")
        b.add_row("total", f"{rep.step_time_s * 1e3:.3f}", "100.0%", style="bold")
        con.print(b)
    steps = rep.numerics.get("steps")
    if steps:
        n = Table(
            title=f"numerics: {rep.numerics['steps_run']:,} of {rep.numerics['steps_total']:,} "
            f"step(s), {rep.numerics['check_batch'][0]} x "
            f"{rep.numerics['check_batch'][1]}-token check batch",
            title_justify="left",
        )
        for col in ("step", "loss", "grad norm", "loss scale", "lr", "skipped"):
            n.add_column(col, justify="right")
        for s in steps:
            n.add_row(
                str(s["step"]),
                f"{s['loss']:.4f}",
                f"{s['grad_norm']:.4f}",
                f"{s['loss_scale']:g}",
                f"{s['lr']:.3e}",
                "yes" if s["skipped"] else "no",
            )
        con.print(n)
    if args.json:
        rep.to_json(args.json)
        con.print(f"JSON report written to {args.json}")
    return 0
