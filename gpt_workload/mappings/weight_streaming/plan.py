"""Layout planning of the weight-streaming lowering: how many PEs a segment spans (``P``),
how many tokens it holds (``m``), how a batch splits into micro-batches that fit SRAM, and the
per-PE sizes and weight-block bytes the plan is checked with. The layout itself is
:class:`gpt_workload.mappings.weight_streaming.layout.WSLayout`; the kernels are built by
:mod:`gpt_workload.mappings.weight_streaming.builder` (whose docstring describes the layout).
"""

from __future__ import annotations

import math

from gpt_workload.checks import check_int
from gpt_workload.config import GPTConfig
from gpt_workload.graph_sizes import family_block_bytes
from gpt_workload.mappings.weight_streaming.head_split import (
    check_pes_per_segment,
    pes_per_head,
    score_receive_bytes,
)
from gpt_workload.mappings.weight_streaming.layout import WSLayout
from gpt_workload.precision import bytes_per_element
from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError, FitError

ACC_BYTES = 4  # fp32 accumulators and partial sums
KERNELS_PER_LAYER = 10  # ln_1, qkv, attention, proj, residual, ln_2, fc, gelu, fc2, residual
# Most pipeline chunks a streamed GEMM kernel is simulated in (see :func:`pipeline_chunks`).
PIPELINE_CHUNKS_CAP = 256
MAX_KERNELS = 50_000  # a larger Program takes minutes to lower and time: refused

# colours used by the lowering (static routes); see wse_sim fabric docs
COLOUR_WEIGHTS, COLOUR_PSUM, COLOUR_KV, COLOUR_LN = 0, 1, 2, 3


def pipeline_chunks(chunks: int, rows_per_chunk: int) -> int:
    """Pipeline chunks of a streamed GEMM kernel: its real unit of compute/fabric overlap.

    A PE's unit of work is one weight-row piece (``n_c`` elements of row ``k`` of one
    accumulator chunk): the lowering double-buffers exactly one piece in SRAM
    (``2 n_c`` elements), so a piece is used as soon as it has arrived and the overlap is
    piece by piece: ``chunks x rows_per_chunk`` pieces. The backends time a two-stage pipeline
    of ``n`` chunks as ``max(compute, fabric) + min(compute, fabric) / n``; ``n`` is capped at
    :data:`PIPELINE_CHUNKS_CAP` (the event backend's cost grows with ``n``), which leaves a
    fill of at most ``1 / 256`` of the shorter stage, and is at least ``chunks`` (the partial
    sums of an accumulator chunk leave when it is complete).

    Args:
        chunks: accumulator chunks of the kernel (``ceil(N / n_c)``).
        rows_per_chunk: weight rows each PE contracts per chunk (``K / P``).

    Returns:
        The kernel's ``n_chunks``.
    """
    return max(chunks, min(chunks * max(rows_per_chunk, 1), PIPELINE_CHUNKS_CAP), 1)


def choose_P(cfg: GPTConfig, cols: int) -> int:
    """PEs per segment: ``n_head`` if the grid is that wide, else its largest divisor that is.

    Raises:
        FitError: never for ``cols >= 1`` (1 always divides); kept for clarity.
    """
    for p in range(min(cfg.n_head, cols), 0, -1):
        if cfg.n_head % p == 0:
            return p
    raise FitError(f"grid of {cols} columns cannot hold a segment")  # pragma: no cover


