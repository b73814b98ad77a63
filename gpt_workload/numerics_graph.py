"""Numerics of a Program lowered from the op graph
(:mod:`gpt_workload.mappings.weight_streaming.graph_builder`).

:func:`run_graph_numerics` walks the kernels of the Program's first micro-batch; each kernel
is one op of the family's graph (:func:`gpt_workload.models.build_graph`, looked up by name)
and runs on tile arrays laid out as the lowering placed the data (``[segment, PE in
segment, token, feature slice]``,
:class:`gpt_workload.mappings.weight_streaming.layout.TileLayout`, with the
Program's ``P`` and ``m``). Operands live in an environment keyed by the graph's operand
names, so the layer sequence is the graph's, not another copy of it.

Per op kind: the embedding (:func:`kernels.embed_tiled`, no position table), LayerNorm
(:func:`kernels.layernorm_tiled`) or RMSNorm (:func:`kernels.rmsnorm_tiled`: the
sum of squares chained across the segment's PEs), linears and the LM head as the
weight-streaming GEMM (:func:`kernels.gemm_ws`: PE-local partial sums chained along the
segment, bias after the sum; widths not divisible by ``P`` zero-padded), rotary on the PEs
that hold whole heads (:func:`kernels.rotary_tiled`; a K head split across PEs is
rotated after the group all-gather, :func:`kernels.rotary_fwd` on its rows),
grouped-query attention per (sequence, K/V head) (:func:`kernels.gqa_attention_fwd`
on the gathered rows; with each head split over ``k = P / n_head`` PEs, the per-PE partial
``q . k`` chained along the head, :func:`gpt_workload.kernels.split_heads.attention_split`),
GELU (:func:`kernels.gelu_tiled`), SiLU and the SwiGLU product
(float32, one rounding each, as :func:`kernels.swiglu_fwd`), residual adds in the
graph's operand order, then the cross-entropy (:func:`kernels.cross_entropy_tiled`).

Every stored tensor is rounded to the storage precision and checked by a
:class:`gpt_workload.health.HealthTracker` (fp32 arithmetic; fp16/bf16 storage); the
logits are the LM head's fp32 accumulators.
"""

from __future__ import annotations

import numpy as np

from gpt_workload import kernels as kl
from gpt_workload import kernels as kn
from gpt_workload.config import GPTConfig
from gpt_workload.graph import Op
from gpt_workload.health import HealthTracker, tile_locator
from gpt_workload.kernels.split_heads import attention_split
from gpt_workload.mappings.weight_streaming.head_split import pes_per_head
from gpt_workload.mappings.weight_streaming.layout import TileLayout
from gpt_workload.models import build_graph
from gpt_workload.numerics import NumericsResult, check_tokens
from gpt_workload.precision import round_storage
from wse_sim.errors import ConfigError
from wse_sim.program import Program

__all__ = ["run_graph_numerics"]


