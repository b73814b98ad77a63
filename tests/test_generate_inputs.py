"""wse-sim generate: user input is used as given or refused in one line (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpt_workload.cli import main
from gpt_workload.generation.job import generate
from wse_sim.errors import ConfigError


def _run(capsys, tmp_path, *args):
    out = tmp_path / "out.json"
    rc = main(["generate", "--arch", "grid32", "--fidelity", "analytic", "--model", "gpt-tiny",
               "--json", str(out), *args])  # fmt: skip
    cap = capsys.readouterr()
    return rc, cap.err, cap.out, out


def _ids(tmp_path, shape, seed=0, name="ids.npy"):
    p = tmp_path / name
    arr = np.random.default_rng(seed).integers(0, 512, size=shape)
    np.save(p, arr)
    return str(p), arr


# ------------------------------------------------------------------ 1. prompts as given
PROMPT_BAD = {
    "2 rows at batch 1": ((2, 20), [], ["--prompt-tokens", "2 prompt rows", "--batch 1"]),
    "2 rows at batch 3": ((2, 20), ["--batch", "3"], ["--prompt-tokens", "--batch 3"]),
    "prompt-len with file": ((20,), ["--prompt-len", "40"], ["--prompt-len 40",
                                                              "--prompt-tokens"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(PROMPT_BAD))
def test_prompt_file_that_would_be_changed_is_refused(capsys, tmp_path, case):
    shape, extra, needles = PROMPT_BAD[case]
    path, _ = _ids(tmp_path, shape)
    rc, err, _, out = _run(capsys, tmp_path, "--prompt-tokens", path, *extra)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("wse-sim: error:"), err
    for n in needles:
        assert n in err
    assert not out.exists()


def test_prompt_rows_equal_to_batch_are_used_as_given_with_spread(capsys, tmp_path):
    """batch 3, 3 rows, spread 0.5: each request's prompt is its row, whole; only the output
    lengths vary."""
    path, arr = _ids(tmp_path, (3, 20), seed=4)
    rc, err, _, out = _run(capsys, tmp_path, "--prompt-tokens", path, "--batch", "3",
                           "--spread", "0.5", "--new-tokens", "8")  # fmt: skip
    assert rc == 0, err
    reqs = json.loads(out.read_text())["generation"]["requests"]
    assert [r["prompt_len"] for r in reqs] == [20, 20, 20]
    news = [r["new_tokens"] for r in reqs]
    assert all(4 <= n <= 12 for n in news)


def test_prompt_ids_reach_requests_unchanged():
    """The Request objects carry exactly the file's rows (one row: every request)."""
    from gpt_workload.generation.requests import make_requests
    from gpt_workload.models import resolve_model

    cfg = resolve_model("gpt-tiny")
    arr = np.random.default_rng(2).integers(0, 512, size=(3, 20))
    reqs = make_requests(cfg, batch=3, new_tokens=4, prompt_tokens=arr, spread=0.5, seed=1)
    for r, row in zip(reqs, arr):
        np.testing.assert_array_equal(r.prompt, row)
    one = make_requests(cfg, batch=3, new_tokens=4, prompt_tokens=arr[:1])
    for r in one:
        np.testing.assert_array_equal(r.prompt, arr[0])


def test_prompt_len_with_text_prompt_names_prompt(tmp_path, tiny_checkpoints):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints["gpt2"][0], d)
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "wafer": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    with pytest.raises(ConfigError, match="--prompt-len 8 cannot be combined with --prompt:"):
        generate(str(d), "grid32", prompt="hello wafer", prompt_len=8, new_tokens=2,
                 fidelity="analytic")  # fmt: skip


# ------------------------------------------------------------------ 2. time split labels
@pytest.mark.parametrize("systems", [1, 2])
def test_resident_split_rows_name_the_layers_they_sum(systems):
    """Resident timing scales one layer: each row says it sums layers [first, last], and the
    spans of one (phase, op) tile the model's 32 layers exactly once."""
    r = generate("llama-3-8b", "wse2", new_tokens=2, prompt_len=4, systems=systems,
                 fidelity="analytic")  # fmt: skip
    assert all("layer" not in row for row in r.breakdown)
    layer_ops = {x["op"] for x in r.breakdown if x["n_layers"] > 0}
    assert {"attention", "lm_head"} & layer_ops == {"attention"}
    for phase in ("prefill", "decode"):
        for op in layer_ops:
            spans = sorted(tuple(x["layers"]) for x in r.breakdown
                           if x["phase"] == phase and x["op"] == op)  # fmt: skip
            assert len(spans) == systems
            covered = [i for a, b in spans for i in range(a, b + 1)]
            assert covered == list(range(32))
            for x in r.breakdown:
                if x["phase"] == phase and x["op"] == op:
                    assert x["n_layers"] == x["layers"][1] - x["layers"][0] + 1
    head = [x for x in r.breakdown if x["op"] == "lm_head"]
    assert head and all(x["layers"] == [32, 32] and x["n_layers"] == 0 for x in head)
    assert r.generation["time_split"]["rows"] == r.breakdown


