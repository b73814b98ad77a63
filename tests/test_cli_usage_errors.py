"""``wse-sim`` usage errors (an unknown subcommand or option, ``--batch abc``, a missing
argument) are one line ``wse-sim[ CMD]: error: ...`` and exit status 2, like every other
error of the command line (argparse printed its usage block first)."""

from __future__ import annotations

import pytest

from gpt_workload.cli import main


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--batch", "abc"], "wse-sim run: error: argument --batch: invalid int value: 'abc'"),
        (["bogus"], "wse-sim: error: argument cmd: invalid choice: 'bogus'"),
        (["run", "--nosuch"], "unrecognized arguments: --nosuch"),
        (["arch", "show"], "wse-sim arch show: error: the following arguments are required"),
        (["train", "--steps"], "argument --steps: expected one argument"),
        (["sweep", "x.toml", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["run", "--precision", "fp8"], "wse-sim run: error: argument --precision: invalid "
         "choice: 'fp8' (choose from 'fp32', 'fp16', 'bf16')"),
        (["train", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
        (["generate", "--precision", "FP16"], "argument --precision: invalid choice: 'FP16'"),
        (["plot", "heatmap", "--precision", "int8"], "argument --precision: invalid choice"),
        (["kernel", "gemm", "--m", "2", "--k", "2", "--n", "2", "--precision", "x"],
         "argument --precision: invalid choice: 'x'"),
    ],
)
def test_usage_error_is_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert len(cap.err.splitlines()) == 1 and needle in cap.err, cap.err


def test_help_still_prints_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    assert "usage: wse-sim run" in capsys.readouterr().out
