"""GPT-J, Llama and Qwen2 on the wafer under ``weight_streaming`` (the op-graph lowering).

Expected values come from Hugging Face ``transformers`` (the tiny checkpoints of
``conftest.py``, float64 torch forward), the float64 reference, the op graph's FLOP count and
the closed form of :func:`gpt_workload.config.forward_flops_per_token`.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt_workload.config import forward_flops_per_token
from gpt_workload.mappings import MAPPINGS, parse_mapping
from gpt_workload.mappings.auto import choose_mapping
from gpt_workload.models import build_graph, load_checkpoint, require_lowered, resolve_model
from gpt_workload.precision import unit_roundoff
from gpt_workload.reference import final_hidden, reference_forward
from gpt_workload.simulate import simulate
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError

FAMILIES = ("gptj", "llama", "qwen2")
T = 24  # crosses every branch of the tiny llama's Llama 3 rope scaling (original context 16)


def _tokens(vocab: int, k: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(k, T))


def _hf(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


# P = 4: one query head per PE, a K/V head shared by 2 PEs (gathered, rotated on rows);
# P = 2: two query heads per PE, whole K/V heads on the tile (rotated in place)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mapping", ["weight_streaming", "weight_streaming:pes_per_segment=2"])
def test_fp32_logits_match_hf(tiny_checkpoints, family, mapping) -> None:
    path, model = tiny_checkpoints[family]
    cfg, _ = load_checkpoint(path)
    tokens = _tokens(cfg.vocab_size)
    rep = simulate(str(path), "grid32", mapping=mapping, precision="fp32", batch=64, seq_len=T,
                   tokens=tokens, keep_logits=True)  # fmt: skip
    lay = rep.layout
    assert lay["tokens_per_segment"] > 1 and lay["segments_per_sequence"] > 1
    assert np.abs(rep.logits - _hf(model, tokens)).max() <= 1e-4
    assert rep.numerics["max_abs_error_vs_reference"] <= 1e-4
    assert rep.numerics["loss"] == pytest.approx(rep.numerics["reference_loss"], abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_16bit_error_within_roundoff_bound(tiny_checkpoints, family, precision) -> None:
    """First-order bound, as gpt2's (test_simulate): every op of the graph stores its output
    once (relative error <= u each: ``len(layer)`` roundings per layer, plus the embedding,
    the final norm and the weights' own rounding, plus 2 as gpt2's count); the norms
    renormalise, the residual adds and the SwiGLU product add relative errors to first
    order, so a logit ``z = sum_k h_k w_k (+ b)`` is off by at most ``(n_r + 2) u sum_k
    |h_k| |w_k|``."""
    path, _ = tiny_checkpoints[family]
    cfg, w = load_checkpoint(path)
    tokens = _tokens(cfg.vocab_size, k=1, seed=6)
    rep = simulate(str(path), "grid32", precision=precision, batch=64, seq_len=T,
                   tokens=tokens, keep_logits=True)  # fmt: skip
    h = final_hidden(cfg, w, tokens)
    S = (np.abs(h) @ np.abs(w.head.astype(np.float64)).T).max()
    n_r = 2 + len(build_graph(cfg).layer) * cfg.n_layer + 2
    bound = (n_r + 2) * unit_roundoff(precision) * S
    err = rep.numerics["max_abs_error_vs_reference"]
    assert err == pytest.approx(np.abs(rep.logits - reference_forward(cfg, w, tokens)).max())
    assert 0 < err <= bound
    assert err > 100 * unit_roundoff("fp32") * np.abs(rep.logits).max()  # really 16-bit


@pytest.mark.parametrize("name", ["gpt-j-6b", "llama-3.1-8b", "qwen2-7b", "llama-3.1-70b"])
@pytest.mark.parametrize("fidelity", ["analytic", "event"])
def test_model_flops_per_token_match_graph_and_closed_form(name, fidelity) -> None:
    cfg = dataclasses.replace(resolve_model(name), n_layer=2)
    seq = 512
    rep = simulate(cfg, "wse3", fidelity=fidelity, batch=4, seq_len=seq, check_sequences=0)
    per_token = rep.model_flops / rep.tokens
    graph = build_graph(cfg).model_flops_per_token(seq)
    closed = forward_flops_per_token(cfg, seq)["total"]
    assert per_token == pytest.approx(graph, rel=0.01)
    assert per_token == pytest.approx(closed, rel=0.01)
    assert 0 < rep.mfu <= 1 and rep.simulated_time_s >= rep.roofline["bound_s"]


def _kv_multicast(program):
    k = next(k for k in program.kernels if k.op == "attention")
    return next(t for t in k.transfers if t.name == "K/V multicast")


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.1-70b"])
def test_gqa_kv_multicast_shrinks_by_group(name) -> None:
    """The K/V multicast of a GQA model carries n_head / n_kv_heads fewer bytes than the
    same shape with multi-head attention; so do the K and V projections' weights. (Both
    Llama shapes split K/V evenly over the segment's P = n_head PEs; qwen2-7b's 512 K/V
    features over 28 PEs do not, see the next test.)"""
    gqa = dataclasses.replace(resolve_model(name), n_layer=1)
    mha = dataclasses.replace(gqa, n_kv_heads=gqa.n_head)
    arch = load_arch("wse3")
    ws = parse_mapping(f"weight_streaming:pes_per_segment={gqa.n_head}")
    pg, pm = (ws.lower(c, arch, 8, 2048, "fp16") for c in (gqa, mha))
    lay = [dataclasses.replace(p.layout, search={}) for p in (pg, pm)]
    assert lay[0] == lay[1]
    group = gqa.n_head / gqa.n_kv_heads
    a, b = _kv_multicast(pg), _kv_multicast(pm)
    assert b.max_link_bytes / a.max_link_bytes == pytest.approx(group)
    assert b.link_bytes / a.link_bytes == pytest.approx(group)
    assert b.ramp_bytes / a.ramp_bytes == pytest.approx(group)
    kproj = [next(k for k in p.kernels if k.op == "k_proj") for p in (pg, pm)]
    assert kproj[1].weight_bytes / kproj[0].weight_bytes == pytest.approx(group)


def test_gqa_kv_multicast_uneven_split() -> None:
    """qwen2-7b: 512 K/V features over P = 28 PEs, the busiest PE holds ceil(512 / 28) = 19
    of them (an MHA PE 128): the shrink is 128 / 19, between 7 x (512 / 28) / 19 and 7."""
    gqa = dataclasses.replace(resolve_model("qwen2-7b"), n_layer=1)
    mha = dataclasses.replace(gqa, n_kv_heads=gqa.n_head)
    arch = load_arch("wse3")
    ws = parse_mapping("weight_streaming:pes_per_segment=28")
    pg, pm = (ws.lower(c, arch, 8, 2048, "fp16") for c in (gqa, mha))
    P = pg.layout.pes_per_segment
    assert P == 28
    ratio = _kv_multicast(pm).max_link_bytes / _kv_multicast(pg).max_link_bytes
    assert ratio == pytest.approx((3584 // P) / -(-512 // P))
    assert 7 * (512 / P) / -(-512 // P) <= ratio <= 7


OTHERS = [n for n in MAPPINGS if n not in ("weight_streaming", "auto")]


@pytest.mark.parametrize(
    "spec", OTHERS + ["weight_streaming:reduce=tree", "weight_streaming:attention=sequence"]
)
def test_other_mappings_refuse_new_families(spec) -> None:
    cfg = resolve_model("llama-3-8b")
    m = parse_mapping(spec)
    msg = f"mapping {m.spec} does not lower family llama yet; use weight_streaming"
    with pytest.raises(ConfigError) as e:
        simulate(cfg, "wse3", mapping=spec, check_sequences=0, seq_len=128, batch=1)
    assert str(e.value) == msg
    with pytest.raises(ConfigError, match="does not lower family llama"):
        m.lower(cfg, load_arch("wse3"), 1, 128, "fp16")
    assert m.accepts(resolve_model("gpt-tiny"))


def test_auto_considers_only_mappings_that_accept_the_family() -> None:
    cfg = dataclasses.replace(resolve_model("llama-3.1-8b"), n_layer=1)
    res = choose_mapping(cfg, load_arch("wse3"), 4, 256, "fp16", top=1)
    specs = [c.spec for c in res.ranking] + [s for s, _ in res.rejected]
    assert specs and all(parse_mapping(s).accepts(cfg) for s in specs)
    assert res.winner.startswith("weight_streaming")


def test_cli_refusals_exit_2_one_line() -> None:
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "gpt_workload.cli", *args],
                              capture_output=True, text=True)  # fmt: skip

    p = cli("run", "--model", "llama-3.1-8b", "--arch", "wse3", "--mapping", "cannon")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "mapping cannon does not lower family llama yet; use weight_streaming" in p.stderr
    # train lowers every family (tests/test_training_offload.py) and runs its numerics
    # (tests/test_training_families.py)


def test_train_and_sweeps_still_refuse_new_families() -> None:
    cfg = resolve_model("qwen2-7b")
    require_lowered(cfg)  # wse-sim run lowers it
    require_lowered(cfg, "wse-sim train", "train")  # so does wse-sim train (its timing)
    for job in ("sweep", "experiments"):
        with pytest.raises(ConfigError, match="family qwen2, not lowered yet by "):
            require_lowered(cfg, job, job)
