"""The Report of one simulated run: speed, wafer use, where time went, and the numerics.

Metric definitions (the same everywhere they are printed; computed by :mod:`wse_sim.metrics`
from the Program and its timing):

* ``model_flops``: sum of the Program's kernel FLOPs: ``2 M K N`` per GEMM (including the
  tied LM head) and ``4 d_head`` per causal (query, key) pair and head for attention; per
  token this is ``2 N + 2 d V + attention`` (Kaplan et al. 2020, Table 1), see
  :func:`gpt_workload.config.forward_flops_per_token`.
* ``mfu`` = model_flops / (simulated_time_s x peak FLOP/s of the configured wafer).
* ``pe_utilisation``: per PE, arithmetic (FMAC-datapath) cycles / total cycles; mean, min and
  max over every PE of the grid (idle PEs count as 0).
* ``io_utilisation`` = bytes streamed from MemoryX / (time x ingress bandwidth).
* ``breakdown``: per (layer, op), seconds of compute, fabric (not hidden by compute),
  weight-I/O stall and idle; over all rows they sum to ``simulated_time_s``.
* ``roofline``: per op and overall, the lower bounds ``flops / peak``,
  ``weight bytes / ingress bandwidth`` and ``link bytes / (links x link bandwidth)``.
* ``energy``: joules by component (compute, SRAM, fabric, I/O, static) in total, per op and
  per layer, average and peak power, J/token and FLOP/J; the model and the sources of its
  energies per action are in :mod:`wse_sim.energy` and the presets' ``[energy]`` tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpt_workload import strict_json
from wse_sim.metrics import breakdown_by_op


@dataclass
class Report:
    """Everything one run produced. ``to_dict()`` is the JSON report.

    Attributes:
        model, arch: names; ``arch_config`` the full arch (with overrides) as a dict.
        grid: ``[rows, cols]`` of PEs the backend simulated (every PE of the preset).
        fidelity, precision, mapping: the run's choices.
        batch, seq_len, micro_batches, tokens: the workload.
        simulated_time_s, tokens_per_s, achieved_flops_per_s, peak_flops_per_s, mfu,
        model_flops: speed.
        pe_utilisation: ``{"mean", "min", "max"}``; ``pe_utilisation_map`` [rows, cols].
        sram_peak_bytes: ``{"max", "mean_active", "capacity"}``; map [rows, cols].
        io_utilisation: fraction of ingress bandwidth used.
        breakdown: list of rows ``{"layer", "op", "compute_s", "fabric_s", "stall_s",
            "idle_s", "total_s"}``; ``totals`` the same summed.
        roofline: ``{"bound_s", "compute_s", "io_s", "fabric_s", "per_op": [...]}``.
        numerics: ``{"precision", "check_sequences", "loss", "reference_loss",
            "max_abs_error_vs_reference", "next_token_predictions", ...}`` or a skip reason.
        layout: the lowering's layout facts.
        wall_s: host seconds per phase (lowering, timing, numerics, reference).
        energy: :meth:`wse_sim.energy.EnergyReport.summary` (``total_j``, ``components_j``,
            ``wafer_avg_w``, ``peak_w``, ``j_per_token``, ``flop_per_j``, ``per_op_j``,
            ``per_layer_j``, ``published`` ...); ``pe_power_map`` the average power per PE,
            W/mm^2 [rows, cols].
        wall_s: host seconds per phase (lowering, timing, numerics, reference): the only
            host wall-clock figures of the report; everything else is a function of the
            inputs and the seed.
        notices: one-line warnings the console prints first and the JSON puts first
            (outputs kept non-finite by ``allow_nonfinite``, weights seeded because only a
            ``config.json`` was given, ...).
        health: the numerics' health block (:meth:`gpt_workload.health.HealthTracker.outcome`:
            ``status``, the first op/layer/position that left the format's range per phase,
            ...; ``{"status": "not_checked"}`` when the numerics were skipped).
        timeline: ``{"kernels": [{"name", "op", "layer", "micro_batch", "start_s", "end_s",
            "stall_s", "compute_s", "fabric_s", "flops", "weight_bytes", "wafer_power_w",
            "system_power_w"}, ...],
            "io_blocks": [{"name", "block", "start_s", "end_s", "bytes"}, ...]}``: every
            kernel and weight-block stream of the run, for traces and timeline plots.
    """

    model: str
    arch: str
    arch_config: dict
    grid: list[int]
    fidelity: str
    precision: str
    mapping: str
    batch: int
    seq_len: int
    micro_batches: int
    tokens: int
    simulated_time_s: float
    tokens_per_s: float
    model_flops: float
    achieved_flops_per_s: float
    peak_flops_per_s: float
    mfu: float
    pe_utilisation: dict
    sram_peak_bytes: dict
    io_utilisation: float
    breakdown: list[dict]
    totals: dict
    roofline: dict
    numerics: dict
    layout: dict
    wall_s: dict = field(default_factory=dict)
    events: int = 0
    timeline: dict = field(default_factory=dict)
    energy: dict = field(default_factory=dict)
    pe_power_map: np.ndarray | None = field(default=None, repr=False)
    pe_utilisation_map: np.ndarray | None = field(default=None, repr=False)
    sram_peak_map: np.ndarray | None = field(default=None, repr=False)
    logits: np.ndarray | None = field(default=None, repr=False)
    #: the lowered :class:`wse_sim.program.Program` (per-kernel PE classes and class maps, for
    #: per-op heatmaps and traces); set by ``simulate()``, left out of :meth:`to_dict`
    program: Any = field(default=None, repr=False)
    notices: list[str] = field(default_factory=list)
    health: dict = field(default_factory=lambda: {"status": "not_checked"})
    #: the serving metrics of a ``generate`` run (:mod:`gpt_workload.generation.job`); empty
    #: for ``run``
    generation: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe report (maps, logits and program left out; see :meth:`save_maps`):
        ``notices`` and ``health`` first; strict JSON (:mod:`gpt_workload.strict_json`: a
        NaN or inf is ``null`` and listed in ``nonfinite_values``)."""
        skip = {"pe_utilisation_map", "sram_peak_map", "pe_power_map", "logits", "program"}
        out = {"notices": self.notices, "health": self.health}
        out.update((k, v) for k, v in self.__dict__.items() if k not in skip and k not in out)
        return strict_json.to_strict(out)

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The report as strict JSON text (no ``NaN``/``Infinity``); written to ``path`` if
        given."""
        text = strict_json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_frame(self):
        """The breakdown as a pandas DataFrame (pandas must be installed).

        Raises:
            ImportError: pandas is not installed.
        """
        import pandas as pd  # optional dependency

        return pd.DataFrame(self.breakdown)

    def save_maps(self, directory: str | Path) -> list[Path]:
        """Write ``pe_utilisation.npy``, ``sram_peak_bytes.npy``, ``pe_power_w_per_mm2.npy``
        (average power per PE over the PE's area) and PNG heatmaps of each into ``directory``
        (created). Returns the paths written."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        written = []
        for stem, arr, label in (
            ("pe_utilisation", self.pe_utilisation_map, "PE utilisation (FMAC-busy / total)"),
            ("sram_peak_bytes", self.sram_peak_map, "SRAM high-water mark per PE (bytes)"),
            ("pe_power_w_per_mm2", self.pe_power_map, "average power per PE (W/mm², PE area)"),
        ):
            if arr is None:
                continue
            np.save(d / f"{stem}.npy", arr)
            fig, ax = plt.subplots(figsize=(7, 7 * arr.shape[0] / max(arr.shape[1], 1) * 0.8))
            im = ax.imshow(
                arr, origin="upper", interpolation="nearest", aspect="auto", cmap="viridis"
            )
            ax.set_xlabel("PE column (x)")
            ax.set_ylabel("PE row (y)")
            ax.set_title(f"{self.model} on {self.arch} ({arr.shape[0]}x{arr.shape[1]} PEs)")
            fig.colorbar(im, ax=ax, label=label)
            fig.tight_layout()
            fig.savefig(d / f"{stem}.png", dpi=110)
            plt.close(fig)
            written += [d / f"{stem}.npy", d / f"{stem}.png"]
        return written


_PREFIXES = [
    (1e18, "E"),
    (1e15, "P"),
    (1e12, "T"),
    (1e9, "G"),
    (1e6, "M"),
    (1e3, "k"),
    (1.0, ""),
    (1e-3, "m"),
    (1e-6, "u"),
    (1e-9, "n"),
    (1e-12, "p"),
]


def si(x: float, unit: str, digits: int = 4) -> str:
    """``x`` with an SI prefix and ``digits`` significant digits: ``si(0.016792, "s")`` ->
    ``"16.79 ms"``, ``si(3.662e15, "FLOP/s")`` -> ``"3.662 PFLOP/s"``."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g} {unit}"
    for scale, p in _PREFIXES:
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g} {p}{unit}"
    scale, p = _PREFIXES[-1]
    return f"{x / scale:.{digits}g} {p}{unit}"


def _weight_entry(layout: dict) -> str:
    """``; each head over k PEs; columns take weights at up to X GB/s (r x I/O)`` (the rate
    the segment's columns can take distinct weights in, not the rate they arrive) for a
    weight-streaming layout
    (:func:`gpt_workload.mappings.weight_streaming.head_split.head_split_summary`), else
    ``""``."""
    if "weight_entry_bytes_per_s" not in layout:
        return ""
    k = layout.get("pes_per_head", 1)
    heads = f"; each head over {k} PEs" if k > 1 else ""
    return (
        f"{heads}; columns take weights at up to "
        f"{layout['weight_entry_bytes_per_s'] / 1e9:,.0f} GB/s "
        f"({layout['weight_entry_vs_ingress']:.2f} x I/O)"
    )


def format_console(r: Report) -> list[tuple[str, str]]:
    """(label, value) rows of the summary table the CLI prints."""
    rows = [
        (
            "model / arch",
            f"{r.model} on {r.arch} ({r.grid[0]}x{r.grid[1]} = "
            f"{r.grid[0] * r.grid[1]:,} PEs simulated, {r.fidelity})",
        ),
        (
            "workload",
            f"batch {r.batch} x seq {r.seq_len} = {r.tokens:,} tokens, {r.precision}, "
            f"{r.micro_batches} micro-batch(es), mapping {r.mapping}",
        ),
        (
            "layout",
            f"{r.layout['pes_per_segment']} PEs x {r.layout['tokens_per_segment']} "
            f"tokens per segment, {r.layout['active_pes']:,} active PEs"
            + _weight_entry(r.layout),
        ),
        ("simulated time", si(r.simulated_time_s, "s")),
        (
            "throughput",
            f"{r.tokens_per_s:,.0f} tokens/s"
            if r.tokens_per_s >= 1
            else si(r.tokens_per_s, "tokens/s"),
        ),
        (
            "achieved",
            f"{si(r.achieved_flops_per_s, 'FLOP/s')} of {si(r.peak_flops_per_s, 'FLOP/s')} "
            f"peak (MFU {r.mfu:.1%})",
        ),
        (
            "PE utilisation",
            f"mean {r.pe_utilisation['mean']:.1%}, min "
            f"{r.pe_utilisation['min']:.1%}, max {r.pe_utilisation['max']:.1%}",
        ),
        (
            "SRAM peak / PE",
            f"{r.sram_peak_bytes['max']:,} B of {r.sram_peak_bytes['capacity']:,} B",
        ),
        ("I/O utilisation", f"{r.io_utilisation:.1%}"),
        (
            "time split",
            "compute {:.1%}, fabric {:.1%}, weight-I/O stall {:.1%}, idle {:.1%}".format(
                *(
                    r.totals[k] / r.simulated_time_s
                    for k in ("compute_s", "fabric_s", "stall_s", "idle_s")
                )
            ),
        ),
        (
            "roofline bound",
            f"{si(r.roofline['bound_s'], 's')} "
            f"({r.roofline['bound_by']}-bound); simulated / bound = "
            f"{r.simulated_time_s / r.roofline['bound_s']:.2f}",
        ),
    ]
    n = r.numerics
    if n.get("skipped"):
        rows.append(("numerics", f"skipped: {n['skipped']}"))
    else:
        rows += [
            (
                "numerics",
                f"{n['check_sequences']} of {r.batch} sequence(s) through the "
                f"per-PE kernels, {n['precision']}",
            ),
            ("weights", n.get("weights", "")),
            (
                "loss",
                "none: 1-token sequences have no next-token target"
                if n["loss"] is None
                else f"{n['loss']:.6f}"
                + (
                    f" (float64 reference {n['reference_loss']:.6f})"
                    if n.get("reference_loss") is not None
                    else ""
                ),
            ),
        ]
        if "max_abs_error_vs_reference" in n:
            rows.append(
                (
                    "max |logit error|",
                    f"{n['max_abs_error_vs_reference']:.3e} vs float64 reference "
                    f"({n['max_rel_error_vs_reference']:.2e} of max |logit|; unit "
                    f"roundoff {n['unit_roundoff']:.1e}; argmax agrees on "
                    f"{_pct(n['reference_predictions_agree'])})",
                )
            )
        rows += [
            (
                "next tokens",
                " ".join(_tok(t) for t in n["next_token_predictions"][0][-8:])
                + "  (last 8 positions of sequence 0)",
            ),
        ]
    rows += energy_console_rows(r)
    rows.append(("host wall time", ", ".join(f"{k} {v:.2f}s" for k, v in r.wall_s.items())))
    return rows


def breakdown_rows(r: Report) -> list[dict]:
    """Breakdown aggregated by op over layers and micro-batches, largest first; every op, so
    the rows sum to the total (:func:`wse_sim.metrics.breakdown_by_op`)."""
    return breakdown_by_op(r.breakdown)


def add_power_to_timeline(timeline: dict, energy) -> None:
    """Add ``wafer_power_w`` and ``system_power_w`` (average over the kernel) to every kernel
    of ``timeline`` from a :class:`wse_sim.energy.EnergyReport` (for power traces)."""
    for row, (w, s) in zip(timeline["kernels"], energy.kernel_power, strict=True):
        row["wafer_power_w"] = w
        row["system_power_w"] = s


def per_joule_text(e: dict, key: str, unit: str) -> str:
    """``si(e[key], unit)``, or ``"<unit> undefined (<reason>)"`` when the ratio is ``None``
    (a run of 0 J, :func:`wse_sim.energy.per_joule`)."""
    v = e.get(key)
    if v is None:
        why = (e.get("undefined") or {}).get(key, "not computed")
        return f"{unit} undefined ({why})"
    return si(v, unit)


def published_rows(p: dict) -> list[tuple[str, str]]:
    """The ``vs published`` row of an energy summary's ``published`` dict, with each figure
    labelled (which chip) and cited; says so when the arch has no published figure."""
    if not p:
        return []
    if "none" in p:
        return [("vs published", p["none"])]
    text = (
        f"wafer avg / {p['published_wafer_label']} {si(p['published_wafer_w'], 'W')} "
        f"{p['published_wafer_source']} = {p['wafer_avg_w_ratio']:.2f}; "
    )
    if "published_pe_peak_w" in p:
        text += (
            f"PE peak / {p['published_pe_label']} {si(p['published_pe_peak_w'], 'W')} "
            f"{p['published_pe_source']} = {p['pe_peak_w_ratio']:.2f}"
        )
    else:
        text += p.get("published_pe_none", "")
    return [("vs published", text)]


def energy_console_rows(r) -> list[tuple[str, str]]:
    """(label, value) rows of the energy summary (empty when the run has no energy)."""
    e = getattr(r, "energy", None) or {}
    if not e:
        return []
    c = e["components_j"]
    tot = e["total_j"] or 1.0
    rows = [
        (
            "energy",
            f"{si(e['total_j'], 'J')} (wafer {si(e['wafer_j'], 'J')}), "
            f"{si(e.get('j_per_token', 0.0), 'J')}/token, "
            f"{per_joule_text(e, 'flop_per_j', 'FLOP/J')}",
        ),
        (
            "energy split",
            ", ".join(
                f"{k} {c[k] / tot:.1%}" for k in ("compute", "sram", "fabric", "io", "static")
            ),
        ),
        (
            "power",
            f"wafer avg {si(e['wafer_avg_w'], 'W')} (peak {si(e['peak_w'], 'W')}), system avg "
            f"{si(e['system_avg_w'], 'W')}; per PE avg {si(e['pe_avg_w_mean'], 'W')}, "
            f"peak {si(e['pe_peak_w'], 'W')}",
        ),
    ]
    return rows + published_rows(e.get("published") or {})


def energy_rows(r, by: str = "op") -> list[dict]:
    """Energy by op (``by="op"``) or layer (``"layer"``), joules per component and total,
    largest first; the rows sum to the run's components."""
    e = getattr(r, "energy", None) or {}
    table = e.get("per_op_j" if by == "op" else "per_layer_j", {})
    rows = [{by: key, **vals, "total": sum(vals.values())} for key, vals in table.items()]
    return sorted(rows, key=lambda x: -x["total"])


#: energy columns of a sweep row (``gpt_workload.sweep.METRICS``), units in the names
ENERGY_COLUMNS = (
    "energy_j",
    "energy_per_token_j",
    "tokens_per_j",
    "flop_per_j",
    "wafer_avg_power_w",
    "system_avg_power_w",
    "peak_power_w",
    "energy_compute_j",
    "energy_sram_j",
    "energy_fabric_j",
    "energy_io_j",
    "energy_static_j",
)


def _num(v) -> float | None:
    return None if v is None else float(v)


def energy_columns(r) -> dict[str, float | None]:
    """The :data:`ENERGY_COLUMNS` of a Report (``None`` each when it has no energy)."""
    e = getattr(r, "energy", None) or {}
    if not e:
        return dict.fromkeys(ENERGY_COLUMNS)
    c = e["components_j"]
    return {
        "energy_j": float(e["total_j"]),
        "energy_per_token_j": _num(e.get("j_per_token")),
        "tokens_per_j": _num(e.get("tokens_per_j")),  # None at 0 J (undefined)
        "flop_per_j": _num(e.get("flop_per_j")),
        "wafer_avg_power_w": float(e["wafer_avg_w"]),
        "system_avg_power_w": float(e["system_avg_w"]),
        "peak_power_w": float(e["peak_w"]),
        **{f"energy_{k}_j": float(c[k]) for k in ("compute", "sram", "fabric", "io", "static")},
    }


def _pct(v) -> str:
    """A fraction as a percentage, or ``n/a`` (logits not finite)."""
    return f"{v:.1%}" if v is not None and math.isfinite(v) else "n/a (logits not finite)"


def _tok(t) -> str:
    """A predicted token id, or ``n/a`` where its logits are not finite."""
    return "n/a" if t is None or (isinstance(t, float) and not math.isfinite(t)) else str(int(t))
