"""Backward kernels of the weight-streaming training step, one per op of the op graph.

:class:`BwdKernels` costs the backward of one micro-batch on its segment layout (see
:mod:`gpt_workload.training.lowering` for the schedule): every linear gives ``dX = dY W^T``
(:meth:`BwdKernels.dx`) and ``dW = X^T dY`` (:meth:`BwdKernels.dw`); attention's backward
costs twice its forward kernel; an element-wise op's backward is its forward kernel with its
vector passes scaled by :data:`BWD_PASS_RATIO` and the same transfers (a norm's segment
all-reduce, rotary K/V's group exchange), see :meth:`BwdKernels.graph_op`.
"""

from __future__ import annotations

import dataclasses
import math

from gpt_workload.graph import Op
from gpt_workload.mappings.weight_streaming.layout import WSLayout
from gpt_workload.mappings.weight_streaming.plan import ACC_BYTES, pipeline_chunks
from gpt_workload.precision import bytes_per_element
from gpt_workload.training.activations import MIN_CHUNK
from wse_sim.program import Kernel, PEClass, Transfer

__all__ = ["BWD_PASS_RATIO", "BwdKernels", "copy_kernel"]

#: colours of the backward's own transfers (the forward's use 0-3)
COLOUR_DY, COLOUR_DW = 4, 5
#: vector passes of the embedding backward (scatter-add and the token reduce's local sum)
EMBED_BWD_PASSES = 2
#: backward / forward vector passes of the element-wise ops: LayerNorm 10 / 6 (its input
#: gradient needs the mean of dY and of dY x_hat plus the gain/bias sums), RMSNorm 6 / 3,
#: GELU 10 / 8 (the derivative of tanh-GELU from its input), SiLU 6 / 4 (sigmoid kept from
#: the recomputed forward, times (1 + x (1 - sigmoid))), the SwiGLU product 2 / 1 (two
#: products), rotary 1 (the inverse rotation), residual adds 1 (the gradient is passed on)
BWD_PASS_RATIO = {
    "layernorm": 10 / 6, "rmsnorm": 6 / 3, "gelu": 10 / 8, "gelu_new": 10 / 8,
    "gelu_pytorch_tanh": 10 / 8, "silu": 6 / 4, "mul": 2.0, "rotary": 1.0, "add": 1.0,
}  # fmt: skip


class BwdKernels:
    """Builds one micro-batch's backward kernels on layout ``L`` (module docstring).

    ``sram``: per-PE bytes every backward kernel reports (the plan's need)."""

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
        #: per op name, SRAM its backward leaves free (set by the caller; see graph_op)
        self.free: dict[str, int] = {}
        self._scaled: dict = {}  # (id of a classes tuple, ratio) -> (tuple, scaled tuple)
        # SRAM free for accumulator chunks: what the plan's need leaves, plus the chunk of
        # MIN_CHUNK columns that need already counts (gpt_workload.training.activations)
        self.budget = max(arch.pe.sram_usable_bytes - sram, 0) + MIN_CHUNK * (
            L.m * ACC_BYTES + 2 * self.s
        )

    def classes(self, per_token) -> tuple[PEClass, ...]:
        out = [PEClass(0, self.n_full * self.L.P, *per_token(self.L.m))]
        if self.n_last:
            out.append(PEClass(1, self.n_last * self.L.P, *per_token(self.L.m_last)))
        return tuple(out)

    def kernel(self, op, layer, classes, cmap="tokens", transfers=(), blk=-1, wbytes=0, **kw):
        flops = kw.pop("flops", sum(c.flops * c.count for c in classes))
        kw.setdefault("phase", "backward")
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

    def scaled(self, fk: Kernel, op: str, layer: int, ratio: float, blk=-1, wbytes=0,
               transfers=None, **kw) -> Kernel:
        """A kernel doing ``ratio`` x the vector work of forward kernel ``fk`` (same classes
        and class map, busy and per-op overhead cycles scaled), with ``fk``'s transfers
        unless given. ``fk`` is a kernel of the single-micro-batch forward Program (its class
        map not yet suffixed)."""
        # the forward's attention classes (one per segment position) are one tuple shared
        # by every layer: scale them once per micro-batch
        key = (id(fk.classes), ratio)
        hit = self._scaled.get(key)
        if hit is None or hit[0] is not fk.classes:
            hit = self._scaled[key] = (fk.classes, tuple(
                PEClass(c.index, c.count, ratio * c.busy_cycles, ratio * c.overhead_cycles,
                        ratio * c.flops)
                for c in fk.classes
            ))  # fmt: skip
        classes = hit[1]
        return self.kernel(op, layer, classes, fk.class_map, fk.transfers if transfers is None
                           else transfers, blk, wbytes, n_chunks=fk.n_chunks, **kw)  # fmt: skip

    def graph_op(self, op: Op, fk: Kernel, layer: int, dims: dict, blk: int, stream: bool,
                 gblk: int, recompute: dict[str, list[Kernel]]) -> list[Kernel]:
        """The backward kernels of forward op ``op`` (its forward kernel ``fk``) of ``layer``.

        ``stream``: the layer's weights are consumed from block ``blk`` by the backward (the
        ``store`` policy; with recomputation the recomputed forward consumed them);
        ``gblk``: the layer's gradient block; ``recompute``: ``{tensor: forward kernels}``
        recomputing the element-wise outputs the backward does not keep, from kept tensors
        (:mod:`gpt_workload.training.activations`): at each read (they are not stored) an
        ``<op>_recompute_bwd`` kernel of each producer's forward passes (no transfer: a
        norm's statistics are kept) comes first.
        """
        s, out = self.s, []
        if op.name in self.free:  # SRAM this op's backward leaves for its accumulator
            self.budget = self.free[op.name]
        for t in op.inputs[:1] if op.kind in ("linear", "lm_head") else op.inputs:
            for rk in recompute.get(t, ()):
                out.append(self.scaled(rk, rk.op + "_recompute_bwd", layer, 1.0, transfers=(),
                                       phase="recompute"))  # fmt: skip
        kind = op.kind
        if kind in ("linear", "lm_head"):
            K, N = dims[op.attrs["n_in"]], dims[op.attrs["n_out"]]
            bias = N if len(op.params) > 1 else 0
            wb = (K * N + bias) * s
            out.append(self.dx(op.name, layer, K, N, blk, wb if stream else 0))
            out.append(self.dw(op.name, layer, K, N, gblk, wb))
        elif kind == "attention":
            back = tuple(dataclasses.replace(t, name=t.name.replace("K/V", "dK/dV"))
                         for t in fk.transfers)  # fmt: skip
            out.append(self.scaled(fk, "attention_bwd", layer, 2.0, transfers=fk.transfers + back))
        elif kind in ("norm", "activation", "mul", "rotary", "add"):
            key = {"norm": op.attrs.get("norm"), "activation": op.attrs.get("fn")}.get(kind, kind)
            gb = dims["d"] * s * len(op.params) if kind == "norm" else 0
            out.append(self.scaled(
                fk, op.name + "_bwd", layer, BWD_PASS_RATIO[key], blk,
                fk.weight_bytes if stream else 0, grad_block=gblk if gb else -1, grad_bytes=gb,
            ))  # fmt: skip
        return out

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


def copy_kernel(
    k: Kernel, mb: int, sfx: str, blk: int, sram_add: int, tag: str = "", **kw
) -> Kernel:
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

