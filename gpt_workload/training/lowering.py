"""Weight-streaming lowering of one GPT *training step* (forward + backward) to a Program.

Built on the forward lowering (:func:`gpt_workload.lowering.lower_weight_streaming`, whose
segment layout and kernels are reused as they are) and on its layout planner
(:func:`gpt_workload.lowering.plan_layout`). One micro-batch of a step is:

1. **Forward**: the forward Program's kernels, unchanged except that the activations the
   backward needs stay resident (see *activations* below).
2. **Backward**, head first, then layers ``n_layer - 1 .. 0``, then the embedding:

   * the head block (final LayerNorm + tied ``wte``) is still in its on-wafer buffer after
     the forward's LM head, so it is *not* streamed again; the logits were never stored
     (the forward fuses the cross-entropy statistics into the LM head), so the backward
     recomputes them (``lm_head_recompute``), then ``dX = dlogits W^T`` and
     ``dW = h^T dlogits``; kernels run one after another (a fused kernel would overlap them;
     the work is the same);
   * every layer's weights stream in **again** from MemoryX (new weight blocks, reverse layer
     order) and each of its four GEMMs ``Y = X W`` gives two backward GEMMs:

     - ``dX = dY W^T`` (``*_dX``): the weight multicast of the forward (the slice
       ``W[:, N_j]^T`` descends the columns of feature slice ``j``) and a reduce-scatter of
       the ``m x K`` fp32 partial sums along the segment;
     - ``dW = X^T dY`` (``*_dW``): ``dY`` is all-gathered along the segment, each PE
       multiplies its ``X[:, K_j]`` slice by it (a partial ``dW[K_j, :]`` over its ``m``
       tokens, one fp32 row chunk at a time, sent on as soon as it is complete), the
       partials are reduced over the tokens, i.e. over the segments down each
       grid column (a chain reduce: the busiest vertical link carries ``K/P x N`` fp32) and
       then over the segment columns along the rows (spread over the rows:
       ``K N 4 / rows`` per horizontal link), and the reduced gradient streams **out** to
       MemoryX (``grad_bytes``, in the training precision) over ``io.egress_bytes_per_s``;

   * attention backward costs 2x the forward attention (FLOPs, cycles; the K/V blocks travel
     down the chain again and dK/dV travel back);
   * LayerNorm backward: 10 vector passes and the same 2-value segment all-reduce as the
     forward (its gamma/beta gradients, ``2 d`` values, stream out with it); GELU backward:
     10 passes over the FFN hidden slice; each residual backward: 1 pass; the embedding
     backward: 2 passes plus the token reduce of its ``(rows used + T) x d`` gradient.

   Activation gradients stay on the wafer (the residual-stream gradient ``m x d/P`` per PE
   is resident through the backward).

**Activations: stored or recomputed, by SRAM capacity.** ``store``: every layer keeps its
inputs of the backward (``x, ln_1(x), q k v, attention out, x + attn, ln_2, fc out, gelu out``
= ``8 m d/P + 2 m d_ff/P`` elements per PE) for the whole step, if ``n_layer`` of those next
to the forward's peak SRAM need and the gradient buffer fit ``pe.sram_usable_bytes``. Else
``recompute``: only each layer's input ``x`` is kept (a checkpoint), and the backward of
layer ``l`` first re-runs layer ``l``'s forward kernels (``*.recompute.*`` kernels, which
consume the re-streamed weight block; the backward GEMMs then use the weights still in their
buffer). If even that does not fit, the micro-batch is made smaller.

**Gradient accumulation over micro-batches happens in MemoryX**: each micro-batch streams
its weight gradients out, MemoryX adds them to the running sum (on the wafer they would need
``4 N`` bytes, more than the SRAM of a large model), and only the last micro-batch's
gradient blocks trigger the optimizer update (``GradientBlock.optimizer_params``).

**Simulated micro-batches.** Micro-batches of the main layout are identical, so at most
``max_simulated`` (>= 3) are lowered: the first two of the main layout and the last (which
may be smaller); the step time of ``n`` micro-batches is extrapolated by the train API as
``T_sim + (n - n_sim) x (end of micro-batch 1 - end of micro-batch 0)`` (stated in
``Program.meta``).

Data parallel over ``systems`` (SwarmX): the lowering is of one system's share of the batch;
``meta["systems"]`` tells the backends to route gradients through SwarmX
(:func:`wse_sim.timing.common.gradient_path`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gpt_workload.config import GPTConfig
from gpt_workload.lowering import (
    ACC_BYTES,
    MAX_KERNELS,
    WSLayout,
    lower_weight_streaming,
    pipeline_chunks,
    plan_layout,
)
from gpt_workload.precision import bytes_per_element, check_precision
from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError, FitError
from wse_sim.program import GradientBlock, Kernel, PEClass, Program, Transfer, WeightBlock

#: colours of the backward's own transfers (the forward's use 0-3)
COLOUR_DY, COLOUR_DW = 4, 5
#: vector passes of the elementwise backward ops (see the module docstring)
LN_BWD_PASSES, GELU_BWD_PASSES, RESIDUAL_BWD_PASSES, EMBED_BWD_PASSES = 10, 10, 1, 2
#: the layer's four GEMMs: (forward op, K, N) as functions of the config, in forward order
GEMMS = ("qkv", "attn_proj", "ffn_up", "ffn_down")


def _gemm_dims(cfg: GPTConfig, op: str) -> tuple[int, int]:
    """(K, N) of forward GEMM ``op``: ``Y[M, N] = X[M, K] W[K, N]``."""
    d, ff = cfg.d_model, cfg.d_ff
    return {"qkv": (d, 3 * d), "attn_proj": (d, d), "ffn_up": (d, ff), "ffn_down": (ff, d)}[op]


def layer_params(cfg: GPTConfig) -> int:
    """Parameters of one transformer layer (weights, biases, two LayerNorms)."""
    d, ff = cfg.d_model, cfg.d_ff
    return 4 * d + 3 * d * d + 3 * d + d * d + d + d * ff + ff + ff * d + d


@dataclass(frozen=True)
class TrainingPlan:
    """How one system's share of a step is cut and where its activations live.

    Attributes:
        layout: the main micro-batch's segment layout (``layout.b`` sequences).
        batch: sequences of this system per step; n_micro: micro-batches;
        b_last: sequences of the last micro-batch.
        policy: ``"store"`` or ``"recompute"`` (see the module docstring).
        sram_need_bytes: per-PE SRAM need of the chosen policy (forward peak + stored
            activations + gradient buffer); ``sram_need_store_bytes`` that of ``store``;
        sram_usable_bytes: what a PE has.
        stored_bytes_per_pe: activation bytes kept per PE through the step.
    """

    layout: WSLayout
    batch: int
    n_micro: int
    b_last: int
    policy: str
    sram_need_bytes: int
    sram_need_store_bytes: int
    sram_usable_bytes: int
    stored_bytes_per_pe: int

    def describe(self) -> dict:
        """JSON-safe summary for the report."""
        return {
            "sequences_per_micro_batch": self.layout.b,
            "micro_batches": self.n_micro,
            "sequences_in_last_micro_batch": self.b_last,
            "activations": self.policy,
            "sram_need_bytes": self.sram_need_bytes,
            "sram_need_if_stored_bytes": self.sram_need_store_bytes,
            "sram_usable_bytes": self.sram_usable_bytes,
            "stored_activation_bytes_per_pe": self.stored_bytes_per_pe,
            "gradient_accumulation": "in MemoryX (each micro-batch streams its gradients out)",
        }


def _act_sizes(cfg: GPTConfig, L: WSLayout, s: int) -> tuple[int, int, int]:
    """(per-layer stored bytes, layer-input checkpoint bytes, residual-gradient bytes) per PE."""
    f = cfg.d_model // L.P
    ff = math.ceil(cfg.d_ff / L.P)
    per_layer = (8 * L.m * f + 2 * L.m * ff) * s
    x = L.m * f * s
    return per_layer, x, x


def _fwd_peak(cfg: GPTConfig, arch: ArchConfig, L: WSLayout, T: int, s: int) -> int:
    """Peak per-PE SRAM of the forward at layout ``L`` with the smallest useful GEMM
    accumulator chunk (64 columns): the live tensors of the widest kernel (the same sets as
    :func:`gpt_workload.lowering.plan_layout` checks), the accumulator, and the share of the
    ``io.weight_buffer_slots`` weight buffers spread over every PE. (The forward kernels
    themselves size their chunk to the SRAM left; with stored activations they would pick a
    smaller one.)"""
    f, ff, m = cfg.d_model // L.P, math.ceil(cfg.d_ff / L.P), L.m
    x = m * f * s
    chunk = min(64, cfg.d_model)
    acc = m * chunk * ACC_BYTES + 2 * chunk * s
    kv_buf = 2 * 2 * x + m * m * ACC_BYTES + 3 * m * ACC_BYTES
    live = max(x + x + 3 * x, x + 3 * x + x + kv_buf - acc, x + x + m * ff * s)
    d, V = cfg.d_model, cfg.vocab_size
    biggest = max(layer_params(cfg), (V + T) * d, 2 * d + V * d) * s
    wbuf = math.ceil(arch.io.weight_buffer_slots * biggest / arch.n_pe)
    return live + acc + wbuf


def plan_training(
    cfg: GPTConfig, arch: ArchConfig, batch: int, seq_len: int, precision: str
) -> TrainingPlan:
    """Micro-batch size and activation policy for ``batch`` sequences on one system.

    The fewest micro-batches ``n`` whose micro-batch of ``ceil(batch / n)`` sequences fits
    one forward layout (:func:`gpt_workload.lowering.plan_layout` with one micro-batch) and
    whose training SRAM need fits with ``recompute``; picks ``store`` when it fits. ``n`` is
    found by bisection over ``1 .. batch`` (the need grows with the micro-batch), so no count
    is skipped; the micro-batches are then balanced (``ceil(batch / n)`` each, the last
    one the rest).

    Raises:
        ConfigError: bad batch or seq_len. FitError: not even one sequence fits.
    """
    usable = arch.pe.sram_usable_bytes
    s = bytes_per_element(precision)
    plan_layout(cfg, arch, batch, seq_len, precision)  # validates batch and seq_len

    def need(n: int):
        """(fits, layout, store, recompute, per_layer, ckpt, peak, grad) at ``n``."""
        b = math.ceil(batch / n)
        Lb = plan_layout(cfg, arch, b, seq_len, precision)
        per_layer, ckpt, grad = _act_sizes(cfg, Lb, s)
        peak = _fwd_peak(cfg, arch, Lb, seq_len, s)
        store = peak + cfg.n_layer * per_layer + grad
        recompute = peak + (cfg.n_layer + 1) * ckpt + per_layer + grad
        ok = Lb.n_micro == 1 and min(store, recompute) <= usable
        return ok, Lb, store, recompute, per_layer, ckpt, peak, grad

    ok, Lb, store, recompute, per_layer, ckpt, peak, grad = need(batch)
    if not ok:
        raise FitError(
            f"training {cfg.name} does not fit one sequence of {seq_len} tokens per "
            f"micro-batch on {arch.name} ({precision}): even with recomputation a PE needs "
            f"{recompute} B (forward peak {peak} B + {cfg.n_layer + 1} layer-input "
            f"checkpoints of {ckpt} B + one layer's activations {per_layer} B + gradient "
            f"{grad} B) but has {usable} B usable"
        )
    lo, hi = 0, batch  # need(lo) does not fit (or lo = 0), need(hi) fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if need(mid)[0]:
            hi = mid
        else:
            lo = mid
    ok, Lb, store, recompute, per_layer, ckpt, peak, grad = need(hi)
    b = Lb.b
    n_micro = math.ceil(batch / b)
    policy = "store" if store <= usable else "recompute"
    return TrainingPlan(
        layout=Lb,
        batch=batch,
        n_micro=n_micro,
        b_last=batch - (n_micro - 1) * b,
        policy=policy,
        sram_need_bytes=store if policy == "store" else recompute,
        sram_need_store_bytes=store,
        sram_usable_bytes=usable,
        stored_bytes_per_pe=(
            cfg.n_layer * per_layer if policy == "store" else (cfg.n_layer + 1) * ckpt
        ),
    )


class _Bwd:
    """Builds one micro-batch's backward kernels on layout ``L`` (see the module docstring)."""

    def __init__(self, cfg, arch, L: WSLayout, precision: str, sram: int, sfx: str, mb: int):
        self.cfg, self.arch, self.L, self.sfx, self.mb = cfg, arch, L, sfx, mb
        self.s = bytes_per_element(precision)
        self.W = arch.pe.fmac_per_cycle(precision)
        self.ov = arch.pe.vector_op_overhead_cycles
        self.f = cfg.d_model // L.P
        self.sram = sram
        self.n_full = L.b * (L.q - 1) + (L.b if L.m_last == L.m else 0)
        self.n_last = L.b if L.m_last != L.m else 0
        self.rows_used = min(L.rows, L.n_segments)
        self.seg_cols_used = math.ceil(L.n_segments / L.rows)
        self.budget = max(arch.pe.sram_usable_bytes - sram, 0)

    def classes(self, per_token) -> tuple[PEClass, ...]:
        out = [PEClass(0, self.n_full * self.L.P, *per_token(self.L.m))]
        if self.n_last:
            out.append(PEClass(1, self.n_last * self.L.P, *per_token(self.L.m_last)))
        return tuple(out)

    def kernel(self, op, layer, classes, cmap="tokens", transfers=(), blk=-1, wbytes=0, **kw):
        flops = kw.pop("flops", sum(c.flops * c.count for c in classes))
        where = f"L{layer}." if 0 <= layer < self.cfg.n_layer else ""
        return Kernel(
            f"mb{self.mb}.{where}bwd.{op}",
            op,
            layer,
            self.mb,
            tuple(classes),
            cmap + self.sfx,
            tuple(transfers),
            blk,
            int(wbytes),
            int(self.sram),
            float(flops),
            **kw,
        )

    def _chunk(self, rows: int, N: int) -> int:
        """Accumulator chunk: as in the forward GEMM, long enough for 98 % SIMD efficiency,
        no longer than the free SRAM allows (at least 1)."""
        cap = max(int(49 * self.ov * self.W), int(16 * self.W), 1)
        return max(min(N, cap, self.budget // max(rows * ACC_BYTES + 2 * self.s, 1)), 1)

    def dx(self, op, layer, K, N, blk, wbytes) -> Kernel:
        """``dX[M, K] = dY[M, N] W^T``: contraction over this PE's ``N/P`` slice of ``dY``."""
        L, W, ov, s = self.L, self.W, self.ov, self.s
        nt = math.ceil(N / L.P)
        n_c = self._chunk(L.m, K)
        chunks = math.ceil(K / n_c)

        def per(mp):
            return mp * nt * K / W, chunks * nt * mp * ov, 2.0 * mp * nt * K

        vertical = nt * K * s
        mc = Transfer(
            "weight multicast",
            "multicast_2d",
            "vertical",
            max(vertical, K * N * s / self.rows_used),
            L.n_active_pe * nt * K * s,
            hops=self.rows_used,
            turns=0,
            colour=0,
            ramp_bytes=vertical,
        )
        slice_b = L.m * math.ceil(K / L.P) * ACC_BYTES
        rs = Transfer(
            "partial-sum reduce-scatter",
            "reduce_scatter_row",
            "horizontal",
            (L.P - 1) * slice_b,
            L.n_segments * L.P * (L.P - 1) * slice_b,
            hops=L.P - 1,
            turns=0,
            colour=1,
            relays=max(L.P - 2, 0),
            ramp_bytes=(L.P + 1 if L.P >= 3 else L.P - 1) * slice_b,
        )
        return self.kernel(
            op + "_dX", layer, self.classes(per), "tokens", (mc, rs), blk, wbytes,
            n_chunks=pipeline_chunks(chunks, nt),
        )  # fmt: skip

    def dw(self, op, layer, K, N, gblk, gbytes) -> Kernel:
        """``dW[K, N] = X^T dY`` reduced over every token, then streamed out (``gbytes``)."""
        L, W, ov, s = self.L, self.W, self.ov, self.s
        kt, nt = math.ceil(K / L.P), math.ceil(N / L.P)
        n_c = self._chunk(1, N)  # one fp32 row chunk of dW at a time, sent as it completes
        chunks = math.ceil(N / n_c)

        def per(mp):
            # axpy per (token, k, chunk) + adding the partial that arrives from upstream
            busy = mp * kt * N / W + kt * N / W
            return busy, (chunks * kt * mp + chunks * kt) * ov, 2.0 * mp * kt * N

        ag_b = (L.P - 1) * L.m * nt * s
        tr = [
            Transfer(
                "dY all-gather",
                "allgather_row",
                "horizontal",
                ag_b,
                L.n_segments * L.P * ag_b,
                hops=L.P - 1,
                turns=0,
                colour=COLOUR_DY,
                ramp_bytes=ag_b,
            ),
            Transfer(
                "weight-gradient reduce (tokens, down the columns)",
                "reduce_col",
                "vertical",
                kt * N * ACC_BYTES,
                L.n_active_pe * kt * N * ACC_BYTES,
                hops=max(self.rows_used - 1, 0),
                turns=0,
                colour=COLOUR_DW,
                relays=max(self.rows_used - 2, 0),
                ramp_bytes=kt * N * ACC_BYTES,
            ),
        ]
        if self.seg_cols_used > 1:
            per_link = K * N * ACC_BYTES / self.rows_used
            tr.append(
                Transfer(
                    "weight-gradient reduce (segment columns, along the rows)",
                    "reduce_row",
                    "horizontal",
                    per_link,
                    per_link * self.rows_used * (self.seg_cols_used - 1) * L.P,
                    hops=(self.seg_cols_used - 1) * L.P,
                    turns=0,
                    colour=COLOUR_DW,
                    relays=self.seg_cols_used - 2 if self.seg_cols_used > 2 else 0,
                )
            )
        return self.kernel(
            op + "_dW", layer, self.classes(per), "tokens", tr,
            n_chunks=pipeline_chunks(chunks, kt), grad_block=gblk, grad_bytes=int(gbytes),
        )  # fmt: skip

    def elementwise(self, op, layer, width, passes, transfers=(), blk=-1, wbytes=0, **kw):
        """``passes`` vector passes over each token's ``width``-element slice."""
        W, ov = self.W, self.ov

        def per(mp):
            return mp * passes * width / W, mp * math.ceil(passes) * ov, 0.0

        return self.kernel(
            op, layer, self.classes(per), "tokens", transfers, blk, wbytes, flops=0.0, **kw
        )

    def ln_allreduce(self) -> Transfer:
        """The forward LayerNorm's segment all-reduce of 2 fp32 values per token."""
        L = self.L
        per = 2 * 2 * L.m * ACC_BYTES
        return Transfer(
            "segment all-reduce",
            "allreduce_row",
            "horizontal",
            per / 2,
            L.n_segments * 2 * (L.P - 1) * 2 * L.m * ACC_BYTES,
            hops=2 * (L.P - 1),
            turns=0,
            colour=3,
            relays=max(L.P - 1, 0),
            ramp_bytes=per if L.P >= 3 else per / 2 * (L.P - 1),
        )

    def token_reduce(self, width_per_pe: int) -> Transfer:
        """Chain reduce of a ``width_per_pe``-value fp32 gradient per PE down the columns."""
        b = width_per_pe * ACC_BYTES
        return Transfer(
            "gradient reduce (tokens, down the columns)",
            "reduce_col",
            "vertical",
            b,
            self.L.n_active_pe * b,
            hops=max(self.rows_used - 1, 0),
            turns=0,
            colour=COLOUR_DW,
            relays=max(self.rows_used - 2, 0),
            ramp_bytes=b,
        )


def _copy(k: Kernel, mb: int, sfx: str, blk: int, sram_add: int, tag: str = "", **kw) -> Kernel:
    """Kernel ``k`` of the single-micro-batch forward Program, renamed for micro-batch ``mb``
    (``tag`` is inserted after the layer: ``mb1.L3.recompute.qkv``)."""
    parts = k.name.split(".", 1)
    rest = parts[1]
    if tag:
        head, _, op = rest.rpartition(".")
        rest = f"{head}.{tag}.{op}" if head else f"{tag}.{op}"
    return dataclasses.replace(
        k,
        name=f"mb{mb}.{rest}",
        micro_batch=mb,
        class_map=k.class_map + sfx,
        weight_block=blk if k.weight_block >= 0 else -1,
        sram_bytes=k.sram_bytes + sram_add,
        **kw,
    )


def lower_training(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str = "fp16",
    systems: int = 1,
    max_simulated: int = 3,
) -> Program:
    """Lower one training step of one system (``batch`` sequences of ``seq_len`` tokens).

    Args:
        batch: this system's sequences per step (the global batch / ``systems``).
        systems: data-parallel systems (only recorded in ``meta["systems"]`` for the
            backends' SwarmX gradient path).
        max_simulated: most micro-batches lowered (>= 3; see the module docstring).

    Returns:
        A Program with ``gradient_blocks``; ``meta`` holds the plan, the simulated
        micro-batches and the number the step really has.

    Raises:
        ConfigError: bad batch, seq_len, precision or max_simulated; a too-large Program.
        FitError: not even one sequence fits.
    """
    check_precision(precision)
    if not isinstance(max_simulated, int) or max_simulated < 3:
        raise ConfigError(f"max_simulated={max_simulated!r} must be an integer >= 3")
    plan = plan_training(cfg, arch, batch, seq_len, precision)
    s = bytes_per_element(precision)
    n = plan.n_micro
    if n <= max_simulated:
        sim = list(range(n))
    else:
        sim = list(range(max_simulated - 1)) + [n - 1]
    per_layer, ckpt, grad = _act_sizes(cfg, plan.layout, s)
    stored = plan.stored_bytes_per_pe
    fwd_main = lower_weight_streaming(cfg, arch, plan.layout.b, seq_len, precision)
    fwd_last = fwd_main
    if plan.b_last != plan.layout.b:
        fwd_last = lower_weight_streaming(cfg, arch, plan.b_last, seq_len, precision)
    n_k = len(sim) * (
        len(fwd_main.kernels) * (2 if plan.policy == "recompute" else 1) + 14 * cfg.n_layer + 8
    )
    if n_k > MAX_KERNELS:
        raise ConfigError(
            f"training n_layer={cfg.n_layer} needs {n_k:,} kernels for {len(sim)} simulated "
            f"micro-batches; at most {MAX_KERNELS:,} are simulated"
        )
    kernels: list[Kernel] = []
    blocks: list[WeightBlock] = []
    gblocks: list[GradientBlock] = []
    maps = dict(fwd_main.class_maps)
    if fwd_last is not fwd_main:
        maps.update({k + "_last": v for k, v in fwd_last.class_maps.items()})
    d, V, T = cfg.d_model, cfg.vocab_size, seq_len

    for i, mb in enumerate(sim):
        last = mb == n - 1
        fwd = fwd_last if last else fwd_main
        sfx = "_last" if (last and fwd_last is not fwd_main) else ""
        Lmb = plan_layout(cfg, arch, plan.b_last if last else plan.layout.b, seq_len, precision)
        bwd_sram = plan.sram_need_bytes
        B = _Bwd(cfg, arch, Lmb, precision, bwd_sram, sfx, i)
        # ---- forward: same kernels, new block ids
        remap = {}
        for wb in fwd.weight_blocks:
            remap[wb.id] = len(blocks)
            blocks.append(WeightBlock(len(blocks), f"mb{i}.{wb.name.split('.', 1)[1]}", wb.bytes))
        for k in fwd.kernels:
            kernels.append(_copy(k, i, sfx, remap.get(k.weight_block, -1), stored))
            if kernels[-1].sram_bytes > plan.sram_usable_bytes:  # a smaller GEMM chunk
                kernels[-1] = dataclasses.replace(kernels[-1], sram_bytes=plan.sram_usable_bytes)
        by_layer: dict[int, list[Kernel]] = {}
        for k in fwd.kernels:
            by_layer.setdefault(k.layer, []).append(k)
        head_blk = remap[by_layer[cfg.n_layer][0].weight_block]

        def gblock(name: str, params: int, last=last, i=i) -> int:
            gblocks.append(GradientBlock(len(gblocks), f"mb{i}.grad.{name}", 0, params * last))
            return len(gblocks) - 1

        # ---- head backward (its weights are still buffered: no new stream)
        g = gblock("head", 2 * d)  # final LayerNorm; tied wte is updated with the embedding
        lm = next(k for k in by_layer[cfg.n_layer] if k.op == "lm_head")
        kernels.append(
            _copy(lm, i, sfx, head_blk, bwd_sram - lm.sram_bytes, tag="bwd", weight_bytes=0)
        )
        kernels[-1] = dataclasses.replace(
            kernels[-1], op="lm_head_recompute", name=kernels[-1].name + "_recompute"
        )
        kernels.append(B.dx("lm_head", cfg.n_layer, d, V, head_blk, 0))
        kernels.append(B.dw("lm_head", cfg.n_layer, d, V, g, V * d * s))
        kernels.append(
            B.elementwise(
                "layernorm_f_bwd", cfg.n_layer, B.f, LN_BWD_PASSES, (B.ln_allreduce(),),
                head_blk, 0, grad_block=g, grad_bytes=2 * d * s,
            )
        )  # fmt: skip
        # ---- layers, last first; weights stream in again
        for layer in range(cfg.n_layer - 1, -1, -1):
            fl = by_layer[layer]
            blk = len(blocks)
            blocks.append(WeightBlock(blk, f"mb{i}.bwd.layer{layer}", fwd.weight_blocks[
                fl[0].weight_block].bytes))  # fmt: skip
            g = gblock(f"layer{layer}", layer_params(cfg))
            rec = plan.policy == "recompute"
            if rec:
                for k in fl:
                    kernels.append(_copy(k, i, sfx, blk, bwd_sram - k.sram_bytes, tag="recompute"))
                    kernels[-1] = dataclasses.replace(kernels[-1], op=k.op + "_recompute")
            wfull = {op: _gemm_dims(cfg, op) for op in GEMMS}

            def wb(op, wfull=wfull, rec=rec):
                K, N = wfull[op]
                return 0 if rec else (K * N + N) * s

            ff = math.ceil(cfg.d_ff / Lmb.P)
            kernels.append(B.elementwise("residual_2_bwd", layer, B.f, RESIDUAL_BWD_PASSES))
            for op in ("ffn_down", "ffn_up"):
                K, N = wfull[op]
                kernels.append(B.dx(op, layer, K, N, blk, wb(op)))
                kernels.append(B.dw(op, layer, K, N, g, (K * N + N) * s))
                if op == "ffn_down":
                    kernels.append(B.elementwise("gelu_bwd", layer, ff, GELU_BWD_PASSES))
            kernels.append(
                B.elementwise(
                    "layernorm_2_bwd", layer, B.f, LN_BWD_PASSES, (B.ln_allreduce(),), blk,
                    0 if rec else 2 * d * s, grad_block=g, grad_bytes=2 * d * s,
                )
            )  # fmt: skip
            kernels.append(B.elementwise("residual_1_bwd", layer, B.f, RESIDUAL_BWD_PASSES))
            K, N = wfull["attn_proj"]
            kernels.append(B.dx("attn_proj", layer, K, N, blk, wb("attn_proj")))
            kernels.append(B.dw("attn_proj", layer, K, N, g, (K * N + N) * s))
            att = next(k for k in fl if k.op == "attention")
            kv = att.transfers
            back = tuple(dataclasses.replace(t, name="dK/dV reduce") for t in kv)
            kernels.append(
                B.kernel(
                    "attention_bwd",
                    layer,
                    tuple(
                        PEClass(c.index, c.count, 2 * c.busy_cycles, 2 * c.overhead_cycles,
                                2 * c.flops)
                        for c in att.classes
                    ),
                    "position",
                    kv + back,
                    n_chunks=att.n_chunks,
                )
            )  # fmt: skip
            K, N = wfull["qkv"]
            kernels.append(B.dx("qkv", layer, K, N, blk, wb("qkv")))
            kernels.append(B.dw("qkv", layer, K, N, g, (K * N + N) * s))
            kernels.append(
                B.elementwise(
                    "layernorm_1_bwd", layer, B.f, LN_BWD_PASSES, (B.ln_allreduce(),), blk,
                    0 if rec else 2 * d * s, grad_block=g, grad_bytes=2 * d * s,
                )
            )  # fmt: skip
        # ---- embedding backward: scatter-add into the rows used, reduce over tokens
        rows = min(V, Lmb.b * T)
        g = gblock("embed", V * d + cfg.n_positions * d)  # all of wte (tied) and wpe
        kernels.append(
            B.elementwise(
                "embedding_bwd", -1, B.f, EMBED_BWD_PASSES,
                (B.token_reduce((rows + T) * B.f),),
                grad_block=g, grad_bytes=(rows * d + T * d) * s,
            )
        )  # fmt: skip
    # gradient block bytes = what their kernels produce
    gb = [0] * len(gblocks)
    for k in kernels:
        if k.grad_block >= 0:
            gb[k.grad_block] += k.grad_bytes
    gblocks = [dataclasses.replace(b, bytes=gb[b.id]) for b in gblocks]
    meta = {
        "layout": plan.layout.describe(),
        "training": plan.describe(),
        "tokens": batch * seq_len,
        "batch": batch,
        "seq_len": seq_len,
        "micro_batches": n,
        "simulated_micro_batches": sim,
        "extrapolation": (
            "none: every micro-batch simulated"
            if len(sim) == n
            else f"{len(sim)} of {n} micro-batches simulated (identical ones skipped); step time "
            f"= T_sim + {n - len(sim)} x (end of micro-batch 1 - end of micro-batch 0)"
        ),
        "mapping": "weight_streaming",
        "systems": systems,
        "residual_gradient_bytes_per_pe": grad,
        "layer_activation_bytes_per_pe": per_layer,
    }
    return Program(
        f"{cfg.name}/weight_streaming/train",
        arch.wafer.rows,
        arch.wafer.cols,
        precision,
        kernels,
        blocks,
        maps,
        meta,
        gblocks,
    )
