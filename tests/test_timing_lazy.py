"""The analytic backend's fast paths against its full path (the present code path is the
reference): :func:`wse_sim.timing.analytic.analytic_total_s` returns the same float as
``run_analytic(...).total_s``; per-PE maps (timing and energy) are built only when read and
then equal what an eager build gives; ``simulate(per_pe_maps=False)`` changes no figure."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpt_workload.config import GPTConfig
from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.models import resolve_model
from gpt_workload.simulate import simulate
from gpt_workload.training.lowering import lower_training
from wse_sim.arch import load_arch
from wse_sim.energy import energy_report
from wse_sim.errors import FitError
from wse_sim.timing.analytic import analytic_total_s, run_analytic
from wse_sim.timing.common import derived, per_pe_maps


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_layer=st.integers(1, 3),
    n_head=st.integers(1, 4),
    rows=st.integers(2, 16),
    cols=st.integers(2, 16),
    batch=st.integers(1, 16),
    seq=st.integers(1, 32),
    slots=st.integers(1, 3),
    gbps=st.floats(1.0, 500.0),
)
def test_total_s_equals_run_analytic(n_layer, n_head, rows, cols, batch, seq, slots, gbps):
    """Random small forward Programs and I/O settings: the same float, bit for bit."""
    cfg = GPTConfig(name="rand", n_layer=n_layer, n_head=n_head, d_model=8 * n_head,
                    d_ff=32 * n_head, vocab_size=97, n_positions=32)  # fmt: skip
    arch = load_arch("grid8", [f"wafer.rows={rows}", f"wafer.cols={cols}",
                               f"io.weight_buffer_slots={slots}",
                               f"io.ingress_bytes_per_s={gbps * 1e9!r}"])  # fmt: skip
    try:
        prog = lower_weight_streaming(cfg, arch, batch, seq, "fp16")
    except FitError:
        assume(False)
    assert analytic_total_s(prog, arch) == run_analytic(prog, arch).total_s


@pytest.mark.parametrize("bw", [75e9, 150e9, 337.5e9])
def test_total_s_equals_run_analytic_wse2(bw):
    """The sweep benchmark's kind of point: 111M on the WSE-2 at several I/O bandwidths,
    on the Program and on a shallow copy sharing its derived data (as the sweep cache
    hands out)."""
    arch = load_arch("wse2", [f"io.ingress_bytes_per_s={bw!r}"])
    prog = lower_weight_streaming(resolve_model("cerebras-gpt-111m"), arch, 30, 2048, "fp16")
    derived(prog)
    twin = copy.copy(prog)
    assert analytic_total_s(prog, arch) == run_analytic(prog, arch).total_s
    assert analytic_total_s(twin, arch) == run_analytic(twin, arch).total_s


def test_training_program_goes_through_run_analytic():
    """A training Program (gradient egress and optimizer tail) gives the full path's end."""
    arch = load_arch("wse2")
    prog = lower_training(resolve_model("cerebras-gpt-111m"), arch, 8, 512, "fp16")
    assert prog.gradient_blocks
    assert analytic_total_s(prog, arch) == run_analytic(prog, arch).total_s


def test_per_pe_maps_built_on_first_read():
    """run_analytic leaves the maps unbuilt; the first read builds the Program's maps, and
    the energy map follows the same rule and still sums to the wafer's energy."""
    arch = load_arch("wse2")
    prog = lower_weight_streaming(resolve_model("cerebras-gpt-111m"), arch, 8, 256, "fp16")
    res = run_analytic(prog, arch)
    assert "per_pe_maps" not in derived(prog)
    assert "pe_busy_cycles" not in res.__dict__
    rep = energy_report(prog, arch, res)
    assert "pe_energy_j" not in rep.__dict__
    busy, sram = res.pe_busy_cycles, res.sram_peak_bytes
    ref_busy, ref_sram = per_pe_maps(copy.deepcopy(prog))  # built afresh on a deep copy
    np.testing.assert_array_equal(busy, ref_busy)
    np.testing.assert_array_equal(sram, ref_sram)
    assert rep.pe_energy_j.sum() == pytest.approx(rep.wafer_j, rel=1e-9)
    with pytest.raises(AttributeError):
        res.no_such_field  # noqa: B018 - the lazy lookup names only the two maps


def test_simulate_without_maps_changes_no_figure():
    """``per_pe_maps=False`` drops the maps and the two per-PE energy figures, nothing
    else."""
    kw = dict(fidelity="analytic", batch=8, seq_len=256, check_sequences=0, reference=False)
    full = simulate("cerebras-gpt-111m", "wse2", **kw)
    lean = simulate("cerebras-gpt-111m", "wse2", per_pe_maps=False, **kw)
    assert lean.pe_utilisation_map is None and lean.sram_peak_map is None
    assert lean.pe_power_map is None
    assert full.pe_utilisation_map is not None and full.pe_power_map is not None
    a, b = full.to_dict(), lean.to_dict()
    for d in (a, b):
        d.pop("wall_s")
    extra = {k: a["energy"].pop(k) for k in ("pe_avg_w_mean", "pe_avg_w_max")}
    assert all(v > 0 for v in extra.values())
    assert a == b
