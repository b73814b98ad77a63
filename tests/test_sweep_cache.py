"""The sweep's lowering cache and the per-PE map shortcuts change no number of the table.

The reference is the code path without them: every point lowered afresh
(``WSE_SIM_SWEEP_CACHE=0``) and the per-PE maps scattered PE by PE as before
(:func:`_per_pe_maps_reference`, the loop :func:`wse_sim.timing.common.per_pe_maps` had).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from gpt_workload.sweep import cache as sweep_cache
from gpt_workload.models import resolve_model
from gpt_workload.mappings import parse_mapping
from gpt_workload.sweep import SweepSpec, read_table, run_point, run_sweep
from gpt_workload.sweep.cache import LoweringCache, load_arch_cached
from wse_sim.arch import load_arch
from wse_sim.errors import FitError
from wse_sim.timing.common import per_pe_maps


def _spec() -> SweepSpec:
    return SweepSpec.from_dict(
        {
            "base": {"model": "cerebras-gpt-111m", "arch": "wse2", "fidelity": "analytic"},
            "grid": {
                # 5000 B cannot hold one sequence: an error row, cached like a Program
                "pe.sram_bytes": [5000, 49152, 98304],
                "batch": [3, 120],
                "io.ingress_bytes_per_s": [75e9, 150e9, 600e9],
            },
            # the classic layout: the searched one reads the I/O rate (next tests)
            "zip": [{"mapping": ["weight_streaming:pes_per_segment=heads", "summa"]}],
        },
        name="cache",
    )


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        for k in a
    )


def test_cached_rows_equal_uncached_rows(monkeypatch) -> None:
    spec = _spec()
    monkeypatch.setenv("WSE_SIM_SWEEP_CACHE", "0")
    assert sweep_cache.worker_cache() is None
    plain = [run_point(p) for p in spec.points]
    monkeypatch.setenv("WSE_SIM_SWEEP_CACHE", "1")
    cache = sweep_cache.worker_cache()
    cache.clear()
    cached = [run_point(p) for p in spec.points]
    assert all(_same(a, b) for a, b in zip(plain, cached, strict=True))
    assert sum(r["status"] == "error" for r in cached) == 2 * 2 * 3  # the 5000 B points
    assert "does not fit" in cached[0]["error"]
    # the lowering reads SRAM and batch but not the I/O bandwidth: one lowering per
    # (mapping, SRAM, batch), the other bandwidths hit
    n_low = len(spec.points) // 3
    assert (cache.misses, cache.hits) == (n_low, len(spec.points) - n_low)


def test_sweep_table_equal_with_and_without_cache(tmp_path, monkeypatch) -> None:
    spec = SweepSpec.from_dict(
        {
            "base": {"model": "cerebras-gpt-111m", "arch": "wse2", "fidelity": "analytic"},
            "grid": {"batch": [8, 60], "io.ingress_bytes_per_s": [100e9, 200e9]},
        },
        name="t",
    )
    monkeypatch.setenv("WSE_SIM_SWEEP_CACHE", "0")
    a = read_table(run_sweep(spec, output=tmp_path / "a.parquet", workers=0).path)
    monkeypatch.setenv("WSE_SIM_SWEEP_CACHE", "1")
    b = read_table(run_sweep(spec, output=tmp_path / "b.parquet", workers=0).path)
    assert a.equals(b)


def test_key_is_what_the_lowering_reads() -> None:
    cfg = resolve_model("cerebras-gpt-111m")
    ws = parse_mapping("weight_streaming:pes_per_segment=heads")
    cache = LoweringCache()
    base = load_arch("wse2")
    p1 = cache.lower(ws, cfg, base, 8, 2048, "fp16")
    # not read by the lowering: same Program
    slow_io = base.with_overrides(["io.ingress_bytes_per_s=1e9"])
    assert cache.lower(ws, cfg, slow_io, 8, 2048, "fp16") is p1
    assert cache.lower(ws, cfg, base.with_overrides(["pe.clock_hz=0.85e9"]), 8, 2048, "fp16") is p1
    # read: lowered again, and equal to a fresh lowering
    arch2 = base.with_overrides(["pe.sram_bytes=65536"])
    p2 = cache.lower(ws, cfg, arch2, 8, 2048, "fp16")
    assert p2 is not p1
    fresh = ws.lower(cfg, arch2, 8, 2048, "fp16")
    assert p2.kernels == fresh.kernels and p2.weight_blocks == fresh.weight_blocks
    assert p2.class_maps.keys() == fresh.class_maps.keys()
    assert all(np.array_equal(p2.class_maps[k], fresh.class_maps[k]) for k in fresh.class_maps)
    assert (cache.hits, cache.misses) == (2, 2)
    # a value the lowering got from a method call (pe.fmac_per_cycle) keys the entry too
    wide = base.with_overrides(["pe.fmac_fp16_per_cycle=8"])
    p3 = cache.lower(ws, cfg, wide, 8, 2048, "fp16")
    assert p3 is not p1
    # ... but only the value it returned: the fp32 rate is not what an fp16 lowering asked for
    fp32 = wide.with_overrides(["pe.fmac_fp32_per_cycle=1"])
    assert cache.lower(ws, cfg, fp32, 8, 2048, "fp16") is p3


def test_searched_layout_is_keyed_by_the_io_rate_it_read() -> None:
    """The default mapping searches its layout by analytic time, which reads the I/O rate: a
    different rate is lowered again (and equals a fresh lowering); an unread field still
    hits."""
    cfg = dataclasses.replace(resolve_model("cerebras-gpt-111m"), n_layer=2)
    ws = parse_mapping("weight_streaming")
    cache = LoweringCache()
    base = load_arch("wse2")
    p1 = cache.lower(ws, cfg, base, 1, 256, "fp16")
    slow = base.with_overrides(["io.ingress_bytes_per_s=1e9"])
    p2 = cache.lower(ws, cfg, slow, 1, 256, "fp16")
    assert p2 is not p1
    fresh = ws.lower(cfg, slow, 1, 256, "fp16")
    assert p2.kernels == fresh.kernels and p2.describe() == fresh.describe()
    energy = base.with_overrides(["energy.fmac_fp16_pj=1.0"])
    assert cache.lower(ws, cfg, energy, 1, 256, "fp16") is p1
    # the candidate layouts do not read the I/O rate: the second search lowered none of
    # the candidates the first had lowered, and its result did not leak into p1's layout
    assert cache.shared_hits >= p2.layout.search["layout_search"]["candidates"] // 2
    assert p1.describe() == ws.lower(cfg, base, 1, 256, "fp16").describe()


def test_searched_layout_rows_equal_uncached_rows(monkeypatch) -> None:
    """A sweep of the default (searched) mapping over batch, SRAM and I/O rate: the same rows
    with the shared candidate lowerings as with every point lowered afresh."""
    spec = SweepSpec.from_dict(
        {
            "base": {"model": "cerebras-gpt-111m", "model.n_layer": 2, "seq_len": 512},
            "grid": {
                "batch": [2, 16],
                "pe.sram_bytes": [32768, 49152],
                "io.ingress_bytes_per_s": [40e9, 150e9, 600e9],
            },
        },
        name="searched",
    )
    monkeypatch.setenv("WSE_SIM_SWEEP_CACHE", "0")
    plain = [run_point(p) for p in spec.points]
    monkeypatch.setenv("WSE_SIM_SWEEP_CACHE", "1")
    cache = sweep_cache.worker_cache()
    cache.clear()
    shared = [run_point(p) for p in spec.points]
    assert all(_same(a, b) for a, b in zip(plain, shared, strict=True))
    assert all(r["status"] == "ok" for r in shared)
    assert cache.misses == len(spec.points) and cache.shared_hits > cache.shared_misses


def test_errors_are_cached_with_their_message() -> None:
    cfg = resolve_model("cerebras-gpt-111m")
    ws = parse_mapping("weight_streaming:pes_per_segment=heads")
    cache = LoweringCache()
    tiny = load_arch("wse2", ["pe.sram_bytes=5000"])
    with pytest.raises(FitError) as first:
        cache.lower(ws, cfg, tiny, 8, 2048, "fp16")
    with pytest.raises(FitError) as again:
        cache.lower(ws, cfg, tiny.with_overrides(["io.ingress_bytes_per_s=1e9"]), 8, 2048, "fp16")
    assert str(again.value) == str(first.value)
    assert (cache.hits, cache.misses) == (1, 1)


def test_stateful_mapping_is_not_cached() -> None:
    """``auto`` keeps its search on the mapping object: replaying would lose it."""
    cfg = resolve_model("gpt-tiny")
    cache = LoweringCache()
    arch = load_arch("grid32")
    a = parse_mapping("auto:candidates=weight_streaming+layer_pipelined")
    pa = cache.lower(a, cfg, arch, 2, 64, "fp16")
    assert a.chosen is not None and "mapping_search" in pa.layout.search
    b = parse_mapping("auto:candidates=weight_streaming+layer_pipelined")
    cache.lower(b, cfg, arch, 2, 64, "fp16")
    assert b.chosen is not None and cache.hits == 0 and cache.uncacheable == 2


def test_load_arch_cached_equals_load_arch() -> None:
    ov = ["pe.sram_bytes=65536", "io.ingress_bytes_per_s=3e11"]
    assert load_arch_cached("WSE2", ov) == load_arch("WSE2", ov)
    assert load_arch_cached("wse3") == load_arch("wse3")


def _per_pe_maps_reference(program):
    """The masked scatter :func:`per_pe_maps` did before (kernel by kernel, class by class)."""
    busy = np.zeros((program.rows, program.cols))
    sram = np.zeros((program.rows, program.cols), dtype=np.int64)
    per_map: dict[str, np.ndarray] = {}
    sram_map: dict[str, int] = {}
    for k in program.kernels:
        acc = per_map.setdefault(k.class_map, np.zeros(max(len(k.classes), 1)))
        if len(acc) < len(k.classes):
            acc = np.concatenate([acc, np.zeros(len(k.classes) - len(acc))])
            per_map[k.class_map] = acc
        for c in k.classes:
            acc[c.index] += c.busy_cycles
        sram_map[k.class_map] = max(sram_map.get(k.class_map, 0), k.sram_bytes)
    for key, acc in per_map.items():
        cmap = program.class_maps[key]
        on = cmap >= 0
        busy[on] += acc[cmap[on]]
        sram[on] = np.maximum(sram[on], sram_map[key])
    return busy, sram


@pytest.mark.parametrize(
    "model,mapping,arch,batch,seq",
    [
        ("cerebras-gpt-111m", "weight_streaming", "wse2", 7, 2048),
        ("gpt-tiny", "weight_streaming", "grid32", 3, 100),
        ("gpt-tiny", "cannon", "grid32", 2, 64),
        ("gpt-tiny", "layer_pipelined", "grid32", 2, 64),
    ],
)
def test_per_pe_maps_equal_reference(model, mapping, arch, batch, seq) -> None:
    cfg = resolve_model(model)
    program = parse_mapping(mapping).lower(cfg, load_arch(arch), batch, seq, "fp16")
    busy, sram = per_pe_maps(program)
    rb, rs = _per_pe_maps_reference(program)
    assert np.array_equal(busy, rb) and np.array_equal(sram, rs) and sram.dtype == rs.dtype
    assert per_pe_maps(program)[0] is busy  # computed once per Program
    with pytest.raises(ValueError):
        busy[0, 0] = 1.0  # shared: read-only
