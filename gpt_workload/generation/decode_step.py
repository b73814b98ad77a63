"""One decode step of any family through the per-PE kernels: the op graph walked for a batch
of new tokens, one per live request, each at its own position and with its own KV cache.

Per op kind (the graph of :func:`gpt_workload.models.build_graph`; activations are float32
``[B, width]``, one row per live request):

* ``embedding`` / ``position_add``: ``wte[token]`` (+ ``wpe[position]``), as
  :func:`gpt_workload.kernels.embed_tiled`.
* ``norm``: :func:`gpt_workload.kernels.layernorm_tiled` or
  :func:`gpt_workload.kernels.rmsnorm_tiled` on ``[B, 1, 1, d]`` tiles (the feature
  sums in ascending order).
* ``linear`` and ``lm_head``: :func:`gpt_workload.kernels.decode.gemv_split`, tiled as
  ``plan.split_of(op.name)`` says (the LM head's matrix is ``head.T``, ``[d, V]``).
* ``split`` (GPT-2's fused Q|K|V): column blocks.
* ``rotary``: :func:`gpt_workload.kernels.rotary_fwd` of each row at its request's
  position (the cos/sin tables of the prefill, :func:`kernels.rotary_tables_f32`).
* ``attention``: the new K and V rows appended to each request's cache, then
  :func:`gpt_workload.kernels.decode.attention_decode` over the cache as ``plan.kv`` spreads
  it (GQA: K/V heads shared by their query heads).
* ``activation``, ``mul``, ``add``: :func:`kernels.gelu_tiled`, SiLU as
  :func:`kernels.swiglu_fwd` with a unit ``up``, float32 products and
  :func:`kernels.add_tiled` (in the graph's operand order), as the prefill numerics
  (:mod:`gpt_workload.numerics_graph`).

Every stored tensor (each op's output, the KV cache, the weights once) is rounded to the
storage precision (:func:`gpt_workload.precision.round_storage`); the logits are the LM head's
fp32 sums, not rounded.
"""

from __future__ import annotations

import numpy as np

from gpt_workload import kernels as kn
from gpt_workload import kernels as kl
from gpt_workload.config import GPTConfig
from gpt_workload.generation.split import DecodePlan
from gpt_workload.graph import Op
from gpt_workload.kernels.decode import attention_decode, gemv_split, numba_threads
from gpt_workload.models import build_graph
from gpt_workload.precision import round_storage
from wse_sim.errors import ConfigError

__all__ = ["DecodeState", "Decoder"]


