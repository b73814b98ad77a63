"""``wse-sim train``: per-step numerics on the console, JSON report, one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
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
        (["--fidelity", "packet"], "training supports analytic, event"),
        (["--fidelity", "packet"], "packet models no gradient streams"),
        (["--tokens", "/no/such/file.txt"], "--tokens"),
        (["--numerics-steps", "5", "--steps", "3"], "numerics_steps"),
        (["--numerics-steps", "-1"], "numerics_steps"),
    ],
)
def test_bad_input_one_line(args, word, capsys):
    base = ["train", "--model", "gpt-tiny", "--arch", "grid32"]
    rc = main(base + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("wse-sim: error:") and "\n" not in err and word in err


@pytest.mark.parametrize("cmd", ["train", "run"])
@pytest.mark.parametrize("kind", ["text", "pickle", "object"])
def test_tokens_npy_that_is_not_an_int_array_file(tmp_path, capsys, cmd, kind):
    """A text or pickled ``x.npy`` gave NumPy's "allow_pickle" message; the shared loader
    says the file is not a NumPy int array (.npy) file."""
    import pickle

    f = tmp_path / "x.npy"
    if kind == "text":
        f.write_text("1 2 3\n")
    elif kind == "pickle":
        f.write_bytes(pickle.dumps([[1, 2, 3]]))
    else:
        np.save(f, np.array([[1, "a"]], dtype=object), allow_pickle=True)
    rc = main([cmd, "--model", "gpt-tiny", "--arch", "grid32", "--tokens", str(f)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert f"--tokens {str(f)!r} is not a NumPy int array (.npy) file" in err, err
    assert "allow_pickle" not in err, err


@pytest.mark.parametrize("text", ["", "short"])
def test_tokens_too_short_names_file_and_counts(tmp_path, capsys, text):
    txt = tmp_path / "t.txt"
    txt.write_text(text)
    rc = main(["train", "--model", "gpt-tiny", "--arch", "grid32", "--tokens", str(txt)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert "--tokens" in err and str(txt) in err and f"has {len(text)} byte token" in err, err
    assert "at least 64" in err and "check_seq_len 64" in err, err


@pytest.mark.parametrize("seq_len", ["0", "1", "129", "999999"])
def test_seq_len_errors_state_one_range(capsys, seq_len):
    rc = main(["train", "--model", "gpt-tiny", "--arch", "grid32", "--seq-len", seq_len])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert f"seq_len={seq_len} is not allowed: expected an integer in 2..128" in err, err


def test_numerics_steps_bounds_the_numerics(tmp_path, capsys):
    out = tmp_path / "train.json"
    rc = main(
        ["train", "--model", "gpt-tiny", "--arch", "grid32", "--steps", "50", "--numerics-steps",
         "2", "--fidelity", "analytic", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    cap = capsys.readouterr()
    assert "2 of 50 step(s) run numerically" in cap.out
    assert cap.err == ""  # no progress bar when stderr is not a terminal
    rep = json.loads(out.read_text())
    assert [s["step"] for s in rep["numerics"]["steps"]] == [1, 2]
    assert rep["numerics"]["steps_run"] == 2 and rep["numerics"]["steps_total"] == 50
    assert rep["steps"] == 50
    assert rep["total_time_s"] == pytest.approx(50 * rep["step_time_s"])
    assert rep["numerics"]["steps"][1]["lr"] < rep["numerics"]["peak_lr"]  # schedule of 50


def test_numerics_steps_default_and_zero():
    from gpt_workload.training.train import train

    rep = train("gpt-tiny", "grid32", steps=30, fidelity="analytic", check_sequences=1)
    assert rep.numerics["steps_run"] == 20 and len(rep.numerics["steps"]) == 20
    rep = train("gpt-tiny", "grid32", steps=30, fidelity="analytic", numerics_steps=0)
    assert "skipped" in rep.numerics


def test_console_names_a_smaller_last_micro_batch_and_small_throughput(tmp_path, capsys):
    """``64 sequences in 22 micro-batch(es) of 3`` (66) hid that the last has 1; samples/s
    below 100 printed as ``0.1``. The last micro-batch's size is the per-system batch less
    the full ones; small throughputs keep 3 significant digits."""
    import dataclasses

    from gpt_workload.training.train import train

    out = tmp_path / "r.json"
    rc = main(["train", "--model", "gpt-tiny", "--arch", "grid8", "--batch", "13",
               "--steps", "1", "--fidelity", "analytic", "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    t = json.loads(out.read_text())["training"]
    n, b = t["micro_batches"], t["sequences_per_micro_batch"]
    last = t["per_system_batch"] - (n - 1) * b
    assert 0 < last < b  # this case has a smaller last micro-batch
    assert f"{t['per_system_batch']} sequences in {n} micro-batch(es) of {b} (last {last})" in text
    rep = train("gpt-tiny", "grid8", batch=8, steps=1, fidelity="analytic", numerics_steps=0)
    rows = dict(dataclasses.replace(rep, samples_per_s=0.071428).console_rows())
    assert rows["throughput"].startswith("0.0714 samples/s")
    rows = dict(dataclasses.replace(rep, samples_per_s=1234.56).console_rows())
    assert rows["throughput"].startswith("1,234.6 samples/s")
    assert "(last" not in dict(rep.console_rows())["per system"]  # 8 = one full micro-batch
