"""The weight-streaming-mode mappings: registry and knobs, valid Programs, time >= roofline,
and logits that agree across mappings (same model numerics, different reduction order)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gpt_workload.cli import main
from gpt_workload.config import GPTConfig
from gpt_workload.mappings import MAPPINGS, parse_mapping
from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.models import resolve_model
from gpt_workload.precision import unit_roundoff
from gpt_workload.reference import final_hidden, reference_forward
from gpt_workload.simulate import simulate
from gpt_workload.weights import init_weights
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError, FitError
from wse_sim.timing.analytic import run_analytic
from wse_sim.timing.event import run_event

WS_SPECS = [
    "weight_streaming",
    "weight_streaming:reduce=tree,pes_per_segment=2",
    "weight_streaming:attention=sequence",
    "summa",
    "cannon",
    "meshgemm",
    "row_1d",
    "col_1d",
]
TINY = resolve_model("gpt-tiny")
# n_head = 6, not a power of two; d_ff not a multiple of some P
SIX = GPTConfig(
    name="six-head",
    n_layer=2,
    n_head=6,
    d_model=96,
    d_ff=320,
    vocab_size=700,
    n_positions=128,
    activation="gelu_new",
)
GRID = load_arch("grid32")


def test_registry_has_the_gemm_mappings():
    for name in ("weight_streaming", "summa", "cannon", "meshgemm", "row_1d", "col_1d"):
        cls = MAPPINGS[name]
        assert cls.description and cls.source and cls.mode == "weight_streaming"


@pytest.mark.parametrize(
    "spec,match",
    [
        ("bogus", "unknown"),
        ("summa:foo=1", "unknown knob"),
        ("weight_streaming:reduce=ring", "reduce"),
        ("weight_streaming:pes_per_segment=0", "pes_per_segment"),
        ("summa:block_rows=2", "unknown knob"),
        ("cannon:pes_per_segment", "knob=value"),
    ],
)
def test_bad_specs_one_line(spec, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_mapping(spec)
    assert "\n" not in str(e.value)


def test_knob_combinations_that_do_not_fit():
    with pytest.raises(ConfigError, match="pes_per_segment=3"):
        parse_mapping("summa:pes_per_segment=3").lower(TINY, GRID, 4, 32, "fp16")
    with pytest.raises(ConfigError, match="power"):
        parse_mapping("weight_streaming:reduce=tree").lower(SIX, GRID, 4, 32, "fp16")
    narrow = load_arch("grid32", ["wafer.rows=3"])
    with pytest.raises(FitError, match="grid rows"):
        parse_mapping("cannon").lower(TINY, narrow, 2, 32, "fp16")
    with pytest.raises(ConfigError, match="fidelity=packet"):
        simulate("gpt-tiny", "grid8", mapping="summa", fidelity="packet", check_sequences=0)


def test_default_mapping_is_the_lowering_bit_for_bit():
    """The default mapping is the lowering at the layout its search chose (the search and the
    report-only search result goes in ``layout.search``)."""
    a = parse_mapping("weight_streaming").lower(TINY, GRID, 8, 64, "fp16")
    P, m = a.layout.pes_per_segment, a.layout.tokens_per_segment
    b = lower_weight_streaming(TINY, GRID, 8, 64, "fp16", P=P, m=m)
    assert a.kernels == b.kernels and a.name == b.name
    assert set(a.layout.search) == {"layout_search"} and b.layout.search == {}
    assert dataclasses.replace(a.layout, search={}) == b.layout
    da, db = a.describe(), b.describe()
    assert da.pop("layout") != db.pop("layout") and da == db  # mapping, workload, systems


@pytest.mark.parametrize("spec", WS_SPECS)
def test_valid_program_timed_by_both_backends(spec):
    mp = parse_mapping(spec)
    for cfg in (TINY, SIX):
        b = mp.max_batch_single_micro(cfg, GRID, 64, "fp16")
        prog = mp.lower(cfg, GRID, b, 64, "fp16")
        prog.validate()
        assert prog.mapping == mp.spec
        lay = prog.layout
        same = lower_weight_streaming(
            cfg, GRID, b, 64, "fp16", P=lay.pes_per_segment, m=lay.tokens_per_segment
        )
        # the default lowering counts K // P per PE (it drops d_ff % P columns of FFN down
        # when P does not divide d_ff: 320 % 6 here); the block GEMMs count K N / P exactly
        assert prog.flops == pytest.approx(same.flops, rel=0 if cfg is TINY else 5e-3)
        ta, te = run_analytic(prog, GRID), run_event(prog, GRID)
        assert ta.total_s > 0 and te.total_s > 0
        assert te.total_s == pytest.approx(ta.total_s, rel=0.25)


SMALL = load_arch("wse2", ["wafer.rows=24", "wafer.cols=36"])  # 864 PEs


@pytest.mark.parametrize("spec", WS_SPECS)
@pytest.mark.parametrize("fidelity", ["analytic", "event"])
def test_time_at_least_roofline(spec, fidelity):
    for model, arch, T in ((TINY, "grid32", 64), (SIX, SMALL, 128)):
        rep = simulate(model, arch, mapping=spec, fidelity=fidelity, seq_len=T, check_sequences=0)
        assert rep.mapping == parse_mapping(spec).spec
        assert rep.simulated_time_s >= rep.roofline["bound_s"] > 0
        assert 0 < rep.mfu < 1


def _logits(cfg, spec, w, tokens, precision="fp32"):
    rep = simulate(
        cfg,
        GRID,
        mapping=spec,
        precision=precision,
        batch=8,
        seq_len=tokens.shape[1],
        tokens=tokens,
        weights=w,
        keep_logits=True,
    )
    return rep


@pytest.mark.parametrize("cfg", [TINY, SIX], ids=lambda c: c.name)
def test_fp32_logits_agree_across_mappings(cfg):
    """fp32: the mappings differ only in the order of fp32 sums, so the logits agree with the
    default mapping's and the float64 reference's within 1e-4 of the largest logit."""
    w = init_weights(cfg, seed=7)
    tokens = np.random.default_rng(8).integers(0, cfg.vocab_size, size=(2, 48))
    ref = reference_forward(cfg, w, tokens)
    base = _logits(cfg, "weight_streaming", w, tokens)
    assert base.layout["segments_per_sequence"] > 1 and base.layout["tokens_per_segment"] > 1
    scale = np.abs(ref).max()
    for spec in WS_SPECS[1:]:
        rep = _logits(cfg, spec, w, tokens)
        assert np.abs(rep.logits - base.logits).max() <= 1e-4 * scale, spec
        assert np.abs(rep.logits - ref).max() <= 1e-4 * scale, spec
        assert rep.numerics["max_abs_error_vs_reference"] <= 1e-4 * scale


def test_fp16_error_within_roundoff_bound():
    """Same first-order bound as tests/test_simulate.py: n_r storage roundings on the path to
    the logits plus the weights' own, (n_r + 2) u sum_k |h_k| |w_k|."""
    cfg = SIX
    w = init_weights(cfg, seed=9)
    tokens = np.random.default_rng(10).integers(0, cfg.vocab_size, size=(1, 48))
    h = final_hidden(cfg, w, tokens)
    S = (np.abs(h) @ np.abs(w.wte.astype(np.float64)).T).max()
    bound = (2 + 10 * cfg.n_layer + 2 + 2) * unit_roundoff("fp16") * S
    for spec in WS_SPECS:
        rep = _logits(cfg, spec, w, tokens, precision="fp16")
        assert 0 < rep.numerics["max_abs_error_vs_reference"] <= bound, spec


