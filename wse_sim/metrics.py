"""Metrics of one timed Program: functions of a :class:`~wse_sim.program.Program`, its
:class:`~wse_sim.timing.common.TimingResult` and the arch, defined once for every job.

Definitions (``DESIGN.md`` "Metrics"):

* :func:`mfu` = model FLOPs / (simulated time x peak FLOP/s of the configured wafer).
* :func:`io_utilisation` = bytes moved over an off-wafer link / (time x its bandwidth).
* :func:`pe_utilisation` = per PE, FMAC-busy cycles / (time x clock): mean, min and max.
* :func:`mean_link_utilisation` = bytes x links moved over the fabric / (time x directed
  links x bytes a link carries per second): the wafer-average of ``link_utilisation``.
* :func:`roofline`: per op and overall, the lower bounds ``flops / peak``,
  ``weight bytes / ingress bandwidth`` and the fabric bound of each kernel
  (:func:`wse_sim.timing.common.fabric_bound_s`); the run's bound is the largest of the three
  totals.
* :func:`breakdown`: seconds per (layer, op): compute, fabric (not hidden by compute),
  weight-I/O stall, idle; the rows sum to the total. :func:`breakdown_by_op` sums them over
  layers and micro-batches.
* :func:`kernel_rows` (the timeline) and :func:`op_stats` (achieved FLOP/s and arithmetic
  intensity per op, the points of a roofline chart).

Units are in the keys: ``_s`` seconds, ``_flops``, ``_bytes``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from wse_sim.timing.common import fabric_bound_s, n_directed_links

if TYPE_CHECKING:  # pragma: no cover
    from wse_sim.arch import ArchConfig
    from wse_sim.program import Program
    from wse_sim.timing.common import TimingResult

#: the time components of a breakdown row, in seconds; they sum to ``total_s``
BREAKDOWN_KEYS = ("compute_s", "fabric_s", "stall_s", "idle_s", "total_s")


def _positive_time(time_s: float) -> None:
    if not time_s > 0:
        raise ValueError(f"time_s={time_s!r} must be > 0 for a utilisation or MFU")


def mfu(flops: float, time_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation ``flops / (time_s x peak_flops_per_s)``.

    Args:
        flops: model FLOPs of the work (e.g. ``2 N`` per token plus attention forward).
        time_s: simulated seconds it took (> 0).
        peak_flops_per_s: peak of the machine that ran it (all its systems).

    Raises:
        ValueError: ``time_s <= 0`` (a zero-length run has no utilisation).
    """
    _positive_time(time_s)
    return flops / (time_s * peak_flops_per_s)


def io_utilisation(nbytes: float, time_s: float, bytes_per_s: float) -> float:
    """Share of an off-wafer link used: ``nbytes / (time_s x bytes_per_s)``.

    Raises:
        ValueError: ``time_s <= 0``.
    """
    _positive_time(time_s)
    return nbytes / (time_s * bytes_per_s)


_SUMMARIES: dict[int, tuple] = {}


def map_summary(busy: np.ndarray, sram: np.ndarray) -> tuple[float, float, int, float]:
    """``(busy.min(), busy.max(), sram.max(), mean of sram over PEs with sram > 0)``,
    remembered for the last few map pairs: a backend returns the same arrays for a Program
    it has seen (:func:`wse_sim.timing.common.per_pe_maps`), e.g. at every point of a sweep
    that shares a lowered Program."""
    key = (id(busy), id(sram))
    hit = _SUMMARIES.get(key)
    if hit is not None and hit[0] is busy and hit[1] is sram:
        return hit[2]
    active = sram[sram > 0]
    out = (
        float(busy.min()),
        float(busy.max()),
        int(sram.max()),
        float(active.mean()) if active.size else 0.0,
    )
    if not busy.flags.writeable and not sram.flags.writeable:  # only arrays nobody changes
        if len(_SUMMARIES) >= 8:
            _SUMMARIES.pop(next(iter(_SUMMARIES)))
        _SUMMARIES[key] = (busy, sram, out)
    return out


