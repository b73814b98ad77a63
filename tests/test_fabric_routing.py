"""Mesh topology with faults, XY/YX routes, multicast trees, reductions, route validation."""

from __future__ import annotations

import networkx as nx
import pytest

from wse_sim.errors import ConfigError
from wse_sim.fabric.errors import RouteError
from wse_sim.fabric.routing import (
    Route,
    RouteTable,
    column_multicast,
    multicast_xy,
    reduce_chain,
    reduce_tree,
    row_multicast,
    tree_route,
    turns,
    xy_path,
    xy_route,
    yx_path,
    yx_route,
)
from wse_sim.fabric.topology import Mesh


def test_mesh_graph_has_every_link_both_ways():
    m = Mesh(3, 4)
    # 2 directions x (rows x (cols - 1) + cols x (rows - 1)) links
    assert m.graph.number_of_edges() == 2 * (3 * 3 + 4 * 2)
    assert m.graph.edges[(1, 1), (1, 2)]["dir"] == "E"
    assert m.neighbor((0, 0), "N") is None and m.neighbor((0, 0), "S") == (1, 0)


def test_faults_remove_nodes_and_links():
    m = Mesh(4, 4, faulty_pes=[(1, 1)], faulty_links=[((2, 2), (2, 3))])
    assert not m.alive((1, 1)) and m.alive((0, 0))
    assert m.neighbor((1, 0), "E") is None
    assert m.neighbor((2, 2), "E") is None and m.neighbor((2, 3), "W") is None
    path = m.shortest_path((1, 0), (1, 2))
    assert (1, 1) not in path and len(path) - 1 == 4  # detour around the dead PE
    assert nx.is_strongly_connected(m.graph)


def test_bad_faults_and_sizes_are_one_line_errors():
    with pytest.raises(ConfigError, match="outside"):
        Mesh(2, 2, faulty_pes=[(5, 5)])
    with pytest.raises(ConfigError, match="neighbouring"):
        Mesh(3, 3, faulty_links=[((0, 0), (2, 2))])
    with pytest.raises(ConfigError, match="rows"):
        Mesh(0, 3)


@pytest.mark.parametrize("src, dst", [((0, 0), (3, 5)), ((4, 4), (0, 0)), ((2, 3), (2, 3))])
def test_xy_and_yx_paths_are_minimal_with_one_turn(src, dst):
    for path in (xy_path(src, dst), yx_path(src, dst)):
        assert path[0] == src and path[-1] == dst
        assert len(path) - 1 == abs(src[0] - dst[0]) + abs(src[1] - dst[1])
        assert turns(path) == (1 if src[0] != dst[0] and src[1] != dst[1] else 0)
    assert xy_path(src, dst)[1:2] == ([] if src == dst else [xy_path(src, dst)[1]])
    if src[1] != dst[1]:
        assert xy_path(src, dst)[1][0] == src[0]  # X (along the row) first
    if src[0] != dst[0]:
        assert yx_path(src, dst)[1][1] == src[1]  # Y (along the column) first


def test_unicast_rules():
    r = xy_route(2, (0, 0), (1, 2))
    rules = r.rules()
    assert rules[(0, 0)] == ("RAMP", frozenset({"E"}))
    assert rules[(0, 2)] == ("W", frozenset({"S"}))
    assert rules[(1, 2)] == ("N", frozenset({"RAMP"}))
    assert r.dests == [(1, 2)] and r.n_links() == 3
    assert yx_route(2, (0, 0), (1, 2)).rules()[(1, 0)] == ("N", frozenset({"E"}))


def test_multicast_trees_deliver_to_every_destination():
    m = Mesh(6, 6)
    t = RouteTable(m, 24)
    dests = [(r, c) for r in range(6) for c in range(6) if (r, c) != (2, 3)]
    r = t.add(multicast_xy(0, (2, 3), dests))
    assert sorted(r.dests) == sorted(dests)
    assert r.n_links() == 35  # a spanning tree of the 36 routers
    row = t.add(row_multicast(1, (0, 2), [0, 1, 3, 5]))
    assert row.rules()[(0, 2)] == ("RAMP", frozenset({"E", "W"}))
    assert row.rules()[(0, 1)] == ("E", frozenset({"W", "RAMP"}))
    col = t.add(column_multicast(2, (0, 4), range(6), entry="N"))
    assert col.rules()[(0, 4)] == ("N", frozenset({"S", "RAMP"}))
    assert col.dests == [(r, 4) for r in range(6)]


