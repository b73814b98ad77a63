"""GEMM algorithms on a block of PEs: per-PE cost, fabric transfers, traffic and numerics.

One GEMM ``C[M, N] = A[M, K] B[K, N]`` (A's rows are tokens, B is the weight) runs on a
logical ``pr x pc`` block of PEs of a 2-D mesh without wrap-around links. PE ``(i, j)`` is in
block row ``i`` (``0 .. pr-1``, north to south) and block column ``j`` (west to east). A
dimension of ``n`` split into ``q`` parts gives part ``x`` the range ``bounds[x] ..
bounds[x+1]`` of :func:`split` (the first ``n % q`` parts one longer). Element sizes: ``s`` =
storage bytes of the precision for A and B, 4 bytes (fp32) for partial sums. A wavelet is
32 bits (``shared/reference/wse_hardware.md``), so ``wavelet_hops = sum(link_bytes) / 4``.

**Weights.** ``weights="stream"``: B arrives from MemoryX at the north edge and descends
every block column that needs any of it (a multicast: each element crosses the column's
edge-ingress link and its ``pr - 1`` vertical links, ``pr`` crossings, whichever PE keeps
it; the same count as
:meth:`gpt_workload.mappings.weight_streaming.builder._Builder.weight_multicast`); each PE
keeps what its algorithm needs, in the order it needs it. ``weights="resident"``: B is
already distributed block-wise on the PEs (layer-pipelined mode) and moves only as the
algorithm moves it.

Algorithms (distributions, and the textbook volume in element x link crossings, derived
here and checked independently in ``tests/test_gemm_traffic.py``):

* ``ws`` -- weight-streaming broadcast/reduce, A stationary. PE ``(i, j)`` holds
  ``A[M_i, K_j]``; column ``j`` needs ``B[K_j, :]``; each PE forms the fp32 partial
  ``A[M_i, K_j] B[K_j, :]`` (``M_i x N``), reduce-scattered along its row so PE ``(i, j)``
  owns ``C[M_i, N_j]``. ``reduce="chain"``: a bidirectional chain; slice ``N_o`` flows from
  both ends towards its owner ``o``, one running sum per link: ``pc - 1`` crossings per
  slice, **volume M N (pc - 1)** fp32 elements. ``reduce="tree"`` (``pc`` a power of two):
  recursive halving with distance doubling; at step ``t`` (distance ``2^t``) each PE sends
  half of its remaining ``pc / 2^t`` slices to its partner: ``pc / 2`` slice-hops per PE per
  step, **volume M N pc log2(pc) / 2** (equal to the chain for ``pc = 2``, more above), in
  ``log2 pc`` store-and-forward stages instead of ``pc - 1``. B: stream ``K N pr``;
  resident (``B[K_j, N_i]`` on ``(i, j)``, multicast down the column) ``K N (pr - 1)``.
* ``summa`` -- van de Geijn & Watts 1997. ``A[M_i, K_j]`` and ``B[K_i, N_j]`` on
  ``(i, j)``; for each of the ``pc`` K-panels of A, the panel is multicast along the rows
  and the matching B rows down the columns; one fp32 accumulator per PE (panel order).
  **Volume M K (pc - 1) + K N (pr - 1)** (a 1-D multicast over ``q`` PEs crosses ``q - 1``
  links per element); stream: ``M K (pc - 1) + K N pr``.
* ``cannon`` -- Cannon 1969, on a **square** ``p x p`` block (a non-square block is refused
  with a ConfigError). ``A_ij = A[M_i, K_j]``, ``B_ij = B[K_i, N_j]``. Initial skew: row
  ``i`` of A moves left by ``i`` (block ``j -> (j - i) mod p``, routed directly on the line,
  ``|j - ((j - i) mod p)|`` hops); column ``j`` of B up by ``j``. Row ``i``'s skew costs
  ``sum_j`` of those distances ``= 2 i (p - i)`` block-hops, all rows ``(p^3 - p) / 3``. Then
  ``p - 1`` cyclic shifts by one; the mesh has no wrap-around link, so a shift moves ``p - 1``
  blocks one hop and one block ``p - 1`` hops back: ``2 (p - 1)`` block-hops per row per
  step. **Volume (M K + K N) ((p^3 - p) / 3 + 2 p (p - 1)^2) / p^2** (divisible shapes).
  Stream: the column stream drops ``B_(i+j mod p), j`` on ``(i, j)`` (pre-aligned, no B
  skew) and B still shifts: ``K N p + K N 2 (p - 1)^2 / p``, plus A's skew and shifts.
  PE ``(i, j)`` accumulates k-blocks ``(i + j + t) mod p``, ``t = 0 .. p - 1``.
* ``meshgemm`` -- the 2-hop cyclic MeshGEMM of WaferLLM (He et al., OSDI 2025, arXiv
  2502.04563): Cannon's logical ring is placed on each physical line interleaved, logical
  ``l`` at position ``2 l`` for ``l < ceil(p / 2)`` and ``2 (p - 1 - l) + 1`` after, so
  every ring step (``l -> l - 1``, and ``0 -> p - 1``) is at most 2 hops. A shift costs
  ``sum_l |pos(l) - pos(l - 1)| = 2 (p - 1)`` block-hops per line (every cut of a line is
  crossed twice by a ring, the minimum; the same as Cannon's), but no message travels more
  than 2 hops, so a step's latency does not grow with ``p``. The skew is routed between the
  interleaved positions (its exact total is computed by :func:`interleave` positions).
  Numerics are Cannon's (the same logical order; only the placement differs).
* ``row_1d`` -- 1-D row partition: tokens split over all ``P = pr pc`` PEs (row-major,
  ``A[M_p, :]`` and ``C[M_p, :]`` on PE ``p``); every PE needs all of B. Resident
  (``B[K_p, :]`` on ``p``): all-gathered by a 2-D multicast tree (along the row, then down
  and up every column: ``pc - 1 + pc (pr - 1) = P - 1`` links), **volume K N (P - 1)**;
  stream: every column gets all of B, ``K N pr pc``. No A traffic.
* ``col_1d`` -- 1-D column partition: ``B[:, N_p]`` and ``C[:, N_p]`` on PE ``p``; A starts
  feature-split (``A[:, K_p]``) and is all-gathered the same way: **volume M K (P - 1)**;
  B stream ``K N pr``, resident 0. A's panels pass by in k order (double-buffered), so a PE
  never holds all of A.

Per-PE cost: one SIMD vector op of length (the PE's output columns) per (row, k) of its
work, ``L / fmac_per_cycle`` busy cycles plus ``pe.vector_op_overhead_cycles``; combining
adds of partial sums are not charged (they ride on the arriving wavelets, as in the
weight-streaming lowering). Latency (``Transfer.hops``/``relays``) follows the synchronous
critical path: for a stepped algorithm ``hops`` is the sum over steps of the step's longest
message and ``relays`` the store-and-forward stages between steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from gpt_workload.checks import check_int
from gpt_workload.precision import bytes_per_element, check_precision
from wse_sim.errors import ConfigError
from wse_sim.program import Transfer

GEMM_ALGORITHMS = ("ws", "summa", "cannon", "meshgemm", "row_1d", "col_1d")
REDUCTIONS = ("chain", "tree")
WEIGHT_MODES = ("stream", "resident")
ACC_BYTES = 4  # fp32 partial sums
WAVELET_BYTES = 4  # a wavelet is 32 bits
# colours (static routes) of the GEMM transfers; 0-3 are the weight-streaming lowering's
COLOUR_WEIGHTS, COLOUR_PSUM, COLOUR_A, COLOUR_B = 0, 1, 4, 5


def split(n: int, q: int) -> np.ndarray:
    """Bounds of ``n`` split into ``q`` contiguous parts, the first ``n % q`` one longer.

    Returns:
        int64 array ``[q + 1]``: part ``x`` is ``bounds[x] .. bounds[x+1]``.
    """
    base, extra = divmod(n, q)
    sizes = np.full(q, base, dtype=np.int64)
    sizes[:extra] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def interleave(p: int) -> np.ndarray:
    """MeshGEMM's 2-hop ring placement: ``pos[l]`` = physical position of logical ``l``.

    Logical ``l < ceil(p / 2)`` sits at ``2 l``, the rest at ``2 (p - 1 - l) + 1``, so ring
    neighbours ``l, l + 1 (mod p)`` are at most 2 positions apart (WaferLLM, arXiv
    2502.04563, Sec. MeshGEMM).
    """
    half = (p + 1) // 2
    return np.array([2 * ll if ll < half else 2 * (p - 1 - ll) + 1 for ll in range(p)], np.int64)


@dataclass(frozen=True)
class GemmPlan:
    """One GEMM ``C[M, N] = A[M, K] B[K, N]`` on a ``pr x pc`` block, as an algorithm runs it.

    Attributes:
        algorithm, M, K, N, pr, pc, weights, reduce: the inputs of :func:`gemm_plan`.
        busy_cycles: arithmetic cycles of the busiest PE.
        overhead_cycles: vector-op setup cycles of the busiest PE.
        flops: model FLOPs of the busiest PE (``2 x`` its MACs).
        flops_min: model FLOPs of the least busy PE (equal to ``flops`` on divisible shapes).
        flops_total: FLOPs of the whole block, ``2 M K N``.
        sram_bytes: peak SRAM per PE for operands, in-flight buffers and accumulators, bytes.
        transfers: the fabric transfers (:class:`wse_sim.program.Transfer`), block-wide
            (``link_bytes`` summed over the block, ``max_link_bytes`` its busiest link).
        n_steps: algorithm steps (panels, shifts + 1, reduction stages).
    """

    algorithm: str
    M: int
    K: int
    N: int
    pr: int
    pc: int
    weights: str
    reduce: str
    busy_cycles: float
    overhead_cycles: float
    flops: float
    flops_min: float
    flops_total: float
    sram_bytes: int
    transfers: tuple[Transfer, ...]
    n_steps: int

    @property
    def link_bytes(self) -> float:
        """Bytes x links traversed by every transfer of the block."""
        return float(sum(t.link_bytes for t in self.transfers))

    @property
    def wavelet_hops(self) -> float:
        """Wavelets moved x links traversed: ``link_bytes / 4`` (32-bit wavelets)."""
        return self.link_bytes / WAVELET_BYTES

    @property
    def cycles(self) -> float:
        """Busy + overhead cycles of the busiest PE."""
        return self.busy_cycles + self.overhead_cycles


class _Lines:
    """Traffic of one transfer on the block's rows (``horizontal``) or columns (``vertical``).

    Every row (column) is a line of ``pc`` (``pr``) positions; loads are bytes per directed
    link (``fwd[line, x]``: link ``x -> x + 1``, east / south; ``back[line, x]``: ``x + 1 ->
    x``); ``ingress[line]`` is the edge-ingress link into position 0 of a column; ``recv``
    counts the bytes each PE takes in through its RAMP. Every method adds a whole batch of
    messages with NumPy (prefix sums and ``bincount`` over all lines at once); all byte
    counts are integers held in float64, exact below 2^53, so the order of the adds does not
    change a value."""

    def __init__(self, name, pattern, group, pr, pc, colour):
        self.name, self.pattern, self.group, self.colour = name, pattern, group, colour
        self.pr, self.pc = pr, pc
        self.horizontal = group == "horizontal"
        self.n_lines, self.n = (pr, pc) if self.horizontal else (pc, pr)
        self.fwd = np.zeros((self.n_lines, max(self.n - 1, 0)))  # east / south
        self.back = np.zeros((self.n_lines, max(self.n - 1, 0)))  # west / north
        self.ingress = np.zeros(self.n_lines)  # edge-ingress link into position 0 (vertical)
        self.recv_lp = np.zeros((self.n_lines, self.n))  # RAMP bytes by (line, position)
        self.hops = 0
        self.relays = 0

    @property
    def recv(self) -> np.ndarray:
        """RAMP bytes per PE, ``[pr, pc]``."""
        return self.recv_lp if self.horizontal else self.recv_lp.T

    def unicasts(self, line, src, dst, nbytes) -> None:
        """Messages ``nbytes[m]`` from ``src[m]`` to ``dst[m]`` on ``line[m]`` (direct routes;
        arrays broadcast together). A link ``x`` of a line carries every message with
        ``src <= x < dst`` (east) or ``dst <= x < src`` (west): difference arrays and a
        cumulative sum per line."""
        line, src, dst, nb = (a.ravel() for a in np.broadcast_arrays(line, src, dst, nbytes))
        live = (src != dst) & (nb != 0)
        line, src, dst, nb = line[live], src[live], dst[live], nb[live].astype(np.float64)
        if nb.size == 0:
            return
        n, L = self.n, self.n_lines
        for arr, lo, hi, m in (
            (self.fwd, src, dst, dst > src),
            (self.back, dst, src, dst < src),
        ):
            if not m.any():
                continue
            d = np.bincount(line[m] * n + lo[m], nb[m], L * n)
            d -= np.bincount(line[m] * n + hi[m], nb[m], L * n)
            arr += np.cumsum(d.reshape(L, n), axis=1)[:, : n - 1]
        self.recv_lp += np.bincount(line * n + dst, nb, L * n).reshape(L, n)
        self.hops = max(self.hops, int(np.abs(dst - src).max()))

    def multicasts(self, nbytes) -> None:
        """From every position of every line to the rest of its line (both ways):
        ``nbytes[line, src]`` bytes from ``src``. Link ``x -> x + 1`` carries the sources
        ``<= x`` (a prefix sum), ``x + 1 -> x`` those ``> x``; a PE receives every source of
        its line but its own."""
        nb = np.broadcast_to(np.asarray(nbytes, np.float64), (self.n_lines, self.n))
        if self.n == 1 or not nb.any():
            return
        pre = np.cumsum(nb, axis=1)
        self.fwd += pre[:, :-1]
        self.back += pre[:, -1:] - pre[:, :-1]
        self.recv_lp += pre[:, -1:] - nb
        src = np.nonzero(nb.any(axis=0))[0]
        self.hops = max(self.hops, int(np.maximum(src, self.n - 1 - src).max()))

    def edge_multicasts(self, nbytes) -> None:
        """``nbytes[line]`` entering each line (a column) at the north edge, descending all
        of it (edge-ingress link, ``n - 1`` links, every PE's RAMP)."""
        nb = np.broadcast_to(np.asarray(nbytes, np.float64), (self.n_lines,))
        self.ingress += nb
        self.fwd += nb[:, None]
        self.recv_lp += nb[:, None]
        self.hops = max(self.hops, self.n)

    def unicast(self, line: int, src: int, dst: int, nbytes: float) -> None:
        """One message: ``nbytes`` from ``src`` to ``dst`` on ``line`` (direct route)."""
        self.unicasts(np.int64(line), np.int64(src), np.int64(dst), np.float64(nbytes))

    def multicast(self, line: int, src: int, nbytes: float) -> None:
        """``nbytes`` from ``src`` to every other position of ``line`` (both ways)."""
        if self.n == 1 or nbytes == 0:
            return
        nb = np.zeros((self.n_lines, self.n))
        nb[line, src] = nbytes
        self.multicasts(nb)

    def edge_multicast(self, line: int, nbytes: float) -> None:
        """``nbytes`` entering ``line`` (a column) at the north edge, descending all of it."""
        nb = np.zeros(self.n_lines)
        nb[line] = nbytes
        self.edge_multicasts(nb)

    def transfer(self, hops: int | None = None, relays: int | None = None) -> Transfer:
        """The :class:`Transfer`: link-bytes summed, the busiest directed link, the busiest
        RAMP."""
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
            ramp_bytes=float(self.recv_lp.max()),
        )


