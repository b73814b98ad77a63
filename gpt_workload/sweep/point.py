"""One sweep point: its configuration simulated (timing only) and reduced to a row of
:data:`METRICS`."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
from collections.abc import Iterator
from typing import Any

from gpt_workload.report import ENERGY_COLUMNS, energy_columns
from gpt_workload.sweep.spec import PointConfig
from wse_sim.arch import LEVELS

#: result columns of every row, with their Arrow type name (units in the names)
METRICS: dict[str, str] = {
    "status": "string",
    "error": "string",
    "simulated_time_s": "float64",
    "tokens_per_s": "float64",
    "mfu": "float64",
    "achieved_flops_per_s": "float64",
    "peak_flops_per_s": "float64",
    "model_flops": "float64",
    "batch_used": "int64",
    "seq_len_used": "int64",
    "tokens": "int64",
    "micro_batches": "int64",
    "pes_per_segment": "int64",
    "tokens_per_segment": "int64",
    "active_pes": "int64",
    "pe_utilisation_mean": "float64",
    "pe_utilisation_min": "float64",
    "pe_utilisation_max": "float64",
    "sram_peak_bytes": "int64",
    "sram_capacity_bytes": "int64",
    "io_utilisation": "float64",
    "weight_bytes_streamed": "int64",
    "compute_s": "float64",
    "fabric_s": "float64",
    "stall_s": "float64",
    "idle_s": "float64",
    "roofline_bound_s": "float64",
    "roofline_bound_by": "string",
    "roofline_compute_s": "float64",
    "roofline_io_s": "float64",
    "roofline_fabric_s": "float64",
    "layer_compute_s": "float64",
    "layer_io_s": "float64",
    "layer_stall_s": "float64",
    **{c: "float64" for c in ENERGY_COLUMNS},
}


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: ``TypeName: message`` with the message's whitespace collapsed."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _per_layer(rep) -> dict[str, float | None]:
    """Medians over the transformer layers of micro-batch 0: compute (kernel time less
    weight stall), weight-I/O stall, and the layer block's stream time."""
    comp: dict[int, float] = {}
    stall: dict[int, float] = {}
    layers = {k["layer"] for k in rep.timeline.get("kernels", []) if k["op"] == "qkv"}
    for k in rep.timeline.get("kernels", []):
        if k["micro_batch"] == 0 and k["layer"] in layers:
            comp[k["layer"]] = comp.get(k["layer"], 0.0) + k["end_s"] - k["start_s"] - k["stall_s"]
            stall[k["layer"]] = stall.get(k["layer"], 0.0) + k["stall_s"]
    io = [
        b["end_s"] - b["start_s"]
        for b in rep.timeline.get("io_blocks", [])
        if b["name"].startswith("mb0.layer")
    ]
    med = statistics.median
    return {
        "layer_compute_s": med(comp.values()) if comp else None,
        "layer_stall_s": med(stall.values()) if stall else None,
        "layer_io_s": med(io) if io else None,
    }


def metrics_of(rep) -> dict[str, Any]:
    """The :data:`METRICS` columns of a :class:`gpt_workload.report.Report` (status ok)."""
    rf = rep.roofline
    lay = rep.layout
    return {
        "status": "ok",
        "error": None,
        "simulated_time_s": float(rep.simulated_time_s),
        "tokens_per_s": float(rep.tokens_per_s),
        "mfu": float(rep.mfu),
        "achieved_flops_per_s": float(rep.achieved_flops_per_s),
        "peak_flops_per_s": float(rep.peak_flops_per_s),
        "model_flops": float(rep.model_flops),
        "batch_used": int(rep.batch),
        "seq_len_used": int(rep.seq_len),
        "tokens": int(rep.tokens),
        "micro_batches": int(rep.micro_batches),
        "pes_per_segment": int(lay["pes_per_segment"]),
        "tokens_per_segment": int(lay["tokens_per_segment"]),
        "active_pes": int(lay["active_pes"]),
        "pe_utilisation_mean": float(rep.pe_utilisation["mean"]),
        "pe_utilisation_min": float(rep.pe_utilisation["min"]),
        "pe_utilisation_max": float(rep.pe_utilisation["max"]),
        "sram_peak_bytes": int(rep.sram_peak_bytes["max"]),
        "sram_capacity_bytes": int(rep.sram_peak_bytes["capacity"]),
        "io_utilisation": float(rep.io_utilisation),
        "weight_bytes_streamed": int(lay["weight_bytes_streamed"]),
        "compute_s": float(rep.totals["compute_s"]),
        "fabric_s": float(rep.totals["fabric_s"]),
        "stall_s": float(rep.totals["stall_s"]),
        "idle_s": float(rep.totals["idle_s"]),
        "roofline_bound_s": float(rf["bound_s"]),
        "roofline_bound_by": str(rf["bound_by"]),
        "roofline_compute_s": float(rf["compute_s"]),
        "roofline_io_s": float(rf["io_s"]),
        "roofline_fabric_s": float(rf["fabric_s"]),
        **_per_layer(rep),
        **energy_columns(rep),
    }


