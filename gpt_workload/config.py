"""GPT model configurations: the Cerebras-GPT presets, HF config.json parsing, FLOP counts.

The architecture described here is GPT-2 (Radford et al. 2019) as used by Cerebras-GPT
(Dey et al. 2023, arXiv 2304.03208): learned position embeddings, pre-LayerNorm blocks,
multi-head causal self-attention with fused Q|K|V projection, a two-layer GELU MLP and an
LM head tied to the token embedding. Published shapes and training hyper-parameters come from
``/work/shared/reference/cerebras_gpt.md`` (Cerebras ModelZoo configs and HF model cards).

Every validation failure raises :class:`wse_sim.errors.ConfigError` with a one-line message
that names the field, the value given and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt_workload.checks import check_int
from gpt_workload.rope import RopeScaling
from wse_sim.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "GATED_ACTIVATIONS",
    "NORMS",
    "RopeScaling",
    "PRESETS",
    "PUBLISHED_TRAINING",
    "TEST_PRESETS",
    "GPTConfig",
    "forward_flops_per_token",
    "from_hf_dict",
    "list_models",
    "load_hf_config",
    "to_hf_dict",
]

#: Allowed values of :attr:`GPTConfig.activation`, with their meaning (as in HF ``ACT2FN``).
ACTIVATIONS: dict[str, str] = {
    "gelu": "exact GELU, 0.5*x*(1 + erf(x/sqrt(2)))",
    "gelu_new": "tanh approximation, 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3)))",
    "gelu_pytorch_tanh": "tanh approximation (same formula as gelu_new)",
}

#: Activations of a gated MLP (SwiGLU: ``down(act(gate(x)) * up(x))``), as HF ``ACT2FN``.
GATED_ACTIVATIONS: dict[str, str] = {"silu": "x * sigmoid(x) (SwiGLU gate, Shazeer 2020)"}

#: Allowed values of :attr:`GPTConfig.norm`.
NORMS: dict[str, str] = {
    "layernorm": "(x - mean) / sqrt(var + eps) * g + b (Ba et al. 2016)",
    "rmsnorm": "x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019)",
}

_INT_FIELDS = ("n_layer", "n_head", "d_model", "d_ff", "vocab_size", "n_positions")
_BOOL_FIELDS = (
    "rotary_interleaved",
    "gated_mlp",
    "parallel_block",
    "qkv_bias",
    "attn_out_bias",
    "mlp_bias",
    "lm_head_bias",
)


def _is_int(value: Any) -> bool:
    """True for Python/NumPy integers, excluding ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    """True for Python/NumPy ints and floats, excluding ``bool``."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


@dataclass(frozen=True)
class GPTConfig:
    """Shape and numerics of a decoder-only transformer (immutable, validated on creation).

    The defaults of every field after ``tie_embeddings`` describe GPT-2 (Cerebras-GPT), so a
    GPT-2 config is written exactly as before; the other families (``gptj``, ``llama``,
    ``qwen2``; :mod:`gpt_workload.models`) set the fields that differ. The family names the
    layer sequence (its graph builder, :mod:`gpt_workload.graph`); the fields say what each op
    has (biases, GQA, rotary, norm kind).

    Attributes:
        name: identifier, e.g. ``"cerebras-gpt-111m"`` (non-empty string).
        n_layer: number of transformer blocks (positive int).
        n_head: attention heads per block (positive int dividing ``d_model``).
        d_model: residual-stream width (positive int).
        d_ff: hidden width of the MLP (positive int; 4*d_model for every Cerebras-GPT model).
        vocab_size: vocabulary size V (positive int; 50,257 for the GPT-2 BPE).
        n_positions: maximum sequence length / size of the learned position table (positive).
        layer_norm_eps: epsilon added to the variance in every LayerNorm (finite, > 0).
        activation: MLP non-linearity, one of :data:`ACTIVATIONS` (``"gelu"`` is the exact erf
            form used by the Cerebras HF configs; ``"gelu_new"``/``"gelu_pytorch_tanh"`` are
            the tanh approximation).
        tie_embeddings: the LM head reuses the token embedding ``wte``. The ``gpt2`` family
            must be tied (its weight container has no LM-head matrix); others may be untied.
        family: the model family (``"gpt2"``, ``"gptj"``, ``"llama"``, ``"qwen2"``; checked
            by :mod:`gpt_workload.models`).
        n_kv_heads: key/value heads (grouped-query attention; ``None`` -> ``n_head``); must
            divide ``n_head``. Query head ``h`` reads K/V head ``h // (n_head // n_kv_heads)``.
        norm: ``"layernorm"`` or ``"rmsnorm"`` (:data:`NORMS`); ``layer_norm_eps`` is its eps.
        rotary_dim: 0 for learned positions (``wpe``); else rotary embedding on the first
            ``rotary_dim`` features of each head (even, ``<= d_head``), no position table.
        rotary_interleaved: rotary pairs are adjacent features (GPT-J ``rotate_every_two``)
            instead of the two halves (Llama ``rotate_half``).
        rope_theta: rotary base (10,000 in GPT-J/Llama 2; 500,000 Llama 3; 1e6 Qwen2).
        rope_scaling: :class:`RopeScaling` (Llama 3.1) or ``None``.
        gated_mlp: SwiGLU MLP ``down(act(gate(x)) * up(x))`` (``activation`` from
            :data:`GATED_ACTIVATIONS`) instead of ``down(act(up(x)))``.
        parallel_block: attention and MLP read one norm of the same residual and both add to
            it (GPT-J), instead of two sequential sub-blocks with a norm each.
        qkv_bias, attn_out_bias, mlp_bias: whether the Q/K/V, attention output and MLP linears
            have biases; lm_head_bias: whether the (untied) LM head has one (GPT-J).

    Raises:
        ConfigError: on the first invalid field, e.g.
            ``"model field n_head=5 must divide d_model=768"``.
    """

    name: str
    n_layer: int
    n_head: int
    d_model: int
    d_ff: int
    vocab_size: int
    n_positions: int
    layer_norm_eps: float = 1e-5
    activation: str = "gelu"
    tie_embeddings: bool = True
    family: str = "gpt2"
    n_kv_heads: int | None = None
    norm: str = "layernorm"
    rotary_dim: int = 0
    rotary_interleaved: bool = False
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    gated_mlp: bool = False
    parallel_block: bool = False
    qkv_bias: bool = True
    attn_out_bias: bool = True
    mlp_bias: bool = True
    lm_head_bias: bool = False

    def __post_init__(self) -> None:
        """Validate every field and normalise NumPy scalars to ``int``/``float``."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"model field name={self.name!r} must be a non-empty string")
        for field in _INT_FIELDS:
            value = check_int(f"model field {field}", getattr(self, field), 1)
            object.__setattr__(self, field, value)
        if self.d_model % self.n_head != 0:
            raise ConfigError(
                f"model field n_head={self.n_head} must divide d_model={self.d_model}"
            )
        eps = self.layer_norm_eps
        if not _is_real(eps) or not math.isfinite(float(eps)) or float(eps) <= 0.0:
            raise ConfigError(f"model field layer_norm_eps={eps!r} must be a finite number > 0")
        object.__setattr__(self, "layer_norm_eps", float(eps))
        for field in _BOOL_FIELDS:
            if not isinstance(getattr(self, field), (bool, np.bool_)):
                raise ConfigError(f"model field {field}={getattr(self, field)!r} must be a bool")
            object.__setattr__(self, field, bool(getattr(self, field)))
        acts = GATED_ACTIVATIONS if self.gated_mlp else ACTIVATIONS
        if not isinstance(self.activation, str) or self.activation not in acts:
            raise ConfigError(
                f"model field activation={self.activation!r} is not supported"
                + (" for a gated MLP" if self.gated_mlp else "")
                + ": expected one of "
                + ", ".join(acts)
            )
        if not isinstance(self.tie_embeddings, (bool, np.bool_)):
            raise ConfigError(f"model field tie_embeddings={self.tie_embeddings!r} must be a bool")
        if not isinstance(self.family, str) or not self.family.strip():
            raise ConfigError(f"model field family={self.family!r} must be a non-empty string")
        if not self.tie_embeddings and self.family == "gpt2":
            raise ConfigError(
                "model field tie_embeddings=False is not supported for family gpt2: only an LM "
                "head tied to the token embedding is modelled"
            )
        object.__setattr__(self, "tie_embeddings", bool(self.tie_embeddings))
        self._validate_family_fields()

    def _validate_family_fields(self) -> None:
        """Validate GQA, norm and rotary fields (the ones the non-GPT-2 families set)."""
        kv = self.n_head if self.n_kv_heads is None else self.n_kv_heads
        if not _is_int(kv) or kv <= 0 or self.n_head % kv != 0:
            raise ConfigError(
                f"model field n_kv_heads={self.n_kv_heads!r} must be a positive integer "
                f"dividing n_head={self.n_head}"
            )
        object.__setattr__(self, "n_kv_heads", int(kv))
        if self.norm not in NORMS:
            raise ConfigError(
                f"model field norm={self.norm!r} is not supported: expected one of "
                + ", ".join(NORMS)
            )
        rd = self.rotary_dim
        if not _is_int(rd) or rd < 0 or rd % 2 or rd > self.d_head:
            raise ConfigError(
                f"model field rotary_dim={rd!r} must be an even integer in [0, "
                f"d_head={self.d_head}] (0: learned positions)"
            )
        object.__setattr__(self, "rotary_dim", int(rd))
        theta = self.rope_theta
        if not _is_real(theta) or not math.isfinite(float(theta)) or float(theta) <= 1.0:
            raise ConfigError(f"model field rope_theta={theta!r} must be a finite number > 1")
        object.__setattr__(self, "rope_theta", float(theta))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(
                f"model field rope_scaling={self.rope_scaling!r} must be a RopeScaling or None"
            )
        if self.rope_scaling is not None and rd == 0:
            raise ConfigError("model field rope_scaling is set but rotary_dim=0 (no rotary)")

    @property
    def learned_positions(self) -> bool:
        """True when positions come from a learned table ``wpe`` (``rotary_dim == 0``)."""
        return self.rotary_dim == 0

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): ``n_kv_heads * d_head`` (``d_model`` without GQA)."""
        return int(self.n_kv_heads) * self.d_head

    @property
    def d_head(self) -> int:
        """Width of one attention head, ``d_model // n_head``."""
        return self.d_model // self.n_head

    @property
    def n_non_embedding_params(self) -> int:
        """Parameters outside the embeddings and the LM head (the "N" of Kaplan et al. 2020).

        Formula for GPT-2 (the default fields), with d = d_model and f = d_ff::

            n_layer * (2*2*d            # ln_1 and ln_2 gain + bias
                       + d*3d + 3d      # attn.c_attn weight + bias
                       + d*d + d        # attn.c_proj weight + bias
                       + d*f + f        # mlp.c_fc weight + bias
                       + f*d + d)       # mlp.c_proj weight + bias
            + 2*d                       # ln_f gain + bias

        In general: each norm has ``2d`` (LayerNorm) or ``d`` (RMSNorm) parameters, one per
        sub-block (one per layer with ``parallel_block``) plus the final one; Q is ``d x d``,
        K and V are ``d x kv_dim`` each (GQA); a gated MLP has two ``d x f`` input matrices;
        biases as the ``*_bias`` fields say. The LM head (tied or not) is not counted.
        """
        d, f, kv = self.d_model, self.d_ff, self.kv_dim
        norm = 2 * d if self.norm == "layernorm" else d
        qkv = d * (d + 2 * kv) + ((d + 2 * kv) if self.qkv_bias else 0)
        out = d * d + (d if self.attn_out_bias else 0)
        n_in = 2 if self.gated_mlp else 1
        mlp = n_in * d * f + f * d + ((n_in * f + d) if self.mlp_bias else 0)
        norms = norm if self.parallel_block else 2 * norm
        return self.n_layer * (norms + qkv + out + mlp) + norm

    @property
    def n_params(self) -> int:
        """Total parameter count: ``vocab_size*d_model`` (wte), ``n_positions*d_model`` (wpe,
        learned positions only), the untied LM head (``vocab_size*d_model`` plus its bias) and
        :attr:`n_non_embedding_params`. A tied LM head is counted once (as ``wte``), which is
        what ``sum(p.numel() for p in GPT2LMHeadModel(...).parameters())`` reports.
        """
        d, v = self.d_model, self.vocab_size
        embeddings = v * d + (self.n_positions * d if self.learned_positions else 0)
        head = 0 if self.tie_embeddings else v * d + (v if self.lm_head_bias else 0)
        return embeddings + head + self.n_non_embedding_params


