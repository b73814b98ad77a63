"""Dynamic loss scaling for fp16/bf16 training, with ``torch.amp.GradScaler`` semantics.

The loss is multiplied by ``scale`` before backward so that small gradients survive 16-bit
storage; the gradients are divided by ``scale`` (:meth:`DynamicLossScaler.unscale_`) before
clipping and the optimizer. After each step :meth:`DynamicLossScaler.update` is told whether
any gradient was inf/NaN:

* non-finite: the optimizer step is skipped, ``scale *= backoff_factor`` and the count of good
  steps restarts from 0;
* finite: the count of consecutive good steps grows by one; when it reaches
  ``growth_interval`` the scale is multiplied by ``growth_factor`` and the count restarts.

This is torch's ``_amp_update_scale_`` (``torch/amp/grad_scaler.py``) with the same defaults
(init 2**16, growth 2, backoff 0.5, interval 2000). A disabled scaler (``enabled=False``, as
for fp32 training) has scale 1 and ``update`` changes nothing.
"""

from __future__ import annotations

import math

import numpy as np

from gpt_workload.checks import check_int
from gpt_workload.weights import GPTWeights
from wse_sim.errors import ConfigError

__all__ = ["DynamicLossScaler"]


def _finite_real(value: object) -> bool:
    """True for a finite int/float that is not a bool."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )


class DynamicLossScaler:
    """Dynamic loss scale (``torch.amp.GradScaler`` semantics).

    Args:
        init_scale: starting scale (finite, > 0); default 2**16.
        growth_factor: multiplier after ``growth_interval`` good steps (finite, > 1).
        backoff_factor: multiplier after a non-finite step (in (0, 1)).
        growth_interval: consecutive good steps before growing (int >= 1).
        enabled: False gives a pass-through scaler (scale 1, never changes).

    Attributes:
        scale: current scale (float; 1.0 when disabled).
        growth_tracker: consecutive good steps since the last growth or backoff (int).

    Raises:
        ConfigError: a field out of range, one line naming it.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        if not _finite_real(init_scale) or init_scale <= 0:
            raise ConfigError(
                f"loss_scale field init_scale={init_scale!r} must be a finite number > 0"
            )
        if not _finite_real(growth_factor) or growth_factor <= 1:
            raise ConfigError(
                f"loss_scale field growth_factor={growth_factor!r} must be a finite number > 1"
            )
        if not _finite_real(backoff_factor) or not 0 < backoff_factor < 1:
            raise ConfigError(
                f"loss_scale field backoff_factor={backoff_factor!r} must be in (0, 1)"
            )
        growth_interval = check_int("loss_scale field growth_interval", growth_interval, 1)
        self.enabled = bool(enabled)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.scale = float(init_scale) if self.enabled else 1.0
        self.growth_tracker = 0

    def unscale_(self, grads: GPTWeights) -> None:
        """Divide every gradient by the scale in place: multiply by the float32 reciprocal
        ``fl32(1 / scale)``, as GradScaler does (exact for power-of-two scales)."""
        if not self.enabled or self.scale == 1.0:
            return
        inv = np.float32(1.0 / self.scale)
        for _, a in grads.named_arrays():
            a *= inv

    def update(self, found_inf: bool) -> None:
        """Advance the scale after a step; ``found_inf`` says the gradients were not finite."""
        if not self.enabled:
            return
        if found_inf:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.scale *= self.growth_factor
            self.growth_tracker = 0

    def state_dict(self) -> dict[str, float | int | bool]:
        """Plain-dict state (scale, growth tracker and settings), for checkpoints and tests."""
        return {
            "scale": self.scale,
            "growth_tracker": self.growth_tracker,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "enabled": self.enabled,
        }
