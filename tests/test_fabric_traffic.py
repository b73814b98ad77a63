"""Synthetic traffic: destinations of each pattern, saturation under uniform traffic."""

from __future__ import annotations

import numpy as np
import pytest

from wse_sim.errors import ConfigError
from wse_sim.fabric.topology import Mesh
from wse_sim.fabric.traffic import PATTERNS, bisection_bound, destinations, run_traffic


def test_pattern_destinations():
    m = Mesh(8, 8)
    rng = np.random.default_rng(0)
    src = np.arange(64)
    r, c = np.divmod(src, 8)
    tr = destinations("transpose", m, src, rng)
    assert np.array_equal(tr[r != c], (c * 8 + r)[r != c]) and (tr[r == c] == -1).all()
    bc = destinations("bit_complement", m, src, rng)
    assert np.array_equal(bc, (7 - r) * 8 + (7 - c))
    u = destinations("uniform", m, np.repeat(src, 50), rng)
    assert (u != np.repeat(src, 50)).all() and set(u.tolist()) == set(range(64))
    nb = destinations("neighbor", m, np.repeat(src, 20), rng)
    dr, dc = np.divmod(nb, 8)
    rr, cc = np.divmod(np.repeat(src, 20), 8)
    assert (np.abs(dr - rr) + np.abs(dc - cc) == 1).all()
    hs = destinations("hotspot", m, np.repeat(src, 100), rng, hotspot_fraction=0.5)
    assert 0.4 < (hs == 4 * 8 + 4).mean() < 0.6
    with pytest.raises(ConfigError, match="unknown"):
        destinations("tornado", m, src, rng)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_low_load_is_accepted_and_conserved(pattern):
    m = Mesh(6, 6)
    res, eng = run_traffic(
        m, pattern, 0.05, packet_wavelets=2, warmup_cycles=200, measure_cycles=800, check=True
    )
    c = eng.conservation()
    assert c["missing"] == c["duplicated"] == c["unexpected"] == []
    assert not res.saturated
    assert res.accepted == pytest.approx(res.offered, rel=0.25)
    assert res.delivered_measured == res.measured_packets


def test_same_seed_same_result():
    m = Mesh(6, 6)
    a, _ = run_traffic(m, "uniform", 0.2, packet_wavelets=2, measure_cycles=500, seed=3)
    b, _ = run_traffic(m, "uniform", 0.2, packet_wavelets=2, measure_cycles=500, seed=3)
    assert (a.accepted, a.latency_mean, a.wavelet_hops) == (
        b.accepted,
        b.latency_mean,
        b.wavelet_hops,
    )


@pytest.mark.parametrize("k", [8, 16])
def test_uniform_xy_saturates_between_half_and_full_bisection_bound(k):
    """Acceptance: uniform random traffic under XY routing on a k x k mesh saturates below
    the bisection bound 4/k wavelets per node per cycle and above half of it, and latency
    rises sharply near saturation (>= 5x the low-load latency)."""
    m = Mesh(k, k)
    bound = bisection_bound(k)
    kw = dict(packet_wavelets=4, warmup_cycles=500, measure_cycles=1500, seed=1)
    low, _ = run_traffic(m, "uniform", 0.1 * bound, **kw)
    over, _ = run_traffic(m, "uniform", 1.2 * bound, **kw)
    assert not low.saturated and over.saturated
    assert 0.5 * bound < over.accepted < bound
    assert over.latency_mean > 5 * low.latency_mean
