"""Weight delivery of the weight-streaming layout: segments wider than ``n_head`` (heads split
over PEs), the ``auto`` layout search, and split-head numerics.

Expected values: the closed form ``P x link bytes per cycle x clock`` for the rate distinct
weights enter the wafer (one link per column of a segment), the arch presets' MemoryX
ingress rate, the float64 reference forward / Hugging Face ``transformers`` logits, and
:func:`gpt_workload.kernels.attention_tiled` (the whole-head kernel) for ``k = 1``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gpt_workload.kernels import attention_tiled
from gpt_workload.kernels.split_heads import attention_split, attention_split_tiled
from gpt_workload.mappings import parse_mapping
from gpt_workload.mappings.weight_streaming.head_split import (
    allowed_pes_per_segment,
    io_pes_per_segment,
    pes_per_head,
    weight_entry_bytes_per_s,
)
from gpt_workload.mappings.weight_streaming.layout import TileLayout
from gpt_workload.models import load_checkpoint, resolve_model
from gpt_workload.simulate import simulate
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError


def _entry_closed_form(arch, P: int) -> float:
    return P * arch.fabric.link_bits_per_cycle / 8 * arch.pe.clock_hz


@pytest.mark.parametrize(
    "model,arch", [("cerebras-gpt-111m", "wse2"), ("gpt-j-6b", "wse3"), ("llama-3.1-8b", "wse3")]
)
def test_io_layout_absorbs_the_ingress_rate(model, arch) -> None:
    """``pes_per_segment=io`` and the allowed widths: some allowed segment takes in
    ``min(io rate, widest allowed segment's rate)``; the io choice is the narrowest that does."""
    cfg, a = resolve_model(model), load_arch(arch)
    ok = allowed_pes_per_segment(cfg, a.wafer.cols)
    target = min(a.io.ingress_bytes_per_s, _entry_closed_form(a, ok[-1]))
    P = io_pes_per_segment(cfg, a)
    assert weight_entry_bytes_per_s(a, P) == pytest.approx(_entry_closed_form(a, P))
    assert _entry_closed_form(a, P) >= target
    assert all(_entry_closed_form(a, p) < target for p in ok if p < P)
    # the old layout (P dividing n_head) could not: 12 and 16 columns x 4 B x 1.1 GHz
    assert _entry_closed_form(a, max(p for p in ok if cfg.n_head % p == 0)) < target
    prog = parse_mapping("weight_streaming:pes_per_segment=io").lower(
        dataclasses.replace(cfg, n_layer=1), a, 1, 256, "fp16"
    )
    lay = prog.layout
    assert lay.pes_per_segment == P and lay.pes_per_head == pes_per_head(cfg, P)
    assert weight_entry_bytes_per_s(a, lay.pes_per_segment) >= target


@pytest.mark.parametrize("model,arch", [("cerebras-gpt-111m", "wse2"), ("gpt-j-6b", "wse3")])
def test_auto_layout_absorbs_the_ingress_rate_when_io_bound(model, arch) -> None:
    """One short sequence: the weights dominate, and the searched layout's columns take them in
    at >= min(io rate, what the widest allowed segment allows)."""
    cfg, a = dataclasses.replace(resolve_model(model), n_layer=2), load_arch(arch)
    prog = parse_mapping("weight_streaming").lower(cfg, a, 1, 256, "fp16")
    lay = prog.layout
    widest = allowed_pes_per_segment(cfg, a.wafer.cols)[-1]
    target = min(a.io.ingress_bytes_per_s, _entry_closed_form(a, widest))
    assert _entry_closed_form(a, lay.pes_per_segment) >= target
    assert lay.pes_per_segment > cfg.n_head and lay.search["layout_search"]["fitted"] > 1


def test_search_keeps_the_fastest_candidate() -> None:
    """The searched layout is no slower (analytic) than the old one (P = n_head) nor than the
    io one."""
    from wse_sim.timing.analytic import run_analytic

    cfg, a = dataclasses.replace(resolve_model("cerebras-gpt-111m"), n_layer=2), load_arch("wse2")
    t = {
        spec: run_analytic(parse_mapping(spec).lower(cfg, a, 2, 512, "fp16"), a).total_s
        for spec in ("weight_streaming", "weight_streaming:pes_per_segment=12",
                     "weight_streaming:pes_per_segment=io")  # fmt: skip
    }
    assert t["weight_streaming"] <= min(t.values())


@pytest.mark.parametrize(
    "spec,match",
    [
        ("weight_streaming:pes_per_segment=5", r"pes_per_segment=5 .*allowed: 1, 2, 4, 8, 16, 32"),
        ("weight_streaming:pes_per_segment=64", r"pes_per_segment=64 .*allowed: 1, 2, 4, 8, 16, 32"),
        ("weight_streaming:pes_per_segment=fast", r"'fast' must be auto, heads, io or an int"),
        ("weight_streaming:tokens_per_segment=io", r"tokens_per_segment='io' must be auto or"),
        ("weight_streaming:attention=sequence,pes_per_segment=8", "whole heads per PE"),
    ],
)
def test_bad_pes_per_segment(spec, match) -> None:
    """gpt-tiny (4 heads of 16 features) on a 32-wide grid: P in {1, 2, 4} or 4k, k | 16."""
    with pytest.raises(ConfigError, match=match):
        parse_mapping(spec).lower(resolve_model("gpt-tiny"), load_arch("grid32"), 2, 32, "fp16")


def test_bad_pes_per_segment_cli(capsys) -> None:
    from gpt_workload.cli import main

    rc = main(["run", "--model", "gpt-tiny", "--arch", "grid32", "--check-sequences", "0",
               "--mapping", "weight_streaming:pes_per_segment=6"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "pes_per_segment=6" in err[0] and "allowed" in err[0]


@pytest.mark.parametrize("seed", [0, 3])
def test_split_kernel_with_one_pe_per_head_is_attention_tiled(seed) -> None:
    """k = 1 is the whole-head kernel's arithmetic, bit for bit."""
    rng = np.random.default_rng(seed)
    H, dh, T, m, K = 4, 8, 13, 4, 2
    tl = TileLayout(n_seq=K, seq_len=T, m=m, P=H)
    qkv = rng.standard_normal((K, T, 3 * H * dh)).astype(np.float32)
    from gpt_workload.mappings.weight_streaming.layout import qkv_column_permutation

    tiles = tl.to_tiles(qkv[:, :, qkv_column_permutation(H, dh, H)])
    a = attention_tiled(tiles, tl.segs_per_seq, T, 0.3, tl.empty_tiles(H * dh), d_head=dh)
    b = attention_split_tiled(tiles, tl, H, dh, 0.3, tl.empty_tiles(H * dh))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("ks", [2, 4])
def test_split_kernel_matches_float64_softmax(ks) -> None:
    rng = np.random.default_rng(ks)
    B, H, Hkv, T, dh = 2, 4, 2, 11, 8
    q = rng.standard_normal((B, H, T, dh)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, T, dh)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, T, dh)).astype(np.float32)
    out = attention_split(q, k, v, ks, 3, 0.35)
    kk = np.repeat(k.astype(np.float64), H // Hkv, axis=1)
    vv = np.repeat(v.astype(np.float64), H // Hkv, axis=1)
    s = q.astype(np.float64) @ kk.transpose(0, 1, 3, 2) * np.float64(np.float32(0.35))
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ vv
    assert np.abs(out - ref).max() <= 1e-5


@pytest.mark.parametrize("P", [8, 16])
def test_gpt2_split_heads_match_reference(P) -> None:
    """gpt-tiny with each head over P / 4 PEs: fp32 logits within 1e-4 of the float64
    reference, on every timing backend's Program (the numerics read the Program's layout)."""
    rep = simulate("gpt-tiny", "grid32", mapping=f"weight_streaming:pes_per_segment={P}",
                   precision="fp32", batch=4, seq_len=32, check_sequences=2)  # fmt: skip
    assert rep.layout["pes_per_head"] == P // 4 and rep.layout["pes_per_segment"] == P
    assert rep.numerics["max_abs_error_vs_reference"] <= 1e-4
    assert rep.numerics["loss"] == pytest.approx(rep.numerics["reference_loss"], abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "gptj"])
def test_graph_family_split_heads_match_hf(tiny_checkpoints, family) -> None:
    """A graph family with heads split over 2 PEs: fp32 logits within 1e-4 of Hugging Face."""
    path, model = tiny_checkpoints[family]
    cfg, _ = load_checkpoint(path)
    P = 2 * cfg.n_head
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, size=(2, 24))
    rep = simulate(str(path), "grid32", mapping=f"weight_streaming:pes_per_segment={P}",
                   precision="fp32", batch=8, seq_len=24, tokens=tokens,
                   keep_logits=True)  # fmt: skip
    assert rep.layout["pes_per_head"] == 2
    with torch.no_grad():
        hf = model(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(rep.logits - hf).max() <= 1e-4
    assert rep.numerics["max_abs_error_vs_reference"] <= 1e-4


def test_split_heads_add_the_score_all_reduce() -> None:
    """P = 2 n_head: the attention kernel carries the head score all-reduce, each link of a
    head's chain the causal scores of the last segment position once per direction (fp32)."""
    cfg, a = resolve_model("gpt-tiny"), load_arch("grid32")
    prog = parse_mapping("weight_streaming:pes_per_segment=8,tokens_per_segment=4").lower(
        cfg, a, 2, 32, "fp16"
    )
    k = next(k for k in prog.kernels if k.op == "attention")
    t = next(t for t in k.transfers if t.pattern == "allreduce_head")
    m, T = 4, 32
    assert t.max_link_bytes == 4 * (m * (T - m) + m * (m + 1) / 2)
    assert t.hops == 2 and t.relays == 1


def test_split_heads_sram_holds_the_received_scores() -> None:
    """gpt-tiny (d 64), P = 8 (k = 2), m = 4, fp16: the attention kernel holds the residual,
    Q|K|V, the output (m x d/P each, 3 d/P for QKV), two K/V blocks (m x 2 d/P), the m x m
    fp32 scores, 3 m fp32 softmax statistics, and, split heads only, the m x m fp32 partial
    scores received from the head's previous PE; plus the weight buffers' share."""
    from gpt_workload.mappings.weight_streaming.plan import _weight_buffer_share

    cfg, a = resolve_model("gpt-tiny"), load_arch("grid32")
    prog = parse_mapping("weight_streaming:pes_per_segment=8,tokens_per_segment=4").lower(
        cfg, a, 2, 32, "fp16"
    )
    k = next(k for k in prog.kernels if k.op == "attention")
    m, f, s = 4, 64 // 8, 2
    live = m * f * s + m * 3 * f * s + m * f * s
    expect = live + 2 * (m * 2 * f * s) + m * m * 4 + 3 * m * 4 + m * m * 4
    assert k.sram_bytes == expect + _weight_buffer_share(cfg, a, s)


def _packet_agrees(prog, arch) -> None:
    """``packet`` expands every transfer (the head all-reduce and exchange included), loses
    no wavelet, and ``event`` / ``analytic`` stay within 5 % of it."""
    from wse_sim.timing.analytic import run_analytic
    from wse_sim.timing.event import run_event
    from wse_sim.timing.packet import run_packet

    pk = run_packet(prog, arch, check=True)
    c = pk.extra["conservation"]
    assert c["missing"] == c["duplicated"] == c["unexpected"] == [] and c["in_flight"] == 0
    for run in (run_event, run_analytic):
        assert run(prog, arch).total_s == pytest.approx(pk.total_s, rel=0.05), run


def test_packet_times_split_heads_gpt2() -> None:
    """gpt-tiny on an 8 x 8 grid with fast I/O (so the fabric shows), P = 8: heads over 2 PEs."""
    arch = load_arch("grid8", ["io.ingress_bytes_per_s=1e12"])
    prog = parse_mapping("weight_streaming:pes_per_segment=8").lower(
        resolve_model("gpt-tiny"), arch, 2, 32, "fp16"
    )
    assert any(t.pattern == "allreduce_head" for k in prog.kernels for t in k.transfers)
    _packet_agrees(prog, arch)


def test_packet_times_split_heads_llama(tiny_checkpoints) -> None:
    """The tiny llama's shape with heads over 2 PEs: the rotate-half exchange and the score
    all-reduce on the packet engine (multi-head K/V: the packet backend does not expand the
    GQA group all-gather, with or without split heads)."""
    path, _ = tiny_checkpoints["llama"]
    cfg, _ = load_checkpoint(path)
    cfg = dataclasses.replace(cfg, n_kv_heads=cfg.n_head, n_layer=1)
    arch = load_arch("grid8", ["io.ingress_bytes_per_s=1e12"])
    prog = parse_mapping(f"weight_streaming:pes_per_segment={2 * cfg.n_head}").lower(
        cfg, arch, 2, 24, "fp16"
    )
    pats = {t.pattern for k in prog.kernels for t in k.transfers}
    assert {"allreduce_head", "exchange_head"} <= pats
    _packet_agrees(prog, arch)


def test_heads_is_the_classic_layout_and_the_report_gives_the_entry_rate() -> None:
    """``pes_per_segment=heads``: P = n_head at the widest spread, not searched; the report's
    layout gives the segment's entry rate (closed form) and its ratio to the ingress rate."""
    from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming

    cfg, a = resolve_model("gpt-tiny"), load_arch("grid32")
    prog = parse_mapping("weight_streaming:pes_per_segment=heads").lower(cfg, a, 2, 32, "fp16")
    assert "layout_search" not in prog.layout.search
    assert prog.kernels == lower_weight_streaming(cfg, a, 2, 32, "fp16").kernels
    rep = simulate("gpt-tiny", "grid32", mapping="weight_streaming:pes_per_segment=8",
                   fidelity="analytic", batch=2, seq_len=32, check_sequences=0)  # fmt: skip
    assert rep.layout["weight_entry_bytes_per_s"] == pytest.approx(_entry_closed_form(a, 8))
    assert rep.layout["weight_entry_vs_ingress"] == pytest.approx(
        _entry_closed_form(a, 8) / a.io.ingress_bytes_per_s
    )
