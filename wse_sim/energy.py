"""Energy and power of a Program run: a function of the Program, the arch and a timing result.

Energy = sum over actions of (count x energy per action) + static power x time, with the
energies per action of the arch's ``[energy]`` level (:class:`wse_sim.arch.EnergyConfig`,
sources and process nodes in the presets). Components (joules):

* **compute**: FMAC lanes x ``fmac_<precision>_pj``. A PE class's lanes are its arithmetic
  (FMAC-busy) cycles x the PE's FMACs per cycle at the Program's precision, so element-wise
  ops (softmax, GELU, LayerNorm) count by the datapath cycles they take; vector-op setup
  cycles are not arithmetic and cost only static power.
* **sram**: every FMAC lane reads its vector operand and its accumulator from SRAM and writes
  the accumulator back (the scalar operand is the streamed weight or a register): 2 reads
  and 1 write of the precision's element size per lane. At fp16 on the WSE-2 that is 16 B read
  + 8 B written per cycle, exactly the 2 x 64-bit reads + 1 x 64-bit write per cycle of
  [HC34]. Fabric data is taken by the datapath from the router (not stored first).
* **fabric**: per wavelet (4 bytes, the 32-bit wavelet of [HPDC24]): a link traversal costs
  the link wire plus a write and a read of the receiving router's input buffer
  (``wavelet_hop_pj + router_buffer_write_pj + router_buffer_read_pj``); an injection (PE ->
  router over the RAMP) the RAMP wire plus the router's RAMP input buffer write and read; an
  ejection (router -> PE) the RAMP wire only (its buffer was counted with the hop that
  brought it). Counts for ``event`` and ``analytic`` come from the Program: link traversals
  = ``Transfer.link_bytes / 4``; each one delivers its wavelet to the PE it reaches
  (multicast down columns and store-and-forward chains), so ejections = link traversals;
  injections = link traversals for relayed patterns (every PE of a chain re-sends), one per
  path for a multicast from a PE (``link_bytes / hops``) and none for ``multicast_2d`` (the
  weights enter from MemoryX at the wafer edge). ``packet`` counts its own per-link and
  per-RAMP wavelets (:class:`wse_sim.fabric.stats.FabricStats`); the Program counts the
  edge link where MemoryX weights enter a column as a hop, the packet engine does not
  (a few % of the hops).
* **io**: bytes over the MemoryX links (weights in, gradients out) x
  ``memoryx_io_pj_per_byte``; a data-parallel training program (``Program.systems = S``)
  adds those bytes x ``swarmx_io_pj_per_byte`` x ``ceil(log2 S)`` tree levels, per system.
* **static**: ``static_pe_w`` x PEs of the grid (leakage + clock of the wafer, whether
  busy or not) plus ``system_static_w`` (the system's non-wafer parts) x simulated time.

The dynamic components depend on the Program only, so every backend reports the same
compute, SRAM and I/O energy for one Program and ``event`` and ``analytic`` the same fabric
energy; the static energy follows each backend's simulated time. Energy is per system (one
wafer). *Wafer* power is compute + SRAM + fabric + the wafer's static power, the figure
Cerebras publishes (about 15 kW per WSE-2 [TH22]; the same for the CS-3 [TH24]); *system*
power adds I/O and the non-wafer parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wse_sim.arch import ArchConfig
from wse_sim.precision import Precision
from wse_sim.program import Kernel, Program
from wse_sim.timing.common import TimingResult, derived, swarmx_depth

COMPONENTS = ("compute", "sram", "fabric", "io", "static")
WAVELET_BYTES = 4.0  # 32-bit wavelet payload [HPDC24]
ELEMENT_BYTES = {p.value: float(p.bytes_per_element) for p in Precision}
PJ = 1e-12

# Published figures the default run is held beside (shared/reference/wse_hardware.md, energy.md)
PUBLISHED_WAFER_W = 15_000.0  # WSE-2 wafer power, ~15 kW [TH22] (CS-3: "same as CS-2" [TH24])
PUBLISHED_PE_PEAK_W = 0.030  # "only takes 30 mW" per core, Hot Chips 34 [HC34]/[STH]
#: published figures per preset (``ArchConfig.name``): label, value, source. WSE-3 has no
#: published per-PE figure; its wafer power is "the same as CS-2" [TH24], i.e. ~15 kW [TH22].
PUBLISHED = {
    "wse2": {
        "wafer": ("published WSE-2 wafer power", PUBLISHED_WAFER_W, "[TH22]"),
        "pe": ("published WSE-2 peak per PE", PUBLISHED_PE_PEAK_W, "[HC34]"),
    },
    "wse3": {
        "wafer": ("published WSE-3 wafer power (same as CS-2 [TH24])", PUBLISHED_WAFER_W,
                  "[TH22]"),
    },
}

# link traversals per injection from a PE, by pattern (see the module docstring); patterns not
# listed are relayed (every hop is re-sent by a PE)
_EDGE_SOURCED = {"multicast_2d"}
_PE_MULTICAST = {"multicast_row", "multicast_col", "multicast_row_folded", "multicast_col_folded"}


def fabric_pj_per_wavelet(arch: ArchConfig) -> tuple[float, float, float]:
    """``(hop, injection, ejection)`` energy of one wavelet, pJ (see the module docstring)."""
    e = arch.energy
    buf = e.router_buffer_write_pj + e.router_buffer_read_pj
    return e.wavelet_hop_pj + buf, e.ramp_wavelet_pj + buf, e.ramp_wavelet_pj


def lane_pj(arch: ArchConfig, precision: str) -> tuple[float, float]:
    """``(compute, sram)`` energy of one FMAC lane at ``precision``, pJ: the FMAC, and its
    2 element reads + 1 element write of SRAM."""
    e = arch.energy
    b = ELEMENT_BYTES[precision]
    return e.fmac_pj(precision), 2 * b * e.sram_read_pj_per_byte + b * e.sram_write_pj_per_byte


def kernel_fabric_counts(k: Kernel) -> tuple[float, float, float]:
    """``(link traversals, injections, ejections)`` of kernel ``k``'s transfers, wavelets,
    from the Program (see the module docstring)."""
    hops = inj = 0.0
    for t in k.transfers:
        w = t.link_bytes / WAVELET_BYTES
        hops += w
        if t.pattern in _EDGE_SOURCED:
            continue
        inj += w / max(t.hops, 1) if t.pattern in _PE_MULTICAST else w
    return hops, inj, hops


def kernel_lanes(k: Kernel, arch: ArchConfig, precision: str) -> float:
    """FMAC lanes of ``k`` over the whole wafer: arithmetic cycles x FMACs per cycle."""
    return k.busy_pe_cycles * arch.pe.fmac_per_cycle(precision)


def io_pj_per_byte(program: Program, arch: ArchConfig) -> float:
    """Energy of one byte over the off-wafer links, pJ: MemoryX plus, for ``S > 1`` systems,
    one SwarmX link per tree level."""
    e = arch.energy
    s = program.systems
    return e.memoryx_io_pj_per_byte + e.swarmx_io_pj_per_byte * swarmx_depth(s)


def kernel_dynamic_j(
    k: Kernel, program: Program, arch: ArchConfig, fabric: tuple[float, float, float] | None = None
) -> dict[str, float]:
    """Dynamic energy of one kernel by component (``compute``, ``sram``, ``fabric``, ``io``),
    joules. ``fabric`` overrides the Program's ``(hops, injections, ejections)`` counts."""
    lanes = kernel_lanes(k, arch, program.precision)
    e_mac, e_sram = lane_pj(arch, program.precision)
    hop, inj, ej = fabric_pj_per_wavelet(arch)
    h, i, o = fabric if fabric is not None else kernel_fabric_counts(k)
    return {
        "compute": lanes * e_mac * PJ,
        "sram": lanes * e_sram * PJ,
        "fabric": (h * hop + i * inj + o * ej) * PJ,
        "io": (k.weight_bytes + k.grad_bytes) * io_pj_per_byte(program, arch) * PJ,
    }


