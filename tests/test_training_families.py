"""Training numerics of the graph families (gptj, llama with GQA, qwen2) against torch.

Reference: the tiny random Hugging Face models of ``tests/conftest.py`` (2 layers, 4 query
heads; llama and qwen2 with 2 K/V heads, llama with the Llama 3 rope scaling rule crossing
every branch at T = 24), run in float64 by torch: the loss is
``model(ids, labels=ids).loss``, the gradients ``torch.autograd`` of it, the optimizer step
``torch.nn.utils.clip_grad_norm_`` then ``torch.optim.AdamW`` with the same
hyper-parameters and decay groups (2-D matrices decay, norms and biases do not:
:func:`gpt_workload.training.optim.decays`). Ours: fp32 kernels walking the op graph
(:mod:`gpt_workload.training.backward_graph`) and :class:`TrainNumerics`.

Tolerances: fp32 arithmetic over these sizes (reductions of at most a few hundred terms)
leaves relative errors around 1e-6 of a tensor's scale; 1e-4 of the largest reference
gradient of each parameter is the issue's bound. After one AdamW step a weight moves by about
``lr`` (Adam's first step is ``lr * m / (sqrt(v) + eps)`` with ``|m / sqrt(v)| = 1``), so a
gradient error of ``e`` relative to the gradient changes the update by about ``lr * e * eps /
|g|``; weights are compared to 1e-3 of ``lr`` (plus float32 rounding of the weight).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import hf_tiny_model  # noqa: E402

from gpt_workload.models import LOWERED_FOR, family_module, parse_hf_dict  # noqa: E402
from gpt_workload.models.weights import from_hf_state_dict, to_hf_state_dict  # noqa: E402
from gpt_workload.training.backward_graph import (  # noqa: E402
    graph_forward_backward,
    graph_forward_backward_sum,
)
from gpt_workload.training.optim import AdamWConfig  # noqa: E402
from gpt_workload.training.trainer import TrainNumerics, accumulate_gradients  # noqa: E402
from wse_sim.errors import ConfigError  # noqa: E402

#: family, HF config overrides
CASES = {
    "gptj": ("gptj", {}),
    "llama_gqa": ("llama", {}),
    "qwen2_gqa": ("qwen2", {}),
    "llama_tied": ("llama", {"tie_word_embeddings": True}),
}


def _ours(model):
    """(config, DecoderWeights) of a float64 HF model (its float32 values)."""
    cfg = parse_hf_dict(model.config.to_dict(), "tiny")
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return cfg, from_hf_state_dict(sd, cfg, family_module(cfg))


def _tokens(vocab: int, b: int, t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (b, t))


def _torch_loss_grads(model, tok):
    model.zero_grad()
    ids = torch.tensor(tok)
    loss = model(ids, labels=ids).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


def _hf_named(cfg, w) -> dict[str, np.ndarray]:
    """Our DecoderWeights under the HF tensor names (linears back to ``[out, in]``)."""
    return to_hf_state_dict(cfg, w, family_module(cfg))


def _scaled_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_every_gradient_match_torch_autograd(case: str) -> None:
    family, over = CASES[case]
    model = hf_tiny_model(family, seed=1, **over)
    cfg, w = _ours(model)
    assert cfg.family == family
    tok = _tokens(cfg.vocab_size, 2, 24, seed=2)
    loss, grads, finite = graph_forward_backward(cfg, w, tok)
    ref_loss, ref = _torch_loss_grads(model, tok)
    assert finite
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    ours = _hf_named(cfg, grads)
    if cfg.tie_embeddings:  # HF lists the tied head once, as the embedding
        ref = {k: v for k, v in ref.items() if k != "lm_head.weight"}
    assert set(ours) == set(ref)
    for name, g in ours.items():
        assert np.abs(ref[name]).max() > 0, name
        assert _scaled_err(g, ref[name]) <= 1e-4, name


def test_gqa_kv_gradients_sum_over_their_query_heads() -> None:
    """With 2 query heads per K/V head, the K and V weight gradients are the sums over both
    query heads: the same model with the K/V heads duplicated (n_kv = n_head, each K/V
    head's weights repeated for its 2 query heads) has per-head K/V gradients that sum, in
    pairs, to the GQA model's."""
    model = hf_tiny_model("llama", seed=3)
    cfg, w = _ours(model)
    tok = _tokens(cfg.vocab_size, 2, 16, seed=4)
    _, g_gqa, _ = graph_forward_backward(cfg, w, tok)
    full = parse_hf_dict({**model.config.to_dict(), "num_key_value_heads": cfg.n_head}, "mha")
    wm = copy.deepcopy(w)
    dh, group = cfg.d_head, cfg.n_head // int(cfg.n_kv_heads)
    for lw in wm.layers:
        for f in ("k_w", "v_w"):
            heads = getattr(lw, f).reshape(cfg.d_model, int(cfg.n_kv_heads), dh)
            setattr(lw, f, np.ascontiguousarray(np.repeat(heads, group, axis=1).reshape(
                cfg.d_model, cfg.d_model)))  # fmt: skip
    _, g_mha, _ = graph_forward_backward(full, wm, tok)
    for lg, lm in zip(g_gqa.layers, g_mha.layers, strict=True):
        for f in ("k_w", "v_w"):
            pairs = lm.__dict__[f].reshape(cfg.d_model, int(cfg.n_kv_heads), group, dh).sum(2)
            ref = getattr(lg, f)
            assert _scaled_err(pairs.reshape(cfg.d_model, -1), ref) <= 1e-5, f
        assert _scaled_err(lm.q_w, lg.q_w) <= 1e-5


def _torch_adamw_step(model, acfg):
    """clip_grad_norm_ then one torch.optim.AdamW step on ``model``'s ``.grad``; returns the
    pre-clipping norm."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim == 2], "weight_decay": acfg.weight_decay},
         {"params": [p for p in params if p.ndim != 2], "weight_decay": 0.0}],
        lr=acfg.lr_at(0), betas=acfg.betas, eps=acfg.eps,
    )  # fmt: skip
    norm = float(torch.nn.utils.clip_grad_norm_(params, acfg.max_grad_norm))
    opt.step()
    return norm


@pytest.mark.parametrize("case", ["gptj", "llama_gqa", "qwen2_gqa"])
def test_one_adamw_step_matches_torch(case: str) -> None:
    """One :meth:`TrainNumerics.step` (fp32 master weights, clipping, AdamW) against torch.

    (a) torch's clip + AdamW fed *our* gradients must give our weights to float32 rounding
    (every element: the optimizers alone are compared); (b) end to end, torch's own autograd
    gradients + clip + AdamW give our weights to 1e-3 of ``lr`` wherever the reference
    gradient is at least 1e-3 of its tensor's largest or exactly 0 (Adam's first step, ``lr g / (|g| +
    eps)``, turns a gradient error ``e`` into a step error ``lr eps e / g^2``, unbounded for
    ``g`` near 0, so elements with a near-zero gradient are held only by (a))."""
    family, over = CASES[case]
    model = hf_tiny_model(family, seed=5, **over)
    cfg, w = _ours(model)
    tok = _tokens(cfg.vocab_size, 2, 24, seed=6)
    acfg = AdamWConfig(lr=1e-3, warmup_steps=0, total_steps=1, max_grad_norm=0.5)
    _, g_ours, _ = graph_forward_backward(cfg, w, tok)
    tn = TrainNumerics(cfg, w, "fp32", acfg)
    stats = tn.step(tok)
    assert not stats.skipped and stats.lr == acfg.lr_at(0)
    ours, before = _hf_named(cfg, tn.master), _hf_named(cfg, w)
    # (a) the same gradients through torch's optimizer
    fed = copy.deepcopy(model)
    g_named = _hf_named(cfg, g_ours)
    for name, p in fed.named_parameters():
        p.grad = torch.from_numpy(g_named[name].astype(np.float64))
    assert stats.grad_norm == pytest.approx(_torch_adamw_step(fed, acfg), rel=1e-6)
    for name, p in fed.named_parameters():
        ref = p.detach().numpy()
        assert np.abs(ref - before[name]).max() > 0.5 * acfg.lr, name  # every tensor moved
        tol = 2 * np.finfo(np.float32).eps * np.abs(ref).max()
        assert np.abs(ours[name] - ref).max() <= tol, name
    # (b) end to end against torch autograd
    ref_loss, ref_g = _torch_loss_grads(model, tok)
    ref_norm = _torch_adamw_step(model, acfg)
    assert stats.loss == pytest.approx(ref_loss, rel=1e-6)
    assert stats.grad_norm == pytest.approx(ref_norm, rel=1e-5)
    assert stats.grad_norm > acfg.max_grad_norm  # clipping is exercised
    held = total = 0
    for name, p in model.named_parameters():
        ref, g = p.detach().numpy(), np.abs(ref_g[name])
        sure = (g >= 1e-3 * g.max()) | (g == 0)  # 0: token ids not in the batch (wte rows)
        held, total = held + int(sure.sum()), total + sure.size
        tol = 1e-3 * acfg.lr + 2 * np.finfo(np.float32).eps * np.abs(ref).max()
        assert np.abs(ours[name] - ref)[sure].max() <= tol, name
    # near-zero gradients are few (a K bias has many: softmax ignores a shift of the keys
    # except through the rotation, which is slow on the low-frequency features)
    assert held > 0.95 * total


def test_recompute_and_micro_batches_give_the_same_gradients() -> None:
    model = hf_tiny_model("gptj", seed=7)
    cfg, w = _ours(model)
    tok = _tokens(cfg.vocab_size, 4, 12, seed=8)
    loss, g, _ = graph_forward_backward(cfg, w, tok)
    loss_r, g_r, _ = graph_forward_backward(cfg, w, tok, recompute=True)
    assert loss_r == loss
    for (n, a), (_, b) in zip(g.named_arrays(), g_r.named_arrays(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=n)
    loss_m, g_m, _ = accumulate_gradients(cfg, w, tok, grad_accum_steps=2)
    assert loss_m == pytest.approx(loss, rel=1e-12)
    for (n, a), (_, b) in zip(g.named_arrays(), g_m.named_arrays(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max(), err_msg=n)


def test_loss_scale_scales_the_gradients_exactly() -> None:
    """A power-of-two loss scale multiplies every fp32 gradient by exactly that power."""
    model = hf_tiny_model("qwen2", seed=9)
    cfg, w = _ours(model)
    tok = _tokens(cfg.vocab_size, 2, 8, seed=10)
    _, g, _ = graph_forward_backward(cfg, w, tok)
    _, g8, _ = graph_forward_backward(cfg, w, tok, loss_scale=2.0**8)
    for (n, a), (_, b) in zip(g.named_arrays(), g8.named_arrays(), strict=True):
        np.testing.assert_array_equal(b, a * np.float32(2.0**8), err_msg=n)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"tokens": np.zeros((2, 1), np.int64)}, "tokens has length T=1"),
     ({"tokens": np.full((1, 4), 97)}, "tokens contains id 97"),
     ({"tokens": np.zeros((1, 4), np.float32)}, "tokens has dtype float32"),
     ({"loss_scale": 0.0}, "loss_scale=0.0"),
     ({"precision": "fp8"}, "fp8"),
     ({"denominator": 0}, "denominator=0")],
)  # fmt: skip
def test_bad_input_is_one_line(kw, match) -> None:
    cfg, w = _ours(hf_tiny_model("llama", seed=0))
    args = {"tokens": np.zeros((1, 4), np.int64), **kw}
    with pytest.raises(ConfigError, match=match) as e:
        graph_forward_backward_sum(cfg, w, **args)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# wse-sim train --model CKPT_DIR --tokens IDS.npy
# ---------------------------------------------------------------------------------------------


def _cli(args, capsys):
    from gpt_workload.cli import main

    rc = main(["train", "--arch", "grid32", "--fidelity", "analytic", *args])
    return rc, capsys.readouterr()


@pytest.mark.parametrize("family", ["gpt2", "gptj", "llama", "qwen2"])
def test_train_fine_tunes_a_checkpoint_from_its_weights(family, tiny_checkpoints, tmp_path,
                                                        capsys) -> None:  # fmt: skip
    """The first step's loss is the HF model's loss on the same token ids (before any
    update); the same batch every step (N = 2 rows <= --check-sequences) then lowers it."""
    import json

    ckpt, model = tiny_checkpoints[family]
    tok = _tokens(model.config.vocab_size, 2, 20, seed=11)
    ids = tmp_path / "ids.npy"
    np.save(ids, tok)
    out = tmp_path / "r.json"
    rc, cap = _cli(["--model", str(ckpt), "--tokens", str(ids), "--precision", "fp32",
                    "--steps", "3", "--lr", "1e-3", "--json", str(out)], capsys)  # fmt: skip
    assert rc == 0, cap.err
    rep = json.loads(out.read_text())
    with torch.no_grad():
        t = torch.tensor(tok)
        ref = float(model(t, labels=t).loss)
    losses = [s["loss"] for s in rep["numerics"]["steps"]]
    assert losses[0] == pytest.approx(ref, rel=1e-6)
    assert losses[2] < losses[1] < losses[0]
    assert rep["numerics"]["check_batch"] == [2, 20]
    assert rep["numerics"]["weights"] == f"checkpoint {ckpt}"
    timed = family in LOWERED_FOR["train"]  # else the numerics run untimed, and say so
    assert ("step time" in cap.out) == timed == (rep.get("timed", True))
    assert any("NOT TIMED" in n for n in rep["notices"]) == (not timed)


def test_train_llama_checkpoint_lowers_the_loss_on_a_repeated_text(tmp_path, capsys) -> None:
    """Fine-tuning a Llama checkpoint (byte vocabulary) on a repeated sentence, default fp16
    storage with loss scaling: the loss falls by far more than the step-to-step spread of
    the sampled windows of a periodic text."""
    import json

    from conftest import hf_tiny_checkpoint

    ckpt = tmp_path / "llama"
    hf_tiny_checkpoint("llama", ckpt, vocab_size=256)
    txt = tmp_path / "t.txt"
    txt.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "r.json"
    rc, cap = _cli(["--model", str(ckpt), "--tokens", str(txt), "--steps", "6", "--lr", "3e-3",
                    "--json", str(out)], capsys)  # fmt: skip
    assert rc == 0, cap.err
    steps = json.loads(out.read_text())["numerics"]["steps"]
    assert not any(s["skipped"] for s in steps)
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5, [s["loss"] for s in steps]


@pytest.mark.parametrize(
    ("array", "word"),
    [(np.zeros((2, 8), np.float32), "dtype float32"),
     (np.zeros(8, np.int64), "2-D"),
     (np.full((2, 8), 97), "id 97"),
     (np.zeros((2, 65), np.int64), "T=65"),
     (np.zeros((2, 1), np.int64), "T=1"),
     (None, "not a NumPy int array (.npy) file")],
)  # fmt: skip
def test_bad_token_ids_are_one_line(array, word, tiny_checkpoints, tmp_path, capsys) -> None:
    ids = tmp_path / "ids.npy"
    if array is None:
        ids.write_text("not numpy")
    else:
        np.save(ids, array)
    rc, cap = _cli(["--model", str(tiny_checkpoints["llama"][0]), "--tokens", str(ids)], capsys)
    err = cap.err.strip()
    assert rc == 2 and "\n" not in err, err
    assert err.startswith("wse-sim: error: --tokens") and word in err, err


def test_text_and_tokens_together_are_refused(tiny_checkpoints) -> None:
    from gpt_workload.training.train import train

    with pytest.raises(ConfigError, match="text and tokens"):
        train(str(tiny_checkpoints["llama"][0]), "grid32", text="t.txt",
              tokens=np.zeros((1, 4), np.int64))  # fmt: skip


def test_fp16_forward_overflow_is_located_at_its_op() -> None:
    """Scaling layer 1's SwiGLU gate and up weights by 3000 keeps them in fp16's range (|w|
    about 150 < 65504) but their product, about (8 * 150)^2 per element for unit-scale inputs
    of width 64, passes 65504: the health tracker names op ``swiglu`` of layer 1, forward,
    sequence 0, and the step's loss is not finite."""
    model = hf_tiny_model("llama", seed=14)
    cfg, w = _ours(model)
    for f in ("gate_w", "up_w"):
        setattr(w.layers[1], f, getattr(w.layers[1], f) * np.float32(3000))
    tn = TrainNumerics(cfg, w, "fp16", AdamWConfig(lr=1e-3))
    stats = tn.step(_tokens(cfg.vocab_size, 2, 8, seed=15))
    ev = stats.health.first["forward"]
    assert (ev.op, ev.layer, ev.kind, ev.position["sequence"]) == ("swiglu", 1, "overflow", 0)
    assert "weights" not in stats.health.first
    assert not np.isfinite(stats.loss) and stats.skipped
