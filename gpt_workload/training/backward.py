"""Token-row kernels of the training numerics, forward and backward, in Numba, and the
checks on tokens and gradients.

The training numerics of every family, GPT-2 included, are one walk of the family's op graph
(:mod:`gpt_workload.training.backward_graph`); this module holds the row kernels that walk
calls for the GPT-2 ops (the rotary families' own ops are in :mod:`gpt_workload.kernels`).

Layout: **plain 2-D token-major arrays**, not the per-PE tile layout of
:mod:`gpt_workload.mappings.weight_streaming.layout`. An activation of width ``F`` for ``B``
sequences of ``T`` tokens is a
C-contiguous float32 array ``X[B*T, F]`` with row ``b*T + t`` holding token ``t`` of sequence
``b``. Weight gradients are therefore full sums over all ``B*T`` rows, accumulated in a fixed
order (rows ascending), not per-PE partial sums reduced across segments.

Kernels (``N = B*T``)::

    _gemm        y = x @ W (+ b)            x [N, K], W [K, M]; k ascending
    _gemm_tn     dW = x^T dy                rows ascending
    _colsum      db = sum_rows dy           rows ascending
    _layernorm   y = (x - mean) * rstd * g + b, with (mean, rstd) kept for the backward
    _layernorm_bwd                          dx, dg, db (formula below)
    _gelu, _gelu_bwd                        GELU and dy * GELU'(x)
    _cross_entropy_kernel                   loss rows and dlogits, fused (next-token targets)

GELU follows ``cfg.activation`` exactly as the forward numerics do (:mod:`gpt_workload.kernels`):
``"gelu"`` is the exact erf form, ``"gelu_new"``/``"gelu_pytorch_tanh"`` the tanh approximation
``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` that GPT-2 uses; its derivative is
``0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2)`` with ``t = tanh(...)``.
LayerNorm backward (biased variance, ``xh = (x - mean) * rstd``, ``gx = dy * g``)::

    dx = rstd * (gx - mean(gx) - xh * mean(gx * xh)) ; dg = sum_rows dy * xh ; db = sum_rows dy

The loss is ``mean_{b, t < T-1} CE(logits[b, t], tok[b, t+1])``; its gradient
``dlogits = (softmax(logits) - onehot(target)) * loss_scale / (B * (T - 1))``, 0 at ``t = T-1``.

Precision: all arithmetic and accumulation in IEEE float32 (no fastmath, so results are
deterministic and independent of the thread count: every parallel loop writes disjoint
outputs and every reduction runs sequentially in the order its docstring states). Storage
rounding (fp16/bf16) of the tensors stored between ops is the graph walk's.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from gpt_workload.checks import check_token_ids
from gpt_workload.config import GPTConfig
from gpt_workload.kernels.elementwise import _gelu_kernel
from gpt_workload.precision import round_storage
from gpt_workload.weights import GPTWeights, LayerWeights

__all__ = ["check_tokens", "grads_finite", "zeros_like_weights"]

# ---------------------------------------------------------------------------------------------
# Numba kernels (2-D token-major float32 arrays; see the module docstring)
# ---------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _gemm_kernel(x, w, bias, has_bias, out):  # pragma: no cover - jit
    """``out[n, :] = bias + sum_k x[n, k] * w[k, :]`` (k ascending), x [N,K], w [K,M]."""
    n_rows, n_k = x.shape
    n_m = w.shape[1]
    for n in numba.prange(n_rows):
        row = out[n]
        if has_bias:
            for j in range(n_m):
                row[j] = bias[j]
        else:
            for j in range(n_m):
                row[j] = np.float32(0)
        for k in range(n_k):
            a = x[n, k]
            wk = w[k]
            for j in range(n_m):
                row[j] = row[j] + a * wk[j]


@numba.njit(parallel=True, cache=True)
def _gemm_tn_kernel(x, dy, out):  # pragma: no cover - jit
    """``out[k, :] = sum_n x[n, k] * dy[n, :]`` (n ascending): the weight gradient x^T dy."""
    n_rows, n_k = x.shape
    n_m = dy.shape[1]
    for k in numba.prange(n_k):
        row = out[k]
        for j in range(n_m):
            row[j] = np.float32(0)
        for n in range(n_rows):
            a = x[n, k]
            dn = dy[n]
            for j in range(n_m):
                row[j] = row[j] + a * dn[j]


@numba.njit(cache=True)
def _colsum_kernel(dy, out):  # pragma: no cover - jit
    """``out[j] = sum_n dy[n, j]`` (n ascending): a bias gradient."""
    for j in range(dy.shape[1]):
        out[j] = np.float32(0)
    for n in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            out[j] = out[j] + dy[n, j]


@numba.njit(parallel=True, cache=True)
def _layernorm_fwd_kernel(x, g, b, eps, out, mean, rstd):  # pragma: no cover - jit
    """Row-wise LayerNorm; mean and biased variance summed over features ascending."""
    n_rows, n_f = x.shape
    inv_f = np.float32(1.0) / np.float32(n_f)
    for n in numba.prange(n_rows):
        s = np.float32(0)
        for j in range(n_f):
            s = s + x[n, j]
        mu = s * inv_f
        v = np.float32(0)
        for j in range(n_f):
            c = x[n, j] - mu
            v = v + c * c
        rs = np.float32(1.0) / np.float32(math.sqrt(v * inv_f + eps))
        mean[n] = mu
        rstd[n] = rs
        for j in range(n_f):
            out[n, j] = (x[n, j] - mu) * rs * g[j] + b[j]


@numba.njit(parallel=True, cache=True)
def _layernorm_bwd_dx_kernel(dy, x, g, mean, rstd, dx):  # pragma: no cover - jit
    """``dx = rstd * (gx - mean(gx) - xh * mean(gx * xh))`` per row, sums over features asc."""
    n_rows, n_f = x.shape
    inv_f = np.float32(1.0) / np.float32(n_f)
    for n in numba.prange(n_rows):
        mu = mean[n]
        rs = rstd[n]
        s1 = np.float32(0)
        s2 = np.float32(0)
        for j in range(n_f):
            xh = (x[n, j] - mu) * rs
            gx = dy[n, j] * g[j]
            s1 = s1 + gx
            s2 = s2 + gx * xh
        m1 = s1 * inv_f
        m2 = s2 * inv_f
        for j in range(n_f):
            xh = (x[n, j] - mu) * rs
            gx = dy[n, j] * g[j]
            dx[n, j] = rs * (gx - m1 - xh * m2)


@numba.njit(cache=True)
def _layernorm_bwd_param_kernel(dy, x, mean, rstd, dg, db):  # pragma: no cover - jit
    """``dg[j] = sum_n dy * xh``, ``db[j] = sum_n dy`` (rows ascending)."""
    n_rows, n_f = x.shape
    for j in range(n_f):
        dg[j] = np.float32(0)
        db[j] = np.float32(0)
    for n in range(n_rows):
        mu = mean[n]
        rs = rstd[n]
        for j in range(n_f):
            xh = (x[n, j] - mu) * rs
            dg[j] = dg[j] + dy[n, j] * xh
            db[j] = db[j] + dy[n, j]


@numba.njit(parallel=True, cache=True)
def _gelu_bwd_kernel(x, dy, approximate, dx):  # pragma: no cover - jit
    """``dx = dy * GELU'(x)`` element-wise on flat arrays (formulas in the module docstring)."""
    half = np.float32(0.5)
    one = np.float32(1.0)
    inv_sqrt2 = np.float32(1.0 / math.sqrt(2.0))
    inv_sqrt2pi = np.float32(1.0 / math.sqrt(2.0 * math.pi))
    k0 = np.float32(math.sqrt(2.0 / math.pi))
    k1 = np.float32(0.044715)
    k3 = np.float32(3.0 * 0.044715)
    for i in numba.prange(x.shape[0]):
        v = x[i]
        if approximate:
            inner = np.float32(k0 * np.float32(v + np.float32(k1 * np.float32(v * v * v))))
            t = np.float32(math.tanh(inner))
            dinner = k0 * (one + k3 * v * v)
            grad = half * (one + t) + half * v * (one - t * t) * dinner
        else:
            cdf = half * (one + np.float32(math.erf(np.float32(v * inv_sqrt2))))
            pdf = inv_sqrt2pi * np.float32(math.exp(np.float32(-half * v * v)))
            grad = cdf + v * pdf
        dx[i] = dy[i] * grad