def forward_flops_per_token(cfg: GPTConfig, seq_len: int) -> dict[str, int]:
    """Forward-pass FLOPs per token of a sequence of ``seq_len`` tokens (1 MAC = 2 FLOP).

    Convention (exact integers, per token, averaged over the positions of one sequence):

    * ``dense = 2 * N`` with ``N = cfg.n_non_embedding_params``: every weight is used once per
      token in one multiply-add. Biases and LayerNorm parameters are included in N for
      simplicity (they are < 0.1 % of N for the presets); LayerNorm, GELU, softmax and
      residual additions are not counted.
    * ``lm_head = 2 * d_model * vocab_size``: the tied de-embedding matmul producing logits.
    * ``attention = 4 * n_layer * d_model * (T + 1) / 2 = 2 * n_layer * d_model * (T + 1)``:
      two matmuls per layer (Q K^T and P V), 2 FLOP per MAC, summed over heads (n_head*d_head
      = d_model), each over the causal context of the query. Position t (1-based) attends to
      t keys, so the mean context over a sequence of T tokens is (T + 1) / 2. Masked-out
      entries are not counted.
    * ``total = dense + lm_head + attention``.

    Relation to published conventions: Kaplan et al. 2020, "Scaling Laws for Neural Language
    Models", Table 1, give ``C_forward = 2N + 2 n_layer n_ctx d_attn`` and list the
    de-embedding (2 d_model n_vocab) separately; their attention term equals ours with the
    mean causal context approximated by n_ctx/2. Chowdhery et al. 2022, PaLM, Appendix B,
    count ``6N + 12 L H Q T`` FLOPs per token for training (forward + backward = 3x forward),
    i.e. a forward attention term ``4 L H Q T`` that ignores causal masking and is therefore
    about twice ours.

    Args:
        cfg: model configuration.
        seq_len: tokens per sequence T, ``1 <= T <= cfg.n_positions``.

    Returns:
        ``{"dense": int, "lm_head": int, "attention": int, "total": int}`` in FLOP per token.

    Raises:
        ConfigError: if ``seq_len`` is not an integer in ``[1, cfg.n_positions]``.
    """
    t = check_int("seq_len", seq_len, 1, cfg.n_positions, note="n_positions")
    dense = 2 * cfg.n_non_embedding_params
    lm_head = 2 * cfg.d_model * cfg.vocab_size
    attention = 2 * cfg.n_layer * cfg.d_model * (t + 1)
    return {
        "dense": dense,
        "lm_head": lm_head,
        "attention": attention,
        "total": dense + lm_head + attention,
    }


