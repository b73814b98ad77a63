"""``generate()``: serve ``batch`` requests on one wafer or a pipeline of wafers, timed on
the whole grid, with the real tokens of the requests it checks.

Flow: the model and the requests are checked (:mod:`.requests`); the decode layout is made
(:func:`gpt_workload.mappings.resident.make_layout`: placement, systems, SRAM fit); the
timing (:mod:`.timing`) runs every prefill and decode step under one backend; the numerics
(``gpt_workload.generation.numerics.run_generation_numerics``, when this tree has it) run
the first ``check_requests`` requests through the per-PE kernels on the layout's
:class:`~gpt_workload.generation.split.DecodePlan` and return their tokens. The result is a
:class:`gpt_workload.report.Report` whose ``generation`` block holds the serving metrics:

* per request: ``prompt_len``, ``new_tokens``, ``ttft_s`` (time to first token: the end of its
  prefill, prefills running one after another), ``queue_s`` (from its first token until the
  batch's decode steps start, once every prefill is done), ``finish_s``, ``tpot_s`` (time
  per output token after the first, over the decode steps: ``(finish - decode start) /
  (new_tokens - 1)``), ``tokens_per_s`` (``1 / tpot``; the decode rate a user of that
  request sees);
* aggregate: ``tokens_per_s`` (all new tokens / the run's time), ``decode_tokens_per_s``
  (tokens produced by decode steps / decode time), mean TTFT and TPOT;
* ``sram``: bytes per PE (weights, K/V cache, buffers, capacity) of the most loaded system
  and ``max_context_by_batch`` (the longest context per request that fits at batch 1, 2,
  4, ... and the run's batch, at most ``n_positions``); ``steps``: every decode step's time, FLOPs, weight bytes and
  its lower bound (:func:`gpt_workload.generation.timing.step_bound`);
* ``time_split``: per (phase, layer span, op) compute, SRAM, fabric, weight-I/O and
  inter-system seconds (the report's ``breakdown`` too); each row's ``layers: [first,
  last]`` and ``n_layers`` say which layers it sums (resident: all of a system's layers
  in one row; see :meth:`gpt_workload.generation.timing.StepTimer.split_rows`).
"""

from __future__ import annotations

import time

import numpy as np

from gpt_workload.checks import check_int
from gpt_workload.config import GPTConfig
from gpt_workload.generation.requests import load_tokenizer, make_requests
from gpt_workload.generation.timing import StepTimer, step_bound
from gpt_workload.mappings.resident import make_layout
from gpt_workload.precision import check_precision
from gpt_workload.report import Report
from gpt_workload.simulate import resolve_model_and_weights
from wse_sim.arch import ArchConfig, load_arch
from wse_sim.errors import ConfigError
from wse_sim.timing import BACKENDS

__all__ = ["SAMPLINGS", "generate", "numerics_available"]

SAMPLINGS = ("greedy", "temperature", "top_k")
PACKET_MAX_PES = 64 * 64


def numerics_available():
    """The generation numerics' entry point, or None when this tree does not have them."""
    try:
        from gpt_workload.generation.numerics import run_generation_numerics
    except ImportError:
        return None
    return run_generation_numerics