def simulate_point(config: PointConfig):
    """Run ``simulate()`` for one sweep point (timing only) and return the Report.

    Raises:
        ConfigError, FitError: as :func:`gpt_workload.simulate.simulate`.
    """
    from gpt_workload.mappings import parse_mapping
    from gpt_workload.models import resolve_model
    from gpt_workload.simulate import simulate
    from gpt_workload.sweep.cache import load_arch_cached, worker_cache

    model: Any = config["model"]
    mfields = {
        k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("model.") and v is not None
    }
    if mfields:
        base = resolve_model(model)
        tag = ",".join(f"{k}={v}" for k, v in sorted(mfields.items()))
        model = dataclasses.replace(base, name=f"{base.name}[{tag}]", **mfields)
    overrides = [
        f"{k}={v!r}" for k, v in sorted(config.items()) if v is not None and _is_arch_field(k)
    ]
    batch = config["batch"]
    seq_len = config["seq_len"]
    arch = load_arch_cached(config["arch"], overrides)
    if batch == "max":
        cfg = model if not isinstance(model, str) else resolve_model(model)
        t = seq_len if seq_len is not None else min(2048, cfg.n_positions)
        mapping = parse_mapping(config["mapping"])
        batch = mapping.max_batch_single_micro(cfg, arch, t, config["precision"])
    return simulate(
        model,
        arch,
        mapping=config["mapping"],
        fidelity=config["fidelity"],
        precision=config["precision"],
        batch=batch,
        seq_len=seq_len,
        check_sequences=0,
        reference=False,
        lowering_cache=worker_cache(),
        per_pe_maps=False,  # the row reads none of the maps
    )


def _is_arch_field(key: str) -> bool:
    head, _, tail = key.partition(".")
    return head in LEVELS and bool(tail)


#: the garbage collector's first threshold while a point runs (Python's default is 700)
GC_GEN0_THRESHOLD = 100_000


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage less often while a point runs.

    A point allocates some 10^5 short-lived objects (kernel times, rows, dicts), so at
    Python's default first threshold (700 allocations) the collector runs hundreds of times
    a point, and its older generations scan the warm caches of lowered Programs (10^5 - 10^6
    objects) again and again: a fifth of an ``analytic`` sweep's CPU time on 1,000 points
    (``benchmarks/bench_sweep.py``). The threshold is raised to :data:`GC_GEN0_THRESHOLD` and
    restored after; the collector still runs, so reference cycles are still freed. Loops over
    points (:func:`run_points`, a serial sweep) hold it raised across their points: restored
    after each point, the young objects of the point would be collected at once.
    """
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_GEN0_THRESHOLD), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def run_point(config: PointConfig) -> dict[str, Any]:
    """Simulate one point and return its :data:`METRICS` row; never raises: an error is
    returned as ``status = "error"`` with a one-line ``error`` message."""
    with fewer_collections():
        try:
            return metrics_of(simulate_point(config))
        except Exception as exc:  # a failing point is a result, not the end of the sweep
            return error_row(one_line(exc))


def error_row(message: str) -> dict[str, Any]:
    """A :data:`METRICS` row for a failed point."""
    row: dict[str, Any] = dict.fromkeys(METRICS)
    row.update(status="error", error=message)
    return row


def run_points(configs: list[PointConfig]) -> list[dict[str, Any]]:
    """:func:`run_point` over several points: one Dask task, fewer round trips; the
    collector's threshold stays raised across them (:func:`fewer_collections`)."""
    with fewer_collections():
        return [run_point(c) for c in configs]


