"""GPT-2 weight containers, seeded initialisation and Hugging Face checkpoint I/O.

Layout follows the Hugging Face ``GPT2LMHeadModel`` (``Conv1D`` layers compute ``x @ W + b``
with ``W`` of shape ``[in, out]``), so checkpoints of ``cerebras/Cerebras-GPT-*`` load without
transposes. All arrays are float32 NumPy arrays.

Errors: malformed checkpoints, missing tensors, wrong shapes and NaN/Inf values raise
:class:`wse_sim.errors.CheckpointError`; a bad ``config.json`` raises
:class:`wse_sim.errors.ConfigError`. Messages are one line and name the file or tensor.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from gpt_workload.config import GPTConfig, load_hf_config, to_hf_dict
from wse_sim.errors import CheckpointError, ConfigError

__all__ = [
    "GPTWeights",
    "LayerWeights",
    "from_hf_state_dict",
    "init_weights",
    "load_checkpoint",
    "save_safetensors",
    "to_hf_state_dict",
]

# LayerWeights field -> HF name suffix inside block ``h.{i}.``.
_LAYER_HF_NAMES: dict[str, str] = {
    "ln_1_g": "ln_1.weight",
    "ln_1_b": "ln_1.bias",
    "attn_w": "attn.c_attn.weight",
    "attn_b": "attn.c_attn.bias",
    "proj_w": "attn.c_proj.weight",
    "proj_b": "attn.c_proj.bias",
    "ln_2_g": "ln_2.weight",
    "ln_2_b": "ln_2.bias",
    "fc_w": "mlp.c_fc.weight",
    "fc_b": "mlp.c_fc.bias",
    "fc2_w": "mlp.c_proj.weight",
    "fc2_b": "mlp.c_proj.bias",
}

# GPTWeights array field -> HF name (without the ``transformer.`` prefix).
_TOP_HF_NAMES: dict[str, str] = {
    "wte": "wte.weight",
    "wpe": "wpe.weight",
    "ln_f_g": "ln_f.weight",
    "ln_f_b": "ln_f.bias",
}

# Non-parameter buffers (``h.{i}.attn.bias``, ``h.{i}.attn.masked_bias``: the causal mask in
# older checkpoints) and the tied LM head found in some checkpoints; skipped on load.
_IGNORED_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_IGNORED_NAMES = ("lm_head.weight",)


def _layer_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every :class:`LayerWeights` field for ``cfg``."""
    d, f = cfg.d_model, cfg.d_ff
    return {
        "ln_1_g": (d,),
        "ln_1_b": (d,),
        "attn_w": (d, 3 * d),
        "attn_b": (3 * d,),
        "proj_w": (d, d),
        "proj_b": (d,),
        "ln_2_g": (d,),
        "ln_2_b": (d,),
        "fc_w": (d, f),
        "fc_b": (f,),
        "fc2_w": (f, d),
        "fc2_b": (d,),
    }


