"""``wse-sim train``: per-step numerics on the console, JSON report, one-line errors."""

from __future__ import annotations

import json
import math

import pytest

from gpt_workload.cli import main


def test_train_tiny(tmp_path, capsys):
    out = tmp_path / "train.json"
    rc = main(
        ["train", "--model", "gpt-tiny", "--arch", "grid32", "--steps", "3", "--json", str(out)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for word in ("step time", "MFU", "loss scale", "grad norm", "optimizer tail"):
        assert word in text
    rep = json.loads(out.read_text())
    steps = rep["numerics"]["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in steps)
    assert rep["step_time_s"] > 0 and 0 < rep["mfu"] < 1
    assert rep["tokens_per_s"] == pytest.approx(rep["tokens_per_step"] / rep["step_time_s"])
    assert sum(rep["breakdown_s"].values()) == pytest.approx(rep["step_time_s"])


def test_train_text_and_systems(tmp_path, capsys):
    txt = tmp_path / "t.txt"
    txt.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    rc = main(
        ["train", "--model", "gpt-tiny", "--arch", "grid32", "--steps", "1", "--systems", "4",
         "--batch", "16", "--seq-len", "64", "--tokens", str(txt), "--fidelity", "analytic"]
    )  # fmt: skip
    assert rc == 0
    assert "SwarmX" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,word",
    [
        (["--steps", "0"], "steps"),
        (["--systems", "0"], "systems"),
        (["--systems", "1000"], "systems"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--batch", "2", "--systems", "4"], "batch"),
        (["--precision", "fp8"], "fp8"),
        (["--fidelity", "packet"], "fidelity"),
        (["--tokens", "/no/such/file.txt"], "--tokens"),
    ],
)
def test_bad_input_one_line(args, word, capsys):
    base = ["train", "--model", "gpt-tiny", "--arch", "grid32"]
    rc = main(base + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("wse-sim: error:") and "\n" not in err and word in err
