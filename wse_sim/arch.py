"""Architecture description of a wafer-scale engine, and its presets.

An :class:`ArchConfig` is frozen data, one dataclass per hardware level (wafer, PE, fabric,
off-wafer I/O, energy per action), with units in the field names. Presets ship as TOML files in
``wse_sim/presets/`` (``wse2``, ``wse3`` and the small test grids ``grid8``, ``grid32``); each
value has its published source beside it in a ``[<level>.sources]`` table, and the sources are
summarised in ``shared/reference/wse_hardware.md`` of the project.

Every field can be overridden for what-if studies with ``"level.field=value"`` strings
(``pe.sram_bytes=98304``); validation happens once, here, and names the field, the value and
the allowed range.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from wse_sim.energy_units import field_unit, is_bare_number, parse_number, parse_quantity
from wse_sim.errors import ConfigError
from wse_sim.precision import Precision

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _f(lo: float, hi: float, doc: str, *, lo_open: bool = False) -> Any:
    """A dataclass field carrying its allowed range and description as metadata."""
    return field(metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "doc": doc})


def _unit(level: str, name: str) -> str:
    """`` <unit>`` of an energy field (its name carries it), else ``""``."""
    return f" {field_unit(name)}" if level == "energy" else ""


def _range_error(level: str, f: Any, v: Any, typed: str | None = None) -> ConfigError:
    rel = ">" if f.metadata["lo_open"] else ">="
    u = _unit(level, f.name)
    if typed is None:
        shown = f"{v!r}{u}"
    elif isinstance(v, float) and math.isinf(v) and not re.search(r"inf", typed, re.I):
        shown = f"{typed!r} (overflows a float in{u or ' the field unit'})"
    else:
        shown = f"{typed!r} (= {v:g}{u})"
    return ConfigError(
        f"arch field {level}.{f.name}={shown} is out of range: allowed {rel} "
        f"{f.metadata['lo']:g}{u} and <= {f.metadata['hi']:g}{u} ({f.metadata['doc']})"
    )


@functools.cache
def _level_fields(cls: type) -> tuple:
    """``dataclasses.fields(cls)`` of an arch level, computed once."""
    return fields(cls)


def _in_range(f: Any, v: Any) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    lo, hi = f.metadata["lo"], f.metadata["hi"]
    return ok and (v > lo if f.metadata["lo_open"] else v >= lo) and v <= hi


def _check_range(level: str, obj: Any) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        if not _in_range(f, v):
            raise _range_error(level, f, v)


@dataclass(frozen=True)
class WaferConfig:
    """The PE grid a program may use (the kernel region of the fabric)."""

    rows: int = _f(1, 4096, "PE rows of the kernel region (fabric height)")
    cols: int = _f(1, 4096, "PE columns of the kernel region (fabric width)")

    def __post_init__(self) -> None:
        _check_range("wafer", self)

    @property
    def n_pe(self) -> int:
        """Number of PEs in the kernel region."""
        return self.rows * self.cols


def _check_fmac_rates(pe: Any) -> None:
    """FMAC rates are throughputs, elements per cycle of a long vector op: fp16 / bf16 may be
    below the SIMD width when the datapath cannot be fed every cycle (2.92 measured on WSE-3
    silicon against an 8-wide SIMD, K3 of ``shared/reference/measured.md``), so any positive
    value is accepted (the range check of the field bounds it); energy counts one lane-op
    per FMA either way (busy cycles x rate = MACs)."""
    for name in (p.fmac_field for p in (Precision.FP16, Precision.BF16, Precision.FP32)):
        v = getattr(pe, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(
                f"arch field pe.{name}={v!r} is not allowed: FMACs per cycle must be a "
                "finite number > 0"
            )


@dataclass(frozen=True)
class PEConfig:
    """One processing element: clock, SIMD FMAC rates per precision, SRAM."""

    clock_hz: float = _f(0, 1e11, "PE and fabric clock in Hz", lo_open=True)
    sram_bytes: int = _f(1, 2**30, "SRAM per PE in bytes")
    sram_reserved_bytes: int = _f(0, 2**30, "SRAM per PE taken by the runtime, bytes")
    fmac_fp16_per_cycle: float = _f(0, 1024, "fp16 FMAs per cycle (vector-op throughput)", lo_open=True)
    fmac_bf16_per_cycle: float = _f(0, 1024, "bf16 FMACs per cycle", lo_open=True)
    fmac_fp32_per_cycle: float = _f(0, 1024, "fp32 FMACs per cycle", lo_open=True)
    vector_op_overhead_cycles: int = _f(0, 10_000, "fixed setup cycles per vector (DSD) op")
    sram_read_bytes_per_cycle: int = _f(1, 4096, "SRAM read bandwidth, bytes per cycle")
    sram_write_bytes_per_cycle: int = _f(1, 4096, "SRAM write bandwidth, bytes per cycle")

    def __post_init__(self) -> None:
        _check_range("pe", self)
        _check_fmac_rates(self)
        if self.sram_reserved_bytes >= self.sram_bytes:
            raise ConfigError(
                f"arch field pe.sram_reserved_bytes={self.sram_reserved_bytes} must be < "
                f"pe.sram_bytes={self.sram_bytes}"
            )

    @property
    def sram_usable_bytes(self) -> int:
        """SRAM per PE available to kernels: ``sram_bytes - sram_reserved_bytes``."""
        return self.sram_bytes - self.sram_reserved_bytes

    def fmac_per_cycle(self, precision: str) -> float:
        """FMACs per cycle of one PE at ``precision`` ('fp32', 'fp16', 'bf16').

        Raises:
            ConfigError: unknown precision.
        """
        return float(getattr(self, Precision.parse(precision).fmac_field))

    def flops_per_cycle(self, precision: str) -> float:
        """Peak FLOP per cycle of one PE: 2 FLOP per FMAC (multiply + add)."""
        return 2.0 * self.fmac_per_cycle(precision)


@dataclass(frozen=True)
class FabricConfig:
    """The 2-D mesh: one router per PE, links of one wavelet per cycle per direction."""

    link_bits_per_cycle: float = _f(
        0, 4096, "bits per link per direction per cycle (32 / cycles per wavelet)", lo_open=True
    )
    hop_latency_cycles: int = _f(0, 1000, "router-to-router latency, cycles per hop")
    turn_latency_cycles: int = _f(0, 1000, "extra cycles when a route turns")
    ramp_latency_cycles: int = _f(0, 1000, "cycles to inject/eject through the RAMP port")
    colours: int = _f(1, 64, "routable colours (virtual channels)")
    router_buffer_wavelets: int = _f(1, 1 << 20, "input buffer per colour per router, wavelets")
    ramp_wavelets_per_cycle: float = _f(
        0, 64, "PE <-> router RAMP rate, wavelets per cycle each way", lo_open=True
    )
    pe_forward_latency_cycles: int = _f(
        0, 1000, "cycles a PE adds when it receives, combines and re-sends a wavelet"
    )

    def __post_init__(self) -> None:
        _check_range("fabric", self)

    @property
    def link_bytes_per_cycle(self) -> float:
        """Bytes one link carries per cycle per direction."""
        return self.link_bits_per_cycle / 8.0


@dataclass(frozen=True)
class IOConfig:
    """Off-wafer I/O: MemoryX weight ingress and gradient egress at the wafer edge; the
    MemoryX optimizer update rate and the SwarmX interconnect of data-parallel systems
    (used by training only); the link activations cross between the systems of a serving
    pipeline (``generate`` with several systems, weights resident)."""

    ingress_bytes_per_s: float = _f(0, 1e16, "MemoryX -> wafer bandwidth, bytes/s", lo_open=True)
    egress_bytes_per_s: float = _f(0, 1e16, "wafer -> MemoryX bandwidth, bytes/s", lo_open=True)
    ingress_latency_s: float = _f(0, 1.0, "first-byte latency of a weight stream, s")
    weight_buffer_slots: int = _f(1, 64, "layers of weights buffered on wafer (2 = double)")
    gradient_buffer_slots: int = _f(
        1, 64, "weight-gradient blocks held on wafer awaiting egress (training)"
    )
    optimizer_params_per_s: float = _f(
        0, 1e16, "parameters MemoryX updates per second (AdamW, training)", lo_open=True
    )
    swarmx_bytes_per_s: float = _f(
        0, 1e16, "SwarmX bandwidth per system link, bytes/s (data parallel)", lo_open=True
    )
    swarmx_latency_s: float = _f(0, 1.0, "SwarmX latency per tree level, s")
    intersystem_bytes_per_s: float = _f(
        0, 1e16, "activation link between pipelined systems (serving), bytes/s", lo_open=True
    )
    intersystem_latency_s: float = _f(0, 1.0, "latency of one crossing between systems, s")

    def __post_init__(self) -> None:
        _check_range("io", self)


@dataclass(frozen=True)
class EnergyConfig:
    """Energy per action and static power, for the energy model (:mod:`wse_sim.metrics`).

    Units are in the field names: ``_pj`` picojoules per action, ``_pj_per_byte`` picojoules
    per byte, ``_w`` watts, ``_mm2`` square millimetres. A value may also be given as a string
    with a unit of the same kind (``"500 fJ"`` for a ``_pj`` field, ``"6 mW"`` for a ``_w``
    field); a unit of another kind (``"5 W"`` for a ``_pj`` field), an unknown unit, or a
    quoted number without a unit in a TOML file is refused (:func:`wse_sim.energy_units.
    parse_quantity`). The presets give each value's published source and process node and
    the rule that scaled it to the preset's node (``shared/reference/energy.md``).
    """

    fmac_fp16_pj: float = _f(0, 1e6, "one fp16 FMAC lane (multiply + add), pJ")
    fmac_bf16_pj: float = _f(0, 1e6, "one bf16 FMAC lane (multiply + add), pJ")
    fmac_fp32_pj: float = _f(0, 1e6, "one fp32 FMA, pJ")
    sram_read_pj_per_byte: float = _f(0, 1e6, "PE SRAM read, pJ per byte")
    sram_write_pj_per_byte: float = _f(0, 1e6, "PE SRAM write, pJ per byte")
    wavelet_hop_pj: float = _f(0, 1e6, "link wire, one 32-bit wavelet over one hop, pJ")
    ramp_wavelet_pj: float = _f(0, 1e6, "one wavelet across a RAMP (PE <-> router), pJ")
    router_buffer_write_pj: float = _f(0, 1e6, "router input-buffer write, pJ per wavelet")
    router_buffer_read_pj: float = _f(0, 1e6, "router buffer read + crossbar, pJ per wavelet")
    memoryx_io_pj_per_byte: float = _f(0, 1e9, "MemoryX <-> wafer I/O (SerDes + optics), pJ/B")
    swarmx_io_pj_per_byte: float = _f(0, 1e9, "SwarmX link per tree level, pJ per byte")
    static_pe_w: float = _f(0, 10.0, "static (leakage + clock) power per PE, W")
    system_static_w: float = _f(0, 1e7, "power of the system's non-wafer parts, W")
    pe_area_mm2: float = _f(0, 1e4, "area of one PE (for W/mm^2 maps), mm^2", lo_open=True)

    def __post_init__(self) -> None:
        _check_range("energy", self)

    def fmac_pj(self, precision: str) -> float:
        """Energy of one FMAC lane at ``precision`` ('fp32', 'fp16', 'bf16'), pJ.

        Raises:
            ConfigError: unknown precision.
        """
        return float(getattr(self, Precision.parse(precision).fmac_energy_field))


LEVELS: dict[str, type] = {
    "wafer": WaferConfig,
    "pe": PEConfig,
    "fabric": FabricConfig,
    "io": IOConfig,
    "energy": EnergyConfig,
}


@dataclass(frozen=True)
class ArchConfig:
    """A whole wafer-scale system: wafer grid, PE, fabric, off-wafer I/O and energy per action.

    Attributes:
        name: preset name (``wse2``) or the TOML file's stem.
        description: one line for ``wse-sim arch list``.
        sources: ``{"pe.sram_bytes": "[HC34] 48 KiB per PE", ...}``, the source of each value.
        overrides: the ``level.field=value`` overrides applied on top of the preset.
    """

    name: str
    description: str
    wafer: WaferConfig
    pe: PEConfig
    fabric: FabricConfig
    io: IOConfig
    energy: EnergyConfig
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    overrides: tuple[str, ...] = ()

    @property
    def n_pe(self) -> int:
        """PEs in the kernel region."""
        return self.wafer.n_pe

    def peak_flops_per_s(self, precision: str) -> float:
        """Peak FLOP/s of the whole wafer: ``n_pe * 2 * fmac_per_cycle * clock_hz``."""
        return self.n_pe * self.pe.flops_per_cycle(precision) * self.pe.clock_hz

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> ArchConfig:
        """A copy with ``level.field=value`` overrides applied and validated.

        Raises:
            ConfigError: malformed override, unknown level or field, bad type or range.
        """
        levels = {lv: dataclasses.asdict(getattr(self, lv)) for lv in LEVELS}
        sources = dict(self.sources)
        for ov in overrides:
            level, fname, value = _parse_override(ov)
            levels[level][fname] = value
            key = f"{level}.{fname}"
            sources[key] = f"override --set {ov.strip()} (preset: {self.sources.get(key, '-')})"
        return _build(
            self.name,
            self.description,
            levels,
            sources,
            tuple(self.overrides) + tuple(overrides),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view: ``{"name", "description", "wafer": {...}, ...}`` (JSON-safe)."""
        d: dict[str, Any] = {"name": self.name, "description": self.description}
        for lv, cls in LEVELS.items():
            obj = getattr(self, lv)
            # every field of a level is a number or a string (``dataclasses.asdict`` would
            # copy containers too, at ten times the cost: a sweep reports an arch per point)
            d[lv] = {f.name: getattr(obj, f.name) for f in _level_fields(cls)}
        d["n_pe"] = self.n_pe
        d["overrides"] = list(self.overrides)
        return d

    def field_table(self) -> list[tuple[str, Any, str, str]]:
        """Rows ``(level.field, value, description, source)`` for display."""
        rows = []
        for lv, cls in LEVELS.items():
            obj = getattr(self, lv)
            for f in fields(cls):
                key = f"{lv}.{f.name}"
                rows.append(
                    (key, getattr(obj, f.name), f.metadata["doc"], self.sources.get(key, ""))
                )
        return rows


