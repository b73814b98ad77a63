"""Training numerics of one configuration: forward/backward, loss scaling, clipping, AdamW.

:class:`TrainNumerics` keeps fp32 master weights (as MemoryX does) and runs one optimizer step
per :meth:`TrainNumerics.step`, in this order (the ``torch.amp`` recipe)::

    grads = sum over micro-batches of d(loss_part * scale)/dw   (storage-precision numerics)
    if any grad is inf/NaN: skip the update, scaler backs off    (weights, moments unchanged)
    else: unscale, clip to max_grad_norm, AdamW update, scaler counts a good step

Deliberate choice: a non-finite gradient is never applied, even without an enabled loss
scaler (fp32), where torch would write NaN into the weights; a disabled scaler keeps scale 1.
The learning-rate schedule follows the step number, skipped steps included (step ``n`` uses
``lr_at(n - 1)``), as a torch LR scheduler whose ``scheduler.step()`` runs every iteration
does while ``GradScaler`` skips ``optimizer.step()``; AdamW's bias-correction count ``k``
counts only the updates applied (torch's per-parameter ``state["step"]``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpt_workload.checks import check_int
from gpt_workload.config import GPTConfig
from gpt_workload.health import HealthTracker
from gpt_workload.precision import Precision, check_precision
from gpt_workload.training.backward import grads_finite
from gpt_workload.training.backward_graph import graph_forward_backward_sum
from gpt_workload.training.data import check_training_tokens
from gpt_workload.training.loss_scale import DynamicLossScaler
from gpt_workload.training.optim import AdamWConfig, AdamWState, adamw_step, clip_grad_norm
from gpt_workload.weights import GPTWeights
from wse_sim.errors import ConfigError

__all__ = ["StepStats", "TrainNumerics", "accumulate_gradients"]


@dataclass(frozen=True)
class StepStats:
    """Outcome of one :meth:`TrainNumerics.step`.

    Attributes:
        step: 1-based index of this call (skipped steps included).
        loss: mean next-token cross-entropy of the batch (nats, unscaled, before the update).
        grad_norm: global L2 norm of the unscaled gradients before clipping (inf/NaN when
            skipped).
        loss_scale: the loss scale used for this step's backward.
        lr: learning rate applied (0.0 when skipped).
        skipped: True when the gradients were not finite and no update was made.
        health: the step's :class:`gpt_workload.health.HealthTracker`: the first op, layer
            and position where a stored tensor left the format's range, per phase
            (``weights``, ``forward``, ``backward``).
    """

    step: int
    loss: float
    grad_norm: float
    loss_scale: float
    lr: float
    skipped: bool
    health: HealthTracker | None = None


def accumulate_gradients(
    cfg: GPTConfig,
    weights: GPTWeights,
    tokens: Any,
    grad_accum_steps: int = 1,
    precision: str = "fp32",
    loss_scale: float = 1.0,
    recompute: bool = False,
    health: HealthTracker | None = None,
) -> tuple[float, GPTWeights, bool]:
    """Loss and gradients of a batch split into ``grad_accum_steps`` micro-batches along B.
    ``health`` checks every stored tensor of every micro-batch. Every family runs
    :func:`gpt_workload.training.backward_graph.graph_forward_backward_sum` (``GPTWeights``
    for gpt2, :class:`gpt_workload.models.weights.DecoderWeights` for gptj, llama, qwen2).

    Each micro-batch's loss is normalised by the *full* batch's ``B * (T - 1)`` predictions,
    so the micro-batch gradients are summed (in micro-batch order, float32) into the gradient
    of the full-batch mean loss.

    Args:
        cfg, weights, precision, loss_scale, recompute: as
            :func:`gpt_workload.training.backward_graph.graph_forward_backward`.
        tokens: int ``[B, T]``; ``B`` must be divisible by ``grad_accum_steps``.
        grad_accum_steps: number of micro-batches (int >= 1).

    Returns:
        ``(loss, grads, finite)`` as ``graph_forward_backward`` for the whole batch.

    Raises:
        ConfigError: ``grad_accum_steps`` not a positive integer dividing ``B``, bad tokens.
    """
    tok = check_training_tokens(cfg, tokens)
    n = check_int("grad_accum_steps", grad_accum_steps, 1)
    b, t = tok.shape
    if b % n:
        raise ConfigError(f"grad_accum_steps={n} must divide the batch size B={b}")
    denom = b * (t - 1)
    mb = b // n
    loss = 0.0
    total: GPTWeights | None = None
    for i in range(n):
        part, g, _ = graph_forward_backward_sum(
            cfg, weights, tok[i * mb : (i + 1) * mb], precision, loss_scale, recompute, denom,
            health,
        )
        loss += part
        if total is None:
            total = g
        else:
            for (_, acc), (_, a) in zip(total.named_arrays(), g.named_arrays(), strict=True):
                acc += a
    assert total is not None
    return loss, total, grads_finite(total)


class TrainNumerics:
    """Numerical training loop of one model: fp32 master weights, AdamW, loss scaling.

    Args:
        cfg: model configuration (any family).
        weights: initial weights (validated; deep-copied into the fp32 master copy):
            ``GPTWeights`` for gpt2, ``DecoderWeights`` for the graph families.
        precision: storage precision of forward/backward (``fp32``, ``fp16``, ``bf16``).
        adamw: optimizer hyper-parameters and schedule (default :class:`AdamWConfig`).
        loss_scaler: a :class:`DynamicLossScaler`; ``None`` gives the default dynamic scaler
            for fp16/bf16 and a disabled one (scale 1) for fp32.
        recompute: recompute each layer's forward in backward instead of storing activations.
        grad_accum_steps: micro-batches per step (split along B, gradients summed).

    Attributes:
        master: the fp32 master weights (as ``weights``), updated in place.
        opt_state: :class:`AdamWState` (moments and optimizer step count).
        scaler: the :class:`DynamicLossScaler` in use.
        n_calls: number of :meth:`step` calls so far.

    Raises:
        ConfigError / CheckpointError: bad arguments or weights (one line).
    """

    def __init__(
        self,
        cfg: GPTConfig,
        weights: GPTWeights,
        precision: str = "fp32",
        adamw: AdamWConfig | None = None,
        loss_scaler: DynamicLossScaler | None = None,
        recompute: bool = False,
        grad_accum_steps: int = 1,
    ) -> None:
        precision = check_precision(precision)
        weights.validate(cfg)
        n = check_int("grad_accum_steps", grad_accum_steps, 1)
        if adamw is not None and not isinstance(adamw, AdamWConfig):
            raise ConfigError(f"adamw is a {type(adamw).__name__}: expected an AdamWConfig")
        self.cfg = cfg
        self.precision = precision
        self.adamw = adamw if adamw is not None else AdamWConfig()
        if loss_scaler is None:
            loss_scaler = DynamicLossScaler(enabled=precision is not Precision.FP32)
        self.scaler = loss_scaler
        self.recompute = bool(recompute)
        self.grad_accum_steps = int(n)
        self.master = copy.deepcopy(weights)
        self.opt_state = AdamWState.zeros(self.master)
        self.n_calls = 0

    def step(self, tokens: Any, force_overflow: bool = False) -> StepStats:
        """One training step on ``tokens`` [B, T] (see the module docstring for the order).

        Args:
            tokens: int ``[B, T]`` ids in ``[0, vocab_size)``; B divisible by
                ``grad_accum_steps``.
            force_overflow: inject +inf into one gradient element (``wte[0, 0]``) to exercise
                the skip path.

        Returns:
            :class:`StepStats` of this step.
        """
        self.n_calls += 1
        scale = self.scaler.scale
        health = HealthTracker(self.precision, "weights")
        health.check_weights(self.master)
        loss, grads, finite = accumulate_gradients(
            self.cfg,
            self.master,
            tokens,
            self.grad_accum_steps,
            self.precision,
            scale,
            self.recompute,
            health,
        )
        if force_overflow:
            grads.wte[0, 0] = np.inf
            finite = False
        if not finite:
            if "backward" not in health.first:  # only a weight gradient overflowed
                health.phase = "backward"
                for name, a in grads.named_arrays():
                    layer = (int(name.split(".")[1]) if name.startswith(("h.", "layers."))
                             else None)  # fmt: skip
                    health.check(f"gradient {name}", layer, a)
            self.scaler.update(found_inf=True)
            return StepStats(self.n_calls, loss, float("inf"), scale, 0.0, True, health)
        self.scaler.unscale_(grads)
        norm = clip_grad_norm(grads, self.adamw.max_grad_norm)
        lr = adamw_step(self.master, grads, self.opt_state, self.adamw, self.n_calls - 1)
        self.scaler.update(found_inf=False)
        return StepStats(self.n_calls, loss, norm, scale, lr, False, health)
