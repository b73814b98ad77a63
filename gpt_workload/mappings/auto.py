"""``auto``: pick the fastest mapping for one model x arch x workload.

:func:`choose_mapping` enumerates the registered mappings and a small grid of their knobs
(:func:`candidate_specs`: each mapping's defaults, then every other choice of each of its
choice knobs, one knob at a time), lowers each, and times it with the ``analytic`` backend;
candidates that do not fit or are refused (``FitError``, ``ConfigError``) are recorded with
their one-line reason. The ``top`` fastest are re-timed with ``event`` and the winner is the
fastest of those by event time, so ``auto`` never returns a mapping slower, by the event
backend, than another it re-timed.

``weight_streaming`` at its defaults (``pes_per_segment=auto,tokens_per_segment=auto``)
searches its own layout, ``P`` and ``m``, by analytic time
(:mod:`gpt_workload.mappings.weight_streaming.search`), so the candidate ``weight_streaming`` is
already the best of its layouts (its ``layout.search["layout_search"]`` says which).

As a registered mapping, ``auto`` (``simulate(mapping="auto")``, ``wse-sim run --mapping
auto``) runs the search in :meth:`AutoMapping.lower`, lowers with the winner, and records
the ranking in ``Program.layout.search["mapping_search"]`` (so ``Report.layout`` carries
it); its spec becomes the winner's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gpt_workload.checks import check_int
from gpt_workload.mappings.base import MAPPINGS, Knob, Mapping, parse_mapping, register
from wse_sim.errors import ConfigError, FitError


@dataclass
class Candidate:
    """One evaluated mapping.

    Attributes:
        spec: ``NAME[:knob=value,...]``.
        analytic_s: simulated time by ``analytic``, seconds.
        event_s: by ``event`` (``None`` if not re-timed).
        mfu: model FLOPs / (time x peak), by the best backend run.
        bound_by: the roofline's largest lower bound, ``compute``, ``io`` or ``fabric``.
        dominant: where the simulated time mostly went: ``compute``, ``fabric`` or ``io``
            (weight-I/O stall).
        layout: ``P x m`` (PEs x tokens per segment) the candidate ran at, when it has one.
    """

    spec: str
    analytic_s: float
    event_s: float | None = None
    mfu: float = 0.0
    bound_by: str = ""
    dominant: str = ""
    layout: str = ""

    @property
    def time_s(self) -> float:
        """Event time if re-timed, else analytic."""
        return self.event_s if self.event_s is not None else self.analytic_s


@dataclass
class SearchResult:
    """Outcome of :func:`choose_mapping`.

    Attributes:
        winner: spec of the chosen mapping.
        reason: one line: why it won.
        ranking: evaluated candidates, re-timed ones first by event time, then the rest by
            analytic time.
        rejected: ``[(spec, reason)]`` of those that did not fit or were refused.
    """

    winner: str
    reason: str
    ranking: list[Candidate]
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {
            "winner": self.winner,
            "reason": self.reason,
            "ranking": [asdict(c) for c in self.ranking],
            "rejected": [{"spec": s, "reason": r} for s, r in self.rejected],
        }

    def table(self) -> str:
        """The ranking as aligned text lines (for the CLI)."""
        return search_table(self.to_dict())


def search_table(d: dict) -> str:
    """A :meth:`SearchResult.to_dict` as aligned text lines (for the CLI)."""
    self = SearchResult(
        d["winner"],
        d["reason"],
        [Candidate(**c) for c in d["ranking"]],
        [(r["spec"], r["reason"]) for r in d["rejected"]],
    )
    if True:
        lines = [f"{'mapping':40s} {'analytic_s':>12s} {'event_s':>12s} {'mfu':>7s}  bound_by"]
        for c in self.ranking:
            ev = f"{c.event_s:12.6g}" if c.event_s is not None else f"{'-':>12s}"
            name = c.spec + (f" [{c.layout}]" if c.layout else "")
            lines.append(
                f"{name:40s} {c.analytic_s:12.6g} {ev} {c.mfu:7.2%}  {c.bound_by} "
                f"(time mostly {c.dominant})"
            )
        for s, r in self.rejected:
            lines.append(f"{s:40s} rejected: {r}")
        lines.append(f"winner: {self.winner}: {self.reason}")
        return "\n".join(lines)


def candidate_specs(names=None) -> list[str]:
    """Specs to evaluate: for each mapping (``names`` or every registered one but ``auto``),
    its defaults and each other choice of each choice knob, one knob at a time."""
    out = []
    for name in names or [n for n in MAPPINGS if n != "auto"]:
        if name not in MAPPINGS or name == "auto":
            raise ConfigError(
                f"auto candidates: {name!r} is not a mapping; allowed: "
                + ", ".join(n for n in MAPPINGS if n != "auto")
            )
        cls = MAPPINGS[name]
        out.append(name)
        for k in cls.knobs:
            for c in k.choices:
                if c != k.default:
                    out.append(f"{name}:{k.name}={c}")
    return out


def _evaluate(mapping: Mapping, cfg, arch, batch, seq_len, precision, backend):
    """(seconds, mfu, roofline bound_by, dominant phase, ``P x m`` layout) of one mapping on
    one backend."""
    from wse_sim import metrics
    from wse_sim.timing import BACKENDS

    program = mapping.lower(cfg, arch, batch, seq_len, precision)
    timing = BACKENDS[backend](program, arch)
    total = timing.total_s
    mfu = metrics.mfu(program.flops, total, arch.peak_flops_per_s(precision))
    _, totals = metrics.breakdown(timing)
    phases = {"compute": totals["compute_s"], "fabric": totals["fabric_s"], "io": totals["stall_s"]}
    bound = metrics.roofline(program, arch, timing)["bound_by"]
    lay = program.layout
    where = (
        f"{lay.pes_per_segment}x{lay.tokens_per_segment}"
        if lay.tokens_per_segment is not None
        else ""
    )
    return float(total), float(mfu), bound, max(phases, key=phases.get), where


def choose_mapping(
    cfg, arch, batch: int, seq_len: int, precision: str, candidates=None, top: int = 3
) -> SearchResult:
    """Rank the candidate mappings for ``batch`` x ``seq_len`` tokens (module docstring).

    Args:
        cfg, arch: model and arch (a GPTConfig and an ArchConfig).
        candidates: specs or mapping names to evaluate (default :func:`candidate_specs`);
            a bare name expands to its knob grid.
        top: how many of the analytic-fastest to re-time with ``event`` (>= 1).

    Raises:
        ConfigError: bad candidates or top; FitError: no candidate fits (every reason given).
    """
    top = check_int("top", top, 1)
    specs: list[str] = []
    for c in candidates or candidate_specs():
        specs += candidate_specs([c]) if c in MAPPINGS else [c]
    evaluated: list[Candidate] = []
    rejected: list[tuple[str, str]] = []
    seen = set()
    for spec in specs:
        m = parse_mapping(spec)
        if m.spec in seen or not m.accepts(cfg):  # only mappings that lower the family
            continue
        seen.add(m.spec)
        try:
            t, mfu, bound, dom, where = _evaluate(
                m, cfg, arch, batch, seq_len, precision, "analytic"
            )
        except (FitError, ConfigError) as e:
            rejected.append((m.spec, str(e)))
            continue
        evaluated.append(Candidate(m.spec, t, None, mfu, bound, dom, where))
    if not evaluated:
        raise FitError(
            "mapping=auto: no candidate mapping fits: "
            + "; ".join(f"{s}: {r}" for s, r in rejected)
        )
    evaluated.sort(key=lambda c: c.analytic_s)
    for c in evaluated[:top]:
        c.event_s, c.mfu, c.bound_by, c.dominant, _ = _evaluate(
            parse_mapping(c.spec), cfg, arch, batch, seq_len, precision, "event"
        )
    rechecked = sorted(evaluated[:top], key=lambda c: c.event_s)
    ranking = rechecked + evaluated[top:]
    win = ranking[0]
    reason = (
        f"fastest by event time of the {len(rechecked)} analytic-fastest of "
        f"{len(evaluated)} evaluated ({len(rejected)} rejected): {win.event_s:.4g} s at "
        f"{win.mfu:.1%} MFU, time mostly {win.dominant}"
    )
    if len(ranking) > 1:
        r = ranking[1]
        reason += f"; runner-up {r.spec} {r.time_s / win.event_s:.2f}x slower ({r.dominant})"
    return SearchResult(win.spec, reason, ranking, rejected)


@register
class AutoMapping(Mapping):
    """Search the registered mappings and run the fastest (module docstring)."""

    name = "auto"
    mode = "search"
    description = (
        "time every registered mapping at its defaults and at each other choice of its "
        "choice knobs, one at a time (analytic), re-time the fastest with event, run the winner"
    )
    source = "this simulator's analytic and event backends"
    packet_ok = False
    knobs = (
        Knob("top", "int", 3, "analytic-fastest candidates re-timed with event", lo=1),
        Knob(
            "candidates",
            "str",
            "all",
            "all (every registered mapping) or mapping names joined by '+', e.g. summa+cannon",
        ),
    )

    def __init__(self, **values):
        super().__init__(**values)
        if self["candidates"] != "all":
            allowed = [n for n in MAPPINGS if n != "auto"]
            for name in self["candidates"].split("+"):
                if name not in allowed:
                    raise ConfigError(
                        f"mapping auto: candidates={self['candidates']!r}: {name!r} is not a "
                        f"mapping; allowed: all, or names joined by '+' from {', '.join(allowed)}"
                    )
        self.chosen: Mapping | None = None
        self.search: SearchResult | None = None

    @property
    def spec(self) -> str:
        """The winner's spec once the search ran, else ``auto[:knobs]``."""
        return self.chosen.spec if self.chosen is not None else super().spec

    def lower(self, cfg, arch, batch: int, seq_len: int, precision: str):
        """Search (:func:`choose_mapping`), then lower with the winner; the ranking goes in
        ``layout.search["mapping_search"]``."""
        cands = None if self["candidates"] == "all" else self["candidates"].split("+")
        self.search = choose_mapping(cfg, arch, batch, seq_len, precision, cands, self["top"])
        self.chosen = parse_mapping(self.search.winner)
        program = self.chosen.lower(cfg, arch, batch, seq_len, precision)
        program.layout = program.layout.with_search("mapping_search", self.search.to_dict())
        return program

    def numerics(self, program, cfg, weights, tokens, precision: str):
        """The winner's numerics."""
        return (self.chosen or parse_mapping("weight_streaming")).numerics(
            program, cfg, weights, tokens, precision
        )

    def max_batch_single_micro(self, cfg, arch, seq_len: int, precision: str) -> int:
        """The default mapping's (``weight_streaming``): the batch the search runs at."""
        return parse_mapping("weight_streaming").max_batch_single_micro(
            cfg, arch, seq_len, precision
        )
