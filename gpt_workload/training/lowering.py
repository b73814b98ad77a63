"""Weight-streaming lowering of one training *step* (forward + backward) to a Program.

Built on the forward lowering
(:func:`gpt_workload.mappings.weight_streaming.builder.lower_weight_streaming`: gpt2's builder,
or :class:`gpt_workload.mappings.weight_streaming.graph_builder.GraphBuilder` walking the op
graph of the gptj, llama and qwen2 families; its segment layout and kernels are reused as they
are) and on its layout planner (:func:`gpt_workload.mappings.weight_streaming.plan.plan_layout`).
The backward walks the same op graph (:func:`gpt_workload.models.build_graph`) in reverse, one
family as another: no layer is spelled out here. One micro-batch of a step is:

1. **Forward**: the forward Program's kernels, unchanged, except that with checkpoint offload
   each layer's first kernel hands its input ``x`` (the checkpoint, ``b T d`` elements) to
   the egress to MemoryX.
2. **Backward**, head first, then layers ``n_layer - 1 .. 0``, then the embedding:

   * the head block (final norm + LM head, tied or not) is still in its on-wafer buffer
     after the forward's LM head, so it is *not* streamed again; the logits were never
     stored (the forward fuses the cross-entropy statistics into the LM head), so the
     backward recomputes them (``lm_head_recompute``), then ``dX = dlogits W^T`` and
     ``dW = h^T dlogits``;
   * every layer's weights stream in **again** from MemoryX (new weight blocks, reverse layer
     order; with offload the layer's checkpoint streams in first, in the same block: a
     ``checkpoint_in`` kernel consumes it). The layer's ops are walked in reverse
     (:meth:`gpt_workload.training.bwd_kernels.BwdKernels.graph_op`): a linear ``Y = X W``
     gives ``dX = dY W^T`` (the forward's weight multicast, reduce-scatter of the fp32
     partial sums along the segment) and ``dW = X^T dY`` (``dY`` all-gathered along the
     segment, partials reduced over the tokens down the columns and along the rows, then
     streamed **out** to MemoryX: ``grad_bytes`` over ``io.egress_bytes_per_s``); attention
     costs 2x its forward with the K/V blocks travelling again and dK/dV back; element-wise
     ops (norms with their all-reduce, rotary with GQA's group exchange, GELU, SiLU, the
     SwiGLU product, residual adds; GPT-J's parallel block adds both branches) cost their
     forward kernel's passes scaled by :data:`gpt_workload.training.bwd_kernels.BWD_PASS_RATIO`;
     an element-wise output the backward does not keep is recomputed where it is read;
   * the embedding: scatter-add into the rows used plus the token reduce of its gradient
     (and of ``wpe``'s rows with learned positions).

   Activation gradients stay on the wafer.

**Activations** (per-PE bytes from :mod:`gpt_workload.training.activations`, a liveness pass
over the op graph; its docstring audits the accounting against the published one-pass
7B run): ``store`` keeps every layer's backward inputs through the step; ``recompute`` keeps
only each layer's input ``x`` (a checkpoint) on the wafer and re-runs layer ``l``'s forward
kernels (``*.recompute.*``, consuming the re-streamed weights) before its backward;
``offload`` recomputes too but streams each checkpoint **out** to MemoryX in the forward
(on the egress, shared with the weight gradients: same buffers, same link) and **in** before
its layer's backward (on the ingress, in the layer's weight block: shared with the weights),
so the wafer holds one checkpoint in flight instead of ``n_layer``.
``checkpoint_offload`` (``auto``, ``on``, ``off``): ``auto`` takes the fewest micro-batches
any policy fits, and at that count the first of ``store``, ``recompute``, ``offload`` that
fits (each micro-batch streams all weights again, which costs more than moving the
checkpoints); ``on`` forces ``offload``; ``off`` allows ``store`` and ``recompute`` only.
That is :func:`plan_training`'s plan, the one that fits with the fewest micro-batches; the
train API runs the fastest plan that fits instead, searched over segment widths, micro-batch
counts and the allowed policies (:mod:`gpt_workload.training.plan_search`), and lowers it
here (``plan=``).
A micro-batch too big for every allowed policy is made smaller (more micro-batches); when
not even one sequence fits, the sequence is **split into passes** of fewer tokens (the
fewest passes ``k`` that fit, ``ceil(seq_len / k)`` tokens each, one pass per micro-batch:
fewer tokens per segment, so less SRAM per PE); the earlier passes' K/V stream in from
MemoryX where a pass's attention needs them (:class:`_CrossPass`).

**Gradient accumulation over micro-batches happens in MemoryX**: each micro-batch streams
its weight gradients out, MemoryX adds them to the running sum, and only the last
micro-batch's gradient blocks trigger the optimizer update
(``GradientBlock.optimizer_params``). Checkpoints leave as gradient blocks with no update.

**Simulated micro-batches.** Micro-batches of the main layout are identical, so at most
``max_simulated`` (>= 3) are lowered: the first two of the main layout and the last (which
may be smaller); the step time of ``n`` micro-batches is extrapolated by the train API as
``T_sim + (n - n_sim) x (end of micro-batch 1 - end of micro-batch 0)`` (stated in
``Program.training``).

Data parallel over ``systems`` (SwarmX): the lowering is of one system's share of the batch;
``Program.systems`` tells the backends to route gradients through SwarmX
(:func:`wse_sim.timing.common.gradient_path`); a system's checkpoints take the same path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gpt_workload.checks import check_int
from gpt_workload.config import GPTConfig
from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.mappings.weight_streaming.graph_builder import GraphBuilder
from gpt_workload.mappings.weight_streaming.layout import WSLayout
from gpt_workload.mappings.weight_streaming.plan import (
    MAX_KERNELS,
    _weight_buffer_share,
    plan_layout,
)
from gpt_workload.models import build_graph
from gpt_workload.precision import bytes_per_element, check_precision
from gpt_workload.training.activations import LayerMemory, layer_memory
from gpt_workload.training.bwd_kernels import EMBED_BWD_PASSES, BwdKernels, copy_kernel
from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError, FitError
from wse_sim.program import (
    GradientBlock,
    Kernel,
    Program,
    TrainingSchedule,
    Transfer,
    WeightBlock,
    Workload,
)

#: values of ``checkpoint_offload`` and the activation policies each allows, in preference
OFFLOAD_CHOICES: dict[str, tuple[str, ...]] = {
    "auto": ("store", "recompute", "offload"),
    "on": ("offload",),
    "off": ("store", "recompute"),
}


def check_offload(value) -> str:
    """``value`` if it is a ``checkpoint_offload`` choice.

    Raises:
        ConfigError: one line naming the value and the choices.
    """
    if not isinstance(value, str) or value not in OFFLOAD_CHOICES:
        raise ConfigError(
            f"checkpoint_offload={value!r} is not allowed: expected one of "
            + ", ".join(OFFLOAD_CHOICES)
        )
    return value


def layer_params(cfg: GPTConfig) -> int:
    """Parameters of one transformer layer (weights, biases, norms), from the op graph."""
    g = build_graph(cfg)
    return sum(g.param_elems(op) for op in g.layer)


@dataclass(frozen=True)
class TrainingPlan:
    """How one system's share of a step is cut and where its activations live.

    Attributes:
        layout: the main micro-batch's segment layout (``layout.b`` sequences).
        batch: sequences of this system per step; n_micro: micro-batches;
        b_last: sequences of the last micro-batch.
        policy: ``"store"``, ``"recompute"`` or ``"offload"`` (module docstring).
        sram_need_bytes: per-PE SRAM need of the chosen policy; ``sram_need_store_bytes``
            that of ``store``; ``needs``: every policy's;
        sram_usable_bytes: what a PE has.
        stored_bytes_per_pe: activation bytes held per PE across layers (kept sets of all
            layers, their checkpoints, or none with offload).
        memory: the per-layer accounting at this layout.
        checkpoint_offload: the ``auto`` / ``on`` / ``off`` choice.
        seq_len: tokens per sequence; d_model, n_layer, s: for the offload bytes.
        passes: passes per sequence (1, or ``k`` when even one sequence's activations do
            not fit: module docstring); pass_tokens: tokens per pass (``ceil(seq_len / k)``).
        search: how the plan was chosen among others, when it was
            (:func:`gpt_workload.training.plan_search.search_training_plan`), else None.
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
    needs: dict
    memory: LayerMemory
    checkpoint_offload: str
    seq_len: int
    d_model: int
    n_layer: int
    s: int
    passes: int = 1
    pass_tokens: int = 0
    search: dict | None = None

    @property
    def offload_bytes_per_step(self) -> int:
        """Checkpoint bytes moved each way per step (0 without offload):
        ``n_layer x batch x seq_len x d_model x s``."""
        if self.policy != "offload":
            return 0
        return self.n_layer * self.batch * self.seq_len * self.d_model * self.s

    def describe(self) -> dict:
        """JSON-safe summary for the report."""
        return {
            "sequences_per_micro_batch": self.layout.b,
            "micro_batches": self.n_micro,
            "sequences_in_last_micro_batch": self.b_last,
            "activations": self.policy,
            "sram_need_bytes": self.sram_need_bytes,
            "sram_need_if_stored_bytes": self.sram_need_store_bytes,
            "sram_need_by_policy_bytes": dict(self.needs),
            "sram_usable_bytes": self.sram_usable_bytes,
            "stored_activation_bytes_per_pe": self.stored_bytes_per_pe,
            "kept_for_backward": list(self.memory.kept),
            "recomputed_in_backward": sorted(self.memory.recomputed),
            "checkpoint_offload": {
                "mode": self.checkpoint_offload,
                "used": self.policy == "offload",
                "bytes_out_per_step": self.offload_bytes_per_step,
                "bytes_in_per_step": self.offload_bytes_per_step,
            },
            "gradient_accumulation": "in MemoryX (each micro-batch streams its gradients out)",
            "passes_per_sequence": self.passes,
            "tokens_per_pass": self.pass_tokens or self.seq_len,
            "pes_per_segment": self.layout.P,
            "tokens_per_segment": self.layout.m,
            "plan_search": self.search or "none: the plan that fits with the fewest micro-batches",
        }


