"""Benchmark of the generation numerics (issue 13): host tokens/s of
:func:`gpt_workload.generation.numerics.run_generation_numerics` (prefill through the forward
per-PE kernels, decode through the tiled GEMV and split-KV attention kernels) for small
random GPT-2 and Llama (GQA) models, as a ratio of the same checkpoints' ``transformers``
``generate`` (float32, KV cache, greedy) on the same CPU in the same run; the baseline is
the faster of torch's default thread count and one thread (on a busy machine one thread can
win).

Usage:
    python benchmarks/bench_generate_numerics.py [--families gpt2,llama] [--prompt 32]
        [--new-tokens 64] [--batch 1,4] [--repeat 3]
        [--out benchmarks/results/generate_numerics.json]

Both sides generate the same greedy tokens (checked) from the same prompts; tokens/s counts new
tokens over the whole call (prefill included), best of ``--repeat``. Prints a table and writes
JSON. Nothing here asserts a time: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gpt_workload.generation.numerics import run_generation_numerics  # noqa: E402
from gpt_workload.generation.split import DecodePlan, GemvSplit, KVSplit  # noqa: E402
from gpt_workload.models import build_graph, load_checkpoint  # noqa: E402

#: Small models (random weights): 4 layers, d = 256, 8 heads (Llama: 2 K/V heads), 8k vocab.
SHAPES = {
    "gpt2": dict(n_layer=4, n_head=8, n_embd=256, n_inner=1024, vocab_size=8192,
                 n_positions=512),
    "llama": dict(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  hidden_size=256, intermediate_size=704, vocab_size=8192,
                  max_position_embeddings=512, rope_scaling=None),
}  # fmt: skip


def _plan(cfg) -> DecodePlan:
    """MeshGEMV 4 x 4 (chain) for every matrix, the KV cache over 2 PEs."""
    names = {op.name for _, op in build_graph(cfg).ops() if op.kind in ("linear", "lm_head")}
    return DecodePlan({n: GemvSplit(4, 4) for n in names}, KVSplit(2, cfg.n_positions // 2))


def bench(family: str, prompt: int, new: int, batch: int, repeat: int, tmp: Path) -> dict:
    import torch
    from conftest import hf_tiny_checkpoint

    d = tmp / family
    d.mkdir(parents=True)
    hf_tiny_checkpoint(family, d, **SHAPES[family])
    cfg, w = load_checkpoint(d)
    hf = __import__("transformers").AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    hf = hf.eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(batch, prompt))
    plan = _plan(cfg)
    run_generation_numerics(cfg, w, list(prompts), 2, plan)  # compile the kernels
    ours = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = run_generation_numerics(cfg, w, list(prompts), new, plan)
        ours = min(ours, time.perf_counter() - t0)
    ids = torch.tensor(prompts)
    hf_s = {}
    default_threads = torch.get_num_threads()
    for threads in sorted({default_threads, 1}):
        torch.set_num_threads(threads)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=new)  # fmt: skip
            best = min(best, time.perf_counter() - t0)
        hf_s[threads] = best
    torch.set_num_threads(default_threads)
    theirs = min(hf_s.values())  # the faster thread count is the baseline
    same = all((out[i, prompt:].numpy() == res.tokens[i]).all() for i in range(batch))
    n_tok = batch * new
    return {"family": family, "shape": SHAPES[family], "prompt": prompt, "new_tokens": new,
            "batch": batch, "ours_wall_s": ours, "ours_tokens_per_s": n_tok / ours,
            "ours_split_s": res.host_seconds, "hf_wall_s": theirs,
            "hf_tokens_per_s": n_tok / theirs, "ratio_ours_over_hf": theirs / ours,
            "hf_wall_s_by_torch_threads": hf_s, "same_tokens": bool(same)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="gpt2,llama")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/generate_numerics.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(f, a.prompt, a.new_tokens, int(b), a.repeat, Path(tmp) / f"b{b}")
                for f in a.families.split(",") for b in a.batch.split(",")]  # fmt: skip
    print(f"{'family':<7} {'batch':>5} {'new':>4} {'ours tok/s':>10} {'HF tok/s':>9} "
          f"{'ours/HF':>8} {'prefill s':>9} {'decode s':>8} {'same':>5}")  # fmt: skip
    for r in rows:
        s = r["ours_split_s"]
        print(f"{r['family']:<7} {r['batch']:>5} {r['new_tokens']:>4} "
              f"{r['ours_tokens_per_s']:>10.1f} {r['hf_tokens_per_s']:>9.1f} "
              f"{r['ratio_ours_over_hf']:>8.3f} {s['prefill']:>9.3f} {s['decode']:>8.3f} "
              f"{str(r['same_tokens']):>5}")  # fmt: skip
    out = {"machine": platform.platform(), "processor": platform.processor(), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
