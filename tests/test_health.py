"""No silent wrong number (issue 17, parts 1 and 2): numerical health, --allow-nonfinite,
strict JSON and weights that are never invented silently.

The overflowing checkpoint is the reported case: a Hugging Face GPT-2 saved with
``save_pretrained`` whose layer-0 MLP up-projection is scaled to 1e5, beyond fp16's 65504.
Expected positions and values come from the model's construction (which op sees the scaled
weight) and from the float64 Hugging Face forward (hooks), never from the code under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import hf_gpt2

from gpt_workload import strict_json
from gpt_workload.cli import main
from gpt_workload.health import (
    FORMAT_MAX,
    OVERFLOW_AT,
    HealthTracker,
    rows_locator,
    tile_locator,
)
from gpt_workload.mappings.weight_streaming.layout import TileLayout
from gpt_workload.models import resolve_model
from gpt_workload.precision import round_storage
from gpt_workload.simulate import simulate
from gpt_workload.training.loss_scale import DynamicLossScaler
from gpt_workload.training.trainer import TrainNumerics
from gpt_workload.weights import init_weights
from wse_sim.errors import NumericsError

RUN = ["--arch", "grid32", "--seq-len", "16", "--fidelity", "analytic", "--batch", "4"]


def strict_loads(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity (RFC 8259)."""

    def refuse(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(text, parse_constant=refuse)


def one_line_error(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wse-sim: error:") and "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def overflow_ckpt(tmp_path_factory):
    """GPT-2 (vocab 300, 2 layers, d 32, 4 heads) with layer 0's c_fc weight scaled to a
    largest |w| of 1e5; returns (directory, torch model)."""
    import torch

    model = hf_gpt2()
    with torch.no_grad():
        w = model.transformer.h[0].mlp.c_fc.weight
        w.mul_(1e5 / w.abs().max())
    d = tmp_path_factory.mktemp("overflow")
    model.save_pretrained(d)
    return d, model


def test_fp16_overflow_is_one_line_naming_op_layer_and_precision(overflow_ckpt, capsys):
    d, model = overflow_ckpt
    rc = main(["run", "--model", str(d), *RUN, "--precision", "fp16"])
    assert rc == 2
    line = one_line_error(
        capsys.readouterr().err,
        "fp16 numerics: the logits are not finite",
        "weight h.0.mlp.c_fc.weight of layer 0",
        "op ffn_up of layer 0 (forward)",
        "--precision bf16",
        "--allow-nonfinite",
    )
    # the weight named is the one scaled: its largest |w| (1e5) overflows fp16
    w = model.transformer.h[0].mlp.c_fc.weight.detach().numpy()
    i, j = np.unravel_index(np.argmax(np.abs(w) >= OVERFLOW_AT["fp16"]), w.shape)
    assert f"index [{i}, {j}]" in line


def test_fp16_overflow_position_matches_the_float64_forward(overflow_ckpt):
    """The first forward event is op ffn_up of layer 0 at the earliest (token, feature) whose
    c_fc output is not finite in fp16: its float64 Hugging Face value reaches fp16's overflow
    threshold, or its weight column holds a weight that overflowed to inf when stored."""
    import torch

    d, model = overflow_ckpt
    tokens = np.random.default_rng(3).integers(0, 300, size=(1, 16))
    rep = simulate(
        str(d), "grid32", precision="fp16", seq_len=16, batch=4, fidelity="analytic",
        tokens=tokens, allow_nonfinite=True, reference=False,
    )  # fmt: skip
    ev = rep.health["first"]["forward"]
    assert (ev["op"], ev["layer"]) == ("ffn_up", 0)
    seen = {}
    m64 = model.double()

    def keep(mod, inp, out):
        seen["u"] = out[0].numpy().copy()

    hook = m64.transformer.h[0].mlp.c_fc.register_forward_hook(keep)
    with torch.no_grad():
        m64(torch.from_numpy(tokens))
    hook.remove()
    model.float()
    u = seen["u"]  # [T, d_ff] float64
    w = model.transformer.h[0].mlp.c_fc.weight.detach().numpy()
    inf_col = (np.abs(w) >= OVERFLOW_AT["fp16"]).any(axis=0)
    bad = (np.abs(u) >= OVERFLOW_AT["fp16"]) | inf_col[None, :]
    t0 = int(np.argmax(bad.any(axis=1)))
    f0 = int(np.argmax(bad[t0]))
    assert ev["position"] == {"sequence": 0, "token": t0, "feature": f0}
    # values within fp16 rounding of the threshold may fall either side
    assert ev["count"] == pytest.approx(int(bad.sum()), rel=1e-2)
    if inf_col[f0]:
        assert ev["kind"] == "inf"
    else:  # the value before storing is the float64 one up to fp16-rounded inputs
        assert ev["kind"] == "overflow"
        assert ev["value"] == pytest.approx(abs(u[t0, f0]), rel=2e-2)


def test_fp16_overflow_with_allow_nonfinite_says_so_first(overflow_ckpt, tmp_path, capsys):
    d, _ = overflow_ckpt
    out = tmp_path / "r.json"
    rc = main(
        ["run", "--model", str(d), *RUN, "--precision", "fp16", "--allow-nonfinite",
         "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("NOTE: NON-FINITE LOGITS kept by --allow-nonfinite: fp16")
    assert "op ffn_up of layer 0" in first
    rep = strict_loads(out.read_text())
    assert list(rep)[:2] == ["notices", "health"]
    assert rep["notices"][0] == first.removeprefix("NOTE: ")
    assert rep["health"]["status"] == "nonfinite_allowed"
    assert rep["health"]["allow_nonfinite"] is True and rep["health"]["outputs_finite"] is False
    # the NaN loss is null and says why
    assert rep["numerics"]["loss"] is None
    assert rep["nonfinite_values"]["numerics.loss"] == "nan"


def test_bf16_holds_the_same_checkpoint(overflow_ckpt):
    """What the error suggests works: bf16's range covers 1e5."""
    d, _ = overflow_ckpt
    rep = simulate(
        str(d), "grid32", precision="bf16", seq_len=16, batch=4, fidelity="analytic"
    )
    assert rep.health["status"] == "ok" and rep.notices == []
    assert math.isfinite(rep.numerics["loss"])


def test_simulate_raises_numerics_error_unless_allowed(overflow_ckpt):
    d, _ = overflow_ckpt
    kw = dict(precision="fp16", seq_len=16, batch=4, fidelity="analytic", reference=False)
    with pytest.raises(NumericsError, match="op ffn_up of layer 0"):
        simulate(str(d), "grid32", **kw)
    rep = simulate(str(d), "grid32", allow_nonfinite=True, **kw)
    assert rep.notices[0].startswith("NON-FINITE LOGITS")
    strict_loads(rep.to_json())


def _residual_overflow_weights():
    """gpt-tiny with proj_b[3] = fc2_b[3] = 40000 in layer 0: every op's output fits fp16
    (40000 < 65504) until residual_2 adds them: x + 40000 + 40000 ~ 80000 at feature 3 of
    every token. The first forward event is therefore residual_2 of layer 0, sequence 0,
    token 0, feature 3, with |x| = 80000 up to the small residual stream."""
    cfg = resolve_model("gpt-tiny")
    w = init_weights(cfg, seed=0)
    w.layers[0].proj_b[3] = 40000.0
    w.layers[0].fc2_b[3] = 40000.0
    return cfg, w


@pytest.mark.parametrize("mapping", ["weight_streaming", "summa", "layer_pipelined"])
def test_every_mapping_names_the_first_op_layer_and_position(mapping):
    cfg, w = _residual_overflow_weights()
    rep = simulate(
        cfg, "grid32", mapping=mapping, precision="fp16", seq_len=16, batch=2,
        fidelity="analytic", weights=w, allow_nonfinite=True, reference=False,
    )  # fmt: skip
    assert "weights" not in rep.health["first"]  # 40000 fits fp16
    ev = rep.health["first"]["forward"]
    assert (ev["op"], ev["layer"], ev["kind"]) == ("residual_2", 0, "overflow")
    assert ev["position"] == {"sequence": 0, "token": 0, "feature": 3}
    assert ev["value"] == pytest.approx(80000, rel=1e-3)
    assert ev["count"] == 16  # feature 3 of each of the 16 tokens


def test_fp32_run_of_the_same_weights_is_healthy():
    cfg, w = _residual_overflow_weights()
    rep = simulate(
        cfg, "grid32", precision="fp32", seq_len=16, batch=2, fidelity="analytic", weights=w
    )
    assert rep.health["status"] == "ok" and rep.health["tensors_nonfinite"] == 0
    assert rep.health["tensors_checked"] > 2 * 10  # every op of both layers


# ---- training -----------------------------------------------------------------------------
TRAIN = ["--arch", "grid32", "--steps", "2", "--fidelity", "analytic", "--check-sequences",
         "2", "--seq-len", "16"]  # fmt: skip


def test_train_forward_overflow_is_one_line(overflow_ckpt, capsys):
    d, _ = overflow_ckpt
    rc = main(["train", "--model", str(d), *TRAIN, "--precision", "fp16"])
    assert rc == 2
    one_line_error(
        capsys.readouterr().err,
        "step 1: fp16 numerics: the loss is not finite",
        "op ffn_up of layer 0 (forward)",
        "--precision bf16",
        "--allow-nonfinite",
    )


def test_train_allow_nonfinite_says_so_first(overflow_ckpt, tmp_path, capsys):
    d, _ = overflow_ckpt
    out = tmp_path / "t.json"
    rc = main(["train", "--model", str(d), *TRAIN, "--precision", "fp16", "--allow-nonfinite",
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NOTE: NON-FINITE LOSS kept by --allow-nonfinite")
    assert lines[1].startswith("NOTE: all 2 numerics step(s) were skipped")
    rep = strict_loads(out.read_text())
    assert list(rep)[:2] == ["notices", "health"]
    assert rep["health"]["status"] == "nonfinite_allowed"
    assert rep["numerics"]["steps_skipped"] == 2
    assert rep["nonfinite_values"]["numerics.steps[0].grad_norm"] == "inf"


def test_gradient_overflow_is_skipped_and_counted_not_an_error():
    """Loss scaling keeps its semantics: a loss scale of 2**100 makes the scaled
    cross-entropy gradient overflow fp16 (|dlogits| ~ 2**100 / (B (T-1)) > 65504); the step
    is skipped, the scaler backs off, and the tracker names the op."""
    cfg = resolve_model("gpt-tiny")
    tn = TrainNumerics(cfg, init_weights(cfg, 0), "fp16",
                       loss_scaler=DynamicLossScaler(init_scale=2.0**100))  # fmt: skip
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 16))
    s = tn.step(tokens)
    assert s.skipped and math.isfinite(s.loss)
    ev = s.health.first["backward"]
    assert (ev.op, ev.layer, ev.kind) == ("cross_entropy_bwd", None, "overflow")
    assert "forward" not in s.health.first
    assert tn.scaler.scale == 2.0**99


def test_train_report_json_is_strict_and_counts_skips(tmp_path):
    from gpt_workload.training.train import train

    rep = train("gpt-tiny", "grid32", steps=2, precision="fp16", fidelity="analytic",
                check_sequences=2, seq_len=16)  # fmt: skip
    assert rep.health["status"] == "ok" and rep.numerics["steps_skipped"] == 0
    rep.numerics["steps"][0]["grad_norm"] = float("inf")  # as a skipped step records it
    rep.to_json(tmp_path / "t.json")
    d = strict_loads((tmp_path / "t.json").read_text())
    assert d["numerics"]["steps"][0]["grad_norm"] is None
    assert d["nonfinite_values"] == {"numerics.steps[0].grad_norm": "inf"}


# ---- the tracker itself -------------------------------------------------------------------
def test_overflow_thresholds_are_where_rounding_gives_inf():
    for p in ("fp16", "bf16"):
        at = np.float32(OVERFLOW_AT[p])
        below = np.nextafter(at, np.float32(0))
        r = round_storage(np.array([below, at, -at], dtype=np.float32), p)
        assert r[0] == FORMAT_MAX[p] and np.isposinf(r[1]) and np.isneginf(r[2])
    assert FORMAT_MAX["fp16"] == float(np.finfo(np.float16).max)


def test_tile_locator_finds_the_earliest_token():
    """Non-finite values planted in a dense [K, T, F] tensor, scattered to the per-PE tile
    layout: the tracker reports the one earliest in (sequence, token, feature) order."""
    K, T, F, m, P = 2, 11, 12, 4, 3
    x = np.random.default_rng(1).normal(size=(K, T, F)).astype(np.float32)
    x[1, 0, 0] = np.inf
    x[0, 9, 7] = np.nan
    x[0, 5, 11] = 1e6  # overflows fp16 when stored
    tl = TileLayout(n_seq=K, seq_len=T, m=m, P=P)
    h = HealthTracker("fp16")
    h.store("op", 2, tl.to_tiles(x), tile_locator(tl.segs_per_seq, m, T))
    ev = h.first["forward"]
    assert ev.position == {"sequence": 0, "token": 5, "feature": 11}
    assert (ev.kind, ev.value, ev.count) == ("overflow", 1e6, 3)


def test_rows_locator_and_kinds():
    h = HealthTracker("fp32", "backward")
    a = np.ones((3 * 4, 5), dtype=np.float32)
    a[7, 2] = np.nan  # sequence 1, token 3
    assert not h.check("gelu_bwd", 1, a, rows_locator(4))
    ev = h.first["backward"]
    assert ev.position == {"sequence": 1, "token": 3, "feature": 2} and ev.kind == "nan"
    assert h.check("x", 0, np.full(4, 3e38, dtype=np.float32))  # the float32 sum overflows


# ---- strict JSON --------------------------------------------------------------------------
def test_strict_json_nulls_and_lists_every_nonfinite_number():
    obj = {"a": float("nan"), "b": [1.0, np.float32(np.inf)], "c": {"d": -math.inf}, "e": 2}
    d = strict_loads(strict_json.dumps(obj))
    assert d["a"] is None and d["b"] == [1.0, None] and d["c"]["d"] is None and d["e"] == 2
    assert d["nonfinite_values"] == {"a": "nan", "b[1]": "inf", "c.d": "-inf"}


# ---- weights are never invented silently --------------------------------------------------
def test_directory_without_weights_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4,
                    "vocab_size": 300, "n_positions": 64})
    )  # fmt: skip
    rc = main(["run", "--model", str(tmp_path), *RUN])
    assert rc == 2
    one_line_error(capsys.readouterr().err, "holds no weights", "model.safetensors",
                   "pytorch_model.bin", "config.json")  # fmt: skip


def test_sharded_safetensors_directory_is_a_checkpoint(tmp_path):
    """A directory with a sharded safetensors index counts as holding weights."""
    hf_gpt2().save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    rep = simulate(str(tmp_path), "grid32", seq_len=16, batch=2, fidelity="analytic")
    assert rep.numerics["weights"] == f"checkpoint {tmp_path}" and rep.notices == []


def test_allow_nonfinite_must_be_a_bool():
    from wse_sim.errors import ConfigError

    with pytest.raises(ConfigError, match="allow_nonfinite='yes' must be True or False"):
        simulate("gpt-tiny", "grid32", seq_len=16, allow_nonfinite="yes")


def test_an_unused_overflowing_weight_is_reported_but_not_an_error():
    """wpe row 100 overflows fp16 but a 16-token run never reads it: the logits are finite,
    so the run goes on, and the report still says so first (status ``contained``)."""
    cfg = resolve_model("gpt-tiny")
    w = init_weights(cfg, seed=0)
    w.wpe[100, 7] = 1e5
    rep = simulate(cfg, "grid32", precision="fp16", seq_len=16, batch=2, fidelity="analytic",
                   weights=w, reference=False)  # fmt: skip
    assert rep.health["status"] == "contained" and rep.health["outputs_finite"] is True
    ev = rep.health["first"]["weights"]
    assert (ev["op"], ev["position"], ev["value"]) == ("wpe.weight", {"index": [100, 7]}, 1e5)
    assert "forward" not in rep.health["first"]
    assert rep.notices[0].startswith("fp16 numerics: 1 stored tensor(s) left the format's")
    assert math.isfinite(rep.numerics["loss"])
