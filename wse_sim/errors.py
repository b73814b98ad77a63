"""Exceptions raised at the boundary of wse-sim.

Every error carries a one-line message that names the offending field, the value given and
what is allowed, so the CLI can print it without a traceback.
"""

from __future__ import annotations


class WseSimError(Exception):
    """Base class of every user-facing error; ``str(err)`` is a complete one-line message."""


class ConfigError(WseSimError, ValueError):
    """A configuration field is missing, unknown or out of range (arch, model or run)."""


class FitError(WseSimError):
    """The workload does not fit the machine (SRAM per PE, weight storage, grid size)."""


class CheckpointError(WseSimError):
    """A checkpoint or weight set is malformed: missing tensors, wrong shapes, NaN/Inf values."""


class NumericsError(WseSimError):
    """A run's checked outputs (logits, loss) are not finite: the message names the first op,
    layer, position and precision where a value left the format's range, and what to try."""
