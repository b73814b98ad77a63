"""Training timing of every family, its SRAM accounting and checkpoint offload.

Expected values are closed forms written here from the configs (FLOPs, checkpoint bytes,
I/O bounds), not read back from the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gpt_workload.mappings.weight_streaming.plan import plan_layout
from gpt_workload.models import parse_hf_dict, resolve_model
from gpt_workload.training.activations import layer_memory
from gpt_workload.training.lowering import lower_training, plan_training, policy_needs
from gpt_workload.training.train import time_training_step, train
from tests.conftest import TINY_HF_CONFIGS
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError, FitError

GRID32 = load_arch("grid32")


def tiny(family: str, **over):
    """The tiny test model of ``family`` (tests/conftest.py), seq up to 64."""
    d = {**TINY_HF_CONFIGS[family], "model_type": family, **over}
    return parse_hf_dict(d, f"tiny-{family}")


def closed_form_train_flops(cfg, batch: int, T: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward): 6 x the matrix
    parameters x tokens, plus 3 x the causal attention products (Q K^T and P V: 4 H dh
    FLOP per (query, key) pair, T (T + 1) / 2 pairs per sequence and layer)."""
    d, ff, V, H, dh = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_head, cfg.d_head
    kv = cfg.n_kv_heads * dh
    attn = d * d + 2 * d * kv + d * d  # Q, K, V, output projection
    mlp = (3 if cfg.gated_mlp else 2) * d * ff
    n_mat = cfg.n_layer * (attn + mlp) + d * V  # the LM head's matrix
    pairs = batch * T * (T + 1) // 2
    return 6 * n_mat * batch * T + 3 * 4 * H * dh * pairs * cfg.n_layer


def model_flops(prog, phases=("forward", "backward")) -> float:
    """FLOPs of the program's kernels of ``phases`` (default: all but recomputation)."""
    return sum(k.flops for k in prog.kernels if k.phase in phases)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_kernel_phases_split_the_step_as_forward_and_backward(family):
    """A kernel's phase is a typed field set by the lowering: the forward kernels carry one
    third of the step's closed-form model FLOPs (2 N + attention per token), the backward ones
    two thirds; with recomputation the recompute kernels redo forward work only."""
    cfg = tiny(family, vocab_size=96)
    batch, T = 4, 64
    prog = lower_training(cfg, GRID32, batch, T, "fp16", checkpoint_offload="on")
    prog.validate()
    want = closed_form_train_flops(cfg, batch, T)
    assert model_flops(prog, ("forward",)) == pytest.approx(want / 3, rel=1e-9)
    assert model_flops(prog, ("backward",)) == pytest.approx(2 * want / 3, rel=1e-9)
    rec = [k for k in prog.kernels if k.phase == "recompute"]
    assert rec and all(k.op.endswith(("_recompute", "_recompute_bwd")) for k in rec)
    assert 0 < model_flops(prog, ("recompute",)) <= want / 3


@pytest.mark.parametrize("family", ["gpt2", "gptj", "llama", "qwen2"])
@pytest.mark.parametrize("policy", ["off", "on"])
def test_training_flops_match_the_closed_form(family, policy):
    """Every family's step (one micro-batch simulated whole) has 6 N tokens + 3 x attention
    model FLOPs; GPT-J's parallel block and Llama's SwiGLU / GQA K/V included. (A width
    that P does not divide is padded to a multiple of P on the PEs: vocab 96, not 97.)"""
    cfg = tiny(family, vocab_size=96)
    batch, T = 4, 64
    prog = lower_training(cfg, GRID32, batch, T, "fp16", checkpoint_offload=policy)
    assert prog.workload.micro_batches == len(prog.training.simulated_micro_batches)
    want = closed_form_train_flops(cfg, batch, T)
    assert model_flops(prog) == pytest.approx(want, rel=1e-9)


def test_gptj_6b_trains_on_a_cs3_as_its_own_family():
    """T1's scenario runs as GPT-J (its own ops: rotary, parallel block, untied head with a
    bias), timing only, with the closed-form model FLOPs."""
    rep = train("gpt-j-6b", "wse3", batch=120, seq_len=2048, check_sequences=0,
                fidelity="analytic")  # fmt: skip
    assert rep.samples_per_s > 0
    assert rep.training["micro_batches"] * rep.training["sequences_per_micro_batch"] >= 120
    # biases and norm gains are in 6N too: within 0.1 %
    cfg = resolve_model("gpt-j-6b")
    want = closed_form_train_flops(cfg, 120, 2048)
    assert rep.model_flops_per_step["total"] == pytest.approx(want, rel=1e-3)
    prog = lower_training(cfg, load_arch("wse3"), 120, 2048, "fp16")
    names = {k.op for k in prog.kernels}
    assert {"q_proj", "rotary_q", "attention_bwd", "ffn_up_dW", "gelu_recompute_bwd"} <= names
    assert "qkv" not in names  # not a GPT-2 proxy


