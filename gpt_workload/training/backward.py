"""Forward and backward numerics of GPT-2 training (every op's gradient), in Numba.

Layout: **plain 2-D token-major arrays**, not the per-PE tile layout of
:mod:`gpt_workload.layout`. An activation of width ``F`` for ``B`` sequences of ``T`` tokens is a
C-contiguous float32 array ``X[B*T, F]`` with row ``b*T + t`` holding token ``t`` of sequence
``b``. Weight gradients are therefore full sums over all ``B*T`` rows, accumulated in a fixed
order (rows ascending), not per-PE partial sums reduced across segments.

Ops and their backward (Radford et al. 2019 GPT-2 architecture, the same graph as
:mod:`gpt_workload.reference`; ``N = B*T``, ``d = d_model``, ``f = d_ff``)::

    h0 = wte[tok] + wpe[t]                 dwte[tok] += dh0 ; dwpe[t] += dh0
    per layer (pre-LN):
      a   = LN(h; ln_1)                    LN backward (dx, dg, db)
      qkv = a @ attn_w + attn_b            dW = a^T dqkv, db = sum dqkv, da = dqkv attn_w^T
      o   = causal_attention(qkv)          softmax backward: dS = P * (dP - rowsum(P*dP))
      h1  = h + (o @ proj_w + proj_b)      residual: the gradient flows to both branches
      m   = LN(h1; ln_2)
      u   = m @ fc_w + fc_b ; g = GELU(u)  GELU'(u) (tanh approximation or exact erf form)
      h2  = h1 + (g @ fc2_w + fc2_b)
    hf = LN(hL; ln_f) ; logits = hf @ wte^T      (tied head: dwte += dlogits^T hf)
    loss = mean_{b, t < T-1} CE(logits[b, t], tok[b, t+1])
    dlogits = (softmax(logits) - onehot(target)) * loss_scale / (B * (T - 1)), 0 at t = T-1

GELU follows ``cfg.activation`` exactly as the forward numerics do (:mod:`gpt_workload.kernels`):
``"gelu"`` is the exact erf form, ``"gelu_new"``/``"gelu_pytorch_tanh"`` the tanh approximation
``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` that GPT-2 uses; its derivative is
``0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2)`` with ``t = tanh(...)``.
LayerNorm backward (biased variance, ``xh = (x - mean) * rstd``, ``gx = dy * g``)::

    dx = rstd * (gx - mean(gx) - xh * mean(gx * xh)) ; dg = sum_rows dy * xh ; db = sum_rows dy

Precision: all arithmetic and accumulation in IEEE float32 (no fastmath, so results are
deterministic and independent of the thread count: every parallel loop writes disjoint
outputs and every reduction runs sequentially in the order its docstring states). For
``fp16``/``bf16`` the weights are the fp32 master weights rounded to the storage format, and
every tensor stored between ops, forward and backward, is rounded with
:func:`gpt_workload.precision.round_storage`; exceptions, kept in fp32 as accumulators: the
logits (as in :mod:`gpt_workload.numerics`), LayerNorm statistics (mean, rstd) and attention
probabilities (internal to the fused attention op), and the weight gradients.

Stored activations vs recompute: by default the forward pass keeps every tensor the backward
needs (per layer: LN statistics and outputs, qkv, attention probabilities, attention output,
h1, FFN pre-activation and GELU output). With ``recompute=True`` it keeps only each layer's
input and recomputes the layer's forward from it during backward with the same kernels, so
the gradients are bitwise identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from gpt_workload.config import GPTConfig
from gpt_workload.health import HealthTracker, check_op_input, rows_locator
from gpt_workload.kernels.elementwise import _gelu_kernel
from gpt_workload.precision import check_precision, round_storage
from gpt_workload.weights import GPTWeights, LayerWeights
from wse_sim.errors import ConfigError

__all__ = [
    "check_tokens",
    "forward_backward",
    "forward_backward_sum",
    "grads_finite",
    "zeros_like_weights",
]

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
def _attention_fwd_kernel(qkv, n_seq, seq_len, n_head, scale, out, probs):  # pragma: no cover
    """Causal softmax attention of one (sequence, head) per work unit.

    ``s[i, j] = (sum_d q_i[d] k_j[d], d ascending) * scale`` for ``j <= i``; softmax over
    ``j`` ascending with the row max subtracted; ``out_i = sum_j p_ij v_j`` (j ascending).
    ``probs[b, h, i, j]`` keeps p (0 above the diagonal).
    """
    d = qkv.shape[1] // 3
    dh = d // n_head
    for unit in numba.prange(n_seq * n_head):
        b = unit // n_head
        h = unit % n_head
        r0 = b * seq_len
        qo = h * dh
        ko = d + h * dh
        vo = 2 * d + h * dh
        for i in range(seq_len):
            p = probs[b, h, i]
            mx = np.float32(-np.inf)
            for j in range(i + 1):
                s = np.float32(0)
                for e in range(dh):
                    s = s + qkv[r0 + i, qo + e] * qkv[r0 + j, ko + e]
                s = s * scale
                p[j] = s
                if s > mx:
                    mx = s
            tot = np.float32(0)
            for j in range(i + 1):
                ex = np.float32(math.exp(p[j] - mx))
                p[j] = ex
                tot = tot + ex
            for j in range(i + 1):
                p[j] = p[j] / tot
            for j in range(i + 1, seq_len):
                p[j] = np.float32(0)
            for e in range(dh):
                out[r0 + i, qo + e] = np.float32(0)
            for j in range(i + 1):
                pj = p[j]
                for e in range(dh):
                    out[r0 + i, qo + e] = out[r0 + i, qo + e] + pj * qkv[r0 + j, vo + e]


@numba.njit(parallel=True, cache=True)
def _attention_bwd_kernel(
    dout, qkv, probs, n_seq, seq_len, n_head, scale, dqkv
):  # pragma: no cover
    """Backward of :func:`_attention_fwd_kernel` for one (sequence, head) per work unit.

    ``dV_j = sum_{i >= j} p_ij dO_i``; ``dP_ij = dO_i . v_j``;
    ``dS_ij = p_ij (dP_ij - sum_j' p_ij' dP_ij')``; ``dQ_i = scale sum_j dS_ij k_j``;
    ``dK_j = scale sum_i dS_ij q_i``; sums over keys/queries ascending.
    """
    d = qkv.shape[1] // 3
    dh = d // n_head
    for unit in numba.prange(n_seq * n_head):
        b = unit // n_head
        h = unit % n_head
        r0 = b * seq_len
        qo = h * dh
        ko = d + h * dh
        vo = 2 * d + h * dh
        ds = np.zeros((seq_len, seq_len), np.float32)
        for i in range(seq_len):
            p = probs[b, h, i]
            rowdot = np.float32(0)
            for j in range(i + 1):
                dp = np.float32(0)
                for e in range(dh):
                    dp = dp + dout[r0 + i, qo + e] * qkv[r0 + j, vo + e]
                ds[i, j] = dp
                rowdot = rowdot + p[j] * dp
            for j in range(i + 1):
                ds[i, j] = p[j] * (ds[i, j] - rowdot) * scale
        for e in range(dh):
            for i in range(seq_len):
                dqkv[r0 + i, qo + e] = np.float32(0)
                dqkv[r0 + i, ko + e] = np.float32(0)
                dqkv[r0 + i, vo + e] = np.float32(0)
        for i in range(seq_len):
            for j in range(i + 1):
                sij = ds[i, j]
                pij = probs[b, h, i, j]
                for e in range(dh):
                    dqkv[r0 + i, qo + e] = dqkv[r0 + i, qo + e] + sij * qkv[r0 + j, ko + e]
                    dqkv[r0 + j, ko + e] = dqkv[r0 + j, ko + e] + sij * qkv[r0 + i, qo + e]
                    dqkv[r0 + j, vo + e] = dqkv[r0 + j, vo + e] + pij * dout[r0 + i, qo + e]


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
def _embed_fwd_kernel(tokens, wte, wpe, out):  # pragma: no cover - jit
    """``out[b*T + t] = wte[tokens[b, t]] + wpe[t]``."""
    n_seq, seq_len = tokens.shape
    d = wte.shape[1]
    for r in numba.prange(n_seq * seq_len):
        b = r // seq_len
        t = r % seq_len
        tok = tokens[b, t]
        for j in range(d):
            out[r, j] = wte[tok, j] + wpe[t, j]


@numba.njit(cache=True)
def _embed_bwd_kernel(dh, tokens, dwte, dwpe):  # pragma: no cover - jit
    """``dwte[tokens[b,t]] += dh[b*T+t]``, ``dwpe[t] += dh[b*T+t]`` (rows ascending);
    ``dwte``/``dwpe`` are zeroed first."""
    n_seq, seq_len = tokens.shape
    d = dh.shape[1]
    dwte[:, :] = 0
    dwpe[:, :] = 0
    for r in range(n_seq * seq_len):
        b = r // seq_len
        t = r % seq_len
        tok = tokens[b, t]
        for j in range(d):
            dwte[tok, j] = dwte[tok, j] + dh[r, j]
            dwpe[t, j] = dwpe[t, j] + dh[r, j]


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
    arr = np.asarray(tokens)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ConfigError(f"tokens has shape {arr.shape}: expected a non-empty 2-D [B, T] array")
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"tokens has dtype {arr.dtype}: expected an integer dtype")
    t = arr.shape[1]
    if not 2 <= t <= cfg.n_positions:
        raise ConfigError(
            f"tokens has length T={t}: must be in [2, n_positions={cfg.n_positions}] "
            "(a loss needs a next token)"
        )
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= cfg.vocab_size:
        bad = lo if lo < 0 else hi
        raise ConfigError(f"tokens contains id {bad}: must be in [0, vocab_size={cfg.vocab_size})")
    return np.ascontiguousarray(arr, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Forward and backward of the model
# ---------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    """Per-call constants: config, batch shape, rounding and the storage-rounded weights."""

    cfg: GPTConfig
    n_seq: int
    seq_len: int
    precision: str
    approximate: bool
    w: GPTWeights  # storage-rounded copies
    wt: dict[str, np.ndarray] = field(default_factory=dict)  # transposed matrices (backward)
    health: HealthTracker | None = None  # checks every stored tensor (op, layer, position)
    layer: int | None = None  # layer of the ops being run, for the health tracker

    def r(self, x: np.ndarray, op: str) -> np.ndarray:
        """Round op ``op``'s stored output to the storage precision (no-op for fp32) and
        check it with the health tracker, if any."""
        y = x if self.precision == "fp32" else round_storage(x, self.precision)
        if self.health is not None:
            self.health.check(op, self.layer, y, rows_locator(self.seq_len), raw=x)
        return y


def _round_weights(w: GPTWeights, precision: str) -> GPTWeights:
    """The master weights rounded to the storage precision (float32, C-contiguous copies)."""

    def r(a: np.ndarray) -> np.ndarray:
        return round_storage(np.ascontiguousarray(a, dtype=np.float32), precision)

    layers = [LayerWeights(**{k: r(a) for k, a in lw.arrays()}) for lw in w.layers]
    return GPTWeights(
        wte=r(w.wte), wpe=r(w.wpe), layers=layers, ln_f_g=r(w.ln_f_g), ln_f_b=r(w.ln_f_b)
    )


def _layer_forward(c: _Ctx, lw: LayerWeights, h: np.ndarray) -> tuple[np.ndarray, dict]:
    """One transformer block forward on ``h [N, d]``; returns ``(h_out, saved tensors)``."""
    cfg = c.cfg
    eps = cfg.layer_norm_eps
    check_op_input(c.health, "layernorm_1", c.layer, h, c.seq_len)
    a, mu1, rs1 = _layernorm(h, lw.ln_1_g, lw.ln_1_b, eps)
    a = c.r(a, "layernorm_1")
    qkv = c.r(_gemm(a, lw.attn_w, lw.attn_b), "qkv")
    o = np.empty((h.shape[0], cfg.d_model), dtype=np.float32)
    probs = np.empty((c.n_seq, cfg.n_head, c.seq_len, c.seq_len), dtype=np.float32)
    scale = np.float32(1.0 / math.sqrt(cfg.d_head))
    check_op_input(c.health, "attention", c.layer, qkv, c.seq_len, cfg.n_head)
    _attention_fwd_kernel(qkv, c.n_seq, c.seq_len, cfg.n_head, scale, o, probs)
    o = c.r(o, "attention")
    h1 = c.r(h + c.r(_gemm(o, lw.proj_w, lw.proj_b), "attn_proj"), "residual_1")
    check_op_input(c.health, "layernorm_2", c.layer, h1, c.seq_len)
    m, mu2, rs2 = _layernorm(h1, lw.ln_2_g, lw.ln_2_b, eps)
    m = c.r(m, "layernorm_2")
    u = c.r(_gemm(m, lw.fc_w, lw.fc_b), "ffn_up")
    g = c.r(_gelu(u, c.approximate), "gelu")
    h2 = c.r(h1 + c.r(_gemm(g, lw.fc2_w, lw.fc2_b), "ffn_down"), "residual_2")
    saved = {
        "h": h, "a": a, "mu1": mu1, "rs1": rs1, "qkv": qkv, "probs": probs, "o": o,
        "h1": h1, "m": m, "mu2": mu2, "rs2": rs2, "u": u, "g": g,
    }  # fmt: skip
    return h2, saved


def _t(c: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """Cached C-contiguous transpose of weight ``a`` (the backward's input-gradient GEMMs)."""
    key = f"{name}:{id(a)}"
    if key not in c.wt:
        c.wt[key] = np.ascontiguousarray(a.T)
    return c.wt[key]


def _layer_backward(c: _Ctx, i: int, lw: LayerWeights, s: dict, dh2: np.ndarray, gw):
    """Backward of one block: fills layer ``i`` of ``gw`` and returns ``dh [N, d]``."""
    cfg = c.cfg
    g_l = gw.layers[i]
    # FFN down + residual 2: dh2 flows to h1 and to the FFN branch.
    g_l.fc2_w[...] = _gemm_tn(s["g"], dh2)
    g_l.fc2_b[...] = _colsum(dh2)
    dg = c.r(_gemm(dh2, _t(c, f"{i}.fc2_w", lw.fc2_w)), "ffn_down_bwd")
    du = c.r(_gelu_bwd(s["u"], dg, c.approximate), "gelu_bwd")
    g_l.fc_w[...] = _gemm_tn(s["m"], du)
    g_l.fc_b[...] = _colsum(du)
    dm = c.r(_gemm(du, _t(c, f"{i}.fc_w", lw.fc_w)), "ffn_up_bwd")
    dx, g_l.ln_2_g[...], g_l.ln_2_b[...] = _layernorm_bwd(
        dm, s["h1"], lw.ln_2_g, s["mu2"], s["rs2"]
    )
    dh1 = c.r(dh2 + c.r(dx, "layernorm_2_bwd"), "residual_2_bwd")
    # attention output projection + residual 1.
    g_l.proj_w[...] = _gemm_tn(s["o"], dh1)
    g_l.proj_b[...] = _colsum(dh1)
    do = c.r(_gemm(dh1, _t(c, f"{i}.proj_w", lw.proj_w)), "attn_proj_bwd")
    dqkv = np.empty_like(s["qkv"])
    scale = np.float32(1.0 / math.sqrt(cfg.d_head))
    _attention_bwd_kernel(do, s["qkv"], s["probs"], c.n_seq, c.seq_len, cfg.n_head, scale, dqkv)
    dqkv = c.r(dqkv, "attention_bwd")
    g_l.attn_w[...] = _gemm_tn(s["a"], dqkv)
    g_l.attn_b[...] = _colsum(dqkv)
    da = c.r(_gemm(dqkv, _t(c, f"{i}.attn_w", lw.attn_w)), "qkv_bwd")
    dx, g_l.ln_1_g[...], g_l.ln_1_b[...] = _layernorm_bwd(da, s["h"], lw.ln_1_g, s["mu1"], s["rs1"])
    return c.r(dh1 + c.r(dx, "layernorm_1_bwd"), "residual_1_bwd")


def forward_backward_sum(
    cfg: GPTConfig,
    weights: GPTWeights,
    tokens: Any,
    precision: str = "fp32",
    loss_scale: float = 1.0,
    recompute: bool = False,
    denominator: int | None = None,
    health: HealthTracker | None = None,
) -> tuple[float, GPTWeights, bool]:
    """Like :func:`forward_backward` but with the loss normalised by ``denominator``.

    The loss and the gradient are those of ``sum(CE) / denominator`` where the sum runs over
    the ``B * (T - 1)`` predictions of ``tokens``; ``denominator=None`` means ``B * (T - 1)``
    (the mean). Gradient accumulation over micro-batches passes the full batch's count so
    that the micro-batch gradients simply add up. ``health`` (a
    :class:`gpt_workload.health.HealthTracker`) checks every stored tensor, phase
    ``forward`` then ``backward`` (the logits too).

    Returns:
        ``(loss_part, grads, finite)``: ``sum(CE) / denominator`` (float, unscaled, float64
        sum), the gradients of ``loss_part * loss_scale`` and whether they are all finite.
    """
    check_precision(precision)
    tok = check_tokens(cfg, tokens)
    weights.validate(cfg)
    ls = float(loss_scale) if not isinstance(loss_scale, bool) else float("nan")
    if not (math.isfinite(ls) and ls > 0):
        raise ConfigError(f"loss_scale={loss_scale!r} must be a finite number > 0")
    n_seq, seq_len = tok.shape
    denom = n_seq * (seq_len - 1) if denominator is None else int(denominator)
    if denom < 1:
        raise ConfigError(f"denominator={denominator!r} must be a positive integer")
    c = _Ctx(
        cfg=cfg,
        n_seq=n_seq,
        seq_len=seq_len,
        precision=precision,
        approximate=cfg.activation != "gelu",
        w=_round_weights(weights, precision),
        health=health,
    )
    if health is not None:
        health.phase = "forward"
    w = c.w
    n_rows = n_seq * seq_len
    # ---- forward ----
    h = np.empty((n_rows, cfg.d_model), dtype=np.float32)
    _embed_fwd_kernel(tok, w.wte, w.wpe, h)
    h = c.r(h, "embedding")
    saved: list[dict] = []
    for c.layer, lw in enumerate(w.layers):
        h_next, s = _layer_forward(c, lw, h)
        saved.append({"h": h} if recompute else s)
        h = h_next
    c.layer = None
    check_op_input(c.health, "layernorm_f", None, h, seq_len)
    hf, muf, rsf = _layernorm(h, w.ln_f_g, w.ln_f_b, cfg.layer_norm_eps)
    hf = c.r(hf, "layernorm_f")
    logits = _gemm(hf, _t(c, "wte", w.wte))  # fp32 accumulators, not rounded
    if health is not None:
        health.check("lm_head", None, logits, rows_locator(seq_len))
        health.phase = "backward"
    loss_rows = np.empty(n_rows, dtype=np.float64)
    dlogits = np.empty_like(logits)
    _cross_entropy_kernel(logits, tok, np.float32(ls / denom), loss_rows, dlogits)
    loss = float(loss_rows.sum() / denom)
    del logits
    # ---- backward ----
    gw = zeros_like_weights(w)
    dlogits = c.r(dlogits, "cross_entropy_bwd")
    dwte_head = _gemm_tn(dlogits, hf)  # [V, d]
    dhf = c.r(_gemm(dlogits, w.wte), "lm_head_bwd")
    del dlogits
    dx, gw.ln_f_g[...], gw.ln_f_b[...] = _layernorm_bwd(dhf, h, w.ln_f_g, muf, rsf)
    dh = c.r(dx, "layernorm_f_bwd")
    for i in range(cfg.n_layer - 1, -1, -1):
        s = saved[i]
        c.layer = i
        if recompute:
            _, s = _layer_forward(c, w.layers[i], s["h"])
        dh = _layer_backward(c, i, w.layers[i], s, dh, gw)
        saved[i] = {}
    _embed_bwd_kernel(dh, tok, gw.wte, gw.wpe)
    gw.wte += dwte_head
    return loss, gw, grads_finite(gw)


def forward_backward(
    cfg: GPTConfig,
    weights: GPTWeights,
    tokens: Any,
    precision: str = "fp32",
    loss_scale: float = 1.0,
    recompute: bool = False,
) -> tuple[float, GPTWeights, bool]:
    """Loss and gradients of a GPT-2 model on one batch (training numerics, one step).

    Args:
        cfg: model configuration (``activation`` selects the GELU form).
        weights: fp32 master weights (validated: shapes, dtype, finite); used rounded to
            ``precision``.
        tokens: integer ``[B, T]`` token ids in ``[0, vocab_size)``, ``2 <= T <= n_positions``.
        precision: storage precision ``"fp32"``, ``"fp16"`` or ``"bf16"`` (arithmetic fp32).
        loss_scale: multiplier of the loss before backward (AMP loss scaling), finite > 0.
        recompute: keep only each layer's input and recompute its forward in backward.

    Returns:
        ``(loss, grads, finite)``: the mean next-token cross-entropy in nats over the
        ``B * (T - 1)`` predictions, exactly as :func:`gpt_workload.reference.cross_entropy`
        defines it (computed from the fp32 logits, summed in float64); the fp32 gradients of
        ``loss * loss_scale`` in a :class:`GPTWeights` (HF ``Conv1D`` layout, ``wte`` holds
        the sum of the embedding and tied LM-head gradients); and whether every gradient
        element is finite.

    Raises:
        ConfigError: bad ``tokens``, ``precision`` or ``loss_scale`` (one line naming it).
        CheckpointError: weights of the wrong shape/dtype or containing NaN/Inf.
    """
    return forward_backward_sum(cfg, weights, tokens, precision, loss_scale, recompute)
