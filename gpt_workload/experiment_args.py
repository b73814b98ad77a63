"""Checking the options of the experiment scripts (``experiments/*.py``) before they run.

The project's rule for every command line: a bad input gives one line on stderr,
``PROG: error: ...``, naming the option, the value given and what is allowed; the exit status
is 2, nothing is simulated and nothing is written; never a traceback. A script therefore

1. parses its options with :class:`ArgumentParser` (argparse, but its own errors are one
   line too, with no usage block);
2. checks every option up front with the ``parse_*`` / ``check_*`` helpers below, which raise
   :class:`wse_sim.errors.ConfigError` with such a line (they reuse the project's own
   validators: :func:`gpt_workload.models.resolve_model`, :func:`wse_sim.arch.load_arch`,
   :func:`gpt_workload.precision.check_precision`, the arch field ranges);
3. runs inside :func:`run_main`, which turns any :class:`~wse_sim.errors.WseSimError` or
   ``OSError`` into that line and returns 2.

Example::

    PROG = Path(__file__).name

    def main(argv=None) -> int:
        def body() -> int:
            args = parse_args(argv)          # an ArgumentParser(prog=PROG, ...)
            validate(args)                   # parse_floats / check_model / check_out_dir ...
            ...                              # simulate, write, print
            return 0

        return run_main(PROG, body)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpt_workload.checks import check_int, check_workers, max_workers  # noqa: F401 (re-exported)
from wse_sim.errors import ConfigError, WseSimError
from wse_sim.precision import PRECISIONS
from wse_sim.timing import BACKENDS, WAFER_BACKENDS

if TYPE_CHECKING:  # pragma: no cover
    from gpt_workload.config import GPTConfig
    from wse_sim.arch import ArchConfig

#: fidelities that time a whole wafer; ``packet`` simulates every router and is refused above
#: :func:`packet_max_pes` PEs
WAFER_FIDELITIES: tuple[str, ...] = WAFER_BACKENDS


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (unknown option, ``--batch abc``, a missing
    value) raise :class:`ConfigError` with argparse's one-line message instead of printing
    the usage block and exiting; :func:`run_main` prints it. ``--help`` still exits 0."""

    def error(self, message: str):
        raise ConfigError(" ".join(message.split()))


