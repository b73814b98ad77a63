"""Timing of generation: line collectives and decode steps held to the packet backend, the
per-step lower bounds, the streaming I/O bound, one-layer timing against the whole step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gpt_workload.generation.timing import StepTimer, reduction_latency_s, step_bound
from gpt_workload.mappings.resident import lower_decode_step, make_layout
from gpt_workload.models import resolve_model
from wse_sim.arch import load_arch
from wse_sim.fabric.collectives import run_collective
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.lines import LINE_PATTERNS, line_transfer
from wse_sim.fabric.topology import Mesh
from wse_sim.program import Kernel, PEClass, Program
from wse_sim.timing.analytic import run_analytic
from wse_sim.timing.event import run_event
from wse_sim.timing.packet import run_packet

GRID = load_arch("grid32")


def _line_program(pattern: str, rows: int, cols: int, n: float, compute: float = 50.0):
    cmap = -np.ones((32, 32), np.int16)
    cmap[:rows, :cols] = 0
    axis = LINE_PATTERNS[pattern][2]
    p, lines = (cols, rows) if axis == "row" else (rows, cols)
    tr = line_transfer("t", pattern, p, lines, n, GRID.fabric)
    k = Kernel("k", "op", 0, 0, (PEClass(0, rows * cols, compute, 0.0, 0.0),), "m", (tr,),
               n_chunks=1)  # fmt: skip
    return Program("lines", 32, 32, "fp16", [k], [], {"m": cmap})


@pytest.mark.parametrize("pattern", sorted(LINE_PATTERNS))
@pytest.mark.parametrize("rows,cols,n", [(32, 32, 1), (3, 17, 4), (8, 32, 16)])
def test_line_collectives_event_and_analytic_meet_packet(pattern, rows, cols, n):
    prog = _line_program(pattern, rows, cols, n)
    pk = run_packet(prog, GRID).total_s
    for run in (run_analytic, run_event):
        # tree and broadcast: the zero-load schedule is what the packet engine does; the
        # chain leaves out the RAMP contention of its broadcast back (small at these sizes)
        assert run(prog, GRID).total_s == pytest.approx(pk, rel=0.05)


def test_line_broadcast_matches_the_collectives_closed_form():
    """A row broadcast timed by the backends equals the collectives module's zero-load
    form (2 RAMP + (p-1) hops + n), run on its own packet engine."""
    n = 8
    res, _ = run_collective("broadcast", "tree", "row", Mesh(1, 32), n,
                            eng=PacketFabric(Mesh(1, 32), packet_wavelets=64))  # fmt: skip
    prog = _line_program("bcast_row", 1, 32, n, compute=0.0)
    cyc = run_analytic(prog, GRID).total_s * GRID.pe.clock_hz
    assert cyc == pytest.approx(res.closed_form_cycles, abs=1e-6)
    assert cyc == pytest.approx(res.time_cycles, abs=1e-6)


def _cfg(family_dirs, family):
    return resolve_model(str(family_dirs[family][0] / "config.json"))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decode_step_event_and_analytic_within_5pc_of_packet(tiny_checkpoints, family):
    cfg = _cfg(tiny_checkpoints, family)
    lay = make_layout(cfg, GRID, precision="fp16", max_context=40)
    prog = lower_decode_step(lay, [24])
    prog.validate()
    pk = run_packet(prog, GRID).total_s
    assert run_event(prog, GRID).total_s == pytest.approx(pk, rel=0.05)
    assert run_analytic(prog, GRID).total_s == pytest.approx(pk, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "gptj", "llama", "qwen2"])
@pytest.mark.parametrize("gemv,reduce", [("mesh", "chain"), ("rowcol", "tree")])
def test_decode_step_packet_agreement_all_families(tiny_checkpoints, family, gemv, reduce):
    cfg = _cfg(tiny_checkpoints, family)
    lay = make_layout(cfg, GRID, precision="fp16", max_context=60, batch=2, gemv=gemv,
                      reduce=reduce)  # fmt: skip
    prog = lower_decode_step(lay, [50, 31])
    pk = run_packet(prog, GRID).total_s
    assert run_event(prog, GRID).total_s == pytest.approx(pk, rel=0.05)
    assert run_analytic(prog, GRID).total_s == pytest.approx(pk, rel=0.05)


@pytest.mark.parametrize("fidelity", ["analytic", "event"])
def test_one_layer_timing_equals_the_whole_step(fidelity):
    """A resident step is prologue + L x one layer + epilogue (the timer's shortcut) exactly
    as the whole step's Program times."""
    cfg = resolve_model("cerebras-gpt-111m")
    lay = make_layout(cfg, load_arch("wse2"), precision="fp16", max_context=300)
    timer = StepTimer(lay, fidelity)
    t_one = timer.decode_step([200])[0]
    whole = StepTimer(lay, fidelity, layers="all").decode_step([200])[0]
    assert t_one == pytest.approx(whole, rel=1e-9)


CASES = [
    ("gpt-tiny", "grid32", "resident", 1),
    ("cerebras-gpt-111m", "wse2", "resident", 4),
    ("llama-3-8b", "wse2", "resident", 1),
    ("llama-3-8b", "wse2", "streaming", 1),
    ("llama-3.1-70b", "wse3", "resident", 1),
]


@pytest.mark.parametrize("model,arch,placement,batch", CASES)
def test_every_decode_step_is_at_least_its_bound(model, arch, placement, batch):
    cfg, a = resolve_model(model), load_arch(arch)
    lay = make_layout(cfg, a, precision="fp16", max_context=96, batch=batch, placement=placement,
                      systems="auto")  # fmt: skip
    timer = StepTimer(lay, "analytic")
    for ctx in (1, 17, 64):
        t, x, flops, wbytes, lat, _ = timer.decode_step([ctx] * batch)
        b = step_bound(lay, flops, wbytes, lat)
        assert t >= b["bound_s"] * (1 - 1e-12)
        assert b["compute_s"] > 0 and b["weights_s"] > 0 and b["latency_s"] > 0


def _llama3_8b_weight_bytes() -> int:
    """Llama-3-8B's matrices and norms, fp16, from its published shape (d 4096, 32 layers,
    8 K/V heads of 128, d_ff 14336, vocabulary 128256, untied head): the bytes a decode step
    reads (the embedding's one row left out)."""
    d, kv, ff, V, L = 4096, 8 * 128, 14336, 128256, 32
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * ff + 2 * d
    return 2 * (L * per_layer + d + V * d)


def test_streaming_batch1_step_is_io_bound_within_10pc():
    cfg, a = resolve_model("llama-3-8b"), load_arch("wse2")
    lay = make_layout(cfg, a, precision="fp16", max_context=64, placement="streaming")
    t = StepTimer(lay, "event").decode_step([40])[0]
    io = _llama3_8b_weight_bytes() / a.io.ingress_bytes_per_s
    assert io <= t <= 1.10 * io


def test_reduction_latency_scales_with_the_layers_it_stands_for():
    cfg = resolve_model("gpt-tiny")
    lay = make_layout(cfg, GRID, precision="fp16", max_context=32)
    whole = lower_decode_step(lay, [8])
    one = lower_decode_step(lay, [8], layers=range(0, 1))
    assert reduction_latency_s(one, GRID, cfg.n_layer, 0) == pytest.approx(
        reduction_latency_s(whole, GRID)
    )


def test_multi_system_step_adds_the_crossings():
    """On S systems the step is the systems' Programs plus S - 1 activation crossings and
    the tokens' way back: latency + bytes / bandwidth each."""
    cfg, a = resolve_model("llama-3.1-70b"), load_arch("wse3")
    lay = make_layout(cfg, a, precision="fp16", max_context=64, systems="auto")
    assert lay.systems > 1
    t, x, *_ = StepTimer(lay, "analytic").decode_step([10])
    io = a.io
    want = (lay.systems - 1) * (io.intersystem_latency_s + 8192 * 2 / io.intersystem_bytes_per_s)
    want += io.intersystem_latency_s + 4 / io.intersystem_bytes_per_s
    assert x == pytest.approx(want, rel=1e-12)
    per = [run_analytic(lower_decode_step(lay, [10], system=s), a).total_s
           for s in range(lay.systems)]  # fmt: skip
    assert t == pytest.approx(sum(per) + x, rel=1e-9)


def test_layout_dataclass_is_a_plan_the_numerics_can_read():
    cfg = resolve_model("llama-3-8b")
    lay = make_layout(cfg, load_arch("wse2"), precision="fp16", max_context=128, batch=2)
    plan = lay.plan()
    # alternating orientation: q_proj reads x split over the columns (K over 750 columns),
    # attn_proj reads the attention output split over the rows
    assert plan.split_of("q_proj").rows == lay.cols
    assert plan.split_of("attn_proj").rows == lay.rows
    assert plan.kv.pes * plan.kv.block_tokens >= 128
    assert dataclasses.is_dataclass(plan)
