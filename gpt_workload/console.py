"""The console the commands print reports and summaries on (``rich``), shared by the CLI,
the sweep command and plots, so that none of them imports another's module."""

from __future__ import annotations

import shutil


def console():
    """A ``rich.console.Console`` on stdout: the terminal's width, but never narrower than
    120 columns (the report's tables need them); no highlighting, no soft wrapping."""
    from rich.console import Console

    return Console(
        highlight=False,
        soft_wrap=False,
        width=max(shutil.get_terminal_size((140, 24)).columns, 120),
    )
