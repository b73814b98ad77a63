"""BookSim2 as a side-by-side peer: build it, run it on a ``k x k`` mesh and read its figures.

BookSim2 (github booksim/booksim2, BSD licence) is the cycle-level network-on-chip simulator
network researchers use. ``shared/peers/`` of the project holds its source snapshot and a build
script (``build-booksim2``); :func:`booksim_binary` runs that script when g++, make, flex and
bison are installed and returns the binary (or None with the reason).

:func:`run_booksim` runs one point: ``k x k`` mesh, dimension-order routing, uniform random
traffic, 1-flit packets (a flit = a wavelet), ``injection_rate`` flits per node per cycle,
one sample period of ``cycles`` cycles without warm-up (so both simulators inject over the same
window), and returns BookSim's own statistics plus the wall and CPU seconds of the process.
BookSim stops after that one sample (it reports the run as not converged, which is what
``max_samples=1`` asks for) and prints the statistics of the packets it measured; flit-hops
are ``accepted flit rate x nodes x cycles x mean hops``, the mean hops of uniform XY traffic on
a ``k x k`` mesh being ``2 (k^2 - 1) / (3 k)`` (BookSim prints its own only for converged
runs); flits still in flight at the end are not counted.

The router model differs from ours (see README, fabric section): BookSim's input-queued VC
router has a pipeline of ``routing_delay + vc_alloc_delay + sw_alloc_delay + st_prepare_delay
+ st_final_delay`` cycles per hop (default 1 each: five) plus ``credit_delay``, ``num_vcs``
virtual channels of ``vc_buf_size`` flits per input and separable input-first allocation;
ours forwards a wavelet in ``hop_latency_cycles`` (1) with one buffer per colour.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path



def _find_peers() -> Path:
    """``$WSE_SIM_PEERS``, else the first ``shared/peers`` beside a folder above this file
    (the project keeps its checkouts next to ``shared/``)."""
    env = os.environ.get("WSE_SIM_PEERS")
    if env:
        return Path(env)
    for d in Path(__file__).resolve().parents:
        if (d / "shared" / "peers").is_dir():
            return d / "shared" / "peers"
    return Path("shared/peers")


#: where ``build-booksim2`` and the base config live (the project's shared peers folder)
PEERS = _find_peers()
BUILD_DIR = Path(os.environ.get("WSE_SIM_BOOKSIM_DIR", "/tmp/booksim2"))

_FIELDS = {
    "packet_latency": r"Packet latency average = ([\d.eE+-]+)",
    "network_latency": r"Network latency average = ([\d.eE+-]+)",
    "injected_flit_rate": r"Injected flit rate average = ([\d.eE+-]+)",
    "accepted_flit_rate": r"Accepted flit rate average ?= ?([\d.eE+-]+)",
}


def booksim_binary(peers: Path = PEERS, build_dir: Path = BUILD_DIR) -> tuple[Path | None, str]:
    """Build BookSim2 if needed; ``(binary, "")`` or ``(None, why not)``."""
    script = peers / "build-booksim2"
    if not script.exists():
        return None, f"no BookSim2 build script at {script}"
    missing = [t for t in ("g++", "make", "flex", "bison") if shutil.which(t) is None]
    if missing:
        return None, (
            f"BookSim2 needs {', '.join(missing)} to build "
            "(apt-get update && apt-get install -y g++ flex bison make)"
        )
    p = subprocess.run([str(script), str(build_dir)], capture_output=True, text=True)
    if p.returncode != 0:
        return None, f"BookSim2 build failed: {p.stderr.strip().splitlines()[-1:]}"
    return Path(p.stdout.strip().splitlines()[-1]), ""


def run_booksim(
    binary: Path, k: int, injection_rate: float, cycles: int, seed: int = 1, **overrides
) -> dict:
    """One BookSim2 run (see the module docstring); ``overrides`` are extra config fields.

    Returns:
        BookSim's figures (``packet_latency``, ``network_latency``, ``injected_flit_rate``,
        ``accepted_flit_rate``), ``hops`` (mean, closed form), ``cycles`` simulated,
        ``flit_hops``, ``wall_s`` and ``cpu_s`` (the child's user + system time).

    Raises:
        RuntimeError: BookSim exited with an error.
    """
    cfg = dict(
        topology="mesh", k=k, n=2, routing_function="dor", num_vcs=2, vc_buf_size=8,
        traffic="uniform", packet_size=1, sim_type="latency", injection_rate=injection_rate,
        seed=seed, warmup_periods=0, sample_period=int(cycles), max_samples=1, sim_count=1,
        latency_thres=1e9,
    )  # fmt: skip
    cfg.update(overrides)
    base = PEERS / "mesh8_uniform.cfg"
    args = [str(binary), str(base)] + [f"{a}={b}" for a, b in cfg.items()]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = p.stdout + p.stderr
    if "Accepted flit rate" not in out:  # it exits 255 after printing what we read
        raise RuntimeError(f"booksim exited {p.returncode}: {out.strip().splitlines()[-3:]}")
    n_cyc = int(cfg["sample_period"]) * (1 + int(cfg["warmup_periods"]))
    res: dict = {"k": k, "injection_rate": injection_rate, "cycles": n_cyc}
    for key, pat in _FIELDS.items():
        m = re.findall(pat, out)
        res[key] = float(m[-1]) if m else float("nan")
    res["hops"] = 2 * (k * k - 1) / (3 * k)
    res["flit_hops"] = res["accepted_flit_rate"] * k * k * int(cycles) * res["hops"]
    res["wall_s"] = wall
    res["cpu_s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return res
