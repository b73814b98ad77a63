"""Sweeps: spec expansion and hashing, the resumable row journal, SIGKILL mid-write, a failing
point, and the same table from a local Dask cluster, an external one (separate ``dask
scheduler`` / ``dask worker`` processes on loopback) and a plain in-process run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpt_workload.sweep import (
    METRICS,
    RowStore,
    SweepSpec,
    load_spec,
    point_key,
    read_table,
    run_sweep,
)
from gpt_workload.sweep.runner import MAX_CHUNK, chunks
from gpt_workload.sweep.store import journal_path
from wse_sim.errors import ConfigError

# 2 x 4 x 2 = 16 points; pe.sram_bytes=1000 is below the runtime's reservation -> error rows
SPEC = """
[sweep]
name = "t"

[base]
model = "cerebras-gpt-111m"
arch = "wse2"
fidelity = "analytic"

[grid]
batch = [8, 120]
"pe.sram_bytes" = [24576, 49152, 98304, 1000]

[[zip]]
precision = ["fp16", "fp32"]
seq_len = [2048, 1024]
"""
N_POINTS = 16


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("spec") / "t.toml"
    p.write_text(SPEC)
    return p


@pytest.fixture(scope="module")
def reference(spec_file, tmp_path_factory) -> Path:
    """The uninterrupted table, run in this process without Dask."""
    out = tmp_path_factory.mktemp("ref") / "ref.parquet"
    res = run_sweep(spec_file, output=out, workers=0)
    assert (res.total, res.computed, res.skipped) == (N_POINTS, N_POINTS, 0)
    return out


def wse_sim(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt_workload.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


# ------------------------------------------------------------------ the spec
def test_expansion_order_columns_and_swept_fields(spec_file):
    spec = load_spec(spec_file)
    assert len(spec.points) == N_POINTS and len(set(spec.keys)) == N_POINTS
    # grid fields in spec order (first slowest), then the zip group
    first = [(p["batch"], p["pe.sram_bytes"], p["precision"], p["seq_len"]) for p in spec.points]
    assert first[:3] == [
        (8, 24576, "fp16", 2048),
        (8, 24576, "fp32", 1024),
        (8, 49152, "fp16", 2048),
    ]
    assert first[-1] == (120, 1000, "fp32", 1024)
    assert spec.columns[:7] == (
        "model",
        "arch",
        "mapping",
        "precision",
        "fidelity",
        "batch",
        "seq_len",
    )
    assert "pe.sram_bytes" in spec.columns
    assert set(spec.swept) == {"batch", "pe.sram_bytes", "precision", "seq_len"}
    assert spec.points[0]["mapping"] == "weight_streaming"  # defaults filled in


def test_key_covers_full_configuration():
    a = SweepSpec.from_dict({"base": {"batch": 8}})
    # the same point spelled with explicit defaults and the arch. prefix hashes the same
    b = SweepSpec.from_dict(
        {"base": {"batch": 8, "fidelity": "analytic", "mapping": "weight_streaming"}}
    )
    assert a.keys == b.keys
    c = SweepSpec.from_dict({"base": {"batch": 8, "arch.pe.sram_bytes": 49152}})
    d = SweepSpec.from_dict({"base": {"batch": 8}, "grid": {"pe": {"sram_bytes": [49152.0]}}})
    assert c.keys == d.keys and c.keys != a.keys  # int field: 49152.0 -> 49152
    e = SweepSpec.from_dict({"base": {"batch": 8, "io.ingress_bytes_per_s": 150e9}})
    assert e.points[0]["io.ingress_bytes_per_s"] == 150e9 and e.keys != a.keys
    assert point_key(dict(a.points[0])) == a.keys[0]
    # a duplicate point is dropped
    f = SweepSpec.from_dict({"grid": {"batch": [8, 8, 16]}})
    assert len(f.points) == 2 and f.duplicates == 1


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"grid": {"pe.sram_byte": [1]}}, "pe.sram_byte"),
        ({"grid": {"colour": [1]}}, "'colour' is unknown"),
        ({"base": {"batch": 8}, "grid": {"batch": [1, 2]}}, "both [base] and [grid]"),
        ({"grid": {"batch": 8}}, "non-empty list"),
        ({"zip": [{"batch": [1, 2], "seq_len": [3]}]}, "same length"),
        ({"base": {"batch": 0}}, "batch=0"),
        ({"base": {"pe.sram_bytes": "big"}}, "must be a number"),
        ({"base": {"pe.sram_bytes": 1.5}}, "must be an integer"),
        ({"base": {"model.n_layers": 2}}, "model.n_layer"),
        ({"bogus": {}}, "[bogus] is unknown"),
        ({"name": "sw"}, "top-level key name='sw' belongs under a table: [sweep]"),
        ({"batch": 8}, "top-level key batch=8 belongs under a table: [base]"),
        ({"sweep": {"format": "xlsx"}}, "xlsx"),
    ],
)
def test_bad_spec_names_the_field(data, fragment):
    with pytest.raises(ConfigError) as exc:
        SweepSpec.from_dict(data)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_cli_bad_spec_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[grid]\n"pe.sram_byte" = [1, 2]\n')
    p = wse_sim("sweep", str(bad), "--workers", "0")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("wse-sim: error: sweep field 'pe.sram_byte'")
    assert len(p.stderr.strip().splitlines()) == 1
    p = wse_sim("sweep", str(tmp_path / "missing.toml"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[base]\nmodel = "gpt-5"\n')
    p = wse_sim("sweep", str(unknown), "--workers", "0")
    assert p.returncode == 2 and "unknown model 'gpt-5'" in p.stderr
    good = tmp_path / "good.toml"
    good.write_text("[grid]\nbatch = [1, 2]\n")
    p = wse_sim("sweep", str(good), "-o", str(tmp_path / "g.parquet"), "--scheduler", "bogus://x")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("wse-sim: error: --scheduler 'bogus://x' cannot be reached")


# ------------------------------------------------------------------ running in-process
def test_table_rows_failures_and_resume(reference, spec_file, tmp_path):
    table = read_table(reference)
    assert table.num_rows == N_POINTS
    assert table.column("point").to_pylist() == list(range(N_POINTS))
    spec = load_spec(spec_file)
    assert table.column("config_hash").to_pylist() == list(spec.keys)
    rows = table.to_pylist()
    bad = [r for r in rows if r["pe.sram_bytes"] == 1000]
    good = [r for r in rows if r["pe.sram_bytes"] != 1000]
    assert len(bad) == 4 and all(r["status"] == "error" for r in bad)
    assert all("pe.sram_reserved_bytes" in r["error"] and r["tokens_per_s"] is None for r in bad)
    assert all(r["status"] == "ok" and r["error"] is None for r in good)
    for r in good:  # the row is the report of that configuration
        assert r["batch_used"] == r["batch"] and r["seq_len_used"] == r["seq_len"]
        assert r["simulated_time_s"] >= r["roofline_bound_s"] > 0
        assert 0 < r["mfu"] <= 1 and r["tokens"] == r["batch"] * r["seq_len"]
        assert r["layer_compute_s"] > 0 and r["layer_io_s"] > 0
    # a rerun runs nothing and rewrites the same table; progress starts at the finished rows
    calls = []
    res = run_sweep(spec_file, output=reference, workers=0, progress=lambda d, t: calls.append(d))
    assert (res.skipped, res.computed) == (N_POINTS, 0) and calls == [N_POINTS]
    assert read_table(reference).equals(table)
    # a damaged row of the journal is dropped (the journal rewritten without it) and its
    # point recomputed
    journal = journal_path(reference)
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == N_POINTS and json.loads(lines[3])["config_hash"] == spec.keys[3]
    journal.write_bytes(b"".join(lines[:3] + [b'{"config_hash": "not really a row\n'] + lines[4:]))
    res = run_sweep(spec_file, output=reference, workers=0)
    assert res.computed == 1 and read_table(reference).equals(table)
    assert len(journal.read_bytes().splitlines()) == N_POINTS


def test_csv_on_request_and_extended_grid_reuses_rows(spec_file, reference, tmp_path):
    out = tmp_path / "t.csv"
    calls: list[int] = []
    res = run_sweep(
        spec_file, output=out, fmt="csv", workers=0, progress=lambda d, t: calls.append(d)
    )
    assert calls == list(range(N_POINTS + 1))
    csv = read_table(out)
    ref = read_table(reference)
    assert csv.num_rows == N_POINTS and csv.column_names == ref.column_names
    assert csv.column("tokens_per_s").to_pylist() == ref.column("tokens_per_s").to_pylist()
    # extending the grid computes only the new points
    data = {
        "base": {"model": "cerebras-gpt-111m", "fidelity": "analytic"},
        "grid": {"batch": [8, 120, 30], "pe.sram_bytes": [24576, 49152, 98304, 1000]},
        "zip": [{"precision": ["fp16", "fp32"], "seq_len": [2048, 1024]}],
    }
    bigger = run_sweep(SweepSpec.from_dict(data, "t"), output=out, fmt="csv", workers=0)
    assert (bigger.total, bigger.skipped, bigger.computed) == (24, N_POINTS, 8)
    assert res.failed == 4 and bigger.failed == 6


# ------------------------------------------------------------------ SIGKILL
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import gpt_workload.sweep.store as sw
    from gpt_workload.cli import main

    stage, n = sys.argv[1], int(sys.argv[2])
    seen = [0]
    write_all = sw._write_all

    def dying_write(fh, data):
        row = fh.name.endswith(".rows")
        if (stage == "row") == row:
            seen[0] += 1
            if seen[0] == n:  # half the bytes on disk, then kill -9 in the middle of writing
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        write_all(fh, data)

    sw._write_all = dying_write
    sys.exit(main(sys.argv[3:]))
    """
)


