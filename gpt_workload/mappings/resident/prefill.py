"""Prefill of one request: the forward pass over its prompt, keeping K and V in the cache.

:class:`gpt_workload.generation.timing.StepTimer` times a ``streaming`` prefill with this
whole-sequence lowering; a ``resident`` prefill there runs the prompt through the decode
layout's resident tiles in chunks instead (:func:`.decode.lower_decode_step` with
``phase="prefill"``). Both placements are lowered here for comparison.

The forward pass is the existing whole-sequence lowering (``weight_streaming``,
:mod:`gpt_workload.mappings.weight_streaming.builder` / :mod:`gpt_workload.mappings.weight_streaming.graph_builder`, every family) of the
system's layers, for one sequence of the prompt's length:

* ``resident`` placement: the weights are already in SRAM, so the lowered kernels keep their
  compute and fabric transfers (the weights still travel over the fabric from the PEs that
  hold them to the PEs that use them: the lowering's weight multicast) but wait for nothing
  from MemoryX (no weight blocks);
* ``streaming`` placement: the Program as lowered, weights streamed from MemoryX.

After each layer a ``kv_write`` kernel moves the layer's ``T x 2 x kv`` K/V elements to the
cache PEs of the decode layout: each grid column carries its share (``1 / C``) down the
column (``multicast_2d``; the K/V leave the activation layout's token rows and reach the
bands' PEs at most a column's length away). On a pipeline of systems, system ``s`` lowers its
own layers (the embedding on the first, the head on the last) and the activations cross to
the next system over the inter-system link (:func:`intersystem_seconds`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpt_workload.mappings import parse_mapping
from gpt_workload.mappings.resident.layout import DecodeLayout
from wse_sim.arch import ArchConfig
from wse_sim.program import Kernel, PEClass, Program, Transfer

__all__ = ["intersystem_seconds", "lower_prefill"]


def intersystem_seconds(arch: ArchConfig, nbytes: float) -> float:
    """One crossing of ``nbytes`` of activations between two systems:
    ``io.intersystem_latency_s + nbytes / io.intersystem_bytes_per_s``."""
    return arch.io.intersystem_latency_s + nbytes / arch.io.intersystem_bytes_per_s


def lower_prefill(lay: DecodeLayout, prompt_len: int, system: int = 0) -> Program:
    """The Program of one request's prefill (``prompt_len`` tokens) on ``system``.

    Raises:
        ConfigError, FitError: from the forward lowering (a prompt whose activations do not
            fit the wafer).
    """
    layers = lay.layers[system]
    n = len(layers)
    sub = dataclasses.replace(lay.cfg, n_layer=n)
    prog = parse_mapping("weight_streaming").lower(
        sub, lay.arch, 1, prompt_len, lay.precision
    )
    first, last = system == 0, system == lay.systems - 1
    R, C = lay.rows, lay.cols
    kv_bytes = prompt_len * 2 * lay.cfg.kv_dim * lay.elem_bytes
    kvw = Transfer(
        "K/V to the cache PEs", "multicast_2d", "vertical", kv_bytes / C, kv_bytes * R / 2,
        R, 0, 0, ramp_bytes=kv_bytes / (R * C),
    )  # fmt: skip
    resident = lay.placement == "resident"
    out: list[Kernel] = []
    for k in prog.kernels:
        if (k.layer < 0 and not first) or (k.layer >= n and not last):
            continue
        layer = k.layer + layers.start if 0 <= k.layer < n else k.layer
        if k.layer >= n:
            layer = lay.cfg.n_layer
        changes = {"name": f"prefill.{k.name}", "layer": layer}
        if resident:
            changes.update(weight_block=-1, weight_bytes=0)
        out.append(dataclasses.replace(k, **changes))
        if 0 <= k.layer < n and _is_last_of_layer(prog, k):
            out.append(
                Kernel(
                    f"prefill.L{layer}.kv_write", "kv_write", layer, 0,
                    (PEClass(0, R * C, 0.0, 0.0, 0.0),), "_kv_all", (kvw,), n_chunks=1,
                )  # fmt: skip
            )
    maps = dict(prog.class_maps)
    maps["_kv_all"] = np.zeros((R, C), np.int16)
    blocks = [] if resident else prog.weight_blocks
    if not resident:  # keep only the blocks of the kernels kept
        used = {k.weight_block for k in out if k.weight_block >= 0}
        blocks = [b for b in prog.weight_blocks if b.id in used]
        remap = {b.id: i for i, b in enumerate(blocks)}
        blocks = [dataclasses.replace(b, id=i) for i, b in enumerate(blocks)]
        out = [
            dataclasses.replace(k, weight_block=remap[k.weight_block]) if k.weight_block >= 0
            else k
            for k in out
        ]
    notes = {**prog.notes, "system": system, "prompt_len": prompt_len, "phase": "prefill"}
    return dataclasses.replace(prog, name=f"{lay.cfg.name}/prefill/s{system}", rows=R, cols=C,
                               precision=lay.precision, kernels=out, weight_blocks=blocks,
                               class_maps=maps, notes=notes)  # fmt: skip


def _is_last_of_layer(prog: Program, k: Kernel) -> bool:
    """Whether ``k`` is the last kernel of its layer (and micro-batch) in ``prog``."""
    last = prog.__dict__.setdefault("_last_of_layer", {})
    if not last:
        for kk in prog.kernels:
            last[(kk.layer, kk.micro_batch)] = kk.name
    return last.get((k.layer, k.micro_batch)) == k.name
