"""The Report of a generation run, its console rows and its Chrome/Perfetto trace.

The :class:`gpt_workload.report.Report` of the ``run`` job is reused: ``simulated_time_s`` is
the whole run (every prefill and decode step), ``tokens`` the new tokens, ``tokens_per_s``
the aggregate rate, ``breakdown`` the time split per (phase, layer span, op),
``sram_peak_bytes`` the most loaded system's PE, and ``generation`` the serving metrics
(:mod:`gpt_workload.generation.job`).
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt_workload import strict_json
from gpt_workload.report import Report, si

__all__ = ["build_report", "console_rows", "write_generation_trace"]

SPLIT_KEYS = ("compute_s", "sram_s", "fabric_s", "io_s", "intersystem_s")


def build_report(cfg, arch, lay, reqs, per, steps, total, timer, fidelity, numerics, wall,
                 sampling) -> Report:  # fmt: skip
    """Assemble the Report (see the module docstring)."""
    n_new = sum(r.new_tokens for r in reqs)
    split = timer.split_rows()
    totals = {k: sum(r[k] for r in split) for k in (*SPLIT_KEYS, "total_s")}
    decode_t = sum(s["time_s"] for s in steps)
    prefill_t = total - decode_t
    decode_tokens = sum(s["requests"] for s in steps)
    flops = sum(s["flops"] for s in steps) + sum(
        timer.cache[("prefill", r.prompt_len)][1] for r in reqs
    )
    peak = arch.peak_flops_per_s(lay.precision)
    sram = lay.worst_sram()
    tpots = [p["tpot_s"] for p in per if p["tpot_s"]]
    mapping = (
        f"resident:gemv={lay.gemv},reduce={lay.reduce}"
        if lay.placement == "resident"
        else f"streaming:gemv={lay.gemv},reduce={lay.reduce}"
    )
    if lay.reduce == "ktree":
        mapping += f",ktree_k={lay.ktree_k}"
    if lay.placement == "resident":
        mapping += f",region={lay.region or 'wafer'}"
    pe_cycles = arch.n_pe * lay.systems * total * arch.pe.clock_hz
    util = timer.busy_pe_cycles / pe_cycles if total else 0.0
    io_bytes = sum(s["weight_bytes"] for s in steps) if lay.placement == "streaming" else 0.0
    gen = {
        "placement": lay.placement,
        "systems": lay.systems,
        "layers_per_system": [len(r) for r in lay.layers],
        "sampling": sampling,
        "requests": per,
        "aggregate": {
            "requests": len(reqs),
            "new_tokens": n_new,
            "tokens_per_s": n_new / total if total else 0.0,
            "decode_tokens_per_s": decode_tokens / decode_t if decode_t else None,
            "mean_ttft_s": sum(p["ttft_s"] for p in per) / len(per),
            "mean_tpot_s": sum(tpots) / len(tpots) if tpots else None,
            "tokens_per_s_per_request": (len(tpots) / sum(tpots)) if tpots else None,
            "prefill_s": prefill_t,
            "decode_s": decode_t,
            "decode_steps": len(steps),
        },
        "sram": sram,
        "max_context_by_batch": max_context_table(lay),
        "steps": steps,
        "time_split": {"rows": split, "totals": totals},
        "numerics_built": "skipped" not in numerics or "not built" not in numerics["skipped"],
    }
    return Report(
        model=cfg.name,
        arch=arch.name,
        arch_config=arch.to_dict(),
        grid=[lay.rows, lay.cols],
        fidelity=fidelity,
        precision=lay.precision,
        mapping=mapping,
        batch=len(reqs),
        seq_len=lay.max_context,
        micro_batches=1,
        tokens=n_new,
        simulated_time_s=total,
        tokens_per_s=n_new / total if total else 0.0,
        model_flops=flops,
        achieved_flops_per_s=flops / total if total else 0.0,
        peak_flops_per_s=peak * lay.systems,
        mfu=flops / (total * peak * lay.systems) if total else 0.0,
        pe_utilisation={"mean": util},
        sram_peak_bytes={"max": sram["total"], "capacity": sram["capacity"],
                         "weights": sram["weights"], "kv_cache": sram["kv_cache"],
                         "buffers": sram["buffers"]},  # fmt: skip
        io_utilisation=(io_bytes / (total * arch.io.ingress_bytes_per_s)) if total else 0.0,
        breakdown=split,
        totals=totals,
        roofline={
            "decode_bound_s": sum(s["bound_s"] for s in steps),
            "decode_s": decode_t,
        },
        numerics=numerics,
        layout={
            "grid": [lay.rows, lay.cols],
            "systems": lay.systems,
            "gemv": lay.gemv,
            "reduce": lay.reduce,
            "ktree_k": lay.ktree_k,
            "region": lay.region,
            "layers_per_region": [[len(r) for r in sys] for sys in lay.regions],
            "search": lay.search,
            "orientation": lay.orient,
            "kv_band_rows": lay.band_rows,
            "kv_heads_per_band": lay.heads_per_band,
            "kv_block_tokens": lay.block_tokens,
            "plan": {
                "gemv": {k: [v.rows, v.cols, v.reduce] for k, v in lay.plan().gemv.items()},
                "kv": [lay.plan().kv.pes, lay.plan().kv.block_tokens, lay.plan().kv.reduce],
            },
        },
        wall_s=wall,
        generation=gen,
    )


def _grid_text(r: Report) -> str:
    """The PEs a layer runs on: the whole grid, or the square regions and their layers."""
    side, per = r.layout.get("region"), r.layout.get("layers_per_region")
    if not side or not per:
        return f"{r.grid[0]}x{r.grid[1]} PEs per system"
    w = r.arch_config["wafer"]
    layers = "; ".join("+".join(str(n) for n in sys) for sys in per)
    return (f"{side}x{side} PE regions on the {w['rows']}x{w['cols']} grid, layers per region "
            f"{layers}")


def _divergence_text(num: dict) -> str:
    """``none`` when no checked request's tokens leave the float64 reference's, else
    ``request I at step S`` for each that does."""
    div = num.get("first_divergence") or []
    hits = [f"request {i} at step {d}" for i, d in enumerate(div) if d is not None]
    return ", ".join(hits) if hits else "none"


def console_rows(r: Report) -> list[tuple[str, str]]:
    """``(label, text)`` rows of the console table of ``wse-sim generate``; a value that is
    undefined for the run (``null`` in the JSON, or a ratio over no decode steps) is
    ``-``."""
    g = r.generation
    a = g["aggregate"]
    s = g["sram"]
    tot = r.totals.get("total_s", 0.0) or 1.0
    # undefined values (no decode steps: every request asked for 1 token) print as "-"
    steps = a["decode_steps"]
    bound = r.roofline["decode_bound_s"]
    ratio = f"{r.roofline['decode_s'] / bound:.2f}" if steps and bound else "-"
    dtps = a["decode_tokens_per_s"]
    split = ", ".join(f"{k[:-2]} {r.totals[k] / tot:.1%}" for k in SPLIT_KEYS)
    rows = [
        ("model / arch", f"{r.model} on {r.arch} ({_grid_text(r)}, {r.fidelity})"),
        ("placement", f"{g['placement']} on {g['systems']} system(s) (layers "
                      f"{', '.join(str(x) for x in g['layers_per_system'])}), {r.mapping}"),
        ("requests", f"{a['requests']} x (prompt {_span(g['requests'], 'prompt_len')}, "
                     f"new {_span(g['requests'], 'new_tokens')}), {r.precision}, "
                     f"{g['sampling']} sampling"),
        ("simulated time", f"{si(r.simulated_time_s, 's')} (prefill {si(a['prefill_s'], 's')}, "
                           f"decode {si(a['decode_s'], 's')} in {a['decode_steps']} steps)"),
        ("TTFT", f"mean {si(a['mean_ttft_s'], 's')}"),
        ("time per token", "-" if a["mean_tpot_s"] is None else
         f"mean {si(a['mean_tpot_s'], 's')} = {1 / a['mean_tpot_s']:,.0f} tokens/s per request"),
        ("aggregate", f"{a['tokens_per_s']:,.0f} tokens/s (decode steps alone "
                      + ("-)" if dtps is None else f"{dtps:,.0f} tokens/s)")),
        ("SRAM per PE", f"{s['total']:,} B of {s['capacity']:,} B (weights {s['weights']:,}, "
                        f"K/V {s['kv_cache']:,}, buffers {s['buffers']:,})"),
        ("longest context", _context_text(g["max_context_by_batch"], a["requests"])),
        ("time split", split),
        ("decode bound", (f"{si(bound, 's')}; simulated / bound = {ratio}" if steps else
                          "- (no decode steps: the prefill gives the only token)")),
    ]  # fmt: skip
    num = r.numerics
    if "tokens" in num:
        rows += _token_rows(num["tokens"], num.get("text"))
        if num.get("max_abs_logit_error") is not None:
            rows.append(("vs float64", f"max |logit error| {num['max_abs_logit_error']:.3e}; "
                                       f"first divergence {_divergence_text(num)}"))
    else:
        rows.append(("numerics", str(num.get("skipped", "-"))))
    rows.append(("host wall time", ", ".join(f"{k} {v:.2f}s" for k, v in r.wall_s.items())))
    return rows


def max_context_table(lay, limit: int = 1024) -> list[dict]:
    """``[{"batch", "max_context"}]``: the longest context (prompt + new tokens, at most the
    model's ``n_positions``) every one of ``batch`` requests can reach on ``lay``'s systems
    (:meth:`~gpt_workload.mappings.resident.layout.DecodeLayout.max_context_at`), for batch
    1, 2, 4, ... up to the first that fits no token (or ``limit``) and the layout's own
    batch, sorted by batch."""
    batches = {lay.batch}
    b = 1
    while b <= limit:
        batches.add(b)
        if lay.max_context_at(b) == 0:
            break
        b *= 2
    return [{"batch": b, "max_context": lay.max_context_at(b)} for b in sorted(batches)]


def _context_text(table: list[dict], batch: int) -> str:
    parts = []
    for row in table:
        b, c = row["batch"], row["max_context"]
        tag = " (this run)" if b == batch else ""
        parts.append(f"batch {b}{tag}: {c:,}" if c else f"batch {b}{tag}: none")
    return "per request, that fits: " + ", ".join(parts)


#: tokens shown per checked request, and checked requests shown, on the console
SHOW_TOKENS, SHOW_REQUESTS = 16, 4


def _token_rows(tokens: list[list[int]], text: list[str] | None) -> list[tuple[str, str]]:
    """One ``tokens`` row per checked request (the first :data:`SHOW_REQUESTS`), each with
    its first :data:`SHOW_TOKENS` ids and ``... (N more; all in --json)`` for the rest; a
    last row counts the requests not shown. ``text`` (decoded, when a tokenizer was used)
    adds a ``text`` row per request shown."""
    rows = []
    for i, tk in enumerate(tokens[:SHOW_REQUESTS]):
        line = " ".join(str(t) for t in tk[:SHOW_TOKENS])
        if len(tk) > SHOW_TOKENS:
            line += f" ... ({len(tk) - SHOW_TOKENS} more; all in --json)"
        rows.append(("tokens" if i == 0 else "", f"request {i}: {line}"))
    if len(tokens) > SHOW_REQUESTS:
        rows.append(("", f"... ({len(tokens) - SHOW_REQUESTS} more requests; all in --json)"))
    for i, t in enumerate((text or [])[:SHOW_REQUESTS]):
        rows.append(("text" if i == 0 else "", f"request {i}: {t!r}"))
    return rows


def _span(per: list[dict], key: str) -> str:
    lo, hi = min(p[key] for p in per), max(p[key] for p in per)
    return str(lo) if lo == hi else f"{lo}..{hi}"


def write_generation_trace(r: Report, path: str | os.PathLike) -> Path:
    """The run's timeline as Chrome / Perfetto trace-event JSON: one track per request
    (its prefill, then its decode span) and a ``decode steps`` track (one event per step).
    Returns the path written."""
    g = r.generation
    ev = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "generation"}}]
    us = 1e6
    t_prev = 0.0
    for p in g["requests"]:
        tid = p["request"] + 2
        ev.append({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name",
                   "args": {"name": f"request {p['request']}"}})  # fmt: skip
        ttft = p["ttft_s"]
        start = t_prev
        ev.append({"ph": "X", "pid": 1, "tid": tid, "name": "prefill", "cat": "prefill",
                   "ts": start * us, "dur": (ttft - start) * us,
                   "args": {"prompt_len": p["prompt_len"]}})  # fmt: skip
        if p["finish_s"] > ttft:
            ev.append({"ph": "X", "pid": 1, "tid": tid, "name": "decode", "cat": "decode",
                       "ts": ttft * us, "dur": (p["finish_s"] - ttft) * us,
                       "args": {"new_tokens": p["new_tokens"], "tpot_s": p["tpot_s"]}})  # fmt: skip
        t_prev = ttft
    ev.append({"ph": "M", "pid": 1, "tid": 1, "name": "thread_name",
               "args": {"name": "decode steps"}})  # fmt: skip
    t = g["aggregate"]["prefill_s"]
    for s in g["steps"]:
        ev.append({"ph": "X", "pid": 1, "tid": 1, "name": f"step {s['step']}", "cat": "decode",
                   "ts": t * us, "dur": s["time_s"] * us,
                   "args": {k: s[k] for k in ("requests", "max_context", "bound_s")}})  # fmt: skip
        t += s["time_s"]
    p = Path(path)
    p.write_text(strict_json.dumps({"traceEvents": ev, "displayTimeUnit": "ms"}) + "\n")
    return p
