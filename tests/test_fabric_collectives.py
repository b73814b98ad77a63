"""Collectives on the packet engine against closed forms and the published [HPDC24] model."""

from __future__ import annotations

import math

import pytest

from wse_sim.errors import ConfigError
from wse_sim.fabric.collectives import (
    folded_ring,
    hpdc24_cycles,
    hpdc24_model,
    hpdc24_terms,
    run_collective,
)
from wse_sim.fabric.topology import Mesh


def _conserved(eng):
    c = eng.conservation()
    assert c["missing"] == c["duplicated"] == c["unexpected"] == [] and c["in_flight"] == 0


@pytest.mark.parametrize("p, n", [(2, 1), (8, 16), (16, 300)])
def test_row_broadcast_and_chain_reduce_meet_closed_form_wavelet_exact(p, n):
    """Zero load, wavelet-exact: broadcast = 2 RAMP + (p-1) hops + n; chain reduce =
    n + (p-1) (RAMP out + hop + RAMP in + 1-cycle combine) with grid defaults (1-cycle
    hops, RAMPs and combine)."""
    m = Mesh(1, p)
    b, eng = run_collective("broadcast", "tree", "row", m, n, packet_wavelets=1, check=True)
    _conserved(eng)
    assert b.time_cycles == 2 * 1 + (p - 1) * 1 + n == b.closed_form_cycles
    r, eng = run_collective("reduce", "chain", "row", m, n, packet_wavelets=1, check=True)
    _conserved(eng)
    assert r.time_cycles == n + (p - 1) * (1 + 1 + 1 + 1) == r.closed_form_cycles


def test_hpdc24_terms_by_hand():
    # chain over 4 PEs, n = 10: C = 10, E = 30, N = 3, L = 3, D = 3
    assert hpdc24_terms("reduce", "chain", 4, 10) == (10, 30, 3, 3, 3)
    assert hpdc24_cycles(10, 30, 3, 3, 3, T_R=2) == 13 + 5 * 3
    # tree over 8 PEs: stages 3, E = n (4*1 + 2*2 + 1*4) = 12 n
    C, E, N, L, D = hpdc24_terms("reduce", "tree", 8, 10)
    assert (C, E, N, L, D) == (30, 120, 7, 7, 3)
    assert math.isnan(hpdc24_model("allreduce", "ring", 8, 10))


@pytest.mark.parametrize(
    "kind, algo", [("reduce", "chain"), ("reduce", "tree"), ("allreduce", "chain")]
)
def test_row_collectives_follow_hpdc24_trend(kind, algo):
    """Acceptance: simulated row reduce / all-reduce follow the published model's trend in
    message size and distance. With the published constants (T_R = 2 where our RAMP takes 1
    cycle) the simulation sits below the model by the RAMP latency per stage; with our RAMP
    latency the model is met within 1 % once bandwidth dominates (n >= 512) and exactly for the
    chain."""
    rows = []
    for p in (4, 8, 16, 32):
        for n in (64, 512, 4096):
            res, _ = run_collective(kind, algo, "row", Mesh(1, p), n, packet_wavelets=4)
            ours = hpdc24_model(kind, algo, p, n, T_R=1.0)
            rows.append((p, n, res.time_cycles, res.hpdc24_cycles, ours))
            assert res.time_cycles <= res.hpdc24_cycles  # T_R = 2 is the slower one
            if n >= 512:
                assert res.time_cycles == pytest.approx(ours, rel=0.01)
            if (kind, algo) == ("reduce", "chain"):
                assert res.time_cycles == ours
    # same ordering: time grows with n at fixed p and with p at fixed n, as in the model
    for p in (4, 8, 16, 32):
        ts = [r[2] for r in rows if r[0] == p]
        assert ts == sorted(ts)
    for n in (64, 512, 4096):
        ts = [r[2] for r in rows if r[1] == n]
        ms = [r[3] for r in rows if r[1] == n]
        assert ts == sorted(ts) and ms == sorted(ms)


def test_ring_allreduce_moves_two_n_over_p_per_link():
    p, n = 8, 4096
    res, eng = run_collective("allreduce", "ring", "row", Mesh(1, p), n, check=True)
    _conserved(eng)
    ideal = 2 * (p - 1) / p * n
    assert ideal < res.time_cycles < 1.1 * ideal
    assert folded_ring(6) == [0, 2, 4, 5, 3, 1]


@pytest.mark.parametrize(
    "kind, algo",
    [
        ("broadcast", "tree"),
        ("reduce", "chain"),
        ("reduce", "tree"),
        ("allreduce", "chain"),
        ("allreduce", "ring"),
    ],
)
@pytest.mark.parametrize("scope", ["column", "grid"])
def test_column_and_grid_collectives_conserve(kind, algo, scope):
    res, eng = run_collective(kind, algo, scope, Mesh(4, 6), 40, packet_wavelets=8, check=True)
    _conserved(eng)
    assert res.time_cycles > 0 and res.n_pes == (4 if scope == "column" else 24)


def test_bad_collective_names():
    m = Mesh(2, 2)
    with pytest.raises(ConfigError, match="allowed"):
        run_collective("gather", "tree", "row", m, 4)
    with pytest.raises(ConfigError, match="allowed"):
        run_collective("reduce", "ring", "row", m, 4)
    with pytest.raises(ConfigError, match="allowed"):
        run_collective("reduce", "chain", "diagonal", m, 4)