def pe_utilisation(timing: TimingResult, clock_hz: float) -> tuple[np.ndarray, dict]:
    """Per-PE FMAC utilisation ``pe_busy_cycles / (total_s x clock_hz)``, float64
    ``[rows, cols]``, and its ``{"mean", "min", "max"}``.

    Raises:
        ValueError: ``timing.total_s <= 0``.
    """
    total = timing.total_s
    _positive_time(total)
    util = timing.pe_busy_cycles / (total * clock_hz)
    busy_min, busy_max, _, _ = map_summary(timing.pe_busy_cycles, timing.sram_peak_bytes)
    return util, {
        "mean": float(util.mean()),
        # min/max of busy / (total x clock) = min/max of busy, divided: rounding is
        # monotone, so these equal util.min() and util.max() exactly
        "min": float(busy_min / (total * clock_hz)),
        "max": float(busy_max / (total * clock_hz)),
    }


def mean_link_utilisation(program: Program, arch: ArchConfig, timing: TimingResult) -> float:
    """Wafer-average fabric link utilisation: ``timing.link_bytes / (total_s x directed links
    x link bytes per second)``, a directed link carrying ``fabric.link_bits_per_cycle / 8``
    bytes per PE clock cycle.

    Raises:
        ValueError: ``timing.total_s <= 0``.
    """
    _positive_time(timing.total_s)
    per_link = arch.fabric.link_bits_per_cycle / 8.0 * arch.pe.clock_hz
    links = n_directed_links(program.rows, program.cols)
    return timing.link_bytes / (timing.total_s * links * per_link)


def roofline(program: Program, arch: ArchConfig, timing: TimingResult) -> dict:
    """Lower bounds of the run, per op and overall.

    Returns:
        ``{"bound_s", "bound_by" ("compute", "io" or "fabric"), "compute_s", "io_s",
        "fabric_s", "per_op": [{"op", "compute_s", "io_s", "fabric_s", "simulated_s",
        "bound_s", "simulated_over_bound"}], "min_kernel_simulated_over_bound"}``: the
        bounds are ``flops / peak``, ``weight_bytes / io.ingress_bytes_per_s`` and
        :func:`~wse_sim.timing.common.fabric_bound_s` summed over the kernels of each op;
        ``min_kernel_simulated_over_bound`` the smallest ``duration / max(compute, fabric)``
        of a kernel (a backend faster than a bound would show below 1).
    """
    peak = arch.peak_flops_per_s(program.precision)
    bw = arch.io.ingress_bytes_per_s
    n_links = n_directed_links(program.rows, program.cols)
    per_op: dict[str, dict] = defaultdict(
        lambda: {"compute_s": 0.0, "io_s": 0.0, "fabric_s": 0.0, "simulated_s": 0.0}
    )
    worst_kernel = 1e300
    for k, kt in zip(program.kernels, timing.kernels, strict=True):
        c, i, f = k.flops / peak, k.weight_bytes / bw, fabric_bound_s(k, arch, n_links)
        row = per_op[k.op]
        row["compute_s"] += c
        row["io_s"] += i
        row["fabric_s"] += f
        row["simulated_s"] += kt.duration_s
        bound = max(c, f)
        if bound > 0:
            worst_kernel = min(worst_kernel, kt.duration_s / bound)
    tot = {key: sum(r[key] for r in per_op.values()) for key in ("compute_s", "io_s", "fabric_s")}
    by = max(tot, key=tot.get)
    rows = []
    for op, r in per_op.items():
        b = max(r["compute_s"], r["io_s"], r["fabric_s"])
        rows.append(
            {
                "op": op,
                **r,
                "bound_s": b,
                "simulated_over_bound": r["simulated_s"] / b if b > 0 else None,
            }
        )
    return {
        "bound_s": tot[by],
        "bound_by": by.replace("_s", ""),
        **tot,
        "per_op": rows,
        "min_kernel_simulated_over_bound": worst_kernel,
    }


