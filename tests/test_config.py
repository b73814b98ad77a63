"""Tests of gpt_workload.config: presets, validation, parameter/FLOP counts, HF config parsing."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

from gpt_workload.config import (
    PRESETS,
    PUBLISHED_TRAINING,
    GPTConfig,
    forward_flops_per_token,
    from_hf_dict,
    list_models,
    to_hf_dict,
)
from gpt_workload.models import resolve_model
from wse_sim.errors import ConfigError

torch.set_num_threads(2)

# Published Cerebras-GPT table, copied from /work/shared/reference/cerebras_gpt.md
# (Cerebras ModelZoo configs/Cerebras_GPT/*.yaml and the HF model cards):
# name: (layers, d_model, heads, d_ff, peak LR, batch sequences, steps, tokens)
PUBLISHED = {
    "cerebras-gpt-111m": (10, 768, 12, 3072, 6.0e-4, 120, 9037, 2.22e9),
    "cerebras-gpt-256m": (14, 1088, 17, 4352, 6.0e-4, 264, 9468, 5.12e9),
    "cerebras-gpt-590m": (18, 1536, 12, 6144, 2.0e-4, 264, 21836, 1.18e10),
    "cerebras-gpt-1.3b": (24, 2048, 16, 8192, 2.0e-4, 528, 24334, 2.63e10),
    "cerebras-gpt-2.7b": (32, 2560, 32, 10240, 2.0e-4, 528, 49041, 5.30e10),
    "cerebras-gpt-6.7b": (32, 4096, 32, 16384, 1.2e-4, 1040, 62522, 1.33e11),
    "cerebras-gpt-13b": (40, 5120, 40, 20480, 1.2e-4, 720, 116223, 2.57e11),  # 720 -> 1080
}

# Nominal size in the model name, for a sanity check of n_params.
NOMINAL = {
    "cerebras-gpt-111m": 111e6,
    "cerebras-gpt-256m": 256e6,
    "cerebras-gpt-590m": 590e6,
    "cerebras-gpt-1.3b": 1.3e9,
    "cerebras-gpt-2.7b": 2.7e9,
    "cerebras-gpt-6.7b": 6.7e9,
    "cerebras-gpt-13b": 13e9,
}

# The HF config.json of cerebras/Cerebras-GPT-111M (relevant fields).
CEREBRAS_111M_HF = {
    "activation_function": "gelu",
    "architectures": ["GPT2Model"],
    "attn_pdrop": 0.0,
    "bos_token_id": 50256,
    "embd_pdrop": 0.0,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_embd": 768,
    "n_head": 12,
    "n_inner": 3072,
    "n_layer": 10,
    "n_positions": 2048,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.0,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 50257,
}


def _valid_kwargs() -> dict:
    return {
        "name": "m",
        "n_layer": 2,
        "n_head": 4,
        "d_model": 64,
        "d_ff": 256,
        "vocab_size": 512,
        "n_positions": 128,
    }


# ---------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_match_published_table(name: str) -> None:
    layers, d, heads, d_ff, lr, batch, steps, tokens = PUBLISHED[name]
    cfg = PRESETS[name]
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ff) == (layers, d, heads, d_ff)
    assert (cfg.vocab_size, cfg.n_positions) == (50257, 2048)
    assert cfg.activation == "gelu" and cfg.layer_norm_eps == 1e-5 and cfg.tie_embeddings
    train = PUBLISHED_TRAINING[name]
    assert train["batch_sequences"] == batch
    assert train["peak_lr"] == lr
    assert train["steps"] == steps
    assert train["tokens"] == tokens
    assert isinstance(train["note"], str)
    # Size in the name within 3 %, and about 20 tokens per parameter (Chinchilla).
    assert cfg.n_params == pytest.approx(NOMINAL[name], rel=0.03)
    assert 19 < tokens / cfg.n_params < 21


def test_13b_batch_note() -> None:
    assert "1080" in PUBLISHED_TRAINING["cerebras-gpt-13b"]["note"]


def test_list_models_in_size_order() -> None:
    models = list_models()
    assert [m.name for m in models] == list(PUBLISHED)
    sizes = [m.n_params for m in models]
    assert sizes == sorted(sizes)
    assert "gpt-tiny" not in [m.name for m in models]
    assert list_models(include_test=True)[-1].name == "gpt-tiny"


def test_gpt_tiny() -> None:
    cfg = resolve_model("gpt-tiny")
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ff) == (2, 64, 4, 256)
    assert (cfg.vocab_size, cfg.n_positions, cfg.d_head) == (512, 128, 16)


# ---------------------------------------------------------------------------- counts vs HF


def _hf_param_count(cfg: GPTConfig) -> tuple[int, int]:
    """(total unique params, wte+wpe params) of GPT2LMHeadModel built on the meta device."""
    hc = GPT2Config(**to_hf_dict(cfg))
    with torch.device("meta"):
        model = GPT2LMHeadModel(hc)
    total = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates ties
    emb = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    return total, emb


@pytest.mark.parametrize(
    "cfg",
    [
        resolve_model("gpt-tiny"),
        dataclasses.replace(PRESETS["cerebras-gpt-111m"], n_layer=1),
        dataclasses.replace(PRESETS["cerebras-gpt-111m"], n_layer=2),
        dataclasses.replace(PRESETS["cerebras-gpt-256m"], n_layer=2),
        dataclasses.replace(PRESETS["cerebras-gpt-590m"], n_layer=1),
        GPTConfig("odd", n_layer=3, n_head=3, d_model=48, d_ff=100, vocab_size=97, n_positions=33),
    ],
    ids=lambda c: f"{c.name}-L{c.n_layer}",
)
def test_param_counts_match_hf(cfg: GPTConfig) -> None:
    total, emb = _hf_param_count(cfg)
    assert cfg.n_params == total
    assert cfg.n_non_embedding_params == total - emb


def test_param_count_scales_with_layers() -> None:
    base = PRESETS["cerebras-gpt-111m"]
    one = dataclasses.replace(base, n_layer=1)
    two = dataclasses.replace(base, n_layer=2)
    per_layer = two.n_params - one.n_params
    assert base.n_params == one.n_params + (base.n_layer - 1) * per_layer


# ---------------------------------------------------------------------------- FLOPs


def test_flops_convention() -> None:
    cfg = resolve_model("gpt-tiny")
    f = forward_flops_per_token(cfg, 16)
    assert f["dense"] == 2 * cfg.n_non_embedding_params
    assert f["lm_head"] == 2 * 64 * 512
    # 2 matmuls x 2 FLOP/MAC x n_layer x d_model x mean causal context (T+1)/2.
    assert f["attention"] == 4 * 2 * 64 * (16 + 1) // 2
    assert f["total"] == f["dense"] + f["lm_head"] + f["attention"]
    assert all(isinstance(v, int) for v in f.values())


def test_flops_attention_matches_kaplan_asymptotically() -> None:
    cfg = PRESETS["cerebras-gpt-111m"]
    t = 2048
    f = forward_flops_per_token(cfg, t)
    kaplan = 2 * cfg.n_layer * t * cfg.d_model  # Kaplan et al. 2020, Table 1
    palm_forward = 4 * cfg.n_layer * cfg.d_model * t  # PaLM App. B: 12LHQT / 3
    assert f["attention"] == pytest.approx(kaplan, rel=1e-3)
    assert f["attention"] == pytest.approx(palm_forward / 2, rel=1e-3)


def test_flops_single_token() -> None:
    cfg = resolve_model("gpt-tiny")
    assert forward_flops_per_token(cfg, 1)["attention"] == 4 * cfg.n_layer * cfg.d_model


@pytest.mark.parametrize("bad", [0, -1, 129, 2.0, "16", None, True])
def test_flops_bad_seq_len(bad) -> None:
    with pytest.raises(ConfigError, match="seq_len"):
        forward_flops_per_token(resolve_model("gpt-tiny"), bad)


# ---------------------------------------------------------------------------- validation


def test_validation_message_n_head() -> None:
    kw = _valid_kwargs() | {"n_head": 5, "d_model": 768}
    with pytest.raises(ConfigError) as err:
        GPTConfig(**kw)
    assert str(err.value) == "model field n_head=5 must divide d_model=768"


@pytest.mark.parametrize(
    "field,value",
    [
        ("n_layer", 0),
        ("n_layer", -3),
        ("n_head", 2.0),
        ("d_model", True),
        ("d_ff", "256"),
        ("vocab_size", None),
        ("n_positions", 0),
        ("layer_norm_eps", 0.0),
        ("layer_norm_eps", -1e-5),
        ("layer_norm_eps", float("nan")),
        ("layer_norm_eps", float("inf")),
        ("layer_norm_eps", "1e-5"),
        ("activation", "relu"),
        ("activation", None),
        ("tie_embeddings", False),
        ("tie_embeddings", "yes"),
        ("name", ""),
        ("name", 3),
    ],
)
def test_validation_rejects(field: str, value) -> None:
    with pytest.raises(ConfigError) as err:
        GPTConfig(**(_valid_kwargs() | {field: value}))
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_numpy_scalars_normalised() -> None:
    cfg = GPTConfig(**(_valid_kwargs() | {"n_layer": np.int64(3), "layer_norm_eps": 1}))
    assert type(cfg.n_layer) is int and cfg.n_layer == 3
    assert type(cfg.layer_norm_eps) is float


def test_frozen() -> None:
    cfg = resolve_model("gpt-tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layer = 3  # type: ignore[misc]


_ANY_VALUE = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.sampled_from(["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"]),
)


@settings(max_examples=300, deadline=None)
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "n_layer",
                "n_head",
                "d_model",
                "d_ff",
                "vocab_size",
                "n_positions",
                "layer_norm_eps",
                "activation",
                "tie_embeddings",
            ]
        ),
        _ANY_VALUE,
        max_size=3,
    )
)
def test_property_only_config_errors(overrides: dict) -> None:
    """Arbitrary field values give a valid config or a one-line ConfigError, nothing else."""
    try:
        cfg = GPTConfig(**(_valid_kwargs() | overrides))
    except ConfigError as err:  # an outcome too: refused in one line
        assert "\n" not in str(err)
    else:
        for field in ("n_layer", "n_head", "d_model", "d_ff", "vocab_size", "n_positions"):
            assert type(getattr(cfg, field)) is int and getattr(cfg, field) > 0
        assert cfg.d_model % cfg.n_head == 0
        assert math.isfinite(cfg.layer_norm_eps) and cfg.layer_norm_eps > 0
        assert cfg.tie_embeddings is True


# ---------------------------------------------------------------------------- HF config


def test_from_hf_dict_cerebras_111m() -> None:
    cfg = from_hf_dict(CEREBRAS_111M_HF, "cerebras-gpt-111m")
    assert cfg == PRESETS["cerebras-gpt-111m"]


def test_from_hf_dict_defaults() -> None:
    d = {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 512, "n_positions": 128}
    cfg = from_hf_dict(d, "x")
    assert cfg.d_ff == 256  # n_inner absent -> 4*n_embd
    assert cfg.activation == "gelu_new"  # HF GPT2Config default
    assert cfg.layer_norm_eps == 1e-5
    assert from_hf_dict(d | {"n_inner": None}, "x").d_ff == 256


def test_hf_config_round_trip_through_transformers() -> None:
    for cfg in list_models(include_test=True):
        d = GPT2Config(**to_hf_dict(cfg)).to_dict()
        assert dataclasses.replace(from_hf_dict(d, "y"), name=cfg.name) == cfg


@pytest.mark.parametrize(
    "key,value",
    [
        ("model_type", "gptj"),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("scale_attn_weights", False),
        ("tie_word_embeddings", False),
        ("add_cross_attention", True),
        ("mup_width_scale", 0.25),
        ("mup_embeddings_scale", 10.0),
        ("activation_function", "relu"),
    ],
)
def test_from_hf_dict_rejects(key: str, value) -> None:
    with pytest.raises(ConfigError) as err:
        from_hf_dict(CEREBRAS_111M_HF | {key: value}, "x")
    msg = str(err.value)
    assert key in msg and "\n" not in msg
    if key != "activation_function":
        assert "not supported" in msg


@pytest.mark.parametrize("key", ["n_layer", "n_head", "n_embd", "vocab_size", "n_positions"])
def test_from_hf_dict_missing_or_bad(key: str) -> None:
    d = dict(CEREBRAS_111M_HF)
    del d[key]
    with pytest.raises(ConfigError, match=key):
        from_hf_dict(d, "x")
    with pytest.raises(ConfigError, match=key):
        from_hf_dict(CEREBRAS_111M_HF | {key: -1}, "x")


def test_from_hf_dict_other_bad_fields() -> None:
    with pytest.raises(ConfigError, match="n_inner"):
        from_hf_dict(CEREBRAS_111M_HF | {"n_inner": 0}, "x")
    with pytest.raises(ConfigError, match="layer_norm_epsilon"):
        from_hf_dict(CEREBRAS_111M_HF | {"layer_norm_epsilon": 0}, "x")
    with pytest.raises(ConfigError, match="n_head"):
        from_hf_dict(CEREBRAS_111M_HF | {"n_head": 5}, "x")
    with pytest.raises(ConfigError):
        from_hf_dict([1, 2], "x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- resolve_model


def test_resolve_preset_case_insensitive() -> None:
    assert resolve_model("Cerebras-GPT-111M") is PRESETS["cerebras-gpt-111m"]
    assert resolve_model(" cerebras-gpt-13b ") is PRESETS["cerebras-gpt-13b"]


def test_resolve_paths(tmp_path) -> None:
    ckpt = tmp_path / "my-model"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(CEREBRAS_111M_HF))
    with pytest.raises(ConfigError, match="holds no weights"):
        resolve_model(str(ckpt))  # a directory must hold weights (issue 17)
    (ckpt / "model.safetensors").write_bytes(b"")  # resolve_model reads only the config
    by_dir = resolve_model(str(ckpt))
    by_file = resolve_model(str(ckpt / "config.json"))
    assert by_dir == by_file
    assert by_dir.name == "my-model"
    assert dataclasses.replace(by_dir, name="cerebras-gpt-111m") == PRESETS["cerebras-gpt-111m"]


def test_resolve_unknown() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_model("foo")
    msg = str(err.value)
    assert msg.startswith("unknown model 'foo': expected one of cerebras-gpt-111m, ")
    assert msg.endswith("a config.json path or a checkpoint directory")
    for name in PRESETS:
        assert name in msg


def test_resolve_malformed_json(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"n_layer": 2,,}')
    with pytest.raises(ConfigError) as err:
        resolve_model(str(tmp_path))
    assert "not valid JSON" in str(err.value) and "\n" not in str(err.value)


def test_resolve_dir_without_config(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config.json"):
        resolve_model(str(tmp_path))
