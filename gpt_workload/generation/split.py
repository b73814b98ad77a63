"""How a decode step's work is split over PEs: the contract between the decode lowering
(timing) and the decode numerics.

* :class:`GemvSplit`: a ``K x N`` weight matrix tiled over a ``rows x cols`` block of PEs
  (PE ``(r, c)`` holds rows ``k_bounds[r]:k_bounds[r+1]`` and columns
  ``n_bounds[c]:n_bounds[c+1]``). A matrix-vector product ``y = x W`` broadcasts the slice
  ``x[k_bounds[r]:k_bounds[r+1]]`` to row ``r``, each PE computes its partial ``x_r W_rc``,
  and the ``rows`` partials of output slice ``c`` are combined in ``reduce`` order. With
  ``rows = R, cols = C`` both greater than one this is WaferLLM's MeshGEMV (He et al., OSDI
  2025, arXiv 2502.04563); ``cols = 1`` or ``rows = 1`` are the plain row / column layouts.
* :class:`KVSplit`: the cached keys and values of one K/V head spread over ``pes`` PEs in
  contiguous token blocks; a new token's attention computes a partial softmax per PE (its
  block's maximum score, sum of exponentials and exp-weighted sum of values) and the
  partials are combined in ``reduce`` order (the log-sum-exp merge), as flash-decoding does.
* :class:`DecodePlan`: the splits of one model's decode step, keyed by the op graph's op
  names (:mod:`gpt_workload.graph`).

Reduction orders (both deterministic, so numerics can follow the fabric exactly):
``chain`` combines partial 0 with 1, the result with 2, ... (a line reduce along a row or
column); ``tree`` combines neighbours pairwise with the stride doubling each stage (partial
``i`` absorbs ``i + s`` for ``i % 2s == 0``; a binary-tree reduce); ``ktree`` (with ``k``
phases) is WaferLLM's K-tree, in the order its line collective sends
(:func:`wse_sim.fabric.lines.ktree_messages`): chains into each group's middle partial, then
into the middle of those, the sum ending at :func:`combine_root` (float addition commutes,
so ``dst (+) src`` equals the wafer's ``src (+) dst`` bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpt_workload.checks import check_int
from wse_sim.errors import ConfigError
from wse_sim.fabric.lines import ktree_algorithm, ktree_messages, ktree_root

__all__ = [
    "REDUCE_ORDERS", "DecodePlan", "GemvSplit", "KVSplit", "bounds", "combine_order",
    "combine_root",
]  # fmt: skip

#: Allowed orders of combining partials.
REDUCE_ORDERS = ("chain", "tree", "ktree")


def bounds(n: int, parts: int) -> np.ndarray:
    """Boundaries ``[0, ..., n]`` (length ``parts + 1``) of ``n`` items split into ``parts``
    contiguous pieces as ``numpy.array_split`` does (the first ``n % parts`` one larger).

    Raises:
        ConfigError: ``parts < 1`` or ``n < 0``.
    """
    if parts < 1 or n < 0:
        raise ConfigError(f"cannot split {n} items into {parts} parts; parts must be >= 1")
    q, r = divmod(n, parts)
    sizes = np.full(parts, q, dtype=np.int64)
    sizes[:r] += 1
    return np.concatenate(([0], np.cumsum(sizes)))


def combine_order(parts: int, reduce: str, k: int = 2) -> list[tuple[int, int]]:
    """The ``(dst, src)`` pairs, in order, that combine ``parts`` partials into partial
    :func:`combine_root` (``dst <- dst (+) src``); ``k``: the phases of a ``ktree``.

    Raises:
        ConfigError: ``reduce`` not in :data:`REDUCE_ORDERS`, or ``k`` out of range.
    """
    if reduce == "ktree":
        return [(dst, src) for src, dst in ktree_messages(parts, k)]
    if reduce == "chain":
        return [(0, i) for i in range(1, parts)]
    if reduce == "tree":
        out, s = [], 1
        while s < parts:
            out += [(i, i + s) for i in range(0, parts, 2 * s) if i + s < parts]
            s *= 2
        return out
    raise ConfigError(f"reduce order {reduce!r} unknown; allowed: {', '.join(REDUCE_ORDERS)}")


def combine_root(parts: int, reduce: str, k: int = 2) -> int:
    """The partial that holds the sum after :func:`combine_order` (0 but for ``ktree``)."""
    combine_order(1, reduce, k)
    return ktree_root(parts, k) if reduce == "ktree" else 0


@dataclass(frozen=True)
class GemvSplit:
    """A ``K x N`` weight matrix tiled over ``rows x cols`` PEs (see the module docstring);
    ``k``: the phases of a ``ktree`` reduce (ignored by the others).

    Raises:
        ConfigError: ``rows`` or ``cols`` < 1, an unknown ``reduce``, or ``k`` out of range.
    """

    rows: int
    cols: int
    reduce: str = "chain"
    k: int = 2

    def __post_init__(self):
        check_int("rows", self.rows, 1)
        check_int("cols", self.cols, 1)
        combine_order(1, self.reduce)
        ktree_algorithm(self.k)

    def k_bounds(self, K: int) -> np.ndarray:
        """Row boundaries of the ``K`` (reduction) dimension, length ``rows + 1``."""
        return bounds(K, self.rows)

    def n_bounds(self, N: int) -> np.ndarray:
        """Column boundaries of the ``N`` (output) dimension, length ``cols + 1``."""
        return bounds(N, self.cols)


@dataclass(frozen=True)
class KVSplit:
    """The KV cache of one K/V head spread over ``pes`` PEs in contiguous token blocks of
    ``block_tokens`` (the last PE holds the rest), combined in ``reduce`` order (``k``: the
    phases of a ``ktree``).

    Raises:
        ConfigError: ``pes`` or ``block_tokens`` < 1, an unknown ``reduce``, or ``k`` out of
            range.
    """

    pes: int
    block_tokens: int
    reduce: str = "chain"
    k: int = 2

    def __post_init__(self):
        check_int("pes", self.pes, 1)
        check_int("block_tokens", self.block_tokens, 1)
        combine_order(1, self.reduce)
        ktree_algorithm(self.k)

    def token_bounds(self, n_tokens: int) -> np.ndarray:
        """Boundaries of the ``n_tokens`` cached tokens over the PEs that hold any: blocks of
        ``block_tokens``, at most ``pes`` blocks.

        Raises:
            ConfigError: ``n_tokens`` exceeds ``pes * block_tokens`` (the cache is full).
        """
        if n_tokens > self.pes * self.block_tokens:
            raise ConfigError(
                f"KV cache holds {self.pes * self.block_tokens} tokens per head "
                f"({self.pes} PEs x {self.block_tokens}); {n_tokens} requested"
            )
        edges = list(range(0, n_tokens, self.block_tokens)) + [n_tokens]
        return np.asarray(edges if n_tokens else [0], dtype=np.int64)


@dataclass(frozen=True)
class DecodePlan:
    """The splits of one decode step: ``gemv[op_name]`` for every linear / lm_head op of the
    graph (ops missing from the dict are computed whole on one PE), and ``kv`` for
    attention."""

    gemv: dict[str, GemvSplit] = field(default_factory=dict)
    kv: KVSplit = KVSplit(1, 1 << 30)

    def split_of(self, op_name: str) -> GemvSplit:
        """The split of ``op_name`` (``GemvSplit(1, 1)`` when the plan has none)."""
        return self.gemv.get(op_name, GemvSplit(1, 1))
