"""Shared pieces of the timing backends: per-kernel cost terms and the timing result.

The per-kernel cost terms are closed forms over the Program (cycles of the PE clock):

* compute: cycles of the slowest PE class (busy + vector-op overhead);
* fabric: per link group, the busiest link's bytes / link bytes per cycle, summed over the
  kernel's transfers in that group (transfers in one group share the links); the PE's RAMP
  is one more group (``ramp_bytes`` of every transfer pass through it at
  ``fabric.ramp_wavelets_per_cycle``: a chain PE takes in the partial sums of both
  directions, [HPDC24]'s contention term ``C``); the kernel's fabric term is the largest group;
* latency: the longest transfer's path, ``hops * hop_latency + turns * turn_latency +
  2 * ramp_latency`` (inject and eject), plus ``relays * (2 * ramp_latency +
  pe_forward_latency)`` for the PEs that combine and re-send on the way (the store-and-forward
  depth term of [HPDC24]; the packet backend showed it is what chains cost at small sizes);
* a kernel cut into ``n`` pipeline chunks overlaps compute and fabric as a two-stage
  pipeline: ``max(c, f) + min(c, f) / n + latency``.

Two corrections the packet backend showed at small messages, where a few cycles matter:

* **credit gap between chunks**: each chunk of a transfer is its own packet (or packets) on
  the transfer's colour; when a chunk fills a router's input buffer for that colour
  (``router_buffer_wavelets``), the next chunk may enter that router only once the previous
  chunk's tail has left it, ``hop_latency`` after it entered: the busiest link idles one hop
  latency between consecutive chunks, ``(n - 1) * hop_latency`` per transfer on its link
  group (not on the RAMP: a PE takes its input without waiting for a downstream credit);
* **round trip** (``allreduce_row``, ``allreduce_head``: a chain reduce out, then a broadcast back through the
  same RAMPs): the busiest RAMP takes the last chunk's outbound half (``ramp_bytes / 2 /
  n``) while that chunk's sum is still travelling to the end of the segment, so the return
  trip overlaps it: the exposed latency is the round trip less that half, and no less than
  the outbound chain alone (the fill of the RAMPs farthest along, which the broadcast
  reaches last but which only start once the reduce reaches them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wse_sim.arch import ArchConfig
from wse_sim.program import Kernel, Program, Transfer


def compute_cycles(k: Kernel) -> float:
    """Cycles of the slowest PE class of ``k``."""
    return k.critical_cycles


def link_cycles(t: Transfer, n_chunks: int, arch: ArchConfig) -> float:
    """Cycles ``t`` holds its busiest link: its bytes at the link rate plus the credit gap of
    one hop latency between consecutive chunks that each fill a router's input buffer (see
    the module docstring)."""
    fab = arch.fabric
    n = max(n_chunks, 1)
    cyc = t.max_link_bytes / fab.link_bytes_per_cycle
    if n > 1 and t.max_link_bytes / 4.0 / n >= fab.router_buffer_wavelets:
        cyc += (n - 1) * fab.hop_latency_cycles
    return cyc


def fabric_cycles(k: Kernel, arch: ArchConfig) -> float:
    """Cycles the busiest link group needs for the kernel's transfers (no overlap)."""
    per_group: dict[str, float] = {}
    ramp = 0.0
    for t in k.transfers:
        cyc = link_cycles(t, k.n_chunks, arch) if t.max_link_bytes > 0 else 0.0
        per_group[t.link_group] = per_group.get(t.link_group, 0.0) + cyc
        ramp += t.ramp_bytes
    if not per_group:
        return 0.0
    return max(max(per_group.values()), ramp / ramp_bytes_per_cycle(arch))


def ramp_bytes_per_cycle(arch: ArchConfig) -> float:
    """Bytes a PE's RAMP moves per cycle: ``ramp_wavelets_per_cycle`` x 4-byte wavelets."""
    return arch.fabric.ramp_wavelets_per_cycle * 4.0


def path_latency_cycles(hops: float, turns: float, relays: float, arch: ArchConfig) -> float:
    """Zero-load latency of a path: hops, turns, RAMP in and out, and the relay PEs."""
    fab = arch.fabric
    return (
        hops * fab.hop_latency_cycles
        + turns * fab.turn_latency_cycles
        + 2 * fab.ramp_latency_cycles
        + relays * (2 * fab.ramp_latency_cycles + fab.pe_forward_latency_cycles)
    )