def policy_needs(cfg: GPTConfig, arch: ArchConfig, L: WSLayout, s: int) -> tuple[dict, LayerMemory]:
    """Per-PE SRAM need of each activation policy at layout ``L``: the largest phase (forward,
    recomputed forward, backward, LM head; :func:`layer_memory`) plus what is held across
    layers (``store``: the kept sets of the other layers; ``recompute``: their checkpoints;
    ``offload``: the one checkpoint in flight while a layer's backward runs) plus the weight
    buffers' share (:func:`gpt_workload.mappings.weight_streaming.plan._weight_buffer_share`)."""
    mem = layer_memory(cfg, L.P, L.hp, L.m, s)
    wb = _weight_buffer_share(cfg, arch, s)
    n, ck, kb = cfg.n_layer, mem.ckpt_bytes, mem.kept_bytes
    layer_bwd = max(mem.fwd_keep_peak, mem.bwd_peak)
    needs = {
        "store": wb + max((n - 1) * kb + layer_bwd, n * kb + mem.head_peak),
        "recompute": wb + max((n - 1) * ck + max(mem.fwd_peak, layer_bwd), n * ck + mem.head_peak),
        "offload": wb + max(mem.fwd_peak, mem.head_peak, layer_bwd + ck),
    }
    return needs, mem