def _top_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every array field of :class:`GPTWeights` for ``cfg``."""
    d = cfg.d_model
    return {
        "wte": (cfg.vocab_size, d),
        "wpe": (cfg.n_positions, d),
        "ln_f_g": (d,),
        "ln_f_b": (d,),
    }


def _check_array(name: str, arr: Any, shape: tuple[int, ...]) -> None:
    """Raise CheckpointError unless ``arr`` is a finite float32 ndarray of ``shape``."""
    if not isinstance(arr, np.ndarray):
        raise CheckpointError(f"weight {name} is a {type(arr).__name__}, expected a numpy array")
    if arr.shape != shape:
        raise CheckpointError(f"weight {name} has shape {arr.shape}, expected {shape}")
    if arr.dtype != np.float32:
        raise CheckpointError(f"weight {name} has dtype {arr.dtype}, expected float32")
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - int(finite.sum()) - n_nan)
        parts = []
        if n_nan:
            parts.append(f"NaN ({n_nan} of {arr.size} values)")
        if n_inf:
            parts.append(f"Inf ({n_inf} of {arr.size} values)")
        raise CheckpointError(
            f"weight {name} contains " + " and ".join(parts) + "; non-finite weights are "
            "refused as bad input (--allow-nonfinite applies to the numerics, not to weights)"
        )


@dataclass
class LayerWeights:
    """Parameters of one transformer block (float32, HF ``Conv1D`` layout ``x @ W + b``).

    With d = d_model and f = d_ff:

    Attributes:
        ln_1_g, ln_1_b: ``[d]`` gain and bias of the LayerNorm before attention (``ln_1``).
        attn_w: ``[d, 3d]`` fused QKV projection (``attn.c_attn.weight``); columns are ordered
            Q | K | V, and within each block of d columns the heads are contiguous
            (head h uses columns ``h*d_head:(h+1)*d_head``).
        attn_b: ``[3d]`` QKV bias, same column order.
        proj_w, proj_b: ``[d, d]``, ``[d]`` attention output projection (``attn.c_proj``).
        ln_2_g, ln_2_b: ``[d]`` LayerNorm before the MLP (``ln_2``).
        fc_w, fc_b: ``[d, f]``, ``[f]`` MLP up-projection (``mlp.c_fc``).
        fc2_w, fc2_b: ``[f, d]``, ``[d]`` MLP down-projection (``mlp.c_proj``).
    """

    ln_1_g: np.ndarray
    ln_1_b: np.ndarray
    attn_w: np.ndarray
    attn_b: np.ndarray
    proj_w: np.ndarray
    proj_b: np.ndarray
    ln_2_g: np.ndarray
    ln_2_b: np.ndarray
    fc_w: np.ndarray
    fc_b: np.ndarray
    fc2_w: np.ndarray
    fc2_b: np.ndarray

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(field_name, array)`` for every parameter, in declaration order."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)


@dataclass
class GPTWeights:
    """All parameters of a GPT-2 model (float32). The LM head is tied to ``wte``.

    Attributes:
        wte: ``[vocab_size, d_model]`` token embedding (also the LM head: logits = h @ wte.T).
        wpe: ``[n_positions, d_model]`` learned position embedding.
        layers: ``n_layer`` :class:`LayerWeights`, input to output.
        ln_f_g, ln_f_b: ``[d_model]`` final LayerNorm.
    """

    wte: np.ndarray
    wpe: np.ndarray
    layers: list[LayerWeights]
    ln_f_g: np.ndarray
    ln_f_b: np.ndarray

    def named_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(hf_name, array)`` for every parameter, HF names without ``transformer.``."""
        yield "wte.weight", self.wte
        yield "wpe.weight", self.wpe
        for i, layer in enumerate(self.layers):
            for field_name, arr in layer.arrays():
                yield f"h.{i}.{_LAYER_HF_NAMES[field_name]}", arr
        yield "ln_f.weight", self.ln_f_g
        yield "ln_f.bias", self.ln_f_b

    @property
    def nbytes(self) -> int:
        """Total bytes of all parameter arrays (the tied LM head counted once)."""
        return sum(int(arr.nbytes) for _, arr in self.named_arrays())

    def validate(self, cfg: GPTConfig) -> None:
        """Check layer count, every shape, dtype float32 and finiteness against ``cfg``.

        Raises:
            CheckpointError: e.g. ``"weight h.3.attn.c_attn.weight has shape (768, 2300),
                expected (768, 2304)"`` or ``"weight h.0.mlp.c_fc.weight contains NaN
                (12 of 2359296 values)"`` (HF tensor names).
        """
        if len(self.layers) != cfg.n_layer:
            raise CheckpointError(
                f"weights have {len(self.layers)} layers, model {cfg.name} expects {cfg.n_layer}"
            )
        top = _top_shapes(cfg)
        layer_shapes = _layer_shapes(cfg)
        for name, arr in self.named_arrays():
            if name.startswith("h."):
                field_name = _HF_TO_LAYER_FIELD[name.split(".", 2)[2]]
                shape = layer_shapes[field_name]
            else:
                shape = top[_HF_TO_TOP_FIELD[name]]
            _check_array(name, arr, shape)


_HF_TO_LAYER_FIELD = {v: k for k, v in _LAYER_HF_NAMES.items()}
_HF_TO_TOP_FIELD = {v: k for k, v in _TOP_HF_NAMES.items()}


