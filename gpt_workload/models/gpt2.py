"""The ``gpt2`` family: GPT-2 / Cerebras-GPT (learned positions, LayerNorm, GELU, tied head).

Config parsing, presets and weights are the original ones (:mod:`gpt_workload.config`,
:mod:`gpt_workload.weights`); this module gives them the family interface of
:mod:`gpt_workload.models`.
"""

from __future__ import annotations

from gpt_workload.config import PRESETS as _CEREBRAS
from gpt_workload.config import from_hf_dict, to_hf_dict

__all__ = ["ARCHITECTURE", "MODEL_TYPE", "PRESETS", "SOURCES", "from_hf_dict", "to_hf_dict"]

MODEL_TYPE = "gpt2"
ARCHITECTURE = "GPT2LMHeadModel"

#: The seven Cerebras-GPT models (shapes: /work/shared/reference/cerebras_gpt.md).
PRESETS = dict(_CEREBRAS)

#: Citation per preset.
SOURCES = {
    name: f"huggingface.co/cerebras/Cerebras-GPT-{name.split('-')[-1].upper()}/config.json "
    "(Dey et al. 2023, arXiv 2304.03208)"
    for name in PRESETS
}
