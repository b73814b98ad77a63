"""The ``qwen2`` family: Qwen2 (``Qwen2ForCausalLM``) = Llama with biases on Q, K and V.

Same layer as :mod:`.llama` (rotary, RMSNorm, SwiGLU, GQA); the Q/K/V projections carry
biases, the attention output and MLP do not. Sliding-window attention
(``use_sliding_window: true``) is refused. Source of the math: HF
``transformers/models/qwen2/modeling_qwen2.py``; Yang et al. 2024, arXiv 2407.10671, Table 1.
"""

from __future__ import annotations

from typing import Any

from gpt_workload.config import GPTConfig
from gpt_workload.models import llama

__all__ = ["ARCHITECTURE", "MODEL_TYPE", "PRESETS", "SOURCES", "from_hf_dict", "to_hf_dict"]

MODEL_TYPE = "qwen2"
ARCHITECTURE = "Qwen2ForCausalLM"
HF_LAYER_NAMES = llama.HF_LAYER_NAMES
HF_TOP_NAMES = llama.HF_TOP_NAMES
HF_LAYER_PREFIX = llama.HF_LAYER_PREFIX
HF_IGNORED = llama.HF_IGNORED
#: The layer sequence is Llama's; the Q/K/V biases come from ``cfg.qkv_bias``.
build_layer = llama.build_layer
#: Llama's fixed fields plus biases on Q, K and V only.
FIXED = {**llama.FIXED, "qkv_bias": True, "attn_out_bias": False, "mlp_bias": False}
build_epilogue = llama.build_epilogue


def from_hf_dict(d: dict, name: str, *, source: str = "config.json") -> GPTConfig:
    """A :class:`GPTConfig` of family ``qwen2`` from a ``Qwen2Config`` dictionary."""
    return llama.parse_llama_like(d, name, source, family="qwen2", qkv_bias=True)


def to_hf_dict(cfg: GPTConfig) -> dict[str, Any]:
    """A ``config.json`` dictionary for ``cfg`` (loadable by ``transformers.Qwen2Config``)."""
    out = llama.to_hf_dict(cfg)
    for key in ("attention_bias", "mlp_bias"):
        del out[key]
    out.update(architectures=[ARCHITECTURE], model_type=MODEL_TYPE, use_sliding_window=False)
    return out


def _qwen2(name: str, **kw: Any) -> GPTConfig:
    return GPTConfig(
        name=name, family="qwen2", activation="silu", tie_embeddings=False, norm="rmsnorm",
        rotary_dim=128, gated_mlp=True, qkv_bias=True, attn_out_bias=False, mlp_bias=False,
        rope_theta=1000000.0, **kw,
    )  # fmt: skip


#: Published shapes, from each model's ``config.json`` on huggingface.co (see :data:`SOURCES`).
PRESETS: dict[str, GPTConfig] = {
    c.name: c
    for c in (
        _qwen2("qwen2-7b", n_layer=28, n_head=28, n_kv_heads=4, d_model=3584, d_ff=18944,
               vocab_size=152064, n_positions=131072, layer_norm_eps=1e-6),
        _qwen2("qwen2-72b", n_layer=80, n_head=64, n_kv_heads=8, d_model=8192, d_ff=29568,
               vocab_size=152064, n_positions=131072, layer_norm_eps=1e-5),
    )
}  # fmt: skip

SOURCES: dict[str, str] = {
    "qwen2-7b": "huggingface.co/Qwen/Qwen2-7B/config.json (Yang et al. 2024, arXiv 2407.10671)",
    "qwen2-72b": "huggingface.co/Qwen/Qwen2-72B/config.json (Yang et al. 2024, arXiv 2407.10671)",
}