# --------------------------------------------------------------------------------------------
# Presets. Source: /work/shared/reference/cerebras_gpt.md (Cerebras ModelZoo
# models/nlp/gpt3/configs/Cerebras_GPT/*.yaml and the cerebras/Cerebras-GPT-* model cards).
# Common: vocab 50,257, context 2,048, GELU (HF configs say "gelu", the exact form), eps 1e-5.
# --------------------------------------------------------------------------------------------


def _cerebras(name: str, n_layer: int, d_model: int, n_head: int, d_ff: int) -> GPTConfig:
    """Build one Cerebras-GPT preset with the family-wide constants."""
    return GPTConfig(
        name=name,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        d_ff=d_ff,
        vocab_size=50257,
        n_positions=2048,
        layer_norm_eps=1e-5,
        activation="gelu",
        tie_embeddings=True,
    )


#: The seven published Cerebras-GPT models, keyed by lower-case name, in size order.
PRESETS: dict[str, GPTConfig] = {
    cfg.name: cfg
    for cfg in (
        _cerebras("cerebras-gpt-111m", 10, 768, 12, 3072),
        _cerebras("cerebras-gpt-256m", 14, 1088, 17, 4352),
        _cerebras("cerebras-gpt-590m", 18, 1536, 12, 6144),
        _cerebras("cerebras-gpt-1.3b", 24, 2048, 16, 8192),
        _cerebras("cerebras-gpt-2.7b", 32, 2560, 32, 10240),
        _cerebras("cerebras-gpt-6.7b", 32, 4096, 32, 16384),
        _cerebras("cerebras-gpt-13b", 40, 5120, 40, 20480),
    )
}

