"""Weight-streaming lowering of a GPT forward pass onto the whole PE grid.

The layout (one choice among many; later mappings are other lowerings of the same ops):

* **Segments.** The tokens of a micro-batch (``b`` sequences x ``T`` tokens) are cut into
  segments of ``m`` tokens; a segment never straddles two sequences (``q = ceil(T / m)``
  segments per sequence). A segment is held by ``P`` PEs side by side in one grid row; PE
  ``j`` of the segment holds feature slice ``j`` (width ``F / P``) of every activation of
  width ``F``. ``P`` is ``n_head`` (one head per PE) or, on a grid narrower than ``n_head``,
  the largest divisor of ``n_head`` that fits, so each PE owns ``hp = n_head / P`` whole
  heads. Segments fill the grid column of segments by column of segments (segment ``g`` sits
  in row ``g % rows``, segment column ``g // rows``), so a sequence's segments are neighbours
  down a column and its K/V blocks travel vertically.
* **Activations stay resident** in PE SRAM: the residual stream ``x`` (``m x d/P`` per PE)
  lives across layers; each layer's temporaries live only while their kernels run.
* **Weights stream** from MemoryX, one layer per block, and are multicast over the fabric: a
  weight slice ``W[K_j, :]`` descends every grid column holding feature position ``j``
  (vertical links carry ``K/P x N`` elements); the fan-out to the columns is spread over the
  rows so horizontal links carry ``K x N / rows``.
* **GEMM** ``Y[M, N] = X[M, K] W[K, N]``: each PE multiplies its ``m x K/P`` tile by the
  weight rows passing by, one SIMD vector op of length ``n_c`` per (token, k, n-chunk), into
  an fp32 accumulator of ``m x n_c`` (``n_c`` as large as SRAM allows). Partial sums are
  reduce-scattered along the segment (a bidirectional chain) so PE ``j`` owns output slice
  ``j``: the busiest link carries ``(P - 1) m N / P`` fp32 values.
* **Attention** is head-parallel: PE ``j`` of a segment computes its heads for its ``m``
  queries against the K/V blocks of all earlier segments of its sequence, which are
  multicast down the chain; causal work grows with the segment's position, so PE classes are
  the positions ``0 .. q - 1``.
* **Micro-batches.** If a batch does not fit (too few segments or too little SRAM), it is
  split; each micro-batch streams every layer's weights again (as on Cerebras systems).

PE cost model (cycles): a SIMD vector op over ``L`` elements costs ``L / fmac_per_cycle``
arithmetic cycles plus ``pe.vector_op_overhead_cycles`` of setup ([STUDY] in
``shared/reference/wse_hardware.md``).
"""

from __future__ import annotations

import math

import numpy as np

from gpt_workload.config import GPTConfig
from gpt_workload.mappings.weight_streaming.head_split import (
    attention_kernel_classes,
    score_allreduce,
    score_receive_bytes,
)
from gpt_workload.mappings.weight_streaming.layout import WSLayout
from gpt_workload.mappings.weight_streaming.plan import (
    ACC_BYTES,
    COLOUR_KV,
    COLOUR_LN,
    COLOUR_PSUM,
    COLOUR_WEIGHTS,
    KERNELS_PER_LAYER,
    MAX_KERNELS,
    _block_bytes,
    _max_gemm_chunk,
    _segments_for,
    _Sizes,
    _weight_buffer_share,
    pipeline_chunks,
    plan_layout,
)
from gpt_workload.precision import bytes_per_element, check_precision
from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError, FitError
from wse_sim.program import (
    Kernel,
    LayoutGeometry,
    PEClass,
    Program,
    Transfer,
    WeightBlock,
    Workload,
)


#: elements of the segment-position block :func:`_class_maps` writes at a time (small
#: temporaries: no page faults on fresh memory, cache-friendly transposition)
_MAP_BLOCK = 1 << 16


