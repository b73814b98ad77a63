"""The sweep spec: a TOML file (or the same structure as a dict) expanded into points.

A sweep spec is data (TOML file or the same structure as a dict)::

    [sweep]                       # optional
    name = "sram"                 # default: the spec file's stem
    output = "sram.parquet"       # default: <name>.parquet (or .csv) in the working directory
    format = "parquet"            # "parquet" (default) or "csv": the format of the final table

    [base]                        # fields every point shares
    model = "cerebras-gpt-111m"
    arch = "wse2"
    fidelity = "analytic"

    [grid]                        # cartesian product of these lists (first key varies slowest)
    "pe.sram_bytes" = [24576, 49152, 98304]
    batch = [8, 64, "max"]

    [[zip]]                       # lists of equal length taken element-wise; every zip group
    model = ["cerebras-gpt-111m", "cerebras-gpt-1.3b"]   # is crossed with the grid
    seq_len = [2048, 1024]

Fields (any of them may sit in ``[base]``, ``[grid]`` or a ``[[zip]]`` group, once):

* run fields: ``model`` (preset, ``config.json`` or checkpoint directory), ``arch`` (preset or
  TOML), ``mapping``, ``precision``, ``fidelity`` (``analytic`` unless given; sweeps are what
  the closed form is for), ``batch`` (sequences; ``"max"`` = the largest batch that runs as one
  micro-batch, ``"default"`` = what ``wse-sim run`` uses), ``seq_len``;
* arch fields ``LEVEL.FIELD`` (``pe.sram_bytes``, ``io.ingress_bytes_per_s`` ...; the
  ``arch.`` prefix is accepted), applied as ``--set`` overrides (``wse-sim arch show wse2``
  lists them);
* model fields ``model.FIELD`` (``model.n_layer``, ``model.d_model`` ...), replacing that
  field of the resolved model.

Every point is keyed by a hash of its full configuration (every field, defaults filled in):
:func:`point_key`. How finished points are stored and skipped on a rerun:
:mod:`gpt_workload.sweep.store`; where they run: :mod:`gpt_workload.sweep.runner`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gpt_workload.checks import check_int
from wse_sim.arch import LEVELS
from wse_sim.errors import ConfigError
from wse_sim.timing import get_backend

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

#: most points a sweep may expand to (a 2-core machine runs ~1,000 analytic points a
#: minute; the expanded spec holds every point's configuration in memory)
MAX_POINTS = 100_000

#: an explicit sweep name: it names the output file, so no path separators
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: bump when the meaning of a configuration or of a result column changes, or when the
#: simulator times a configuration differently: old rows are then recomputed instead of
#: reused (2: streamed GEMMs pipeline weight-row piece by piece, not in 8 chunks)
SCHEMA_VERSION = 2

#: run fields and their defaults in a sweep (None = simulate()'s own default)
RUN_DEFAULTS: dict[str, Any] = {
    "model": "cerebras-gpt-111m",
    "arch": "wse2",
    "mapping": "weight_streaming",
    "precision": "fp16",
    "fidelity": "analytic",
    "batch": None,
    "seq_len": None,
}

#: GPTConfig fields a sweep may replace, with their type
MODEL_FIELDS: dict[str, type] = {
    "n_layer": int,
    "n_head": int,
    "d_model": int,
    "d_ff": int,
    "vocab_size": int,
    "n_positions": int,
    "layer_norm_eps": float,
    "activation": str,
}

PointConfig = dict[str, Any]


def _canonical_field(key: str) -> str:
    """``arch.pe.sram_bytes`` -> ``pe.sram_bytes``; other keys unchanged."""
    if key.startswith("arch.") and key.count(".") == 2:
        return key[len("arch.") :]
    return key


def _field_kind(key: str) -> tuple[str, Any]:
    """('run'|'arch'|'model', type) of a canonical field name.

    Raises:
        ConfigError: unknown field (the message lists what is allowed).
    """
    if key in RUN_DEFAULTS:
        return "run", None
    head, _, tail = key.partition(".")
    if head == "model" and tail:
        if tail not in MODEL_FIELDS:
            raise ConfigError(
                f"sweep field {key!r} is unknown; model fields allowed: "
                + ", ".join(f"model.{f}" for f in MODEL_FIELDS)
            )
        return "model", MODEL_FIELDS[tail]
    if head in LEVELS and tail:
        types = {f.name: f.type for f in fields(LEVELS[head])}
        if tail not in types:
            raise ConfigError(
                f"sweep field {key!r} is unknown; allowed: "
                + ", ".join(f"{head}.{n}" for n in types)
            )
        return "arch", int if types[tail] in (int, "int") else float
    raise ConfigError(
        f"sweep field {key!r} is unknown; allowed: {', '.join(RUN_DEFAULTS)}, "
        f"LEVEL.FIELD arch fields ({', '.join(LEVELS)}; see 'wse-sim arch show wse2') "
        "or model.FIELD (" + ", ".join(MODEL_FIELDS) + ")"
    )


def _coerce(key: str, value: Any) -> Any:
    """Validate and normalise one field value (ints stay ints, arch floats become floats).

    Raises:
        ConfigError: wrong type for the field.
    """
    kind, typ = _field_kind(key)
    if kind == "run":
        if key in ("batch", "seq_len"):
            if value is None or value == "default":
                return None
            if key == "batch" and value == "max":
                return "max"
            also = "or 'max' or 'default'" if key == "batch" else "or 'default'"
            return check_int(f"sweep field {key}", value, 1, note=also)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"sweep field {key}={value!r} must be a non-empty string")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"sweep field {key}={value!r} must be a string")
        return value
    if key.startswith("energy.") and isinstance(value, str):  # "6mW", as --set and TOML take
        from wse_sim.energy_units import parse_quantity  # (range: per point, as numbers)

        return parse_quantity(key.split(".", 1)[1], value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"sweep field {key}={value!r} must be a number")
    if typ is int:
        if not (isinstance(value, int) or (math.isfinite(value) and value == int(value))):
            raise ConfigError(f"sweep field {key}={value!r} must be an integer")
        return int(value)
    return float(value)


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables to dotted keys: ``{"pe": {"sram_bytes": 1}}`` -> ``pe.sram_bytes``."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def point_key(config: PointConfig) -> str:
    """The hash that keys a point: 16 hex digits of SHA-256 over its full configuration
    (canonical JSON, sorted keys, with :data:`SCHEMA_VERSION`)."""
    text = json.dumps({"schema": SCHEMA_VERSION, **config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SweepSpec:
    """An expanded sweep.

    Attributes:
        name: the sweep's name.
        points: full configurations in sweep order (duplicates removed, first kept).
        keys: :func:`point_key` of each point.
        columns: configuration columns of the table: the run fields, then arch and model
            fields in the order the spec names them.
        swept: fields that take more than one value.
        output: where the table goes (None: ``<name>.<format>`` in the working directory).
        fmt: ``parquet`` or ``csv``.
        duplicates: points dropped because an earlier point had the same configuration.
    """

    name: str
    points: tuple[PointConfig, ...]
    keys: tuple[str, ...]
    columns: tuple[str, ...]
    swept: tuple[str, ...]
    output: Path | None = None
    fmt: str = "parquet"
    duplicates: int = 0

    @classmethod
    def from_dict(cls, data: dict, name: str = "sweep") -> SweepSpec:
        """Expand a spec given as a dict laid out like the TOML file (see the module doc).

        Raises:
            ConfigError: unknown table or field, a field given twice, a grid value that is
                not a non-empty list, zip lists of unequal length, a value of the wrong type.
        """
        allowed = {"sweep", "base", "grid", "zip"}
        for key in data:
            if key not in allowed and not isinstance(data[key], dict):
                where = "[sweep]" if key in ("name", "output", "format") else "[base]"
                raise ConfigError(
                    f"sweep spec top-level key {key}={data[key]!r} belongs under a table: "
                    f"{where} (name, output, format go under [sweep]; run, arch and model "
                    "fields under [base], [grid] or [[zip]])"
                )
            if key not in allowed:
                raise ConfigError(
                    f"sweep spec table [{key}] is unknown; allowed: [sweep], [base], [grid], "
                    "[[zip]]"
                )
        meta = data.get("sweep", {})
        if not isinstance(meta, dict):
            raise ConfigError("sweep spec [sweep] must be a table")
        for key in meta:
            if key not in ("name", "output", "format"):
                raise ConfigError(
                    f"sweep spec field sweep.{key} is unknown; allowed: name, output, format"
                )
        fmt = meta.get("format")
        if fmt is not None and fmt not in ("parquet", "csv"):
            raise ConfigError(f"sweep spec field sweep.format={fmt!r}: allowed parquet, csv")
        if "name" in meta:
            name = meta["name"]
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise ConfigError(
                    f"sweep spec field sweep.name={name!r} is not allowed: letters, digits, "
                    "'.', '_' and '-', starting with a letter or digit (it names the output "
                    "file in the working directory; give sweep.output for another place)"
                )
        else:  # from the spec file's name: keep it a plain file name
            name = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".-") or "sweep"
        out = meta.get("output")
        if out is not None and (
            not isinstance(out, str) or not out.strip() or out.endswith(("/", os.sep))
        ):
            raise ConfigError(
                f"sweep spec field sweep.output={out!r} is not allowed: a non-empty file path "
                "(not a directory)"
            )
        output = Path(out) if out else None
        implied = {".csv": "csv", ".parquet": "parquet"}.get(
            output.suffix.lower() if output else ""
        )
        if fmt is not None and implied is not None and implied != fmt:
            raise ConfigError(
                f"sweep spec fields sweep.output={out!r} and sweep.format={fmt!r} disagree: "
                f"the output's suffix must be .{fmt}"
            )
        fmt = fmt or implied or "parquet"

        seen: dict[str, str] = {}

        def take(section: str, table: Any) -> dict[str, Any]:
            if not isinstance(table, dict):
                raise ConfigError(f"sweep spec [{section}] must be a table")
            out = {}
            for raw, val in _flatten(table).items():
                key = _canonical_field(raw)
                _field_kind(key)
                if key in seen:
                    raise ConfigError(
                        f"sweep field {key!r} is set in both [{seen[key]}] and [{section}]"
                    )
                seen[key] = section
                out[key] = val
            return out

        base = {k: _coerce(k, v) for k, v in take("base", data.get("base", {})).items()}
        axes: list[tuple[list[str], list[tuple]]] = []  # (fields, value tuples)
        for key, vals in take("grid", data.get("grid", {})).items():
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"sweep grid field {key!r} must be a non-empty list")
            axes.append(([key], [(_coerce(key, v),) for v in vals]))
        zips = data.get("zip", [])
        if isinstance(zips, dict):
            zips = [zips]
        if not isinstance(zips, list):
            raise ConfigError("sweep spec [[zip]] must be a table or an array of tables")
        for i, group in enumerate(zips):
            grp = take(f"zip {i}", group)
            if not grp:
                continue
            lens = {k: len(v) if isinstance(v, list) else -1 for k, v in grp.items()}
            if any(n < 1 for n in lens.values()) or len(set(lens.values())) != 1:
                raise ConfigError(
                    f"sweep zip group {i}: every field must be a non-empty list of the same "
                    f"length, got lengths {lens}"
                )
            keys = list(grp)
            rows = [
                tuple(_coerce(k, grp[k][j]) for k in keys) for j in range(next(iter(lens.values())))
            ]
            axes.append((keys, rows))

        n_points = math.prod(len(rows) for _, rows in axes)
        if n_points > MAX_POINTS:
            raise ConfigError(
                f"sweep {name!r} has {n_points:,} points: at most {MAX_POINTS:,} (split it "
                "into several sweeps, or coarsen the grid)"
            )
        points: list[PointConfig] = []
        keys_out: list[str] = []
        index: set[str] = set()
        dups = 0
        for combo in itertools.product(*(rows for _, rows in axes)):
            cfg = dict(RUN_DEFAULTS)
            cfg.update(base)
            for (names, _), vals in zip(axes, combo, strict=True):
                cfg.update(zip(names, vals, strict=True))
            h = point_key(cfg)
            if h in index:
                dups += 1
                continue
            index.add(h)
            points.append(cfg)
            keys_out.append(h)
        extra = [k for k in seen if k not in RUN_DEFAULTS]
        columns = tuple(RUN_DEFAULTS) + tuple(extra)
        swept = tuple(k for k in columns if len({json.dumps(p.get(k)) for p in points}) > 1)
        for p in points:  # every point carries every column (None where unset)
            for k in extra:
                p.setdefault(k, None)
        if dups:
            log.warning("sweep %s: %d duplicate point(s) dropped", name, dups)
        return cls(name, tuple(points), tuple(keys_out), columns, swept, output, fmt, dups)

    def default_output(self) -> Path:
        """The table's path: the spec's ``output`` or ``<name>.<format>``."""
        return self.output or Path(f"{self.name}.{self.fmt}")


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and expand a sweep spec TOML file.

    Raises:
        ConfigError: unreadable file, invalid TOML or an invalid spec (see
            :meth:`SweepSpec.from_dict`).
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"sweep spec {str(p)!r} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"sweep spec {str(p)!r} is not UTF-8 text (byte {exc.start}); expected a TOML file"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep spec {str(p)!r} is not valid TOML: {exc}") from None
    return SweepSpec.from_dict(data, name=p.stem)


def check_values(spec: SweepSpec) -> None:
    """Check the names a spec uses before any point runs: models, archs, mappings,
    precisions and fidelities (value ranges of arch and model fields are checked per point,
    so a bad value fails its points, not the sweep).

    Raises:
        ConfigError: an unknown model, arch, mapping, precision or fidelity.
    """
    from gpt_workload.mappings import parse_mapping
    from gpt_workload.models import require_lowered, resolve_model
    from gpt_workload.precision import check_precision
    from wse_sim.arch import load_arch

    for m in {p["model"] for p in spec.points}:
        require_lowered(resolve_model(m), "sweeps", "sweep")
    for a in {p["arch"] for p in spec.points}:
        load_arch(a)
    for p in {p["precision"] for p in spec.points}:
        check_precision(p)
    for f in {p["fidelity"] for p in spec.points}:
        get_backend(f)
    for m in {p["mapping"] for p in spec.points}:
        try:
            parse_mapping(m)
        except ConfigError as exc:
            raise ConfigError(f"sweep field {exc}") from None
