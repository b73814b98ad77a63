"""Shared parsing of Hugging Face ``config.json`` fields for the model families.

Every helper raises :class:`wse_sim.errors.ConfigError` with one line naming the source, the
key, the value (as JSON) and what is allowed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gpt_workload.checks import check_int
from gpt_workload.rope import RopeScaling
from wse_sim.errors import ConfigError

__all__ = [
    "check_fixed",
    "check_heads",
    "flag",
    "json_value",
    "positive_int",
    "positive_real",
    "rope_scaling",
]


def json_value(value: Any) -> str:
    """Render a config value as it appears in JSON (``true``, ``null``, ``"silu"``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def positive_int(d: dict, key: str, source: str, default: int | None = None) -> int:
    """``d[key]`` as a positive int; ``default`` when absent or null (required if ``None``)."""
    value = d.get(key)
    if value is None:
        if default is None:
            raise ConfigError(f"{source} field {key} is missing: a positive integer is required")
        return default
    return check_int(f"{source} field {key}", value, 1)


def positive_real(d: dict, key: str, source: str, default: float) -> float:
    """``d[key]`` as a finite float > 0 (``default`` when absent or null)."""
    value = d.get(key)
    if value is None:
        return float(default)
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or not math.isfinite(float(value)) or value <= 0:
        raise ConfigError(f"{source} field {key}={json_value(value)} must be a finite number > 0")
    return float(value)


def flag(d: dict, key: str, source: str, default: bool) -> bool:
    """``d[key]`` as a bool (``default`` when absent or null)."""
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{source} field {key}={json_value(value)} must be true or false")
    return value


def check_heads(
    source: str, d_model: int, n_head: int, n_kv: int, keys: tuple[str, str, str]
) -> None:
    """Heads must divide the width and K/V heads the query heads.

    Args:
        keys: the config's names for (width, heads, kv heads), used in the message.
    """
    width_key, head_key, kv_key = keys
    if d_model % n_head:
        raise ConfigError(
            f"{source} field {head_key}={n_head} must divide {width_key}={d_model} "
            "(head size d_model / n_head must be an integer)"
        )
    if n_head % n_kv:
        raise ConfigError(f"{source} field {kv_key}={n_kv} must divide {head_key}={n_head}")


def rope_scaling(d: dict, source: str) -> RopeScaling | None:
    """Parse ``rope_scaling``: null or ``{"rope_type": "default"}`` -> None; ``"llama3"`` ->
    :class:`RopeScaling`; any other type (linear, dynamic, yarn, longrope...) is refused."""
    value = d.get("rope_scaling")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{source} field rope_scaling={json_value(value)} must be an object")
    kind = value.get("rope_type", value.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ConfigError(
            f"{source} field rope_scaling.rope_type={json_value(kind)} is not supported: "
            'expected "llama3" or "default"'
        )
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    for k in keys:
        if k not in value:
            raise ConfigError(f"{source} field rope_scaling.{k} is missing (rope_type llama3)")
    try:
        return RopeScaling(*(value[k] for k in keys))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def check_fixed(cfg: Any, fixed: dict[str, Any]) -> None:
    """Refuse a config whose structural fields differ from what its family's layer builder
    implements (e.g. a gpt2 config with ``n_kv_heads`` below ``n_head``, as a sweep's
    ``model.FIELD`` could make): ``fixed`` maps a field to its required value or to a
    function of the config giving it.

    Raises:
        ConfigError: ``"model field norm='rmsnorm' is not supported by family gpt2: expected
            'layernorm'"``.
    """
    for key, value in fixed.items():
        want = value(cfg) if callable(value) else value
        have = getattr(cfg, key)
        if have != want:
            raise ConfigError(
                f"model field {key}={have!r} is not supported by family {cfg.family}: "
                f"expected {want!r}"
            )
