"""The training step plan search (gpt_workload.training.plan_search).

Checked against an exhaustive reference: every candidate timed, the fastest kept. The
lower bound the search prunes with is checked against the timing of every candidate, and
every candidate against the SRAM and batch it must respect.
"""

from __future__ import annotations

import math

import pytest

from gpt_workload.mappings.weight_streaming.head_split import allowed_pes_per_segment
from gpt_workload.mappings.weight_streaming.plan import plan_layout
from gpt_workload.models import resolve_model
from gpt_workload.training import plan_search
from gpt_workload.training.lowering import policy_needs
from gpt_workload.training.plan_search import (
    KEEP_WITHIN,
    candidate_plans,
    lower_bound_s,
    search_training_plan,
)
from gpt_workload.training.train import _time_step, time_training_step
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError

TINY = resolve_model("gpt-tiny")
GRID32 = load_arch("grid32")
CASES = [(TINY, GRID32, 128, 128), (TINY, GRID32, 40, 128), (TINY, GRID32, 96, 64)]


def _timer(cfg, arch, batch, T, mode="auto"):
    return lambda p: _time_step(cfg, arch, batch, T, "fp16", 1, "analytic", mode, p).step_time_s


@pytest.mark.parametrize("cfg,arch,batch,T", CASES)
def test_candidates_fit_and_cover_the_batch(cfg, arch, batch, T):
    usable = arch.pe.sram_usable_bytes
    cands = candidate_plans(cfg, arch, batch, T, "fp16")
    assert cands, "no candidate"
    assert {p.layout.P for p in cands} <= set(allowed_pes_per_segment(cfg, arch.wafer.cols))
    for p in cands:
        b = p.layout.b
        assert (p.n_micro - 1) * b + p.b_last == batch and 1 <= p.b_last <= b
        # the SRAM need, recomputed here from the layout, fits
        L = plan_layout(cfg, arch, b, T, "fp16", P=p.layout.P)
        assert L.n_micro == 1
        need = policy_needs(cfg, arch, L, 2)[0][p.policy]
        assert need == p.sram_need_bytes <= usable


@pytest.mark.parametrize("cfg,arch,batch,T", CASES)
def test_lower_bound_is_below_every_candidates_time(cfg, arch, batch, T):
    timer = _timer(cfg, arch, batch, T)
    for p in candidate_plans(cfg, arch, batch, T, "fp16"):
        assert lower_bound_s(cfg, arch, p, "fp16") <= timer(p) * (1 + 1e-9), p.describe()


@pytest.mark.parametrize("cfg,arch,batch,T", CASES)
def test_search_finds_the_exhaustive_fastest(cfg, arch, batch, T):
    """Reference: time every candidate; the search (pruned by the bound) must land on the
    fastest, or on the fewest-micro-batch plan when that is within KEEP_WITHIN of it."""
    plan_search._CACHE.clear()
    timer = _timer(cfg, arch, batch, T)
    cands = candidate_plans(cfg, arch, batch, T, "fp16")
    times = [timer(p) for p in cands]
    fastest = min(times)
    got = search_training_plan(cfg, arch, batch, T, "fp16", "auto", timer)
    if times[0] <= fastest / (1 - KEEP_WITHIN):
        assert got.analytic_s == times[0]
    else:
        assert got.analytic_s == pytest.approx(fastest, rel=1e-12)
    assert got.analytic_s <= times[0]
    assert got.plan.search["candidates"] == len(cands)
    assert got.plan.search["timed"] <= len(cands)


@pytest.mark.parametrize("mode,allowed", [("off", {"store", "recompute"}), ("on", {"offload"})])
def test_offload_choice_limits_the_policies(mode, allowed):
    for p in candidate_plans(TINY, GRID32, 128, 128, "fp16", mode):
        assert p.policy in allowed and p.checkpoint_offload == mode
    st = time_training_step(TINY, GRID32, 128, 128, "fp16", checkpoint_offload=mode)
    assert st.program.training.activations in allowed


def test_timed_step_is_the_searched_plan_and_never_slower():
    st = time_training_step(TINY, GRID32, 128, 128, "fp16", fidelity="analytic")
    t = st.program.training.plan
    s = t["plan_search"]
    assert s["chosen"]["pes_per_segment"] == t["pes_per_segment"]
    assert s["chosen"]["micro_batches"] == t["micro_batches"]
    assert s["chosen"]["activations"] == t["activations"]
    assert st.step_time_s == pytest.approx(s["analytic_s"], rel=1e-12)
    assert st.step_time_s <= s["fewest_micro_batches_plan"]["analytic_s"]


def test_bad_offload_choice_is_one_line():
    with pytest.raises(ConfigError, match="checkpoint_offload='sometimes'"):
        candidate_plans(TINY, GRID32, 8, 64, "fp16", "sometimes")


def test_wider_segments_fill_the_grid_gptj_wse3():
    """GPT-J at 60 sequences x 2,048 tokens per micro-batch on a CS-3 (T1's micro-batch):
    closed-form occupancy of the segment layout: ``b ceil(T / m)`` segments of ``P`` PEs,
    ``m = ceil(T / floor(slots / b))``, ``slots = rows floor(cols / P)``; the candidates
    include the wider P = 32 at 60 sequences, which keeps more PEs busy than P = 16."""
    cfg, arch = resolve_model("gpt-j-6b"), load_arch("wse3")

    def busy(P, b, T=2048):
        slots = arch.wafer.rows * (arch.wafer.cols // P)
        m = math.ceil(T / min(slots // b, T))
        return b * math.ceil(T / m) * P

    assert busy(16, 60) == 40_980 * 16 and busy(32, 60) == 24_600 * 32
    cands = candidate_plans(cfg, arch, 120, 2048, "fp16")
    got = {(p.layout.P, p.layout.b): p.layout.n_active_pe for p in cands}
    assert got[(16, 60)] == busy(16, 60) and got[(32, 60)] == busy(32, 60)


def test_a_plan_for_another_batch_is_refused():
    from gpt_workload.training.lowering import lower_training

    plan = candidate_plans(TINY, GRID32, 8, 64, "fp16")[0]
    with pytest.raises(ConfigError, match="plan is for batch=8 x seq_len=64, not batch=9"):
        lower_training(TINY, GRID32, 9, 64, "fp16", plan=plan)
