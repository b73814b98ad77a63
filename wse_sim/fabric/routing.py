"""Static colour routes on the mesh: XY/YX paths, multicast trees, reduce chains and trees.

A WSE router holds, per colour, one static rule: the port the colour is received from and the
set of ports it is transmitted on; several transmit ports multicast ([CSL], see
``shared/reference/wse_hardware.md``). A :class:`Route` is one such tree of rules rooted at a
source (a PE's RAMP or an edge port of the grid). A :class:`RouteTable` collects routes and
rejects, with a one-line :class:`~wse_sim.fabric.errors.RouteError`, a route that

* names a colour outside ``0 .. colours - 1``;
* leaves the grid, enters a faulty PE or crosses a broken link;
* is not a tree (a router reached twice, a loop, a branch that goes nowhere);
* reuses a colour at a router with a different receive port or transmit set than a route
  already installed there (two routes may share a colour where their rules are identical).

Reductions need a PE to combine what it receives before sending on, so a reduce chain or tree
is a list of one-hop or few-hop routes between PEs, on alternating colours (a colour cannot
both arrive from the west and be sent from the RAMP at the same router).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from wse_sim.fabric.errors import RouteError
from wse_sim.fabric.topology import DIRS, OPPOSITE, PORTS, Mesh, Node

ENTRIES = ("RAMP", "N", "E", "S", "W")


@dataclass(frozen=True)
class Route:
    """One colour's static route: a tree of routers rooted at ``src``.

    Attributes:
        colour: the colour (virtual channel).
        src: the router where packets enter.
        entry: where they enter it from: ``"RAMP"`` (the PE injects) or an edge side
            (``"N"`` ... ``"W"``: off-grid I/O entering through that side of an edge router).
        tx: ``{router: ports}``, the ports each router of the tree transmits on (``"RAMP"``
            delivers to its PE).
    """

    colour: int
    src: Node
    entry: str
    tx: dict[Node, tuple[str, ...]] = field(hash=False)

    @cached_property
    def dests(self) -> list[Node]:
        """Routers whose PE receives the packets (``"RAMP"`` in their transmit set)."""
        return sorted(n for n, ports in self.tx.items() if "RAMP" in ports)

    def rules(self) -> dict[Node, tuple[str, frozenset[str]]]:
        """``{router: (receive port, transmit ports)}``; needs a validated tree."""
        rx = {self.src: self.entry}
        out = {}
        stack = [self.src]
        while stack:
            n = stack.pop()
            ports = self.tx[n]
            out[n] = (rx[n], frozenset(ports))
            for p in ports:
                if p != "RAMP":
                    nb = _step(n, p)
                    rx[nb] = OPPOSITE[p]
                    stack.append(nb)
        return out

    def n_links(self) -> int:
        """Links (router-to-router hops) in the tree."""
        return sum(1 for ports in self.tx.values() for p in ports if p != "RAMP")

    def with_colour(self, colour: int) -> Route:
        """The same tree on another colour."""
        return Route(colour, self.src, self.entry, dict(self.tx))


def _step(n: Node, d: str) -> Node:
    dr, dc = {"N": (-1, 0), "E": (0, 1), "S": (1, 0), "W": (0, -1)}[d]
    return (n[0] + dr, n[1] + dc)


def validate_route(mesh: Mesh, route: Route, n_colours: int) -> None:
    """Check that ``route`` is a tree on ``mesh``'s live routers and links.

    Raises:
        RouteError: colour out of range, source or entry invalid, a link off the grid or
            through a fault, a router reached twice, a router with no rule, a dead end.
    """
    c = route.colour
    if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < n_colours:
        raise RouteError(
            f"colour {c!r} is out of range: the fabric has {n_colours} colours (0-{n_colours - 1})"
        )
    src = tuple(route.src)
    if not mesh.alive(src):
        raise RouteError(f"route of colour {c}: source {src} is outside the grid or faulty")
    if route.entry not in ENTRIES:
        raise RouteError(f"route of colour {c}: entry {route.entry!r} not one of {ENTRIES}")
    if route.entry != "RAMP" and not mesh.on_edge(src, route.entry):
        raise RouteError(
            f"route of colour {c}: source {src} has no grid edge on side {route.entry} "
            "for off-grid input"
        )
    for n in route.tx:
        if not mesh.in_grid(n):
            raise RouteError(f"route of colour {c} names router {n} outside the grid")
    seen = {src}
    stack = [src]
    while stack:
        n = stack.pop()
        ports = route.tx.get(n)
        if not ports:
            raise RouteError(f"route of colour {c} reaches router {n} but has no rule there")
        if len(set(ports)) != len(ports) or any(p not in PORTS for p in ports):
            raise RouteError(f"route of colour {c} at {n}: bad transmit ports {ports}")
        for p in ports:
            if p == "RAMP":
                continue
            nb = _step(n, p)
            if not mesh.in_grid(nb):
                raise RouteError(f"route of colour {c} leaves the grid at {n} going {p}")
            if mesh.neighbor(n, p) is None:
                raise RouteError(
                    f"route of colour {c} crosses a faulty PE or link from {n} going {p}"
                )
            if nb in seen:
                raise RouteError(f"route of colour {c} reaches router {nb} twice (not a tree)")
            seen.add(nb)
            stack.append(nb)
    extra = set(route.tx) - seen
    if extra:
        raise RouteError(
            f"route of colour {c} has rules at {sorted(extra)[0]} not reachable from {src}"
        )


class RouteTable:
    """The static rules of every colour, built route by route with validation.

    Args:
        mesh: the grid the routes run on.
        n_colours: routable colours (``fabric.colours``, 24 on WSE-2 [CSL]).

    Attributes:
        rules: ``{colour: {router: (receive port, transmit ports)}}``.
        routes: the routes added, in order.
    """

    def __init__(self, mesh: Mesh, n_colours: int):
        self.mesh = mesh
        self.n_colours = n_colours
        self.rules: dict[int, dict[Node, tuple[str, frozenset[str]]]] = {}
        self.routes: list[Route] = []

    def conflict(self, route: Route) -> str | None:
        """Why ``route`` cannot join the table on its colour, or None if it can."""
        table = self.rules.get(route.colour, {})
        for n, (rx, tx) in route.rules().items():
            old = table.get(n)
            if old is not None and old != (rx, tx):
                return (
                    f"colour {route.colour} at router {n}: the route from {route.src} receives "
                    f"from {rx} and sends to {sorted(tx)}, but colour {route.colour} there "
                    f"already receives from {old[0]} and sends to {sorted(old[1])}"
                )
        return None

    def add(self, route: Route) -> Route:
        """Validate ``route`` and install its rules.

        Raises:
            RouteError: see :func:`validate_route`, or the colour is used inconsistently.
        """
        validate_route(self.mesh, route, self.n_colours)
        why = self.conflict(route)
        if why is not None:
            raise RouteError(why)
        self.rules.setdefault(route.colour, {}).update(route.rules())
        self.routes.append(route)
        return route

    def allocate(self, route: Route, pool: Sequence[int]) -> Route:
        """Install ``route`` on the first colour of ``pool`` where it fits (greedy colouring).

        Raises:
            RouteError: it conflicts on every colour of the pool.
        """
        validate_route(self.mesh, route.with_colour(pool[0] if pool else 0), self.n_colours)
        for col in pool:
            r = route.with_colour(col)
            if self.conflict(r) is None:
                return self.add(r)
        raise RouteError(
            f"no free colour for a route from {route.src} among {len(pool)} colours "
            f"({list(pool)[:8]}...): every one is used differently on its path"
        )


# ----------------------------------------------------------------------------- path helpers
def _dimension_order_path(a: Node, b: Node, axes: tuple[int, int]) -> list[Node]:
    """Path from ``a`` to ``b`` moving along ``axes[0]`` first, then ``axes[1]`` (axis 0 is
    the row index, Y; axis 1 the column index, X). One loop serves both orders, so XY and YX
    cannot drift apart."""
    path = [tuple(a)]
    cur = list(a)
    for ax in axes:
        while cur[ax] != b[ax]:
            cur[ax] += 1 if b[ax] > cur[ax] else -1
            path.append((cur[0], cur[1]))
    return path


def xy_path(a: Node, b: Node) -> list[Node]:
    """Dimension-order path: along the row (X, east/west) first, then the column (Y)."""
    return _dimension_order_path(a, b, (1, 0))


def yx_path(a: Node, b: Node) -> list[Node]:
    """Dimension-order path: along the column (Y) first, then the row (X)."""
    return _dimension_order_path(a, b, (0, 1))


def turns(path: Sequence[Node]) -> int:
    """Changes of direction along a node path."""
    dirs = [Mesh.direction(path[i], path[i + 1]) for i in range(len(path) - 1)]
    return sum(1 for i in range(1, len(dirs)) if dirs[i] != dirs[i - 1])


def tree_route(
    colour: int,
    src: Node,
    paths: Iterable[Sequence[Node]],
    *,
    entry: str = "RAMP",
    deliver_along: bool = False,
) -> Route:
    """The union of node paths from ``src`` as one multicast tree; each path's last router
    delivers to its PE (and every router on the way but ``src`` if ``deliver_along``).

    Raises:
        RouteError: a path does not start at ``src``, steps to a non-neighbour, or two paths
            reach a router from different sides (the union is not a tree).
    """
    src = tuple(src)
    tx: dict[Node, set[str]] = {src: set()}
    parent: dict[Node, Node | None] = {src: None}
    for path in paths:
        path = [tuple(p) for p in path]
        if not path or path[0] != src:
            raise RouteError(f"route of colour {colour}: a path does not start at {src}")
        for a, b in zip(path, path[1:], strict=False):
            try:
                d = Mesh.direction(a, b)
            except Exception:
                raise RouteError(f"route of colour {colour}: {a} -> {b} is not a hop") from None
            if b in parent and parent[b] != a:
                raise RouteError(
                    f"route of colour {colour}: paths reach {b} from both {parent[b]} and {a}"
                )
            parent[b] = a
            tx.setdefault(a, set()).add(d)
            tx.setdefault(b, set())
            if deliver_along and a != src:
                tx[a].add("RAMP")
        tx[path[-1]].add("RAMP")
    order = {p: i for i, p in enumerate(PORTS)}
    return Route(colour, src, entry, {n: tuple(sorted(s, key=order.get)) for n, s in tx.items()})


def xy_route(colour: int, src: Node, dst: Node) -> Route:
    """Unicast along the XY path."""
    return tree_route(colour, src, [xy_path(src, dst)])


def yx_route(colour: int, src: Node, dst: Node) -> Route:
    """Unicast along the YX path."""
    return tree_route(colour, src, [yx_path(src, dst)])


def multicast_xy(colour: int, src: Node, dests: Iterable[Node]) -> Route:
    """Multicast tree from ``src`` to ``dests``: the union of XY paths (along ``src``'s row,
    then down/up each destination column), which is always a tree."""
    return tree_route(colour, src, [xy_path(src, d) for d in dests])


def row_multicast(colour: int, src: Node, cols: Iterable[int]) -> Route:
    """Multicast along ``src``'s row to the PEs of ``cols``."""
    return multicast_xy(colour, src, [(src[0], c) for c in cols])


