"""Collectives along the rows or columns of a kernel's PEs: the matrix-vector (decode) transfers.

A decode step's matrix-vector products broadcast a vector slice along one axis of a PE block
and reduce partial sums along the other (WaferLLM's MeshGEMV, He et al., OSDI 2025; the
plain pipelined line all-reduce of the Cerebras SDK demo as the baseline). Each is a
collective on every *line* of the kernel's active PEs: a line is the active PEs of one grid
row (``*_row`` patterns) or one grid column (``*_col``), in order; its first PE (west or
north end) is the root of a broadcast or a tree, its last PE that of a chain.

Patterns (``Transfer.pattern``):

* ``bcast_row`` / ``bcast_col``: the root multicasts ``n`` wavelets to the rest of its line
  (one multicast route; no PE forwards).
* ``allreduce_tree_row`` / ``_col``: a binary-tree reduce to the root (stage ``s``: position
  ``i`` with ``i mod 2^(s+1) = 0`` receives the partial of ``i + 2^s`` and adds it; this is
  :func:`gpt_workload.generation.split.combine_order` ``"tree"``), then the root multicasts
  the sum back along the line.
* ``allreduce_chain_row`` / ``_col``: a chain reduce (position 0 sends to 1, which adds and
  forwards, cut-through, up to the far end, which is the root of a chain: combine order
  ``"chain"``), then the multicast back from the far end.
* ``allreduce_ktree{K}_row`` / ``_col`` (``K`` = 1 .. :data:`KTREE_MAX_K`): WaferLLM's K-tree
  all-reduce (He et al., OSDI 2025, section 6; its ``two_tree_allreduce`` for ``K = 2``):
  ``K`` phases; phase 1 cuts the line into groups of about ``p^(1/K)`` consecutive PEs and
  reduces each group to its *middle* PE by two chains (the PEs before the middle pass their
  running sum towards it, the PEs after it likewise from the far end; every PE on a chain
  adds its partial and forwards, a relay stage); each later phase does the same over the
  previous phase's roots; the last phase's root multicasts the sum back in both directions
  (:func:`ktree_messages`, :func:`ktree_root`). Critical path about ``K p^(1/K) / 2`` relay
  stages.

Cost terms (:func:`line_transfer`), with ``p`` PEs per line, ``n`` wavelets per PE, ``S =
ceil(log2 p)`` tree stages; the fields feed the closed forms of
:mod:`wse_sim.timing.common` (``hops``, ``relays``, ``ramp_bytes``), i.e. the structure of
[HPDC24]'s ``T = max(C, E/N + L) + (2 T_R + 1) D``:

=========  =================  ==========  ===================  ============================
pattern    hops (L)           relays (D)  root RAMP bytes (C)  busiest link (per direction)
=========  =================  ==========  ===================  ============================
bcast      p - 1              0           n                    n
tree       (2^S - 1) + p - 1  S           S n                  n
chain      2 (p - 1)          p - 1       2 n (relay PEs)      n
ktree      ~p + max(r, p-1-r) ~K p^(1/K)/2 2 n per phase       n
=========  =================  ==========  ===================  ============================

(``r`` the K-tree's root position; its hops and relays are those of its zero-load critical
path, :func:`zero_load_schedule`.)

(the tree's critical path is the root's: it receives from ``2^s`` hops away at each stage
``s``; the chain's is the far end's partial, combined at every PE on the way). The packet
expansion (:func:`expand`) builds these messages on the packet engine for the ``packet``
backend, which the tests hold the closed forms to.
"""

from __future__ import annotations

import functools

import numpy as np

from wse_sim.arch import FabricConfig
from wse_sim.errors import ConfigError
from wse_sim.fabric.routing import tree_route, xy_path, xy_route
from wse_sim.program import Transfer

__all__ = [
    "KTREE_MAX_K", "LINE_PATTERNS", "expand", "ktree_algorithm", "ktree_messages",
    "ktree_root", "line_pattern", "line_transfer", "lines_of", "zero_load_schedule",
]  # fmt: skip

WAVELET_BYTES = 4

#: The largest number of K-tree phases a line collective takes.
KTREE_MAX_K = 4

_ALGS = ("tree", "chain") + tuple(f"ktree{k}" for k in range(1, KTREE_MAX_K + 1))