@numba.njit(parallel=True, cache=True)
def _cross_entropy_kernel(logits, tokens, grad_scale, loss_rows, dlogits):  # pragma: no cover
    """Fused softmax cross-entropy forward and backward per row.

    Row ``b*T + t`` with ``t < T-1`` targets ``tokens[b, t+1]``: ``loss_rows`` gets
    ``lse - logit[target]`` (float64; lse with the max subtracted, sum over the vocabulary
    ascending in float32) and ``dlogits = (softmax - onehot) * grad_scale``. Rows with
    ``t = T-1`` get loss 0 and gradient 0.
    """
    n_seq, seq_len = tokens.shape
    vocab = logits.shape[1]
    for r in numba.prange(n_seq * seq_len):
        b = r // seq_len
        t = r % seq_len
        if t == seq_len - 1:
            loss_rows[r] = 0.0
            for v in range(vocab):
                dlogits[r, v] = np.float32(0)
            continue
        mx = logits[r, 0]
        for v in range(1, vocab):
            if logits[r, v] > mx:
                mx = logits[r, v]
        tot = np.float32(0)
        for v in range(vocab):
            ex = np.float32(math.exp(logits[r, v] - mx))
            dlogits[r, v] = ex
            tot = tot + ex
        target = tokens[b, t + 1]
        lse = np.float32(math.log(tot)) + mx
        loss_rows[r] = np.float64(lse) - np.float64(logits[r, target])
        inv = np.float32(1.0) / tot
        for v in range(vocab):
            dlogits[r, v] = dlogits[r, v] * inv * grad_scale
        dlogits[r, target] = dlogits[r, target] - grad_scale


