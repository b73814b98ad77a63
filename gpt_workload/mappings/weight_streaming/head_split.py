"""Segments wider than ``n_head``: the weight-delivery side of the weight-streaming layout.

**Why.** A weight-streaming GEMM sends weight row slice ``W[K_j, :]`` down every grid column
holding feature position ``j`` of a segment
(:meth:`gpt_workload.mappings.weight_streaming.builder._Builder.
weight_multicast`), so distinct weights enter the wafer over ``P`` columns, one 32-bit link
each: the layout absorbs at most ``P x link_bytes_per_cycle x clock`` bytes/s of weights
(:func:`weight_entry_bytes_per_s`). With ``P`` a divisor of ``n_head`` that is 53 GB/s for
Cerebras-GPT 111M on WSE-2 (``P = 12``) and 70 GB/s for GPT-J (``P = 16``), below the
150 GB/s MemoryX delivers (``io.ingress_bytes_per_s``; ``shared/reference/wafer_mappings.md``
section 3, [S4]). A segment must be free to span as many columns as the I/O rate needs.

**What the published layout supports.** Section 3 of ``wafer_mappings.md`` ([S2], [S3],
summarising Cerebras' HC34 / IEEE Micro description of GEMM on the mesh): activations stay
in SRAM with the *hidden dimension along x* and batch x sequence along y; the weight rows of
each column's hidden slice are broadcast down that column (each PE column gets different
weight rows); partial sums are reduced along each row and the output is left in the input's
distribution. That is the segment GEMM as it is: ``K`` split over the segment's columns,
``N`` reduce-scattered back over them. Nothing in it ties the width of the hidden split to
the number of heads, and it describes no other split of the weight matrix (each column
receives whole rows ``W[k, :]``; no 2-D block of ``W`` per PE is described), so a second
weight-split axis would be our invention. Read as a "2-D split", the published layout splits
the *activations* two ways (hidden along x, batch x sequence along y) and each weight
matrix over x only, by its rows on the way in and by its output columns on the way out (the
reduce-scatter); that is the segment layout already, and the only way it takes in more
distinct weights is a wider hidden split, i.e. a larger ``P``. What a hidden split wider than ``n_head`` implies
for attention is forced by the same description: the hidden (feature) slice of a PE is
``d / P`` contiguous features, so with ``P = k n_head`` each head's ``d_head`` features lie
on ``k`` neighbouring PEs. We therefore choose **heads split over PEs** (option (a) of the
design note): ``P`` is a divisor of ``n_head`` (``hp = n_head / P`` whole heads per PE) or
``k n_head`` with ``k`` dividing ``d_head`` (``d_head / k`` features of one head per PE;
:func:`allowed_pes_per_segment`).

**Attention with split heads** (:func:`attention_kernel_classes`, :func:`score_allreduce`): each PE
forms the partial ``q . k`` over its ``d_head / k`` features for every causal (query, key)
pair; the ``k`` partials of a head are all-reduced along the head's PEs (a chain: partial
sums travel east, PE ``0`` first, and the totals are broadcast back west: ``m x n_keys``
fp32 scores per segment and head, pattern ``allreduce_head``); every PE then runs the same
softmax on the full scores and multiplies by its own ``d_head / k`` features of ``V``
(``softmax(S) V`` stays local per feature). The numerics follow that order
(:func:`gpt_workload.kernels.split_heads.attention_split`). SRAM: each PE also holds the running
partial scores of one ``m x m`` key block it receives (:func:`score_receive_bytes`).
Rotate-half RoPE (llama, qwen2) pairs features ``d_head / 2`` apart, which a split head
places on different PEs: they swap them (:func:`rotary_exchange`, pattern
``exchange_head``); GPT-J's interleaved pairs stay on one PE. The ``packet`` backend expands
both patterns (:mod:`wse_sim.timing.packet`); ``analytic`` and ``event`` time them from
their bytes, hops and relays as every other transfer.

Which ``P`` a run uses is searched (:mod:`gpt_workload.mappings.weight_streaming.search`), or
``pes_per_segment=io`` takes :func:`io_pes_per_segment`.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from wse_sim.errors import ConfigError
from wse_sim.program import PEClass, Transfer

__all__ = [
    "allowed_pes_per_segment",
    "attention_kernel_classes",
    "check_pes_per_segment",
    "clear_class_cache",
    "io_pes_per_segment",
    "pes_per_head",
    "rotary_exchange",
    "score_allreduce",
    "score_receive_bytes",
    "weight_entry_bytes_per_s",
]

ACC_BYTES = 4  # fp32 scores
COLOUR_SCORES = 1  # the partial-sum colour: no GEMM reduction runs during attention


def allowed_pes_per_segment(cfg, cols: int) -> list[int]:
    """PEs per segment the weight-streaming layout can use on a grid ``cols`` wide.

    The divisors of ``n_head`` (whole heads per PE) and ``k n_head`` for each divisor ``k >=
    2`` of ``d_head`` (each head split over ``k`` PEs), those ``<= cols``; ascending.
    """
    H, dh = cfg.n_head, cfg.d_head
    out = {p for p in range(1, min(H, cols) + 1) if H % p == 0}
    out |= {H * k for k in range(2, dh + 1) if dh % k == 0 and H * k <= cols}
    return sorted(out)


def check_pes_per_segment(cfg, cols: int, P) -> int:
    """Validate ``P`` (``pes_per_segment``) for ``cfg`` on a grid ``cols`` wide.

    Returns:
        ``P`` as an int.

    Raises:
        ConfigError: ``P`` is not one of :func:`allowed_pes_per_segment` (the message names
            the value and lists the allowed ones).
    """
    ok = allowed_pes_per_segment(cfg, cols)
    if isinstance(P, bool) or not isinstance(P, int) or P not in ok:
        raise ConfigError(
            f"pes_per_segment={P!r} must divide n_head={cfg.n_head}, or be n_head x k with "
            f"k dividing d_head={cfg.d_head}, and fit the grid's {cols} columns; allowed: "
            f"{', '.join(map(str, ok))}"
        )
    return P


def pes_per_head(cfg, P: int) -> int:
    """PEs one head's features are split over: ``P / n_head`` when ``P > n_head``, else 1."""
    return P // cfg.n_head if P > cfg.n_head else 1


