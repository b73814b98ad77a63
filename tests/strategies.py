"""Hypothesis strategies for the fuzzer (``tests/test_fuzz.py``): arch overrides, tiny GPT-2
style model configs, mappings and their knobs, run options, sweep specs (TOML text) and token
arrays, valid and invalid alike. Everything is kept tiny (``grid8`` / ``grid32``, 1-3
layers, ``d_model`` <= 64, sequences <= 64 tokens, numerics rarely) so that 10,000 examples
run in well under an hour on 2 cores."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from gpt_workload.mappings import list_mappings
from wse_sim.arch import load_arch

ARCHS = ("grid8", "grid32")
PRECISIONS = ("fp32", "fp16", "bf16")
#: arch fields and their preset values (grid8), for overrides near and far from them
ARCH_FIELDS = {key: val for key, val, _doc, _src in load_arch("grid8").field_table()}
MAPPINGS = {m["name"]: m for m in list_mappings()}

def one_in(draw, n: int) -> bool:
    """True about once in ``n`` draws (an interior value: Hypothesis favours the bounds of
    an integer range, so ``== 0`` would come up far more often)."""
    return draw(st.integers(1, n)) == max(n // 2, 1) if n > 1 else True


_bad_number = st.sampled_from(
    ["nan", "inf", "-inf", "-1", "0", "abc", "", "1e400", "99999999999999999999", "1e30", "0.5"]
)


@st.composite
def override(draw) -> str:
    """One ``--set LEVEL.FIELD=VALUE``: mostly a preset field scaled by 1/4..4 (an int field
    stays an int), sometimes a bad value, an unknown field or no ``=`` at all."""
    kind = draw(st.sampled_from(["scaled"] * 12 + ["bad_value", "bad_field", "malformed"]))
    key = draw(st.sampled_from(sorted(ARCH_FIELDS)))
    if kind == "bad_field":
        return draw(st.sampled_from(["pe.nosuch=1", "nosuch=1", "wafer.rows.x=2", "=3", "pe.=1"]))
    if kind == "malformed":
        return draw(st.sampled_from([key, f"{key}==1", f" {key} = ", f"{key}=1,2"]))
    if kind == "bad_value":
        return f"{key}={draw(_bad_number)}"
    base = ARCH_FIELDS[key]
    factor = draw(st.sampled_from([0.25, 0.5, 1, 2, 4]))
    if key.startswith("wafer."):  # keep the grid tiny (the packet backend, the numerics)
        return f"{key}={draw(st.integers(1, 16))}"
    if isinstance(base, int):
        return f"{key}={max(int(base * factor), 0)}"
    return f"{key}={base * factor!r}"


@st.composite
def model_config(draw) -> dict:
    """Fields of a tiny GPT-2-style config (``GPTConfig(**...)``); sometimes an invalid one
    (a head count that does not divide ``d_model``, a zero, a bad activation)."""
    n_head = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([2, 4, 8, 16]))
    d_model = n_head * head_dim
    cfg = dict(
        name="fuzz",
        n_layer=draw(st.integers(1, 3)),
        n_head=n_head,
        d_model=d_model,
        d_ff=d_model * draw(st.sampled_from([1, 2, 4])),
        vocab_size=draw(st.integers(2, 300)),
        n_positions=draw(st.integers(4, 64)),
        layer_norm_eps=1e-5,
        activation=draw(st.sampled_from(["gelu", "gelu_new"])),
        tie_embeddings=True,
    )
    if one_in(draw, 20):  # 5 %: break one field
        field, bad = draw(
            st.sampled_from(
                [
                    ("n_head", 3),
                    ("n_layer", 0),
                    ("d_model", 0),
                    ("vocab_size", -1),
                    ("n_positions", 0),
                    ("layer_norm_eps", float("nan")),
                    ("activation", "relu6"),
                    ("d_ff", 0),
                ]
            )
        )
        cfg[field] = bad
    return cfg


def _knob_value(draw, knob: dict):
    allowed = knob["allowed"]
    if one_in(draw, 10):  # 10 %: a bad value
        return draw(st.sampled_from(["-1", "0", "abc", "nan", "", "1.5"]))
    if allowed.startswith("one of "):
        return draw(st.sampled_from([x.strip() for x in allowed[7:].split(",")]))
    if allowed.startswith("an integer >= "):
        lo = int(allowed.split(">=")[1])
        return str(draw(st.integers(lo, lo + 8)))
    return "all"  # auto's candidates


@st.composite
def mapping_spec(draw) -> str:
    """``NAME[:knob=value,...]`` from the mapping registry (``wse-sim mappings list``);
    ``auto`` rarely (it runs every candidate); sometimes an unknown name or knob."""
    names = [n for n in MAPPINGS if n != "auto"]
    if one_in(draw, 40):
        return draw(st.sampled_from(["nosuch", "summa:nosuch=1", "summa:", ":x=1", "summa:x"]))
    name = "auto" if one_in(draw, 40) else draw(st.sampled_from(names))
    knobs = [k for k in MAPPINGS[name]["knobs"] if name != "auto" or k["name"] == "top"]
    chosen = draw(st.lists(st.sampled_from(knobs), unique_by=lambda k: k["name"], max_size=2))
    if not chosen:
        return name
    return name + ":" + ",".join(f"{k['name']}={_knob_value(draw, k)}" for k in chosen)


@st.composite
def run_options(draw, arch: str | None = None) -> dict:
    """Keyword arguments of :func:`gpt_workload.simulate.simulate`: arch, mapping, fidelity
    (``packet`` rarely and only on ``grid8``), precision, batch, seq_len, check_sequences
    (0 mostly), seed and overrides; sometimes out of range."""
    arch = arch or draw(st.sampled_from(ARCHS))
    fid = draw(st.sampled_from(["analytic"] * 6 + ["event"] * 3 + ["packet"]))
    if fid == "packet" and (arch != "grid8" or draw(st.booleans())):
        fid = "analytic"
    def rare(common, bad):  # the bad values 1 time in 10
        return draw(bad) if one_in(draw, 10) else draw(common)

    return dict(
        arch=arch,
        mapping=draw(mapping_spec()),
        fidelity=fid,
        precision=rare(st.sampled_from(PRECISIONS), st.sampled_from(["fp8", "FP16", ""])),
        batch=rare(st.one_of(st.none(), st.integers(1, 8)), st.sampled_from([0, -1, 10**7])),
        # n_positions of model_config() is >= 4; longer ones are refused for short models
        seq_len=rare(
            st.one_of(st.integers(1, 4), st.integers(1, 64), st.none()),
            st.sampled_from([0, -3, 10**6]),
        ),
        check_sequences=draw(st.sampled_from([0] * 12 + [1, 1, 2, -1])),
        seed=draw(st.integers(0, 2**31)),
        overrides=draw(st.lists(override(), min_size=1, max_size=2)) if one_in(draw, 4) else [],
    )


@st.composite
def token_array(draw, vocab: int, seq_len: int) -> np.ndarray:
    """Token ids ``[K, T]``: mostly in ``[0, vocab)``, sometimes out of range, the wrong
    length or not integers."""
    k = draw(st.integers(1, 2))
    t = draw(st.integers(1, seq_len + 3)) if one_in(draw, 10) else seq_len
    lo, hi = (-2, vocab + 2) if one_in(draw, 10) else (0, vocab - 1)
    ids = draw(st.lists(st.integers(lo, hi), min_size=k * t, max_size=k * t))
    arr = np.asarray(ids, dtype=np.int64).reshape(k, t)
    return arr.astype(np.float32) if one_in(draw, 20) else arr


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


_SWEEP_VALUES = {
    "model": st.sampled_from(["gpt-tiny", "gpt-tiny", "nosuch", ""]),
    "arch": st.sampled_from(["grid8", "grid32", "nosuch"]),
    "precision": st.sampled_from(["fp16", "fp32", "bf16", "int4"]),
    "fidelity": st.sampled_from(["analytic", "analytic", "event", "packet", "exact"]),
    "batch": st.one_of(st.integers(-1, 4), st.sampled_from(["max", "default", "many", 1.5])),
    "seq_len": st.one_of(st.integers(-1, 64), st.just(10**9)),
    "mapping": st.sampled_from(["weight_streaming", "summa", "row_1d", "layer_pipelined", "x"]),
    "pe.sram_bytes": st.sampled_from([1000, 24576, 49152, 98304, -5, float("nan"), "big"]),
    "fabric.hop_latency_cycles": st.sampled_from([0, 1, 4, 5000, 1.5]),
    "model.n_layer": st.sampled_from([1, 2, 0]),
    "nosuch_field": st.just(1),
}


@st.composite
def sweep_toml(draw) -> str:
    """A sweep spec as TOML text: ``[base]`` and a ``[grid]`` (sometimes a ``[[zip]]``) of
    the run, arch and model fields, valid and invalid values, at most 6 points."""
    keys = sorted(_SWEEP_VALUES)
    base_keys = draw(st.lists(st.sampled_from(keys), unique=True, max_size=3))
    grid_keys = draw(
        st.lists(st.sampled_from([k for k in keys if k not in base_keys]), unique=True, max_size=2)
    )
    base = {"model": "gpt-tiny", "arch": "grid8", "seq_len": 16, "fidelity": "analytic"}
    for k in base_keys:
        base[k] = draw(_SWEEP_VALUES[k])
    lines = ['[sweep]', 'name = "fuzz"', "", "[base]"]
    lines += [f'"{k}" = {_toml_value(v)}' for k, v in base.items()]
    lines += ["", "[grid]"]
    for k in grid_keys:
        vals = draw(st.lists(_SWEEP_VALUES[k], min_size=1, max_size=2))
        lines.append(f'"{k}" = {_toml_value(vals)}')
    if one_in(draw, 10):
        lines += ["", "[[zip]]", "batch = [1, 2]", "precision = " + draw(
            st.sampled_from(['["fp16", "fp32"]', '["fp16"]', "3"])
        )]
    return "\n".join(lines) + "\n"
