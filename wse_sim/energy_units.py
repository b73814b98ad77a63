"""Units of the ``[energy]`` arch level: what a value with a unit means, and what is refused.

Every energy field carries its unit in its name (:func:`field_unit`): ``_pj`` (picojoules
per action), ``_pj_per_byte``, ``_w`` (watts), ``_mm2`` (square millimetres). A value is
either a plain number, read in that unit (a TOML number or a bare ``--set`` value), or a
string with a unit of the same kind, converted (``"500 fJ"`` -> 0.5 for a ``_pj`` field,
``"6 mW"`` -> 0.006 for a ``_w`` field, ``"0.9 pJ/B"`` for a ``_pj_per_byte`` field).

Refused with a one-line :class:`~wse_sim.errors.ConfigError`: a unit of another kind
(``"5 W"`` for a ``_pj`` field), an unknown unit, a string that is not a number, and in a
TOML file a quoted number with no unit (``"5"``: a string says "quantity", so it must say
which unit; :func:`has_unit`). Range (negative, NaN, infinite) is checked by the arch level.
"""

from __future__ import annotations

import math
import re

from wse_sim.errors import ConfigError

# unit kind of each field-name suffix (the longest suffix wins) and the field's own unit
_SUFFIX = (("_pj_per_byte", "energy/byte", "pJ/B"), ("_pj", "energy", "pJ"),
           ("_w", "power", "W"), ("_mm2", "area", "mm2"))

# accepted units per kind, as factors to the field's unit
_UNITS = {
    "energy": {"fj": 1e-3, "pj": 1.0, "nj": 1e3, "uj": 1e6, "µj": 1e6, "mj": 1e9, "j": 1e12},
    "power": {"uw": 1e-6, "µw": 1e-6, "mw": 1e-3, "w": 1.0, "kw": 1e3, "mw_mega": 1e6},
    "area": {"um2": 1e-6, "µm2": 1e-6, "µm^2": 1e-6, "um^2": 1e-6, "mm2": 1.0, "mm^2": 1.0},
}
_UNITS["energy/byte"] = {
    f"{u}/{b}": f * d
    for u, f in _UNITS["energy"].items()
    for b, d in (("b", 1.0), ("byte", 1.0), ("bit", 8.0))
}
_NUM = re.compile(
    r"^\s*([-+]?(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf(?:inity)?)"
    r"\s*(.*?)\s*$",
    re.IGNORECASE,
)


def field_unit(fname: str) -> str:
    """The unit an energy field's name carries (``"pJ"``, ``"pJ/B"``, ``"W"``, ``"mm2"``).

    Raises:
        ConfigError: the name carries no known unit suffix.
    """
    for suffix, _, unit in _SUFFIX:
        if fname.endswith(suffix):
            return unit
    raise ConfigError(f"arch field energy.{fname} has no unit suffix (_pj, _pj_per_byte, _w, _mm2)")


def _kind(fname: str) -> str:
    for suffix, kind, _ in _SUFFIX:
        if fname.endswith(suffix):
            return kind
    raise ConfigError(f"arch field energy.{fname} has no unit suffix (_pj, _pj_per_byte, _w, _mm2)")


def has_unit(text: str) -> bool:
    """Whether ``text`` is a number followed by something (a unit), e.g. ``"5 pJ"``."""
    m = _NUM.match(text)
    return bool(m and m.group(2))


def parse_quantity(fname: str, text: str) -> float:
    """The value of ``text`` in the unit of energy field ``fname``.

    Args:
        fname: an ``[energy]`` field name, e.g. ``"fmac_fp16_pj"``.
        text: ``"0.5"`` (read in the field's unit) or ``"0.5 pJ"``, ``"500 fJ"`` ...

    Raises:
        ConfigError: not a number, an unknown unit, or a unit of another kind than the
            field's (e.g. watts for a ``_pj`` field).
    """
    kind = _kind(fname)
    m = _NUM.match(text)
    if not m:
        raise ConfigError(
            f"arch field energy.{fname}={text!r} is not a number (optionally with a unit of "
            f"{field_unit(fname)}'s kind, e.g. '0.5 {field_unit(fname)}')"
        )
    val = float(m.group(1).replace("_", ""))
    unit = m.group(2).replace(" ", "")
    if not unit:
        return val
    table = _UNITS[kind]
    key = unit.lower() if unit != "MW" else "mw_mega"
    if key not in table:
        allowed = ", ".join(sorted({u for u in table if not u.startswith(("µ", "mw_"))}))
        other = [k for k, t in _UNITS.items() if k != kind and key in t]
        why = f"a unit of {other[0]}, not {kind}" if other else "an unknown unit"
        raise ConfigError(
            f"arch field energy.{fname}={text!r}: {unit!r} is {why}; the field is in "
            f"{field_unit(fname)} (allowed units: {allowed})"
        )
    out = val * table[key]
    return out if math.isfinite(val) else val