def column_multicast(colour: int, src: Node, rows: Iterable[int], *, entry: str = "RAMP") -> Route:
    """Multicast along ``src``'s column to the PEs of ``rows`` (``entry`` an edge side for
    off-grid input, e.g. ``"N"`` for weights entering at the north edge)."""
    return tree_route(colour, src, [xy_path(src, (r, src[1])) for r in rows], entry=entry)


# ------------------------------------------------------------------------------ reductions
@dataclass(frozen=True)
class ReduceStep:
    """One PE-to-PE transfer of a reduction: ``src`` sends its partial to ``dst``, which
    combines it with its own before its next step."""

    src: Node
    dst: Node
    route: Route
    stage: int


def reduce_chain(nodes: Sequence[Node], colours: tuple[int, int]) -> list[ReduceStep]:
    """Chain reduction towards ``nodes[-1]``: ``nodes[i]`` sends to ``nodes[i + 1]`` (a path
    between them, usually one hop), on colours alternating between the two given so that a
    router never receives and sends the same colour. Stage ``i`` of the result is hop ``i``.
    """
    steps = []
    for i in range(len(nodes) - 1):
        a, b = tuple(nodes[i]), tuple(nodes[i + 1])
        steps.append(ReduceStep(a, b, xy_route(colours[i % 2], a, b), i))
    return steps


