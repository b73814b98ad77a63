"""Throughput of the numerical kernels on Cerebras-GPT-111M shapes (1 sequence x 2048 tokens).

Run: ``python benchmarks/bench_kernels.py [--quick]``. Prints GFLOP/s of :func:`gemm_ws` next
to ``numpy.matmul`` of the same (dense, float32) shapes measured in the same process, and the
wall time of one call of the other kernels. Timings are the best of ``--repeat`` calls after a
warm-up call (which also triggers the JIT compilation).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from gpt_workload import kernels as kn
from gpt_workload.mappings.weight_streaming.layout import TileLayout


def _best(fn, repeat: int) -> float:
    """Best wall time in seconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_gemm(m: int, k: int, n: int, p: int, tokens: int, repeat: int) -> str:
    """One line: GFLOP/s of gemm_ws and numpy.matmul for X[tokens, k] @ W[k, n]."""
    lay = TileLayout(n_seq=1, seq_len=tokens, m=m, P=p)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, tokens, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    x_tiles = lay.to_tiles(x)
    out = lay.empty_tiles(n, pad_to=lay.padded_width(n))
    seq = {"segs_per_seq": lay.segs_per_seq, "seq_len": tokens}
    t_ws = _best(lambda: kn.gemm_ws(x_tiles, w, b, out, **seq), repeat)
    x2 = x[0]
    t_np = _best(lambda: np.matmul(x2, w), repeat)
    flop = 2.0 * tokens * k * n
    return (
        f"gemm M={tokens} K={k} N={n} P={p} m={m}: gemm_ws {flop / t_ws / 1e9:6.1f} GFLOP/s"
        f" ({t_ws:.3f} s), numpy.matmul {flop / t_np / 1e9:6.1f} GFLOP/s ({t_np:.3f} s)"
    )


def bench_others(m: int, tokens: int, repeat: int) -> list[str]:
    """Lines with the wall time of one call of the non-GEMM kernels (111M shapes, P=12)."""
    p, d, n_head, vocab = 12, 768, 12, 50257
    dh = d // n_head
    lay = TileLayout(n_seq=1, seq_len=tokens, m=m, P=p)
    seq = {"segs_per_seq": lay.segs_per_seq, "seq_len": tokens}
    rng = np.random.default_rng(1)
    x = lay.to_tiles(rng.standard_normal((1, tokens, d), dtype=np.float32))
    g = np.ones(d, np.float32)
    out = np.empty_like(x)
    qkv = lay.to_tiles(rng.standard_normal((1, tokens, 3 * d), dtype=np.float32))
    att = lay.empty_tiles(d)
    logits = lay.to_tiles(
        rng.standard_normal((1, tokens, vocab), dtype=np.float32), pad_to=lay.padded_width(vocab)
    )
    tokens_ids = rng.integers(0, vocab, (1, tokens))
    h4 = lay.to_tiles(rng.standard_normal((1, tokens, 4 * d), dtype=np.float32))
    rows = {
        "layernorm": lambda: kn.layernorm_tiled(x, g, g, 1e-5, out, **seq),
        "attention": lambda: kn.attention_tiled(
            qkv, lay.segs_per_seq, tokens, 1 / math.sqrt(dh), att, d_head=dh
        ),
        "gelu(4d)": lambda: kn.gelu_tiled(h4, False, np.empty_like(h4)),
        "add": lambda: kn.add_tiled(x, x, out),
        "cross_entropy": lambda: kn.cross_entropy_tiled(
            logits, vocab, tokens_ids, lay.segs_per_seq, m
        ),
    }
    lines = []
    for name, fn in rows.items():
        t = _best(fn, repeat)
        extra = ""
        if name == "attention":
            flop = 4.0 * d * tokens * (tokens + 1) / 2  # QK^T and PV, causal
            extra = f", {flop / t / 1e9:.1f} GFLOP/s"
        lines.append(f"{name:14s} m={m}: {t * 1e3:8.1f} ms per call{extra}")
    return lines


def main() -> None:
    """Parse arguments and print the benchmark lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the LM-head GEMM")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    tokens = 2048
    for m in (4, 16):
        print(bench_gemm(m, 768, 2304, 12, tokens, args.repeat))  # QKV
        if not args.quick:
            print(bench_gemm(m, 768, 50257, 12, tokens, 1))  # LM head
        for line in bench_others(m, tokens, args.repeat):
            print(line)


if __name__ == "__main__":
    main()
