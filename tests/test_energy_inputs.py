"""Regression tests of the energy model's inputs and outputs found by a fresh-user trial:
case-sensitive SI prefixes, units in sweep specs, undefined ratios at 0 J in strict JSON,
published figures per arch, auto-scaled power units, plausible what-if knobs, error messages
quoting the value as typed, per-system naming of the training energy, the ``head`` row.

Expected values are SI prefix definitions (BIPM SI brochure, 9th ed., table 7), closed-form
sums of the report's own components, and the published figures with their citations."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from types import SimpleNamespace

import pytest

from gpt_workload.config import GPTConfig
from wse_sim.arch import EnergyConfig, load_arch
from wse_sim.energy import PUBLISHED_PE_PEAK_W, PUBLISHED_WAFER_W, per_joule, published_check
from wse_sim.energy_units import parse_quantity
from wse_sim.errors import ConfigError

BLOCK = GPTConfig(name="block-2l", n_layer=2, n_head=4, d_model=256, d_ff=1024, vocab_size=512,
                  n_positions=2048)  # fmt: skip
ALL_ZERO = [f"energy.{f.name}=0" for f in fields(EnergyConfig) if f.name != "pe_area_mm2"]


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity (RFC 8259 has neither)."""

    def bad(c):
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=bad)


# ---- 1. SI prefixes are case-sensitive -----------------------------------------------------

# (field, typed, value in the field's unit from the SI prefix definitions)
CONVERTED = [
    ("fmac_fp16_pj", "500 fJ", 500e-15 / 1e-12),
    ("fmac_fp16_pj", "0.5pJ", 0.5),
    ("fmac_fp16_pj", "2 nJ", 2e-9 / 1e-12),
    ("fmac_fp16_pj", "0.001uJ", 1e-9 / 1e-12),
    ("fmac_fp16_pj", "0.001µJ", 1e-9 / 1e-12),
    ("fmac_fp16_pj", "1e-9 mJ", 1e-12 / 1e-12),
    ("static_pe_w", "4mW", 4e-3),
    ("static_pe_w", "4 W", 4.0),
    ("system_static_w", "5 kW", 5e3),
    ("system_static_w", "0.002MW", 2e3),
    ("sram_read_pj_per_byte", "0.1pJ/bit", 0.8),
    ("sram_read_pj_per_byte", "940 fJ/B", 0.94),
    ("pe_area_mm2", "38000 µm2", 0.038),
]


@pytest.mark.parametrize("field, typed, want", CONVERTED)
def test_units_convert_by_their_si_prefix(field, typed, want):
    assert parse_quantity(field, typed) == pytest.approx(want, rel=1e-12)
    got = getattr(load_arch("grid8", [f"energy.{field}={typed}"]).energy, field)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    "field, typed, value",
    [  # upper-case prefixes are the large ones: P peta, M mega (SI); out of range, quoted
        ("fmac_fp16_pj", "0.5PJ", 0.5e15 / 1e-12),
        ("fmac_fp16_pj", "1MJ", 1e6 / 1e-12),
        ("fmac_fp16_pj", "1mJ", 1e-3 / 1e-12),
        ("static_pe_w", "4MW", 4e6),
    ],
)
def test_large_prefixes_are_large_and_refused_by_range(field, typed, value):
    assert parse_quantity(field, typed) == pytest.approx(value, rel=1e-12)
    with pytest.raises(ConfigError, match="out of range") as exc:
        load_arch("grid8", [f"energy.{field}={typed}"])
    assert repr(typed) in str(exc.value) and len(str(exc.value).splitlines()) == 1


@pytest.mark.parametrize(
    "field, typed", [("fmac_fp16_pj", "0.5Pj"), ("fmac_fp16_pj", "0.5 pj"),
                     ("static_pe_w", "4Mw"), ("static_pe_w", "4 mw")]  # fmt: skip
)
def test_wrong_case_units_are_refused_naming_the_allowed_ones(field, typed):
    with pytest.raises(ConfigError, match="unknown unit") as exc:
        load_arch("grid8", [f"energy.{field}={typed}"])
    msg = str(exc.value)
    assert repr(typed) in msg and "case-sensitive" in msg and "m milli / M mega" in msg


def test_toml_units_are_case_sensitive(tmp_path):
    text = load_arch_text("grid8")
    good = tmp_path / "good.toml"
    good.write_text(text.replace("fmac_fp16_pj = 0.5", 'fmac_fp16_pj = "500 fJ"', 1))
    assert load_arch(str(good)).energy.fmac_fp16_pj == pytest.approx(0.5)
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("fmac_fp16_pj = 0.5", 'fmac_fp16_pj = "0.5PJ"', 1))
    with pytest.raises(ConfigError, match=r"'0.5PJ' \(= 5e\+26 pJ\) is out of range"):
        load_arch(str(bad))