def _check(algorithm, M, K, N, pr, pc, weights, reduce) -> None:
    if algorithm not in GEMM_ALGORITHMS:
        raise ConfigError(f"gemm algorithm={algorithm!r} is unknown; allowed: {GEMM_ALGORITHMS}")
    for name, v in (("M", M), ("K", K), ("N", N), ("pr", pr), ("pc", pc)):
        check_int(f"gemm {name}", v, 1)
    if weights not in WEIGHT_MODES:
        raise ConfigError(f"gemm weights={weights!r} must be one of {', '.join(WEIGHT_MODES)}")
    if reduce not in REDUCTIONS:
        raise ConfigError(f"gemm reduce={reduce!r} must be one of {', '.join(REDUCTIONS)}")
    if algorithm in ("cannon", "meshgemm") and pr != pc:
        raise ConfigError(f"gemm {algorithm} needs a square block, got {pr} x {pc}")
    if algorithm == "ws" and reduce == "tree" and pc & (pc - 1):
        raise ConfigError(f"gemm ws reduce=tree needs pc a power of two, got pc={pc}")


def gemm_plan(
    algorithm: str,
    *,
    M: int,
    K: int,
    N: int,
    pr: int,
    pc: int,
    precision: str,
    arch,
    weights: str = "stream",
    reduce: str = "chain",
) -> GemmPlan:
    """Cost, transfers and traffic of ``C[M, N] = A[M, K] B[K, N]`` on a ``pr x pc`` block.

    Vectorised over PEs and lines (NumPy; about O(pr pc) work, O(p^2) for Cannon and
    MeshGEMM, whose ``p - 1`` shift steps are summed per message route in closed form), so
    blocks of ~1000 x 1000 PEs plan in well under a second. ``tests/_gemm_reference.py``
    keeps the original per-PE loops and ``tests/test_gemm_traffic.py`` holds the two equal.

    Args:
        algorithm: one of :data:`GEMM_ALGORITHMS` (see the module docstring).
        M, K, N: GEMM shape (M = tokens).
        pr, pc: block rows and columns (PEs).
        precision: ``fp32``, ``fp16`` or ``bf16`` (storage of A and B).
        arch: :class:`wse_sim.arch.ArchConfig` (FMAC width, vector-op overhead).
        weights: ``stream`` (B from MemoryX down the columns) or ``resident``.
        reduce: ``chain`` or ``tree``: the partial-sum reduction of ``ws``.

    Raises:
        ConfigError: unknown algorithm or mode, a dimension smaller than 1, a non-square
            block for cannon/meshgemm, a tree reduction over a non-power-of-two.
    """
    check_precision(precision)
    _check(algorithm, M, K, N, pr, pc, weights, reduce)
    s = bytes_per_element(precision)
    W = arch.pe.fmac_per_cycle(precision)
    ov = arch.pe.vector_op_overhead_cycles
    return _PLANNERS[algorithm](M, K, N, pr, pc, s, W, ov, weights, reduce)


