"""The Program IR: what a lowering hands to every timing backend.

A :class:`Program` is an ordered list of :class:`Kernel` s. Each kernel runs on the PE grid;
its PEs fall into a few *symmetry classes* (:class:`PEClass`): PEs that do identical work,
so a backend simulates one representative per class and weights it by the class size. A
kernel also carries its fabric transfers (:class:`Transfer`), the weight bytes it needs from
MemoryX (grouped into :class:`WeightBlock` s that the weight-streaming scheduler moves), its
SRAM use per PE and its model FLOPs.

Units: cycles of the PE clock, bytes, FLOP. The Program is shape-only; the numerics of a
kernel live in the workload package and are referenced by ``Kernel.op``.

What else the backends, the numerics and the report need is in typed fields, never in a dict
read by key: :class:`LayoutGeometry` (grid, ``P``, ``m``, segments, a layer pipeline's
:class:`PipelineGeometry`), :class:`Workload` (batch, sequence length, micro-batches),
``systems`` (data parallel), :class:`TrainingSchedule`, :class:`PipelineStage` terms, a decode
step's ``sram_cycles`` and ``weight_bytes_read``; ``notes`` holds report-only facts nothing
reads to compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class PEClass:
    """PEs of one kernel that do identical work.

    Attributes:
        index: class id; the program's ``class_maps[kernel.class_map]`` grid holds it per PE.
        count: number of PEs in the class.
        busy_cycles: arithmetic (FMAC datapath) cycles per PE.
        overhead_cycles: fixed vector-op setup cycles per PE (busy, but not arithmetic).
        flops: model FLOPs per PE (GEMM and attention MACs x 2; 0 for bookkeeping ops).
    """

    index: int
    count: int
    busy_cycles: float
    overhead_cycles: float
    flops: float

    @property
    def cycles(self) -> float:
        """Total cycles the PE spends on the kernel's work: busy + overhead."""
        return self.busy_cycles + self.overhead_cycles


@dataclass(frozen=True)
class Transfer:
    """One fabric transfer pattern of a kernel.

    Attributes:
        name: e.g. ``"weight multicast"``, ``"partial-sum reduce-scatter"``.
        pattern: ``multicast_2d``, ``reduce_scatter_row``, ``multicast_chain``,
            ``allreduce_row``.
        link_group: links it runs on (``"vertical"`` or ``"horizontal"``): transfers in the
            same group of concurrently running kernels share the links.
        max_link_bytes: bytes carried by the busiest link, per direction.
        link_bytes: bytes x links traversed, summed over the whole wafer.
        hops: longest path in hops (pipeline fill latency).
        turns: turns on that path.
        colour: the colour (virtual channel) it is routed on.
        relays: PEs on that path that receive, combine and re-send the data (store-and-forward
            stages of a chain; each adds RAMP out + PE forward + RAMP in, the ``(2 T_R + 1) D``
            term of [HPDC24]).
        ramp_bytes: bytes the busiest PE receives through its RAMP (router -> PE) for this
            transfer; every transfer of a kernel shares that one port (0: not modelled).
    """

    name: str
    pattern: str
    link_group: str
    max_link_bytes: float
    link_bytes: float
    hops: int
    turns: int
    colour: int
    relays: int = 0
    ramp_bytes: float = 0.0


@dataclass(frozen=True)
class WeightBlock:
    """A unit of weights streamed from MemoryX: one layer's (or the embedding's) weights.

    Attributes:
        id: block id (index into ``Program.weight_blocks``).
        name: ``"embed"``, ``"layer3"``, ``"lm_head"``.
        bytes: bytes moved over the I/O for one pass of the block.
    """

    id: int
    name: str
    bytes: int


@dataclass(frozen=True)
class GradientBlock:
    """A unit of weight gradients streamed out to MemoryX (training programs only).

    Its bytes are produced by the kernels naming it in ``Kernel.grad_block`` and leave the
    wafer over ``io.egress_bytes_per_s`` (through SwarmX when the program is data parallel);
    once all of them have arrived MemoryX updates ``optimizer_params`` parameters (AdamW at
    ``io.optimizer_params_per_s``; 0 when the block is only accumulated, e.g. an earlier
    micro-batch of a step).

    Attributes:
        id: index into ``Program.gradient_blocks``.
        name: e.g. ``"mb0.grad.layer3"``.
        bytes: gradient bytes egressed for the block.
        optimizer_params: parameters updated once the block has arrived (0: none).
    """

    id: int
    name: str
    bytes: int
    optimizer_params: int = 0


