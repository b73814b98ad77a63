"""Bad inputs to the what-if and scaling experiment scripts: one line on stderr
(``PROG: error: ...`` naming the option), exit status 2, nothing written, no traceback; and
the shared checks of :mod:`gpt_workload.experiment_args` they use.

Every bad input here fails before anything is simulated, so the file runs in seconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gpt_workload import experiment_args as ea
from wse_sim.errors import ConfigError, FitError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
_MODULES: dict[str, object] = {}


def load(name: str):
    """experiments/<name>.py as a module, loaded once per test session."""
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"_inputs_{name}", EXPERIMENTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _MODULES[name] = mod
    return _MODULES[name]


def assert_refused(name, argv, capsys, out: Path, option: str) -> str:
    """Run ``name``'s main(argv) and check the one-line refusal; returns the line."""
    rc = load(name).main(argv)
    cap = capsys.readouterr()
    err = cap.err
    assert rc == 2, (rc, err, cap.out)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith(f"{name}.py: error: "), err
    assert option in lines[0], (option, err)
    assert "Traceback" not in err, err
    assert cap.out == "", cap.out
    assert not out.exists(), sorted(out.rglob("*"))
    return lines[0]


CASES = [
    # whatif_sram.py: ConfigError and ValueError tracebacks before
    ("whatif_sram", ["--models", "nope"], "--models", "'nope'"),
    ("whatif_sram", ["--models", "cerebras-gpt-111m,,cerebras-gpt-1.3b"], "--models", "empty"),
    ("whatif_sram", ["--arch", "wse9"], "--arch", "'wse9'"),
    ("whatif_sram", ["--batch", "-1"], "--batch", "1..1000000"),
    ("whatif_sram", ["--batch", "abc"], "--batch", "'abc'"),
    ("whatif_sram", ["--precision", "fp8"], "--precision", "fp16"),
    ("whatif_sram", ["--workers", "-3"], "--workers", "-3"),
    ("whatif_sram", ["--workers", "100000"], "--workers", "100000"),
    ("whatif_sram", ["--sram-kib", "abc"], "--sram-kib", "'abc'"),
    ("whatif_sram", ["--sram-kib", "nan"], "--sram-kib", "finite"),
    ("whatif_sram", ["--sram-kib", "inf"], "--sram-kib", "finite"),
    ("whatif_sram", ["--sram-kib", ""], "--sram-kib", "numbers"),
    ("whatif_sram", ["--sram-kib", "24,,48"], "--sram-kib", "empty"),
    ("whatif_sram", ["--sram-kib", "-24"], "--sram-kib", "> 0"),
    ("whatif_sram", ["--sram-kib", "2"], "--sram-kib", "pe.sram_reserved_bytes"),
    ("whatif_sram", ["--seq-len", "0"], "--seq-len", "n_positions"),
    ("whatif_sram", ["--seq-len", "4096"], "--seq-len", "n_positions"),
    ("whatif_sram", ["--fidelity", "packet"], "--fidelity", "analytic, event"),
    ("whatif_sram", ["--fidelity", "exact"], "--fidelity", "analytic"),
    ("whatif_sram", ["--scheduler", ""], "--scheduler", "tcp://HOST:PORT"),
    ("whatif_sram", ["--bogus", "1"], "--bogus", "unrecognized"),
    # whatif_io_bandwidth.py: IndexError after a sweep of nothing but errors before
    ("whatif_io_bandwidth", ["--scales", "0,-1"], "--scales", "> 0"),
    ("whatif_io_bandwidth", ["--scales", "nan"], "--scales", "finite"),
    ("whatif_io_bandwidth", ["--scales", "1,abc"], "--scales", "'abc'"),
    ("whatif_io_bandwidth", ["--scales", "1e30"], "--scales", "io.ingress_bytes_per_s"),
    ("whatif_io_bandwidth", ["--fidelity", "packet"], "--fidelity", "whole wafer"),
    ("whatif_io_bandwidth", ["--model", "nope"], "--model", "cerebras-gpt-13b"),
    ("whatif_io_bandwidth", ["--arch", "grid8"], "--model", "wse2"),
    ("whatif_io_bandwidth", ["--seq-len", "-5"], "--seq-len", "n_positions"),
    ("whatif_io_bandwidth", ["--precision", "int8"], "--precision", "bf16"),
    # whatif_fabric.py
    ("whatif_fabric", ["--batches", "0,abc"], "--batches", "integers >= 1"),
    ("whatif_fabric", ["--batches", "8,abc"], "--batches", "'abc'"),
    ("whatif_fabric", ["--batches", ""], "--batches", "integers"),
    ("whatif_fabric", ["--link-bits", "0"], "--link-bits", "fabric.link_bits_per_cycle"),
    ("whatif_fabric", ["--link-bits", "32.5"], "--link-bits", "'32.5'"),
    ("whatif_fabric", ["--hop-cycles", "5000"], "--hop-cycles", "<= 1000"),
    ("whatif_fabric", ["--ramp-wavelets", "0"], "--ramp-wavelets", "> 0"),
    ("whatif_fabric", ["--ramp-wavelets", "nan"], "--ramp-wavelets", "finite"),
    ("whatif_fabric", ["--ramp-wavelets", "100"], "--ramp-wavelets", "<= 64"),
    ("whatif_fabric", ["--model", "bogus"], "--model", "'bogus'"),
    ("whatif_fabric", ["--fidelity", "packet"], "--fidelity", "packet"),
    # model_scaling.py: "Data cannot be log-scaled" on grid8 before
    ("model_scaling", ["--archs", "grid8"], "--archs", "wse2, wse3"),
    ("model_scaling", ["--archs", "grid32"], "--archs", "does not fit"),
    ("model_scaling", ["--archs", "wse2,"], "--archs", "empty"),
    ("model_scaling", ["--archs", "wse9"], "--archs", "'wse9'"),
    ("model_scaling", ["--models", "nope"], "--models", "'nope'"),
    ("model_scaling", ["--seq-len", "4096"], "--seq-len", "2048"),
    ("model_scaling", ["--fidelity", "packet"], "--fidelity", "event"),
    ("model_scaling", ["--workers", "-1"], "--workers", "0.."),
]


