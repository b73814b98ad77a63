"""Rotary position embedding (RoPE): the frequency rule, the Llama 3 scaling, cos/sin tables.

RoPE (Su et al. 2021, arXiv 2104.09864) rotates pairs of features of each query and key
head by an angle ``position * inv_freq[i]`` with ``inv_freq[i] = theta ** (-2i / rotary_dim)``.
Two pairings are in use: the two halves of the rotated features (Llama, Qwen2: HF
``rotate_half``) and adjacent features (GPT-J: HF ``rotate_every_two``). Llama 3.1 rescales
the low frequencies (:class:`RopeScaling`). This module imports nothing of the workload, so
:mod:`gpt_workload.config` can hold a :class:`RopeScaling`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpt_workload.checks import check_int
from wse_sim.errors import ConfigError

__all__ = ["RopeScaling", "inv_freq", "rope_tables"]


def _is_number(value: Any) -> bool:
    """True for Python/NumPy ints and floats, excluding ``bool``."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


@dataclass(frozen=True)
class RopeScaling:
    """The Llama 3 rotary frequency rule (``rope_scaling`` with ``rope_type: "llama3"``).

    Each inverse frequency ``w`` of plain RoPE, with wavelength ``2*pi/w``, becomes: ``w`` if
    the wavelength is below ``original_max_position_embeddings / high_freq_factor``;
    ``w / factor`` if above ``original_max_position_embeddings / low_freq_factor``; otherwise
    ``(1 - s) * w / factor + s * w`` with ``s = (orig / wavelength - low) / (high - low)``.
    Source: Meta's Llama 3.1 reference code, as HF ``_compute_llama3_parameters``.

    Raises:
        ConfigError: a field out of range (one line naming it).
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self) -> None:
        """Validate the fields (finite, ordered, positive)."""
        if self.rope_type != "llama3":
            raise ConfigError(
                f"model field rope_scaling.rope_type={self.rope_type!r} is not supported: "
                'expected "llama3"'
            )
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            v = getattr(self, key)
            if not _is_number(v) or not math.isfinite(float(v)) or float(v) <= 0:
                raise ConfigError(f"model field rope_scaling.{key}={v!r} must be a number > 0")
            object.__setattr__(self, key, float(v))
        if self.factor < 1.0:
            raise ConfigError(f"model field rope_scaling.factor={self.factor!r} must be >= 1")
        if not self.low_freq_factor < self.high_freq_factor:
            raise ConfigError(
                f"model field rope_scaling.low_freq_factor={self.low_freq_factor!r} must be "
                f"below high_freq_factor={self.high_freq_factor!r}"
            )
        orig = self.original_max_position_embeddings
        orig = check_int("model field rope_scaling.original_max_position_embeddings", orig, 1)
        object.__setattr__(self, "original_max_position_embeddings", orig)


def inv_freq(rotary_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """Inverse frequencies ``[rotary_dim // 2]`` (float64) of RoPE, Llama-3-scaled if asked.

    ``inv_freq[i] = theta ** (-(2 i) / rotary_dim)`` (HF ``_compute_default_rope_parameters``);
    with ``scaling`` the rule of :class:`RopeScaling` is applied (HF
    ``_compute_llama3_parameters``). The attention scaling factor of llama3 is 1.
    """
    base = 1.0 / (float(theta) ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))
    if scaling is None:
        return base
    orig = float(scaling.original_max_position_embeddings)
    low_wavelen = orig / scaling.low_freq_factor
    high_wavelen = orig / scaling.high_freq_factor
    wavelen = 2.0 * math.pi / base
    out = np.where(wavelen > low_wavelen, base / scaling.factor, base)
    smooth = (orig / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1.0 - smooth) * out / scaling.factor + smooth * out
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, out)


def rope_tables(
    positions: np.ndarray, rotary_dim: int, theta: float, scaling: RopeScaling | None
) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of the rotation angles, float64 ``[len(positions), rotary_dim // 2]``.

    Angle ``[t, i] = positions[t] * inv_freq[i]``; the pairing (halves or adjacent) is applied
    by the caller.
    """
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq(rotary_dim, theta, scaling)
    return np.cos(ang), np.sin(ang)
