"""The ``gptj`` family: GPT-J (``GPTJForCausalLM``; Wang & Komatsuzaki 2021).

Rotary positions on the first ``rotary_dim`` features of each head with adjacent pairs
(``rotate_every_two``), base 10,000; one LayerNorm per layer whose output feeds attention and
the MLP in parallel (``h + attn(ln(h)) + mlp(ln(h))``); Q/K/V and the attention output without
biases; a GELU (tanh) MLP with biases; an untied LM head with a bias. Source of the math: HF
``transformers/models/gptj/modeling_gptj.py``.
"""

from __future__ import annotations

from typing import Any

from gpt_workload.config import ACTIVATIONS, GPTConfig
from gpt_workload.graph import Op, attention, epilogue, linear, norm, rotary
from gpt_workload.models.common import check_heads, flag, json_value, positive_int, positive_real
from wse_sim.errors import ConfigError

__all__ = [
    "ARCHITECTURE",
    "MODEL_TYPE",
    "PRESETS",
    "SOURCES",
    "build_epilogue",
    "build_layer",
    "from_hf_dict",
    "to_hf_dict",
]

MODEL_TYPE = "gptj"
ARCHITECTURE = "GPTJForCausalLM"

#: :class:`gpt_workload.models.weights.DecoderLayer` field -> HF name inside
#: ``transformer.h.{i}.``.
HF_LAYER_NAMES: dict[str, str] = {
    "norm_1_g": "ln_1.weight",
    "norm_1_b": "ln_1.bias",
    "q_w": "attn.q_proj.weight",
    "k_w": "attn.k_proj.weight",
    "v_w": "attn.v_proj.weight",
    "o_w": "attn.out_proj.weight",
    "up_w": "mlp.fc_in.weight",
    "up_b": "mlp.fc_in.bias",
    "down_w": "mlp.fc_out.weight",
    "down_b": "mlp.fc_out.bias",
}
HF_TOP_NAMES: dict[str, str] = {
    "wte": "transformer.wte.weight",
    "norm_f_g": "transformer.ln_f.weight",
    "norm_f_b": "transformer.ln_f.bias",
    "lm_head_w": "lm_head.weight",
    "lm_head_b": "lm_head.bias",
}
HF_LAYER_PREFIX = "transformer.h.{i}."
#: Causal-mask buffers of older checkpoints: skipped.
HF_IGNORED = r"transformer\.h\.\d+\.attn\.(bias|masked_bias)"


#: Fields the GPT-J layer (:func:`build_layer`) fixes (checked by ``models.check_family``).
FIXED = {
    "n_kv_heads": lambda c: c.n_head,
    "norm": "layernorm",
    "learned_positions": False,
    "rotary_interleaved": True,
    "gated_mlp": False,
    "parallel_block": True,
}


