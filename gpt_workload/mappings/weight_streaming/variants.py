"""The mappings of the weight-streaming execution mode (weights from MemoryX, one layer at a
time on the whole wafer), registered by name.

All of them share the segment layout of :mod:`gpt_workload.mappings.weight_streaming.builder`: a
micro-batch's tokens
are cut into segments of ``m`` tokens, each held by ``P`` PEs of one grid row (PE ``j`` holds
feature slice ``j``); LayerNorm, GELU, the residual adds, the embedding and the
cross-entropy keep that layout's costs. They differ in how the GEMMs (qkv, attn_proj,
ffn_up, ffn_down, lm_head) and attention run:

* ``weight_streaming`` (default): the lowering as it is (weight rows multicast down the
  columns, partial sums reduce-scattered along each segment), with knobs for ``P``, ``m``,
  the reduction (``chain`` or ``tree``: :func:`gpt_workload.mappings.gemm.gemm_plan`'s
  ``ws``) and the attention layout (``head`` or ``sequence``).
* ``summa``, ``cannon``, ``meshgemm``, ``row_1d``, ``col_1d``: every GEMM runs that
  algorithm (:mod:`gpt_workload.mappings.gemm`, ``weights="stream"``) on *blocks* of
  consecutive segments (grid rows) x ``P`` columns, so a block row is a segment and its
  feature split is the algorithm's column split (``A[M_i, K_j]`` on PE ``(i, j)`` is the
  segment layout). ``cannon`` and ``meshgemm`` use square ``P x P`` blocks; ``summa``,
  ``row_1d`` and ``col_1d`` one segment (``1 x P``): with B streamed, SUMMA's B panels are
  the column multicast whatever the block height, and each PE's A panels and k order are
  those of its own row, so taller SUMMA blocks change neither traffic, time nor numerics
  (the knob that set them was dropped for that reason); ``row_1d`` also pays the
  all-to-all that turns the feature-split activations into token-split ones and back.
  Blocks run side by side; the weight stream is the column multicast of the default
  mapping (each column carries what its PEs need; ``row_1d``'s columns need all of B).
  A GEMM whose operand buffers and fp32 accumulators do not fit SRAM is cut into
  ``c_k x c_n`` sub-GEMMs of ``K / c_k`` x ``N / c_n``, each a full run of the algorithm, the
  pair costing the fewest PE cycles: K chunks (SUMMA's panel width) move the same bytes and
  issue the same vector ops in more steps; N chunks repeat A's traffic and shorten the
  vector ops (:meth:`_BlockGemm.chunked_plan`). A last block with fewer segments than
  the block's rows is costed pro rata (its share of a full block's link bytes).

Numerics: every mapping computes the model's logits with its own GEMM order
(:func:`gpt_workload.mappings.gemm.gemm_numerics`, bias added after the sum as in
:func:`gpt_workload.kernels.gemm_ws`) and, for ``attention=sequence``, the split-key
online-softmax merge of :func:`attention_sequence`.

The ``packet`` backend expands only the default mapping's transfer patterns; the other
mappings (and ``reduce=tree`` / ``attention=sequence``) are timed by ``event`` and
``analytic``.
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np

from gpt_workload.mappings.base import Knob, register
from gpt_workload.mappings.gemm import _Lines, gemm_numerics, gemm_plan, split
from gpt_workload.mappings.weight_streaming.builder import kv_multicast
from gpt_workload.mappings.weight_streaming.head_split import allowed_pes_per_segment
from gpt_workload.mappings.weight_streaming.mode import _M, _P, _WSMode
from gpt_workload.mappings.weight_streaming.plan import ACC_BYTES, COLOUR_KV, COLOUR_PSUM, choose_P
from wse_sim.errors import ConfigError, FitError
from wse_sim.program import PEClass


# ------------------------------------------------------------------------ tile GEMMs
def tile_gemm(algorithm: str, block_rows: int, reduce: str = "chain"):
    """A function with :func:`gpt_workload.kernels.gemm_ws`'s signature that computes the GEMM
    with :func:`gemm_numerics` on blocks of ``block_rows`` consecutive segments x ``P`` PEs
    (segments padded with zeros to whole blocks; N padded to ``P nt`` so PE ``j``'s output
    columns are its tile's), then adds the bias and zeroes padded token slots."""
    per_block = algorithm in ("cannon", "meshgemm")

    def fn(x_tiles, w, bias, out_tiles, *, segs_per_seq, seq_len):
        S, P, m, kt = x_tiles.shape
        nt = out_tiles.shape[3]
        N = w.shape[1]
        A = np.ascontiguousarray(x_tiles.transpose(0, 2, 1, 3).reshape(S * m, P * kt))
        B = np.zeros((P * kt, P * nt), np.float32)
        B[:, :N] = w
        if per_block:
            nb = math.ceil(S / block_rows)
            Ap = np.zeros((nb * block_rows * m, P * kt), np.float32)
            Ap[: S * m] = A
            # one call for all blocks: row-block i of the stacked blocks rotates by
            # (i + j) mod P, the same as row i mod P of its own block (block_rows = P)
            C = gemm_numerics(algorithm, Ap, B, nb * block_rows, P)[: S * m]
        else:
            C = gemm_numerics(algorithm, A, B, 1, P, reduce)
        if bias is not None and bias.shape[0]:
            C[:, :N] = C[:, :N] + bias
        pos = (np.arange(S)[:, None] % segs_per_seq) * m + np.arange(m)[None, :]
        C[(pos >= seq_len).reshape(-1)] = 0
        C[:, N:] = 0
        out_tiles[...] = C.reshape(S, m, P, nt).transpose(0, 2, 1, 3)
        return out_tiles

    return fn


# ------------------------------------------------------------- sequence-parallel attention
@numba.njit(parallel=True, cache=True)
def _attention_seq_kernel(qkv, segs_per_seq, seq_len, scale, out, d_head):  # pragma: no cover
    n_seg, n_pe, m, _ = qkv.shape
    hp = out.shape[3] // d_head
    n_seqs = n_seg // segs_per_seq
    neg_inf = np.float32(-np.inf)
    for unit in numba.prange(n_seqs * n_pe * hp):
        seq = unit // (n_pe * hp)
        j = (unit // hp) % n_pe
        h = unit % hp
        base = seq * segs_per_seq
        qo = h * d_head
        ko = hp * d_head + h * d_head
        vo = 2 * hp * d_head + h * d_head
        o = np.zeros(d_head, np.float32)
        bo = np.zeros(d_head, np.float32)
        for sp in range(segs_per_seq):
            s = base + sp
            n_keys_seg = min((sp + 1) * m, seq_len)
            kb0 = n_keys_seg // n_pe
            extra = n_keys_seg % n_pe
            for t in range(m):
                q = sp * m + t
                if q >= seq_len:
                    for d in range(d_head):
                        out[s, j, t, qo + d] = 0
                    continue
                mx = neg_inf
                ll = np.float32(0)
                started = False
                lo = 0
                for jj in range(n_pe):  # key blocks, merged in PE order along the segment
                    hi = lo + kb0 + (1 if jj < extra else 0)
                    top = min(hi, q + 1)
                    if top > lo:
                        bm = neg_inf
                        for i in range(lo, top):
                            z = np.float32(0)
                            for d in range(d_head):
                                z = z + qkv[s, j, t, qo + d] * qkv[base + i // m, j, i % m, ko + d]
                            z = z * scale
                            bm = max(bm, z)
                        bl = np.float32(0)
                        for d in range(d_head):
                            bo[d] = 0
                        for i in range(lo, top):
                            z = np.float32(0)
                            for d in range(d_head):
                                z = z + qkv[s, j, t, qo + d] * qkv[base + i // m, j, i % m, ko + d]
                            z = z * scale
                            e = np.float32(math.exp(np.float32(z - bm)))
                            bl = bl + e
                            for d in range(d_head):
                                bo[d] = bo[d] + e * qkv[base + i // m, j, i % m, vo + d]
                        if not started:
                            mx = bm
                            ll = bl
                            for d in range(d_head):
                                o[d] = bo[d]
                            started = True
                        else:
                            nm = max(mx, bm)
                            c1 = np.float32(math.exp(np.float32(mx - nm)))
                            c2 = np.float32(math.exp(np.float32(bm - nm)))
                            ll = ll * c1 + bl * c2
                            for d in range(d_head):
                                o[d] = o[d] * c1 + bo[d] * c2
                            mx = nm
                    lo = hi
                for d in range(d_head):
                    out[s, j, t, qo + d] = o[d] / ll


def attention_sequence(qkv_tiles, segs_per_seq, seq_len, scale, out_tiles, *, d_head):
    """Sequence-parallel causal attention, :func:`kernels.attention_tiled`'s signature and
    tile layout (the heads' outputs land on their head-parallel owners).

    Order, per query at position ``q`` of segment position ``p`` and head: the keys of the
    sequence up to the segment's end (``n = min((p + 1) m, T)``) are split into ``P``
    contiguous key blocks (:func:`gpt_workload.mappings.gemm.split`), one per PE of the
    segment; each PE forms its block's partial over its causal keys: scores ``z_i = (sum_d
    q[d] k_i[d], d ascending) * scale``, ``bm = max z_i``, ``e_i = exp(z_i - bm)``, ``bl =
    sum e_i``, ``bo = sum e_i v_i`` (``i`` ascending). The partials merge along the segment
    in PE order (online softmax): ``mx' = max(mx, bm)``, ``l = l exp(mx - mx') + bl exp(bm
    - mx')``, ``o = o exp(mx - mx') + bo exp(bm - mx')``; the output is ``o / l``.
    """
    n_seg, n_pe, m, width = qkv_tiles.shape
    _attention_seq_kernel(
        np.ascontiguousarray(qkv_tiles, dtype=np.float32),
        segs_per_seq,
        seq_len,
        np.float32(scale),
        out_tiles,
        d_head,
    )
    return out_tiles


class _SequenceAttention:
    """Cost of sequence-parallel attention in the segment layout (``attention=sequence``).

    Per segment at position ``p`` (``n = p m + m_p`` keys up to its end): each PE takes
    ``1 / P`` of the segment's causal (query, key) pairs for all ``H`` heads. Transfers: the
    segment's queries all-gathered along its row (every PE needs all heads: ``m d (P - 1)``
    elements), the sequence's K/V blocks multicast down the column as in head mode, then
    re-split on the row from feature-owner to key-owner (an all-to-all: piece ``(j -> j')``
    is key block ``j'``'s ``2 d / P`` features, ``|j - j'|`` hops), and the partial softmax
    statistics (``o``, ``max``, ``sum``: ``dh + 2`` fp32 per head and query) chain-reduced
    to each head's owner (``m H (dh + 2) (P - 1)`` values)."""

    def __init__(self):
        self.cache: dict = {}

    def attention(self, bld, layer, live):
        """Add the attention kernel of ``layer`` (classes and transfers cached per layout)."""
        key = (bld.L, bld.precision)
        if key not in self.cache:
            self.cache[key] = self._costs(bld, live)
        classes, transfers, sram = self.cache[key]
        bld.add(
            "attention",
            layer,
            classes,
            "position",
            transfers,
            sram=sram,
            n_chunks=max(min(bld.L.q, 16), 1),
        )

    def _costs(self, bld, live):
        L, W, ov, s, z = bld.L, bld.W, bld.ov, bld.s, bld.z
        dh, H, P = z.dh, bld.cfg.n_head, L.P
        d = bld.cfg.d_model
        classes = []
        qg = _Lines("query all-gather", "allgather_row", "horizontal", 1, P, COLOUR_KV)
        rs = _Lines("K/V re-split", "alltoall_row", "horizontal", 1, P, COLOUR_KV)
        st = _Lines("softmax merge", "reduce_scatter_row", "horizontal", 1, P, COLOUR_PSUM)
        links = 0.0
        for p in range(L.q):
            mp = L.m_last if p == L.q - 1 else L.m
            pairs = mp * p * L.m + mp * (mp + 1) / 2
            blocks = mp * P
            busy = H * (pairs / P * 2 * dh / W + pairs / P * 3 / W)
            ops = H * (2 * pairs / P + 3 * mp + 3 * blocks / P)
            classes.append(PEClass(p, L.b * L.P, busy, ops * ov, H * pairs / P * 4.0 * dh))
            n_keys = p * L.m + mp
            kb = split(n_keys, P)
            seg = (
                _Lines("q", "x", "horizontal", 1, P, 0),
                _Lines("kv", "x", "horizontal", 1, P, 0),
                _Lines("st", "x", "horizontal", 1, P, 0),
            )
            for line in (qg, seg[0]):
                for j in range(P):
                    line.multicast(0, j, mp * (d / P) * s)
            for line in (rs, seg[1]):
                for j in range(P):
                    for j2 in range(P):
                        line.unicast(0, j, j2, (kb[j2 + 1] - kb[j2]) * 2 * (d / P) * s)
            sl = mp * (H / P) * (dh + 2) * ACC_BYTES
            for line in (st, seg[2]):
                for o in range(P):
                    line.fwd[0, :o] += sl
                    line.back[0, o:] += sl
                    line.recv[0, o] += sl
            links += L.b * sum(x.transfer().link_bytes for x in seg)
        kv_block = L.m * 2 * d * s / P
        kv = kv_multicast(L, kv_block)
        row = [qg.transfer(), rs.transfer(), st.transfer(hops=P - 1, relays=max(P - 2, 0))]
        # the row transfers were accumulated over segment positions: busiest link = the
        # largest position's; wafer link bytes = every sequence's segments
        row_total = sum(t.link_bytes for t in row)
        row = [
            dataclasses.replace(
                t,
                max_link_bytes=t.max_link_bytes / L.q,
                ramp_bytes=t.ramp_bytes / L.q,
                link_bytes=links * t.link_bytes / row_total if row_total else 0.0,
            )
            for t in row
        ]
        sram = live + 2 * kv_block + L.m * L.m * ACC_BYTES + 3 * L.m * H * ACC_BYTES
        return classes, (kv, *row), sram


# ----------------------------------------------------------------- GEMM strategies
class _TreeReduce:
    """The default GEMM with the partial sums reduce-scattered by recursive halving."""

    gemm_plan_args: dict = {}

    def gemm(self, bld, op, layer, K, N, blk, live, bias, extra):
        strat, bld.strategy = bld.strategy, None
        try:
            bld.gemm(op, layer, K, N, blk, live, bias, extra)
        finally:
            bld.strategy = strat
        L = bld.L
        plan = gemm_plan(
            "ws",
            M=L.m,
            K=K,
            N=N,
            pr=1,
            pc=L.P,
            precision=bld.precision,
            arch=bld.arch,
            reduce="tree",
        )
        ps = [t for t in plan.transfers if t.pattern == "reduce_scatter_tree"]
        k = bld.kernels[-1]
        trs = [t for t in k.transfers if t.pattern != "reduce_scatter_row"]
        if ps:
            trs.append(dataclasses.replace(ps[0], link_bytes=ps[0].link_bytes * L.n_segments))
        bld.kernels[-1] = dataclasses.replace(k, transfers=tuple(trs))


class _BlockGemm:
    """Every GEMM runs ``algorithm`` on blocks of segments x ``P`` PEs (:meth:`rows_of`)."""

    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        self.cache: dict = {}

    def rows_of(self, L) -> int:
        if self.algorithm in ("cannon", "meshgemm"):
            if L.rows < L.P:
                raise FitError(
                    f"mapping {self.algorithm}: a {L.P} x {L.P} block needs {L.P} grid rows, "
                    f"the grid has {L.rows}; lower pes_per_segment"
                )
            return L.P
        if self.algorithm in ("row_1d", "col_1d"):
            return 1
        return 1  # summa: one segment (see the module docstring)

    def chunked_plan(self, bld, op, M, K, N, pr, budget):
        """``(c, plan)``: the GEMM cut into ``c = c_k x c_n`` sub-GEMMs of ``K / c_k`` x
        ``N / c_n`` whose buffers fit ``budget`` bytes per PE, the cheapest in PE cycles.

        K chunks (the panel width of SUMMA, van de Geijn & Watts 1997) move the same bytes
        and issue the same vector ops as the whole GEMM, only in more steps; N chunks repeat
        the algorithm's A traffic and issue ``c_n`` times the vector ops of shorter length.
        ``plan`` is one sub-GEMM's.

        Raises:
            FitError: not even the smallest chunks fit, naming the kernel and the bytes.
        """
        P = bld.L.P
        best, smallest = None, None
        c_n = 1
        while True:
            Nc = math.ceil(N / c_n)
            c_k = 1
            while True:
                Kc = math.ceil(K / c_k)
                plan = self.plan(bld, M, Kc, Nc, pr)
                if smallest is None or plan.sram_bytes < smallest:
                    smallest = plan.sram_bytes
                if plan.sram_bytes <= budget:
                    cost = c_n * c_k * plan.cycles
                    if best is None or cost < best[0]:
                        best = (cost, c_n * c_k, plan)
                    break
                if Kc <= P:
                    break
                c_k *= 2
            if Nc <= P:
                break
            c_n *= 2
        if best is None:
            raise FitError(
                f"kernel {op} of {bld.cfg.name} under mapping {self.algorithm}: its operand "
                f"buffers need {smallest} B per PE even in the smallest K x N chunks; "
                f"{budget} B free: lower tokens_per_segment"
            )
        return best[1], best[2]

    def plan(self, bld, M, K, Nc, pr):
        key = (M, K, Nc, pr, bld.L.P)
        if key not in self.cache:
            self.cache[key] = gemm_plan(
                self.algorithm,
                M=M,
                K=K,
                N=Nc,
                pr=pr,
                pc=bld.L.P,
                precision=bld.precision,
                arch=bld.arch,
                weights="stream",
            )
        return self.cache[key]

    def gemm(self, bld, op, layer, K, N, blk, live, bias, extra):
        L, W, ov, s = bld.L, bld.W, bld.ov, bld.s
        P = L.P
        pr = self.rows_of(L)
        M = pr * L.m
        budget = bld.arch.pe.sram_usable_bytes - bld.wbuf - live
        c, plan = self.chunked_plan(bld, op, M, K, N, pr, budget)
        n_blocks = L.n_segments / pr
        nt = N / P

        def per(mp: int):
            f = c * mp / L.m
            busy = plan.busy_cycles * f + extra * mp * nt / W
            ops = extra * c * mp
            if bias:
                busy += mp * nt / W
                ops += mp
            return busy, plan.overhead_cycles * f + ops * ov, 2.0 * mp * K * nt

        rows_used = bld.rows_used
        trs = []
        for t in plan.transfers:
            if t.pattern == "multicast_2d":  # the weight stream: down whole grid columns
                need = t.link_bytes / pr * c  # bytes of B the block's columns take in
                trs.append(
                    dataclasses.replace(
                        t,
                        max_link_bytes=max(t.max_link_bytes * c, need / max(rows_used, 1)),
                        link_bytes=t.link_bytes * c * n_blocks,
                        hops=rows_used,
                        ramp_bytes=t.ramp_bytes * c,
                    )
                )
            else:
                trs.append(
                    dataclasses.replace(
                        t,
                        max_link_bytes=t.max_link_bytes * c,
                        link_bytes=t.link_bytes * c * n_blocks,
                        ramp_bytes=t.ramp_bytes * c,
                        hops=t.hops * c,
                    )
                )
        if self.algorithm == "row_1d":
            trs += self._relayout(L, K, N, s)
        wbytes = (K * N + (N if bias else 0)) * s
        bld.add(
            op,
            layer,
            bld.token_classes(per),
            "tokens",
            trs,
            blk,
            wbytes,
            live + plan.sram_bytes,
            n_chunks=max(plan.n_steps * c, 8),
        )

    @staticmethod
    def _relayout(L, K, N, s):
        """row_1d's all-to-alls on each segment row: A from feature-split (``K / P`` per PE)
        to token-split (``m / P`` tokens per PE), and C back."""
        P, m = L.P, L.m
        tb, kb, nb = split(m, P), split(K, P), split(N, P)
        out = []
        for name, fb, es in (("A to token-split", kb, s), ("C to feature-split", nb, s)):
            x = _Lines(name, "alltoall_row", "horizontal", 1, P, COLOUR_PSUM)
            for j in range(P):
                for j2 in range(P):
                    src, dst = (j, j2) if name.startswith("A") else (j2, j)
                    x.unicast(0, src, dst, (tb[j2 + 1] - tb[j2]) * (fb[j + 1] - fb[j]) * es)
            t = x.transfer()
            out.append(dataclasses.replace(t, link_bytes=t.link_bytes * L.n_segments))
        return out


class _Strategy:
    """A :class:`gpt_workload.mappings.weight_streaming.builder._Builder` strategy: optional gemm
    and attention."""

    def __init__(self, gemm=None, attention=None):
        self.gemm = gemm.gemm if gemm is not None else None
        self.attention = attention.attention if attention is not None else None


# ---------------------------------------------------------------------- mappings
@register
class WeightStreaming(_WSMode):
    """The default mapping: the weight-streaming lowering with its knobs."""

    name = "weight_streaming"
    description = (
        "weights streamed layer by layer and multicast down columns; activations resident; "
        "partial sums reduced along each segment"
    )
    source = "Cerebras weight streaming (Hall et al., Cerebras white paper 2021; arXiv 2304.03208)"
    knobs = (
        _P,
        _M,
        Knob("reduce", "str", "chain", "partial-sum reduction along a segment", ("chain", "tree")),
        Knob(
            "attention",
            "str",
            "head",
            "attention layout: heads over the segment's PEs, or its keys (online-softmax merge)",
            ("head", "sequence"),
        ),
    )

    families = ("gpt2", "gptj", "llama", "qwen2")

    def accepts(self, cfg) -> bool:
        """Every family at reduce=chain, attention=head; the other knob values gpt2 only."""
        return cfg.family == "gpt2" or (self.packet_ok and cfg.family in self.families)

    @property
    def packet_ok(self) -> bool:  # type: ignore[override]
        """The packet backend knows the default reduction and attention patterns only."""
        return self["reduce"] == "chain" and self["attention"] == "head"

    @property
    def searches_layout(self) -> bool:  # type: ignore[override]
        """``auto`` P and m are searched (:mod:`.search`) at reduce=chain, attention=head;
        the other knob values keep the layout's own choice."""
        return self.packet_ok

    def strategy(self, cfg, arch, precision):
        if self["reduce"] == "chain" and self["attention"] == "head":
            return None
        P = self._layout_args(cfg, arch)["P"] or choose_P(cfg, arch.wafer.cols)
        if self["attention"] == "sequence" and P > cfg.n_head:
            raise ConfigError(
                f"mapping {self.name}: attention=sequence needs whole heads per PE "
                f"(pes_per_segment dividing n_head={cfg.n_head}), got {P}"
            )
        if self["reduce"] == "tree":
            if P & (P - 1):
                ok = [
                    p
                    for p in allowed_pes_per_segment(cfg, arch.wafer.cols)
                    if not p & (p - 1)
                ]
                how = "" if isinstance(self["pes_per_segment"], int) else " (the layout's choice)"
                raise ConfigError(
                    f"mapping {self.name}: reduce=tree needs pes_per_segment a power of two "
                    f"(n_head={cfg.n_head}), got {P}{how}; allowed: "
                    f"{', '.join(map(str, ok))}"
                )
        return _Strategy(
            gemm=_TreeReduce() if self["reduce"] == "tree" else None,
            attention=_SequenceAttention() if self["attention"] == "sequence" else None,
        )

    def lower(self, cfg, arch, batch, seq_len, precision):
        prog = super().lower(cfg, arch, batch, seq_len, precision)
        P = prog.layout.pes_per_segment
        if self["reduce"] == "tree" and P & (P - 1):
            raise ConfigError(
                f"mapping {self.name}: reduce=tree needs a power-of-two pes_per_segment; the "
                f"layout chose P={P} (n_head={cfg.n_head}): set pes_per_segment"
            )
        return prog

    def gemm_numerics_fn(self):
        return tile_gemm("ws", 1, "tree") if self["reduce"] == "tree" else None

    def attention_numerics_fn(self):
        return attention_sequence if self["attention"] == "sequence" else None


class _BlockMapping(_WSMode):
    algorithm = ""

    def max_batch_single_micro(self, cfg, arch, seq_len, precision):
        """The segment layout's largest one-micro-batch batch, lowered for as many fewer
        sequences as it takes for every GEMM's buffers to fit (a one-layer model is lowered
        to check: every layer has the same GEMMs)."""
        b = super().max_batch_single_micro(cfg, arch, seq_len, precision)
        one = dataclasses.replace(cfg, n_layer=1)
        while True:
            try:
                self.lower(one, arch, b, seq_len, precision)
                return b
            except FitError:
                if b == 1:
                    raise
                b = max(1, b * 3 // 4)

    def strategy(self, cfg, arch, precision):
        return _Strategy(gemm=_BlockGemm(self.algorithm))

    def numerics(self, program, cfg, weights, tokens, precision):
        from gpt_workload.numerics import run_numerics

        P = program.layout.pes_per_segment
        fn = tile_gemm(self.algorithm, P if self.algorithm in ("cannon", "meshgemm") else 1)
        return run_numerics(program, cfg, weights, tokens, precision, gemm=fn)


@register
class Summa(_BlockMapping):
    """SUMMA GEMMs."""

    name = "summa"
    algorithm = "summa"
    description = "every GEMM as SUMMA on each segment: A panels along the row, B down columns"
    source = "van de Geijn & Watts, SUMMA, Concurrency: Pract. Exper. 9(4), 1997"
    knobs = (_P, _M)


@register
class Cannon(_BlockMapping):
    """Cannon GEMMs on P x P blocks."""

    name = "cannon"
    algorithm = "cannon"
    description = "every GEMM as Cannon's algorithm on P x P blocks (skew + cyclic shifts, no wrap)"
    source = "L. E. Cannon, PhD thesis, Montana State University, 1969"
    knobs = (_P, _M)


@register
class MeshGemm(_BlockMapping):
    """WaferLLM MeshGEMM on P x P blocks."""

    name = "meshgemm"
    algorithm = "meshgemm"
    description = "every GEMM as WaferLLM's MeshGEMM: Cannon with a 2-hop interleaved ring"
    source = "He et al., WaferLLM, OSDI 2025 (arXiv 2502.04563)"
    knobs = (_P, _M)


@register
class Row1D(_BlockMapping):
    """1-D row partition."""

    name = "row_1d"
    algorithm = "row_1d"
    description = "every GEMM 1-D over tokens: each PE of a segment m/P whole tokens, all of B"
    source = "1-D (row) GEMM partition, Kumar et al., Introduction to Parallel Computing, 2003"
    knobs = (_P, _M)


@register
class Col1D(_BlockMapping):
    """1-D column partition."""

    name = "col_1d"
    algorithm = "col_1d"
    description = "every GEMM 1-D over output columns: A all-gathered along the segment"
    source = "1-D (column) GEMM partition, Kumar et al., Introduction to Parallel Computing, 2003"
    knobs = (_P, _M)
