"""Layer-pipelined mode: SRAM fit (13B rejected with the bytes), roofline, the pipeline's
closed form, the SUMMA closed form against ``gemm_plan``, and logits against the float64
reference."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gpt_workload.config import GPTConfig
from gpt_workload.mappings import parse_mapping
from gpt_workload.mappings.gemm import gemm_plan
from gpt_workload.mappings.layer_pipelined import TICK_CHUNKS, summa_resident_closed_form
from gpt_workload.models import resolve_model
from gpt_workload.reference import reference_forward
from gpt_workload.simulate import simulate
from gpt_workload.weights import init_weights
from wse_sim.arch import load_arch
from wse_sim.errors import FitError
from wse_sim.timing.analytic import run_analytic
from wse_sim.timing.event import run_event


def test_13b_on_wse2_is_rejected_with_bytes_needed_and_available():
    arch = load_arch("wse2")
    with pytest.raises(FitError) as exc:
        parse_mapping("layer_pipelined").lower(
            resolve_model("cerebras-gpt-13b"), arch, 1, 2048, "fp16"
        )
    msg = str(exc.value)
    assert "\n" not in msg
    need = int(re.search(r"needs ([\d,]+) B", msg).group(1).replace(",", ""))
    avail = int(re.search(r"but ([\d,]+) B are usable", msg).group(1).replace(",", ""))
    assert avail == arch.n_pe * arch.pe.sram_usable_bytes
    assert need > avail
    cfg = resolve_model("cerebras-gpt-13b")
    # the weights alone (tied embedding held by the first and the last stage)
    weights = 2 * (cfg.n_params + cfg.vocab_size * cfg.d_model)
    assert f"weights {weights:,} B" in msg


def test_111m_runs_at_or_above_its_roofline():
    rep = simulate(
        "cerebras-gpt-111m",
        "wse2",
        mapping="layer_pipelined",
        fidelity="analytic",
        batch=16,
        seq_len=512,
        check_sequences=0,
    )
    assert rep.simulated_time_s >= rep.roofline["bound_s"] > 0
    assert 0 < rep.mfu < 1
    assert rep.layout["weight_bytes_streamed"] == 0
    assert sum(r["total_s"] for r in rep.breakdown) == pytest.approx(rep.simulated_time_s)


@pytest.mark.parametrize("batch,micro", [(6, 1), (7, 2)])
def test_pipeline_time_matches_its_closed_form(batch, micro):
    """(n_micro + n_stages - 1) ticks, each as long as the slowest active stage: per tick
    max(C, F) + min(C, F) / n + L over the active stages' compute, fabric and latency
    (Program.pipeline_stages); balanced stages give (n_micro + n_stages - 1) x tick."""
    cfg, arch = resolve_model("gpt-tiny"), load_arch("grid32")
    prog = parse_mapping(f"layer_pipelined:micro_batch={micro}").lower(cfg, arch, batch, 32, "fp16")
    prog.validate()
    st = prog.pipeline_stages
    S, n_micro = len(st), -(-batch // micro)
    assert len(prog.kernels) == n_micro + S - 1
    last_full = batch % micro == 0
    clk, n = arch.pe.clock_hz, TICK_CHUNKS
    expected = 0.0
    for t in range(n_micro + S - 1):
        act = [s for s in range(S) if 0 <= t - s < n_micro]
        if not last_full and any(t - s == n_micro - 1 for s in act):
            return  # a smaller last micro-batch: its stage terms are not in the Program
        C = max(st[s].compute_cycles for s in act)
        F = max(st[s].fabric_cycles for s in act)
        L = max(st[s].latency_cycles for s in act)
        expected += max(C, F) + min(C, F) / n + L
    for run in (run_analytic, run_event):
        assert run(prog, arch).total_s == pytest.approx(expected / clk, rel=1e-9)
    # bounds of the GPipe closed form
    tick = [max(s.compute_cycles, s.fabric_cycles) for s in st]
    assert expected <= (n_micro + S - 1) * max(
        max(s.compute_cycles, s.fabric_cycles) * (1 + 1 / n) + s.latency_cycles for s in st
    )
    assert expected >= sum(tick) + (n_micro - 1) * max(tick)


def test_balanced_stages_give_the_gpipe_closed_form():
    """Identical stages (embedding and head folded away by reading the layer stages only):
    steady-state ticks equal, so n_micro ticks of the slowest stage bound the steady state."""
    cfg, arch = resolve_model("gpt-tiny"), load_arch("grid32")
    prog = parse_mapping("layer_pipelined:micro_batch=1").lower(cfg, arch, 8, 32, "fp16")
    st = prog.pipeline_stages
    S = len(st)
    res = run_analytic(prog, arch)
    steady = [kt.duration_s for kt in res.kernels[S - 1 : 8]]  # every stage active
    assert len(steady) == 8 - S + 1 and np.allclose(steady, steady[0])


@pytest.mark.parametrize(
    "M,K,N,pr,pc", [(37, 29, 41, 5, 7), (64, 64, 192, 8, 8), (20, 40, 60, 6, 1)]
)
def test_summa_closed_form_equals_gemm_plan(M, K, N, pr, pc):
    arch = load_arch("wse2")
    p = gemm_plan(
        "summa", M=M, K=K, N=N, pr=pr, pc=pc, precision="fp16", arch=arch, weights="resident"
    )
    c = summa_resident_closed_form(M, K, N, pr, pc, "fp16", arch)
    assert (c.busy, c.overhead, c.sram, c.flops) == (
        p.busy_cycles,
        p.overhead_cycles,
        p.sram_bytes,
        p.flops_total,
    )
    key = lambda t: (t.name, t.link_group, t.max_link_bytes, t.link_bytes, t.hops, t.ramp_bytes)  # noqa
    assert [key(t) for t in c.transfers] == [key(t) for t in p.transfers]


SHAPES = [
    GPTConfig("lp-a", n_layer=2, n_head=4, d_model=64, d_ff=256, vocab_size=96, n_positions=32),
    GPTConfig("lp-b", n_layer=3, n_head=2, d_model=48, d_ff=96, vocab_size=70, n_positions=16),
]


@pytest.mark.parametrize("cfg", SHAPES, ids=lambda c: c.name)
@pytest.mark.parametrize("gemm", ["summa", "ws"])
def test_logits_match_the_reference_fp32(cfg, gemm):
    arch = load_arch("grid32")
    w = init_weights(cfg, 3)
    T = cfg.n_positions
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, T))
    rep = simulate(
        cfg,
        arch,
        mapping=f"layer_pipelined:gemm={gemm}",
        fidelity="analytic",
        precision="fp32",
        batch=2,
        seq_len=T,
        tokens=tokens,
        weights=w,
        keep_logits=True,
    )
    ref = reference_forward(cfg, w, tokens)
    err = np.abs(rep.logits.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err <= 1e-4


@pytest.mark.parametrize("rows,nseg,P", [(3, 3, 4), (1, 4, 2), (4, 1, 3), (2, 2, 1)])
def test_folded_column_multicast_equals_a_per_link_count(rows, nseg, P):
    """Route every source of every logical column explicitly on the physical band (along its
    physical row to the other segment columns, then down and up each physical column) and
    count bytes per directed link and per RAMP."""
    from collections import defaultdict

    from gpt_workload.mappings.layer_pipelined import folded_column_multicast

    rng = np.random.default_rng(rows * 100 + nseg * 10 + P)
    nb = rng.integers(0, 50, size=(rows * nseg, P)).astype(float)
    link, recv = defaultdict(float), defaultdict(float)
    hops = 0
    for i in range(rows * nseg):
        g0, r0 = divmod(i, rows)
        for j in range(P):
            x = nb[i, j]
            if x == 0:
                continue
            c0 = g0 * P + j
            for a in range(c0, (nseg - 1) * P + j):  # a multicast crosses each link once
                link["h", r0, a, a + 1] += x
            for a in range(c0, j, -1):
                link["h", r0, a, a - 1] += x
            for g in range(nseg):
                c = g * P + j
                for r in range(rows):
                    if (g, r) != (g0, r0):
                        recv[r, c] += x
                for r in range(r0, rows - 1):
                    link["v", c, r, r + 1] += x
                for r in range(r0, 0, -1):
                    link["v", c, r, r - 1] += x
                hops = max(hops, abs(c - c0) + max(r0, rows - 1 - r0))
    vert, horiz = folded_column_multicast("B", nb, rows, nseg, P, 7)
    for t, kind in ((vert, "v"), (horiz, "h")):
        loads = [v for k, v in link.items() if k[0] == kind]
        assert t.max_link_bytes == max(loads, default=0.0)
        assert t.link_bytes == pytest.approx(sum(loads))
    assert vert.ramp_bytes == max(recv.values(), default=0.0)
    assert vert.hops == hops


def test_fold_changes_the_gemm_grid_and_off_keeps_the_band():
    """fold=on: GEMMs on a rows (cols // P) x P grid, cols % P columns idle; fold=off: the
    full band; both lower and validate."""
    from gpt_workload.mappings.weight_streaming.plan import choose_P

    cfg, arch = resolve_model("gpt-tiny"), load_arch("grid32")
    P = choose_P(cfg, arch.wafer.cols)
    on = parse_mapping("layer_pipelined").lower(cfg, arch, 4, 32, "fp16")
    off = parse_mapping("layer_pipelined:fold=off").lower(cfg, arch, 4, 32, "fp16")
    for prog in (on, off):
        prog.validate()
    assert on.layout.pipeline.gemm_grid_cols == P
    assert on.layout.pipeline.segment_columns == arch.wafer.cols // P
    assert on.layout.active_pes == sum(on.layout.pipeline.rows_per_stage) * (
        arch.wafer.cols // P * P
    )
    assert off.layout.pipeline.gemm_grid_cols == arch.wafer.cols
    # the weights are held once either way
    for prog in (on, off):
        for st in prog.pipeline_stages:
            assert st.sram_parts["weights"] * st.pes >= st.weight_bytes