class _Exec:
    """Runs one graph op at a time on tiles (see the module docstring)."""

    def __init__(self, cfg: GPTConfig, weights, tokens, tl: TileLayout, precision: str,
                 health: HealthTracker):  # fmt: skip
        self.cfg, self.w, self.tokens, self.tl = cfg, weights, tokens, tl
        self.precision, self.health = precision, health
        self.graph = build_graph(cfg)
        self.dims = self.graph.dims
        self.seq = {"segs_per_seq": tl.segs_per_seq, "seq_len": tl.seq_len}
        self.loc = tile_locator(tl.segs_per_seq, tl.m, tl.seq_len)
        self.cache: dict = {}
        self.ks = pes_per_head(cfg, tl.P)  # PEs per head (1: whole heads per PE)
        T = tl.seq_len
        if cfg.rotary_dim:
            self.cos, self.sin = kl.rotary_tables_f32(T, cfg.rotary_dim, cfg.rope_theta,
                                                      cfg.rope_scaling)  # fmt: skip

    def param(self, owner, name: str, pad_rows: int = 0, transpose: bool = False) -> np.ndarray:
        """A parameter rounded to the storage precision once (rows zero-padded)."""
        key = (id(owner), name, transpose)
        if key not in self.cache:
            a = np.asarray(getattr(owner, name), dtype=np.float32)
            a = a.T if transpose else a
            if pad_rows:
                a = np.pad(a, ((0, pad_rows), (0, 0)))
            self.cache[key] = round_storage(np.ascontiguousarray(a), self.precision)
        return self.cache[key]

    def tiles(self, sym: str) -> np.ndarray:
        n = self.dims[sym]
        return self.tl.empty_tiles(n, pad_to=self.tl.padded_width(n))

    def rows(self, t: np.ndarray, width: int) -> np.ndarray:
        """Tiles -> float32 rows ``[K * T, width]`` (what a PE group gathers)."""
        return np.ascontiguousarray(self.tl.from_tiles(t, width).reshape(-1, width))

    def to_tiles(self, r: np.ndarray, width: int) -> np.ndarray:
        x = r.reshape(self.tl.n_seq, self.tl.seq_len, width)
        return self.tl.to_tiles(x, pad_to=self.tl.padded_width(width))

    def run(self, op: Op, env: dict, owner, layer) -> None:
        """Compute ``op``'s outputs into ``env`` (stored, rounded and checked)."""
        cfg, seq, kind = self.cfg, self.seq, op.kind
        ins = [env[a] for a in op.inputs]
        if kind == "norm":
            out = self.tiles("d")
            g = self.param(owner, op.params[0])
            if op.attrs["norm"] == "layernorm":
                kn.layernorm_tiled(ins[0], g, self.param(owner, op.params[1]), op.attrs["eps"],
                                   out, **seq)  # fmt: skip
            else:
                kl.rmsnorm_tiled(ins[0], g, op.attrs["eps"], out, **seq)
        elif kind in ("linear", "lm_head"):
            n_in, n_out = op.attrs["n_in"], op.attrs["n_out"]
            K, N = self.dims[n_in], self.dims[n_out]
            if ins[0].shape[1] * ins[0].shape[3] != self.tl.padded_width(K):
                raise ConfigError(f"op {op.name}: input tiles {ins[0].shape} are not {K} wide")
            pad = self.tl.padded_width(K) - K
            w = self.param(owner, op.params[0], pad, transpose=kind == "lm_head")
            b = (self.param(owner, op.params[1]) if len(op.params) > 1
                 else np.zeros(0, np.float32))  # fmt: skip
            out = self.tiles(n_out)
            kn.gemm_ws(ins[0], w, b, out, **seq)
            if kind == "lm_head":  # fp32 accumulators, not rounded
                self.health.check(op.name, None, out, self.loc)
                env[op.outputs[0]] = out
                return
        elif kind == "rotary":
            out = self.rotary(op, ins[0])
        elif kind == "attention":
            d, kv = self.dims["d"], self.dims["kv"]
            if self.ks > 1:
                out = self.to_tiles(self.split_attention(ins, d, kv), d)
            else:
                o, _ = kl.gqa_attention_fwd(self.rows(ins[0], d), self.rows(ins[1], kv),
                                            self.rows(ins[2], kv), self.tl.seq_len, cfg.n_head,
                                            int(cfg.n_kv_heads), 1.0 / np.sqrt(cfg.d_head))
                out = self.to_tiles(o, d)  # fmt: skip
        elif kind == "activation":
            fn = op.attrs["fn"]
            if fn == "silu":
                flat = ins[0].reshape(-1, ins[0].shape[-1])
                out = kl.swiglu_fwd(flat, np.ones_like(flat)).reshape(ins[0].shape)
            else:
                out = kn.gelu_tiled(ins[0], fn != "gelu", np.empty_like(ins[0]))
        elif kind == "mul":
            out = np.multiply(ins[0], ins[1], dtype=np.float32)
        elif kind == "add":
            out = kn.add_tiled(ins[0], ins[1], np.empty_like(ins[0]))
            for extra in ins[2:]:
                out = kn.add_tiled(out, extra, out)
        else:
            raise ConfigError(f"op {op.name}: kind {kind!r} has no numerics")
        env[op.outputs[0]] = self.health.store(op.name, layer, out, self.loc)

    def split_attention(self, ins, d: int, kv: int) -> np.ndarray:
        """Attention with each head split over ``ks`` PEs: per-PE partial ``q . k`` chained
        along the head, online softmax over the layout's K/V blocks of ``m`` keys
        (:func:`gpt_workload.kernels.split_heads.attention_split`); rows ``[K T, d]``."""
        cfg, tl = self.cfg, self.tl
        K, T, dh = tl.n_seq, tl.seq_len, cfg.d_head
        nkv = int(cfg.n_kv_heads)
        q = self.rows(ins[0], d).reshape(K, T, cfg.n_head, dh).transpose(0, 2, 1, 3)
        k = self.rows(ins[1], kv).reshape(K, T, nkv, dh).transpose(0, 2, 1, 3)
        v = self.rows(ins[2], kv).reshape(K, T, nkv, dh).transpose(0, 2, 1, 3)
        o = attention_split(q, k, v, self.ks, tl.m, 1.0 / np.sqrt(dh))
        return np.ascontiguousarray(o.transpose(0, 2, 1, 3).reshape(K * T, d))

    def rotary(self, op: Op, x: np.ndarray) -> np.ndarray:
        """RoPE on whole heads: in place on the tile when each PE holds whole heads, else on
        the rows a PE group gathers."""
        cfg, dh = self.cfg, self.cfg.d_head
        width = self.dims["d" if op.attrs["heads"] == "H" else "kv"]
        heads = width // dh
        ft = x.shape[-1]
        if width % self.tl.P == 0 and ft % dh == 0:
            out = np.empty_like(x)
            return kl.rotary_tiled(x, self.cos, self.sin, out, **self.seq, d_head=dh,
                                   rotary_dim=cfg.rotary_dim,
                                   interleaved=cfg.rotary_interleaved)  # fmt: skip
        r = kl.rotary_fwd(self.rows(x, width), self.tl.seq_len, heads, cfg.rotary_dim,
                          cfg.rotary_interleaved, self.cos, self.sin)  # fmt: skip
        return self.to_tiles(r, width)