def _fail(opt: str, given: object, allowed: str) -> ConfigError:
    return ConfigError(f"{opt} {given!r} is not allowed: expected {allowed}")


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    def num(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {num(lo)}")
    if hi is not None:
        parts.append(f"<= {num(hi)}")
    return " and ".join(parts)


def _items(opt: str, text: str, what: str, example: str | None) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; refuses an empty list or an empty item."""
    items = [x.strip() for x in str(text).split(",")]
    if not any(items) or not all(items):
        eg = f", e.g. {example}" if example else ""
        raise _fail(opt, text, f"comma-separated {what} with no empty item{eg}")
    return items


def parse_names(opt: str, text: str, what: str = "names") -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (spaces around items stripped).

    Raises:
        ConfigError: no name at all or an empty item (``"a,,b"``), naming ``opt`` and the
            value.
    """
    return _items(opt, text, what, None)


def parse_ints(
    opt: str,
    text: str,
    lo: int | None = None,
    hi: int | None = None,
    *,
    example: str | None = None,
) -> list[int]:
    """``"8,120"`` -> ``[8, 120]``: comma-separated integers in ``[lo, hi]`` (either bound may
    be None: no bound).

    Raises:
        ConfigError: empty list or item, an item that is not an integer (``abc``, ``1.5``),
            or one out of range; the message names ``opt``, the value and the allowed range.
    """
    rng = _range_text(lo, hi)
    allowed = "comma-separated integers" + (f" {rng}" if rng else "")
    eg = f", e.g. {example}" if example else ""
    values = []
    for item in _items(opt, text, "integers" + (f" {rng}" if rng else ""), example):
        try:
            v = int(item)
        except ValueError:
            raise _fail(opt, text, f"{allowed}{eg} ({item!r} is not an integer)") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _fail(opt, text, f"{allowed}{eg} ({item} is out of range)")
        values.append(v)
    return values


def parse_floats(
    opt: str,
    text: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    example: str | None = None,
) -> list[float]:
    """``"0.25,1,8"`` -> ``[0.25, 1.0, 8.0]``: comma-separated finite numbers in
    ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``; either bound may be None).

    Raises:
        ConfigError: empty list or item, an item that is not a number, NaN or infinite, or
            out of range; the message names ``opt``, the value and what is allowed.
    """
    rng = _range_text(lo, hi, lo_open)
    allowed = "comma-separated finite numbers" + (f" {rng}" if rng else "")
    eg = f", e.g. {example}" if example else ""
    values = []
    for item in _items(opt, text, "numbers" + (f" {rng}" if rng else ""), example):
        try:
            v = float(item)
        except ValueError:
            raise _fail(opt, text, f"{allowed}{eg} ({item!r} is not a number)") from None
        if not math.isfinite(v):
            raise _fail(opt, text, f"{allowed}{eg} ({item!r} is not finite)")
        low = lo is not None and (v <= lo if lo_open else v < lo)
        if low or (hi is not None and v > hi):
            raise _fail(opt, text, f"{allowed}{eg} ({item} is out of range)")
        values.append(v)
    return values


def check_float(
    opt: str, value: float, lo: float | None = None, hi: float | None = None, *, lo_open=False
) -> float:
    """``value`` (a float, as argparse's ``type=float`` gives it, which takes ``nan`` and
    ``inf``) finite and in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``; either bound may be
    None).

    Raises:
        ConfigError: NaN, infinite or out of range, naming ``opt``, the value and the range.
    """
    rng = _range_text(lo, hi, lo_open)
    allowed = "a finite number" + (f" {rng}" if rng else "")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(opt, value, allowed)
    low = lo is not None and (value <= lo if lo_open else value < lo)
    if low or (hi is not None and value > hi):
        raise _fail(opt, value, allowed)
    return float(value)


def check_system_count(opt: str, given: str, systems: Iterable[int], arch: ArchConfig) -> None:
    """Data-parallel system counts at most what SwarmX connects for ``arch``
    (:func:`gpt_workload.training.train.max_systems`: 192 CS-2, 2048 CS-3).

    Raises:
        ConfigError: a count above it, naming ``opt``, the value and the limit.
    """
    from gpt_workload.training.train import max_systems

    top = max_systems(arch)
    if max(systems) > top:
        raise _fail(
            opt,
            given,
            f"system counts in 1..{top} (SwarmX connects at most {top} systems of "
            f"{arch.name}'s class)",
        )


def check_model(opt: str, name: str) -> GPTConfig:
    """A model preset name or config.json path, resolved.

    Raises:
        ConfigError: ``OPT: unknown model 'x': expected one of <presets>, ...`` (the message
            of :func:`gpt_workload.models.resolve_model`, prefixed with ``opt``); a family
            not lowered yet.
    """
    from gpt_workload.models import require_lowered, resolve_model

    try:
        cfg = resolve_model(name)
        require_lowered(cfg, "the experiments", "experiments")
        return cfg
    except ConfigError as exc:
        raise ConfigError(f"{opt}: {exc}") from None


def check_arch(opt: str, name: str) -> ArchConfig:
    """An arch preset name or TOML path, loaded.

    Raises:
        ConfigError: ``OPT: unknown arch 'x': expected one of grid32, ..., wse3 or a .toml
            file`` (the message of :func:`wse_sim.arch.load_arch`, prefixed with ``opt``).
    """
    from wse_sim.arch import load_arch

    try:
        return load_arch(name)
    except ConfigError as exc:
        raise ConfigError(f"{opt}: {exc}") from None


def check_arch_field(opt: str, given: object, arch: ArchConfig, field: str, value) -> ArchConfig:
    """``arch`` with ``field = value`` (``"pe.sram_bytes"``, ...), checked against the field's
    allowed range (:meth:`wse_sim.arch.ArchConfig.with_overrides`).

    Args:
        opt: the option the value came from (``--sram-kib``).
        given: the value as the user typed it (``"2"``), for the message.

    Raises:
        ConfigError: ``OPT 'given' is not allowed on ARCH: arch field ... allowed ...``.
    """
    try:
        return arch.with_overrides([f"{field}={value!r}"])
    except ConfigError as exc:
        raise ConfigError(f"{opt} {given!r} is not allowed on {arch.name}: {exc}") from None


def check_precision(opt: str, precision: str) -> str:
    """One of fp32, fp16, bf16 (:func:`gpt_workload.precision.check_precision`).

    Raises:
        ConfigError: ``OPT: precision='fp8' is not supported; allowed: fp32, fp16, bf16``.
    """
    from gpt_workload.precision import check_precision as _check

    try:
        return _check(precision)
    except ConfigError as exc:
        raise ConfigError(f"{opt}: {exc}") from None


#: side-by-side peer simulators an experiment can run next to ours (``--peer``)
PEERS = ("booksim2",)


def check_peer(opt: str, peer: str | None) -> str | None:
    """None (no peer) or one of :data:`PEERS`.

    Raises:
        ConfigError: ``OPT 'x' is not allowed: expected one of booksim2``.
    """
    if peer is None or peer in PEERS:
        return peer
    raise _fail(opt, peer, f"one of {', '.join(PEERS)}")


def packet_max_pes() -> int:
    """The largest grid (PEs) the ``packet`` timing backend accepts (its ``max_pes``)."""
    import inspect

    from wse_sim.timing.packet import run_packet

    return int(inspect.signature(run_packet).parameters["max_pes"].default)


def fidelities_for(archs: Iterable[ArchConfig]) -> tuple[str, ...]:
    """The timing fidelities that can time every arch of ``archs``: ``analytic`` and
    ``event`` always; ``packet`` too when every grid has at most :func:`packet_max_pes` PEs."""
    small = all(a.n_pe <= packet_max_pes() for a in archs)
    return tuple(BACKENDS) if small else WAFER_FIDELITIES


def check_fidelity(opt: str, fidelity: str, allowed: Iterable[str] | None = None) -> str:
    """One of ``allowed`` (default: every timing backend, ``analytic``, ``event``,
    ``packet``).

    Raises:
        ConfigError: not allowed; the message lists what is, and says why ``packet`` is not
            when it is a known fidelity left out of ``allowed`` (it is refused above
            :func:`packet_max_pes` PEs).
    """
    allowed = tuple(BACKENDS) if allowed is None else tuple(allowed)
    if fidelity in allowed:
        return fidelity
    why = ""
    if fidelity == "packet" and fidelity in BACKENDS:
        why = (
            f" (packet simulates every router and is refused for grids above "
            f"{packet_max_pes()} PEs, such as a whole wafer)"
        )
    raise _fail(opt, fidelity, f"one of {', '.join(allowed)}{why}")


def check_seq_len(opt: str, seq_len: int, cfgs: Iterable[GPTConfig], lo: int = 1) -> int:
    """Tokens per sequence, ``lo`` .. the smallest ``n_positions`` of ``cfgs``.

    Raises:
        ConfigError: out of range, naming the model that bounds it.
    """
    cfgs = list(cfgs)
    top = min(cfgs, key=lambda c: c.n_positions)
    return check_int(opt, seq_len, lo, top.n_positions, f"n_positions of {top.name}")


def check_fits(
    opt: str,
    given: str,
    cfg: GPTConfig,
    arch: ArchConfig,
    seq_len: int,
    precision: str,
    mapping: str = "weight_streaming",
) -> int:
    """Check that one sequence of ``cfg`` fits ``arch`` under ``mapping``; returns the largest
    batch that runs as one micro-batch (cheap: the layout planner, no simulation).

    Args:
        opt, given: the option to blame and its value as typed (``--archs``, ``"grid8"``).

    Raises:
        ConfigError: it does not fit; the message gives the planner's reason (bytes needed
            and usable per PE) and the preset archs that do hold a sequence, if any.
    """
    from gpt_workload.mappings import parse_mapping
    from wse_sim.arch import load_arch, preset_names
    from wse_sim.errors import FitError

    m = parse_mapping(mapping)
    try:
        return m.max_batch_single_micro(cfg, arch, seq_len, precision)
    except FitError as exc:
        fits = []
        for name in preset_names():
            try:
                m.max_batch_single_micro(cfg, load_arch(name), seq_len, precision)
                fits.append(name)
            except FitError:
                pass
        where = (
            f"one {seq_len}-token sequence of {cfg.name} fits the presets {', '.join(fits)}"
            if fits
            else f"no preset holds one {seq_len}-token sequence of {cfg.name}"
        )
        raise ConfigError(f"{opt} {given!r} is not allowed: {exc} ({where})") from None


def check_host_memory(opt: str, given: object, need_bytes: float, what: str) -> None:
    """Refuse a run whose estimated host memory exceeds 80 % of what the host has available
    now (``MemAvailable``, as :func:`gpt_workload.simulate.simulate` checks its numerics).

    Args:
        opt, given: the option to blame and its value as typed (``--k``, ``"100000"``).
        need_bytes: the estimate (e.g. :mod:`wse_sim.fabric.footprint`).
        what: what needs it, for the message (``"a 100000x100000 mesh ..."``).

    Raises:
        ConfigError: ``OPT 'given' is not allowed: WHAT needs about X GiB of host memory;
            Y GiB available``.
    """
    from gpt_workload.simulate import _available_memory_bytes

    avail = _available_memory_bytes()
    if need_bytes > 0.8 * avail:
        raise ConfigError(
            f"{opt} {given!r} is not allowed: {what} needs about {need_bytes / 2**30:,.1f} GiB "
            f"of host memory; {avail / 2**30:,.1f} GiB available (at most 80 % is used)"
        )


def add_run_options(
    p: argparse.ArgumentParser, *, seq_len: int, out: str, models: bool = False
) -> None:
    """Add the options every sweep-running experiment shares: ``--seq-len``,
    ``--precision``, ``--fidelity``, ``--out``, ``--workers`` and ``--scheduler``.

    Args:
        seq_len: default tokens per sequence.
        out: default output directory.
        models: the script takes several models (the help says "the models'").
    """
    whose = "models'" if models else "model's"
    p.add_argument(
        "--seq-len",
        type=int,
        default=seq_len,
        help=f"tokens per sequence, 1..the {whose} n_positions (default: %(default)s)",
    )
    p.add_argument(
        "--precision",
        default="fp16",
        choices=PRECISIONS,
        help="fp16, bf16 or fp32 (default: %(default)s)",
    )
    p.add_argument(
        "--fidelity",
        default="analytic",
        help="analytic or event (packet only on grids of <= 16384 PEs) (default: %(default)s)",
    )
    p.add_argument(
        "--out", default=out, help="output directory, created if missing (default: %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local Dask workers, 0 (in this process) to 4 per core (default: one per core)",
    )
    p.add_argument("--scheduler", help="existing Dask scheduler, tcp://HOST:PORT")


def check_scheduler(opt: str, address: str | None) -> str | None:
    """None or a Dask scheduler address (``tcp://HOST:PORT``); only its form is checked here,
    reachability when the client opens (:func:`gpt_workload.sweep.open_client`), still
    before anything is written.

    Raises:
        ConfigError: empty or containing whitespace.
    """
    if address is None:
        return None
    if not address.strip() or any(ch.isspace() for ch in address):
        raise _fail(opt, address, "the address of a running Dask scheduler, tcp://HOST:PORT")
    return address


@contextlib.contextmanager
def connect_scheduler(address: str | None) -> Iterator[object]:
    """A ``distributed.Client`` of the Dask scheduler at ``address``, or None when ``address``
    is None; closed on exit. Open it before anything is written, so that an unreachable
    scheduler leaves no output behind; pass it to :func:`gpt_workload.sweep.run_sweep` as
    ``client`` (with None, ``run_sweep`` starts its local cluster only if a point is left).

    Raises:
        ConfigError: the scheduler cannot be reached (:func:`gpt_workload.sweep.open_client`).
    """
    if address is None:
        yield None
        return
    from gpt_workload.sweep import open_client

    with open_client(0, address) as client:
        yield client


def _probe_writable(directory: Path, mkdir: bool) -> None:
    """Create (and at once remove) a temporary file or directory in ``directory``.

    Raises:
        OSError: it cannot be created.
    """
    if mkdir:
        os.rmdir(tempfile.mkdtemp(prefix=".wse-sim-probe-", dir=directory))
    else:
        fd, name = tempfile.mkstemp(prefix=".wse-sim-probe-", dir=directory)
        os.close(fd)
        os.unlink(name)


def check_out_dir(opt: str, path: str | os.PathLike) -> Path:
    """An output directory that exists and is writable, or that can be created; nothing is
    left behind (the check creates a temporary entry in the directory, or in its nearest
    existing parent, and removes it at once).

    Raises:
        ConfigError: empty; exists and is not a directory; a parent is not a directory; the
            directory (or the parent it would be created in) does not take new entries
            (``/proc/x``, read-only, no permission).
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise _fail(opt, text, "a directory path (created if missing)")
    p = Path(text)
    try:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(
                    f"{opt} {text!r} is not allowed: it exists and is not a directory; "
                    "expected a directory (created if missing)"
                )
            try:
                _probe_writable(p, mkdir=False)
            except OSError as exc:
                raise ConfigError(
                    f"{opt} {text!r} is not allowed: the directory is not writable "
                    f"({exc.strerror}); expected a writable directory"
                ) from None
            return p
        if os.path.lexists(p):
            raise ConfigError(
                f"{opt} {text!r} is not allowed: it is a broken symbolic link; expected a "
                "directory (created if missing)"
            )
        parent = p.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(
                f"{opt} {text!r} is not allowed: {str(parent)!r} is not a directory, so it "
                "cannot be created; expected a directory path"
            )
        try:
            _probe_writable(parent, mkdir=True)
        except OSError as exc:
            raise ConfigError(
                f"{opt} {text!r} is not allowed: it cannot be created in {str(parent)!r} "
                f"({exc.strerror}); expected a directory that exists or can be created"
            ) from None
    except OSError as exc:  # stat itself failed (permission on a parent, name too long)
        raise ConfigError(
            f"{opt} {text!r} is not allowed: {exc.strerror or exc}; expected a directory path"
        ) from None
    return p


def check_out_file(opt: str, path: str | os.PathLike) -> Path:
    """An output file path whose directory exists and takes new files (probed with a
    temporary file, removed at once); the directory is not created. Shared by every
    file-output option (``--json``, ``--save-logits``, ``--trace``, ``plot -o``).

    Raises:
        ConfigError: empty; a directory; its directory is missing or not a directory; the
            directory does not take new files (``/proc``, read-only, no permission).
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise _fail(opt, text, "a file path")
    p = Path(text)
    try:
        if p.is_dir():
            raise ConfigError(f"{opt} {text!r} is not allowed: it is a directory; give a file path")
        parent = p.absolute().parent
        if not parent.exists():
            raise ConfigError(
                f"{opt} {text!r} is not allowed: directory {str(parent)!r} does not exist; "
                "create it first or give a path in an existing directory"
            )
        if not parent.is_dir():
            raise ConfigError(
                f"{opt} {text!r} is not allowed: {str(parent)!r} is not a directory; "
                "give a path in an existing directory"
            )
        try:
            _probe_writable(parent, mkdir=False)
        except OSError as exc:
            raise ConfigError(
                f"{opt} {text!r} is not allowed: cannot write in {str(parent)!r} "
                f"({exc.strerror or exc}); give a path in a writable directory"
            ) from None
    except OSError as exc:  # stat itself failed (permission on a parent, name too long)
        raise ConfigError(
            f"{opt} {text!r} is not allowed: {exc.strerror or exc}; expected a file path"
        ) from None
    return p


def error_line(prog: str, exc: BaseException) -> str:
    """``PROG: error: MESSAGE`` on one line (whitespace in the message collapsed; an
    ``OSError`` as its reason and file name)."""
    if isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror + (f": {os.fspath(exc.filename)!r}" if exc.filename else "")
    else:
        msg = str(exc) or type(exc).__name__
    return f"{prog}: error: {' '.join(msg.split())}"


def run_main(prog: str, fn: Callable[[], int | None]) -> int:
    """Run a script's body and return its exit status: ``fn()``'s (0 if it returns None);
    2 after printing :func:`error_line` on stderr for a
    :class:`~wse_sim.errors.WseSimError` (a bad option, a model that does not fit ...) or an
    ``OSError``; 2 with a hint for ``MemoryError``; 130 on Ctrl-C. ``SystemExit`` (``--help``)
    passes through."""
    try:
        rc = fn()
    except (WseSimError, OSError) as exc:
        print(error_line(prog, exc), file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{prog}: error: out of host memory; run fewer points", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0 if rc is None else rc


def write_rows_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` (dicts sharing the first row's keys, in that order) as a CSV with a
    header at ``path`` (its directory created) and return the path.

    Raises:
        ValueError: ``rows`` is empty (an experiment always has at least one row).
    """
    if not rows:
        raise ValueError("no rows to write")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out
