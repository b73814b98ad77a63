"""WaferLLM's K-tree all-reduce as a line collective: its closed form, its packet-level run,
and the numerics' combine order against an emulation written from WaferLLM's code."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_workload.generation.split import GemvSplit, combine_order, combine_root
from gpt_workload.kernels.decode import gemv_split
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError
from wse_sim.fabric.lines import (
    ktree_messages,
    ktree_root,
    line_pattern,
    line_transfer,
    zero_load_schedule,
)
from wse_sim.program import Kernel, PEClass, Program
from wse_sim.timing.analytic import run_analytic
from wse_sim.timing.event import run_event
from wse_sim.timing.packet import run_packet

GRID = load_arch("grid32")


@pytest.mark.parametrize("g,K", [(5, 2), (7, 2), (9, 2), (3, 3), (5, 3)])
@pytest.mark.parametrize("n", [1, 4])
def test_ktree_zero_load_closed_form(g, K, n):
    """``p = g^K`` PEs (``g`` odd): each phase reduces groups of ``g`` to their middle by two
    chains of ``c = (g - 1) / 2`` relay stages, so the sum has crossed ``K c`` relay stages
    ((2 T_R + 1) each, [HPDC24]) and the multicast back reaches the far end after ``p - 1``
    hops in all; each phase's root takes its two chains' partials one after the other on its
    RAMP (``n`` cycles each phase) and the multicast serialises ``n``: ``T = K c (2 T_R + f)
    + (p - 1) h + 2 T_R + (K + 1) n``."""
    fab = GRID.fabric
    p, c = g**K, (g - 1) // 2
    cyc, hops, relays = zero_load_schedule(p, n, f"ktree{K}", fab)
    r, f, h = fab.ramp_latency_cycles, fab.pe_forward_latency_cycles, fab.hop_latency_cycles
    assert relays == K * c
    assert hops == p - 1
    assert cyc == pytest.approx(K * c * (2 * r + f) + (p - 1) * h + 2 * r + (K + 1) * n)


def test_ktree_groups_follow_waferllm():
    """K = 2 on 720 PEs: groups of about sqrt(720); every PE but the root sends once; the
    root is the middle group's middle PE (WaferLLM: ``root_2nd = (groups / 2) g + g / 2``)."""
    msgs = ktree_messages(720, 2)
    assert sorted(s for s, _ in msgs) == [i for i in range(720) if i != ktree_root(720, 2)]
    # 27 groups (18 of 27, then 9 of 26); the middle group (13) starts at 13 x 27
    assert ktree_root(720, 2) == 13 * 27 + 27 // 2
    # an exact square: 25 = 5 groups of 5, roots 2, 7, 12, 17, 22, root 12
    assert ktree_root(25, 2) == 12
    assert sorted(d for s, d in ktree_messages(25, 2) if s in (2, 7, 17, 22)) == [7, 12, 12, 17]
    with pytest.raises(ConfigError, match="--ktree-k"):
        ktree_messages(8, 9)


def _ktree_program(axis: str, rows: int, cols: int, n: float, K: int):
    cmap = -np.ones((32, 32), np.int16)
    cmap[:rows, :cols] = 0
    p, lines = (cols, rows) if axis == "row" else (rows, cols)
    tr = line_transfer("t", line_pattern("allreduce", f"ktree{K}", axis), p, lines, n,
                       GRID.fabric)  # fmt: skip
    k = Kernel("k", "op", 0, 0, (PEClass(0, rows * cols, 50.0, 0.0, 0.0),), "m", (tr,),
               n_chunks=1)  # fmt: skip
    return Program("ktree", 32, 32, "fp16", [k], [], {"m": cmap})


@pytest.mark.parametrize("axis,rows,cols,n,K", [
    ("row", 4, 32, 1, 2), ("col", 32, 5, 3, 2), ("row", 3, 25, 16, 2), ("col", 27, 2, 2, 3),
])  # fmt: skip
def test_ktree_analytic_and_event_meet_packet(axis, rows, cols, n, K):
    """The packet engine runs the K-tree's messages router by router; analytic and event time
    it by its zero-load schedule: within the 5 % the other line collectives meet."""
    prog = _ktree_program(axis, rows, cols, n, K)
    pk = run_packet(prog, GRID).total_s
    for run in (run_analytic, run_event):
        assert run(prog, GRID).total_s == pytest.approx(pk, rel=0.05)


def _waferllm_two_phase(parts: list[np.ndarray]) -> np.ndarray:
    """WaferLLM's ``two_tree_allreduce_y`` (MeshGEMV comm_pe.csl) over our grouping: within a
    group the members before the middle chain their running sum down to it (``send = recv +
    own``), those after it chain up; the middle adds the upward sum, then the downward one;
    phase 2 does the same over the group middles."""

    def group_sum(vals):
        c = len(vals) // 2
        acc = vals[c]
        if c < len(vals) - 1:
            up = vals[-1]
            for v in vals[c + 1:-1][::-1]:
                up = up + v
            acc = acc + up
        if c > 0:
            down = vals[0]
            for v in vals[1:c]:
                down = down + v
            acc = acc + down
        return acc

    p = len(parts)
    g = int(np.ceil(np.sqrt(p)))
    while (g - 1) ** 2 >= p:
        g -= 1
    n_groups = -(-p // g)
    sizes = [p // n_groups + (1 if i < p % n_groups else 0) for i in range(n_groups)]
    roots, start = [], 0
    for s in sizes:
        roots.append(group_sum(parts[start:start + s]))
        start += s
    return group_sum(roots)


@pytest.mark.parametrize("rows", [2, 5, 9, 12, 30])
def test_ktree_gemv_matches_the_waferllm_order_bitwise(rows):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((2, 97)).astype(np.float32)
    w = rng.standard_normal((97, 40)).astype(np.float32)
    split = GemvSplit(rows, 3, "ktree", 2)
    kb = split.k_bounds(97)
    parts = [x[:, kb[r]:kb[r + 1]] @ np.zeros((kb[r + 1] - kb[r], 40), np.float32)
             for r in range(rows)]  # fmt: skip
    for r in range(rows):  # per PE, k ascending, one rounding per * and +
        for k in range(kb[r], kb[r + 1]):
            parts[r] = parts[r] + x[:, k:k + 1] * w[k][None, :]
    np.testing.assert_array_equal(gemv_split(x, w, None, split), _waferllm_two_phase(parts))
    assert combine_root(rows, "ktree", 2) == ktree_root(rows, 2)
    assert len(combine_order(rows, "ktree", 2)) == rows - 1