def _coerce(level: str, fname: str, raw: Any) -> Any:
    ftype = {f.name: f.type for f in fields(LEVELS[level])}[fname]
    want_int = ftype in (int, "int")
    if level == "energy" and isinstance(raw, str):
        return parse_quantity(fname, raw)
    if isinstance(raw, str):
        val = parse_number(raw)
    elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
        val = None
    else:
        val = float(raw)
    if val is None:
        raise ConfigError(
            f"arch field {level}.{fname}={raw!r} is not a number (digits may be grouped with "
            f"single underscores, e.g. 98_304)"
        )
    if want_int:
        if not math.isfinite(val) or val != int(val):
            raise ConfigError(f"arch field {level}.{fname}={raw!r} must be an integer")
        return int(val)
    return val


def parse_field(level: str, fname: str, raw: Any) -> Any:
    """The value of arch field ``level.fname`` given as ``raw`` (a number, or a string as
    ``--set`` and TOML give it, with a unit for an energy field), range-checked.

    Raises:
        ConfigError: unknown field, not a number, a wrong unit, or out of range; the
            message quotes ``raw`` as typed and names the field's unit.
    """
    _check_known(level, fname)
    val = _coerce(level, fname, raw)
    f = {f.name: f for f in fields(LEVELS[level])}[fname]
    if not _in_range(f, val):
        typed = raw.strip() if isinstance(raw, str) and level == "energy" else None
        raise _range_error(level, f, val, typed)  # energy: quoted as typed (it has units)
    return val


