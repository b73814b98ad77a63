"""Mappings: the ways a GPT model's ops are laid onto the wafer (see :mod:`.base`).

Importing this package registers every mapping.
"""

# ruff: noqa: I001 (registration order is the import order)
# importing the modules registers their mappings (order = ``wse-sim mappings list`` order)
from gpt_workload.mappings import weight_streaming  # noqa: F401, E402
from gpt_workload.mappings.base import (  # noqa: F401
    MAPPINGS,
    Knob,
    Mapping,
    list_mappings,
    parse_mapping,
    register,
)

# registered on import: layer_pipelined, auto
from gpt_workload.mappings import layer_pipelined  # noqa: F401, E402
from gpt_workload.mappings import auto  # noqa: F401, E402
