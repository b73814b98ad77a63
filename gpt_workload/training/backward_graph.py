"""Training numerics of every family (GPT-2, GPT-J, Llama, Qwen2): forward and backward by
walking the family's op graph.

The layer sequence is the family's graph (:func:`gpt_workload.models.build_graph`), not a
copy of it: the forward runs :meth:`OpGraph.ops` one op at a time, the backward runs
:meth:`OpGraph.backward` (the forward ops reversed, a matrix op as its ``.grad_input`` and
``.grad_weight`` products, every other op as one ``.grad`` step), and each op kind has one
forward and one backward rule below. Operands live in an environment keyed by the graph's
operand names (one per layer, and one each for the prologue and the epilogue); an operand
read by several ops (GPT-J's LayerNorm output feeds Q, K, V and the MLP; every residual
stream feeds its norm and its add) gets the sum of their gradients, in the order the reversed
graph produces them.

Layout: token-major float32 ``[B*T, F]`` rows (row ``b*T + t`` is token ``t`` of sequence
``b``), every weight gradient a full sum over the rows in ascending order. Per op kind
(``N = B*T``)::

    embedding     x = wte[tok]                        dwte[tok] += dx (rows ascending)
    norm          LayerNorm (mean, rstd)              dx, dg (, db)       backward._layernorm*
                  RMSNorm x * rstd * g                dx, dg              kernels.rmsnorm_*
    linear        y = x @ W (+ b)                     dx = dy W^T; dW = x^T dy; db = sum dy
    lm_head       y = x @ W^T (+ b), W [V, d]         dx = dy W; dW = dy^T x; db = sum dy
    split         q | k | v column blocks            dx = [dq | dk | dv]
    rotary        RoPE by +theta_t                    rotation by -theta_t (orthogonal)
    attention     causal GQA, probabilities kept      dq; dk, dv summed over the query heads
                                                      sharing each K/V head (gqa_attention_bwd)
    activation    SiLU (swiglu_fwd with up = 1)       dx = dy silu'(x) (swiglu_bwd, up = 1)
                  GELU (exact or tanh, cfg)           dx = dy GELU'(x)
    mul           p = a * b (SwiGLU product)          da = dy b, db = dy a
    add           out = sum of inputs (residual)      each input += dy
    position_add  x + wpe[t] (learned positions)      dwpe[t] += dy; dx = dy

Loss: the mean next-token cross-entropy over ``B (T - 1)`` predictions
(:func:`gpt_workload.reference.cross_entropy`'s definition), fused with its gradient
``(softmax - onehot) * loss_scale / denominator`` (0 at ``t = T - 1``), as GPT-2's.

Precision: float32 arithmetic; with fp16/bf16 the weights are the fp32 master weights rounded
to the storage format and every activation and activation gradient stored between ops is
rounded (:func:`gpt_workload.precision.round_storage`) and checked by the health tracker;
kept in fp32: the logits, norm statistics, attention probabilities and weight gradients (as
GPT-2's). ``recompute=True`` keeps only each layer's input and re-runs the layer's forward in
the backward with the same kernels (bitwise the same gradients).

gpt2 runs through the same walk (its fused Q|K|V ``split``, ``position_add`` and tied head);
the row kernels of its ops are :mod:`gpt_workload.training.backward`'s. The tests hold the
gradients of every family against torch autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from gpt_workload import kernels as kl
from gpt_workload.config import GPTConfig
from gpt_workload.graph import BackwardOp, Op, OpGraph
from gpt_workload.health import HealthTracker, check_op_input, rows_locator
from gpt_workload.models import build_graph
from gpt_workload.models.weights import DecoderLayer, DecoderWeights
from gpt_workload.precision import Precision, check_precision, round_storage
from gpt_workload.training.backward import (
    _colsum,
    _cross_entropy_kernel,
    _gelu,
    _gelu_bwd,
    _gemm,
    _gemm_tn,
    _layernorm,
    _layernorm_bwd,
    _round_weights,
    check_tokens,
    grads_finite,
    zeros_like_weights,
)
from gpt_workload.weights import GPTWeights
from wse_sim.errors import ConfigError

__all__ = ["graph_forward_backward", "graph_forward_backward_sum", "zeros_like_decoder"]


def zeros_like_decoder(w: DecoderWeights) -> DecoderWeights:
    """A :class:`DecoderWeights` of float32 zeros with the fields and shapes of ``w``."""
    return _map_decoder(w, np.zeros_like)


def _map_decoder(w: DecoderWeights, fn) -> DecoderWeights:
    """``w`` with ``fn`` applied to every present array (absent fields stay ``None``)."""

    def f(a):
        return None if a is None else fn(a)

    layers = [DecoderLayer(**{x.name: f(getattr(lw, x.name)) for x in fields(DecoderLayer)})
              for lw in w.layers]  # fmt: skip
    return DecoderWeights(wte=f(w.wte), layers=layers, norm_f_g=f(w.norm_f_g),
                          norm_f_b=f(w.norm_f_b), lm_head_w=f(w.lm_head_w),
                          lm_head_b=f(w.lm_head_b))  # fmt: skip


@dataclass
class _Run:
    """Per-call constants and the storage rounding (see the module docstring)."""

    cfg: GPTConfig
    graph: OpGraph
    n_seq: int
    seq_len: int
    precision: str
    health: HealthTracker | None
    cos: np.ndarray | None
    sin: np.ndarray | None
    layer: int | None = None

    def r(self, x: np.ndarray, op: str) -> np.ndarray:
        """Round op ``op``'s stored output to the storage precision (a no-op copy for fp32)
        and check it with the health tracker, if any."""
        y = x if self.precision == Precision.FP32 else round_storage(x, self.precision)
        if self.health is not None:
            self.health.check(op, self.layer, y, rows_locator(self.seq_len), raw=x)
        return y

    def heads(self, op: Op) -> int:
        """Heads of a rotary op's operand (query heads ``H`` or K/V heads ``KV``)."""
        return self.graph.dims[op.attrs["heads"]]

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.cfg.d_head)


