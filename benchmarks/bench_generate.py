"""Benchmark: host wall time to time 128 decode steps of Llama-3.1-8B on the WSE-3 (the goal
is seconds), against timing the same steps with every layer's kernels in the Program.

Measured in one process, per fidelity (``event``, ``analytic``):

* ``generate``: the serving job's timer as ``generate()`` runs it (:class:`gpt_workload.
  generation.timing.StepTimer`: each step lowered with one layer standing for the identical
  others, Programs and timings cached by what they depend on), 128 decode steps of one
  request (``--prompt-len`` 128: contexts 129 ... 256);
* ``whole Program`` (the baseline): the same steps, each lowered and timed with all 32
  layers' kernels (``layers="all"``), which gives the same simulated times (asserted here as
  a sanity check of the comparison, not of speed).

Usage:
    python benchmarks/bench_generate.py [--steps 128] [--out benchmarks/results/generate.json]

Prints the figures and writes JSON. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from gpt_workload.generation.timing import StepTimer
from gpt_workload.mappings.resident import make_layout
from gpt_workload.models import resolve_model
from wse_sim.arch import load_arch


def time_steps(lay, fidelity: str, steps: int, prompt: int, layers: str | None):
    """(host seconds, simulated seconds) of ``steps`` decode steps from a fresh timer."""
    timer = StepTimer(lay, fidelity, layers=layers)
    t0 = time.perf_counter()
    sim = sum(timer.decode_step([prompt + k])[0] for k in range(1, steps + 1))
    return time.perf_counter() - t0, sim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--arch", default="wse3")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/generate.json")
    a = ap.parse_args()
    cfg, arch = resolve_model(a.model), load_arch(a.arch)
    lay = make_layout(cfg, arch, precision="fp16", max_context=a.prompt_len + a.steps + 1,
                      region="wafer", reduce="tree")  # the layout its recorded figures used
    time_steps(lay, "analytic", 2, a.prompt_len, None)  # warm-up (imports, caches)
    out = {"model": a.model, "arch": a.arch, "steps": a.steps, "prompt_len": a.prompt_len,
           "host": platform.node(), "python": platform.python_version(), "fidelities": {}}  # fmt: skip
    for fid in ("analytic", "event"):
        fast, sim_fast = time_steps(lay, fid, a.steps, a.prompt_len, None)
        base, sim_base = time_steps(lay, fid, a.steps, a.prompt_len, "all")
        assert abs(sim_fast - sim_base) <= 1e-9 * sim_base, (sim_fast, sim_base)
        out["fidelities"][fid] = {
            "generate_s": fast,
            "whole_program_s": base,
            "speedup": base / fast,
            "simulated_decode_s": sim_fast,
            "tokens_per_s_per_request": a.steps / sim_fast,
        }
        print(f"{fid:8s}: {a.steps} decode steps timed in {fast:.2f} s (whole-Program "
              f"baseline {base:.2f} s, {base / fast:.1f}x); simulated {sim_fast * 1e3:.2f} ms, "
              f"{a.steps / sim_fast:,.0f} tokens/s per request")  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
