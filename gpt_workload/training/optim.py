"""AdamW with decoupled weight decay, as the MemoryX optimizer applies it, plus the LR schedule.

Hyper-parameters default to the Cerebras-GPT values (``/work/shared/reference/cerebras_gpt.md``,
from the Cerebras ModelZoo configs and Dey et al. 2023, arXiv 2304.03208): AdamW with
beta1 = 0.9, beta2 = 0.95, weight decay 0.1, linear warm-up then linear decay to 10 % of the
peak learning rate. ``eps = 1e-8`` is the ``torch.optim.AdamW`` default.

Update (exactly ``torch.optim.AdamW``, single-tensor path, all in float32 per element), for step
``k = 1, 2, ...`` with learning rate ``lr`` and gradient ``g``::

    p = p * (1 - lr * wd)                     # decoupled decay (Loshchilov & Hutter 2019)
    m = m + (g - m) * (1 - beta1)             # torch: exp_avg.lerp_(g, 1 - beta1)
    v = v * beta2 + (1 - beta2) * g * g
    p = p - (lr / (1 - beta1**k)) * m / (sqrt(v) / sqrt(1 - beta2**k) + eps)

Parameter groups: weight decay applies to the 2-D matrices (``wte`` (= tied LM head), ``wpe``,
``attn.c_attn``/``attn.c_proj``/``mlp.c_fc``/``mlp.c_proj`` weights) and not to biases or
LayerNorm gains/biases (1-D arrays) -- the standard GPT practice (e.g. nanoGPT, HF Trainer's
``get_parameter_names`` exclusion of biases and LayerNorm).

Gradient clipping: global L2 norm over all gradients (float64 accumulation), clipped to
``max_grad_norm`` as ``torch.nn.utils.clip_grad_norm_`` does (coefficient
``max_norm / (norm + 1e-6)``, applied only when < 1). Default ``max_grad_norm = 1.0``, the
value of GPT-3 (Brown et al. 2020, Appendix B), whose recipe Cerebras-GPT follows; ``None``
turns clipping off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gpt_workload.checks import check_int
from gpt_workload.weights import GPTWeights
from wse_sim.errors import ConfigError

__all__ = [
    "AdamWConfig",
    "AdamWState",
    "adamw_step",
    "clip_grad_norm",
    "decays",
    "grad_norm",
    "lr_at",
]


def _real(value: object) -> bool:
    """True for a finite int/float that is not a bool."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )


