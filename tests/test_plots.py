"""Figures: the matplotlib objects are inspected (image shape = PE grid, axis labels with
units, plotted values against closed forms) and the PNGs written are real images."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from gpt_workload import plots
from gpt_workload.simulate import simulate
from gpt_workload.sweep import SweepSpec, run_sweep
from wse_sim.errors import ConfigError

UNIT = re.compile(r"\(.+\)")


@pytest.fixture(scope="module")
def rep():
    # Cerebras-GPT-111M, batch 120 on the whole WSE-2: 4 tokens x 12 PEs per segment
    return simulate("cerebras-gpt-111m", "wse2", fidelity="analytic", batch=120, check_sequences=0)


def labelled(ax) -> None:
    assert UNIT.search(ax.get_xlabel()), ax.get_xlabel()
    assert UNIT.search(ax.get_ylabel()), ax.get_ylabel()


def png_ok(fig, path) -> None:
    plots.save(fig, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_heatmap_is_the_grid(rep, tmp_path):
    fig = plots.utilisation_heatmap(rep)
    ax = fig.axes[0]
    img = ax.images[0].get_array()
    assert img.shape == (994, 750) == tuple(rep.grid)
    np.testing.assert_allclose(img, rep.pe_utilisation_map * 100)
    labelled(ax)
    assert "%" in fig.axes[1].get_ylabel()  # the colour bar, with its unit
    png_ok(fig, tmp_path / "heat.png")


def test_per_op_heatmap_matches_the_gemm_cost_model(rep, tmp_path):
    # qkv GEMM [m, K/P] x [K/P, 3d] per PE: m K/P N / W FMAC cycles, plus the bias m N/P / W
    m, K, P, N, W = 4, 768, 12, 3 * 768, 4
    busy_per_layer = m * (K // P) * N / W + m * (N // P) / W
    dur = sum(k["end_s"] - k["start_s"] for k in rep.timeline["kernels"] if k["op"] == "qkv")
    u = plots.utilisation_map(rep, op="qkv")
    assert u.shape == (994, 750)
    active = u[u > 0]
    assert active.size == 120 * 512 * 12  # 120 sequences x 512 segments x 12 PEs
    clock = rep.arch_config["pe"]["clock_hz"]  # the wse2 preset's (0.85 GHz since K1)
    np.testing.assert_allclose(active, 10 * busy_per_layer / (dur * clock), rtol=1e-12)
    assert (u[:, 744:] == 0).all()  # 750 = 62 x 12 + 6 idle columns
    # ops partition the run: sum of (op map x op time) = whole-run busy cycles
    total = np.zeros_like(u)
    for op in {k["op"] for k in rep.timeline["kernels"]}:
        d = sum(k["end_s"] - k["start_s"] for k in rep.timeline["kernels"] if k["op"] == op)
        total += plots.utilisation_map(rep, op=op) * d
    np.testing.assert_allclose(total, rep.pe_utilisation_map * rep.simulated_time_s, atol=1e-12)
    fig = plots.utilisation_heatmap(rep, op="attention", layer=3)
    assert fig.axes[0].images[0].get_array().shape == (994, 750)
    assert "attention layer 3" in fig.axes[0].get_title()
    png_ok(fig, tmp_path / "attn.png")
    with pytest.raises(ConfigError, match="op='nope'"):
        plots.utilisation_map(rep, op="nope")


def test_timeline_rows_and_bars(rep, tmp_path):
    fig = plots.timeline_chart(rep)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["embed", *(f"layer{i}" for i in range(10)), "head"]
    assert ax.get_xlabel() == "simulated time (ms)"
    # every bar ends by the end of the run
    ends = [(p.vertices[:, 0].max()) for c in ax.collections for p in c.get_paths()]
    assert max(ends) == pytest.approx(rep.simulated_time_s * 1e3, rel=1e-9)
    png_ok(fig, tmp_path / "timeline.png")


def test_roofline_points_and_ceilings(rep, tmp_path):
    fig = plots.roofline_chart(rep)
    ax = fig.axes[0]
    labelled(ax)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    pts = {}
    for c, text in zip(ax.collections, [t for t in ax.texts], strict=True):
        pts[text.get_text()] = c.get_offsets()[0]
    stats = {s["op"]: s for s in plots.op_stats(rep)}
    for op in ("qkv", "ffn_up", "lm_head"):
        s = stats[op]
        x, y = pts[op]
        assert x == pytest.approx(s["flops"] / s["weight_bytes"])
        assert y == pytest.approx(s["flops"] / s["time_s"])
        assert y <= rep.peak_flops_per_s  # under the roof
    # qkv: 2 FLOP per weight per token, 2 bytes per fp16 weight: intensity = tokens
    assert pts["qkv"][0] == pytest.approx(
        120 * 2048 * 3 * 768**2 * 2 / ((3 * 768**2 + 3 * 768) * 2), rel=1e-12
    )
    assert "attention" in pts and "layernorm_1" not in pts  # no FLOPs: not a point
    peak_line = ax.lines[0].get_ydata()
    assert max(peak_line) == pytest.approx(rep.peak_flops_per_s)
    png_ok(fig, tmp_path / "roofline.png")


@pytest.mark.parametrize("by", ["op", "layer"])
def test_breakdown_bars_sum_to_the_run(rep, by, tmp_path):
    fig = plots.breakdown_chart(rep, by=by)
    ax = fig.axes[0]
    labelled(ax)
    heights = sum(p.get_height() for p in ax.patches)
    assert heights == pytest.approx(rep.simulated_time_s * 1e3, rel=1e-9)
    png_ok(fig, tmp_path / f"bd_{by}.png")
    many = plots.breakdown_chart([rep, rep], labels=["a", "b"])
    assert [t.get_text() for t in many.axes[0].get_xticklabels()] == ["a", "b"]
    with pytest.raises(ConfigError):
        plots.breakdown_chart(rep, by="colour")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    spec = SweepSpec.from_dict(
        {
            "base": {"model": "cerebras-gpt-111m", "fidelity": "analytic"},
            "grid": {"pe.sram_bytes": [32768, 49152, 98304], "batch": [30, 120]},
        },
        name="p",
    )
    out = tmp_path_factory.mktemp("sw") / "p.parquet"
    return run_sweep(spec, output=out, workers=0).path


def test_sweep_chart_one_line_per_other_field(table, tmp_path):
    fig = plots.sweep_chart(table, "tokens_per_s", "pe.sram_bytes")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "pe.sram_bytes (B)"
    assert ax.get_ylabel() == "tokens_per_s (tokens/s)"
    assert [ln.get_label() for ln in ax.lines] == ["batch=30", "batch=120"]
    assert list(ax.lines[0].get_xdata()) == [32768, 49152, 98304]
    png_ok(fig, tmp_path / "sweep.png")
    with pytest.raises(ConfigError, match="not a column"):
        plots.sweep_chart(table, "speed", "pe.sram_bytes")


def test_cli_plot(table, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "gpt_workload.cli", "plot", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    out = tmp_path / "h.png"
    p = run("heatmap", "--fidelity", "analytic", "--op", "attention", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert out.stat().st_size > 5000
    out = tmp_path / "s.png"
    p = run("sweep", str(table), "--x", "batch", "--metric", "mfu", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert out.stat().st_size > 5000
    p = run("heatmap", "--fidelity", "analytic", "--op", "nope")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("wse-sim: error: no kernel has op='nope'")


def test_sweep_chart_mixed_batch_axis_in_numeric_order(tmp_path):
    """``batch = [120, 8, "max", "default"]`` (a text column): numbers in numeric order, then
    words (it read 120, 8, max, and null, the run's default, showed as a blank tick)."""
    spec = SweepSpec.from_dict(
        {
            "base": {"model": "gpt-tiny", "arch": "grid8", "fidelity": "analytic"},
            "grid": {"batch": [120, 8, "max", "default"]},
        },
        name="mixed",
    )
    table = run_sweep(spec, output=tmp_path / "m.parquet", workers=0).path
    fig = plots.sweep_chart(table, "tokens_per_s", "batch")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "120", "default", "max"]
    with pytest.raises(ConfigError, match="metric 'status' is not numeric"):
        plots.sweep_chart(table, "status", "batch")