#: Small models for tests only; NOT a published model. Resolvable by name, excluded from
#: :func:`list_models` unless asked for.
TEST_PRESETS: dict[str, GPTConfig] = {
    "gpt-tiny": GPTConfig(
        name="gpt-tiny",
        n_layer=2,
        n_head=4,
        d_model=64,
        d_ff=256,
        vocab_size=512,
        n_positions=128,
        layer_norm_eps=1e-5,
        activation="gelu",
        tie_embeddings=True,
    ),
}

#: Published training hyper-parameters per preset (same source as :data:`PRESETS`):
#: ``batch_sequences`` (global batch in sequences of 2,048 tokens), ``peak_lr``, ``steps``,
#: ``tokens`` (total training tokens) and ``note`` (empty unless something needs saying).
PUBLISHED_TRAINING: dict[str, dict[str, Any]] = {
    "cerebras-gpt-111m": {
        "batch_sequences": 120,
        "peak_lr": 6.0e-4,
        "steps": 9037,
        "tokens": 2.22e9,
        "note": "",
    },
    "cerebras-gpt-256m": {
        "batch_sequences": 264,
        "peak_lr": 6.0e-4,
        "steps": 9468,
        "tokens": 5.12e9,
        "note": "",
    },
    "cerebras-gpt-590m": {
        "batch_sequences": 264,
        "peak_lr": 2.0e-4,
        "steps": 21836,
        "tokens": 1.18e10,
        "note": "",
    },
    "cerebras-gpt-1.3b": {
        "batch_sequences": 528,
        "peak_lr": 2.0e-4,
        "steps": 24334,
        "tokens": 2.63e10,
        "note": "",
    },
    "cerebras-gpt-2.7b": {
        "batch_sequences": 528,
        "peak_lr": 2.0e-4,
        "steps": 49041,
        "tokens": 5.30e10,
        "note": "",
    },
    "cerebras-gpt-6.7b": {
        "batch_sequences": 1040,
        "peak_lr": 1.2e-4,
        "steps": 62522,
        "tokens": 1.33e11,
        "note": "",
    },
    "cerebras-gpt-13b": {
        "batch_sequences": 720,
        "peak_lr": 1.2e-4,
        "steps": 116223,
        "tokens": 2.57e11,
        "note": "batch grew from 720 to 1080 sequences during training; the initial 720 is stored",
    },
}


