"""The validation table: every measured figure against the simulator, CSV and parity plot.

:func:`validate` runs each row's scenario (:mod:`gpt_workload.validation.scenarios`) and
returns one :class:`ValidationRow` per figure: measured, simulated, error, tolerance, role
and the parameters the row set. A row whose scenario the simulator cannot express yet (a
ConfigError or FitError from the project's code) is kept, with status ``cannot run`` and the
error's message as its reason; it never counts as a failure. :func:`exit_status` is 1 when a
calibration row is outside its tolerance, else 0.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from wse_sim.errors import ConfigError, FitError
from wse_sim.timing import get_backend

OK, OUT, CANNOT = "ok", "out of tolerance", "cannot run"


@dataclass(frozen=True)
class ValidationRow:
    """One row of the validation table.

    Attributes:
        id, figure, units, conditions, source, role, note: from the data file.
        measured: the measured value; simulated: the simulator's, or None (cannot run).
        error_pct: ``100 (simulated / measured - 1)``, or None.
        tolerance_pct: allowed ``|error_pct|``.
        sets: arch fields set from the row (calibration); empty for predictions.
        scenario: ``kind: field=value ...`` (the scenario run).
        status: ``ok``, ``out of tolerance`` or ``cannot run``.
        reason: why it cannot run, or the scenario's detail (cycles, utilisation ...).
        wall_s: host seconds the row took.
    """

    id: str
    figure: str
    measured: float
    units: str
    simulated: float | None
    error_pct: float | None
    tolerance_pct: float
    role: str
    sets: tuple[str, ...]
    scenario: str
    status: str
    reason: str
    conditions: str
    source: str
    note: str
    wall_s: float

    def to_dict(self) -> dict:
        """Plain data; ``sets`` joined with ``;`` (a CSV cell)."""
        d = asdict(self)
        d["sets"] = ";".join(self.sets)
        return d


def _scenario_text(sc: dict) -> str:
    rest = " ".join(f"{k}={v}" for k, v in sc.items() if k != "kind" and v not in ("", 0))
    return f"{sc['kind']}: {rest}"


def validate(
    data: str | Path | None = None, *, fidelity: str = "analytic", only: list[str] | None = None
) -> list[ValidationRow]:
    """Run every row of a measured-figures file against the simulator.

    Args:
        data: the data file (TOML, :mod:`gpt_workload.validation.data`); default the shipped
            ``measured.toml``.
        fidelity: ``analytic`` (default; all rows in seconds), ``event`` or ``packet``.
        only: row ids to run (default all).

    Returns:
        One :class:`ValidationRow` per figure, in file order.

    Raises:
        ConfigError: a malformed data file (one line naming the row and field), an unknown
            fidelity or an unknown id in ``only``.
    """
    from gpt_workload.validation.data import load_figures
    from gpt_workload.validation.scenarios import run_scenario

    get_backend(fidelity)
    figs = load_figures(data)
    if only:
        ids = {f.id for f in figs}
        bad = [i for i in only if i not in ids]
        if bad:
            raise ConfigError(f"--only {bad[0]!r} is not a row id; rows: {', '.join(sorted(ids))}")
        figs = [f for f in figs if f.id in only]
    rows = []
    for f in figs:
        t0 = time.perf_counter()
        sim = err = None
        try:
            sim, detail = run_scenario(f.scenario, fidelity)
            err = 100.0 * (sim / f.value - 1.0)
            status = OK if abs(err) <= f.tolerance_pct else OUT
            reason = detail
        except (ConfigError, FitError) as exc:
            status, reason = CANNOT, " ".join(str(exc).split())
        rows.append(
            ValidationRow(
                id=f.id, figure=f.figure, measured=f.value, units=f.units, simulated=sim,
                error_pct=err, tolerance_pct=f.tolerance_pct, role=f.role, sets=f.sets,
                scenario=_scenario_text(f.scenario), status=status, reason=reason,
                conditions=f.conditions, source=f.source, note=f.note,
                wall_s=time.perf_counter() - t0,
            )
        )  # fmt: skip
    return rows


def exit_status(rows: list[ValidationRow]) -> int:
    """1 when a calibration row is outside its tolerance, else 0 (rows that cannot run and
    predictions never fail)."""
    return int(any(r.role == "calibration" and r.status == OUT for r in rows))


def write_csv(rows: list[ValidationRow], path: str | Path) -> Path:
    """Write the table as CSV (one row per figure, the :class:`ValidationRow` fields)."""
    p = Path(path)
    names = list(rows[0].to_dict()) if rows else list(ValidationRow.__dataclass_fields__)
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
    return p


def parity_plot(rows: list[ValidationRow], path: str | Path, band_pct: float = 25.0) -> Path:
    """Simulated against measured, log-log, one point per row that ran: the ``y = x`` line,
    a ``+-band_pct`` band, calibration and prediction rows with different markers. Values of
    different units share the axes (each point is a ratio to its own measurement)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in rows if r.simulated is not None and r.simulated > 0]
    fig, ax = plt.subplots(figsize=(6.5, 6))
    vals = [v for r in ran for v in (r.measured, r.simulated)] or [1.0, 10.0]
    lo, hi = min(vals) / 3, max(vals) * 3
    xs = [lo, hi]
    ax.plot(xs, xs, "k-", lw=1, label="y = x")
    b = band_pct / 100
    ax.fill_between(xs, [x * (1 - b) for x in xs], [x * (1 + b) for x in xs], color="0.85",
                    label=f"±{band_pct:g} %")  # fmt: skip
    for role, marker, colour in (("calibration", "o", "C0"), ("prediction", "^", "C3")):
        pts = [r for r in ran if r.role == role]
        if pts:
            ax.scatter([r.measured for r in pts], [r.simulated for r in pts], marker=marker,
                       color=colour, label=role, zorder=3)  # fmt: skip
            for r in pts:
                ax.annotate(r.id, (r.measured, r.simulated), fontsize=7, xytext=(4, 2),
                            textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured (each row in its own units)")
    ax.set_ylabel("simulated (same units)")
    missing = len(rows) - len(ran)
    ax.set_title("wse-sim validate: simulated vs measured"
                 + (f" ({missing} row(s) cannot run)" if missing else ""))  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left")
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def fmt_value(v: float | None) -> str:
    """A value for the table: 4 significant digits, thousands separated; '-' for None."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"
