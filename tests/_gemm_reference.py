"""Reference GEMM planner: the original per-PE / per-line Python loops of
:mod:`gpt_workload.mappings.gemm` (before vectorisation), kept to check that the NumPy planners
give exactly the same :class:`GemmPlan` (``tests/test_gemm_traffic.py``). O(p^3) for Cannon:
use on small blocks only."""

from __future__ import annotations

import math

import numpy as np

from gpt_workload.mappings.gemm import (
    ACC_BYTES,
    COLOUR_A,
    COLOUR_B,
    COLOUR_PSUM,
    COLOUR_WEIGHTS,
    GemmPlan,
    _check,
    interleave,
    split,
)
from gpt_workload.precision import bytes_per_element, check_precision
from wse_sim.program import Transfer


def reference_plan(
    algorithm, *, M, K, N, pr, pc, precision, arch, weights="stream", reduce="chain"
) -> GemmPlan:
    """``gemm_plan`` computed by the original loops (same arguments, same result)."""
    check_precision(precision)
    _check(algorithm, M, K, N, pr, pc, weights, reduce)
    s = bytes_per_element(precision)
    W = arch.pe.fmac_per_cycle(precision)
    ov = arch.pe.vector_op_overhead_cycles
    return _PLANNERS[algorithm](M, K, N, pr, pc, s, W, ov, weights, reduce)


class _Lines:
    """Traffic of one transfer on the block's rows (``horizontal``) or columns (``vertical``).

    Every row (column) is a line of ``pc`` (``pr``) positions; loads are bytes per directed
    link; ``recv`` counts the bytes each PE takes in through its RAMP."""

    def __init__(self, name, pattern, group, pr, pc, colour):
        self.name, self.pattern, self.group, self.colour = name, pattern, group, colour
        self.pr, self.pc = pr, pc
        self.horizontal = group == "horizontal"
        n_lines, n = (pr, pc) if self.horizontal else (pc, pr)
        self.fwd = np.zeros((n_lines, max(n - 1, 0)))  # east / south
        self.back = np.zeros((n_lines, max(n - 1, 0)))  # west / north
        self.ingress = np.zeros(n_lines)  # edge-ingress link into position 0 (vertical)
        self.recv = np.zeros((pr, pc))
        self.hops = 0
        self.relays = 0

    def _pe(self, line, pos):
        return (line, pos) if self.horizontal else (pos, line)

    def unicast(self, line: int, src: int, dst: int, nbytes: float) -> None:
        """``nbytes`` from ``src`` to ``dst`` on ``line`` (direct route)."""
        if src == dst or nbytes == 0:
            return
        if dst > src:
            self.fwd[line, src:dst] += nbytes
        else:
            self.back[line, dst:src] += nbytes
        self.recv[self._pe(line, dst)] += nbytes
        self.hops = max(self.hops, abs(dst - src))

    def multicast(self, line: int, src: int, nbytes: float) -> None:
        """``nbytes`` from ``src`` to every other position of ``line`` (both ways)."""
        n = self.fwd.shape[1] + 1
        if n == 1 or nbytes == 0:
            return
        self.fwd[line, src:] += nbytes
        self.back[line, :src] += nbytes
        for pos in range(n):
            if pos != src:
                self.recv[self._pe(line, pos)] += nbytes
        self.hops = max(self.hops, src, n - 1 - src)

    def edge_multicast(self, line: int, nbytes: float) -> None:
        """``nbytes`` entering ``line`` (a column) at the north edge, descending all of it."""
        self.ingress[line] += nbytes
        self.fwd[line, :] += nbytes
        for pos in range(self.fwd.shape[1] + 1):
            self.recv[self._pe(line, pos)] += nbytes
        self.hops = max(self.hops, self.fwd.shape[1] + 1)

    def transfer(self, hops: int | None = None, relays: int | None = None) -> Transfer:
        total = float(self.fwd.sum() + self.back.sum() + self.ingress.sum())
        busiest = max(
            float(self.fwd.max(initial=0.0)),
            float(self.back.max(initial=0.0)),
            float(self.ingress.max(initial=0.0)),
        )
        return Transfer(
            self.name,
            self.pattern,
            self.group,
            busiest,
            total,
            hops=int(self.hops if hops is None else hops),
            turns=0,
            colour=self.colour,
            relays=int(self.relays if relays is None else relays),
            ramp_bytes=float(self.recv.max()),
        )


def _mk(alg, M, K, N, pr, pc, weights, reduce, work, W, ov, sram, transfers, steps):
    """GemmPlan from per-PE work ``[(rows, k, cols), ...]`` (one SIMD op of length ``cols``
    per (row, k))."""
    macs = [r * k * c for r, k, c in work]
    hi = int(np.argmax(macs))
    r, k, c = work[hi]
    return GemmPlan(
        alg,
        M,
        K,
        N,
        pr,
        pc,
        weights,
        reduce,
        busy_cycles=r * k * c / W,
        overhead_cycles=float(r * k * ov),
        flops=2.0 * macs[hi],
        flops_min=2.0 * min(macs),
        flops_total=2.0 * M * K * N,
        sram_bytes=int(sram),
        transfers=tuple(t for t in transfers if t.link_bytes > 0),
        n_steps=int(steps),
    )


