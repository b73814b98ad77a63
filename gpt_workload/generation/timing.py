"""Timing of a generation run: every prefill and every decode step, on every system.

Schedule (static batching): the requests' prefills run one after another (request ``i``'s
first token is sampled at the end of its prefill: its time to first token, TTFT); then the
decode steps run, each one new token for every request still generating (a request leaves
once it has its tokens). A request with ``n`` new tokens takes ``n - 1`` decode steps; in
its ``k``-th its cache holds ``prompt + k`` tokens.

On a region layout (:mod:`gpt_workload.mappings.resident.regions`) a system's regions work one
after another and the vector crosses from each to the next (``P`` hops, a ``region hand-off``
row of the time split). On ``S`` systems a step (and a prefill) crosses them in order: the time is the sum of each
system's Program plus ``S - 1`` crossings of the activations (``B d`` elements; a prompt's
``T d``) and, for a decode step, the sampled tokens' way back to the first system (4 bytes
per request), over the inter-system link
(:func:`gpt_workload.mappings.resident.prefill.intersystem_seconds`).

Resident placement: every layer of a step runs the same kernels, one after another, with
nothing streamed, so the backends time a Program of the prologue, one layer and the epilogue
(``layers="one"``), and the step is prologue + ``L_s`` x layer + epilogue. This is what the
whole step's Program gives in every backend (kernels run in order with a barrier; a test
holds the two to each other); streaming placement times the whole step (weight streams
overlap layers). A resident prefill runs the prompt through the same layout in chunks (the
chunk's tokens are the vectors of each matrix product: a GEMM on the resident tiles); a
streaming prefill is the whole-sequence ``weight_streaming`` forward lowering with a K/V
write per layer (:mod:`gpt_workload.mappings.resident.prefill`).

Per step the lower bound (:func:`step_bound`) is the largest of: the step's FLOPs over the
peak of one wafer (the systems work in turn), the weight bytes read over the wafer's SRAM
read bandwidth (resident) or over the MemoryX ingress (streaming), and the zero-load latency
of its reductions (each GEMV's and norm's all-reduce, with the fabric constants: hops,
turns, RAMP and relay terms of [HPDC24]); the simulated step is never below it.
"""

from __future__ import annotations

from collections import defaultdict

from gpt_workload.mappings.resident.decode import attention_occupancy, lower_decode_step
from gpt_workload.mappings.resident.layout import DecodeLayout
from gpt_workload.mappings.resident.prefill import intersystem_seconds, lower_prefill
from gpt_workload.mappings.resident.regions import handoff_seconds
from wse_sim.program import Program
from wse_sim.timing import BACKENDS
from wse_sim.timing.common import TimingResult, path_latency_cycles

__all__ = ["StepTimer", "step_bound"]

def reduction_latency_s(prog: Program, arch, scale: int = 1, layer: int = -2) -> float:
    """Zero-load latency of the step's all-reduces (every ``allreduce_*`` transfer's path:
    hops, turns, RAMP in and out and relay stages), summed over the kernels (they run one
    after another); kernels of ``layer`` count ``scale`` times (one layer standing for all)."""
    cyc = 0.0
    for k in prog.kernels:
        lat = [
            path_latency_cycles(t.hops, t.turns, t.relays, arch)
            for t in k.transfers
            if t.pattern.startswith("allreduce") and t.hops > 0
        ]
        cyc += max(lat, default=0.0) * (scale if k.layer == layer else 1)
    return cyc / arch.pe.clock_hz


def step_bound(lay: DecodeLayout, flops: float, weight_bytes: float, latency_s: float) -> dict:
    """The three lower bounds of a decode step (seconds) and their maximum ``bound_s``."""
    arch, prec = lay.arch, lay.precision
    compute = flops / arch.peak_flops_per_s(prec)
    if lay.placement == "resident":
        bw = arch.n_pe * arch.pe.sram_read_bytes_per_cycle * arch.pe.clock_hz
    else:
        bw = arch.io.ingress_bytes_per_s
    weights = weight_bytes / bw
    return {
        "compute_s": compute,
        "weights_s": weights,
        "latency_s": latency_s,
        "bound_s": max(compute, weights, latency_s),
    }


