"""Mappings: the ways a GPT model's ops are laid onto the wafer (see :mod:`.base`).

Importing this package registers every mapping.
"""

from gpt_workload.mappings.base import (  # noqa: F401
    MAPPINGS,
    Knob,
    Mapping,
    list_mappings,
    parse_mapping,
    register,
)
