"""A run's timeline as Chrome / Perfetto trace-event JSON.

Format: the Trace Event Format (Google, "Trace Event Format", the JSON read by
``chrome://tracing`` and https://ui.perfetto.dev): ``{"traceEvents": [...],
"displayTimeUnit": "ms"}``; complete events ``"ph": "X"`` with ``ts`` and ``dur`` in
microseconds, ``pid``/``tid`` naming the track, and metadata events ``"ph": "M"``
(``process_name``, ``thread_name``, ``thread_sort_index``) naming the tracks.

Tracks (process -> threads):

* ``MemoryX I/O``: ``ingress stream`` - one event per weight block streamed onto the wafer;
* ``wafer``: ``kernels`` - every kernel (start to end, with its stall / compute / fabric split
  in ``args``); ``weight-I/O stall`` - the part of each kernel spent waiting for weights;
* ``PE classes``: one track per PE symmetry class slot - each kernel's class ``i`` busy from
  the end of the kernel's stall for its cycles (busy + vector-op overhead) / clock; kernels
  with more classes than tracks (attention: one class per segment position) fold classes into
  the tracks in order of work, each track showing its slowest member (as the event backend
  does);
* ``fabric``: one track per link group (``vertical``, ``horizontal``) - each kernel's
  transfers on that group, from the end of its stall for their busiest-link cycles (they
  overlap the compute in pipelined chunks);
* ``power``: a counter track (``"ph": "C"``) of the wafer's and the system's average power
  over each kernel, in watts (:mod:`wse_sim.energy`), when the report has energy.

Events on one track never overlap and their timestamps increase.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpt_workload import strict_json
from wse_sim.errors import ConfigError

#: PE-class tracks shown per kernel at most
MAX_CLASS_TRACKS = 8

PID_IO, PID_WAFER, PID_CLASSES, PID_FABRIC, PID_POWER = 1, 2, 3, 4, 5


def _meta(pid: int, tid: int, kind: str, name: str, sort: int | None = None) -> list[dict]:
    """Metadata events naming a process (``kind="process_name"``, tid 0) or a thread."""
    out: list[dict] = [{"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}]
    if sort is not None:
        out.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": pid,
                "tid": tid,
                "args": {"sort_index": sort},
            }
        )
    return out


def _x(name: str, cat: str, pid: int, tid: int, t0_s: float, t1_s: float, args: dict) -> dict:
    return {
        "name": name,
        "cat": cat,
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "ts": t0_s * 1e6,
        "dur": max(t1_s - t0_s, 0.0) * 1e6,
        "args": args,
    }


def _class_slots(classes, n: int) -> list[tuple[str, float, int]]:
    """``(label, cycles, PE count)`` per track: classes sorted by work and folded into at most
    ``n`` tracks, each at its slowest member's cycles."""
    cls = sorted(classes, key=lambda c: c.cycles)
    if len(cls) <= n:
        return [(f"class {c.index}", c.cycles, c.count) for c in cls]
    out = []
    edges = [round(i * len(cls) / n) for i in range(n + 1)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        grp = cls[lo:hi]
        if grp:
            idx = sorted(c.index for c in grp)
            out.append(
                (
                    f"classes {idx[0]}..{idx[-1]} ({len(grp)})",
                    grp[-1].cycles,
                    sum(c.count for c in grp),
                )
            )
    return out


def trace_events(report) -> dict[str, Any]:
    """The trace-event JSON object of ``report`` (see the module doc for the tracks).

    Raises:
        ConfigError: the report has no timeline.
    """
    tl = getattr(report, "timeline", None) or {}
    kernels = tl.get("kernels")
    if not kernels:
        raise ConfigError("the report has no timeline to trace")
    clock_hz = float(report.arch_config["pe"]["clock_hz"])
    link_bytes_per_cycle = report.arch_config["fabric"]["link_bits_per_cycle"] / 8.0
    program = getattr(report, "program", None)
    ev: list[dict] = []
    ev += _meta(PID_IO, 0, "process_name", "MemoryX I/O")
    ev += _meta(PID_IO, 1, "thread_name", "ingress stream", 0)
    ev += _meta(PID_WAFER, 0, "process_name", f"wafer ({report.grid[0]}x{report.grid[1]} PEs)")
    ev += _meta(PID_WAFER, 1, "thread_name", "kernels", 0)
    ev += _meta(PID_WAFER, 2, "thread_name", "weight-I/O stall", 1)
    body: list[dict] = []
    for b in tl.get("io_blocks", []):
        gbps = b["bytes"] / (b["end_s"] - b["start_s"]) / 1e9 if b["end_s"] > b["start_s"] else 0
        body.append(
            _x(
                b["name"],
                "io",
                PID_IO,
                1,
                b["start_s"],
                b["end_s"],
                {"bytes": b["bytes"], "GB_per_s": gbps},
            )
        )
    class_tracks: set[int] = set()
    fabric_tracks: dict[str, int] = {}
    for i, k in enumerate(kernels):
        t0, t1 = k["start_s"], k["end_s"]
        busy0 = t0 + k["stall_s"]
        body.append(
            _x(
                k["name"],
                k["op"],
                PID_WAFER,
                1,
                t0,
                t1,
                {
                    "op": k["op"],
                    "layer": k["layer"],
                    "micro_batch": k["micro_batch"],
                    "stall_s": k["stall_s"],
                    "compute_s": k["compute_s"],
                    "fabric_s": k["fabric_s"],
                    "flops": k["flops"],
                    "weight_bytes": k["weight_bytes"],
                },
            )
        )
        if k["stall_s"] > 0:
            body.append(_x(f"wait {k['name']}", "stall", PID_WAFER, 2, t0, busy0, {}))
        if program is None:
            continue
        pk = program.kernels[i]
        for slot, (label, cycles, count) in enumerate(_class_slots(pk.classes, MAX_CLASS_TRACKS)):
            class_tracks.add(slot)
            end = min(busy0 + cycles / clock_hz, t1)
            body.append(
                _x(
                    k["name"],
                    k["op"],
                    PID_CLASSES,
                    slot,
                    busy0,
                    end,
                    {"pe_class": label, "pes": count, "cycles": cycles},
                )
            )
        groups: dict[str, list] = {}
        for t in pk.transfers:
            if t.max_link_bytes > 0:
                groups.setdefault(t.link_group, []).append(t)
        for group, ts in groups.items():
            tid = fabric_tracks.setdefault(group, len(fabric_tracks))
            cycles = sum(t.max_link_bytes for t in ts) / link_bytes_per_cycle
            end = min(busy0 + cycles / clock_hz, t1)
            body.append(
                _x(
                    f"{k['name']}: " + " + ".join(t.name for t in ts),
                    "fabric",
                    PID_FABRIC,
                    tid,
                    busy0,
                    end,
                    {
                        "patterns": [t.pattern for t in ts],
                        "busiest_link_bytes": sum(t.max_link_bytes for t in ts),
                        "link_bytes": sum(t.link_bytes for t in ts),
                    },
                )
            )
    if class_tracks:
        ev += _meta(PID_CLASSES, 0, "process_name", "PE classes (slowest last)")
        for slot in sorted(class_tracks):
            ev += _meta(PID_CLASSES, slot, "thread_name", f"PE class slot {slot}", slot)
    if fabric_tracks:
        ev += _meta(PID_FABRIC, 0, "process_name", "fabric (busiest link per group)")
        for group, tid in fabric_tracks.items():
            ev += _meta(PID_FABRIC, tid, "thread_name", f"{group} links", tid)
    body.sort(key=lambda e: (e["pid"], e["tid"], e["ts"]))
    _clip_overlaps(body)
    power = _power_counters(kernels)
    if power:
        ev += _meta(PID_POWER, 0, "process_name", "power (W, average over each kernel)")
    return {
        "traceEvents": ev + body + power,
        "displayTimeUnit": "ms",
        "otherData": {
            "model": report.model,
            "arch": report.arch,
            "fidelity": report.fidelity,
            "batch": report.batch,
            "seq_len": report.seq_len,
            "simulated_time_s": report.simulated_time_s,
            "time_unit": "ts and dur in microseconds of simulated time",
        },
    }


def _power_counters(kernels: list[dict]) -> list[dict]:
    """Counter events (``"ph": "C"``) of the wafer and system power at each kernel's start,
    and the last kernel's end (back to the last value); empty without power in the timeline."""
    if not kernels or "wafer_power_w" not in kernels[0]:
        return []
    out = []
    for k in kernels:
        if k["end_s"] <= k["start_s"]:
            continue
        out.append(
            {
                "name": "power",
                "ph": "C",
                "pid": PID_POWER,
                "ts": k["start_s"] * 1e6,
                "args": {"wafer_W": k["wafer_power_w"], "system_W": k["system_power_w"]},
            }
        )
    if out:
        last = dict(out[-1], ts=kernels[-1]["end_s"] * 1e6)
        out.append(last)
    return out


def _clip_overlaps(events: list[dict]) -> None:
    """On each track (sorted by ts) shorten an event that would overrun the next one's start
    (float rounding between back-to-back kernels), so that no two events of a track overlap."""
    for a, b in zip(events, events[1:], strict=False):
        if (a["pid"], a["tid"]) == (b["pid"], b["tid"]) and a["ts"] + a["dur"] > b["ts"]:
            a["dur"] = max(b["ts"] - a["ts"], 0.0)


def write_trace(report, path: str | os.PathLike) -> Path:
    """Write the trace-event JSON of ``report`` to ``path`` (open it in
    https://ui.perfetto.dev or ``chrome://tracing``); returns the path."""
    p = Path(path)
    if p.parent != Path(""):
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(strict_json.dumps(trace_events(report), separators=(",", ":")))
    return p
