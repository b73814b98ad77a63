"""The serving experiments: a small run writes CSV + PNG; bad options are one line, exit 2,
nothing written."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_inference_frontier_small_run(tmp_path):
    mod = _load("inference_frontier")
    rc = mod.main(["--model", "gpt-tiny", "--archs", "grid32", "--batches", "1,2",
                   "--prompt-len", "8", "--new-tokens", "4", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "inference_frontier.csv")))
    assert {(r["placement"], r["batch"]) for r in rows} == {
        (p, b) for p in ("resident", "streaming") for b in ("1", "2")
    }
    for r in rows:
        # aggregate decode throughput of B requests is B x the per-request rate
        agg, per = float(r["aggregate_tokens_per_s"]), float(r["tokens_per_s_per_request"])
        assert agg == pytest.approx(int(r["batch"]) * per, rel=1e-9)
    assert (tmp_path / "inference_frontier.png").stat().st_size > 0


def test_inference_scaling_small_run(tmp_path):
    mod = _load("inference_scaling")
    rc = mod.main(["--models", "gpt-tiny", "--arch", "grid32", "--prompt-len", "8",
                   "--new-tokens", "3", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    (row,) = list(csv.DictReader(open(tmp_path / "inference_scaling.csv")))
    parts = sum(float(row[k]) for k in ("compute_per_step_s", "sram_per_step_s",
                                        "fabric_per_step_s", "io_per_step_s",
                                        "intersystem_per_step_s"))  # fmt: skip
    assert parts == pytest.approx(float(row["time_per_token_s"]), rel=1e-9)


@pytest.mark.parametrize("name,args,needle", [
    ("inference_frontier", ["--batches", "0"], "--batches"),
    ("inference_frontier", ["--archs", "wse9"], "--archs"),
    ("inference_frontier", ["--model", "gpt-tiny", "--new-tokens", "200"], "positions"),
    ("inference_scaling", ["--models", "nope"], "--models"),
    ("inference_scaling", ["--new-tokens", "1"], "--new-tokens"),
])  # fmt: skip
def test_bad_options_one_line_exit_2(tmp_path, capsys, name, args, needle):
    out = tmp_path / "out"
    rc = _load(name).main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err
    assert not out.exists()
