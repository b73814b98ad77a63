"""Parameter sweeps: a TOML spec expanded into points, each simulated once, resumably.

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

Every point is keyed by a hash of its full configuration (every field, defaults filled in).
Each finished point is written as its own small Parquet *part* file named by that hash: first
to a temporary name, flushed and fsynced, then atomically renamed (``os.replace``), so a sweep
killed at any instant (``kill -9`` included) leaves only complete parts. A rerun lists the parts
and skips their points; the table is then rebuilt from the parts in sweep order and written
atomically the same way. A point that raises is recorded with its error (``status = "error"``)
and does not stop the sweep. Points only time the run (``check_sequences=0``).

Points run on a local Dask cluster (``distributed.LocalCluster``, one single-threaded worker
process per core) by default, or on an existing cluster given its scheduler address; the
driver (this process) writes every part, so remote workers need no shared file system, only
the same ``wse-sim`` install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gpt_workload.report import ENERGY_COLUMNS, energy_columns
from wse_sim.arch import LEVELS
from wse_sim.errors import ConfigError, WseSimError

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
#: simulator times a configuration differently: old parts are then recomputed instead of
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

#: result columns of every row, with their Arrow type name (units in the names)
METRICS: dict[str, str] = {
    "status": "string",
    "error": "string",
    "simulated_time_s": "float64",
    "tokens_per_s": "float64",
    "mfu": "float64",
    "achieved_flops_per_s": "float64",
    "peak_flops_per_s": "float64",
    "model_flops": "float64",
    "batch_used": "int64",
    "seq_len_used": "int64",
    "tokens": "int64",
    "micro_batches": "int64",
    "pes_per_segment": "int64",
    "tokens_per_segment": "int64",
    "active_pes": "int64",
    "pe_utilisation_mean": "float64",
    "pe_utilisation_min": "float64",
    "pe_utilisation_max": "float64",
    "sram_peak_bytes": "int64",
    "sram_capacity_bytes": "int64",
    "io_utilisation": "float64",
    "weight_bytes_streamed": "int64",
    "compute_s": "float64",
    "fabric_s": "float64",
    "stall_s": "float64",
    "idle_s": "float64",
    "roofline_bound_s": "float64",
    "roofline_bound_by": "string",
    "roofline_compute_s": "float64",
    "roofline_io_s": "float64",
    "roofline_fabric_s": "float64",
    "layer_compute_s": "float64",
    "layer_io_s": "float64",
    "layer_stall_s": "float64",
    **{c: "float64" for c in ENERGY_COLUMNS},
}

PointConfig = dict[str, Any]
Progress = Callable[[int, int], None]


class ClusterError(WseSimError):
    """The Dask cluster failed under a sweep (not a point): the sweep stops, keeping what
    finished; a rerun continues."""


# ------------------------------------------------------------------------------ the spec
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
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                return value
            allowed = (
                "an integer >= 1, 'max' or 'default'"
                if key == "batch"
                else ("an integer >= 1 or 'default'")
            )
            raise ConfigError(f"sweep field {key}={value!r} must be {allowed}")
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
    from gpt_workload.simulate import FIDELITIES
    from wse_sim.arch import load_arch

    for m in {p["model"] for p in spec.points}:
        require_lowered(resolve_model(m), "sweeps", "sweep")
    for a in {p["arch"] for p in spec.points}:
        load_arch(a)
    for p in {p["precision"] for p in spec.points}:
        check_precision(p)
    for f in {p["fidelity"] for p in spec.points}:
        if f not in FIDELITIES:
            raise ConfigError(
                f"sweep field fidelity={f!r} is unknown; allowed: {', '.join(FIDELITIES)}"
            )
    for m in {p["mapping"] for p in spec.points}:
        try:
            parse_mapping(m)
        except ConfigError as exc:
            raise ConfigError(f"sweep field {exc}") from None


# ------------------------------------------------------------------------ one point
def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _per_layer(rep) -> dict[str, float | None]:
    """Medians over the transformer layers of micro-batch 0: compute (kernel time less
    weight stall), weight-I/O stall, and the layer block's stream time."""
    comp: dict[int, float] = {}
    stall: dict[int, float] = {}
    layers = {k["layer"] for k in rep.timeline.get("kernels", []) if k["op"] == "qkv"}
    for k in rep.timeline.get("kernels", []):
        if k["micro_batch"] == 0 and k["layer"] in layers:
            comp[k["layer"]] = comp.get(k["layer"], 0.0) + k["end_s"] - k["start_s"] - k["stall_s"]
            stall[k["layer"]] = stall.get(k["layer"], 0.0) + k["stall_s"]
    io = [
        b["end_s"] - b["start_s"]
        for b in rep.timeline.get("io_blocks", [])
        if b["name"].startswith("mb0.layer")
    ]
    med = statistics.median
    return {
        "layer_compute_s": med(comp.values()) if comp else None,
        "layer_stall_s": med(stall.values()) if stall else None,
        "layer_io_s": med(io) if io else None,
    }