def _b_stream(pr, pc, s, need_per_col) -> _Lines:
    """Weights from MemoryX: column ``j`` carries ``need_per_col[j]`` elements of B down."""
    t = _Lines("weight multicast", "multicast_2d", "vertical", pr, pc, COLOUR_WEIGHTS)
    for j in range(pc):
        t.edge_multicast(j, need_per_col[j] * s)
    return t


def _plan_ws(M, K, N, pr, pc, s, W, ov, weights, reduce):
    mb, kb, nb = split(M, pr), split(K, pc), split(N, pc)
    if weights == "stream":
        b = _b_stream(pr, pc, s, [(kb[j + 1] - kb[j]) * N for j in range(pc)])
    else:
        b = _Lines("weight multicast", "multicast_col", "vertical", pr, pc, COLOUR_B)
        nbr = split(N, pr)
        for j in range(pc):
            for i in range(pr):
                b.multicast(j, i, (kb[j + 1] - kb[j]) * (nbr[i + 1] - nbr[i]) * s)
    pattern = "reduce_scatter_row" if reduce == "chain" else "reduce_scatter_tree"
    ps = _Lines("partial-sum reduce-scatter", pattern, "horizontal", pr, pc, COLOUR_PSUM)
    for i in range(pr):
        rows = mb[i + 1] - mb[i]
        for o in range(pc):
            sl = rows * (nb[o + 1] - nb[o]) * ACC_BYTES
            if reduce == "chain":
                ps.fwd[i, :o] += sl
                ps.back[i, o:] += sl
                for x in range(pc):
                    if x != o and (1 <= x <= o or o <= x <= pc - 2):
                        ps.recv[i, x] += sl
                if 1 <= o:
                    ps.recv[i, o] += sl
                if o <= pc - 2:
                    ps.recv[i, o] += sl
            else:
                # recursive halving, distance doubling: the slice of owner o is held, after
                # step t, by the PEs agreeing with o on bits 0..t; at step t each holder x
                # with bit t != o's sends it to x ^ 2^t
                d = 1
                while d < pc:
                    for x in range(pc):
                        if (x & (d - 1)) == (o & (d - 1)) and (x & d) != (o & d):
                            ps.unicast(i, x, x ^ d, sl)
                    d *= 2
    stages = pc - 1 if reduce == "chain" else int(math.log2(pc))
    psum = ps.transfer(hops=pc - 1, relays=max(stages - 1, 0))
    work = [(mb[i + 1] - mb[i], kb[j + 1] - kb[j], N) for i in range(pr) for j in range(pc)]
    sram = (mb[1] * kb[1]) * s + mb[1] * N * ACC_BYTES
    return _mk(
        "ws", M, K, N, pr, pc, weights, reduce, work, W, ov, sram, (b.transfer(), psum), stages
    )


def _plan_summa(M, K, N, pr, pc, s, W, ov, weights, reduce):
    mb, ka, nb, kr = split(M, pr), split(K, pc), split(N, pc), split(K, pr)
    a = _Lines("A panel multicast", "multicast_row", "horizontal", pr, pc, COLOUR_A)
    for i in range(pr):
        for q in range(pc):
            a.multicast(i, q, (mb[i + 1] - mb[i]) * (ka[q + 1] - ka[q]) * s)
    if weights == "stream":
        b = _b_stream(pr, pc, s, [K * (nb[j + 1] - nb[j]) for j in range(pc)])
    else:
        b = _Lines("B panel multicast", "multicast_col", "vertical", pr, pc, COLOUR_B)
        for j in range(pc):
            for i in range(pr):
                b.multicast(j, i, (kr[i + 1] - kr[i]) * (nb[j + 1] - nb[j]) * s)
    work = [(mb[i + 1] - mb[i], K, nb[j + 1] - nb[j]) for i in range(pr) for j in range(pc)]
    kp = int(ka[1])
    sram = 2 * mb[1] * kp * s + 2 * kp * nb[1] * s + mb[1] * nb[1] * ACC_BYTES
    return _mk(
        "summa",
        M,
        K,
        N,
        pr,
        pc,
        weights,
        reduce,
        work,
        W,
        ov,
        sram,
        (a.transfer(), b.transfer()),
        pc,
    )


