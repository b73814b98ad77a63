"""Bare kernel scenarios (``wse-sim kernel``, :mod:`gpt_workload.kernel_scenario`) against
closed forms derived here: the GEMM's FLOPs over the region's peak, the SUMMA per-PE cost of
``gpt_workload/mappings/gemm.py``'s docstring, the packet engine's zero-load relay time, the
published [HPDC24] reduce model, and the vector-op cost model."""

from __future__ import annotations

import pytest

from gpt_workload.cli import main
from gpt_workload.kernel_scenario import (
    collective_scenario,
    fma_rate_scenario,
    gemm_scenario,
    parse_region,
    relay_scenario,
)
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError, FitError
from wse_sim.fabric.collectives import hpdc24_model

GRID = load_arch("grid32")


@pytest.mark.parametrize("mapping", ["summa", "cannon", "meshgemm", "ws", "row_1d", "col_1d"])
@pytest.mark.parametrize("fidelity", ["analytic", "event"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gemm_time_at_least_flops_over_peak(mapping, fidelity, precision):
    M, K, N, r = 256, 128, 192, 16
    res = gemm_scenario(M, K, N, arch="grid32", mapping=mapping, region=(r, r),
                        precision=precision, fidelity=fidelity)  # fmt: skip
    peak = r * r * 2 * GRID.pe.fmac_per_cycle(precision) * GRID.pe.clock_hz
    assert res.flops == 2 * M * K * N
    assert res.time_s >= 2 * M * K * N / peak
    assert 0 < res.utilisation <= 1
    assert res.tflops == pytest.approx(2 * M * K * N / res.time_s / 1e12)


def test_summa_per_pe_cost_is_the_mapping_closed_form():
    """gemm.py: one SIMD op of length N/pc per (row, k) of the PE's work: busy (M/pr) K
    (N/pc) / W cycles, overhead (M/pr) K ov cycles (divisible shapes)."""
    M, K, N, pr, pc = 128, 64, 96, 8, 4
    res = gemm_scenario(M, K, N, arch="grid32", mapping="summa", region=(pr, pc))
    W, ov = GRID.pe.fmac_fp32_per_cycle, GRID.pe.vector_op_overhead_cycles
    busy = (M // pr) * K * (N // pc) / W
    assert res.overhead_cycles == (M // pr) * K * ov
    assert res.compute_cycles == pytest.approx(busy + (M // pr) * K * ov)
    assert res.cycles >= res.compute_cycles


def test_k1_gemm_utilisation_is_the_vector_op_share():
    """33,000^3 fp32 on 750 x 750 PEs: each PE runs 44-element FMA ops (44 x 44 per panel):
    44 / 0.5 busy cycles + 16 setup per op, so utilisation <= 88 / 104, and the panels'
    fabric hides behind compute (within 0.1 %)."""
    res = gemm_scenario(33000, 33000, 33000, arch="wse2", mapping="summa", region=(750, 750))
    share = (44 / 0.5) / (44 / 0.5 + 16)
    assert res.utilisation <= share
    assert res.utilisation == pytest.approx(share, rel=1e-3)
    a = load_arch("wse2")
    assert res.peak_flops_per_s == pytest.approx(750 * 750 * 2 * 0.5 * a.pe.clock_hz)


def test_streamed_gemm_waits_for_its_weights():
    """Streamed B (K x N elements) crosses the MemoryX ingress: time >= bytes / bandwidth."""
    M, K, N = 32, 512, 512
    res = gemm_scenario(M, K, N, arch="grid32", mapping="summa", region=(32, 32),
                        operands="streamed", precision="fp16")  # fmt: skip
    assert res.time_s >= K * N * 2 / GRID.io.ingress_bytes_per_s
    resident = gemm_scenario(M, K, N, arch="grid32", mapping="summa", region=(32, 32),
                             precision="fp16")  # fmt: skip
    assert res.time_s > resident.time_s


def test_gemm_bad_input():
    with pytest.raises(ConfigError, match="region rows"):
        gemm_scenario(8, 8, 8, arch="grid8", region=(9, 8))
    with pytest.raises(ConfigError, match="operands"):
        gemm_scenario(8, 8, 8, arch="grid8", operands="cached")
    with pytest.raises(ConfigError, match="algorithm"):
        gemm_scenario(8, 8, 8, arch="grid8", mapping="strassen")
    with pytest.raises(FitError, match="SRAM"):
        gemm_scenario(4096, 4096, 4096, arch="grid8", region=(2, 2))
    with pytest.raises(ConfigError, match="ROWSxCOLS"):
        parse_region("3y3")
    assert parse_region("750x750") == (750, 750)


@pytest.mark.parametrize("p, n", [(4, 1), (16, 64), (64, 4096), (512, 1)])
def test_chain_reduce_closed_form_is_the_hpdc24_model_at_tr_2(p, n):
    """wse2's RAMP latency is T_R = 2 (K2): the zero-load chain reduce, n + (p - 1)(2 T_R +
    hop + 1), is [HPDC24]'s max(C, E/N + L) + (2 T_R + 1) D with 1-cycle hops."""
    res = collective_scenario("reduce", "chain", p, n, arch="wse2", fidelity="analytic")
    assert res.cycles == pytest.approx(hpdc24_model("reduce", "chain", p, n, T_R=2.0))
    assert res.cycles >= res.latency_bound_cycles


@pytest.mark.parametrize("kind, algo", [("reduce", "chain"), ("reduce", "tree"),
                                        ("allreduce", "chain"), ("allreduce", "ring"),
                                        ("broadcast", "tree")])  # fmt: skip
@pytest.mark.parametrize("p, n", [(4, 1), (16, 64), (24, 7)])
def test_packet_collective_never_beats_its_latency_bound(kind, algo, p, n):
    res = collective_scenario(kind, algo, p, n, arch="wse2", fidelity="packet")
    assert res.cycles >= res.latency_bound_cycles
    assert res.time_s == pytest.approx(res.cycles / load_arch("wse2").pe.clock_hz)


def test_tree_reduce_closed_form_pays_every_stage_on_small_vectors():
    """One element over 64 PEs: 6 stages of (2 RAMP + 2^s hops + combine) plus one wavelet,
    which the packet engine meets."""
    a = load_arch("wse2").fabric
    want = sum(2 * a.ramp_latency_cycles + 2**s * a.hop_latency_cycles
               + a.pe_forward_latency_cycles for s in range(6)) + 1  # fmt: skip
    an = collective_scenario("reduce", "tree", 64, 1, arch="wse2", fidelity="analytic")
    pk = collective_scenario("reduce", "tree", 64, 1, arch="wse2", fidelity="packet")
    assert an.cycles == want == pk.cycles


def test_collective_bad_input():
    with pytest.raises(ConfigError, match="algorithm"):
        collective_scenario("reduce", "ring", 4, 1)
    with pytest.raises(ConfigError, match="pes"):
        collective_scenario("reduce", "chain", 751, 1, arch="wse2")
    with pytest.raises(ConfigError, match="elements"):
        collective_scenario("reduce", "chain", 4, 0)


@pytest.mark.parametrize("L", [64, 1000, 8192])
def test_fma_rate_is_the_vector_op_cost_model(L):
    a = load_arch("wse3")
    res = fma_rate_scenario(L, arch="wse3")
    W, ov = a.pe.fmac_fp16_per_cycle, a.pe.vector_op_overhead_cycles
    assert res.cycles == pytest.approx(L / W + ov)
    assert res.elements_per_cycle == pytest.approx(L / (L / W + ov))
    with pytest.raises(FitError):
        fma_rate_scenario(20_000, arch="wse3")


@pytest.mark.parametrize("h, B", [(1, 1), (4, 1024), (16, 256)])
def test_router_relay_is_the_engine_zero_load_time(h, B):
    """engine.py: 2 RAMP + h hops + B / min(link rate, RAMP rate) at zero load."""
    f = load_arch("wse3").fabric
    rate = min(f.link_bits_per_cycle / 32, f.ramp_wavelets_per_cycle)
    res = relay_scenario(h, B, arch="wse3")
    assert res.cycles == pytest.approx(2 * f.ramp_latency_cycles + h * f.hop_latency_cycles
                                       + B / rate)  # fmt: skip


def test_pe_relay_pays_each_store_and_forward():
    f = load_arch("wse3").fabric
    one = relay_scenario(1, 256, arch="wse3", mode="pe").cycles
    eight = relay_scenario(8, 256, arch="wse3", mode="pe").cycles
    assert eight >= 8 * (256 * 32 / f.link_bits_per_cycle)
    assert eight == pytest.approx(8 * one, rel=0.05)


def test_kernel_cli(capsys):
    rc = main(["kernel", "gemm", "--m", "64", "--k", "64", "--n", "64", "--arch", "grid8",
               "--region", "4x4", "--mapping", "cannon", "--streamed", "--precision", "fp16"])
    out = capsys.readouterr().out
    assert rc == 0 and "TFLOP/s" in out and "utilisation" in out and "cannon" in out
    rc = main(["kernel", "collective", "--kind", "allreduce", "--algorithm", "ring", "--pes",
               "16", "--elements", "1", "--arch", "wse2"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "latency bound" in out and "cycles" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [(["gemm", "--m", "8", "--k", "8", "--n", "8", "--region", "0x4"], "--region"),
     (["gemm", "--m", "8", "--k", "8", "--n", "8", "--mapping", "x"], "algorithm"),
     (["gemm", "--m", "0", "--k", "8", "--n", "8"], "M=0"),
     (["collective", "--pes", "4", "--elements", "1", "--kind", "gather"], "kind"),
     (["collective", "--pes", "4", "--elements", "1", "--fidelity", "event"], "--fidelity")],
)  # fmt: skip
def test_kernel_cli_bad_input_is_one_line(capsys, argv, fragment):
    rc = main(["kernel", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and fragment in err[0], err