def load_arch_text(name: str) -> str:
    from importlib import resources

    return resources.files("wse_sim").joinpath("presets", f"{name}.toml").read_text()


# ---- 2. units in sweep specs ---------------------------------------------------------------


def test_sweep_spec_takes_energy_units():
    from gpt_workload.sweep import SweepSpec

    spec = SweepSpec.from_dict({"grid": {"energy.static_pe_w": [0.003, "6mW"]}})
    assert [p["energy.static_pe_w"] for p in spec.points] == [0.003, pytest.approx(0.006)]
    with pytest.raises(ConfigError, match="'6 J'.*a unit of energy, not power"):
        SweepSpec.from_dict({"grid": {"energy.static_pe_w": ["6 J"]}})
    with pytest.raises(ConfigError, match="must be a number"):  # other fields: numbers only
        SweepSpec.from_dict({"grid": {"pe.clock_hz": ["1 GHz"]}})


# ---- 3. ratios over 0 J are null, with the reason, in strict JSON and on the console --------


def test_per_joule_is_null_at_zero_joules():
    assert per_joule(2.0, 4, 8) == {"j_per_token": 0.5, "tokens_per_j": 2.0, "flop_per_j": 4.0}
    z = per_joule(0.0, 4, 8)
    assert z["tokens_per_j"] is None and z["flop_per_j"] is None and z["j_per_token"] == 0.0
    assert set(z["undefined"]) == {"tokens_per_j", "flop_per_j"}


def test_all_zero_energy_run_writes_strict_json(tmp_path):
    from gpt_workload.report import energy_columns, energy_console_rows
    from gpt_workload.simulate import simulate

    rep = simulate(BLOCK, "grid32", check_sequences=0, batch=8, seq_len=128,
                   fidelity="analytic", overrides=ALL_ZERO)  # fmt: skip
    d = _strict_json(rep.to_json())
    e = d["energy"]
    assert e["total_j"] == 0.0 and e["tokens_per_j"] is None and e["flop_per_j"] is None
    assert "0 J" in e["undefined"]["flop_per_j"]
    rows = dict(energy_console_rows(rep))
    assert "FLOP/J undefined (total energy is 0 J)" in rows["energy"]
    assert "0 FLOP/J" not in rows["energy"]
    cols = energy_columns(rep)
    assert cols["tokens_per_j"] is None and cols["flop_per_j"] is None


def test_all_zero_energy_training_step_is_null_not_a_crash():
    from gpt_workload.training.train import train

    rep = train(BLOCK, "grid32", batch=4, seq_len=128, fidelity="analytic",
                check_sequences=0, overrides=ALL_ZERO)  # fmt: skip
    e = rep.energy
    assert e["step_j"] == 0.0 and e["tokens_per_j"] is None and e["flop_per_j"] is None
    _strict_json(json.dumps(rep.to_dict()))
    assert any("FLOP/J undefined" in v for _, v in rep.console_rows())


# ---- 4. the published figures of the arch at hand -----------------------------------------


def _rep(wafer_w=15_000.0, peak_w=20_000.0, pe_w=0.03):
    return SimpleNamespace(wafer_avg_w=wafer_w, peak_w=peak_w, pe_peak_w=pe_w)


def test_published_figures_per_arch():
    p2 = published_check(_rep(16_500.0), load_arch("wse2"))
    assert p2["published_wafer_w"] == PUBLISHED_WAFER_W == 15_000.0  # [TH22]
    assert p2["published_pe_peak_w"] == PUBLISHED_PE_PEAK_W == 0.030  # [HC34]
    assert "WSE-2" in p2["published_wafer_label"] and p2["wafer_avg_w_ratio"] == 1.1
    p3 = published_check(_rep(), load_arch("wse3"))
    # Cerebras: CS-3 has the same power as CS-2 [TH24]; no per-PE figure for WSE-3
    assert "WSE-3" in p3["published_wafer_label"] and p3["published_wafer_w"] == 15_000.0
    assert "published_pe_peak_w" not in p3 and "WSE-3" not in str(p2)
    assert "no published per-PE" in p3["published_pe_none"]
    g = published_check(_rep(), load_arch("grid32"))
    assert list(g) == ["none"] and "no published power figure for arch 'grid32'" in g["none"]


