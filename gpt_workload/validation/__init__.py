"""Validation of the simulator against measured figures of real wafer-scale machines.

``data`` loads and checks the shipped data file (``measured.toml``: figure, value, units,
conditions, source, scenario, tolerance and role of every measured figure of
``shared/reference/measured.md``); ``scenarios`` runs one row's scenario; ``table`` builds the
table (:func:`~gpt_workload.validation.table.validate`), its CSV and parity plot. The command
line is ``wse-sim validate`` (:mod:`gpt_workload.cli.validate`).
"""

from gpt_workload.validation.table import ValidationRow, exit_status, validate

__all__ = ["ValidationRow", "exit_status", "validate"]