def from_hf_dict(d: dict, name: str, *, source: str = "config.json") -> GPTConfig:
    """A :class:`GPTConfig` of family ``gptj`` from a ``GPTJConfig`` dictionary.

    Keys: ``n_embd``, ``n_head``, ``n_layer``, ``vocab_size``, ``n_positions``,
    ``rotary_dim`` (required; even, <= head size), ``n_inner`` (null -> 4*n_embd),
    ``activation_function`` (default ``gelu_new``), ``layer_norm_epsilon`` (1e-5),
    ``tie_word_embeddings`` (false).

    Raises:
        ConfigError: one line naming the key and value.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
    n_embd = positive_int(d, "n_embd", source)
    n_head = positive_int(d, "n_head", source)
    check_heads(source, n_embd, n_head, n_head, ("n_embd", "n_head", "n_head"))
    rotary_dim = positive_int(d, "rotary_dim", source)
    if rotary_dim % 2 or rotary_dim > n_embd // n_head:
        raise ConfigError(
            f"{source} field rotary_dim={rotary_dim} must be even and <= the head size "
            f"{n_embd // n_head}"
        )
    act = d.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConfigError(
            f"{source} field activation_function={json_value(act)} is not supported: expected "
            "one of " + ", ".join(ACTIVATIONS)
        )
    return GPTConfig(
        name=name,
        family="gptj",
        n_layer=positive_int(d, "n_layer", source),
        n_head=n_head,
        n_kv_heads=n_head,
        d_model=n_embd,
        d_ff=positive_int(d, "n_inner", source, default=4 * n_embd),
        vocab_size=positive_int(d, "vocab_size", source),
        n_positions=positive_int(d, "n_positions", source),
        layer_norm_eps=positive_real(d, "layer_norm_epsilon", source, 1e-5),
        activation=act,
        tie_embeddings=flag(d, "tie_word_embeddings", source, False),
        norm="layernorm",
        rotary_dim=rotary_dim,
        rotary_interleaved=True,
        rope_theta=10000.0,
        parallel_block=True,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=True,
        lm_head_bias=True,
    )


def to_hf_dict(cfg: GPTConfig) -> dict[str, Any]:
    """A ``config.json`` dictionary for ``cfg`` (loadable by ``transformers.GPTJConfig``)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_head,
        "n_layer": cfg.n_layer,
        "n_inner": cfg.d_ff,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "rotary_dim": cfg.rotary_dim,
        "activation_function": cfg.activation,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
    }


#: GPT-J-6B, from huggingface.co/EleutherAI/gpt-j-6b/config.json.
PRESETS: dict[str, GPTConfig] = {
    "gpt-j-6b": from_hf_dict(
        {
            "n_embd": 4096,
            "n_head": 16,
            "n_layer": 28,
            "n_positions": 2048,
            "rotary_dim": 64,
            "vocab_size": 50400,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": False,
        },
        "gpt-j-6b",
        source="gpt-j-6b preset",
    )
}
SOURCES: dict[str, str] = {"gpt-j-6b": "huggingface.co/EleutherAI/gpt-j-6b/config.json"}


def build_layer(cfg: GPTConfig) -> list[Op]:
    """One GPT-J block: one LayerNorm feeding attention (partial rotary on Q and K) and the
    MLP in parallel; both add to the residual (params: ``DecoderLayer``)."""
    qb, kb, vb = ("q_b", "k_b", "v_b") if cfg.qkv_bias else (None, None, None)
    return [
        norm("layernorm_1", cfg, "x", "a", "norm_1_g", "norm_1_b"),
        linear("q_proj", "a", "q", "q_w", qb, "d", "d"),
        linear("k_proj", "a", "k", "k_w", kb, "d", "kv"),
        linear("v_proj", "a", "v", "v_w", vb, "d", "kv"),
        rotary("rotary_q", cfg, "q", "qr", "H"),
        rotary("rotary_k", cfg, "k", "kr", "KV"),
        attention("attention", "qr", "kr", "v", "o"),
        linear("attn_proj", "o", "ao", "o_w", "o_b" if cfg.attn_out_bias else None, "d", "d"),
        linear("ffn_up", "a", "u", "up_w", "up_b" if cfg.mlp_bias else None, "d", "ff"),
        Op("gelu", "activation", ("u",), ("g",), (), (("B", "T", "ff"),), {"fn": cfg.activation}),
        linear("ffn_down", "g", "f", "down_w", "down_b" if cfg.mlp_bias else None, "ff", "d"),
        Op("residual", "add", ("x", "ao", "f"), ("out",), (), (("B", "T", "d"),)),
    ]  # fmt: skip


def build_epilogue(cfg: GPTConfig) -> list[Op]:
    """Final LayerNorm and the LM head (untied, with a bias, unless the config says else)."""
    head = "wte" if cfg.tie_embeddings else "lm_head_w"
    bias = "lm_head_b" if (cfg.lm_head_bias and not cfg.tie_embeddings) else None
    return epilogue(cfg, "norm_f_g", "norm_f_b", head, bias)