def weight_entry_bytes_per_s(arch, P: int) -> float:
    """Distinct-weight bytes/s a segment of ``P`` columns can take in: one link per column,
    ``P x fabric.link_bytes_per_cycle x pe.clock_hz`` (each column receives only its own
    feature rows; every other copy of them is the same bytes)."""
    return P * arch.fabric.link_bytes_per_cycle * arch.pe.clock_hz


def io_pes_per_segment(cfg, arch) -> int:
    """The narrowest allowed ``P`` whose columns absorb the MemoryX ingress rate
    (``weight_entry_bytes_per_s >= io.ingress_bytes_per_s``), else the widest allowed."""
    ok = allowed_pes_per_segment(cfg, arch.wafer.cols)
    for p in ok:
        if weight_entry_bytes_per_s(arch, p) >= arch.io.ingress_bytes_per_s:
            return p
    return ok[-1]


def score_receive_bytes(m: int, k: int) -> int:
    """Extra SRAM per PE of a head split over ``k > 1`` PEs: the running partial scores of
    one ``m x m`` key block received from the previous PE of the head's chain (fp32), held
    beside the PE's own; 0 for whole heads."""
    return m * m * ACC_BYTES if k > 1 else 0


def _pair_counts(L) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per segment position ``p = 0 .. q - 1`` (arrays ``[q]``): its queries ``m_p`` (``m``,
    ``m_last`` at ``p = q - 1``; int64), causal (query, key) pairs ``m_p p m + m_p (m_p + 1)
    / 2`` (float64) and (query, key block) pairs ``m_p (p + 1)`` (int64).

    Every intermediate is an integer below 2**53 until the one division, so each value is
    bit for bit what the same expression gives position by position in Python floats."""
    q, m = L.q, L.m
    p = np.arange(q, dtype=np.int64)
    mp = np.full(q, m, dtype=np.int64)
    mp[-1] = L.m_last
    return mp, mp * p * m + mp * (mp + 1) / 2, mp * (p + 1)


#: most attention PE classes :func:`attention_kernel_classes` keeps for reuse, in all (about
#: 150 bytes each): the layouts of a sweep's last ~100 lowerings at ~1,000 positions each,
#: so points that differ only in what the classes do not read (SRAM size, I/O rate) share
#: them
CLASS_CACHE_BUDGET = 1 << 17
_class_cache: OrderedDict = OrderedDict()
_class_cache_size = 0
_class_cache_lock = threading.Lock()


def clear_class_cache() -> None:
    """Forget the attention classes kept for reuse (:data:`CLASS_CACHE_BUDGET`)."""
    global _class_cache_size
    with _class_cache_lock:
        _class_cache.clear()
        _class_cache_size = 0


def attention_kernel_classes(
    L, d_head: int, W: float, ov: float
) -> tuple[tuple[PEClass, ...], float, float]:
    """``(classes, flops, slowest)`` of head-parallel causal attention on layout ``L``: its PE
    classes (class = segment position), their FLOPs and the slowest class's cycles.

    Per PE, ``hp`` whole heads (``L.pes_per_head == 1``) or ``1 / k`` of one head (``k =
    L.pes_per_head``): per causal pair a ``q . k`` vector op over the PE's ``d_head / k``
    features and a ``P V`` axpy over them, 3 softmax element ops on the full scores (every PE
    of a split head runs the same softmax); per (query, key block) 3 vector-op setups, and
    with split heads one more: adding the incoming partial scores of the block. FLOPs: the
    PE's share of the model's ``4 d_head`` per pair and head.

    ``flops`` is summed over the wafer (``sum(c.flops * c.count for c in classes)``),
    ``slowest`` is ``max(c.cycles for c in classes)``
    (:attr:`wse_sim.program.Kernel.critical_cycles`).

    Computed for all positions at once on float64 arrays, each value by the same operations
    in the same order as position by position (:func:`_pair_counts`; the sum over the classes
    in their order, as Python's ``sum``), so bit for bit the same. The result (immutable) is
    kept for the next call with the same inputs, least recently used first out, up to
    :data:`CLASS_CACHE_BUDGET` classes in all.
    """
    global _class_cache_size
    key = (L.q, L.m, L.m_last, L.b, L.P, L.hp, L.pes_per_head, d_head, W, ov)
    with _class_cache_lock:
        got = _class_cache.get(key)
        if got is not None:
            _class_cache.move_to_end(key)
            return got
    got = _attention_kernel_classes(L, d_head, W, ov)
    with _class_cache_lock:
        if key not in _class_cache and L.q <= CLASS_CACHE_BUDGET:
            _class_cache[key] = got
            _class_cache_size += L.q
            while _class_cache_size > CLASS_CACHE_BUDGET:
                _, old = _class_cache.popitem(last=False)
                _class_cache_size -= len(old[0])
    return got


def _attention_kernel_classes(L, d_head, W, ov):
    """:func:`attention_kernel_classes` computed."""
    k = L.pes_per_head
    hp = L.hp
    dk = d_head / k
    split = 1 if k > 1 else 0
    _, pairs, blocks = _pair_counts(L)
    hpp = hp * pairs
    busy = hpp * (2 * dk + 3 + split) / W
    ops = hp * (2 * pairs + (3 + split) * blocks) * ov
    flops = hpp * 4.0 * dk
    count = L.b * L.P
    # PEClass(p, count, busy, overhead, flops) without the frozen dataclass's __init__ (up to
    # seq_len classes): the same fields set the same way, so equal instances
    classes = []
    new, put, add = object.__new__, object.__setattr__, classes.append
    for p, b, o, f in zip(range(L.q), busy.tolist(), ops.tolist(), flops.tolist()):
        c = new(PEClass)
        put(c, "index", p)
        put(c, "count", count)
        put(c, "busy_cycles", b)
        put(c, "overhead_cycles", o)
        put(c, "flops", f)
        add(c)
    return tuple(classes), sum((flops * count).tolist()), max((busy + ops).tolist())


def score_allreduce(L) -> Transfer | None:
    """The partial ``q . k`` scores of each split head all-reduced along its ``k`` PEs
    (None for whole heads).

    A chain as :meth:`gpt_workload.mappings.weight_streaming.builder._Builder.row_allreduce`:
    running sums east, the
    totals broadcast back west; each link of a head's chain carries every causal score of
    the segment once per direction (fp32), the busiest being the last segment position's;
    a middle PE takes both through its RAMP; ``k - 1`` PEs add and re-send on the way.
    """
    k = L.pes_per_head
    if k <= 1:
        return None
    per_pos = (_pair_counts(L)[1] * ACC_BYTES).tolist()
    worst = max(per_pos)
    groups = L.P // k  # heads per segment
    return Transfer(
        "head score all-reduce",
        "allreduce_head",
        "horizontal",
        worst,
        L.b * groups * 2 * (k - 1) * sum(per_pos),
        hops=2 * (k - 1),
        turns=0,
        colour=COLOUR_SCORES,
        relays=k - 1,
        ramp_bytes=2 * worst if k >= 3 else worst,
    )


def head_split_summary(cfg, arch, P: int) -> dict:
    """JSON-safe description of the weight delivery of a ``P``-wide segment: PEs per head,
    the distinct-weight entry rate (bytes/s) and its ratio to the MemoryX ingress rate."""
    rate = weight_entry_bytes_per_s(arch, P)
    return {
        "pes_per_head": pes_per_head(cfg, P),
        "weight_entry_bytes_per_s": rate,
        "weight_entry_vs_ingress": rate / arch.io.ingress_bytes_per_s,
    }



def rotary_exchange(L, width_pe: int, rotary_dim: int, d_head: int, s: int) -> Transfer | None:
    """Rotate-half RoPE on a head split over ``k`` PEs: feature ``i`` pairs with ``i +
    rotary_dim / 2``, which lies ``k_r = k rotary_dim / (2 d_head)`` PEs away when that is
    a whole number of PEs >= 1 (PE ``j`` of the head swaps its rotated features with PE
    ``j +- k_r``); None for whole heads or when both halves of every pair are on one PE.

    Each PE sends and receives its ``width_pe x rotary_dim / d_head`` rotated features of
    its ``m`` tokens (storage precision ``s`` bytes) over ``k_r`` hops; the busiest link
    carries the swaps of ``k_r`` PEs crossing it one way.
    """
    k = L.pes_per_head
    half_pes = k * rotary_dim / (2 * d_head)
    if k <= 1 or half_pes < 1:
        return None
    hops = math.ceil(half_pes)
    piece = L.m * width_pe * (rotary_dim / d_head) * s
    return Transfer(
        "rotary partner exchange",
        "exchange_head",
        "horizontal",
        hops * piece,
        L.n_segments * (L.P // k) * k * hops * piece,
        hops=hops,
        turns=0,
        colour=COLOUR_SCORES,
        ramp_bytes=piece,
    )
