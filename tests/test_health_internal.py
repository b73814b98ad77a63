"""Large but finite weights: an op's fp32 reduction overflows inside it while its stored
output stays finite (the fresh-user case: layer 1's ``c_fc`` scaled by 1e30 gave loss
ln 256 marked healthy), the independent guard against the float64 reference, and the
predictions of non-finite logits.

Expected values come from the Hugging Face float64 forward (hooks) and closed forms, not
from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import hf_gpt2

from gpt_workload.cli import main
from gpt_workload.health import FP32_OVERFLOW_AT, HealthTracker, rows_locator
from gpt_workload.simulate import REFERENCE_MISMATCH_REL, simulate
from wse_sim.errors import NumericsError

KW = dict(seq_len=16, batch=2, fidelity="analytic", energy=False)


def _ckpt(tmp_path_factory, scale: float, name: str):
    import torch

    model = hf_gpt2(vocab_size=256, n_embd=64)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight.mul_(scale)
    d = tmp_path_factory.mktemp(name)
    model.save_pretrained(d, safe_serialization=True)
    return d, model


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return _ckpt(tmp_path_factory, 1e30, "big")


def _ln_f_sum_of_squares(model, tokens) -> np.ndarray:
    """float64 HF forward: per token, sum over features of (x - mean)^2 at ln_f's input."""
    import torch

    m = model.double()
    seen = {}
    h = m.transformer.ln_f.register_forward_hook(lambda mod, i, o: seen.update(x=i[0]))
    with torch.no_grad():
        m(torch.as_tensor(tokens))
    h.remove()
    m.float()
    x = seen["x"].numpy()
    return ((x - x.mean(-1, keepdims=True)) ** 2).sum(-1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_large_finite_weights_are_an_error_naming_layernorm_f(big, precision, capsys):
    d, model = big
    rc = main(["run", "--model", str(d), "--arch", "grid32", "--precision", precision,
               "--seq-len", "16", "--batch", "2", "--fidelity", "analytic"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("wse-sim: error:"), err
    assert "the logits are wrong: an op's fp32 arithmetic overflowed inside it" in err[0]
    assert "op layernorm_f (forward)" in err[0] and "sum of squares over 64 features" in err[0]
    assert "another --precision does not help" in err[0]


def test_internal_overflow_event_matches_the_float64_forward(big):
    d, model = big
    tokens = np.random.default_rng(3).integers(0, 256, size=(2, 16))
    rep = simulate(str(d), "grid32", precision="fp32", tokens=tokens, allow_nonfinite=True,
                   reference=True, **{**KW, "batch": 2})  # fmt: skip
    h = rep.health
    assert h["status"] == "overflow_allowed" and h["ops_overflowed_internally"] == 1
    assert h["tensors_nonfinite"] == 0  # every stored tensor is finite: only the check sees it
    ev = h["first"]["forward"]
    assert (ev["op"], ev["layer"], ev["kind"]) == ("layernorm_f", None, "internal_overflow")
    s2 = _ln_f_sum_of_squares(model, tokens)  # [2, 16]
    assert (s2 >= FP32_OVERFLOW_AT).all() and ev["count"] == 32 and ev["size"] == 32
    assert ev["position"]["sequence"] == 0 and ev["position"]["token"] == 0
    assert ev["value"] == pytest.approx(s2[0, 0], rel=1e-3)
    assert rep.notices[0].startswith("fp32 numerics DISAGREE with the float64 reference")
    assert "WRONG LOGITS kept by --allow-nonfinite" in rep.notices[0]


@pytest.mark.parametrize("mapping", ["summa", "layer_pipelined"])
def test_every_mapping_checks_the_norm_input(big, mapping):
    d, _ = big
    with pytest.raises(NumericsError, match="op layernorm_f .*sum of squares"):
        simulate(str(d), "grid32", mapping=mapping, precision="fp32", reference=False, **KW)


def test_reference_guard_catches_what_the_checks_miss(big, monkeypatch):
    """Second, independent guard: with the internal check disabled the run is the silently
    wrong one of the report (loss ln 256); the float64 reference comparison flags it."""
    d, _ = big
    monkeypatch.setattr(HealthTracker, "check_norm_input", lambda self, *a, **k: True)
    rep = simulate(str(d), "grid32", precision="fp32", reference=True, **KW)
    n = rep.numerics
    assert n["loss"] == pytest.approx(math.log(256), rel=1e-6)  # all logits equal
    assert n["max_rel_error_vs_reference"] >= REFERENCE_MISMATCH_REL
    assert rep.health["status"] == "reference_mismatch"
    assert rep.notices[0].startswith("fp32 numerics DISAGREE with the float64 reference")


def test_scaled_by_1e19_still_runs_clean(tmp_path_factory):
    d, _ = _ckpt(tmp_path_factory, 1e19, "b19")
    rep = simulate(str(d), "grid32", precision="fp32", reference=True, **KW)
    assert rep.health["status"] == "ok" and rep.notices == []
    assert rep.health["ops_overflowed_internally"] == 0
    assert rep.numerics["max_rel_error_vs_reference"] < 1e-5


def test_check_scores_against_float64_dot_products():
    """q . k of a causal head overflows fp32 exactly where the float64 bound says so."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 8, 16)).astype(np.float32)
    k = rng.standard_normal((1, 2, 8, 16)).astype(np.float32)
    q[0, 1, 5] = 1e20  # head 1, query token 5
    k[0, 1, 3] = -1e20  # key 3 <= 5: |score| = 16e40
    tr = HealthTracker("fp32")
    assert not tr.check_scores("attention", 0, q, k, 8)
    ev = tr.first["forward"]
    assert ev.kind == "internal_overflow"
    assert ev.position == {"sequence": 0, "token": 5, "feature": 16}  # head 1 * d_head 16
    exact = np.abs(q[0, 1, 5].astype(np.float64)) @ np.abs(k[0, 1, 3].astype(np.float64))
    assert ev.value == pytest.approx(exact)
    # a key after the query is masked: no overflow
    k[0, 1, 3] = 0.0
    k[0, 1, 6] = -1e20
    assert HealthTracker("fp32").check_scores("attention", 0, q, k, 8)


def test_check_norm_input_threshold_is_fp32s():
    """A row whose float64 sum of squares is just below / above fp32's overflow."""
    F = 64
    below = math.sqrt(FP32_OVERFLOW_AT / F) * 0.999  # alternating +-: mean 0
    x = np.array([[below, -below] * (F // 2)], dtype=np.float32)
    tr = HealthTracker("fp32")
    assert tr.check_norm_input("ln", 0, x, (1,), rows_locator(1))
    x2 = (x.astype(np.float64) * 1.01).astype(np.float32)
    assert not tr.check_norm_input("ln", 0, x2, (1,), rows_locator(1))
    assert tr.first["forward"].value == pytest.approx(F * float(x2[0, 0]) ** 2, rel=1e-6)
    # RMSNorm: no centring, sum of x^2
    y = np.full((1, F), below, dtype=np.float32)
    assert HealthTracker("fp32").check_norm_input("rms", 0, y, (1,), centered=False)


def test_nan_logits_give_null_predictions_and_agreement(big, tmp_path, capsys):
    """1e30 weights in fp16 make the logits NaN; argmax of NaN is no prediction."""
    import json

    d, _ = big
    out = tmp_path / "r.json"
    rc = main(["run", "--model", str(d), "--arch", "grid32", "--precision", "fp16",
               "--seq-len", "16", "--batch", "2", "--fidelity", "analytic",
               "--allow-nonfinite", "--json", str(out)])  # fmt: skip
    assert rc == 0
    console = capsys.readouterr().out
    assert "argmax agrees on n/a" in console and "next tokens       │ n/a n/a" in console
    rep = json.loads(out.read_text())
    n = rep["numerics"]
    assert n["reference_predictions_agree"] is None
    assert rep["nonfinite_values"]["numerics.reference_predictions_agree"] == "nan"
    assert n["next_token_predictions"][0] == [None] * 16
    assert rep["nonfinite_values"]["numerics.next_token_predictions[0][0]"] == "nan"


def test_nan_weights_are_refused_even_with_allow_nonfinite(tmp_path, capsys):
    import torch

    model = hf_gpt2(vocab_size=256, n_embd=64)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path, safe_serialization=True)
    rc = main(["run", "--model", str(tmp_path), "--arch", "grid32", "--seq-len", "16",
               "--batch", "2", "--fidelity", "analytic", "--allow-nonfinite"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "h.0.mlp.c_fc.weight contains NaN (1 of 16384 values)" in err[0]
    assert "--allow-nonfinite applies to the numerics, not to weights" in err[0]


def test_train_forward_internal_overflow_is_one_line(big, capsys):
    d, _ = big
    rc = main(["train", "--model", str(d), "--arch", "grid32", "--precision", "fp32",
               "--steps", "2", "--seq-len", "16", "--fidelity", "analytic"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("wse-sim: error: step 1: fp32 numerics: the loss is wrong")
    # training walks the op graph, whose final norm is ``norm_f`` in every family
    assert "op norm_f (forward)" in err[0] and "sum of squares" in err[0]


def _score_overflow_weights():
    """gpt-tiny (d 64, 4 heads of 16) with head 2's query and key columns of layer 0 scaled
    by 1e20: every stored tensor stays finite, but head 2's q . k reaches ~1e38 x 16."""
    from gpt_workload.models import resolve_model
    from gpt_workload.weights import init_weights

    cfg = resolve_model("gpt-tiny")
    w = init_weights(cfg, seed=0)
    d, dh = cfg.d_model, cfg.d_head
    for off in (0, d):  # q block, k block
        w.layers[0].attn_w[:, off + 2 * dh : off + 3 * dh] *= 1e20
    return cfg, w


def _expected_score_reach(cfg, w, tokens) -> np.ndarray:
    """float64 bound max_{s<=t} sum_e |q_te| |k_se| per [sequence, head, query]."""
    x = w.wte[tokens].astype(np.float64) + w.wpe[: tokens.shape[1]]
    lw = w.layers[0]
    mu = x.mean(-1, keepdims=True)
    a = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + cfg.layer_norm_eps)
    qkv = (a * lw.ln_1_g + lw.ln_1_b) @ lw.attn_w.astype(np.float64) + lw.attn_b
    K, T, d, H = *tokens.shape, cfg.d_model, cfg.n_head
    q = np.abs(qkv[..., :d].reshape(K, T, H, -1)).transpose(0, 2, 1, 3)
    k = np.abs(qkv[..., d : 2 * d].reshape(K, T, H, -1)).transpose(0, 2, 1, 3)
    b = np.einsum("khte,khse->khts", q, k) * np.tril(np.ones((T, T)))
    return b.max(-1)


@pytest.mark.parametrize("executor", ["weight_streaming", "layer_pipelined", "train"])
def test_attention_score_overflow_names_head_and_query(executor):
    from gpt_workload.training.trainer import TrainNumerics

    cfg, w = _score_overflow_weights()
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, 16))
    reach = _expected_score_reach(cfg, w, tokens)  # [2, 4, 16]
    assert (reach[:, 2] >= FP32_OVERFLOW_AT).all()
    assert (np.delete(reach, 2, axis=1) < FP32_OVERFLOW_AT * 1e-30).all()
    if executor == "train":
        ev = TrainNumerics(cfg, w, precision="fp32").step(tokens).health.first["forward"]
        ev = ev.__dict__
    else:
        rep = simulate(cfg, "grid32", mapping=executor, precision="fp32", weights=w,
                       tokens=tokens, allow_nonfinite=True, reference=False,
                       **{**KW, "batch": 2})  # fmt: skip
        ev = rep.health["first"]["forward"]
    assert (ev["op"], ev["layer"], ev["kind"]) == ("attention", 0, "internal_overflow")
    assert ev["position"] == {"sequence": 0, "token": 0, "feature": 2 * cfg.d_head}
    assert ev["count"] == 2 * 16 and ev["size"] == 2 * cfg.n_head * 16
    assert ev["value"] == pytest.approx(reach[0, 2, 0], rel=1e-4)
