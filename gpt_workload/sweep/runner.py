"""Running a sweep: the points not yet stored, in this process or on a Dask cluster, each
finished row stored as it arrives (:mod:`gpt_workload.sweep.store`), then the table."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_workload.checks import check_workers, default_workers, max_workers
from gpt_workload.sweep.point import error_row, fewer_collections, one_line, run_point, run_points
from gpt_workload.sweep.spec import PointConfig, SweepSpec, check_values, load_spec
from gpt_workload.sweep.store import (
    RowStore,
    build_table,
    journal_path,
    remove_stale_tmp,
    write_table,
)
from wse_sim.errors import ConfigError, WseSimError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class ClusterError(WseSimError):
    """The Dask cluster failed under a sweep (not a point): the sweep stops, keeping what
    finished; a rerun continues."""


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
    with fewer_collections():
        for key, cfg in todo:
            yield key, run_point(cfg)


def chunk_size(n_points: int, n_threads: int) -> int:
    """Points per Dask task: about 8 tasks per worker thread, at most 16 points per task.

    Shortcut for speed: a task costs the driver a few milliseconds of scheduler and client
    work, comparable to one ``analytic`` point; chunks amortise it while keeping every
    thread busy and the progress bar moving.
    """
    return max(1, min(16, n_points // max(8 * n_threads, 1)))


#: the most points a task takes to keep a run of points together (:func:`chunks`), and
#: the most times the task size it may grow to for that
MAX_CHUNK = 64
MAX_GROWTH = 4


def chunks(todo: list[tuple[str, PointConfig]], size: int) -> list[list[tuple[str, PointConfig]]]:
    """``todo`` cut into tasks of about ``size`` points that keep *runs* together.

    A run is a stretch of consecutive points that differ only in the fields varying between
    its first two points: the innermost grid axis (or ``[[zip]]`` group). The points of a
    run share everything the outer axes set, so when the innermost axis is a field the
    lowering does not read (the I/O rate, as the README advises), they share one lowering;
    a task that ends mid-run would have another worker lower it again. A task closes at the
    first run boundary once it holds ``size`` points, or inside a long run at
    ``min(MAX_CHUNK, MAX_GROWTH x size)`` points (``size`` if larger), so that a sweep of
    costly points still spreads over the workers.
    """
    cap = max(size, min(MAX_CHUNK, MAX_GROWTH * size))
    out: list[list[tuple[str, PointConfig]]] = []
    cur: list[tuple[str, PointConfig]] = []
    fast: set | None = None  # the fields varying inside the current run
    prev: PointConfig | None = None
    for item in todo:
        point = item[1]
        boundary = prev is None
        if prev is not None:
            diff = {k for k in point.keys() | prev.keys() if point.get(k) != prev.get(k)}
            if fast is None:
                fast = diff
            elif not diff <= fast:
                boundary, fast = True, None
        if cur and ((boundary and len(cur) >= size) or len(cur) >= cap):
            out.append(cur)
            cur = []
        cur.append(item)
        prev = point
    if cur:
        out.append(cur)
    return out


def _dask(todo: list[tuple[str, PointConfig]], client, window: int) -> Iterator[tuple[str, dict]]:
    """Run points on a Dask client in tasks (:func:`chunks` of about :func:`chunk_size`
    points), at most ``window`` tasks in flight; yield rows as their task finishes. A point
    that kills its worker every time it is tried (``KilledWorker``: a crash or out of
    memory) becomes an error row, with the rest of its chunk.

    Raises:
        ClusterError: the cluster failed (lost scheduler, cancelled task): nothing is
            recorded for the points still running, so a rerun runs them.
    """
    import asyncio

    from distributed import KilledWorker, as_completed, wait

    nthreads = sum(client.nthreads().values()) or 1
    tasks = iter(chunks(todo, chunk_size(len(todo), nthreads)))
    ac = as_completed()
    members: dict[str, list[str]] = {}
    inflight: dict[str, Any] = {}

    def submit_next() -> bool:
        chunk = next(tasks, None)
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
            rows = [error_row("the point killed its Dask worker: " + one_line(exc))] * len(keys)
        except Exception as exc:  # noqa: BLE001 - the cluster, not the point, failed
            raise ClusterError(
                f"the Dask cluster failed ({one_line(exc)}); finished points are kept, "
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
            f"--scheduler {address!r} cannot be reached: {one_line(exc)} ({hint})"
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
    check_workers("workers", workers)
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
                    f"--scheduler {scheduler!r} cannot be reached: {one_line(exc)} "
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
            with dask.config.set({"distributed.nanny.pre-spawn-environ": env}), _sigint_ignored():
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


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while a local cluster starts its worker processes, which inherit it.

    A terminal's Ctrl-C reaches every process of the foreground group; this process stops the
    sweep (finished rows are already stored) and closes the cluster, so a worker must not
    print its own ``KeyboardInterrupt`` traceback. Python keeps a SIGINT that is ignored at
    start-up ignored. Main thread only (elsewhere a no-op: signals cannot be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


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
    """Run every point of ``spec`` not already in the output's row journal, then write the
    table.

    Args:
        spec: a :class:`SweepSpec` or the path of a spec TOML.
        output: the table's path (default: the spec's); finished rows are journalled in
            ``<output>.rows`` (:class:`gpt_workload.sweep.store.RowStore`) as they arrive.
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
    check_workers("workers", workers)
    if not spec.points:
        raise ConfigError(f"sweep {spec.name!r} has no points")
    check_values(spec)
    with contextlib.ExitStack() as stack:
        if scheduler is not None and client is None:
            # an existing cluster is checked (answers, has workers) before anything is written
            client = stack.enter_context(open_client(workers, scheduler))
        path, fmt = resolve_output(spec, output, fmt)
        remove_stale_tmp(path.parent, path.name)
        try:
            store = stack.enter_context(RowStore(journal_path(path)))
        except OSError as exc:
            raise ConfigError(
                f"--output {str(path)!r}: its row journal cannot be written next to it "
                f"({exc.strerror})"
            ) from None

        rows = {k: store.rows[k] for k in spec.keys if k in store.rows}
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
