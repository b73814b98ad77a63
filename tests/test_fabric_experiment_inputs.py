"""Bad inputs to the packet-engine experiment scripts (``experiments/collectives.py``,
``experiments/fabric_load_latency.py``): one line on stderr naming the option, exit status 2,
nothing written, no traceback (issue 17: these ended in ValueError, RouteError,
ZeroDivisionError and ConfigError tracebacks, ``--sizes -4`` wrote negative wavelet counts
and ``--k 100000`` ran until the kernel killed it); and the memory estimate they refuse a
too-large mesh with, held to ``tracemalloc`` measurements."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from test_experiment_inputs import assert_refused, load

from gpt_workload import experiment_args as ea
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError
from wse_sim.fabric import footprint as fp
from wse_sim.fabric.collectives import run_collective
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.topology import Mesh
from wse_sim.fabric.traffic import bisection_bound, run_traffic

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    # the cases of issue 17, then the rest of each option's bad values
    ("collectives", ["--sizes", "abc"], "--sizes", "'abc' is not an integer"),
    ("collectives", ["--distances", "1"], "--distances", ">= 2 and <= 32"),
    ("collectives", ["--packet-wavelets", "0"], "--packet-wavelets", ">= 1"),
    ("collectives", ["--arch", "nosuch"], "--arch", "'nosuch'"),
    ("collectives", ["--micro-bytes", "-1"], "--micro-bytes", ">= 4"),
    ("collectives", ["--sizes", "-4"], "--sizes", "-4 is out of range"),
    ("collectives", ["--sizes", "1000000000000"], "--sizes", "GiB of host memory"),
    ("collectives", ["--sizes", "16,,64"], "--sizes", "no empty item"),
    ("collectives", ["--sizes", "1.5"], "--sizes", "not an integer"),
    ("collectives", ["--distances", "64"], "--distances", "<= 32"),
    ("collectives", ["--p-fixed", "1"], "--p-fixed", "2..32"),
    ("collectives", ["--p-fixed", "abc"], "--p-fixed", "'abc'"),
    ("collectives", ["--n-fixed", "0"], "--n-fixed", ">= 1"),
    ("collectives", ["--micro-bytes", "nan"], "--micro-bytes", "not an integer"),
    ("collectives", ["--micro-bytes", "99999999999999999999"], "--micro-bytes", "GiB of host"),
    ("collectives", ["--bogus"], "--bogus", "unrecognized"),
    ("fabric_load_latency", ["--k", "1"], "--k", "1 is out of range"),
    ("fabric_load_latency", ["--k", "0"], "--k", "0 is out of range"),
    ("fabric_load_latency", ["--measure", "0"], "--measure", ">= 1"),
    ("fabric_load_latency", ["--patterns", "nosuch"], "--patterns", "uniform, transpose"),
    ("fabric_load_latency", ["--loads", "nan"], "--loads", "not finite"),
    ("fabric_load_latency", ["--k", "100000"], "--k", "GiB of host memory"),
    ("fabric_load_latency", ["--k", "8,abc"], "--k", "'abc' is not an integer"),
    ("fabric_load_latency", ["--patterns", "uniform,"], "--patterns", "no empty item"),
    ("fabric_load_latency", ["--loads", "0"], "--loads", "> 0"),
    ("fabric_load_latency", ["--loads", "-1"], "--loads", "> 0"),
    ("fabric_load_latency", ["--loads", "100"], "--loads", "one 4-wavelet packet"),
    ("fabric_load_latency", ["--measure", "nan"], "--measure", "finite"),
    ("fabric_load_latency", ["--measure", "1e12"], "--measure", "GiB of host memory"),
    ("fabric_load_latency", ["--warmup", "-1"], "--warmup", ">= 0"),
    ("fabric_load_latency", ["--warmup", "inf"], "--warmup", "finite"),
    ("fabric_load_latency", ["--packet-wavelets", "0"], "--packet-wavelets", ">= 1"),
    ("fabric_load_latency", ["--seed", "-1"], "--seed", ">= 0"),
    ("fabric_load_latency", ["--packet-wavelets", "99999999999999999999"], "--packet-wave", "at most"),
    ("fabric_load_latency", ["--loads", "1e-300"], "--loads", "2^52 cycles"),
    ("fabric_load_latency", ["--k", "2", "--packet-wavelets", "1"], "--loads", "(0, 0.5]"),
    ("fabric_load_latency", ["--arch", "wse9"], "--arch", "'wse9'"),
    # the pass over the other scripts: silent numbers for more systems than SwarmX connects
    ("scaling_systems", ["--batch", "99999999", "--systems", "99999999"], "--systems", "1..192"),
    ("scaling_systems", ["--batch", "99999999999999999999"], "--batch", "1..1000000"),
    ("scaling_systems", ["--cut", "1e-10"], "--cut", "io.swarmx_bytes_per_s"),
    ("time_to_train", ["--systems", "500", "--models", "cerebras-gpt-13b"], "--systems", "1..192"),
]


@pytest.mark.parametrize(
    "name, argv, option, needle", CASES, ids=[f"{c[0]}{' '.join(c[1])}" for c in CASES]
)
def test_bad_option_is_one_line(tmp_path, capsys, name, argv, option, needle):
    out = tmp_path / "out"
    line = assert_refused(name, ["--out", str(out), *argv], capsys, out, option)
    assert needle in line, (needle, line)


@pytest.mark.parametrize("name", ["collectives", "fabric_load_latency"])
def test_out_is_an_existing_file(tmp_path, capsys, name):
    f = tmp_path / "taken"
    f.write_text("keep me")
    line = assert_refused(name, ["--out", str(f)], capsys, tmp_path / "x", "--out")
    assert "not a directory" in line
    assert f.read_text() == "keep me"


@pytest.mark.parametrize(
    "name, argv",
    [("collectives", ["--sizes", "-4"]), ("fabric_load_latency", ["--k", "100000"])],
)
def test_subprocess_one_line_exit_2(tmp_path, name, argv):
    """As a user runs them: exit 2, one line, nothing written (``--k 100000`` is refused at
    once, from the estimate, instead of running out of memory)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / f"{name}.py"), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"{name}.py: error: {argv[0]}")
    assert proc.stdout == "" and not out.exists()