def _journal_rows(journal: Path) -> list[bytes]:
    """The complete lines (rows) of a row journal."""
    data = journal.read_bytes() if journal.exists() else b""
    return data[: data.rfind(b"\n") + 1].splitlines()


@pytest.mark.parametrize("stage", ["row", "table"])
def test_sigkill_in_the_middle_of_writing(stage, spec_file, reference, tmp_path):
    out = tmp_path / "killed.parquet"
    n = random.Random(6).randint(2, N_POINTS - 1) if stage == "row" else 1
    args = ["sweep", str(spec_file), "-o", str(out), "--workers", "0", "--no-progress"]
    p = subprocess.run(
        [sys.executable, "-c", DRIVER, stage, str(n), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == -signal.SIGKILL, p.stderr
    journal = journal_path(out)
    data = journal.read_bytes()
    done = _journal_rows(journal)
    assert len(done) == (n - 1 if stage == "row" else N_POINTS)
    for line in done:  # every complete line is a whole row
        assert json.loads(line)["row"]["status"] in ("ok", "error")
    if stage == "row":  # half a row after the last newline: a write cut short
        assert not data.endswith(b"\n")
    else:  # the table's half-written temporary file, never visible
        assert data.endswith(b"\n") and len(list(out.parent.glob(".*.tmp"))) == 1
    assert not out.exists()
    res = run_sweep(spec_file, output=out, workers=0)
    assert res.skipped == len(done) and res.computed == N_POINTS - len(done)
    assert read_table(out).equals(read_table(reference))
    assert len(journal.read_bytes().splitlines()) == N_POINTS  # the cut-off row is gone
    assert not list(out.parent.glob(".*.tmp"))  # the dead writer's temporary file is gone


def test_one_journal_one_writer(tmp_path):
    """Two sweeps of one output at once would interleave their rows: the second is refused
    while the first holds the journal; rows written read back exactly (NaN included)."""
    path = tmp_path / "t.parquet.rows"
    row = dict.fromkeys(METRICS)
    row.update(status="ok", simulated_time_s=0.1 + 0.2, mfu=float("nan"), batch_used=3)
    with RowStore(path) as store:
        store.write("k1", {"batch": 3}, row)
        with pytest.raises(ConfigError, match="in use by another running sweep"):
            RowStore(path)
    with RowStore(path) as again:
        got = again.rows["k1"]
    assert got["simulated_time_s"] == 0.1 + 0.2 and got["batch_used"] == 3
    assert got["mfu"] != got["mfu"] and got.keys() == row.keys()


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_at_a_random_point_of_a_dask_sweep(spec_file, reference, tmp_path):
    """kill -9 the whole sweep (driver and its local Dask cluster) once a random number of
    points has finished, rerun it, get the uninterrupted table."""
    out = tmp_path / "dask.parquet"
    journal = journal_path(out)
    k = random.Random(61).randint(1, N_POINTS - 2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt_workload.cli", "sweep", str(spec_file), "-o", str(out)]
        + ["--workers", "2", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_journal_rows(journal)) >= k:
                break
            time.sleep(0.002)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    for _ in range(500):  # the cluster's worker processes died with the group
        if not _alive(proc.pid):
            break
        time.sleep(0.01)
    assert not _alive(proc.pid)
    n_done = len(_journal_rows(journal))
    assert k <= n_done < N_POINTS
    p = wse_sim("sweep", str(spec_file), "-o", str(out), "--workers", "2", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert f"{n_done} already done" in p.stdout
    assert read_table(out).equals(read_table(reference))


# ------------------------------------------------------------------ an external cluster
@pytest.fixture()
def external_scheduler(tmp_path):
    """A ``dask scheduler`` and a ``dask worker`` (2 processes) on loopback; yields the
    scheduler's address."""
    sched_file = tmp_path / "scheduler.json"
    common = dict(
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=tmp_path,
    )
    dask = [sys.executable, "-m", "dask"]
    procs = [
        subprocess.Popen(
            dask
            + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(sched_file)],
            **common,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(
            subprocess.Popen(
                dask
                + ["worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"]
                + ["--local-directory", str(tmp_path / "workers")],
                **common,
            )
        )
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_external_scheduler_gives_the_local_table(
    spec_file, reference, tmp_path, external_scheduler
):
    local = tmp_path / "local.parquet"
    p = wse_sim("sweep", str(spec_file), "-o", str(local), "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "dask local cluster" in p.stdout
    remote = tmp_path / "remote.parquet"
    p = wse_sim("sweep", str(spec_file), "-o", str(remote), "--scheduler", external_scheduler)
    assert p.returncode == 0, p.stderr
    assert f"dask {external_scheduler}" in p.stdout
    assert "ETA" in p.stderr  # the progress bar
    assert read_table(remote).equals(read_table(local))
    assert read_table(local).equals(read_table(reference))


def test_metrics_schema_is_stable():
    # every row has the same columns whatever happened to the point
    assert list(METRICS)[:2] == ["status", "error"]
    assert all(
        k.endswith(("_s", "_bytes", "_flops", "_per_s", "_j", "_w"))
        or k
        in {
            "status",
            "error",
            "mfu",
            "batch_used",
            "seq_len_used",
            "tokens",
            "micro_batches",
            "pes_per_segment",
            "tokens_per_segment",
            "active_pes",
            "pe_utilisation_mean",
            "pe_utilisation_min",
            "pe_utilisation_max",
            "io_utilisation",
            "roofline_bound_by",
            "model_flops",
            "weight_bytes_streamed",
        }
        for k in METRICS
    )


# ------------------------------------------------------------------ pinned user-trial findings
@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"sweep": {"name": "../../etc/evil"}}, "sweep.name='../../etc/evil' is not allowed"),
        ({"sweep": {"name": ""}}, "sweep.name='' is not allowed"),
        ({"sweep": {"name": 5}}, "sweep.name=5 is not allowed"),
        ({"sweep": {"output": 5}}, "sweep.output=5 is not allowed"),
        ({"sweep": {"output": "sub/"}}, "sweep.output='sub/' is not allowed"),
        ({"sweep": {"output": "x.parquet", "format": "csv"}}, "disagree"),
    ],
)
def test_bad_sweep_table_fields(data, fragment):
    """A sweep name is a file name in the working directory (a user's
    ``name = "../../etc/evil"`` wrote outside it)."""
    data = {**data, "grid": {"batch": [1]}}
    with pytest.raises(ConfigError) as exc:
        SweepSpec.from_dict(data)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_spec_file_name_becomes_a_plain_name_and_output_implies_format(tmp_path):
    p = tmp_path / "my sweep (v2).toml"
    p.write_text('[sweep]\noutput = "r.csv"\n[grid]\nbatch = [1]\n')
    spec = load_spec(p)
    assert spec.name == "my_sweep__v2_" and spec.fmt == "csv"


def test_output_suffix_and_format(spec_file, tmp_path):
    """``-o x.csv`` writes CSV; a suffix that contradicts ``--format`` is refused before any
    point runs (it used to write CSV into ``x.parquet``); so is a directory."""
    spec = SweepSpec.from_dict({"base": {"fidelity": "analytic"}, "grid": {"batch": [1]}})
    res = run_sweep(spec, output=tmp_path / "x.csv", workers=0)
    assert res.path.read_text().startswith('"point","config_hash"')
    for out, fmt, frag in (
        (tmp_path / "y.parquet", "csv", "ends in .parquet but --format is csv"),
        (tmp_path / "y.csv", "parquet", "ends in .csv but --format is parquet"),
        (tmp_path, None, "is a directory"),
    ):
        with pytest.raises(ConfigError, match=frag):
            run_sweep(spec, output=out, fmt=fmt, workers=0)
    assert not (tmp_path / "y.parquet.rows").exists()


def test_too_many_workers_is_refused():
    """``--workers 1000`` on 2 cores hung while Dask started 1000 processes."""
    from gpt_workload.sweep import max_workers, open_client

    hi = max_workers()
    with pytest.raises(ConfigError, match=rf"workers={hi + 1} is not allowed: .* 0\.\.{hi} "):
        with open_client(max_workers() + 1):
            pass


def _server(reply: bytes | None):
    """A loopback TCP server that accepts one connection and sends ``reply`` (None: says
    nothing); returns (address, socket)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        if reply is not None:
            conn.sendall(reply)
        time.sleep(5)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"tcp://127.0.0.1:{srv.getsockname()[1]}", srv


@pytest.mark.parametrize(
    "reply, fragment",
    [
        (None, "no Dask scheduler answered within 2 s"),  # a server that never speaks: hung
        (b"HTTP/1.0 400 Bad request\r\n\r\n" * 4, "does not speak Dask's protocol"),
    ],
    ids=["silent", "http"],
)
def test_scheduler_that_is_not_dask_fails_fast(reply, fragment):
    """A user's ``--scheduler`` at an HTTP server hung until killed; an address whose peer
    sent junk gave "out of host memory" (Dask read a garbage frame length)."""
    from gpt_workload.sweep.runner import _probe_scheduler

    addr, srv = _server(reply)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=fragment) as exc:
        _probe_scheduler(addr, timeout_s=2)
    assert time.monotonic() - t0 < 30 and "\n" not in str(exc.value)
    srv.close()


def test_non_utf8_spec_is_one_line(tmp_path):
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"\xff\xfe[grid]\n")
    p = wse_sim("sweep", str(bad), "--workers", "0")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "is not UTF-8 text" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_huge_grid_is_refused_before_expansion():
    """Four lists of 100 values (10^8 points) took 3 GB and no answer before."""
    grid = {f: list(range(1, 101)) for f in ("batch", "seq_len", "pe.sram_bytes")}
    grid["fabric.hop_latency_cycles"] = list(range(100))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="has 100,000,000 points: at most 100,000"):
        SweepSpec.from_dict({"grid": grid})
    assert time.monotonic() - t0 < 5


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "output, fragment",
    [("newdir/", "names a directory"), ("/proc/x.parquet", "row journal cannot be written")],
)
def test_output_that_is_not_a_writable_file(tmp_path, output, fragment):
    """``-o newdir/`` wrote a file named ``newdir``; ``/proc/x.parquet`` gave a raw errno
    about ``.parts``, a path the user never typed."""
    spec = SweepSpec.from_dict({"base": {"fidelity": "analytic"}, "grid": {"batch": [1]}})
    out = output if output.startswith("/") else f"{tmp_path}/{output}"
    with pytest.raises(ConfigError, match=fragment):
        run_sweep(spec, output=out, workers=0)


def test_scheduler_without_workers_is_refused(tmp_path, monkeypatch):
    """A scheduler whose only worker had died: the sweep waited forever, silently. And a
    failed scheduler check leaves no part files behind."""
    from distributed import LocalCluster

    import gpt_workload.sweep.runner as sw

    monkeypatch.setattr(sw, "WORKER_WAIT_S", 1.0)
    spec = SweepSpec.from_dict({"base": {"fidelity": "analytic"}, "grid": {"batch": [1]}})
    with LocalCluster(
        n_workers=0, processes=False, dashboard_address=":0", host="127.0.0.1", protocol="tcp"
    ) as cluster:
        with pytest.raises(ConfigError, match="has no workers"):
            run_sweep(spec, output=tmp_path / "a.parquet", scheduler=cluster.scheduler_address)
    real_probe = sw._probe_scheduler
    monkeypatch.setattr(sw, "_probe_scheduler", lambda a: real_probe(a, timeout_s=1))
    addr, srv = _server(None)
    with pytest.raises(ConfigError, match="no Dask scheduler answered"):
        run_sweep(spec, output=tmp_path / "b.parquet", scheduler=addr)
    assert not list(tmp_path.iterdir())
    srv.close()


def test_a_cluster_that_loses_every_worker_stops_the_sweep(monkeypatch):
    """Every worker of an external cluster gone mid-sweep: nothing can finish, and the sweep
    waited forever; now it stops with one ClusterError line after LOST_WORKERS_S (finished
    points are kept by the caller, as for any cluster failure)."""
    import gpt_workload.sweep.runner as sw

    class AsCompleted:  # two futures finish, then nothing ever does
        def __init__(self):
            self.batches = [["f1"], ["f2"]]

        def is_empty(self):
            return False

        def next_batch(self, block=False):
            return self.batches.pop(0) if self.batches else []

    class Client:
        def __init__(self):
            self.workers = {"w1": 1}

        def nthreads(self):
            return self.workers

    client = Client()
    monkeypatch.setattr(sw, "LOST_WORKERS_S", 0.5)
    seen = []
    with pytest.raises(sw.ClusterError, match="has had no worker"):
        for f in sw._watch_workers(AsCompleted(), client, lambda s: time.sleep(0.01)):
            seen.append(f)
            if f == "f2":
                client.workers = {}  # the last worker dies
    assert seen == ["f1", "f2"]


def test_local_cluster_workers_start_with_sigint_ignored():
    """Worker processes of a local cluster inherit SIGINT ignored (a terminal's Ctrl-C then
    stops only the sweep, which closes them, instead of each printing a traceback); the
    handler is restored after, and off the main thread nothing changes."""
    import signal
    import threading

    from gpt_workload.sweep.runner import _sigint_ignored

    before = signal.getsignal(signal.SIGINT)
    with _sigint_ignored():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before
    seen = []

    def other():
        with _sigint_ignored():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [before]


def _grid_todo(outer: int, inner: int) -> list:
    """``outer`` x ``inner`` points as a grid expands them (the inner axis fastest)."""
    spec = SweepSpec.from_dict(
        {"grid": {"batch": list(range(1, outer + 1)),
                  "io.ingress_bytes_per_s": [1e11 + i for i in range(inner)]}},
        name="chunks",
    )  # fmt: skip
    return list(zip(spec.keys, spec.points, strict=True))


@pytest.mark.parametrize(
    "outer, inner, size, expect",
    [
        (6, 50, 16, [50] * 6),  # a task per run once the run reaches the size
        (6, 8, 16, [16] * 3),  # two runs per task
        (5, 8, 16, [16, 16, 8]),
        (2, 150, 16, [64, 64, 22, 64, 64, 22]),  # a long run is cut at MAX_CHUNK
        (1, 5, 16, [5]),
        (4, 1, 2, [4]),  # one axis: a single run, cut at MAX_GROWTH x size
        (12, 1, 2, [8, 4]),
    ],
)
def test_tasks_keep_runs_of_the_inner_axis_together(outer, inner, size, expect):
    """Task sizes from the grid's shape (closed form above); the tasks cover the points in
    order, once each, and no task but a cut long run starts inside a run."""
    todo = _grid_todo(outer, inner)
    got = chunks(todo, size)
    assert [len(c) for c in got] == expect
    assert [k for c in got for k, _ in c] == [k for k, _ in todo]
    starts = [sum(len(c) for c in got[:i]) for i in range(len(got))]
    assert all(i % inner == 0 or min(MAX_CHUNK, 4 * size) < inner for i in starts)


def test_tasks_of_a_zip_group_and_a_resumed_sweep():
    """A zipped pair varying together is one axis; points already done leave gaps that do
    not start new runs."""
    spec = SweepSpec.from_dict(
        {"grid": {"batch": [1, 2, 3]},
         "zip": [{"io.ingress_bytes_per_s": [1e11, 2e11, 3e11, 4e11],
                  "pe.clock_hz": [1e9, 1.1e9, 1.2e9, 1.3e9]}]},
        name="zipped",
    )  # fmt: skip
    todo = list(zip(spec.keys, spec.points, strict=True))
    assert [len(c) for c in chunks(todo, 4)] == [4, 4, 4]
    resumed = [t for i, t in enumerate(todo) if i % 4 != 1]  # every run's 2nd point done
    assert [len(c) for c in chunks(resumed, 3)] == [3, 3, 3]


def test_fewer_collections_raises_and_restores_the_threshold():
    """Inside, the first threshold is at least GC_GEN0_THRESHOLD (nested: still raised after
    the inner block ends); after, the caller's thresholds are back, also after an error."""
    import gc

    from gpt_workload.sweep.point import GC_GEN0_THRESHOLD, fewer_collections

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with pytest.raises(RuntimeError), fewer_collections():
            assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
            with fewer_collections():
                pass
            assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
            raise RuntimeError("a point failed")
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