def test_reduce_chain_alternates_colours_and_validates():
    m = Mesh(1, 6)
    t = RouteTable(m, 24)
    steps = reduce_chain([(0, c) for c in range(6)], (4, 5))
    assert [s.route.colour for s in steps] == [4, 5, 4, 5, 4]
    for s in steps:
        t.add(s.route)
    # one colour for the whole chain would receive and send it at the same router
    with pytest.raises(RouteError, match="already receives"):
        for s in reduce_chain([(0, c) for c in range(6)], (7, 7)):
            t.add(s.route)


def test_reduce_tree_stages_and_colours():
    m = Mesh(1, 8)
    t = RouteTable(m, 24)
    steps = reduce_tree([(0, c) for c in range(8)], (1, 2, 3))
    assert [(s.src, s.dst, s.stage) for s in steps if s.stage == 2] == [((0, 4), (0, 0), 2)]
    assert len(steps) == 7 and {s.route.colour for s in steps} == {1, 2, 3}
    for s in steps:
        t.add(s.route)
    with pytest.raises(RouteError, match="colours"):
        reduce_tree([(0, c) for c in range(8)], (1,))


@pytest.mark.parametrize(
    "route, fragment",
    [
        (Route(0, (0, 3), "RAMP", {(0, 3): ("E",), (0, 4): ("RAMP",)}), "outside the grid"),
        (Route(0, (0, 3), "RAMP", {(0, 3): ("N",)}), "leaves the grid"),
        (Route(30, (0, 0), "RAMP", {(0, 0): ("RAMP",)}), "out of range"),
        (Route(0, (1, 1), "W", {(1, 1): ("RAMP",)}), "no grid edge"),
        (Route(0, (0, 0), "RAMP", {(0, 0): ("E",)}), "no rule there"),
        (Route(0, (0, 0), "RAMP", {(0, 0): ("E",), (0, 1): ()}), "no rule there"),
        (
            Route(0, (0, 0), "RAMP", {(0, 0): ("RAMP",), (2, 2): ("RAMP",)}),
            "not reachable",
        ),
        (Route(0, (0, 0), "RAMP", {(0, 0): ("X",)}), "bad transmit ports"),
    ],
)
def test_invalid_routes_rejected_with_one_line_error(route, fragment):
    t = RouteTable(Mesh(4, 4), 24)
    with pytest.raises(RouteError) as ei:
        t.add(route)
    assert fragment in str(ei.value) and "\n" not in str(ei.value)


def test_route_through_fault_rejected_and_detour_accepted():
    m = Mesh(3, 3, faulty_pes=[(1, 1)])
    t = RouteTable(m, 24)
    with pytest.raises(RouteError, match="faulty"):
        t.add(xy_route(0, (1, 0), (1, 2)))
    detour = tree_route(0, (1, 0), [m.shortest_path((1, 0), (1, 2))])
    t.add(detour)
    assert detour.dests == [(1, 2)]


def test_paths_meeting_from_two_sides_are_not_a_tree():
    with pytest.raises(RouteError, match="from both"):
        tree_route(0, (0, 0), [xy_path((0, 0), (1, 1)), yx_path((0, 0), (1, 1))])


def test_shared_colour_with_identical_rules_is_allowed():
    m = Mesh(2, 4)
    t = RouteTable(m, 24)
    # two column multicasts from the north edge never meet: one colour serves all columns
    for c in range(4):
        t.add(column_multicast(0, (0, c), [0, 1], entry="N"))
    assert len(t.rules[0]) == 8


def test_allocate_finds_a_free_colour():
    m = Mesh(1, 5)
    t = RouteTable(m, 3)
    got = [t.allocate(xy_route(0, (0, c), (0, c + 1)), [0, 1, 2]).colour for c in range(4)]
    assert got == [0, 1, 0, 1]
    t2 = RouteTable(m, 1)
    t2.allocate(xy_route(0, (0, 0), (0, 1)), [0])
    with pytest.raises(RouteError, match="no free colour"):
        t2.allocate(xy_route(0, (0, 1), (0, 2)), [0])