@pytest.mark.parametrize(
    "name, argv, option, needle", CASES, ids=[f"{c[0]}{' '.join(c[1])}" for c in CASES]
)
def test_bad_option_is_one_line(tmp_path, capsys, name, argv, option, needle):
    out = tmp_path / "out"
    # defaults first: argparse keeps the last of a repeated option (--workers -3 wins)
    line = assert_refused(name, ["--workers", "0", "--out", str(out), *argv], capsys, out, option)
    assert needle in line, (needle, line)


SCRIPTS = ["whatif_sram", "whatif_io_bandwidth", "whatif_fabric", "model_scaling"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_out_is_an_existing_file(tmp_path, capsys, name):
    f = tmp_path / "taken"
    f.write_text("keep me")
    line = assert_refused(
        name, ["--workers", "0", "--out", str(f)], capsys, tmp_path / "x", "--out"
    )
    assert "not a directory" in line
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("name", SCRIPTS)
def test_out_under_a_file(tmp_path, capsys, name):
    f = tmp_path / "taken"
    f.write_text("")
    out = f / "sub"
    line = assert_refused(name, ["--workers", "0", "--out", str(out)], capsys, out, "--out")
    assert "is not a directory" in line


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", SCRIPTS)
def test_out_cannot_be_created(tmp_path, capsys, name):
    out = Path("/proc/nope-wse-sim")
    line = assert_refused(name, ["--workers", "0", "--out", str(out)], capsys, out, "--out")
    assert "cannot be created" in line


def test_bad_option_is_reported_before_the_out_check(tmp_path, capsys):
    """The bad option is named even when --out is bad too."""
    f = tmp_path / "file"
    f.write_text("")
    argv = ["--sram-kib", "nan", "--out", str(f)]
    line = assert_refused("whatif_sram", argv, capsys, tmp_path / "x", "--sram-kib")
    assert "--out" not in line


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        load("whatif_fabric").main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--ramp-wavelets" in text and "fabric.ramp_wavelets_per_cycle" in text


def test_fabric_ramp_option_lifts_the_link_cap(tmp_path):
    """At the preset RAMP rate (1 wavelet = 32 bit per cycle) 64-bit links run no faster than
    32-bit ones; at 2 wavelets per cycle they do. Without --ramp-wavelets the link sweep has
    no RAMP column (the preset's points, unchanged)."""
    mod = load("whatif_fabric")
    base = ["--batches", "8", "--link-bits", "32,64", "--hop-cycles", "1", "--workers", "0"]
    args = mod.parse_args([*base, "--ramp-wavelets", "1,2", "--out", str(tmp_path / "r")])
    mod.validate(args)
    results, _ = mod.run(args)
    tps = {
        (r[mod.RAMP_FIELD], r["fabric.link_bits_per_cycle"]): r["tokens_per_s"]
        for r in results["link_bandwidth"]
    }
    assert tps[(1.0, 64)] == pytest.approx(tps[(1.0, 32)], rel=1e-4)  # flat: the RAMP caps
    # lifting the cap speeds the fabric-bound part of the run (1.20x at the calibrated wse2;
    # a margin, not a fit: the sign is the point)
    assert tps[(2.0, 64)] > 1.1 * tps[(1.0, 64)]
    args = mod.parse_args([*base, "--out", str(tmp_path / "p")])
    results, _ = mod.run(args)
    assert all(mod.RAMP_FIELD not in r for r in results["link_bandwidth"])
    assert "ramp_wavelets_per_cycle = 1" in mod.ramp_note(args)


# ---------------------------------------------------------------- the helpers themselves
def test_parse_floats():
    assert ea.parse_floats("--x", " 0.25, 1,8 ", 0, lo_open=True) == [0.25, 1.0, 8.0]
    for bad, why in [
        ("", "no empty item"),
        ("1,", "no empty item"),
        ("nan", "not finite"),
        ("-inf", "not finite"),
        ("1e999", "not finite"),
        ("x", "not a number"),
        ("0", "out of range"),
        ("9", "out of range"),
    ]:
        with pytest.raises(ConfigError, match=why) as exc:
            ea.parse_floats("--x", bad, 0, 8, lo_open=True)
        assert str(exc.value).startswith(f"--x {bad!r} is not allowed: expected ")
        assert "> 0 and <= 8" in str(exc.value)
    assert ea.parse_floats("--x", "0", 0) == [0.0]


def test_parse_ints():
    assert ea.parse_ints("--n", "8,120", 1, 1000) == [8, 120]
    for bad in ("", "1.5", "a", "0", "1001", "1,,2"):
        with pytest.raises(ConfigError, match=r"^--n '.*' is not allowed: expected "):
            ea.parse_ints("--n", bad, 1, 1000)
    with pytest.raises(ConfigError, match=r">= 1 and <= 1000"):
        ea.parse_ints("--n", "0", 1, 1000)


def test_name_checks_reuse_the_project_messages():
    assert ea.check_model("--m", "cerebras-gpt-111m").name == "cerebras-gpt-111m"
    with pytest.raises(ConfigError, match=r"^--m: unknown model 'x': expected one of"):
        ea.check_model("--m", "x")
    assert ea.check_arch("--a", "wse2").name == "wse2"
    with pytest.raises(ConfigError, match=r"^--a: unknown arch 'x'.*wse2"):
        ea.check_arch("--a", "x")
    assert ea.check_precision("--p", "bf16") == "bf16"
    with pytest.raises(ConfigError, match=r"^--p: .*allowed: fp32, fp16, bf16"):
        ea.check_precision("--p", "fp8")
    with pytest.raises(ConfigError, match=r"^--f 'x' is not allowed: expected one of"):
        ea.check_fidelity("--f", "x")
    assert ea.fidelities_for([ea.check_arch("--a", "wse2")]) == ("analytic", "event")
    assert "packet" in ea.fidelities_for([ea.check_arch("--a", "grid32")])


def test_check_workers():
    assert ea.check_workers("--w", None) is None
    assert ea.check_workers("--w", 0) == 0
    assert ea.check_workers("--w", ea.max_workers()) == ea.max_workers()
    for bad in (-1, ea.max_workers() + 1):
        with pytest.raises(ConfigError, match=rf"^--w {bad} is not allowed: .* 0\.\."):
            ea.check_workers("--w", bad)


def test_check_fits_names_the_presets_that_fit():
    cfg = ea.check_model("--m", "cerebras-gpt-111m")
    assert ea.check_fits("--a", "wse2", cfg, ea.check_arch("--a", "wse2"), 2048, "fp16") > 1
    with pytest.raises(ConfigError, match=r"^--a 'grid8' is not allowed: .*wse2, wse3\)$"):
        ea.check_fits("--a", "grid8", cfg, ea.check_arch("--a", "grid8"), 2048, "fp16")


def test_check_out_dir_leaves_nothing_behind(tmp_path):
    assert ea.check_out_dir("--out", tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert ea.check_out_dir("--out", tmp_path) == tmp_path
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match=r"^--out '' is not allowed"):
        ea.check_out_dir("--out", "")
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match="broken symbolic link"):
        ea.check_out_dir("--out", tmp_path / "link")