def run_graph_numerics(
    program: Program,
    cfg: GPTConfig,
    weights,
    tokens: np.ndarray,
    precision: str | None = None,
    *,
    kv_out: list | None = None,
) -> NumericsResult:
    """Run the first micro-batch of a graph-lowered Program on ``tokens`` [K, T].

    ``weights``: :class:`gpt_workload.models.weights.DecoderWeights` of ``cfg``.
    ``kv_out``: a list to which each layer's attention keys (after rotary) and values are
    appended as a pair of stored float32 ``[K, T, kv]`` arrays: the KV cache a prefill
    leaves behind (:mod:`gpt_workload.generation`).

    Raises:
        ConfigError: tokens of the wrong shape, dtype or range; a kernel that is not an op
            of the family's graph.
    """
    precision = precision or program.precision
    tokens = check_tokens(program, cfg, tokens)
    K, T = tokens.shape
    lay = program.layout
    tl = TileLayout(n_seq=K, seq_len=T, m=lay.tokens_per_segment, P=lay.pes_per_segment)
    health = HealthTracker(precision, "weights")
    health.check_weights(weights)
    health.phase = "forward"
    ex = _Exec(cfg, weights, tokens, tl, precision, health)
    g = ex.graph
    layer_ops = {op.name: op for op in g.layer}
    top_ops = {op.name: op for op in (*g.prologue, *g.epilogue)}
    x = None
    env: dict = {}
    cur = -1
    loss_tok = pred = None
    n_run = 0
    for k in program.kernels:
        if k.micro_batch != 0:
            break
        n_run += 1
        if k.op == "embedding":
            x = tl.empty_tiles(cfg.d_model)
            zeros = np.zeros((T, cfg.d_model), np.float32)
            kn.embed_tiled(tokens, ex.param(weights, "wte"), zeros, tl.m, tl.P, x)
            env = {"x": health.store("embedding", None, x, ex.loc)}
        elif 0 <= k.layer < cfg.n_layer and k.op in layer_ops:
            if k.layer != cur:  # a new layer: its input is the last layer's output
                env = {"x": env["out"] if cur >= 0 else env["x"]}
                cur = k.layer
            op = layer_ops[k.op]
            if kv_out is not None and op.kind == "attention":
                kv = ex.dims["kv"]
                kv_out.append(tuple(tl.from_tiles(env[a], kv) for a in op.inputs[1:]))
            ex.run(op, env, weights.layers[k.layer], k.layer)
        elif k.op in top_ops:
            if "out" in env:
                env = {"x": env["out"]}
            ex.run(top_ops[k.op], env, weights, None)
        elif k.op == "cross_entropy":
            loss_tok, pred = kn.cross_entropy_tiled(env["logits"], cfg.vocab_size, tokens,
                                                    tl.segs_per_seq, tl.m)  # fmt: skip
        else:
            raise ConfigError(f"kernel {k.name}: op {k.op!r} is not in the {cfg.family} graph")
    logits = tl.from_tiles(env["logits"], cfg.vocab_size)
    loss = float(loss_tok[:, :-1].astype(np.float64).mean()) if T > 1 else float("nan")
    return NumericsResult(logits, loss_tok, loss, pred, n_run, health)
