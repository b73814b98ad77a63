"""Figures of one run and of a sweep (matplotlib): every function returns a ``Figure``.

* :func:`utilisation_heatmap` - the PE grid as an image: utilisation over the whole run or
  during one op and/or layer (per-PE FMAC-busy cycles of the op's kernels, scattered by their
  PE-class maps, over the op's simulated duration);
* :func:`timeline_chart` - per layer, when its weights streamed from MemoryX and when it
  computed (double buffering shows as the stagger), with weight-I/O stalls marked;
* :func:`roofline_chart` - ops as points, arithmetic intensity (FLOP per byte of weights
  streamed) vs achieved FLOP/s, under the peak, MemoryX-bandwidth and fabric weight-multicast
  ceilings (Williams, Waterman, Patterson 2009, "Roofline", CACM 52(4));
* :func:`breakdown_chart` - stacked compute / fabric / weight-I/O stall / idle time per op,
  per layer, or per run;
* :func:`sweep_chart` - any metric of a sweep table against any swept field, one line per
  combination of the other swept fields.

Every axis label carries its unit. :func:`save` writes a PNG and closes the figure. The
``wse-sim plot`` subcommand (:mod:`gpt_workload.cli.plot`) draws them from the command line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wse_sim import metrics
from gpt_workload.experiment_args import check_out_file
from wse_sim.errors import ConfigError

#: units of well-known metric and field names (others are derived from the name's suffix)
UNITS: dict[str, str] = {
    "tokens_per_s": "tokens/s",
    "mfu": "fraction of peak",
    "io_utilisation": "fraction of ingress bandwidth",
    "pe_utilisation_mean": "fraction of cycles",
    "pe_utilisation_min": "fraction of cycles",
    "pe_utilisation_max": "fraction of cycles",
    "achieved_flops_per_s": "FLOP/s",
    "peak_flops_per_s": "FLOP/s",
    "model_flops": "FLOP",
    "batch": "sequences",
    "batch_used": "sequences",
    "seq_len": "tokens",
    "seq_len_used": "tokens",
    "tokens": "tokens",
    "micro_batches": "count",
    "tokens_per_segment": "tokens",
    "pes_per_segment": "PEs",
    "active_pes": "PEs",
    "io.ingress_bytes_per_s": "B/s",
    "io.egress_bytes_per_s": "B/s",
    "fabric.link_bits_per_cycle": "bit/cycle",
    "pe.clock_hz": "Hz",
    "model.n_layer": "layers",
    "model.d_model": "features",
}

_SUFFIX_UNITS = (
    ("_bytes_per_s", "B/s"),
    ("_flops_per_s", "FLOP/s"),
    ("_per_cycle", "per cycle"),
    ("_bytes", "B"),
    ("_cycles", "cycles"),
    ("_flops", "FLOP"),
    ("_hz", "Hz"),
    ("_s", "s"),
)

_PHASES = (
    ("compute_s", "compute", "#4c72b0"),
    ("fabric_s", "fabric (not hidden)", "#55a868"),
    ("stall_s", "weight-I/O stall", "#c44e52"),
    ("idle_s", "idle", "#8c8c8c"),
)


def unit_of(name: str) -> str:
    """The unit of a metric or field name (``tokens_per_s`` -> ``tokens/s``); ``"-"`` if the
    name carries none."""
    if name in UNITS:
        return UNITS[name]
    for suffix, unit in _SUFFIX_UNITS:
        if name.endswith(suffix):
            return unit
    return "-"


def label_of(name: str) -> str:
    """An axis label with its unit: ``"tokens_per_s (tokens/s)"``."""
    return f"{name} ({unit_of(name)})"


def _figure(figsize: tuple[float, float], ax=None):
    """``(fig, ax)``: a new ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend
    needed) with one axes, or the figure of the given ``ax``."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def image_formats() -> list[str]:
    """File suffixes (without the dot) matplotlib can write: png, pdf, svg, ..."""
    from matplotlib.figure import Figure

    return sorted(Figure().canvas.get_supported_filetypes())


