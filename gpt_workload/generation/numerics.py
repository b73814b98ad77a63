"""The real tokens of a generation run: prefill through the forward per-PE kernels, then one
decode step per new token through the decode kernels, with each request's KV cache.

:func:`run_generation_numerics` takes a batch of requests (prompts of any lengths, their own
numbers of new tokens):

1. **Prefill**: the requests with equal prompt lengths run together through the forward
   numerics of the ``weight_streaming`` lowering of ``arch``
   (:func:`gpt_workload.numerics.run_numerics` for gpt2,
   :func:`gpt_workload.numerics_graph.run_graph_numerics` otherwise), which hand back every
   layer's stored K and V: the KV cache. The last prompt position's logits choose the first
   new token.
2. **Decode**: one step per further token, the live requests batched
   (:class:`gpt_workload.generation.decode_step.Decoder`: the matrix-vector products tiled and
   reduced as the :class:`~gpt_workload.generation.split.DecodePlan` says, attention over the
   cache as its ``kv`` split says), then :func:`~gpt_workload.generation.sampling.sample_token`.
3. **Reference** (fp16/bf16 by default): the float64 forward pass
   (:func:`gpt_workload.reference.reference_forward`) of each request's prompt and generated
   tokens gives, at each step, the float64 logits of the same prefix. Their difference is the
   step's logit error; the first step whose token is not the arg-max of the reference logits is
   where the tokens first diverge from the float64 model's greedy tokens (up to that step
   both saw the same prefix).

Storage precision as everywhere (:mod:`gpt_workload.precision`): fp32 arithmetic, every stored
tensor (KV cache included) rounded to ``precision``; logits are fp32 sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from gpt_workload.checks import check_int, check_token_ids
from gpt_workload.config import GPTConfig
from gpt_workload.generation.decode_step import DecodeState, Decoder
from gpt_workload.generation.sampling import Sampling, request_generators, sample_token
from gpt_workload.generation.split import DecodePlan
from gpt_workload.precision import Precision, check_precision
from wse_sim.errors import ConfigError, NumericsError

__all__ = ["GenerationNumerics", "check_requests", "run_generation_numerics"]


@dataclass
class GenerationNumerics:
    """Tokens and logits of a generation run's requests.

    Attributes:
        tokens: per request, int64 ``[n_i]``: the new tokens.
        logits: per request, float32 ``[n_i, V]``: the logits each new token was chosen from
            (step 0 from the prefill, step ``s`` from decode step ``s``).
        precision: storage precision of the run.
        sampling: how tokens were chosen.
        prompt_lengths: tokens of each request's prompt.
        max_abs_logit_error: per request, float64 ``[n_i]``: ``max_v |logit - reference|`` of
            each step against the float64 reference on the same prefix; None when the
            reference was not run.
        first_divergence: per request, the first step whose token differs from the float64
            reference's greedy token (None if none does); None when the reference was not run.
        decode_steps: batched decode steps run (the most new tokens of any request, minus 1).
        host_seconds: host wall time of ``prefill``, ``decode`` and ``reference``.
    """

    tokens: list[np.ndarray]
    logits: list[np.ndarray]
    precision: str
    sampling: Sampling
    prompt_lengths: list[int]
    max_abs_logit_error: list[np.ndarray] | None = None
    first_divergence: list[int | None] | None = None
    decode_steps: int = 0
    host_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float | None:
        """The largest logit error of any request and step (None without the reference)."""
        if self.max_abs_logit_error is None:
            return None
        return float(max(e.max() for e in self.max_abs_logit_error))


def check_requests(cfg: GPTConfig, prompts, new_tokens, plan: DecodePlan | None = None):
    """``prompts`` as int64 arrays and ``new_tokens`` as one int per request, after checking.

    Raises:
        ConfigError: no prompts, a prompt that is not a non-empty 1-D integer array, an id
            outside ``0..vocab_size-1``, ``new_tokens`` not an integer >= 1 (or a list of them,
            one per prompt), a context (prompt + new tokens - 1) past the model's
            ``n_positions`` or past what ``plan.kv`` holds. One line each.
    """
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        prompts = list(prompts)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ConfigError(f"prompts must be a non-empty list of token arrays, got {prompts!r:.60}")
    out = []
    for i, p in enumerate(prompts):
        a = np.asarray(p)
        if a.ndim != 1:
            raise ConfigError(f"prompt {i} has shape {a.shape}: expected a non-empty 1-D [T] array")
        ids = check_token_ids(a, name=f"prompt {i}", vocab_size=cfg.vocab_size, allow_1d=True)
        out.append(ids[0])
    many = isinstance(new_tokens, (list, tuple, np.ndarray))
    n = list(new_tokens) if many else [new_tokens]
    n = n * len(out) if len(n) == 1 else n
    if len(n) != len(out):
        raise ConfigError(f"new_tokens has {len(n)} entries for {len(out)} prompts")
    for i, v in enumerate(n):
        n[i] = check_int(f"new_tokens[{i}]" if many else "new_tokens", v, 1)
    for i, (p, k) in enumerate(zip(out, n)):
        ctx = len(p) + k - 1
        if ctx > cfg.n_positions:
            raise ConfigError(
                f"request {i}: prompt of {len(p)} + {k} new tokens needs a context of {ctx} "
                f"positions; {cfg.name} has n_positions={cfg.n_positions}"
            )
        cap = plan.kv.pes * plan.kv.block_tokens if plan is not None else ctx
        if ctx > cap:
            raise ConfigError(
                f"request {i}: a context of {ctx} tokens does not fit the KV split "
                f"({plan.kv.pes} PEs x {plan.kv.block_tokens} tokens = {cap})"
            )
    return out, n


def _prefill(cfg, weights, prompts, precision, arch, states) -> dict[int, np.ndarray]:
    """Run the forward numerics of the prompts (grouped by length); fill ``states`` with their
    K/V; return each request's last-position logits."""
    from gpt_workload.mappings import parse_mapping
    from gpt_workload.numerics import run_numerics
    from gpt_workload.numerics_graph import run_graph_numerics
    from wse_sim.arch import load_arch

    arch = load_arch(arch) if isinstance(arch, str) else arch
    mapping = parse_mapping("weight_streaming")
    run = run_numerics if cfg.family == "gpt2" else run_graph_numerics
    last: dict[int, np.ndarray] = {}
    for T in sorted({len(p) for p in prompts}):
        idx = [i for i, p in enumerate(prompts) if len(p) == T]
        tokens = np.stack([prompts[i] for i in idx])
        program = mapping.lower(cfg, arch, len(idx), T, precision)
        kv: list = []
        with np.errstate(over="ignore", invalid="ignore"):
            res = run(program, cfg, weights, tokens, precision, kv_out=kv)
        for j, i in enumerate(idx):
            states[i].fill([(k[j], v[j]) for k, v in kv])
            last[i] = np.ascontiguousarray(res.logits[j, -1], dtype=np.float32)
    return last


