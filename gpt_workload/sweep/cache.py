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

A mapping that searches its layout (``weight_streaming``'s default ``pes_per_segment=auto``,
:mod:`gpt_workload.mappings.weight_streaming.search`) times candidate layouts with the ``analytic``
backend, so its Program depends on the I/O and clock fields as well, and points that differ
in them lower again. The candidates themselves do not read those fields: each candidate
lowering (the mapping's ``_lower_at(cfg, arch, batch, seq_len, precision, P, m)``, the
lowering at one layout) is shared the same way, keyed by what *it* read, so a point repeats
only the candidates' timings (the per-PE maps and active cycles of a shared candidate are
computed once, on the shared Program). Each caller gets its own shallow copy of a shared
Program with its own ``notes`` (the search replaces its frozen ``layout``).

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

import copy
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from wse_sim.arch import ArchConfig, load_arch, preset_names
from wse_sim.errors import ConfigError, FitError
from wse_sim.timing.common import derived, program_active_cycles

#: Programs kept per process (least recently used dropped first). A 1.3B Program with its
#: class maps and per-PE maps is ~15-40 MB on the WSE-2.
MAX_ENTRIES = 24

#: candidate-layout Programs kept per process (a search tries about 20 per point; more than
#: one search's worth, or a least-recently-used cache would evict each before its reuse).
#: ~15 MB each on the WSE-2 (class maps 3 MB, per-PE maps 12 MB).
MAX_SHARED = 48

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


_UNREADABLE = object()


def _read(arch: ArchConfig, path: tuple, call) -> Any:
    """What the recorded read ``(path, call)`` returns on ``arch`` (:data:`_UNREADABLE` if it
    raises)."""
    obj: Any = arch
    try:
        for name in path:
            obj = getattr(obj, name)
        if call is not None:
            args, kwargs = call
            obj = obj(*args, **dict(kwargs))
    except Exception:  # noqa: BLE001 - a read that fails now cannot have matched
        return _UNREADABLE
    return obj


class _Reads:
    """The values reads return on one arch, each computed once: an arch is frozen, and the
    candidate lowerings of a layout search replay the same few reads (a dozen fields) for
    each of about twenty candidates."""

    __slots__ = ("arch", "values")

    def __init__(self, arch: ArchConfig):
        self.arch = arch
        self.values: dict = {}

    def replay(self, reads: tuple) -> bool:
        """Whether every recorded read returns an equal value on the arch."""
        values = self.values
        for path, call, value in reads:
            key = (path, call)
            try:
                obj = values[key]
            except KeyError:
                obj = values[key] = _read(self.arch, path, call)
            except TypeError:  # an unhashable argument: read it each time
                obj = _read(self.arch, path, call)
            if type(obj) is not type(value) or obj != value:
                return False
        return True


def _distinct(log: list) -> tuple:
    """The reads of ``log`` in order, each once (a field read in a loop is checked once)."""
    seen: set = set()
    out = []
    for r in log:
        try:
            if r in seen:
                continue
            seen.add(r)
        except TypeError:  # an unhashable value: keep every occurrence
            pass
        out.append(r)
    return tuple(out)


def _fresh(program: Any) -> Any:
    """A shallow copy of a shared ``program`` with its own ``notes``: the caller may replace its
    ``layout`` (the layout search does, with a new frozen value) or write its notes, while the
    kernels, the class maps and the per-PE caches
    kept on the Program (:func:`wse_sim.timing.common.per_pe_maps`,
    :func:`wse_sim.timing.common.program_active_cycles`) stay shared."""
    c = copy.copy(program)
    c.notes = _copy_tree(dict(program.notes))
    return c


def _copy_tree(obj: Any) -> Any:
    """``obj`` with its dicts and lists copied, recursively (what a writer of a Program's
    notes may change); other values shared (notes hold numbers and strings)."""
    if type(obj) is dict:
        return {k: _copy_tree(v) for k, v in obj.items()}
    if type(obj) is list:
        return [_copy_tree(v) for v in obj]
    return obj


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


