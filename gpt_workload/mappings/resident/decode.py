"""One decode step (one new token for every live request) lowered to a Program per system.

Kernels, in order, on system ``s`` of a :class:`~gpt_workload.mappings.resident.layout.
DecodeLayout` (each kernel runs on the whole ``R x C`` grid unless said otherwise; ``B`` the
live requests; ``s`` bytes per element; partial sums fp32):

* ``embedding`` (first system): the PEs holding the sampled token's row of the tiled table
  send their ``d / C`` slices down their columns (``bcast_col``, from the north row: the
  worst case of the row holding it); ``position`` likewise for a learned position table.
* per layer, per op of the family's graph (:mod:`gpt_workload.graph`):
  - ``linear``: each PE multiplies its ``K/kp x N/np`` tile by its input slice
    (``max(MACs / FMAC rate, tile bytes / SRAM read rate)`` cycles plus one vector-op setup
    per output or input element, whichever loop is shorter), then the partials are
    all-reduced along the lines of the reduction axis (:mod:`wse_sim.fabric.lines`; tree,
    chain or K-tree). The ``rowcol`` layout first broadcasts the input along the rows
    (``<op>.bcast``). Streaming placement: the tile arrives from MemoryX first
    (``multicast_2d`` down the columns; the layer's weight block).
  - ``norm``: the slice's statistics, then a one- (RMSNorm) or two-value (LayerNorm)
    all-reduce along the split axis (a tree; the K-tree on a K-tree layout); ``rotary``, ``activation``, ``mul``, ``add``: on the
    slices, no transfer; ``split``: nothing.
  - ``attention``: ``attention.gather`` (the group's q and the new k, v down each band's
    columns), ``attention`` (scores, softmax partials and weighted values over the PE's
    cached tokens, then the log-sum-exp merge along the band's rows), ``attention.merge``
    (the merge along the band's columns). Only the PEs holding cached tokens take part, one
    PE class per (band, request), so a request's merge runs on its own PEs.
* ``norm_f``, ``lm_head`` (a GEMV over the vocabulary) and ``sampling`` (last system): local
  arg-max (or top-k) of each PE's logit slice, merged by an all-reduce of (value, index)
  pairs along the other axis, so every PE knows the token.

Cycles of an element-wise op: ``elements x FLOP per element / (2 x FMAC rate)`` and one
vector-op setup per FLOP per element, at least the SRAM traffic (3 operands per element) at
the read rate. ``Program.sram_cycles`` holds, per kernel, the cycles its slowest PE
spent beyond the FMAC bound because of SRAM bandwidth (the report's SRAM share).
"""

from __future__ import annotations

import math

import numpy as np

from gpt_workload.mappings.resident.layout import ACC_BYTES, DecodeLayout, _tile
from wse_sim.fabric.lines import line_pattern, line_transfer
from wse_sim.program import Kernel, LayoutGeometry, PEClass, Program, Transfer, WeightBlock

__all__ = ["ELEMENTWISE_FLOPS", "attention_occupancy", "lower_decode_step", "sampling_wavelets"]

#: vector FLOP per element of the element-wise kinds (as :meth:`OpGraph.flops`)
ELEMENTWISE_FLOPS = {"norm": 8, "rotary": 3, "activation": 8, "mul": 1, "position_add": 1}


def sampling_wavelets(sampling: str, top_k: int) -> int:
    """Wavelets per request merged by the sampling all-reduce: a (value, index) pair for
    greedy, ``top_k`` pairs for top-k sampling."""
    return 2 if sampling == "greedy" else 2 * max(top_k, 1)


def attention_occupancy(lay: DecodeLayout, contexts: list[int]) -> tuple:
    """``(PEs of its band each live request's cache of one layer takes, tokens the busiest
    PE holds)`` for live requests with ``contexts`` cached tokens each (after this step's
    token is written). Request ``i`` (in live order) starts at PE ``i x pes_per_request`` of
    the band (row-major), wrapping around it."""
    bt = lay.block_tokens
    used = tuple(min(max(math.ceil(c / bt), 1), lay.pes_per_request) for c in contexts)
    per_pe = math.ceil(len(contexts) * lay.pes_per_request / lay.band_pes)
    busiest = min(per_pe, len(contexts)) * min(bt, max(contexts))
    return used, busiest