def init_weights(cfg: GPTConfig, seed: int, std: float = 0.02) -> GPTWeights:
    """Seeded GPT-2-style random weights (float32, deterministic for a given seed).

    Matrices and embeddings are drawn from normal(0, std); the two residual-output matrices
    (``attn.c_proj.weight`` and ``mlp.c_proj.weight``) use std / sqrt(2 * n_layer), the GPT-2
    paper scheme also used by HF ``GPT2PreTrainedModel._init_weights``.

    Deliberate departure from GPT-2/HF (which zero the biases and set LayerNorm to gain 1,
    bias 0): biases are normal(0, std), LayerNorm gains 1 + normal(0, 0.1) and LayerNorm
    biases normal(0, 0.1), so numerical checks against a reference exercise every parameter.

    Draw order (for reproducibility): wte, wpe, then per layer ln_1_g, ln_1_b, attn_w, attn_b,
    proj_w, proj_b, ln_2_g, ln_2_b, fc_w, fc_b, fc2_w, fc2_b, then ln_f_g, ln_f_b, all from one
    ``numpy.random.default_rng(seed)`` using float32 standard normals.

    Args:
        cfg: model configuration.
        seed: seed for ``numpy.random.default_rng``.
        std: standard deviation of matrices, embeddings and biases (HF initializer_range).

    Raises:
        ConfigError: if ``std`` is not a finite number > 0.
    """
    if (
        isinstance(std, bool)
        or not isinstance(std, (int, float, np.floating))
        or not (math.isfinite(float(std)) and std > 0)
    ):
        raise ConfigError(f"init field std={std!r} must be a finite number > 0")
    rng = np.random.default_rng(seed)
    d, f = cfg.d_model, cfg.d_ff
    std = float(std)
    resid_std = std / math.sqrt(2 * cfg.n_layer)

    def normal(shape: tuple[int, ...], scale: float, mean: float = 0.0) -> np.ndarray:
        arr = rng.standard_normal(shape, dtype=np.float32)
        arr *= np.float32(scale)
        if mean:
            arr += np.float32(mean)
        return arr

    wte = normal((cfg.vocab_size, d), std)
    wpe = normal((cfg.n_positions, d), std)
    layers = []
    for _ in range(cfg.n_layer):
        layers.append(
            LayerWeights(
                ln_1_g=normal((d,), 0.1, 1.0),
                ln_1_b=normal((d,), 0.1),
                attn_w=normal((d, 3 * d), std),
                attn_b=normal((3 * d,), std),
                proj_w=normal((d, d), resid_std),
                proj_b=normal((d,), std),
                ln_2_g=normal((d,), 0.1, 1.0),
                ln_2_b=normal((d,), 0.1),
                fc_w=normal((d, f), std),
                fc_b=normal((f,), std),
                fc2_w=normal((f, d), resid_std),
                fc2_b=normal((d,), std),
            )
        )
    ln_f_g = normal((d,), 0.1, 1.0)
    ln_f_b = normal((d,), 0.1)
    return GPTWeights(wte=wte, wpe=wpe, layers=layers, ln_f_g=ln_f_g, ln_f_b=ln_f_b)


def to_hf_state_dict(w: GPTWeights) -> dict[str, np.ndarray]:
    """HF ``GPT2LMHeadModel`` state dict of ``w`` (arrays shared, not copied).

    Names: ``transformer.wte.weight``, ``transformer.wpe.weight``,
    ``transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}``,
    ``transformer.ln_f.{weight,bias}`` and ``lm_head.weight`` (the same array as wte).
    """
    sd = {f"transformer.{name}": arr for name, arr in w.named_arrays()}
    sd["lm_head.weight"] = w.wte
    return sd


def _to_float32(name: str, value: Any) -> np.ndarray:
    """Convert a NumPy array or torch tensor (any float dtype, incl. bfloat16) to float32."""
    if hasattr(value, "detach") and hasattr(value, "float"):  # torch.Tensor
        value = value.detach().cpu().float().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - anything unconvertible is a bad checkpoint
        raise CheckpointError(f"weight {name} cannot be read as an array: {exc}") from None
    if arr.dtype.kind != "f":
        raise CheckpointError(f"weight {name} has dtype {arr.dtype}, expected a float type")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not out.flags.writeable:  # e.g. a view of a read-only file buffer
        out = out.copy()
    return out


def from_hf_state_dict(sd: Mapping[str, Any], cfg: GPTConfig) -> GPTWeights:
    """Build :class:`GPTWeights` from a HF GPT-2 state dict and validate it against ``cfg``.

    Accepts names with or without the ``transformer.`` prefix, NumPy arrays or torch tensors
    of any float dtype (converted to float32). Skips the ``attn.bias``/``attn.masked_bias``
    buffers and ``lm_head.weight`` (tied to ``wte``; HF ignores it too when tying).

    Raises:
        CheckpointError: a missing tensor, an unexpected tensor (e.g. a layer beyond
            ``n_layer``), a duplicate name, a wrong shape or NaN/Inf values.
    """
    tensors: dict[str, Any] = {}
    for key, value in sd.items():
        name = key.removeprefix("transformer.")
        if name in _IGNORED_NAMES or _IGNORED_BUFFERS.fullmatch(name):
            continue
        if name in tensors:
            raise CheckpointError(f"tensor {name} appears twice (with and without prefix)")
        tensors[name] = value

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"checkpoint is missing tensor {name}")
        return _to_float32(name, tensors.pop(name))

    wte = take("wte.weight")
    wpe = take("wpe.weight")
    layers = []
    for i in range(cfg.n_layer):
        kwargs = {fld: take(f"h.{i}.{hf}") for fld, hf in _LAYER_HF_NAMES.items()}
        layers.append(LayerWeights(**kwargs))
    ln_f_g = take("ln_f.weight")
    ln_f_b = take("ln_f.bias")
    if tensors:
        extra = sorted(tensors)
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"checkpoint has unexpected tensor {extra[0]}{more} for model {cfg.name} "
            f"with {cfg.n_layer} layers"
        )
    w = GPTWeights(wte=wte, wpe=wpe, layers=layers, ln_f_g=ln_f_g, ln_f_b=ln_f_b)
    w.validate(cfg)
    return w


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def _read_safetensors_manual(path: Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader for files NumPy's loader rejects (bfloat16 tensors).

    Format: 8-byte little-endian header length, a JSON header mapping tensor name to
    ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the end of the header,
    then the raw little-endian data. BF16 is widened to float32 (upper 16 bits of an f32).
    """
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin : base + end]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            arr = np.frombuffer(raw, dtype=np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]))
        else:
            raise ValueError(f"unsupported dtype {info['dtype']} for tensor {name}")
        out[name] = arr.reshape(shape)
    return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Load one ``.safetensors`` file as NumPy arrays.

    Raises:
        CheckpointError: unreadable or corrupt file (naming the file and the reason).
    """
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except TypeError as exc:
        if "bfloat16" not in str(exc):
            raise CheckpointError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read {path}: {reason}") from None
    try:
        return _read_safetensors_manual(path)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def _read_torch_bin(path: Path) -> dict[str, Any]:
    """Load one ``pytorch_model.bin`` with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: torch not installed, or a corrupt/unsafe file.
    """
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"cannot read {path}: install torch to read pytorch_model.bin, or convert the "
            "checkpoint to model.safetensors"
        ) from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read {path}: {reason}") from None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"cannot read {path}: expected a state dict, got {type(sd)}")
    return dict(sd)


