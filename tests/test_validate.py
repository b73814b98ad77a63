"""``wse-sim validate`` / :func:`gpt_workload.validation.validate` on the shipped data file
and on temporary ones: the table's structure, the exit status semantics (1 only when a
calibration row leaves its tolerance; rows that cannot run and predictions never fail), the
CSV and parity plot, and bad data files (one line naming the row and the field, exit 2)."""

from __future__ import annotations

import csv
import math

import pytest

from gpt_workload.cli import main
from gpt_workload.validation import exit_status, validate
from gpt_workload.validation.data import default_path, load_figures
from gpt_workload.validation.table import CANNOT, OK, OUT
from wse_sim.errors import ConfigError
from wse_sim.fabric.collectives import hpdc24_model

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

SHIPPED = tomllib.loads(default_path().read_text())


@pytest.fixture(scope="module")
def shipped_rows():
    return validate(fidelity="analytic")


def test_shipped_file_has_every_measured_figure(shipped_rows):
    ids = [r.id for r in shipped_rows]
    assert ids == [f["id"] for f in SHIPPED["figure"]]
    # shared/reference/measured.md: K1-K4, T1, I1
    for want in ("K1", "K3", "T1", "I1"):
        assert want in ids
    assert any(i.startswith("K2.") for i in ids) and any(i.startswith("K4.") for i in ids)
    for r in shipped_rows:
        assert r.measured > 0 and r.tolerance_pct > 0 and r.source and r.units
        assert r.role in ("calibration", "prediction")
        assert r.status in (OK, OUT, CANNOT)
        if r.role == "prediction":
            assert r.sets == ()
        if r.status == CANNOT:
            assert r.simulated is None and r.error_pct is None and r.reason
        else:
            assert r.error_pct == pytest.approx(100 * (r.simulated / r.measured - 1))
            assert (r.status == OK) == (abs(r.error_pct) <= r.tolerance_pct)
    # the rows that set the calibrated constants name them
    sets = {r.id: r.sets for r in shipped_rows}
    assert sets["K1"] == ("pe.clock_hz",)
    assert "fabric.ramp_latency_cycles" in sets["K2.chain.4x1"]
    assert "pe.fmac_fp16_per_cycle" in sets["K3"]


def test_k2_values_are_the_published_model():
    """Each K2 row's value is [HPDC24]'s model (T_R = 2) at its point."""
    for f in load_figures():
        sc = f.scenario
        if f.id.startswith("K2.") and sc["collective"] == "reduce":
            want = hpdc24_model("reduce", sc["algorithm"], sc["pes"], sc["elements"], T_R=2.0)
            assert f.value == pytest.approx(want, rel=1e-4)