def _bias(owner: Any, op: Op) -> np.ndarray | None:
    return getattr(owner, op.params[1]) if len(op.params) > 1 else None


def _t(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


def _forward_op(run: _Run, op: Op, env: dict, owner: Any, saved: dict) -> None:
    """Compute ``op``'s outputs into ``env`` (stored, rounded, checked); what its backward
    needs besides its operands (norm statistics, attention probabilities) into ``saved``."""
    cfg, kind, layer = run.cfg, op.kind, run.layer
    x = [env[n] for n in op.inputs]
    p = [getattr(owner, n) for n in op.params]
    if kind == "embedding":
        out = p[0][x[0].reshape(-1)]
    elif kind == "position_add":
        out = (x[0].reshape(run.n_seq, run.seq_len, -1) + p[0][: run.seq_len]).reshape(x[0].shape)
    elif kind == "norm":
        check_op_input(run.health, op.name, layer, x[0], run.seq_len)
        if op.attrs["norm"] == "rmsnorm":
            out, rstd = kl.rmsnorm_fwd(x[0], p[0], op.attrs["eps"])
            saved[op.name] = (rstd,)
        else:
            out, mean, rstd = _layernorm(x[0], p[0], p[1], np.float32(op.attrs["eps"]))
            saved[op.name] = (mean, rstd)
    elif kind == "linear":
        out = _gemm(x[0], p[0], _bias(owner, op))
    elif kind == "lm_head":  # fp32 accumulators, not rounded
        env[op.outputs[0]] = _gemm(x[0], _t(p[0]), _bias(owner, op))
        return
    elif kind == "split":
        dims = run.graph.dims
        edges = np.cumsum([0] + [dims[s] for s in op.attrs["sizes"]])
        for name, a, b in zip(op.outputs, edges[:-1], edges[1:], strict=True):
            env[name] = np.ascontiguousarray(x[0][:, a:b])
        return
    elif kind == "rotary":
        a = op.attrs
        out = kl.rotary_fwd(x[0], run.seq_len, run.heads(op), a["rotary_dim"], a["interleaved"],
                            run.cos, run.sin)  # fmt: skip
    elif kind == "attention":
        _check_scores(run, op, *x)
        out, probs = kl.gqa_attention_fwd(*x, run.seq_len, cfg.n_head, int(cfg.n_kv_heads),
                                          run.scale)  # fmt: skip
        saved[op.name] = (probs,)
    elif kind == "activation":
        if op.attrs["fn"] == "silu":
            out = kl.swiglu_fwd(x[0], np.ones_like(x[0]))
        else:
            out = _gelu(x[0], op.attrs["fn"] != "gelu")
    elif kind == "mul":
        out = np.multiply(x[0], x[1], dtype=np.float32)
    elif kind == "add":
        out = x[0] + x[1]
        for extra in x[2:]:
            out = out + extra
    else:  # pragma: no cover - OP_KINDS is closed
        raise ConfigError(f"op {op.name}: kind {kind!r} has no training numerics")
    env[op.outputs[0]] = run.r(np.ascontiguousarray(out, dtype=np.float32), op.name)


def _check_scores(run: _Run, op: Op, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    """fp32 overflow check of the QK^T scores, K/V heads repeated to their query heads."""
    if run.health is None:
        return
    cfg = run.cfg
    dh, n_kv = cfg.d_head, int(cfg.n_kv_heads)
    qh = q.reshape(run.n_seq, run.seq_len, cfg.n_head, dh).transpose(0, 2, 1, 3)
    kh = k.reshape(run.n_seq, run.seq_len, n_kv, dh).transpose(0, 2, 1, 3)
    kh = np.repeat(kh, cfg.n_head // n_kv, axis=1)
    run.health.check_scores(op.name, run.layer, qh, kh, run.seq_len)


def _add_grad(run: _Run, grads: dict, name: str, g: np.ndarray, op: str) -> None:
    """Accumulate gradient ``g`` of operand ``name`` (each contribution and each sum
    stored, i.e. rounded to the storage precision)."""
    g = run.r(g, f"{op}_bwd")
    grads[name] = g if name not in grads else run.r(grads[name] + g, f"{name}_grad_sum")


def _add_param(gowner: Any, name: str, g: np.ndarray) -> None:
    """Add a weight gradient (fp32) into the gradient container (a tied head and the
    embedding both add into ``wte``)."""
    acc = getattr(gowner, name)
    acc += g.reshape(acc.shape)


def _backward_op(run: _Run, bop: BackwardOp, env: dict, grads: dict, owner: Any, gowner: Any,
                 saved: dict, tokens: np.ndarray) -> None:  # fmt: skip
    """Run one backward step of the graph: reads the gradient of the forward op's output
    from ``grads``, adds its inputs' gradients there and its weight gradients to ``gowner``."""
    op, kind = bop.forward, bop.forward.kind
    part = bop.name.rsplit(".", 1)[1]
    x = [env[n] for n in op.inputs]
    p = [getattr(owner, n) for n in op.params]
    dy = grads[op.outputs[0]] if kind != "split" else None
    name = op.name
    if kind in ("linear", "lm_head"):
        head = kind == "lm_head"
        if part == "grad_input":
            dx = _gemm(dy, p[0]) if head else _gemm(dy, _t(p[0]))
            _add_grad(run, grads, op.inputs[0], dx, name)
        else:
            _add_param(gowner, op.params[0], _gemm_tn(dy, x[0]) if head else _gemm_tn(x[0], dy))
            if len(op.params) > 1:
                _add_param(gowner, op.params[1], _colsum(dy))
    elif kind == "embedding":
        dwte = np.zeros_like(getattr(gowner, op.params[0]))
        np.add.at(dwte, tokens.reshape(-1), dy)  # rows ascending
        _add_param(gowner, op.params[0], dwte)
    elif kind == "position_add":  # d(x + wpe)/dx = 1: the gradient of x is dy, unchanged
        d = dy.reshape(run.n_seq, run.seq_len, -1).sum(axis=0, dtype=np.float32)
        dwpe = np.zeros_like(getattr(gowner, op.params[0]))
        dwpe[: run.seq_len] = d
        _add_param(gowner, op.params[0], dwpe)
    elif kind == "norm":
        if op.attrs["norm"] == "rmsnorm":
            dx, dg = kl.rmsnorm_bwd(dy, x[0], p[0], *saved[name])
        else:
            dx, dg, db = _layernorm_bwd(dy, x[0], p[0], *saved[name])
            _add_param(gowner, op.params[1], db)
        _add_param(gowner, op.params[0], dg)
        _add_grad(run, grads, op.inputs[0], dx, name)
    elif kind == "split":
        parts = [grads.get(o) for o in op.outputs]
        parts = [np.zeros_like(env[o]) if g is None else g for o, g in zip(op.outputs, parts,
                                                                           strict=True)]
        _add_grad(run, grads, op.inputs[0], np.concatenate(parts, axis=1), name)
    elif kind == "rotary":
        a = op.attrs
        dx = kl.rotary_bwd(dy, run.seq_len, run.heads(op), a["rotary_dim"], a["interleaved"],
                           run.cos, run.sin)  # fmt: skip
        _add_grad(run, grads, op.inputs[0], dx, name)
    elif kind == "attention":
        cfg = run.cfg
        dq, dk, dv = kl.gqa_attention_bwd(dy, *x, *saved[name], run.seq_len, cfg.n_head,
                                          int(cfg.n_kv_heads), run.scale)  # fmt: skip
        for operand, g in zip(op.inputs, (dq, dk, dv), strict=True):
            _add_grad(run, grads, operand, g, name)
    elif kind == "activation":
        if op.attrs["fn"] == "silu":
            dx, _ = kl.swiglu_bwd(dy, x[0], np.ones_like(x[0]))
        else:
            dx = _gelu_bwd(x[0], dy, op.attrs["fn"] != "gelu")
        _add_grad(run, grads, op.inputs[0], dx, name)
    elif kind == "mul":
        _add_grad(run, grads, op.inputs[0], np.multiply(dy, x[1], dtype=np.float32), name)
        _add_grad(run, grads, op.inputs[1], np.multiply(dy, x[0], dtype=np.float32), name)
    elif kind == "add":
        for operand in op.inputs:
            _add_grad(run, grads, operand, dy, name)
    else:  # pragma: no cover - OP_KINDS is closed
        raise ConfigError(f"op {name}: kind {kind!r} has no backward")


def _round_decoder(w: DecoderWeights, precision: str) -> DecoderWeights:
    """The master weights rounded to the storage precision (C-contiguous float32 copies)."""
    return _map_decoder(w, lambda a: round_storage(np.ascontiguousarray(a, np.float32),
                                                   precision))  # fmt: skip


def _layer_forward(run: _Run, lw: DecoderLayer, h: np.ndarray) -> tuple[dict, dict]:
    """One layer's forward from its input ``h``: ``(env, saved)``; ``env["out"]`` is the
    layer's output."""
    env, saved = {"x": h}, {}
    for op in run.graph.layer:
        _forward_op(run, op, env, lw, saved)
    return env, saved


def _steps(graph: OpGraph, batch: int, seq_len: int):
    """The graph's backward ops (:meth:`OpGraph.backward`), each with its layer index (None
    outside layers) and scope (``"prologue"``, ``"layer"``, ``"epilogue"``)."""
    bops = graph.backward(batch, seq_len)
    j = 0
    n_pro, n_lay = len(graph.prologue), len(graph.layer) * graph.cfg.n_layer
    for pos, (layer, op) in reversed(list(enumerate(graph.ops()))):
        scope = "prologue" if pos < n_pro else ("layer" if pos < n_pro + n_lay else "epilogue")
        while j < len(bops) and bops[j].forward is op:
            yield layer, scope, bops[j]
            j += 1
    if j != len(bops):  # pragma: no cover - OpGraph.backward mirrors ops()
        raise ConfigError(f"backward op {bops[j].name} does not follow the forward graph")


def graph_forward_backward_sum(
    cfg: GPTConfig,
    weights: DecoderWeights,
    tokens: Any,
    precision: str = "fp32",
    loss_scale: float = 1.0,
    recompute: bool = False,
    denominator: int | None = None,
    health: HealthTracker | None = None,
) -> tuple[float, DecoderWeights, bool]:
    """Loss and gradients of a model of any family on one batch, the loss normalised by
    ``denominator`` (``B * (T - 1)`` by default: the mean; gradient accumulation passes the
    full batch's count so that the micro-batch gradients add up).

    Args:
        cfg: a configuration of any family (``gpt2``, ``gptj``, ``llama``, ``qwen2``).
        weights: fp32 master :class:`DecoderWeights` (``GPTWeights`` for gpt2), validated,
            used rounded to ``precision``.
        tokens: integer ``[B, T]`` ids in ``[0, vocab_size)``, ``2 <= T <= n_positions``.
        precision: storage precision ``fp32``, ``fp16`` or ``bf16`` (arithmetic fp32).
        loss_scale: multiplier of the loss before backward (finite > 0).
        recompute: keep only each layer's input and recompute its forward in backward.
        denominator: the loss is ``sum(CE) / denominator`` (default ``B * (T - 1)``).
        health: checks every stored tensor, phase ``forward`` then ``backward``.

    Returns:
        ``(loss_part, grads, finite)``: ``sum(CE) / denominator`` (unscaled, float64 sum),
        the fp32 gradients of ``loss_part * loss_scale`` as a :class:`DecoderWeights`
        (``wte`` holds the embedding's and a tied head's gradient), and whether all are
        finite.

    Raises:
        ConfigError: bad ``tokens``, ``precision``, ``loss_scale`` or ``denominator``, or a
            config its family does not support (one line naming it).
        CheckpointError: weights that do not match ``cfg`` or hold NaN/Inf.
    """
    check_precision(precision)
    tok = check_tokens(cfg, tokens)
    gpt2 = cfg.family == "gpt2"
    if not isinstance(weights, GPTWeights if gpt2 else DecoderWeights):
        raise ConfigError(
            f"weights are a {type(weights).__name__}: family {cfg.family} trains "
            + ("GPTWeights" if gpt2 else "DecoderWeights (gpt_workload.models.weights)")
        )
    weights.validate(cfg)
    ls = float(loss_scale) if not isinstance(loss_scale, bool) else float("nan")
    if not (math.isfinite(ls) and ls > 0):
        raise ConfigError(f"loss_scale={loss_scale!r} must be a finite number > 0")
    n_seq, seq_len = tok.shape
    denom = n_seq * (seq_len - 1) if denominator is None else int(denominator)
    if denom < 1:
        raise ConfigError(f"denominator={denominator!r} must be a positive integer")
    graph = build_graph(cfg)
    cos = sin = None
    if cfg.rotary_dim:
        cos, sin = kl.rotary_tables_f32(seq_len, cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)
    run = _Run(cfg, graph, n_seq, seq_len, precision, health, cos, sin)
    w = _round_weights(weights, precision) if gpt2 else _round_decoder(weights, precision)
    if health is not None:
        health.phase = "forward"
    # ---- forward ----
    pro: dict = {"tokens": tok}
    saved_top: dict = {}
    for op in graph.prologue:
        _forward_op(run, op, pro, w, saved_top)
    h = pro["x"]
    layers: list[tuple[dict, dict]] = []
    for run.layer, lw in enumerate(w.layers):
        env, saved = _layer_forward(run, lw, h)
        h = env["out"]
        layers.append(({"x": env["x"]}, {}) if recompute else (env, saved))
    run.layer = None
    epi: dict = {"x": h}
    for op in graph.epilogue:
        _forward_op(run, op, epi, w, saved_top)
    logits = epi["logits"]
    if health is not None:
        health.check("lm_head", None, logits, rows_locator(seq_len))
        health.phase = "backward"
    loss_rows = np.empty(n_seq * seq_len, dtype=np.float64)
    dlogits = np.empty_like(logits)
    _cross_entropy_kernel(logits, tok, np.float32(ls / denom), loss_rows, dlogits)
    loss = float(loss_rows.sum() / denom)
    # ---- backward: the graph's backward ops, last forward op first ----
    gw = zeros_like_weights(w) if gpt2 else zeros_like_decoder(w)
    grads: dict = {"logits": run.r(dlogits, "cross_entropy_bwd")}
    del logits, dlogits
    scope_env: dict = {"epilogue": (epi, grads)}
    cur = None
    for layer, scope, bop in _steps(graph, n_seq, seq_len):
        if scope == "layer" and layer != cur:  # entering layer `layer` from above
            dout = scope_env.pop("epilogue" if cur is None else "layer")[1]["x"]
            env, saved = layers[layer]
            run.layer = cur = layer
            if recompute:
                env, saved = _layer_forward(run, w.layers[layer], env["x"])
            scope_env["layer"] = (env, {"out": dout})
            layers[layer] = ({}, {})
            owner, gowner = w.layers[layer], gw.layers[layer]
        elif scope == "prologue" and "prologue" not in scope_env:
            dx = scope_env.pop("layer" if cur is not None else "epilogue")[1]["x"]
            run.layer = None
            scope_env["prologue"] = (pro, {"x": dx})
        env, g = scope_env[scope]
        if scope != "layer":
            owner, gowner, saved = w, gw, saved_top
        _backward_op(run, bop, env, g, owner, gowner, saved, tok)
    return loss, gw, grads_finite(gw)


def graph_forward_backward(
    cfg: GPTConfig,
    weights: DecoderWeights,
    tokens: Any,
    precision: str = "fp32",
    loss_scale: float = 1.0,
    recompute: bool = False,
) -> tuple[float, DecoderWeights, bool]:
    """Mean next-token loss and gradients of one batch (:func:`graph_forward_backward_sum`
    with the default denominator ``B * (T - 1)``); same arguments, result and errors."""
    return graph_forward_backward_sum(cfg, weights, tokens, precision, loss_scale, recompute)