def list_models(include_test: bool = False) -> list[GPTConfig]:
    """The Cerebras-GPT presets in size order (111M ... 13B).

    Args:
        include_test: also append the test-only presets (``gpt-tiny``).

    Returns:
        A new list of :class:`GPTConfig`.
    """
    models = list(PRESETS.values())
    if include_test:
        models += list(TEST_PRESETS.values())
    return models


# --------------------------------------------------------------------------------------------
# Hugging Face config.json (GPT2Config) parsing
# --------------------------------------------------------------------------------------------

# Keys whose non-default value changes the math of the model: key -> unsupported value.
_UNSUPPORTED_FLAGS: dict[str, bool] = {
    "scale_attn_by_inverse_layer_idx": True,
    "reorder_and_upcast_attn": True,
    "scale_attn_weights": False,
    "tie_word_embeddings": False,
    "add_cross_attention": True,
}


def _json_value(value: Any) -> str:
    """Render a config value as it appears in JSON (``true``, ``null``, ``"gelu"``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def from_hf_dict(d: dict, name: str, *, source: str = "config.json") -> GPTConfig:
    """Build a :class:`GPTConfig` from a GPT-2-style Hugging Face ``config.json`` dictionary.

    Field mapping: ``n_layer``, ``n_head``, ``n_embd`` -> d_model, ``n_inner`` -> d_ff
    (``None``/absent -> 4*n_embd, as in HF), ``vocab_size``, ``n_positions``,
    ``layer_norm_epsilon`` (default 1e-5), ``activation_function`` (default ``"gelu_new"``,
    the HF ``GPT2Config`` default), ``tie_word_embeddings`` (default true). The shape fields
    are required. Other keys (dropouts, token ids, ``architectures``...) are ignored.

    Rejected as not supported (they change the math): ``model_type`` other than ``"gpt2"``,
    ``scale_attn_by_inverse_layer_idx: true``, ``reorder_and_upcast_attn: true``,
    ``scale_attn_weights: false``, ``tie_word_embeddings: false``, ``add_cross_attention:
    true`` and any μP key (``mup_*``, e.g. ``mup_width_scale``).

    Args:
        d: the parsed JSON object.
        name: name given to the resulting config.
        source: how to refer to the dictionary in error messages (e.g. a file path).

    Raises:
        ConfigError: one line naming the offending key and value.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ConfigError(
            f'{source} field model_type={_json_value(model_type)} is not supported: expected "gpt2"'
        )
    for key in sorted(d):
        if key.lower().startswith("mup") and d[key] is not None:
            raise ConfigError(
                f"{source} field {key}={_json_value(d[key])} is not supported "
                "(muP parameterisation changes the math)"
            )
    for key, bad in _UNSUPPORTED_FLAGS.items():
        if key in d and d[key] is bad:
            raise ConfigError(f"{source} field {key}={_json_value(bad)} is not supported")

    def required_int(key: str) -> int:
        if key not in d:
            raise ConfigError(f"{source} field {key} is missing: a positive integer is required")
        return check_int(f"{source} field {key}", d[key], 1)

    n_layer = required_int("n_layer")
    n_head = required_int("n_head")
    n_embd = required_int("n_embd")
    vocab_size = required_int("vocab_size")
    n_positions = required_int("n_positions")
    if n_embd % n_head != 0:
        raise ConfigError(f"{source} field n_head={n_head} must divide n_embd={n_embd}")
    n_inner = d.get("n_inner")
    if n_inner is None:
        n_inner = 4 * n_embd
    else:
        n_inner = check_int(f"{source} field n_inner", n_inner, 1, note="or null: 4 n_embd")
    eps = d.get("layer_norm_epsilon", 1e-5)
    if not _is_real(eps) or not math.isfinite(float(eps)) or eps <= 0:
        raise ConfigError(
            f"{source} field layer_norm_epsilon={_json_value(eps)} must be a finite number > 0"
        )
    activation = d.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ConfigError(
            f"{source} field activation_function={_json_value(activation)} is not supported: "
            "expected one of " + ", ".join(ACTIVATIONS)
        )
    return GPTConfig(
        name=name,
        n_layer=n_layer,
        n_head=n_head,
        d_model=n_embd,
        d_ff=int(n_inner),
        vocab_size=vocab_size,
        n_positions=n_positions,
        layer_norm_eps=float(eps),
        activation=activation,
        tie_embeddings=True,
    )