def transfer_latency_cycles(t: Transfer, n_chunks: int, arch: ArchConfig) -> float:
    """Latency ``t`` adds after its serialisation; a round trip (``allreduce_row``)
    overlaps its last chunk's outbound half at the busiest RAMP (see the module docstring)."""
    lat = path_latency_cycles(t.hops, t.turns, t.relays, arch)
    if t.pattern in ("allreduce_row", "allreduce_head") and t.hops > 0:
        half = t.ramp_bytes / 2 / max(n_chunks, 1) / ramp_bytes_per_cycle(arch)
        out = path_latency_cycles(t.hops / 2, t.turns, max(t.relays - 1, 0), arch)
        lat = max(lat - half, out)
    return lat


def latency_cycles(k: Kernel, arch: ArchConfig) -> float:
    """Pipeline-fill latency of the kernel's longest transfer, cycles."""
    return max(
        (transfer_latency_cycles(t, k.n_chunks, arch) for t in k.transfers),
        default=0.0,
    )


def active_cycles(k: Kernel, arch: ArchConfig) -> float:
    """Kernel duration with all its weights present: two-stage pipeline of n chunks."""
    c, f = compute_cycles(k), fabric_cycles(k, arch)
    return max(c, f) + min(c, f) / max(k.n_chunks, 1) + latency_cycles(k, arch)


def program_active_cycles(program: Program, arch: ArchConfig) -> list[float]:
    """:func:`active_cycles` of every kernel of ``program``, in order. They depend on the
    kernels and on ``arch.fabric`` only, so they are kept on the Program per fabric config
    (a sweep times one Program at many I/O bandwidths or clocks)."""
    memo = program.__dict__.setdefault("_active_cycles", {})
    stamp = (id(program.kernels), len(program.kernels))
    hit = memo.get(arch.fabric)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    # kernels repeat layer after layer (same transfers, chunks and slowest class): each
    # distinct one is computed once, by the identity of its transfers tuple (layers of one
    # lowering share it) or else by value
    by_id: dict = {}
    seen: dict = {}
    acts = []
    for k in program.kernels:
        tr = k.transfers
        crit = k.critical_cycles
        ik = (id(tr), k.n_chunks, crit)
        a = by_id.get(ik)
        if a is None:
            key = (tr, k.n_chunks, crit)
            a = seen.get(key)
            if a is None:
                a = seen[key] = active_cycles(k, arch)
            by_id[ik] = a
        acts.append(a)
    if len(memo) >= 8:
        memo.clear()
    memo[arch.fabric] = (stamp, acts)
    return acts


def fabric_bound_s(k: Kernel, arch: ArchConfig, n_links: int) -> float:
    """Roofline fabric bound: the kernel's link-bytes over the whole fabric's bandwidth."""
    total = sum(t.link_bytes for t in k.transfers)
    return total / (n_links * arch.fabric.link_bytes_per_cycle * arch.pe.clock_hz)


def n_directed_links(rows: int, cols: int) -> int:
    """Directed links of a rows x cols mesh, 2 directions x (horizontal + vertical), plus the
    ``cols`` ingress links from the north edge where MemoryX weights enter (so a 1 x 1 grid
    still has one link)."""
    return 2 * (rows * (cols - 1) + cols * (rows - 1)) + cols


@dataclass
class KernelTime:
    """When one kernel ran and where its time went (seconds).

    ``stall_s + compute_s + fabric_s == end_s - start_s``: stall is time waiting for weights
    from MemoryX, compute is the slowest PE class's work, fabric is the rest of the kernel's
    duration (transfers and latency not hidden behind compute).
    """

    name: str
    op: str
    layer: int
    micro_batch: int
    start_s: float
    end_s: float
    stall_s: float
    compute_s: float
    fabric_s: float

    @property
    def duration_s(self) -> float:
        """``end_s - start_s``."""
        return self.end_s - self.start_s

    @classmethod
    def of(
        cls, k: Kernel, start_cycles: float, end_cycles: float, stall_cycles: float, clock_hz: float
    ) -> KernelTime:
        """The time of kernel ``k`` from cycle counts: compute is the slowest class's work,
        fabric whatever of the duration is neither stall nor compute (never negative)."""
        comp = compute_cycles(k)
        fab = max(end_cycles - start_cycles - stall_cycles - comp, 0.0)
        return cls(
            k.name,
            k.op,
            k.layer,
            k.micro_batch,
            start_cycles / clock_hz,
            end_cycles / clock_hz,
            stall_cycles / clock_hz,
            comp / clock_hz,
            fab / clock_hz,
        )


@dataclass
class IOInterval:
    """One weight block's stream over the MemoryX ingress (seconds)."""

    name: str
    block: int
    start_s: float
    end_s: float
    bytes: int


