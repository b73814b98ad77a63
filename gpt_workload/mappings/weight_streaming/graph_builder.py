"""Weight-streaming lowering of any family by walking its op graph.

:class:`GraphBuilder` replaces
:meth:`gpt_workload.mappings.weight_streaming.builder._Builder.micro_batch` (gpt2's
hand-written layer) with a walk over :func:`gpt_workload.models.build_graph`: one kernel per
op, named as the op (``input_norm``, ``q_proj``, ``rotary_k``, ``attention``, ``swiglu`` ...),
in the graph's order, each costed on the segment layout of
:mod:`gpt_workload.mappings.weight_streaming.builder`
(``P`` PEs per segment side by side, PE ``j`` holding feature slice ``j`` of every
activation; ``hp = n_head / P`` whole query heads per PE). Shapes are asserted where an op is
consumed: a linear's input operand must have its ``n_in`` width and its output the graph's
shape for the layout's ``b x T`` tokens.

Per op kind:

* ``norm``: LayerNorm as gpt2 (6 vector passes, chain all-reduce of 2 values per token);
  RMSNorm 3 passes (sum of squares, scale, gain) and an all-reduce of 1 value.
* ``linear``: the streamed GEMM of :meth:`_Builder.gemm` ``[m, K] x [K, N]`` with the
  op's bias; K/V projections have ``N = n_kv_heads * d_head`` (GQA): their weights, FLOPs
  and partial sums are ``n_head / n_kv_heads`` smaller than Q's.
* ``rotary``: local to the PEs that hold a head's features (3 passes over the rotated part
  of each head). Q heads are whole on their PE. A K/V head serves ``group = n_head /
  n_kv_heads`` query heads; when a PE's ``hp`` query heads are fewer than ``group``, the
  K/V head's features are spread over the ``group / hp`` PEs that need it (each holds
  ``kv / P`` features of K and of V after the GEMM's reduce-scatter) and are all-gathered
  among them (``K/V group all-gather``, on the ``rotary_k`` kernel) so that every PE holds
  the whole K/V heads of its query heads; ``rotary_k`` then rotates them. With heads split
  over ``k`` PEs (``P = k n_head``, :mod:`gpt_workload.mappings.weight_streaming.head_split`) a PE
  holds ``d_head /
  k`` features of one head; rotate-half RoPE (not interleaved) then swaps the rotated
  features with the PE holding their partners (``rotary partner exchange``).
* ``attention``: head-parallel as gpt2 (class = segment position). K/V blocks of earlier
  segments are multicast down the columns at the GEMM layout (``kv / P`` features of K and
  V per PE: ``n_head / n_kv_heads`` fewer bytes than multi-head attention) and
  all-gathered in each receiving PE group as above. The resident K/V of a segment is
  ``kv / P`` per PE; the working buffer holds the whole K/V heads the PE's query heads read.
  With split heads the partial ``q . k`` scores are all-reduced along each head's ``k`` PEs
  (:func:`gpt_workload.mappings.weight_streaming.head_split.score_allreduce`).
* ``activation`` (GELU 8 passes, SiLU 4), ``mul`` (the SwiGLU product, 1 pass), ``add``
  (residuals; GPT-J's parallel block adds two branches: 2 passes).
* ``lm_head``: the streamed ``[d, V]`` GEMM (untied head, GPT-J's with its bias) fused with
  the cross-entropy statistics, then the ``cross_entropy`` kernel, as gpt2.

SRAM: each kernel's live bytes are the per-PE bytes of the operands live across it (produced
at or before it, read at or after it; the residual throughout), from a liveness pass over
the graph.
"""

from __future__ import annotations

import dataclasses
import math

from gpt_workload.graph import Op, lifetimes
from gpt_workload.mappings.weight_streaming.builder import _Builder, kv_multicast
from gpt_workload.mappings.weight_streaming.head_split import (
    attention_kernel_classes,
    rotary_exchange,
    score_allreduce,
    score_receive_bytes,
)
from gpt_workload.mappings.weight_streaming.plan import (
    ACC_BYTES,
    COLOUR_KV,
    COLOUR_WEIGHTS,
    _block_bytes,
)
from gpt_workload.models import build_graph
from wse_sim.errors import ConfigError
from wse_sim.program import Transfer

__all__ = ["GraphBuilder", "NORM_PASSES", "ACTIVATION_PASSES"]

#: Vector passes over a token's feature slice per norm kind.
NORM_PASSES = {"layernorm": 6, "rmsnorm": 3}
#: Vector passes per activation (GELU as gpt2's lowering; SiLU: exp, add, divide, multiply).
ACTIVATION_PASSES = {"gelu": 8, "gelu_new": 8, "gelu_pytorch_tanh": 8, "silu": 4}


