"""The compiled packet engine is held to the reference (pure-Python) engine wavelet for
wavelet: on random traffic (static multicast trees, per-packet XY/YX routing, PE programs that
send from the delivery hook, timers, relays) both deliver the same packets to the same PEs at
the same head and tail cycles, in the same order, with the same per-link and per-RAMP counts,
peak occupancies and event counts; deadlocks name the same cycle; and the ``packet`` timing
backend gives the same result with either engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wse_sim.fabric.compiled import CompiledFabric
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.engines import make_engine
from wse_sim.fabric.errors import FabricDeadlock, RouteError
from wse_sim.fabric.routing import RouteTable, tree_route, xy_path, yx_path
from wse_sim.fabric.topology import Mesh


@st.composite
def traffic(draw):
    """A random grid, engine parameters, static routes, per-packet flows and PE programs."""
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    n = rows * cols
    params = dict(
        buffer_wavelets=draw(st.integers(1, 6)),
        packet_wavelets=draw(st.integers(1, 4)),
        hop_latency_cycles=draw(st.sampled_from([1, 2])),
        turn_latency_cycles=draw(st.sampled_from([0, 1, 3])),
        ramp_latency_cycles=draw(st.sampled_from([1, 2])),
        ramp_wavelets_per_cycle=draw(st.sampled_from([0.5, 1.0])),
        link_wavelets_per_cycle=draw(st.sampled_from([1.0, 2.0])),
        colours=4,
    )
    routes = [
        (
            draw(st.integers(0, n - 1)),
            draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5)),
            draw(st.integers(1, 3)),
            draw(st.sampled_from(["xy", "yx"])),
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    sends = draw(
        st.lists(
            st.tuples(st.integers(0, 9), st.floats(0.5, 9, allow_nan=False), st.integers(0, 30)),
            max_size=20,
        )
    )
    flows = draw(
        st.lists(
            st.tuples(
                st.integers(0, n - 1), st.integers(0, n - 1), st.integers(1, 12), st.integers(0, 40)
            ),
            max_size=25,
        )
    )
    echo = draw(st.booleans())  # PEs answer each per-packet delivery with a packet back
    timers = draw(st.lists(st.integers(0, 60), max_size=4))
    return rows, cols, params, routes, sends, flows, echo, timers


def _run(cls, rows, cols, params, routes, sends, flows, echo, timers):
    m = Mesh(rows, cols)
    eng = cls(m, check=True, **params)
    eng.set_routing(0, "xy")
    table = RouteTable(m, 4)
    ok = []
    for src, dests, colour, order in routes:
        fn = xy_path if order == "xy" else yx_path
        try:
            table.add(tree_route(colour, m.node(src), [fn(m.node(src), m.node(d)) for d in dests]))
            ok.append((src, colour))
        except RouteError:
            pass
    eng.install(table)
    log = []

    def on_deliver(n, pkt, th, tt):
        log.append((n, pkt.pid, pkt.colour, pkt.size, th, tt, pkt.tag))
        if echo and pkt.colour == 0 and pkt.tag == "fwd":
            eng.inject(n, 0, pkt.size, max(th + 1, eng.now), dst=pkt.src, tag="back")

    def tick(k, t):
        log.append(("tick", k, eng.now))
        for i, (src, dst, size, _) in enumerate(flows[:3]):
            eng.send(dst, 0, size, eng.now, dst=src, tag=("timer", k, i))

    eng.on_deliver = on_deliver
    for k, t in enumerate(timers):
        eng.schedule(float(t), tick, k, float(t))
    for ri, size, t in sends:
        if ok:
            src, colour = ok[ri % len(ok)]
            eng.send(src, colour, size, float(t), tag="static")
    for src, dst, size, t in flows:
        eng.send(src, 0, size, float(t), dst=dst, tag="fwd")
    eng.run()
    return eng, log


def _same(a: PacketFabric, b: PacketFabric) -> None:
    assert a.now == b.now and a.events == b.events
    for f in ("link_wavelets", "ramp_wavelets", "peak_occupancy", "latencies"):
        np.testing.assert_array_equal(getattr(a, f)(), getattr(b, f)(), err_msg=f)
    for x, y in zip(a.deliveries(), b.deliveries(), strict=True):
        np.testing.assert_array_equal(x, y)
    ca, cb = a.conservation(), b.conservation()
    assert ca == cb
    assert ca["missing"] == ca["duplicated"] == ca["unexpected"] == [] and ca["in_flight"] == 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traffic())
@example((1, 1, dict(colours=4), [(0, [0], 1, "xy")], [(0, 1.0, 0)], [(0, 0, 3, 0)], True, [0]))
@example((3, 4, dict(colours=4, buffer_wavelets=1), [], [], [(0, 11, 12, 0)] * 6, True, []))
@example(
    (
        1, 1,
        dict(buffer_wavelets=2, packet_wavelets=3, hop_latency_cycles=1, turn_latency_cycles=0,
             ramp_latency_cycles=1, ramp_wavelets_per_cycle=0.5, link_wavelets_per_cycle=1.0,
             colours=4),
        [(0, [0], 1, "xy")], [(0, 1.0, 0), (0, 0.99999, 0), (0, 3.0, 0)], [], False, [],
    )
).via("a stall with no wait-for cycle: both engines raise the same FabricDeadlock")
def test_compiled_matches_reference_wavelet_for_wavelet(case):
    outcome = []
    for cls in (PacketFabric, CompiledFabric):
        try:
            outcome.append(_run(cls, *case))
        except FabricDeadlock as e:  # a stall is a result too: the same message and state
            outcome.append(("deadlock", (str(e), e.cycle, e.stuck_packets)))
    (ref, log_ref), (got, log_got) = outcome
    if ref == "deadlock" or got == "deadlock":
        assert outcome[0] == outcome[1]
    else:
        assert log_got == log_ref  # same deliveries and timers, same order, same cycles
        _same(ref, got)


def _ring(eng):
    ring = [(0, 0), (0, 1), (1, 1), (1, 0)]
    t = RouteTable(eng.mesh, 4)
    for k in range(4):
        t.add(tree_route(k, ring[k], [xy_path(ring[k], ring[(k + 1) % 4])]))
    eng.install(t)
    for k in range(4):
        eng.set_relay(ring[(k + 1) % 4], k, (k + 1) % 4, 1)
    return ring


@pytest.mark.parametrize("cap_packets", [1, 3])
def test_relays_and_deadlock_match(cap_packets):
    """A relay ring: delivered around with room, a deadlock naming the same cycle without."""
    out = []
    for cls in (PacketFabric, CompiledFabric):
        eng = cls(Mesh(2, 2), buffer_wavelets=1, colours=4, check=True)
        ring = _ring(eng)
        for k in range(4):
            for _ in range(cap_packets):
                eng.inject(ring[k], k, 1, 0.0, ttl=2)
        try:
            eng.run()
            out.append(("ok", eng.events, eng.deliveries()[0].tolist(), eng.link_wavelets().sum()))
        except FabricDeadlock as e:
            out.append(("deadlock", str(e), e.cycle, e.stuck_packets))
    assert out[0] == out[1]


def test_route_errors_match():
    """A per-packet XY colour whose path crosses a faulty link: the same RouteError."""
    msgs = []
    for cls in (PacketFabric, CompiledFabric):
        eng = cls(Mesh(2, 3, faulty_links=[((0, 1), (0, 2))]), colours=2)
        eng.set_routing(0, "xy")
        eng.inject((0, 0), 0, 1, 0.0, dst=(0, 2))
        with pytest.raises(RouteError) as ei:
            eng.run()
        msgs.append(str(ei.value))
    assert msgs[0] == msgs[1] and "fault" in msgs[0]


def test_make_engine_names():
    from wse_sim.arch import load_arch

    f = load_arch("grid8").fabric
    assert isinstance(make_engine("compiled", Mesh(2, 2), f), CompiledFabric)
    assert type(make_engine("reference", Mesh(2, 2), f)) is PacketFabric
    with pytest.raises(ValueError, match="engine 'fast' unknown"):
        make_engine("fast", Mesh(2, 2), f)


def test_packet_backend_same_with_either_engine():
    """The ``packet`` timing backend: identical kernel times, link maps and events."""
    from gpt_workload.config import GPTConfig
    from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
    from wse_sim.arch import load_arch
    from wse_sim.timing.packet import run_packet

    cfg = GPTConfig(
        name="t", n_layer=1, n_head=2, d_model=64, d_ff=256, vocab_size=128, n_positions=64
    )
    arch = load_arch("grid8")
    prog = lower_weight_streaming(cfg, arch, 2, 32, "fp16")
    ks = [dataclasses.replace(k, n_chunks=min(k.n_chunks, 4)) for k in prog.kernels]
    prog = dataclasses.replace(prog, kernels=ks)
    ref = run_packet(prog, arch, engine="reference", check=True)
    got = run_packet(prog, arch, engine="compiled", check=True)
    assert got.total_s == ref.total_s and got.events == ref.events
    assert [k.duration_s for k in got.kernels] == [k.duration_s for k in ref.kernels]
    np.testing.assert_array_equal(
        got.extra["fabric_stats"].link_wavelets, ref.extra["fabric_stats"].link_wavelets
    )
    assert got.extra["conservation"] == ref.extra["conservation"]


def test_inject_many_is_inject_in_order():
    """Bulk injection of per-packet routed traffic equals one ``inject`` per packet."""
    rng = np.random.default_rng(3)
    n, k = 25, 300
    src, dst = rng.integers(0, n, k), rng.integers(0, n, k)
    ts = np.sort(rng.integers(0, 200, k)).astype(float)
    a = CompiledFabric(Mesh(5, 5), buffer_wavelets=2)
    b = CompiledFabric(Mesh(5, 5), buffer_wavelets=2)
    for e in (a, b):
        e.set_routing(0, "xy")
    a.inject_many(src, 0, 2.0, ts, dst)
    for s, d, t in zip(src.tolist(), dst.tolist(), ts.tolist(), strict=True):
        b.inject(s, 0, 2.0, t, dst=d)
    a.run()
    b.run()
    _same(a, b)
    with pytest.raises(RouteError, match="per-packet routed"):
        a.inject_many(src, 1, 1.0, ts, dst)


def _lowered(case: str):
    from gpt_workload.config import GPTConfig
    from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
    from gpt_workload.mappings import parse_mapping
    from gpt_workload.models import resolve_model
    from wse_sim.arch import load_arch

    arch = load_arch("grid8", ["io.ingress_bytes_per_s=1e12"])
    if case == "block":
        cfg = GPTConfig(
            name="t", n_layer=1, n_head=2, d_model=64, d_ff=256, vocab_size=128, n_positions=64
        )
        prog = lower_weight_streaming(cfg, arch, 2, 32, "fp16")
    else:  # heads split over 2 PEs: the head all-reduce too
        prog = parse_mapping("weight_streaming:pes_per_segment=8").lower(
            resolve_model("gpt-tiny"), arch, 2, 32, "fp16"
        )
    ks = [dataclasses.replace(k, n_chunks=min(k.n_chunks, 4)) for k in prog.kernels]
    return dataclasses.replace(prog, kernels=ks), arch


@pytest.mark.parametrize("case", ["block", "split-heads"])
def test_compiled_pe_programs_match_python_and_reference(case):
    """The PE programs run inside the compiled loop (``pe_programs="compiled"``) give the
    Python callbacks' results on the compiled engine and the reference engine's, event for
    event: kernel times and stalls, events, link maps, conservation."""
    from wse_sim.timing.packet import run_packet

    prog, arch = _lowered(case)
    ref = run_packet(prog, arch, engine="reference")
    py = run_packet(prog, arch, engine="compiled", pe_programs="python")
    got = run_packet(prog, arch, engine="compiled")
    for other in (ref, py):
        assert got.total_s == other.total_s and got.events == other.events
        assert [k.duration_s for k in got.kernels] == [k.duration_s for k in other.kernels]
        assert [k.stall_s for k in got.kernels] == [k.stall_s for k in other.kernels]
        np.testing.assert_array_equal(
            got.extra["fabric_stats"].link_wavelets, other.extra["fabric_stats"].link_wavelets
        )
        assert got.extra["conservation"] == other.extra["conservation"]
