"""The ``wse-sim`` command line: ``run``, ``train``, ``generate`` (:mod:`gpt_workload.cli_generate`),
``sweep``, ``plot``, ``arch list|show``, ``models list``, ``validate`` and
``kernel gemm|collective`` (:mod:`gpt_workload.cli_validate`).

Every user error (:class:`wse_sim.errors.WseSimError`, bad files) prints one line
``wse-sim: error: ...`` on stderr and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from wse_sim.errors import ConfigError, WseSimError

log = logging.getLogger("wse_sim")


def _console():
    from rich.console import Console

    # the terminal's width, but never narrower than the report's table needs
    return Console(
        highlight=False,
        soft_wrap=False,
        width=max(shutil.get_terminal_size((140, 24)).columns, 120),
    )


def _check_output_paths(args: argparse.Namespace) -> None:
    """Fail before a long run if an output path cannot be written.

    Raises:
        ConfigError: naming the flag and the path.
    """
    for flag in ("json", "save_logits", "trace"):
        path = getattr(args, flag, None)
        if not path:
            continue
        p = Path(path)
        opt = "--" + flag.replace("_", "-")
        if p.is_dir():
            raise ConfigError(f"{opt} {path!r} is a directory; give a file path")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ConfigError(
                f"{opt} {path!r}: directory {str(parent)!r} does not exist or is not writable"
            )
    if getattr(args, "plot", None):
        p = Path(args.plot)
        if p.exists() and not p.is_dir():
            raise ConfigError(f"--plot {args.plot!r} exists and is not a directory")


def _print_energy_table(con, rep, by: str = "op") -> None:
    """The energy split by op (or layer) and component, in joules, largest first."""
    from rich.table import Table

    from gpt_workload.report import energy_rows

    rows = energy_rows(rep, by)
    if not rows:
        return
    t = Table(
        title=f"where the energy goes (by {by}, joules; static over each {by}'s time)",
        title_justify="left",
    )
    comps = ("compute", "sram", "fabric", "io", "static")
    for col in (by, "total J", "compute J", "SRAM J", "fabric J", "I/O J", "static J", "share"):
        t.add_column(col, justify="left" if col == by else "right")
    tot = sum(r["total"] for r in rows) or 1.0
    for r in rows:
        t.add_row(str(r[by]), f"{r['total']:.4g}", *(f"{r[c]:.4g}" for c in comps),
                  f"{r['total'] / tot:.1%}")
    t.add_row("total", f"{tot:.4g}", *(f"{sum(r[c] for r in rows):.4g}" for c in comps),
              "100.0%", style="bold")
    con.print(t)
def _print_notices(con, notices: list[str]) -> None:
    """The report's notices, one unwrapped line each, before anything else on stdout."""
    for n in notices:
        con.print(f"NOTE: {n}", markup=False, soft_wrap=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from gpt_workload.report import breakdown_rows, format_console
    from gpt_workload.simulate import simulate

    tokens = None
    if args.tokens:
        try:
            tokens = np.load(args.tokens, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--tokens {args.tokens!r} is not a readable .npy file: {exc}"
            ) from None
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ConfigError(
                f"--tokens must hold int token ids of shape [K, T], got "
                f"{tokens.dtype} {tokens.shape}"
            )
    _check_output_paths(args)
    if args.save_logits and args.check_sequences == 0:
        raise ConfigError("--save-logits needs the numerics, but --check-sequences is 0")
    con = _console()
    with con.status("simulating ..."):
        rep = simulate(
            args.model,
            args.arch,
            mapping=args.mapping,
            fidelity=args.fidelity,
            precision=args.precision,
            batch=args.batch,
            seq_len=args.seq_len,
            check_sequences=args.check_sequences,
            tokens=tokens,
            seed=args.seed,
            overrides=args.set or (),
            keep_logits=bool(args.save_logits),
            allow_nonfinite=args.allow_nonfinite,
        )
    _print_notices(con, rep.notices)
    t = Table(title="wse-sim run", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in format_console(rep):
        t.add_row(k, v)
    con.print(t)
    if "mapping_search" in rep.layout:  # --mapping auto: the ranking it chose from
        from gpt_workload.mappings.auto import search_table

        con.print(search_table(rep.layout["mapping_search"]), markup=False)
    b = Table(
        title="where the time goes (by op, summed over layers and micro-batches)",
        title_justify="left",
    )
    cols = ("total_s", "compute_s", "fabric_s", "stall_s", "idle_s")
    for col in ("op", "total ms", "compute ms", "fabric ms", "I/O stall ms", "idle ms", "share"):
        b.add_column(col, justify="right" if col != "op" else "left")
    for row in breakdown_rows(rep):
        b.add_row(
            row["op"],
            *(f"{row[k] * 1e3:.3f}" for k in cols),
            f"{row['total_s'] / rep.simulated_time_s:.1%}",
        )
    b.add_row("total", *(f"{rep.totals[k] * 1e3:.3f}" for k in cols), "100.0%", style="bold")
    con.print(b)
    _print_energy_table(con, rep)
    if args.json:
        rep.to_json(args.json)
        con.print(f"JSON report written to {args.json}")
    if args.save_logits:
        if rep.logits is None:
            raise ConfigError(
                f"--save-logits: no logits, the numerics were skipped "
                f"({rep.numerics.get('skipped')})"
            )
        np.save(args.save_logits, rep.logits.astype(np.float32))
        con.print(f"logits {rep.logits.shape} written to {args.save_logits}")
    if args.plot:
        for p in rep.save_maps(args.plot):
            con.print(f"wrote {p}")
    if args.trace:
        from gpt_workload.trace import write_trace

        con.print(f"Perfetto/Chrome trace written to {write_trace(rep, args.trace)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """``wse-sim train``: time training steps on the wafer and run them numerically."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from gpt_workload.training.data import is_token_file
    from gpt_workload.training.train import train

    _check_output_paths(args)
    ids = is_token_file(args.tokens)
    con = _console()
    err = Console(stderr=True, highlight=False)
    # progress on stderr, only on a terminal (nothing at all when piped or redirected)
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    tasks: dict[str, int] = {}

    def on_numerics_step(done: int, total: int) -> None:
        if "numerics" not in tasks:
            bar.update(tasks["timing"], visible=False)
            tasks["numerics"] = bar.add_task("numerics: optimizer steps", total=total)
        bar.update(tasks["numerics"], completed=done)

    with bar:
        tasks["timing"] = bar.add_task("timing a training step", total=None)
        rep = train(
            args.model,
            args.arch,
            steps=args.steps,
            systems=args.systems,
            batch=args.batch,
            seq_len=args.seq_len,
            precision=args.precision,
            fidelity=args.fidelity,
            text=None if ids else args.tokens,
            tokens=args.tokens if ids else None,
            lr=args.lr,
            seed=args.seed,
            check_sequences=args.check_sequences,
            numerics_steps=args.numerics_steps,
            overrides=args.set or (),
            progress=on_numerics_step,
            allow_nonfinite=args.allow_nonfinite,
            checkpoint_offload=args.checkpoint_offload,
        )
    _print_notices(con, rep.notices)
    t = Table(title="wse-sim train", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rep.console_rows():
        t.add_row(k, v)
    con.print(t)
    if rep.breakdown_s:
        b = Table(title="where a step's time goes", title_justify="left")
        for col in ("part", "ms per step", "share"):
            b.add_column(col, justify="right" if col != "part" else "left")
        for k, v in rep.breakdown_s.items():
            b.add_row(k.replace("_", " "), f"{v * 1e3:.3f}", f"{v / rep.step_time_s:.1%}")
        b.add_row("total", f"{rep.step_time_s * 1e3:.3f}", "100.0%", style="bold")
        con.print(b)
    steps = rep.numerics.get("steps")
    if steps:
        n = Table(
            title=f"numerics: {rep.numerics['steps_run']:,} of {rep.numerics['steps_total']:,} "
            f"step(s), {rep.numerics['check_batch'][0]} x "
            f"{rep.numerics['check_batch'][1]}-token check batch",
            title_justify="left",
        )
        for col in ("step", "loss", "grad norm", "loss scale", "lr", "skipped"):
            n.add_column(col, justify="right")
        for s in steps:
            n.add_row(
                str(s["step"]),
                f"{s['loss']:.4f}",
                f"{s['grad_norm']:.4f}",
                f"{s['loss_scale']:g}",
                f"{s['lr']:.3e}",
                "yes" if s["skipped"] else "no",
            )
        con.print(n)
    if args.json:
        rep.to_json(args.json)
        con.print(f"JSON report written to {args.json}")
    return 0


def _cmd_arch(args: argparse.Namespace) -> int:
    from rich.table import Table

    from wse_sim.arch import list_archs, load_arch

    con = _console()
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


def _cmd_models(args: argparse.Namespace) -> int:
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
        _console().print(t)
    _console().print(
        "Any Hugging Face config.json or checkpoint directory of these families (model_type "
        "gpt2, gptj, llama, qwen2) also works as --model."
    )
    return 0


def _cmd_mappings(args: argparse.Namespace) -> int:
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
    _console().print(t)
    return 0


_ALLOW_NONFINITE_HELP = (
    "keep going when the numerics' outputs (logits, loss) are not finite; without it such a "
    "run stops with one line naming the first op, layer and precision that overflowed "
    "(exit 2); with it the report says so first"
)
class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error (unknown option, ``--batch abc``, a missing value) is one
    line ``wse-sim CMD: error: ...`` on stderr and exit status 2, without the usage block,
    like every other error of the command line. Subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``wse-sim``."""
    p = _OneLineParser(
        prog="wse-sim",
        description=("Simulate GPT models on a wafer-scale engine (Cerebras WSE class)."),
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="simulate one forward pass (the main job)")
    r.add_argument(
        "--model",
        default="cerebras-gpt-111m",
        help="preset name, config.json path or checkpoint directory",
    )
    r.add_argument("--arch", default="wse2", help="preset name or arch TOML file")
    r.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence (default min(2048, n_positions))",
    )
    r.add_argument(
        "--batch",
        type=int,
        default=None,
        help="sequences timed (default: the "
        "published training batch, capped at what fits one micro-batch)",
    )
    r.add_argument("--precision", default="fp16", help="fp32, fp16 or bf16")
    from gpt_workload.mappings import MAPPINGS

    r.add_argument(
        "--mapping",
        default="weight_streaming",
        metavar="NAME[:knob=value,...]",
        help=f"lowering strategy: {', '.join(MAPPINGS)} (knobs: wse-sim mappings list)",
    )
    r.add_argument(
        "--fidelity",
        default="event",
        help="event (SimPy, whole wafer), analytic (closed form) or packet (every router)",
    )
    r.add_argument(
        "--check-sequences",
        type=int,
        default=None,
        help="sequences whose numerics run through the per-PE kernels (0 = none)",
    )
    r.add_argument("--tokens", help=".npy of int token ids [K, T] for the numerics")
    r.add_argument("--save-logits", help="write float32 logits [K, T, vocab] to this .npy")
    r.add_argument(
        "--set",
        action="append",
        metavar="LEVEL.FIELD=VALUE",
        help="override an arch field, e.g. --set pe.sram_bytes=98304 (repeatable)",
    )
    r.add_argument("--json", help="write the full report as JSON")
    r.add_argument("--plot", help="write PE-utilisation / SRAM maps (.npy, .png) to this dir")
    r.add_argument("--seed", type=int, default=0, help="weight init and token seed")
    r.add_argument("--trace", help="write the timeline as Chrome/Perfetto trace-event JSON")
    r.add_argument("--allow-nonfinite", action="store_true", help=_ALLOW_NONFINITE_HELP)
    r.set_defaults(func=_cmd_run)
    tr = sub.add_parser("train", help="simulate training steps (timing + numerics)")
    tr.add_argument(
        "--model",
        default="cerebras-gpt-111m",
        help="preset name, config.json or HF checkpoint directory of any family (the numerics "
        "fine-tune from its weights)",
    )
    tr.add_argument("--arch", default="wse2", help="preset name or arch TOML file (one system)")
    tr.add_argument("--steps", type=int, default=1, help="optimizer steps (>= 1)")
    tr.add_argument("--systems", type=int, default=1, help="data-parallel systems through SwarmX")
    tr.add_argument(
        "--batch",
        type=int,
        default=None,
        help="global sequences per step (default: the published training batch)",
    )
    tr.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence, 2..n_positions (default min(2048, n_positions))",
    )
    tr.add_argument("--precision", default="fp16", help="fp32, fp16 or bf16")
    tr.add_argument("--fidelity", default="event", help="event (SimPy) or analytic")
    tr.add_argument(
        "--tokens",
        help="the numerics' data: a .npy of int token ids [N, T] (each step takes "
        "min(--check-sequences, N) rows in turn) or a UTF-8 text file (byte tokens; at least "
        "min(--seq-len, 64) bytes)",
    )
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate")
    tr.add_argument(
        "--check-sequences",
        type=int,
        default=4,
        help="sequences of the numerics' check batch (0 = no numerics)",
    )
    tr.add_argument(
        "--numerics-steps",
        type=int,
        default=None,
        metavar="N",
        help="run only the first N of the --steps numerically (0..--steps; default "
        "min(--steps, 20)); the timing covers all --steps, as every step has the same time; "
        "a progress bar with ETA shows on stderr when it is a terminal",
    )
    tr.add_argument("--seed", type=int, default=0, help="weight init and data seed")
    tr.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE")
    tr.add_argument(
        "--checkpoint-offload",
        default="auto",
        metavar="auto|on|off",
        help="stream the layer-input activation checkpoints to MemoryX and back: auto (when "
        "they do not fit the wafer in the fewest micro-batches), on (always) or off (never)",
    )
    tr.add_argument("--json", help="write the training report as JSON")
    tr.add_argument("--allow-nonfinite", action="store_true", help=_ALLOW_NONFINITE_HELP)
    tr.set_defaults(func=_cmd_train)
    from gpt_workload import cli_generate, cli_validate, plots, sweep

    cli_generate.add_parser(sub)
    sweep.add_parser(sub)
    plots.add_parser(sub)
    cli_validate.add_parser(sub)
    a = sub.add_parser("arch", help="architecture presets")
    asub = a.add_subparsers(dest="arch_cmd", required=True)
    asub.add_parser("list", help="list presets")
    s = asub.add_parser("show", help="show every field of a preset with its source")
    s.add_argument("name")
    s.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE")
    a.set_defaults(func=_cmd_arch)
    m = sub.add_parser("models", help="model presets")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="list model presets")
    m.set_defaults(func=_cmd_models)
    mp = sub.add_parser("mappings", help="mappings (lowering strategies) and their knobs")
    mpsub = mp.add_subparsers(dest="mappings_cmd", required=True)
    mpsub.add_parser("list", help="list mappings: mode, description, source, knobs")
    mp.set_defaults(func=_cmd_mappings)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wse-sim`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except WseSimError as exc:
        print(f"wse-sim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wse-sim: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            "wse-sim: error: out of host memory; lower --check-sequences or use "
            "--check-sequences 0",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("wse-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
