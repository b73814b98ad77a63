"""Square decode regions on a wafer: which layers each ``P x P`` region holds, and the token
vector's crossing from one region to the next.

WaferLLM decodes Llama-3-8B on a 360 x 360 region (He et al., OSDI 2025, section 7) and
notes that 48 KB per core is too little to hold a model on one region, so layers are
pipelined over several (section 8: "pipeline bubbles"). Here a system's ``floor(R / P) x
floor(C / P)`` regions are visited in snake order (each next to the previous one); the
system's layers go to the fewest of them, contiguous and as even as possible, whose SRAM
holds the layers' tiles, their K/V cache and the buffers (the embedding on the first region
of the first system, the head on the last region of the last; :func:`pack_regions`). At a
decode step the regions work one after another: the token's vector (split over the
region's columns, replicated down its rows) moves to the next region over ``P`` hops
(:func:`handoff_seconds`).
"""

from __future__ import annotations

from gpt_workload.generation.split import bounds
from wse_sim.timing.common import path_latency_cycles

__all__ = ["handoff_cycles", "handoff_seconds", "pack_regions", "regions_per_system"]


def regions_per_system(lay) -> int:
    """``floor(R / P) x floor(C / P)`` regions of side ``P = lay.region`` on one wafer (1 for
    the whole-grid layout)."""
    if not lay.region:
        return 1
    return (lay.arch.wafer.rows // lay.region) * (lay.arch.wafer.cols // lay.region)


def pack_regions(lay) -> list[list[range]]:
    """Per system, the layers of each region it uses: the fewest regions (at most
    :func:`regions_per_system`) whose SRAM holds the system's layers, contiguous; the counts
    balance the regions' bytes per PE (each layer in turn goes to the region whose bytes it
    raises least, the earlier on a tie), so the regions holding the embedding or the head
    take fewer layers. When no number of regions holds them, all the regions are used the
    same way (the layout's SRAM check then names the bytes short)."""
    out = []
    for s, rng in enumerate(lay.layers):
        L = len(rng)
        most = min(regions_per_system(lay), L)
        for m in range(1, most + 1):
            counts = _balance(lay, L, m, s)
            if all(lay._sram_of(ld)["free"] >= 0 for ld in _loads(lay, counts, s)):
                break
        spans, start = [], rng.start
        for c in counts:
            spans.append(range(start, start + c))
            start += c
        out.append(spans)
    return out


def _loads(lay, counts: list[int], system: int) -> list[tuple[int, bool, bool]]:
    m = len(counts)
    return [(c, system == 0 and j == 0, system == lay.systems - 1 and j == m - 1)
            for j, c in enumerate(counts)]  # fmt: skip


def _balance(lay, n_layers: int, m: int, system: int) -> list[int]:
    """Layer counts of ``m`` regions: each layer in turn to the region whose total bytes per
    PE (:meth:`DecodeLayout._sram_of`) it leaves the smallest."""
    counts = [0] * m
    for _ in range(n_layers):
        after = [lay._sram_of(ld)["total"]
                 for ld in _loads(lay, [c + 1 for c in counts], system)]  # fmt: skip
        j = min(range(m), key=lambda i: after[i])
        counts[j] += 1
    return counts


def handoff_cycles(lay, n_vectors: int) -> float:
    """Cycles of one crossing between neighbouring regions: ``n_vectors`` vectors of ``d``
    elements, split over the ``P`` columns, cross ``P`` hops (the next region's width, or
    its height as the slices are multicast down its columns) with the RAMP in and out
    (:func:`wse_sim.timing.common.path_latency_cycles`), plus their serialisation on one
    link. 0 for the whole-grid layout."""
    if not lay.region:
        return 0.0
    arch, P = lay.arch, lay.region
    wavelets = n_vectors * -(-lay.cfg.d_model // P) * lay.elem_bytes / 4
    rate = min(arch.fabric.link_bits_per_cycle / 32.0, arch.fabric.ramp_wavelets_per_cycle)
    return path_latency_cycles(P, 0, 0, arch) + wavelets / rate


def handoff_seconds(lay, n_vectors: int, system: int) -> float:
    """Seconds the crossings between ``system``'s regions add to one step (or prefill
    chunk) of ``n_vectors`` vectors: one :func:`handoff_cycles` per region after the
    first."""
    if not lay.regions:
        return 0.0
    n = len(lay.regions[system]) - 1
    return n * handoff_cycles(lay, n_vectors) / lay.arch.pe.clock_hz
