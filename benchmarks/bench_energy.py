"""Benchmark: the energy model's added wall time on the default run, as a ratio of the run
without it, measured in the same process (goal: under 5 %).

Two measurements, both on the default job (Cerebras-GPT-111M on wse2, batch 120 x 2048,
``--check-sequences 0`` so the timing is not drowned by the numerics):

* ``simulate(..., energy=True)`` against ``simulate(..., energy=False)``, interleaved, the
  median of ``--repeat`` runs each: the end-to-end overhead (noisy: it is the difference of
  two close numbers);
* :func:`wse_sim.energy.energy_report` alone on the timed Program (median), over the median
  run without energy: the model's own share.

Usage:
    python benchmarks/bench_energy.py [--fidelity event] [--repeat 5]
        [--out benchmarks/results/energy.json]

Prints the figures and writes JSON. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.models import resolve_model
from gpt_workload.simulate import default_batch, simulate
from wse_sim.arch import load_arch
from wse_sim.energy import energy_report
from wse_sim.timing import BACKENDS, WAFER_BACKENDS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cerebras-gpt-111m")
    ap.add_argument("--arch", default="wse2")
    ap.add_argument("--fidelity", default="event", choices=WAFER_BACKENDS)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/energy.json")
    a = ap.parse_args()
    kw = dict(check_sequences=0, fidelity=a.fidelity)
    simulate(a.model, a.arch, **kw)  # warm-up (imports, Numba, caches)
    on, off = [], []
    for _ in range(a.repeat):
        for flag, acc in ((False, off), (True, on)):
            t0 = time.perf_counter()
            simulate(a.model, a.arch, energy=flag, **kw)
            acc.append(time.perf_counter() - t0)
    cfg, arch = resolve_model(a.model), load_arch(a.arch)
    T = min(2048, cfg.n_positions)
    prog = lower_weight_streaming(cfg, arch, default_batch(cfg, arch, T, "fp16"), T, "fp16")
    timing = BACKENDS[a.fidelity](prog, arch)
    alone = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        energy_report(prog, arch, timing)
        alone.append(time.perf_counter() - t0)
    m_on, m_off, m_alone = (statistics.median(x) for x in (on, off, alone))
    res = {
        "model": cfg.name,
        "arch": arch.name,
        "fidelity": a.fidelity,
        "machine": platform.machine(),
        "repeat": a.repeat,
        "kernels": len(prog.kernels),
        "run_without_energy_s": m_off,
        "run_with_energy_s": m_on,
        "energy_model_alone_s": m_alone,
        "end_to_end_overhead_ratio": m_on / m_off - 1,
        "energy_model_over_run_ratio": m_alone / m_off,
        "runs_without_s": off,
        "runs_with_s": on,
    }
    print(f"{cfg.name} on {arch.name}, {a.fidelity}, {len(prog.kernels)} kernels, "
          f"median of {a.repeat}:")  # fmt: skip
    print(f"  run without energy  {m_off:.3f} s")
    print(f"  run with energy     {m_on:.3f} s  (end to end {100 * (m_on / m_off - 1):+.1f} %)")
    print(f"  energy model alone  {m_alone * 1e3:.1f} ms = {100 * m_alone / m_off:.2f} % of "
          "the run without it")  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