class GraphBuilder(_Builder):
    """A :class:`gpt_workload.mappings.weight_streaming.builder._Builder` whose micro-batch walks
    the op graph."""

    @staticmethod
    def kernels_per_layer(cfg) -> int:
        """Kernels one layer lowers to (one per op of the family's layer)."""
        return len(build_graph(cfg).layer)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graph = build_graph(self.cfg)
        self.dims = self.graph.dims
        cfg, L = self.cfg, self.L
        self.group = cfg.n_head // int(cfg.n_kv_heads)
        # whole K/V heads a PE's hp query heads read, and the PEs sharing one K/V head;
        # with heads split over k PEs (L.pes_per_head), a PE reads d_head / k features of
        # one K/V head, spread over the group's PEs after the K/V GEMMs
        self.kv_heads_pe = math.ceil(L.hp / self.group)
        self.kv_width_pe = self.kv_heads_pe * cfg.d_head // L.pes_per_head
        self.group_pes = max(self.group // L.hp, 1)
        self.syms = dict(self.graph._operand_shapes())
        self.syms["tokens"] = ("B", "T")

    # ---------------------------------------------------------------- helpers
    def width_pe(self, sym: str) -> int:
        """Features per PE of an activation of ``sym`` features."""
        return math.ceil(self.dims[sym] / self.L.P)

    def operand_bytes(self, name: str) -> int:
        """Per-PE bytes of activation operand ``name`` at ``m`` tokens per segment."""
        shape = self.syms[name]
        if len(shape) < 3:
            return 0
        return self.L.m * self.width_pe(shape[-1]) * self.s

    def live_bytes(self, ops: tuple[Op, ...]) -> list[int]:
        """Per-op live bytes per PE: the operands produced at or before the op and read at
        or after it (``x``, the residual, from the start)."""
        born, last = lifetimes(ops)
        out = []
        for i in range(len(ops)):
            names = [n for n in born if born[n] <= i <= last.get(n, born[n])]
            out.append(sum(self.operand_bytes(n) for n in names))
        return out

    def kv_share_bytes(self) -> float:
        """Per-PE bytes of K and V of one segment at the GEMM layout (``kv / P`` each)."""
        return self.L.m * 2 * self.width_pe("kv") * self.s

    def group_gather(self, blocks: float, name: str) -> Transfer | None:
        """All-gather of ``blocks`` K/V shares among the ``group / hp`` PEs that share a
        K/V head (a bidirectional chain: the busiest link carries ``g - 1`` shares one
        way); None without sharing."""
        g, L = self.group_pes, self.L
        if g <= 1 or blocks <= 0:
            return None
        share = self.kv_share_bytes()
        return Transfer(
            name,
            "allgather_row",
            "horizontal",
            blocks * (g - 1) * share,
            L.n_segments * blocks * (L.P // g) * g * (g - 1) * share,
            hops=g - 1,
            turns=0,
            colour=COLOUR_KV,
            relays=max(g - 2, 0),
            ramp_bytes=blocks * (g - 1) * share,
        )

    def check_linear(self, op: Op) -> tuple[int, int]:
        """``(K, N)`` of a linear or the LM head, its input width and output shape asserted
        against the graph."""
        K, N = self.dims[op.attrs["n_in"]], self.dims[op.attrs["n_out"]]
        got = self.syms[op.inputs[0]][-1]
        if self.dims[got] != K:
            raise ConfigError(f"op {op.name}: input {op.inputs[0]} has {got}, needs {K}")
        shape = self.graph.shape(op, self.L.b, self.L.seq_len)
        if shape != (self.L.b, self.L.seq_len, N):
            raise ConfigError(f"op {op.name}: graph shape {shape}, lowering [b, T, {N}]")
        return K, N

    # -------------------------------------------------------------------- ops
    def lower_op(self, op: Op, layer: int, blk: int, live: int) -> None:
        """One kernel for ``op`` (module docstring)."""
        z, d, s = self.z, self.cfg.d_model, self.s
        kind = op.kind
        if kind == "norm":
            if op.attrs["norm"] == "layernorm":
                self.layernorm(op.name, layer, blk, live)
            else:
                self.elementwise(op.name, layer, z.f, NORM_PASSES["rmsnorm"], live,
                                 (self.row_allreduce(1),), blk, d * s)  # fmt: skip
        elif kind in ("linear", "lm_head"):
            K, N = self.check_linear(op)
            bias = len(op.params) > 1
            if kind == "linear":
                self.gemm(op.name, layer, K, N, blk, live, bias=bias)
            else:
                self.gemm(op.name, layer, K, N, blk, live + 4 * self.L.m * ACC_BYTES,
                          bias=bias, extra_ops_per_chunk=4)  # fmt: skip
        elif kind == "rotary":
            heads = op.attrs["heads"]
            frac = op.attrs["rotary_dim"] / self.cfg.d_head
            width = z.f if heads == "H" else self.kv_width_pe
            trs = [] if heads == "H" else [self.group_gather(1, "K/V group all-gather")]
            if not self.cfg.rotary_interleaved:  # rotate-half pairs across a split head
                trs.append(rotary_exchange(self.L, width, op.attrs["rotary_dim"],
                                           self.cfg.d_head, s))  # fmt: skip
            self.elementwise(op.name, layer, width, 3 * frac, live,
                             tuple(t for t in trs if t is not None))  # fmt: skip
        elif kind == "attention":
            self.gqa_attention(layer, live)
        elif kind == "activation":
            fn = op.attrs["fn"]
            if fn not in ACTIVATION_PASSES:
                raise ConfigError(f"op {op.name}: activation {fn!r} has no lowering")
            self.elementwise(op.name, layer, z.ff, ACTIVATION_PASSES[fn], live)
        elif kind == "mul":
            self.elementwise(op.name, layer, z.ff, 1, live)
        elif kind == "add":
            self.elementwise(op.name, layer, z.f, len(op.inputs) - 1, live)
        else:
            raise ConfigError(f"op {op.name}: kind {kind!r} has no weight-streaming lowering")

    def gqa_attention(self, layer: int, live: int) -> None:
        """Head-parallel causal attention with K/V heads shared by ``group`` query heads."""
        L, W, ov, s = self.L, self.W, self.ov, self.s
        dh = self.cfg.d_head
        classes, flops, _ = attention_kernel_classes(L, dh, W, ov)
        trs = [kv_multicast(L, self.kv_share_bytes())]
        gather = self.group_gather(L.q - 1, "K/V group all-gather (earlier segments)")
        if gather is not None:
            # the busiest receiving segment gathers q - 1 blocks; the wafer total is the
            # sum over positions (a mean of (q - 1) / 2 per segment)
            trs.append(dataclasses.replace(gather, link_bytes=gather.link_bytes / 2))
        scores = score_allreduce(L)
        if scores is not None:
            trs.append(scores)
        kv_work = L.m * 2 * self.kv_width_pe * s
        sram = live + 2 * kv_work + L.m * L.m * ACC_BYTES + 3 * L.m * ACC_BYTES
        sram += score_receive_bytes(L.m, L.pes_per_head)
        self.add("attention", layer, classes, "position", tuple(trs), sram=sram, flops=flops,
                 n_chunks=max(min(L.q, 16), 1))  # fmt: skip

    # ---------------------------------------------------------------- program
    def micro_batch(self) -> None:
        """Embedding, ``n_layer`` x the graph's layer, final norm, LM head, cross-entropy."""
        cfg, z, s, L, g = self.cfg, self.z, self.s, self.L, self.graph
        d, V, T = cfg.d_model, cfg.vocab_size, L.seq_len
        if [op.kind for op in g.prologue] != ["embedding"]:
            raise ConfigError(f"family {cfg.family}: prologue {[o.kind for o in g.prologue]} "
                              "has no graph lowering (learned positions: gpt2's lowering)")
        wte_rows = min(V, L.b * T)
        blk = self.block("embed", wte_rows * d * s)
        mc = Transfer("table multicast", "multicast_2d", "vertical", wte_rows * z.f * s,
                      L.n_active_pe * wte_rows * z.f * s, hops=self.rows_used, turns=0,
                      colour=COLOUR_WEIGHTS, ramp_bytes=wte_rows * z.f * s)  # fmt: skip
        self.elementwise("embedding", -1, z.f, 1, z.x, (mc,), blk, wte_rows * d * s)
        live = self.live_bytes(g.layer)

        def layer_kernels(layer: int, blk: int) -> None:
            for op, lv in zip(g.layer, live, strict=True):
                self.lower_op(op, layer, blk, lv)

        self.layers(layer_kernels, _block_bytes(cfg, s, T)[1])
        blk = self.block("head", _block_bytes(cfg, s, T)[2])
        h = z.x + z.h
        for op in g.epilogue:
            self.lower_op(op, cfg.n_layer, blk, h)
        self.elementwise("cross_entropy", cfg.n_layer, 4, 2, z.x + 4 * L.m * ACC_BYTES,
                         (self.row_allreduce(3),))  # fmt: skip