# ---------------------------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------------------------

_NO_BIAS = np.zeros(0, dtype=np.float32)


def _gemm(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``x [N, K] @ w [K, M] (+ bias [M])`` -> float32 [N, M]."""
    out = np.empty((x.shape[0], w.shape[1]), dtype=np.float32)
    b = _NO_BIAS if bias is None else bias
    _gemm_kernel(x, w, b, bias is not None, out)
    return out


def _gemm_tn(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``x [N, K]^T @ dy [N, M]`` -> float32 [K, M] (a weight gradient)."""
    out = np.empty((x.shape[1], dy.shape[1]), dtype=np.float32)
    _gemm_tn_kernel(x, dy, out)
    return out


def _colsum(dy: np.ndarray) -> np.ndarray:
    """Column sums of ``dy [N, M]`` -> float32 [M] (a bias gradient)."""
    out = np.empty(dy.shape[1], dtype=np.float32)
    _colsum_kernel(dy, out)
    return out


def _layernorm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float):
    """LayerNorm of ``x [N, F]``; returns ``(y [N, F], mean [N], rstd [N])``, float32."""
    n = x.shape[0]
    y = np.empty_like(x)
    mean = np.empty(n, dtype=np.float32)
    rstd = np.empty(n, dtype=np.float32)
    _layernorm_fwd_kernel(x, g, b, np.float32(eps), y, mean, rstd)
    return y, mean, rstd


def _layernorm_bwd(dy, x, g, mean, rstd):
    """LayerNorm backward; returns ``(dx [N, F], dg [F], db [F])``, float32."""
    dx = np.empty_like(x)
    _layernorm_bwd_dx_kernel(dy, x, g, mean, rstd, dx)
    dg = np.empty(x.shape[1], dtype=np.float32)
    db = np.empty(x.shape[1], dtype=np.float32)
    _layernorm_bwd_param_kernel(dy, x, mean, rstd, dg, db)
    return dx, dg, db


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    """GELU of ``x`` (any shape, float32 C-contiguous)."""
    out = np.empty_like(x)
    _gelu_kernel(x.reshape(-1), approximate, out.reshape(-1))
    return out


def _gelu_bwd(x: np.ndarray, dy: np.ndarray, approximate: bool) -> np.ndarray:
    """``dy * GELU'(x)`` (same shapes, float32)."""
    dx = np.empty_like(x)
    _gelu_bwd_kernel(x.reshape(-1), dy.reshape(-1), approximate, dx.reshape(-1))
    return dx


# ---------------------------------------------------------------------------------------------
# Weight containers
# ---------------------------------------------------------------------------------------------


def zeros_like_weights(w: GPTWeights) -> GPTWeights:
    """A :class:`GPTWeights` of float32 zeros with the shapes of ``w``."""
    z = np.zeros_like
    layers = [LayerWeights(**{k: z(a) for k, a in lw.arrays()}) for lw in w.layers]
    return GPTWeights(
        wte=z(w.wte), wpe=z(w.wpe), layers=layers, ln_f_g=z(w.ln_f_g), ln_f_b=z(w.ln_f_b)
    )


def grads_finite(grads: GPTWeights) -> bool:
    """True when every element of every gradient array is finite (no inf, no NaN)."""
    return all(bool(np.isfinite(a).all()) for _, a in grads.named_arrays())


def check_tokens(cfg: GPTConfig, tokens: Any) -> np.ndarray:
    """Validate a token batch and return it as C-contiguous int64 ``[B, T]``.

    Raises:
        ConfigError: not a 2-D integer array, ``T < 2`` (no next-token target),
            ``T > n_positions``, or an id outside ``[0, vocab_size)``; the message names
            ``tokens``, the value and the allowed range.
    """
    return check_token_ids(
        tokens,
        vocab_size=cfg.vocab_size,
        min_len=2,
        max_len=cfg.n_positions,
        why_min="a loss needs a next token",
    )


# ---------------------------------------------------------------------------------------------
# Storage rounding of the weights
# ---------------------------------------------------------------------------------------------


def _round_weights(w: GPTWeights, precision: str) -> GPTWeights:
    """The master weights rounded to the storage precision (float32, C-contiguous copies)."""

    def r(a: np.ndarray) -> np.ndarray:
        return round_storage(np.ascontiguousarray(a, dtype=np.float32), precision)

    layers = [LayerWeights(**{k: r(a) for k, a in lw.arrays()}) for lw in w.layers]
    return GPTWeights(
        wte=r(w.wte), wpe=r(w.wpe), layers=layers, ln_f_g=r(w.ln_f_g), ln_f_b=r(w.ln_f_b)
    )