def test_collectives_smallest_valid_run(tmp_path):
    """The smallest values the checks allow run and write positive counts."""
    import csv

    out = tmp_path / "c"
    argv = ["--sizes", "1", "--distances", "2", "--p-fixed", "2", "--n-fixed", "1"]
    argv += ["--packet-wavelets", "1", "--micro-bytes", "4", "--out", str(out)]
    assert load("collectives").main(argv) == 0
    rows = list(csv.DictReader(open(out / "collectives.csv")))
    assert rows and all(float(r["message_wavelets"]) >= 1 for r in rows)
    assert all(float(r["time_cycles"]) > 0 for r in rows)


def test_fabric_load_latency_smallest_valid_run(tmp_path):
    out = tmp_path / "f"
    argv = ["--k", "2", "--loads", "0.5", "--packet-wavelets", "1", "--warmup", "0"]
    argv += ["--measure", "50", "--out", str(out)]
    assert load("fabric_load_latency").main(argv) == 0
    assert (out / "fabric_load_latency.csv").exists()


def test_check_float():
    assert ea.check_float("--x", 2.0, 1) == 2.0
    for bad in (float("nan"), float("inf"), 0.5, True, "1"):
        with pytest.raises(ConfigError, match="--x .* is not allowed: expected a finite number"):
            ea.check_float("--x", bad, 1)
    with pytest.raises(ConfigError, match="> 0"):
        ea.check_float("--x", 0.0, 0, lo_open=True)