@pytest.mark.parametrize("fidelity", ["analytic", "event"])
def test_offload_time_is_at_least_its_io_bound(fidelity):
    """With offload every layer's checkpoint (b T d x 2 bytes) leaves over the egress and
    comes back over the ingress: the step takes at least (checkpoint + gradient bytes) /
    egress and (checkpoint + weight bytes) / ingress, at the preset and at a slow egress."""
    cfg = dataclasses.replace(resolve_model("gpt-tiny"), n_layer=4)
    batch, T, s = 8, 128, 2
    for egress in (150e9, 2e8):
        arch = GRID32.with_overrides([f"io.egress_bytes_per_s={egress!r}"])
        stp = time_training_step(cfg, arch, batch, T, "fp16", 1, fidelity, "on")
        plan = stp.program.training.plan
        assert stp.program.training.activations == plan["activations"] == "offload"
        ckpt = cfg.n_layer * batch * T * cfg.d_model * s
        assert plan["checkpoint_offload"]["bytes_out_per_step"] == ckpt
        # every parameter's gradient leaves once per micro-batch, at least
        grads = cfg.n_params * s * stp.micro_batches
        bound_out = (ckpt + grads) / arch.io.egress_bytes_per_s
        assert stp.step_time_s >= bound_out
        weights = 2 * cfg.n_non_embedding_params * s * stp.micro_batches  # forward + backward
        assert stp.step_time_s >= (ckpt + weights) / arch.io.ingress_bytes_per_s


def test_offload_costs_io_time_next_to_on_wafer_checkpoints():
    """Same plan but for where checkpoints live: offload is never faster on a slow link."""
    cfg = dataclasses.replace(resolve_model("gpt-tiny"), n_layer=4)
    arch = GRID32.with_overrides(["io.egress_bytes_per_s=2e8", "io.ingress_bytes_per_s=2e8"])
    on = time_training_step(cfg, arch, 8, 128, "fp16", 1, "analytic", "on")
    off = time_training_step(cfg, arch, 8, 128, "fp16", 1, "analytic", "off")
    assert on.micro_batches == off.micro_batches
    assert on.step_time_s > off.step_time_s


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["gpt2", "gptj", "llama"]),
    sram_kib=st.integers(12, 96),
    batch=st.integers(1, 48),
    mode=st.sampled_from(["auto", "on", "off"]),
)
@example(family="gpt2", sram_kib=20, batch=48, mode="off")
def test_sram_per_pe_never_exceeds_capacity(family, sram_kib, batch, mode):
    """Whatever the plan, no kernel of the step reports more SRAM than a PE has, and the
    chosen policy's need fits."""
    cfg = tiny(family)
    arch = GRID32.with_overrides([f"pe.sram_bytes={sram_kib * 1024}"])
    try:
        prog = lower_training(cfg, arch, batch, 64, "fp16", checkpoint_offload=mode)
    except FitError:
        prog = None
    assume(prog is not None)  # nothing fits: refused in one line, nothing to account
    usable = arch.pe.sram_usable_bytes
    t = prog.training.plan
    assert t["sram_need_bytes"] <= usable
    assert t["sram_need_by_policy_bytes"][t["activations"]] == t["sram_need_bytes"]
    assert max(k.sram_bytes for k in prog.kernels) <= usable


def test_kept_activations_leave_out_recomputable_elementwise_outputs():
    """The backward keeps no element-wise output whose inputs it keeps (LayerNorm, GELU,
    SiLU and the SwiGLU product are recomputed); GPT-2 keeps x, q, k, v, attention out,
    x + attn and the GELU input: 6 d/P + d_ff/P elements per token, not 8 d/P + 2 d_ff/P."""
    cfg = resolve_model("cerebras-gpt-6.7b")
    mem = layer_memory(cfg, 32, 1, 9, 2)
    assert set(mem.kept) == {"x", "q", "k", "v", "o", "h1", "u"}
    f, ff, m, s = 4096 // 32, 16384 // 32, 9, 2
    stats = 2 * m * 2 * 4  # two LayerNorms' mean and 1/std, fp32
    assert mem.kept_bytes == (6 * m * f + m * ff) * s + stats
    llama = layer_memory(resolve_model("llama-3-8b"), 32, 1, 9, 2)
    assert not {"a", "m", "s", "p"} & set(llama.kept)


