"""The Program IR: what a lowering hands to every timing backend.

A :class:`Program` is an ordered list of :class:`Kernel` s. Each kernel runs on the PE grid;
its PEs fall into a few *symmetry classes* (:class:`PEClass`): PEs that do identical work,
so a backend simulates one representative per class and weights it by the class size. A
kernel also carries its fabric transfers (:class:`Transfer`), the weight bytes it needs from
MemoryX (grouped into :class:`WeightBlock` s that the weight-streaming scheduler moves), its
SRAM use per PE and its model FLOPs.

Units: cycles of the PE clock, bytes, FLOP. The Program is shape-only; the numerics of a
kernel live in the workload package and are referenced by ``Kernel.op``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Program:
    """An ordered list of kernels for one grid, plus the data the backends need.

    Attributes:
        name: e.g. ``"cerebras-gpt-111m/weight_streaming"``.
        rows, cols: the PE grid it was lowered for.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        kernels: in execution order (kernels run one after another on the whole wafer).
        weight_blocks: in streaming order of first use.
        class_maps: ``{key: int16 array [rows, cols]}``, class index per PE, -1 = idle.
        meta: lowering facts for the report (layout, micro-batches, tokens); a training
            program sets ``meta["systems"]`` (data-parallel systems, default 1).
        gradient_blocks: weight-gradient blocks streamed out (training only; empty for a
            forward pass, whose timing then ignores egress and the optimizer entirely).
    """

    name: str
    rows: int
    cols: int
    precision: str
    kernels: list[Kernel]
    weight_blocks: list[WeightBlock]
    class_maps: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)
    gradient_blocks: list[GradientBlock] = field(default_factory=list)

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
