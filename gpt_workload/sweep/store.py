"""Where a sweep's rows go: resumable storage of finished points and the final table
(Parquet or CSV, through pyarrow)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
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


class PartStore:
    """One Parquet part file per finished point, named ``<hash>.parquet``, in ``directory``.

    Args:
        directory: created if missing; stale temporary files of dead writers are removed.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.dir)

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
        raise ConfigError(f"sweep table {str(p)!r} is not readable: {one_line(exc)}") from None