def test_one_trillion_parameter_gpt_needs_offload_on_a_cs3():
    """d 25,600, 128 layers, 160 heads: its checkpoints alone (128 x 320 B per PE at one
    token per segment) overflow a PE next to the weight buffers; with offload it fits."""
    base = resolve_model("cerebras-gpt-6.7b")
    cfg = dataclasses.replace(base, name="gpt-1t", n_layer=128, n_head=160, n_kv_heads=160,
                              d_model=25600, d_ff=102400)  # fmt: skip
    assert cfg.n_params > 1e12
    wse3 = load_arch("wse3")
    with pytest.raises(FitError, match="checkpoint_offload=auto or on may fit"):
        plan_training(cfg, wse3, 2, 2048, "fp16", "off")
    p = plan_training(cfg, wse3, 2, 2048, "fp16", "auto")
    assert p.policy == "offload" and p.sram_need_bytes <= p.sram_usable_bytes


def test_bad_offload_values_are_one_line_errors(tmp_path):
    for bad in ("maybe", "", None, 1, True):
        with pytest.raises(ConfigError, match="checkpoint_offload=.* is not allowed: expected "
                                              "one of auto, on, off"):  # fmt: skip
            plan_training(resolve_model("gpt-tiny"), GRID32, 2, 64, "fp16", bad)
    with pytest.raises(ConfigError, match="checkpoint_offload='x'"):
        train("gpt-tiny", "grid32", check_sequences=0, checkpoint_offload="x")
    p = subprocess.run([sys.executable, "-m", "gpt_workload.cli", "train", "--model",
                        "gpt-tiny", "--arch", "grid32", "--checkpoint-offload", "sometimes"],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "checkpoint_offload='sometimes' is not allowed" in p.stderr


def test_offload_bytes_reported_per_step():
    """The Program carries the checkpoint bytes (n_layer x batch x T x d x 2 each way) and
    they are the only difference in streamed bytes between offload on and off."""
    cfg = dataclasses.replace(resolve_model("gpt-tiny"), n_layer=3)
    on = lower_training(cfg, GRID32, 8, 128, "fp16", checkpoint_offload="on")
    off = lower_training(cfg, GRID32, 8, 128, "fp16", checkpoint_offload="off")
    assert on.workload.micro_batches == off.workload.micro_batches == 1
    ck = 3 * 8 * 128 * cfg.d_model * 2
    assert on.training.checkpoint_bytes_simulated == ck
    assert off.training.checkpoint_bytes_simulated == 0
    assert on.weight_bytes_streamed - off.weight_bytes_streamed == ck
    assert on.grad_bytes_streamed - off.grad_bytes_streamed == ck


@pytest.mark.parametrize("family", ["gpt2", "gptj", "llama"])
def test_a_sequence_too_big_for_one_pass_is_split(family):
    """On an 8x8 grid with 8 KiB PEs one sequence of 64 tokens (8 per segment) fits no
    policy, so it runs in passes of fewer tokens; the step's attention still covers the whole
    causal context (FLOPs of the closed form for T = 64) and the earlier passes' K/V move
    over the I/O: each pass's K/V (T/k x 2 kv x 2 bytes per layer) leave once."""
    cfg = tiny(family, vocab_size=96)
    arch = load_arch("grid8").with_overrides(["pe.sram_bytes=8192"])
    whole = plan_layout(cfg, arch, 1, 64, "fp16")  # the forward alone fits one pass
    assert whole.n_micro == 1
    needs, _ = policy_needs(cfg, arch, whole, 2)  # training it does not
    assert min(needs.values()) > arch.pe.sram_usable_bytes
    p = plan_training(cfg, arch, 2, 64, "fp16")
    assert p.passes > 1 and p.pass_tokens * p.passes >= 64 and p.n_micro == 2 * p.passes
    assert 64 % p.passes == 0  # then the passes are exact and so are the FLOPs
    prog = lower_training(cfg, arch, 2, 64, "fp16")
    n_sim = len(prog.training.simulated_micro_batches)
    assert model_flops(prog) * p.n_micro / n_sim == pytest.approx(
        closed_form_train_flops(cfg, 2, 64), rel=1e-9)
    kv_out = cfg.n_layer * p.pass_tokens * 2 * cfg.kv_dim * 2
    assert prog.training.cross_pass_bytes_simulated == n_sim * kv_out
