"""Layer-pipelined execution: every weight resident in SRAM, one wafer region per stage.

The model is cut into stages: the embedding, groups of ``layers_per_stage`` transformer
layers, and the head (final LayerNorm, tied LM head, cross-entropy statistics). Each stage
owns a band of whole grid rows (``rows_s x cols`` PEs; bands in stage order from the north
edge, so consecutive stages are neighbours) and keeps its weights there for the whole run:
nothing streams from MemoryX (the one-time weight load is reported in ``Program.notes``).
Micro-batches of ``micro_batch`` sequences flow from band to band over the fabric (GPipe:
Huang et al. 2019, "GPipe: Efficient Training of Giant Neural Networks using Pipeline
Parallelism", NeurIPS; Cerebras calls this "layer pipelined" execution, Lie 2022, "Cerebras
Architecture Deep Dive", Hot Chips 34). The tied embedding is held twice, by the first and
the last stage, as Megatron-LM does for pipeline parallelism (Narayanan et al. 2021, SC21).

**Regions.** A stage's rows are proportional to its work per micro-batch (its compute cycles
on a reference band times the band's rows: its FLOPs weighted by how efficiently its ops use
a PE, so the ticks come out alike), but never fewer than its SRAM needs: its weights, the
live activations of the micro-batch it works on, its fp32 GEMM accumulators and the
algorithm's panel buffers, and the hand-off buffers of the micro-batch arriving and the one
leaving. Within a band, data is laid out 2-D (tokens over the band's rows, features over its
columns) and each GEMM runs the ``gemm`` algorithm of :mod:`gpt_workload.mappings.gemm` on
the ``rows_s x cols`` grid with its weights resident; attention regroups the band into head-
parallel segments (as the weight-streaming lowering does) through a row all-to-all.

**Timing in the Program IR.** One kernel per pipeline tick (``n_micro + n_stages - 1``
ticks); its PE classes are the stages' regions (class ``s`` = stage ``s``; a stage with no
micro-batch in a tick is a class with no work). A region's work in a tick is the sum over
its ops (compute) and its links' bytes summed over its ops per link group (fabric); as the
regions use disjoint links, the tick's transfer per link group carries the *busiest*
region's bytes, and the tick's latency is the slowest region's (its ops' fill latencies
added). The backends then time each tick as ``max(C, F) + min(C, F) / n + latency`` with
``C`` the slowest active region's compute and ``F`` the busiest active region's links: the
tick lasts as long as the slowest active stage. Activations move to the next band over the
``cols`` vertical links between the bands (``Transfer`` "activation hand-off", hops = the
distance between the bands' centres).

Closed form (the tests hold the backends to it): with per-stage compute ``c_s``, fabric
``f_s`` and latency ``l_s`` (``Program.pipeline_stages``), stage ``s`` active in tick ``t``
iff ``0 <= t - s < n_micro``, and ``C_t, F_t, L_t`` their maxima over the active stages,

    total = sum_t [max(C_t, F_t) + min(C_t, F_t) / n + L_t],

``(n_micro + n_stages - 1) x tick`` when the stages are balanced.
"""

from __future__ import annotations

from gpt_workload.mappings.layer_pipelined.gemm_adapter import (
    column_sources,
    folded_column_multicast,
    summa_resident_closed_form,
)
from gpt_workload.mappings.layer_pipelined.mapping import (
    LayerPipelined,
    lower_layer_pipelined,
    pipeline_numerics,
)
from gpt_workload.mappings.layer_pipelined.plan import (
    MAX_TICKS,
    MICRO_BATCH_AUTO,
    TICK_CHUNKS,
    PipelinePlan,
    pipeline_cycles,
    plan_pipeline,
    tick_terms,
)
from gpt_workload.mappings.layer_pipelined.stages import Stage, StageCost, make_stages, stage_cost

__all__ = [
    "MAX_TICKS",
    "MICRO_BATCH_AUTO",
    "TICK_CHUNKS",
    "LayerPipelined",
    "PipelinePlan",
    "Stage",
    "StageCost",
    "column_sources",
    "folded_column_multicast",
    "lower_layer_pipelined",
    "make_stages",
    "pipeline_cycles",
    "pipeline_numerics",
    "plan_pipeline",
    "stage_cost",
    "summa_resident_closed_form",
    "tick_terms",
]