def test_check_host_memory_names_the_estimate():
    ea.check_host_memory("--k", "8", 1024, "a mesh")
    with pytest.raises(ConfigError) as exc:
        ea.check_host_memory("--k", "9", 1 << 60, "a 9x9 mesh")
    msg = str(exc.value)
    assert msg.startswith("--k '9' is not allowed: a 9x9 mesh needs about 1,073,741,824.0 GiB")


# ------------------------------------------------------------ the estimates, measured
FABRIC = load_arch("wse2").fabric


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("k", [8, 24])
def test_engine_estimate_matches_tracemalloc(k):
    measured = _peak(lambda: PacketFabric.from_arch(Mesh(k, k), FABRIC))
    est = fp.engine_bytes(k, k, FABRIC.colours)
    assert 0.6 < est / measured < 1.6, (est, measured)


@pytest.mark.parametrize("frac", [0.3, 1.2])
def test_traffic_estimate_matches_tracemalloc(frac):
    k, pw, load_ = 8, 4, frac * bisection_bound(8)

    def go():
        run_traffic(
            Mesh(k, k),
            "uniform",
            load_,
            packet_wavelets=pw,
            warmup_cycles=200,
            measure_cycles=800,
            engine_factory=lambda m: PacketFabric.from_arch(m, FABRIC),
        )

    est = fp.traffic_bytes(k, k, FABRIC.colours, load_, pw, 1000)
    measured = _peak(go)
    assert 0.5 < est / measured < 2.0, (est, measured)


@pytest.mark.parametrize(
    "kind, algo", [("reduce", "chain"), ("allreduce", "ring"), ("broadcast", "tree")]
)
def test_collective_estimate_matches_tracemalloc(kind, algo):
    """The estimate counts ``p`` messages' packets alive at once (twice for the all-reduce's
    two phases): within a factor 2.5 of what each collective holds at peak."""
    p, n = 16, 2048

    def go():
        eng = PacketFabric.from_arch(Mesh(1, p), FABRIC, packet_wavelets=4)
        run_collective(kind, algo, "row", Mesh(1, p), n, eng=eng)

    est = fp.collective_bytes(p, n, 4, FABRIC.colours, kind)
    measured = _peak(go)
    assert 0.6 < est / measured < 2.5, (est, measured)


@pytest.mark.parametrize(
    "pattern, rows, cols, P",
    [
        ("allreduce_row", 4, 32, 4),
        pytest.param("reduce_scatter_row", 4, 24, 12, marks=pytest.mark.slow),
        pytest.param("multicast_chain", 16, 8, 1, marks=pytest.mark.slow),
    ],
)
def test_transfer_program_estimate_matches_tracemalloc(pattern, rows, cols, P):
    """collectives.py's Part 2 runs: the estimate is within a factor 0.5..3 of the peak."""
    from wse_sim.fabric.collectives import collective_program
    from wse_sim.timing.packet import run_packet

    arch = load_arch("grid32")
    prog = collective_program(pattern, rows, cols, 1 << 18, pes_per_segment=P)
    measured = _peak(lambda: run_packet(prog, arch))
    est = fp.transfer_program_bytes(
        rows, cols, arch.fabric.colours, prog.kernels[0].transfers[0].link_bytes
    )
    assert 0.5 < est / measured < 3.0, (est, measured)


def test_traffic_check_load():
    """The injection schedule's bounds (a tiny load once overflowed numpy's int64 geometric
    draws and the schedule never ended)."""
    from wse_sim.fabric.traffic import MAX_MEAN_GAP_CYCLES, check_load, injection_schedule

    assert check_load(0.5, 4) == 0.5
    for bad in (0.0, -1.0, 5.0, float("nan"), 4 / MAX_MEAN_GAP_CYCLES / 2):
        with pytest.raises(ConfigError, match="offered load"):
            check_load(bad, 4)
    with pytest.raises(ConfigError, match="2\\^52"):
        injection_schedule(Mesh(2, 2), "uniform", 1e-300, 4, 100.0, 0)