class StepTimer:
    """Times prefills and decode steps of a layout with one backend, caching Programs and
    timings by what they depend on, and accumulating the time split by (phase, layer span,
    op) (:meth:`split_rows`).

    Args:
        fidelity: ``analytic``, ``event`` or ``packet``.
        layers: ``"one"`` (resident: one layer timed, scaled; see the module docstring) or
            ``"all"`` (the whole step's Program).
    """

    def __init__(self, lay: DecodeLayout, fidelity: str, *, sampling="greedy", top_k=0,
                 layers: str | None = None):  # fmt: skip
        self.lay = lay
        self.run = BACKENDS[fidelity]
        self.fidelity = fidelity
        self.sampling, self.top_k = sampling, top_k
        self.layers = layers or ("one" if lay.placement == "resident" else "all")
        self.cache: dict = {}
        self.split: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.busy_pe_cycles = 0.0
        self.programs_timed = 0

    # ------------------------------------------------------------------ timing
    def _time(self, prog: Program, scale_layers: int, first_layer: int):
        """(seconds, [((first, last, n_layers), op, compute, sram, fabric, io, mult)], busy
        PE-cycles) of ``prog``: a row of the timed layer of a one-layer timing stands for
        layers ``first .. last`` (``n_layers = scale_layers``); other rows are one layer
        (``first == last``; ``n_layers`` 1 for a transformer layer, 0 for the embedding
        ``-1`` and the head ``n_layer``)."""
        res: TimingResult = self.run(prog, self.lay.arch)
        self.programs_timed += 1
        clk = self.lay.arch.pe.clock_hz
        sram = prog.sram_cycles
        rows = []
        total = 0.0
        busy = 0.0
        by_name = {k.name: k for k in prog.kernels}
        for kt in res.kernels:
            k = by_name[kt.name]
            mult = scale_layers if (self.layers == "one" and k.layer == first_layer) else 1
            if mult > 1:
                span = (k.layer, k.layer + mult - 1, mult)
            else:
                span = (k.layer, k.layer, int(0 <= k.layer < self.lay.cfg.n_layer))
            sr = min(sram.get(kt.name, 0.0) / clk, kt.compute_s)
            rows.append((span, kt.op, mult * (kt.compute_s - sr), mult * sr,
                         mult * kt.fabric_s, mult * kt.stall_s, mult))  # fmt: skip
            total += mult * kt.duration_s
            busy += mult * k.busy_pe_cycles
        total += res.idle_s
        return total, rows, busy

    def _step_programs(self, contexts: list[int], phase: str):
        """Time the step (``phase`` decode, or one prefill chunk) on every system; returns
        ``(seconds, reduction latency seconds, weight bytes, split rows, busy PE-cycles)``."""
        lay = self.lay
        t = lat = wbytes = busy = 0.0
        rows_all = []
        for s in range(lay.systems):
            rng = lay.layers[s]
            one = self.layers == "one" and len(rng) > 1
            layers = range(rng.start, rng.start + 1) if one else None
            prog = lower_decode_step(lay, contexts, system=s, sampling=self.sampling,
                                     top_k=self.top_k, layers=layers, phase=phase)  # fmt: skip
            ts, rows, b = self._time(prog, len(rng), rng.start)
            ho = handoff_seconds(lay, len(contexts), s)
            if ho:  # the vector crossing between the system's regions
                rows.append(((-1, -1, 0), "region hand-off", 0.0, 0.0, ho, 0.0, 1))
                ts += ho
            t, busy = t + ts, busy + b
            lat += reduction_latency_s(prog, lay.arch, len(rng) if one else 1, rng.start)
            wbytes += prog.weight_bytes_read
            rows_all += rows
        return t, lat, wbytes, rows_all, busy

    def decode_step(self, contexts: list[int]) -> tuple[float, float, float, float, float, list]:
        """Time one decode step for live requests with ``contexts`` (cache lengths after the
        step). Returns ``(seconds, intersystem seconds, flops, weight bytes, reduction
        latency seconds, split rows)``."""
        lay = self.lay
        key = ("decode", len(contexts), attention_occupancy(lay, contexts))
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = self._step_programs(contexts, "decode")
        t, lat, wbytes, rows, busy = hit
        x = 0.0
        if lay.systems > 1:
            B = len(contexts)
            act = B * lay.cfg.d_model * lay.elem_bytes
            x = (lay.systems - 1) * intersystem_seconds(lay.arch, act) + intersystem_seconds(
                lay.arch, 4 * B
            )
        flops = decode_flops(lay, contexts)
        self._accumulate("decode", rows, x)
        self.busy_pe_cycles += busy
        return t + x, x, flops, wbytes, lat, rows

    def prefill(self, prompt_len: int) -> tuple[float, float, float]:
        """Time one request's prefill of ``prompt_len`` tokens over every system. Returns
        ``(seconds, intersystem seconds, flops)``.

        Resident: the prompt in chunks of :meth:`DecodeLayout.prefill_chunk` tokens, each
        lowered as a step whose vectors are the chunk's tokens (the weight tiles stay where
        they are; token ``t`` attends to the first ``t + 1``). Streaming: the whole-sequence
        forward lowering (:func:`gpt_workload.mappings.resident.prefill.lower_prefill`)."""
        lay = self.lay
        key = ("prefill", prompt_len)
        hit = self.cache.get(key)
        if hit is None:
            t = fl = busy = 0.0
            rows_all = []
            if lay.placement == "resident":
                c = lay.prefill_chunk(prompt_len)
                for start in range(0, prompt_len, c):
                    ctx = list(range(start + 1, min(start + c, prompt_len) + 1))
                    ts, _, _, rows, b = self._step_programs(ctx, "prefill")
                    t, busy = t + ts, busy + b
                    fl += decode_flops(lay, ctx) - _head_flops(lay) * (len(ctx) - 1)
                    rows_all += rows
            else:
                for s in range(lay.systems):
                    prog = lower_prefill(lay, prompt_len, system=s)
                    ts, rows, b = self._time(prog, 1, -2)
                    t, fl, busy = t + ts, fl + prog.flops, busy + b
                    rows_all += rows
            hit = self.cache[key] = (t, fl, rows_all, busy)
        t, fl, rows, busy = hit
        x = 0.0
        if lay.systems > 1:
            x = (lay.systems - 1) * intersystem_seconds(
                lay.arch, prompt_len * lay.cfg.d_model * lay.elem_bytes
            )
        self._accumulate("prefill", rows, x)
        self.busy_pe_cycles += busy
        return t + x, x, fl

    def _accumulate(self, phase: str, rows, x: float) -> None:
        for (first, last, n), op, comp, sram, fab, io, _ in rows:
            d = self.split[(phase, first, last, n, op)]
            d["compute_s"] += comp
            d["sram_s"] += sram
            d["fabric_s"] += fab
            d["io_s"] += io
        if x:
            self.split[(phase, -1, -1, 0, "intersystem")]["intersystem_s"] += x

    def split_rows(self) -> list[dict]:
        """The time split per (phase, layer span, op), summed over the run's steps:
        ``compute_s`` (FMAC-bound work and vector setup), ``sram_s`` (beyond it, waiting on
        SRAM bandwidth), ``fabric_s`` (transfers and their latency not hidden), ``io_s``
        (waiting for weights from MemoryX), ``intersystem_s``; ``total_s`` their sum.

        ``layers`` is ``[first, last]``, the model layers the row's time covers, and
        ``n_layers`` their count. A one-layer timing (resident) times the first layer of a
        system and scales it, so its rows are *sums over the system's layers* ``[first,
        last]`` (``n_layers = last - first + 1``), not one layer's time; the whole-step
        timing (streaming) gives one row per layer (``first == last``, ``n_layers = 1``).
        The embedding is ``[-1, -1]``, the final norm, LM head and sampling ``[n_layer,
        n_layer]`` and the inter-system transfers ``[-1, -1]``, all with ``n_layers = 0``."""
        out = []
        for (phase, first, last, n, op), d in sorted(self.split.items()):
            row = {"phase": phase, "layers": [first, last], "n_layers": n, "op": op}
            for k in ("compute_s", "sram_s", "fabric_s", "io_s", "intersystem_s"):
                row[k] = float(d.get(k, 0.0))
            row["total_s"] = sum(row[k] for k in ("compute_s", "sram_s", "fabric_s", "io_s",
                                                  "intersystem_s"))  # fmt: skip
            out.append(row)
        return out


def decode_flops(lay: DecodeLayout, contexts: list[int]) -> float:
    """Model FLOPs of one decode step: ``2 x`` the matrix parameters (every linear and the
    LM head) per request, plus ``4 d_head n_head`` per cached token per layer (scores and
    weighted values)."""
    g = lay.graph
    mat = sum(g.param_elems(op) for op in g.layer if op.kind == "linear")
    head = sum(g.param_elems(op) for op in g.epilogue if op.kind == "lm_head")
    mat = mat * lay.cfg.n_layer + head
    att = 4 * lay.cfg.d_head * lay.cfg.n_head * lay.cfg.n_layer * sum(contexts)
    return float(2 * mat * len(contexts) + att)


def _head_flops(lay: DecodeLayout) -> float:
    """FLOPs of the LM head for one token (a prefill computes it for the last only)."""
    return float(2 * sum(lay.graph.param_elems(op) for op in lay.graph.epilogue
                         if op.kind == "lm_head"))  # fmt: skip