def metrics_of(rep) -> dict[str, Any]:
    """The :data:`METRICS` columns of a :class:`gpt_workload.report.Report` (status ok)."""
    rf = rep.roofline
    lay = rep.layout
    return {
        "status": "ok",
        "error": None,
        "simulated_time_s": float(rep.simulated_time_s),
        "tokens_per_s": float(rep.tokens_per_s),
        "mfu": float(rep.mfu),
        "achieved_flops_per_s": float(rep.achieved_flops_per_s),
        "peak_flops_per_s": float(rep.peak_flops_per_s),
        "model_flops": float(rep.model_flops),
        "batch_used": int(rep.batch),
        "seq_len_used": int(rep.seq_len),
        "tokens": int(rep.tokens),
        "micro_batches": int(rep.micro_batches),
        "pes_per_segment": int(lay["pes_per_segment"]),
        "tokens_per_segment": int(lay["tokens_per_segment"]),
        "active_pes": int(lay["active_pes"]),
        "pe_utilisation_mean": float(rep.pe_utilisation["mean"]),
        "pe_utilisation_min": float(rep.pe_utilisation["min"]),
        "pe_utilisation_max": float(rep.pe_utilisation["max"]),
        "sram_peak_bytes": int(rep.sram_peak_bytes["max"]),
        "sram_capacity_bytes": int(rep.sram_peak_bytes["capacity"]),
        "io_utilisation": float(rep.io_utilisation),
        "weight_bytes_streamed": int(lay["weight_bytes_streamed"]),
        "compute_s": float(rep.totals["compute_s"]),
        "fabric_s": float(rep.totals["fabric_s"]),
        "stall_s": float(rep.totals["stall_s"]),
        "idle_s": float(rep.totals["idle_s"]),
        "roofline_bound_s": float(rf["bound_s"]),
        "roofline_bound_by": str(rf["bound_by"]),
        "roofline_compute_s": float(rf["compute_s"]),
        "roofline_io_s": float(rf["io_s"]),
        "roofline_fabric_s": float(rf["fabric_s"]),
        **_per_layer(rep),
        **energy_columns(rep),
    }


