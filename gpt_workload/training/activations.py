"""Per-PE SRAM of a training step's activations, read off the op graph.

Every family's layer is walked from :func:`gpt_workload.models.build_graph` (no layer is
spelled out here), on the weight-streaming segment layout (``P`` PEs per segment, ``m``
tokens per segment; an activation of ``w`` features takes ``m x ceil(w / P)`` elements per
PE at ``s`` bytes). Three things are derived:

**What the backward keeps** (:func:`layer_memory`). The backward of an op reads:
a linear or the LM head its input (``dW = X^T dY``; ``dX = dY W^T`` needs no activation);
attention its ``q, k, v`` and its output (the softmax is recomputed from them, as
FlashAttention's backward does, with one fp32 log-sum-exp per head and token);
a norm, an activation and a product their inputs; rotary, residual adds and splits nothing
(linear maps of their gradient). Of those tensors, the output of an element-wise op (norm,
activation, product, rotary) whose inputs are all kept or themselves recomputable is *not
kept*: the backward recomputes it on the fly where it is read (a norm from its kept input
and its per-token statistics, 2 fp32 for LayerNorm and 1 for RMSNorm; GELU/SiLU and the
SwiGLU product from their inputs) and that recomputation's vector passes are timed
(``*.recompute_bwd`` kernels). The rest is *kept*.

**Audit against the real machine** (published: batch 99 of a 7B model at 2,048 tokens in
one pass on a CS-2). The earlier accounting (a closed form for GPT-2's layer) over-counted:

1. it kept both the inputs and the outputs of element-wise ops: the LayerNorm outputs
   (``2 m d/P``) and GELU's output (``m d_ff/P``), which the dataflow backward recomputes
   from kept tensors when it reads them: ``8 m d/P + 2 m d_ff/P`` became, for GPT-2,
   ``6 m d/P + m d_ff/P`` (``x, q, k, v``, attention output, ``x + attn``, GELU input);
2. it added the forward's peak working set (the widest forward kernel's temporaries, which
   *are* the layer's activations) on top of the stored layer in the backward, counting the
   same tensors twice; now each phase (forward, recomputed forward, backward, LM head) has
   its own peak from a liveness pass, and the need is the largest phase plus what is held
   across phases (checkpoints or kept sets of the other layers);
3. it held every gradient as a new buffer; an element-wise backward (norm, activation,
   residual, rotary) writes its input's gradient over its output's (same size, consumed
   there), and gradients die when consumed;
4. it kept every layer-input checkpoint on the wafer: ``n_layer x b T d x 2`` bytes, 53 GB for
   a 6.7B model at 99 x 2,048 tokens, more than the CS-2's 40 GB of SRAM, so the published
   run cannot hold them there either: with ``offload`` they stream to MemoryX
   (:mod:`gpt_workload.training.lowering`).

Phase peaks count, per op, the per-PE bytes of the operands live across it (produced at or
before it, read at or after it), a GEMM's fp32 accumulator chunk (``m x 64`` values and a
double-buffered weight row piece) and attention's working K/V heads and score row; the
weight buffers (``io.weight_buffer_slots`` blocks spread over every PE) are added by the
caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpt_workload.config import GPTConfig
from gpt_workload.graph import Op, OpGraph, lifetimes
from gpt_workload.mappings.weight_streaming.head_split import pes_per_head, score_receive_bytes
from gpt_workload.models import build_graph

__all__ = ["ACC_BYTES", "LayerMemory", "backward_reads", "layer_memory", "recomputable"]

ACC_BYTES = 4  # fp32 accumulators
#: GEMM accumulator chunk (columns) assumed by the SRAM accounting (as the layout planner)
MIN_CHUNK = 64
#: element-wise kinds whose output the backward may recompute from kept inputs
RECOMPUTE_KINDS = ("norm", "activation", "mul", "rotary")
#: kinds whose backward writes the input gradient over the output gradient
IN_PLACE_KINDS = ("norm", "activation", "mul", "rotary", "add", "split")
#: fp32 per-token statistics a recomputed norm keeps (mean and 1/std; RMSNorm 1/rms)
NORM_STATS = {"layernorm": 2, "rmsnorm": 1}


def backward_reads(op: Op) -> tuple[str, ...]:
    """Activation operands the backward of ``op`` reads (module docstring)."""
    if op.kind in ("linear", "lm_head"):
        return op.inputs[:1]
    if op.kind == "attention":
        return (*op.inputs, *op.outputs)
    if op.kind in ("norm", "activation", "mul"):
        return op.inputs
    return ()


def recomputable(ops: tuple[Op, ...]) -> dict[str, Op]:
    """``{tensor: producing op}`` of the element-wise outputs the backward recomputes: an op
    of :data:`RECOMPUTE_KINDS` whose inputs are all available (read by some backward, i.e.
    kept, or recomputable themselves), in forward order."""
    read = {t for op in ops for t in backward_reads(op)}
    out: dict[str, Op] = {}
    for op in ops:
        if op.kind in RECOMPUTE_KINDS and all(i in read or i in out for i in op.inputs):
            for o in op.outputs:
                out[o] = op
    return out


@dataclass(frozen=True)
class LayerMemory:
    """Per-PE activation bytes of one layer (and the head) at one layout.

    Attributes:
        kept: tensors the backward reads that are stored (module docstring), by name.
        recomputed: ``{tensor: producing op name}`` recomputed in the backward.
        kept_bytes: bytes of ``kept`` plus the recomputed norms' statistics.
        ckpt_bytes: the layer's input ``x`` (``m x ceil(d / P)`` elements): a checkpoint.
        fwd_peak: forward working peak of the layer (nothing kept beyond the layer).
        fwd_keep_peak: the same with the kept tensors held to the end of the layer.
        bwd_peak: backward working peak (kept tensors until their last use, live
            gradients, the residual gradient, working buffers).
        head_peak: LM head phase (final norm, logits chunk, cross-entropy statistics,
            gradients).
        bwd_live: ``{op name: bytes}`` live during each op's backward without its working
            buffers (accumulator chunk, attention's K/V blocks), for the kernels' chunk sizes.
    """

    kept: tuple[str, ...]
    recomputed: dict[str, str]
    kept_bytes: int
    ckpt_bytes: int
    fwd_peak: int
    fwd_keep_peak: int
    bwd_peak: int
    head_peak: int
    bwd_live: dict[str, int]


def _sizes(g: OpGraph, P: int, m: int, s: int) -> dict[str, int]:
    """Per-PE bytes of every activation operand of the layer and the epilogue."""
    dims = g.dims
    out = {}
    for name, shape in g._operand_shapes():
        if len(shape) >= 3:
            out[name] = m * math.ceil(dims[shape[-1]] / P) * s
    return out


def _acc(m: int, N: int, s: int) -> int:
    c = min(MIN_CHUNK, N)
    return m * c * ACC_BYTES + 2 * c * s


def layer_memory(cfg: GPTConfig, P: int, hp: int, m: int, s: int) -> LayerMemory:
    """Activation SRAM of one layer of ``cfg`` at ``P`` PEs per segment (``hp`` query heads
    per PE), ``m`` tokens per segment and ``s`` bytes per element (module docstring)."""
    g = build_graph(cfg)
    ops = g.layer
    dims = g.dims
    size = _sizes(g, P, m, s)
    rec = recomputable(ops)
    read = [t for op in ops for t in backward_reads(op)]
    kept = tuple(dict.fromkeys(t for t in read if t not in rec))
    stats = sum(
        m * NORM_STATS[op.attrs["norm"]] * ACC_BYTES for op in ops
        if op.kind == "norm" and op.outputs[0] in rec and op.outputs[0] in read
    )  # fmt: skip
    kept_bytes = sum(size[t] for t in kept) + stats
    group = cfg.n_head // int(cfg.n_kv_heads)
    k = pes_per_head(cfg, P)
    # K/V features of the PE: its whole (grouped) heads, or d_head / k of one split head
    # (the forward's own accounting, gpt_workload.mappings.weight_streaming.plan._sram_need); a split head also
    # holds the partial scores of the key block it receives
    kv_feat = math.ceil(hp / group) * cfg.d_head if k == 1 else math.ceil(cfg.d_head / k)
    kv_work = m * 2 * kv_feat * s
    att_work = 2 * kv_work + m * m * ACC_BYTES + 3 * m * ACC_BYTES + score_receive_bytes(m, k)

    def extra(op: Op) -> int:
        if op.kind in ("linear", "lm_head"):
            return _acc(m, dims[op.attrs["n_out"]], s)
        if op.kind == "attention":
            return att_work
        return 0

    def src(t: str) -> list[str]:
        """Kept tensors a read of ``t`` really touches (through recomputation)."""
        if t not in rec:
            return [t]
        return [u for i in rec[t].inputs for u in src(i)]

    # ---- forward liveness (with or without the kept tensors held to the end)
    def forward(keep: bool) -> int:
        born, last = lifetimes(ops)
        if keep:
            for t in kept:
                last[t] = len(ops)
        peak = 0
        for i, op in enumerate(ops):
            live = sum(size.get(n, 0) for n in born if born[n] <= i <= last.get(n, born[n]))
            peak = max(peak, live + extra(op) + (stats if keep else 0))
        return peak

    # ---- backward liveness
    uses: dict[str, int] = {}
    for op in ops:
        for t in backward_reads(op):
            for u in src(t):
                uses[u] = uses.get(u, 0) + 1
    grads = {"out": size["out"]}
    bwd = 0
    bwd_live: dict[str, int] = {}
    for op in reversed(ops):
        held = sum(size[t] for t in kept if uses.get(t, 0) > 0) + stats
        cur = sum(grads.values())
        new = {i: size.get(i, 0) for i in op.inputs if i not in grads and i in size}
        consumed = sum(grads.get(o, 0) for o in op.outputs)
        if op.kind in IN_PLACE_KINDS:
            add = max(sum(new.values()) - consumed, 0)
        else:
            # attention also holds the fp32 dK/dV partials of the K/V block in flight
            dkv = kv_work * ACC_BYTES // s if op.kind == "attention" else 0
            add = sum(new.values()) + extra(op) + dkv
        bwd = max(bwd, held + cur + add)
        bwd_live[op.name] = held + cur + sum(new.values())
        for o in op.outputs:
            grads.pop(o, None)
        grads.update(new)
        for t in backward_reads(op):
            for u in src(t):
                uses[u] -= 1
    # ---- LM head: x, the final norm's output, the logits chunk and the CE statistics, then
    # the gradients of both
    x = size["x"]
    head = 2 * x + _acc(m, cfg.vocab_size, s) + 4 * m * ACC_BYTES + 2 * x
    return LayerMemory(
        kept=kept,
        recomputed={t: op.name for t, op in rec.items()},
        kept_bytes=kept_bytes,
        ckpt_bytes=x,
        fwd_peak=forward(False),
        fwd_keep_peak=forward(True),
        bwd_peak=bwd,
        head_peak=head,
        bwd_live=bwd_live,
    )