def _held(cfg: GPTConfig, mem: LayerMemory, policy: str) -> int:
    """Activation bytes per PE held across layers under ``policy``."""
    return {"store": cfg.n_layer * mem.kept_bytes, "recompute": cfg.n_layer * mem.ckpt_bytes,
            "offload": mem.ckpt_bytes}[policy]  # fmt: skip


def _split_sequence(cfg, arch, seq_len: int, precision: str, allowed, P=None):
    """``(k, layout, needs, memory)`` for the fewest passes ``k`` (2 .. ``seq_len``) of
    ``ceil(seq_len / k)`` tokens whose one-pass micro-batch fits an allowed policy, found by
    bisection (fewer tokens per pass need less SRAM); ``None`` if not even one token does.
    Earlier passes' K/V are not held on the wafer (they stream in: module docstring), so a
    pass needs what a sequence of its length needs."""
    usable, s = arch.pe.sram_usable_bytes, bytes_per_element(precision)

    def fits(k: int):
        Lp = plan_layout(cfg, arch, 1, math.ceil(seq_len / k), precision, P=P)
        needs, mem = policy_needs(cfg, arch, Lp, s)
        return Lp.n_micro == 1 and min(needs[p] for p in allowed) <= usable, Lp, needs, mem

    try:
        if not fits(seq_len)[0]:
            return None
    except FitError:
        return None
    lo, hi = 1, seq_len  # fits(lo) fails (one pass: the caller's case), fits(hi) holds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            good = fits(mid)[0]
        except FitError:
            good = False
        lo, hi = (lo, mid) if good else (mid, hi)
    _, Lp, needs, mem = fits(hi)
    return hi, Lp, needs, mem