def _read_index(index: Path) -> list[Path]:
    """Shard files named by a HF ``*.index.json`` (its ``weight_map`` values), in order."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        shards = list(dict.fromkeys(data["weight_map"].values()))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read shard index {index}: {exc!r}") from None
    paths = [index.parent / s for s in shards]
    for p in paths:
        if not p.is_file():
            raise CheckpointError(f"shard {p} named in {index} does not exist")
    return paths


def _merge(parts: list[dict[str, Any]], where: Path) -> dict[str, Any]:
    """Merge shard state dicts, rejecting a tensor that appears in two shards."""
    merged: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k in merged:
                raise CheckpointError(f"tensor {k} appears in more than one shard in {where}")
            merged[k] = v
    return merged


def load_checkpoint(path: str | os.PathLike) -> tuple[GPTConfig, GPTWeights]:
    """Load a Hugging Face GPT-2 checkpoint directory.

    The directory must hold ``config.json`` and one of (first found wins):
    ``model.safetensors``; ``model.safetensors.index.json`` (sharded safetensors);
    ``pytorch_model.bin``; ``pytorch_model.bin.index.json`` (sharded). ``.bin`` files need
    torch and are read with ``torch.load(..., map_location="cpu", weights_only=True)``.
    The config is named after the directory.

    Returns:
        ``(cfg, weights)`` with float32, validated weights.

    Raises:
        CheckpointError: not a directory, no config.json, no weight file (listing what was
            looked for), a corrupt file, missing/unexpected tensors, wrong shapes, NaN/Inf.
        ConfigError: malformed or unsupported ``config.json``.
    """
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} is not a directory")
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {d} has no config.json")
    cfg = load_hf_config(cfg_file)
    candidates = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ]
    if (d / candidates[0]).is_file():
        sd: dict[str, Any] = _read_safetensors(d / candidates[0])
    elif (d / candidates[1]).is_file():
        sd = _merge([_read_safetensors(p) for p in _read_index(d / candidates[1])], d)
    elif (d / candidates[2]).is_file():
        sd = _read_torch_bin(d / candidates[2])
    elif (d / candidates[3]).is_file():
        sd = _merge([_read_torch_bin(p) for p in _read_index(d / candidates[3])], d)
    else:
        raise CheckpointError(f"checkpoint {d} has no weights: looked for " + ", ".join(candidates))
    return cfg, from_hf_state_dict(sd, cfg)


def save_safetensors(cfg: GPTConfig, w: GPTWeights, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` (HF GPT-2 style) and ``model.safetensors`` into ``directory``.

    The result loads with :func:`load_checkpoint` and with
    ``transformers.GPT2LMHeadModel.from_pretrained``. Tensor names carry the ``transformer.``
    prefix; ``lm_head.weight`` is omitted (tied), as HF does. The directory is created if
    needed and existing files are overwritten.

    Returns:
        The directory path.

    Raises:
        CheckpointError: if ``w`` does not validate against ``cfg``.
    """
    from safetensors.numpy import save_file

    w.validate(cfg)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: np.ascontiguousarray(v) for k, v in to_hf_state_dict(w).items()}
    del sd["lm_head.weight"]
    (out / "config.json").write_text(json.dumps(to_hf_dict(cfg), indent=2) + "\n")
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