def test_cli_exit_status_follows_the_calibration_rows(shipped_rows, capsys, tmp_path):
    rc = main(["validate", "--out", str(tmp_path / "v")])
    out = capsys.readouterr().out
    assert rc == exit_status(shipped_rows)
    assert rc == int(any(r.role == "calibration" and r.status == OUT for r in shipped_rows))
    for r in shipped_rows:
        assert r.id in out
    with open(tmp_path / "v" / "validation.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [t["id"] for t in table] == [r.id for r in shipped_rows]
    assert {"measured", "simulated", "error_pct", "tolerance_pct", "role", "sets"} <= set(table[0])
    assert (tmp_path / "v" / "parity.png").stat().st_size > 0


ROW = """
[[figure]]
id = "{id}"
figure = "fp16 FMA rate"
value = {value}
units = "elements/cycle"
conditions = "one PE"
source = "{source}"
tolerance_pct = 5
role = "{role}"
{sets}
[figure.scenario]
kind = "fma_rate"
arch = "wse3"
elements = 8192
{extra}
"""


def _file(tmp_path, *rows, name="data.toml"):
    p = tmp_path / name
    p.write_text("schema = 1\n" + "".join(rows))
    return str(p)


def _row(id="X1", value="2.92", source="a paper", role="calibration",
         sets='sets = ["pe.fmac_fp16_per_cycle"]', extra=""):  # fmt: skip
    return ROW.format(id=id, value=value, source=source, role=role, sets=sets, extra=extra)


def test_out_of_tolerance_calibration_row_exits_1(tmp_path, capsys):
    # 8.0 is the WSE-3's SIMD width; the preset's rate (K3) is 2.92: far outside 5 %
    bad = _file(tmp_path, _row(id="X1", value="8.0"), _row(id="X2"))
    rows = validate(bad)
    assert [r.status for r in rows] == [OUT, OK]
    assert exit_status(rows) == 1
    assert main(["validate", "--data", bad]) == 1
    assert "X1" in capsys.readouterr().out


def test_prediction_and_unrunnable_rows_do_not_fail(tmp_path):
    cannot = ROW.format(id="X3", value="1.0", source="s", role="calibration", sets="sets = []",
                        extra="").replace('kind = "fma_rate"\narch = "wse3"\nelements = 8192',
                                          'kind = "fma_rate"\narch = "wse3"\nelements = 900000')
    data = _file(tmp_path, _row(id="X1", value="8.0", role="prediction", sets=""), cannot)
    rows = validate(data)
    assert [r.status for r in rows] == [OUT, CANNOT]
    assert "SRAM" in rows[1].reason or "usable" in rows[1].reason  # the FitError's message
    assert exit_status(rows) == 0
    assert main(["validate", "--data", data]) == 0


def test_train_and_generate_rows_run():
    """T1 / I1 call the public training and generation entry points (GPT-J trained as its own
    family, Llama-3-8B served resident); both run and give a finite positive rate."""
    rows = {r.id: r for r in validate(only=["T1", "I1"])}
    assert set(rows) == {"T1", "I1"}
    for r in rows.values():
        assert r.status in (OK, OUT), (r.id, r.status, r.reason)
        assert math.isfinite(r.simulated) and r.simulated > 0


@pytest.mark.parametrize(
    "row, fragments",
    [(_row(extra='colour = "red"'), ["'X1'", "scenario field 'colour'"]),
     (_row(source=""), ["'X1'", "source"]),
     (_row().replace('source = "a paper"\n', ""), ["'X1'", "'source' is missing"]),
     (_row(value="0"), ["'X1'", "value=0"]),
     (_row(value="-2.5"), ["'X1'", "value=-2.5"]),
     (_row(role="guess"), ["'X1'", "role"]),
     (_row(sets=""), ["'X1'", "sets"]),
     (_row(sets='sets = ["pe.warp_drive"]'), ["'X1'", "pe.warp_drive"]),
     (_row().replace('units = "elements/cycle"', 'units = "TFLOP/s"'), ["'X1'", "units"]),
     (_row(extra="elements2 = 3"), ["'X1'", "elements2"]),
     (_row().replace("elements = 8192", 'elements = "many"'), ["'X1'", "elements"]),
     (_row().replace('kind = "fma_rate"', 'kind = "fft"'), ["'X1'", "kind"]),
     (_row(extra='precision = "fp8"'), ["'X1'", "precision='fp8'"])],
)  # fmt: skip
def test_bad_data_file_is_one_line_naming_row_and_field(tmp_path, capsys, row, fragments):
    path = _file(tmp_path, row)
    with pytest.raises(ConfigError):
        load_figures(path)
    rc = main(["validate", "--data", path])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    for frag in fragments:
        assert frag in err[0], err[0]


def test_bad_options_are_one_line(tmp_path, capsys):
    for argv, frag in ((["--data", str(tmp_path / "none.toml")], "cannot be read"),
                       (["--fidelity", "exact"], "--fidelity"),
                       (["--only", "K9"], "--only")):  # fmt: skip
        rc = main(["validate", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and frag in err[0], err
    dup = _file(tmp_path, _row(), _row(), name="dup.toml")
    rc = main(["validate", "--data", dup])
    err = capsys.readouterr().err
    assert rc == 2 and "duplicate" in err


GEMM_ROW = """
[[figure]]
id = "G1"
figure = "a GEMM"
value = 1.0
units = "TFLOP/s"
conditions = "c"
source = "s"
tolerance_pct = 10
role = "prediction"
[figure.scenario]
kind = "gemm"
arch = "grid8"
m = 64
k = 64
n = 64
{extra}
"""


@pytest.mark.parametrize(
    "extra, fragment",
    [('region = "7y7"', "region='7y7'"), ('operands = "cached"', "operands='cached'"),
     ('mapping = "strassen"', "mapping='strassen'"), ("m = 0", "m=0"), ("m = true", "m=True")],
)  # fmt: skip
def test_bad_gemm_scenario_values(tmp_path, capsys, extra, fragment):
    row = GEMM_ROW.format(extra="")
    row = row.replace("m = 64", extra) if extra.startswith("m =") else row + extra + "\n"
    path = _file(tmp_path, row)
    rc = main(["validate", "--data", path])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'G1'" in err[0] and fragment in err[0], err


def test_gemm_row_runs_and_a_region_off_the_wafer_cannot(tmp_path):
    ok = GEMM_ROW.format(extra='region = "4x4"')
    off = GEMM_ROW.format(extra='region = "9x9"').replace('"G1"', '"G2"')
    rows = validate(_file(tmp_path, ok, off))
    assert rows[0].simulated is not None and rows[0].simulated > 0
    assert rows[1].status == CANNOT and "region rows" in rows[1].reason
