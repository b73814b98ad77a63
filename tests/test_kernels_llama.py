"""Numba kernels of the rotary families: forward against the float64 NumPy reference,
backward against torch autograd (fp32, relative error <= 1e-4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpt_workload import kernels as kl
from gpt_workload import reference as ref
from gpt_workload.rope import RopeScaling

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SCALING = RopeScaling(8.0, 1.0, 4.0, 16)


def _rand(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _t(a):
    return torch.tensor(a, dtype=torch.float32, requires_grad=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_rmsnorm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, g, dy = _rand(rng, 40, 96), 1 + _rand(rng, 96, scale=0.1), _rand(rng, 40, 96)
    y, rstd = kl.rmsnorm_fwd(x, g, 1e-5)
    want = ref.rms_norm(x.astype(np.float64), g.astype(np.float64), 1e-5)
    assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()
    xt, gt = _t(x), _t(g)
    yt = xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + 1e-5) * gt
    yt.backward(torch.from_numpy(dy))
    dx, dg = kl.rmsnorm_bwd(dy, x, g, rstd)
    assert _rel(dx, xt.grad.numpy()) <= 1e-4 and _rel(dg, gt.grad.numpy()) <= 1e-4


def _hf_rotary(x, t, n_heads, rotary_dim, interleaved, theta, scaling):
    """Rotary through transformers' own functions (llama rotate_half, gptj rotate_every_two)."""
    from gpt_workload.rope import inv_freq

    n, width = x.shape
    dh = width // n_heads
    xh = x.reshape(n // t, t, n_heads, dh)
    freqs = torch.outer(torch.arange(t, dtype=torch.float64),
                        torch.from_numpy(inv_freq(rotary_dim, theta, scaling))).float()  # fmt: skip
    rot, rest = xh[..., :rotary_dim], xh[..., rotary_dim:]
    if interleaved:
        from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb

        out = apply_rotary_pos_emb(rot, torch.sin(freqs)[None], torch.cos(freqs)[None])
    else:
        from transformers.models.llama.modeling_llama import rotate_half

        emb = torch.cat((freqs, freqs), -1)[None, :, None, :]
        out = rot * emb.cos() + rotate_half(rot) * emb.sin()
    return torch.cat((out, rest), -1).reshape(n, width)


@pytest.mark.parametrize(
    "interleaved,rotary_dim,scaling,theta",
    [(False, 16, None, 10000.0), (False, 16, SCALING, 500000.0), (True, 8, None, 10000.0)],
)
def test_rotary(interleaved, rotary_dim, scaling, theta) -> None:
    rng = np.random.default_rng(3)
    t, heads, dh = 24, 2, 16
    x, dy = _rand(rng, 2 * t, heads * dh), _rand(rng, 2 * t, heads * dh)
    cos, sin = kl.rotary_tables_f32(t, rotary_dim, theta, scaling)
    y = kl.rotary_fwd(x, t, heads, rotary_dim, interleaved, cos, sin)
    want = ref.rotary(x.astype(np.float64).reshape(2, t, -1), heads, rotary_dim, interleaved,
                      theta, scaling).reshape(2 * t, -1)  # fmt: skip
    assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()
    xt = _t(x)
    _hf_rotary(xt, t, heads, rotary_dim, interleaved, theta, scaling).backward(torch.from_numpy(dy))
    dx = kl.rotary_bwd(dy, t, heads, rotary_dim, interleaved, cos, sin)
    assert _rel(dx, xt.grad.numpy()) <= 1e-4


def test_swiglu() -> None:
    rng = np.random.default_rng(4)
    g, u, dy = _rand(rng, 30, 64, scale=3.0), _rand(rng, 30, 64), _rand(rng, 30, 64)
    y = kl.swiglu_fwd(g, u)
    want = ref.silu(g.astype(np.float64)) * u
    assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()
    gt, ut = _t(g), _t(u)
    (torch.nn.functional.silu(gt) * ut).backward(torch.from_numpy(dy))
    dg, du = kl.swiglu_bwd(dy, g, u)
    assert _rel(dg, gt.grad.numpy()) <= 1e-4 and _rel(du, ut.grad.numpy()) <= 1e-4


@pytest.mark.parametrize("n_head,n_kv", [(4, 2), (4, 1), (4, 4)])
def test_gqa_attention(n_head: int, n_kv: int) -> None:
    rng = np.random.default_rng(5)
    n_seq, t, dh = 2, 20, 8
    q = _rand(rng, n_seq * t, n_head * dh)
    k, v = _rand(rng, n_seq * t, n_kv * dh), _rand(rng, n_seq * t, n_kv * dh)
    dout = _rand(rng, n_seq * t, n_head * dh)
    scale = 1 / math.sqrt(dh)
    out, probs = kl.gqa_attention_fwd(q, k, v, t, n_head, n_kv, scale)
    f64 = np.float64
    want = np.concatenate([ref.attention(q[b * t:(b + 1) * t].astype(f64), k[b * t:(b + 1) * t]
                                         .astype(f64), v[b * t:(b + 1) * t].astype(f64),
                                         n_head, n_kv) for b in range(n_seq)])  # fmt: skip
    assert np.abs(out - want).max() <= 1e-5 * np.abs(want).max()
    qt, kt, vt = _t(q), _t(k), _t(v)
    qh = qt.reshape(n_seq, t, n_head, dh).transpose(1, 2)
    kh = kt.reshape(n_seq, t, n_kv, dh).transpose(1, 2).repeat_interleave(n_head // n_kv, 1)
    vh = vt.reshape(n_seq, t, n_kv, dh).transpose(1, 2).repeat_interleave(n_head // n_kv, 1)
    s = (qh @ kh.transpose(-1, -2)) * scale
    s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    o = (torch.softmax(s, -1) @ vh).transpose(1, 2).reshape(n_seq * t, n_head * dh)
    o.backward(torch.from_numpy(dout))
    dq, dk, dv = kl.gqa_attention_bwd(dout, q, k, v, probs, t, n_head, n_kv, scale)
    for ours, theirs in ((dq, qt), (dk, kt), (dv, vt)):
        assert _rel(ours, theirs.grad.numpy()) <= 1e-4


def test_bad_arguments() -> None:
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="dtype float32"):
        kl.rmsnorm_fwd(x.astype(np.float64), np.ones(8, np.float32), 1e-5)
    with pytest.raises(TypeError):
        kl.swiglu_fwd([[1.0]], x)
    with pytest.raises(ValueError, match="n_kv=3 must divide"):
        kl.gqa_attention_fwd(x, x, x, 4, 4, 3, 1.0)
    cos, sin = kl.rotary_tables_f32(4, 2, 10000.0)
    with pytest.raises(ValueError, match="rotary_dim"):
        kl.rotary_fwd(x, 4, 2, 6, False, cos, sin)


@pytest.mark.parametrize("interleaved,rotary_dim", [(False, 16), (True, 8)])
def test_tiled_rmsnorm_and_rotary_match_reference(interleaved: bool, rotary_dim: int) -> None:
    """The tile-layout forms on a head-per-PE layout (2 PEs x 2 heads, segments of 4 tokens,
    T = 21 so the last segment is padded) equal the float64 reference per token."""
    from gpt_workload.mappings.weight_streaming.layout import TileLayout

    rng = np.random.default_rng(6)
    n_seq, t, heads, dh = 2, 21, 4, 16
    lay = TileLayout(n_seq=n_seq, seq_len=t, m=4, P=2)
    x = _rand(rng, n_seq, t, heads * dh)
    g = 1 + _rand(rng, heads * dh, scale=0.1)
    xt = lay.to_tiles(x)
    out = np.empty_like(xt)
    kl.rmsnorm_tiled(xt, g, 1e-5, out, segs_per_seq=lay.segs_per_seq, seq_len=t)
    want = ref.rms_norm(x.astype(np.float64), g.astype(np.float64), 1e-5)
    got = lay.from_tiles(out, heads * dh)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert not out.transpose(0, 2, 1, 3)[~lay.valid_mask()].any()  # padded slots are 0
    cos, sin = kl.rotary_tables_f32(lay.padded_tokens, rotary_dim, 10000.0, SCALING)
    kl.rotary_tiled(xt, cos, sin, out, segs_per_seq=lay.segs_per_seq, seq_len=t, d_head=dh,
                    rotary_dim=rotary_dim, interleaved=interleaved)  # fmt: skip
    want = ref.rotary(x.astype(np.float64), heads, rotary_dim, interleaved, 10000.0, SCALING)
    got = lay.from_tiles(out, heads * dh)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