def _plan_cyclic(alg, M, K, N, pr, pc, s, W, ov, weights, reduce):
    """Cannon (``pos`` = identity) and MeshGEMM (``pos`` = :func:`interleave`)."""
    p = pr
    pos = interleave(p) if alg == "meshgemm" else np.arange(p)
    mb, kb, nb = split(M, p), split(K, p), split(N, p)
    a_sk = _Lines("A skew", "skew_row", "horizontal", p, p, COLOUR_A)
    a_sh = _Lines("A cyclic shifts", "shift_row", "horizontal", p, p, COLOUR_A)
    b_sk = _Lines("B skew", "skew_col", "vertical", p, p, COLOUR_B)
    b_sh = _Lines("B cyclic shifts", "shift_col", "vertical", p, p, COLOUR_B)
    ablk = lambda i, k: (mb[i + 1] - mb[i]) * (kb[k + 1] - kb[k]) * s  # noqa: E731
    bblk = lambda k, j: (kb[k + 1] - kb[k]) * (nb[j + 1] - nb[j]) * s  # noqa: E731
    # logical PE (i, l) sits at physical (pos[i], pos[l]); lines are physical rows/columns
    for i in range(p):
        for l_ in range(p):
            # skew: A_{i,l} -> logical column (l - i) mod p; B_{l,j=i} -> row (l - i) mod p
            a_sk.unicast(pos[i], pos[l_], pos[(l_ - i) % p], ablk(i, l_))
            if weights == "resident":
                b_sk.unicast(pos[i], pos[l_], pos[(l_ - i) % p], bblk(l_, i))
    max_shift = 0
    for t in range(1, p):
        for i in range(p):
            for l_ in range(p):
                # before step t, logical (i, l) holds A_{i,k} with k = (i + l + t - 1) mod p
                k = (i + l_ + t - 1) % p
                a_sh.unicast(pos[i], pos[l_], pos[(l_ - 1) % p], ablk(i, k))
                b_sh.unicast(pos[i], pos[l_], pos[(l_ - 1) % p], bblk(k, i))
                max_shift = max(max_shift, abs(int(pos[l_]) - int(pos[(l_ - 1) % p])))
    out = [a_sk.transfer(), b_sk.transfer()]
    sh_hops = (p - 1) * max_shift
    rl = max(p - 2, 0)
    out += [a_sh.transfer(hops=sh_hops, relays=rl), b_sh.transfer(hops=sh_hops, relays=rl)]
    if weights == "stream":
        out.append(_b_stream(p, p, s, [K * (nb[j + 1] - nb[j]) for j in range(p)]).transfer())
    work = [(mb[i + 1] - mb[i], K, nb[j + 1] - nb[j]) for i in range(p) for j in range(p)]
    sram = 2 * (mb[1] * kb[1] + kb[1] * nb[1]) * s + mb[1] * nb[1] * ACC_BYTES
    return _mk(alg, M, K, N, p, p, weights, reduce, work, W, ov, sram, out, p)


def _multicast_2d_tree(h: _Lines, v: _Lines, i: int, j: int, nbytes: float) -> None:
    """From PE ``(i, j)`` to every PE of the block: along row ``i``, then every column."""
    h.multicast(i, j, nbytes)
    for c in range(h.pc):
        v.multicast(c, i, nbytes)


def _plan_1d(alg, M, K, N, pr, pc, s, W, ov, weights, reduce):
    P = pr * pc
    colour = COLOUR_B if alg == "row_1d" else COLOUR_A
    what = "B" if alg == "row_1d" else "A"
    h = _Lines(f"{what} all-gather (rows)", "allgather_row", "horizontal", pr, pc, colour)
    v = _Lines(f"{what} all-gather (columns)", "allgather_col", "vertical", pr, pc, colour)
    out = []
    if alg == "row_1d":
        mp = split(M, P)
        work = [(mp[x + 1] - mp[x], K, N) for x in range(P)]
        if weights == "stream":
            out.append(_b_stream(pr, pc, s, [K * N] * pc).transfer())
        else:
            kp = split(K, P)
            for x in range(P):
                _multicast_2d_tree(h, v, x // pc, x % pc, (kp[x + 1] - kp[x]) * N * s)
        sram = mp[1] * K * s + 2 * N * s + mp[1] * N * ACC_BYTES
    else:
        npp, kp = split(N, P), split(K, P)
        work = [(M, K, npp[x + 1] - npp[x]) for x in range(P)]
        for x in range(P):
            _multicast_2d_tree(h, v, x // pc, x % pc, M * (kp[x + 1] - kp[x]) * s)
        if weights == "stream":
            need = [K * sum(npp[x + 1] - npp[x] for x in range(j, P, pc)) for j in range(pc)]
            out.append(_b_stream(pr, pc, s, need).transfer())
        # A panels (all-gathered in k order) and B rows pass by: double-buffered panels
        kb = int(kp[1])
        b_held = 2 * kb * npp[1] * s if weights == "stream" else K * npp[1] * s
        sram = 2 * M * kb * s + b_held + M * npp[1] * ACC_BYTES
    out += [h.transfer(), v.transfer(hops=pr - 1 + pc - 1)]
    return _mk(alg, M, K, N, pr, pc, weights, reduce, work, W, ov, sram, out, 1)


_PLANNERS = {
    "ws": _plan_ws,
    "summa": _plan_summa,
    "cannon": lambda *a: _plan_cyclic("cannon", *a),
    "meshgemm": lambda *a: _plan_cyclic("meshgemm", *a),
    "row_1d": lambda *a: _plan_1d("row_1d", *a),
    "col_1d": lambda *a: _plan_1d("col_1d", *a),
}
