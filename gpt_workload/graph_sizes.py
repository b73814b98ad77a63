"""Streamed weight-block sizes of any family, read off its op graph.

The weight-streaming lowering streams one block per micro-batch for the embedding, one per
layer and one for the final norm and the LM head. For gpt2 its own closed form is used
(:func:`gpt_workload.mappings.weight_streaming.plan._block_bytes`); the other families sum the
parameter elements
each op of :func:`gpt_workload.models.build_graph` reads (:meth:`OpGraph.param_elems`).
"""

from __future__ import annotations

from gpt_workload.config import GPTConfig
from gpt_workload.models import build_graph

__all__ = ["family_block_bytes"]


def family_block_bytes(cfg: GPTConfig, s: int, T: int) -> list[int]:
    """``[embedding, layer, head]`` block bytes at ``s`` bytes per element for ``T`` tokens
    per sequence (a learned position table streams only its first ``T`` rows)."""
    g = build_graph(cfg)
    d = cfg.d_model

    def elems(ops) -> int:
        return sum(T * d if op.kind == "position_add" else g.param_elems(op) for op in ops)

    return [elems(g.prologue) * s, elems(g.layer) * s, elems(g.epilogue) * s]
