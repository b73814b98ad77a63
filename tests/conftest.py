"""Shared tiny models for the tests: small random Hugging Face checkpoints of each family.

``hf_tiny_checkpoint(family, directory, fmt)`` builds a 2-layer model of ``family`` with
every parameter random (biases and norm gains too, so checks exercise them), rounds it to
float32 values, saves it with ``save_pretrained`` and returns the float64 torch model.

``hf_gpt2(seed, **overrides)`` is a small ``GPT2LMHeadModel`` with Hugging Face's own
initialisation (:data:`SMALL_GPT2`); ``save_gpt_tiny(directory)`` writes the ``gpt-tiny``
preset with ``init_weights(seed=0)`` as a safetensors checkpoint (for tests that damage it),
and the ``gpt_tiny_ckpt`` fixture is one such checkpoint shared read-only by a session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: HF config of each tiny test model: 2 layers, 4 query heads of 16; llama and qwen2 use
#: GQA with 2 query heads per K/V head; llama has the Llama 3 rope_scaling rule on with an
#: original context of 16 positions so that T = 24 crosses every branch of the rule.
TINY_HF_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=2, n_head=4, n_embd=64, n_inner=96, vocab_size=97, n_positions=64,
                 activation_function="gelu", layer_norm_epsilon=1e-5),
    "gptj": dict(n_layer=2, n_head=4, n_embd=64, n_inner=96, vocab_size=97, n_positions=64,
                 rotary_dim=8, activation_function="gelu_new", tie_word_embeddings=False),
    "llama": dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  hidden_size=64, intermediate_size=96, vocab_size=97,
                  max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                  tie_word_embeddings=False),
    "qwen2": dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  hidden_size=64, intermediate_size=96, vocab_size=97,
                  max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  use_sliding_window=False, tie_word_embeddings=False),
}  # fmt: skip

_CLASSES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "gptj": ("GPTJConfig", "GPTJForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


def hf_tiny_model(family: str, seed: int = 0, **overrides: Any) -> Any:
    """A random float64 HF model of ``family`` whose parameters are float32 values."""
    import torch
    import transformers

    cfg_cls, model_cls = (getattr(transformers, n) for n in _CLASSES[family])
    hf_cfg = cfg_cls(**{**TINY_HF_CONFIGS[family], **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_cls(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else
                        0.1 * torch.randn_like(p))  # fmt: skip
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model.double()


def hf_tiny_checkpoint(family: str, directory: Path, fmt: str = "safetensors", seed: int = 0,
                       **overrides: Any) -> Any:  # fmt: skip
    """Save :func:`hf_tiny_model` to ``directory`` as ``fmt``: ``"safetensors"``,
    ``"sharded"`` (safetensors in several shards with an index) or ``"bin"``
    (``pytorch_model.bin``). Returns the torch model."""
    model = hf_tiny_model(family, seed, **overrides)
    kw: dict[str, Any] = {"safe_serialization": fmt != "bin"}
    if fmt == "sharded":
        kw["max_shard_size"] = "40KB"
    model.save_pretrained(directory, **kw)
    return model


#: HF config of the small GPT-2 many checkpoint tests save: 2 layers, 4 heads of 8
SMALL_GPT2: dict[str, Any] = dict(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def hf_gpt2(seed: int = 0, **overrides: Any) -> Any:
    """``GPT2LMHeadModel(GPT2Config(**SMALL_GPT2, **overrides))`` with Hugging Face's default
    initialisation after ``torch.manual_seed(seed)``, in eval mode (float32)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**{**SMALL_GPT2, **overrides})).eval()


def save_gpt_tiny(directory: Path, seed: int = 0) -> Path:
    """Write the ``gpt-tiny`` preset with ``init_weights(cfg, seed)`` to ``directory``
    (``config.json`` + ``model.safetensors``); returns ``directory``."""
    from gpt_workload.models import resolve_model
    from gpt_workload.weights import init_weights, save_safetensors

    cfg = resolve_model("gpt-tiny")
    save_safetensors(cfg, init_weights(cfg, seed=seed), directory)
    return directory


@pytest.fixture(scope="session")
def gpt_tiny_ckpt(tmp_path_factory) -> Path:
    """A ``gpt-tiny`` checkpoint directory (:func:`save_gpt_tiny`, seed 0); do not modify it."""
    return save_gpt_tiny(tmp_path_factory.mktemp("gpt_tiny_ckpt"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, tuple[Path, Any]]:
    """``{family: (checkpoint dir, float64 HF model)}`` for the four families (safetensors)."""
    pytest.importorskip("transformers")
    out = {}
    for family in _CLASSES:
        d = tmp_path_factory.mktemp(f"tiny_{family}")
        out[family] = (d, hf_tiny_checkpoint(family, d))
    return out