#: what part of a step a kernel belongs to (:attr:`Kernel.phase`)
Phase = Literal["forward", "recompute", "backward"]
#: the allowed :data:`Phase` values: ``forward`` (a forward pass, inference or the forward of
#: a training step), ``recompute`` (a training step's forward work redone in the backward to
#: regenerate activations it did not keep), ``backward`` (gradients). The optimizer update is
#: not a kernel: it runs in MemoryX (:func:`wse_sim.timing.common.optimizer_schedule`).
PHASES: tuple[str, ...] = ("forward", "recompute", "backward")


@dataclass(frozen=True)
class Kernel:
    """One op lowered onto the wafer.

    Attributes:
        name: unique, e.g. ``"mb0.L3.qkv"``.
        op: the op kind (``"qkv"``, ``"attention"``, ``"layernorm_1"`` ...).
        layer: transformer layer index; -1 for the embedding, ``n_layer`` for the head.
        micro_batch: micro-batch index.
        classes: the PE symmetry classes.
        class_map: key into ``Program.class_maps`` (the per-PE class index grid).
        transfers: fabric transfers, overlapped with compute in ``n_chunks`` pipeline chunks.
        weight_block: id of the weight block it consumes, or -1.
        weight_bytes: bytes of that block this kernel consumes.
        sram_bytes: peak SRAM per PE while the kernel runs (resident + scratch), bytes.
        flops: model FLOPs of the kernel, whole wafer.
        n_chunks: pipeline chunks for compute/fabric overlap.
        grad_block: id of the gradient block it produces (training), or -1.
        grad_bytes: weight-gradient bytes it hands to the egress when it ends; it holds one
            of ``io.gradient_buffer_slots`` from its start until they have left the wafer.
        phase: one of :data:`PHASES`, set by the lowering (never parsed from the name).
    """

    name: str
    op: str
    layer: int
    micro_batch: int
    classes: tuple[PEClass, ...]
    class_map: str
    transfers: tuple[Transfer, ...] = ()
    weight_block: int = -1
    weight_bytes: int = 0
    sram_bytes: int = 0
    flops: float = 0.0
    n_chunks: int = 8
    grad_block: int = -1
    grad_bytes: int = 0
    phase: Phase = "forward"

    @cached_property
    def critical_cycles(self) -> float:
        """Cycles of the slowest PE class: the kernel's compute time (computed once per
        kernel: a kernel is immutable and attention kernels have thousands of classes)."""
        return max((c.cycles for c in self.classes), default=0.0)

    @property
    def busy_pe_cycles(self) -> float:
        """Arithmetic cycles summed over all PEs of the wafer."""
        return sum(c.busy_cycles * c.count for c in self.classes)


