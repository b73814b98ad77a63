"""A decoder as a shape-only op graph: ops with named operands, symbolic shapes, FLOPs, bytes.

The layer sequence of each family is written once, by its builder (``build_layer`` of the
family module in :mod:`gpt_workload.models`; :func:`gpt_workload.models.build_graph` puts the
graph together). Everything that walks a model -- the float64 reference today, the lowerings,
the numerics and the training backward pass next -- reads this list instead of spelling the
layer out again.

An :class:`Op` names its activation inputs and outputs (strings local to the layer for
layer ops; ``"x"`` is the layer's input residual and ``"out"`` its output), its parameters
(field names of the family's weight container: :class:`gpt_workload.weights.LayerWeights` for
gpt2, :class:`gpt_workload.models.weights.DecoderLayer` otherwise; top-level field names for
the prologue and epilogue), and its output shape in symbols:

========  ==========================================================
``B``     sequences                ``T``   tokens per sequence
``d``     d_model                  ``H``   query heads, ``KV`` K/V heads
``dh``    d_head                   ``kv``  KV * dh (K or V width, GQA)
``ff``    d_ff                     ``V``   vocabulary
``qkv``   d + 2 kv (fused Q|K|V)
========  ==========================================================

FLOP convention (one multiply-add = 2 FLOP): ``flops`` counts matrix products (linears, the
LM head, Q K^T and P V over the causal context: position t attends to t keys, a mean of
(T + 1) / 2 per query); ``vector_flops`` counts element-wise work (norms, rotary, softmax,
activations, residual adds, bias adds), roughly, for the timing models. Model FLOPs are the
``flops`` sum (Kaplan et al. 2020 Table 1; PaLM Appendix B for 3x in training).
Backward: every linear gives a grad-input and a grad-weight product of the forward's FLOPs
each; attention recomputes nothing and costs twice its forward (dP = dO V^T, dV = P^T dO,
dQ = dS K, dK = dS^T Q); element-wise ops cost about twice their forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpt_workload.config import GPTConfig
from wse_sim.errors import ConfigError

__all__ = [
    "OP_KINDS",
    "BackwardOp",
    "Op",
    "OpGraph",
    "dims_of",
    "epilogue",
    "lifetimes",
    "prologue",
]

#: Op kinds and what they compute (inputs -> output).
OP_KINDS: dict[str, str] = {
    "embedding": "tokens -> wte[tokens]",
    "position_add": "x -> x + wpe[0:T]",
    "norm": "x -> LayerNorm or RMSNorm of x over d (attrs: norm, eps)",
    "linear": "x -> x @ W (+ b) (attrs: n_in, n_out)",
    "split": "qkv -> q, k, v column blocks (attrs: sizes)",
    "rotary": "x -> RoPE of each head's first rotary_dim features (attrs: heads, ...)",
    "attention": "q, k, v -> causal softmax(q k^T / sqrt(dh)) v per head, GQA (attrs)",
    "activation": "x -> act(x) (attrs: fn)",
    "mul": "a, b -> a * b (SwiGLU product)",
    "add": "a, b[, c] -> sum (residual)",
    "lm_head": "x -> x @ W^T (+ b), W the [V, d] head (attrs: n_in, n_out)",
}

_MATMUL = ("linear", "lm_head")


def dims_of(cfg: GPTConfig) -> dict[str, int]:
    """Values of the shape symbols for ``cfg`` (B and T excluded)."""
    kv = cfg.kv_dim
    return {
        "d": cfg.d_model,
        "H": cfg.n_head,
        "KV": int(cfg.n_kv_heads),
        "dh": cfg.d_head,
        "kv": kv,
        "ff": cfg.d_ff,
        "V": cfg.vocab_size,
        "qkv": cfg.d_model + 2 * kv,
    }


@dataclass(frozen=True)
class Op:
    """One op of the graph (shape only; no data).

    Attributes:
        name: unique within its scope (layer, prologue or epilogue), e.g. ``"ffn_up"``.
        kind: one of :data:`OP_KINDS`.
        inputs: activation operand names read.
        outputs: activation operand names written (one, or three for ``split``).
        params: parameter field names, ``None`` entries dropped (``(w, b)`` for a linear).
        shape: symbolic shape of each output, e.g. ``(("B", "T", "d"),)``.
        attrs: kind-specific values (``n_in``, ``n_out``, ``fn``, ``heads``...).
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...] = ()
    shape: tuple[tuple[str, ...], ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        """Check the kind and that every output has a shape."""
        if self.kind not in OP_KINDS:
            raise ConfigError(f"op {self.name}: kind={self.kind!r} is not one of {list(OP_KINDS)}")
        if len(self.shape) != len(self.outputs):
            raise ConfigError(
                f"op {self.name}: {len(self.outputs)} outputs, {len(self.shape)} shapes"
            )


def lifetimes(ops: Sequence[Op]) -> tuple[dict[str, int], dict[str, int]]:
    """``(born, last)``: the index of the op that first writes each tensor and of the last op
    that reads it (its writer's if nothing reads it), over ``ops`` in order. ``x``, the
    residual stream, is live from before the first op (born -1) to at least op 0."""
    born, last = {"x": -1}, {"x": 0}
    for i, op in enumerate(ops):
        for o in op.outputs:
            born.setdefault(o, i)
            last.setdefault(o, i)
        for a in op.inputs:
            last[a] = max(last.get(a, i), i)
    return born, last


def linear(name: str, x: str, out: str, w: str, b: str | None, n_in: str, n_out: str) -> Op:
    """A linear ``out = x @ w (+ b)`` from ``n_in`` to ``n_out`` features (shape symbols)."""
    params = (w,) if b is None else (w, b)
    return Op(name, "linear", (x,), (out,), params, (("B", "T", n_out),),
              {"n_in": n_in, "n_out": n_out})  # fmt: skip


def norm(name: str, cfg: GPTConfig, x: str, out: str, g: str, b: str | None) -> Op:
    """The config's norm (LayerNorm with bias ``b``, or RMSNorm) of ``x`` over ``d``."""
    params = (g,) if (cfg.norm == "rmsnorm" or b is None) else (g, b)
    return Op(name, "norm", (x,), (out,), params, (("B", "T", "d"),),
              {"norm": cfg.norm, "eps": cfg.layer_norm_eps})  # fmt: skip


def rotary(name: str, cfg: GPTConfig, x: str, out: str, heads: str) -> Op:
    """RoPE of ``x`` (``heads`` heads of ``dh``) as the config says (pairing, theta, scaling)."""
    width = "d" if heads == "H" else "kv"
    return Op(name, "rotary", (x,), (out,), (), (("B", "T", width),),
              {"heads": heads, "rotary_dim": cfg.rotary_dim, "interleaved": cfg.rotary_interleaved,
               "theta": cfg.rope_theta, "scaling": cfg.rope_scaling})  # fmt: skip


def attention(name: str, q: str, k: str, v: str, out: str) -> Op:
    """Causal grouped-query attention: query head h reads K/V head h // (H // KV)."""
    return Op(name, "attention", (q, k, v), (out,), (), (("B", "T", "d"),), {"causal": True})


def prologue(cfg: GPTConfig) -> list[Op]:
    """Token embedding, then the learned position add when the config has one."""
    ops = [Op("embedding", "embedding", ("tokens",), ("x",), ("wte",), (("B", "T", "d"),))]
    if cfg.learned_positions:
        ops.append(Op("position", "position_add", ("x",), ("x",), ("wpe",), (("B", "T", "d"),)))
    return ops


def epilogue(
    cfg: GPTConfig, norm_g: str, norm_b: str | None, head: str, head_b: str | None
) -> list[Op]:
    """Final norm and the LM head (``head`` the ``[V, d]`` matrix field, tied or not)."""
    params = (head,) if head_b is None else (head, head_b)
    return [
        norm("norm_f", cfg, "x", "hf", norm_g, norm_b),
        Op("lm_head", "lm_head", ("hf",), ("logits",), params, (("B", "T", "V"),),
           {"n_in": "d", "n_out": "V"}),
    ]  # fmt: skip


@dataclass(frozen=True)
class BackwardOp:
    """One backward product or element-wise step, derived from a forward op.

    Attributes:
        name: ``"<forward name>.grad_input"``, ``".grad_weight"`` or ``".grad"``.
        forward: the forward :class:`Op`.
        flops: matrix FLOPs per (B, T) evaluated by :meth:`OpGraph.backward`.
    """

    name: str
    forward: Op
    flops: int
    vector_flops: int


@dataclass(frozen=True)
class OpGraph:
    """A decoder: ``prologue``, ``layer`` repeated ``cfg.n_layer`` times, ``epilogue``."""

    cfg: GPTConfig
    prologue: tuple[Op, ...]
    layer: tuple[Op, ...]
    epilogue: tuple[Op, ...]

    @property
    def dims(self) -> dict[str, int]:
        """Values of the shape symbols (see the module docstring)."""
        return dims_of(self.cfg)

    def ops(self) -> Iterator[tuple[int | None, Op]]:
        """Every op in execution order with its layer index (``None`` outside layers)."""
        for op in self.prologue:
            yield None, op
        for i in range(self.cfg.n_layer):
            for op in self.layer:
                yield i, op
        for op in self.epilogue:
            yield None, op

    def shape(self, op: Op, batch: int, seq_len: int, k: int = 0) -> tuple[int, ...]:
        """Numeric shape of output ``k`` of ``op`` for ``batch`` sequences of ``seq_len``."""
        vals = {**self.dims, "B": batch, "T": seq_len}
        return tuple(vals[s] for s in op.shape[k])

    def param_elems(self, op: Op) -> int:
        """Parameter elements ``op`` reads (its weights and biases)."""
        dm = self.dims
        if op.kind in _MATMUL:
            n_in, n_out = dm[op.attrs["n_in"]], dm[op.attrs["n_out"]]
            return n_in * n_out + (n_out if len(op.params) > 1 else 0)
        if op.kind == "norm":
            return dm["d"] * len(op.params)
        if op.kind == "embedding":
            return dm["V"] * dm["d"]
        if op.kind == "position_add":
            return self.cfg.n_positions * dm["d"]
        return 0

    def flops(self, op: Op, batch: int, seq_len: int) -> tuple[int, int]:
        """``(matrix FLOPs, vector FLOPs)`` of one forward execution of ``op``."""
        dm, n = self.dims, batch * seq_len
        out = 1
        for s in self.shape(op, batch, seq_len):
            out *= s
        if op.kind in _MATMUL:
            n_in, n_out = dm[op.attrs["n_in"]], dm[op.attrs["n_out"]]
            return 2 * n * n_in * n_out, (n * n_out if len(op.params) > 1 else 0)
        if op.kind == "attention":
            pairs = batch * seq_len * (seq_len + 1) // 2  # causal (query, key) pairs
            return 4 * pairs * dm["H"] * dm["dh"], 5 * pairs * dm["H"]
        per_elem = {"norm": 8, "rotary": 3, "activation": 8, "mul": 1, "position_add": 1,
                    "add": len(op.inputs) - 1, "split": 0, "embedding": 0}  # fmt: skip
        return 0, per_elem[op.kind] * out

    def bytes(self, op: Op, batch: int, seq_len: int, elem_bytes: int) -> dict[str, int]:
        """Bytes ``op`` reads and writes at ``elem_bytes`` per element: ``params``,
        ``inputs`` (activations) and ``outputs``."""
        vals = {**self.dims, "B": batch, "T": seq_len}
        names = dict(self._operand_shapes())

        def size(shape: tuple[str, ...]) -> int:
            n = 1
            for s in shape:
                n *= vals[s]
            return n

        ins = sum(size(names.get(x, ("B", "T"))) for x in op.inputs)
        outs = sum(size(s) for s in op.shape)
        return {"params": elem_bytes * self.param_elems(op), "inputs": elem_bytes * ins,
                "outputs": elem_bytes * outs}  # fmt: skip

    def _operand_shapes(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        yield "x", ("B", "T", "d")
        for op in (*self.prologue, *self.layer, *self.epilogue):
            yield from zip(op.outputs, op.shape)

    def forward_flops(self, batch: int, seq_len: int) -> dict[str, int]:
        """Whole-model forward ``{"matrix": ..., "vector": ...}`` FLOPs for ``batch`` x
        ``seq_len`` tokens."""
        mat = vec = 0
        for _, op in self.ops():
            f, v = self.flops(op, batch, seq_len)
            mat, vec = mat + f, vec + v
        return {"matrix": mat, "vector": vec}

    def model_flops_per_token(self, seq_len: int) -> float:
        """Forward matrix FLOPs per token of one sequence of ``seq_len`` (the model FLOPs)."""
        return self.forward_flops(1, seq_len)["matrix"] / seq_len

    def backward(self, batch: int, seq_len: int) -> list[BackwardOp]:
        """The backward pass in execution order (last forward op first), one layer's ops
        repeated per layer as in :meth:`ops`."""
        out: list[BackwardOp] = []
        for _, op in reversed(list(self.ops())):
            f, v = self.flops(op, batch, seq_len)
            if op.kind in _MATMUL:
                out.append(BackwardOp(f"{op.name}.grad_input", op, f, 0))
                out.append(BackwardOp(f"{op.name}.grad_weight", op, f, v))
            elif op.kind == "embedding":
                out.append(BackwardOp(f"{op.name}.grad_weight", op, 0, v))
            else:
                out.append(BackwardOp(f"{op.name}.grad", op, 2 * f, 2 * v))
        return out

    def backward_flops(self, batch: int, seq_len: int) -> int:
        """Whole-model backward matrix FLOPs (twice the forward's)."""
        return sum(b.flops for b in self.backward(batch, seq_len))