def run_generation_numerics(
    cfg: GPTConfig,
    weights,
    prompts,
    new_tokens,
    plan: DecodePlan,
    *,
    precision: str = "fp32",
    sampling: Sampling | None = None,
    seed: int = 0,
    arch=None,
    reference: bool | None = None,
) -> GenerationNumerics:
    """Generate ``new_tokens`` tokens for each prompt through the per-PE kernels (see the
    module docstring).

    Args:
        cfg: the model (any family of :mod:`gpt_workload.models`).
        weights: its weights (:class:`gpt_workload.weights.GPTWeights` for gpt2,
            :class:`gpt_workload.models.weights.DecoderWeights` otherwise).
        prompts: one 1-D integer array of token ids per request (lengths may differ).
        new_tokens: tokens to generate, one int for all requests or one per request.
        plan: how the decode step's matrices and KV cache are split over PEs.
        precision: ``fp32``, ``fp16`` or ``bf16`` storage.
        sampling: greedy (default) or temperature / top-k.
        seed: seeds the sampling (request ``i`` draws from ``default_rng([seed, i])``).
        arch: the :class:`wse_sim.arch.ArchConfig` (or preset name) whose ``weight_streaming``
            layout the prefill runs on; None: ``wse2``.
        reference: compare with the float64 reference (per-step logit error, first diverging
            step); None: for fp16 and bf16 only.

    Returns:
        :class:`GenerationNumerics`.

    Raises:
        ConfigError: bad prompts, new_tokens, precision, plan (a gemv key that is no linear
            op of the graph) or a context that does not fit (:func:`check_requests`).
        CheckpointError: weights that do not match ``cfg``.
        FitError: a prompt whose prefill does not fit ``arch``.
        NumericsError: non-finite logits.
    """
    precision = check_precision(precision)
    sampling = Sampling() if sampling is None else sampling
    if not isinstance(sampling, Sampling):
        raise ConfigError(f"sampling must be a Sampling, got {type(sampling).__name__}")
    if not isinstance(plan, DecodePlan):
        raise ConfigError(f"plan must be a DecodePlan, got {type(plan).__name__}")
    prompts, n_new = check_requests(cfg, prompts, new_tokens, plan)
    rngs = request_generators(seed, len(prompts))
    weights.validate(cfg)
    reference = precision is not Precision.FP32 if reference is None else bool(reference)
    ctx = [len(p) + k - 1 for p, k in zip(prompts, n_new)]
    decoder = Decoder(cfg, weights, precision, plan, max(ctx))
    states = [DecodeState(cfg.n_layer, c, cfg.kv_dim) for c in ctx]
    wall: dict[str, float] = {}

    t0 = time.perf_counter()
    last = _prefill(cfg, weights, prompts, precision, arch or "wse2", states)
    wall["prefill"] = time.perf_counter() - t0
    toks = [np.zeros(k, np.int64) for k in n_new]
    logits = [np.zeros((k, cfg.vocab_size), np.float32) for k in n_new]

    def choose(i: int, s: int, z: np.ndarray) -> None:
        if not np.isfinite(z).all():
            raise NumericsError(
                f"{precision} generation: request {i} step {s} has "
                f"{int((~np.isfinite(z)).sum())} non-finite logits; try fp32 or bf16"
            )
        logits[i][s] = z
        toks[i][s] = sample_token(z, sampling, rngs[i])

    for i in range(len(prompts)):
        choose(i, 0, last[i])
    t0 = time.perf_counter()
    steps = max(n_new) - 1
    for s in range(1, steps + 1):
        live = [i for i, k in enumerate(n_new) if s < k]
        with np.errstate(over="ignore", invalid="ignore"):
            z = decoder.step(np.array([toks[i][s - 1] for i in live]), [states[i] for i in live])
        for j, i in enumerate(live):
            choose(i, s, z[j])
    wall["decode"] = time.perf_counter() - t0
    out = GenerationNumerics(toks, logits, precision, sampling, [len(p) for p in prompts],
                             decode_steps=steps, host_seconds=wall)  # fmt: skip
    if reference:
        t0 = time.perf_counter()
        out.max_abs_logit_error, out.first_divergence = _compare(cfg, weights, prompts, out)
        wall["reference"] = time.perf_counter() - t0
    return out


def _compare(cfg, weights, prompts, res: GenerationNumerics):
    """Per-step logit errors and first divergence against the float64 reference."""
    from gpt_workload.reference import reference_forward

    errs, div = [], []
    for p, tok, z in zip(prompts, res.tokens, res.logits):
        seq = np.concatenate([p, tok[:-1]])[None]
        ref = reference_forward(cfg, weights, seq)[0, len(p) - 1 :]
        errs.append(np.abs(z.astype(np.float64) - ref).max(axis=1))
        bad = np.nonzero(ref.argmax(axis=1) != tok)[0]
        div.append(int(bad[0]) if bad.size else None)
    return errs, div
