"""BookSim2 as a peer: ``--peer`` is checked up front; when BookSim2 can be built here, the
side-by-side load-latency run writes both curves and BookSim's accepted throughput at a low
load equals the offered load (an open-loop network below saturation delivers what it gets)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from gpt_workload.experiment_args import check_peer
from wse_sim.errors import ConfigError
from wse_sim.fabric.booksim import booksim_binary

EXP = Path(__file__).resolve().parents[1] / "experiments" / "fabric_load_latency.py"


def _mod():
    spec = importlib.util.spec_from_file_location("fabric_load_latency", EXP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peer_option_checked():
    assert check_peer("--peer", None) is None and check_peer("--peer", "booksim2") == "booksim2"
    with pytest.raises(ConfigError, match=r"--peer 'booksim' is not allowed: expected one of"):
        check_peer("--peer", "booksim")
    with pytest.raises(ConfigError, match="--peer"):
        _mod().parse_args(["--peer", "noxim"])


@pytest.mark.slow
def test_side_by_side_with_booksim2(tmp_path):
    binary, why = booksim_binary()
    if binary is None:
        pytest.skip(why)
    argv = ["--k", "4", "--patterns", "uniform", "--loads", "0.1,0.5", "--packet-wavelets", "1"]
    argv += ["--warmup", "200", "--measure", "2000", "--peer", "booksim2", "--out", str(tmp_path)]
    assert _mod().main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "fabric_load_latency_booksim2.csv")))
    assert len(rows) == 2
    low = min(rows, key=lambda r: float(r["offered"]))
    assert float(low["booksim_accepted"]) == pytest.approx(float(low["offered"]), rel=0.1)
    assert float(low["ours_accepted"]) == pytest.approx(float(low["offered"]), rel=0.1)
    assert (tmp_path / "fabric_load_latency_booksim2.png").read_bytes()[:4] == b"\x89PNG"
