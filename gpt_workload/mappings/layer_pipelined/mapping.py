"""The layer-pipelined mapping as registered: its lowering to a Program, its knobs and its
numerics (:mod:`gpt_workload.mappings.layer_pipelined`)."""

from __future__ import annotations

import math

import numpy as np

from gpt_workload.config import GPTConfig
from gpt_workload.mappings.base import Knob, Mapping, register
from gpt_workload.mappings.layer_pipelined.plan import (
    MICRO_BATCH_AUTO,
    TICK_CHUNKS,
    _handoff,
    cols_used,
    plan_pipeline,
    stage_tick_terms,
    tick_kernel,
)
from gpt_workload.mappings.weight_streaming.plan import (
    _segments_for,
    choose_P,
)
from gpt_workload.precision import check_precision
from wse_sim.arch import ArchConfig
from wse_sim.errors import FitError
from wse_sim.program import LayoutGeometry, PipelineGeometry, PipelineStage, Program, Workload


def lower_layer_pipelined(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str,
    algorithm: str,
    micro_batch: int = MICRO_BATCH_AUTO,
    layers_per_stage: int = 1,
    spec: str = "layer_pipelined",
    fold: bool = True,
) -> Program:
    """Lower a layer-pipelined forward pass to a :class:`Program` (one kernel per tick).

    ``fold``: run each band as a folded ``rows nseg x P`` GEMM grid (:func:`stage_cost`).

    Raises:
        ConfigError: bad batch, seq_len or precision; FitError: does not fit in SRAM.
    """
    check_precision(precision)
    plan = plan_pipeline(
        cfg, arch, batch, seq_len, precision, algorithm, micro_batch, layers_per_stage, fold
    )
    R, C = arch.wafer.rows, arch.wafer.cols
    used = cols_used(fold, cfg, arch)
    cmap = np.full((R, C), -1, dtype=np.int16)
    for s_idx, (r0, r) in enumerate(zip(plan.row0, plan.rows, strict=True)):
        cmap[r0 : r0 + r, :used] = s_idx
    kernels = [
        tick_kernel(plan, t, cfg, arch, precision) for t in range(plan.n_micro + plan.n_stages - 1)
    ]
    weights = sum(st.weight_bytes for st in plan.stages)
    stages = []
    for s_idx, st in enumerate(plan.stages):
        c = plan.costs[plan.b][s_idx]
        h = (
            _handoff(plan, s_idx, plan.b, cfg, arch, precision)
            if s_idx < plan.n_stages - 1
            else None
        )
        comp, fab, lat = stage_tick_terms(c, h, arch)
        stages.append(
            PipelineStage(
                stage=st.name,
                rows=plan.rows[s_idx],
                first_row=plan.row0[s_idx],
                pes=plan.rows[s_idx] * used,
                weight_bytes=st.weight_bytes,
                flops_per_micro_batch=c.flops,
                compute_cycles=comp,
                fabric_cycles=fab,
                latency_cycles=lat,
                sram_bytes_per_pe=c.sram,
                sram_parts=c.sram_parts,
            )
        )
    P = choose_P(cfg, C)  # attention's head-parallel segments (in the layer bands)
    n_segs = plan.rows[1] * (C // P)
    m_att = _segments_for(min(plan.b, n_segs), seq_len, n_segs)[0]
    layout = LayoutGeometry(
        grid=(R, C),
        pes_per_segment=P,
        tokens_per_segment=m_att,
        sequences_per_micro_batch=plan.b,
        micro_batches=plan.n_micro,
        active_pes=int((cmap >= 0).sum()),
        pipeline=PipelineGeometry(
            stages=plan.n_stages,
            layers_per_stage=layers_per_stage,
            gemm=algorithm,
            fold=fold,
            gemm_grid_cols=P if fold else C,
            segment_columns=C // P if fold else 1,
            pipeline_ticks=len(kernels),
            rows_per_stage=tuple(plan.rows),
        ),
    )
    notes = {
        "tick_chunks": TICK_CHUNKS,
        "weight_load": {
            "bytes": weights,
            "seconds_at_ingress": weights / arch.io.ingress_bytes_per_s,
            "note": "one-time load of the resident weights from MemoryX, not in the timing",
        },
    }
    return Program(
        f"{cfg.name}/layer_pipelined", R, C, precision, kernels, [], {"stage": cmap}, layout,
        mapping=spec, workload=Workload(batch, seq_len, plan.n_micro, plan.b_last),
        pipeline_stages=tuple(stages), notes=notes,
    )  # fmt: skip


def _gemm_choices() -> tuple[str, ...]:
    try:
        from gpt_workload.mappings.gemm import GEMM_ALGORITHMS
    except ImportError:  # pragma: no cover - the GEMM module ships with the mappings
        return ("summa",)
    return tuple(GEMM_ALGORITHMS)


@register
class LayerPipelined(Mapping):
    """Layer-pipelined execution with every weight resident (module docstring).

    Knobs: ``gemm`` (the GEMM algorithm of every stage; default ``summa``: it runs on any
    ``rows_s x cols`` band, its weight tiles never move off their PE, and it only broadcasts
    panels along rows and columns, van de Geijn & Watts 1997), ``micro_batch`` (sequences per
    micro-batch; 0 = the fastest by the closed form), ``layers_per_stage``, ``fold`` (``on``:
    each band's GEMMs run on a ``rows (cols // P) x P`` logical grid, :func:`stage_cost`;
    ``off``: on the full ``rows x cols`` band, for comparison).
    """

    name = "layer_pipelined"
    mode = "layer_pipelined"
    #: the tick kernels' region transfers have no packet-level expansion
    packet_ok = False
    description = (
        "weights resident in SRAM; one wafer band per layer (plus embedding and head), "
        "micro-batches pipelined band to band (GPipe fill and drain)"
    )
    source = (
        "Huang et al. 2019, GPipe (NeurIPS); Lie 2022, Cerebras Architecture Deep Dive "
        "(Hot Chips 34): layer-pipelined mode; Narayanan et al. 2021 (SC21): tied embedding "
        "on the first and last stage"
    )
    knobs = (
        Knob("gemm", "str", "summa", "GEMM algorithm of every stage", choices=_gemm_choices()),
        Knob(
            "micro_batch",
            "int",
            MICRO_BATCH_AUTO,
            "sequences per micro-batch (0: fastest by the closed form)",
            lo=0,
        ),
        Knob("layers_per_stage", "int", 1, "transformer layers per pipeline stage", lo=1),
        Knob(
            "fold",
            "str",
            "on",
            "on: each band's segment columns of P PEs stacked as logical rows (a rows x "
            "cols//P by P GEMM grid); off: the full-width rows x cols band",
            choices=("on", "off"),
        ),
    )

    def lower(self, cfg, arch, batch: int, seq_len: int, precision: str) -> Program:
        """The layer-pipelined Program (:func:`lower_layer_pipelined`)."""
        self.check_family(cfg)
        return lower_layer_pipelined(
            cfg,
            arch,
            batch,
            seq_len,
            precision,
            self["gemm"],
            self["micro_batch"],
            self["layers_per_stage"],
            spec=self.spec,
            fold=self["fold"] == "on",
        )

    def max_batch_single_micro(self, cfg, arch, seq_len: int, precision: str) -> int:
        """Largest micro-batch (sequences) whose stages fit the wafer (doubling, then
        bisection over :func:`plan_pipeline` with a fixed micro-batch)."""
        self.check_family(cfg)

        def plan(b: int):  # batch b in micro-batches of b
            gemm, lps, fold = self["gemm"], self["layers_per_stage"], self["fold"] == "on"
            return plan_pipeline(cfg, arch, b, seq_len, precision, gemm, b, lps, fold)

        def fits(b: int) -> bool:
            try:
                plan(b)
            except FitError:
                return False
            return True

        if not fits(1):
            plan(1)  # raises the FitError that says why
        lo, hi = 1, 2
        while fits(hi) and hi < 1 << 16:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def numerics(self, program, cfg, weights, tokens, precision: str):
        """Logits of ``tokens`` [K, T] computed stage by stage as the pipeline does: every
        GEMM in the ``gemm`` algorithm's order on its stage's band (``gemm_numerics``), the
        rest in fp32 with every stored tensor rounded to ``precision``."""
        return pipeline_numerics(program, cfg, weights, tokens, precision, self["gemm"])


def pipeline_numerics(program, cfg, weights, tokens, precision: str, algorithm: str):
    """See :meth:`LayerPipelined.numerics`; returns a :class:`NumericsResult` whose
    ``health`` tracker checked the weights and every stored tensor (op, layer, position).

    Raises:
        ConfigError: tokens of the wrong shape, dtype or range.
    """
    from gpt_workload.health import HealthTracker, rows_locator
    from gpt_workload.mappings.gemm import gemm_numerics
    from gpt_workload.numerics import NumericsResult, check_tokens
    from gpt_workload.precision import round_storage
    from gpt_workload.reference import gelu

    tokens = check_tokens(program, cfg, tokens)
    K, T = tokens.shape
    f32 = np.float32
    health = HealthTracker(precision, "weights")
    health.check_weights(weights)
    health.phase = "forward"
    loc = rows_locator(T)

    def rnd(a, op=None, layer=None):
        a = np.ascontiguousarray(a, dtype=f32)
        return round_storage(a, precision) if op is None else health.store(op, layer, a, loc)

    pl = program.layout.pipeline
    rows, pc = pl.rows_per_stage, pl.gemm_grid_cols
    nseg, lps = pl.segment_columns, pl.layers_per_stage
    M = K * T

    def gemm(a, w, stage):
        pr = min(rows[stage] * nseg, M)
        return np.asarray(
            gemm_numerics(algorithm, a, rnd(w), pr, min(pc, a.shape[1]), "chain"), dtype=f32
        )

    def ln(x, g, b, op="layernorm_f", layer=None):
        health.check_norm_input(op, layer, x, (1,), loc)
        mu = x.mean(-1, keepdims=True, dtype=f32)
        var = ((x - mu) ** 2).mean(-1, keepdims=True, dtype=f32)
        return (x - mu) / np.sqrt(var + f32(cfg.layer_norm_eps)) * rnd(g) + rnd(b)

    wte = rnd(weights.wte)
    x = rnd(wte[tokens].reshape(M, -1) + np.tile(rnd(weights.wpe[:T]), (K, 1)), "embedding")
    d, H, dh = cfg.d_model, cfg.n_head, cfg.d_head
    causal = np.triu(np.ones((T, T), dtype=bool), k=1)
    n_run = 1
    for li, lw in enumerate(weights.layers):
        st = 1 + li // lps
        h = rnd(ln(x, lw.ln_1_g, lw.ln_1_b, "layernorm_1", li), "layernorm_1", li)
        qkv = rnd(gemm(h, lw.attn_w, st) + rnd(lw.attn_b), "qkv", li)
        q, k, v = (qkv[:, i * d : (i + 1) * d].reshape(K, T, H, dh) for i in range(3))
        health.check_scores("attention", li, q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), T)
        sc = np.einsum("kqhe,kshe->khqs", q, k, dtype=f32) / f32(math.sqrt(dh))
        sc[:, :, causal] = -np.inf
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        att = np.einsum("khqs,kshe->kqhe", sc, v, dtype=f32).reshape(M, d)
        att = rnd(att, "attention", li)
        y = rnd(gemm(att, lw.proj_w, st) + rnd(lw.proj_b), "attn_proj", li)
        x = rnd(x + y, "residual_1", li)
        h = rnd(ln(x, lw.ln_2_g, lw.ln_2_b, "layernorm_2", li), "layernorm_2", li)
        u = rnd(gemm(h, lw.fc_w, st) + rnd(lw.fc_b), "ffn_up", li)
        u = rnd(gelu(u.astype(np.float64), cfg.activation).astype(f32), "gelu", li)
        y = rnd(gemm(u, lw.fc2_w, st) + rnd(lw.fc2_b), "ffn_down", li)
        x = rnd(x + y, "residual_2", li)
        n_run += 1
    h = rnd(ln(x, weights.ln_f_g, weights.ln_f_b), "layernorm_f")
    logits = gemm(h, weights.wte.T, len(rows) - 1).reshape(K, T, -1)
    health.check("lm_head", None, logits.reshape(M, -1), loc)
    lg = logits.astype(np.float64)
    mx = lg.max(-1)
    lse = mx + np.log(np.exp(lg - mx[..., None]).sum(-1))
    loss_tok = np.zeros((K, T), dtype=f32)
    if T > 1:
        picked = np.take_along_axis(lg[:, :-1], tokens[:, 1:, None], -1)[..., 0]
        loss_tok[:, :-1] = lse[:, :-1] - picked
    # a 1-token sequence has no next-token target: no loss (None), not a NaN
    loss = float(loss_tok[:, :-1].astype(np.float64).mean()) if T > 1 else None
    return NumericsResult(logits, loss_tok, loss, lg.argmax(-1), n_run + 1, health)
