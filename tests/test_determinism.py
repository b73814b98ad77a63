"""Determinism (issue 17, part 5): the same inputs and seed give the same JSON report, and a
sweep gives the same table whatever the number of workers, once the host wall-clock figures
are dropped; they all live under one key (``wall_s`` in run and train reports; sweep tables
hold none)."""

from __future__ import annotations

import hashlib
import json

import pytest

from gpt_workload import strict_json
from gpt_workload.cli import main
from gpt_workload.sweep import read_table, run_sweep

#: the one key of a report that holds host wall-clock seconds
WALL_KEY = "wall_s"


def digest_without(report: dict, key: str = WALL_KEY) -> str:
    rest = {k: v for k, v in report.items() if k != key}
    return hashlib.sha256(strict_json.dumps(rest, sort_keys=True).encode()).hexdigest()


def run_json(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main([*args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--model", "gpt-tiny", "--arch", "grid32", "--seq-len", "32", "--batch", "8"),
        ("run", "--model", "gpt-tiny", "--arch", "grid32", "--seq-len", "32",
         "--mapping", "summa", "--fidelity", "analytic", "--check-sequences", "2"),
        ("train", "--model", "gpt-tiny", "--arch", "grid32", "--steps", "2", "--seq-len", "16",
         "--fidelity", "analytic", "--check-sequences", "2"),
    ],  # fmt: skip
    ids=["run-event", "run-summa-analytic", "train"],
)
def test_same_inputs_same_report_but_wall_clock(tmp_path, args, capsys):
    a = run_json(tmp_path, "a", *args)
    b = run_json(tmp_path, "b", *args)
    assert set(a[WALL_KEY]) and set(a[WALL_KEY]) == set(b[WALL_KEY])
    assert digest_without(a) == digest_without(b)
    # the digest covers the numerics and the timing, not just the configuration
    assert a["numerics"] and (a.get("simulated_time_s") or a.get("step_time_s"))


SPEC = """
[sweep]
name = "det"

[base]
model = "gpt-tiny"
arch = "grid32"
fidelity = "analytic"
seq_len = 32

[grid]
batch = [1, 4, 16, 64]
precision = ["fp16", "fp32"]
"pe.sram_bytes" = [49152, 1000]
"""


def table_digest(path) -> str:
    t = read_table(path)
    assert not [c for c in t.column_names if "wall" in c]  # no host wall-clock column
    return hashlib.sha256(strict_json.dumps(t.to_pylist(), sort_keys=True).encode()).hexdigest()


def test_sweep_table_is_the_same_for_1_and_2_workers(tmp_path):
    spec = tmp_path / "det.toml"
    spec.write_text(SPEC)
    digests = {}
    for workers in (1, 2, 0):
        out = tmp_path / f"w{workers}.parquet"
        run_sweep(spec, output=out, workers=workers)
        digests[workers] = table_digest(out)
    assert digests[1] == digests[2] == digests[0]
    rows = read_table(tmp_path / "w2.parquet").to_pylist()
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok", "error"}