class DecodeState:
    """One request's KV cache and position.

    Attributes:
        k, v: float32 ``[n_layer, capacity, kv]``: keys (after rotary) and values of the
            positions seen so far, at the storage precision.
        length: positions cached (the prompt's, then one more per decode step).
    """

    def __init__(self, n_layer: int, capacity: int, kv: int):
        self.k = np.zeros((n_layer, capacity, kv), np.float32)
        self.v = np.zeros((n_layer, capacity, kv), np.float32)
        self.length = 0

    def fill(self, layer_kv: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Take a prefill's keys and values (``[T, kv]`` per layer) as the cache."""
        for i, (k, v) in enumerate(layer_kv):
            self.k[i, : k.shape[0]] = k
            self.v[i, : v.shape[0]] = v
        self.length = layer_kv[0][0].shape[0]


class Decoder:
    """Runs decode steps of ``cfg`` on ``weights`` (rounded to ``precision`` once, cached).

    Raises:
        ConfigError: a ``plan.gemv`` key that is not a linear or LM-head op of the graph.
    """

    def __init__(self, cfg: GPTConfig, weights, precision: str, plan: DecodePlan,
                 max_positions: int):  # fmt: skip
        self.cfg, self.w, self.precision, self.plan = cfg, weights, precision, plan
        self.graph = build_graph(cfg)
        self.dims = self.graph.dims
        mat = sorted({op.name for _, op in self.graph.ops() if op.kind in ("linear", "lm_head")})
        bad = sorted(set(plan.gemv) - set(mat))
        if bad:
            raise ConfigError(
                f"decode plan gemv op {bad[0]!r} is not a linear op of the {cfg.family} graph; "
                f"allowed: {', '.join(mat)}"
            )
        self.cache: dict = {}
        self.scale = np.float32(1.0 / np.sqrt(cfg.d_head))
        if cfg.rotary_dim:
            self.cos, self.sin = kl.rotary_tables_f32(max_positions, cfg.rotary_dim,
                                                      cfg.rope_theta, cfg.rope_scaling)  # fmt: skip

    def param(self, owner, name: str, transpose: bool = False) -> np.ndarray:
        """A parameter rounded to the storage precision once (``transpose``: its ``.T``)."""
        key = (id(owner), name, transpose)
        if key not in self.cache:
            a = np.asarray(getattr(owner, name), dtype=np.float32)
            a = np.ascontiguousarray(a.T if transpose else a)
            self.cache[key] = round_storage(a, self.precision)
        return self.cache[key]

    def store(self, a: np.ndarray) -> np.ndarray:
        """``a`` as stored: rounded to the storage precision (a float32 copy)."""
        return round_storage(a, self.precision)

    def step(self, tokens: np.ndarray, states: list[DecodeState]) -> np.ndarray:
        """Feed one token per request (``tokens[b]`` at position ``states[b].length``), append
        its K and V to the caches, and return the logits float32 ``[B, V]``.

        The small per-token kernels run on one Numba thread (a parallel launch would cost
        more than their work); the large products go parallel
        (:data:`gpt_workload.kernels.decode.PARALLEL_MIN_MACS`)."""
        with numba_threads(1):
            return self._step(tokens, states)

    def _step(self, tokens: np.ndarray, states: list[DecodeState]) -> np.ndarray:
        g, w = self.graph, self.w
        pos = np.array([s.length for s in states], dtype=np.int64)
        env: dict = {"tokens": tokens, "_pos": pos}
        for op in g.prologue:
            self.run(op, env, w, None, states)
        for i, layer in enumerate(w.layers):
            env = {"x": env["x"] if "out" not in env else env["out"], "_pos": pos}
            for op in g.layer:
                self.run(op, env, layer, i, states)
        env = {"x": env["out"], "_pos": pos}
        for op in g.epilogue:
            self.run(op, env, w, None, states)
        for s in states:
            s.length += 1
        return env["logits"]

    def run(self, op: Op, env: dict, owner, layer: int | None, states) -> None:
        """Compute ``op``'s outputs into ``env`` (rounded to the storage precision)."""
        cfg, kind = self.cfg, op.kind
        ins = [env[a] for a in op.inputs]
        if kind == "embedding":
            out = self.param(owner, op.params[0])[ins[0]]
            if not cfg.learned_positions:
                out = self.store(out)
        elif kind == "position_add":
            out = self.store(ins[0] + self.param(owner, op.params[0])[env["_pos"]])
        elif kind == "norm":
            B, d = ins[0].shape
            x = np.ascontiguousarray(ins[0]).reshape(B, 1, 1, d)
            t = np.empty_like(x)
            g = self.param(owner, op.params[0])
            if op.attrs["norm"] == "layernorm":
                b = self.param(owner, op.params[1])
                kn.layernorm_tiled(x, g, b, op.attrs["eps"], t, segs_per_seq=1, seq_len=1)
            else:
                kl.rmsnorm_tiled(x, g, op.attrs["eps"], t, segs_per_seq=1, seq_len=1)
            out = self.store(t.reshape(B, d))
        elif kind in ("linear", "lm_head"):
            wt = self.param(owner, op.params[0], transpose=kind == "lm_head")
            b = self.param(owner, op.params[1]) if len(op.params) > 1 else None
            out = gemv_split(ins[0], wt, b, self.plan.split_of(op.name))
            if kind == "lm_head":  # fp32 sums, not rounded
                env[op.outputs[0]] = out
                return
            out = self.store(out)
        elif kind == "split":
            edges = np.cumsum([0] + [self.dims[s] for s in op.attrs["sizes"]])
            for name, a, b in zip(op.outputs, edges[:-1], edges[1:]):
                env[name] = np.ascontiguousarray(ins[0][:, a:b])
            return
        elif kind == "rotary":
            heads = self.dims[op.attrs["heads"]]
            out = np.empty_like(ins[0])
            for r, p in enumerate(env["_pos"]):
                out[r] = kl.rotary_fwd(ins[0][r : r + 1], 1, heads, cfg.rotary_dim,
                                       cfg.rotary_interleaved, self.cos[p : p + 1],
                                       self.sin[p : p + 1])[0]  # fmt: skip
            out = self.store(out)
        elif kind == "attention":
            out = self.attention(ins, layer, states)
        elif kind == "activation":
            if op.attrs["fn"] == "silu":
                out = kl.swiglu_fwd(ins[0], np.ones_like(ins[0]))
            else:
                out = kn.gelu_tiled(ins[0], op.attrs["fn"] != "gelu", np.empty_like(ins[0]))
            out = self.store(out)
        elif kind == "mul":
            out = self.store(np.multiply(ins[0], ins[1], dtype=np.float32))
        elif kind == "add":
            out = kn.add_tiled(ins[0], ins[1], np.empty_like(ins[0]))
            for extra in ins[2:]:
                out = kn.add_tiled(out, extra, out)
            out = self.store(out)
        else:  # pragma: no cover - a family added an op kind without decode numerics
            raise ConfigError(f"op {op.name}: kind {kind!r} has no decode numerics")
        env[op.outputs[0]] = out

    def attention(self, ins: list[np.ndarray], layer: int, states) -> np.ndarray:
        """Append each request's new K/V row to its cache; attend over the whole cache."""
        q, k, v = ins
        cfg = self.cfg
        out = np.empty_like(q)
        for r, s in enumerate(states):
            n = s.length
            s.k[layer, n] = k[r]
            s.v[layer, n] = v[r]
            out[r] = attention_decode(q[r], s.k[layer, : n + 1], s.v[layer, : n + 1],
                                      cfg.n_head, int(cfg.n_kv_heads), self.scale,
                                      self.plan.kv)  # fmt: skip
        return self.store(out)
