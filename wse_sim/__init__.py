"""wse_sim: the machine. A discrete-event simulator of a wafer-scale engine.

Knows nothing about GPT: it holds the architecture description and presets, the Program IR it
executes, the timing backends (analytic closed form and SimPy event simulation), and stats.
"""

from wse_sim.errors import CheckpointError, ConfigError, FitError, WseSimError

__all__ = ["CheckpointError", "ConfigError", "FitError", "WseSimError"]
