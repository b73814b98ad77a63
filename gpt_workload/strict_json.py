"""Strict JSON (RFC 8259) for every report wse-sim writes: no bare ``NaN`` or ``Infinity``.

Python's :mod:`json` writes a non-finite float as ``NaN``/``Infinity``, which strict parsers
(JavaScript's ``JSON.parse``, ``jq``, Go, Rust's serde_json) reject. The rule used for every
report (``wse-sim run --json``, ``wse-sim train --json``, traces):

* a number that is NaN or +-inf is written as ``null``;
* the top-level object gains ``"nonfinite_values"``: the JSON path of each such number
  (``"numerics.loss"``, ``"numerics.steps[0].grad_norm"``) mapped to ``"nan"``, ``"inf"``
  or ``"-inf"``, so nothing is lost and a reader can tell a missing value from an overflow.

NumPy scalars and arrays become plain JSON numbers and lists.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ["dumps", "to_strict"]


def _walk(o: Any, path: str, bad: dict[str, str]) -> Any:
    if isinstance(o, dict):
        return {str(k): _walk(v, f"{path}.{k}" if path else str(k), bad) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_walk(v, f"{path}[{i}]", bad) for i, v in enumerate(o)]
    if isinstance(o, np.ndarray):
        return _walk(o.tolist(), path, bad)
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        if math.isfinite(f):
            return f
        bad[path] = "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")
        return None
    return o


def to_strict(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, NumPy values) that strict JSON can hold: every
    non-finite number becomes None and, when ``obj`` is a dict, its path and value are
    listed under the added top-level key ``nonfinite_values`` (absent when there is none)."""
    bad: dict[str, str] = {}
    out = _walk(obj, "", bad)
    if bad and isinstance(out, dict):
        out["nonfinite_values"] = bad
    return out


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(to_strict(obj), allow_nan=False, **kwargs)``.

    Raises:
        TypeError: a value JSON cannot hold (not a dict, list, str, number, bool or None).
    """
    return json.dumps(to_strict(obj), allow_nan=False, **kwargs)