def generate(
    model: str | GPTConfig = "llama-3-8b",
    arch: str | ArchConfig = "wse2",
    *,
    prompt_tokens: np.ndarray | None = None,
    prompt: str | None = None,
    prompt_len: int | None = None,
    new_tokens: int = 32,
    batch: int = 1,
    spread: float = 0.0,
    systems: int | str = 1,
    placement: str = "resident",
    gemv: str = "mesh",
    reduce: str = "auto",
    region: int | str = "auto",
    ktree_k: int = 2,
    precision: str = "fp16",
    fidelity: str = "event",
    check_requests: int = 0,
    sampling: str = "greedy",
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
    weights=None,
) -> Report:
    """Serve ``batch`` requests of ``model`` on ``arch`` and report speed, SRAM and tokens.

    Args:
        model: preset, ``config.json``, checkpoint directory or a GPTConfig.
        prompt_tokens: int ``[T]`` or ``[K, T]`` prompt ids with ``K == batch`` (request
            ``i`` takes row ``i``) or ``K == 1`` (every request); ``prompt``: text, tokenized
            by the checkpoint's ``tokenizer.json``; neither: seeded random ids of
            ``prompt_len`` (default 32) tokens. ``prompt_len`` is refused with a given prompt.
        new_tokens: tokens each request generates (>= 1); ``spread``: lengths drawn
            uniformly within +-``spread`` of the given ones (seeded; 0 = fixed); with a given
            prompt only the output lengths vary.
        systems: wafers in the pipeline, or ``"auto"`` (the fewest that hold the model).
        placement: ``resident`` (weights in SRAM) or ``streaming`` (from MemoryX each step).
        gemv, reduce: decode layout knobs (``mesh``/``rowcol``; ``tree``/``chain``/``ktree``
            or ``auto``); region: ``auto`` (searched by the analytic step time), ``wafer``
            (the whole grid) or a square side ``P``; ktree_k: phases of the K-tree
            (:func:`gpt_workload.mappings.resident.make_layout`).
        fidelity: ``event``, ``analytic`` or ``packet`` (grids up to 64 x 64).
        check_requests: requests whose tokens the per-PE numerics compute (0: timing only).
        sampling: ``greedy``, ``temperature`` (softmax at ``temperature``) or ``top_k``
            (``top_k`` most likely, at ``temperature``); seeded by ``seed``. ``temperature``
            (default 1.0) is refused with ``greedy`` and ``top_k`` with anything but
            ``top_k``: they would be ignored.

    Raises:
        ConfigError: bad input (one line naming the option); FitError: the model, K/V cache
            and buffers do not fit the systems' SRAM (the bytes per PE short, and the systems
            it needs); CheckpointError: a malformed checkpoint.
    """
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    if fidelity not in BACKENDS:
        raise ConfigError(f"--fidelity {fidelity!r} is unknown; allowed: {', '.join(BACKENDS)}")
    precision = check_precision(precision)
    if sampling not in SAMPLINGS:
        raise ConfigError(f"--sampling {sampling!r} is unknown; allowed: {', '.join(SAMPLINGS)}")
    if sampling == "greedy" and temperature is not None:
        raise ConfigError(f"--temperature {temperature!r} has no effect with --sampling greedy; "
                          "use --sampling temperature or top_k, or drop --temperature")
    if sampling != "top_k" and top_k is not None:
        raise ConfigError(f"--top-k {top_k!r} has no effect with --sampling {sampling}; use "
                          "--sampling top_k, or drop --top-k")
    temperature = 1.0 if temperature is None else temperature
    top_k = 0 if top_k is None else top_k
    if not (isinstance(temperature, (int, float)) and 0 < float(temperature) < float("inf")):
        raise ConfigError(f"--temperature {temperature!r} is not allowed: expected a number > 0")
    top_k = check_int("--top-k", top_k, 0)
    if sampling == "top_k" and top_k < 1:
        raise ConfigError("--sampling top_k needs --top-k K with K >= 1")
    batch = check_int("--batch", batch, 1, 1_000_000)
    seed = check_int("--seed", seed, 0, 2**63 - 1)
    check_requests = check_int("--check-requests", check_requests, 0)
    if check_requests > batch:
        raise ConfigError(f"--check-requests {check_requests} exceeds --batch {batch}")
    if systems != "auto":
        systems = check_int("--systems", systems, 1)
    arch_cfg = (
        load_arch(arch, overrides)
        if isinstance(arch, str)
        else (arch.with_overrides(overrides) if overrides else arch)
    )
    if fidelity == "packet" and arch_cfg.n_pe > PACKET_MAX_PES:
        raise ConfigError(
            f"--fidelity packet simulates every router: the {arch_cfg.wafer.rows}x"
            f"{arch_cfg.wafer.cols} grid exceeds {PACKET_MAX_PES} PEs; use event or a small "
            "grid such as grid32"
        )
    run_numerics = numerics_available()
    if check_requests > 0 and run_numerics is None:
        raise ConfigError(
            "--check-requests > 0: the generation numerics are not built in this tree; use "
            "--check-requests 0 (timing only)"
        )
    if prompt is not None and prompt_tokens is not None:
        raise ConfigError("give --prompt TEXT or --prompt-tokens IDS.npy, not both")
    cfg, w, wsrc = resolve_model_and_weights(
        model, seed, weights, need_weights=check_requests > 0, job="generate"
    )
    tok = None
    if prompt is not None:
        tok = load_tokenizer(model if isinstance(model, str) else "")
        ids = tok.encode(prompt).ids
        if not ids:
            raise ConfigError("--prompt text encodes to no tokens")
        prompt_tokens = np.asarray(ids, dtype=np.int64)
    reqs = make_requests(cfg, batch=batch, new_tokens=new_tokens, prompt_tokens=prompt_tokens,
                         prompt_len=prompt_len, spread=float(spread), seed=seed,
                         prompt_opt="--prompt" if prompt is not None else "--prompt-tokens")  # fmt: skip
    max_ctx = max(r.context for r in reqs)
    lay = make_layout(cfg, arch_cfg, precision=precision, placement=placement, systems=systems,
                      batch=batch, max_context=max_ctx, gemv=gemv, reduce=reduce,
                      region=region, ktree_k=ktree_k)  # fmt: skip
    wall["layout"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    timer = StepTimer(lay, fidelity, sampling=sampling, top_k=top_k)
    per_req, steps, t_now = _schedule(reqs, timer, lay)
    wall["timing"] = time.perf_counter() - t1

    numerics: dict = {"skipped": "--check-requests 0 (timing only)"}
    if check_requests > 0:
        t2 = time.perf_counter()
        numerics = _numerics(run_numerics, cfg, w, reqs[:check_requests], lay, precision,
                             sampling, temperature, top_k, seed, tok)  # fmt: skip
        numerics["weights"] = wsrc
        wall["numerics"] = time.perf_counter() - t2
    return _report(cfg, arch_cfg, lay, reqs, per_req, steps, t_now, timer, fidelity,
                   numerics, wall, sampling)  # fmt: skip


def _schedule(reqs, timer: StepTimer, lay):
    """Prefills one after another, then decode steps over the live requests."""
    t = 0.0
    per = []
    for r in reqs:
        dt, x, _ = timer.prefill(r.prompt_len)
        t += dt
        per.append({"request": r.index, "prompt_len": r.prompt_len, "new_tokens": r.new_tokens,
                    "ttft_s": t, "finish_s": t})  # fmt: skip
    steps = []
    decode_start = t
    k = 1
    while True:
        live = [r for r in reqs if r.new_tokens - 1 >= k]
        if not live:
            break
        ctx = [r.prompt_len + k for r in live]
        dt, x, flops, wbytes, lat, _ = timer.decode_step(ctx)
        bound = step_bound(lay, flops, wbytes, lat)
        t += dt
        for r in live:
            per[r.index]["finish_s"] = t
        steps.append({"step": k, "requests": len(live), "max_context": max(ctx), "time_s": dt,
                      "intersystem_s": x, "flops": flops, "weight_bytes": wbytes,
                      **bound})  # fmt: skip
        k += 1
    for p in per:
        n = p["new_tokens"]
        p["queue_s"] = decode_start - p["ttft_s"]
        p["tpot_s"] = (p["finish_s"] - decode_start) / (n - 1) if n > 1 else None
        p["tokens_per_s"] = 1.0 / p["tpot_s"] if p["tpot_s"] else None
    return per, steps, t


def _numerics(fn, cfg, weights, reqs, lay, precision, sampling, temperature, top_k, seed, tok):
    """Run the checked requests through the generation numerics; their tokens and errors."""
    from gpt_workload.generation.sampling import Sampling

    if sampling == "greedy":
        samp = Sampling()
    else:
        samp = Sampling(temperature=float(temperature),
                        top_k=int(top_k) if sampling == "top_k" else None)  # fmt: skip
    res = fn(cfg, weights, [r.prompt for r in reqs], [r.new_tokens for r in reqs], lay.plan(),
             precision=precision, sampling=samp, seed=seed, arch=lay.arch)  # fmt: skip
    out = {
        "check_requests": len(reqs),
        "precision": precision,
        "tokens": [np.asarray(t).tolist() for t in res.tokens],
        "max_abs_logit_error": res.max_error,
        "first_divergence": res.first_divergence,
        "decode_steps": res.decode_steps,
        "host_seconds": dict(res.host_seconds),
    }
    if tok is not None:
        out["text"] = [tok.decode(t) for t in out["tokens"]]
    return out


def _report(cfg, arch, lay, reqs, per, steps, total, timer, fidelity, numerics, wall, sampling):
    from gpt_workload.generation.report import build_report

    return build_report(cfg, arch, lay, reqs, per, steps, total, timer, fidelity, numerics,
                        wall, sampling)  # fmt: skip
