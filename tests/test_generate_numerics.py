"""Generation numerics (:func:`gpt_workload.generation.numerics.run_generation_numerics`)
against Hugging Face ``generate``: small random GPT-2, Llama (GQA), Qwen2 (GQA) and GPT-J
(partial interleaved rotary, parallel block) checkpoints loaded with the project's loader,
prompts of 16 to 64 tokens, 32 new tokens."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_workload.generation.numerics import run_generation_numerics
from gpt_workload.generation.sampling import Sampling, sample_token
from gpt_workload.generation.split import DecodePlan, GemvSplit, KVSplit
from gpt_workload.models import build_graph, load_checkpoint
from conftest import hf_tiny_checkpoint
from wse_sim.errors import ConfigError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

FAMILIES = ("gpt2", "llama", "qwen2", "gptj")
PROMPT_LENGTHS = (16, 37, 64)
NEW = 32
#: room for 64 + 32 - 1 positions (the tiny models of conftest have 64)
POSITIONS = {"gpt2": {"n_positions": 128}, "gptj": {"n_positions": 128},
             "llama": {"max_position_embeddings": 128},
             "qwen2": {"max_position_embeddings": 128}}  # fmt: skip


def plan_of(cfg, split: GemvSplit, kv: KVSplit) -> DecodePlan:
    """``split`` for every linear op and the LM head of ``cfg``'s graph."""
    names = {op.name for _, op in build_graph(cfg).ops() if op.kind in ("linear", "lm_head")}
    return DecodePlan({n: split for n in names}, kv)