def simulate_point(config: PointConfig):
    """Run ``simulate()`` for one sweep point (timing only) and return the Report.

    Raises:
        ConfigError, FitError: as :func:`gpt_workload.simulate.simulate`.
    """
    from gpt_workload.mappings import parse_mapping
    from gpt_workload.models import resolve_model
    from gpt_workload.simulate import simulate
    from gpt_workload.sweep_cache import load_arch_cached, worker_cache

    model: Any = config["model"]
    mfields = {
        k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("model.") and v is not None
    }
    if mfields:
        base = resolve_model(model)
        tag = ",".join(f"{k}={v}" for k, v in sorted(mfields.items()))
        model = dataclasses.replace(base, name=f"{base.name}[{tag}]", **mfields)
    overrides = [
        f"{k}={v!r}" for k, v in sorted(config.items()) if v is not None and _is_arch_field(k)
    ]
    batch = config["batch"]
    seq_len = config["seq_len"]
    arch = load_arch_cached(config["arch"], overrides)
    if batch == "max":
        cfg = model if not isinstance(model, str) else resolve_model(model)
        t = seq_len if seq_len is not None else min(2048, cfg.n_positions)
        mapping = parse_mapping(config["mapping"])
        batch = mapping.max_batch_single_micro(cfg, arch, t, config["precision"])
    return simulate(
        model,
        arch,
        mapping=config["mapping"],
        fidelity=config["fidelity"],
        precision=config["precision"],
        batch=batch,
        seq_len=seq_len,
        check_sequences=0,
        reference=False,
        lowering_cache=worker_cache(),
    )


def _is_arch_field(key: str) -> bool:
    head, _, tail = key.partition(".")
    return head in LEVELS and bool(tail)


def run_point(config: PointConfig) -> dict[str, Any]:
    """Simulate one point and return its :data:`METRICS` row; never raises: an error is
    returned as ``status = "error"`` with a one-line ``error`` message."""
    try:
        return metrics_of(simulate_point(config))
    except Exception as exc:  # a failing point is a result, not the end of the sweep
        return error_row(_one_line(exc))


def error_row(message: str) -> dict[str, Any]:
    """A :data:`METRICS` row for a failed point."""
    row: dict[str, Any] = dict.fromkeys(METRICS)
    row.update(status="error", error=message)
    return row


