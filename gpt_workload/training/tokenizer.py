"""A byte-level tokenizer and a shipped public-domain text: training data with no download.

Token ids 0..255 are the bytes of the UTF-8 encoding of the text (vocabulary size 256);
decoding joins the bytes and decodes UTF-8 (``errors="replace"`` for byte sequences that are
not valid UTF-8, so ``decode(encode(s)) == s`` for every ``str``).

The shipped text, ``data/public_domain_en.txt`` (about 3.7 KB), is Lincoln's Gettysburg
Address (1863) followed by the opening of the US Declaration of Independence (1776), both in
the public domain; its ``#`` header lines name the source and are skipped by :func:`load_text`.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources

import numpy as np

from gpt_workload.checks import check_int
from wse_sim.errors import ConfigError

__all__ = ["DEFAULT_TEXT", "ByteTokenizer", "load_text", "load_text_batches"]

#: File name of the shipped text inside ``gpt_workload/training/data``.
DEFAULT_TEXT = "public_domain_en.txt"


class ByteTokenizer:
    """UTF-8 byte tokenizer: ``vocab_size = 256``, id = byte value."""

    vocab_size: int = 256

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``: int64 array ``[len(text.encode('utf-8'))]`` in 0..255."""
        if not isinstance(text, str):
            raise ConfigError(f"text is a {type(text).__name__}: expected a str")
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Text of token ids (each in 0..255); invalid UTF-8 becomes U+FFFD.

        Raises:
            ConfigError: an id outside 0..255.
        """
        arr = np.asarray(ids, dtype=np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
            raise ConfigError(f"token id {bad} is out of range: byte ids must be in [0, 255]")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def load_text(name: str = DEFAULT_TEXT) -> str:
    """The shipped text ``name`` from ``gpt_workload/training/data`` without ``#`` header lines.

    Raises:
        ConfigError: no such file in the package data.
    """
    base = resources.files("gpt_workload.training").joinpath("data")
    f = base.joinpath(name)
    if not f.is_file():
        raise ConfigError(f"text={name!r} is not a shipped text; available: {DEFAULT_TEXT}")
    lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#"))


def load_text_batches(
    tokenizer: ByteTokenizer,
    batch: int,
    seq_len: int,
    seed: int,
    text: str | None = None,
) -> Iterator[np.ndarray]:
    """Endless stream of random training windows of the text.

    Each item is an int64 array ``[batch, seq_len]``: ``batch`` windows of ``seq_len``
    consecutive token ids starting at offsets drawn uniformly from
    ``numpy.random.default_rng(seed)``. A window of ``T`` tokens gives ``T - 1`` next-token
    predictions (the loss shifts inside the window), so no extra token is needed.

    Args:
        tokenizer: the tokenizer (anything with ``encode``).
        batch: windows per batch (int >= 1).
        seq_len: tokens per window (int >= 2, at most the text length).
        seed: RNG seed (deterministic stream).
        text: text to draw from; default the shipped :data:`DEFAULT_TEXT`.

    Raises:
        ConfigError: ``batch`` or ``seq_len`` out of range.
    """
    batch, seq_len = check_int("batch", batch, 1), check_int("seq_len", seq_len, 2)
    ids = tokenizer.encode(load_text() if text is None else text)
    if seq_len > ids.size:
        raise ConfigError(f"seq_len={seq_len} must be <= the text length of {ids.size} tokens")
    rng = np.random.default_rng(seed)
    n_start = ids.size - seq_len + 1
    while True:
        starts = rng.integers(0, n_start, size=batch)
        yield np.stack([ids[s : s + seq_len] for s in starts])
