"""The GEMM adapter of the layer-pipelined mapping: a stage band's GEMM as the ``gemm``
algorithm of :mod:`gpt_workload.mappings.gemm` on the band's grid with its weights resident
(layout and timing: :mod:`gpt_workload.mappings.layer_pipelined`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpt_workload.mappings.weight_streaming.plan import (
    ACC_BYTES,
)
from gpt_workload.precision import bytes_per_element
from wse_sim.errors import ConfigError
from wse_sim.program import Transfer


# ------------------------------------------------------------------------------ GEMM adapter
@dataclass(frozen=True)
class _GemmCost:
    """Per-PE cost of one resident-weight GEMM on a ``pr x pc`` region (from ``gemm_plan``).

    Attributes:
        busy, overhead: cycles per PE of the slowest PE; flops: whole GEMM (2 M K N).
        sram: per-PE working set of the algorithm (A, B, C tiles and buffers), bytes.
        transfers: its fabric transfers.
    """

    busy: float
    overhead: float
    flops: float
    sram: int
    transfers: tuple[Transfer, ...]


_PLANS: dict = {}


@dataclass(frozen=True)
class _PlanView:
    """The fields of a :class:`gpt_workload.mappings.gemm.GemmPlan` that :func:`_gemm` reads."""

    busy_cycles: float
    overhead_cycles: float
    flops_total: float
    sram_bytes: int
    transfers: tuple


def column_sources(alg: str, M: int, K: int, N: int, pr: int, pc: int, s: int) -> np.ndarray:
    """Bytes each logical PE ``(i, j)`` multicasts down its logical column in ``alg``'s
    resident-weight GEMM (``[pr, pc]``), as :mod:`gpt_workload.mappings.gemm` distributes
    them: ``ws`` ``B[K_j, N_i]`` (``split(K, pc)`` x ``split(N, pr)``); ``summa`` the B panel
    ``B[K_i, N_j]`` (``split(K, pr)`` x ``split(N, pc)``); ``row_1d``/``col_1d`` the whole of
    row ``i``'s B (A) parts, forwarded down every column by the 2-D all-gather tree.

    Raises:
        ConfigError: ``cannon``/``meshgemm`` (their column traffic is unicast shifts).
    """
    from gpt_workload.mappings.gemm import split

    sz = lambda n, q: np.diff(split(n, q))  # noqa: E731
    if alg == "ws":
        return np.outer(sz(N, pr), sz(K, pc)) * s
    if alg == "summa":
        return np.outer(sz(K, pr), sz(N, pc)) * s
    if alg in ("row_1d", "col_1d"):
        per = sz(K, pr * pc) * (N if alg == "row_1d" else M) * s
        return np.repeat(per.reshape(pr, pc).sum(axis=1, keepdims=True), pc, axis=1)
    raise ConfigError(
        f"mapping layer_pipelined: gemm={alg} needs a square block and a layer-pipelined band "
        f"never is one (folded: rows x (cols // P) by P; fold=off: rows x cols); use gemm=summa, "
        f"ws, row_1d or col_1d"
    )


def folded_column_multicast(
    name: str, nb: np.ndarray, rows: int, nseg: int, P: int, colour: int
) -> tuple[Transfer, Transfer]:
    """Physical traffic of multicasts down the logical columns of a folded band.

    The band is ``rows x (nseg P)`` PEs (idle columns beyond ``nseg P`` not counted); logical
    PE ``(g rows + r, j)`` sits at physical ``(r, g P + j)``: the ``nseg`` segment columns of
    width ``P`` are stacked as extra logical rows. ``nb[g rows + r, j]`` bytes go from that PE
    to every other PE of logical column ``j``: along physical row ``r`` to the same position
    ``j`` of every other segment column (``P`` links per segment step, passing through the
    routers of the PEs in between), then down and up physical column ``g' P + j`` of every
    segment column ``g'`` (a 2-D multicast tree, as the module's other multicasts).

    With ``T_j = sum_i nb[i, j]``, ``V[r, j] = sum_g nb[g rows + r, j]`` and the coarse prefix
    ``E[g, r, j] = sum_{g0 <= g} nb[g0 rows + r, j]`` (``W = T_rj - E`` westward):

    * vertical: each physical column of logical column ``j`` is a line of ``rows`` PEs fed
      ``V[r, j]`` at row ``r``: link ``r -> r + 1`` carries ``sum_{r0 <= r} V``, ``r + 1 ->
      r`` the rest; link-bytes ``nseg (rows - 1) sum_j T_j``;
    * horizontal: physical link ``c -> c + 1`` of row ``r`` carries ``E[g, r, j]`` for every
      ``(g, j)`` with ``g P + j <= c < (g + 1) P + j`` (the logical columns' segment steps
      overlap: about ``P`` of them cross every link), ``W`` westward likewise; link-bytes
      ``P (nseg - 1) sum_j T_j``;
    * RAMP: PE ``(g rows + r, j)`` takes in ``T_j - nb[g rows + r, j]``;
    * hops: horizontal ``P max(g0, nseg - 1 - g0)``, vertical ``max(r0, rows - 1 - r0)`` over
      the sources with bytes; the vertical transfer carries the whole path (one turn).

    Returns:
        ``(vertical, horizontal)`` :class:`Transfer` (bytes; the busiest directed link of
        each group; ``tests/test_layer_pipelined.py`` checks them against a per-link count).
    """
    nb = np.asarray(nb, np.float64).reshape(nseg, rows, P)  # [g, r, j]
    T = nb.sum(axis=(0, 1))  # [j]
    V = nb.sum(axis=0)  # [r, j]
    pre_v = np.cumsum(V, axis=0)
    v_fwd, v_back = pre_v[:-1], pre_v[-1:] - pre_v[:-1]
    E = np.cumsum(nb, axis=0)  # [g, r, j]
    Wb = E[-1:] - E
    n_links = nseg * P
    g = np.arange(nseg - 1)[:, None]
    j = np.arange(P)[None, :]
    lo = (g * P + j).ravel()  # first physical link of segment step g of logical column j
    h_fwd = np.zeros((rows, n_links + 1))
    h_back = np.zeros((rows, n_links + 1))
    for arr, load in ((h_fwd, E[:-1]), (h_back, Wb[:-1])):
        # lo = g P + j runs over 0 .. (nseg - 1) P - 1 once each: plain slice adds
        ld = load.transpose(1, 0, 2).reshape(rows, -1)  # [r, (g, j)]
        arr[:, : lo.size] += ld
        arr[:, P : P + lo.size] -= ld
    h_fwd, h_back = np.cumsum(h_fwd, axis=1), np.cumsum(h_back, axis=1)
    recv = T[None, None, :] - nb
    live = nb != 0
    gg, rr, _ = np.nonzero(live)
    h_hops = int(P * np.maximum(gg, nseg - 1 - gg).max(initial=0))
    v_hops = int(np.maximum(rr, rows - 1 - rr).max(initial=0))
    tot = float(T.sum())
    vert = Transfer(
        name,
        "multicast_col_folded",
        "vertical",
        float(max(v_fwd.max(initial=0.0), v_back.max(initial=0.0))),
        nseg * (rows - 1) * tot,
        hops=h_hops + v_hops,
        turns=1 if h_hops and v_hops else 0,
        colour=colour,
        ramp_bytes=float(recv.max(initial=0.0)),
    )
    horiz = Transfer(
        f"{name} (between segment columns)",
        "multicast_row_folded",
        "horizontal",
        float(max(h_fwd.max(initial=0.0), h_back.max(initial=0.0))),
        P * (nseg - 1) * tot,
        hops=h_hops,
        turns=0,
        colour=colour,
        ramp_bytes=0.0,
    )
    return vert, horiz


def _gemm(
    alg: str, M: int, K: int, N: int, pr: int, pc: int, precision: str, arch, fold=None
) -> _GemmCost:
    """``gemm_plan`` of :mod:`gpt_workload.mappings.gemm` for ``[M, K] x [K, N]`` with the
    weights resident on a logical ``pr x pc`` grid, as a :class:`_GemmCost` (cached).

    ``fold = (rows, nseg)``: the grid is a folded band (``pr = rows nseg``, ``pc = P``,
    :func:`folded_column_multicast`): the plan's transfers along logical rows stay inside a
    segment (physically contiguous, unchanged), and its multicasts down logical columns are
    replaced by their physical vertical and horizontal traffic."""
    key = (alg, M, K, N, pr, pc, precision, arch.pe, fold)
    if key not in _PLANS:
        from gpt_workload.mappings.gemm import gemm_plan

        if fold is not None and alg in ("cannon", "meshgemm") and pr != pc:
            column_sources(alg, M, K, N, pr, pc, 1)  # raises: needs a square block
        if alg == "summa":  # the same counts in closed form (held equal by the tests)
            p = summa_resident_closed_form(M, K, N, pr, pc, precision, arch)
            p = _PlanView(p.busy, p.overhead, p.flops, p.sram, p.transfers)
        else:
            if alg in ("cannon", "meshgemm") and pr != pc:
                column_sources(alg, M, K, N, pr, pc, 1)  # raises: bands are never square
            p = gemm_plan(
                alg, M=M, K=K, N=N, pr=pr, pc=pc, precision=precision, arch=arch, weights="resident"
            )
        trs = tuple(p.transfers)
        if fold is not None and fold[1] > 1:
            rows, nseg = fold
            s = bytes_per_element(precision)
            nb = column_sources(alg, M, K, N, pr, pc, s)
            out = []
            for t in trs:
                if t.link_group == "vertical":
                    out += folded_column_multicast(t.name, nb, rows, nseg, pc, t.colour)
                else:
                    out.append(t)
            trs = tuple(x for x in out if x.link_bytes > 0)
        sram = int(p.sram_bytes)
        if fold is not None and alg == "summa":
            # SUMMA's panel width is free (van de Geijn & Watts 1997): on the narrow folded
            # grid, panels of K / pc rows would need 2 (K / P) (N / P) s bytes of B buffers,
            # so the panels are each PE's own B block, kq = ceil(K / pr) rows (same bytes
            # moved, more steps): double-buffered A and B sub-panels and the fp32 tile
            s = bytes_per_element(precision)
            mt, nt, kq = -(-M // pr), -(-N // pc), -(-K // pr)
            sram = 2 * mt * kq * s + 2 * kq * nt * s + mt * nt * ACC_BYTES
        _PLANS[key] = _GemmCost(
            float(p.busy_cycles),
            float(p.overhead_cycles),
            float(p.flops_total),
            sram,
            trs,
        )
    return _PLANS[key]


def summa_resident_closed_form(
    M: int, K: int, N: int, pr: int, pc: int, precision: str, arch
) -> _GemmCost:
    """SUMMA with resident weights (van de Geijn & Watts 1997) in closed form, the counts of
    ``gemm_plan("summa", weights="resident")``: PE ``(i, j)`` holds ``A[M_i, K_j]`` and
    ``B[K_i, N_j]`` (parts of ``ceil`` / ``floor`` size); the busiest PE does
    ``ceil(M/pr) K ceil(N/pc)`` MACs in ``ceil(M/pr) K`` vector ops. Each A panel is multicast
    along its row: the busiest link carries every panel of row 0 but the smallest,
    ``ceil(M/pr) (K - floor(K/pc)) s`` bytes (the same through the busiest RAMP); each B panel
    down its column, ``ceil(N/pc) (K - floor(K/pr)) s``; link-bytes ``M K s (pc - 1)`` and
    ``K N s (pr - 1)``; paths ``pc - 1`` and ``pr - 1`` hops. SRAM: two A and two B panel
    buffers and the fp32 accumulator tile."""
    s = bytes_per_element(precision)
    W = arch.pe.fmac_per_cycle(precision)
    ov = arch.pe.vector_op_overhead_cycles
    mt, nt, kp = -(-M // pr), -(-N // pc), -(-K // pc)
    trs = []
    if pc > 1:
        a = mt * (K - K // pc) * s
        trs.append(
            Transfer(
                "A panel multicast",
                "multicast_row",
                "horizontal",
                a,
                M * K * s * (pc - 1),
                hops=pc - 1,
                turns=0,
                colour=6,
                ramp_bytes=a,
            )
        )
    if pr > 1:
        b = nt * (K - K // pr) * s
        trs.append(
            Transfer(
                "B panel multicast",
                "multicast_col",
                "vertical",
                b,
                K * N * s * (pr - 1),
                hops=pr - 1,
                turns=0,
                colour=7,
                ramp_bytes=b,
            )
        )
    sram = 2 * mt * kp * s + 2 * kp * nt * s + mt * nt * ACC_BYTES
    return _GemmCost(mt * K * nt / W, float(mt * K * ov), 2.0 * M * K * N, int(sram), tuple(trs))
