"""wse_sim.metrics: the run metrics as functions of a Program and its timing, against closed
forms written here (one GEMM-like kernel with known FLOPs, weight bytes and link bytes)."""

import numpy as np
import pytest

from wse_sim import metrics
from wse_sim.arch import load_arch
from wse_sim.program import Kernel, PEClass, Program, Transfer, WeightBlock
from wse_sim.timing import BACKENDS

ARCH = load_arch("grid8")
R, C = 2, 3


def _program(n_kernels: int = 2) -> Program:
    """``n_kernels`` kernels on a 2 x 3 grid, 6 PEs each busy 1000 cycles doing 5e3 FLOPs,
    each consuming a 4 KiB weight block and moving 600 bytes x links horizontally."""
    tr = Transfer("row", "multicast_chain", "horizontal", 100.0, 600.0, 2, 0, 0)
    ks, blocks = [], []
    for i in range(n_kernels):
        blocks.append(WeightBlock(i, f"layer{i}", 4096))
        ks.append(Kernel(f"k{i}", "gemm" if i % 2 == 0 else "norm", i, 0,
                         (PEClass(0, R * C, 1000.0, 0.0, 5e3),), "all", (tr,),
                         weight_block=i, weight_bytes=4096, flops=6 * 5e3))  # fmt: skip
    return Program("m", R, C, "fp16", ks, blocks, {"all": np.zeros((R, C), np.int16)})


@pytest.mark.parametrize("backend", ["analytic", "event"])
def test_breakdown_sums_to_the_simulated_time(backend):
    prog = _program(3)
    tr = BACKENDS[backend](prog, ARCH)
    rows, totals = metrics.breakdown(tr)
    assert totals["total_s"] == pytest.approx(tr.total_s, rel=1e-12)
    parts = totals["compute_s"] + totals["fabric_s"] + totals["stall_s"] + totals["idle_s"]
    assert parts == pytest.approx(tr.total_s, rel=1e-12)
    by_op = metrics.breakdown_by_op(rows)
    assert [r["op"] for r in by_op if r["op"] != "idle"] == sorted(
        {"gemm", "norm"}, key=lambda op: -sum(r["total_s"] for r in rows if r["op"] == op)
    )
    assert sum(r["total_s"] for r in by_op) == pytest.approx(tr.total_s, rel=1e-12)


def test_roofline_bounds_are_the_closed_forms():
    prog = _program(2)
    tr = BACKENDS["analytic"](prog, ARCH)
    rf = metrics.roofline(prog, ARCH, tr)
    peak = ARCH.peak_flops_per_s("fp16")
    assert rf["compute_s"] == pytest.approx(2 * 6 * 5e3 / peak, rel=1e-12)
    assert rf["io_s"] == pytest.approx(2 * 4096 / ARCH.io.ingress_bytes_per_s, rel=1e-12)
    assert rf["bound_s"] == max(rf["compute_s"], rf["io_s"], rf["fabric_s"])
    assert tr.total_s >= rf["bound_s"]
    assert {r["op"] for r in rf["per_op"]} == {"gemm", "norm"}


def test_utilisations_and_mfu():
    prog = _program(2)
    tr = BACKENDS["analytic"](prog, ARCH)
    t = tr.total_s
    util, summary = metrics.pe_utilisation(tr, ARCH.pe.clock_hz)
    # every PE: 2 kernels x 1000 busy cycles over t seconds of the clock
    want = 2000.0 / (t * ARCH.pe.clock_hz)
    assert util.shape == (R, C) and np.allclose(util, want, rtol=1e-12)
    assert summary["min"] == pytest.approx(want) and summary["max"] == pytest.approx(want)
    assert metrics.mfu(3e12, 2.0, 1e13) == pytest.approx(0.15)
    assert metrics.io_utilisation(5e9, 0.5, 4e10) == pytest.approx(0.25)
    # 2 x 3 mesh: 2 rows x 2 + 3 columns x 1 = 7 links, both directions = 14, plus the 3
    # north-edge ingress links = 17 directed links of link_bits_per_cycle / 8 bytes a cycle
    rate = ARCH.fabric.link_bits_per_cycle / 8 * ARCH.pe.clock_hz
    assert metrics.mean_link_utilisation(prog, ARCH, tr) == pytest.approx(
        2 * 600.0 / (t * 17 * rate), rel=1e-12
    )
    with pytest.raises(ValueError, match="time_s=0"):
        metrics.mfu(1.0, 0, 1.0)


def test_op_stats_from_the_timeline_rows():
    prog = _program(2)
    tr = BACKENDS["event"](prog, ARCH)
    rows = metrics.kernel_rows(prog, tr)
    assert [r["name"] for r in rows] == ["k0", "k1"]
    st = {s["op"]: s for s in metrics.op_stats(rows)}
    g = st["gemm"]
    assert g["intensity_flops_per_byte"] == pytest.approx(6 * 5e3 / 4096)
    assert g["achieved_flops_per_s"] == pytest.approx(6 * 5e3 / tr.kernels[0].duration_s)


def _imports(path) -> set[str]:
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_mappings_time_candidates_through_wse_sim_not_simulate():
    """Data flows down: a mapping (auto, the layout search) times its candidates with
    wse_sim.timing and wse_sim.metrics, never through the job above it."""
    from pathlib import Path

    import gpt_workload.mappings as pkg

    files = sorted(Path(pkg.__file__).parent.rglob("*.py"))
    assert files
    bad = {f.name: m for f in files for m in _imports(f) if m.startswith("gpt_workload.simulate")}
    assert bad == {}