#: pattern -> (kind, algorithm, axis)
LINE_PATTERNS: dict[str, tuple[str, str, str]] = {
    f"{kind}_{axis}" if kind == "bcast" else f"allreduce_{alg}_{axis}": (kind, alg, axis)
    for axis in ("row", "col")
    for kind, alg in (("bcast", "tree"),) + tuple(("allreduce", a) for a in _ALGS)
}


def ktree_algorithm(k: int) -> str:
    """The algorithm name of a ``k``-phase K-tree (``"ktree2"``).

    Raises:
        ConfigError: ``k`` not an integer in ``1 .. KTREE_MAX_K``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= KTREE_MAX_K:
        raise ConfigError(
            f"K-tree phases (--ktree-k) {k!r} not allowed; expected an integer 1 to {KTREE_MAX_K}"
        )
    return f"ktree{int(k)}"


def line_pattern(kind: str, algorithm: str, axis: str) -> str:
    """The pattern name of a line collective (``algorithm`` ``tree``, ``chain`` or
    ``ktree<K>``, :func:`ktree_algorithm`).

    Raises:
        ConfigError: an unknown kind, algorithm or axis.
    """
    for pat, spec in LINE_PATTERNS.items():
        if spec == (kind, algorithm if kind != "bcast" else "tree", axis):
            return pat
    raise ConfigError(
        f"line collective {kind}/{algorithm}/{axis} unknown; kinds bcast, allreduce; "
        f"algorithms tree, chain, ktree1..ktree{KTREE_MAX_K}; axes row, col"
    )


def _iroot(m: int, k: int) -> int:
    """The smallest ``g >= 1`` with ``g ** k >= m``."""
    g = max(int(round(m ** (1.0 / k))), 1)
    while g**k < m:
        g += 1
    while g > 1 and (g - 1) ** k >= m:
        g -= 1
    return g


@functools.lru_cache(maxsize=1024)
def _ktree(p: int, k: int) -> tuple[tuple[tuple[int, int], ...], int]:
    members = list(range(p))
    msgs: list[tuple[int, int]] = []
    for level in range(k):
        m = len(members)
        if m <= 1:
            break
        g = _iroot(m, k - level)
        n_groups = -(-m // g)
        q, r = divmod(m, n_groups)
        roots, start = [], 0
        for gi in range(n_groups):
            grp = members[start:start + q + (1 if gi < r else 0)]
            start += len(grp)
            c = len(grp) // 2
            msgs += [(grp[j], grp[j - 1]) for j in range(len(grp) - 1, c, -1)]  # from the far end
            msgs += [(grp[j], grp[j + 1]) for j in range(c)]  # from the near end
            roots.append(grp[c])
        members = roots
    return tuple(msgs), members[0]


def ktree_messages(p: int, k: int) -> list[tuple[int, int]]:
    """``(src, dst)`` line positions of a ``k``-phase K-tree reduce of ``p`` partials, in send
    order (every PE's inputs before its own send). Phase ``j`` (of ``k``) has ``m`` members
    (the line's PEs, then the previous phase's roots, in line order); it cuts them into
    ``ceil(m / g)`` groups of consecutive members as even as possible, ``g`` the smallest
    integer with ``g^(k-j) >= m`` (about ``m^(1/(k-j))``); each group reduces to its member
    ``len // 2`` (WaferLLM's ``root_1st_phase = group / 2``): first the chain from its far
    end (each member adds its partial to the running sum and forwards it), then the chain
    from its near end. ``p = 720, k = 2``: 27 groups of 26-27, then one group of 27 roots.

    Raises:
        ConfigError: ``k`` outside ``1 .. KTREE_MAX_K``.
    """
    ktree_algorithm(k)
    return list(_ktree(int(p), int(k))[0])


def ktree_root(p: int, k: int) -> int:
    """The line position where a ``k``-phase K-tree of ``p`` PEs ends (the last phase's
    middle member), which multicasts the sum back."""
    ktree_algorithm(k)
    return _ktree(int(p), int(k))[1]


def _root(p: int, algorithm: str) -> int:
    """Position of the reduce's root in :func:`_reduce_messages` (0 but for a K-tree)."""
    return ktree_root(p, int(algorithm[5:])) if algorithm.startswith("ktree") else 0


def _reduce_messages(p: int, algorithm: str) -> list[tuple[int, int]]:
    """``(src, dst)`` positions of a line reduce to its root (:func:`_root`), in send order."""
    if algorithm == "chain":
        return [(j, j - 1) for j in range(p - 1, 0, -1)]
    if algorithm.startswith("ktree"):
        return ktree_messages(p, int(algorithm[5:]))
    out, s = [], 1
    while s < p:
        out += [(i + s, i) for i in range(0, p - s, 2 * s)]
        s *= 2
    return out


def zero_load_schedule(
    p: int, n: float, algorithm: str, fabric: FabricConfig
) -> tuple[float, int, int]:
    """``(cycles, hops, relays)`` of a line all-reduce at zero load: the reduce's messages
    (cut-through: a PE forwards ``fwd`` after the head of its last input arrived; its tail
    after that input's tail), each PE's RAMP taking its inputs one after another at the RAMP
    rate, then the root's multicast back (a K-tree's root, mid-line, multicasts both ways and
    the farther end sets the time). ``hops`` and ``relays`` are those of the heads'
    critical path (the last PE's copy of the result); ``cycles`` includes the serialisation.
    RAMP contention between the reduce and the multicast back at a relay PE is not counted
    (the packet backend shows it adds up to ~0.4 n on a chain)."""
    h, r = fabric.hop_latency_cycles, fabric.ramp_latency_cycles
    f = fabric.pe_forward_latency_cycles
    rate = min(fabric.link_bits_per_cycle / 32.0, fabric.ramp_wavelets_per_cycle)
    ser = n / rate
    head = [(0.0, 0, 0)] * p  # (time the PE may start sending, hops, relays) on the head path
    tail = [0.0] * p  # when every input has fully arrived
    ramp = [0.0] * p
    for j, i in _reduce_messages(p, algorithm):
        d = abs(j - i)
        hj, hops, rel = head[j]
        a_head = hj + 2 * r + d * h
        a_tail = max(a_head + ser, tail[j] + f + 2 * r + d * h, ramp[i] + ser)
        ramp[i] = a_tail
        tail[i] = max(tail[i], a_tail)
        if a_head + f > head[i][0]:
            head[i] = (a_head + f, hops + d, rel + 1)
    root = _root(p, algorithm)
    back = max(root, p - 1 - root)  # the multicast back reaches both ends
    h0, hops, rel = head[root]
    end = max(h0 + 2 * r + back * h + ser, tail[root] + f + 2 * r + back * h)
    return end, hops + back, rel


@functools.lru_cache(maxsize=4096)
def line_transfer(
    name: str,
    pattern: str,
    p: int,
    n_lines: int,
    wavelets: float,
    fabric: FabricConfig,
    colour: int = 0,
) -> Transfer:
    """The :class:`Transfer` of a line collective over ``n_lines`` lines of ``p`` PEs, each PE
    contributing (or receiving) ``wavelets`` 32-bit wavelets: the broadcast as in the module
    table; an all-reduce with the ``hops`` and ``relays`` of its zero-load critical path and
    the rest of its zero-load time (:func:`zero_load_schedule`) as RAMP serialisation, so
    that :func:`wse_sim.timing.common.active_cycles` gives that time after the compute.

    Raises:
        ConfigError: unknown pattern, ``p < 1`` or negative ``wavelets``.
    """
    if pattern not in LINE_PATTERNS:
        raise ConfigError(f"line pattern {pattern!r} unknown; allowed: {', '.join(LINE_PATTERNS)}")
    if p < 1 or wavelets < 0:
        raise ConfigError(f"line collective needs p >= 1 and wavelets >= 0 (p={p}, {wavelets})")
    kind, alg, axis = LINE_PATTERNS[pattern]
    group = "horizontal" if axis == "row" else "vertical"
    b = wavelets * WAVELET_BYTES
    if p <= 1 or wavelets == 0:
        return Transfer(name, pattern, group, 0.0, 0.0, 0, 0, colour)
    if kind == "bcast":
        return Transfer(
            name, pattern, group, b, n_lines * (p - 1) * b, p - 1, 0, colour, ramp_bytes=b
        )
    total, hops, relays = zero_load_schedule(p, wavelets, alg, fabric)
    lat = (
        hops * fabric.hop_latency_cycles
        + 2 * fabric.ramp_latency_cycles
        + relays * (2 * fabric.ramp_latency_cycles + fabric.pe_forward_latency_cycles)
    )
    rbpc = fabric.ramp_wavelets_per_cycle * WAVELET_BYTES
    ramp = max(total - lat, 0.0) * rbpc
    link_hops = sum(abs(j - i) for j, i in _reduce_messages(p, alg)) + p - 1
    return Transfer(
        name, pattern, group, b, n_lines * link_hops * b, hops, 0,
        colour, relays=relays, ramp_bytes=ramp,
    )  # fmt: skip


def lines_of(
    pes: list[tuple[int, int]], axis: str, cmap: np.ndarray | None = None
) -> list[list[tuple[int, int]]]:
    """The kernel's active PEs grouped into lines: by row (sorted west to east) for
    ``axis="row"``, by column (north to south) for ``"col"``; with ``cmap`` (the kernel's
    class map) PEs of different classes never share a line (a band of rows per K/V head)."""
    key, pos = (0, 1) if axis == "row" else (1, 0)
    out: dict[tuple[int, int], list] = {}
    for pe in pes:
        cls = int(cmap[pe]) if cmap is not None else 0
        out.setdefault((pe[key], cls), []).append(pe)
    return [sorted(v, key=lambda x: x[pos]) for _, v in sorted(out.items())]


def expand(run, t: Transfer, msgs: list) -> None:
    """Append the packet-level messages of line collective ``t`` of kernel run ``run`` (a
    :class:`wse_sim.timing.packet._KernelRun`) to ``msgs``: every line of the kernel's active
    PEs, every pipeline chunk; each PE's first message of chunk ``i`` leaves when the PE has
    computed chunk ``i`` (its partial sums, or the root's vector)."""
    kind, alg, axis = LINE_PATTERNS[t.pattern]
    n = t.max_link_bytes / WAVELET_BYTES / run.n
    mesh = run.eng.mesh
    for li, line in enumerate(lines_of(run.pes, axis, run.cmap)):
        p = len(line)
        if p < 2:
            continue
        if alg == "chain":  # partial 0 absorbs 1, the sum absorbs 2, ...: root at the far end
            line = line[::-1]
        ids = [int(run.pidx[mesh.index(x)]) for x in line]
        rp = _root(p, alg) if kind != "bcast" else 0
        root = line[rp]
        ends = [e for e in (line[0], line[-1]) if e != root]
        bcast = run.route(
            lambda root=root, ends=ends: tree_route(
                0, root, [xy_path(root, e) for e in ends], deliver_along=True
            ),
            t,
        )
        if alg.startswith("ktree") and kind != "bcast":
            kmsgs = [
                (j, i, run.route(lambda a=line[j], c=line[i]: xy_route(0, a, c), t))
                for j, i in _reduce_messages(p, alg)
            ]
        elif alg == "tree" and kind != "bcast":
            stages = []
            s = 1
            while s < p:
                stages.append(
                    [
                        (i, run.route(lambda a=line[i + s], c=line[i]: xy_route(0, a, c), t))
                        for i in range(0, p - s, 2 * s)
                    ]
                )
                s *= 2
        elif kind != "bcast":
            chain = [
                run.route(lambda a=line[j], c=line[j - 1]: xy_route(0, a, c), t)
                for j in range(p - 1, 0, -1)
            ]
        for ch in range(run.n):
            tag = (t.name, axis, li, ch)
            if kind == "bcast":
                msgs.append(
                    (("lb",) + tag, root, bcast, n, (), 1, None, None, [(ids[0], ch)], None)
                )
                continue
            got: dict[int, list] = {i: [] for i in range(p)}  # keys received at position i
            if alg.startswith("ktree"):
                for j, i, route in kmsgs:
                    key = ("lk",) + tag + (j,)
                    deps = tuple((k, 0.0) for k in got[j])
                    msgs.append(
                        (key, line[j], route, n, deps, 1, None, None, [(ids[j], ch)], None)
                    )
                    got[i].append(key)
            elif alg == "tree":
                s = 1
                for st in stages:
                    for i, route in st:
                        key = ("lt",) + tag + (i + s,)
                        deps = tuple((k, 0.0) for k in got[i + s])
                        msgs.append(
                            (key, line[i + s], route, n, deps, 1, None, None,
                             [(ids[i + s], ch)], None)
                        )  # fmt: skip
                        got[i].append(key)
                    s *= 2
            else:
                prev = None
                for j, route in zip(range(p - 1, 0, -1), chain, strict=True):
                    key = ("lc",) + tag + (j,)
                    deps = ((prev, 0.0),) if prev is not None else ()
                    msgs.append(
                        (key, line[j], route, n, deps, 1, None, None, [(ids[j], ch)], None)
                    )
                    prev = key
                got[0].append(prev)
            deps = tuple((k, 0.0) for k in got[rp])
            msgs.append(
                (("lb",) + tag, root, bcast, n, deps, 1, None, None, [(ids[rp], ch)], None)
            )
