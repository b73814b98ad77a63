"""The resident (serving) mapping: weights held in PE SRAM over one wafer or a pipeline of
wafers (or streamed from MemoryX), a decode step lowered to a Program per system, and the
prefill that fills the K/V cache (:mod:`.layout`, :mod:`.decode`, :mod:`.prefill`)."""

from gpt_workload.mappings.resident.decode import lower_decode_step
from gpt_workload.mappings.resident.layout import (
    GEMVS,
    PLACEMENTS,
    REDUCES,
    DecodeLayout,
    make_layout,
    split_layers,
)

__all__ = [
    "GEMVS",
    "PLACEMENTS",
    "REDUCES",
    "DecodeLayout",
    "lower_decode_step",
    "make_layout",
    "split_layers",
]
