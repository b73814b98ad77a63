"""Numba per-PE kernels, one module per op kind, re-exported here.

Modules: :mod:`~gpt_workload.kernels.gemm` (the weight-streaming GEMM),
:mod:`~gpt_workload.kernels.norm` (LayerNorm, RMSNorm), :mod:`~gpt_workload.kernels.attention`
(the shared online softmax, head-parallel tiled attention, grouped-query attention on rows),
:mod:`~gpt_workload.kernels.split_heads` (attention with a head's features split over PEs),
:mod:`~gpt_workload.kernels.rotary` (RoPE), :mod:`~gpt_workload.kernels.elementwise` (GELU,
residual add, SwiGLU), :mod:`~gpt_workload.kernels.vocab` (embedding, cross-entropy) and
:mod:`~gpt_workload.kernels.decode` (decode-step GEMV and attention partials; import it
directly). Row forms (``[N, F]`` token rows, sequence-major: row ``r`` is position ``r % T``
of sequence ``r // T``) serve training and the graph families; tile forms serve the
weight-streaming numerics.

Tile layout: every activation tensor of width ``F`` is a float32 tile array ``tiles[S, P, m, F
// P]`` (see :mod:`gpt_workload.mappings.weight_streaming.layout`): segment ``s`` of ``m`` tokens,
PE ``j`` of its
row-group, token slot ``t``, local feature ``f``. Segment ``s`` is segment ``s % S_seq`` of
sequence ``s // S_seq``, so token slot ``t`` of segment ``s`` has position ``(s % S_seq) * m +
t``; it is *padding* when that position is ``>= seq_len``. Padded slots are 0 on input and
every kernel writes 0 there.

All arithmetic is IEEE float32 with round-to-nearest, one rounding per ``+``, ``-``, ``*``,
``/`` and ``sqrt`` (no fused multiply-add, no fastmath, so results are deterministic and do not
depend on the thread count), except inside one PE's GEMM partial, a BLAS call (see
:func:`gemm_ws`). Each docstring states the order of every reduction, which mirrors the order
in which the wafer accumulates. ``exp`` in the attention and cross-entropy kernels is
:func:`gpt_workload.kernels._expf.exp_f32`, glibc's ``expf`` algorithm written out so that
loops over it vectorise (the same bits as glibc's on x86-64 with FMA, and the same steps
under ``NUMBA_DISABLE_JIT=1``); elsewhere ``exp``, ``log``, ``erf`` and ``tanh`` are the
C library's float32 functions when JIT-compiled (float64 rounded to float32 under
``NUMBA_DISABLE_JIT=1``), so only kernels without those are bit-reproducible across the two.

Each public function is a thin Python wrapper that validates shapes and dtypes (raising
``ValueError``, or ``TypeError`` for an argument that is not an ndarray) and calls a
``@njit(cache=True)`` kernel once; call it once per layer, never per element. Storage
rounding (fp16/bf16) is the caller's job, see :func:`gpt_workload.precision.round_storage`.
"""

from __future__ import annotations

# re-exported for :mod:`gpt_workload.kernels.decode`, which imports it from the package
from gpt_workload.kernels._common import _as_f32 as _as_f32
from gpt_workload.kernels.attention import (
    attention_tiled,
    gqa_attention_bwd,
    gqa_attention_fwd,
    online_softmax_av,
)
from gpt_workload.kernels.elementwise import add_tiled, gelu_tiled, swiglu_bwd, swiglu_fwd
from gpt_workload.kernels.gemm import GEMM_BLOCK_N, gemm_ws
from gpt_workload.kernels.norm import layernorm_tiled, rmsnorm_bwd, rmsnorm_fwd, rmsnorm_tiled
from gpt_workload.kernels.rotary import rotary_bwd, rotary_fwd, rotary_tables_f32, rotary_tiled
from gpt_workload.kernels.split_heads import attention_split, attention_split_tiled
from gpt_workload.kernels.vocab import cross_entropy_tiled, embed_tiled, mean_loss

__all__ = [
    "GEMM_BLOCK_N",
    "add_tiled",
    "attention_split",
    "attention_split_tiled",
    "attention_tiled",
    "cross_entropy_tiled",
    "embed_tiled",
    "gelu_tiled",
    "gemm_ws",
    "gqa_attention_bwd",
    "gqa_attention_fwd",
    "layernorm_tiled",
    "mean_loss",
    "online_softmax_av",
    "rmsnorm_bwd",
    "rmsnorm_fwd",
    "rmsnorm_tiled",
    "rotary_bwd",
    "rotary_fwd",
    "rotary_tables_f32",
    "rotary_tiled",
    "swiglu_bwd",
    "swiglu_fwd",
]
