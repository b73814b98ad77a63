"""``auto``: never returns a mapping slower (by event time) than another it re-timed; records
rejections; works through ``simulate(mapping="auto")``."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_workload.config import GPTConfig
from gpt_workload.mappings.auto import choose_mapping
from gpt_workload.simulate import simulate
from wse_sim.arch import load_arch

ARCH = load_arch("grid32")
CANDS = ["weight_streaming", "summa", "layer_pipelined", "layer_pipelined:gemm=ws"]


def check_property(cfg, batch, seq_len, top):
    res = choose_mapping(cfg, ARCH, batch, seq_len, "fp16", CANDS, top=top)
    timed = [c for c in res.ranking if c.event_s is not None]
    assert res.winner == res.ranking[0].spec
    assert len(timed) == min(top, len(res.ranking))
    assert all(res.ranking[0].event_s <= c.event_s for c in timed)
    # the re-timed are the analytic-fastest
    rest = [c.analytic_s for c in res.ranking if c.event_s is None]
    assert all(max(c.analytic_s for c in timed) <= a for a in rest)
    assert res.reason and "\n" not in res.reason
    return res


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_layer=st.integers(1, 2),
    n_head=st.sampled_from([2, 4]),
    batch=st.integers(1, 4),
    seq_len=st.sampled_from([16, 32]),
    top=st.integers(1, 3),
)
def test_auto_never_returns_a_slower_mapping(n_layer, n_head, batch, seq_len, top):
    cfg = GPTConfig("auto-h", n_layer, n_head, 64, 256, 128, 32)
    check_property(cfg, batch, seq_len, top)


def test_auto_records_rejections_and_reason():
    cfg = GPTConfig("auto-r", 2, 4, 64, 256, 128, 32)
    res = choose_mapping(cfg, ARCH, 2, 32, "fp16", CANDS + ["layer_pipelined:gemm=cannon"], top=2)
    rejected = dict(res.rejected)  # a bare name expands to its knob grid: meshgemm too
    assert "layer_pipelined:gemm=cannon" in rejected
    assert all("square" in why for why in rejected.values())
    assert "fastest" in res.reason
    assert "winner" in res.table()


def test_simulate_auto_reports_the_ranking():
    rep = simulate(
        "gpt-tiny",
        "grid32",
        mapping="auto:candidates=weight_streaming+layer_pipelined",
        fidelity="analytic",
        batch=2,
        seq_len=32,
        check_sequences=1,
    )
    search = rep.layout["mapping_search"]
    assert rep.mapping == search["winner"]
    times = [c["event_s"] for c in search["ranking"] if c["event_s"] is not None]
    assert times == sorted(times)
    assert rep.numerics["max_rel_error_vs_reference"] < 1e-2


def test_top_must_be_positive():
    from wse_sim.errors import ConfigError

    with pytest.raises(ConfigError, match="top=0"):
        choose_mapping(GPTConfig("x", 1, 2, 64, 256, 128, 32), ARCH, 1, 16, "fp16", top=0)