@dataclass
class TimingResult:
    """Output of a timing backend for one Program.

    Attributes:
        backend: ``"analytic"`` or ``"event"``.
        total_s: simulated time of the whole program.
        kernels: per-kernel times, in program order.
        io_busy_s: time the MemoryX ingress was transferring.
        idle_s: time no kernel was running or waiting (``total - sum of kernel durations``).
        pe_busy_cycles: per-PE arithmetic cycles, float64 [rows, cols]; ``None`` with
            ``per_pe`` given: built by ``per_pe()`` on first read.
        sram_peak_bytes: per-PE SRAM high-water mark, int64 [rows, cols]; as
            ``pe_busy_cycles``.
        link_bytes: total bytes x links moved over the fabric.
        events: number of discrete events processed (0 for analytic).
        io_blocks: when each weight block streamed in, in stream order.
        per_pe: ``per_pe() -> (pe_busy_cycles, sram_peak_bytes)``, called the first time
            either map is read when they were given as ``None`` (the ``analytic`` backend:
            a layout search or a sweep times many Programs whose maps nobody reads).
    """

    backend: str
    total_s: float
    kernels: list[KernelTime]
    io_busy_s: float
    idle_s: float
    pe_busy_cycles: np.ndarray
    sram_peak_bytes: np.ndarray
    link_bytes: float
    events: int = 0
    io_blocks: list[IOInterval] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    per_pe: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.per_pe is not None and self.pe_busy_cycles is None:
            # unset, so that the first read goes through __getattr__ and builds them
            del self.pe_busy_cycles
            del self.sram_peak_bytes

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not set: the per-PE maps of a lazy result
        if name in ("pe_busy_cycles", "sram_peak_bytes"):
            build = self.__dict__.get("per_pe")
            if build is not None:
                busy, sram = build()
                self.__dict__["pe_busy_cycles"] = busy
                self.__dict__["sram_peak_bytes"] = sram
                return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def per_pe_maps(program: Program) -> tuple[np.ndarray, np.ndarray]:
    """Per-PE arithmetic cycles and SRAM high-water mark over all kernels of ``program``.

    Kernels sharing a class map are accumulated per class first, then scattered once per
    map, so the cost is O(kernels x classes + maps x PEs). The maps are a function of the
    Program alone: they are computed once per Program and kept on it (a Program is not
    changed once lowered; the cache is dropped if its kernel list is replaced or grows).
    Callers must not write into the returned arrays.
    """
    box = derived(program)
    memo = box.get("per_pe_maps")
    stamp = (id(program.kernels), len(program.kernels), id(program.class_maps))
    if memo is not None and memo[0] == stamp:
        return memo[1]
    busy = np.zeros((program.rows, program.cols))
    sram = np.zeros((program.rows, program.cols), dtype=np.int64)
    per_map: dict[str, np.ndarray] = {}
    sram_map: dict[str, int] = {}
    # kernels often share one tuple of classes (every layer's attention): its (index, busy)
    # vectors are built once; ``acc[idx] += busy`` adds in kernel order, as a loop would
    vecs: dict[int, tuple] = {}
    for k in program.kernels:
        acc = per_map.setdefault(k.class_map, np.zeros(max(len(k.classes), 1)))
        if len(acc) < len(k.classes):
            acc = np.concatenate([acc, np.zeros(len(k.classes) - len(acc))])
            per_map[k.class_map] = acc
        v = vecs.get(id(k.classes))
        if v is None or v[0] is not k.classes:
            idx = np.array([c.index for c in k.classes], dtype=np.int64)
            v = vecs[id(k.classes)] = (
                k.classes,
                idx,
                np.array([c.busy_cycles for c in k.classes], dtype=np.float64),
                len(np.unique(idx)) == len(idx),
            )
        if v[3]:
            acc[v[1]] += v[2]
        else:  # pragma: no cover - a class index listed twice: add one by one
            for c in k.classes:
                acc[c.index] += c.busy_cycles
        sram_map[k.class_map] = max(sram_map.get(k.class_map, 0), k.sram_bytes)
    for key, acc in per_map.items():
        cmap = program.class_maps[key]
        # index -1 (idle PE) picks the appended 0: busy + 0.0 == busy, max(sram, 0) == sram
        # (both are >= 0), so this equals updating only the PEs of the map's classes
        busy += np.append(acc, 0.0)[cmap]
        pick = np.array([sram_map[key], 0], dtype=np.int64)
        np.maximum(sram, pick[(cmap < 0).view(np.int8)], out=sram)
    busy.flags.writeable = False
    sram.flags.writeable = False
    box["per_pe_maps"] = (stamp, (busy, sram))
    return busy, sram


def derived(program: Program) -> dict:
    """The dict on ``program`` where the timing keeps what it derives from the Program alone
    (per-PE maps, the analytic backend's kernel plan), each entry stamped with the kernel
    list it was derived from. Shallow copies of the Program made after this call share it
    (``copy.copy``: a sweep hands out copies of one lowered Program), so what one copy
    derives, later, the others find."""
    return program.__dict__.setdefault("_derived", {})


