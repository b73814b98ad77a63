"""Parameter sweeps: a TOML spec expanded into points, each simulated once, resumably.

The package, by idea:

* :mod:`~gpt_workload.sweep.spec`: the spec (``[sweep]``, ``[base]``, ``[grid]``,
  ``[[zip]]``; the format is documented there), its validation and expansion into points;
* :mod:`~gpt_workload.sweep.point`: one point simulated (timing only) and reduced to a row of
  :data:`METRICS`;
* :mod:`~gpt_workload.sweep.cache`: what points share (lowered Programs keyed by what the
  lowering reads; arch presets parsed once), kept warm per process;
* :mod:`~gpt_workload.sweep.store`: finished rows stored as they arrive, so that a killed
  sweep loses nothing and a rerun skips them; the final table (Parquet or CSV, pyarrow);
* :mod:`~gpt_workload.sweep.runner`: the points run in this process or on a Dask cluster;

Everything public is re-exported here (``from gpt_workload.sweep import run_sweep``). Sweeps
never import the CLI (``gpt_workload.cli``).
"""

from gpt_workload.sweep.point import (
    METRICS,
    error_row,
    fewer_collections,
    metrics_of,
    one_line,
    run_point,
    run_points,
    simulate_point,
)
from gpt_workload.sweep.runner import (
    LOST_WORKERS_S,
    WORKER_WAIT_S,
    ClusterError,
    Progress,
    SweepResult,
    chunk_size,
    default_workers,
    describe_client,
    max_workers,
    open_client,
    resolve_output,
    run_sweep,
)
from gpt_workload.sweep.spec import (
    MAX_POINTS,
    MODEL_FIELDS,
    RUN_DEFAULTS,
    SCHEMA_VERSION,
    PointConfig,
    SweepSpec,
    check_values,
    load_spec,
    point_key,
)
from gpt_workload.sweep.store import (
    RowStore,
    atomic_write_bytes,
    build_table,
    read_table,
    write_table,
)

__all__ = [
    "LOST_WORKERS_S",
    "MAX_POINTS",
    "METRICS",
    "MODEL_FIELDS",
    "RUN_DEFAULTS",
    "SCHEMA_VERSION",
    "WORKER_WAIT_S",
    "ClusterError",
    "PointConfig",
    "Progress",
    "RowStore",
    "SweepResult",
    "SweepSpec",
    "atomic_write_bytes",
    "build_table",
    "check_values",
    "chunk_size",
    "default_workers",
    "describe_client",
    "error_row",
    "fewer_collections",
    "load_spec",
    "max_workers",
    "metrics_of",
    "one_line",
    "open_client",
    "point_key",
    "read_table",
    "resolve_output",
    "run_point",
    "run_points",
    "run_sweep",
    "simulate_point",
    "write_table",
]
