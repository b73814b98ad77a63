"""The shape-only op graph: model FLOPs vs the closed form per family, operand wiring,
parameter names against the weight containers, backward = 2x forward."""

from __future__ import annotations

import pytest

from gpt_workload import models
from gpt_workload.graph import OP_KINDS

PRESETS = ["cerebras-gpt-111m", "cerebras-gpt-13b", "gpt-j-6b", "llama-2-7b", "llama-3-8b",
           "llama-3.1-70b", "llama-3.1-405b", "qwen2-7b", "qwen2-72b"]  # fmt: skip


def closed_form_flops_per_token(cfg, t: int) -> float:
    """2N + 2dV + causal attention, written from the published architecture of each family
    (not from GPTConfig.n_non_embedding_params): N counts every weight matrix and bias of the
    layers; GQA's K and V are n_kv_heads * d_head wide; SwiGLU has three d x f matrices."""
    d, f, L, V = cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.vocab_size
    dh = d // cfg.n_head
    kv = (cfg.n_kv_heads or cfg.n_head) * dh
    if cfg.family == "gpt2":  # c_attn, c_proj, c_fc, c_proj with biases; two LayerNorms
        per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    elif cfg.family == "gptj":  # q, k, v, out without bias; fc_in, fc_out with bias; one LN
        per_layer = 4 * d * d + (d * f + f) + (f * d + d) + 2 * d
    else:  # llama / qwen2: q, k, v (qwen2: + biases), o; gate, up, down; two RMSNorms
        per_layer = d * d + 2 * d * kv + d * d + 3 * d * f + 2 * d
        if cfg.family == "qwen2":
            per_layer += d + 2 * kv
    n = L * per_layer
    attention = L * 2 * 2 * d * (t + 1) / 2  # QK^T and PV, mean causal context (T+1)/2
    return 2 * n + 2 * d * V + attention


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("t", [128, 2048])
def test_model_flops_equal_closed_form(name: str, t: int) -> None:
    cfg = models.resolve_model(name)
    g = models.build_graph(cfg)
    ratio = g.model_flops_per_token(t) / closed_form_flops_per_token(cfg, t)
    assert abs(ratio - 1) < 0.01


def test_gqa_shrinks_kv_projection_flops() -> None:
    """Llama-3-8B (8 K/V heads) vs the same model with 32: K and V projections 4x smaller."""
    import dataclasses

    gqa = models.resolve_model("llama-3-8b")
    mha = dataclasses.replace(gqa, n_kv_heads=32)
    fl = {}
    for c in (gqa, mha):
        g = models.build_graph(c)
        fl[c.n_kv_heads] = {op.name: g.flops(op, 1, 64)[0] for op in g.layer}
    assert fl[32]["k_proj"] == 4 * fl[8]["k_proj"] and fl[32]["v_proj"] == 4 * fl[8]["v_proj"]
    assert fl[32]["attention"] == fl[8]["attention"] and fl[32]["q_proj"] == fl[8]["q_proj"]


@pytest.mark.parametrize("name", ["gpt-tiny", "gpt-j-6b", "llama-3.1-8b", "qwen2-7b"])
def test_graph_wiring_and_params(name: str) -> None:
    """Every input is produced before it is read, the layer ends in ``out``, every op kind is
    known, and every parameter name is a field of the family's weight container with the
    element count the graph says (checked on seeded weights of a shrunk config)."""
    import dataclasses

    cfg = models.resolve_model(name)
    if cfg.family != "gpt2":  # same structure, small enough to initialise
        cfg = dataclasses.replace(cfg, n_layer=2, d_model=64, n_head=4, d_ff=96, vocab_size=97,
                                  n_kv_heads=min(cfg.n_kv_heads, 2) if cfg.n_kv_heads < cfg.n_head
                                  else 4, rotary_dim=min(cfg.rotary_dim, 16))  # fmt: skip
    g = models.build_graph(cfg)
    w = models.init_model_weights(cfg, seed=0)
    for scope, ops, start in (("prologue", g.prologue, {"tokens"}), ("layer", g.layer, {"x"}),
                              ("epilogue", g.epilogue, {"x"})):  # fmt: skip
        have = set(start)
        for op in ops:
            assert op.kind in OP_KINDS
            assert set(op.inputs) <= have, (scope, op.name)
            have |= set(op.outputs)
            owner = w.layers[0] if scope == "layer" else w
            elems = sum(getattr(owner, p).size for p in op.params)
            if op.kind != "position_add":
                assert elems == g.param_elems(op), (op.name, elems)
            for k in range(len(op.outputs)):
                assert len(g.shape(op, 3, 5, k)) == len(op.shape[k])
        if scope == "layer":
            assert "out" in have
    # every parameter of the container is read by some op exactly once per layer / model
    read = {p for op in g.layer for p in op.params}
    present = {f for f, _ in w.layers[0].arrays()}
    assert read == present


@pytest.mark.parametrize("name", ["cerebras-gpt-111m", "llama-3-8b", "gpt-j-6b"])
def test_backward_is_twice_forward_and_bytes(name: str) -> None:
    cfg = models.resolve_model(name)
    g = models.build_graph(cfg)
    fwd = g.forward_flops(2, 256)["matrix"]
    assert g.backward_flops(2, 256) == 2 * fwd
    q = next(op for op in g.layer if op.name in ("q_proj", "qkv"))
    b = g.bytes(q, 2, 256, 2)
    assert b["params"] == 2 * g.param_elems(q)
    assert b["inputs"] == 2 * 2 * 256 * cfg.d_model
