"""Synthetic traffic on the packet engine: the classic network-on-chip patterns.

Patterns (Dally & Towles, *Principles and Practices of Interconnection Networks*, 2004, ch. 3):
``uniform`` (every other node equally likely), ``transpose`` ((r, c) -> (c, r)),
``bit_complement`` ((r, c) -> (k-1-r, k-1-c)), ``hotspot`` (a fraction of the packets go to
one node, the rest uniform) and ``neighbor`` (one of the four mesh neighbours at random).

Each node offers ``load`` wavelets per cycle as packets of ``packet_wavelets`` wavelets with
geometric inter-arrival times (Bernoulli injection per cycle), open loop: the source queue in
the PE is unbounded, so beyond saturation the accepted throughput flattens and the latency
grows without bound. Packets are routed per packet in dimension order (``xy`` or ``yx``) on
one colour. Measurement follows the book's method: a warm-up, a measurement window whose
injected packets are tracked to delivery, and a drain.

Uniform traffic on a ``k x k`` mesh cannot exceed the bisection bound of ``4 / k`` wavelets
per node per cycle: half the traffic of the ``k^2 / 2`` nodes on one side crosses the ``k``
links of the bisection in each direction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from wse_sim.errors import ConfigError
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.topology import Mesh

PATTERNS = ("uniform", "transpose", "bit_complement", "hotspot", "neighbor")


def destinations(
    pattern: str, mesh: Mesh, src: np.ndarray, rng: np.random.Generator, hotspot_fraction=0.2
) -> np.ndarray:
    """Destination router index for each source router index in ``src`` (int array).

    A source whose pattern maps it onto itself (the diagonal under ``transpose``) gets -1: it
    does not inject.

    Raises:
        ConfigError: unknown pattern.
    """
    k_r, k_c = mesh.rows, mesh.cols
    n = k_r * k_c
    r, c = np.divmod(src, k_c)
    if pattern == "uniform":
        d = rng.integers(0, n - 1, size=src.shape)
        d = d + (d >= src)  # skip the source itself
    elif pattern == "transpose":
        d = (c % k_r) * k_c + (r % k_c)
    elif pattern == "bit_complement":
        d = (k_r - 1 - r) * k_c + (k_c - 1 - c)
    elif pattern == "hotspot":
        hot = (k_r // 2) * k_c + k_c // 2
        u = rng.integers(0, n - 1, size=src.shape)
        u = u + (u >= src)
        d = np.where(rng.random(src.shape) < hotspot_fraction, hot, u)
    elif pattern == "neighbor":
        dr = np.array([-1, 0, 1, 0])
        dc = np.array([0, 1, 0, -1])
        pick = rng.integers(0, 4, size=src.shape)
        rr, cc = r + dr[pick], c + dc[pick]
        # reflect off the grid edge so every node has a neighbour to send to
        rr = np.where((rr < 0) | (rr >= k_r), r - dr[pick], rr)
        cc = np.where((cc < 0) | (cc >= k_c), c - dc[pick], cc)
        d = rr * k_c + cc
    else:
        raise ConfigError(f"traffic pattern {pattern!r} is unknown; allowed: {', '.join(PATTERNS)}")
    return np.where(d == src, -1, d).astype(np.int64)


#: longest mean gap between a node's packets, cycles: numpy's geometric draws are int64, and
#: gaps near 2**63 overflow (the schedule then never ends)
MAX_MEAN_GAP_CYCLES = 2.0**52


def check_load(load: float, packet_wavelets: int) -> float:
    """An offered load (wavelets per node per cycle) the injection schedule can draw: at most
    one packet per node per cycle, and a mean gap ``packet_wavelets / load`` of at most
    :data:`MAX_MEAN_GAP_CYCLES`.

    Raises:
        ConfigError: outside ``[packet_wavelets / MAX_MEAN_GAP_CYCLES, packet_wavelets]``
            (or not a finite number).
    """
    lo = packet_wavelets / MAX_MEAN_GAP_CYCLES
    if not (isinstance(load, int | float) and lo <= load <= packet_wavelets):
        raise ConfigError(
            f"offered load={load!r} must be in [{lo:.3g}, {packet_wavelets}] wavelets per node "
            f"per cycle (one {packet_wavelets}-wavelet packet per cycle at most; a mean gap of "
            f"at most 2^52 cycles)"
        )
    return float(load)


def injection_schedule(
    mesh: Mesh,
    pattern: str,
    load: float,
    packet_wavelets: int,
    end_cycles: float,
    seed: int,
    nodes: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open-loop injections ``(cycle, src, dst)`` sorted by cycle, until ``end_cycles``.

    Each node draws geometric gaps with mean ``packet_wavelets / load`` cycles.

    Raises:
        ConfigError: ``load`` outside what :func:`check_load` allows, or a bad pattern.
    """
    check_load(load, packet_wavelets)
    rng = np.random.default_rng(seed)
    p = min(load / packet_wavelets, 1.0)
    nodes = nodes if nodes is not None else [mesh.index(x) for x in sorted(mesh.graph.nodes)]
    ts, ss = [], []
    expect = int(end_cycles * p * 1.2) + 16
    for n in nodes:
        gaps = rng.geometric(p, size=expect)
        t = np.cumsum(gaps) - 1.0
        while t[-1] < end_cycles:  # rare: draw more
            more = np.cumsum(rng.geometric(p, size=expect)) + t[-1]
            t = np.concatenate([t, more])
        t = t[t < end_cycles]
        ts.append(t)
        ss.append(np.full(t.shape, n, dtype=np.int64))
    t = np.concatenate(ts) if ts else np.zeros(0)
    s = np.concatenate(ss) if ss else np.zeros(0, dtype=np.int64)
    d = destinations(pattern, mesh, s, rng)
    keep = d >= 0
    t, s, d = t[keep], s[keep], d[keep]
    order = np.argsort(t, kind="stable")
    return t[order], s[order], d[order]