def swarmx_depth(systems: int) -> int:
    """Levels of the SwarmX reduce/broadcast tree over ``systems`` systems: ``ceil(log2 S)``
    (a binary tree; 0 for one system, which needs no SwarmX hop)."""
    return math.ceil(math.log2(systems)) if systems > 1 else 0


def gradient_path(program: Program, arch: ArchConfig) -> tuple[float, float] | None:
    """``(bytes_per_s, latency_s)`` of the weight-gradient path wafer -> MemoryX, or ``None``
    for a program without gradient blocks (a forward pass: no egress is modelled at all).

    One system: the egress link, ``io.egress_bytes_per_s``, no extra latency. ``S > 1``
    systems (``program.systems``): the gradients are summed on their way through
    the SwarmX tree, pipelined (cut-through) level by level, so a block leaves at
    ``min(io.egress_bytes_per_s, io.swarmx_bytes_per_s)`` and arrives ``ceil(log2 S) x
    io.swarmx_latency_s`` after its last byte left the wafer. Closed form of one block's
    reduce: ``bytes / min(egress, swarmx) + ceil(log2 S) x swarmx_latency``.
    """
    if not program.gradient_blocks:
        return None
    s = program.systems
    io = arch.io
    if s <= 1:
        return io.egress_bytes_per_s, 0.0
    return min(io.egress_bytes_per_s, io.swarmx_bytes_per_s), swarmx_depth(s) * io.swarmx_latency_s


def optimizer_schedule(
    program: Program, arch: ArchConfig, arrivals: dict[int, float]
) -> list[tuple[str, float, float]]:
    """MemoryX AdamW updates as one serial server, in order of gradient arrival: block ``b``
    (with ``optimizer_params > 0``) starts at ``max(arrival_b, end of the previous update)``
    and takes ``optimizer_params / io.optimizer_params_per_s`` seconds.

    Args:
        arrivals: ``{gradient block id: time its last byte reached MemoryX, s}``.

    Returns:
        ``[(block name, start_s, end_s), ...]`` in update order.
    """
    rate = arch.io.optimizer_params_per_s
    out: list[tuple[str, float, float]] = []
    t = 0.0
    for b in sorted(arrivals, key=lambda i: (arrivals[i], i)):
        blk = program.gradient_blocks[b]
        if blk.optimizer_params <= 0:
            continue
        start = max(arrivals[b], t)
        t = start + blk.optimizer_params / rate
        out.append((blk.name, start, t))
    return out


def training_extra(
    program: Program,
    arch: ArchConfig,
    kernels_end_s: float,
    egress_intervals: list[tuple[int, float, float]],
    gradient_stall_s: float,
) -> tuple[float, dict]:
    """The end of a training step and its egress/optimizer facts for ``TimingResult.extra``.

    Args:
        kernels_end_s: when the last kernel ended.
        egress_intervals: ``[(kernel's gradient block, start_s, end_s), ...]`` of every
            gradient transfer over the egress, in order.
        gradient_stall_s: time kernels waited for a free gradient buffer slot.

    Returns:
        ``(total_s, extra)``: the step ends when the last kernel, the last gradient arrival
        and the last optimizer update are all done.
    """
    _, lat = gradient_path(program, arch)
    remaining = {b.id: b.bytes for b in program.gradient_blocks}
    arrivals: dict[int, float] = {}
    for (b, _, end), k in zip(
        egress_intervals, (k for k in program.kernels if k.grad_bytes > 0), strict=True
    ):
        remaining[b] -= k.grad_bytes
        if remaining[b] <= 0:
            arrivals[b] = end + lat
    opt = optimizer_schedule(program, arch, arrivals)
    egress_end = max((e for _, _, e in egress_intervals), default=0.0)
    last_arrival = max(arrivals.values(), default=0.0)
    opt_end = max((e for _, _, e in opt), default=0.0)
    total = max(kernels_end_s, last_arrival, opt_end)
    extra = {
        "kernels_end_s": kernels_end_s,
        "egress_busy_s": sum(e - s for _, s, e in egress_intervals),
        "egress_end_s": egress_end,
        "gradient_arrival_end_s": last_arrival,
        "gradient_stall_s": gradient_stall_s,
        "optimizer_busy_s": sum(e - s for _, s, e in opt),
        "optimizer_end_s": opt_end,
        "optimizer_updates": [{"name": n, "start_s": s, "end_s": e} for n, s, e in opt],
        "gradient_arrivals": [
            {"name": program.gradient_blocks[b].name, "arrival_s": t}
            for b, t in sorted(arrivals.items(), key=lambda x: x[1])
        ],
        "tail_s": total - kernels_end_s,
    }
    return total, extra