def test_argument_parser_errors_are_config_errors():
    p = ea.ArgumentParser(prog="x.py")
    p.add_argument("--n", type=int)
    with pytest.raises(ConfigError, match=r"argument --n: invalid int value: 'z'"):
        p.parse_args(["--n", "z"])


def test_run_main(capsys):
    assert ea.run_main("p.py", lambda: None) == 0
    assert ea.run_main("p.py", lambda: 3) == 3

    def fit():
        raise FitError("does not\n  fit")

    assert ea.run_main("p.py", fit) == 2
    assert capsys.readouterr().err == "p.py: error: does not fit\n"

    def missing():
        open("/nonexistent-wse-sim/x")

    assert ea.run_main("p.py", missing) == 2
    err = capsys.readouterr().err
    assert err.startswith("p.py: error: No such file or directory: ") and err.count("\n") == 1

    def bug():
        raise KeyError("a bug is not a user error")

    with pytest.raises(KeyError):  # programming errors keep their traceback
        ea.run_main("p.py", bug)


@pytest.mark.parametrize(
    "argv, option, needle",
    [
        (["--fidelity", "packet"], "--fidelity", "whole wafer"),  # ran 28 error rows, rc 0
        (["--model", ""], "--model", "is empty"),  # read as the current directory
        (["--model", "cerebras-gpt-111m,"], "--model", "is empty"),
    ],
)
def test_compare_mappings_refuses_up_front(tmp_path, capsys, argv, option, needle):
    out = tmp_path / "out"
    line = assert_refused("compare_mappings", ["--out", str(out), *argv], capsys, out, option)
    assert needle in line, (needle, line)


def test_whatif_sram_with_nothing_that_fits_is_an_error(tmp_path, capsys):
    """Every point a FitError used to exit 0 with an empty chart."""
    out = tmp_path / "out"
    argv = ["--models", "cerebras-gpt-1.3b", "--arch", "grid8", "--sram-kib", "48"]
    rc = load("whatif_sram").main([*argv, "--batch", "1", "--workers", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].endswith("no point fits (see the rows above)")