def test_cli_mapping_flag_and_list(capsys):
    assert main(["run", "--mapping", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wse-sim: error: mapping=") and "\n" not in err
    assert main(["mappings", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("weight_streaming", "summa", "cannon", "meshgemm", "row_1d", "col_1d"):
        assert name in out
    args = ["run", "--model", "gpt-tiny", "--arch", "grid32", "--seq-len", "32"]
    assert main([*args, "--mapping", "meshgemm", "--fidelity", "analytic"]) == 0


@pytest.mark.parametrize("algorithm", ["summa", "cannon", "meshgemm"])
def test_block_gemm_chunks_fit_and_cost_no_more_than_column_chunks(algorithm):
    """A block GEMM whose buffers overflow SRAM is cut into c_k x c_n sub-GEMMs: the chosen
    cut fits the budget, its PE cycles (c x one sub-GEMM's) are no more than the cheapest
    column-only cut's, and its link bytes (c x one sub-GEMM's) are no more either (K chunks
    move disjoint parts of A and B; N chunks move A again)."""
    from types import SimpleNamespace

    from gpt_workload.mappings.gemm import gemm_plan
    from gpt_workload.mappings.weight_streaming.variants import _BlockGemm

    arch = load_arch("wse2")
    P, pr, M, K, N = 8, 8, 48, 2048, 1024
    bld = SimpleNamespace(L=SimpleNamespace(P=P), cfg=TINY, precision="fp16", arch=arch)
    strat = _BlockGemm(algorithm)

    def plan(k, n):
        return gemm_plan(
            algorithm, M=M, K=k, N=n, pr=pr, pc=P, precision="fp16", arch=arch, weights="stream"
        )

    budget = plan(K, N).sram_bytes // 4  # the whole GEMM does not fit
    c, chosen = strat.chunked_plan(bld, "ffn_down", M, K, N, pr, budget)
    assert c > 1 and chosen.sram_bytes <= budget
    col_only = []
    c_n = 1
    while N // c_n >= P:
        p = plan(K, -(-N // c_n))
        if p.sram_bytes <= budget:
            col_only.append((c_n * p.cycles, c_n * p.link_bytes))
        c_n *= 2
    assert col_only, "the column-only cut should fit at some c_n for this shape"
    assert c * chosen.cycles <= min(x[0] for x in col_only) * (1 + 1e-12)
    assert c * chosen.link_bytes <= min(x[1] for x in col_only) * (1 + 1e-12)


def test_block_gemm_refuses_when_no_chunk_fits():
    """No cut fits a 1-byte budget: a one-line FitError naming the kernel and the bytes."""
    from types import SimpleNamespace

    from gpt_workload.mappings.weight_streaming.variants import _BlockGemm

    bld = SimpleNamespace(
        L=SimpleNamespace(P=4), cfg=TINY, precision="fp16", arch=load_arch("wse2")
    )
    with pytest.raises(FitError, match=r"kernel qkv .* B per PE .* 1 B free") as e:
        _BlockGemm("summa").chunked_plan(bld, "qkv", 16, 256, 256, 4, 1)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("layer_pipelined:layers_per_stage=1000", r"layers_per_stage=1000 .* 1\.\.2 \(n_layer"),
        ("layer_pipelined:micro_batch=1000", r"micro_batch=1000 .* 0\.\.4 \(the batch"),
        ("layer_pipelined:gemm=cannon,fold=off", r"gemm=cannon needs a square block .*gemm=summa"),
        ("weight_streaming:pes_per_segment=3", r"pes_per_segment=3 .* allowed: 1, 2, 4"),
        ("weight_streaming:tokens_per_segment=999", r"tokens_per_segment=999 .* 1\.\.16"),
    ],
)
def test_out_of_range_knobs_refused_in_one_line(spec, match):
    """Knob values the model or workload cannot take (found by a user trial: they were
    silently capped, or the advice in the message led to another error) are refused with the
    allowed range, derived here from gpt-tiny (2 layers, 4 heads) at batch 4 x 16 tokens."""
    assert TINY.n_layer == 2 and TINY.n_head == 4
    with pytest.raises((ConfigError, FitError), match=match) as e:
        parse_mapping(spec).lower(TINY, load_arch("grid32"), 4, 16, "fp16")
    assert "\n" not in str(e.value)
