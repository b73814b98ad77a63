"""The training numerics' check batches: int token ids ``[N, T]`` (``.npy``) or byte-tokenized
text.

``wse-sim train --tokens FILE.npy`` (``train(tokens=...)``) runs the numerics on these ids
instead of byte-tokenized text: step ``s`` (0-based) takes ``K = min(check_sequences, N)``
rows in order, starting at row ``s K`` and wrapping around, so the first step's loss is the
model's loss on the first ``K`` rows (before any update).

Errors: :class:`wse_sim.errors.ConfigError`, one line naming ``tokens`` (the file when there
is one), the value and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpt_workload.config import GPTConfig
from gpt_workload.checks import check_token_ids, load_token_file
from wse_sim.errors import ConfigError

__all__ = [
    "check_training_tokens",
    "is_token_file",
    "load_token_ids",
    "text_batches",
    "token_id_batches",
]


def check_training_tokens(cfg: GPTConfig, tokens: Any, name: str = "tokens") -> np.ndarray:
    """A training batch of token ids as C-contiguous int64 ``[B, T]``
    (:func:`gpt_workload.checks.check_token_ids` with ``2 <= T <= n_positions``: a loss needs
    a next token, and every id in ``[0, vocab_size)``).

    Raises:
        ConfigError: one line naming ``name``, the value and what is allowed.
    """
    return check_token_ids(
        tokens,
        name=name,
        vocab_size=cfg.vocab_size,
        min_len=2,
        max_len=cfg.n_positions,
        why_min="a loss needs a next token",
    )


def is_token_file(path: str | os.PathLike | None) -> bool:
    """True when ``path`` names a ``.npy`` file (token ids) rather than a text file."""
    return path is not None and Path(path).suffix.lower() == ".npy"


def load_token_ids(tokens: Any, cfg: GPTConfig) -> tuple[np.ndarray, str]:
    """The token ids of ``tokens`` (a ``.npy`` path or an array) checked against ``cfg``.

    Returns:
        ``(ids, source)``: C-contiguous int64 ``[N, T]`` and a description of where they came
        from (``"token ids FILE"`` or ``"token ids (array)"``).

    Raises:
        ConfigError: an unreadable or non-``.npy`` file, or ids that are not a non-empty 2-D
            integer array with ``2 <= T <= n_positions`` and every id in ``[0, vocab_size)``.
    """
    if isinstance(tokens, (str, os.PathLike)):
        path = Path(tokens)
        where = f"--tokens {str(path)!r}"
        if not is_token_file(path):
            raise ConfigError(f"{where}: expected a .npy file of int token ids [N, T]")
        arr = load_token_file("--tokens", path)
        source = f"token ids {path}"
    else:
        where, arr, source = "tokens", tokens, "token ids (array)"
    return check_training_tokens(cfg, arr, f"{where} (model {cfg.name})"), source


def token_id_batches(ids: np.ndarray, k: int) -> Iterator[np.ndarray]:
    """Endless batches of ``min(k, N)`` consecutive rows of ``ids`` ``[N, T]``, wrapping."""
    n = ids.shape[0]
    k = min(int(k), n)
    start = 0
    while True:
        rows = (start + np.arange(k)) % n
        yield np.ascontiguousarray(ids[rows])
        start = (start + k) % n


def text_batches(text: str | os.PathLike | None, k: int, T: int, seed: int):
    """``(batches, source)``: endless ``k x T`` batches of byte tokens of the UTF-8 text file
    ``text`` (the shipped public-domain text when None) at seeded offsets
    (:func:`gpt_workload.training.tokenizer.load_text_batches`).

    Raises:
        ConfigError: an unreadable file, or one with fewer than ``T`` byte tokens.
    """
    from gpt_workload.training.tokenizer import ByteTokenizer, load_text_batches

    src = "shipped public-domain text"
    body = None
    if text is not None:
        try:
            body = Path(text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"--tokens {str(text)!r} is not a readable UTF-8 text: {exc}"
            ) from None
        src = str(text)
    tok = ByteTokenizer()
    n_tok = tok.encode(body).size if body is not None else None
    if n_tok is not None and n_tok < T:
        raise ConfigError(
            f"--tokens {str(text)!r} has {n_tok} byte token(s); the numerics' check batch "
            f"needs at least {T} (check_seq_len {T}, by default min(seq_len, 64); "
            "--check-sequences 0 skips the numerics)"
        )
    return load_text_batches(tok, k, T, seed, text=body), src