def test_console_labels_the_published_reference():
    from gpt_workload.report import published_rows

    [(_, t3)] = published_rows(published_check(_rep(), load_arch("wse3")))
    assert "published WSE-3 wafer power" in t3 and "[TH22]" in t3 and "[HC34]" not in t3
    [(_, t2)] = published_rows(published_check(_rep(), load_arch("wse2")))
    assert "published WSE-2 wafer power 15 kW [TH22]" in t2
    assert "published WSE-2 peak per PE 30 mW [HC34]" in t2


# ---- 5 + 9. training: power auto-scaled, per-system naming, the head row --------------------


def test_training_energy_names_per_system_and_scales_units():
    from gpt_workload.training.train import train

    r1 = train(BLOCK, "grid32", batch=4, seq_len=128, fidelity="analytic", check_sequences=0)
    r2 = train(BLOCK, "grid32", batch=8, systems=2, seq_len=128, fidelity="analytic",
               check_sequences=0)  # fmt: skip
    e = r2.energy
    assert e["systems"] == 2 and "components_j" not in e
    assert sum(e["components_j_per_system"].values()) == pytest.approx(e["step_j_per_system"])
    assert e["step_j"] == pytest.approx(2 * e["step_j_per_system"], rel=1e-12)
    assert e["tokens_per_j"] == pytest.approx(8 * 128 / e["step_j"], rel=1e-12)
    assert r1.energy["step_j"] == pytest.approx(r1.energy["step_j_per_system"], rel=1e-12)
    layers = set(e["per_layer_j_per_system"])
    assert {"embedding", "layer 0", "layer 1", "head"} <= layers and "layer 2" not in layers
    power = dict(r2.console_rows())["power"]
    assert re.search(r"wafer avg \d+(\.\d+)? W ", power), power  # a grid is watts, not kW
    assert " kW" not in power


def test_per_layer_head_row_in_run():
    from gpt_workload.simulate import simulate

    rep = simulate(BLOCK, "grid32", check_sequences=0, batch=8, seq_len=128, fidelity="analytic")
    keys = set(rep.energy["per_layer_j"])
    assert keys == {"embedding", "layer 0", "layer 1", "head"}
    tot = sum(sum(v.values()) for v in rep.energy["per_layer_j"].values())
    assert tot == pytest.approx(rep.energy["total_j"], rel=1e-12)


# ---- 6. plausible what-if knobs, FMAC rates ---------------------------------------------------


@pytest.mark.parametrize(
    "ov, ok",
    [("pe.fmac_fp16_per_cycle=2.5", True), ("pe.fmac_bf16_per_cycle=3.5", True),
     ("pe.fmac_fp16_per_cycle=3", True), ("pe.fmac_fp32_per_cycle=0.5", True),
     ("pe.fmac_fp32_per_cycle=0.25", True), ("pe.fmac_fp32_per_cycle=0.3", True),
     ("pe.fmac_fp32_per_cycle=2", True), ("pe.fmac_fp16_per_cycle=0", False),
     ("pe.fmac_fp16_per_cycle=-1", False), ("pe.fmac_bf16_per_cycle=nan", False)],
)  # fmt: skip
def test_fmac_rates_are_positive_throughputs(ov, ok):
    """FMAC rates are measured throughputs (K3: 2.92 fp16 FMA/cycle on WSE-3 silicon), not
    SIMD widths: any finite value > 0 is allowed."""
    if ok:
        load_arch("grid8", [ov])
    else:
        with pytest.raises(ConfigError, match="pe.fmac_"):
            load_arch("grid8", [ov])


def test_fractional_fmac_rate_keeps_one_lane_per_mac():
    """Energy counts one FMAC lane-op per multiply-add at any rate: a GEMM's compute energy
    is MACs x energy per MAC with a fractional fp16 rate too."""
    from gpt_workload.kernel_scenario import gemm_program
    from gpt_workload.mappings.gemm import gemm_plan
    from wse_sim.energy import energy_report
    from wse_sim.timing.analytic import run_analytic

    arch = load_arch("grid8", ["pe.fmac_fp16_per_cycle=2.92"])
    M, K, N = 64, 32, 48
    plan = gemm_plan("summa", M=M, K=K, N=N, pr=4, pc=4, precision="fp16", arch=arch,
                     weights="resident")  # fmt: skip
    prog = gemm_program(plan, "fp16", "resident")
    rep = energy_report(prog, arch, run_analytic(prog, arch))
    assert rep.counts["fmac_lanes"] == pytest.approx(M * K * N, rel=1e-12)
    assert rep.components_j["compute"] == pytest.approx(M * K * N * 0.5e-12, rel=1e-12)


