"""The fast weight-streaming lowering builds the same Program as the straightforward one.

The reference is the lowering as it was written before it was made fast, run in this test:
every layer and micro-batch lowered (``derive=False``), the per-PE class maps built segment
by segment with ``np.repeat``, the attention classes and the split-head score all-reduce
position by position in Python floats (the code below, copied from the earlier revision).
The fast path (layers and micro-batches renamed from the first, vectorised classes, blocked
class maps) must give a Program equal to it field for field: every kernel, PE class,
transfer, weight block, class map, layout and workload, floats bit for bit and types
included (:func:`canonical`).
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpt_workload.mappings import parse_mapping
from gpt_workload.mappings.weight_streaming import builder as ws_builder
from gpt_workload.mappings.weight_streaming import graph_builder as ws_graph
from gpt_workload.mappings.weight_streaming import head_split
from gpt_workload.mappings.weight_streaming import search as ws_search
from gpt_workload.mappings.weight_streaming.builder import lower_weight_streaming
from gpt_workload.mappings.weight_streaming.graph_builder import GraphBuilder
from gpt_workload.mappings.weight_streaming.layout import WSLayout
from gpt_workload.models import parse_hf_dict, resolve_model
from tests.conftest import TINY_HF_CONFIGS
from wse_sim.arch import load_arch
from wse_sim.program import PEClass, Transfer

GRID32 = load_arch("grid32")
WSE2 = load_arch("wse2")


# ------------------------------------------------------------ the earlier revision's code
def ref_class_maps(L, suffix: str = "") -> dict[str, np.ndarray]:
    n_slots = L.rows * L.segs_per_row
    pos = np.full(n_slots, -1, dtype=np.int16)
    pos[: L.n_segments] = np.arange(L.n_segments) % L.q
    last = (pos == L.q - 1) & (L.m_last != L.m)
    tokv = np.where(pos < 0, -1, last.astype(np.int16)).astype(np.int16)
    tok = np.full((L.rows, L.cols), -1, dtype=np.int16)
    posm = np.full((L.rows, L.cols), -1, dtype=np.int16)
    width = L.segs_per_row * L.P
    tok[:, :width] = np.repeat(tokv.reshape(L.segs_per_row, L.rows).T, L.P, axis=1)
    posm[:, :width] = np.repeat(pos.reshape(L.segs_per_row, L.rows).T, L.P, axis=1)
    return {"tokens" + suffix: tok, "position" + suffix: posm}


def ref_pairs(L, p: int):
    mp = L.m_last if p == L.q - 1 else L.m
    return mp, mp * p * L.m + mp * (mp + 1) / 2, mp * (p + 1)


def ref_attention_classes(L, d_head, W, ov):
    k = L.pes_per_head
    hp = L.hp
    dk = d_head / k
    split = 1 if k > 1 else 0
    out = []
    for p in range(L.q):
        _, pairs, blocks = ref_pairs(L, p)
        busy = hp * pairs * (2 * dk + 3 + split) / W
        ops = hp * (2 * pairs + (3 + split) * blocks)
        out.append(PEClass(p, L.b * L.P, busy, ops * ov, hp * pairs * 4.0 * dk))
    return tuple(out)


def ref_attention_kernel_classes(L, d_head, W, ov):
    classes = ref_attention_classes(L, d_head, W, ov)
    flops = float(sum(c.flops * c.count for c in classes))
    return classes, flops, max((c.cycles for c in classes), default=0.0)


def ref_score_allreduce(L):
    k = L.pes_per_head
    if k <= 1:
        return None
    per_pos = [ref_pairs(L, p)[1] * head_split.ACC_BYTES for p in range(L.q)]
    worst = max(per_pos)
    return Transfer(
        "head score all-reduce",
        "allreduce_head",
        "horizontal",
        worst,
        L.b * (L.P // k) * 2 * (k - 1) * sum(per_pos),
        hops=2 * (k - 1),
        turns=0,
        colour=head_split.COLOUR_SCORES,
        relays=k - 1,
        ramp_bytes=2 * worst if k >= 3 else worst,
    )


# ------------------------------------------------------------------------- comparison
def canonical(x):
    """A nested tuple two objects share only when every field is equal with the same type
    (floats by ``float.hex``; arrays by dtype, shape, C-contiguity and contents; dataclass
    instances with their cached properties)."""
    if isinstance(x, float):
        return ("float", x.hex())
    if x is None or isinstance(x, (bool, int, str)):
        return (type(x).__name__, x)
    if isinstance(x, np.ndarray):
        return ("ndarray", x.dtype.str, x.shape, x.flags.c_contiguous, x.tobytes())
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(canonical(v) for v in x))
    if isinstance(x, dict):
        return ("dict", tuple((k, canonical(v)) for k, v in x.items()))
    if dataclasses.is_dataclass(x):
        names = [f.name for f in dataclasses.fields(x)]
        extra = sorted(k for k in vars(x) if k not in names)
        return (
            type(x).__name__,
            tuple((n, canonical(getattr(x, n))) for n in names),
            tuple((k, canonical(vars(x)[k])) for k in extra),
        )
    raise TypeError(type(x).__name__)


def assert_same_program(fast, ref) -> None:
    assert len(fast.kernels) == len(ref.kernels)
    for a, b in zip(fast.kernels, ref.kernels, strict=True):
        assert canonical(a) == canonical(b), a.name
    assert canonical(fast.weight_blocks) == canonical(ref.weight_blocks)
    assert list(fast.class_maps) == list(ref.class_maps)
    for key in ref.class_maps:
        assert canonical(fast.class_maps[key]) == canonical(ref.class_maps[key]), key
    assert canonical(fast) == canonical(ref)
    fast.validate()


def lower_reference(monkeypatch, *args, **kwargs):
    """The lowering with every fast path off (the earlier revision's code)."""
    with monkeypatch.context() as mp:
        mp.setattr(ws_builder, "_class_maps", ref_class_maps)
        for mod in (ws_builder, ws_graph):
            mp.setattr(mod, "attention_kernel_classes", ref_attention_kernel_classes)
            mp.setattr(mod, "score_allreduce", ref_score_allreduce)
        return lower_weight_streaming(*args, derive=False, **kwargs)


def tiny(family: str, **over):
    """The tiny test model of ``family`` (tests/conftest.py)."""
    return parse_hf_dict({**TINY_HF_CONFIGS[family], "model_type": family, **over},
                         f"tiny-{family}")  # fmt: skip


# ------------------------------------------------------------------------------ tests
CASES = [
    # gpt2's hand-written layer: heads split (P > n_head), whole heads (P < n_head),
    # several micro-batches with a smaller last one, a partial last segment (m_last < m)
    ("gpt-tiny", "grid32", 70, 64, None, 8),
    ("gpt-tiny", "grid32", 70, 64, 16, 5),
    ("gpt-tiny", "grid32", 45, 64, 2, 3),
    ("gpt-tiny", "grid32", 9, 40, 1, 7),
    ("gpt-tiny", "grid8", 5, 33, 8, 5),
    ("cerebras-gpt-111m:3", "wse2", 30, 2048, 24, None),
    ("cerebras-gpt-111m:3", "wse2", 8, 2048, 1, None),
    ("cerebras-gpt-111m:2", "wse2", 250, 2048, 6, 3),
    ("cerebras-gpt-1.3b:2", "wse2", 60, 2048, 512, None),
    ("cerebras-gpt-1.3b:2", "wse2", 240, 2048, 16, None),
]


def resolve(name: str):
    if name.startswith("tiny-"):
        return tiny(name[len("tiny-") :])
    base, _, layers = name.partition(":")
    cfg = resolve_model(base)
    return dataclasses.replace(cfg, n_layer=int(layers)) if layers else cfg


@pytest.mark.parametrize("model,arch,batch,seq_len,P,m", CASES)
def test_gpt2_lowering_equals_reference(monkeypatch, model, arch, batch, seq_len, P, m) -> None:
    cfg, a = resolve(model), load_arch(arch)
    fast = lower_weight_streaming(cfg, a, batch, seq_len, "fp16", P=P, m=m)
    ref = lower_reference(monkeypatch, cfg, a, batch, seq_len, "fp16", P=P, m=m)
    assert_same_program(fast, ref)


def test_cases_cover_what_the_fast_path_shares() -> None:
    """The cases above hold several micro-batches with a smaller last one, split and whole
    heads, and partial last segments (else the comparison would not reach those paths)."""
    progs = [
        lower_weight_streaming(resolve(c[0]), load_arch(c[1]), c[2], c[3], "fp16", P=c[4], m=c[5])
        for c in CASES
    ]
    assert any(p.workload.micro_batches >= 3 and p.workload.sequences_in_last_micro_batch
               != p.layout.sequences_per_micro_batch for p in progs)  # fmt: skip
    assert any(p.layout.pes_per_head > 1 for p in progs)
    assert any(p.layout.heads_per_pe > 1 for p in progs)
    assert any(c[3] % (c[5] or c[3]) for c in CASES)


@pytest.mark.parametrize(
    "family,arch,batch,seq_len,P,m",
    [
        ("llama", "grid32", 37, 40, 8, 6),  # GQA, heads split over 2 PEs, rotate-half RoPE
        ("llama", "grid32", 600, 64, 2, None),  # 2 query heads per PE
        ("qwen2", "grid32", 33, 48, 16, 5),
        ("gptj", "grid32", 151, 64, 1, 9),
        ("gptj", "grid8", 6, 30, 8, 4),
    ],
)
def test_graph_lowering_equals_reference(monkeypatch, family, arch, batch, seq_len, P, m) -> None:
    cfg, a = tiny(family), load_arch(arch)
    kw = dict(P=P, m=m, builder=GraphBuilder)
    fast = lower_weight_streaming(cfg, a, batch, seq_len, "bf16", **kw)
    ref = lower_reference(monkeypatch, cfg, a, batch, seq_len, "bf16", **kw)
    assert fast.workload.micro_batches >= 2
    assert_same_program(fast, ref)


@pytest.mark.parametrize(
    "spec", ["weight_streaming:reduce=tree", "weight_streaming:attention=sequence", "summa",
             "cannon", "row_1d"],  # fmt: skip
)
def test_strategy_lowering_equals_reference(monkeypatch, spec) -> None:
    """A mapping's GEMM / attention strategy is lowered once per layout too."""
    cfg, a = resolve_model("gpt-tiny"), GRID32
    strat = parse_mapping(spec).strategy(cfg, a, "fp32")
    args = (cfg, a, 70, 64, "fp32")
    fast = lower_weight_streaming(*args, P=4, m=8, strategy=strat)
    strat = parse_mapping(spec).strategy(cfg, a, "fp32")
    ref = lower_reference(monkeypatch, *args, P=4, m=8, strategy=strat)
    assert fast.workload.micro_batches >= 2
    assert_same_program(fast, ref)


def test_default_mapping_search_equals_reference(monkeypatch) -> None:
    """The default mapping's searched layout and Program, fast and reference."""
    m = parse_mapping("weight_streaming")
    cfg = dataclasses.replace(resolve_model("cerebras-gpt-111m"), n_layer=2)
    fast = m.lower(cfg, WSE2, 60, 2048, "fp16")
    with monkeypatch.context() as mp:
        kw = ws_builder.lower_weight_streaming.__kwdefaults__
        mp.setattr(ws_builder.lower_weight_streaming, "__kwdefaults__", {**kw, "derive": False})
        mp.setattr(ws_builder, "_class_maps", ref_class_maps)
        mp.setattr(ws_builder, "attention_kernel_classes", ref_attention_kernel_classes)
        mp.setattr(ws_builder, "score_allreduce", ref_score_allreduce)
        mp.setattr(ws_search, "_CACHE", {})  # search again, with the reference lowering
        ref = parse_mapping("weight_streaming").lower(cfg, WSE2, 60, 2048, "fp16")
    assert_same_program(fast, ref)


def _layout(rows, cols, P, n_head, d_head, b, T, m) -> WSLayout:
    return WSLayout(P=P, hp=max(n_head // P, 1), m=m, n_seq=b, n_micro=1, batch=b, seq_len=T,
                    rows=rows, cols=cols, segs_per_row=cols // P,
                    pes_per_head=P // n_head if P > n_head else 1)  # fmt: skip


@st.composite
def layouts(draw):
    n_head = draw(st.sampled_from([1, 2, 4, 12, 16]))
    d_head = draw(st.sampled_from([16, 64, 128]))
    rows = draw(st.integers(1, 60))
    cols = draw(st.integers(1, 60))
    ok = head_split.allowed_pes_per_segment(SimpleNamespace(n_head=n_head, d_head=d_head), cols)
    P = draw(st.sampled_from(ok))
    T = draw(st.integers(1, 300))
    m = draw(st.integers(1, T))
    q = math.ceil(T / m)
    slots = rows * (cols // P)
    if q > slots:
        m = math.ceil(T / slots)
        q = math.ceil(T / m)
    b = draw(st.integers(1, max(1, slots // q)))
    return _layout(rows, cols, P, n_head, d_head, b, T, m), d_head


@settings(max_examples=150, deadline=None)
@given(layouts(), st.sampled_from([8.0, 16.0, 3.0]), st.sampled_from([0, 1, 3, 7]))
@example((_layout(994, 750, 1, 12, 64, 364, 2048, 1), 64), 8.0, 3)
@example((_layout(994, 750, 12, 12, 64, 3, 2048, 3), 64), 16.0, 1)
@example((_layout(5, 7, 2, 1, 16, 1, 1, 1), 16), 8.0, 1)
def test_vectorised_parts_equal_reference(layout_dh, W, ov) -> None:
    """Class maps, attention classes (and their totals) and the score all-reduce on random
    layouts, bit for bit."""
    L, dh = layout_dh
    assert canonical(ws_builder._class_maps(L, "_x")) == canonical(ref_class_maps(L, "_x"))
    got = head_split.attention_kernel_classes(L, dh, W, ov)
    assert canonical(got) == canonical(ref_attention_kernel_classes(L, dh, W, ov))
    assert canonical(head_split.score_allreduce(L)) == canonical(ref_score_allreduce(L))


def test_shared_attention_classes_are_the_computed_ones() -> None:
    """A second lowering of the same layout reuses its attention classes (kept by what they
    read); forgetting them, or a budget too small to keep them, computes equal ones."""
    L = _layout(994, 750, 12, 12, 64, 3, 2048, 3)
    head_split.clear_class_cache()
    first = head_split.attention_kernel_classes(L, 64, 8.0, 1)
    assert head_split.attention_kernel_classes(L, 64, 8.0, 1) is first
    head_split.clear_class_cache()
    again = head_split.attention_kernel_classes(L, 64, 8.0, 1)
    assert again is not first and canonical(again) == canonical(first)
    assert canonical(again) == canonical(ref_attention_kernel_classes(L, 64, 8.0, 1))
    other = head_split.attention_kernel_classes(L, 64, 16.0, 1)  # another W: not shared
    assert canonical(other) == canonical(ref_attention_kernel_classes(L, 64, 16.0, 1))


def test_class_cache_stays_within_budget(monkeypatch) -> None:
    monkeypatch.setattr(head_split, "CLASS_CACHE_BUDGET", 1000)
    head_split.clear_class_cache()
    for m in (1, 2, 3, 5, 8):  # q = 2048, 1024, 683, 410, 256 positions
        L = _layout(994, 750, 12, 12, 64, 1, 2048, m)
        got = head_split.attention_kernel_classes(L, 64, 8.0, 1)
        assert canonical(got) == canonical(ref_attention_kernel_classes(L, 64, 8.0, 1))
        kept = sum(len(v[0]) for v in head_split._class_cache.values())
        assert kept == head_split._class_cache_size <= 1000
    assert len(head_split._class_cache) == 2  # q = 410 and 256
    head_split.clear_class_cache()
