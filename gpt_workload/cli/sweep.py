"""``wse-sim sweep SPEC.toml``: run a parameter sweep through :mod:`gpt_workload.sweep`'s
public API (``load_spec``, ``run_sweep``) with a progress bar on stderr and a one-line summary."""

from __future__ import annotations

from typing import Any

from gpt_workload.cli.console import console

__all__ = ["add_parser", "cmd_sweep"]


def add_parser(sub):
    """Add ``wse-sim sweep SPEC.toml ...`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "sweep",
        help="run a parameter sweep from a TOML spec (resumable; local or Dask cluster)",
        description="Expand SPEC.toml into points, simulate each once (timing only) and write "
        "the table (Parquet, or CSV). A rerun skips finished points; a killed sweep loses "
        "nothing. See gpt_workload.sweep for the spec format.",
    )
    p.add_argument("spec", help="sweep spec TOML ([sweep], [base], [grid], [[zip]])")
    p.add_argument("-o", "--output", help="table path (default: the spec's, or NAME.parquet)")
    p.add_argument("--format", choices=("parquet", "csv"), default=None, help="table format")
    p.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="run on this existing Dask scheduler"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the local Dask cluster (default: one per core; 0 = run "
        "in this process without Dask)",
    )
    p.add_argument("--retry-failed", action="store_true", help="run failed points again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)
    return p


def cmd_sweep(args) -> int:
    """Handler of ``wse-sim sweep``: a progress bar with ETA on stderr, a summary on stdout.

    Raises:
        ConfigError: bad spec or options (the CLI prints one line).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from gpt_workload.sweep import load_spec, run_sweep

    spec = load_spec(args.spec)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=args.no_progress,
    )
    task: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not task:
            task.append(bar.add_task(f"sweep {spec.name}", total=total, completed=done))
        else:
            bar.update(task[0], completed=done)

    with bar:
        try:
            res = run_sweep(
                spec,
                output=args.output,
                fmt=args.format,
                scheduler=args.scheduler,
                workers=args.workers,
                retry_failed=args.retry_failed,
                progress=progress,
            )
        except BaseException as exc:
            # the error is the last word: erase the bar (terminal) or never draw it (log)
            bar.live.transient = True
            bar.console.quiet = not bar.console.is_terminal
            if isinstance(exc, KeyboardInterrupt) and task:
                done = int(bar.tasks[0].completed)
                raise KeyboardInterrupt(
                    f"{done} of {int(bar.tasks[0].total)} points done and kept; run the same "
                    "command again to continue"
                ) from None
            raise
    console().print(
        f"sweep {spec.name}: {res.total} points ({res.skipped} already done, {res.computed} "
        + (f"run on {res.executor}" if res.computed else "to run")
        + f", {res.failed} failed) -> {res.path}"
    )
    return 0
