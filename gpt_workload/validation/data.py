"""The measured-figures data file: loading and checking it.

The file (TOML; the shipped one is ``gpt_workload/validation/measured.toml``) holds
``schema = 1`` and one ``[[figure]]`` table per measured figure:

========================  ===================================================================
``id``                    unique row id, e.g. ``"K1"``, ``"K2.chain.4x1"``
``figure``                what was measured (short text)
``value``                 the measured value, a finite number > 0
``units``                 its units; must be the units the scenario kind produces
``conditions``            the conditions of the measurement (text)
``source``                where it was published (text, required)
``tolerance_pct``         allowed ``|simulated / measured - 1|`` in percent, > 0
``role``                  ``calibration`` or ``prediction``
``sets``                  calibration: the arch fields (``level.field``) set from the row
                          (``[]``: sets none, held to its tolerance); not on a prediction
``note``                  optional text
``scenario``              a table: ``kind`` and that kind's typed fields
                          (:data:`gpt_workload.validation.scenarios.SCENARIO_FIELDS`)
========================  ===================================================================

Every problem is a :class:`wse_sim.errors.ConfigError` whose one-line message names the file,
the row and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from wse_sim.errors import ConfigError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROLES = ("calibration", "prediction")
REQUIRED = ("id", "figure", "value", "units", "conditions", "source", "tolerance_pct", "role",
            "scenario")  # fmt: skip
OPTIONAL = ("sets", "note")


@dataclass(frozen=True)
class Figure:
    """One measured figure and the scenario that reproduces it (a row of the data file).

    Attributes:
        id, figure, value, units, conditions, source, tolerance_pct, role, note: as in the
            file (see the module docstring).
        sets: arch fields set from the row (calibration), empty otherwise.
        scenario: the scenario table, ``kind`` included, with the kind's defaults filled in.
    """

    id: str
    figure: str
    value: float
    units: str
    conditions: str
    source: str
    tolerance_pct: float
    role: str
    scenario: dict
    sets: tuple[str, ...] = ()
    note: str = ""
    extra: dict = field(default_factory=dict)


def default_path() -> Path:
    """The shipped data file, ``gpt_workload/validation/measured.toml``."""
    return Path(str(resources.files("gpt_workload.validation").joinpath("measured.toml")))


def _arch_fields() -> set[str]:
    """Every ``level.field`` name of :class:`wse_sim.arch.ArchConfig`."""
    from dataclasses import fields as dc_fields

    from wse_sim.arch import LEVELS

    return {f"{level}.{f.name}" for level, cls in LEVELS.items() for f in dc_fields(cls)}


def _text(where: str, row: dict, key: str) -> str:
    v = row[key]
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: field {key}={v!r} must be non-empty text")
    return v


def _positive(where: str, row: dict, key: str) -> float:
    v = row[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if not ok:
        raise ConfigError(f"{where}: field {key}={v!r} must be a finite number > 0")
    return float(v)


def parse_figure(row: object, index: int, origin: str, arch_fields: set[str]) -> Figure:
    """Check one ``[[figure]]`` table and return it as a :class:`Figure`.

    Raises:
        ConfigError: ``ORIGIN: row ID: ...`` naming the field and what is allowed.
    """
    from gpt_workload.validation.scenarios import check_scenario

    if not isinstance(row, dict):
        raise ConfigError(f"{origin}: figure #{index + 1} is not a table")
    rid = row.get("id")
    where = f"{origin}: row {rid!r}" if isinstance(rid, str) and rid else (
        f"{origin}: figure #{index + 1}")  # fmt: skip
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ConfigError(
            f"{where}: field {unknown[0]!r} is unknown; allowed: "
            f"{', '.join(REQUIRED + OPTIONAL)}"
        )
    for key in REQUIRED:
        if key not in row:
            raise ConfigError(f"{where}: field {key!r} is missing (required)")
    for key in ("id", "figure", "units", "conditions", "source"):
        _text(where, row, key)
    value = _positive(where, row, "value")
    tol = _positive(where, row, "tolerance_pct")
    role = row["role"]
    if role not in ROLES:
        raise ConfigError(f"{where}: field role={role!r} is not allowed; allowed: {', '.join(ROLES)}")
    sets = row.get("sets", None)
    if role == "calibration":
        if sets is None:
            raise ConfigError(
                f"{where}: field 'sets' is missing: a calibration row names the arch fields it "
                "set (level.field; [] if none)"
            )
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            raise ConfigError(f"{where}: field sets={sets!r} must be a list of 'level.field' names")
        bad = [s for s in sets if s not in arch_fields]
        if bad:
            raise ConfigError(
                f"{where}: field sets names {bad[0]!r}, not an arch field (level.field, e.g. "
                "pe.clock_hz)"
            )
    elif sets:
        raise ConfigError(f"{where}: field sets={sets!r} is not allowed on a prediction row")
    note = row.get("note", "")
    if not isinstance(note, str):
        raise ConfigError(f"{where}: field note={note!r} must be text")
    scenario = check_scenario(where, row["scenario"], row["units"])
    return Figure(
        id=rid, figure=row["figure"], value=value, units=row["units"],
        conditions=row["conditions"], source=row["source"], tolerance_pct=tol, role=role,
        scenario=scenario, sets=tuple(sets or ()), note=note,
    )  # fmt: skip


def load_figures(path: str | Path | None = None) -> list[Figure]:
    """Read and check a data file (default: the shipped one).

    Raises:
        ConfigError: unreadable or malformed TOML, a wrong schema, a duplicate id, or any row
            problem (:func:`parse_figure`); the message names the file, row and field.
    """
    p = default_path() if path is None else Path(path)
    origin = str(path) if path is not None else "measured.toml"
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(
            f"validation data {origin!r} cannot be read ({exc.strerror or exc})"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"validation data {origin!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"schema", "figure"})
    if unknown:
        raise ConfigError(f"{origin}: top-level key {unknown[0]!r} is unknown; allowed: schema, figure")
    if data.get("schema") != 1:
        raise ConfigError(f"{origin}: schema={data.get('schema')!r} is not supported; expected 1")
    rows = data.get("figure")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{origin}: no [[figure]] rows")
    fields = _arch_fields()
    out = [parse_figure(r, i, origin, fields) for i, r in enumerate(rows)]
    seen: set[str] = set()
    for f in out:
        if f.id in seen:
            raise ConfigError(f"{origin}: row {f.id!r}: field id is a duplicate")
        seen.add(f.id)
    return out
