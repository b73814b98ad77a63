"""The one validator each for integers, token-id arrays and worker counts.

Every entry point (``simulate()``, ``train()``, ``generate()``, the ``wse-sim`` commands, the
experiments' options, training's data loading, generation's requests) checks these values
here, so a bad value gets the same one-line :class:`~wse_sim.errors.ConfigError` wherever it
is given. A message names the option or argument, the value and what is allowed:

* an API argument reads ``batch=0 is not allowed: expected an integer in 1..1000000``;
* a command-line option (a name starting with ``-``) reads
  ``--batch 0 is not allowed: expected an integer in 1..1000000``.

This module imports nothing of the project but :mod:`wse_sim.errors` (and NumPy), so any
module may use it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from wse_sim.errors import ConfigError

__all__ = [
    "check_int",
    "check_token_ids",
    "check_workers",
    "default_workers",
    "load_token_file",
    "max_workers",
    "not_allowed",
]


def not_allowed(name: str, value: object, allowed: str) -> ConfigError:
    """The error for ``value`` of ``name``: ``--opt 'v' is not allowed: expected ALLOWED`` for
    an option (``name`` starts with ``-``), ``name='v' is not allowed: expected ALLOWED``
    otherwise."""
    label = f"{name} {value!r}" if name.startswith("-") else f"{name}={value!r}"
    return ConfigError(f"{label} is not allowed: expected {allowed}")


def _is_int(value: Any) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def check_int(
    name: str,
    value: Any,
    lo: int,
    hi: int | None = None,
    note: str = "",
    *,
    allow_none: bool = False,
) -> int | None:
    """``value`` as a Python int in ``[lo, hi]`` (``hi`` None: no upper bound).

    Python and NumPy integers are accepted; bools, floats (``2.0``) and strings are not.

    Args:
        name: the argument (``batch``) or option (``--batch``) named in the message.
        value: the value to check.
        lo, hi: the allowed range, both ends included.
        allow_none: None is allowed (and returned) as "use the default".
        note: added to the message in parentheses, e.g. where the upper bound comes from.

    Returns:
        ``int(value)``, or None when ``allow_none`` and ``value`` is None.

    Raises:
        ConfigError: ``name=value is not allowed: expected an integer in lo..hi (note)``.
    """
    if value is None and allow_none:
        return None
    if _is_int(value) and lo <= value and (hi is None or value <= hi):
        return int(value)
    allowed = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
    raise not_allowed(name, value, allowed + (f" ({note})" if note else ""))


def load_token_file(name: str, path: str | os.PathLike) -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (given as option ``name``), loaded without
    pickle; the caller checks it with :func:`check_token_ids`.

    Raises:
        ConfigError: the file cannot be read (its reason), or it is not a NumPy array file
            of plain numbers (a text or pickled file, an object array, truncated data).
    """
    label = f"{name} {os.fspath(path)!r}"
    try:
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{label} cannot be read ({reason}); expected a .npy file") from None
    except (ValueError, EOFError) as exc:
        text = " ".join(str(exc).split())
        why = ("it holds text, pickled data or an object array" if "pickle" in text
               else text or type(exc).__name__)  # fmt: skip
        raise ConfigError(
            f"{label} is not a NumPy int array (.npy) file ({why}); save the token ids with "
            "numpy.save"
        ) from None


def check_token_ids(
    tokens: Any,
    *,
    name: str = "tokens",
    vocab_size: int | None = None,
    min_len: int = 1,
    max_len: int | None = None,
    why_min: str = "",
    allow_1d: bool = False,
) -> np.ndarray:
    """``tokens`` as a C-contiguous int64 ``[K, T]`` array of token ids.

    Args:
        tokens: an array-like of integer token ids ``[K, T]`` (``[T]`` too with ``allow_1d``:
            one row).
        name: the argument or option named in the message.
        vocab_size: every id must be in ``[0, vocab_size)`` (None: not checked).
        min_len, max_len: ``T`` must be in ``[min_len, max_len]`` (``max_len`` is the model's
            ``n_positions``; None: not checked).
        why_min: why ``T`` needs ``min_len``, added to the message (e.g. "a loss needs a next
            token").
        allow_1d: accept ``[T]`` as one row.

    Returns:
        int64 ``[K, T]`` with ``K >= 1`` and ``T >= min_len``.

    Raises:
        ConfigError: one line naming ``name`` and, in this order: a shape that is not
            ``[K, T]`` with ``K, T >= 1``, a dtype that is not an integer, ``T`` out of range,
            the first id outside the vocabulary.
    """
    arr = np.asarray(tokens)
    shape = arr.shape
    if allow_1d and arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        want = "[T] or [K, T]" if allow_1d else "2-D [K, T]"
        raise ConfigError(f"{name} has shape {shape}: expected a non-empty {want} array")
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"{name} has dtype {arr.dtype}: expected an integer dtype")
    t = arr.shape[1]
    if t < min_len or (max_len is not None and t > max_len):
        if max_len is None:
            allowed = f">= {min_len}"
        elif min_len <= 1:
            allowed = f"<= n_positions={max_len}"
        else:
            allowed = f"in [{min_len}, n_positions={max_len}]"
        why = f" ({why_min})" if why_min else ""
        raise ConfigError(f"{name} has length T={t}: must be {allowed}{why}")
    if vocab_size is not None:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ConfigError(
                f"{name} contains id {bad}: must be in [0, vocab_size={vocab_size})"
            )
    return np.ascontiguousarray(arr, dtype=np.int64)


def default_workers() -> int:
    """Cores this process may use (its CPU affinity where the OS has one), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(os.cpu_count() or 1, 1)


def max_workers() -> int:
    """Most local worker processes a sweep or experiment starts: 4 per core this process may
    use (a point is CPU-bound; beyond that, start-up and memory cost and nothing runs
    faster)."""
    return 4 * default_workers()


def check_workers(name: str, workers: Any) -> int | None:
    """None (one local worker per core) or a worker count in ``0..max_workers()`` (0 = run
    in this process, without Dask).

    Raises:
        ConfigError: ``--workers 100000 is not allowed: expected an integer in 0..8
            (0 = in this process; at most 4 per core: 8)``.
    """
    if workers is None:
        return None
    hi = max_workers()
    return check_int(name, workers, 0, hi, note=f"0 = in this process; at most 4 per core: {hi}")
