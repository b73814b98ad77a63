"""The ``llama`` family: Llama 2 / Llama 3 / Llama 3.1 (``LlamaForCausalLM``).

Rotary positions on the whole head (``rotate_half`` pairing) with ``rope_theta`` and the
Llama 3 ``rope_scaling`` rule, RMSNorm before attention and before the MLP, grouped-query
attention (``num_key_value_heads``), SwiGLU MLP ``down(silu(gate(x)) * up(x))``, an untied LM
head and no biases (unless ``attention_bias`` / ``mlp_bias`` say so). Source of the math: HF
``transformers/models/llama/modeling_llama.py`` and Touvron et al. 2023 (arXiv 2307.09288),
Grattafiori et al. 2024 (arXiv 2407.21783).
"""

from __future__ import annotations

from typing import Any

from gpt_workload.config import GPTConfig
from gpt_workload.graph import Op, attention, epilogue, linear, norm, rotary
from gpt_workload.models.common import (
    check_heads,
    flag,
    json_value,
    positive_int,
    positive_real,
    rope_scaling,
)
from gpt_workload.rope import RopeScaling
from wse_sim.errors import ConfigError

__all__ = [
    "ARCHITECTURE",
    "HF_LAYER_NAMES",
    "HF_TOP_NAMES",
    "MODEL_TYPE",
    "PRESETS",
    "SOURCES",
    "build_epilogue",
    "build_layer",
    "from_hf_dict",
    "parse_llama_like",
    "to_hf_dict",
]

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"

#: :class:`gpt_workload.models.weights.DecoderLayer` field -> HF name inside
#: ``model.layers.{i}.`` (``.bias`` names are used only when the config has the bias).
HF_LAYER_NAMES: dict[str, str] = {
    "norm_1_g": "input_layernorm.weight",
    "q_w": "self_attn.q_proj.weight",
    "q_b": "self_attn.q_proj.bias",
    "k_w": "self_attn.k_proj.weight",
    "k_b": "self_attn.k_proj.bias",
    "v_w": "self_attn.v_proj.weight",
    "v_b": "self_attn.v_proj.bias",
    "o_w": "self_attn.o_proj.weight",
    "o_b": "self_attn.o_proj.bias",
    "norm_2_g": "post_attention_layernorm.weight",
    "gate_w": "mlp.gate_proj.weight",
    "gate_b": "mlp.gate_proj.bias",
    "up_w": "mlp.up_proj.weight",
    "up_b": "mlp.up_proj.bias",
    "down_w": "mlp.down_proj.weight",
    "down_b": "mlp.down_proj.bias",
}
#: :class:`DecoderWeights` top-level field -> HF name; the layer prefix is below.
HF_TOP_NAMES: dict[str, str] = {
    "wte": "model.embed_tokens.weight",
    "norm_f_g": "model.norm.weight",
    "lm_head_w": "lm_head.weight",
}
HF_LAYER_PREFIX = "model.layers.{i}."
#: Non-parameter buffers some checkpoints carry (older ``rotary_emb.inv_freq``): skipped.
HF_IGNORED = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"

_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads")

#: Fields the Llama layer (:func:`build_layer`) fixes (checked by ``models.check_family``).
FIXED = {
    "norm": "rmsnorm",
    "rotary_dim": lambda c: c.d_head,
    "rotary_interleaved": False,
    "gated_mlp": True,
    "parallel_block": False,
    "lm_head_bias": False,
}