def plan_training(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str,
    checkpoint_offload: str = "auto",
    P: int | None = None,
) -> TrainingPlan:
    """Micro-batch size and activation policy for ``batch`` sequences on one system.

    The fewest micro-batches ``n`` whose micro-batch of ``ceil(batch / n)`` sequences fits
    one forward layout (:func:`gpt_workload.mappings.weight_streaming.plan.plan_layout` with one micro-batch) and
    the SRAM of some allowed policy (:func:`policy_needs`, :data:`OFFLOAD_CHOICES`); at that
    ``n`` the first allowed policy that fits. ``n`` is found by bisection over
    ``1 .. batch`` (the need grows with the micro-batch), so no count is skipped; the
    micro-batches are then balanced (``ceil(batch / n)`` each, the last one the rest).
    ``P``: PEs per segment (None: the layout's own choice,
    :func:`gpt_workload.mappings.weight_streaming.plan.choose_P`). This is the plan that *fits* with the fewest
    micro-batches; which plan is *fastest* is searched by
    :func:`gpt_workload.training.plan_search.search_training_plan`.

    Raises:
        ConfigError: bad batch, seq_len or checkpoint_offload. FitError: not even one
            sequence fits.
    """
    allowed = OFFLOAD_CHOICES[check_offload(checkpoint_offload)]
    usable = arch.pe.sram_usable_bytes
    s = bytes_per_element(precision)
    plan_layout(cfg, arch, batch, seq_len, precision, P=P)  # validates batch, seq_len, P

    def need(n: int):
        b = math.ceil(batch / n)
        Lb = plan_layout(cfg, arch, b, seq_len, precision, P=P)
        needs, mem = policy_needs(cfg, arch, Lb, s)
        ok = Lb.n_micro == 1 and min(needs[p] for p in allowed) <= usable
        return ok, Lb, needs, mem

    try:
        ok, Lb, needs, mem = need(batch)
        layout_error = None
    except FitError as exc:  # the forward layout of one sequence does not fit
        ok, layout_error = False, exc
    if not ok:  # not even one sequence per micro-batch: fewer tokens per pass?
        split = _split_sequence(cfg, arch, seq_len, precision, allowed, P)
        if split is not None:
            k, Lp, needs, mem = split
            policy = next(p for p in allowed if needs[p] <= usable)
            return TrainingPlan(
                layout=Lp, batch=batch, n_micro=batch * k, b_last=1, policy=policy,
                sram_need_bytes=needs[policy], sram_need_store_bytes=needs["store"],
                sram_usable_bytes=usable, stored_bytes_per_pe=_held(cfg, mem, policy),
                needs=needs, memory=mem, checkpoint_offload=checkpoint_offload,
                seq_len=seq_len, d_model=cfg.d_model, n_layer=cfg.n_layer, s=s, passes=k,
                pass_tokens=Lp.seq_len,
            )  # fmt: skip
    if layout_error is not None:
        raise layout_error
    if not ok:
        told = ", ".join(f"{p} {needs[p]} B" for p in allowed)
        raise FitError(
            f"training {cfg.name} does not fit one sequence of {seq_len} tokens per "
            f"micro-batch on {arch.name} ({precision}, checkpoint_offload="
            f"{checkpoint_offload}): a PE needs {told} (one layer's backward working set "
            f"{mem.bwd_peak} B, checkpoint {mem.ckpt_bytes} B, weight buffers "
            f"{_weight_buffer_share(cfg, arch, s)} B) but has {usable} B usable"
            + ("" if "offload" in allowed else "; checkpoint_offload=auto or on may fit")
        )
    lo, hi = 0, batch  # need(lo) does not fit (or lo = 0), need(hi) fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if need(mid)[0]:
            hi = mid
        else:
            lo = mid
    ok, Lb, needs, mem = need(hi)
    b = Lb.b
    n_micro = math.ceil(batch / b)
    policy = next(p for p in allowed if needs[p] <= usable)
    held = _held(cfg, mem, policy)
    return TrainingPlan(
        layout=Lb,
        batch=batch,
        n_micro=n_micro,
        b_last=batch - (n_micro - 1) * b,
        policy=policy,
        sram_need_bytes=needs[policy],
        sram_need_store_bytes=needs["store"],
        sram_usable_bytes=usable,
        stored_bytes_per_pe=held,
        needs=needs,
        memory=mem,
        checkpoint_offload=checkpoint_offload,
        seq_len=seq_len,
        d_model=cfg.d_model,
        n_layer=cfg.n_layer,
        s=s,
    )


