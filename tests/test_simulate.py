"""End-to-end: the simulated wafer's numerics against float64 NumPy and Hugging Face GPT-2,
and the Report of a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from report_keys import REPORT_KEYS
from transformers import GPT2Config, GPT2LMHeadModel

from gpt_workload.config import GPTConfig
from gpt_workload.models import resolve_model
from gpt_workload.precision import unit_roundoff
from gpt_workload.reference import final_hidden, reference_forward
from gpt_workload.simulate import simulate
from gpt_workload.weights import init_weights, to_hf_state_dict
from wse_sim.arch import load_arch

torch.set_num_threads(2)


def _shaped(name: str, n_layer: int = 2) -> GPTConfig:
    """A Cerebras-GPT preset with fewer layers: widths, heads and vocabulary as published."""
    c = resolve_model(name)
    return GPTConfig(
        name=f"{name}-{n_layer}l",
        n_layer=n_layer,
        n_head=c.n_head,
        d_model=c.d_model,
        d_ff=c.d_ff,
        vocab_size=c.vocab_size,
        n_positions=c.n_positions,
        activation=c.activation,
    )


def _hf_logits(cfg: GPTConfig, w, tokens: np.ndarray) -> np.ndarray:
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_ff,
        activation_function=cfg.activation,
        layer_norm_epsilon=cfg.layer_norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(hf_cfg).eval()
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_hf_state_dict(w).items()}
    model.load_state_dict(sd, strict=False)
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


# a grid small enough that every sequence spans several segments of several tokens (m > 1),
# so the chained attention and the segment reductions are all exercised
ARCH = load_arch("wse2", ["wafer.rows=256", "wafer.cols=48"])


@pytest.mark.parametrize("name", ["cerebras-gpt-111m", "cerebras-gpt-256m"])
def test_fp32_logits_match_numpy_and_hf(name):
    cfg = _shaped(name)
    w = init_weights(cfg, seed=3)
    T = 64
    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(2, T))
    rep = simulate(
        cfg, ARCH, precision="fp32", batch=64, seq_len=T, tokens=tokens, weights=w, keep_logits=True
    )
    assert rep.layout["tokens_per_segment"] > 1 and rep.layout["segments_per_sequence"] > 1
    ref = reference_forward(cfg, w, tokens)
    hf = _hf_logits(cfg, w, tokens)
    assert np.abs(rep.logits - ref).max() <= 1e-4
    assert np.abs(rep.logits - hf).max() <= 1e-4
    assert rep.numerics["max_abs_error_vs_reference"] <= 1e-4
    assert rep.numerics["loss"] == pytest.approx(rep.numerics["reference_loss"], abs=1e-5)


def test_checkpoint_dir_from_save_pretrained(tmp_path):
    torch.manual_seed(0)
    hf_cfg = GPT2Config(
        vocab_size=1000,
        n_positions=128,
        n_embd=96,
        n_layer=2,
        n_head=6,
        n_inner=384,
        activation_function="gelu_new",
    )
    model = GPT2LMHeadModel(hf_cfg).eval()
    model.save_pretrained(tmp_path)
    tokens = np.random.default_rng(1).integers(0, 1000, size=(2, 40))
    with torch.no_grad():
        hf = model(torch.from_numpy(tokens)).logits.numpy()
    rep = simulate(
        str(tmp_path),
        "grid32",
        precision="fp32",
        batch=16,
        seq_len=40,
        tokens=tokens,
        keep_logits=True,
    )
    assert rep.layout["tokens_per_segment"] > 1
    assert np.abs(rep.logits - hf).max() <= 1e-4
    assert rep.numerics["max_abs_error_vs_reference"] <= 1e-4


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_16bit_error_within_roundoff_bound(precision):
    """Error bound, first order: every stored tensor is rounded once (relative error <= u).
    On the path to the logits there are n_r = 2 + 10 n_layer + 2 storage roundings
    (embedding sum; per layer LN, QKV, attention, projection, residual, LN, FFN up, GELU,
    FFN down, residual; final LN) plus the weights' own rounding; LayerNorm renormalises and
    the residual adds do not amplify relative error to first order, so each logit
    z = sum_k h_k w_k is off by at most (n_r + 2) u sum_k |h_k| |w_k| (fp32 accumulation
    error, ~K 2^-24, is negligible beside it)."""
    cfg = _shaped("cerebras-gpt-111m")
    w = init_weights(cfg, seed=4)
    T = 64
    tokens = np.random.default_rng(6).integers(0, cfg.vocab_size, size=(1, T))
    rep = simulate(
        cfg,
        ARCH,
        precision=precision,
        batch=64,
        seq_len=T,
        tokens=tokens,
        weights=w,
        keep_logits=True,
    )
    h = final_hidden(cfg, w, tokens)  # [K, T, d] float64
    S = (np.abs(h) @ np.abs(w.wte.astype(np.float64)).T).max()  # max_v sum_k |h||w|
    n_r = 2 + 10 * cfg.n_layer + 2
    bound = (n_r + 2) * unit_roundoff(precision) * S
    err = rep.numerics["max_abs_error_vs_reference"]
    assert err == pytest.approx(np.abs(rep.logits - reference_forward(cfg, w, tokens)).max())
    assert 0 < err <= bound
    # and the 16-bit run is really 16-bit: its error is far above fp32's
    assert err > 100 * unit_roundoff("fp32") * np.abs(rep.logits).max()


def test_report_fields_and_full_grid():
    rep = simulate("cerebras-gpt-111m", "wse2", check_sequences=0)
    d = rep.to_dict()
    assert set(REPORT_KEYS) <= set(d)
    assert d["grid"] == [994, 750]
    assert rep.pe_utilisation_map.shape == (994, 750)
    assert (
        0
        <= d["pe_utilisation"]["min"]
        <= d["pe_utilisation"]["mean"]
        <= d["pe_utilisation"]["max"]
        <= 1
    )
    assert 0 < d["mfu"] < 1 and 0 < d["io_utilisation"] <= 1
    tot = rep.totals
    assert tot["compute_s"] + tot["fabric_s"] + tot["stall_s"] + tot["idle_s"] == pytest.approx(
        rep.simulated_time_s, rel=1e-9
    )
    assert sum(r["total_s"] for r in rep.breakdown) == pytest.approx(rep.simulated_time_s)
    assert {r["layer"] for r in rep.breakdown} >= set(range(10))
    assert rep.sram_peak_bytes["max"] <= rep.sram_peak_bytes["capacity"]
    assert rep.tokens_per_s == pytest.approx(rep.tokens / rep.simulated_time_s)
    assert rep.mfu == pytest.approx(rep.achieved_flops_per_s / rep.peak_flops_per_s)


def test_numerics_report_says_how_many_sequences():
    rep = simulate("gpt-tiny", "grid32", seq_len=32, batch=8, check_sequences=2)
    n = rep.numerics
    assert n["check_sequences"] == 2 and rep.batch == 8
    assert len(n["next_token_predictions"]) == 2
    assert n["max_abs_error_vs_reference"] < 1e-2


def test_micro_batches_reported():
    cfg = resolve_model("gpt-tiny")
    rep = simulate(cfg, "grid8", seq_len=64, batch=64, check_sequences=0)
    assert rep.micro_batches > 1
    assert rep.to_dict()["micro_batches"] == rep.micro_batches
