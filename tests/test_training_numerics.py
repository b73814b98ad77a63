"""Tests of the training numerics (gpt_workload.training): gradients, AdamW, loss scaling.

Independent references: Hugging Face ``GPT2LMHeadModel`` autograd in float64 (gradients),
``torch.optim.AdamW`` + ``torch.nn.utils.clip_grad_norm_`` (optimizer), ``torch``'s own
``_amp_update_scale_`` (the op behind ``torch.amp.GradScaler.update``) for loss scaling, and
closed forms (learning-rate schedule, power-of-two loss scaling, unigram entropy).
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt_workload.config import GPTConfig, to_hf_dict
from gpt_workload.precision import unit_roundoff
from gpt_workload.training.backward_graph import graph_forward_backward
from gpt_workload.training.loss_scale import DynamicLossScaler
from gpt_workload.training.optim import (
    AdamWConfig,
    AdamWState,
    adamw_step,
    clip_grad_norm,
    grad_norm,
)
from gpt_workload.training.tokenizer import ByteTokenizer, load_text, load_text_batches
from gpt_workload.training.trainer import TrainNumerics, accumulate_gradients
from gpt_workload.weights import from_hf_state_dict, init_weights, to_hf_state_dict
from wse_sim.errors import CheckpointError, ConfigError

torch.set_num_threads(2)

# d_head 16 with the tanh GELU (GPT-2's "gelu_new"); d_head 16 with 3 heads and exact GELU.
CFG_A = GPTConfig(
    name="train-a", n_layer=2, n_head=4, d_model=64, d_ff=256, vocab_size=256,
    n_positions=64, activation="gelu_new",
)  # fmt: skip
CFG_B = GPTConfig(
    name="train-b", n_layer=2, n_head=3, d_model=48, d_ff=192, vocab_size=256,
    n_positions=64, activation="gelu",
)  # fmt: skip


def _tokens(cfg: GPTConfig, b: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(b, t))


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    a64, r64 = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a64 - r64) / np.linalg.norm(r64))


def _hf_model(cfg: GPTConfig, w, dtype: torch.dtype) -> GPT2LMHeadModel:
    """HF model holding ``w`` (no dropout: to_hf_dict sets every pdrop to 0), eager attention."""
    hc = GPT2Config(**to_hf_dict(cfg), attn_implementation="eager")
    assert hc.resid_pdrop == hc.embd_pdrop == hc.attn_pdrop == 0
    model = GPT2LMHeadModel(hc).to(dtype)
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float64)).to(dtype) for k, v in
          to_hf_state_dict(w).items()}  # fmt: skip
    model.load_state_dict(sd, strict=True)
    model.train()
    return model


def _hf_grads(model: GPT2LMHeadModel, tokens: np.ndarray) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    t = torch.from_numpy(tokens)
    out = model(t, labels=t)  # HF shifts labels: mean CE over B*(T-1)
    out.loss.backward()
    grads = {n.removeprefix("transformer."): p.grad.detach().clone()
             for n, p in model.named_parameters()}  # fmt: skip
    return float(out.loss.detach()), grads


@functools.lru_cache(maxsize=4)
def _fb(cfg: GPTConfig, precision: str, recompute: bool):
    w = init_weights(cfg, seed=1)
    tok = _tokens(cfg, 3, 17)
    return w, tok, graph_forward_backward(cfg, w, tok, precision=precision, recompute=recompute)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [CFG_A, CFG_B], ids=["d64-h4-gelu_new", "d48-h3-gelu"])
def test_gradients_match_hf_autograd(cfg: GPTConfig) -> None:
    w, tok, (loss, grads, finite) = _fb(cfg, "fp32", False)
    ref_loss, ref = _hf_grads(_hf_model(cfg, w, torch.float64), tok)
    assert finite
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    names = [n for n, _ in grads.named_arrays()]
    assert set(names) == set(ref)  # every parameter, wte once (tied head included in it)
    for name, g in grads.named_arrays():
        assert g.dtype == np.float32 and g.shape == tuple(ref[name].shape)
        assert _rel(g, ref[name].numpy()) <= 1e-4, name


def test_recompute_gives_identical_gradients() -> None:
    for precision in ("fp32", "bf16"):
        _, _, (l0, g0, _) = _fb(CFG_A, precision, False)
        _, _, (l1, g1, _) = _fb(CFG_A, precision, True)
        assert l0 == l1
        for (n, a), (_, b) in zip(g0.named_arrays(), g1.named_arrays(), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=n)


def test_power_of_two_loss_scale_scales_gradients_exactly() -> None:
    # Multiplying by 2**k is exact in binary floating point (no overflow/underflow here), so
    # the scaled gradients are exactly 2**k times the unscaled ones.
    w, tok, (loss, g1, _) = _fb(CFG_A, "fp32", False)
    loss_s, gs, finite = graph_forward_backward(CFG_A, w, tok, loss_scale=2.0**12)
    assert finite and loss_s == loss
    for (n, a), (_, b) in zip(g1.named_arrays(), gs.named_arrays(), strict=True):
        np.testing.assert_array_equal(a * np.float32(2.0**12), b, err_msg=n)


def test_bf16_gradients_close_to_fp32() -> None:
    # Storage rounding perturbs each stored tensor by at most u = 2**-8; through ~30 stored
    # tensors per layer the gradient error stays a small multiple of u.
    # Bound: 8 u (= 0.031; measured about 2 u).
    _, _, (l32, g32, _) = _fb(CFG_A, "fp32", False)
    _, _, (l16, g16, fin) = _fb(CFG_A, "bf16", False)
    u = unit_roundoff("bf16")
    assert fin
    assert abs(l16 - l32) <= 8 * u * l32
    for (n, a), (_, b) in zip(g16.named_arrays(), g32.named_arrays(), strict=True):
        assert _rel(a, b) <= 8 * u, n


def test_gradient_accumulation_equals_full_batch() -> None:
    w = init_weights(CFG_A, seed=2)
    tok = _tokens(CFG_A, 4, 20, seed=3)
    loss, full, _ = graph_forward_backward(CFG_A, w, tok)
    loss2, acc, finite = accumulate_gradients(CFG_A, w, tok, grad_accum_steps=2)
    assert finite
    assert loss2 == pytest.approx(loss, rel=1e-12)
    for (n, a), (_, b) in zip(acc.named_arrays(), full.named_arrays(), strict=True):
        assert _rel(a, b) <= 1e-5, n


# ---------------------------------------------------------------------------------------------
# optimizer
# ---------------------------------------------------------------------------------------------


def test_lr_schedule_closed_form() -> None:
    c = AdamWConfig(lr=1e-3, warmup_steps=4, total_steps=14, final_lr_fraction=0.1)
    assert [c.lr_at(s) for s in range(4)] == pytest.approx([1e-3 * (s + 1) / 4 for s in range(4)])
    assert c.lr_at(4) == pytest.approx(1e-3)
    assert c.lr_at(9) == pytest.approx(1e-3 * (1 - 0.9 * 5 / 10))
    assert c.lr_at(14) == pytest.approx(1e-4) and c.lr_at(1000) == pytest.approx(1e-4)


def test_three_adamw_steps_match_torch() -> None:
    cfg = CFG_A
    w = init_weights(cfg, seed=4)
    tok = _tokens(cfg, 2, 24, seed=5)
    acfg = AdamWConfig(lr=2e-3, warmup_steps=2, total_steps=3, max_grad_norm=0.5)
    model = _hf_model(cfg, w, torch.float32)
    params = dict(model.named_parameters())
    decay = [p for p in params.values() if p.ndim == 2]  # same groups as optim.decays
    no_decay = [p for p in params.values() if p.ndim != 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": acfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=acfg.lr, betas=acfg.betas, eps=acfg.eps,
    )  # fmt: skip
    master = copy.deepcopy(w)
    state = AdamWState.zeros(master)
    for k in range(3):
        _, g = _hf_grads(model, tok)
        # The same gradients go to both optimizers, so only the optimizers are compared.
        ours = from_hf_state_dict({n: t.numpy() for n, t in g.items()}, cfg)
        norm = clip_grad_norm(ours, acfg.max_grad_norm)
        ref_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), acfg.max_grad_norm)
        assert norm == pytest.approx(float(ref_norm), rel=1e-5)
        assert norm > acfg.max_grad_norm  # clipping is exercised
        for group in opt.param_groups:
            group["lr"] = acfg.lr_at(k)
        opt.step()
        assert adamw_step(master, ours, state, acfg) == acfg.lr_at(k)
    assert state.step == 3
    ref = {n.removeprefix("transformer."): p.detach().numpy() for n, p in params.items()}
    for name, p in master.named_arrays():
        assert _rel(p, ref[name]) <= 1e-5, name
    for name, m in state.m.items():
        torch_m = opt.state[params["transformer." + name]]["exp_avg"].numpy()
        assert _rel(m, torch_m) <= 1e-5, name


def test_grad_norm_is_float64_global_l2() -> None:
    _, _, (_, g, _) = _fb(CFG_B, "fp32", False)
    flat = np.concatenate([a.astype(np.float64).ravel() for _, a in g.named_arrays()])
    assert grad_norm(g) == pytest.approx(math.sqrt(float(flat @ flat)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# loss scaling and the trainer
# ---------------------------------------------------------------------------------------------


def test_loss_scaler_matches_torch_amp_update() -> None:
    events = [False, False, True, False, False, False, True, True, False, False, False]
    ours = DynamicLossScaler(init_scale=2.0**10, growth_interval=3)
    scale = torch.full((1,), 2.0**10)
    tracker = torch.zeros(1, dtype=torch.int32)
    for bad in events:
        ours.update(found_inf=bad)
        torch._amp_update_scale_(scale, tracker, torch.tensor([float(bad)]), 2.0, 0.5, 3)
        assert ours.scale == float(scale) and ours.growth_tracker == int(tracker)
    off = DynamicLossScaler(enabled=False)
    off.update(found_inf=True)
    assert off.scale == 1.0


def test_forced_overflow_skips_step_and_backs_off() -> None:
    scaler = DynamicLossScaler(init_scale=2.0**10, growth_interval=2)
    tr = TrainNumerics(
        CFG_A, init_weights(CFG_A, seed=6), precision="bf16",
        adamw=AdamWConfig(lr=1e-3, total_steps=10), loss_scaler=scaler,
    )  # fmt: skip
    tok = _tokens(CFG_A, 2, 16, seed=7)
    first = tr.step(tok)
    assert not first.skipped and first.loss_scale == 2.0**10
    before_w = copy.deepcopy(tr.master)
    before_s = tr.opt_state.copy()
    s = tr.step(tok, force_overflow=True)
    assert s.skipped and s.lr == 0.0
    assert scaler.scale == 2.0**10 * 0.5
    for (n, a), (_, b) in zip(tr.master.named_arrays(), before_w.named_arrays(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=n)
    assert tr.opt_state.step == before_s.step == 1
    for n in before_s.m:
        np.testing.assert_array_equal(tr.opt_state.m[n], before_s.m[n])
        np.testing.assert_array_equal(tr.opt_state.v[n], before_s.v[n])
    # growth_interval = 2 good steps after the backoff double the scale again
    assert not tr.step(tok).skipped and scaler.scale == 2.0**9
    assert not tr.step(tok).skipped and scaler.scale == 2.0**10
    assert tr.opt_state.step == 3


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loss_falls_on_shipped_text(precision: str) -> None:
    tok = ByteTokenizer()
    text = load_text()
    ids = tok.encode(text)
    # Unigram (byte-frequency) entropy of the text, nats: what a model that learned only the
    # byte frequencies would score. Initial loss is about ln(256) (near-uniform logits).
    freq = np.bincount(ids, minlength=256) / ids.size
    h1 = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    assert h1 < 0.65 * math.log(256)  # learning only the byte frequencies cuts the loss by 35 %
    scaler = DynamicLossScaler() if precision != "fp32" else None
    tr = TrainNumerics(
        CFG_A, init_weights(CFG_A, seed=0), precision=precision,
        adamw=AdamWConfig(lr=3e-3, warmup_steps=3, total_steps=20), loss_scaler=scaler,
    )  # fmt: skip
    batches = load_text_batches(tok, batch=8, seq_len=64, seed=0)
    stats = [tr.step(next(batches)) for _ in range(20)]
    losses = [s.loss for s in stats]
    assert losses[0] == pytest.approx(math.log(256), rel=0.02)
    assert not any(s.skipped for s in stats)
    # 10 % below the start is well short of the 35 % that unigram statistics alone give.
    assert np.mean(losses[-3:]) < 0.9 * losses[0]
    if precision != "fp32":
        assert stats[-1].loss_scale == 2.0**16  # no overflow, interval 2000 not reached


def test_training_is_deterministic() -> None:
    def run() -> list[float]:
        tr = TrainNumerics(CFG_B, init_weights(CFG_B, seed=0), adamw=AdamWConfig(lr=1e-3))
        batches = load_text_batches(ByteTokenizer(), batch=2, seq_len=16, seed=1)
        return [tr.step(next(batches)).loss for _ in range(3)]

    assert run() == run()


def test_trainer_grad_accum_matches_full_batch_step() -> None:
    w = init_weights(CFG_B, seed=8)
    tok = _tokens(CFG_B, 4, 12, seed=9)
    a = TrainNumerics(CFG_B, w, adamw=AdamWConfig(lr=1e-3, max_grad_norm=None))
    b = TrainNumerics(CFG_B, w, adamw=AdamWConfig(lr=1e-3, max_grad_norm=None), grad_accum_steps=2)
    sa, sb = a.step(tok), b.step(tok)
    assert sb.loss == pytest.approx(sa.loss, rel=1e-12)
    assert sb.grad_norm == pytest.approx(sa.grad_norm, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# tokenizer and bad input
# ---------------------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip_and_batches() -> None:
    tok = ByteTokenizer()
    s = "Four score -- ünïcödé ✓"
    ids = tok.encode(s)
    assert ids.min() >= 0 and ids.max() < tok.vocab_size == 256
    assert tok.decode(ids) == s
    text = load_text()
    assert "Four score and seven years ago" in text and not text.startswith("#")
    b1 = next(load_text_batches(tok, batch=3, seq_len=10, seed=4))
    b2 = next(load_text_batches(tok, batch=3, seq_len=10, seed=4))
    assert b1.shape == (3, 10) and b1.dtype == np.int64
    np.testing.assert_array_equal(b1, b2)
    for row in b1:
        assert tok.decode(row) in text


def _one_line(exc: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg, msg


def test_bad_inputs_give_one_line_errors() -> None:
    w = init_weights(CFG_B, seed=0)
    tok = _tokens(CFG_B, 2, 8)
    bad_w = copy.deepcopy(w)
    bad_w.layers[1].fc_w[3, 4] = np.nan
    with pytest.raises(CheckpointError) as e:
        graph_forward_backward(CFG_B, bad_w, tok)
    _one_line(e, "h.1.mlp.c_fc.weight", "NaN")
    bad_tok = tok.copy()
    bad_tok[1, 2] = 256
    with pytest.raises(ConfigError) as e:
        graph_forward_backward(CFG_B, w, bad_tok)
    _one_line(e, "tokens", "256", "vocab_size=256")
    with pytest.raises(ConfigError) as e:
        graph_forward_backward(CFG_B, w, tok[:, :1])
    _one_line(e, "tokens", "T=1")
    with pytest.raises(ConfigError) as e:
        graph_forward_backward(CFG_B, w, tok, precision="fp8")
    _one_line(e, "precision", "fp8")
    with pytest.raises(ConfigError) as e:
        graph_forward_backward(CFG_B, w, tok, loss_scale=float("inf"))
    _one_line(e, "loss_scale", "inf")
    for field, value in [
        ("lr", -1.0),
        ("betas", (0.9, 1.0)),
        ("eps", 0.0),
        ("weight_decay", float("nan")),
        ("warmup_steps", -2),
        ("final_lr_fraction", 1.5),
        ("max_grad_norm", 0),
    ]:
        with pytest.raises(ConfigError) as e:
            AdamWConfig(**{field: value})
        _one_line(e, f"{field}=", repr(value))
    with pytest.raises(ConfigError) as e:
        AdamWConfig(warmup_steps=10, total_steps=5)
    _one_line(e, "total_steps=5")
    with pytest.raises(ConfigError) as e:
        DynamicLossScaler(backoff_factor=1.5)
    _one_line(e, "backoff_factor=1.5")
    with pytest.raises(ConfigError) as e:
        TrainNumerics(CFG_B, w, grad_accum_steps=3).step(tok)
    _one_line(e, "grad_accum_steps=3", "B=2")


def test_lr_schedule_follows_the_step_number_like_torch_scheduler_and_grad_scaler() -> None:
    """Steps 1-6 skipped (overflowing gradients), 10 steps: torch's LambdaLR, stepped every
    iteration while GradScaler skips optimizer.step(), gives each applied step the lr of its
    step number (the last one, step 10's, not step 4's), and AdamW's bias-correction
    count is the number of applied updates."""
    import warnings

    acfg = AdamWConfig(lr=6e-4, warmup_steps=2, total_steps=10, final_lr_fraction=0.1)
    n_steps, n_skip = 10, 6
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=acfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: acfg.lr_at(i) / acfg.lr)
    gs = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    torch_lr = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() before an applied optimizer.step()
        for i in range(n_steps):
            opt.zero_grad()
            gs.scale(p.sum() * (math.inf if i < n_skip else 1.0)).backward()
            before = opt.state[p].get("step", torch.tensor(0.0)).item()
            lr = opt.param_groups[0]["lr"]
            gs.step(opt)
            gs.update()
            applied = opt.state[p].get("step", torch.tensor(0.0)).item() > before
            torch_lr.append(lr if applied else None)
            sched.step()
    tr = TrainNumerics(
        CFG_A, init_weights(CFG_A, seed=6), precision="bf16", adamw=acfg,
        loss_scaler=DynamicLossScaler(init_scale=2.0**10),
    )  # fmt: skip
    tok = _tokens(CFG_A, 2, 16, seed=7)
    ours = [tr.step(tok, force_overflow=i < n_skip) for i in range(n_steps)]
    assert [s.skipped for s in ours] == [lr is None for lr in torch_lr]
    for s, lr in zip(ours, torch_lr, strict=True):
        if lr is not None:
            assert s.lr == pytest.approx(lr, rel=1e-12)
    # closed form of step 10 (index 9): linear from 6e-4 at step 2 to 6e-5 at step 10
    assert ours[-1].lr == pytest.approx(6e-4 - (6e-4 - 6e-5) * (9 - 2) / (10 - 2))
    assert tr.opt_state.step == int(opt.state[p]["step"].item()) == n_steps - n_skip
