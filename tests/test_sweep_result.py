"""What :func:`gpt_workload.sweep.run_sweep` returns, as its docstring and the README say
(issue 17: both said ``pyarrow.Table``; it returns a :class:`SweepResult` whose ``.table``
is the ``pyarrow.Table``, which keeps the counts and path that the experiment scripts use)."""

from __future__ import annotations

import inspect

import pyarrow as pa

from gpt_workload import sweep
from gpt_workload.sweep import SweepResult, SweepSpec, read_table, run_sweep


def test_run_sweep_returns_a_sweep_result_holding_a_pyarrow_table(tmp_path):
    spec = SweepSpec.from_dict(
        {
            "base": {"model": "gpt-tiny", "arch": "grid8", "seq_len": 64, "fidelity": "analytic"},
            "grid": {"batch": [1, 2], "pe.sram_bytes": [49152, 1000]},
        },
        name="r",
    )
    res = run_sweep(spec, output=tmp_path / "r.parquet", workers=0)
    assert isinstance(res, SweepResult)
    assert isinstance(res.table, pa.Table)
    assert res.table.num_rows == res.total == 4
    assert (res.computed, res.skipped, res.failed) == (4, 0, 2)  # 1000 B < reserved SRAM
    assert res.path == tmp_path / "r.parquet"
    assert res.table.equals(read_table(res.path))
    assert res.table.column("status").to_pylist() == ["ok", "error", "ok", "error"]


def test_docstring_says_what_it_returns():
    doc = inspect.getdoc(run_sweep)
    returns = doc.split("Returns:")[1].split("Raises:")[0]
    assert "SweepResult" in returns and "pyarrow.Table" in returns
    assert "pyarrow.Table" in inspect.getdoc(sweep.SweepResult)
