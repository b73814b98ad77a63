"""Where a sweep's rows go: a journal of finished points, appended row by row, that a rerun
reads to skip them (:class:`RowStore`), and the final table, Parquet or CSV through
pyarrow, written atomically (:func:`write_table`)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from gpt_workload.sweep.point import METRICS, one_line
from gpt_workload.sweep.spec import PointConfig, SweepSpec
from wse_sim.errors import ConfigError

log = logging.getLogger(__name__)


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


def remove_stale_tmp(directory: Path, name: str = "*") -> None:
    """Delete temporary files of :func:`atomic_write_bytes` (``.NAME.PID.tmp``) for ``name``
    in ``directory`` whose writer is dead (killed before its rename)."""
    for p in directory.glob(f".{name}.*.tmp"):
        try:
            pid = int(p.name.rsplit(".", 2)[-2])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            p.unlink(missing_ok=True)


def journal_path(output: Path) -> Path:
    """The row journal of the table ``output``: ``<output>.rows`` beside it."""
    return output.with_name(output.name + ".rows")


#: a row journal is fsynced after this many rows, or this many seconds, whichever comes first
#: (and when closed)
SYNC_EVERY_ROWS = 64
SYNC_EVERY_S = 1.0


class RowStore:
    """The finished rows of a sweep, appended one line each to a journal file, kept open
    for the whole run.

    Each row is one line of JSON, ``{"config_hash": KEY, "config": {...}, "row": {...}}``
    (floats as ``repr`` writes them, so every value reads back exactly; the configuration
    is provenance), written with one ``write`` as soon as the point finishes. A killed
    process (``kill -9`` included) therefore loses at most the row it was writing: what
    was written is in the operating system's page cache. The journal is fsynced every
    :data:`SYNC_EVERY_ROWS` rows or :data:`SYNC_EVERY_S` seconds and when closed, so an
    operating-system crash or power loss loses at most that batch.

    Opening it reads the rows already there (:attr:`rows`): a last line without its
    newline (a write cut short by a kill) is cut off; a line that is not a row (damaged
    outside this program's control) is dropped, the journal rewritten without it, and its
    point runs again. A key written twice (a failed point run again) keeps its last row. The
    journal is locked while open (``flock``), so two sweeps never append to one journal.

    Args:
        path: the journal (created if missing).

    Raises:
        ConfigError: another process holds the journal's lock.
        OSError: the journal cannot be created, read or written.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = self._open()
        try:
            self.rows = self._load()
        except BaseException:
            self._fh.close()
            raise
        self._unsynced = 0
        self._synced_at = time.monotonic()

    def _open(self):
        """The journal opened for appending (unbuffered: one ``write`` per row), locked."""
        import fcntl

        fh = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - closed by close()
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ConfigError(
                f"sweep row journal {str(self.path)!r} is in use by another running sweep "
                "of the same output; wait for it, or give another --output"
            ) from None
        return fh

    def _load(self) -> dict[str, dict[str, Any]]:
        self._fh.seek(0)
        data = self._fh.read()
        end = data.rfind(b"\n") + 1  # bytes after the last newline: a write cut short
        rows: dict[str, dict[str, Any]] = {}
        bad = 0
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                key, row = rec["config_hash"], rec["row"]
                if not isinstance(key, str) or not isinstance(row, dict):
                    raise TypeError(type(row).__name__)
            except (ValueError, KeyError, TypeError) as exc:
                bad += 1
                log.warning("a line of %s is not a row (%s); its point will run again",
                            self.path, one_line(exc))  # fmt: skip
                continue
            rows[key] = {m: row.get(m) for m in METRICS}
        if bad:  # keep only the rows (atomically), so the damage is reported once
            good = b"".join(self._line(k, None, r) for k, r in rows.items())
            atomic_write_bytes(self.path, good)
            self._fh.close()
            self._fh = self._open()
        elif end < len(data):
            self._fh.truncate(end)
        return rows

    @staticmethod
    def _line(key: str, config: PointConfig | None, row: dict[str, Any]) -> bytes:
        rec = {"config_hash": key, "config": config, "row": row}
        return (json.dumps(rec, separators=(",", ":")) + "\n").encode()

    def write(self, key: str, config: PointConfig, row: dict[str, Any]) -> None:
        """Append the row of point ``key`` (with its configuration); fsync when a batch is
        due (class docstring)."""
        _write_all(self._fh, self._line(key, config, row))
        self.rows[key] = row
        self._unsynced += 1
        now = time.monotonic()
        if self._unsynced >= SYNC_EVERY_ROWS or now - self._synced_at >= SYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        """fsync the journal."""
        if self._unsynced:
            os.fsync(self._fh.fileno())
            self._unsynced = 0
        self._synced_at = time.monotonic()

    def close(self) -> None:
        """fsync, unlock and close the journal."""
        if not self._fh.closed:
            try:
                self.sync()
            finally:
                self._fh.close()

    def __enter__(self) -> RowStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
        raise ConfigError(f"sweep table {str(p)!r} is not readable: {one_line(exc)}") from None
