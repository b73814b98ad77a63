"""Serving frontier: tokens/s per request against aggregate tokens/s as the batch grows.

For each placement (``resident``: weights in PE SRAM; ``streaming``: weights from MemoryX at
every decode step) and each arch (``--archs``, default WSE-2 and WSE-3), ``--model``
(default Llama-3-8B) serves ``B`` requests for ``B`` in ``--batches`` (prompt ``--prompt-len``
tokens, ``--new-tokens`` new tokens each; analytic timing, fp16). A batch whose K/V cache and
buffers do not fit is a row with ``status = "does not fit"`` and its one-line reason; larger
batches are not tried. Per request: the decode rate ``1 / time per output token``;
aggregate: tokens produced by the decode steps over their time.

Reading it: resident decode at batch 1 is set by the fabric's all-reduce latency, which a
batch shares, so aggregate throughput grows almost linearly with the batch while the
per-request rate falls slowly, until SRAM runs out; streaming is set by the weight stream
(the whole model per step), which the batch amortises: its aggregate grows linearly and its
per-request rate stays flat at ``I/O bandwidth / weight bytes``.

Writes ``inference_frontier.csv`` and ``inference_frontier.png`` into ``--out``.

Example::

    python experiments/inference_frontier.py --out results/inference_frontier
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt_workload.experiment_args import (
    ArgumentParser,
    check_arch,
    check_int,
    check_out_dir,
    parse_ints,
    parse_names,
    run_main,
    write_rows_csv,
)
from gpt_workload.generation.job import generate
from gpt_workload.models import resolve_model
from gpt_workload.plots import save
from wse_sim.errors import ConfigError, FitError

PROG = Path(__file__).name
PLACEMENTS = ("resident", "streaming")


def run(model, archs, batches, prompt_len, new_tokens) -> list[dict]:
    """One row per (placement, arch, batch)."""
    rows = []
    for placement in PLACEMENTS:
        for arch in archs:
            for b in batches:
                row = {"placement": placement, "arch": arch, "batch": b, "status": "ok",
                       "reason": "", "systems": None, "tokens_per_s_per_request": None,
                       "aggregate_tokens_per_s": None, "mean_ttft_s": None,
                       "sram_bytes_per_pe": None}  # fmt: skip
                try:
                    r = generate(model, arch, batch=b, prompt_len=prompt_len,
                                 new_tokens=new_tokens, placement=placement,
                                 fidelity="analytic")  # fmt: skip
                except FitError as exc:
                    row.update(status="does not fit", reason=str(exc))
                    rows.append(row)
                    break
                a = r.generation["aggregate"]
                row.update(systems=r.generation["systems"],
                           tokens_per_s_per_request=a["tokens_per_s_per_request"],
                           aggregate_tokens_per_s=a["decode_tokens_per_s"],
                           mean_ttft_s=a["mean_ttft_s"],
                           sram_bytes_per_pe=r.generation["sram"]["total"])  # fmt: skip
                rows.append(row)
    return rows


def validate(args: argparse.Namespace):
    """Every option checked before anything runs; returns (archs, batches, out).

    Raises:
        ConfigError: one line naming the option, the value and what is allowed.
    """
    try:
        cfg = resolve_model(args.model)
    except ConfigError as exc:
        raise ConfigError(f"--model: {exc}") from None
    archs = parse_names("--archs", args.archs, "arch presets")
    for a in archs:
        check_arch("--archs", a)
    batches = parse_ints("--batches", args.batches, 1, example="1,2,4,8")
    check_int("--new-tokens", args.new_tokens, 2)
    check_int("--prompt-len", args.prompt_len, 1)
    if args.prompt_len + args.new_tokens > cfg.n_positions:
        raise ConfigError(
            f"--prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} exceeds the "
            f"{cfg.n_positions} positions of {cfg.name}"
        )
    return archs, sorted(batches), check_out_dir("--out", args.out)


def figure(args, rows):
    """Per-request rate against aggregate throughput, one curve per (placement, arch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for key in dict.fromkeys((r["placement"], r["arch"]) for r in rows):
        rs = [r for r in rows if (r["placement"], r["arch"]) == key and r["status"] == "ok"]
        if not rs:
            continue
        ax.plot([r["aggregate_tokens_per_s"] for r in rs],
                [r["tokens_per_s_per_request"] for r in rs], "o-" if key[0] == "resident"
                else "s--", label=f"{key[0]} on {key[1]}")  # fmt: skip
        for r in rs:
            ax.annotate(f"B={r['batch']}", (r["aggregate_tokens_per_s"],
                        r["tokens_per_s_per_request"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("aggregate decode throughput (tokens/s)")
    ax.set_ylabel("tokens/s per request")
    ax.set_title(f"{args.model}: prompt {args.prompt_len}, {args.new_tokens} new tokens, fp16")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command line; writes the CSV and the PNG."""
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3-8b", help="model (default: %(default)s)")
    p.add_argument("--archs", default="wse2,wse3", help="arch presets (default: %(default)s)")
    p.add_argument("--batches", default="1,2,4,8,16,32,64",
                   help="batch sizes, integers >= 1 (default: %(default)s)")  # fmt: skip
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--new-tokens", type=int, default=16, help="new tokens, >= 2 (default 16)")
    p.add_argument("--out", default="results/inference_frontier", help="output directory")

    def body() -> int:
        a = p.parse_args(argv)
        archs, batches, out = validate(a)
        rows = run(a.model, archs, batches, a.prompt_len, a.new_tokens)
        write_rows_csv(rows, out / "inference_frontier.csv")
        png = save(figure(a, rows), out / "inference_frontier.png")
        print(f"wrote {out / 'inference_frontier.csv'} and {png}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