def _state(mapping: Any) -> dict:
    """What a mapping object holds, less the shared lowering :meth:`LoweringCache._sharing`
    puts on its copy."""
    return {k: v for k, v in vars(mapping).items() if k != "_lower_at"}


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
        max_shared: candidate-layout Programs kept (least recently used dropped first).
        shared_hits, shared_misses: candidate lowerings shared / lowered afresh.
    """

    max_entries: int = MAX_ENTRIES
    hits: int = 0
    misses: int = 0
    uncacheable: int = 0
    max_shared: int = MAX_SHARED
    shared_hits: int = 0
    shared_misses: int = 0
    _entries: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _shared: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _stateful: set = field(default_factory=set, repr=False)
    # the keys of both tables by their base (the lowering's arguments less the arch): a
    # lookup compares reads only with the entries of its own base
    _index: dict = field(default_factory=dict, repr=False)
    _serial: int = field(default=0, repr=False)
    _memo: _Reads | None = field(default=None, repr=False)

    def lower(self, mapping, cfg, arch: ArchConfig, batch: int, seq_len: int, precision: str):
        """``mapping.lower(cfg, arch, batch, seq_len, precision)``, or the Program an earlier
        call returned for an arch on which every read of that lowering agrees (its candidate
        layouts shared the same way, when the mapping searches its layout).

        Raises:
            ConfigError, FitError: as the mapping's ``lower`` (cached like Programs).
        """
        base = (type(mapping), mapping.spec, cfg, batch, seq_len, precision)
        if base[:2] in self._stateful:
            self.uncacheable += 1
            return mapping.lower(cfg, arch, batch, seq_len, precision)
        for key in list(self._index.get(base, ())):
            entry = self._entries[key]
            if self._reads_of(arch).replay(entry.reads):
                self._entries.move_to_end(key)
                self.hits += 1
                if entry.error is not None:
                    raise entry.error.with_traceback(None)
                return entry.program
        self.misses += 1
        log: list = []
        view = _ArchReads(arch, (), log)
        sharing = self._sharing(mapping)
        before = _state(sharing)
        try:
            program = sharing.lower(cfg, view, batch, seq_len, precision)
        except (ConfigError, FitError) as exc:
            self._store(self._entries, self.max_entries, base, _Entry(_distinct(log), error=exc))
            raise
        if _state(sharing) != before or _leaks(program.describe()):
            # the mapping keeps state from lowering, or the Program holds the view: lower
            # again on the real arch, and never cache this mapping's Programs
            self._stateful.add(base[:2])
            self.uncacheable += 1
            return mapping.lower(cfg, arch, batch, seq_len, precision)
        self._store(self._entries, self.max_entries, base, _Entry(_distinct(log), program))
        return program

    def _reads_of(self, arch: ArchConfig) -> _Reads:
        """The read values of ``arch``, kept while the same arch object is looked up (a point's
        lookups, and the next points' on the same overrides: the sweep shares arch
        objects, :func:`load_arch_cached`)."""
        memo = self._memo
        if memo is None or memo.arch is not arch:
            memo = self._memo = _Reads(arch)
        return memo

    def _sharing(self, mapping):
        """``mapping`` itself, or, for a mapping with a lowering at one layout
        (``_lower_at``, called by its layout search for each candidate and for the winner),
        a shallow copy of it whose ``_lower_at`` goes through :meth:`_lower_at_shared`."""
        at = getattr(type(mapping), "_lower_at", None)
        if at is None:
            return mapping
        twin = copy.copy(mapping)

        def lower_at(cfg, arch, batch, seq_len, precision, P, m):
            return self._lower_at_shared(at, mapping, (cfg, arch, batch, seq_len, precision, P, m))

        twin._lower_at = lower_at
        return twin

    def _lower_at_shared(self, at, mapping, args: tuple):
        """``at(mapping, *args)`` (``args = (cfg, arch, batch, seq_len, precision, P, m)``), or
        a fresh copy (:func:`_fresh`) of the Program an earlier call made where every read of
        that lowering agrees. The reads are also added to the enclosing recording (when
        ``arch`` is the recording view of :meth:`lower`): its lowering read them too.

        Raises:
            ConfigError, FitError: as ``at`` (cached like Programs).
        """
        cfg, arch, batch, seq_len, precision, P, m = args
        outer = None
        if type(arch) is _ArchReads:
            if arch._path:  # pragma: no cover - not the whole arch: do not share
                return at(mapping, *args)
            outer, arch = arch._log, arch._obj
        base = (type(mapping), mapping.spec, cfg, batch, seq_len, precision, P, m)
        for key in list(self._index.get(base, ())):
            entry = self._shared[key]
            if self._reads_of(arch).replay(entry.reads):
                self._shared.move_to_end(key)
                self.shared_hits += 1
                if outer is not None:
                    outer.extend(entry.reads)
                if entry.error is not None:
                    raise entry.error.with_traceback(None)
                return _fresh(entry.program)
        self.shared_misses += 1
        log: list = []
        try:
            program = at(mapping, cfg, _ArchReads(arch, (), log), batch, seq_len, precision, P, m)
        except (ConfigError, FitError) as exc:
            self._store(self._shared, self.max_shared, base, _Entry(_distinct(log), error=exc))
            raise
        finally:
            if outer is not None:
                outer.extend(log)
        if _leaks(program.describe()):  # pragma: no cover - the Program holds the view
            return at(mapping, cfg, arch, batch, seq_len, precision, P, m)
        # derived once on the shared Program, so that every copy finds them (the per-PE
        # maps only if a caller reads them: most candidates of a search are only timed)
        derived(program)
        program_active_cycles(program, arch)
        self._store(self._shared, self.max_shared, base, _Entry(_distinct(log), program))
        return _fresh(program)

    def _store(self, entries: OrderedDict, limit: int, base: tuple, entry: _Entry) -> None:
        """Keep ``entry`` under ``base`` (indexed in :attr:`_index`); drop the least recently
        used entries of ``entries`` beyond ``limit``."""
        self._serial += 1
        key = (base, self._serial)
        entries[key] = entry
        self._index.setdefault(base, []).append(key)
        while len(entries) > limit:
            old, _ = entries.popitem(last=False)
            keys = self._index[old[0]]
            keys.remove(old)
            if not keys:
                del self._index[old[0]]

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._entries.clear()
        self._shared.clear()
        self._stateful.clear()
        self._index.clear()
        self._memo = None
        self.hits = self.misses = self.uncacheable = 0
        self.shared_hits = self.shared_misses = 0


_PRESETS: dict[str, ArchConfig] = {}

#: presets with overrides applied, by (preset, overrides): points of a sweep repeat them
#: (every value of the axes the overrides do not name), and each costs a validation; a grid
#: over two arch fields of 10 and 50 values repeats its 500 pairs once per outer point
_OVERRIDDEN: OrderedDict = OrderedDict()
MAX_OVERRIDDEN = 4096


def load_arch_cached(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ArchConfig:
    """:func:`wse_sim.arch.load_arch`, with shipped presets parsed once per process, and the
    last :data:`MAX_OVERRIDDEN` (preset, overrides) pairs kept (an arch TOML file given by
    path is read every time: it may change between points). Arch configs are frozen, so
    points share them.

    Raises:
        ConfigError: as :func:`wse_sim.arch.load_arch`.
    """
    name = spec.lower() if isinstance(spec, str) else spec
    if not (isinstance(name, str) and name in _preset_set()):
        return load_arch(spec, overrides)
    base = _PRESETS.get(name)
    if base is None:
        base = _PRESETS[name] = load_arch(name)
    if not overrides:
        return base
    key = (name, tuple(overrides))
    arch = _OVERRIDDEN.get(key)
    if arch is None:
        arch = _OVERRIDDEN[key] = base.with_overrides(overrides)
        while len(_OVERRIDDEN) > MAX_OVERRIDDEN:
            _OVERRIDDEN.popitem(last=False)
    else:
        _OVERRIDDEN.move_to_end(key)
    return arch


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
