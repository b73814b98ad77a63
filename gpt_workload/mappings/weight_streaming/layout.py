"""Per-PE data layout of the weight-streaming mapping.

The tokens of ``K`` sequences of length ``T`` are cut into *segments* of ``m`` tokens. A segment
never straddles two sequences: each sequence has ``S_seq = ceil(T / m)`` segments, the last one
zero-padded, and there are ``S = K * S_seq`` segments in all, numbered sequence-major
(segment ``s`` is segment ``s % S_seq`` of sequence ``s // S_seq``).

Each segment is held by a row-group of ``P`` PEs; PE ``j`` holds feature slice ``j`` (width
``F / P``) of every activation tensor of width ``F``. An activation tensor is therefore stored
as a tile array ``tiles[S, P, m, F // P]`` (float32) with::

    tiles[s, j, t, f] == X[s // S_seq, (s % S_seq) * m + t, j * (F // P) + f]

Padded token slots (position ``>= T``) and padded feature columns (``>= F``, LM-head logits
only) hold 0.

One layout type: :class:`TileLayout` is that tiling; :class:`WSLayout`, what the lowering
plans, is the :class:`TileLayout` of one micro-batch (``n_seq`` = its ``b`` sequences) plus
where its segments sit on the grid and how the batch splits into micro-batches. The numerics
run the same tiling on their own number of sequences (:meth:`WSLayout.tiles`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from gpt_workload.blas_gemm import default_threads
from gpt_workload.checks import check_int
from wse_sim.errors import ConfigError
from wse_sim.program import LayoutGeometry


def _positive_int(name: str, value: object) -> int:
    """Return ``value`` as int if it is a positive integer, else raise ConfigError."""
    return check_int(name, value, 1)


@dataclass(frozen=True)
class TileLayout:
    """Segment/PE tiling of ``n_seq`` sequences of ``seq_len`` tokens.

    Attributes:
        n_seq: number of sequences ``K`` (>= 1).
        seq_len: tokens per sequence ``T`` (>= 1).
        m: tokens per segment (>= 1).
        P: PEs per segment row-group, i.e. number of feature slices (>= 1).

    Derived sizes (:attr:`segs_per_seq`, :attr:`n_segments`) are computed once per instance
    (the layout is frozen; the lowering reads them millions of times in a sweep).

    Raises:
        ConfigError: a field is not a positive integer.
    """

    n_seq: int
    seq_len: int
    m: int
    P: int

    def __post_init__(self) -> None:
        for name in ("n_seq", "seq_len", "m", "P"):
            _positive_int(name, getattr(self, name))

    @cached_property
    def segs_per_seq(self) -> int:
        """Segments per sequence ``S_seq = ceil(T / m)`` (int)."""
        return -(-self.seq_len // self.m)

    @cached_property
    def n_segments(self) -> int:
        """Total number of segments ``S = K * S_seq`` (int)."""
        return self.n_seq * self.segs_per_seq

    @property
    def padded_tokens(self) -> int:
        """Token slots per sequence including padding, ``S_seq * m`` (int, >= T)."""
        return self.segs_per_seq * self.m

    def padded_width(self, width: int) -> int:
        """Smallest multiple of ``P`` that is ``>= width`` (``P * ceil(width / P)``).

        Args:
            width: feature width ``F`` (positive int).

        Returns:
            Padded width (int).

        Raises:
            ConfigError: ``width`` is not a positive integer.
        """
        width = _positive_int("width", width)
        return self.P * (-(-width // self.P))

    def tile_width(self, width: int, pad_to: int | None = None) -> int:
        """Per-PE slice width of a tensor of ``width`` features.

        Args:
            width: feature width ``F``.
            pad_to: padded total width (multiple of ``P``, ``>= F``) or None.

        Returns:
            ``F // P`` or ``pad_to // P`` (int).

        Raises:
            ConfigError: ``F`` not divisible by ``P`` without ``pad_to``, or a bad ``pad_to``.
        """
        return self._padded(_positive_int("width", width), pad_to) // self.P

    def _padded(self, width: int, pad_to: int | None) -> int:
        """Validate ``pad_to`` against ``width`` and return the stored total width."""
        if pad_to is None:
            if width % self.P:
                raise ConfigError(
                    f"feature width {width} is not divisible by P={self.P}; pass "
                    f"pad_to={self.padded_width(width)} to pad it"
                )
            return width
        pad_to = _positive_int("pad_to", pad_to)
        if pad_to < width or pad_to % self.P:
            raise ConfigError(
                f"pad_to={pad_to} is invalid for width {width}; must be a multiple of "
                f"P={self.P} and >= {width}"
            )
        return pad_to

    def valid_mask(self) -> np.ndarray:
        """Which token slots hold real tokens.

        Returns:
            bool array ``[S, m]``: True where the slot's position in its sequence is ``< T``.
        """
        pos = np.arange(self.padded_tokens).reshape(self.segs_per_seq, self.m)
        return np.tile(pos < self.seq_len, (self.n_seq, 1))

    def to_tiles(self, x: np.ndarray, pad_to: int | None = None) -> np.ndarray:
        """Scatter a dense activation tensor into the per-PE tile array.

        Args:
            x: array ``[K, T, F]`` of any real dtype (converted to float32).
            pad_to: total stored width when ``F`` is not divisible by ``P`` (LM-head logits):
                a multiple of ``P`` that is ``>= F``, normally :meth:`padded_width` ``(F)``.
                Columns ``F .. pad_to-1`` are stored as 0.

        Returns:
            New C-contiguous float32 array ``[S, P, m, Fp // P]`` with ``Fp = F`` or
            ``pad_to``; padded token slots and padded columns are 0.

        Raises:
            ConfigError: wrong shape of ``x``, ``F`` not divisible by ``P`` without
                ``pad_to``, or an invalid ``pad_to``.
        """
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[:2] != (self.n_seq, self.seq_len) or x.shape[2] < 1:
            raise ConfigError(
                f"activation shape {x.shape} does not match layout; expected "
                f"({self.n_seq}, {self.seq_len}, F)"
            )
        width = x.shape[2]
        fp = self._padded(width, pad_to)
        k, s_seq, m, p = self.n_seq, self.segs_per_seq, self.m, self.P
        dense = np.zeros((k, s_seq * m, fp), dtype=np.float32)
        dense[:, : self.seq_len, :width] = x
        tiles = dense.reshape(k, s_seq, m, p, fp // p).transpose(0, 1, 3, 2, 4)
        return np.ascontiguousarray(tiles.reshape(k * s_seq, p, m, fp // p))

    def empty_tiles(self, width: int, pad_to: int | None = None) -> np.ndarray:
        """Zero-filled tile array for a tensor of ``width`` features.

        Args:
            width: feature width ``F``.
            pad_to: as in :meth:`to_tiles`.

        Returns:
            float32 zeros ``[S, P, m, tile_width(F, pad_to)]``.

        Raises:
            ConfigError: as in :meth:`tile_width`.
        """
        ft = self.tile_width(width, pad_to)
        return np.zeros((self.n_segments, self.P, self.m, ft), dtype=np.float32)

    def from_tiles(self, tiles: np.ndarray, width: int) -> np.ndarray:
        """Gather a tile array back into a dense tensor, dropping all padding.

        Args:
            tiles: array ``[S, P, m, ft]`` with ``P * ft >= width``.
            width: number of real feature columns ``F`` to keep.

        Returns:
            New C-contiguous array ``[K, T, F]`` with the dtype of ``tiles``.

        Raises:
            ConfigError: ``tiles`` does not have the layout's shape or ``P * ft < F``.
        """
        tiles = np.asarray(tiles)
        width = _positive_int("width", width)
        s, p, m = self.n_segments, self.P, self.m
        if tiles.ndim != 4 or tiles.shape[:3] != (s, p, m) or tiles.shape[3] * p < width:
            raise ConfigError(
                f"tile shape {tiles.shape} does not match layout; expected ({s}, {p}, {m}, ft)"
                f" with {p}*ft >= {width}"
            )
        ft = tiles.shape[3]
        if self.padded_tokens == self.seq_len:  # no token padding: one pass, PE by PE
            src = tiles.reshape(self.n_seq * self.segs_per_seq, p, m, ft)
            out = np.empty((self.n_seq, self.seq_len, width), dtype=tiles.dtype)
            dst = out.reshape(self.n_seq * self.segs_per_seq, m, width)

            def copy(s0: int, s1: int) -> None:  # segments s0 .. s1 - 1
                for j in range(min(p, -(-width // ft))):
                    c0, c1 = j * ft, min(j * ft + ft, width)
                    dst[s0:s1, :, c0:c1] = src[s0:s1, j, :, : c1 - c0]

            n_thr = min(default_threads(), s) if tiles.nbytes >= 1 << 24 else 1
            cuts = [s * i // n_thr for i in range(n_thr + 1)]
            if n_thr == 1:
                copy(0, s)
            else:  # large (logits): the cores share the copy and its page faults
                with ThreadPoolExecutor(max_workers=n_thr) as pool:
                    list(pool.map(copy, cuts[:-1], cuts[1:]))
            return out
        dense = tiles.reshape(self.n_seq, self.segs_per_seq, p, m, ft).transpose(0, 1, 3, 2, 4)
        dense = dense.reshape(self.n_seq, self.padded_tokens, p * ft)
        return np.ascontiguousarray(dense[:, : self.seq_len, :width])


@dataclass(frozen=True)
class WSLayout(TileLayout):
    """Where a micro-batch's tokens and features live on the grid: the micro-batch's
    :class:`TileLayout` (``n_seq`` = ``b`` sequences of ``seq_len`` tokens, segments of ``m``
    tokens over ``P`` PEs) placed on the grid.

    Segments fill the grid column of segments by column of segments (segment ``g`` sits in
    row ``g % rows``, segment column ``g // rows``), so a sequence's segments are neighbours
    down a column (:mod:`gpt_workload.mappings.weight_streaming.builder`).

    Attributes (besides :class:`TileLayout`'s ``n_seq``, ``seq_len``, ``m``, ``P``):
        hp: whole heads per PE (1 when a head is split).
        n_micro: micro-batches; batch: sequences in all.
        rows, cols: grid; segs_per_row: segment columns.
        pes_per_head: PEs one head's features are split over (1: whole heads;
            :mod:`gpt_workload.mappings.weight_streaming.head_split`).

    Raises:
        ConfigError: a field is not a positive integer.
    """

    hp: int
    n_micro: int
    batch: int
    rows: int
    cols: int
    segs_per_row: int
    pes_per_head: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("hp", "n_micro", "batch", "rows", "cols", "segs_per_row", "pes_per_head"):
            _positive_int(name, getattr(self, name))

    @property
    def b(self) -> int:
        """Sequences per micro-batch (``n_seq``)."""
        return self.n_seq

    @cached_property
    def q(self) -> int:
        """Segments per sequence (``segs_per_seq``)."""
        return self.segs_per_seq

    @cached_property
    def m_last(self) -> int:
        """Tokens of a sequence's last segment (``m`` when ``m`` divides ``seq_len``)."""
        return self.seq_len - (self.q - 1) * self.m

    @cached_property
    def n_active_pe(self) -> int:
        """PEs holding tokens in one micro-batch."""
        return self.n_segments * self.P

    def geometry(self) -> LayoutGeometry:
        """The layout as the Program carries it (:attr:`wse_sim.program.Program.layout`)."""
        return LayoutGeometry(
            grid=(self.rows, self.cols),
            pes_per_segment=self.P,
            tokens_per_segment=self.m,
            heads_per_pe=self.hp,
            pes_per_head=self.pes_per_head,
            segments_per_sequence=self.q,
            sequences_per_micro_batch=self.b,
            micro_batches=self.n_micro,
            active_pes=self.n_active_pe,
        )

    def describe(self) -> dict:
        """JSON-safe summary for the report (:meth:`geometry`'s)."""
        return self.geometry().describe()


def qkv_column_permutation(n_head: int, d_head: int, P: int) -> np.ndarray:
    """Column order that makes a fused QKV GEMM produce head-parallel attention tiles.

    A GPT-2 style fused projection ``W_qkv[d, 3 * H * dh]`` has columns
    ``[q of all heads | k of all heads | v of all heads]``. :func:`kernels.attention_tiled`
    wants PE ``j`` (holding heads ``j*hp .. j*hp+hp-1``, ``hp = H / P``) to hold
    ``[q of its hp heads | k of its hp heads | v of its hp heads]``. Feeding
    ``W_qkv[:, perm]`` and ``b_qkv[perm]`` to :func:`kernels.gemm_ws` produces exactly that.

    Args:
        n_head: number of heads ``H``.
        d_head: head dimension ``dh``.
        P: PEs per segment; must divide ``H``.

    Returns:
        int64 array ``[3 * H * dh]``: new column ``c`` is old column ``perm[c]``.

    Raises:
        ConfigError: a non-positive argument or ``H`` not divisible by ``P``.
    """
    n_head = _positive_int("n_head", n_head)
    d_head = _positive_int("d_head", d_head)
    P = _positive_int("P", P)
    if n_head % P:
        raise ConfigError(f"n_head={n_head} is not divisible by P={P}; heads cannot be split")
    hp = n_head // P
    width = n_head * d_head
    # old index of (part, pe, local head, d) = part*width + (pe*hp + lh)*dh + d
    idx = np.arange(3 * width).reshape(3, P, hp * d_head)
    return np.ascontiguousarray(idx.transpose(1, 0, 2)).reshape(-1).astype(np.int64)