def check_image_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` if an image can be written there.

    Raises:
        ConfigError: it is a directory, its suffix is missing or not an image format
            matplotlib writes (naming the allowed ones), or no file can be created in its
            nearest existing directory (probed with a temporary file, so a read-only or
            virtual file system such as ``/proc`` fails here, before a long simulation).
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"-o {str(path)!r} is a directory; give an image file, e.g. plot.png")
    fmts = image_formats()
    if p.suffix[1:].lower() not in fmts:
        raise ConfigError(
            f"-o {str(path)!r}: the suffix {p.suffix or '(none)'!r} is not an image format; "
            f"allowed: {', '.join('.' + f for f in fmts)}"
        )
    check_out_file("-o", path)
    return p


def save(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as an image (format from the suffix, usually PNG) and return the path;
    the parent directory is created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi)
    return p


# ------------------------------------------------------------------ one run: heatmap
def _selected(report, op: str | None, layer: int | None) -> list[int]:
    """Indices (program order) of the kernels of ``op`` and/or ``layer``."""
    kernels = report.timeline.get("kernels", [])
    idx = [
        i
        for i, k in enumerate(kernels)
        if (op is None or k["op"] == op) and (layer is None or k["layer"] == layer)
    ]
    if not idx:
        ops = sorted({k["op"] for k in kernels})
        layers = sorted({k["layer"] for k in kernels})
        raise ConfigError(
            f"no kernel has op={op!r} and layer={layer!r}; ops: {', '.join(ops)}; layers "
            f"{layers[0]}..{layers[-1]} (-1 = embedding, {layers[-1]} = head)"
        )
    return idx


def utilisation_map(report, op: str | None = None, layer: int | None = None) -> np.ndarray:
    """Per-PE utilisation, float64 ``[rows, cols]`` in [0, 1]: FMAC-busy cycles / cycles.

    With neither ``op`` nor ``layer`` it is the whole run (``report.pe_utilisation_map``).
    Otherwise the busy cycles of the selected kernels (``op`` over all layers, every op of
    ``layer``, or one op of one layer; every micro-batch) are scattered onto the grid through
    each kernel's PE-class map and divided by the kernels' summed simulated duration.

    Raises:
        ConfigError: no kernel matches, or the report carries no Program (it was not made by
            ``simulate()``).
    """
    if op is None and layer is None:
        return np.asarray(report.pe_utilisation_map, dtype=np.float64)
    program = getattr(report, "program", None)
    if program is None:
        raise ConfigError("per-op utilisation needs the report's program (run simulate())")
    idx = _selected(report, op, layer)
    timeline = report.timeline["kernels"]
    duration_s = sum(timeline[i]["end_s"] - timeline[i]["start_s"] for i in idx)
    per_map: dict[str, np.ndarray] = {}
    for i in idx:
        k = program.kernels[i]
        acc = per_map.setdefault(k.class_map, np.zeros(0))
        n = max((c.index for c in k.classes), default=-1) + 1
        if acc.size < n:
            acc = np.concatenate([acc, np.zeros(n - acc.size)])
            per_map[k.class_map] = acc
        for c in k.classes:
            acc[c.index] += c.busy_cycles
    busy = np.zeros((program.rows, program.cols))
    for key, acc in per_map.items():
        cmap = program.class_maps[key]
        on = cmap >= 0
        busy[on] += acc[cmap[on]]
    clock_hz = float(report.arch_config["pe"]["clock_hz"])
    return busy / (duration_s * clock_hz) if duration_s > 0 else busy * 0.0


def utilisation_heatmap(report, op: str | None = None, layer: int | None = None, ax=None) -> Any:
    """The PE grid as an image of utilisation (%), with a colour bar.

    The image array has the grid's shape ``[rows, cols]`` (row 0 at the top, the wafer's
    north edge where weights enter). See :func:`utilisation_map` for ``op`` and ``layer``.
    """
    util = utilisation_map(report, op, layer) * 100.0
    rows, cols = util.shape
    fig, ax = _figure((7.5, max(3.0, 6.5 * rows / max(cols, 1))), ax)
    im = ax.imshow(
        util, origin="upper", interpolation="nearest", aspect="auto", cmap="viridis", vmin=0
    )
    ax.set_xlabel("PE column x (PE index)")
    ax.set_ylabel("PE row y (PE index)")
    what = (
        "whole run"
        if op is None and layer is None
        else " ".join(s for s in (op or "all ops", "" if layer is None else f"layer {layer}") if s)
    )
    ax.set_title(f"{report.model} on {report.arch}: {what} ({rows} x {cols} PEs)")
    fig.colorbar(im, ax=ax, label="PE utilisation (% of cycles FMAC-busy)")
    return fig


# ------------------------------------------------------------------ one run: timeline
def _block_label(name: str) -> str:
    """``mb0.layer3`` -> ``layer3``; micro-batch prefix kept when not 0."""
    mb, _, rest = name.partition(".")
    return rest if mb == "mb0" else name


def timeline_chart(report, micro_batch: int | None = 0, ax=None) -> Any:
    """Weight streaming vs compute per layer: one row per weight block (embedding, layers,
    head), the upper bar when its weights streamed in from MemoryX, the lower bar when the
    block's kernels ran (red: waiting for weights). ``micro_batch=None`` shows all."""
    kernels = [
        k
        for k in report.timeline.get("kernels", [])
        if micro_batch is None or k["micro_batch"] == micro_batch
    ]
    io = [
        b
        for b in report.timeline.get("io_blocks", [])
        if micro_batch is None or b["name"].startswith(f"mb{micro_batch}.")
    ]
    # kernels to blocks: a kernel belongs to the block of its layer (embedding -1, head)
    rows: list[tuple[str, Any, tuple]] = []  # (label, io interval, compute interval)
    by_block: dict[tuple[int, int], list[dict]] = {}
    for k in kernels:
        by_block.setdefault((k["micro_batch"], k["layer"]), []).append(k)
    io_by_name = {b["name"]: b for b in io}
    n_layer = max((lay for _, lay in by_block), default=0)
    for (mb, lay), ks in sorted(by_block.items()):
        name = f"mb{mb}." + ("embed" if lay < 0 else "head" if lay == n_layer else f"layer{lay}")
        blk = io_by_name.get(name)
        start = min(k["start_s"] for k in ks)
        stall = sum(k["stall_s"] for k in ks)
        end = max(k["end_s"] for k in ks)
        rows.append((_block_label(name), blk, (start, stall, end)))
    fig, ax = _figure((10, max(3.0, 0.28 * len(rows) + 1.5)), ax)
    ms = 1e3
    for y, (_label, blk, (start, stall, end)) in enumerate(rows):
        if blk is not None:
            ax.broken_barh(
                [(blk["start_s"] * ms, (blk["end_s"] - blk["start_s"]) * ms)],
                (y - 0.4, 0.38),
                facecolors="#dd8452",
            )
        if stall > 0:
            ax.broken_barh([(start * ms, stall * ms)], (y + 0.02, 0.38), facecolors="#c44e52")
        ax.broken_barh(
            [((start + stall) * ms, (end - start - stall) * ms)],
            (y + 0.02, 0.38),
            facecolors="#4c72b0",
        )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("simulated time (ms)")
    ax.set_ylabel("weight block (layer)")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color="#dd8452", label="weights streaming from MemoryX"),
            Patch(color="#4c72b0", label="compute (kernels of the block)"),
            Patch(color="#c44e52", label="waiting for weights (stall)"),
        ],
        loc="upper right",
        fontsize=8,
    )
    ax.set_title(f"{report.model} on {report.arch}: weight streaming vs compute")
    ax.grid(axis="x", alpha=0.3)
    return fig


# ------------------------------------------------------------------ one run: roofline
def op_stats(report) -> list[dict[str, Any]]:
    """Per op over the run: ``{"op", "flops", "weight_bytes", "time_s",
    "achieved_flops_per_s", "intensity_flops_per_byte"}`` (intensity None without weight
    bytes), from ``report.timeline`` (:func:`wse_sim.metrics.op_stats`)."""
    return metrics.op_stats(report.timeline.get("kernels", []))


def roofline_chart(report, ax=None) -> Any:
    """Ops as points (log-log): FLOP per byte of weights streamed from MemoryX vs achieved
    FLOP/s, under the peak (horizontal), the MemoryX ingress bandwidth and the fabric
    weight-multicast bandwidth (``P`` PEs per segment x bytes per cycle of one link, or of
    the PE's RAMP port if slower, x clock: each column receives its ``K/P x N`` weight slice
    over one link) ceilings. Ops without
    FLOPs (LayerNorm, residual, ...) are left out; ops without weight I/O (attention) sit at
    the right edge, marked with a triangle."""
    stats = [s for s in op_stats(report) if s["flops"] > 0 and s["time_s"] > 0]
    arch = report.arch_config
    peak = float(report.peak_flops_per_s)
    bw_io = float(arch["io"]["ingress_bytes_per_s"])
    p = int(report.layout.get("pes_per_segment", 1))
    per_pe = arch["fabric"]["link_bits_per_cycle"] / 8.0
    ramp = arch["fabric"].get("ramp_wavelets_per_cycle")  # PE <-> router port, if modelled
    if ramp:
        per_pe = min(per_pe, 4.0 * ramp)
    bw_fab = p * per_pe * arch["pe"]["clock_hz"]
    fig, ax = _figure((8, 5.5), ax)
    ai = [s["intensity_flops_per_byte"] for s in stats if s["intensity_flops_per_byte"]]
    ridge = peak / min(bw_io, bw_fab)
    x_lo = min(ai + [ridge]) / 10
    x_hi = max(ai + [ridge]) * 30
    xs = np.geomspace(x_lo, x_hi, 200)
    ax.plot(xs, np.minimum(peak, bw_io * xs), "k-", lw=1.5, label="roofline: peak & MemoryX I/O")
    ax.plot(
        xs,
        np.minimum(peak, bw_fab * xs),
        "k--",
        lw=1,
        label=f"fabric weight multicast ({bw_fab / 1e9:.0f} GB/s = {p} links)",
    )
    ax.axhline(peak, color="k", lw=0.5)
    placed: list[tuple[float, float]] = []
    for s in sorted(stats, key=lambda s: -s["achieved_flops_per_s"]):
        x = s["intensity_flops_per_byte"]
        marker = "o"
        if x is None:
            x, marker = x_hi / 3, ">"
        y = s["achieved_flops_per_s"]
        ax.scatter([x], [y], marker=marker, s=40, zorder=3)
        # ops of one run share the GEMM intensity (tokens per weight): stack their labels
        near = sum(
            1 for px, py in placed if abs(np.log(px / x)) < 0.3 and abs(np.log(py / y)) < 0.2
        )
        placed.append((x, y))
        ax.annotate(
            s["op"], (x, y), fontsize=8, xytext=(6, 4 - 11 * near), textcoords="offset points"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of weights streamed)")
    ax.set_ylabel("achieved (FLOP/s)")
    ax.set_title(
        f"{report.model} on {report.arch}, batch {report.batch}: peak {peak / 1e15:.2f} PFLOP/s,"
        f" I/O {bw_io / 1e9:.0f} GB/s (> = no weight I/O)",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(which="both", alpha=0.2)
    return fig


# ------------------------------------------------------------------ breakdown bars
def breakdown_chart(reports, by: str = "op", labels: Sequence[str] | None = None, ax=None) -> Any:
    """Stacked bars of compute / fabric / weight-I/O stall / idle time (ms).

    Args:
        reports: one Report (bars per ``by``) or a list of Reports (one bar per run).
        by: ``"op"`` (summed over layers, largest first) or ``"layer"`` (embedding, layers,
            head) for one report.
        labels: bar labels for a list of reports (default ``model/arch``).

    Raises:
        ConfigError: ``by`` is not ``op`` or ``layer``.
    """
    if isinstance(reports, (list, tuple)):
        cats = list(labels) if labels else [f"{r.model}\n{r.arch}" for r in reports]
        vals = [[r.totals[k] for r in reports] for k, _, _ in _PHASES]
        xlabel = "run"
    else:
        rep = reports
        if by not in ("op", "layer"):
            raise ConfigError(f"by={by!r} is unknown; allowed: op, layer")
        agg: dict[Any, dict[str, float]] = {}
        for row in rep.breakdown:
            key = row["op"] if by == "op" else row["layer"]
            a = agg.setdefault(key, dict.fromkeys((k for k, _, _ in _PHASES), 0.0))
            for k, _, _ in _PHASES:
                a[k] += row[k]
        if by == "op":
            keys = sorted(agg, key=lambda k: -sum(agg[k].values()))
            cats = [str(k) for k in keys]
        else:
            keys = sorted(agg, key=lambda k: (k is None, -2 if k is None else k))
            cats = ["idle" if k is None else "embed" if k < 0 else str(k) for k in keys]
        vals = [[agg[c][k] for c in keys] for k, _, _ in _PHASES]
        xlabel = "op (summed over layers)" if by == "op" else "layer (embed = -1, last = head)"
    fig, ax = _figure((max(6.0, 0.45 * len(cats) + 2), 4.5), ax)
    bottom = np.zeros(len(cats))
    for (_, name, colour), v in zip(_PHASES, vals, strict=True):
        v = np.asarray(v) * 1e3
        ax.bar(range(len(cats)), v, bottom=bottom, color=colour, label=name)
        bottom += v
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats, rotation=45 if len(cats) > 6 else 0, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("simulated time (ms)")
    ax.legend(fontsize=8)
    ax.set_title("where the time goes")
    ax.grid(axis="y", alpha=0.3)
    return fig


# ------------------------------------------------------------------ sweeps
def _config_columns(table) -> list[str]:
    from gpt_workload.sweep import METRICS

    return [c for c in table.column_names if c not in METRICS and c not in ("point", "config_hash")]


def sweep_chart(
    table,
    metric: str,
    x: str,
    by: Sequence[str] | None = None,
    logx: bool | None = None,
    logy: bool = False,
    ax=None,
) -> Any:
    """``metric`` against the swept field ``x``, one line per combination of ``by`` (default:
    every other configuration column that varies). Rows whose status is not ``ok`` are left
    out.

    Args:
        table: a ``pyarrow.Table`` from :mod:`gpt_workload.sweep`, or the path of one.
        logx: log-scale x (default: when x spans more than a factor 20 and is positive).

    Raises:
        ConfigError: unknown metric or field, or no successful row.
    """
    if isinstance(table, (str, os.PathLike)):
        from gpt_workload.sweep import read_table

        table = read_table(table)
    cols = table.column_names
    for name, what in ((metric, "metric"), (x, "field")):
        if name not in cols:
            raise ConfigError(f"{what} {name!r} is not a column; columns: {', '.join(cols)}")
    rows = [r for r in table.to_pylist() if r.get("status", "ok") == "ok"]
    if not rows:
        raise ConfigError("the sweep table has no successful row to plot")
    import pyarrow.types as pa_types

    numeric = [
        c
        for c, t in zip(cols, table.schema.types, strict=True)
        if pa_types.is_integer(t) or pa_types.is_floating(t)
    ]
    if metric not in numeric:
        raise ConfigError(
            f"metric {metric!r} is not numeric; numeric columns: {', '.join(numeric)}"
        )
    if by is None:
        by = [
            c for c in _config_columns(table) if c != x and len({repr(r.get(c)) for r in rows}) > 1
        ]
    for b in by:
        if b not in cols:
            raise ConfigError(f"field {b!r} is not a column; columns: {', '.join(cols)}")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(b) for b in by), []).append(r)
    fig, ax = _figure((7.5, 5), ax)
    # x values: numbers (a CSV or mixed column holds them as text) on a numeric axis; if any
    # is not a number ("max"; null = the run's default batch), a category axis in numeric
    # order, words last
    xv = {id(r): _x_value(r[x]) for r in rows}
    categorical = any(isinstance(v, str) for v in xv.values())
    order = sorted(set(xv.values()), key=_x_order)
    if categorical:  # fix the category order before any line is drawn
        ax.plot([str(v) for v in order], [np.nan] * len(order), color="none")
    xs_all: list[float] = []
    for key, grp in groups.items():
        pts = sorted(
            ((xv[id(r)], r[metric]) for r in grp if r[metric] is not None),
            key=lambda t: _x_order(t[0]),
        )
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        if categorical:
            xs = tuple(str(v) for v in xs)
        else:
            xs_all += list(xs)
        label = ", ".join(f"{b}={v}" for b, v in zip(by, key, strict=True)) or metric
        ax.plot(xs, ys, marker="o", label=label)
    if logx is None:
        pos = [v for v in xs_all if v > 0]
        logx = len(pos) == len(xs_all) and bool(pos) and max(pos) / min(pos) > 20
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(label_of(x))
    ax.set_ylabel(label_of(metric))
    if len(groups) > 1 or by:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _x_value(v: Any) -> Any:
    """A sweep x value as a number where it is one (``"120"`` -> 120), ``"default"`` for
    null (the run's own default), else the text."""
    if v is None:
        return "default"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return int(f) if f.is_integer() else f


def _x_order(v: Any) -> tuple:
    """Sort key: numbers in numeric order, then words in text order."""
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
