"""Weights of the rotary families (GPT-J, Llama, Qwen2): container, seeded init, HF I/O.

Matrices are stored as ``x @ W`` (``[in, out]``, as the GPT-2 container), so HF ``nn.Linear``
weights (``[out, in]``) are transposed on load; the embedding and the LM head are
``[vocab, d]`` (logits = ``h @ lm_head_w.T``). All arrays are float32. Which fields exist
follows the config: a bias only when its ``*_bias`` flag is set, ``norm_*_b`` only for
LayerNorm, ``norm_2_*`` only without ``parallel_block``, ``gate_*`` only with ``gated_mlp``,
``lm_head_*`` only when untied. Absent fields are ``None``.

Errors: :class:`wse_sim.errors.CheckpointError`, one line naming the HF tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from gpt_workload.config import GPTConfig
from gpt_workload.weights import _check_array, _to_float32
from wse_sim.errors import CheckpointError, ConfigError

__all__ = [
    "DecoderLayer",
    "DecoderWeights",
    "from_hf_state_dict",
    "init_decoder_weights",
    "layer_shapes",
    "to_hf_state_dict",
    "top_shapes",
]


@dataclass
class DecoderLayer:
    """One block of a rotary-family decoder (float32; ``None`` where the config has no such
    parameter). With d = d_model, kv = kv_dim, f = d_ff:

    Attributes:
        norm_1_g, norm_1_b: ``[d]`` norm before attention (and the MLP, parallel block).
        q_w, q_b: ``[d, d]``, ``[d]``; k_w, k_b and v_w, v_b: ``[d, kv]``, ``[kv]``. Heads
            are contiguous column blocks of ``d_head``.
        o_w, o_b: ``[d, d]``, ``[d]`` attention output projection.
        norm_2_g, norm_2_b: ``[d]`` norm before the MLP (sequential blocks only).
        gate_w, gate_b: ``[d, f]``, ``[f]`` SwiGLU gate (gated MLP only).
        up_w, up_b: ``[d, f]``, ``[f]``; down_w, down_b: ``[f, d]``, ``[d]``.
    """

    norm_1_g: np.ndarray
    norm_1_b: np.ndarray | None
    q_w: np.ndarray
    q_b: np.ndarray | None
    k_w: np.ndarray
    k_b: np.ndarray | None
    v_w: np.ndarray
    v_b: np.ndarray | None
    o_w: np.ndarray
    o_b: np.ndarray | None
    norm_2_g: np.ndarray | None
    norm_2_b: np.ndarray | None
    gate_w: np.ndarray | None
    gate_b: np.ndarray | None
    up_w: np.ndarray
    up_b: np.ndarray | None
    down_w: np.ndarray
    down_b: np.ndarray | None

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(field_name, array)`` for every present parameter, in declaration order."""
        for f in fields(self):
            arr = getattr(self, f.name)
            if arr is not None:
                yield f.name, arr