def _whatif():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "whatif_energy.py"
    spec = importlib.util.spec_from_file_location("_whatif_energy_inputs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "argv, fragment",
    [(["--simd", "2.5"], "'2.5' is not an integer"), (["--simd", "3"], "powers of two"),
     (["--simd", "0"], "out of range"), (["--simd", "128"], "out of range"),
     (["--clock-ghz", "100"], "CLOCK_RANGE"), (["--clock-ghz", "0.1"], "CLOCK_RANGE")],
)  # fmt: skip
def test_whatif_refuses_implausible_knobs(tmp_path, capsys, argv, fragment):
    if fragment == "CLOCK_RANGE":  # 0.5x..2x the wse2 preset's clock
        ghz = load_arch("wse2").pe.clock_hz / 1e9
        fragment = f"{0.5 * ghz:g}..{2 * ghz:g} GHz"
    out = tmp_path / "out"
    rc = _whatif().main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and fragment in err[0] and argv[0] in err[0]
    assert not out.exists()


def test_whatif_prints_power_with_si_prefix_on_a_small_grid(tmp_path, capsys):
    rc = _whatif().main(["--model", BLOCK_JSON(tmp_path), "--arch", "grid32", "--seq-len", "128",
                         "--batch", "4", "--sram-kib", "48", "--clock-ghz", "1.1", "--simd", "4",
                         "--out", str(tmp_path / "o")])  # fmt: skip
    line = capsys.readouterr().out.splitlines()[0]
    assert rc == 0 and re.search(r"wafer \d+(\.\d+)? W", line), line
    assert "0.0 kW" not in line and " 0.00 tokens/J" not in line


def BLOCK_JSON(tmp_path) -> str:  # noqa: N802 - a model file for the script's --model
    from gpt_workload.config import to_hf_dict

    p = tmp_path / "block.json"
    p.write_text(json.dumps(to_hf_dict(BLOCK)))
    return str(p)


# ---- 7. error messages quote the value as typed, with the field's unit ----------------------


@pytest.mark.parametrize(
    "typed, fragment",
    [("1e300J", "'1e300J' (overflows a float in pJ) is out of range"),
     ("-1fJ", "'-1fJ' (= -0.001 pJ) is out of range: allowed >= 0 pJ"),
     ("-1", "'-1' (= -1 pJ) is out of range"),
     ("inf", "'inf' (= inf pJ) is out of range"),
     ("abc", "'abc' is not a number (a number in pJ")],
)  # fmt: skip
def test_errors_quote_the_value_as_typed(typed, fragment):
    with pytest.raises(ConfigError) as exc:
        load_arch("grid8", [f"energy.fmac_fp16_pj={typed}"])
    assert fragment in str(exc.value)


def test_toml_string_that_is_not_a_number(tmp_path):
    text = load_arch_text("grid8")
    p = tmp_path / "a.toml"
    p.write_text(text.replace("fmac_fp16_pj = 0.5", 'fmac_fp16_pj = "abc"', 1))
    with pytest.raises(ConfigError, match="'abc' is not a number") as exc:
        load_arch(str(p))
    assert "unit-less" not in str(exc.value)
    p.write_text(text.replace("fmac_fp16_pj = 0.5", 'fmac_fp16_pj = "0.5"', 1))
    with pytest.raises(ConfigError, match="unit-less"):
        load_arch(str(p))


def test_underscores_group_digits_the_same_everywhere(tmp_path):
    """Single underscores between digits are accepted (TOML and Python literals); others not."""
    assert load_arch("grid8", ["energy.fmac_fp16_pj=1_000"]).energy.fmac_fp16_pj == 1000.0
    assert load_arch("grid8", ["energy.fmac_fp16_pj=1_500 fJ"]).energy.fmac_fp16_pj == 1.5
    assert load_arch("grid8", ["pe.sram_bytes=98_304"]).pe.sram_bytes == 98_304
    text = load_arch_text("grid8")
    p = tmp_path / "a.toml"
    p.write_text(text.replace("fmac_fp16_pj = 0.5", "fmac_fp16_pj = 1_000", 1))
    assert load_arch(str(p)).energy.fmac_fp16_pj == 1000.0
    for bad in ("energy.fmac_fp16_pj=1__000", "energy.fmac_fp16_pj=_1", "pe.sram_bytes=98__304",
                "energy.fmac_fp16_pj=1_"):
        with pytest.raises(ConfigError, match="is not a number"):
            load_arch("grid8", [bad])


# ---- 8. the README's optimistic-SRAM figure names both SRAM fields ---------------------------


def test_readme_names_both_sram_fields_of_the_k11_figure():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    para = text[text.index("[K11]'s optimistic") - 400 : text.index("[K11]'s optimistic") + 600]
    assert "energy.sram_read_pj_per_byte=0.28" in para
    assert "energy.sram_write_pj_per_byte=0.28" in para
