"""The wse-sim command line, as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import hf_gpt2, save_gpt_tiny
from report_keys import REPORT_KEYS
from safetensors.numpy import load_file, save_file

from gpt_workload.models import resolve_model


def wse_sim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt_workload.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("wse-sim: error:")
    for f in fragments:
        assert f in lines[0]


def test_arch_and_models_list():
    p = wse_sim("arch", "list")
    assert p.returncode == 0 and "wse2" in p.stdout and "wse3" in p.stdout
    p = wse_sim("arch", "show", "wse2")
    assert p.returncode == 0 and "pe.sram_bytes" in p.stdout and "HC34" in p.stdout
    p = wse_sim("models", "list")
    assert p.returncode == 0
    for n in ("111m", "256m", "590m", "1.3b", "2.7b", "6.7b", "13b"):
        assert f"cerebras-gpt-{n}" in p.stdout


def test_run_writes_json_logits_and_plots(tmp_path, gpt_tiny_ckpt):
    cfg = resolve_model("gpt-tiny")
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 32))
    np.save(tmp_path / "tok.npy", tokens)
    p = wse_sim(
        "run",
        "--model",
        str(gpt_tiny_ckpt),
        "--arch",
        "grid32",
        "--seq-len",
        "32",
        "--batch",
        "8",
        "--precision",
        "fp32",
        "--tokens",
        str(tmp_path / "tok.npy"),
        "--save-logits",
        str(tmp_path / "logits.npy"),
        "--json",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "plots"),
        "--set",
        "pe.clock_hz=1e9",
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert set(REPORT_KEYS) <= set(rep)
    assert rep["numerics"]["precision"] == "fp32"
    assert rep["numerics"]["max_abs_error_vs_reference"] <= 1e-4
    assert rep["arch_config"]["pe"]["clock_hz"] == 1e9
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (2, 32, cfg.vocab_size) and logits.dtype == np.float32
    util = np.load(tmp_path / "plots" / "pe_utilisation.npy")
    assert util.shape == (32, 32)
    assert (tmp_path / "plots" / "pe_utilisation.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--model", "no-such-model"], ["unknown model", "cerebras-gpt-111m"]),
        (["--arch", "wse9"], ["unknown arch", "wse2"]),
        (["--arch", "/tmp/no/such/nope.toml"], ["arch file", "nope.toml' does not exist"]),
        (["--set", "pe.sram_bytes=-1"], ["pe.sram_bytes=-1"]),
        (
            ["--model", "cerebras-gpt-13b", "--arch", "grid8"],
            ["does not fit one sequence", "short by"],
        ),
        (["--fidelity", "exact"], ["fidelity"]),
        (["--batch", "0"], ["batch=0"]),
        (["--seq-len", "99999"], ["seq_len=99999"]),
        (["--tokens", "/no/such/file.npy"], ["--tokens"]),
    ],
)
def test_bad_input_is_one_line(args, fragments):
    assert_one_line_error(wse_sim("run", "--check-sequences", "0", *args), *fragments)


def test_corrupt_checkpoint_is_one_line(tmp_path, gpt_tiny_ckpt):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((gpt_tiny_ckpt / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert_one_line_error(
        wse_sim("run", "--model", str(bad), "--arch", "grid32", "--seq-len", "16"),
        "model.safetensors",
    )


def test_nan_weights_are_one_line(tmp_path):
    save_gpt_tiny(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    key = next(k for k in sd if k.endswith("h.1.mlp.c_fc.weight"))
    sd[key][3, 5] = np.nan
    save_file(sd, tmp_path / "model.safetensors")
    assert_one_line_error(
        wse_sim("run", "--model", str(tmp_path), "--arch", "grid32", "--seq-len", "16"),
        "NaN",
        "h.1.mlp.c_fc.weight",
    )


def test_malformed_tokens_file(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((2, 3, 4)))
    assert_one_line_error(
        wse_sim(
            "run", "--model", "gpt-tiny", "--arch", "grid32", "--tokens", str(tmp_path / "t.npy")
        ),
        "[K, T]",
    )
    np.save(tmp_path / "big.npy", np.full((1, 16), 10**6))
    assert_one_line_error(
        wse_sim(
            "run", "--model", "gpt-tiny", "--arch", "grid32", "--tokens", str(tmp_path / "big.npy")
        ),
        "tokens",
    )


# ---- failures found by a fresh-user trial, pinned ---------------------------------------


def test_sharded_pytorch_bin_checkpoint_uses_its_weights(tmp_path):
    """A checkpoint saved as sharded pytorch_model-*.bin was once run with seeded weights."""
    import torch

    model = hf_gpt2()
    model.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="20KB")
    assert (tmp_path / "pytorch_model.bin.index.json").exists()
    tokens = np.random.default_rng(0).integers(0, 300, size=(1, 16))
    np.save(tmp_path / "tok.npy", tokens)
    p = wse_sim(
        "run",
        "--model",
        str(tmp_path),
        "--arch",
        "grid32",
        "--precision",
        "fp32",
        "--tokens",
        str(tmp_path / "tok.npy"),
        "--save-logits",
        str(tmp_path / "l.npy"),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert p.returncode == 0, p.stderr
    with torch.no_grad():
        hf = model(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(np.load(tmp_path / "l.npy") - hf).max() <= 1e-4
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["numerics"]["weights"].startswith("checkpoint")


def test_config_only_directory_is_refused(tmp_path, gpt_tiny_ckpt):
    """A directory with config.json and no weight file once ran on seeded weights."""
    (tmp_path / "config.json").write_text((gpt_tiny_ckpt / "config.json").read_text())
    p = wse_sim("run", "--model", str(tmp_path), "--arch", "grid32", "--seq-len", "16")
    assert p.returncode == 2
    assert_one_line_error(p, "holds no weights", "model.safetensors", "config.json")


def test_config_json_file_runs_seeded_and_says_so_first(tmp_path, gpt_tiny_ckpt):
    cfg = tmp_path / "config.json"
    cfg.write_text((gpt_tiny_ckpt / "config.json").read_text())
    args = ["run", "--model", str(cfg), "--arch", "grid32", "--seq-len", "16"]
    p = wse_sim(*args, "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]
    assert first.startswith("NOTE: weights: seeded init (seed 0)") and "config.json" in first
    rep = json.loads((tmp_path / "r.json").read_text())
    assert "seeded init" in rep["numerics"]["weights"]
    assert rep["notices"][0] == first.removeprefix("NOTE: ")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--check-sequences", "3", "--batch", "2"], "exceeds batch=2"),
        (["--check-sequences", "0", "--save-logits", "x.npy"], "--save-logits"),
        (["--seed", "-1"], "seed=-1"),
        (["--json", "/no/such/dir/r.json"], "--json"),
        (["--plot", "/proc/x"], "--plot '/proc/x' is not allowed: it cannot be created"),
        (["--batch", "1000000000"], "batch=1000000000"),
        (["--batch", "900000", "--arch", "grid8"], "kernels"),
        (
            [
                "--model",
                "cerebras-gpt-111m",
                "--arch",
                "wse2",
                "--check-sequences",
                "1000",
                "--batch",
                "1000",
            ],
            "GiB of host memory",
        ),
    ],
)
def test_more_bad_input_is_one_line(args, fragment):
    assert_one_line_error(
        wse_sim("run", "--model", "gpt-tiny", "--arch", "grid32", *args), fragment
    )


def test_plot_path_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    assert_one_line_error(
        wse_sim(
            "run",
            "--model",
            "gpt-tiny",
            "--arch",
            "grid32",
            "--check-sequences",
            "0",
            "--plot",
            str(f),
        ),
        "--plot",
    )


def test_tokens_disagreeing_with_check_sequences(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((2, 16), dtype=np.int64))
    assert_one_line_error(
        wse_sim(
            "run",
            "--model",
            "gpt-tiny",
            "--arch",
            "grid32",
            "--tokens",
            str(tmp_path / "t.npy"),
            "--check-sequences",
            "0",
        ),
        "check_sequences=0",
    )
    np.save(tmp_path / "e.npy", np.zeros((0, 16), dtype=np.int64))
    assert_one_line_error(
        wse_sim(
            "run", "--model", "gpt-tiny", "--arch", "grid32", "--tokens", str(tmp_path / "e.npy")
        ),
        "tokens",
    )


@pytest.mark.parametrize("value", ["[994]", "{a = 1}", "1979-05-27"])
def test_arch_toml_with_non_numbers(tmp_path, value):
    from importlib import resources

    text = resources.files("wse_sim").joinpath("presets", "grid8.toml").read_text()
    p = tmp_path / "a.toml"
    p.write_text(text.replace("rows = 8\n", f"rows = {value}\n", 1))
    assert_one_line_error(
        wse_sim("run", "--model", "gpt-tiny", "--arch", str(p), "--check-sequences", "0"),
        "wafer.rows",
    )