class _Builder:
    def __init__(self, lay: DecodeLayout, batch: int, system: int):
        self.lay, self.B, self.system = lay, batch, system
        arch, prec = lay.arch, lay.precision
        self.fmac = arch.pe.fmac_per_cycle(prec)
        self.ovh = arch.pe.vector_op_overhead_cycles
        self.rd = arch.pe.sram_read_bytes_per_cycle
        self.s = lay.elem_bytes
        self.R, self.C = lay.rows, lay.cols
        self.kernels: list[Kernel] = []
        self.sram_cycles: dict[str, float] = {}
        self.maps: dict[str, np.ndarray] = {"all": np.zeros((self.R, self.C), np.int16)}
        self.blocks: list[WeightBlock] = []
        self.resident = sum(lay.weight_bytes_per_pe(system).values())
        self.buffers = lay.buffer_bytes()

    # ----------------------------------------------------------------- helpers
    def add(self, name, op, layer, cycles, sram_extra, flops, transfers=(), cmap="all",
            classes=None, block=-1, wbytes=0, scratch=0):  # fmt: skip
        n_pe = self.R * self.C
        cls = classes or (PEClass(0, n_pe, cycles[0], cycles[1], flops / n_pe),)
        kv = self.lay.kv_bytes_per_pe(self.system)
        k = Kernel(
            name, op, layer, 0, tuple(cls), cmap, tuple(transfers), weight_block=block,
            weight_bytes=int(wbytes), sram_bytes=int(self.resident + kv + scratch),
            flops=float(flops), n_chunks=1,
        )  # fmt: skip
        self.kernels.append(k)
        self.sram_cycles[name] = sram_extra

    def vec(self, elems: float, fpe: float) -> tuple[tuple[float, float], float]:
        """((busy, overhead) cycles, SRAM-extra cycles) of an element-wise op."""
        fm = elems * fpe / (2 * self.fmac)
        sr = elems * 3 * self.s / self.rd
        return (max(fm, sr), self.ovh * max(math.ceil(fpe / 2), 1)), max(sr - fm, 0.0)

    def slice_of(self, width: int, axis: str) -> int:
        return _tile(width, self.C if axis == "col" else self.R)

    def line(self, name: str, pattern: str, wavelets: float) -> Transfer:
        axis = pattern.rsplit("_", 1)[1]
        p, n_lines = (self.C, self.R) if axis == "row" else (self.R, self.C)
        return line_transfer(name, pattern, p, n_lines, wavelets, self.lay.arch.fabric)

    # --------------------------------------------------------------------- ops
    def gemv(self, prefix: str, op, layer: int, block: int) -> None:
        lay, B, s = self.lay, self.B, self.s
        axis_in = lay.orient[op.name]
        K, N = lay.gemv_dims(op)
        kp, np_ = lay.split_axes(axis_in)
        kt, nt = _tile(K, kp), _tile(N, np_)
        macs = kt * nt * B
        fm = macs / self.fmac
        sr = (kt * nt + kt * B) * s / self.rd
        busy, over = max(fm, sr), self.ovh * min(kt, nt)
        wbytes = (K * N + (N if len(op.params) > 1 else 0)) * s
        name = f"{prefix}{op.name}"
        if lay.gemv == "rowcol":
            bc = self.line(f"{op.name} input broadcast", line_pattern("bcast", "tree", "row"),
                           kt * B * s / 4)  # fmt: skip
            self.add(f"{name}.bcast", op.name, layer, (0.0, 0.0), 0.0, 0.0, (bc,))
        red = line_pattern("allreduce", lay.reduce_algorithm, lay.reduce_axis(axis_in))
        trs = [self.line(f"{op.name} partial-sum all-reduce", red, nt * B * ACC_BYTES / 4)]
        wb = 0
        if lay.placement == "streaming":
            wb = wbytes
            tile = (kt * nt + (nt if len(op.params) > 1 else 0)) * s
            trs.insert(0, Transfer("weight multicast", "multicast_2d", "vertical",
                                   self.R * tile, self.R * self.C * tile, self.R, 0, 0,
                                   ramp_bytes=tile))  # fmt: skip
        self.add(name, op.name, layer, (busy, over), max(sr - fm, 0.0), 2 * K * N * B, trs,
                 block=block if wb else -1, wbytes=wb,
                 scratch=self.buffers["gemv"] + self.buffers["streamed_weights"])  # fmt: skip

    def elementwise(self, prefix: str, op, layer: int, block: int) -> None:
        lay, B = self.lay, self.B
        axis = lay.orient[op.name]
        width = lay.graph.shape(op, 1, 1)[-1]
        elems = self.slice_of(width, axis) * B
        if op.kind == "add":
            fpe = len(op.inputs) - 1
        else:
            fpe = ELEMENTWISE_FLOPS[op.kind]
        cyc, extra = self.vec(elems, fpe)
        trs = []
        wb = 0
        if op.kind == "norm":
            stats = 1 if op.attrs.get("norm") == "rmsnorm" else 2
            pat = line_pattern("allreduce", lay.stats_algorithm, lay.reduce_axis(axis))
            trs.append(self.line(f"{op.name} statistics all-reduce", pat, stats * B))
            if lay.placement == "streaming":
                wb = lay.graph.param_elems(op) * self.s
        self.add(f"{prefix}{op.name}", op.name, layer, cyc, extra, 0.0, trs,
                 block=block if wb else -1, wbytes=wb, scratch=self.buffers["vectors"])  # fmt: skip

    def attention(self, prefix: str, op, layer: int, contexts: list[int]) -> None:
        lay, B, s = self.lay, self.B, self.s
        cfg = lay.cfg
        dh = cfg.d_head
        group = lay.heads_per_band * (cfg.n_head // int(cfg.n_kv_heads))
        used, toks = attention_occupancy(lay, contexts)
        key = "att" + ",".join(map(str, used))
        n_req = len(used)
        u = lay.pes_per_request
        if key not in self.maps:
            cmap = np.full((self.R, self.C), -1, np.int16)
            for b in range(lay.n_bands):
                flat = np.full(lay.band_pes, -1, np.int16)
                for i, n in enumerate(used):
                    idx = (np.arange(n) + i * u) % lay.band_pes
                    flat[idx] = b * n_req + i
                cmap[b * lay.band_rows:(b + 1) * lay.band_rows] = flat.reshape(
                    lay.band_rows, self.C)  # fmt: skip
            self.maps[key] = cmap
        longest = max(used)
        cols_used = min(longest, self.C)
        rows_used = math.ceil(longest / self.C)
        macs = toks * group * dh * 2
        fm = macs / self.fmac
        sr = toks * 2 * dh * lay.heads_per_band * s / self.rd
        busy = max(fm, sr) + toks * group * 5 / (2 * self.fmac)
        over = self.ovh * 6 * group
        n_cls = lay.n_bands * n_req
        cmap = self.maps[key]
        cnt = np.bincount(cmap[cmap >= 0].ravel(), minlength=n_cls)

        def classes(cyc):
            return tuple(PEClass(c, int(cnt[c]), cyc[0], cyc[1], 2 * macs) for c in range(n_cls))

        per_req = min(B, lay.requests_per_pe)
        lines = n_req * lay.n_bands
        fab = lay.arch.fabric
        gather = line_transfer("q, k, v to the K/V PEs", line_pattern("bcast", "tree", "col"),
                               rows_used, cols_used * lines, (group + 2) * dh * per_req * s / 4,
                               fab)  # fmt: skip
        self.add(f"{prefix}attention.gather", op.name, layer, (0.0, 0.0), 0.0, 0.0, (gather,),
                 cmap=key, classes=classes((0.0, 0.0)))  # fmt: skip
        part = (dh + 2) * group * per_req * ACC_BYTES / 4
        row = line_transfer("softmax-partial merge (rows)",
                            line_pattern("allreduce", lay.stats_algorithm, "row"), cols_used,
                            rows_used * lines, part, fab)  # fmt: skip
        flops = 4 * dh * cfg.n_head * sum(contexts)
        self.add(f"{prefix}attention", op.name, layer, (busy, over), max(sr - fm, 0.0), flops,
                 (row,), cmap=key, classes=classes((busy, over)),
                 scratch=self.buffers["attention"])  # fmt: skip
        if rows_used > 1:
            col = line_transfer("softmax-partial merge (columns)",
                                line_pattern("allreduce", lay.stats_algorithm, "col"), rows_used,
                                cols_used * lines, part, fab)  # fmt: skip
            self.add(f"{prefix}attention.merge", op.name, layer, (0.0, 0.0), 0.0, 0.0, (col,),
                     cmap=key, classes=classes((0.0, 0.0)))  # fmt: skip

    def lookup(self, op) -> None:
        lay, B = self.lay, self.B
        d = lay.graph.dims["d"]
        w = self.slice_of(d, "col") * B * self.s / 4
        tr = self.line(f"{op.name} row down the columns", line_pattern("bcast", "tree", "col"), w)
        wb = d * B * self.s if lay.placement == "streaming" else 0
        self.add(op.name, op.name, -1, (0.0, 0.0), 0.0, 0.0, (tr,), block=0 if wb else -1,
                 wbytes=wb)  # fmt: skip

    def sampling(self, sampling: str, top_k: int) -> None:
        lay, B = self.lay, self.B
        head = lay.graph.epilogue[-1]
        axis_out = "row" if lay.orient[head.name] == "col" else "col"
        elems = self.slice_of(lay.graph.dims["V"], axis_out) * B
        fpe = 1 if sampling == "greedy" else 4  # compare; or scale, exp, compare, select
        cyc, extra = self.vec(elems, fpe)
        pat = line_pattern("allreduce", lay.stats_algorithm, "col" if axis_out == "row" else "row")
        tr = self.line("token (value, index) all-reduce", pat,
                       sampling_wavelets(sampling, top_k) * B)  # fmt: skip
        self.add("sampling", "sampling", lay.cfg.n_layer, cyc, extra, 0.0, (tr,))


def lower_decode_step(
    lay: DecodeLayout,
    contexts: list[int],
    *,
    system: int = 0,
    sampling: str = "greedy",
    top_k: int = 0,
    layers: range | None = None,
    phase: str = "decode",
) -> Program:
    """The Program of one decode step on ``system`` for live requests whose caches hold
    ``contexts`` tokens each once this step's token is written (one entry per live request).

    Args:
        layers: lower only these of the system's layers (default: all of them; the timing
            of a resident step lowers one, as every layer is the same).
        phase: ``"decode"``, or ``"prefill"``: the ``contexts`` are the tokens of one
            prompt chunk (token ``t`` attends to the ``t + 1`` first), processed together as
            the vectors of the same matrix products; no sampling.

    Returns:
        A Program whose ``sram_cycles`` are, per kernel, the cycles beyond the FMAC bound
        set by SRAM bandwidth and ``weight_bytes_read`` the bytes the step reads from SRAM or
        MemoryX; its ``notes`` record ``layers``, ``system``, ``contexts``.
    """
    B = len(contexts)
    b = _Builder(lay, B, system)
    g = lay.graph
    layers = lay.layers[system] if layers is None else layers
    streaming = lay.placement == "streaming"
    if system == 0:
        for op in g.prologue:
            b.lookup(op)
        if streaming:
            b.blocks.append(WeightBlock(0, "embed", 0))
    for li in layers:
        blk = len(b.blocks)
        for op in g.layer:
            pre = f"{'prefill.' if phase == 'prefill' else ''}L{li}."
            if op.kind == "linear":
                b.gemv(pre, op, li, blk)
            elif op.kind == "attention":
                b.attention(pre, op, li, contexts)
            elif op.kind != "split":
                b.elementwise(pre, op, li, blk)
        if streaming:
            b.blocks.append(WeightBlock(blk, f"layer{li}", 0))
    if system == lay.systems - 1:
        if phase == "prefill":
            b.B = 1  # the LM head of the prompt's last token only
        blk = len(b.blocks)
        for op in g.epilogue:
            if op.kind == "lm_head":
                b.gemv("", op, lay.cfg.n_layer, blk)
            else:
                b.elementwise("", op, lay.cfg.n_layer, blk)
        if phase == "decode":
            b.sampling(sampling, top_k)
        if streaming:
            b.blocks.append(WeightBlock(blk, "head", 0))
    blocks = []
    for wbk in b.blocks:
        nbytes = sum(k.weight_bytes for k in b.kernels if k.weight_block == wbk.id)
        blocks.append(WeightBlock(wbk.id, wbk.name, int(nbytes)))
    weight_bytes = _step_weight_bytes(lay, system)
    prog = Program(
        f"{lay.cfg.name}/decode/{lay.placement}/s{system}",
        lay.rows,
        lay.cols,
        lay.precision,
        b.kernels,
        blocks,
        b.maps,
        LayoutGeometry(grid=(lay.rows, lay.cols)),
        sram_cycles=b.sram_cycles,
        weight_bytes_read=weight_bytes,
        notes={"layers": [layers.start, layers.stop], "system": system,
               "contexts": list(contexts)},
    )  # fmt: skip
    return prog


def _step_weight_bytes(lay: DecodeLayout, system: int) -> int:
    """Weight bytes one decode step reads on ``system`` (every matrix and norm of its layers,
    the LM head on the last; the embedding's one row per request is left out)."""
    g, s = lay.graph, lay.elem_bytes
    total = len(lay.layers[system]) * sum(g.param_elems(op) for op in g.layer) * s
    if system == lay.systems - 1:
        total += sum(g.param_elems(op) for op in g.epilogue) * s
    return int(total)