def parse_llama_like(
    d: dict, name: str, source: str, *, family: str, qkv_bias: bool | None = None
) -> GPTConfig:
    """Parse a Llama-style ``config.json`` (also used by :mod:`.qwen2`).

    Keys: ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``vocab_size``, ``max_position_embeddings`` (required);
    ``num_key_value_heads`` (default: heads), ``rms_norm_eps`` (1e-6, the HF default),
    ``rope_theta`` (10000), ``rope_scaling`` (null or llama3), ``hidden_act`` (must be
    ``silu``), ``tie_word_embeddings`` (false), ``attention_bias``, ``mlp_bias`` (false),
    ``head_dim`` (null or hidden_size / heads).

    Args:
        qkv_bias: force the Q/K/V bias (Qwen2: always true); ``None``: ``attention_bias``.

    Raises:
        ConfigError: one line naming the key and value.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
    hidden = positive_int(d, "hidden_size", source)
    heads = positive_int(d, "num_attention_heads", source)
    kv = positive_int(d, "num_key_value_heads", source, default=heads)
    check_heads(source, hidden, heads, kv, _KEYS)
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        raise ConfigError(
            f"{source} field head_dim={json_value(head_dim)} is not supported: expected "
            f"hidden_size / num_attention_heads = {hidden // heads}"
        )
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f'{source} field hidden_act={json_value(act)} is not supported: "silu"')
    if d.get("use_sliding_window") is True:
        raise ConfigError(f"{source} field use_sliding_window=true is not supported")
    attention_bias = flag(d, "attention_bias", source, False)
    return GPTConfig(
        name=name,
        family=family,
        n_layer=positive_int(d, "num_hidden_layers", source),
        n_head=heads,
        n_kv_heads=kv,
        d_model=hidden,
        d_ff=positive_int(d, "intermediate_size", source),
        vocab_size=positive_int(d, "vocab_size", source),
        n_positions=positive_int(d, "max_position_embeddings", source),
        layer_norm_eps=positive_real(d, "rms_norm_eps", source, 1e-6),
        activation="silu",
        tie_embeddings=flag(d, "tie_word_embeddings", source, False),
        norm="rmsnorm",
        rotary_dim=hidden // heads,
        rotary_interleaved=False,
        rope_theta=positive_real(d, "rope_theta", source, 10000.0),
        rope_scaling=rope_scaling(d, source),
        gated_mlp=True,
        parallel_block=False,
        qkv_bias=attention_bias if qkv_bias is None else qkv_bias,
        attn_out_bias=attention_bias,
        mlp_bias=flag(d, "mlp_bias", source, False),
        lm_head_bias=False,
    )


def from_hf_dict(d: dict, name: str, *, source: str = "config.json") -> GPTConfig:
    """A :class:`GPTConfig` of family ``llama`` from a ``LlamaConfig`` dictionary."""
    return parse_llama_like(d, name, source, family="llama")


def to_hf_dict(cfg: GPTConfig) -> dict[str, Any]:
    """A ``config.json`` dictionary for ``cfg`` (loadable by ``transformers.LlamaConfig``)."""
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_heads,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.n_positions,
        "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": _scaling_dict(cfg.rope_scaling),
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.attn_out_bias,
        "mlp_bias": cfg.mlp_bias,
        "attention_dropout": 0.0,
    }
    return out


def _scaling_dict(s: RopeScaling | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "rope_type": s.rope_type,
        "factor": s.factor,
        "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor,
        "original_max_position_embeddings": s.original_max_position_embeddings,
    }


_LLAMA31 = RopeScaling(8.0, 1.0, 4.0, 8192)


def _llama(name: str, **kw: Any) -> GPTConfig:
    base: dict[str, Any] = dict(
        family="llama",
        activation="silu",
        tie_embeddings=False,
        norm="rmsnorm",
        rotary_dim=128,
        gated_mlp=True,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        layer_norm_eps=1e-5,
    )
    base.update(kw)
    return GPTConfig(name=name, **base)


#: Published shapes, from each model's ``config.json`` on huggingface.co (see :data:`SOURCES`).
PRESETS: dict[str, GPTConfig] = {
    c.name: c
    for c in (
        _llama("llama-2-7b", n_layer=32, n_head=32, n_kv_heads=32, d_model=4096, d_ff=11008,
               vocab_size=32000, n_positions=4096, rope_theta=10000.0),
        _llama("llama-3-8b", n_layer=32, n_head=32, n_kv_heads=8, d_model=4096, d_ff=14336,
               vocab_size=128256, n_positions=8192, rope_theta=500000.0),
        _llama("llama-3.1-8b", n_layer=32, n_head=32, n_kv_heads=8, d_model=4096, d_ff=14336,
               vocab_size=128256, n_positions=131072, rope_theta=500000.0,
               rope_scaling=_LLAMA31),
        _llama("llama-3.1-70b", n_layer=80, n_head=64, n_kv_heads=8, d_model=8192,
               d_ff=28672, vocab_size=128256, n_positions=131072, rope_theta=500000.0,
               rope_scaling=_LLAMA31),
        _llama("llama-3.1-405b", n_layer=126, n_head=128, n_kv_heads=8, d_model=16384,
               d_ff=53248, vocab_size=128256, n_positions=131072, rope_theta=500000.0,
               rope_scaling=_LLAMA31),
    )
}  # fmt: skip

SOURCES: dict[str, str] = {
    "llama-2-7b": "huggingface.co/meta-llama/Llama-2-7b-hf/config.json",
    "llama-3-8b": "huggingface.co/meta-llama/Meta-Llama-3-8B/config.json",
    "llama-3.1-8b": "huggingface.co/meta-llama/Llama-3.1-8B/config.json",
    "llama-3.1-70b": "huggingface.co/meta-llama/Llama-3.1-70B/config.json",
    "llama-3.1-405b": "huggingface.co/meta-llama/Llama-3.1-405B/config.json",
}


def build_layer(cfg: GPTConfig) -> list[Op]:
    """One Llama block: RMSNorm, Q/K/V (biases if the config has them: Qwen2), rotary on Q and
    K, grouped-query attention, output projection, residual; RMSNorm, SwiGLU MLP, residual
    (params: ``DecoderLayer``)."""
    qb, kb, vb = ("q_b", "k_b", "v_b") if cfg.qkv_bias else (None, None, None)
    mb = cfg.mlp_bias
    return [
        norm("input_norm", cfg, "x", "a", "norm_1_g", None),
        linear("q_proj", "a", "q", "q_w", qb, "d", "d"),
        linear("k_proj", "a", "k", "k_w", kb, "d", "kv"),
        linear("v_proj", "a", "v", "v_w", vb, "d", "kv"),
        rotary("rotary_q", cfg, "q", "qr", "H"),
        rotary("rotary_k", cfg, "k", "kr", "KV"),
        attention("attention", "qr", "kr", "v", "o"),
        linear("attn_proj", "o", "ao", "o_w", "o_b" if cfg.attn_out_bias else None, "d", "d"),
        Op("residual_1", "add", ("x", "ao"), ("h1",), (), (("B", "T", "d"),)),
        norm("post_attention_norm", cfg, "h1", "m", "norm_2_g", None),
        linear("ffn_gate", "m", "gt", "gate_w", "gate_b" if mb else None, "d", "ff"),
        linear("ffn_up", "m", "u", "up_w", "up_b" if mb else None, "d", "ff"),
        Op("silu", "activation", ("gt",), ("s",), (), (("B", "T", "ff"),), {"fn": cfg.activation}),
        Op("swiglu", "mul", ("s", "u"), ("p",), (), (("B", "T", "ff"),)),
        linear("ffn_down", "p", "f", "down_w", "down_b" if mb else None, "ff", "d"),
        Op("residual_2", "add", ("h1", "f"), ("out",), (), (("B", "T", "d"),)),
    ]  # fmt: skip


def build_epilogue(cfg: GPTConfig) -> list[Op]:
    """Final RMSNorm and the LM head (untied unless ``tie_word_embeddings``)."""
    return epilogue(cfg, "norm_f_g", None, "wte" if cfg.tie_embeddings else "lm_head_w", None)
