"""The common base of the weight-streaming-mode mappings (:mod:`.variants`).

:class:`_WSMode` lowers with
:func:`gpt_workload.mappings.weight_streaming.builder.lower_weight_streaming` (a mapping's
strategy replacing the GEMM or attention lowering), and a family other than gpt2 by walking
its op graph (:class:`gpt_workload.mappings.weight_streaming.graph_builder.GraphBuilder`, numerics
:func:`gpt_workload.numerics_graph.run_graph_numerics`); ``_P`` and ``_M`` are the layout
knobs every one of them has (``auto`` by default: searched by a mapping with
``searches_layout``, :mod:`.search`; ``heads`` for ``P``: the classic layout, ``P =
n_head`` or its largest divisor the grid fits, at the widest spread, not searched; ``io``
for ``P``: the narrowest segment whose columns take in the MemoryX ingress rate,
:func:`gpt_workload.mappings.weight_streaming.head_split.io_pes_per_segment`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt_workload.mappings.base import Knob, Mapping
from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.mappings.weight_streaming.graph_builder import GraphBuilder
from gpt_workload.mappings.weight_streaming.head_split import io_pes_per_segment
from gpt_workload.mappings.weight_streaming.plan import max_batch_single_micro
from gpt_workload.mappings.weight_streaming.search import search_layout

__all__ = ["_M", "_P", "_WSMode"]

@dataclass(frozen=True)
class _AutoInt(Knob):
    """An int knob that also takes words (``auto``, ``io``) the mapping resolves itself."""

    words: tuple = ("auto",)

    def allowed(self) -> str:
        """``auto[, io] or an integer >= lo``."""
        return ", ".join(self.words) + " or " + super().allowed()

    def parse(self, mapping: str, raw):
        """A word as itself, else an int as :meth:`Knob.parse`."""
        if isinstance(raw, str) and raw.strip() in self.words:
            return raw.strip()
        return super().parse(mapping, raw)


_P = _AutoInt(
    "pes_per_segment",
    "int",
    "auto",
    "PEs per segment P: the feature (reduction) split over columns; a divisor of n_head or "
    "n_head x k with k dividing d_head (heads split over k PEs). auto: weight_streaming "
    "searches P and m for the least analytic time, the other mappings take n_head (or its "
    "largest divisor the grid fits); heads: that classic layout, not searched; io: the "
    "narrowest P whose columns take in the MemoryX ingress rate",
    lo=1,
    words=("auto", "heads", "io"),
)
_M = _AutoInt(
    "tokens_per_segment",
    "int",
    "auto",
    "tokens per segment m (auto: searched with P by weight_streaming, else as wide a spread "
    "over the grid as fits)",
    lo=1,
)


class _WSMode(Mapping):
    """Common code of the weight-streaming-mode mappings (not registered)."""

    mode = "weight_streaming"
    packet_ok = False

    #: whether ``auto`` knobs are searched (:mod:`.search`); else the layout's defaults
    searches_layout = False

    def _layout_args(self, cfg=None, arch=None) -> dict:
        """``P`` and ``m`` for the lowering: ints as given, ``auto`` -> None (the layout's own
        choice), ``heads`` -> None, ``io`` ->
        :func:`gpt_workload.mappings.weight_streaming.head_split.
        io_pes_per_segment`."""
        P = self.values.get("pes_per_segment")
        m = self.values.get("tokens_per_segment")
        if P == "io":
            P = io_pes_per_segment(cfg, arch) if cfg is not None else None
        return {"P": None if P in ("auto", "heads") else P, "m": None if m == "auto" else m}

    def _lower_at(self, cfg, arch, batch, seq_len, precision, P, m):
        return lower_weight_streaming(
            cfg,
            arch,
            batch,
            seq_len,
            precision,
            strategy=self.strategy(cfg, arch, precision),
            spec=self.spec,
            builder=None if cfg.family == "gpt2" else GraphBuilder,
            P=P,
            m=m,
        )

    def strategy(self, cfg, arch, precision):
        """The :class:`_Builder` strategy (None: the default kernels)."""
        return None

    def lower(self, cfg, arch, batch: int, seq_len: int, precision: str):
        """Lower a forward pass (see :meth:`Mapping.lower`); a family other than gpt2 by
        walking its op graph
        (:class:`gpt_workload.mappings.weight_streaming.graph_builder.GraphBuilder`)."""
        self.check_family(cfg)
        args = self._layout_args(cfg, arch)
        auto = [self.values.get(k) == "auto" for k in ("pes_per_segment", "tokens_per_segment")]
        classic = self.values.get("pes_per_segment") == "heads"
        if classic or not (self.searches_layout and any(auto)):
            prog = self._lower_at(cfg, arch, batch, seq_len, precision, **args)
        else:
            choice = search_layout(
                lambda P, m: self._lower_at(cfg, arch, batch, seq_len, precision, P, m),
                cfg,
                arch,
                batch,
                seq_len,
                precision,
                key=(type(self).__name__, self.spec),
                **args,
            )
            prog = self._lower_at(cfg, arch, batch, seq_len, precision, choice.P, choice.m)
            prog.layout = prog.layout.with_search("layout_search", choice.describe())
        return prog

    def max_batch_single_micro(self, cfg, arch, seq_len: int, precision: str) -> int:
        """Largest batch in one micro-batch (the segment layout's SRAM and grid limits)."""
        self.check_family(cfg)
        return max_batch_single_micro(cfg, arch, seq_len, precision, **self._layout_args(cfg, arch))

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