def to_hf_dict(cfg: GPTConfig) -> dict[str, Any]:
    """A GPT-2 Hugging Face ``config.json`` dictionary describing ``cfg``.

    Loadable by ``transformers.GPT2Config`` / ``GPT2LMHeadModel.from_pretrained``; the inverse
    of :func:`from_hf_dict` (dropouts are 0, as in Cerebras-GPT).
    """
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.d_model,
        "n_inner": cfg.d_ff,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "activation_function": cfg.activation,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
    }


def load_hf_config(path: str | os.PathLike, name: str | None = None) -> GPTConfig:
    """Read a Hugging Face ``config.json`` file into a :class:`GPTConfig`.

    Args:
        path: the JSON file.
        name: config name; default is the name of the directory holding the file.

    Raises:
        ConfigError: unreadable file, malformed JSON or an invalid/unsupported field.
    """
    data, name = read_config_json(path, name)
    return from_hf_dict(data, name, source=str(path))


def read_config_json(path: str | os.PathLike, name: str | None = None) -> tuple[Any, str]:
    """The parsed JSON of a ``config.json`` file and the model's name (``name``, else the
    name of the directory holding the file); shared by every family's loader.

    Raises:
        ConfigError: unreadable file or malformed JSON (one line).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read model config {p}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"model config {p} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if name is None:
        name = p.resolve().parent.name or p.stem
    return data, name


#: the weight files a checkpoint directory may hold (Hugging Face ``save_pretrained``):
#: one safetensors file, sharded safetensors with an index, or the same for ``.bin``
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
