"""``wse-sim plot KIND``: draw one figure of :mod:`gpt_workload.plots` (a run's heatmap,
timeline, roofline or breakdown, or a sweep table's metric against a swept field) to an image."""

from __future__ import annotations

import argparse

from gpt_workload.cli.console import console
from gpt_workload.plots import (
    breakdown_chart,
    check_image_path,
    roofline_chart,
    save,
    sweep_chart,
    timeline_chart,
    utilisation_heatmap,
)
from wse_sim.errors import ConfigError
from wse_sim.precision import PRECISIONS

__all__ = ["RUN_KINDS", "add_parser", "cmd_plot"]

RUN_KINDS = ("heatmap", "timeline", "roofline", "breakdown")


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``wse-sim plot KIND ...`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "plot",
        help="draw a figure of one run (heatmap, timeline, roofline, breakdown) or a sweep",
        description="heatmap|timeline|roofline|breakdown simulate one configuration (timing "
        "only) and draw it; sweep draws a metric of a sweep table against a swept field.",
    )
    p.add_argument("kind", choices=(*RUN_KINDS, "sweep"))
    p.add_argument("table", nargs="?", help="sweep table (.parquet or .csv), for 'sweep'")
    p.add_argument("-o", "--output", help="image file to write (default KIND.png)")
    g = p.add_argument_group("run figures (as wse-sim run; timing only)")
    g.add_argument("--model", default="cerebras-gpt-111m", help="preset or config.json")
    g.add_argument("--arch", default="wse2", help="arch preset or TOML")
    g.add_argument("--batch", type=int, default=None, help="sequences (default as run)")
    g.add_argument("--seq-len", type=int, default=None, help="tokens per sequence")
    g.add_argument("--precision", default="fp16", choices=PRECISIONS, help="fp32, fp16 or bf16")
    g.add_argument("--fidelity", default="event", help="event or analytic")
    g.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE", help="arch override")
    g.add_argument("--op", help="heatmap: only this op (e.g. qkv, attention)")
    g.add_argument("--layer", type=int, help="heatmap: only this layer (-1 = embedding)")
    g.add_argument(
        "--by", default=None, help="breakdown: op (default) or layer; sweep: fields per line"
    )
    s = p.add_argument_group("sweep figures")
    s.add_argument(
        "--metric", default=None, help="y: a result column (default tokens_per_s)"
    )
    s.add_argument("--x", help="x: a swept field (column)")
    s.add_argument("--logy", action="store_true")
    p.set_defaults(func=cmd_plot)
    return p


#: options that only one kind of figure reads, and the kinds that read them
_KIND_ONLY = {
    "metric": ("sweep",),
    "x": ("sweep",),
    "logy": ("sweep",),
    "table": ("sweep",),
    "op": ("heatmap",),
    "layer": ("heatmap",),
    "by": ("breakdown", "sweep"),
}


def _check_kind_options(args: argparse.Namespace) -> None:
    """Refuse an option the chosen figure would ignore (rather than drawing without it).

    Raises:
        ConfigError: naming the option, the figure and the figures that take it.
    """
    for name, kinds in _KIND_ONLY.items():
        v = getattr(args, name, None)
        if v not in (None, False) and args.kind not in kinds:
            flag = name.upper() if name == "table" else "--" + name
            raise ConfigError(
                f"{flag} does not apply to plot {args.kind}; it is read by: plot "
                + ", plot ".join(kinds)
            )


def cmd_plot(args: argparse.Namespace) -> int:
    """Handler of ``wse-sim plot``; returns the exit status.

    Raises:
        ConfigError: missing table or ``--x`` for a sweep figure, or any simulate() error.
    """
    out = check_image_path(args.output or f"{args.kind}.png")
    _check_kind_options(args)
    if args.kind == "sweep":
        if not args.table or not args.x:
            raise ConfigError("plot sweep needs a TABLE and --x FIELD")
        by = None if args.by is None else [b for b in args.by.split(",") if b]
        metric = args.metric or "tokens_per_s"
        fig = sweep_chart(args.table, metric, args.x, by=by, logy=args.logy)
    else:
        from gpt_workload.simulate import simulate

        rep = simulate(
            args.model,
            args.arch,
            fidelity=args.fidelity,
            precision=args.precision,
            batch=args.batch,
            seq_len=args.seq_len,
            check_sequences=0,
            overrides=args.set or (),
        )
        if args.kind == "heatmap":
            fig = utilisation_heatmap(rep, op=args.op, layer=args.layer)
        elif args.kind == "timeline":
            fig = timeline_chart(rep)
        elif args.kind == "roofline":
            fig = roofline_chart(rep)
        else:
            fig = breakdown_chart(rep, by=args.by or "op")
    console().print(f"wrote {save(fig, out)}")
    return 0
