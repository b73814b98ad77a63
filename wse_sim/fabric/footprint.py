"""Host memory the packet engine needs, estimated from its data structures before it is built.

The experiment scripts refuse a run that would not fit the host (a ``--k 100000`` mesh once
ran until the kernel killed it) with this estimate in the message. The figures count what
:class:`~wse_sim.fabric.topology.Mesh` and :class:`~wse_sim.fabric.engine.PacketFabric`
allocate, with the object sizes of the running CPython (``sys.getsizeof``):

* **Mesh** (a ``networkx.DiGraph``): per router its ``(row, col)`` key, an empty attribute
  dict, a successor and a predecessor adjacency dict (up to 4 entries each), three hash-table
  entries in the graph's node dicts; per directed link (4 per router inside the grid) one
  ``{"dir": d}`` attribute dict.
* **PacketFabric**: per router ``4`` neighbour slots, ``7 x SLOTS`` per-port list slots,
  ``2 x SLOTS x colours`` per-buffer slots (queue, occupancy), 2 occupancy slots, one pointer
  each, plus the distinct int and float objects the port tables hold (about 20 per router).
* **Packets**: each :class:`~wse_sim.fabric.engine.Packet` (8 slots), its heap event (a
  5-tuple and a float time) and, once delivered, one entry in each of the engine's three
  delivery logs (a list slot and a float). Open-loop traffic beyond saturation keeps every
  packet queued at its source, so the estimate counts all of them alive at once.

``tests/test_fabric_experiment_inputs.py`` holds the estimates to ``tracemalloc`` measurements.
"""

from __future__ import annotations

import math
import struct
import sys

from wse_sim.fabric.engine import SLOTS, Packet

_PTR = struct.calcsize("P")
_FLOAT = sys.getsizeof(1.5)
_INT = sys.getsizeof(10**6)
#: one entry in a large dict: hash, key and value pointers (24 B) at a 2/3 load factor, plus
#: its index byte(s)
_DICT_ENTRY = int(3 * _PTR * 1.5 + 4)


def mesh_bytes(rows: int, cols: int) -> int:
    """Bytes of a fault-free ``rows x cols`` :class:`~wse_sim.fabric.topology.Mesh`."""
    n = rows * cols
    links = 2 * (rows * (cols - 1) + cols * (rows - 1))
    per_node = (
        sys.getsizeof((rows, cols))  # the node key
        + 2 * _INT  # its coordinates (ints above 256 are objects of their own)
        + sys.getsizeof({})  # node attribute dict
        + 2 * sys.getsizeof({0: 0, 1: 1, 2: 2, 3: 3})  # successor and predecessor dicts
        + 3 * _DICT_ENTRY  # entries in the graph's _node, _succ, _pred
    )
    return n * per_node + links * sys.getsizeof({"dir": "N"})


def engine_bytes(rows: int, cols: int, colours: int) -> int:
    """Bytes of a :class:`~wse_sim.fabric.engine.PacketFabric` on a ``rows x cols`` mesh
    with ``colours`` colours, the mesh included, before any packet is injected."""
    n = rows * cols
    slots = 4 + 7 * SLOTS + 2 * SLOTS * colours + 2
    objects = 10 * _INT + 10 * _FLOAT  # distinct neighbour/port indices and rates
    return mesh_bytes(rows, cols) + n * (slots * _PTR + objects)


def packet_bytes() -> int:
    """Bytes per packet alive in the engine (the object, its heap event) plus its entries in
    the engine's delivery logs once it arrives."""
    live = sys.getsizeof(Packet(0, 0, 1.0, 0, 0, 0.0)) + _FLOAT  # the object, its t_inject
    event = sys.getsizeof((0.0, 0, 0, 0, 0)) + _FLOAT + _PTR  # heap entry and its slot
    logs = 3 * (_PTR + _FLOAT)  # latency, delivery time, size
    return live + event + logs


def traffic_bytes(
    k_rows: int,
    k_cols: int,
    colours: int,
    load: float,
    packet_wavelets: int,
    cycles: float,
) -> int:
    """Peak bytes of :func:`wse_sim.fabric.traffic.run_traffic`: the engine plus every packet
    of the injection schedule (``cycles = warmup + measure``; each node injects a packet with
    probability ``min(load / packet_wavelets, 1)`` per cycle). The schedule itself is three
    int64/float64 arrays per packet, about doubled while it is sorted."""
    n = k_rows * k_cols
    p = min(load / packet_wavelets, 1.0)
    packets = n * (cycles * p * 1.2 + 16)  # what injection_schedule draws per node
    return engine_bytes(k_rows, k_cols, colours) + int(packets * (6 * 8 + packet_bytes()))


def collective_bytes(
    p: int, n_wavelets: float, packet_wavelets: int, colours: int, kind: str = "allreduce"
) -> int:
    """Peak bytes of :func:`wse_sim.fabric.collectives.run_collective` on a ``1 x p`` line:
    the engine plus ``p`` messages of ``n_wavelets`` cut into packets of ``packet_wavelets``
    (every PE's partial sums of a reduce, or the root's message delivered to ``p`` PEs by a
    broadcast), twice for an ``allreduce`` (reduce, then back)."""
    phases = 2 if kind == "allreduce" else 1
    packets = phases * p * max(math.ceil(n_wavelets / packet_wavelets), 1)
    return engine_bytes(1, p, colours) + packets * packet_bytes()


#: what :func:`wse_sim.timing.packet.run_packet` holds beside the engine and the packets on
#: grids up to 32 x 32 (the SimPy weight streamer, the dataflow tables, the statistics):
#: 3-6 MB measured with ``tracemalloc``; counted as the larger
PACKET_BACKEND_FIXED_BYTES = 6 * 2**20


def transfer_program_bytes(
    rows: int,
    cols: int,
    colours: int,
    link_bytes: float,
    *,
    packet_wavelets: int = 1024,
    n_chunks: int = 8,
) -> int:
    """Peak bytes of :func:`wse_sim.timing.packet.run_packet` on a one-transfer Program
    (:func:`wse_sim.fabric.collectives.collective_program`): the engine, the transfer's
    ``link_bytes`` (:attr:`wse_sim.program.Transfer.link_bytes`, bytes x links over the grid)
    spread over the PEs as packets of ``packet_wavelets`` 4-byte wavelets (at least one per
    chunk) alive at once, and :data:`PACKET_BACKEND_FIXED_BYTES`."""
    n = rows * cols
    per_pe = max(math.ceil(link_bytes / n / 4 / packet_wavelets), n_chunks)
    return engine_bytes(rows, cols, colours) + n * per_pe * packet_bytes() + (
        PACKET_BACKEND_FIXED_BYTES
    )
