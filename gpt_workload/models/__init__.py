"""Model families: config parsing by ``model_type``, presets, weights and checkpoints.

One module per family (:mod:`.gpt2`, :mod:`.gptj`, :mod:`.llama`, :mod:`.qwen2`), each with
``MODEL_TYPE``, ``ARCHITECTURE`` (the HF class), ``from_hf_dict``, ``to_hf_dict``,
``PRESETS`` and ``SOURCES`` (the published ``config.json`` of each preset); the rotary
families also name their HF tensors (``HF_LAYER_NAMES``...). A family is data
(:class:`gpt_workload.config.GPTConfig` fields) plus its layer sequence
(:mod:`gpt_workload.graph`).

Every family runs forward (``wse-sim run``) and trains (``wse-sim train``: its timing; the
training numerics of gpt2 only so far) under the ``weight_streaming`` mapping
(:data:`LOWERED`) and decodes (``wse-sim generate``); sweeps and the experiments take gpt2
only so far (:data:`LOWERED_FOR`); :func:`require_lowered` refuses the others with one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from gpt_workload.config import TEST_PRESETS, WEIGHT_FILES, GPTConfig, read_config_json
from gpt_workload.graph import OpGraph, prologue
from gpt_workload.models import gpt2, gptj, llama, qwen2
from gpt_workload.models.common import check_fixed, json_value
from gpt_workload.models.weights import DecoderWeights, from_hf_state_dict, init_decoder_weights
from wse_sim.errors import CheckpointError, ConfigError

__all__ = [
    "FAMILIES",
    "LOWERED",
    "LOWERED_FOR",
    "build_graph",
    "check_family",
    "family_module",
    "init_model_weights",
    "list_by_family",
    "load_checkpoint",
    "load_hf_config",
    "parse_hf_dict",
    "presets",
    "require_lowered",
    "resolve_model",
    "to_hf_dict",
]

#: Family name (= HF ``model_type``) -> module, in the order ``models list`` shows them.
FAMILIES: dict[str, ModuleType] = {m.MODEL_TYPE: m for m in (gpt2, gptj, llama, qwen2)}

#: Families ``wse-sim run`` lowers (forward timing and numerics; the non-gpt2 families under
#: the ``weight_streaming`` mapping only).
LOWERED: tuple[str, ...] = ("gpt2", "gptj", "llama", "qwen2")

#: Families each job lowers: ``run`` (forward), ``train`` (the timed training step),
#: ``train_numerics`` (training numerics: forward, backward and AdamW through the kernels),
#: ``generate`` (decode timing and numerics), ``sweep``, ``experiments``.
LOWERED_FOR: dict[str, tuple[str, ...]] = {
    "run": LOWERED,
    "train": LOWERED,
    "train_numerics": LOWERED,
    "generate": LOWERED,
    "sweep": ("gpt2",),
    "experiments": ("gpt2",),
}


def family_module(cfg_or_family: GPTConfig | str) -> ModuleType:
    """The module of a family name or of a config's family.

    Raises:
        ConfigError: unknown family.
    """
    fam = cfg_or_family.family if isinstance(cfg_or_family, GPTConfig) else cfg_or_family
    if fam not in FAMILIES:
        raise ConfigError(
            f"model field family={fam!r} is not supported: expected one of " + ", ".join(FAMILIES)
        )
    return FAMILIES[fam]


def check_family(cfg: GPTConfig) -> ModuleType:
    """The family module of ``cfg`` after checking that the config's structural fields are
    the ones that family's layer implements (its ``FIXED``).

    Raises:
        ConfigError: unknown family or a field the family does not support (one line).
    """
    mod = family_module(cfg)
    check_fixed(cfg, mod.FIXED)
    return mod


def build_graph(cfg: GPTConfig) -> OpGraph:
    """The op graph of ``cfg``: the shared prologue (embedding, learned positions if any),
    the family's layer (its ``build_layer``) and its epilogue (final norm, LM head).

    Raises:
        ConfigError: unknown family, or a field the family does not support.
    """
    mod = check_family(cfg)
    return OpGraph(
        cfg, tuple(prologue(cfg)), tuple(mod.build_layer(cfg)), tuple(mod.build_epilogue(cfg))
    )


def presets() -> dict[str, GPTConfig]:
    """Every published preset of every family, keyed by lower-case name."""
    out: dict[str, GPTConfig] = {}
    for mod in FAMILIES.values():
        out.update(mod.PRESETS)
    return out


def list_by_family(include_test: bool = False) -> dict[str, list[tuple[GPTConfig, str]]]:
    """``{family: [(config, source), ...]}`` in size order within each family; with
    ``include_test`` the test models (source ``"test model"``) join their family."""
    out: dict[str, list[tuple[GPTConfig, str]]] = {}
    for fam, mod in FAMILIES.items():
        out[fam] = [(c, mod.SOURCES[n]) for n, c in mod.PRESETS.items()]
    if include_test:
        for c in TEST_PRESETS.values():
            out.setdefault(c.family, []).append((c, "test model"))
    return out


def parse_hf_dict(d: Any, name: str, *, source: str = "config.json") -> GPTConfig:
    """A :class:`GPTConfig` from a HF ``config.json`` dictionary of any family, chosen by its
    ``model_type`` (absent: ``gpt2``, as before families existed).

    Raises:
        ConfigError: not an object, an unknown ``model_type`` or a bad field (one line).
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type", "gpt2")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{source} field model_type={json_value(model_type)} is not supported: expected "
            "one of " + ", ".join(f'"{f}"' for f in FAMILIES)
        )
    return FAMILIES[model_type].from_hf_dict(d, name, source=source)


