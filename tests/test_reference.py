"""Tests of gpt_workload.reference against Hugging Face GPT2LMHeadModel in float64."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

try:
    from transformers.modeling_utils import no_init_weights
except ImportError:  # pragma: no cover - older/newer transformers: just pay for the init
    from contextlib import nullcontext as no_init_weights

from gpt_workload.config import PRESETS, GPTConfig, to_hf_dict
from gpt_workload.models import resolve_model
from gpt_workload.reference import cross_entropy, erf, gelu, reference_forward
from gpt_workload.weights import init_weights, to_hf_state_dict
from wse_sim.errors import CheckpointError, ConfigError

torch.set_num_threads(2)

TINY = resolve_model("gpt-tiny")
# Cerebras-GPT-111M widths and vocabulary, 2 layers, short sequences: fast but full-width.
SHAPE_111M = dataclasses.replace(PRESETS["cerebras-gpt-111m"], n_layer=2)


@functools.lru_cache(maxsize=2)
def _weights_and_sd64(shape: GPTConfig, seed: int) -> tuple[object, dict]:
    """Seeded weights and their float64 torch state dict (independent of the activation, so
    shared by the parametrised activations)."""
    w = init_weights(shape, seed=seed)
    sd = {k: torch.from_numpy(v.astype(np.float64)) for k, v in to_hf_state_dict(w).items()}
    return w, sd


def _hf_float64(cfg: GPTConfig, seed: int) -> tuple[GPT2LMHeadModel, object]:
    """HF model (eager attention, float64, eval) holding our seeded weights.

    Built directly in float64 and without HF's random init (both only cost time).
    """
    w, sd = _weights_and_sd64(dataclasses.replace(cfg, activation="gelu"), seed)
    hc = GPT2Config(**to_hf_dict(cfg), attn_implementation="eager")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with no_init_weights():
            model = GPT2LMHeadModel(hc).eval()
    finally:
        torch.set_default_dtype(old)
    model.load_state_dict(sd, strict=True)
    assert model.lm_head.weight.dtype == torch.float64
    return model, w


def _tokens(cfg: GPTConfig, k: int, t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(k, t))


@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "gelu_pytorch_tanh"])
@pytest.mark.parametrize(
    "cfg,k,t",
    [(TINY, 3, 128), (TINY, 2, 1), (SHAPE_111M, 1, 16)],
    ids=["tiny-T128", "tiny-T1", "111m-shape-L2-T16"],
)
def test_forward_matches_hf_float64(cfg: GPTConfig, k: int, t: int, activation: str) -> None:
    if cfg is SHAPE_111M and activation == "gelu_pytorch_tanh":
        pytest.skip("same formula as gelu_new; covered on the tiny model")
    cfg = dataclasses.replace(cfg, activation=activation)
    model, w = _hf_float64(cfg, seed=11)
    tokens = _tokens(cfg, k, t, seed=5)
    ours = reference_forward(cfg, w, tokens)
    assert ours.dtype == np.float64 and ours.shape == (k, t, cfg.vocab_size)
    with torch.no_grad():
        out = model(torch.from_numpy(tokens), labels=torch.from_numpy(tokens) if t > 1 else None)
    theirs = out.logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    if t > 1:
        loss = cross_entropy(ours, tokens)
        v = cfg.vocab_size
        exact = F.cross_entropy(
            out.logits[:, :-1].reshape(-1, v), torch.from_numpy(tokens[:, 1:]).reshape(-1)
        ).item()
        assert loss == pytest.approx(exact, abs=1e-12)
        # HF's labels= loss upcasts logits to float32 (ForCausalLMLoss), hence the tolerance.
        assert loss == pytest.approx(out.loss.item(), rel=1e-6)


def test_non_default_eps() -> None:
    cfg = dataclasses.replace(TINY, layer_norm_eps=1e-2)
    model, w = _hf_float64(cfg, seed=2)
    tokens = _tokens(cfg, 1, 32, seed=0)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(reference_forward(cfg, w, tokens), theirs, rtol=0, atol=1e-10)


def test_causal_and_batch_independent() -> None:
    w = init_weights(TINY, seed=1)
    tokens = _tokens(TINY, 2, 40, seed=3)
    base = reference_forward(TINY, w, tokens)
    changed = tokens.copy()
    changed[:, 25] = (changed[:, 25] + 1) % TINY.vocab_size
    after = reference_forward(TINY, w, changed)
    np.testing.assert_array_equal(base[:, :25], after[:, :25])
    assert not np.allclose(base[:, 25:], after[:, 25:])
    single = reference_forward(TINY, w, tokens[1:2])
    np.testing.assert_allclose(single[0], base[1], rtol=0, atol=1e-12)


def test_erf_and_gelu() -> None:
    x = np.concatenate([np.linspace(-8, 8, 2001), [0.0, -0.0, 1e-300, 40.0, -40.0]])
    expect = np.array([math.erf(v) for v in x])
    np.testing.assert_array_equal(erf(x), expect)
    y = np.linspace(-5, 5, 101)
    exact = 0.5 * y * (1 + np.array([math.erf(v / math.sqrt(2)) for v in y]))
    np.testing.assert_allclose(gelu(y, "gelu"), exact, rtol=0, atol=1e-15)
    t = torch.from_numpy(y)
    np.testing.assert_allclose(gelu(y, "gelu"), F.gelu(t).numpy(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        gelu(y, "gelu_new"), F.gelu(t, approximate="tanh").numpy(), rtol=0, atol=1e-15
    )
    with pytest.raises(ConfigError):
        gelu(y, "relu")


@pytest.mark.parametrize(
    "tokens,match",
    [
        (np.zeros(5, dtype=np.int64), "shape"),
        (np.zeros((1, 0), dtype=np.int64), "shape"),
        (np.zeros((1, 4)), "dtype"),
        (np.full((1, 4), -1), "-1"),
        (np.full((1, 4), 512), "512"),
        (np.zeros((1, 129), dtype=np.int64), "n_positions"),
    ],
)
def test_token_validation(tokens: np.ndarray, match: str) -> None:
    w = init_weights(TINY, seed=0)
    with pytest.raises(ConfigError, match=match) as err:
        reference_forward(TINY, w, tokens)
    assert "tokens" in str(err.value)


def test_forward_validates_weights() -> None:
    w = init_weights(TINY, seed=0)
    w.layers[1].fc_b[0] = np.nan
    with pytest.raises(CheckpointError, match=r"h\.1\.mlp\.c_fc\.bias contains NaN"):
        reference_forward(TINY, w, np.zeros((1, 4), dtype=np.int64))


def test_cross_entropy_properties() -> None:
    v = 50
    tokens = np.random.default_rng(0).integers(0, v, size=(3, 7))
    assert cross_entropy(np.zeros((3, 7, v)), tokens) == pytest.approx(math.log(v), abs=1e-14)
    logits = np.random.default_rng(1).normal(size=(3, 7, v))
    shifted = cross_entropy(logits + 1e4, tokens)  # stable log-sum-exp
    assert shifted == pytest.approx(cross_entropy(logits, tokens), abs=1e-10)
    # Explicit definition: mean over K*(T-1) of logsumexp(l) - l[next token].
    manual = np.mean(
        [
            math.log(np.exp(logits[i, t]).sum()) - logits[i, t, tokens[i, t + 1]]
            for i in range(3)
            for t in range(6)
        ]
    )
    assert cross_entropy(logits, tokens) == pytest.approx(manual, abs=1e-12)


def test_cross_entropy_errors() -> None:
    with pytest.raises(ConfigError, match="T >= 2"):
        cross_entropy(np.zeros((1, 1, 5)), np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(ConfigError, match="shape"):
        cross_entropy(np.zeros((1, 3, 5)), np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(ConfigError, match="tokens"):
        cross_entropy(np.zeros((1, 3, 5)), np.full((1, 3), 5))