def _sizes(b: np.ndarray) -> np.ndarray:
    """Part sizes of :func:`split` bounds."""
    return np.diff(b)


def _mk(alg, M, K, N, pr, pc, weights, reduce, work, W, ov, sram, transfers, steps):
    """GemmPlan from per-PE work ``(rows, k, cols)`` (arrays broadcast to one entry per PE
    in row-major order; one SIMD op of length ``cols`` per (row, k)). The busiest PE is the
    first with the most MACs."""
    r, k, c = (a.ravel() for a in np.broadcast_arrays(*work))
    macs = r * k * c
    hi = int(np.argmax(macs))
    r, k, c = r[hi], k[hi], c[hi]
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
        flops_min=2.0 * macs.min(),
        flops_total=2.0 * M * K * N,
        sram_bytes=int(sram),
        transfers=tuple(t for t in transfers if t.link_bytes > 0),
        n_steps=int(steps),
    )


def _b_stream(pr, pc, s, need_per_col) -> _Lines:
    """Weights from MemoryX: column ``j`` carries ``need_per_col[j]`` elements of B down."""
    t = _Lines("weight multicast", "multicast_2d", "vertical", pr, pc, COLOUR_WEIGHTS)
    t.edge_multicasts(np.asarray(need_per_col) * s)
    return t


