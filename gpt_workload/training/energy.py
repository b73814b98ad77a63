"""One training step's energy: the timed step's Program through :mod:`wse_sim.energy`, with
the micro-batches that were not simulated added from micro-batch 1 and static power over the
whole step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wse_sim.arch import ArchConfig

if TYPE_CHECKING:
    from gpt_workload.training.train import StepTiming


def step_energy(st: StepTiming, arch: ArchConfig, systems: int, tokens: int,
                model_flops: float) -> dict:
    """One training step's energy from its timed Program (:mod:`wse_sim.energy`).

    Micro-batches beyond the simulated ones (``StepTiming.micro_batches``) add the dynamic
    energy of micro-batch 1's kernels each, as the step time adds its period; static energy
    covers the whole (extrapolated) step. ``step_j``, ``j_per_token``, ``tokens_per_j`` and
    ``flop_per_j`` cover all ``systems``; ``step_j_per_system``, ``components_j_per_system``
    (sums to ``step_j_per_system``), ``per_layer_j_per_system`` (the simulated micro-batches
    only) and the powers are per system. Ratios over 0 J are ``None`` with the reason in
    ``undefined`` (:func:`wse_sim.energy.per_joule`).
    """
    from wse_sim.energy import COMPONENTS, energy_report, kernel_dynamic_j, per_joule

    prog, tr = st.program, st.timing
    rep = energy_report(prog, arch, tr)
    comp = dict(rep.components_j)
    n_sim = len(prog.training.simulated_micro_batches)
    extra_mb = st.micro_batches - n_sim
    if extra_mb > 0:
        for k in prog.kernels:
            if k.micro_batch == 1:
                for c, v in kernel_dynamic_j(k, prog, arch).items():
                    comp[c] += extra_mb * v
    e = arch.energy
    static_wafer_w = e.static_pe_w * prog.rows * prog.cols
    comp["static"] = (static_wafer_w + e.system_static_w) * st.step_time_s
    per_system = sum(comp[c] for c in COMPONENTS)
    wafer = comp["compute"] + comp["sram"] + comp["fabric"] + static_wafer_w * st.step_time_s
    step_j = per_system * systems
    return {
        "step_j": step_j,
        "systems": systems,
        "step_j_per_system": per_system,
        "components_j_per_system": comp,
        "per_layer_j_per_system": rep.per_layer,
        "wafer_avg_w": wafer / st.step_time_s,
        "system_avg_w": per_system / st.step_time_s,
        "peak_w": rep.peak_w,
        "pe_peak_w": rep.pe_peak_w,
        **per_joule(step_j, tokens, model_flops),
        "published": rep.published,
    }
