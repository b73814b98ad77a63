"""``wse-sim generate``: serve requests on one wafer or a pipeline of wafers.

Prints the serving table (:func:`gpt_workload.generation.report.console_rows`) and the time
split by op; ``--json`` writes the Report, ``--trace`` the generation timeline. Every bad
input is one line on stderr, exit status 2, nothing written (the options are checked, the
output paths probed and the whole run done before anything is written).
"""

from __future__ import annotations

import argparse

from gpt_workload.checks import not_allowed
from gpt_workload.cli.console import check_output_paths, console
from wse_sim.precision import PRECISIONS

__all__ = ["add_parser", "cmd_generate"]


def _systems(text: str):
    if text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < 1:
        raise not_allowed("--systems", text, "an integer >= 1 or auto")
    return v


def cmd_generate(args: argparse.Namespace) -> int:
    """Run ``generate()`` with the command line's options; print, then write the outputs."""
    from rich.table import Table

    from gpt_workload.generation.job import generate
    from gpt_workload.generation.report import console_rows, write_generation_trace
    from gpt_workload.generation.requests import read_prompt_tokens

    check_output_paths(args)
    prompt_tokens = read_prompt_tokens(args.prompt_tokens) if args.prompt_tokens else None
    rep = generate(
        args.model,
        args.arch,
        prompt_tokens=prompt_tokens,
        prompt=args.prompt,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        batch=args.batch,
        spread=args.spread,
        systems=_systems(args.systems),
        placement=args.placement,
        gemv=args.gemv,
        reduce=args.reduce,
        region=args.region,
        ktree_k=args.ktree_k,
        precision=args.precision,
        fidelity=args.fidelity,
        check_requests=args.check_requests,
        sampling=args.sampling,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        overrides=args.set or (),
    )
    con = console()
    t = Table(title="wse-sim generate", show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("", overflow="fold")  # wrap long rows (token ids), never crop them
    for label, text in console_rows(rep):
        t.add_row(label, text)
    con.print(t)
    by_op: dict[tuple[str, str], dict] = {}
    for r in rep.breakdown:
        d = by_op.setdefault((r["phase"], r["op"]), dict.fromkeys(("compute_s", "sram_s",
                             "fabric_s", "io_s", "intersystem_s", "total_s"), 0.0))  # fmt: skip
        for k in d:
            d[k] += r[k]
    ops = Table(title="where the time goes (by phase and op, summed over layers and steps)",
                title_justify="left")  # fmt: skip
    for col in ("phase", "op", "total ms", "compute ms", "SRAM ms", "fabric ms", "I/O ms",
                "inter-system ms", "share"):  # fmt: skip
        ops.add_column(col, justify="left" if col in ("phase", "op") else "right")
    tot = rep.totals.get("total_s", 0.0) or 1.0
    for (phase, op), d in sorted(by_op.items(), key=lambda x: -x[1]["total_s"]):
        ops.add_row(phase, op, *(f"{d[k] * 1e3:.4f}" for k in ("total_s", "compute_s", "sram_s",
                    "fabric_s", "io_s", "intersystem_s")), f"{d['total_s'] / tot:.1%}")  # fmt: skip
    con.print(ops)
    if args.json:
        rep.to_json(args.json)
        con.print(f"JSON report written to {args.json}")
    if args.trace:
        con.print(f"Perfetto/Chrome trace written to {write_generation_trace(rep, args.trace)}")
    return 0


def add_parser(sub) -> None:
    """Register ``generate`` on the ``wse-sim`` subparsers ``sub``."""
    from gpt_workload.generation.job import SAMPLINGS
    from gpt_workload.mappings.resident import GEMVS, PLACEMENTS, REDUCES

    g = sub.add_parser("generate", help="serve requests: prefill, then decode with a K/V cache")
    g.add_argument("--model", default="llama-3-8b",
                   help="preset name, config.json path or checkpoint directory")
    g.add_argument("--arch", default="wse2", help="preset name or arch TOML file")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--prompt-tokens", metavar="IDS.npy", help=".npy of int ids [T] or [K, T]: K = --batch rows (one per request) "
                     "or 1 row (used for every request); used as given, never cut or repeated")
    src.add_argument(
        "--prompt", metavar="TEXT",
        help="prompt text (needs tokenizer.json in the checkpoint directory)",
    )  # fmt: skip
    g.add_argument(
        "--prompt-len", type=int, default=None,
        help="prompt tokens per request of random ids (default 32); refused with "
             "--prompt/--prompt-tokens, whose prompt keeps its own length",
    )  # fmt: skip
    g.add_argument("--new-tokens", type=int, default=32, help="new tokens per request (>= 1)")
    g.add_argument("--batch", type=int, default=1, help="concurrent requests")
    g.add_argument("--spread", type=float, default=0.0,
                   help="draw each request's prompt and output lengths uniformly within "
                        "+-SPREAD of the given ones (seeded; 0 = fixed); with --prompt or "
                        "--prompt-tokens only the output lengths vary")  # fmt: skip
    g.add_argument("--systems", default="1", help="wafers in the pipeline, or auto")
    g.add_argument(
        "--placement", default="resident", choices=PLACEMENTS,
        help="weights resident in SRAM, or streamed from MemoryX every step",
    )  # fmt: skip
    g.add_argument(
        "--gemv", default="mesh", choices=GEMVS,
        help="matrix-vector layout: mesh (MeshGEMV, alternating axes) or rowcol",
    )  # fmt: skip
    g.add_argument("--reduce", default="auto", choices=REDUCES + ("auto",),
                   help="all-reduce along lines: tree, chain, ktree (WaferLLM's K-tree) or "
                        "auto (searched with --region)")  # fmt: skip
    g.add_argument("--region", default="auto",
                   help="resident decode region: auto (the fastest fitting by the analytic "
                        "step time), wafer (every layer over the whole grid) or a side P "
                        "(square P x P regions, one per layer group)")  # fmt: skip
    g.add_argument("--ktree-k", type=int, default=2, help="phases of --reduce ktree (1 to 4)")
    g.add_argument("--precision", default="fp16", choices=PRECISIONS, help="fp32, fp16 or bf16")
    g.add_argument("--sampling", default="greedy", choices=SAMPLINGS)
    g.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (> 0, default 1.0) for --sampling temperature "
                        "or top_k; refused with greedy")  # fmt: skip
    g.add_argument("--top-k", type=int, default=None,
                   help="K most likely tokens, for --sampling top_k only")  # fmt: skip
    g.add_argument(
        "--fidelity", default="event",
        help="event (SimPy), analytic (closed form) or packet (every router, <= 128x128)",
    )  # fmt: skip
    g.add_argument(
        "--check-requests", type=int, default=0,
        help="requests whose tokens run through the per-PE kernels (0 = timing only)",
    )  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="weights, random prompts and sampling")
    g.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE",
                   help="override an arch field (repeatable)")  # fmt: skip
    g.add_argument("--json", help="write the Report as JSON")
    g.add_argument("--trace", help="write the generation timeline as Chrome/Perfetto JSON")
    g.set_defaults(func=cmd_generate)