# ------------------------------------------------------------------------ the store
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fh, data: bytes) -> None:
    """Write ``data`` to the open file ``fh`` (a separate step so tests can interrupt it)."""
    fh.write(data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always either absent, the old file or
    the complete new one: write a temporary file in the same directory, fsync it, rename it
    over ``path`` (``os.replace``, atomic on POSIX), fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            _write_all(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


def _remove_stale_tmp(directory: Path, name: str = "*") -> None:
    """Delete temporary files of :func:`atomic_write_bytes` (``.NAME.PID.tmp``) for ``name``
    in ``directory`` whose writer is dead (killed before its rename)."""
    for p in directory.glob(f".{name}.*.tmp"):
        try:
            pid = int(p.name.rsplit(".", 2)[-2])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            p.unlink(missing_ok=True)


class PartStore:
    """One Parquet part file per finished point, named ``<hash>.parquet``, in ``directory``.

    Args:
        directory: created if missing; stale temporary files of dead writers are removed.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(self.dir)

    def path(self, key: str) -> Path:
        """The part file of point ``key``."""
        return self.dir / f"{key}.parquet"

    def done(self) -> set[str]:
        """Keys of the points whose part file exists (complete by construction)."""
        return {p.name[: -len(".parquet")] for p in self.dir.glob("*.parquet")}

    def write(self, key: str, config: PointConfig, row: dict[str, Any]) -> None:
        """Write the part of point ``key``: its metrics row plus the hash and the full
        configuration as JSON (provenance), atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(
            [{"config_hash": key, "config_json": json.dumps(config, sort_keys=True), **row}],
            schema=part_schema(),
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(self.path(key), sink.getvalue().to_pybytes())

    def read(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Rows of the given keys, ``{key: row}``. A part that cannot be read (damaged
        outside this program's control) is deleted and left out, so its point runs again."""
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        paths = [str(self.path(k)) for k in keys]
        if not paths:
            return {}
        try:
            rows = ds.dataset(paths, schema=part_schema(), format="parquet").to_table().to_pylist()
        except Exception:  # noqa: BLE001 - find and drop the damaged part(s)
            rows = []
            for p in paths:
                try:
                    rows += pq.read_table(p, schema=part_schema()).to_pylist()
                except Exception as exc:  # noqa: BLE001
                    log.warning("part %s is unreadable (%s); its point will run again", p, exc)
                    Path(p).unlink(missing_ok=True)
        return {r.pop("config_hash"): r for r in rows}


def part_schema():
    """Arrow schema of a part file: ``config_hash``, ``config_json`` and :data:`METRICS`."""
    import pyarrow as pa

    cols = [("config_hash", pa.string()), ("config_json", pa.string())]
    cols += [(k, getattr(pa, t)()) for k, t in METRICS.items()]
    return pa.schema(cols)


def _column_type(values: list[Any]):
    """Arrow type of a configuration column: int64, float64 or string (mixed values)."""
    import pyarrow as pa

    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return pa.int64()
    if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return pa.float64()
    return pa.string()


def build_table(spec: SweepSpec, rows: dict[str, dict[str, Any]]):
    """The sweep's table in sweep order: ``point``, ``config_hash``, the configuration
    columns (from the spec) and :data:`METRICS` (from ``rows``); points without a row are
    left out."""
    import pyarrow as pa

    order = [(i, k) for i, k in enumerate(spec.keys) if k in rows]
    cols: dict[str, Any] = {
        "point": pa.array([i for i, _ in order], pa.int64()),
        "config_hash": pa.array([k for _, k in order], pa.string()),
    }
    for c in spec.columns:
        vals = [spec.points[i].get(c) for i, _ in order]
        typ = _column_type([p.get(c) for p in spec.points])
        if typ == pa.string():
            vals = [None if v is None else str(v) for v in vals]
        cols[c] = pa.array(vals, typ)
    for m, t in METRICS.items():
        cols[m] = pa.array([rows[k].get(m) for _, k in order], getattr(pa, t)())
    return pa.table(cols)


def write_table(table, path: Path, fmt: str) -> None:
    """Write ``table`` atomically as Parquet or CSV."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sink)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_table(path: str | os.PathLike):
    """Read a sweep table (``.parquet`` or ``.csv``) as a ``pyarrow.Table``.

    Raises:
        ConfigError: the file is missing or not a readable table.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep table {str(p)!r} does not exist")
    try:
        if p.suffix == ".csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(p)
        import pyarrow.parquet as pq

        return pq.read_table(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise ConfigError(f"sweep table {str(p)!r} is not readable: {_one_line(exc)}") from None


# ------------------------------------------------------------------------ execution
@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes:
        table: the whole table (``pyarrow.Table``), sweep order.
        path: where it was written.
        total: points in the sweep; skipped: already done before this run;
        computed: run now; failed: rows with ``status = "error"`` in the table.
        executor: where the points ran (``"dask local cluster (2 workers)"``, ...).
    """

    table: Any  # pyarrow.Table (pyarrow is imported lazily)
    path: Path
    total: int
    skipped: int
    computed: int
    failed: int
    executor: str = ""


def default_workers() -> int:
    """Worker processes of the default local cluster: the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Silence the ``distributed`` loggers while a sweep runs, unless this module logs at INFO
    (``wse-sim -v``): cluster start-up and shutdown chatter is not news, and a cluster failure
    is reported once, as a :class:`ClusterError` line, not as Dask's tracebacks."""
    lg = logging.getLogger("distributed")
    old = lg.level
    if not log.isEnabledFor(logging.INFO):
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        lg.setLevel(old)


def _serial(todo: list[tuple[str, PointConfig]]) -> Iterator[tuple[str, dict]]:
    for key, cfg in todo:
        yield key, run_point(cfg)


def run_points(configs: list[PointConfig]) -> list[dict[str, Any]]:
    """:func:`run_point` over several points: one Dask task, fewer round trips."""
    return [run_point(c) for c in configs]


def chunk_size(n_points: int, n_threads: int) -> int:
    """Points per Dask task: about 8 tasks per worker thread, at most 16 points per task.

    Shortcut for speed: a task costs the driver a few milliseconds of scheduler and client
    work, comparable to one ``analytic`` point; chunks amortise it while keeping every
    thread busy and the progress bar moving.
    """
    return max(1, min(16, n_points // max(8 * n_threads, 1)))


def _dask(todo: list[tuple[str, PointConfig]], client, window: int) -> Iterator[tuple[str, dict]]:
    """Run points on a Dask client in chunks (:func:`chunk_size`), at most ``window`` tasks in
    flight; yield rows as their task finishes. A point that kills its worker every time it is
    tried (``KilledWorker``: a crash or out of memory) becomes an error row, with the rest of
    its chunk.

    Raises:
        ClusterError: the cluster failed (lost scheduler, cancelled task): nothing is
            recorded for the points still running, so a rerun runs them.
    """
    import asyncio

    from distributed import KilledWorker, as_completed, wait

    nthreads = sum(client.nthreads().values()) or 1
    size = chunk_size(len(todo), nthreads)
    chunks = iter([todo[i : i + size] for i in range(0, len(todo), size)])
    ac = as_completed()
    members: dict[str, list[str]] = {}
    inflight: dict[str, Any] = {}

    def submit_next() -> bool:
        chunk = next(chunks, None)
        if chunk is None:
            return False
        keys = [k for k, _ in chunk]
        name = f"wse-sim-points-{keys[0]}-{len(keys)}"
        fut = client.submit(run_points, [c for _, c in chunk], key=name, pure=False)
        members[fut.key] = keys
        inflight[fut.key] = fut
        ac.add(fut)
        return True

    def wait_some(seconds: float) -> bool:
        try:
            wait(list(inflight.values()), timeout=seconds, return_when="FIRST_COMPLETED")
        except (TimeoutError, asyncio.TimeoutError):
            return False
        return True

    for _ in range(window):
        if not submit_next():
            break
    for fut in _watch_workers(ac, client, wait_some):
        keys = members.pop(fut.key)
        inflight.pop(fut.key, None)
        try:
            rows = fut.result()
        except KilledWorker as exc:
            rows = [error_row("the point killed its Dask worker: " + _one_line(exc))] * len(keys)
        except Exception as exc:  # noqa: BLE001 - the cluster, not the point, failed
            raise ClusterError(
                f"the Dask cluster failed ({_one_line(exc)}); finished points are kept, "
                "rerun the sweep to continue"
            ) from None
        fut.release()
        yield from zip(keys, rows, strict=True)
        submit_next()


def _watch_workers(ac, client, wait_some: Callable[[float], Any]) -> Iterator[Any]:
    """The futures of ``ac`` (``distributed.as_completed``) as they finish, while watching
    that the cluster still has a worker: a point may run for minutes, but with no worker
    nothing ever finishes.

    Args:
        wait_some: ``wait_some(seconds)`` blocks until a future in flight has finished or
            the seconds have passed.

    Raises:
        ClusterError: the cluster has had no worker for :data:`LOST_WORKERS_S` seconds.
    """
    no_worker_since = None
    while not ac.is_empty():
        batch = ac.next_batch(block=False)
        if batch:
            no_worker_since = None
            yield from batch
            continue
        if wait_some(1.0):
            continue
        now = time.monotonic()
        if client.nthreads():
            no_worker_since = None
        elif no_worker_since is None:
            no_worker_since = now
        elif now - no_worker_since > LOST_WORKERS_S:
            raise ClusterError(
                f"the Dask cluster has had no worker for {LOST_WORKERS_S:.0f} s; finished "
                "points are kept, start a worker and rerun the sweep to continue"
            )


def max_workers() -> int:
    """Most local worker processes a sweep starts: 4 per core this process may use (a sweep
    point is CPU-bound; beyond that, start-up and memory cost and nothing runs faster)."""
    return 4 * default_workers()


def _check_workers(workers: Any) -> None:
    """Raises ConfigError unless ``workers`` is None or an integer in 0..:func:`max_workers`."""
    if workers is None:
        return
    hi = max_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= hi:
        raise ConfigError(
            f"workers={workers!r} is not allowed: 0 (run in this process) to {hi} (4 x the "
            f"{default_workers()} cores this process may use)"
        )


#: seconds a sweep waits for an existing Dask scheduler to have at least one worker
WORKER_WAIT_S = 10.0

#: seconds a running sweep tolerates a cluster with no worker before it gives up (a local
#: cluster's nanny restarts a dead worker within a few seconds)
LOST_WORKERS_S = 60.0


def _probe_scheduler(address: str, timeout_s: float = 10.0) -> None:
    """Check that a Dask scheduler answers at ``address`` before a Client is made: connect,
    ask for its identity, all within ``timeout_s`` seconds.

    (A Client pointed at a server that accepts the connection but does not speak Dask's
    protocol waits forever, or reads a garbage frame length and tries to allocate it.)

    Raises:
        ConfigError: nothing answers, something else answers, or the answer is not a
            scheduler's, naming the address and what is expected.
    """
    import asyncio

    from distributed.comm import connect

    hint = "expected tcp://HOST:PORT of a running 'dask scheduler'"

    async def ask() -> Any:
        comm = await connect(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    from concurrent.futures import ThreadPoolExecutor

    try:
        # in a thread of its own: the caller may already run an event loop (Jupyter)
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(asyncio.run, asyncio.wait_for(ask(), timeout_s)).result()
    except (TimeoutError, asyncio.TimeoutError):
        raise ConfigError(
            f"--scheduler {address!r}: no Dask scheduler answered within {timeout_s:.0f} s ({hint})"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"--scheduler {address!r} cannot be reached: {_one_line(exc)} ({hint})"
        ) from None
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - a peer that is not Dask
        raise ConfigError(
            f"--scheduler {address!r} does not speak Dask's protocol ({type(exc).__name__}; {hint})"
        ) from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        kind = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        raise ConfigError(
            f"--scheduler {address!r} answered as {kind!r}, not a Dask scheduler ({hint})"
        )


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for sweeps, closed (with its cluster) on exit.

    Args:
        workers: worker processes of a new local cluster (``distributed.LocalCluster``, one
            single-threaded process each; default one per core); ``0`` yields ``None``: run
            in this process.
        scheduler: address of an existing Dask scheduler (``tcp://HOST:PORT``) to connect to
            instead.

    Raises:
        ConfigError: ``workers`` is not an integer >= 0, or the scheduler cannot be reached.
    """
    _check_workers(workers)
    if scheduler is None and workers == 0:
        yield None
        return
    from distributed import Client, LocalCluster

    with _quiet_dask():
        if scheduler is not None:
            _probe_scheduler(scheduler)
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, ValueError, TypeError) as exc:
                raise ConfigError(
                    f"--scheduler {scheduler!r} cannot be reached: {_one_line(exc)} "
                    "(expected tcp://HOST:PORT of a running 'dask scheduler')"
                ) from None
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except (TimeoutError, OSError):
                client.close()
                raise ConfigError(
                    f"--scheduler {scheduler!r} has no workers (waited {WORKER_WAIT_S:.0f} s): "
                    f"start one with 'dask worker {scheduler}'"
                ) from None
            cluster = None
        else:
            import dask

            # Shortcut for speed: Dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which
            # turns off glibc's dynamic mmap threshold; every per-PE map a point allocates
            # (6 MB on the WSE-2) is then mmapped and page-faulted afresh, +20 % CPU per
            # point. Workers keep the other settings (one BLAS/OpenMP thread).
            env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
            env.pop("MALLOC_TRIM_THRESHOLD_", None)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
                cluster = LocalCluster(
                    n_workers=workers or default_workers(),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # a free port: sweeps may run side by side
                    silence_logs=logging.ERROR,
                )
            client = Client(cluster)
    try:
        yield client
    finally:
        with _quiet_dask():
            client.close()
            if cluster is not None:
                cluster.close()


def describe_client(client) -> str:
    """``"dask local cluster (2 workers)"`` or ``"dask tcp://HOST:PORT (n workers)"``."""
    n = len(client.nthreads())
    if getattr(client, "cluster", None) is not None:
        return f"dask local cluster ({n} workers)"
    return f"dask {client.scheduler.address} ({n} workers)"


def resolve_output(
    spec: SweepSpec, output: str | os.PathLike | None, fmt: str | None
) -> tuple[Path, str]:
    """The table's path and format, checked before any point runs; creates its directory.

    The format is ``fmt``, else the output's suffix (``.csv`` / ``.parquet``), else the
    spec's. Without ``output``, the spec's path with the format's suffix.

    Raises:
        ConfigError: the suffix says one format and ``fmt`` another; the path is a
            directory; its directory cannot be created or written.
    """
    suffix_fmt = {".csv": "csv", ".parquet": "parquet"}
    if output is not None and str(output).endswith(("/", os.sep)):
        raise ConfigError(
            f"--output {str(output)!r} names a directory; give a file path, e.g. "
            f"{str(output)}{spec.name}.{fmt or spec.fmt}"
        )
    given, label = (output, "--output") if output is not None else (spec.output, "sweep.output")
    if given is not None:
        path = Path(given)
        implied = suffix_fmt.get(path.suffix.lower())
        if fmt is not None and implied is not None and implied != fmt:
            raise ConfigError(
                f"{label} {str(given)!r} ends in {path.suffix} but --format is {fmt}: give "
                f"a path ending in .{fmt}, or --format {implied}"
            )
        fmt = fmt or implied or spec.fmt
    else:
        fmt = fmt or spec.fmt
        path = Path(f"{spec.name}.{fmt}")
    if path.is_dir():
        raise ConfigError(f"--output {str(path)!r} is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--output {str(path)!r}: its directory cannot be created ({exc.strerror})"
        ) from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {str(path)!r}: its directory is not writable")
    return path, fmt


def run_sweep(
    spec: SweepSpec | str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    fmt: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client=None,
    retry_failed: bool = False,
    progress: Progress | None = None,
) -> SweepResult:
    """Run every point of ``spec`` not already in the output's part files, then write the
    table.

    Args:
        spec: a :class:`SweepSpec` or the path of a spec TOML.
        output: the table's path (default: the spec's); parts go to ``<output>.parts/``.
        fmt: ``parquet`` or ``csv`` (default: the spec's format).
        scheduler: address of an existing Dask scheduler (``tcp://HOST:PORT``).
        workers: worker processes of the local cluster (default: one per core); ``0`` runs
            the points in this process, without Dask.
        client: an existing ``distributed.Client`` to use instead.
        retry_failed: run points recorded as errors again.
        progress: called as ``progress(done, total)`` once before the first point runs and
            after each point.

    Returns:
        A :class:`SweepResult`: ``.table`` is the whole table as a ``pyarrow.Table`` (one row
        per point, sweep order; ``.table.to_pandas()`` for a DataFrame), with ``.path`` where
        it was written and the counts ``.total``, ``.skipped``, ``.computed``, ``.failed``.

    Raises:
        ConfigError: bad spec, unknown model/arch names, bad format or worker count, an
            unreachable scheduler.
        ClusterError: the Dask cluster failed during the sweep (finished points are kept).
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if fmt is not None and fmt not in ("parquet", "csv"):
        raise ConfigError(f"format={fmt!r} is unknown; allowed: parquet, csv")
    _check_workers(workers)
    if not spec.points:
        raise ConfigError(f"sweep {spec.name!r} has no points")
    check_values(spec)
    with contextlib.ExitStack() as stack:
        if scheduler is not None and client is None:
            # an existing cluster is checked (answers, has workers) before anything is written
            client = stack.enter_context(open_client(workers, scheduler))
        path, fmt = resolve_output(spec, output, fmt)
        _remove_stale_tmp(path.parent, path.name)
        try:
            store = PartStore(path.with_name(path.name + ".parts"))
        except OSError as exc:
            raise ConfigError(
                f"--output {str(path)!r}: its part files cannot be written next to it "
                f"({exc.strerror})"
            ) from None

        wanted = set(spec.keys)
        rows = store.read(store.done() & wanted)
        if retry_failed:
            for k in [k for k, r in rows.items() if r["status"] != "ok"]:
                del rows[k]
        todo = [(k, p) for k, p in zip(spec.keys, spec.points, strict=True) if k not in rows]
        total, skipped = len(spec.keys), len(rows)
        log.info(
            "sweep %s: %d points, %d already done, %d to run", spec.name, total, skipped, len(todo)
        )
        if progress:
            progress(skipped, total)

        executor = "-"
        if todo:
            if client is None:  # a local cluster starts only when a point is left to run
                client = stack.enter_context(open_client(workers, scheduler))
            if client is None:
                executor = "this process (no Dask)"
                results: Iterator[tuple[str, dict]] = _serial(todo)
            else:
                stack.enter_context(_quiet_dask())
                executor = describe_client(client)
                nthreads = sum(client.nthreads().values()) or 1
                results = _dask(todo, client, window=max(2 * nthreads, 4))
            done = skipped
            by_key = dict(todo)
            for key, row in results:
                store.write(key, by_key[key], row)
                rows[key] = row
                done += 1
                if progress:
                    progress(done, total)
    table = build_table(spec, rows)
    write_table(table, path, fmt)
    failed = sum(1 for r in rows.values() if r["status"] != "ok")
    return SweepResult(table, path, total, skipped, len(todo), failed, executor)


# ------------------------------------------------------------------------ CLI
def add_parser(sub):
    """Add ``wse-sim sweep SPEC.toml ...`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "sweep",
        help="run a parameter sweep from a TOML spec (resumable; local or Dask cluster)",
        description="Expand SPEC.toml into points, simulate each once (timing only) and write "
        "the table (Parquet, or CSV). A rerun skips finished points; a killed sweep loses "
        "nothing. See gpt_workload/sweep.py for the spec format.",
    )
    p.add_argument("spec", help="sweep spec TOML ([sweep], [base], [grid], [[zip]])")
    p.add_argument("-o", "--output", help="table path (default: the spec's, or NAME.parquet)")
    p.add_argument("--format", choices=("parquet", "csv"), default=None, help="table format")
    p.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="run on this existing Dask scheduler"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the local Dask cluster (default: one per core; 0 = run "
        "in this process without Dask)",
    )
    p.add_argument("--retry-failed", action="store_true", help="run failed points again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)
    return p


def cmd_sweep(args) -> int:
    """Handler of ``wse-sim sweep``: a progress bar with ETA on stderr, a summary on stdout.

    Raises:
        ConfigError: bad spec or options (the CLI prints one line).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from gpt_workload.cli import _console

    spec = load_spec(args.spec)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=args.no_progress,
    )
    task: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not task:
            task.append(bar.add_task(f"sweep {spec.name}", total=total, completed=done))
        else:
            bar.update(task[0], completed=done)

    with bar:
        try:
            res = run_sweep(
                spec,
                output=args.output,
                fmt=args.format,
                scheduler=args.scheduler,
                workers=args.workers,
                retry_failed=args.retry_failed,
                progress=progress,
            )
        except BaseException:
            # the error is the last word: erase the bar (terminal) or never draw it (log)
            bar.live.transient = True
            bar.console.quiet = not bar.console.is_terminal
            raise
    _console().print(
        f"sweep {spec.name}: {res.total} points ({res.skipped} already done, {res.computed} "
        + (f"run on {res.executor}" if res.computed else "to run")
        + f", {res.failed} failed) -> {res.path}"
    )
    return 0