def _parse_override(ov: str) -> tuple[str, str, Any]:
    if "=" not in ov or "." not in ov.split("=", 1)[0]:
        raise ConfigError(
            f"override {ov!r} is malformed: expected LEVEL.FIELD=VALUE, e.g. pe.sram_bytes=98304"
        )
    key, raw = ov.split("=", 1)
    level, fname = key.strip().split(".", 1)
    return level, fname, parse_field(level, fname, raw)


def _check_known(level: str, fname: str) -> None:
    if level not in LEVELS:
        raise ConfigError(f"arch level {level!r} is unknown; allowed: {', '.join(LEVELS)}")
    names = [f.name for f in fields(LEVELS[level])]
    if fname not in names:
        raise ConfigError(
            f"arch field {level}.{fname} is unknown; allowed: "
            + ", ".join(f"{level}.{n}" for n in names)
        )


def _build(
    name: str,
    description: str,
    levels: dict[str, dict[str, Any]],
    sources: dict[str, str],
    overrides: tuple[str, ...],
) -> ArchConfig:
    built = {}
    for lv, cls in LEVELS.items():
        vals = levels.get(lv, {})
        missing = [f.name for f in fields(cls) if f.name not in vals]
        if missing:
            raise ConfigError(f"arch {name!r}: missing field {lv}.{missing[0]}")
        kwargs = {}
        for k, v in vals.items():
            kwargs[k] = parse_field(lv, k, v)
        built[lv] = cls(**kwargs)
    return ArchConfig(
        name=name, description=description, sources=dict(sources), overrides=overrides, **built
    )