def reduce_tree(nodes: Sequence[Node], colours: Sequence[int]) -> list[ReduceStep]:
    """Binary-tree (recursive halving) reduction towards ``nodes[0]``: at stage ``s`` node
    ``i`` with ``i mod 2^(s+1) == 2^s`` sends to node ``i - 2^s`` along the XY path. Stage
    ``s`` uses ``colours[s]`` (its paths are disjoint, so one colour serves the stage).

    Raises:
        RouteError: fewer colours than stages (``ceil(log2(len(nodes)))``).
    """
    steps = []
    n = len(nodes)
    s = 0
    while (1 << s) < n:
        if s >= len(colours):
            raise RouteError(f"a reduce tree over {n} PEs needs {s + 1}+ colours")
        half = 1 << s
        for i in range(half, n, 2 * half):
            a, b = tuple(nodes[i]), tuple(nodes[i - half])
            steps.append(ReduceStep(a, b, xy_route(colours[s], a, b), s))
        s += 1
    return steps


def edge_entry(mesh: Mesh, node: Node) -> str:
    """An edge side of ``node`` (``N``, ``W``, ``S``, ``E`` in that order of preference).

    Raises:
        RouteError: ``node`` is not on the grid's edge.
    """
    for d in ("N", "W", "S", "E"):
        if mesh.on_edge(node, d):
            return d
    raise RouteError(f"router {node} is not on the grid edge")


__all__ = [
    "DIRS",
    "ReduceStep",
    "Route",
    "RouteTable",
    "column_multicast",
    "edge_entry",
    "multicast_xy",
    "reduce_chain",
    "reduce_tree",
    "row_multicast",
    "tree_route",
    "turns",
    "validate_route",
    "xy_path",
    "xy_route",
    "yx_path",
    "yx_route",
]
