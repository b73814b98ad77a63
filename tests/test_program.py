"""The Program's typed facts: what a lowering hands the backends, the numerics and the report
(layout geometry, workload, systems, training schedule), and Kernel.phase. Expected values are
closed forms of the layout (tokens, segments, PEs), not read back from the lowering."""

import dataclasses
import json

import numpy as np
import pytest

from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.models import resolve_model
from gpt_workload.training.lowering import lower_training
from wse_sim.arch import load_arch
from wse_sim.program import Kernel, LayoutGeometry, PEClass, Program

GRID = load_arch("grid32")


def test_weight_streaming_program_carries_its_geometry_and_workload():
    cfg = resolve_model("gpt-tiny")
    prog = lower_weight_streaming(cfg, GRID, 3, 64, "fp16", P=4, m=16)
    lay, w = prog.layout, prog.workload
    assert (lay.pes_per_segment, lay.tokens_per_segment) == (4, 16)
    assert lay.segments_per_sequence == 64 // 16
    assert lay.active_pes == lay.sequences_per_micro_batch * (64 // 16) * 4
    assert lay.grid == (GRID.wafer.rows, GRID.wafer.cols) and lay.pipeline is None
    assert (w.batch, w.seq_len, w.tokens) == (3, 64, 3 * 64)
    assert prog.mapping == "weight_streaming" and prog.systems == 1 and prog.training is None
    assert not hasattr(prog, "meta")
    # the report's layout dict: JSON-safe, the grid a list, no unset field
    d = lay.describe()
    assert json.loads(json.dumps(d)) == d and d["grid"] == list(lay.grid)
    assert None not in d.values()


def test_training_program_carries_systems_and_its_schedule():
    cfg = dataclasses.replace(resolve_model("gpt-tiny"), n_layer=2)
    prog = lower_training(cfg, GRID, 4, 64, "fp16", systems=3, checkpoint_offload="off")
    assert prog.systems == 3 and prog.gradient_blocks
    tr = prog.training
    assert tr.activations in ("store", "recompute")
    assert list(tr.simulated_micro_batches) == list(range(prog.workload.micro_batches))
    assert tr.checkpoint_bytes_simulated == 0
    assert tr.plan["activations"] == tr.activations  # the report's copy agrees
    assert json.dumps(prog.describe())  # JSON-safe for reports and caches


def test_hand_built_program_gets_a_plain_grid_layout():
    k = Kernel("k", "x", 0, 0, (PEClass(0, 4, 1.0, 0.0, 0.0),), "m")
    prog = Program("p", 2, 2, "fp32", [k], [], {"m": np.zeros((2, 2), np.int16)})
    assert prog.layout == LayoutGeometry(grid=(2, 2))
    assert prog.layout.describe() == {"pes_per_segment": 1, "grid": [2, 2]}
    assert prog.workload is None and prog.systems == 1 and k.phase == "forward"
    bad = dataclasses.replace(prog, kernels=[dataclasses.replace(k, phase="sideways")])
    with pytest.raises(ValueError, match="phase 'sideways'"):
        bad.validate()
