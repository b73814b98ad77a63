"""The ``gpt2`` family: GPT-2 / Cerebras-GPT (learned positions, LayerNorm, GELU, tied head).

Config parsing, presets and weights are the original ones (:mod:`gpt_workload.config`,
:mod:`gpt_workload.weights`); this module gives them the family interface of
:mod:`gpt_workload.models`.
"""

from __future__ import annotations

from gpt_workload.config import PRESETS as _CEREBRAS
from gpt_workload.config import GPTConfig, from_hf_dict, to_hf_dict
from gpt_workload.graph import Op, attention, epilogue, linear, norm

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

MODEL_TYPE = "gpt2"
ARCHITECTURE = "GPT2LMHeadModel"

#: The seven Cerebras-GPT models (shapes: /work/shared/reference/cerebras_gpt.md).
PRESETS = dict(_CEREBRAS)

#: Fields the GPT-2 layer (:func:`build_layer`) and weights fix (checked by
#: :func:`gpt_workload.models.check_family`).
FIXED = {
    "n_kv_heads": lambda c: c.n_head,
    "norm": "layernorm",
    "rotary_dim": 0,
    "gated_mlp": False,
    "parallel_block": False,
    "qkv_bias": True,
    "attn_out_bias": True,
    "mlp_bias": True,
    "lm_head_bias": False,
    "tie_embeddings": True,
}

#: Citation per preset.
SOURCES = {
    name: f"huggingface.co/cerebras/Cerebras-GPT-{name.split('-')[-1].upper()}/config.json "
    "(Dey et al. 2023, arXiv 2304.03208)"
    for name in PRESETS
}


def build_layer(cfg: GPTConfig) -> list[Op]:
    """One GPT-2 block (pre-LayerNorm, fused Q|K|V, GELU MLP; params: ``LayerWeights``)."""
    return [
        norm("layernorm_1", cfg, "x", "a", "ln_1_g", "ln_1_b"),
        linear("qkv", "a", "qkv", "attn_w", "attn_b", "d", "qkv"),
        Op("split_qkv", "split", ("qkv",), ("q", "k", "v"), (),
           (("B", "T", "d"), ("B", "T", "kv"), ("B", "T", "kv")), {"sizes": ("d", "kv", "kv")}),
        attention("attention", "q", "k", "v", "o"),
        linear("attn_proj", "o", "ao", "proj_w", "proj_b", "d", "d"),
        Op("residual_1", "add", ("x", "ao"), ("h1",), (), (("B", "T", "d"),)),
        norm("layernorm_2", cfg, "h1", "m", "ln_2_g", "ln_2_b"),
        linear("ffn_up", "m", "u", "fc_w", "fc_b", "d", "ff"),
        Op("gelu", "activation", ("u",), ("g",), (), (("B", "T", "ff"),), {"fn": cfg.activation}),
        linear("ffn_down", "g", "f", "fc2_w", "fc2_b", "ff", "d"),
        Op("residual_2", "add", ("h1", "f"), ("out",), (), (("B", "T", "d"),)),
    ]  # fmt: skip


def build_epilogue(cfg: GPTConfig) -> list[Op]:
    """Final LayerNorm and the LM head tied to ``wte``."""
    return epilogue(cfg, "ln_f_g", "ln_f_b", "wte", None)