def _ws_reduce_pattern(nb: np.ndarray, tree: bool):
    """Per unit of row height, the reduce-scatter's ``(fwd, back, recv)`` loads on one row
    (fp32 slices of ``nb[o] * 4`` bytes per owner ``o``).

    Chain: slice ``o`` flows east over links ``x < o`` and west over ``x >= o``, so
    ``fwd[x] = sum_{o > x}``, ``back[x] = sum_{o <= x}``; PE ``x`` receives the slices of
    owners ``>= x`` from the west (if ``x >= 1``) and ``<= x`` from the east (if
    ``x <= pc - 2``). Tree (recursive halving, distance doubling): at distance ``d`` every
    holder ``x`` of owner ``o``'s slice (``x = o mod d``) whose bit ``d`` differs from
    ``o``'s sends it to ``x ^ d``."""
    pc = nb.size
    sl = nb.astype(np.float64) * ACC_BYTES
    if not tree:
        pre = np.cumsum(sl)
        fwd = pre[-1] - pre[:-1]
        back = pre[:-1].copy()
        x = np.arange(pc)
        suffix = pre[-1] - np.concatenate([[0.0], pre[:-1]])  # sum_{o >= x}
        recv = np.where(x >= 1, suffix, 0.0) + np.where(x <= pc - 2, pre, 0.0)
        return fwd, back, recv
    lines = _Lines("tree", "tree", "horizontal", 1, pc, 0)
    o = np.arange(pc)
    d = 1
    while d < pc:
        # holders x = o (mod d) with bit d opposite to o's: x = (o mod d) + d * m, m odd/even
        m = np.arange(pc // d)
        x = (o[:, None] % d) + d * m[None, :]
        keep = (x & d) != (o[:, None] & d)
        oo = np.broadcast_to(o[:, None], x.shape)[keep]
        xs = x[keep]
        lines.unicasts(0, xs, xs ^ d, sl[oo])
        d *= 2
    return lines.fwd[0], lines.back[0], lines.recv_lp[0]


def _plan_ws(M, K, N, pr, pc, s, W, ov, weights, reduce):
    mb, kb, nb = split(M, pr), split(K, pc), split(N, pc)
    rows, ks = _sizes(mb), _sizes(kb)
    if weights == "stream":
        b = _b_stream(pr, pc, s, ks * N)
    else:
        b = _Lines("weight multicast", "multicast_col", "vertical", pr, pc, COLOUR_B)
        b.multicasts(np.outer(ks, _sizes(split(N, pr))) * s)  # [column j, source row i]
    pattern = "reduce_scatter_row" if reduce == "chain" else "reduce_scatter_tree"
    ps = _Lines("partial-sum reduce-scatter", pattern, "horizontal", pr, pc, COLOUR_PSUM)
    fwd, back, recv = _ws_reduce_pattern(_sizes(nb), reduce == "tree")
    r = rows.astype(np.float64)[:, None]
    ps.fwd += r * fwd[None, :]
    ps.back += r * back[None, :]
    ps.recv_lp += r * recv[None, :]
    stages = pc - 1 if reduce == "chain" else int(math.log2(pc))
    psum = ps.transfer(hops=pc - 1, relays=max(stages - 1, 0))
    work = (rows[:, None], ks[None, :], np.int64(N))
    sram = (mb[1] * kb[1]) * s + mb[1] * N * ACC_BYTES
    return _mk(
        "ws", M, K, N, pr, pc, weights, reduce, work, W, ov, sram, (b.transfer(), psum), stages
    )


def _plan_summa(M, K, N, pr, pc, s, W, ov, weights, reduce):
    mb, ka, nb, kr = split(M, pr), split(K, pc), split(N, pc), split(K, pr)
    a = _Lines("A panel multicast", "multicast_row", "horizontal", pr, pc, COLOUR_A)
    a.multicasts(np.outer(_sizes(mb), _sizes(ka)) * s)  # [row i, source column q]
    if weights == "stream":
        b = _b_stream(pr, pc, s, K * _sizes(nb))
    else:
        b = _Lines("B panel multicast", "multicast_col", "vertical", pr, pc, COLOUR_B)
        b.multicasts(np.outer(_sizes(nb), _sizes(kr)) * s)  # [column j, source row i]
    work = (_sizes(mb)[:, None], np.int64(K), _sizes(nb)[None, :])
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
    """Cannon (``pos`` = identity) and MeshGEMM (``pos`` = :func:`interleave`).

    Logical PE ``(i, l)`` sits at physical ``(pos[i], pos[l])``. Before shift ``t`` (``1 ..
    p - 1``) it holds ``A_{i,k}`` (and ``B_{k,i}`` on the transposed line) with ``k = (i + l
    + t - 1) mod p`` and sends it to logical ``l - 1``: the route ``pos[l] -> pos[l - 1]`` is
    the same every step, so the ``p - 1`` steps add ``sum_t A_{i,k}`` = (row ``i``'s blocks)
    minus the one block never sent from ``l``, ``k = (i + l - 1) mod p``: one batch of
    ``p^2`` messages instead of ``p^3``."""
    p = pr
    pos = interleave(p) if alg == "meshgemm" else np.arange(p)
    mb, kb, nb = split(M, p), split(K, p), split(N, p)
    msz, ksz, nsz = _sizes(mb), _sizes(kb), _sizes(nb)
    a_sk = _Lines("A skew", "skew_row", "horizontal", p, p, COLOUR_A)
    a_sh = _Lines("A cyclic shifts", "shift_row", "horizontal", p, p, COLOUR_A)
    b_sk = _Lines("B skew", "skew_col", "vertical", p, p, COLOUR_B)
    b_sh = _Lines("B cyclic shifts", "shift_col", "vertical", p, p, COLOUR_B)
    ablk = np.outer(msz, ksz) * s  # A_{i,k}, bytes
    bblk = np.outer(ksz, nsz) * s  # B_{k,j}, bytes
    i = np.arange(p)[:, None]
    ll = np.arange(p)[None, :]
    # skew: A_{i,l} -> logical column (l - i) mod p; B_{l,j=i} -> row (l - i) mod p
    a_sk.unicasts(pos[i], pos[ll], pos[(ll - i) % p], ablk)
    if weights == "resident":
        b_sk.unicasts(pos[i], pos[ll], pos[(ll - i) % p], bblk.T)
    if p > 1:
        never = (i + ll - 1) % p
        a_sent = ablk.sum(axis=1)[:, None] - np.take_along_axis(ablk, never, axis=1)
        b_sent = bblk.sum(axis=0)[:, None] - bblk.T[np.arange(p)[:, None], never]
        a_sh.unicasts(pos[i], pos[ll], pos[(ll - 1) % p], a_sent)
        b_sh.unicasts(pos[i], pos[ll], pos[(ll - 1) % p], b_sent)
        max_shift = int(np.abs(pos - pos[(np.arange(p) - 1) % p]).max())
    else:
        max_shift = 0
    out = [a_sk.transfer(), b_sk.transfer()]
    sh_hops = (p - 1) * max_shift
    rl = max(p - 2, 0)
    out += [a_sh.transfer(hops=sh_hops, relays=rl), b_sh.transfer(hops=sh_hops, relays=rl)]
    if weights == "stream":
        out.append(_b_stream(p, p, s, K * nsz).transfer())
    work = (msz[:, None], np.int64(K), nsz[None, :])
    sram = 2 * (mb[1] * kb[1] + kb[1] * nb[1]) * s + mb[1] * nb[1] * ACC_BYTES
    return _mk(alg, M, K, N, p, p, weights, reduce, work, W, ov, sram, out, p)


def _multicast_2d_trees(h: _Lines, v: _Lines, nbytes: np.ndarray) -> None:
    """From every PE ``(i, j)``, ``nbytes[i, j]`` to every PE of the block: along row ``i``,
    then down and up every column from row ``i`` (each column carries the sum of row ``i``'s
    sources)."""
    h.multicasts(nbytes)
    v.multicasts(np.broadcast_to(nbytes.sum(axis=1)[None, :], (h.pc, h.pr)))


def _plan_1d(alg, M, K, N, pr, pc, s, W, ov, weights, reduce):
    P = pr * pc
    colour = COLOUR_B if alg == "row_1d" else COLOUR_A
    what = "B" if alg == "row_1d" else "A"
    h = _Lines(f"{what} all-gather (rows)", "allgather_row", "horizontal", pr, pc, colour)
    v = _Lines(f"{what} all-gather (columns)", "allgather_col", "vertical", pr, pc, colour)
    out = []
    if alg == "row_1d":
        mp = split(M, P)
        work = (_sizes(mp), np.int64(K), np.int64(N))
        if weights == "stream":
            out.append(_b_stream(pr, pc, s, np.full(pc, K * N)).transfer())
        else:
            kp = split(K, P)
            _multicast_2d_trees(h, v, (_sizes(kp) * N * s).reshape(pr, pc))
        sram = mp[1] * K * s + 2 * N * s + mp[1] * N * ACC_BYTES
    else:
        npp, kp = split(N, P), split(K, P)
        work = (np.int64(M), np.int64(K), _sizes(npp))
        _multicast_2d_trees(h, v, (M * _sizes(kp) * s).reshape(pr, pc))
        if weights == "stream":
            need = K * _sizes(npp).reshape(pr, pc).sum(axis=0)
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


# ------------------------------------------------------------------------------ numerics
@numba.njit(parallel=True, cache=True)
def _ordered_blocks_kernel(A, B, rb, cb, kb, order, C):  # pragma: no cover - jit
    """``C[r, c]`` of output block ``(i, j)``: one fp32 accumulator from 0, k-blocks in
    ``order[i, j, :]``, ``k`` ascending inside a block (product rounded, then the sum).
    One accumulator buffer per row, reused across blocks, and a contiguous view of each B
    row slice, so the inner loop vectorises."""
    pc = cb.shape[0] - 1
    wmax = 0
    for j in range(pc):
        wmax = max(wmax, cb[j + 1] - cb[j])
    for r in numba.prange(A.shape[0]):
        i = 0
        while rb[i + 1] <= r:
            i += 1
        acc = np.empty(wmax, np.float32)
        for j in range(pc):
            c0 = cb[j]
            w = cb[j + 1] - c0
            acc[:w] = 0
            for t in range(order.shape[2]):
                q = order[i, j, t]
                for k in range(kb[q], kb[q + 1]):
                    a = A[r, k]
                    Bk = B[k, c0 : c0 + w]
                    for c in range(w):
                        acc[c] += a * Bk[c]
            C[r, c0 : c0 + w] = acc[:w]


def gemm_order(algorithm: str, pr: int, pc: int) -> np.ndarray:
    """k-block order per output block: int64 ``[pr, pc, n_k]`` (k-blocks of K split into
    ``n_k`` parts). ``summa``/``row_1d``/``col_1d``: ``0 .. n_k - 1`` with ``n_k = 1`` (one
    running sum, k ascending); ``cannon``/``meshgemm``: ``(i + j + t) mod pc``.

    Raises:
        ConfigError: ``ws`` (not a single-accumulator order) or an unknown algorithm.
    """
    if algorithm in ("cannon", "meshgemm"):
        i, j, t = np.meshgrid(np.arange(pr), np.arange(pc), np.arange(pc), indexing="ij")
        return np.ascontiguousarray((i + j + t) % pc, dtype=np.int64)
    if algorithm in ("summa", "row_1d", "col_1d"):
        return np.zeros((pr, pc, 1), np.int64)
    raise ConfigError(f"gemm algorithm={algorithm!r} has no single-accumulator order")


def gemm_numerics(
    algorithm: str, A: np.ndarray, B: np.ndarray, pr: int, pc: int, reduce: str = "chain"
) -> np.ndarray:
    """``C = A @ B`` in float32, accumulated in ``algorithm``'s order on a ``pr x pc`` block.

    ``ws``: per block column partials (one BLAS call per PE and block, as
    :func:`gpt_workload.blas_gemm.chained_gemm`), then the chain or tree reduction, each
    partial rounded to fp32 (the chain is :func:`gpt_workload.kernels.gemm_ws`'s order
    exactly). ``cannon``/``meshgemm``: PE
    ``(i, j)`` (rows ``M_i``, columns ``N_j``, K split into ``pc`` blocks) sums k-blocks
    starting at ``(i + j) mod pc``. ``summa``/``row_1d``/``col_1d``: one accumulator, k
    ascending from 0 (SUMMA's panels arrive in k order); for these, every product is rounded
    to fp32, then added (no FMA).

    Args:
        algorithm: one of :data:`GEMM_ALGORITHMS`.
        A: float32 ``[M, K]``; B: float32 ``[K, N]``.
        pr, pc: block shape (Cannon and MeshGEMM accept ``pr != pc`` here: rows beyond
            ``pc`` continue the ``(i + j) mod pc`` rotation).
        reduce: ``chain`` or ``tree`` (``ws`` only; tree needs ``pc`` a power of two).

    Returns:
        float32 ``[M, N]``.

    Raises:
        ConfigError: bad algorithm, shapes, dtypes or reduction.
    """
    if algorithm not in GEMM_ALGORITHMS:
        raise ConfigError(f"gemm algorithm={algorithm!r} is unknown; allowed: {GEMM_ALGORITHMS}")
    A = np.asarray(A)
    B = np.asarray(B)
    if A.dtype != np.float32 or B.dtype != np.float32 or A.ndim != 2 or B.ndim != 2:
        raise ConfigError("gemm_numerics needs float32 A [M, K] and B [K, N]")
    if A.shape[1] != B.shape[0]:
        raise ConfigError(f"gemm_numerics: A {A.shape} and B {B.shape} do not chain")
    if reduce not in REDUCTIONS:
        raise ConfigError(f"gemm reduce={reduce!r} must be one of {', '.join(REDUCTIONS)}")
    M, K = A.shape
    N = B.shape[1]
    if min(pr, pc) < 1 or pr > max(M, 1) or pc > K or pc > N:
        raise ConfigError(f"gemm_numerics: block {pr} x {pc} does not fit A {A.shape} B {B.shape}")
    A = np.ascontiguousarray(A)
    B = np.ascontiguousarray(B)
    C = np.empty((M, N), np.float32)
    if algorithm == "ws":
        if reduce == "tree" and pc & (pc - 1):
            raise ConfigError(f"gemm ws reduce=tree needs pc a power of two, got pc={pc}")
        from gpt_workload.blas_gemm import chained_gemm

        kb = split(K, pc)
        parts = [np.ascontiguousarray(A[:, kb[j] : kb[j + 1]]) for j in range(pc)]
        nt = -(-N // pc)  # PE j' of the chain owns output columns [j' nt, (j' + 1) nt)
        ranges = [(lo, min(lo + nt, N)) for lo in range(0, N, nt)]

        def emit(r0: int, r1: int, c0: int, c1: int, acc: np.ndarray) -> None:
            C[r0:r1, c0:c1] = acc

        chained_gemm(parts, B, kb, emit, reduce=reduce, col_ranges=ranges)
        return C
    order = gemm_order(algorithm, pr, pc)
    kb = split(K, order.shape[2])
    _ordered_blocks_kernel(A, B, split(M, pr), split(N, pc), kb, order, C)
    return C
