"""The common base of the weight-streaming-mode mappings (:mod:`.weight_streaming`).

:class:`_WSMode` lowers with :func:`gpt_workload.lowering.lower_weight_streaming` (a mapping's
strategy replacing the GEMM or attention lowering), and a family other than gpt2 by walking
its op graph (:class:`gpt_workload.lowering_graph.GraphBuilder`, numerics
:func:`gpt_workload.numerics_graph.run_graph_numerics`); ``_P`` and ``_M`` are the layout
knobs every one of them has.
"""

from __future__ import annotations

from gpt_workload.lowering import lower_weight_streaming, max_batch_single_micro
from gpt_workload.lowering_graph import GraphBuilder
from gpt_workload.mappings.base import Knob, Mapping

__all__ = ["_M", "_P", "_WSMode"]

_P = Knob(
    "pes_per_segment",
    "int",
    None,
    "PEs per segment P: the feature (reduction) split over columns; divides n_head "
    "(default: n_head, or its largest divisor the grid fits)",
    lo=1,
)
_M = Knob(
    "tokens_per_segment",
    "int",
    None,
    "tokens per segment m (default: as wide a spread over the grid as fits)",
    lo=1,
)


class _WSMode(Mapping):
    """Common code of the weight-streaming-mode mappings (not registered)."""

    mode = "weight_streaming"
    packet_ok = False

    def _layout_args(self) -> dict:
        return {"P": self.values.get("pes_per_segment"), "m": self.values.get("tokens_per_segment")}

    def strategy(self, cfg, arch, precision):
        """The :class:`_Builder` strategy (None: the default kernels)."""
        return None

    def lower(self, cfg, arch, batch: int, seq_len: int, precision: str):
        """Lower a forward pass (see :meth:`Mapping.lower`); a family other than gpt2 by
        walking its op graph (:class:`gpt_workload.lowering_graph.GraphBuilder`)."""
        self.check_family(cfg)
        return lower_weight_streaming(
            cfg,
            arch,
            batch,
            seq_len,
            precision,
            strategy=self.strategy(cfg, arch, precision),
            spec=self.spec,
            builder=None if cfg.family == "gpt2" else GraphBuilder,
            **self._layout_args(),
        )

    def max_batch_single_micro(self, cfg, arch, seq_len: int, precision: str) -> int:
        """Largest batch in one micro-batch (the segment layout's SRAM and grid limits)."""
        self.check_family(cfg)
        return max_batch_single_micro(cfg, arch, seq_len, precision, **self._layout_args())

    def numerics(self, program, cfg, weights, tokens, precision: str):
        """Logits through this mapping's GEMM and attention order (a family other than
        gpt2: :func:`gpt_workload.numerics_graph.run_graph_numerics`)."""
        from gpt_workload.numerics import run_numerics

        if cfg.family != "gpt2":
            from gpt_workload.numerics_graph import run_graph_numerics

            return run_graph_numerics(program, cfg, weights, tokens, precision)

        return run_numerics(
            program,
            cfg,
            weights,
            tokens,
            precision,
            gemm=self.gemm_numerics_fn(),
            attention=self.attention_numerics_fn(),
        )

    def gemm_numerics_fn(self):
        """A :func:`kernels.gemm_ws`-compatible function in this mapping's order (None:
        ``gemm_ws`` itself)."""
        return None

    def attention_numerics_fn(self):
        """A :func:`kernels.attention_tiled`-compatible function (None: that one)."""
        return None
