"""The one registry of timing backends (:data:`wse_sim.timing.BACKENDS`) and the fidelity
names every entry point takes from it."""

import subprocess
import sys

import pytest

from wse_sim.errors import ConfigError
from wse_sim.timing import BACKENDS, WAFER_BACKENDS, get_backend
from wse_sim.timing.analytic import run_analytic
from wse_sim.timing.event import run_event
from wse_sim.timing.packet import run_packet


def test_registry_maps_names_to_the_backend_functions():
    assert dict(BACKENDS) == {"analytic": run_analytic, "event": run_event, "packet": run_packet}
    assert set(WAFER_BACKENDS) < set(BACKENDS) and "packet" not in WAFER_BACKENDS
    assert get_backend("event") is run_event


def test_unknown_or_refused_backend_is_one_line():
    msg = r"fidelity='warp' is unknown; allowed: analytic, event, packet$"
    with pytest.raises(ConfigError, match=msg):
        get_backend("warp")
    refused = r"'packet' is not supported here; allowed: analytic, event$"
    with pytest.raises(ConfigError, match=refused):
        get_backend("packet", WAFER_BACKENDS)
    # a known backend refused by a caller is not called unknown; the caller says why
    msg = r"not supported by training \(no streams\); training supports analytic, event$"
    with pytest.raises(ConfigError, match=msg):
        get_backend("packet", WAFER_BACKENDS, where="training", why="no streams")


def test_entry_points_take_their_names_from_the_registry():
    from gpt_workload.experiment_args import WAFER_FIDELITIES, check_fidelity
    from gpt_workload.simulate import simulate
    from gpt_workload.training.train import FIDELITIES as TRAIN

    assert TRAIN == WAFER_FIDELITIES == WAFER_BACKENDS
    assert check_fidelity("--fidelity", "packet") == "packet"
    with pytest.raises(ConfigError, match=", ".join(BACKENDS)):
        simulate("gpt-tiny", "grid8", fidelity="warp", check_sequences=0)


def test_analytic_import_does_not_load_the_packet_engine():
    """Backends load on first lookup: a sweep's analytic worker never imports the compiled
    fabric engine."""
    code = (
        "import sys, wse_sim.timing, wse_sim.timing.analytic; "
        "print('wse_sim.timing.packet' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