def _segments_for(b: int, T: int, n_avail: int, m_fixed: int | None = None) -> tuple[int, int, int]:
    """(m, q, m_last) spreading ``b`` sequences of ``T`` tokens over at most ``n_avail``
    segments, as wide as possible (or in segments of ``m_fixed`` tokens when given)."""
    q_max = max(n_avail // b, 1)
    m = math.ceil(T / min(q_max, T)) if m_fixed is None else min(m_fixed, T)
    q = math.ceil(T / m)
    return m, q, T - (q - 1) * m


class _Sizes:
    """Per-PE byte sizes of the layout's tensors for one (m, P, precision)."""

    def __init__(self, cfg: GPTConfig, P: int, m: int, s: int):
        self.f = cfg.d_model // P  # features per PE
        self.ff = math.ceil(cfg.d_ff / P)  # FFN hidden per PE
        self.dh = cfg.d_head
        self.x = m * self.f * s  # residual stream (resident)
        self.h = m * self.f * s  # LayerNorm output
        # Q | K | V (K and V kv_dim wide: d for multi-head attention, smaller with GQA)
        self.qkv = m * math.ceil((cfg.d_model + 2 * cfg.kv_dim) / P) * s
        self.att = m * self.f * s
        self.hid = m * self.ff * s
        self.s = s
        self.m = m


def _weight_buffer_share(cfg: GPTConfig, arch: ArchConfig, s: int) -> int:
    """Bytes per PE for ``weight_buffer_slots`` buffered blocks, spread over every PE of the
    grid (idle PEs hold buffers too)."""
    return math.ceil(arch.io.weight_buffer_slots * max(_block_bytes(cfg, s, 1)) / arch.n_pe)


def _block_bytes(cfg: GPTConfig, s: int, T: int) -> list[int]:
    """Bytes of the embedding block (wte + wpe[:T]), one layer block, and the head block
    (other families: :func:`gpt_workload.graph_sizes.family_block_bytes`)."""
    if cfg.family != "gpt2":
        return family_block_bytes(cfg, s, T)
    d, ff, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    layer = (2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + d * ff + ff + ff * d + d) * s
    return [(V * d + T * d) * s, layer, (2 * d + V * d) * s]


def _max_gemm_chunk(budget: int, m: int, N: int, s: int) -> int:
    """Largest accumulator chunk n_c <= N with ``m n_c 4 + 2 n_c s <= budget`` (0 if none)."""
    return max(min(N, budget // (m * ACC_BYTES + 2 * s)), 0)


def _sram_need(
    cfg: GPTConfig, arch: ArchConfig, P: int, m: int, s: int, min_chunk: int
) -> tuple[int, str]:
    """Peak SRAM per PE of a layer at ``m`` tokens per segment with ``min_chunk`` GEMM chunks,
    and the kernel where it peaks."""
    z = _Sizes(cfg, P, m, s)
    wb = _weight_buffer_share(cfg, arch, s)
    acc = m * min_chunk * ACC_BYTES + 2 * min_chunk * s
    kv_buf = 2 * 2 * m * z.f * s + m * m * ACC_BYTES + 3 * m * ACC_BYTES
    kv_buf += score_receive_bytes(m, pes_per_head(cfg, P))
    need = {
        "qkv": z.x + z.h + z.qkv + acc,
        "attention": z.x + z.qkv + z.att + kv_buf,
        # a gated MLP holds the gate's output while the up GEMM runs
        "fc": z.x + z.h + z.hid * (2 if cfg.gated_mlp else 1) + acc,
        "fc2": z.x + z.hid + z.h + acc,
    }
    op = max(need, key=need.get)
    return need[op] + wb, op


def check_workload(cfg: GPTConfig, batch, seq_len) -> None:
    """Check a workload's shape.

    Raises:
        ConfigError: ``batch`` not an integer >= 1, or ``seq_len`` not in
            ``1 .. n_positions``.
    """
    check_int("batch", batch, 1)
    check_int("seq_len", seq_len, 1, cfg.n_positions, note="n_positions")


def plan_layout(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str,
    min_chunk: int = 64,
    P: int | None = None,
    m: int | None = None,
) -> WSLayout:
    """Choose P, m and the micro-batch split for ``batch`` sequences of ``seq_len`` tokens.

    The fewest micro-batches whose per-PE SRAM need (at the GEMM chunk ``min_chunk``) fits
    ``pe.sram_bytes - pe.sram_reserved_bytes``. ``P`` (PEs per segment: a divisor of
    ``n_head``, or ``n_head x k`` with ``k`` dividing ``d_head`` (heads split over ``k``
    PEs), no wider than the grid;
    :func:`gpt_workload.mappings.weight_streaming.head_split.allowed_pes_per_segment`)
    and ``m`` (tokens per segment) override the automatic choices (:func:`choose_P`; as wide
    a spread as the grid allows).

    Raises:
        ConfigError: batch or seq_len out of range.
        FitError: not even one sequence fits; the message names the kernel and the bytes.
    """
    check_workload(cfg, batch, seq_len)
    s = bytes_per_element(precision)
    rows, cols = arch.wafer.rows, arch.wafer.cols
    if P is None:
        P = choose_P(cfg, cols)
    else:
        check_pes_per_segment(cfg, cols, P)
    if m is not None and not 1 <= m <= seq_len:
        raise ConfigError(f"tokens_per_segment={m} must be in 1..{seq_len} (seq_len)")
    m_fixed = m
    spr = cols // P
    n_avail = rows * spr
    usable = arch.pe.sram_usable_bytes

    def attempt(n_micro: int):
        b = math.ceil(batch / n_micro)
        m, q, m_last = _segments_for(b, seq_len, n_avail, m_fixed)
        need, op = _sram_need(cfg, arch, P, m, s, min(min_chunk, cfg.d_model))
        return b * q <= n_avail and need <= usable, (b, m, q, m_last, need, op)

    # the fewest micro-batches that fit: fitting is monotone in their number (fewer
    # sequences per micro-batch -> fewer segments and shorter ones -> less SRAM)
    ok, got = attempt(1)
    if not ok:
        ok, got = attempt(batch)
        if not ok:
            b, m, q, m_last, need, op = got
            why = (
                f"needs {need} B per PE at kernel {op} (tokens per segment m={m}, "
                f"weight buffers {arch.io.weight_buffer_slots} x "
                f"{max(_block_bytes(cfg, s, 1)) / 1e6:.1f} MB spread over {arch.n_pe} PEs) "
                f"but a PE has {usable} B usable (pe.sram_bytes - pe.sram_reserved_bytes); "
                f"short by {need - usable} B"
            )
            if b * q > n_avail:
                why = f"needs {q} segments of {P} PEs but the grid holds {n_avail}"
            raise FitError(
                f"model {cfg.name} does not fit one sequence of {seq_len} tokens on "
                f"{arch.name} ({rows}x{cols} PEs, {precision}): {why}"
            )
        lo, hi = 1, batch  # attempt(lo) fails, attempt(hi) fits
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok_mid, got_mid = attempt(mid)
            if ok_mid:
                hi, got = mid, got_mid
            else:
                lo = mid
    b, m, q, m_last, _, _ = got
    n_micro = math.ceil(batch / b)
    return WSLayout(
        P=P,
        hp=max(cfg.n_head // P, 1),
        m=m,
        n_seq=b,
        n_micro=n_micro,
        batch=batch,
        seq_len=seq_len,
        rows=rows,
        cols=cols,
        segs_per_row=spr,
        pes_per_head=pes_per_head(cfg, P),
    )


def max_batch_single_micro(
    cfg: GPTConfig,
    arch: ArchConfig,
    seq_len: int,
    precision: str,
    P: int | None = None,
    m: int | None = None,
) -> int:
    """Largest batch that runs as one micro-batch (binary search over ``plan_layout``;
    ``P``, ``m`` as there)."""

    def one(b: int) -> bool:
        return plan_layout(cfg, arch, b, seq_len, precision, P=P, m=m).n_micro == 1

    lo, hi = 1, 1
    plan_layout(cfg, arch, 1, seq_len, precision, P=P, m=m)  # raises FitError if nothing fits
    while one(hi * 2) and hi < 1 << 20:
        hi *= 2
    lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if one(mid):
            lo = mid
        else:
            hi = mid
    return lo