@dataclass(frozen=True)
class AdamWConfig:
    """AdamW hyper-parameters and the learning-rate schedule (validated on creation).

    Attributes:
        lr: peak learning rate (finite, > 0); e.g. 6.0e-4 for Cerebras-GPT 111M.
        betas: ``(beta1, beta2)``, each in ``[0, 1)``; default (0.9, 0.95) (Cerebras-GPT).
        eps: added to the denominator (finite, > 0); default 1e-8 (torch default).
        weight_decay: decoupled decay coefficient (finite, >= 0); default 0.1 (Cerebras-GPT).
        warmup_steps: linear warm-up length in optimizer steps (int >= 0).
        total_steps: step at which the decay reaches its floor (int >= 1, >= warmup_steps).
        final_lr_fraction: floor of the decay as a fraction of ``lr``, in ``[0, 1]``;
            default 0.1 (Cerebras-GPT decays to 10 % of peak).
        max_grad_norm: global-norm clipping threshold (finite, > 0) or ``None`` (off);
            default 1.0 (GPT-3, Brown et al. 2020, Appendix B).

    Raises:
        ConfigError: one line naming the field, its value and the allowed range, e.g.
            ``"adamw field lr=-1.0 must be a finite number > 0"``.
    """

    lr: float = 6.0e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 0
    total_steps: int = 1
    final_lr_fraction: float = 0.1
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        """Validate every field."""
        if not _real(self.lr) or self.lr <= 0:
            raise ConfigError(f"adamw field lr={self.lr!r} must be a finite number > 0")
        b = self.betas
        if (
            not isinstance(b, (tuple, list))
            or len(b) != 2
            or not all(_real(x) and 0.0 <= float(x) < 1.0 for x in b)
        ):
            raise ConfigError(f"adamw field betas={b!r} must be two numbers in [0, 1)")
        object.__setattr__(self, "betas", (float(b[0]), float(b[1])))
        if not _real(self.eps) or self.eps <= 0:
            raise ConfigError(f"adamw field eps={self.eps!r} must be a finite number > 0")
        if not _real(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(
                f"adamw field weight_decay={self.weight_decay!r} must be a finite number >= 0"
            )
        w = check_int("adamw field warmup_steps", self.warmup_steps, 0)
        object.__setattr__(self, "warmup_steps", w)
        t = check_int(
            "adamw field total_steps", self.total_steps, max(1, w), note=f"max(1, warmup_steps={w})"
        )
        object.__setattr__(self, "total_steps", t)
        f = self.final_lr_fraction
        if not _real(f) or not 0.0 <= float(f) <= 1.0:
            raise ConfigError(f"adamw field final_lr_fraction={f!r} must be a number in [0, 1]")
        g = self.max_grad_norm
        if g is not None and (not _real(g) or g <= 0):
            raise ConfigError(
                f"adamw field max_grad_norm={g!r} must be a finite number > 0 or None (off)"
            )

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based: the number of steps already taken).

        * warm-up, ``step < warmup_steps``: ``lr * (step + 1) / warmup_steps``;
        * decay, ``warmup_steps <= step < total_steps``: linear from ``lr`` at
          ``warmup_steps`` towards ``final_lr_fraction * lr`` at ``total_steps``;
        * ``step >= total_steps``: ``final_lr_fraction * lr``.

        Raises:
            ConfigError: ``step`` is not an integer >= 0.
        """
        step = check_int("step", step, 0)
        peak, w, t = float(self.lr), self.warmup_steps, self.total_steps
        floor = float(self.final_lr_fraction) * peak
        if step < w:
            return peak * (step + 1) / w
        if step >= t:
            return floor
        frac = (step - w) / (t - w)
        return peak - (peak - floor) * frac


def lr_at(cfg: AdamWConfig, step: int) -> float:
    """Module-level alias of :meth:`AdamWConfig.lr_at`."""
    return cfg.lr_at(step)


def decays(name: str, arr: np.ndarray) -> bool:
    """Whether parameter ``name`` (HF name) gets weight decay: True for 2-D matrices only."""
    return arr.ndim == 2


@dataclass
class AdamWState:
    """Optimizer state kept in MemoryX.

    Attributes:
        m: first moments, float32, keyed by HF parameter name (no ``transformer.`` prefix).
        v: second moments, float32, same keys and shapes.
        step: number of optimizer steps taken (int); skipped steps do not count.
    """

    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    step: int = 0

    @classmethod
    def zeros(cls, master: GPTWeights) -> AdamWState:
        """Fresh state: zero moments shaped like ``master``, step 0."""
        m = {n: np.zeros_like(a, dtype=np.float32) for n, a in master.named_arrays()}
        v = {n: np.zeros_like(a, dtype=np.float32) for n, a in master.named_arrays()}
        return cls(m=m, v=v, step=0)

    def copy(self) -> AdamWState:
        """Deep copy (arrays copied)."""
        return AdamWState(
            m={k: a.copy() for k, a in self.m.items()},
            v={k: a.copy() for k, a in self.v.items()},
            step=self.step,
        )


def grad_norm(grads: GPTWeights) -> float:
    """Global L2 norm of all gradient arrays, accumulated in float64 (``wte`` counted once)."""
    total = 0.0
    for _, a in grads.named_arrays():
        a64 = a.astype(np.float64, copy=False).ravel()
        total += float(np.dot(a64, a64))
    return math.sqrt(total)


def clip_grad_norm(grads: GPTWeights, max_norm: float | None) -> float:
    """Scale ``grads`` in place so their global norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: ``coef = max_norm / (norm + 1e-6)``, applied (as a
    float32 multiplier) only when ``coef < 1``. ``max_norm=None`` only measures.

    Returns:
        The global norm before clipping (float).
    """
    norm = grad_norm(grads)
    if max_norm is not None and math.isfinite(norm):
        coef = float(max_norm) / (norm + 1e-6)
        if coef < 1.0:
            c32 = np.float32(coef)
            for _, a in grads.named_arrays():
                a *= c32
    return norm


def adamw_step(
    master: GPTWeights,
    grads: GPTWeights,
    state: AdamWState,
    cfg: AdamWConfig,
    schedule_step: int | None = None,
) -> float:
    """One AdamW update of ``master`` in place (float32), as ``torch.optim.AdamW``.

    The learning rate is ``cfg.lr_at(schedule_step)`` (default ``state.step``);
    ``state.step`` is then incremented and used as ``k`` in the bias corrections. Clipping is
    *not* done here (see :func:`clip_grad_norm`); gradients must already be unscaled.

    Args:
        master: fp32 master weights, updated in place.
        grads: gradients, same structure as ``master`` (float32).
        state: moments and step count, updated in place.
        cfg: hyper-parameters.
        schedule_step: 0-based training step whose learning rate applies (skipped steps
            included, as a torch LR scheduler stepped every iteration); None: the number
            of updates applied so far.

    Returns:
        The learning rate used (float).
    """
    lr = cfg.lr_at(state.step if schedule_step is None else schedule_step)
    state.step += 1
    k = state.step
    b1, b2 = cfg.betas
    bc1 = 1.0 - b1**k
    bc2_sqrt = math.sqrt(1.0 - b2**k)
    step_size = np.float32(lr / bc1)
    f32 = np.float32
    g_by_name = dict(grads.named_arrays())
    if not state.m:
        fresh = AdamWState.zeros(master)
        state.m, state.v = fresh.m, fresh.v
    for name, p in master.named_arrays():
        g = g_by_name[name]
        m, v = state.m[name], state.v[name]
        if decays(name, p) and cfg.weight_decay:
            p *= f32(1.0 - lr * cfg.weight_decay)
        m += (g - m) * f32(1.0 - b1)
        v *= f32(b2)
        v += f32(1.0 - b2) * (g * g)
        denom = np.sqrt(v) / f32(bc2_sqrt) + f32(cfg.eps)
        p -= step_size * (m / denom)
    return lr
