"""The workload side of wse-sim (see the README). ``gpt_workload.generate`` is
:func:`gpt_workload.generation.job.generate`, imported on first use."""


def __getattr__(name: str):
    if name == "generate":
        from gpt_workload.generation.job import generate

        return generate
    raise AttributeError(f"module 'gpt_workload' has no attribute {name!r}")
