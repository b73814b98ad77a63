"""generate(): SRAM accounting and fit errors, the serving metrics, the CLI's bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gpt_workload.cli import main
from gpt_workload.generation.job import generate, numerics_available
from gpt_workload.mappings.resident import make_layout
from gpt_workload.models import resolve_model
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError, FitError

WSE2 = load_arch("wse2")


def _param_bytes(cfg, s=2) -> int:
    """Matrix, bias and norm bytes of the layers and the head, from the config's shape
    (the embedding table excluded)."""
    d, kv, ff, V, L = cfg.d_model, cfg.kv_dim, cfg.d_ff, cfg.vocab_size, cfg.n_layer
    mats = d * d + 2 * d * kv + d * d + (3 if cfg.gated_mlp else 2) * d * ff
    return s * (L * (mats + 2 * d) + d + V * d)


@pytest.mark.parametrize("region", ["wafer", "auto", 360])
def test_resident_weights_cover_the_model_once(region):
    """Every PE of a region holds one tile of every matrix of the region's layers: the tiles
    over the regions (the whole wafer, or the square regions) hold the model's bytes, at
    most one tile row/column of rounding more."""
    cfg = resolve_model("llama-3-8b")
    lay = make_layout(cfg, WSE2, precision="fp16", max_context=64, region=region)
    total = 0
    for load in lay.region_loads(0):
        w = lay.weight_bytes_per_pe(0, load)
        total += sum(v for k, v in w.items() if k != "embedding") * lay.rows * lay.cols
    assert sum(n for n, _, _ in lay.region_loads(0)) == cfg.n_layer
    want = _param_bytes(cfg)
    assert want <= total <= want * 1.25


def test_too_few_systems_names_the_bytes_short_and_the_systems_needed():
    cfg = resolve_model("llama-3.1-70b")
    with pytest.raises(FitError) as e:
        make_layout(cfg, WSE2, precision="fp16", max_context=64, systems=2)
    msg = str(e.value)
    assert "\n" not in msg and "B per PE short" in msg
    auto = make_layout(cfg, WSE2, precision="fp16", max_context=64, systems="auto")
    assert f"--systems {auto.systems}" in msg
    # auto is the fewest: one fewer does not fit
    with pytest.raises(FitError):
        make_layout(cfg, WSE2, precision="fp16", max_context=64, systems=auto.systems - 1)
    # the model's 70.6e9 parameters at 2 bytes need more wafers than their SRAM share alone
    assert auto.systems >= math.ceil(70.5e9 * 2 / (WSE2.n_pe * WSE2.pe.sram_usable_bytes))


def test_short_bytes_are_the_difference_between_need_and_capacity():
    cfg = resolve_model("llama-3-8b")
    lay = make_layout(cfg, WSE2, precision="fp16", max_context=64)
    s = lay.sram(0)
    assert s["total"] == s["weights"] + s["kv_cache"] + s["buffers"]
    assert s["free"] == WSE2.pe.sram_bytes - WSE2.pe.sram_reserved_bytes - s["total"]


def test_largest_context_x_batch_is_where_the_cache_stops_fitting():
    cfg = resolve_model("llama-3-8b")
    lay = make_layout(cfg, WSE2, precision="fp16", max_context=64)
    m = lay.sram(0)["max_context_x_batch"]
    assert m > 0
    knobs = dict(region=lay.region or "wafer", reduce=lay.reduce)  # the figure is this layout's
    make_layout(cfg, WSE2, precision="fp16", max_context=int(0.9 * m), **knobs)
    with pytest.raises(FitError, match="K/V cache"):
        make_layout(cfg, WSE2, precision="fp16", max_context=int(1.2 * m), **knobs)


def test_streaming_refuses_a_pipeline():
    with pytest.raises(ConfigError, match="streaming"):
        make_layout(resolve_model("gpt-tiny"), load_arch("grid32"), precision="fp16",
                    max_context=8, placement="streaming", systems=2)  # fmt: skip


def test_generate_report_metrics_are_consistent():
    r = generate("gpt-tiny", "grid32", new_tokens=6, batch=3, spread=0.5, seed=3,
                 fidelity="analytic")  # fmt: skip
    g = r.generation
    per = g["requests"]
    assert len(per) == 3
    lens = [(p["prompt_len"], p["new_tokens"]) for p in per]
    assert len(set(lens)) > 1  # drawn, not fixed
    ttft = [p["ttft_s"] for p in per]
    assert ttft == sorted(ttft) and ttft[0] > 0
    start = g["aggregate"]["prefill_s"]
    for p in per:
        if p["new_tokens"] > 1:
            assert p["tokens_per_s"] == pytest.approx(1 / p["tpot_s"])
            assert p["tpot_s"] == pytest.approx((p["finish_s"] - start) / (p["new_tokens"] - 1))
    n = sum(p["new_tokens"] for p in per)
    assert r.tokens == n
    assert r.tokens_per_s == pytest.approx(n / r.simulated_time_s)
    assert r.simulated_time_s == pytest.approx(start + sum(s["time_s"] for s in g["steps"]))
    # decode steps batch the live requests: step k has those with more than k tokens
    for s in g["steps"]:
        assert s["requests"] == sum(1 for p in per if p["new_tokens"] - 1 >= s["step"])
        assert s["time_s"] >= s["bound_s"]
    # the time split sums to the run's time
    assert r.totals["total_s"] == pytest.approx(r.simulated_time_s, rel=1e-9)
    assert {"compute_s", "sram_s", "fabric_s", "io_s", "intersystem_s"} <= set(r.breakdown[0])
    json.loads(r.to_json())


def test_prompt_text_is_tokenized_by_the_checkpoint_tokenizer(tmp_path, tiny_checkpoints):
    tokenizers = pytest.importorskip("tokenizers")
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints["gpt2"][0], d)
    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "wafer", "world"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    r = generate(str(d), "grid32", prompt="hello wafer world hello", new_tokens=3,
                 fidelity="analytic")  # fmt: skip
    assert r.generation["requests"][0]["prompt_len"] == 4
    with pytest.raises(ConfigError, match="tokenizer.json"):
        generate(str(tiny_checkpoints["llama"][0]), "grid32", prompt="hi", new_tokens=2)


# ---------------------------------------------------------------------- command line
def _run(capsys, tmp_path, *args):
    out = tmp_path / "out.json"
    rc = main(["generate", "--arch", "grid32", "--fidelity", "analytic", "--json", str(out),
               *args])  # fmt: skip
    err = capsys.readouterr().err
    return rc, err, out


def test_cli_runs_and_writes_json_and_trace(capsys, tmp_path):
    trace = tmp_path / "t.json"
    rc, err, out = _run(capsys, tmp_path, "--model", "gpt-tiny", "--new-tokens", "4",
                        "--batch", "2", "--trace", str(trace))  # fmt: skip
    assert rc == 0, err
    rep = json.loads(out.read_text())
    assert rep["generation"]["aggregate"]["new_tokens"] == 8
    ev = json.loads(trace.read_text())["traceEvents"]
    assert sum(1 for e in ev if e.get("name") == "prefill") == 2


def test_cli_says_where_it_wrote_json_and_trace(capsys, tmp_path):
    """generate wrote --json silently; it says so as run and train do."""
    out, trace = tmp_path / "r.json", tmp_path / "t.json"
    rc = main(["generate", "--arch", "grid32", "--fidelity", "analytic", "--model", "gpt-tiny",
               "--new-tokens", "2", "--json", str(out), "--trace", str(trace)])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and out.is_file() and trace.is_file()
    assert f"JSON report written to {out}" in lines
    assert f"Perfetto/Chrome trace written to {trace}" in lines


def _bad_ids(tmp_path):
    p = tmp_path / "ids.npy"
    np.save(p, np.array([[1, 2, 512]]))
    return str(p)


BAD = {
    "new tokens 0": (["--model", "gpt-tiny", "--new-tokens", "0"], "--new-tokens"),
    "context past positions": (["--model", "gpt-tiny", "--new-tokens", "200"], "positions"),
    "too few systems": (["--model", "llama-3.1-70b", "--arch", "wse2", "--systems", "2"],
                        "B per PE short"),
    "batch does not fit": (["--model", "llama-3-8b", "--arch", "wse2", "--batch", "512",
                            "--prompt-len", "1024", "--new-tokens", "1024"], "does not fit"),
    "systems word": (["--model", "gpt-tiny", "--systems", "many"], "--systems"),
    "region too small": (["--model", "llama-3-8b", "--arch", "wse2", "--region", "7"],
                         "--region 7 is too small"),
}  # fmt: skip


def test_cli_small_region_names_region_not_batch(capsys, tmp_path):
    """A 7 x 7 region cannot hold one Llama-3-8B layer: the error names --region, the bytes
    per PE needed against the usable bytes, and suggests a larger side, not a lower batch."""
    rc, err, _ = _run(capsys, tmp_path, "--model", "llama-3-8b", "--arch", "wse2",
                      "--region", "7")  # fmt: skip
    assert rc == 2 and "B per PE of the" in err and "B usable" in err
    assert "--region auto" in err and "lower the batch" not in err


@pytest.mark.parametrize("case", sorted(BAD))
def test_cli_bad_input_is_one_line_exit_2_nothing_written(capsys, tmp_path, case):
    args, needle = BAD[case]
    rc, err, out = _run(capsys, tmp_path, *args)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("wse-sim: error:") and needle in err
    assert not out.exists()


def test_cli_prompt_id_outside_vocabulary(capsys, tmp_path):
    rc, err, out = _run(capsys, tmp_path, "--model", "gpt-tiny", "--prompt-tokens",
                        _bad_ids(tmp_path))  # fmt: skip
    assert rc == 2 and "512" in err and "0..511" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.skipif(numerics_available() is not None, reason="numerics built in this tree")
def test_cli_check_requests_without_numerics(capsys, tmp_path):
    rc, err, out = _run(capsys, tmp_path, "--model", "gpt-tiny", "--check-requests", "1")
    assert rc == 2 and "not built in this tree" in err and not out.exists()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generate_tokens_equal_hf_greedy(tiny_checkpoints, family):
    """With the generation numerics in the tree, generate()'s checked request follows the
    layout's DecodePlan and gives Hugging Face's greedy tokens."""
    pytest.importorskip("gpt_workload.generation.numerics")
    torch = pytest.importorskip("torch")
    d, model = tiny_checkpoints[family]
    prompt = np.random.default_rng(1).integers(0, 97, size=16)
    r = generate(str(d), "grid32", prompt_tokens=prompt, new_tokens=8, check_requests=1,
                 precision="fp32", fidelity="analytic")  # fmt: skip
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt)[None], max_new_tokens=8, do_sample=False,
                             attention_mask=torch.ones(1, 16, dtype=torch.long))  # fmt: skip
    assert r.numerics["tokens"][0] == out[0, 16:].tolist()


@pytest.mark.skipif(numerics_available() is None, reason="numerics not built in this tree")
def test_cli_numerics_row_names_divergence_in_words(capsys, tmp_path):
    """The numerics row printed ``first divergence [None]``; it reads ``none`` when the
    report's per-request first divergences are all null, else names request and step."""
    out = tmp_path / "r.json"
    rc = main(["generate", "--arch", "grid32", "--fidelity", "analytic", "--model", "gpt-tiny",
               "--new-tokens", "3", "--check-requests", "1", "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    div = json.loads(out.read_text())["numerics"]["first_divergence"]
    want = ", ".join(f"request {i} at step {d}" for i, d in enumerate(div) if d is not None)
    assert f"first divergence {want or 'none'}" in text
    assert "[None]" not in text
