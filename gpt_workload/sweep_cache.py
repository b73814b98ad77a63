"""Caches that make a sweep cost what its model costs: lowering shared between points.

A sweep's points often differ only in fields the lowering never reads (an ``analytic`` sweep
over ``io.ingress_bytes_per_s`` lowers the same Program at every bandwidth). Guessing which
arch fields a mapping reads would break silently the day a mapping reads one more, so the
key is *derived*: the first lowering of a (mapping, model, batch, seq_len, precision) runs on
a recording view of the arch (:class:`_ArchReads`) that notes every attribute read and every
method call with its arguments, and the value each returned. The Program is then reused for
any later arch on which each of those reads returns an equal value: the lowering is a
deterministic function of its arguments and of what it read, so it would have produced the
same Program (same control flow, same values). A second entry is added under the same
(mapping, model, ...) key when a read differs.

Not cached: a mapping whose object changes while lowering (``auto`` keeps its search result
on itself; replaying the Program would lose it), and a lowering whose Program keeps a
reference to the recording view. Errors (``ConfigError``, ``FitError``: a point that does
not fit) are cached like Programs, and raised again with the same message.

Programs are shared between the points that hit: the timing backends and
:func:`gpt_workload.simulate.simulate` only read them. The per-PE maps a backend derives from
a Program are cached on the Program (:func:`wse_sim.timing.common.per_pe_maps`), so a hit
pays only for the timing itself.

Each process (a sweep run in this process, or a Dask worker) keeps one cache,
:func:`worker_cache`, alive across points and tasks, so workers stay warm. The environment
variable ``WSE_SIM_SWEEP_CACHE=0`` turns it off (every point lowered afresh: the code path
the sweep had before the cache, kept for comparison).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from wse_sim.arch import ArchConfig, load_arch, preset_names
from wse_sim.errors import ConfigError, FitError

#: Programs kept per process (least recently used dropped first). A 1.3B Program with its
#: class maps and per-PE maps is ~40 MB on the WSE-2.
MAX_ENTRIES = 24

_MISSING = object()


class _ArchReads:
    """A read-only view of an arch (or one of its levels) that records what is read.

    Attribute reads return the real value (nested levels as further views) and append
    ``(path, value)`` to the shared log; a method call appends ``(path, (args, kwargs),
    result)``. ``isinstance`` sees the real class.
    """

    __slots__ = ("_obj", "_path", "_log")

    def __init__(self, obj: Any, path: tuple[str, ...], log: list):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    @property  # type: ignore[misc]
    def __class__(self):  # noqa: D105 - isinstance(view, ArchConfig) stays True
        return type(self._obj)

    def __getattr__(self, name: str) -> Any:
        val = getattr(self._obj, name)
        path = self._path + (name,)
        if hasattr(val, "__dataclass_fields__"):  # an arch level: record what is read of it
            return _ArchReads(val, path, self._log)
        if callable(val):
            log = self._log

            def call(*args, **kwargs):
                res = val(*args, **kwargs)
                log.append((path, (args, tuple(sorted(kwargs.items()))), res))
                return res

            return call
        self._log.append((path, None, val))
        return val

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"arch is read-only (tried to set {name})")

    def _whole(self) -> Any:
        """The wrapped object, recorded as read whole (hashed or compared: e.g. a level
        used as a dict key by a mapping's own cache)."""
        self._log.append((self._path, None, self._obj))
        return self._obj

    def __eq__(self, other: Any) -> bool:
        return self._whole() == (other._whole() if type(other) is _ArchReads else other)

    def __hash__(self) -> int:
        return hash(self._whole())


def _replay(arch: ArchConfig, reads: tuple) -> bool:
    """Whether every recorded read returns an equal value on ``arch``."""
    for path, call, value in reads:
        obj: Any = arch
        try:
            for name in path:
                obj = getattr(obj, name)
            if call is not None:
                args, kwargs = call
                obj = obj(*args, **dict(kwargs))
        except Exception:  # noqa: BLE001 - a read that fails now cannot have matched
            return False
        if type(obj) is not type(value) or obj != value:
            return False
    return True


def _leaks(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` (a Program's facts, :meth:`Program.describe`, recursively) holds a
    recording view."""
    if isinstance(obj, _ArchReads) or type(obj) is _ArchReads:
        return True
    if depth > 6:
        return False
    if isinstance(obj, dict):
        return any(_leaks(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_leaks(v, depth + 1) for v in obj)
    return False


@dataclass
class _Entry:
    reads: tuple
    program: Any = None
    error: BaseException | None = None


@dataclass
class LoweringCache:
    """Lowered Programs keyed by what the lowering read (see the module docstring).

    Attributes:
        max_entries: Programs (and cached errors) kept, least recently used dropped first.
        hits, misses: lookups answered from the cache / lowered afresh.
        uncacheable: lowerings that could not be cached (stateful mapping, leaked view).
    """

    max_entries: int = MAX_ENTRIES
    hits: int = 0
    misses: int = 0
    uncacheable: int = 0
    _entries: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _stateful: set = field(default_factory=set, repr=False)

    def lower(self, mapping, cfg, arch: ArchConfig, batch: int, seq_len: int, precision: str):
        """``mapping.lower(cfg, arch, batch, seq_len, precision)``, or the Program an earlier
        call returned for an arch on which every read of that lowering agrees.

        Raises:
            ConfigError, FitError: as the mapping's ``lower`` (cached like Programs).
        """
        base = (type(mapping), mapping.spec, cfg, batch, seq_len, precision)
        if base[:2] in self._stateful:
            self.uncacheable += 1
            return mapping.lower(cfg, arch, batch, seq_len, precision)
        for key in [k for k in self._entries if k[0] == base]:
            entry = self._entries[key]
            if _replay(arch, entry.reads):
                self._entries.move_to_end(key)
                self.hits += 1
                if entry.error is not None:
                    raise entry.error.with_traceback(None)
                return entry.program
        self.misses += 1
        log: list = []
        view = _ArchReads(arch, (), log)
        before = dict(vars(mapping))
        try:
            program = mapping.lower(cfg, view, batch, seq_len, precision)
        except (ConfigError, FitError) as exc:
            self._store(base, _Entry(tuple(log), error=exc))
            raise
        if dict(vars(mapping)) != before or _leaks(program.describe()):
            # the mapping keeps state from lowering, or the Program holds the view: lower
            # again on the real arch, and never cache this mapping's Programs
            self._stateful.add(base[:2])
            self.uncacheable += 1
            return mapping.lower(cfg, arch, batch, seq_len, precision)
        self._store(base, _Entry(tuple(log), program=program))
        return program

    def _store(self, base: tuple, entry: _Entry) -> None:
        self._entries[(base, len(self._entries), id(entry))] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._entries.clear()
        self._stateful.clear()
        self.hits = self.misses = self.uncacheable = 0


_PRESETS: dict[str, ArchConfig] = {}


def load_arch_cached(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ArchConfig:
    """:func:`wse_sim.arch.load_arch`, with shipped presets parsed once per process (an
    arch TOML file given by path is read every time: it may change between points).

    Raises:
        ConfigError: as :func:`wse_sim.arch.load_arch`.
    """
    name = spec.lower() if isinstance(spec, str) else spec
    if not (isinstance(name, str) and name in _preset_set()):
        return load_arch(spec, overrides)
    base = _PRESETS.get(name)
    if base is None:
        base = _PRESETS[name] = load_arch(name)
    return base.with_overrides(overrides) if overrides else base


_PRESET_NAMES: list[frozenset] = []


def _preset_set() -> frozenset:
    if not _PRESET_NAMES:
        _PRESET_NAMES.append(frozenset(preset_names()))
    return _PRESET_NAMES[0]


_CACHE = LoweringCache()


def enabled() -> bool:
    """False when ``WSE_SIM_SWEEP_CACHE`` is ``0`` (or ``off``/``false``/``no``)."""
    return os.environ.get("WSE_SIM_SWEEP_CACHE", "1").strip().lower() not in (
        "0",
        "off",
        "false",
        "no",
    )


def worker_cache() -> LoweringCache | None:
    """This process's cache (kept warm across points and Dask tasks), or ``None`` when
    turned off (:func:`enabled`)."""
    return _CACHE if enabled() else None
