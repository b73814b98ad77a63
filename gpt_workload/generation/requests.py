"""The requests of a generation run: prompts (token ids or text), lengths, validation.

A run serves ``batch`` concurrent requests. Request ``i`` has a prompt of ``prompt_len_i``
tokens and asks for ``new_tokens_i`` new tokens. Lengths are fixed (every request the same)
or, with ``spread = f > 0``, drawn from a seeded uniform distribution: ``prompt_len_i`` in
``[P (1 - f), P (1 + f)]`` and ``new_tokens_i`` in ``[N (1 - f), N (1 + f)]`` (rounded, at
least 1). Prompt ids come from ``prompt_tokens`` (a ``[K, T]`` or ``[T]`` array with ``K ==
batch`` rows, request ``i`` taking row ``i``, or one row used by every request), from
``prompt`` text through the checkpoint's ``tokenizer.json`` (the ``tokenizers`` library), or
are drawn from the seed. A given prompt is used exactly as given: its length is ``T`` for
every request, ``prompt_len`` is refused with it, and ``spread`` varies only the output
lengths.

Every check raises a one-line :class:`wse_sim.errors.ConfigError` naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt_workload.checks import check_int, check_token_ids, load_token_file
from gpt_workload.config import GPTConfig
from wse_sim.errors import ConfigError

__all__ = ["Request", "load_tokenizer", "make_requests", "read_prompt_tokens"]


@dataclass(frozen=True)
class Request:
    """One request: its prompt ids ``[prompt_len]`` (int64) and the new tokens it wants."""

    index: int
    prompt: np.ndarray
    new_tokens: int

    @property
    def prompt_len(self) -> int:
        """Tokens in the prompt."""
        return int(self.prompt.shape[0])

    @property
    def context(self) -> int:
        """Longest context the request reaches: prompt + new tokens."""
        return self.prompt_len + self.new_tokens


def read_prompt_tokens(path: str | Path) -> np.ndarray:
    """Token ids from a ``.npy`` file: an integer array ``[T]`` or ``[K, T]``.

    Raises:
        ConfigError: unreadable file, not an integer array, wrong rank or empty.
    """
    return check_prompt_array(load_token_file("--prompt-tokens", path), "--prompt-tokens")


def check_prompt_array(arr, opt: str = "prompt_tokens") -> np.ndarray:
    """``arr`` as an int64 ``[K, T]`` array.

    Raises:
        ConfigError: not integers, not 1-D or 2-D, or empty.
    """
    return check_token_ids(arr, name=opt, allow_1d=True)


def load_tokenizer(model: str):
    """The ``tokenizers.Tokenizer`` of checkpoint directory ``model`` (its
    ``tokenizer.json``).

    Raises:
        ConfigError: ``model`` is not a directory with a ``tokenizer.json``, or the
            ``tokenizers`` package is missing.
    """
    p = Path(str(model))
    tj = p / "tokenizer.json"
    if not (p.is_dir() and tj.is_file()):
        raise ConfigError(
            f"--prompt text needs a tokenizer.json in the checkpoint directory; {str(model)!r} "
            "has none: give --prompt-tokens IDS.npy instead"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - installed with the test extras
        raise ConfigError(
            "--prompt text needs the 'tokenizers' package (pip install tokenizers)"
        ) from None
    try:
        return Tokenizer.from_file(str(tj))
    except Exception as exc:  # noqa: BLE001 - the library raises its own exception types
        raise ConfigError(f"{str(tj)!r} is not a readable tokenizer.json ({exc})") from None


def make_requests(
    cfg: GPTConfig,
    *,
    batch: int,
    new_tokens: int,
    prompt_tokens: np.ndarray | None = None,
    prompt_len: int | None = None,
    spread: float = 0.0,
    seed: int = 0,
    prompt_opt: str = "--prompt-tokens",
) -> list[Request]:
    """The ``batch`` requests of a run (see the module docstring).

    ``prompt_opt`` names the option the given prompt came from (``--prompt-tokens`` or
    ``--prompt``) in error messages.

    Raises:
        ConfigError: ``new_tokens < 1``, a prompt id outside ``0 .. vocab_size - 1``, a
            context (prompt + new tokens) past ``n_positions``, ``spread`` outside ``[0,
            1)``, a prompt length below 1, ``prompt_len`` together with ``prompt_tokens``, a
            ``prompt_tokens`` array whose rows are neither 1 nor ``batch``.
    """
    check_int("--new-tokens", new_tokens, 1)
    if not (isinstance(spread, (int, float)) and 0.0 <= float(spread) < 1.0):
        raise ConfigError(f"--spread {spread!r} is not allowed: expected a number in [0, 1)")
    V = cfg.vocab_size
    if prompt_tokens is not None:
        prompt_tokens = check_prompt_array(prompt_tokens)
        bad = np.argwhere((prompt_tokens < 0) | (prompt_tokens >= V))
        if len(bad):
            k, t = (int(x) for x in bad[0])
            raise ConfigError(
                f"prompt token id {int(prompt_tokens[k, t])} (sequence {k}, position {t}) is "
                f"outside the vocabulary of {cfg.name}: allowed 0..{V - 1}"
            )
        if prompt_len is not None:
            raise ConfigError(
                f"--prompt-len {prompt_len!r} cannot be combined with {prompt_opt}: the "
                f"prompt's own length ({prompt_tokens.shape[1]} tokens) is used"
            )
        K = prompt_tokens.shape[0]
        if K not in (1, batch):
            raise ConfigError(
                f"{prompt_opt}: {K} prompt rows do not match --batch {batch}; give {batch} "
                "rows (one per request) or 1 row (used for every request)"
            )
        prompt_len = prompt_tokens.shape[1]
    if prompt_len is None:
        prompt_len = min(32, cfg.n_positions)
    prompt_len = check_int("--prompt-len", prompt_len, 1)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(batch):
        if spread > 0:
            p = int(round(rng.uniform(prompt_len * (1 - spread), prompt_len * (1 + spread))))
            if prompt_tokens is not None:  # a given prompt keeps its length
                p = int(prompt_len)
            n = int(round(rng.uniform(new_tokens * (1 - spread), new_tokens * (1 + spread))))
            p, n = max(p, 1), max(n, 1)
        else:
            p, n = int(prompt_len), int(new_tokens)
        if prompt_tokens is not None:
            ids = prompt_tokens[i % prompt_tokens.shape[0]]  # K is 1 or batch
        else:
            ids = rng.integers(0, V, size=p, dtype=np.int64)
        if p + n > cfg.n_positions:
            raise ConfigError(
                f"request {i}: prompt {p} + new tokens {n} = context {p + n} exceeds the "
                f"{cfg.n_positions} positions of {cfg.name}; lower --new-tokens or the prompt"
            )
        out.append(Request(i, np.asarray(ids, dtype=np.int64), n))
    return out