def _spread_into(dst: np.ndarray, seg: np.ndarray, P: int) -> None:
    """Write a ``[rows, w]`` grid of per-segment values into ``dst`` (``[rows, w P]``, a view
    of a C-contiguous int16 map), each value repeated over its segment's ``P`` PEs."""
    if P == 1:
        dst[...] = seg
        return
    if 6 < P < 32:  # (the fastest of the three at each P, measured on wse2's grid)
        dst[...] = np.repeat(seg, P, axis=1)
        return
    rows, w = seg.shape
    view = np.lib.stride_tricks.as_strided(
        dst, shape=(rows, w, P), strides=(dst.strides[0], P * dst.itemsize, dst.itemsize)
    )
    if P <= 6:  # long strided copies beat a broadcast over a short last axis
        for j in range(P):
            view[:, :, j] = seg
    else:
        view[...] = seg[:, :, None]


def _mark_idle(grid: np.ndarray, full: int, rem: int, P: int) -> None:
    """-1 on the PEs of no segment: segments fill ``full`` whole segment columns and ``rem``
    rows of the next (column-major)."""
    grid[rem:, full * P : (full + 1) * P] = -1
    grid[:, (full + 1) * P :] = -1


def _class_maps(L: WSLayout, suffix: str = "") -> dict[str, np.ndarray]:
    """Per-PE class index grids: ``tokens`` (0 full segment, 1 last partial segment) and
    ``position`` (segment position in its sequence, for attention), keys + ``suffix``.

    Segment ``g`` sits in row ``g % rows``, segment column ``g // rows`` (a column-major grid
    of segments), each repeated over its ``P`` PEs; PEs of no segment are -1."""
    rows, cols, P, q, n = L.rows, L.cols, L.P, L.q, L.n_segments
    full, rem = divmod(n, rows)
    used = min(full + (rem > 0), L.segs_per_row)  # segment columns holding segments
    # position: segment g is at position g % q of its sequence; segment columns c0 .. c1 - 1
    # hold g = c0 rows .. c1 rows - 1, a slice of the periodic 0 .. q - 1, 0 .. q - 1, ...
    pos = np.empty((rows, cols), dtype=np.int16)
    step = max(1, min(_MAP_BLOCK // rows, used))
    periodic = np.tile(np.arange(q, dtype=np.int16), -(-(q - 1 + step * rows) // q))
    for c0 in range(0, used, step):
        c1 = min(c0 + step, used)
        start = c0 * rows % q
        seg = periodic[start : start + (c1 - c0) * rows].reshape(c1 - c0, rows).T
        _spread_into(pos[:, c0 * P : c1 * P], seg, P)
    _mark_idle(pos, full, rem, P)
    # tokens: 0 on the PEs of every segment, -1 on the others ...
    tok = np.zeros((rows, cols), dtype=np.int16)
    _mark_idle(tok, full, rem, P)
    if L.m_last != L.m:  # ... and 1 on those of each sequence's last, shorter segment
        g = np.arange(q - 1, n, q)
        tok[(g % rows)[:, None], (g // rows * P)[:, None] + np.arange(P)] = 1
    return {"tokens" + suffix: tok, "position" + suffix: pos}


def kv_multicast(L: WSLayout, kv_block: float) -> Transfer:
    """K/V blocks (``kv_block`` bytes per PE per segment) multicast down each sequence's chain
    of ``q`` segments: a PE of segment ``p`` receives the ``p`` earlier blocks, the busiest
    link (and RAMP) carries ``q - 1`` of them; ``q - 2`` PEs relay on the longest path."""
    return Transfer(
        "K/V multicast",
        "multicast_chain",
        "vertical",
        (L.q - 1) * kv_block,
        L.b * L.P * kv_block * (L.q - 1) * L.q / 2,
        hops=L.q - 1,
        turns=0,
        colour=COLOUR_KV,
        relays=max(L.q - 2, 0),
        ramp_bytes=(L.q - 1) * kv_block,
    )


def _kernel_name(mb: int, layer: int, op: str, n_layer: int) -> str:
    """``mb{mb}.L{layer}.{op}`` for a transformer layer's kernel, else ``mb{mb}.{op}``."""
    return f"mb{mb}.L{layer}.{op}" if 0 <= layer < n_layer else f"mb{mb}.{op}"


def _block_name(mb: int, name: str) -> str:
    """``mb{mb}.{name}``: a weight block's name in micro-batch ``mb``."""
    return f"mb{mb}.{name}"


def _renamed_kernel(k: Kernel, name: str, layer: int, mb: int, block_shift: int) -> Kernel:
    """``dataclasses.replace(k, name=..., layer=..., micro_batch=..., weight_block=...)``
    (the block shifted by ``block_shift`` when it has one) without the frozen dataclass's
    ``__init__``: every other field (and a cached ``critical_cycles``) is ``k``'s, the
    immutable classes and transfers shared."""
    d = k.__dict__.copy()
    d["name"], d["layer"], d["micro_batch"] = name, layer, mb
    if k.weight_block >= 0:
        d["weight_block"] = k.weight_block + block_shift
    out = object.__new__(Kernel)
    object.__setattr__(out, "__dict__", d)
    return out


class _Builder:
    """Accumulates kernels and weight blocks for one lowering.

    Repeats are derived, not lowered again (``derive``, default True): the kernels of a
    transformer layer depend on its index only through their name, ``layer`` and weight
    block, so layers ``1 .. n_layer - 1`` are layer 0's kernels renamed (:meth:`layers`);
    a builder's later micro-batches are its first one's renamed, with their weight blocks
    (:meth:`run_micro_batch`). ``derive = False`` lowers every layer and micro-batch (the
    reference the derived Program is tested equal to, field for field).
    """

    #: derive repeated layers and micro-batches from the first one (class docstring)
    derive = True

    def __init__(
        self,
        cfg: GPTConfig,
        arch: ArchConfig,
        L: WSLayout,
        precision: str,
        kernels: list[Kernel],
        blocks: list[WeightBlock],
        map_suffix: str = "",
        strategy=None,
    ):
        self.cfg, self.arch, self.L, self.precision = cfg, arch, L, precision
        # a mapping's replacement of :meth:`gemm` / :meth:`attention` (None: these)
        self.strategy = strategy
        self.sfx = map_suffix
        self.s = bytes_per_element(precision)
        self.W = arch.pe.fmac_per_cycle(precision)
        self.ov = arch.pe.vector_op_overhead_cycles
        self.z = _Sizes(cfg, L.P, L.m, self.s)
        self.kernels = kernels
        self.blocks = blocks
        self.n_full = L.b * (L.q - 1) + (L.b if L.m_last == L.m else 0)
        self.n_last = L.b if L.m_last != L.m else 0
        self.wbuf = _weight_buffer_share(cfg, arch, self.s)
        self.rows_used = min(L.rows, L.n_segments)
        self.mb = 0
        # (first kernel, end kernel, first block, end block, micro-batch) of the builder's
        # first lowered micro-batch (:meth:`run_micro_batch`)
        self._first_mb: tuple[int, int, int, int, int] | None = None
        self._layers_derived = False  # whether :meth:`layers` renamed layers 1 .. n_layer - 1
        self._attention_classes: tuple[PEClass, ...] | None = None
        self._attention_flops = 0.0

    # ----------------------------------------------------------------- helpers
    def block(self, name: str, nbytes: int) -> int:
        self.blocks.append(WeightBlock(len(self.blocks), _block_name(self.mb, name), int(nbytes)))
        return len(self.blocks) - 1

    def _derivable(self, kernels: list[Kernel]) -> bool:
        """Whether ``kernels`` are named as :meth:`add` names them (the renaming of
        :func:`_renamed_kernel` then names them as lowering them again would)."""
        n = self.cfg.n_layer
        return all(k.name == _kernel_name(k.micro_batch, k.layer, k.op, n) for k in kernels)

    def layers(self, lower_layer, layer_bytes: int) -> None:
        """Transformer layers ``0 .. n_layer - 1`` of the current micro-batch, each with its
        weight block ``layer{i}`` of ``layer_bytes``: ``lower_layer(layer, blk)`` lowers
        layer 0; the others are its kernels renamed (``derive``; else each is lowered)."""
        first: list[Kernel] | None = None
        blk0 = 0
        for layer in range(self.cfg.n_layer):
            blk = self.block(f"layer{layer}", layer_bytes)
            if first is None:
                start = len(self.kernels)
                lower_layer(layer, blk)
                if self.derive and self._derivable(self.kernels[start:]):
                    first, blk0 = self.kernels[start:], blk
                continue
            n, mb, shift = self.cfg.n_layer, self.mb, blk - blk0
            self._layers_derived = True
            self.kernels.extend(
                _renamed_kernel(k, _kernel_name(mb, layer, k.op, n), layer, mb, shift)
                for k in first
            )

    def run_micro_batch(self) -> None:
        """Lower micro-batch ``self.mb`` (:meth:`micro_batch`), or, with ``derive``, rename
        the kernels and weight blocks of the builder's first micro-batch when it has
        lowered one."""
        kernels, blocks = self.kernels, self.blocks
        if self.derive and self._first_mb is not None:
            k0, k1, b0, b1, mb0 = self._first_mb
            mb, n, shift = self.mb, self.cfg.n_layer, len(blocks) - b0
            cut = len(_block_name(mb0, ""))
            blocks.extend(
                WeightBlock(b.id + shift, _block_name(mb, b.name[cut:]), b.bytes)
                for b in blocks[b0:b1]
            )
            kernels.extend(
                _renamed_kernel(k, _kernel_name(mb, k.layer, k.op, n), k.layer, mb, shift)
                for k in kernels[k0:k1]
            )
            return
        k0, b0 = len(kernels), len(blocks)
        self._layers_derived = False
        self.micro_batch()
        n = self.cfg.n_layer
        # layers 1 .. n - 1 renamed from layer 0 (:meth:`layers`) are named right already
        lowered = [k for k in kernels[k0:] if not (self._layers_derived and 0 < k.layer < n)]
        if self._derivable(lowered) and all(
            b.name.startswith(_block_name(self.mb, "")) for b in blocks[b0:]
        ):
            self._first_mb = (k0, len(kernels), b0, len(blocks), self.mb)

    def token_classes(self, per_token) -> tuple[PEClass, ...]:
        """Classes of the ``tokens`` map: per_token(m_p) -> (busy, overhead, flops)."""
        out = [PEClass(0, self.n_full * self.L.P, *per_token(self.L.m))]
        if self.n_last:
            out.append(PEClass(1, self.n_last * self.L.P, *per_token(self.L.m_last)))
        return tuple(out)

    def add(
        self,
        op: str,
        layer: int,
        classes,
        cmap: str,
        transfers=(),
        block=-1,
        wbytes=0,
        sram=0,
        flops=None,
        n_chunks=8,
    ) -> None:
        if flops is None:
            flops = sum(c.flops * c.count for c in classes)
        self.kernels.append(
            Kernel(
                _kernel_name(self.mb, layer, op, self.cfg.n_layer),
                op,
                layer,
                self.mb,
                tuple(classes),
                cmap + self.sfx,
                tuple(transfers),
                block,
                int(wbytes),
                int(sram + self.wbuf),
                float(flops),
                n_chunks,
            )
        )

    def weight_multicast(self, K: int, N: int) -> Transfer:
        """2-D multicast of W[K, N]: slice j down its columns, fan-out spread over the rows.

        The path is a column: each column's slice enters at its north-edge port and descends
        (``rows_used`` hops, no turn: the geometry the packet backend simulates); every PE
        takes its slice in through its RAMP (``ramp_bytes``)."""
        L, s = self.L, self.s
        kt = K / L.P
        vertical = kt * N * s
        horizontal = K * N * s / self.rows_used
        return Transfer(
            "weight multicast",
            "multicast_2d",
            "vertical",
            max(vertical, horizontal),
            L.n_active_pe * kt * N * s,
            hops=self.rows_used,
            turns=0,
            colour=COLOUR_WEIGHTS,
            ramp_bytes=vertical,
        )

    def reduce_scatter(self, N: int) -> Transfer:
        """Partial sums m x N (fp32) reduce-scattered along each segment's bidirectional chain.

        A middle PE of the chain takes in, through its RAMP, the running sums of every slice
        passing it both ways: ``P + 1`` slices (``ramp_bytes``); ``P - 2`` PEs combine and
        re-send on the longest path (``relays``)."""
        L = self.L
        nt = math.ceil(N / L.P)
        slice_bytes = L.m * nt * ACC_BYTES
        max_link = (L.P - 1) * slice_bytes
        total = L.n_segments * L.P * (L.P - 1) * L.m * nt * ACC_BYTES
        return Transfer(
            "partial-sum reduce-scatter",
            "reduce_scatter_row",
            "horizontal",
            max_link,
            total,
            hops=L.P - 1,
            turns=0,
            colour=COLOUR_PSUM,
            relays=max(L.P - 2, 0),
            ramp_bytes=(L.P + 1 if L.P >= 3 else L.P - 1) * slice_bytes,
        )

    def row_allreduce(self, values_per_token: int) -> Transfer:
        """Chain all-reduce of a few fp32 values per token along each segment (a middle PE
        takes in the running sum and the broadcast result: twice through its RAMP; each link
        carries them once per direction, the sum east and the result west)."""
        L = self.L
        per = 2 * values_per_token * L.m * ACC_BYTES  # reduce one way, broadcast back
        return Transfer(
            "segment all-reduce",
            "allreduce_row",
            "horizontal",
            per / 2,
            L.n_segments * 2 * (L.P - 1) * values_per_token * L.m * ACC_BYTES,
            hops=2 * (L.P - 1),
            turns=0,
            colour=COLOUR_LN,
            relays=max(L.P - 1, 0),
            ramp_bytes=per if L.P >= 3 else per / 2 * (L.P - 1),
        )

    # ------------------------------------------------------------------- ops
    def gemm(
        self,
        op: str,
        layer: int,
        K: int,
        N: int,
        blk: int,
        live: int,
        bias: bool = True,
        extra_ops_per_chunk: int = 0,
    ) -> None:
        """Weight-streaming GEMM [M, K] x [K, N] (+ bias) -> [M, N] in the segment layout.

        A mapping's strategy with a ``gemm`` method lowers it instead (same arguments)."""
        if getattr(self.strategy, "gemm", None) is not None:
            return self.strategy.gemm(self, op, layer, K, N, blk, live, bias, extra_ops_per_chunk)
        L, W, ov, s = self.L, self.W, self.ov, self.s
        kt = K // L.P
        budget = self.arch.pe.sram_usable_bytes - self.wbuf - live
        # no longer than needed for 98 % SIMD efficiency (n_c / W >= 49 x overhead), so the
        # accumulator does not take SRAM it cannot use
        n_c = min(_max_gemm_chunk(budget, L.m, N, s), max(int(49 * ov * W), int(16 * W), 1))
        if n_c < 1:
            raise FitError(
                f"kernel {op} of {self.cfg.name}: no SRAM left for a GEMM "
                f"accumulator ({budget} B free per PE)"
            )
        chunks = math.ceil(N / n_c)
        nt = math.ceil(N / L.P)

        def per(mp: int):
            busy = mp * kt * N / W + extra_ops_per_chunk * mp * N / W
            ops = chunks * kt * mp + extra_ops_per_chunk * chunks * mp
            if bias:
                busy += mp * nt / W
                ops += mp
            return busy, ops * ov, 2.0 * mp * kt * N

        wbytes = (K * N + (N if bias else 0)) * s
        sram = live + L.m * n_c * ACC_BYTES + 2 * n_c * s
        self.add(
            op,
            layer,
            self.token_classes(per),
            "tokens",
            (self.weight_multicast(K, N), self.reduce_scatter(N)),
            blk,
            wbytes,
            sram,
            n_chunks=pipeline_chunks(chunks, kt),
        )

    def elementwise(
        self,
        op: str,
        layer: int,
        width: int,
        passes: float,
        live: int,
        transfers=(),
        blk=-1,
        wbytes=0,
    ) -> None:
        """An op of ``passes`` vector passes over each token's ``width``-element slice."""
        W, ov = self.W, self.ov

        def per(mp: int):
            return mp * passes * width / W, mp * math.ceil(passes) * ov, 0.0

        self.add(
            op, layer, self.token_classes(per), "tokens", transfers, blk, wbytes, live, flops=0.0
        )

    def layernorm(self, op: str, layer: int, blk: int, live: int) -> None:
        """LayerNorm over d split across the segment: local sums, chain all-reduce of the
        sum and the sum of squared deviations, normalise, scale and shift (6 passes)."""
        z = self.z
        self.elementwise(
            op, layer, z.f, 6, live, (self.row_allreduce(2),), blk, 2 * self.cfg.d_model * self.s
        )

    def attention(self, layer: int, live: int) -> None:
        """Head-parallel causal attention; class = segment position in its sequence.

        A mapping's strategy with an ``attention`` method lowers it instead."""
        if getattr(self.strategy, "attention", None) is not None:
            return self.strategy.attention(self, layer, live)
        L, W, ov, s, z = self.L, self.W, self.ov, self.s, self.z
        # the classes are the same in every layer (a function of the layout): built once
        classes = self._attention_classes
        if classes is None:
            classes, self._attention_flops, self._attention_crit = attention_kernel_classes(
                L, z.dh, W, ov
            )
            self._attention_classes = classes
        # K and V of the PE's features: hp whole heads, or d_head / k of one (= d / P)
        kv_block = L.m * 2 * z.f * s
        kv = kv_multicast(L, kv_block)
        scores = score_allreduce(L)
        sram = live + 2 * kv_block + L.m * L.m * ACC_BYTES + 3 * L.m * ACC_BYTES
        sram += score_receive_bytes(L.m, L.pes_per_head)
        self.add(
            "attention",
            layer,
            classes,
            "position",
            (kv,) if scores is None else (kv, scores),
            sram=sram,
            flops=self._attention_flops,
            n_chunks=max(min(L.q, 16), 1),
        )
        # the slowest class is the same in every layer: Kernel.critical_cycles, computed once
        self.kernels[-1].__dict__["critical_cycles"] = self._attention_crit

    # --------------------------------------------------------------- program
    def micro_batch(self) -> None:
        cfg, z, s, L = self.cfg, self.z, self.s, self.L
        d, ff, V, T = cfg.d_model, cfg.d_ff, cfg.vocab_size, L.seq_len
        tokens = L.b * T
        # embedding: stream wte (or only the rows the tokens use, if fewer) and wpe[:T]
        wte_rows = min(V, tokens)
        blk = self.block("embed", (wte_rows * d + T * d) * s)
        mc = Transfer(
            "table multicast",
            "multicast_2d",
            "vertical",
            (wte_rows + T) * z.f * s,
            L.n_active_pe * (wte_rows + T) * z.f * s,
            hops=self.rows_used,
            turns=0,
            colour=COLOUR_WEIGHTS,
            ramp_bytes=(wte_rows + T) * z.f * s,
        )
        self.elementwise("embedding", -1, z.f, 2, z.x, (mc,), blk, (wte_rows * d + T * d) * s)

        def layer_kernels(layer: int, blk: int) -> None:
            self.layernorm("layernorm_1", layer, blk, z.x + z.h)
            self.gemm("qkv", layer, d, 3 * d, blk, z.x + z.h + z.qkv)
            self.attention(layer, z.x + z.qkv + z.att)
            self.gemm("attn_proj", layer, d, d, blk, z.x + z.att + z.h)
            self.elementwise("residual_1", layer, z.f, 1, z.x + z.h)
            self.layernorm("layernorm_2", layer, blk, z.x + z.h)
            self.gemm("ffn_up", layer, d, ff, blk, z.x + z.h + z.hid)
            self.elementwise("gelu", layer, z.ff, 8, z.x + z.hid)
            self.gemm("ffn_down", layer, ff, d, blk, z.x + z.hid + z.h)
            self.elementwise("residual_2", layer, z.f, 1, z.x + z.h)

        self.layers(layer_kernels, _block_bytes(cfg, s, T)[1])
        blk = self.block("head", _block_bytes(cfg, s, T)[2])
        self.layernorm("layernorm_f", cfg.n_layer, blk, z.x + z.h)
        # tied LM head fused with the cross-entropy statistics (running max, sum of exp,
        # target logit, argmax per token: 4 extra passes per chunk); logits never stored
        self.gemm(
            "lm_head",
            cfg.n_layer,
            d,
            V,
            blk,
            z.x + z.h + 4 * L.m * ACC_BYTES,
            bias=False,
            extra_ops_per_chunk=4,
        )
        self.elementwise(
            "cross_entropy", cfg.n_layer, 4, 2, z.x + 4 * L.m * ACC_BYTES, (self.row_allreduce(3),)
        )


def lower_weight_streaming(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str = "fp16",
    *,
    P: int | None = None,
    m: int | None = None,
    strategy=None,
    spec: str = "weight_streaming",
    builder=None,
    derive: bool = True,
) -> Program:
    """Lower a GPT forward pass over ``batch`` x ``seq_len`` tokens to a :class:`Program`.

    Micro-batches run one after another, each streaming every layer's weights; a last,
    smaller micro-batch (``batch`` not a multiple of the micro-batch) gets its own layout,
    spread as wide as the grid allows.

    ``P``, ``m``: layout overrides (:func:`plan_layout`); ``strategy``: an object whose
    ``gemm`` / ``attention`` methods (either may be None) replace :meth:`_Builder.gemm` /
    :meth:`_Builder.attention` (see :mod:`gpt_workload.mappings.weight_streaming`);
    ``spec``: the mapping spec stored in ``Program.mapping``; ``builder``: a
    :class:`_Builder` subclass whose ``micro_batch`` lowers the model (None: ``_Builder``,
    gpt2's layer; :class:`gpt_workload.mappings.weight_streaming.graph_builder.GraphBuilder` walks
    the op graph); ``derive``: repeated layers and micro-batches renamed from the first
    one (:class:`_Builder`; False: each lowered, the same Program, slower).

    Raises:
        ConfigError: bad batch, seq_len or precision.
        FitError: the model does not fit even one sequence per micro-batch.
    """
    check_precision(precision)
    L = plan_layout(cfg, arch, batch, seq_len, precision, P=P, m=m)
    builder = builder or _Builder
    per_layer = getattr(builder, "kernels_per_layer", lambda c: KERNELS_PER_LAYER)(cfg)
    n_kernels = L.n_micro * (per_layer * cfg.n_layer + 4)
    if n_kernels > MAX_KERNELS:
        raise ConfigError(
            f"batch={batch} x n_layer={cfg.n_layer} needs {L.n_micro} micro-batch(es) x "
            f"{per_layer * cfg.n_layer + 4} kernels = {n_kernels:,} kernels; at most "
            f"{MAX_KERNELS:,} are simulated: lower the batch (one micro-batch holds {L.b})"
        )
    kernels: list[Kernel] = []
    blocks: list[WeightBlock] = []
    maps = _class_maps(L)
    b_last = batch - (L.n_micro - 1) * L.b
    main = builder(cfg, arch, L, precision, kernels, blocks, strategy=strategy)
    last = main
    if b_last != L.b:
        m_l = _segments_for(b_last, seq_len, L.rows * L.segs_per_row, m)[0]
        L_last = WSLayout(
            P=L.P,
            hp=L.hp,
            m=m_l,
            n_seq=b_last,
            n_micro=L.n_micro,
            batch=batch,
            seq_len=seq_len,
            rows=L.rows,
            cols=L.cols,
            segs_per_row=L.segs_per_row,
            pes_per_head=L.pes_per_head,
        )
        last = builder(cfg, arch, L_last, precision, kernels, blocks, "_last", strategy)
        maps.update(_class_maps(L_last, "_last"))
    for bld in {main, last}:
        bld.derive = derive
    for mb in range(L.n_micro):
        bld = last if mb == L.n_micro - 1 else main
        bld.mb = mb
        bld.run_micro_batch()
    return Program(
        f"{cfg.name}/{spec}",
        arch.wafer.rows,
        arch.wafer.cols,
        precision,
        kernels,
        blocks,
        maps,
        L.geometry(),
        mapping=spec,
        workload=Workload(batch, seq_len, L.n_micro, b_last),
    )
