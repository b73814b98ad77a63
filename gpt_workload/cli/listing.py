"""``wse-sim arch list|show``, ``wse-sim models list`` and ``wse-sim mappings list``: the
presets and mappings as tables."""

from __future__ import annotations

import argparse

from gpt_workload.cli.console import console

__all__ = ["add_parsers", "cmd_arch", "cmd_mappings", "cmd_models"]


def add_parsers(sub) -> None:
    """Register ``arch``, ``models`` and ``mappings`` on the ``wse-sim`` subparsers ``sub``."""
    a = sub.add_parser("arch", help="architecture presets")
    asub = a.add_subparsers(dest="arch_cmd", required=True)
    asub.add_parser("list", help="list presets")
    s = asub.add_parser("show", help="show every field of a preset with its source")
    s.add_argument("name")
    s.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE")
    a.set_defaults(func=cmd_arch)
    m = sub.add_parser("models", help="model presets")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="list model presets")
    m.set_defaults(func=cmd_models)
    mp = sub.add_parser("mappings", help="mappings (lowering strategies) and their knobs")
    mpsub = mp.add_subparsers(dest="mappings_cmd", required=True)
    mpsub.add_parser("list", help="list mappings: mode, description, source, knobs")
    mp.set_defaults(func=cmd_mappings)


def cmd_arch(args: argparse.Namespace) -> int:
    """``arch list``: one row per preset; ``arch show NAME``: every field with its source."""
    from rich.table import Table

    from wse_sim.arch import list_archs, load_arch

    con = console()
    if args.arch_cmd == "list":
        t = Table(title="architecture presets", title_justify="left")
        for c in ("name", "grid (rows x cols)", "PEs", "peak fp16 PFLOP/s", "description"):
            t.add_column(c)
        for a in list_archs():
            t.add_row(
                a.name,
                f"{a.wafer.rows} x {a.wafer.cols}",
                f"{a.n_pe:,}",
                f"{a.peak_flops_per_s('fp16') / 1e15:.3f}",
                a.description,
            )
        con.print(t)
        return 0
    a = load_arch(args.name, args.set or ())
    t = Table(title=f"{a.name}: {a.description}", title_justify="left")
    for c in ("field", "value", "meaning", "source"):
        t.add_column(c, overflow="fold")
    for key, val, doc, src in a.field_table():
        t.add_row(key, f"{val:g}" if isinstance(val, float) else str(val), doc, src)
    con.print(t)
    con.print(
        f"{a.n_pe:,} PEs; peak {a.peak_flops_per_s('fp16') / 1e15:.3f} PFLOP/s fp16, "
        f"{a.peak_flops_per_s('fp32') / 1e15:.3f} PFLOP/s fp32"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``models list``: the presets grouped by family, with the jobs that lower each family."""
    from rich.table import Table

    from gpt_workload.models import LOWERED_FOR, list_by_family

    for family, rows in list_by_family(include_test=True).items():
        jobs = [job for job, fams in LOWERED_FOR.items() if family in fams]
        state = "lowered: " + ", ".join(jobs) + (
            "" if family in LOWERED_FOR["train"] else " (weight_streaming)"
        )
        t = Table(title=f"family {family} ({state})", title_justify="left")
        for c in ("name", "n_layer", "d_model", "n_head", "kv_heads", "d_ff", "vocab", "params"):
            t.add_column(c)
        t.add_column("source")
        for m, source in rows:
            t.add_row(
                m.name + (" (test model)" if source == "test model" else ""),
                str(m.n_layer),
                str(m.d_model),
                str(m.n_head),
                str(m.n_kv_heads),
                str(m.d_ff),
                str(m.vocab_size),
                f"{m.n_params / 1e6:,.1f}M",
                "" if source == "test model" else source,
            )
        console().print(t)
    console().print(
        "Any Hugging Face config.json or checkpoint directory of these families (model_type "
        "gpt2, gptj, llama, qwen2) also works as --model."
    )
    return 0


def cmd_mappings(args: argparse.Namespace) -> int:
    """``mappings list``: mode, description, source and knobs of every mapping."""
    from rich.table import Table

    from gpt_workload.mappings import list_mappings

    t = Table(title="mappings (--mapping NAME[:knob=value,...])", title_justify="left")
    for c in ("name", "mode", "description", "source", "knobs (default; allowed)"):
        t.add_column(c, overflow="fold")
    for m in list_mappings():
        knobs = "\n".join(
            f"{k['name']}={'auto' if k['default'] is None else k['default']} ({k['allowed']}): "
            f"{k['doc']}"
            for k in m["knobs"]
        )
        t.add_row(m["name"], m["mode"], m["description"], m["source"], knobs or "-")
    console().print(t)
    return 0