def to_hf_dict(cfg: GPTConfig) -> dict[str, Any]:
    """The HF ``config.json`` dictionary of ``cfg`` (its family's ``to_hf_dict``)."""
    return family_module(cfg).to_hf_dict(cfg)


def load_hf_config(path: str | os.PathLike, name: str | None = None) -> GPTConfig:
    """Read a HF ``config.json`` of any family (named after its directory by default).

    Raises:
        ConfigError: unreadable file, malformed JSON, unknown ``model_type`` or a bad field.
    """
    data, name = read_config_json(path, name)
    return parse_hf_dict(data, name, source=str(path))


def resolve_model(spec: str | os.PathLike) -> GPTConfig:
    """A preset name of any family (case-insensitive), a test model, a ``config.json`` path or
    a checkpoint directory -> :class:`GPTConfig`.

    Raises:
        ConfigError: empty or unknown spec (listing the presets), a path (a spec with a
            ``/`` or ending in ``.json``) that does not exist, a directory without
            ``config.json`` or without weights (:data:`gpt_workload.config.WEIGHT_FILES`; a
            ``config.json`` alone runs on seeded weights only when given as a file path), or a
            bad config.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"model={spec!r} must be a preset name or a path")
    text = os.fspath(spec)
    key = text.strip().lower()
    known = presets()
    if key in known:
        return known[key]
    if key in TEST_PRESETS:
        return TEST_PRESETS[key]
    p = Path(text)
    if key and p.is_dir():
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"model directory {p} has no config.json")
        cfg = load_hf_config(cfg_file)
        if not any((p / f).is_file() for f in WEIGHT_FILES):
            raise ConfigError(
                f"model directory {p} holds no weights (none of {', '.join(WEIGHT_FILES)}); "
                f"give its config.json path ({cfg_file}) to run on seeded weights"
            )
        return cfg
    if key and p.is_file():
        return load_hf_config(p)
    names = ", ".join(known)
    if not key:
        raise ConfigError(
            f"model={text!r} is empty: expected a preset ({names}), a config.json path or a "
            "checkpoint directory"
        )
    if ("/" in text or os.sep in text or key.endswith(".json")) and not p.exists():
        raise ConfigError(
            f"model {text!r}: no such file or directory (expected a config.json path, a "
            "checkpoint directory or a preset name)"
        )
    tests = ", ".join(f"{n} (test model)" for n in TEST_PRESETS)
    raise ConfigError(
        f"unknown model {text!r}: expected one of {names}, {tests}, a config.json path or a "
        "checkpoint directory"
    )


def require_lowered(cfg: GPTConfig, what: str = "wse-sim run", job: str = "run") -> None:
    """Refuse a family that ``job`` (a :data:`LOWERED_FOR` key) does not lower yet, in one
    line (``what`` names the job in the message).

    Raises:
        ConfigError: ``cfg.family`` not in ``LOWERED_FOR[job]``, or a structural field its
            family does not support (:func:`check_family`; e.g. a gpt2 config with GQA).
    """
    check_family(cfg)
    ok = LOWERED_FOR[job]
    if cfg.family not in ok:
        raise ConfigError(
            f"model {cfg.name} is of family {cfg.family}, not lowered yet by {what} "
            f"(only family {', '.join(ok)}); wse-sim run lowers it (weight_streaming)"
        )


def init_model_weights(cfg: GPTConfig, seed: int) -> Any:
    """Seeded weights of any family: :class:`gpt_workload.weights.GPTWeights` for gpt2,
    :class:`DecoderWeights` otherwise."""
    if cfg.family == "gpt2":
        from gpt_workload.weights import init_weights

        return init_weights(cfg, seed)
    family_module(cfg)
    return init_decoder_weights(cfg, seed)


def _read_tensors(d: Path) -> dict[str, Any]:
    """All tensors of a HF checkpoint directory (safetensors, sharded or not, or
    ``pytorch_model.bin``, sharded or not), through the readers of :mod:`gpt_workload.weights`.
    """
    from gpt_workload.weights import _merge, _read_index, _read_safetensors, _read_torch_bin

    names = (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    )
    if (d / names[0]).is_file():
        return _read_safetensors(d / names[0])
    if (d / names[1]).is_file():
        return _merge([_read_safetensors(p) for p in _read_index(d / names[1])], d)
    if (d / names[2]).is_file():
        return _read_torch_bin(d / names[2])
    if (d / names[3]).is_file():
        return _merge([_read_torch_bin(p) for p in _read_index(d / names[3])], d)
    raise CheckpointError(f"checkpoint {d} has no weights: looked for " + ", ".join(names))


def load_checkpoint(path: str | os.PathLike) -> tuple[GPTConfig, Any]:
    """Load a HF checkpoint directory of any family by its ``config.json``'s ``model_type``.

    Returns:
        ``(cfg, weights)``: :class:`gpt_workload.weights.GPTWeights` for gpt2 (through
        :func:`gpt_workload.weights.load_checkpoint`), :class:`DecoderWeights` otherwise.

    Raises:
        CheckpointError: not a directory, no config.json, no or corrupt weight files, missing
            or unexpected tensors, a tensor shape that disagrees with the config, NaN/Inf.
        ConfigError: a bad ``config.json``.
    """
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} is not a directory")
    if not (d / "config.json").is_file():
        raise CheckpointError(f"checkpoint {d} has no config.json")
    cfg = load_hf_config(d / "config.json")
    if cfg.family == "gpt2":
        from gpt_workload.weights import load_checkpoint as load_gpt2

        return load_gpt2(d)
    return cfg, from_hf_state_dict(_read_tensors(d), cfg, family_module(cfg))


__all__ += ["DecoderWeights"]