class _CrossPass:
    """Attention across the passes of a sequence split into ``k`` passes of ``Tp`` tokens.

    Pass ``j`` attends its own tokens (the forward kernels at ``Tp``) and the ``j Tp`` keys
    of the earlier passes, whose K/V are not held on the wafer: they stream in with the
    layer's weights (``j Tp 2 kv s`` bytes) and are multicast down the columns like
    weights; each pass streams its own K/V out (``Tp 2 kv s``) for the later ones. In the
    backward (recomputed forward included) the earlier K/V stream in again, the pass's
    accumulated dK/dV from later passes streams in (all passes but the last) and its dK/dV
    partials for the earlier passes stream out. Passes of a step are timed as the mean
    pass, ``j = (k - 1) / 2`` (micro-batches are simulated as identical), so the step's
    total work and bytes are exact: its attention FLOPs equal those of whole sequences.
    """

    def __init__(self, cfg: GPTConfig, arch: ArchConfig, plan: TrainingPlan, s: int):
        self.cfg, self.arch, self.s = cfg, arch, s
        self.k = plan.passes
        self.Tp = plan.pass_tokens or plan.seq_len
        self.j = (self.k - 1) / 2
        block = self.Tp * 2 * cfg.kv_dim * s  # one pass's K and V of one layer
        self.kv_out = block if self.k > 1 else 0
        self.kv_in = int(self.j * block)
        self.dkv_in = int(block * (self.k - 1) / self.k) if self.k > 1 else 0

    def bwd_in(self) -> int:
        """Cross-pass bytes a layer's backward block streams in."""
        return self.kv_in + self.dkv_in if self.k > 1 else 0

    def forward(self, k: Kernel, L: WSLayout, blk: int) -> Kernel:
        """Forward attention kernel ``k`` with the mean pass's earlier keys added."""
        cfg = self.cfg
        classes = []
        per_col = self.j * self.Tp * 2 * math.ceil(cfg.kv_dim / L.P) * self.s
        for c in k.classes:
            mp = L.m_last if c.index == L.q - 1 else L.m
            pairs = L.hp * mp * self.j * self.Tp  # extra (query, key) pairs of the PE
            base = c.flops / (4 * cfg.d_head) or 1.0  # the class's own pairs
            scale = pairs / base
            classes.append(dataclasses.replace(
                c, busy_cycles=c.busy_cycles * (1 + scale),
                overhead_cycles=c.overhead_cycles * (1 + scale),
                flops=c.flops + pairs * 4 * cfg.d_head,
            ))  # fmt: skip
        mc = Transfer("earlier passes' K/V multicast", "multicast_2d", "vertical", per_col,
                      L.n_active_pe * per_col, hops=min(L.rows, L.n_segments), turns=0,
                      colour=0, ramp_bytes=per_col)  # fmt: skip
        flops = sum(c.flops * c.count for c in classes)
        return dataclasses.replace(k, classes=tuple(classes), transfers=k.transfers + (mc,),
                                   weight_block=blk, weight_bytes=self.kv_in, flops=flops)

    def backward(self, k: Kernel, blk: int, rec: bool, gblk: int) -> Kernel:
        """The attention backward kernel with its cross-pass bytes (others unchanged)."""
        if k.op != "attention_bwd":
            return k
        return dataclasses.replace(
            k, weight_block=blk, weight_bytes=self.dkv_in + (0 if rec else self.kv_in),
            grad_block=gblk, grad_bytes=int(self.j * self.kv_out),
        )  # fmt: skip