#: WaferLLM's MeshGEMV on 4 x 4 PEs with line reductions, KV over 2 PEs; a 2 x 8 tree with
#: the KV cache over 3 PEs (tree merge); a 9 x 5 MeshGEMV with the K-tree all-reduce.
PLANS = {
    "mesh4x4-chain": (GemvSplit(4, 4, "chain"), KVSplit(2, 48, "chain")),
    "2x8-tree-kv3": (GemvSplit(2, 8, "tree"), KVSplit(3, 32, "tree")),
    # WaferLLM's K-tree (two phases: 3 groups of 3 rows to their middles, then to the middle
    # group's), the sum ending at row 4; the K/V merge over 9 PEs likewise
    "mesh9x5-ktree": (GemvSplit(9, 5, "ktree", 2), KVSplit(9, 11, "ktree", 2)),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``{family: (cfg, weights, prompts, hf_tokens, hf_logits)}``: HF greedy tokens and raw
    logits (``output_logits``) of each prompt, float64 model."""
    out = {}
    for fam in FAMILIES:
        d = tmp_path_factory.mktemp(f"gen_{fam}")
        hf = hf_tiny_checkpoint(fam, d, **POSITIONS[fam])
        hf.generation_config.eos_token_id = None  # 32 tokens, no early stop
        hf.generation_config.pad_token_id = 0
        cfg, w = load_checkpoint(d)
        rng = np.random.default_rng(7)
        prompts = [rng.integers(0, cfg.vocab_size, n) for n in PROMPT_LENGTHS]
        toks, logits = [], []
        for p in prompts:
            ids = torch.tensor(p)[None]
            with torch.no_grad():  # the mask explicit: id 0 is a token here, not padding
                g = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=NEW, output_logits=True,
                                return_dict_in_generate=True)  # fmt: skip
            toks.append(g.sequences[0, len(p) :].numpy())
            logits.append(torch.stack(g.logits, 1)[0].numpy())
        out[fam] = (cfg, w, prompts, toks, logits)
    return out


@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_hf_generate(models, family, plan_name):
    cfg, w, prompts, hf_toks, hf_logits = models[family]
    plan = plan_of(cfg, *PLANS[plan_name])
    res = run_generation_numerics(cfg, w, prompts, NEW, plan, precision="fp32")
    assert res.prompt_lengths == list(PROMPT_LENGTHS) and res.decode_steps == NEW - 1
    assert res.max_abs_logit_error is None  # fp32: no reference unless asked
    for i in range(len(prompts)):
        assert res.tokens[i].dtype == np.int64 and res.tokens[i].shape == (NEW,)
        assert res.logits[i].shape == (NEW, cfg.vocab_size)
        np.testing.assert_array_equal(res.tokens[i], hf_toks[i])
        err = np.abs(res.logits[i].astype(np.float64) - hf_logits[i]).max()
        assert err <= 1e-4, (i, err)


def test_plans_differ_by_rounding_only(models):
    cfg, w, prompts, _, _ = models["llama"]
    a, *others = (run_generation_numerics(cfg, w, prompts, 8, plan_of(cfg, *PLANS[n]))
                  for n in PLANS)  # fmt: skip
    for b in others:
        for i in range(len(prompts)):
            np.testing.assert_array_equal(a.tokens[i], b.tokens[i])
            # the prefill is the same; decode steps reduce in other orders
            np.testing.assert_array_equal(a.logits[i][0], b.logits[i][0])
            assert np.abs(a.logits[i] - b.logits[i]).max() <= 1e-5


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_low_precision_reports_error_and_divergence(models, family, precision):
    cfg, w, prompts, hf_toks, hf_logits = models[family]
    plan = plan_of(cfg, *PLANS["2x8-tree-kv3"])
    res = run_generation_numerics(cfg, w, prompts, NEW, plan, precision=precision)
    fp32 = run_generation_numerics(cfg, w, prompts, NEW, plan, reference=True)
    assert res.precision == precision and len(res.first_divergence) == len(prompts)
    for i in range(len(prompts)):
        err = res.max_abs_logit_error[i]
        assert err.shape == (NEW,) and np.isfinite(err).all()
        assert err.max() > fp32.max_abs_logit_error[i].max()  # 16-bit storage rounds more
        # HF's float64 greedy tokens are the reference's: the first divergence is where the
        # run's tokens first leave them, and up to it both saw the same prefix
        diff = np.nonzero(res.tokens[i] != hf_toks[i])[0]
        want = int(diff[0]) if diff.size else None
        assert res.first_divergence[i] == want
        upto = NEW if want is None else want + 1
        hf_err = np.abs(res.logits[i][:upto].astype(np.float64) - hf_logits[i][:upto]).max(1)
        # (HF hands its logits back rounded to float32)
        np.testing.assert_allclose(err[:upto], hf_err, rtol=0, atol=1e-6)
    assert fp32.first_divergence == [None] * len(prompts)
    assert fp32.max_error <= 1e-4


def test_sampling_reproducible_by_seed_and_top1_is_greedy(models):
    cfg, w, prompts, hf_toks, _ = models["qwen2"]
    plan = plan_of(cfg, *PLANS["mesh4x4-chain"])
    hot = Sampling(temperature=1.5, top_k=20)
    a = run_generation_numerics(cfg, w, prompts, 16, plan, sampling=hot, seed=3)
    b = run_generation_numerics(cfg, w, prompts, 16, plan, sampling=hot, seed=3)
    c = run_generation_numerics(cfg, w, prompts, 16, plan, sampling=hot, seed=4)
    for i in range(len(prompts)):
        np.testing.assert_array_equal(a.tokens[i], b.tokens[i])
    assert any((a.tokens[i] != c.tokens[i]).any() for i in range(len(prompts)))
    # each request draws from its own generator: the others leaving the batch early does
    # not change its tokens
    solo = run_generation_numerics(cfg, w, prompts, [16, 1, 1], plan, sampling=hot, seed=3)
    np.testing.assert_array_equal(solo.tokens[0], a.tokens[0])
    top1 = run_generation_numerics(cfg, w, prompts, NEW, plan, sampling=Sampling(0.7, 1))
    for i in range(len(prompts)):
        np.testing.assert_array_equal(top1.tokens[i], hf_toks[i])


def test_sample_token_distribution_and_top_k():
    z = np.array([2.0, 1.0, 0.5, 3.0, -1.0], np.float32)
    rng = np.random.default_rng(0)
    s = Sampling(temperature=0.8)
    n = 20000
    counts = np.bincount([sample_token(z, s, rng) for _ in range(n)], minlength=5)
    p = np.exp(z / 0.8 - (z / 0.8).max())
    p /= p.sum()
    # multinomial counts within 5 standard deviations
    assert (np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1).all()
    top2 = Sampling(temperature=5.0, top_k=2)
    got = {sample_token(z, top2, rng) for _ in range(500)}
    assert got == {0, 3}
    assert sample_token(z, Sampling(), rng) == 3
    assert sample_token(z, Sampling(1.0, top_k=99), rng) in range(5)
    assert sample_token(z, Sampling(temperature=1e-300), rng) == 3  # no overflow


@pytest.mark.parametrize(
    "kw, match",
    [(dict(temperature=-0.5), "sampling.temperature"), (dict(temperature=float("nan")),
      "sampling.temperature"), (dict(temperature=1.0, top_k=0), "sampling.top_k"),
     (dict(temperature=1.0, top_k=2.5), "sampling.top_k")],
)  # fmt: skip
def test_sampling_rejects_bad_fields(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        Sampling(**kw)
    assert "\n" not in str(e.value)


def test_bad_requests_are_one_line_errors(models):
    cfg, w, prompts, _, _ = models["gpt2"]
    plan = DecodePlan()
    cases = [
        (dict(prompts=[np.array([1, cfg.vocab_size])]),
         rf"prompt 0 contains id {cfg.vocab_size}: must be in \[0, vocab_size="),
        (dict(prompts=[np.array([], np.int64)]), r"prompt 0 has shape \(0,\): expected a non-"),
        (dict(prompts=[np.array([[1, 2]])]), r"prompt 0 has shape \(1, 2\): expected a non-empty"),
        (dict(prompts=[np.array([1.0, 2.0])]), "prompt 0 has dtype float64: expected an integer"),
        (dict(prompts=[]), "non-empty list"),
        (dict(new_tokens=0), "new_tokens=0 is not allowed: expected an integer >= 1"),
        (dict(new_tokens=[4, 0, 4]), r"new_tokens\[1\]=0 is not allowed"),
        (dict(new_tokens=[3, 4]), "2 entries for 3 prompts"),
        (dict(new_tokens=cfg.n_positions), "n_positions"),
        (dict(plan=DecodePlan(kv=KVSplit(2, 8))), "does not fit the KV split"),
        (dict(plan=DecodePlan({"q_proj": GemvSplit(2, 2)})), "not a linear op"),
        (dict(precision="fp8"), "precision"),
        (dict(seed=-1), "seed"),
    ]
    base = dict(prompts=prompts, new_tokens=4, plan=plan)
    for kw, match in cases:
        args = {**base, **kw}
        extra = {k: args.pop(k) for k in ("precision", "seed") if k in args}
        with pytest.raises(ConfigError, match=match) as e:
            run_generation_numerics(cfg, w, args["prompts"], args["new_tokens"], args["plan"],
                                    **extra)  # fmt: skip
        assert "\n" not in str(e.value)


def test_requests_with_their_own_lengths(models):
    cfg, w, prompts, hf_toks, _ = models["gpt2"]
    res = run_generation_numerics(cfg, w, prompts, [5, 1, 12], plan_of(cfg, *PLANS["2x8-tree-kv3"]))
    assert [len(t) for t in res.tokens] == [5, 1, 12] and res.decode_steps == 11
    for i, n in enumerate((5, 1, 12)):
        np.testing.assert_array_equal(res.tokens[i], hf_toks[i][:n])
