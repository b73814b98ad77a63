"""Units of the ``[energy]`` arch level: what a value with a unit means, and what is refused.

Every energy field carries its unit in its name (:func:`field_unit`): ``_pj`` (picojoules
per action), ``_pj_per_byte``, ``_w`` (watts), ``_mm2`` (square millimetres). A value is
either a plain number, read in that unit (a TOML number or a bare ``--set`` value), or a
string with a unit of the same kind, converted (``"500 fJ"`` -> 0.5 for a ``_pj`` field,
``"6 mW"`` -> 0.006 for a ``_w`` field, ``"0.9 pJ/B"`` for a ``_pj_per_byte`` field).

Units are case-sensitive SI symbols: the base unit is ``J`` or ``W`` (``B``, ``byte`` or
``bit`` after ``/`` for a per-byte field, ``m2`` / ``m^2`` with ``u``, ``µ`` or ``m`` for
an area), with one SI prefix of :data:`PREFIXES` (``m`` milli and ``M`` mega, ``p`` pico and
``P`` peta are different prefixes; ``u`` and ``µ`` are both micro). ``"0.5 PJ"`` is 0.5
petajoule (5e26 pJ: refused by the field's range, with the value as typed). A number may
group digits with single underscores between digits (``1_000``), as TOML and Python
number literals do, in every place a number is read.

Refused with a one-line :class:`~wse_sim.errors.ConfigError`: a unit of another kind
(``"5 W"`` for a ``_pj`` field), an unknown unit (``"5 pj"``: ``j`` is not a unit), a string
that is not a number, and in a TOML file a quoted number with no unit (``"5"``: a string
says "quantity", so it must say which unit; :func:`is_bare_number`). Range (negative, NaN,
infinite) is checked by the arch level (:func:`wse_sim.arch.parse_field`).
"""

from __future__ import annotations

import math
import re

from wse_sim.errors import ConfigError

# unit kind of each field-name suffix (the longest suffix wins) and the field's own unit
_SUFFIX = (("_pj_per_byte", "energy/byte", "pJ/B"), ("_pj", "energy", "pJ"),
           ("_w", "power", "W"), ("_mm2", "area", "mm2"))

#: SI prefixes accepted before ``J`` and ``W`` (case-sensitive), as powers of ten
PREFIXES = {"f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "µ": 1e-6, "μ": 1e-6, "m": 1e-3,
            "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def _table(base: str, field_scale: float) -> dict[str, float]:
    return {f"{p}{base}": s / field_scale for p, s in PREFIXES.items()}


# accepted units per kind, as factors to the field's unit
_UNITS = {
    "energy": _table("J", 1e-12),
    "power": _table("W", 1.0),
    "area": {f"{p}m{sq}": f for p, f in (("u", 1e-6), ("µ", 1e-6), ("μ", 1e-6), ("m", 1.0))
             for sq in ("2", "^2", "²")},
}
_UNITS["energy/byte"] = {
    f"{u}/{b}": f * d
    for u, f in _UNITS["energy"].items()
    for b, d in (("B", 1.0), ("byte", 1.0), ("bit", 8.0))
}
_DIGITS = r"\d(?:_?\d)*"
_NUM = re.compile(
    rf"^\s*([-+]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][-+]?{_DIGITS})?"
    r"|[-+]?nan|[-+]?inf(?:inity)?)(?![\d_.])\s*(.*?)\s*$",
    re.IGNORECASE,
)
_SHOWN = {
    "energy": "fJ, pJ, nJ, uJ (µJ), mJ, J, kJ, MJ, GJ, TJ, PJ",
    "power": "fW, pW, nW, uW (µW), mW, W, kW, MW, GW, TW, PW",
    "energy/byte": "fJ, pJ, nJ, uJ, mJ, J ... per B, byte or bit (e.g. pJ/B, fJ/bit)",
    "area": "um2 (µm2), mm2 (also m^2 forms)",
}


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


def is_bare_number(text: str) -> bool:
    """Whether ``text`` is a number with nothing after it (``"5"``, ``" 1e3 "``)."""
    m = _NUM.match(text)
    return bool(m and not m.group(2))


def parse_number(text: str) -> float | None:
    """``text`` as a float when it is a plain number (single underscores between digits
    allowed, as in TOML and Python: ``"1_000"``), else ``None``."""
    m = _NUM.match(text)
    if not m or m.group(2):
        return None
    return float(m.group(1))


def parse_quantity(fname: str, text: str) -> float:
    """The value of ``text`` in the unit of energy field ``fname``.

    Args:
        fname: an ``[energy]`` field name, e.g. ``"fmac_fp16_pj"``.
        text: ``"0.5"`` (read in the field's unit) or ``"0.5 pJ"``, ``"500 fJ"`` ...

    Returns:
        The value in the field's unit; ``inf`` when a finite number with its unit overflows
        a float (the range check refuses it, quoting ``text``).

    Raises:
        ConfigError: not a number, an unknown unit, or a unit of another kind than the
            field's (e.g. watts for a ``_pj`` field).
    """
    kind = _kind(fname)
    fu = field_unit(fname)
    m = _NUM.match(text)
    if not m:
        raise ConfigError(
            f"arch field energy.{fname}={text!r} is not a number (a number in {fu}, "
            f"optionally with a unit of its kind, e.g. '0.5 {fu}')"
        )
    val = float(m.group(1))
    unit = m.group(2).replace(" ", "")
    if not unit:
        return val
    table = _UNITS[kind]
    if unit not in table:
        other = [k for k, t in _UNITS.items() if k != kind and unit in t]
        why = f"a unit of {other[0]}, not {kind}" if other else "an unknown unit"
        raise ConfigError(
            f"arch field energy.{fname}={text!r}: {unit!r} is {why}; the field is in {fu} "
            f"(allowed units, case-sensitive, m milli / M mega, p pico / P peta: {_SHOWN[kind]})"
        )
    return val * table[unit]
