"""The shared validators (:mod:`gpt_workload.checks`): integers, token-id arrays and worker
counts give one line naming the option or argument, the value and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_workload.checks import check_int, check_token_ids, check_workers, max_workers
from wse_sim.errors import ConfigError


@pytest.mark.parametrize(
    "args, kw, message",
    [
        (("batch", 0, 1, 10), {}, "batch=0 is not allowed: expected an integer in 1..10"),
        (("--batch", "x", 1), {}, "--batch 'x' is not allowed: expected an integer >= 1"),
        (("seq_len", True, 1), {}, "seq_len=True is not allowed: expected an integer >= 1"),
        (("seq_len", 2.0, 1), {}, "seq_len=2.0 is not allowed: expected an integer >= 1"),
        (("--seq-len", 99, 1, 64, "n_positions of m"), {},
         "--seq-len 99 is not allowed: expected an integer in 1..64 (n_positions of m)"),
        (("steps", None, 1), {}, "steps=None is not allowed: expected an integer >= 1"),
    ],
)  # fmt: skip
def test_check_int_refuses_in_one_line(args, kw, message):
    with pytest.raises(ConfigError) as exc:
        check_int(*args, **kw)
    assert str(exc.value) == message


def test_check_int_accepts():
    assert check_int("n", np.int64(3), 1, 5) == 3 and type(check_int("n", np.int64(3), 1)) is int
    assert check_int("n", 5, 5, 5) == 5
    assert check_int("batch", None, 1, allow_none=True) is None


def test_check_workers():
    hi = max_workers()
    assert check_workers("--workers", None) is None
    assert check_workers("--workers", 0) == 0 and check_workers("--workers", hi) == hi
    for bad in (-1, hi + 1, 1.5):
        with pytest.raises(ConfigError) as exc:
            check_workers("--workers", bad)
        assert str(exc.value).startswith(f"--workers {bad!r} is not allowed: expected an "
                                         f"integer in 0..{hi} (0 = in this process")  # fmt: skip


@pytest.mark.parametrize(
    "tokens, kw, message",
    [
        (np.zeros(3, np.int64), {}, "tokens has shape (3,): expected a non-empty 2-D [K, T] array"),
        (np.zeros((0, 3), np.int64), {}, "tokens has shape (0, 3)"),
        (np.zeros((1, 3), np.float32), {}, "tokens has dtype float32: expected an integer dtype"),
        (np.zeros((2, 1), np.int64), dict(min_len=2, max_len=8, why_min="a loss needs a next token"),
         "tokens has length T=1: must be in [2, n_positions=8] (a loss needs a next token)"),
        (np.zeros((1, 9), np.int64), dict(max_len=8),
         "tokens has length T=9: must be <= n_positions=8"),
        (np.array([[1, 97, -1]]), dict(vocab_size=97, name="--tokens"),
         "--tokens contains id -1: must be in [0, vocab_size=97)"),
        (np.zeros((2, 2, 2), np.int64), dict(allow_1d=True, name="--prompt-tokens"),
         "--prompt-tokens has shape (2, 2, 2): expected a non-empty [T] or [K, T] array"),
    ],
)  # fmt: skip
def test_check_token_ids_refuses_in_one_line(tokens, kw, message):
    with pytest.raises(ConfigError) as exc:
        check_token_ids(tokens, **kw)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_check_token_ids_returns_int64_rows():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)[:, ::-1]
    out = check_token_ids(a, vocab_size=6)
    assert out.dtype == np.int64 and out.flags.c_contiguous and np.array_equal(out, a)
    one = check_token_ids(np.array([4, 5], np.uint8), allow_1d=True)
    assert one.shape == (1, 2) and one.dtype == np.int64


def _entry_points():
    """Callers that once had their own integer, token or worker check, each with one bad value
    and the message the shared validator gives for it."""
    from gpt_workload.config import TEST_PRESETS, forward_flops_per_token
    from gpt_workload.generation.split import GemvSplit, KVSplit
    from gpt_workload.mappings.weight_streaming.layout import TileLayout
    from gpt_workload.training.backward import check_tokens
    from gpt_workload.training.loss_scale import DynamicLossScaler
    from gpt_workload.training.optim import AdamWConfig

    cfg = TEST_PRESETS["gpt-tiny"]
    n = cfg.n_positions
    return [
        (lambda: AdamWConfig(warmup_steps=-2),
         "adamw field warmup_steps=-2 is not allowed: expected an integer >= 0"),
        (lambda: AdamWConfig(warmup_steps=10, total_steps=5), "adamw field total_steps=5 is not "
         "allowed: expected an integer >= 10 (max(1, warmup_steps=10))"),
        (lambda: AdamWConfig().lr_at(1.5), "step=1.5 is not allowed: expected an integer >= 0"),
        (lambda: DynamicLossScaler(growth_interval=0),
         "loss_scale field growth_interval=0 is not allowed: expected an integer >= 1"),
        (lambda: GemvSplit(0, 2), "rows=0 is not allowed: expected an integer >= 1"),
        (lambda: KVSplit(2, True), "block_tokens=True is not allowed: expected an integer >= 1"),
        (lambda: forward_flops_per_token(cfg, n + 1),
         f"seq_len={n + 1} is not allowed: expected an integer in 1..{n} (n_positions)"),
        (lambda: TileLayout(n_seq=0, seq_len=8, m=4, P=4),
         "n_seq=0 is not allowed: expected an integer >= 1"),
        (lambda: check_tokens(cfg, np.zeros((2, 1), np.int64)),
         f"tokens has length T=1: must be in [2, n_positions={n}] (a loss needs a next token)"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(9))
def test_former_own_checks_give_the_shared_message(case):
    call, message = _entry_points()[case]
    with pytest.raises(ConfigError) as exc:
        call()
    assert str(exc.value) == message