def per_joule(total_j: float, tokens: float = 0.0, flops: float = 0.0) -> dict[str, Any]:
    """``j_per_token``, ``tokens_per_j``, ``flop_per_j`` of a run of ``total_j`` joules
    (each only when its count is given, > 0). A ratio over 0 J is undefined: ``None``, and
    ``undefined`` maps it to the reason, so that the JSON stays strict (no ``Infinity``)."""
    d: dict[str, Any] = {}
    why = "total energy is 0 J"
    undefined = {}
    if tokens > 0:
        d["j_per_token"] = total_j / tokens
        d["tokens_per_j"] = tokens / total_j if total_j > 0 else None
    if flops > 0:
        d["flop_per_j"] = flops / total_j if total_j > 0 else None
    for k in ("tokens_per_j", "flop_per_j"):
        if k in d and d[k] is None:
            undefined[k] = why
    if undefined:
        d["undefined"] = undefined
    return d


@dataclass
class EnergyReport:
    """Energy and power of one run (one system).

    Attributes:
        total_j: all components.
        components_j: ``{compute, sram, fabric, io, static}`` joules; they sum to ``total_j``.
        static_wafer_j, static_system_j: the static component's wafer and non-wafer parts.
        time_s: the simulated time the energy is spread over.
        wafer_avg_w: (compute + SRAM + fabric + wafer static) / time: wafer power.
        system_avg_w: ``total_j / time_s``.
        peak_w: largest wafer power of any kernel: its dynamic energy / duration + the wafer's
            static power.
        pe_peak_w: largest power of one PE in any kernel (its class's compute + SRAM, its share
            of the kernel's fabric energy, over the kernel's duration) + ``static_pe_w``.
        counts: the action counts (``fmac_lanes``, ``sram_read_bytes``, ``sram_write_bytes``,
            ``link_wavelets``, ``ramp_injections``, ``ramp_ejections``, ``io_bytes``) and
            ``fabric_counts_from`` (``program`` or ``packet``).
        per_op, per_layer: ``{key: {component: J}}`` including static over the kernels'
            durations; static outside any kernel (idle, a training step's tail) is under
            ``"(idle)"`` / ``"idle"``; each table sums to the components.
        kernel_power: ``[[wafer W, system W], ...]`` per kernel of the Program, in order
            (static power alone for a kernel of zero duration); for power traces.
        pe_energy_j: per-PE energy on the wafer (compute + SRAM + fabric share + static),
            float64 ``[rows, cols]``; sums to the wafer's energy. ``None`` with
            ``pe_energy`` given: built by ``pe_energy()`` when first read.
        pe_area_mm2: area of a PE, for the W/mm^2 map.
    """

    total_j: float
    components_j: dict[str, float]
    static_wafer_j: float
    static_system_j: float
    time_s: float
    wafer_avg_w: float
    system_avg_w: float
    peak_w: float
    pe_peak_w: float
    counts: dict[str, Any]
    per_op: dict[str, dict[str, float]]
    per_layer: dict[str, dict[str, float]]
    kernel_power: list[list[float]]
    pe_energy_j: np.ndarray
    pe_area_mm2: float
    published: dict[str, float] = field(default_factory=dict)
    #: builds ``pe_energy_j`` on first read when it was given as ``None`` (only plots, the
    #: per-PE power map and :meth:`summary`'s per-PE figures read it)
    pe_energy: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pe_energy is not None and self.pe_energy_j is None:
            del self.pe_energy_j  # the first read goes through __getattr__

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not set: the per-PE map of a lazy report
        build = self.__dict__.get("pe_energy") if name == "pe_energy_j" else None
        if build is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.__dict__["pe_energy_j"] = build()
        return self.__dict__["pe_energy_j"]

    @property
    def wafer_j(self) -> float:
        """Energy of the wafer alone: compute + SRAM + fabric + wafer static."""
        c = self.components_j
        return c["compute"] + c["sram"] + c["fabric"] + self.static_wafer_j

    def pe_power_w(self) -> np.ndarray:
        """Average power per PE over the run, W, ``[rows, cols]``."""
        return self.pe_energy_j / self.time_s if self.time_s > 0 else self.pe_energy_j * 0.0

    def pe_power_density_w_per_mm2(self) -> np.ndarray:
        """Average power density per PE, W/mm^2 (``pe_power_w / pe_area_mm2``)."""
        return self.pe_power_w() / self.pe_area_mm2

    def summary(
        self, tokens: float = 0.0, flops: float = 0.0, per_pe: bool = True
    ) -> dict[str, Any]:
        """JSON-safe scalars (strict JSON: no NaN or infinity), with ``j_per_token``,
        ``tokens_per_j`` and ``flop_per_j`` when ``tokens`` / ``flops`` are given
        (:func:`per_joule`: ``None`` with the reason in ``undefined`` at 0 J).
        ``per_pe=False`` leaves out ``pe_avg_w_mean`` and ``pe_avg_w_max``, the two figures
        that need the per-PE map (a sweep's rows do not read them)."""
        d: dict[str, Any] = {
            "total_j": self.total_j,
            "components_j": dict(self.components_j),
            "static_wafer_j": self.static_wafer_j,
            "static_system_j": self.static_system_j,
            "wafer_j": self.wafer_j,
            "time_s": self.time_s,
            "wafer_avg_w": self.wafer_avg_w,
            "system_avg_w": self.system_avg_w,
            "peak_w": self.peak_w,
        }
        if per_pe:
            pw = self.pe_power_w()
            d["pe_avg_w_mean"] = float(pw.mean())
            d["pe_avg_w_max"] = float(pw.max(initial=0.0))
        d.update({
            "pe_peak_w": self.pe_peak_w,
            "counts": dict(self.counts),
            "per_op_j": self.per_op,
            "per_layer_j": self.per_layer,
            "published": dict(self.published),
        })  # fmt: skip
        d.update(per_joule(self.total_j, tokens, flops))
        return d

    def save_map(self, out_dir, prefix: str = "pe_power") -> list:
        """Write the per-PE average power density as ``<prefix>_w_per_mm2.npy`` and a PNG
        heatmap (W/mm^2). Returns the paths written."""
        from pathlib import Path

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        dens = self.pe_power_density_w_per_mm2()
        p_npy = out / f"{prefix}_w_per_mm2.npy"
        np.save(p_npy, dens)
        fig, ax = plt.subplots(figsize=(7, 6))
        im = ax.imshow(dens, cmap="inferno", interpolation="nearest", aspect="auto")
        ax.set_title(
            f"average power per PE (mean {dens.mean():.3g}, max {dens.max(initial=0):.3g} W/mm²)"
        )
        ax.set_xlabel("PE column")
        ax.set_ylabel("PE row")
        fig.colorbar(im, ax=ax, label="W/mm² (PE area %.4g mm²)" % self.pe_area_mm2)
        p_png = out / f"{prefix}_w_per_mm2.png"
        fig.savefig(p_png, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return [p_npy, p_png]


def _packet_fabric(timing: TimingResult) -> tuple[float, float, float, Any] | None:
    st = timing.extra.get("fabric_stats") if timing.backend == "packet" else None
    if st is None:
        return None
    return (
        float(st.link_wavelets.sum()),
        float(st.ramp_wavelets[..., 1].sum()),
        float(st.ramp_wavelets[..., 0].sum()),
        st,
    )


def energy_report(program: Program, arch: ArchConfig, timing: TimingResult) -> EnergyReport:
    """Energy and power of ``program`` run on ``arch`` as ``timing`` simulated it.

    Args:
        program: the Program that was timed (its kernels in order, as ``timing.kernels``).
        arch: the arch it was timed on (its ``[energy]`` level gives the energy per action).
        timing: any backend's result; a ``packet`` result's own per-link and per-RAMP
            wavelet counts (``extra["fabric_stats"]``) replace the Program's fabric counts.

    Returns:
        An :class:`EnergyReport`; every component >= 0 and the components sum to the total.
    """
    e = arch.energy
    prec = program.precision
    n_pe = program.rows * program.cols
    static_wafer_w = e.static_pe_w * n_pe
    static_w = static_wafer_w + e.system_static_w
    hop_pj, inj_pj, ej_pj = fabric_pj_per_wavelet(arch)
    e_mac, e_sram = lane_pj(arch, prec)
    fmac = arch.pe.fmac_per_cycle(prec)
    eb = ELEMENT_BYTES[prec]
    packet = _packet_fabric(timing)

    dyn = _dynamic(program, arch)
    comp = dict(dyn.comp)
    per_op = {key: dict(row) for key, row in dyn.per_op.items()}
    per_layer = {key: dict(row) for key, row in dyn.per_layer.items()}
    fabric_per_map = dyn.fabric_per_map
    lanes_total, io_bytes, hops_total, inj_total = dyn.totals
    kernel_power: list[list[float]] = []
    peak_w = static_wafer_w
    pe_peak_dyn = 0.0
    for (op_key, layer_key, wafer_dyn, io_j, pe_dyn), kt in zip(
        dyn.kernels, timing.kernels, strict=True
    ):
        # the timing's part: static energy by duration, power; the dynamic energy of each
        # kernel and its sums are the Program's (:func:`_dynamic`)
        dur = kt.duration_s
        st = static_w * dur
        per_op[op_key]["static"] += st
        per_layer[layer_key]["static"] += st
        comp["static"] += st
        if dur > 0:
            w_wafer = wafer_dyn / dur + static_wafer_w
            kernel_power.append([w_wafer, w_wafer + io_j / dur + e.system_static_w])
            peak_w = max(peak_w, w_wafer)
            pe_peak_dyn = max(pe_peak_dyn, pe_dyn / dur)
        else:  # an instantaneous kernel: its energy is counted, its power is not defined
            kernel_power.append([static_wafer_w, static_w])

    idle = max(timing.total_s - sum(kt.duration_s for kt in timing.kernels), 0.0)
    if idle > 0:
        comp["static"] += static_w * idle
        for key, table in (("(idle)", per_op), ("idle", per_layer)):
            row = table.setdefault(key, dict.fromkeys(COMPONENTS, 0.0))
            row["static"] += static_w * idle

    # fabric from the packet engine's own counters
    if packet is not None:
        ph, pi, po, st = packet
        fab_prog = comp["fabric"]
        fab_pkt = (ph * hop_pj + pi * inj_pj + po * ej_pj) * PJ
        scale = fab_pkt / fab_prog if fab_prog > 0 else 0.0
        comp["fabric"] = fab_pkt
        for table in (per_op, per_layer):  # the tables keep the Program's split, rescaled
            for row in table.values():
                row["fabric"] *= scale
        for kp, k, kt in zip(kernel_power, program.kernels, timing.kernels, strict=True):
            if kt.duration_s > 0:
                h, i, _ = kernel_fabric_counts(k)
                extra = (h * hop_pj + i * inj_pj + h * ej_pj) * PJ * (scale - 1) / kt.duration_s
                kp[0] += extra
                kp[1] += extra
        peak_w = max([static_wafer_w] + [kp[0] for kp in kernel_power])
        hops_total, inj_total, ej_total, source = ph, pi, po, "packet"
    else:
        ej_total, source = hops_total, "program"

    t = timing.total_s
    static_wafer_j = static_wafer_w * t
    static_system_j = e.system_static_w * t
    comp["static"] = static_wafer_j + static_system_j  # exact: kernels tile [0, total]
    _fix_static_tables(per_op, per_layer, comp["static"])
    total = sum(comp.values())


    def pe_energy() -> np.ndarray:
        # per-PE map, on first read of EnergyReport.pe_energy_j
        if packet is not None:
            st = packet[3]
            pe_fabric = (
                st.link_wavelets.sum(axis=2) * hop_pj
                + st.ramp_wavelets[..., 1] * inj_pj
                + st.ramp_wavelets[..., 0] * ej_pj
            ) * PJ
        else:
            pe_fabric = np.zeros((program.rows, program.cols))
            for key, fj in fabric_per_map.items():
                cmap = program.class_maps[key]
                on = cmap >= 0
                n_on = int(on.sum())
                if n_on:
                    pe_fabric[on] += fj / n_on
        return timing.pe_busy_cycles * fmac * (e_mac + e_sram) * PJ + pe_fabric + e.static_pe_w * t
    wafer_j = comp["compute"] + comp["sram"] + comp["fabric"] + static_wafer_j
    counts = {
        "fmac_lanes": lanes_total,
        "sram_read_bytes": lanes_total * 2 * eb,
        "sram_write_bytes": lanes_total * eb,
        "link_wavelets": hops_total,
        "ramp_injections": inj_total,
        "ramp_ejections": ej_total,
        "io_bytes": io_bytes,
        "fabric_counts_from": source,
    }
    rep = EnergyReport(
        total_j=total,
        components_j=comp,
        static_wafer_j=static_wafer_j,
        static_system_j=static_system_j,
        time_s=t,
        wafer_avg_w=wafer_j / t if t > 0 else 0.0,
        system_avg_w=total / t if t > 0 else 0.0,
        peak_w=peak_w,
        pe_peak_w=pe_peak_dyn + e.static_pe_w,
        counts=counts,
        per_op=per_op,
        per_layer=per_layer,
        kernel_power=kernel_power,
        pe_energy_j=None,
        pe_area_mm2=e.pe_area_mm2,
        pe_energy=pe_energy,
    )
    rep.published = published_check(rep, arch)
    return rep


def _kernel_counts(program: Program) -> list[tuple]:
    """Per kernel of ``program``: ``(busy PE-cycles, active PEs, busiest class's cycles,
    kernel_fabric_counts)``, each sum in class order (one pass over the classes; attention has
    hundreds). A function of the Program alone, kept on it
    (:func:`wse_sim.timing.common.derived`: a sweep's points share it)."""
    box = derived(program)
    stamp = (id(program.kernels), len(program.kernels))
    hit = box.get("energy_counts")
    if hit is not None and hit[0] == stamp:
        return hit[1]
    out = []
    for k in program.kernels:
        busy = active = busiest = 0.0
        for c in k.classes:
            busy += c.busy_cycles * c.count
            active += c.count
            if c.busy_cycles > busiest:
                busiest = c.busy_cycles
        out.append((busy, active, busiest, kernel_fabric_counts(k)))
    box["energy_counts"] = (stamp, out)
    return out


@dataclass(frozen=True)
class _Dynamic:
    """The timing-independent part of :func:`energy_report` for one Program and arch: per
    kernel ``(op row, layer row, wafer dynamic J, I/O J, busiest PE's dynamic J)``; the
    ``compute``, ``sram``, ``fabric`` and ``io`` sums (overall, per op, per layer; ``static``
    0, added by the report from the timing); fabric J per class map; ``(FMAC lanes, I/O
    bytes, link traversals, injections)``. Each sum adds the kernels in program order, as
    the report's own loop did, so the floats are the same."""

    kernels: list[tuple]
    comp: dict
    per_op: dict
    per_layer: dict
    fabric_per_map: dict
    totals: tuple


def _dynamic(program: Program, arch: ArchConfig) -> _Dynamic:
    """:class:`_Dynamic` of ``program`` on ``arch``, kept on the Program per energy
    configuration (a sweep times one Program at many I/O rates, and only the static energy
    and the power follow the timing)."""
    prec = program.precision
    fmac = arch.pe.fmac_per_cycle(prec)
    io_pj = io_pj_per_byte(program, arch)
    box = derived(program)
    memo = box.setdefault("energy_dynamic", {})
    stamp = (id(program.kernels), len(program.kernels))
    key = (arch.energy, fmac, io_pj)
    hit = memo.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    hop_pj, inj_pj, ej_pj = fabric_pj_per_wavelet(arch)
    e_mac, e_sram = lane_pj(arch, prec)
    comp = dict.fromkeys(COMPONENTS, 0.0)
    per_op: dict[str, dict[str, float]] = {}
    per_layer: dict[str, dict[str, float]] = {}
    fabric_per_map: dict[str, float] = {}
    lanes_total = io_bytes = hops_total = inj_total = 0.0
    heads = head_layers(program)
    rows = []
    for k, (busy, active, busiest, (h, i, _)) in zip(
        program.kernels, _kernel_counts(program), strict=True
    ):
        lanes = busy * fmac
        fab_j = (h * hop_pj + i * inj_pj + h * ej_pj) * PJ
        kb = k.weight_bytes + k.grad_bytes
        d = {
            "compute": lanes * e_mac * PJ,
            "sram": lanes * e_sram * PJ,
            "fabric": fab_j,
            "io": kb * io_pj * PJ,
        }
        lanes_total += lanes
        io_bytes += kb
        hops_total += h
        inj_total += i
        fabric_per_map[k.class_map] = fabric_per_map.get(k.class_map, 0.0) + fab_j
        op_key, layer_key = k.op, _layer_key(k, heads)
        for key_, table in ((op_key, per_op), (layer_key, per_layer)):
            row = table.setdefault(key_, dict.fromkeys(COMPONENTS, 0.0))
            for c, v in d.items():
                row[c] += v
        for c, v in d.items():
            comp[c] += v
        share = fab_j / active if active else 0.0
        pe_dyn = busiest * fmac * (e_mac + e_sram) * PJ + share
        rows.append((op_key, layer_key, d["compute"] + d["sram"] + d["fabric"], d["io"], pe_dyn))
    out = _Dynamic(rows, comp, per_op, per_layer, fabric_per_map,
                   (lanes_total, io_bytes, hops_total, inj_total))  # fmt: skip
    if len(memo) >= 4:
        memo.clear()
    memo[key] = (stamp, out)
    return out


def _layer_key(k: Kernel, head_layers: set[int] = frozenset()) -> str:
    """Row of ``per_layer``: ``embedding`` (layer -1), ``head`` (the layer index of the
    final LayerNorm + LM head + cross-entropy, ``n_layer``), else ``layer <i>``."""
    if k.layer < 0:
        return "embedding"
    return "head" if k.layer in head_layers else f"layer {k.layer}"


def head_layers(program: Program) -> set[int]:
    """Layer indices that hold the LM head (``n_layer`` in the lowerings: the final
    LayerNorm, the LM head and the cross-entropy), found by the ``lm_head`` op."""
    return {k.layer for k in program.kernels if "lm_head" in k.op}


def _fix_static_tables(per_op: dict, per_layer: dict, static_total: float) -> None:
    """Make each table's static column sum exactly to ``static_total`` (the per-kernel
    durations and the idle time tile the run; this removes the rounding of the sum)."""
    for table in (per_op, per_layer):
        s = sum(r["static"] for r in table.values())
        if s > 0:
            for r in table.values():
                r["static"] *= static_total / s


def published_check(rep: EnergyReport, arch: ArchConfig) -> dict[str, Any]:
    """The run's wafer power and per-PE peak beside the figures published for the arch at
    hand (:data:`PUBLISHED`: WSE-2 about 15 kW per wafer [TH22] and 30 mW peak per PE
    [HC34]; WSE-3 the same wafer power [TH24], no per-PE figure), with the ratios and each
    figure's label and source. For any other arch (a grid, a custom TOML) or a run on part
    of the wafer (under 100,000 PEs), ``{"none": reason}``: there is nothing to compare."""
    pub = PUBLISHED.get(arch.name)
    if pub is None:
        return {"none": f"no published power figure for arch {arch.name!r} (published "
                        f"figures exist for {', '.join(PUBLISHED)})"}
    if arch.n_pe < 100_000:
        return {"none": f"arch {arch.name!r} overridden to {arch.n_pe:,} PEs: the published "
                        "figures are for a full wafer"}
    out: dict[str, Any] = {}
    label, w, src = pub["wafer"]
    out.update(published_wafer_w=w, published_wafer_label=label, published_wafer_source=src,
               wafer_avg_w_ratio=rep.wafer_avg_w / w, wafer_peak_w_ratio=rep.peak_w / w)
    if "pe" in pub:
        label, w, src = pub["pe"]
        out.update(published_pe_peak_w=w, published_pe_label=label, published_pe_source=src,
                   pe_peak_w_ratio=rep.pe_peak_w / w)
    else:
        out["published_pe_none"] = f"no published per-PE power figure for {arch.name}"
    return out
