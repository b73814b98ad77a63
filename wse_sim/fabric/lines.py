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
=========  =================  ==========  ===================  ============================

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
    "LINE_PATTERNS", "expand", "line_pattern", "line_transfer", "lines_of", "zero_load_schedule"
]

WAVELET_BYTES = 4

#: pattern -> (kind, algorithm, axis)
LINE_PATTERNS: dict[str, tuple[str, str, str]] = {
    f"{kind}_{axis}" if kind == "bcast" else f"allreduce_{alg}_{axis}": (kind, alg, axis)
    for axis in ("row", "col")
    for kind, alg in (("bcast", "tree"), ("allreduce", "tree"), ("allreduce", "chain"))
}


def line_pattern(kind: str, algorithm: str, axis: str) -> str:
    """The pattern name of a line collective.

    Raises:
        ConfigError: an unknown kind, algorithm or axis.
    """
    for pat, spec in LINE_PATTERNS.items():
        if spec == (kind, algorithm if kind != "bcast" else "tree", axis):
            return pat
    raise ConfigError(
        f"line collective {kind}/{algorithm}/{axis} unknown; kinds bcast, allreduce; "
        "algorithms tree, chain; axes row, col"
    )


def _reduce_messages(p: int, algorithm: str) -> list[tuple[int, int]]:
    """``(src, dst)`` positions of a line reduce to position 0, in send order."""
    if algorithm == "chain":
        return [(j, j - 1) for j in range(p - 1, 0, -1)]
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
    rate, then the root's multicast back. ``hops`` and ``relays`` are those of the heads'
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
    h0, hops, rel = head[0]
    end = max(h0 + 2 * r + (p - 1) * h + ser, tail[0] + f + 2 * r + (p - 1) * h)
    return end, hops + p - 1, rel


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
        root = line[0]
        bcast = run.route(
            lambda root=root, line=line: tree_route(
                0, root, [xy_path(root, line[-1])], deliver_along=True
            ),
            t,
        )
        if alg == "tree" and kind != "bcast":
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
            if alg == "tree":
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
            deps = tuple((k, 0.0) for k in got[0])
            msgs.append((("lb",) + tag, root, bcast, n, deps, 1, None, None, [(ids[0], ch)], None))
