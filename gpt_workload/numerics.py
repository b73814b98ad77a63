"""Numerics of a Program: its kernels run on real weights and tokens, per-PE layout and all.

:func:`run_numerics` walks the kernels of the Program's first micro-batch in order and, for
each, calls the Numba kernel of its op (:mod:`gpt_workload.kernels`) on tile arrays laid out
as the lowering placed the data (``[segment, PE in segment, token, feature slice]``,
:class:`gpt_workload.mappings.weight_streaming.layout.TileLayout`), with the lowering's ``P`` (PEs
per segment) and
``m`` (tokens per segment); with heads split over several PEs (``P > n_head``) attention
computes each PE's partial ``q . k`` and chains them along the head
(:mod:`gpt_workload.kernels.split_heads`). Between kernels every stored tensor is rounded to
the storage precision (fp16/bf16 storage, fp32 arithmetic and accumulation), weights once up
front; the logits are the LM head's fp32 accumulators.

Every stored tensor is checked by a :class:`gpt_workload.health.HealthTracker` (op, layer,
position of the first value that leaves the format's range or is not finite; the fp32
reductions inside LayerNorm and attention scores, checked on their inputs); the caller
decides whether non-finite logits are an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpt_workload import kernels as kn
from gpt_workload.checks import check_token_ids
from gpt_workload.config import GPTConfig
from gpt_workload.health import HealthTracker, tile_locator
from gpt_workload.kernels.split_heads import attention_split_tiled
from gpt_workload.mappings.weight_streaming.head_split import pes_per_head
from gpt_workload.mappings.weight_streaming.layout import TileLayout, qkv_column_permutation
from gpt_workload.precision import round_storage
from gpt_workload.weights import GPTWeights
from wse_sim.errors import ConfigError
from wse_sim.program import Program


@dataclass
class NumericsResult:
    """Outputs of the simulated wafer for the checked sequences.

    Attributes:
        logits: float32 [K, T, V].
        loss_per_token: float32 [K, T] (position T-1 has no target and is 0).
        loss: mean next-token cross-entropy over K x (T - 1) positions; None when T = 1
            (no position has a target).
        predictions: int64 [K, T], argmax of the logits (next-token predictions).
        kernels_run: number of kernel invocations.
        health: the :class:`gpt_workload.health.HealthTracker` that checked every stored
            tensor (weights and each op's output), or None.
    """

    logits: np.ndarray
    loss_per_token: np.ndarray
    loss: float | None
    predictions: np.ndarray
    kernels_run: int
    health: HealthTracker | None = None


class _Weights:
    """Weights rounded to the storage precision and laid out for the kernels (cached)."""

    def __init__(self, cfg: GPTConfig, w: GPTWeights, precision: str, P: int, ff_pad: int):
        r = lambda a: round_storage(np.ascontiguousarray(a, dtype=np.float32), precision)  # noqa
        # heads split over k PEs (P = k n_head): n_head k sub-heads of d_head / k features
        ks = pes_per_head(cfg, P)
        perm = qkv_column_permutation(cfg.n_head * ks, cfg.d_head // ks, P)
        self.perm = perm
        self.wte = r(w.wte)
        self.wpe = r(w.wpe)
        self.wte_t = self.wte.T  # [d, V] streamed (a view: BLAS reads it transposed)
        self.layers = []
        for lw in w.layers:
            fc_w, fc_b, fc2_w = lw.fc_w, lw.fc_b, lw.fc2_w
            if ff_pad:  # d_ff not divisible by P
                fc_w = np.pad(fc_w, ((0, 0), (0, ff_pad)))
                fc_b = np.pad(fc_b, (0, ff_pad))
                fc2_w = np.pad(fc2_w, ((0, ff_pad), (0, 0)))
            self.layers.append(
                {
                    "ln_1_g": r(lw.ln_1_g),
                    "ln_1_b": r(lw.ln_1_b),
                    "attn_w": r(lw.attn_w[:, perm]),
                    "attn_b": r(lw.attn_b[perm]),
                    "proj_w": r(lw.proj_w),
                    "proj_b": r(lw.proj_b),
                    "ln_2_g": r(lw.ln_2_g),
                    "ln_2_b": r(lw.ln_2_b),
                    "fc_w": r(fc_w),
                    "fc_b": r(fc_b),
                    "fc2_w": r(fc2_w),
                    "fc2_b": r(lw.fc2_b),
                }
            )
        self.ln_f_g, self.ln_f_b = r(w.ln_f_g), r(w.ln_f_b)


def _heads_qk(
    qkv: np.ndarray, tl: TileLayout, d_head: int, ks: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Queries and keys of QKV tiles ``[S, P, m, 3 hp dh]`` (PE ``j`` holds heads
    ``j hp .. j hp + hp - 1``, columns ``[q | k | v]`` of its heads,
    :func:`gpt_workload.mappings.weight_streaming.layout.qkv_column_permutation`) as ``[K, H,
    T_pad, dh]`` arrays;
    with heads split over ``ks`` PEs, PE ``j`` holds features ``(j % ks) dh/ks ..`` of head
    ``j // ks`` (:func:`gpt_workload.kernels.split_heads.attention_split_tiled`)."""
    S, P, m, w = qkv.shape
    K, segs = S // tl.segs_per_seq, tl.segs_per_seq
    if ks > 1:
        a = qkv.reshape(K, segs, P // ks, ks, m, 3, d_head // ks)
        a = a.transpose(5, 0, 2, 1, 4, 3, 6)  # [3, K, H, segs, m, ks, dh / ks]
        a = a.reshape(3, K, P // ks, segs * m, d_head)
        return a[0], a[1]
    hp = w // (3 * d_head)
    a = qkv.reshape(K, segs, P, m, 3, hp, d_head)
    a = a.transpose(4, 0, 2, 5, 1, 3, 6)  # [3, K, P, hp, segs, m, dh]
    a = a.reshape(3, K, P * hp, segs * m, d_head)
    return a[0], a[1]


def check_tokens(program: Program, cfg: GPTConfig, tokens) -> np.ndarray:
    """``tokens`` as int64 ``[K, T]`` after checking them against the run.

    Raises:
        ConfigError: not a 2-D int array, ``T`` not the Program's ``seq_len``, or ids outside
            ``0 .. vocab_size - 1``.
    """
    tokens = check_token_ids(tokens, vocab_size=cfg.vocab_size)
    T = tokens.shape[1]
    if T != program.workload.seq_len:
        raise ConfigError(
            f"tokens has length T={T}: must be the run's seq_len={program.workload.seq_len}"
        )
    return tokens


def run_numerics(
    program: Program,
    cfg: GPTConfig,
    weights: GPTWeights,
    tokens: np.ndarray,
    precision: str | None = None,
    *,
    gemm=None,
    attention=None,
    kv_out: list | None = None,
) -> NumericsResult:
    """Run the Program's first micro-batch kernels on ``tokens`` [K, T].

    The per-PE layout is the Program's (``P`` and ``m`` from ``program.layout``) with
    ``K`` sequences instead of the micro-batch's ``b``.

    ``gemm`` and ``attention`` replace :func:`kernels.gemm_ws` and
    :func:`kernels.attention_tiled` (same signatures) with a mapping's own reduction order
    (:mod:`gpt_workload.mappings.weight_streaming`); None keeps the weight-streaming kernels.

    The result's ``health`` tracker has checked the weights and every op's stored output.

    ``kv_out``: a list to which each layer's keys and values are appended as a pair of
    float32 ``[K, T, d]`` arrays (the QKV GEMM's stored K and V columns in the original head
    order): the KV cache a prefill leaves behind (:mod:`gpt_workload.generation`).

    Raises:
        ConfigError: tokens of the wrong shape, dtype or range.
    """
    precision = precision or program.precision
    tokens = check_tokens(program, cfg, tokens)
    K, T = tokens.shape
    P, m = program.layout.pes_per_segment, program.layout.tokens_per_segment
    tl = TileLayout(n_seq=K, seq_len=T, m=m, P=P)
    d, V = cfg.d_model, cfg.vocab_size
    ff = tl.padded_width(cfg.d_ff)
    W = _Weights(cfg, weights, precision, P, ff - cfg.d_ff)
    health = HealthTracker(precision, "weights")
    health.check_weights(weights)
    health.phase = "forward"
    loc = tile_locator(tl.segs_per_seq, m, T)

    def rnd(a, op, layer):
        return health.store(op, layer, a, loc)

    no_bias = np.zeros(0, dtype=np.float32)
    ks = pes_per_head(cfg, P)  # PEs per head (1: whole heads per PE)
    hp_dh = max(cfg.n_head // P, 1) * cfg.d_head // ks
    scale = 1.0 / np.sqrt(cfg.d_head)
    approx = cfg.activation != "gelu"

    seq = {"segs_per_seq": tl.segs_per_seq, "seq_len": T}
    x = tl.empty_tiles(d)
    h = tl.empty_tiles(d)
    y = tl.empty_tiles(d)
    qkv = tl.empty_tiles(3 * d)
    att = tl.empty_tiles(d)
    hid = tl.empty_tiles(ff)
    logits_t = None
    loss_tok = pred = None
    n_run = 0
    gemm_fn = gemm or kn.gemm_ws
    attention_fn = attention or kn.attention_tiled
    for k in program.kernels:
        if k.micro_batch != 0:
            break
        lw = W.layers[k.layer] if 0 <= k.layer < cfg.n_layer else None
        op = k.op
        if op == "embedding":
            kn.embed_tiled(tokens, W.wte, W.wpe, m, P, x)
            x = rnd(x, op, None)
        elif op in ("layernorm_1", "layernorm_2", "layernorm_f"):
            g, b = (
                (lw["ln_1_g"], lw["ln_1_b"])
                if op == "layernorm_1"
                else (lw["ln_2_g"], lw["ln_2_b"])
                if op == "layernorm_2"
                else (W.ln_f_g, W.ln_f_b)
            )
            ln_layer = k.layer if lw is not None else None
            health.check_norm_input(op, ln_layer, x, (1, 3), loc)
            kn.layernorm_tiled(x, g, b, cfg.layer_norm_eps, h, **seq)
            h = rnd(h, op, ln_layer)
        elif op == "qkv":
            gemm_fn(h, lw["attn_w"], lw["attn_b"], qkv, **seq)
            qkv = rnd(qkv, op, k.layer)
            if kv_out is not None:
                full = tl.from_tiles(qkv, 3 * d)[..., np.argsort(W.perm)]
                kv_out.append((full[..., d : 2 * d].copy(), full[..., 2 * d :].copy()))
        elif op == "attention":
            health.check_scores(op, k.layer, *_heads_qk(qkv, tl, cfg.d_head, ks), T)
            if ks > 1 and attention is None:  # partial q.k per PE, chained over the head
                attention_split_tiled(qkv, tl, cfg.n_head, cfg.d_head, scale, att)
            else:
                attention_fn(qkv, tl.segs_per_seq, T, scale, att, d_head=cfg.d_head)
            att = rnd(att, op, k.layer)
            assert att.shape[-1] == hp_dh
        elif op == "attn_proj":
            gemm_fn(att, lw["proj_w"], lw["proj_b"], y, **seq)
            y = rnd(y, op, k.layer)
        elif op in ("residual_1", "residual_2"):
            kn.add_tiled(x, y, x)
            x = rnd(x, op, k.layer)
        elif op == "ffn_up":
            gemm_fn(h, lw["fc_w"], lw["fc_b"], hid, **seq)
            hid = rnd(hid, op, k.layer)
        elif op == "gelu":
            kn.gelu_tiled(hid, approx, hid)
            hid = rnd(hid, op, k.layer)
        elif op == "ffn_down":
            gemm_fn(hid, lw["fc2_w"], lw["fc2_b"], y, **seq)
            y = rnd(y, op, k.layer)
        elif op == "lm_head":
            logits_t = tl.empty_tiles(V, pad_to=tl.padded_width(V))
            gemm_fn(h, W.wte_t, no_bias, logits_t, **seq)
            health.check(op, None, logits_t, loc)  # fp32 accumulators, not rounded
        elif op == "cross_entropy":
            loss_tok, pred = kn.cross_entropy_tiled(logits_t, V, tokens, tl.segs_per_seq, m)
        else:  # pragma: no cover - a lowering added an op without numerics
            raise NotImplementedError(f"no numerics for op {op!r}")
        n_run += 1
    logits = tl.from_tiles(logits_t, V)
    # a 1-token sequence has no next-token target: no loss (None), not a NaN
    loss = float(loss_tok[:, :-1].astype(np.float64).mean()) if T > 1 else None
    return NumericsResult(logits, loss_tok, loss, pred, n_run, health)
