"""Serving Llama-3.1-8B, 70B and 405B on pipelines of CS-3 systems: wafers needed and where a
token's time goes.

Each model (``--models``) is served resident on ``--arch`` (default ``wse3``) with
``--systems auto``: the fewest wafers whose SRAM holds its weights, the K/V cache of the
batch (``--batch`` requests of ``--prompt-len`` + ``--new-tokens`` tokens) and the working
buffers, its layers split evenly over them. The per-token latency of the decode steps is
split into compute, SRAM (beyond the FMAC bound), fabric (all-reduces and broadcasts not
hidden) and inter-system (activations crossing the ``io.intersystem_*`` link, and the
sampled token back to the first system); analytic timing, fp16.

Writes ``inference_scaling.csv`` (one row per model: systems, layers per system, weights
and SRAM per PE, time per output token and its split, tokens/s per request) and
``inference_scaling.png`` (stacked split per model, systems on the bars) into ``--out``.

Example::

    python experiments/inference_scaling.py --out results/inference_scaling
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt_workload.experiment_args import (
    ArgumentParser,
    check_arch,
    check_int,
    check_out_dir,
    parse_names,
    run_main,
    write_rows_csv,
)
from gpt_workload.generation.job import generate
from gpt_workload.models import resolve_model
from gpt_workload.plots import save
from wse_sim.errors import ConfigError

PROG = Path(__file__).name
PARTS = ("compute_s", "sram_s", "fabric_s", "io_s", "intersystem_s")


def run(models, arch, batch, prompt_len, new_tokens) -> list[dict]:
    """One row per model."""
    rows = []
    for m in models:
        r = generate(m, arch, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                     systems="auto", fidelity="analytic")  # fmt: skip
        g = r.generation
        tokens = sum(s["requests"] for s in g["steps"])
        split = {k: 0.0 for k in PARTS}
        for row in r.breakdown:
            if row["phase"] == "decode":
                for k in PARTS:
                    split[k] += row[k]
        steps = len(g["steps"])
        rows.append({
            "model": m,
            "arch": arch,
            "systems": g["systems"],
            "layers_per_system": "/".join(str(x) for x in g["layers_per_system"]),
            "weights_bytes_per_pe": g["sram"]["weights"],
            "sram_bytes_per_pe": g["sram"]["total"],
            "time_per_token_s": g["aggregate"]["mean_tpot_s"],
            "tokens_per_s_per_request": g["aggregate"]["tokens_per_s_per_request"],
            "aggregate_tokens_per_s": g["aggregate"]["decode_tokens_per_s"],
            **{f"{k[:-2]}_per_step_s": v / steps for k, v in split.items()},
            "decode_tokens": tokens,
        })  # fmt: skip
    return rows


def validate(args: argparse.Namespace):
    """Every option checked before anything runs; returns (models, out).

    Raises:
        ConfigError: one line naming the option, the value and what is allowed.
    """
    models = parse_names("--models", args.models, "model presets")
    for m in models:
        try:
            cfg = resolve_model(m)
        except ConfigError as exc:
            raise ConfigError(f"--models: {exc}") from None
        if args.prompt_len + args.new_tokens > cfg.n_positions:
            raise ConfigError(f"--prompt-len + --new-tokens exceeds the positions of {m}")
    check_arch("--arch", args.arch)
    check_int("--batch", args.batch, 1, 4096)
    check_int("--prompt-len", args.prompt_len, 1)
    check_int("--new-tokens", args.new_tokens, 2)
    return models, check_out_dir("--out", args.out)


def figure(args, rows):
    """Stacked per-token split per model, the number of systems on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    x = range(len(rows))
    bottom = [0.0] * len(rows)
    for k, colour in zip(PARTS, ("tab:blue", "tab:cyan", "tab:orange", "tab:grey", "tab:red"),
                         strict=True):  # fmt: skip
        vals = [r[f"{k[:-2]}_per_step_s"] * 1e3 for r in rows]
        ax.bar(x, vals, bottom=bottom, color=colour, label=k[:-2].replace("_", "-"))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    for i, r in enumerate(rows):
        ax.annotate(f"{r['systems']} x {r['arch']}\n{r['tokens_per_s_per_request']:.0f} tok/s",
                    (i, bottom[i]), ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(list(x), [r["model"] for r in rows])
    ax.set_ylabel("decode step time per token (ms)")
    ax.set_ylim(0, max(bottom) * 1.25)
    ax.set_title(f"resident serving, batch {args.batch}, systems auto, fp16")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command line; writes the CSV and the PNG."""
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="llama-3.1-8b,llama-3.1-70b,llama-3.1-405b",
                   help="model presets (default: %(default)s)")  # fmt: skip
    p.add_argument("--arch", default="wse3", help="arch preset (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="concurrent requests (default 1)")
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (default 16)")
    p.add_argument("--new-tokens", type=int, default=4, help="new tokens, >= 2 (default 4)")
    p.add_argument("--out", default="results/inference_scaling", help="output directory")

    def body() -> int:
        a = p.parse_args(argv)
        models, out = validate(a)
        rows = run(models, a.arch, a.batch, a.prompt_len, a.new_tokens)
        write_rows_csv(rows, out / "inference_scaling.csv")
        png = save(figure(a, rows), out / "inference_scaling.png")
        print(f"wrote {out / 'inference_scaling.csv'} and {png}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
