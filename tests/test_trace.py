"""Trace export: Chrome / Perfetto trace-event JSON, checked against the format's rules
(required keys per phase, microsecond timestamps, one named track per pid/tid, monotonic
non-overlapping events on each track)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest

from gpt_workload.simulate import simulate
from gpt_workload.trace import trace_events, write_trace

REQUIRED = {
    "X": {"name", "ph", "ts", "dur", "pid", "tid"},
    "M": {"name", "ph", "pid", "args"},
    "C": {"name", "ph", "ts", "pid", "args"},  # counter: numeric args, one series per key
}


def validate(doc: dict) -> dict[tuple[int, int], list[dict]]:
    """Check ``doc`` against the trace-event format; return the X events per track."""
    assert isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit") in (None, "ms", "ns")
    names: dict[tuple, str] = {}
    tracks: dict[tuple[int, int], list[dict]] = defaultdict(list)
    counters: dict[tuple[int, str], list[float]] = defaultdict(list)
    for ev in doc["traceEvents"]:
        assert ev["ph"] in REQUIRED, ev
        assert REQUIRED[ev["ph"]] <= set(ev), ev
        assert isinstance(ev["pid"], int) and isinstance(ev.get("tid", 0), int)
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name", "thread_sort_index")
            if ev["name"] != "thread_sort_index":
                names[(ev["name"], ev["pid"], ev.get("tid"))] = ev["args"]["name"]
            continue
        if ev["ph"] == "C":
            assert ev["ts"] >= 0 and ev["args"]
            assert all(isinstance(v, (int, float)) and v >= 0 for v in ev["args"].values())
            counters[(ev["pid"], ev["name"])].append(ev["ts"])
            continue
        assert isinstance(ev["ts"], (int, float)) and isinstance(ev["dur"], (int, float))
        assert ev["ts"] >= 0 and ev["dur"] >= 0
        tracks[(ev["pid"], ev["tid"])].append(ev)
    for (pid, tid), evs in tracks.items():
        assert ("process_name", pid, 0) in names and ("thread_name", pid, tid) in names
        ts = [e["ts"] for e in evs]
        assert ts == sorted(ts), (pid, tid)  # monotonic per track (in file order)
        for a, b in zip(evs, evs[1:], strict=False):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-6, (pid, tid, a["name"], b["name"])
    for (pid, _), ts in counters.items():
        assert ("process_name", pid, 0) in names and ts == sorted(ts)
    return tracks


@pytest.mark.parametrize("fidelity", ["analytic", "event"])
def test_trace_validates_and_covers_the_run(fidelity, tmp_path):
    rep = simulate("cerebras-gpt-111m", "wse2", fidelity=fidelity, batch=120, check_sequences=0)
    path = write_trace(rep, tmp_path / "t.json")
    doc = json.loads(path.read_text())
    tracks = validate(doc)
    procs = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert {"MemoryX I/O", "wafer (994x750 PEs)", "PE classes (slowest last)"} <= procs
    assert "fabric (busiest link per group)" in procs
    # the power counter: one value per kernel of non-zero duration, the energy model's
    power = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    ks = [k for k in rep.timeline["kernels"] if k["end_s"] > k["start_s"]]
    assert len(power) == len(ks) + 1
    assert max(e["args"]["wafer_W"] for e in power) == pytest.approx(rep.energy["peak_w"])
    kernels = tracks[(2, 1)]
    assert len(kernels) == len(rep.timeline["kernels"])
    assert kernels[-1]["ts"] + kernels[-1]["dur"] == pytest.approx(rep.simulated_time_s * 1e6)
    assert len(tracks[(1, 1)]) == len(rep.timeline["io_blocks"])
    threads = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {"vertical links", "horizontal links", "PE class slot 0"} <= threads
    # attention has one PE class per segment position: folded into at most 8 tracks
    attn = [
        e for (pid, _), evs in tracks.items() if pid == 3 for e in evs if e["cat"] == "attention"
    ]
    assert len(attn) == 10 * 8
    # a class event starts when its kernel's weights are there and lasts its cycles / clock
    by_name = {e["name"]: e for e in kernels}
    for e in attn:
        k = by_name[e["name"]]
        assert e["ts"] == pytest.approx(k["ts"] + k["args"]["stall_s"] * 1e6)
        clock = rep.arch_config["pe"]["clock_hz"]  # the wse2 preset's
        end = min(e["ts"] + e["args"]["cycles"] / clock * 1e6, k["ts"] + k["dur"])
        assert e["ts"] + e["dur"] == pytest.approx(end)


def test_trace_of_a_micro_batched_run_and_the_cli(tmp_path):
    rep = simulate("gpt-tiny", "grid8", fidelity="event", batch=40, seq_len=64, check_sequences=0)
    assert rep.micro_batches > 1
    validate(trace_events(rep))
    out = tmp_path / "run.json"
    p = subprocess.run(
        [sys.executable, "-m", "gpt_workload.cli", "run", "--fidelity", "analytic"]
        + ["--check-sequences", "0", "--trace", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "trace written" in p.stdout
    validate(json.loads(out.read_text()))
