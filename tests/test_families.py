"""Model families as data: presets, HF config parsing by model_type, bad input, the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from gpt_workload import models
from gpt_workload.config import GPTConfig
from wse_sim.errors import ConfigError

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

NEW_PRESETS = [
    "gpt-j-6b",
    "llama-2-7b",
    "llama-3-8b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "qwen2-7b",
    "qwen2-72b",
]
HF_CONFIG = {
    "gpt2": "GPT2Config",
    "gptj": "GPTJConfig",
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
}


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_preset_param_count_matches_transformers(name: str) -> None:
    """n_params of each preset equals the parameter count of the HF model built from its
    config.json on the meta device (no memory, independent code)."""
    cfg = models.resolve_model(name)
    hf_cfg = getattr(transformers, HF_CONFIG[cfg.family])(**models.to_hf_dict(cfg))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # tied parameters counted once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    assert cfg.n_params == total


@pytest.mark.parametrize("name", NEW_PRESETS + ["cerebras-gpt-111m", "gpt-tiny"])
def test_hf_config_round_trip(name: str) -> None:
    cfg = models.resolve_model(name)
    d = getattr(transformers, HF_CONFIG[cfg.family])(**models.to_hf_dict(cfg)).to_dict()
    back = models.parse_hf_dict(d, cfg.name)
    assert back == cfg


def test_published_shapes_spot_checks() -> None:
    """A few fields from the published config.json files (cited in each family module)."""
    l31 = models.resolve_model("llama-3.1-8b")
    assert (l31.n_kv_heads, l31.rope_theta, l31.rope_scaling.factor) == (8, 500000.0, 8.0)
    assert models.resolve_model("llama-3-8b").rope_scaling is None
    q = models.resolve_model("qwen2-7b")
    assert (q.n_kv_heads, q.qkv_bias, q.attn_out_bias, q.d_ff) == (4, True, False, 18944)
    j = models.resolve_model("gpt-j-6b")
    assert (j.rotary_dim, j.parallel_block, j.lm_head_bias, j.vocab_size) == (64, True, True, 50400)
    assert not j.tie_embeddings and j.rotary_interleaved


def test_gpt2_defaults_unchanged() -> None:
    """A GPT-2 config written as before has the GPT-2 family features."""
    c = models.resolve_model("cerebras-gpt-111m")
    assert (c.family, c.n_kv_heads, c.norm, c.rotary_dim, c.gated_mlp) == (
        "gpt2",
        12,
        "layernorm",
        0,
        False,
    )
    assert c.learned_positions and c.tie_embeddings and c.qkv_bias
    assert c.n_params == 111_050_496  # unchanged closed form (GPT2LMHeadModel count)


def _llama_dict(**kw) -> dict:
    d = models.to_hf_dict(models.resolve_model("llama-3.1-8b"))
    d.update(kw)
    return d


@pytest.mark.parametrize(
    "d,needle",
    [
        ({"model_type": "mistral"}, 'model_type="mistral" is not supported'),
        (_llama_dict(num_key_value_heads=5), "num_key_value_heads=5 must divide"),
        (
            _llama_dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
            'rope_scaling.rope_type="yarn" is not supported',
        ),
        (
            _llama_dict(rope_scaling={"type": "linear", "factor": 2.0}),
            'rope_scaling.rope_type="linear" is not supported',
        ),
        (_llama_dict(num_attention_heads=30), "num_attention_heads=30 must divide"),
        (
            {**models.to_hf_dict(models.resolve_model("gpt-j-6b")), "n_head": 12},
            "n_head=12 must divide n_embd=4096",
        ),
        (_llama_dict(hidden_act="gelu"), "hidden_act"),
        (_llama_dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
        (
            {**models.to_hf_dict(models.resolve_model("qwen2-7b")), "use_sliding_window": True},
            "use_sliding_window",
        ),
    ],
)
def test_bad_hf_configs_one_line(d: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        models.parse_hf_dict(d, "x", source="cfg.json")
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_config_field_validation() -> None:
    base = models.resolve_model("llama-3-8b")
    bad = [("n_kv_heads", 5), ("norm", "batchnorm"), ("rotary_dim", 130), ("rotary_dim", 3),
           ("rope_theta", 0.5), ("activation", "gelu")]  # fmt: skip
    for field, value in bad:
        with pytest.raises(ConfigError, match=field if field != "activation" else "gated"):
            dataclasses.replace(base, **{field: value})
    with pytest.raises(ConfigError, match="tie_embeddings=False is not supported for family gpt2"):
        dataclasses.replace(models.resolve_model("gpt-tiny"), tie_embeddings=False)
    assert isinstance(dataclasses.replace(base, tie_embeddings=True), GPTConfig)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt_workload.cli", *args], capture_output=True, text=True
    )


def test_cli_models_list_groups_by_family() -> None:
    p = _cli("models", "list")
    assert p.returncode == 0
    for fam in ("family gpt2", "family gptj", "family llama", "family qwen2"):
        assert fam in p.stdout
    for name in NEW_PRESETS:
        assert name in p.stdout
    assert p.stdout.index("family llama") < p.stdout.index("llama-3.1-405b")
    # generate lowers every family, and the listing says so
    for line in (ln for ln in p.stdout.splitlines() if ln.startswith("family ")):
        assert "generate" in line.split("lowered:")[1], line


def test_generate_times_a_preset_of_every_family() -> None:
    """``LOWERED_FOR["generate"]`` is what generate() accepts: the smallest preset of each
    family decodes (analytic timing) on wse2."""
    from gpt_workload.generation.job import generate

    for fam, rows in models.list_by_family(include_test=True).items():
        assert fam in models.LOWERED_FOR["generate"]
        cfg = min((r[0] for r in rows), key=lambda c: c.n_layer * c.d_model)
        rep = generate(cfg.name, "wse2", fidelity="analytic", new_tokens=2)
        assert rep.totals["total_s"] > 0, fam


def test_cli_bad_config_and_unlowered_family_exit_2(tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(_llama_dict(num_key_value_heads=3)))
    p = _cli("run", "--model", str(bad))
    assert p.returncode == 2 and "num_key_value_heads=3 must divide" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    for name in ("llama-3-8b", "qwen2-7b", "gpt-j-6b"):
        p = _cli("run", "--model", name, "--arch", "grid8", "--mapping", "summa")
        fam = models.resolve_model(name).family
        assert p.returncode == 2
        assert f"mapping summa does not lower family {fam} yet; use weight_streaming" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_structural_fields_outside_the_family_are_refused() -> None:
    """A sweep's ``model.FIELD`` can build configs no family implements: GQA or RMSNorm on a
    gpt2 config, a layernorm llama. They are refused in one line, never run as gpt2."""
    tiny = models.resolve_model("gpt-tiny")
    for field, value in [("n_kv_heads", 2), ("norm", "rmsnorm"), ("qkv_bias", False)]:
        cfg = dataclasses.replace(tiny, **{field: value})
        with pytest.raises(ConfigError, match=f"model field {field}=.* family gpt2"):
            models.require_lowered(cfg)
        with pytest.raises(ConfigError, match="not supported by family gpt2"):
            models.build_graph(cfg)
    llama = models.resolve_model("llama-3-8b")
    with pytest.raises(ConfigError, match="norm='layernorm' is not supported by family llama"):
        models.build_graph(dataclasses.replace(llama, norm="layernorm"))
    with pytest.raises(ConfigError, match="family=.* is not supported"):
        models.build_graph(dataclasses.replace(tiny, family="mistral"))
    for name in NEW_PRESETS + ["cerebras-gpt-13b", "gpt-tiny"]:
        models.check_family(models.resolve_model(name))
