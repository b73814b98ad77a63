"""Timing backends: one registry, :data:`BACKENDS`, from fidelity name to backend function.

Every backend is a function ``run(program, arch) -> TimingResult``
(:class:`wse_sim.timing.common.TimingResult`):

* ``analytic`` (:func:`wse_sim.timing.analytic.run_analytic`): closed form per kernel;
* ``event`` (:func:`wse_sim.timing.event.run_event`): SimPy, PEs and links aggregated into
  symmetry classes, the whole wafer;
* ``packet`` (:func:`wse_sim.timing.packet.run_packet`): SimPy per router and link, refused
  above its ``max_pes`` PEs.

The fidelity names everywhere (``simulate(fidelity=...)``, ``train``, ``generate``, the
experiments' ``--fidelity``) come from :data:`BACKENDS`; :data:`WAFER_BACKENDS` are those that
time a whole wafer (and a training step, whose gradient streams ``packet`` does not model).
A backend's module is imported when the backend is first looked up (``packet`` pulls in the
compiled fabric engine), so ``import wse_sim.timing.analytic`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from wse_sim.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from wse_sim.arch import ArchConfig
    from wse_sim.program import Program
    from wse_sim.timing.common import TimingResult

#: a timing backend: ``run(program, arch) -> TimingResult``
Backend = Callable[["Program", "ArchConfig"], "TimingResult"]

_WHERE = {
    "analytic": ("wse_sim.timing.analytic", "run_analytic"),
    "event": ("wse_sim.timing.event", "run_event"),
    "packet": ("wse_sim.timing.packet", "run_packet"),
}


class _Registry(Mapping):
    """Read-only ``{name: backend function}``, each module imported on first lookup."""

    def __init__(self, where: dict[str, tuple[str, str]]):
        self._where = dict(where)

    def __getitem__(self, name: str) -> Backend:
        module, fn = self._where[name]
        return getattr(importlib.import_module(module), fn)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"BACKENDS({', '.join(self._where)})"


#: fidelity name -> backend function, lowest fidelity first
BACKENDS: Mapping[str, Backend] = _Registry(_WHERE)
#: the backends that time a whole wafer (``packet`` is refused above its ``max_pes``)
WAFER_BACKENDS: tuple[str, ...] = ("analytic", "event")
#: the fidelity ``simulate``, ``train`` and ``generate`` use unless told otherwise
DEFAULT_BACKEND = "event"


def get_backend(
    fidelity: str, allowed: tuple[str, ...] | None = None, *, where: str = "", why: str = ""
) -> Backend:
    """The backend function of ``fidelity``.

    Args:
        fidelity: a name of :data:`BACKENDS`.
        allowed: the names this caller accepts (default: all of :data:`BACKENDS`).
        where: what the caller is (``"training"``), named when a known backend is refused.
        why: why the other backends are refused there, appended to that message.

    Raises:
        ConfigError: ``fidelity`` is not one of ``allowed`` (one line, naming what is): an
            unknown name is called unknown; a known backend outside ``allowed`` is called
            unsupported ``where`` (with ``why``).
    """
    allowed = tuple(BACKENDS) if allowed is None else allowed
    if fidelity in allowed and fidelity in BACKENDS:
        return BACKENDS[fidelity]
    if fidelity in BACKENDS:
        raise ConfigError(
            f"fidelity={fidelity!r} is not supported{' by ' + where if where else ' here'}"
            f"{' (' + why + ')' if why else ''}; {where + ' supports' if where else 'allowed:'} "
            f"{', '.join(allowed)}"
        )
    raise ConfigError(f"fidelity={fidelity!r} is unknown; allowed: {', '.join(allowed)}")


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "WAFER_BACKENDS", "Backend", "get_backend"]
