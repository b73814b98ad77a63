"""Weight streaming: weights stream from MemoryX one layer at a time through the whole wafer,
activations stay resident in segments of ``m`` tokens over ``P`` PEs.

Modules, in the order data flows:

* :mod:`.layout`: the one layout type, :class:`TileLayout` (the per-PE tiling of the
  activations) and :class:`WSLayout` (a micro-batch's tiling placed on the grid);
* :mod:`.head_split`: ``P`` wider than ``n_head`` (a head's features over ``k`` PEs);
* :mod:`.plan`: ``P``, ``m`` and the micro-batch split that fits SRAM (:func:`plan_layout`);
* :mod:`.builder`: the lowering to a :class:`wse_sim.program.Program`
  (:func:`lower_weight_streaming`, gpt2's layer); :mod:`.graph_builder` walks the op graph of
  the other families;
* :mod:`.search`: the layout search by analytic time; :mod:`.mode`: the base of the
  weight-streaming mappings; :mod:`.variants`: the mappings registered by name
  (``weight_streaming``, ``summa``, ``cannon``, ``meshgemm``, ``row_1d``, ``col_1d``).

Importing the package registers the mappings (:mod:`gpt_workload.mappings`).
"""

from __future__ import annotations

from gpt_workload.mappings.weight_streaming import variants  # noqa: F401 (registers)
from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.mappings.weight_streaming.layout import (
    TileLayout,
    WSLayout,
    qkv_column_permutation,
)
from gpt_workload.mappings.weight_streaming.plan import (
    choose_P,
    max_batch_single_micro,
    pipeline_chunks,
    plan_layout,
)

__all__ = [
    "TileLayout",
    "WSLayout",
    "choose_P",
    "lower_weight_streaming",
    "max_batch_single_micro",
    "pipeline_chunks",
    "plan_layout",
    "qkv_column_permutation",
]
