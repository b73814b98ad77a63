"""The PE mesh as a graph: one node per router, one directed edge per link and direction.

Coordinates are ``(row, col)``: row 0 is the north edge, col 0 the west edge (the SDK's ``y``
and ``x``). Faulty or disabled PEs and links are represented by removing nodes and edges from
the :mod:`networkx` graph; every route helper in :mod:`wse_sim.fabric.routing` works on that
graph, so a route through a fault is rejected and detours are found by graph search.

Directions and ports follow the router of [CSL] (``shared/reference/wse_hardware.md``): four
mesh ports ``N``, ``E``, ``S``, ``W`` and the ``RAMP`` to and from the PE.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from wse_sim.errors import ConfigError

Node = tuple[int, int]

DIRS = ("N", "E", "S", "W")
PORTS = ("N", "E", "S", "W", "RAMP")
#: (d_row, d_col) of one step in each direction
DELTA = {"N": (-1, 0), "E": (0, 1), "S": (1, 0), "W": (0, -1)}
OPPOSITE = {"N": "S", "S": "N", "E": "W", "W": "E"}


class Mesh:
    """A ``rows x cols`` 2-D mesh of routers, with optional faults.

    Args:
        rows, cols: grid size (>= 1 each).
        faulty_pes: PEs (and their routers) that are disabled: removed from the graph.
        faulty_links: links ``((r, c), (r2, c2))`` between adjacent PEs that are broken in both
            directions: removed from the graph.

    Attributes:
        graph: :class:`networkx.DiGraph`; nodes ``(r, c)``, edges carry ``dir`` (the direction
            of travel, ``"N"``/``"E"``/``"S"``/``"W"``).

    Raises:
        ConfigError: bad size, a fault outside the grid or a link between non-neighbours.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        faulty_pes: Iterable[Node] = (),
        faulty_links: Iterable[tuple[Node, Node]] = (),
    ):
        for name, v in (("rows", rows), ("cols", cols)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"mesh {name}={v!r} must be an integer >= 1")
        self.rows, self.cols = rows, cols
        g = nx.DiGraph()
        g.add_nodes_from((r, c) for r in range(rows) for c in range(cols))
        for r in range(rows):
            for c in range(cols):
                for d, (dr, dc) in DELTA.items():
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < rows and 0 <= cc < cols:
                        g.add_edge((r, c), (rr, cc), dir=d)
        self.faulty_pes = frozenset(tuple(p) for p in faulty_pes)
        for p in self.faulty_pes:
            if not self.in_grid(p):
                raise ConfigError(f"faulty PE {p} is outside the {rows}x{cols} grid")
        g.remove_nodes_from(self.faulty_pes)
        links = []
        for a, b in faulty_links:
            a, b = tuple(a), tuple(b)
            if (
                not (self.in_grid(a) and self.in_grid(b))
                or abs(a[0] - b[0]) + abs(a[1] - b[1]) != 1
            ):
                raise ConfigError(f"faulty link {a}-{b} does not join two neighbouring PEs")
            links.append((a, b))
            for u, v in ((a, b), (b, a)):
                if g.has_edge(u, v):
                    g.remove_edge(u, v)
        self.faulty_links = frozenset(links)
        self.graph = g

    @property
    def n_nodes(self) -> int:
        """Routers of the full grid (faulty ones included: indices stay ``r * cols + c``)."""
        return self.rows * self.cols

    def in_grid(self, node: Node) -> bool:
        """True if ``node`` lies inside the ``rows x cols`` grid (faulty or not)."""
        r, c = node
        return 0 <= r < self.rows and 0 <= c < self.cols

    def alive(self, node: Node) -> bool:
        """True if ``node`` is in the grid and not faulty."""
        return self.graph.has_node(tuple(node))

    def index(self, node: Node) -> int:
        """Router index ``r * cols + c``."""
        return node[0] * self.cols + node[1]

    def node(self, index: int) -> Node:
        """``(r, c)`` of router ``index``."""
        return divmod(index, self.cols)

    def neighbor(self, node: Node, d: str) -> Node | None:
        """The router one step in direction ``d``, or None (grid edge, fault, broken link)."""
        dr, dc = DELTA[d]
        nb = (node[0] + dr, node[1] + dc)
        return nb if self.graph.has_edge(tuple(node), nb) else None

    def on_edge(self, node: Node, d: str) -> bool:
        """True if the step from ``node`` in direction ``d`` leaves the grid (an edge port)."""
        dr, dc = DELTA[d]
        return not self.in_grid((node[0] + dr, node[1] + dc))

    @staticmethod
    def direction(a: Node, b: Node) -> str:
        """Direction of the step from ``a`` to its neighbour ``b``.

        Raises:
            ConfigError: ``a`` and ``b`` are not neighbours.
        """
        d = (b[0] - a[0], b[1] - a[1])
        for name, delta in DELTA.items():
            if delta == d:
                return name
        raise ConfigError(f"{a} and {b} are not neighbours")

    def hops(self, a: Node, b: Node) -> int:
        """Manhattan distance (the hop count of a minimal route on a fault-free mesh)."""
        return abs(a[0] - b[0]) + abs(a[1] - b[1])

    def shortest_path(self, a: Node, b: Node) -> list[Node]:
        """A minimal path around faults (networkx BFS), ``[a, ..., b]``.

        Raises:
            ConfigError: no path (the faults cut ``a`` off from ``b``).
        """
        try:
            return nx.shortest_path(self.graph, tuple(a), tuple(b))
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            raise ConfigError(f"no fault-free path from {a} to {b}") from None
