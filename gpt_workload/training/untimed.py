"""The report of a ``train()`` run whose training step is not timed: numerics only.

The seam between the two halves of ``wse-sim train``: the training numerics (forward,
backward and AdamW through the per-PE kernels, :mod:`gpt_workload.training.trainer`) run for
every family in ``LOWERED_FOR["train_numerics"]``, the timed training step
(:func:`gpt_workload.training.lowering.lower_training`) for those in ``LOWERED_FOR["train"]``
(:mod:`gpt_workload.models`). For a family with numerics but no training lowering,
:func:`gpt_workload.training.train.train` runs the numerics and returns this report, which
says first that the step was not timed; once the family joins ``LOWERED_FOR["train"]``, the
same call returns the full :class:`gpt_workload.training.train.TrainReport`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt_workload import strict_json

__all__ = ["UntimedTrainReport", "untimed_notice"]


def untimed_notice(model: str, family: str) -> str:
    """The notice that opens an untimed report."""
    return (
        f"training step NOT TIMED: the training lowering does not take family {family} yet "
        f"(model {model}); the numerics below ran through the kernels (wse-sim run times its "
        "forward pass)"
    )


@dataclass
class UntimedTrainReport:
    """Numerics of ``train()`` for a family whose training step is not lowered (see the
    module docstring); ``to_dict()`` is the JSON report.

    Attributes:
        model, family, arch, precision: the run's choices.
        steps: optimizer steps asked for (the numerics run ``numerics["steps_run"]``).
        numerics: as :attr:`gpt_workload.training.train.TrainReport.numerics`.
        wall_s: host seconds per phase.
        notices: one-line notices, the untimed one first.
        health: as :attr:`gpt_workload.training.train.TrainReport.health`.
        timed: always False (a :class:`TrainReport` is the timed one).
        breakdown_s: empty (no step time); step_time_s: NaN.
    """

    model: str
    family: str
    arch: str
    precision: str
    steps: int
    numerics: dict
    wall_s: dict
    notices: list = field(default_factory=list)
    health: dict = field(default_factory=lambda: {"status": "not_checked"})
    timed: bool = False
    breakdown_s: dict = field(default_factory=dict)
    step_time_s: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict, ``notices`` and ``health`` first (strict JSON: NaN as null)."""
        d = dataclasses.asdict(self)
        out = {"notices": d.pop("notices"), "health": d.pop("health"), **d}
        return strict_json.to_strict(out)

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as strict JSON to ``path``."""
        Path(path).write_text(strict_json.dumps(self.to_dict(), indent=2))

    def console_rows(self) -> list[tuple[str, str]]:
        """``(label, value)`` rows for the console table."""
        num = self.numerics
        if "skipped" in num:
            text = f"skipped: {num['skipped']}"
        else:
            text = (f"{num['steps_run']:,} of {num['steps_total']:,} step(s) run numerically "
                    f"on a check batch of {num['check_batch'][0]} x {num['check_batch'][1]} "
                    f"tokens of {num['text']}; weights: {num['weights']}")  # fmt: skip
        return [
            ("model / arch", f"{self.model} ({self.family}) on {self.arch}"),
            ("timing", "not lowered for this family yet (training step not timed)"),
            ("workload", f"{self.precision}, {self.steps} step(s)"),
            ("numerics", text),
            ("host wall time", ", ".join(f"{k} {v:.2f}s" for k, v in self.wall_s.items())),
        ]
