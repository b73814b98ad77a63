"""Choosing the next token from a decode step's logits: greedy, or temperature and top-k
sampling with a seed.

* Greedy (``temperature = 0``): the arg-max, the lowest index among ties (as
  ``numpy.argmax`` and Hugging Face ``generate(do_sample=False)``).
* Sampling (``temperature > 0``): the logits, in float64, divided by the temperature (after
  subtracting their maximum); with ``top_k`` only the ``k`` largest are kept (ties at the boundary: lowest indices first; a
  ``top_k`` past the vocabulary keeps all); softmax; the token is the first index whose
  cumulative probability exceeds ``u * total`` for one uniform draw ``u`` in ``[0, 1)``.
  ``top_k = 1`` is therefore greedy, whatever the temperature.

Each request draws from its own generator, ``numpy.random.default_rng([seed, request])``, one
draw per step, so a request's tokens depend on the seed and its index only, not on which other
requests share its decode steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpt_workload.checks import check_int
from gpt_workload.experiment_args import check_float

__all__ = ["Sampling", "request_generators", "sample_token"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen (see the module docstring).

    Attributes:
        temperature: 0 for greedy; > 0 to sample (finite).
        top_k: keep only the ``top_k`` most likely tokens when sampling (None: all); ignored
            by greedy.

    Raises:
        ConfigError: a negative or non-finite temperature, or a ``top_k`` that is not an
            integer >= 1 (one line naming the field).
    """

    temperature: float = 0.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        """Validate the fields."""
        object.__setattr__(
            self, "temperature", check_float("sampling.temperature", self.temperature, 0.0)
        )
        if self.top_k is not None:
            object.__setattr__(self, "top_k", check_int("sampling.top_k", self.top_k, 1))

    @property
    def greedy(self) -> bool:
        """True for the arg-max (``temperature == 0``); ``top_k = 1`` samples from one token,
        which gives the arg-max too."""
        return self.temperature == 0.0

    def describe(self) -> str:
        """``"greedy"`` or ``"temperature T, top-k K"`` (for reports)."""
        if self.temperature == 0.0:
            return "greedy"
        return f"temperature {self.temperature:g}" + (
            f", top-k {self.top_k}" if self.top_k is not None else ""
        )


def request_generators(seed: int, n: int) -> list[np.random.Generator]:
    """One generator per request: ``default_rng([seed, i])`` for ``i = 0..n-1``.

    Raises:
        ConfigError: ``seed`` not an integer >= 0.
    """
    seed = check_int("seed", seed, 0)
    return [np.random.default_rng([seed, i]) for i in range(n)]


def sample_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token from one step's logits ``[V]`` (see the module docstring).

    Greedy draws nothing from ``rng``; sampling draws one uniform number.
    """
    z = np.asarray(logits, dtype=np.float64)
    if sampling.greedy:
        return int(np.argmax(z))
    if sampling.top_k is not None and sampling.top_k < z.shape[0]:
        keep = np.argsort(-z, kind="stable")[: sampling.top_k]
        masked = np.full_like(z, -np.inf)
        masked[keep] = z[keep]
        z = masked
    # the maximum subtracted before dividing: no overflow at a tiny temperature
    p = np.exp((z - z.max()) / sampling.temperature)
    c = np.cumsum(p)
    u = rng.random()
    return int(min(np.searchsorted(c, u * c[-1], side="right"), z.shape[0] - 1))