def breakdown(timing: TimingResult) -> tuple[list[dict], dict]:
    """Seconds per ``(layer, op)`` in order of first appearance, plus an ``idle`` row when
    the wafer sat idle, and their totals.

    Returns:
        ``(rows, totals)``: rows ``{"layer", "op", "compute_s", "fabric_s", "stall_s",
        "idle_s", "total_s"}`` (``layer`` None for idle); totals of each key of
        :data:`BREAKDOWN_KEYS` over the rows (``total_s`` is the simulated time).
    """
    agg: dict[tuple, dict] = {}
    for kt in timing.kernels:
        key = (kt.layer, kt.op)
        r = agg.setdefault(
            key,
            {
                "layer": kt.layer,
                "op": kt.op,
                "compute_s": 0.0,
                "fabric_s": 0.0,
                "stall_s": 0.0,
                "idle_s": 0.0,
                "total_s": 0.0,
            },
        )
        r["compute_s"] += kt.compute_s
        r["fabric_s"] += kt.fabric_s
        r["stall_s"] += kt.stall_s
        r["total_s"] += kt.duration_s
    rows = list(agg.values())
    if timing.idle_s > 0:
        rows.append(
            {
                "layer": None,
                "op": "idle",
                "compute_s": 0.0,
                "fabric_s": 0.0,
                "stall_s": 0.0,
                "idle_s": timing.idle_s,
                "total_s": timing.idle_s,
            }
        )
    totals = {k: sum(r[k] for r in rows) for k in BREAKDOWN_KEYS}
    return rows, totals


def breakdown_by_op(rows: Iterable[dict]) -> list[dict]:
    """:func:`breakdown` rows summed by op over layers and micro-batches, largest ``total_s``
    first; every op, so the rows still sum to the total."""
    by_op: dict[str, dict] = {}
    for row in rows:
        acc = by_op.setdefault(row["op"], {"op": row["op"], **dict.fromkeys(BREAKDOWN_KEYS, 0.0)})
        for k in BREAKDOWN_KEYS:
            acc[k] += row[k]
    return sorted(by_op.values(), key=lambda x: -x["total_s"])


def kernel_rows(program: Program, timing: TimingResult) -> list[dict]:
    """The timeline: one row per kernel, in program order, ``{"name", "op", "layer",
    "micro_batch", "start_s", "end_s", "stall_s", "compute_s", "fabric_s", "flops",
    "weight_bytes"}``."""
    rows = []
    for k, kt in zip(program.kernels, timing.kernels, strict=True):
        # a KernelTime's fields are the row's first keys, in order (a copy of its __dict__
        # is a third of the cost of naming them: a sweep builds a row per kernel per point)
        row = vars(kt).copy()
        row["flops"] = k.flops
        row["weight_bytes"] = k.weight_bytes
        rows.append(row)
    return rows


def op_stats(rows: Iterable[dict]) -> list[dict[str, Any]]:
    """Per op over :func:`kernel_rows` ``rows``: ``{"op", "flops", "weight_bytes", "time_s",
    "achieved_flops_per_s", "intensity_flops_per_byte"}`` (intensity ``None`` without weight
    bytes; achieved 0 for an op that took no time)."""
    acc: dict[str, dict[str, float]] = {}
    for k in rows:
        a = acc.setdefault(k["op"], {"flops": 0.0, "weight_bytes": 0.0, "time_s": 0.0})
        a["flops"] += k["flops"]
        a["weight_bytes"] += k["weight_bytes"]
        a["time_s"] += k["end_s"] - k["start_s"]
    return [
        {
            "op": op,
            **a,
            "achieved_flops_per_s": a["flops"] / a["time_s"] if a["time_s"] > 0 else 0.0,
            "intensity_flops_per_byte": (
                a["flops"] / a["weight_bytes"] if a["weight_bytes"] > 0 else None
            ),
        }
        for op, a in acc.items()
    ]


__all__ = [
    "BREAKDOWN_KEYS",
    "breakdown",
    "breakdown_by_op",
    "io_utilisation",
    "kernel_rows",
    "map_summary",
    "mean_link_utilisation",
    "mfu",
    "op_stats",
    "pe_utilisation",
    "roofline",
]
