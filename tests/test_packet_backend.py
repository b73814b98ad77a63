"""The ``packet`` timing backend on Programs of the weight-streaming lowering."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gpt_workload.config import GPTConfig
from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.models import resolve_model
from gpt_workload.simulate import simulate
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError, FitError
from wse_sim.program import Kernel, PEClass, Program, Transfer
from wse_sim.timing.common import fabric_bound_s, n_directed_links
from wse_sim.timing.packet import run_packet

GRID8 = load_arch("grid8")


def _check_result(prog, arch, res):
    """Kernel time splits add up, nothing below its roofline, utilisation in [0, 1], and
    every wavelet injected reached every PE its route leads to, once."""
    peak = arch.peak_flops_per_s(prog.precision)
    n_links = n_directed_links(prog.rows, prog.cols)
    assert len(res.kernels) == len(prog.kernels)
    for k, kt in zip(prog.kernels, res.kernels, strict=True):
        assert kt.duration_s >= max(k.flops / peak, fabric_bound_s(k, arch, n_links)) * (1 - 1e-9)
        assert min(kt.stall_s, kt.compute_s, kt.fabric_s) >= 0
        assert kt.stall_s + kt.compute_s + kt.fabric_s == pytest.approx(
            kt.duration_s, rel=1e-6, abs=1e-12
        )
    assert math.isfinite(res.total_s) and res.total_s > 0
    util = res.pe_busy_cycles / (res.total_s * arch.pe.clock_hz)
    assert 0 <= util.min() and util.max() <= 1 + 1e-9
    c = res.extra["conservation"]
    assert c["missing"] == c["duplicated"] == c["unexpected"] == [] and c["in_flight"] == 0
    assert c["injected_wavelets"] > 0


@pytest.fixture(scope="module")
def tiny():
    prog = lower_weight_streaming(resolve_model("gpt-tiny"), GRID8, 4, 32, "fp16")
    return prog, run_packet(prog, GRID8, check=True)


def test_tiny_program_on_grid8(tiny):
    prog, res = tiny
    assert res.backend == "packet"
    _check_result(prog, GRID8, res)
    assert [k.name for k in res.kernels] == [k.name for k in prog.kernels]
    assert res.io_blocks and res.io_busy_s > 0
    assert res.pe_busy_cycles.shape == (8, 8)
    fab = res.extra["fabric"]
    assert 0 < fab["link_utilisation_max"] <= 1 and fab["latency"]["count"] > 0


def test_packet_is_deterministic(tiny):
    prog, res = tiny
    again = run_packet(prog, GRID8)
    assert again.total_s == res.total_s
    assert [k.end_s for k in again.kernels] == [k.end_s for k in res.kernels]


def test_packet_link_maps_written(tiny, tmp_path):
    _, res = tiny
    paths = res.extra["fabric_stats"].save_maps(tmp_path, prefix="tiny")
    util = np.load(tmp_path / "tiny_link_utilisation.npy")
    assert util.shape == (8, 8, 4) and 0 < util.max() <= 1
    assert (tmp_path / "tiny_link_utilisation.png").stat().st_size > 0 and len(paths) == 3


def test_simulate_with_fidelity_packet():
    rep = simulate("gpt-tiny", "grid8", fidelity="packet", batch=4, seq_len=32, check_sequences=0)
    assert rep.fidelity == "packet" and rep.simulated_time_s > 0


def test_cli_fidelity_packet_and_whole_wafer_refused():
    run = [sys.executable, "-m", "gpt_workload.cli", "run", "--model", "gpt-tiny"]
    ok = subprocess.run(
        [*run, "--arch", "grid8", "--fidelity", "packet", "--batch", "2", "--seq-len", "16",
         "--check-sequences", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "packet" in ok.stdout
    bad = subprocess.run(
        [*run, "--arch", "wse2", "--fidelity", "packet", "--batch", "1", "--seq-len", "16",
         "--check-sequences", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    line = bad.stderr.strip()
    assert line.startswith("wse-sim: error:") and "fidelity=event" in line and "\n" not in line


def test_unknown_pattern_is_a_clear_error():
    tr = Transfer("mystery", "all_to_all", "horizontal", 64.0, 64.0, 1, 0, 0)
    k = Kernel("k", "x", 0, 0, (PEClass(0, 4, 10.0, 0.0, 0.0),), "m", (tr,))
    prog = Program("p", 2, 2, "fp32", [k], [], {"m": np.zeros((2, 2), np.int16)})
    with pytest.raises(ConfigError, match="all_to_all"):
        run_packet(prog, GRID8)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_head=st.sampled_from([1, 2, 3, 4]),
    d_head=st.sampled_from([8, 16]),
    rows=st.integers(1, 8),
    cols=st.integers(1, 8),
    batch=st.integers(1, 6),
    seq=st.integers(1, 24),
    precision=st.sampled_from(["fp32", "fp16"]),
    slots=st.integers(1, 2),
)
@example(n_head=1, d_head=8, rows=1, cols=1, batch=1, seq=1, precision="fp32", slots=1).via(
    "edge case: a 1 x 1 grid (no links at all)"
)
@example(n_head=2, d_head=8, rows=1, cols=4, batch=1, seq=2, precision="fp32", slots=1).via(
    "shrunk failure: on a 1-row grid a sequence's next segment sits in the next column of "
    "segments and the K/V chain's crossing row must stay inside the grid"
)
def test_random_programs_never_crash_or_lose_data(
    n_head, d_head, rows, cols, batch, seq, precision, slots
):
    """Random small models on random small grids: either a clean FitError from the lowering
    or a packet run whose every wavelet arrives, above its roofline."""
    d = n_head * d_head
    cfg = GPTConfig(
        name="rand", n_layer=1, n_head=n_head, d_model=d, d_ff=2 * d, vocab_size=61,
        n_positions=32,
    )  # fmt: skip
    arch = load_arch(
        "grid8", [f"wafer.rows={rows}", f"wafer.cols={cols}", f"io.weight_buffer_slots={slots}"]
    )
    try:
        prog = lower_weight_streaming(cfg, arch, batch, seq, precision)
    except FitError:
        prog = None
    assume(prog is not None)  # the model does not fit this grid: no run to check
    _check_result(prog, arch, run_packet(prog, arch, check=True))


def test_weight_row_pipeline_is_what_the_packet_engine_times():
    """A streamed GEMM overlaps compute and fabric weight-row piece by weight-row piece
    (:func:`gpt_workload.mappings.weight_streaming.plan.pipeline_chunks`), not in 8 coarse chunks:
    on the packet
    engine (every wavelet of every chunk) the finer pipeline is faster, by about the
    ``min(compute, fabric) / 8`` fill it removes, and ``event`` / ``analytic`` follow
    ``packet`` at both granularities."""
    import dataclasses

    from wse_sim.timing.analytic import run_analytic
    from wse_sim.timing.event import run_event

    arch = load_arch("grid8", ["io.ingress_bytes_per_s=1e12"])  # compute and fabric show
    fine = lower_weight_streaming(resolve_model("gpt-tiny"), arch, 4, 32, "fp16")
    gemms = [k for k in fine.kernels if k.weight_block >= 0 and k.op not in ("embedding",)]
    assert any(k.n_chunks > 8 for k in gemms)
    coarse = dataclasses.replace(
        fine, kernels=[dataclasses.replace(k, n_chunks=min(k.n_chunks, 8)) for k in fine.kernels]
    )
    t = {}
    for name, prog in (("fine", fine), ("coarse", coarse)):
        pk = run_packet(prog, arch).total_s
        for run in (run_event, run_analytic):
            assert run(prog, arch).total_s == pytest.approx(pk, rel=0.05), (name, run)
        t[name] = pk
    assert t["fine"] < t["coarse"]
