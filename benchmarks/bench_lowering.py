"""Benchmark of the weight-streaming lowering at one layout: lowerings per CPU-second of this
tree against the code of a baseline revision, measured in the same run, and the Programs of
both compared field for field.

The lowerings are the candidate layouts the default mapping's layout search tries
(:func:`gpt_workload.mappings.weight_streaming.search.search_layout`, recorded through its
``lower`` argument) for the sweep points of ``benchmarks/bench_sweep.py`` that differ in what
the lowering reads: Cerebras-GPT-111M and 1.3B on the WSE-2, ``pe.sram_bytes`` in
32768 / 49152 / 65536 / 98304, batch in 8 / 30 / 60 / 120 / 240, seq_len 2048, fp16 (the
I/O bandwidth axis of a sweep changes which candidates the search tries only through the
times, and the sweep's lowering cache shares the lowerings between such points).

Each tree lowers every candidate (``WeightStreaming._lower_at``, the call the search makes)
in a subprocess of its own with ``PYTHONPATH`` at that tree (the baseline extracted with
``git archive``), after one untimed warm-up lowering; ``--repeats`` passes, the least CPU
time kept. As in the search, a Program is dropped when the next one has been lowered (the
heap then reuses its class maps' memory instead of faulting in fresh pages). Each pass
starts with this tree's shared attention classes forgotten
(:func:`gpt_workload.mappings.weight_streaming.head_split.clear_class_cache`; what a fresh
sweep worker has); the ``cold_*`` figures forget them before every lowering too (no sharing
between points: the lowering's own speed).

Each Program is reduced, outside the timed loop, to a SHA-256 of a canonical dump of every
field (``canonical`` in the worker: types, floats as ``float.hex``, class maps as dtype,
shape and bytes, and a kernel's cached ``critical_cycles``); ``programs_identical`` counts
the candidates whose digests agree (a FitError counts when both trees raise it).

Usage:
    python benchmarks/bench_lowering.py [--baseline-rev 5e9b992] [--repeats 2]
        [--models cerebras-gpt-111m,cerebras-gpt-1.3b] [--out benchmarks/results/lowering.json]

Prints a table and writes JSON. Nothing here asserts a time: read the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

BASELINE_REV = "5e9b992"
MODELS = ["cerebras-gpt-111m", "cerebras-gpt-1.3b"]
SRAMS = [32768, 49152, 65536, 98304]
BATCHES = [8, 30, 60, 120, 240]
SEQ_LEN = 2048
PRECISION = "fp16"

#: run in each tree's subprocess: argv = tasks.pkl, out.pkl, repeats
_WORKER = r'''
import dataclasses, hashlib, pickle, sys, time
import numpy as np
from gpt_workload.mappings import parse_mapping
from gpt_workload.models import resolve_model
from wse_sim.arch import load_arch
from wse_sim.errors import FitError


def canonical(x, memo=None):
    """A tuple dump of ``x`` that two Programs share only when every field is equal with the
    same type (floats exactly); ``memo`` holds the dumps of tuples already seen (by id: the
    Program keeps them alive)."""
    if isinstance(x, tuple) and memo is not None:
        got = memo.get(id(x))
        if got is None:
            got = memo[id(x)] = ("tuple", tuple(canonical(v, memo) for v in x))
        return got
    if isinstance(x, float):
        return ("f", x.hex())
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return (type(x).__name__, x)
    if isinstance(x, np.ndarray):
        data = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
        return ("nd", x.dtype.str, x.shape, x.flags.c_contiguous, data)
    if isinstance(x, np.generic):
        return ("np", type(x).__name__, repr(x.item()))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(canonical(v, memo) for v in x))
    if isinstance(x, dict) or hasattr(x, "items") and not dataclasses.is_dataclass(x):
        return ("dict", tuple((k, canonical(v, memo)) for k, v in x.items()))
    if dataclasses.is_dataclass(x):
        names = [f.name for f in dataclasses.fields(x)]
        extra = sorted(k for k in vars(x) if k not in names)  # cached properties
        return (type(x).__name__, tuple((n, canonical(getattr(x, n), memo)) for n in names),
                tuple((k, canonical(vars(x)[k], memo)) for k in extra))
    raise TypeError(f"no canonical form for {type(x).__name__}")


def digest(prog):
    return hashlib.sha256(repr(canonical(prog, {})).encode()).hexdigest()


tasks = pickle.load(open(sys.argv[1], "rb"))
repeats = int(sys.argv[3])
mapping = parse_mapping("weight_streaming")
cfgs = {m: resolve_model(m) for m in {t[0] for t in tasks}}
archs = {s: load_arch("wse2", [f"pe.sram_bytes={s}"]) for s in {t[1] for t in tasks}}
calls = [(cfgs[t[0]], archs[t[1]], *t[2:]) for t in tasks]


def lower(c):
    cfg, arch, batch, seq_len, precision, P, m = c
    try:
        return mapping._lower_at(cfg, arch, batch, seq_len, precision, P, m)
    except FitError as e:
        return e


try:  # the attention classes shared between lowerings (this tree; None: not there)
    from gpt_workload.mappings.weight_streaming.head_split import clear_class_cache
except ImportError:
    clear_class_cache = None


def clear():
    if clear_class_cache is not None:
        clear_class_cache()


def timed(cold):
    """Wall and CPU seconds of one pass, from empty caches (``cold``: before each lowering)."""
    clear()
    t0, c0 = time.perf_counter(), time.process_time()
    prog = None
    for c in calls:
        if cold:
            clear()
        prog = lower(c)  # the previous Program freed once this one exists, as in the search
    del prog
    return time.perf_counter() - t0, time.process_time() - c0


lower(calls[0])  # imports and first-call costs
best = min((timed(False) for _ in range(repeats)), key=lambda t: t[1])
cold = min((timed(True) for _ in range(repeats)), key=lambda t: t[1])
digests = []
for c in calls:
    p = lower(c)
    digests.append("FitError: " + str(p) if isinstance(p, FitError) else digest(p))
pickle.dump((best, cold, digests), open(sys.argv[2], "wb"))
'''


def candidates(models: list[str]) -> list[tuple]:
    """``(model, sram_bytes, batch, seq_len, precision, P, m)`` of every layout the default
    mapping's search tries at the benchmark's points, in order (this tree's search)."""
    from gpt_workload.mappings import parse_mapping
    from gpt_workload.mappings.weight_streaming.search import search_layout
    from gpt_workload.models import resolve_model
    from wse_sim.arch import load_arch

    mapping = parse_mapping("weight_streaming")
    out = []
    for model in models:
        cfg = resolve_model(model)
        for sram in SRAMS:
            arch = load_arch("wse2", [f"pe.sram_bytes={sram}"])
            for batch in BATCHES:

                def rec(P, m, cfg=cfg, arch=arch, batch=batch, sram=sram, model=model):
                    out.append((model, sram, batch, SEQ_LEN, PRECISION, P, m))
                    return mapping._lower_at(cfg, arch, batch, SEQ_LEN, PRECISION, P, m)

                try:
                    search_layout(rec, cfg, arch, batch, SEQ_LEN, PRECISION)
                except Exception as e:  # a point that fits nowhere still tried its candidates
                    print(f"{model} sram={sram} batch={batch}: {type(e).__name__}: {e}")
    return out


def run_tree(src: Path, tasks_pkl: Path, out: Path, repeats: int) -> tuple:
    """``((wall s, CPU s), (cold wall s, cold CPU s), digests)`` of the tree at ``src`` (a
    subprocess): the passes of least CPU time, and the Programs' digests."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run(
        [sys.executable, "-c", _WORKER, str(tasks_pkl), str(out), str(repeats)],
        check=True,
        env=env,
        cwd=src,
    )
    return pickle.loads(out.read_bytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="benchmarks/results/lowering.json")
    a = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    tasks = candidates(a.models.split(","))
    res: dict = {
        "lowerings": len(tasks),
        "models": a.models.split(","),
        "arch": "wse2",
        "baseline_rev": a.baseline_rev,
        "load_average_at_start": os.getloadavg()[0],
        "machine": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tasks.pkl").write_bytes(pickle.dumps(tasks))
        src = tmp / "baseline_src"
        src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", a.baseline_rev], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        (bw, bc), (bcw, bcc), bd = run_tree(src, tmp / "tasks.pkl", tmp / "base.pkl", a.repeats)
        (nw, nc), (ncw, ncc), nd = run_tree(root, tmp / "tasks.pkl", tmp / "new.pkl", a.repeats)
    n = len(tasks)
    res.update(
        baseline_wall_s=bw,
        baseline_cpu_s=bc,
        baseline_lowerings_per_cpu_s=n / bc,
        wall_s=nw,
        cpu_s=nc,
        lowerings_per_cpu_s=n / nc,
        cpu_ratio=bc / nc,
        wall_ratio=bw / nw,
        baseline_cold_cpu_s=bcc,
        cold_cpu_s=ncc,
        cold_lowerings_per_cpu_s=n / ncc,
        cold_cpu_ratio=bcc / ncc,
        fit_errors=sum(d.startswith("FitError") for d in nd),
        programs_identical=sum(x == y for x, y in zip(bd, nd, strict=True)),
        load_average_at_end=os.getloadavg()[0],
    )
    for k, v in res.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