def test_plot_output_must_be_an_image_path(tmp_path):
    """``-o /tmp`` said "wrote /tmp" and wrote ``/tmp.png``; ``-o x.txt`` was a traceback."""
    for bad, frag in (
        (tmp_path / "x.txt", "'.txt' is not an image format"),
        (tmp_path / "noext", "'(none)' is not an image format"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(ConfigError, match=re.escape(frag)):
            plots.check_image_path(bad)
    assert plots.check_image_path(tmp_path / "a.svg").suffix == ".svg"
    p = subprocess.run(
        [sys.executable, "-m", "gpt_workload.cli", "plot", "heatmap", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


def test_plot_output_in_an_unwritable_place_fails_before_simulating(tmp_path):
    """``-o /proc/x.png`` simulated for half a minute, then failed with a traceback."""
    with pytest.raises(ConfigError, match="cannot write in '/proc'"):
        plots.check_image_path("/proc/x.png")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "f").write_text("a file, not a directory")
    with pytest.raises(ConfigError, match="is not a directory"):
        plots.check_image_path(ro / "f" / "x.png")
    # a missing parent directory is refused, as --json refuses it (nothing is created)
    with pytest.raises(ConfigError, match="directory .* does not exist"):
        plots.check_image_path(tmp_path / "new" / "dir" / "a.png")
    assert not (tmp_path / "new").exists()
    p = subprocess.run(
        [sys.executable, "-m", "gpt_workload.cli", "plot", "timeline", "-o",
         str(tmp_path / "nonexistent" / "a.png")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "-o" in p.stderr and "does not exist" in p.stderr
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize(
    "args, frag",
    [
        (("breakdown", "--metric", "mfu"), "--metric does not apply to plot breakdown"),
        (("heatmap", "--by", "op"), "--by does not apply to plot heatmap"),
        (("roofline", "--op", "qkv"), "--op does not apply to plot roofline"),
        (("timeline", "--logy"), "--logy does not apply to plot timeline"),
        (("heatmap", "t.csv"), "TABLE does not apply to plot heatmap"),
    ],
)
def test_plot_option_the_figure_would_ignore_is_refused(args, frag, tmp_path):
    """``plot breakdown --metric mfu`` drew the default breakdown and said nothing."""
    p = subprocess.run(
        [sys.executable, "-m", "gpt_workload.cli", "plot", *args, "-o", str(tmp_path / "a.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert frag in p.stderr
    assert not (tmp_path / "a.png").exists()