def _from_toml_dict(data: dict[str, Any], default_name: str) -> ArchConfig:
    levels: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for key, val in data.items():
        if key in ("name", "description"):
            continue
        if key not in LEVELS:
            raise ConfigError(f"arch TOML table [{key}] is unknown; allowed: {', '.join(LEVELS)}")
        if not isinstance(val, dict):
            raise ConfigError(f"arch TOML key {key!r} must be a table")
        levels[key] = {k: v for k, v in val.items() if k != "sources"}
        if key == "energy":
            for k, v in levels[key].items():
                if isinstance(v, str) and is_bare_number(v):
                    raise ConfigError(
                        f"arch field energy.{k}={v!r} is unit-less: in a TOML file write a "
                        f"number (in the unit of the field name, {field_unit(k)}) or a string "
                        f"with its unit, e.g. \"{v.strip()} {field_unit(k)}\""
                    )
        for sk, sv in val.get("sources", {}).items():
            sources[f"{key}.{sk}"] = str(sv)
    return _build(
        str(data.get("name", default_name)), str(data.get("description", "")), levels, sources, ()
    )


def preset_names() -> list[str]:
    """Names of the presets shipped in ``wse_sim/presets`` (``['grid32', 'grid8', ...]``)."""
    files = resources.files("wse_sim").joinpath("presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".toml"))


def load_arch(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ArchConfig:
    """Load a preset by name or an arch TOML file by path, then apply overrides.

    Args:
        spec: a preset name (``"wse2"``, case-insensitive) or a path to a TOML file laid out
            as the presets are.
        overrides: ``"level.field=value"`` strings.

    Raises:
        ConfigError: unknown preset; a path (ending .toml or with a path separator) that
            does not exist or is not a file; unreadable or malformed TOML; bad field or value.
    """
    names = preset_names()
    if spec.lower() in names:
        text = resources.files("wse_sim").joinpath("presets", spec.lower() + ".toml").read_text()
        origin = spec.lower()
    else:
        path = Path(spec)
        looks_like_path = spec.lower().endswith(".toml") or any(
            sep and sep in spec for sep in (os.sep, os.altsep)
        )
        if looks_like_path and not path.exists():
            raise ConfigError(
                f"arch file {spec!r} does not exist: expected one of {', '.join(names)} or an "
                "existing .toml file"
            )
        if looks_like_path and not path.is_file():
            raise ConfigError(f"arch file {spec!r} is not a file: expected a .toml file")
        if not (path.suffix == ".toml" and path.is_file()):
            raise ConfigError(
                f"unknown arch {spec!r}: expected one of {', '.join(names)} or a .toml file"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"arch file {spec!r} cannot be read: {exc}") from None
        origin = path.stem
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"arch file {spec!r} is not valid TOML: {exc}") from None
    arch = _from_toml_dict(data, origin)
    return arch.with_overrides(overrides) if overrides else arch


def list_archs() -> list[ArchConfig]:
    """Every shipped preset, loaded."""
    return [load_arch(n) for n in preset_names()]
