"""The ring all-reduce never beats its latency bound (issue 14): with fewer elements than PEs
each of the ``2 (p - 1)`` steps still moves one whole wavelet and pays its hop and RAMP
latency. The bound (:func:`wse_sim.fabric.collectives.latency_bound_cycles`) is derived in
its docstring from the engine's constants, independently of the simulation."""

from __future__ import annotations

import math

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from wse_sim.fabric.collectives import latency_bound_cycles, ring_chunk_wavelets, run_collective
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.topology import Mesh


@settings(max_examples=40, deadline=None)
@given(
    p=st.integers(2, 24),
    n=st.integers(1, 600),
    hop=st.integers(1, 3),
    ramp=st.integers(1, 3),
)
@example(p=16, n=1, hop=1, ramp=1)  # the case: 5.9 cycles before the fix
@example(p=16, n=16, hop=1, ramp=1)
@example(p=3, n=600, hop=1, ramp=1)
def test_ring_allreduce_time_at_least_latency_bound(p, n, hop, ramp):
    """Sizes below, at and above the ring size: simulated time >= the bound."""
    assume(p >= 2)
    mesh = Mesh(1, p)
    eng = PacketFabric(
        mesh, hop_latency_cycles=hop, ramp_latency_cycles=ramp, packet_wavelets=64
    )
    res, _ = run_collective("allreduce", "ring", "row", mesh, n, eng=eng)
    bound = latency_bound_cycles("allreduce", "ring", p, n, eng, 1.0)
    assert res.time_cycles >= bound - 1e-9
    # the bound is at least 2 (p - 1) steps of one hop and two RAMPs each
    assert bound >= 2 * (p - 1) * (2 * ramp + hop)


def test_ring_with_one_element_pays_every_step():
    """16 PEs, 1 element (5.9 cycles before the fix): >= 30 steps x (2 RAMP + hop)."""
    mesh = Mesh(1, 16)
    res, _ = run_collective("allreduce", "ring", "row", mesh, 1)
    assert res.time_cycles >= 30 * 3
    assert ring_chunk_wavelets(1, 16) == 1.0
    assert ring_chunk_wavelets(17, 16) == 2.0
    assert ring_chunk_wavelets(32, 16) == 2.0


def test_ring_time_does_not_fall_below_the_chunk_floor_as_n_shrinks():
    """Below the ring size every step moves one wavelet: the time no longer falls with n."""
    mesh = Mesh(1, 8)
    t = [run_collective("allreduce", "ring", "row", mesh, n)[0].time_cycles for n in (1, 4, 8)]
    assert t[0] == t[1] == t[2]
    assert math.isfinite(t[0])