def lower_training(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str = "fp16",
    systems: int = 1,
    max_simulated: int = 3,
    checkpoint_offload: str = "auto",
    plan: TrainingPlan | None = None,
) -> Program:
    """Lower one training step of one system (``batch`` sequences of ``seq_len`` tokens).

    Args:
        batch: this system's sequences per step (the global batch / ``systems``).
        systems: data-parallel systems (only recorded in ``Program.systems`` for the
            backends' SwarmX gradient path).
        max_simulated: most micro-batches lowered (>= 3; see the module docstring).
        checkpoint_offload: ``auto``, ``on`` or ``off`` (module docstring).
        plan: the step plan to lower (layout, micro-batches, activation policy; e.g. the
            fastest of :func:`gpt_workload.training.plan_search.search_training_plan`);
            None: :func:`plan_training`'s plan with the fewest micro-batches.

    Returns:
        A Program with ``gradient_blocks``; ``training`` holds the plan and the simulated
        micro-batches, ``workload`` the number the step really has.

    Raises:
        ConfigError: bad batch, seq_len, precision, max_simulated or checkpoint_offload; a
            too-large Program. FitError: not even one sequence fits.
    """
    check_precision(precision)
    max_simulated = check_int("max_simulated", max_simulated, 3)
    if plan is None:
        plan = plan_training(cfg, arch, batch, seq_len, precision, checkpoint_offload)
    elif (plan.batch, plan.seq_len) != (batch, seq_len):
        raise ConfigError(f"plan is for batch={plan.batch} x seq_len={plan.seq_len}, "
                          f"not batch={batch} x seq_len={seq_len}")  # fmt: skip
    P = plan.layout.P
    graph = build_graph(cfg)
    dims = graph.dims
    s = bytes_per_element(precision)
    n = plan.n_micro
    sim = list(range(n)) if n <= max_simulated else list(range(max_simulated - 1)) + [n - 1]
    rec = plan.policy in ("recompute", "offload")
    offload = plan.policy == "offload"
    builder = None if cfg.family == "gpt2" else GraphBuilder
    Tp = plan.pass_tokens or seq_len  # tokens per pass (seq_len unless split)
    fwd_main = lower_weight_streaming(cfg, arch, plan.layout.b, Tp, precision,
                                      builder=builder, P=P)  # fmt: skip
    fwd_last = fwd_main
    if plan.b_last != plan.layout.b:
        fwd_last = lower_weight_streaming(cfg, arch, plan.b_last, Tp, precision,
                                          builder=builder, P=P)  # fmt: skip
    n_k = len(sim) * (len(fwd_main.kernels) * (2 if rec else 1) + 3 * len(graph.layer)
                      * cfg.n_layer + 12)  # fmt: skip
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
    d, V, T = cfg.d_model, cfg.vocab_size, Tp
    usable = plan.sram_usable_bytes
    xp = _CrossPass(cfg, arch, plan, s)  # earlier passes of a split sequence (or none)
    held_fwd = {"store": (cfg.n_layer - 1) * plan.memory.kept_bytes,
                "recompute": (cfg.n_layer - 1) * plan.memory.ckpt_bytes, "offload": 0}[plan.policy]
    tied = "wte" in graph.epilogue[-1].params
    head_params = sum(graph.param_elems(op) for op in graph.epilogue) - (V * d if tied else 0)
    embed_params = sum(graph.param_elems(op) for op in graph.prologue)
    lp = layer_params(cfg)
    producer = {o: op for op in graph.layer for o in op.outputs}

    def chain(t: str, fk: dict[str, Kernel]) -> list[Kernel]:
        """Forward kernels that recompute ``t`` from kept tensors, in order."""
        if t not in plan.memory.recomputed:
            return []
        op = producer[t]
        return [k for a in op.inputs for k in chain(a, fk)] + [fk[op.name]]

    for i, mb in enumerate(sim):
        last = mb == n - 1
        fwd = fwd_last if last else fwd_main
        b_mb = plan.b_last if last else plan.layout.b
        sfx = "_last" if (last and fwd_last is not fwd_main) else ""
        Lmb = plan_layout(cfg, arch, b_mb, T, precision, P=P)
        ckpt = b_mb * T * d * s  # one layer's checkpoint of this micro-batch, bytes
        B = BwdKernels(cfg, arch, Lmb, precision, plan.sram_need_bytes, sfx, i)
        held_bwd = {"store": held_fwd, "recompute": held_fwd, "offload": plan.memory.ckpt_bytes}
        base = held_bwd[plan.policy] + _weight_buffer_share(cfg, arch, s)
        B.free = {k: max(usable - base - v, 0) for k, v in plan.memory.bwd_live.items()}

        def gblock(name: str, params: int, last=last, i=i) -> int:
            gblocks.append(GradientBlock(len(gblocks), f"mb{i}.{name}", 0, params * last))
            return len(gblocks) - 1

        # ---- forward: same kernels, new block ids; with offload each layer's first
        # kernel sends its input checkpoint out
        remap = {}
        layer_blocks = {k.weight_block for k in fwd.kernels if 0 <= k.layer < cfg.n_layer}
        for wb in fwd.weight_blocks:
            remap[wb.id] = len(blocks)
            extra = xp.kv_in if wb.id in layer_blocks else 0
            blocks.append(WeightBlock(len(blocks), f"mb{i}.{wb.name.split('.', 1)[1]}",
                                      wb.bytes + extra))  # fmt: skip
        by_layer: dict[int, list[Kernel]] = {}
        for k in fwd.kernels:
            kw = {}
            if k.op == "attention" and xp.k > 1:
                k = xp.forward(k, Lmb, by_layer[k.layer][0].weight_block)
                kw = {"grad_block": gblock(f"kv_out.layer{k.layer}", 0), "grad_bytes": xp.kv_out}
            by_layer.setdefault(k.layer, []).append(k)
            if offload and 0 <= k.layer < cfg.n_layer and by_layer[k.layer][0] is k:
                kw = {"grad_block": gblock(f"ckpt_out.layer{k.layer}", 0), "grad_bytes": ckpt}
            kernels.append(copy_kernel(k, i, sfx, remap.get(k.weight_block, -1), held_fwd, **kw))
            if kernels[-1].sram_bytes > usable:  # a smaller GEMM chunk
                kernels[-1] = dataclasses.replace(kernels[-1], sram_bytes=usable)
        head = {k.op: k for k in by_layer[cfg.n_layer]}
        head.setdefault("norm_f", head.get("layernorm_f"))  # gpt2's builder names it so
        head_blk = remap[head["lm_head"].weight_block]
        # ---- head backward (its weights are still buffered: no new stream)
        g = gblock("grad.head", head_params)
        lm = head["lm_head"]
        kernels.append(copy_kernel(lm, i, sfx, head_blk, plan.sram_need_bytes - lm.sram_bytes,
                                   tag="bwd", weight_bytes=0))  # fmt: skip
        kernels[-1] = dataclasses.replace(
            kernels[-1], op="lm_head_recompute", name=kernels[-1].name + "_recompute",
            phase="recompute",
        )
        for op in reversed(graph.epilogue):
            kernels += B.graph_op(op, head[op.name], cfg.n_layer, dims, head_blk, False, g, {})
        # ---- layers, last first; weights (and the checkpoint, with offload) stream in again
        for layer in range(cfg.n_layer - 1, -1, -1):
            fl = by_layer[layer]
            blk = len(blocks)
            wbytes = fwd.weight_blocks[fl[0].weight_block].bytes
            blocks.append(WeightBlock(blk, f"mb{i}.bwd.layer{layer}",
                                      wbytes + ckpt * offload + xp.bwd_in()))  # fmt: skip
            g = gblock(f"grad.layer{layer}", lp)
            if offload:
                kernels.append(B.kernel("checkpoint_in", layer, B.classes(lambda mp: (0, 0, 0)),
                                        blk=blk, wbytes=ckpt, flops=0.0))  # fmt: skip
            if rec:
                for k in fl:
                    kernels.append(copy_kernel(k, i, sfx, blk, plan.sram_need_bytes - k.sram_bytes,
                                               tag="recompute", phase="recompute"))  # fmt: skip
                    kernels[-1] = dataclasses.replace(kernels[-1], op=k.op + "_recompute")
            fk = {k.op: k for k in fl}
            recomp = {t: chain(t, fk) for t in plan.memory.recomputed}
            for op in reversed(graph.layer):
                if op.name in fk:
                    ks = B.graph_op(op, fk[op.name], layer, dims, blk, not rec, g, recomp)
                    if op.kind == "attention" and xp.k > 1:
                        dkv = gblock(f"dkv_out.layer{layer}", 0)
                        ks = [xp.backward(k, blk, rec, dkv) for k in ks]
                    kernels += ks
        # ---- embedding backward: scatter-add into the rows used, reduce over tokens
        rows = min(V, Lmb.b * T)
        pos = T if cfg.learned_positions else 0
        g = gblock("grad.embed", embed_params)  # all of wte (tied: the head's too) and wpe
        kernels.append(
            B.elementwise(
                "embedding_bwd", -1, B.f, EMBED_BWD_PASSES, (B.token_reduce((rows + pos) * B.f),),
                grad_block=g, grad_bytes=(rows + pos) * d * s,
            )
        )  # fmt: skip
    # gradient block bytes = what their kernels produce
    gb = [0] * len(gblocks)
    for k in kernels:
        if k.grad_block >= 0:
            gb[k.grad_block] += k.grad_bytes
    gblocks = [dataclasses.replace(b, bytes=gb[b.id]) for b in gblocks]
    training = TrainingSchedule(
        simulated_micro_batches=tuple(sim),
        extrapolation=(
            "none: every micro-batch simulated"
            if len(sim) == n
            else f"{len(sim)} of {n} micro-batches simulated (identical ones skipped); step time "
            f"= T_sim + {n - len(sim)} x (end of micro-batch 1 - end of micro-batch 0)"
        ),
        activations=plan.policy,
        passes_per_sequence=plan.passes,
        tokens_per_pass=Tp,
        residual_gradient_bytes_per_pe=plan.memory.ckpt_bytes,
        layer_activation_bytes_per_pe=plan.memory.kept_bytes,
        checkpoint_bytes_simulated=sum(
            k.grad_bytes for k in kernels
            if k.grad_block >= 0 and ".ckpt_out." in gblocks[k.grad_block].name
        ),
        # K/V the passes of split sequences send out for the later passes
        cross_pass_bytes_simulated=sum(
            k.grad_bytes for k in kernels
            if k.grad_block >= 0 and ".kv_out." in gblocks[k.grad_block].name
        ),
        plan=plan.describe(),
    )  # fmt: skip
    return Program(
        f"{cfg.name}/weight_streaming/train",
        arch.wafer.rows,
        arch.wafer.cols,
        precision,
        kernels,
        blocks,
        maps,
        plan.layout.geometry(),
        gblocks,
        mapping="weight_streaming",
        workload=Workload(batch, seq_len, n, plan.b_last),
        systems=systems,
        training=training,
    )


__all__ = [
    "OFFLOAD_CHOICES",
    "TrainingPlan",
    "check_offload",
    "layer_params",
    "lower_training",
    "plan_training",
    "policy_needs",
]
