"""experiments/compare_mappings.py on a tiny config: --help, CSV columns, PNG, error rows,
resume."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "experiments" / "compare_mappings.py"


def load():
    spec = importlib.util.spec_from_file_location("compare_mappings", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        load().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--arch", "--batch", "--fidelity", "--out", "--mappings"):
        assert opt in out


def test_tiny_run_writes_csv_and_png(tmp_path):
    mod = load()
    specs = "weight_streaming,layer_pipelined,layer_pipelined:gemm=cannon"
    args = mod.parse_args(
        [
            "--model",
            "gpt-tiny",
            "--arch",
            "grid32",
            "--batch",
            "2",
            "--seq-len",
            "32",
            "--mappings",
            specs,
            "--out",
            str(tmp_path),
        ]
    )
    totals, fig = mod.run(args)
    rows = list(csv.DictReader(open(tmp_path / "compare_mappings.csv")))
    assert set(mod.FIELDS) <= set(rows[0])
    for col in ("compute_s", "fabric_s", "stall_s", "idle_s", "layer", "op", "mapping"):
        assert col in rows[0]
    by = {r["mapping"]: r for r in totals}
    assert by["layer_pipelined:gemm=cannon"]["status"] == "error"
    assert by["layer_pipelined:gemm=cannon"]["error"]
    for m in ("weight_streaming", "layer_pipelined"):
        r = by[m]
        assert r["status"] == "ok"
        parts = sum(float(r[k]) for k in ("compute_s", "fabric_s", "stall_s", "idle_s"))
        assert parts == pytest.approx(float(r["total_s"]), rel=1e-9)
        per_layer = [x for x in rows if x["mapping"] == m and x["layer"] != "all"]
        assert sum(float(x["total_s"]) for x in per_layer) == pytest.approx(float(r["total_s"]))
    ws_layers = {x["layer"] for x in rows if x["mapping"] == "weight_streaming"}
    assert {"0", "1"} <= ws_layers  # per-layer rows of gpt-tiny's two layers
    png = (tmp_path / "compare_mappings.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for ax in fig.axes:
        if ax.get_visible():
            assert "(" in ax.get_xlabel() and "(ms)" in ax.get_ylabel()
    n = len(rows)
    mod.run(args)  # resume: nothing run again
    assert len(list(csv.DictReader(open(tmp_path / "compare_mappings.csv")))) == n