@dataclass
class DecoderWeights:
    """All parameters of a rotary-family decoder (float32).

    Attributes:
        wte: ``[vocab, d]`` token embedding.
        layers: ``n_layer`` :class:`DecoderLayer`.
        norm_f_g, norm_f_b: ``[d]`` final norm (bias for LayerNorm only).
        lm_head_w, lm_head_b: ``[vocab, d]``, ``[vocab]`` untied LM head (``None`` if tied /
            no bias).
    """

    wte: np.ndarray
    layers: list[DecoderLayer]
    norm_f_g: np.ndarray
    norm_f_b: np.ndarray | None
    lm_head_w: np.ndarray | None
    lm_head_b: np.ndarray | None

    @property
    def head(self) -> np.ndarray:
        """The LM-head matrix ``[vocab, d]``: ``lm_head_w``, or ``wte`` when tied."""
        return self.wte if self.lm_head_w is None else self.lm_head_w

    def named_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` for every parameter: ``wte``, ``layers.{i}.{field}``, then the
        final norm and LM-head fields that exist."""
        yield "wte", self.wte
        for i, layer in enumerate(self.layers):
            for name, arr in layer.arrays():
                yield f"layers.{i}.{name}", arr
        for name in ("norm_f_g", "norm_f_b", "lm_head_w", "lm_head_b"):
            if getattr(self, name) is not None:
                yield name, getattr(self, name)

    @property
    def nbytes(self) -> int:
        """Total bytes of all parameter arrays."""
        return sum(int(a.nbytes) for _, a in self.named_arrays())

    def validate(self, cfg: GPTConfig) -> None:
        """Check the layer count, presence, shape, dtype and finiteness of every array.

        Raises:
            CheckpointError: e.g. ``"weight layers.0.k_w has shape (64, 64), expected (64, 32)"``.
        """
        if len(self.layers) != cfg.n_layer:
            raise CheckpointError(
                f"weights have {len(self.layers)} layers, model {cfg.name} expects {cfg.n_layer}"
            )
        shapes = layer_shapes(cfg)
        for i, layer in enumerate(self.layers):
            for f in fields(layer):
                _check_present(f"layers.{i}.{f.name}", getattr(layer, f.name), shapes.get(f.name))
        for name, shape in top_shapes(cfg).items():
            _check_present(name, getattr(self, name), shape)
        for name in ("norm_f_b", "lm_head_w", "lm_head_b"):
            if name not in top_shapes(cfg) and getattr(self, name) is not None:
                raise CheckpointError(f"weight {name} is given but model {cfg.name} has none")


def _check_present(name: str, arr: Any, shape: tuple[int, ...] | None) -> None:
    if shape is None:
        if arr is not None:
            raise CheckpointError(f"weight {name} is given but the model config has none")
        return
    if arr is None:
        raise CheckpointError(f"weight {name} is missing")
    _check_array(name, arr, shape)


def layer_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every :class:`DecoderLayer` field that ``cfg`` has (absent fields omitted)."""
    d, f, kv = cfg.d_model, cfg.d_ff, cfg.kv_dim
    ln = cfg.norm == "layernorm"
    s: dict[str, tuple[int, ...]] = {"norm_1_g": (d,), "q_w": (d, d), "k_w": (d, kv)}
    s.update(v_w=(d, kv), o_w=(d, d), up_w=(d, f), down_w=(f, d))
    if ln:
        s["norm_1_b"] = (d,)
    if cfg.qkv_bias:
        s.update(q_b=(d,), k_b=(kv,), v_b=(kv,))
    if cfg.attn_out_bias:
        s["o_b"] = (d,)
    if not cfg.parallel_block:
        s["norm_2_g"] = (d,)
        if ln:
            s["norm_2_b"] = (d,)
    if cfg.gated_mlp:
        s["gate_w"] = (d, f)
        if cfg.mlp_bias:
            s["gate_b"] = (f,)
    if cfg.mlp_bias:
        s.update(up_b=(f,), down_b=(d,))
    return s


def top_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every top-level array of :class:`DecoderWeights` that ``cfg`` has."""
    d, v = cfg.d_model, cfg.vocab_size
    s: dict[str, tuple[int, ...]] = {"wte": (v, d), "norm_f_g": (d,)}
    if cfg.norm == "layernorm":
        s["norm_f_b"] = (d,)
    if not cfg.tie_embeddings:
        s["lm_head_w"] = (v, d)
        if cfg.lm_head_bias:
            s["lm_head_b"] = (v,)
    return s


def init_decoder_weights(cfg: GPTConfig, seed: int, std: float = 0.02) -> DecoderWeights:
    """Seeded random weights (float32, deterministic for a seed), as :func:`init_weights` of
    GPT-2: matrices, embeddings and biases normal(0, std), the two residual-output matrices
    (``o_w``, ``down_w``) std / sqrt(2 n_layer), norm gains 1 + normal(0, 0.1), norm biases
    normal(0, 0.1). Draw order: wte, per layer the :class:`DecoderLayer` fields present in
    declaration order, then norm_f_g, norm_f_b, lm_head_w, lm_head_b.

    Raises:
        ConfigError: ``std`` not a finite number > 0.
    """
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not (
        math.isfinite(float(std)) and std > 0
    ):
        raise ConfigError(f"init field std={std!r} must be a finite number > 0")
    rng = np.random.default_rng(seed)
    resid = float(std) / math.sqrt(2 * cfg.n_layer)

    def draw(name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = rng.standard_normal(shape, dtype=np.float32)
        if name.startswith("norm") and name.endswith("_g"):
            return arr * np.float32(0.1) + np.float32(1.0)
        scale = 0.1 if name.startswith("norm") else (resid if name in ("o_w", "down_w") else std)
        return arr * np.float32(scale)

    top = top_shapes(cfg)
    wte = draw("wte", top["wte"])
    shapes = layer_shapes(cfg)
    layers = []
    for _ in range(cfg.n_layer):
        kw = {f.name: None for f in fields(DecoderLayer)}
        for f in fields(DecoderLayer):
            if f.name in shapes:
                kw[f.name] = draw(f.name, shapes[f.name])
        layers.append(DecoderLayer(**kw))
    rest = {k: (draw(k, top[k]) if k in top else None) for k in
            ("norm_f_g", "norm_f_b", "lm_head_w", "lm_head_b")}  # fmt: skip
    return DecoderWeights(wte=wte, layers=layers, **rest)


def _is_linear(field: str) -> bool:
    """Fields stored transposed relative to HF ``nn.Linear`` (``[in, out]`` here)."""
    return field.endswith("_w") and field not in ("wte", "lm_head_w")


def to_hf_state_dict(cfg: GPTConfig, w: DecoderWeights, family: Any) -> dict[str, np.ndarray]:
    """HF state dict of ``w`` under the names of ``family`` (a family module)."""
    sd: dict[str, np.ndarray] = {}
    for name, arr in w.named_arrays():
        if name.startswith("layers."):
            _, i, field = name.split(".")
            key = family.HF_LAYER_PREFIX.format(i=i) + family.HF_LAYER_NAMES[field]
            sd[key] = np.ascontiguousarray(arr.T) if _is_linear(field) else arr
        else:
            sd[family.HF_TOP_NAMES[name]] = arr
    return sd


def from_hf_state_dict(sd: Mapping[str, Any], cfg: GPTConfig, family: Any) -> DecoderWeights:
    """Build and validate :class:`DecoderWeights` from a HF state dict of ``family``.

    Tensors may be NumPy arrays or torch tensors of any float dtype. A tied model ignores a
    ``lm_head.weight`` that repeats the embedding; buffers matching ``family.HF_IGNORED`` are
    skipped.

    Raises:
        CheckpointError: a missing or unexpected tensor, or one whose shape disagrees with
            the config (naming the HF tensor, its shape and the expected one).
    """
    ignored = re.compile(family.HF_IGNORED)
    tensors = {k: v for k, v in sd.items() if not ignored.fullmatch(k)}
    lshapes, tshapes = layer_shapes(cfg), top_shapes(cfg)
    if cfg.tie_embeddings:
        tensors.pop(family.HF_TOP_NAMES["lm_head_w"], None)

    def take(key: str, field: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in tensors:
            raise CheckpointError(f"checkpoint is missing tensor {key}")
        arr = _to_float32(key, tensors.pop(key))
        hf_shape = shape[::-1] if _is_linear(field) else shape
        if arr.shape != hf_shape:
            raise CheckpointError(
                f"checkpoint tensor {key} has shape {arr.shape}, expected {hf_shape} from the "
                f"config of {cfg.name} (d_model={cfg.d_model}, n_head={cfg.n_head}, "
                f"n_kv_heads={cfg.n_kv_heads}, d_ff={cfg.d_ff}, vocab_size={cfg.vocab_size})"
            )
        return np.ascontiguousarray(arr.T) if _is_linear(field) else arr

    top = {k: take(family.HF_TOP_NAMES[k], k, s) for k, s in tshapes.items()}
    layers = []
    for i in range(cfg.n_layer):
        kw: dict[str, Any] = {f.name: None for f in fields(DecoderLayer)}
        prefix = family.HF_LAYER_PREFIX.format(i=i)
        for field, shape in lshapes.items():
            kw[field] = take(prefix + family.HF_LAYER_NAMES[field], field, shape)
        layers.append(DecoderLayer(**kw))
    if tensors:
        extra = sorted(tensors)
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"checkpoint has unexpected tensor {extra[0]}{more} for model {cfg.name} "
            f"({cfg.family}, {cfg.n_layer} layers)"
        )
    for k in ("norm_f_b", "lm_head_w", "lm_head_b"):
        top.setdefault(k, None)
    w = DecoderWeights(layers=layers, **top)
    w.validate(cfg)
    return w