def test_streaming_split_rows_are_one_layer_each():
    r = generate("gpt-tiny", "grid32", new_tokens=2, placement="streaming", fidelity="analytic")
    qkv = sorted(tuple(x["layers"]) for x in r.breakdown if x["op"] == "qkv"
                 and x["phase"] == "decode")  # fmt: skip
    assert qkv == [(0, 0), (1, 1)]
    assert all(x["n_layers"] == 1 for x in r.breakdown if x["op"] == "qkv")


# ------------------------------------------------------------------ 3. undefined values
def test_one_new_token_prints_dash_for_undefined_values(capsys, tmp_path):
    """--new-tokens 1: no decode steps, so the decode rate and the bound ratio are undefined
    (null in the JSON) and the console says "-", not 0."""
    rc, err, text, out = _run(capsys, tmp_path, "--new-tokens", "1")
    assert rc == 0, err
    a = json.loads(out.read_text())["generation"]["aggregate"]
    assert a["decode_steps"] == 0 and a["decode_tokens_per_s"] is None
    assert "decode steps alone -)" in text and "decode steps alone 0" not in text
    assert "simulated / bound = 0.00" not in text and "decode bound" in text
    bound_line = next(ln for ln in text.splitlines() if "decode bound" in ln)
    assert "│ - (no decode steps" in bound_line


def test_several_new_tokens_print_the_ratio(capsys, tmp_path):
    rc, err, text, out = _run(capsys, tmp_path, "--new-tokens", "3")
    assert rc == 0, err
    rep = json.loads(out.read_text())
    ratio = rep["roofline"]["decode_s"] / rep["roofline"]["decode_bound_s"]
    assert f"simulated / bound = {ratio:.2f}" in text


