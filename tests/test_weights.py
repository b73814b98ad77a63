"""Tests of gpt_workload.weights: init, validation, HF state dicts and checkpoint files."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import save_gpt_tiny
from transformers import GPT2Config, GPT2LMHeadModel

from gpt_workload.config import PRESETS, to_hf_dict
from gpt_workload.models import resolve_model
from gpt_workload.weights import (
    GPTWeights,
    from_hf_state_dict,
    init_weights,
    load_checkpoint,
    save_safetensors,
    to_hf_state_dict,
)
from wse_sim.errors import CheckpointError, ConfigError

torch.set_num_threads(2)

TINY = resolve_model("gpt-tiny")


def _hf_model(cfg=TINY, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**to_hf_dict(cfg))).eval()


def _assert_matches_model(w: GPTWeights, model: GPT2LMHeadModel) -> None:
    ours = to_hf_state_dict(w)
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


# ---------------------------------------------------------------------------- init


def test_init_deterministic_float32_valid() -> None:
    a = init_weights(TINY, seed=7)
    b = init_weights(TINY, seed=7)
    c = init_weights(TINY, seed=8)
    a.validate(TINY)
    arrays = zip(a.named_arrays(), b.named_arrays(), c.named_arrays(), strict=True)
    for (name, x), (_, y), (_, z) in arrays:
        assert x.dtype == np.float32, name
        np.testing.assert_array_equal(x, y, err_msg=name)
        assert not np.array_equal(x, z), name


def test_init_statistics() -> None:
    cfg = dataclasses.replace(TINY, n_layer=8, d_model=128, n_head=4, d_ff=512)
    w = init_weights(cfg, seed=0, std=0.02)
    resid = 0.02 / math.sqrt(2 * cfg.n_layer)
    proj = np.concatenate([layer.proj_w.ravel() for layer in w.layers])
    fc2 = np.concatenate([layer.fc2_w.ravel() for layer in w.layers])
    fc = np.concatenate([layer.fc_w.ravel() for layer in w.layers])
    assert proj.std() == pytest.approx(resid, rel=0.03)
    assert fc2.std() == pytest.approx(resid, rel=0.03)
    assert fc.std() == pytest.approx(0.02, rel=0.03)
    assert w.wte.std() == pytest.approx(0.02, rel=0.03)
    gains = np.concatenate([layer.ln_1_g for layer in w.layers])
    assert gains.mean() == pytest.approx(1.0, abs=0.02) and gains.std() == pytest.approx(
        0.1, rel=0.1
    )
    biases = np.concatenate([layer.attn_b for layer in w.layers])
    assert biases.std() == pytest.approx(0.02, rel=0.05)  # non-zero biases on purpose


def test_init_bad_std() -> None:
    for bad in (0.0, -1.0, float("nan"), "0.02", True):
        with pytest.raises(ConfigError, match="std"):
            init_weights(TINY, seed=0, std=bad)


def test_nbytes() -> None:
    w = init_weights(TINY, seed=0)
    assert w.nbytes == 4 * TINY.n_params


# ---------------------------------------------------------------------------- validate


def test_validate_wrong_shape_message() -> None:
    cfg = dataclasses.replace(
        PRESETS["cerebras-gpt-111m"], n_layer=4, vocab_size=64, n_positions=16
    )
    w = init_weights(cfg, seed=0)
    w.layers[3].attn_w = np.zeros((768, 2300), np.float32)
    with pytest.raises(CheckpointError) as err:
        w.validate(cfg)
    assert str(err.value) == (
        "weight h.3.attn.c_attn.weight has shape (768, 2300), expected (768, 2304)"
    )


def test_validate_nan_message() -> None:
    cfg = dataclasses.replace(
        PRESETS["cerebras-gpt-111m"], n_layer=1, vocab_size=64, n_positions=16
    )
    w = init_weights(cfg, seed=0)
    w.layers[0].fc_w.ravel()[:12] = np.nan
    with pytest.raises(CheckpointError) as err:
        w.validate(cfg)
    assert str(err.value) == (
        "weight h.0.mlp.c_fc.weight contains NaN (12 of 2359296 values); non-finite weights "
        "are refused as bad input (--allow-nonfinite applies to the numerics, not to weights)"
    )


def test_validate_inf_dtype_layers() -> None:
    w = init_weights(TINY, seed=0)
    w.ln_f_b[3] = -np.inf
    with pytest.raises(CheckpointError, match=r"ln_f\.bias contains Inf \(1 of 64 values\)"):
        w.validate(TINY)
    w = init_weights(TINY, seed=0)
    w.wpe = w.wpe.astype(np.float64)
    with pytest.raises(CheckpointError, match="wpe.weight has dtype float64"):
        w.validate(TINY)
    w = init_weights(TINY, seed=0)
    w.layers.pop()
    with pytest.raises(CheckpointError, match="1 layers"):
        w.validate(TINY)


# ---------------------------------------------------------------------------- state dicts


def test_state_dict_names_match_hf() -> None:
    model = _hf_model()
    w = init_weights(TINY, seed=0)
    ours = to_hf_state_dict(w)
    theirs = model.state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert ours[name].shape == tuple(tensor.shape), name
    assert ours["lm_head.weight"] is w.wte


def test_from_hf_state_dict_round_trip_and_prefixes() -> None:
    model = _hf_model()
    sd = model.state_dict()
    w = from_hf_state_dict(sd, TINY)  # torch tensors, with prefix
    _assert_matches_model(w, model)
    bare = {k.removeprefix("transformer."): v.numpy() for k, v in sd.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((128, 128), bool))  # old-style buffers ignored
    bare["h.0.attn.masked_bias"] = np.float32(-1e4)
    w2 = from_hf_state_dict(bare, TINY)
    _assert_matches_model(w2, model)


def test_from_hf_state_dict_converts_dtypes() -> None:
    model = _hf_model().to(torch.bfloat16)
    w = from_hf_state_dict(model.state_dict(), TINY)
    assert all(arr.dtype == np.float32 for _, arr in w.named_arrays())
    expect = model.transformer.wte.weight.detach().float().numpy()
    np.testing.assert_array_equal(w.wte, expect)
    sd64 = {k: v.astype(np.float64) for k, v in to_hf_state_dict(init_weights(TINY, 1)).items()}
    assert from_hf_state_dict(sd64, TINY).wte.dtype == np.float32


def test_from_hf_state_dict_rejects_integer_tensor() -> None:
    sd = dict(to_hf_state_dict(init_weights(TINY, seed=0)))
    sd["transformer.ln_f.bias"] = np.zeros(64, np.int32)
    with pytest.raises(CheckpointError, match=r"ln_f\.bias has dtype int32"):
        from_hf_state_dict(sd, TINY)


def test_from_hf_state_dict_missing_and_extra() -> None:
    sd = to_hf_state_dict(init_weights(TINY, seed=0))
    missing = {k: v for k, v in sd.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(CheckpointError, match=r"missing tensor h\.1\.mlp\.c_fc\.bias"):
        from_hf_state_dict(missing, TINY)
    extra = dict(sd)
    extra["transformer.h.2.ln_1.weight"] = np.ones(64, np.float32)
    with pytest.raises(CheckpointError, match=r"unexpected tensor h\.2\.ln_1\.weight"):
        from_hf_state_dict(extra, TINY)
    shape = dict(sd)
    shape["transformer.wpe.weight"] = np.zeros((64, 64), np.float32)
    with pytest.raises(CheckpointError, match=r"wpe\.weight has shape \(64, 64\)"):
        from_hf_state_dict(shape, TINY)


# ---------------------------------------------------------------------------- files


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_bin"])
def test_load_hf_save_pretrained(tmp_path, safe: bool) -> None:
    model = _hf_model()
    model.save_pretrained(tmp_path, safe_serialization=safe)
    weight_file = "model.safetensors" if safe else "pytorch_model.bin"
    assert (tmp_path / weight_file).is_file()
    cfg, w = load_checkpoint(tmp_path)
    assert dataclasses.replace(cfg, name=TINY.name) == TINY
    assert cfg.name == tmp_path.name
    _assert_matches_model(w, model)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_bin"])
def test_load_sharded(tmp_path, safe: bool) -> None:
    model = _hf_model()
    model.save_pretrained(tmp_path, safe_serialization=safe, max_shard_size="100KB")
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    assert (tmp_path / index).is_file()
    _, w = load_checkpoint(tmp_path)
    _assert_matches_model(w, model)


def test_save_safetensors_round_trip_and_hf_loads_it(tmp_path) -> None:
    w = init_weights(TINY, seed=3)
    save_safetensors(TINY, w, tmp_path / "ckpt")
    cfg, w2 = load_checkpoint(tmp_path / "ckpt")
    assert dataclasses.replace(cfg, name=TINY.name) == TINY
    for (name, a), (_, b) in zip(w.named_arrays(), w2.named_arrays(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt")
    _assert_matches_model(w, model)


def test_bf16_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    model = _hf_model().to(torch.bfloat16)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(to_hf_dict(TINY)))
    _, w = load_checkpoint(tmp_path)
    for name, tensor in sd.items():
        np.testing.assert_array_equal(to_hf_state_dict(w)[name], tensor.float().numpy())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_corrupt_safetensors(tmp_path, damage: str) -> None:
    save_gpt_tiny(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x13\x37garbage" * 100)
    else:
        path.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert "model.safetensors" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_pytorch_bin(tmp_path) -> None:
    _hf_model().save_pretrained(tmp_path, safe_serialization=False)
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert "pytorch_model.bin" in str(err.value) and "\n" not in str(err.value)


def test_pytorch_bin_without_torch(tmp_path, monkeypatch) -> None:
    _hf_model().save_pretrained(tmp_path, safe_serialization=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(CheckpointError, match="install torch"):
        load_checkpoint(tmp_path)


def test_nan_in_checkpoint(tmp_path) -> None:
    w = init_weights(TINY, seed=0)
    sd = {k: v.copy() for k, v in to_hf_state_dict(w).items() if k != "lm_head.weight"}
    sd["transformer.h.1.attn.c_proj.weight"][2, 5] = np.nan
    from safetensors.numpy import save_file

    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(to_hf_dict(TINY)))
    with pytest.raises(CheckpointError, match=r"h\.1\.attn\.c_proj\.weight contains NaN \(1 of"):
        load_checkpoint(tmp_path)


def test_missing_tensor_in_checkpoint(tmp_path) -> None:
    from safetensors.numpy import save_file

    sd = to_hf_state_dict(init_weights(TINY, seed=0))
    sd = {k: v for k, v in sd.items() if k not in ("lm_head.weight", "transformer.ln_f.bias")}
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(to_hf_dict(TINY)))
    with pytest.raises(CheckpointError, match=r"missing tensor ln_f\.bias"):
        load_checkpoint(tmp_path)


def test_checkpoint_dir_problems(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(to_hf_dict(TINY)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert "model.safetensors" in str(err.value) and "pytorch_model.bin" in str(err.value)


def test_bad_config_json_in_checkpoint(tmp_path) -> None:
    save_gpt_tiny(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(to_hf_dict(TINY) | {"n_head": 3}))
    with pytest.raises(ConfigError, match="n_head"):
        load_checkpoint(tmp_path)


def test_config_weights_mismatch(tmp_path) -> None:
    save_gpt_tiny(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(to_hf_dict(TINY) | {"n_layer": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensor h\.2\."):
        load_checkpoint(tmp_path)