def _fields(obj) -> dict:
    """``{field: value}`` of a dataclass instance, values as they are (not copied)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


@dataclass(frozen=True)
class PipelineGeometry:
    """How a layer-pipelined Program cuts the grid into stage bands.

    Attributes:
        stages: number of pipeline stages (the embedding, the layer groups, the head).
        layers_per_stage: transformer layers per layer stage.
        gemm: the GEMM algorithm on each band (e.g. ``"summa"``).
        fold: whether a band's GEMM grid is folded into ``segment_columns`` segments of
            ``gemm_grid_cols`` columns stacked as logical rows.
        gemm_grid_cols: columns of one GEMM grid (``pes_per_segment`` folded, else the grid).
        segment_columns: segments side by side in a band (1 unfolded).
        pipeline_ticks: kernels of the Program (``micro_batches + stages - 1`` ticks).
        rows_per_stage: grid rows of each stage's band, in stage order.
    """

    stages: int
    layers_per_stage: int
    gemm: str
    fold: bool
    gemm_grid_cols: int
    segment_columns: int
    pipeline_ticks: int
    rows_per_stage: tuple[int, ...]


@dataclass(frozen=True)
class LayoutGeometry:
    """Where a Program's tokens and features live on the grid: what the backends, the
    numerics and the report read (:attr:`Program.layout`).

    A *segment* is ``pes_per_segment`` PEs in a row holding ``tokens_per_segment`` tokens of
    one sequence, each PE a slice of the features. Fields a layout does not have are None
    (and left out of :meth:`describe`).

    Attributes:
        grid: ``(rows, cols)`` of the PE grid.
        pes_per_segment: PEs a token's features are split over (``P``; 1 when not split).
        tokens_per_segment: tokens a segment holds (``m``).
        heads_per_pe: whole attention heads per PE (1 when a head is split).
        pes_per_head: PEs one head's features are split over (1: whole heads per PE).
        segments_per_sequence: segments one sequence spans.
        sequences_per_micro_batch: sequences resident at once.
        micro_batches: micro-batches the batch is cut into.
        active_pes: PEs holding tokens in one micro-batch.
        pipeline: the stage bands of a layer-pipelined Program (None otherwise).
        search: report-only results of a search that chose this layout or mapping
            (``{"layout_search": {...}}``, ``{"mapping_search": {...}}``), JSON-safe; no
            backend reads it.
    """

    grid: tuple[int, int]
    pes_per_segment: int = 1
    tokens_per_segment: int | None = None
    heads_per_pe: int | None = None
    pes_per_head: int | None = None
    segments_per_sequence: int | None = None
    sequences_per_micro_batch: int | None = None
    micro_batches: int | None = None
    active_pes: int | None = None
    pipeline: PipelineGeometry | None = None
    search: Mapping[str, object] = field(default_factory=dict)

    def with_search(self, key: str, result: Mapping[str, object]) -> LayoutGeometry:
        """A copy with ``search[key] = result`` (the layout is frozen)."""
        return replace(self, search={**self.search, key: result})

    def describe(self) -> dict:
        """JSON-safe summary for the report (``Report.layout``): the fields that are set,
        the pipeline's flattened in, then the search results."""
        out: dict = {"pes_per_segment": self.pes_per_segment}
        for key in ("heads_per_pe", "pes_per_head", "tokens_per_segment",
                    "segments_per_sequence"):  # fmt: skip
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.pipeline is not None:
            pl = self.pipeline
            out.update(stages=pl.stages, layers_per_stage=pl.layers_per_stage, gemm=pl.gemm,
                       fold=pl.fold, gemm_grid_cols=pl.gemm_grid_cols,
                       segment_columns=pl.segment_columns)  # fmt: skip
        for key in ("sequences_per_micro_batch", "micro_batches"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.pipeline is not None:
            out.update(pipeline_ticks=self.pipeline.pipeline_ticks,
                       rows_per_stage=list(self.pipeline.rows_per_stage))  # fmt: skip
        if self.active_pes is not None:
            out["active_pes"] = self.active_pes
        out["grid"] = list(self.grid)
        out.update(self.search)
        return out


@dataclass(frozen=True)
class Workload:
    """The batch a Program computes (:attr:`Program.workload`).

    Attributes:
        batch: sequences (of one system, for a data-parallel training step).
        seq_len: tokens per sequence.
        micro_batches: micro-batches the batch is cut into (run one after another).
        sequences_in_last_micro_batch: sequences of the last micro-batch (the others hold
            ``layout.sequences_per_micro_batch``).
    """

    batch: int
    seq_len: int
    micro_batches: int = 1
    sequences_in_last_micro_batch: int = 0

    @property
    def tokens(self) -> int:
        """``batch x seq_len``."""
        return self.batch * self.seq_len


@dataclass(frozen=True)
class TrainingSchedule:
    """What a training Program simulates of one system's step (:attr:`Program.training`).

    Attributes:
        simulated_micro_batches: indices of the micro-batches lowered (identical middle ones
            are skipped and extrapolated: :attr:`extrapolation`).
        extrapolation: how the step time follows from the simulated micro-batches.
        activations: ``"store"``, ``"recompute"`` or ``"offload"``: where the activations the
            backward needs live.
        passes_per_sequence: passes a sequence is split into (1 unless even one sequence's
            activations do not fit); tokens_per_pass: tokens of one pass.
        residual_gradient_bytes_per_pe: a layer's checkpoint (its input), bytes per PE.
        layer_activation_bytes_per_pe: activations one layer keeps for its backward, bytes
            per PE.
        checkpoint_bytes_simulated: checkpoint bytes the simulated kernels send out (offload).
        cross_pass_bytes_simulated: K/V bytes the passes of split sequences send out.
        plan: report-only summary of the lowering's plan (JSON-safe: SRAM needs per policy,
            what is kept and recomputed, checkpoint offload); no backend reads it.
    """

    simulated_micro_batches: tuple[int, ...]
    extrapolation: str
    activations: str
    passes_per_sequence: int = 1
    tokens_per_pass: int = 0
    residual_gradient_bytes_per_pe: int = 0
    layer_activation_bytes_per_pe: int = 0
    checkpoint_bytes_simulated: int = 0
    cross_pass_bytes_simulated: int = 0
    plan: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineStage:
    """One stage of a layer-pipelined Program and its per-tick terms
    (:attr:`Program.pipeline_stages`), cycles of the PE clock.

    Attributes:
        stage: its name (``"embed"``, ``"layers0-3"``, ``"head"``).
        rows, first_row: its band of grid rows; pes: PEs of the band.
        weight_bytes: weights resident on the band.
        flops_per_micro_batch: model FLOPs of one micro-batch through the stage.
        compute_cycles, fabric_cycles, latency_cycles: the stage's compute, fabric and
            latency terms of a tick.
        sram_bytes_per_pe: peak SRAM per PE; sram_parts: that peak by consumer, bytes.
    """

    stage: str
    rows: int
    first_row: int
    pes: int
    weight_bytes: int
    flops_per_micro_batch: float
    compute_cycles: float
    fabric_cycles: float
    latency_cycles: float
    sram_bytes_per_pe: int
    sram_parts: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Program:
    """An ordered list of kernels for one grid, plus the typed facts the backends, the
    numerics and the report read (never a free-form dict a backend reads by key).

    Attributes:
        name: e.g. ``"cerebras-gpt-111m/weight_streaming"``.
        rows, cols: the PE grid it was lowered for.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        kernels: in execution order (kernels run one after another on the whole wafer).
        weight_blocks: in streaming order of first use.
        class_maps: ``{key: int16 array [rows, cols]}``, class index per PE, -1 = idle.
        layout: where tokens and features live (default: a ``rows x cols`` grid with no
            feature split).
        gradient_blocks: weight-gradient blocks streamed out (training only; empty for a
            forward pass, whose timing then ignores egress and the optimizer entirely).
        mapping: the spec of the mapping that lowered it (``""``: built by hand).
        workload: the batch it computes (None: not a batch of whole sequences, e.g. a decode
            step or a kernel micro-benchmark).
        systems: data-parallel systems its gradients are reduced over through SwarmX (1: one
            system; the backends' gradient path and the I/O energy read it).
        training: what a training Program simulates of a step (None for a forward pass).
        pipeline_stages: the stages of a layer-pipelined Program (empty otherwise).
        sram_cycles: ``{kernel name: cycles}`` a kernel's slowest PE spends beyond its FMAC
            bound because SRAM bandwidth limits it (a decode step's GEMVs; empty: none).
        weight_bytes_read: weight bytes one decode step reads from SRAM or MemoryX (0: not
            a decode step).
        notes: report-only facts of the lowering (JSON-safe); nothing reads them to time,
            compute or size anything.
    """

    name: str
    rows: int
    cols: int
    precision: str
    kernels: list[Kernel]
    weight_blocks: list[WeightBlock]
    class_maps: dict[str, np.ndarray]
    layout: LayoutGeometry | None = None
    gradient_blocks: list[GradientBlock] = field(default_factory=list)
    mapping: str = ""
    workload: Workload | None = None
    systems: int = 1
    training: TrainingSchedule | None = None
    pipeline_stages: tuple[PipelineStage, ...] = ()
    sram_cycles: Mapping[str, float] = field(default_factory=dict)
    weight_bytes_read: int = 0
    notes: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout is None:
            self.layout = LayoutGeometry(grid=(self.rows, self.cols))

    def describe(self) -> dict:
        """JSON-safe summary of the Program's facts (everything but kernels, blocks and class
        maps), for reports and caches; no backend reads it."""
        out: dict = {
            "name": self.name,
            "mapping": self.mapping,
            "layout": self.layout.describe(),
            "systems": self.systems,
        }
        if self.workload is not None:
            out["workload"] = {**_fields(self.workload), "tokens": self.workload.tokens}
        if self.training is not None:
            out["training"] = _fields(self.training)
        if self.pipeline_stages:
            out["stages"] = [_fields(st) for st in self.pipeline_stages]
        if self.sram_cycles:
            out["sram_cycles"] = dict(self.sram_cycles)
        if self.weight_bytes_read:
            out["weight_bytes_read"] = self.weight_bytes_read
        out.update(self.notes)
        return out

    @property
    def flops(self) -> float:
        """Model FLOPs of the whole program."""
        return sum(k.flops for k in self.kernels)

    @property
    def weight_bytes_streamed(self) -> int:
        """Bytes moved over MemoryX ingress: each kernel's consumed bytes."""
        return sum(k.weight_bytes for k in self.kernels)

    @property
    def grad_bytes_streamed(self) -> int:
        """Weight-gradient bytes moved over the egress: each kernel's produced bytes."""
        return sum(k.grad_bytes for k in self.kernels)

    def validate(self) -> None:
        """Check internal consistency (class maps cover the grid, classes are in range).

        Raises:
            ValueError: the Program is malformed (a lowering bug, not user input), or a
                kernel's phase is not one of :data:`PHASES`.
        """
        for key, cmap in self.class_maps.items():
            if cmap.shape != (self.rows, self.cols):
                raise ValueError(f"class map {key!r} has shape {cmap.shape}")
        for k in self.kernels:
            if k.phase not in PHASES:
                raise ValueError(f"kernel {k.name}: phase {k.phase!r} is not one of {PHASES}")
            cmap = self.class_maps[k.class_map]
            counts = np.bincount(cmap[cmap >= 0].ravel(), minlength=len(k.classes))
            for c in k.classes:
                if counts[c.index] != c.count:
                    raise ValueError(
                        f"kernel {k.name}: class {c.index} count {c.count} != map {counts[c.index]}"
                    )