# ------------------------------------------------------------------ 4. ignored options
SAMPLING_BAD = {
    "temperature with greedy": (["--temperature", "0.7"], ["--temperature 0.7", "greedy"]),
    "top-k with greedy": (["--top-k", "5"], ["--top-k 5", "greedy"]),
    "top-k with temperature": (["--sampling", "temperature", "--top-k", "5"],
                               ["--top-k 5", "--sampling temperature"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SAMPLING_BAD))
def test_sampling_option_that_would_be_ignored_is_refused(capsys, tmp_path, case):
    args, needles = SAMPLING_BAD[case]
    rc, err, _, out = _run(capsys, tmp_path, *args)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("wse-sim: error:"), err
    for n in needles:
        assert n in err
    assert not out.exists()


def test_sampling_options_that_apply_are_accepted(capsys, tmp_path):
    rc, err, _, out = _run(capsys, tmp_path, "--sampling", "top_k", "--top-k", "3",
                           "--temperature", "0.5", "--new-tokens", "2")  # fmt: skip
    assert rc == 0, err
    assert json.loads(out.read_text())["generation"]["sampling"] == "top_k"


# ------------------------------------------------------------------ 5. tokens on the console
def test_console_tokens_say_what_is_left_out_and_crop_nothing(capsys, tmp_path):
    """5 checked requests of 18 tokens: 4 request rows of 16 tokens each with "... (2 more;
    all in --json)", then "... (1 more requests; ...)"; every shown id is printed whole."""
    pytest.importorskip("gpt_workload.generation.numerics")
    rc, err, text, out = _run(capsys, tmp_path, "--batch", "5", "--check-requests", "5",
                              "--new-tokens", "18", "--precision", "fp32")  # fmt: skip
    assert rc == 0, err
    toks = json.loads(out.read_text())["numerics"]["tokens"]
    assert len(toks) == 5 and all(len(t) == 18 for t in toks)
    lines = text.splitlines()
    for i, tk in enumerate(toks[:4]):
        want = f"request {i}: " + " ".join(map(str, tk[:16])) + " ... (2 more; all in --json)"
        assert any(want in ln for ln in lines), want
    assert any("... (1 more requests; all in --json)" in ln for ln in lines)
    assert not any("request 4:" in ln for ln in lines)


def test_token_rows_of_short_outputs_have_no_ellipsis():
    from gpt_workload.generation.report import _token_rows

    rows = _token_rows([[101234, 7], [5, 99999]], None)
    assert rows == [("tokens", "request 0: 101234 7"), ("", "request 1: 5 99999")]


# ------------------------------------------------------------------ 6. missing model paths
@pytest.mark.parametrize("cmd", ["run", "train", "generate"])
@pytest.mark.parametrize("spec", ["/nonexistent/dir", "nope/config.json", "missing.json"])
def test_missing_model_path_says_no_such_file(capsys, tmp_path, cmd, spec):
    """resolve_model (shared by run, train and generate) says a path-like --model does not
    exist instead of listing presets."""
    out = tmp_path / "o.json"
    rc = main([cmd, "--model", spec, "--arch", "grid32", "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"model {spec!r}: no such file or directory" in err
    assert "unknown model" not in err and not out.exists()


def test_unknown_preset_name_still_lists_presets():
    from gpt_workload.models import resolve_model

    with pytest.raises(ConfigError, match="unknown model 'gpt-nine'.*gpt-tiny"):
        resolve_model("gpt-nine")


# ------------------------------------------------------------------ 7. context that fits
def test_max_context_by_batch_is_achievable_and_capped_at_positions():
    """Each reported (batch, context) is a run that make_layout accepts, one token more is
    refused (unless capped at n_positions), and batch 1 never exceeds the model's
    positions."""
    from gpt_workload.mappings.resident import make_layout
    from gpt_workload.models import resolve_model
    from wse_sim.arch import load_arch
    from wse_sim.errors import FitError

    cfg, arch = resolve_model("llama-3-8b"), load_arch("wse2")
    r = generate(cfg, arch, batch=9, prompt_len=4, new_tokens=2, fidelity="analytic")
    table = r.generation["max_context_by_batch"]
    assert [row["batch"] for row in table][:4] == [1, 2, 4, 8] and 9 in [x["batch"] for x in table]
    assert table[0]["max_context"] == cfg.n_positions
    assert table[-1]["max_context"] == 0  # the table runs to the first batch that fits none
    for row in table:
        b, c = row["batch"], row["max_context"]
        assert c <= cfg.n_positions
        if c:
            make_layout(cfg, arch, precision="fp16", batch=b, max_context=c)
        if c < cfg.n_positions:
            with pytest.raises(FitError):
                make_layout(cfg, arch, precision="fp16", batch=b, max_context=c + 1)


# ------------------------------------------------------------------ 8. empty tiles skipped
def _gemv_fabric_reference(x, w, split):
    """NumPy float32: every PE row's partial (k ascending, one rounding per multiply and
    add), empty rows included as zeros, combined over *all* rows in the fabric's order."""
    from gpt_workload.generation.split import combine_order

    kb = split.k_bounds(w.shape[0])
    part = np.zeros((split.rows, x.shape[0], w.shape[1]), np.float32)
    for r in range(split.rows):
        for k in range(kb[r], kb[r + 1]):
            part[r] = part[r] + x[:, k:k + 1] * w[k][None, :]
    for dst, src in combine_order(split.rows, split.reduce):
        part[dst] = part[dst] + part[src]
    return part[0]


@pytest.mark.parametrize("reduce", ["tree", "chain"])
@pytest.mark.parametrize("rows,cols", [(994, 750), (70, 3), (5, 200), (64, 64)])
def test_gemv_on_a_grid_wider_than_the_matrix_matches_the_full_fabric_order(rows, cols,
                                                                              reduce):
    """A 64 x 48 matrix on grids with mostly empty tiles: skipping them gives the float32
    result of reducing every PE's partial (zeros included) in the fabric's order, bit for
    bit, and gemv_partials still returns every row's partial."""
    from gpt_workload.generation.split import GemvSplit
    from gpt_workload.kernels.decode import gemv_partials, gemv_split

    rng = np.random.default_rng(rows + cols)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    x[:, 5] = 0.0
    w[7] = -0.0
    split = GemvSplit(rows, cols, reduce)
    got = gemv_split(x, w, None, split)
    want = _gemv_fabric_reference(x, w, split)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    part = gemv_partials(x, w, split)
    assert part.shape == (rows, 3, 48)
    kb = split.k_bounds(64)
    empty = kb[1:] == kb[:-1]
    assert not part[empty].any()
