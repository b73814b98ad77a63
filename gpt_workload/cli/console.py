"""Console helpers shared by the ``wse-sim`` commands (public; no command imports another).

:func:`console` is the rich console every command prints its tables on;
:func:`check_output_paths` probes ``--json``/``--save-logits``/``--trace``/``--plot`` before a
long run; :func:`print_notices` and :func:`print_kv` print a report's notices and a two-column
table. Importing this module imports neither the parser nor any job.
"""

from __future__ import annotations

import argparse
import shutil

from gpt_workload.experiment_args import check_out_dir, check_out_file

__all__ = [
    "ALLOW_NONFINITE_HELP",
    "check_output_paths",
    "console",
    "print_kv",
    "print_notices",
]

#: help of ``--allow-nonfinite`` (``run`` and ``train``)
ALLOW_NONFINITE_HELP = (
    "keep going when the numerics' outputs (logits, loss) are not finite; without it such a "
    "run stops with one line naming the first op, layer and precision that overflowed "
    "(exit 2); with it the report says so first"
)


def console(min_width: int = 120, fallback_width: int = 140):
    """A :class:`rich.console.Console` on stdout, without highlighting or soft wrap.

    Args:
        min_width: the narrowest width in characters (the widest table needs it).
        fallback_width: the width used when stdout is not a terminal (and ``COLUMNS`` is unset).

    Returns:
        ``rich.console.Console`` of width ``max(terminal columns, min_width)``.
    """
    from rich.console import Console

    return Console(
        highlight=False,
        soft_wrap=False,
        width=max(shutil.get_terminal_size((fallback_width, 24)).columns, min_width),
    )


def check_output_paths(args: argparse.Namespace) -> None:
    """Fail before a long run if an output path cannot be written.

    Reads ``args.json``, ``args.save_logits``, ``args.trace`` (file paths) and ``args.plot``
    (a directory) where the command has them.

    Raises:
        ConfigError: naming the flag and the path.
    """
    for flag in ("json", "save_logits", "trace"):
        path = getattr(args, flag, None)
        if path:
            check_out_file("--" + flag.replace("_", "-"), path)
    if getattr(args, "plot", None):
        check_out_dir("--plot", args.plot)


def print_notices(con, notices: list[str]) -> None:
    """Print a report's notices on ``con``, one unwrapped ``NOTE: ...`` line each."""
    for n in notices:
        con.print(f"NOTE: {n}", markup=False, soft_wrap=True)


def print_kv(title: str, items: list[tuple[str, str]], fallback_width: int = 150) -> None:
    """Print a titled two-column table (label, value) without a header on stdout."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value")
    for k, v in items:
        t.add_row(k, v)
    console(fallback_width=fallback_width).print(t)
