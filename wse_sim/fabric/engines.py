"""Packet engines by name (``"compiled"``, ``"reference"``) and a warm-up for the compiled one."""

from __future__ import annotations

import numpy as np

from wse_sim.fabric.compiled import CompiledFabric
from wse_sim.fabric.engine import PacketFabric
from wse_sim.fabric.topology import Mesh


def make_engine(engine: str, mesh: Mesh, fabric, **kw) -> PacketFabric:
    """A packet engine by name: ``"compiled"`` (:class:`CompiledFabric`) or ``"reference"``
    (:class:`~wse_sim.fabric.engine.PacketFabric`), with ``fabric``'s rates (``kw``
    overrides).

    Raises:
        ValueError: an unknown engine name.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} unknown; choose from {', '.join(ENGINES)}")
    return ENGINES[engine].from_arch(mesh, fabric, **kw)


ENGINES = {"compiled": CompiledFabric, "reference": PacketFabric}


def warm_up() -> None:
    """Compile (or load from Numba's cache) every compiled entry point by running a few
    packets through a 2 x 2 engine, so that a timed run that follows measures simulation."""
    eng = CompiledFabric(Mesh(2, 2))
    eng.set_routing(0, "xy")
    eng.inject_many(np.array([0, 1]), 0, 1.0, np.array([0.0, 1.0]), np.array([3, 2]))
    eng.schedule(2.0, lambda: eng.inject(0, 0, 1.0, dst=3))
    eng.run()
    assert eng.in_flight == 0