@dataclass
class TrafficResult:
    """One synthetic-traffic run.

    Attributes:
        pattern, k_rows, k_cols, routing, packet_wavelets: what ran.
        offered: offered load, wavelets per node per cycle (all nodes).
        accepted: delivered wavelets per node per cycle in the measurement window.
        latency_mean, latency_p50, latency_p99: cycles, packets injected in the window.
        measured_packets, delivered_measured: packets injected in the window / delivered.
        saturated: accepted < 0.9 x offered, or window packets still undelivered after the
            drain (the source queues grow without bound).
        wavelet_hops, events, wall_s: work done and host seconds.
    """

    pattern: str
    k_rows: int
    k_cols: int
    routing: str
    packet_wavelets: int
    offered: float
    accepted: float
    latency_mean: float
    latency_p50: float
    latency_p99: float
    measured_packets: int
    delivered_measured: int
    saturated: bool
    wavelet_hops: float
    events: int
    wall_s: float

    def to_dict(self) -> dict:
        """Plain data (CSV row)."""
        return asdict(self)


def run_traffic(
    mesh: Mesh,
    pattern: str,
    load: float,
    *,
    packet_wavelets: int = 1,
    routing: str = "xy",
    warmup_cycles: float = 500,
    measure_cycles: float = 2000,
    drain_cycles: float | None = None,
    seed: int = 0,
    engine_factory: Callable[[Mesh], PacketFabric] | None = None,
    check: bool = False,
) -> tuple[TrafficResult, PacketFabric]:
    """Run ``pattern`` at ``load`` wavelets per node per cycle and measure it.

    Args:
        engine_factory: builds the engine (rates, buffers); default WSE-2 fabric values.
        drain_cycles: cycles allowed after the window for its packets to arrive (default
            ``2 * measure_cycles``).
        check: engine conservation bookkeeping.

    Returns:
        ``(result, engine)``; the engine holds the link and queue statistics.
    """
    t0 = time.perf_counter()
    if engine_factory is None:
        eng = PacketFabric(mesh, packet_wavelets=packet_wavelets, check=check)
    else:
        eng = engine_factory(mesh)
        eng.packet_wavelets = packet_wavelets
        eng.check = check
    eng.set_routing(0, routing)
    w0, w1 = float(warmup_cycles), float(warmup_cycles + measure_cycles)
    drain = 2 * measure_cycles if drain_cycles is None else drain_cycles
    ts, ss, ds = injection_schedule(mesh, pattern, load, packet_wavelets, w1, seed)
    measured = int(((ts >= w0) & (ts < w1)).sum())
    lat: list[float] = []
    acc = [0.0]

    def on_deliver(n, pkt, t_head, t_tail):
        if w0 <= pkt.t_inject < w1:
            lat.append(t_tail - pkt.t_inject)
        if w0 <= t_tail < w1:
            acc[0] += pkt.size

    eng.on_deliver = on_deliver
    # shortcut for speed: packets are handed to the engine in windows of 64 cycles by one
    # feeder event, instead of one timer event per packet
    step = 64.0
    state = {"i": 0}

    def feed(t_window: float) -> None:
        i = state["i"]
        hi = int(np.searchsorted(ts, t_window + step, side="left"))
        for j in range(i, hi):
            eng.inject(int(ss[j]), 0, packet_wavelets, float(ts[j]), dst=int(ds[j]))
        state["i"] = hi
        if hi < len(ts):
            eng.schedule(t_window + step, feed, t_window + step)

    if len(ts):
        eng.schedule(0.0, feed, 0.0)
    end = w1 + drain
    while eng.peek() < end and (eng.now < w1 or len(lat) < measured):
        eng.run(until=min(end, eng.now + 4 * step))
    n_nodes = len(mesh.graph.nodes)
    accepted = acc[0] / (n_nodes * measure_cycles)
    la = np.asarray(lat) if lat else np.asarray([np.nan])
    # nodes that never inject (the diagonal under transpose) count with zero load
    offered = load * len(np.unique(ss)) / n_nodes
    res = TrafficResult(
        pattern=pattern,
        k_rows=mesh.rows,
        k_cols=mesh.cols,
        routing=routing,
        packet_wavelets=packet_wavelets,
        offered=offered,
        accepted=accepted,
        latency_mean=float(np.nanmean(la)),
        latency_p50=float(np.nanpercentile(la, 50)),
        latency_p99=float(np.nanpercentile(la, 99)),
        measured_packets=measured,
        delivered_measured=len(lat),
        saturated=bool(accepted < 0.9 * offered or len(lat) < measured),
        wavelet_hops=eng.wavelet_hops(),
        events=eng.events,
        wall_s=time.perf_counter() - t0,
    )
    return res, eng


def bisection_bound(k: int) -> float:
    """Uniform-traffic throughput bound of a ``k x k`` mesh: ``4 / k`` wavelets per node per
    cycle (one wavelet per link per cycle)."""
    return 4.0 / k
