"""``train()``: training steps of one configuration, timed on the wafer and computed for real.

Timing: one system's share of the global batch is lowered to a training-step Program
(:func:`gpt_workload.training.lowering.lower_training`) and timed by the ``event`` or
``analytic`` backend, gradient egress and MemoryX optimizer included. Every step has the same
shapes, so one step is timed and ``steps`` x that is the run's time.

Numerics: helper module :mod:`gpt_workload.training.trainer` (``TrainNumerics``: fp32 master
weights, AdamW, dynamic loss scaling) runs the first ``numerics_steps`` (default
``min(steps, 20)``) of the run's real optimizer steps on a small *check batch*
(``check_sequences`` x ``check_seq_len`` tokens of the given text, byte-tokenized),
printing loss, gradient norm and loss scale per step (the learning-rate schedule is the
one of all ``steps``). The timing always covers the full batch and all ``steps`` (every step
has the same timing). Models whose fp32 weights, gradients and two Adam moments exceed
:data:`gpt_workload.simulate.NUMERICS_MAX_WEIGHT_BYTES` skip the numerics and say so.

**Data parallel through SwarmX** (``systems = S``): the global batch is split over ``S``
systems (the slowest gets ``ceil(batch / S)`` sequences, which sets the step time). Weights
are broadcast and gradients reduced through a binary SwarmX tree of depth
``D = ceil(log2 S)``, pipelined (cut-through): each system's weight stream runs at
``min(io.ingress_bytes_per_s, io.swarmx_bytes_per_s)`` with ``D x io.swarmx_latency_s``
more first-byte latency, and a gradient block of ``g`` bytes is reduced in
``g / min(io.egress_bytes_per_s, io.swarmx_bytes_per_s) + D x io.swarmx_latency_s``
(:func:`wse_sim.timing.common.gradient_path`). Reasoning: a pipelined tree reduce streams
every byte through each level once, so its rate is that of its slowest link and its depth
adds only latency (the usual ``bytes/bw + depth x latency`` of a pipelined tree collective,
e.g. Thakur et al., "Optimization of Collective Communication Operations in MPICH", 2005).

**Optimizer**: MemoryX runs AdamW per layer as soon as that layer's (last micro-batch's)
gradients have arrived, one layer after another, at ``io.optimizer_params_per_s``; the step
ends when the last update is done. The last update is the embedding's (tied ``wte`` and
``wpe``, whose gradient is the last one of the backward), which is also the first weight
block of the next step, so the next step could not start earlier anyway.

Metrics (per step): ``model_flops = 3 x forward FLOPs`` of the global batch (forward +
backward = 3 x forward; per token ``6 N + 3 x (2 d V) + 3 x attention``, the attention term
stated separately, :func:`gpt_workload.config.forward_flops_per_token`); ``mfu = model_flops /
(step_time x S x peak FLOP/s of one wafer)``; recomputation and the LM head's logits
recompute are *hardware* FLOPs, not model FLOPs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpt_workload import strict_json
from gpt_workload.config import PUBLISHED_TRAINING, GPTConfig, forward_flops_per_token
from gpt_workload.mappings.weight_streaming.plan import max_batch_single_micro
from gpt_workload.models import require_lowered
from gpt_workload.checks import check_int
from gpt_workload.precision import check_precision
from gpt_workload.training.data import load_token_ids, text_batches, token_id_batches
from gpt_workload.training.energy import step_energy
from gpt_workload.training.lowering import check_offload, lower_training
from gpt_workload.training.plan_search import search_training_plan
from wse_sim.arch import ArchConfig, load_arch
from wse_sim.errors import ConfigError, FitError, NumericsError
from wse_sim.program import Program
from wse_sim.timing import WAFER_BACKENDS, get_backend
from wse_sim.timing.common import TimingResult, gradient_path, swarmx_depth

#: fidelities that time a training step: the whole-wafer backends of
#: :data:`wse_sim.timing.BACKENDS` (``packet`` models no gradient streams)
FIDELITIES = WAFER_BACKENDS
#: why the other fidelities are refused (named in the error)
_FIDELITY_WHY = "packet models no gradient streams"
#: largest global batch accepted (sequences)
MAX_BATCH = 1_000_000
#: most steps of a run
MAX_STEPS = 100_000
#: default cap on the steps run numerically (``numerics_steps``)
DEFAULT_NUMERICS_STEPS = 20


def max_systems(arch: ArchConfig) -> int:
    """Most systems SwarmX connects: up to 192 CS-2, 2048 CS-3
    (``shared/reference/wse_hardware.md``, Off-wafer); WSE-3-class archs are those named
    ``wse3*``, every other arch is taken as CS-2 class."""
    return 2048 if arch.name.lower().startswith("wse3") else 192


def swarmx_arch(arch: ArchConfig, systems: int) -> ArchConfig:
    """The arch one system sees with ``systems`` data-parallel systems: weights arrive
    through the SwarmX broadcast tree (see the module docstring); unchanged for 1."""
    if systems <= 1:
        return arch
    io = arch.io
    return arch.with_overrides(
        [
            f"io.ingress_bytes_per_s={min(io.ingress_bytes_per_s, io.swarmx_bytes_per_s)!r}",
            f"io.ingress_latency_s="
            f"{io.ingress_latency_s + swarmx_depth(systems) * io.swarmx_latency_s!r}",
        ]
    )


def swarmx_reduce_s(arch: ArchConfig, nbytes: float, systems: int) -> float:
    """Closed-form time to reduce ``nbytes`` of gradients from ``systems`` systems through
    SwarmX: ``nbytes / min(egress, swarmx) + ceil(log2 S) x swarmx_latency`` (S > 1), the
    plain egress ``nbytes / egress`` for one system."""
    io = arch.io
    if systems <= 1:
        return nbytes / io.egress_bytes_per_s
    bw = min(io.egress_bytes_per_s, io.swarmx_bytes_per_s)
    return nbytes / bw + swarmx_depth(systems) * io.swarmx_latency_s


@dataclass
class StepTiming:
    """Time of one training step of one system (all systems run in lock-step).

    Attributes:
        step_time_s: simulated seconds per step (extrapolated over the micro-batches not
            simulated, see ``Program.training.extrapolation``).
        breakdown: seconds per step: ``forward``, ``recompute``, ``backward`` (each its
            kernels' compute + fabric), ``weight_io_stall``, ``gradient_egress_stall`` (kernels
            waiting for a gradient buffer), ``gradient_tail`` (last gradients leaving after the
            last kernel) and ``optimizer_tail`` (updates after that); they sum to
            ``step_time_s``.
        overlapped: busy seconds that overlap the above: ``weight_ingress_s``,
            ``gradient_egress_s``, ``optimizer_s``.
        program, timing: the lowered Program and its raw timing.
        per_system_batch: sequences per system; micro_batches: per system per step.
    """

    step_time_s: float
    breakdown: dict
    overlapped: dict
    program: Program
    timing: TimingResult
    per_system_batch: int
    micro_batches: int
    wall_s: dict = field(default_factory=dict)


def time_training_step(
    cfg: GPTConfig,
    arch: ArchConfig,
    batch: int,
    seq_len: int,
    precision: str = "fp16",
    systems: int = 1,
    fidelity: str = "analytic",
    checkpoint_offload: str = "auto",
) -> StepTiming:
    """Lower and time one training step of ``batch`` global sequences over ``systems``
    (``checkpoint_offload``: ``auto``, ``on`` or ``off``, see
    :mod:`gpt_workload.training.lowering`). The step plan (segment width, micro-batches,
    activation policy) is the fastest by ``analytic`` time among those that fit
    (:mod:`gpt_workload.training.plan_search`; ``plan_search`` in the plan).

    Raises:
        ConfigError, FitError: bad input (one line).
    """
    _check_step_inputs(batch, systems, fidelity)
    run, co = (cfg, arch, batch, seq_len, precision, systems), checkpoint_offload
    choice = search_training_plan(
        cfg, swarmx_arch(arch, systems), math.ceil(batch / systems), seq_len, precision, co,
        lambda p: _time_step(*run, "analytic", co, p).step_time_s, systems)  # fmt: skip
    return _time_step(*run, fidelity, co, choice.plan)


def _check_step_inputs(batch: int, systems: int, fidelity: str):
    """The step's timing backend; ConfigError (one line) for an unknown or unsupported
    ``fidelity`` or fewer sequences than systems."""
    backend = get_backend(fidelity, FIDELITIES, where="training", why=_FIDELITY_WHY)
    if batch < systems:
        raise ConfigError(
            f"batch={batch} is smaller than systems={systems}: every system needs at least one "
            "sequence"
        )
    return backend


def _time_step(cfg, arch, batch, seq_len, precision, systems, fidelity, checkpoint_offload,
               plan=None):
    """:func:`time_training_step` for one ``checkpoint_offload`` value (and step ``plan``)."""
    backend = _check_step_inputs(batch, systems, fidelity)
    wall = {}
    per = math.ceil(batch / systems)
    arch_s = swarmx_arch(arch, systems)
    t0 = time.perf_counter()
    prog = lower_training(cfg, arch_s, per, seq_len, precision, systems=systems,
                          checkpoint_offload=checkpoint_offload, plan=plan)  # fmt: skip
    wall["lowering"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = backend(prog, arch_s)
    wall["timing"] = time.perf_counter() - t0
    ex = tr.extra
    g_stall = ex["gradient_stall_s"]
    br = {k: 0.0 for k in ("forward", "recompute", "backward")}
    w_stall = 0.0
    per_mb: dict[int, dict] = {}
    ends: dict[int, float] = {}
    phase = {k.name: k.phase for k in prog.kernels}
    for kt in tr.kernels:
        ph = phase[kt.name]
        br[ph] += kt.compute_s + kt.fabric_s
        w_stall += kt.stall_s
        m = per_mb.setdefault(kt.micro_batch, {"forward": 0.0, "recompute": 0.0, "backward": 0.0,
                                                "stall": 0.0})  # fmt: skip
        m[ph] += kt.compute_s + kt.fabric_s
        m["stall"] += kt.stall_s
        ends[kt.micro_batch] = kt.end_s
    n_sim = len(prog.training.simulated_micro_batches)
    n = prog.workload.micro_batches
    extra_mb = n - n_sim
    step = tr.total_s
    in_bw = arch_s.io.ingress_bytes_per_s
    ingress = prog.weight_bytes_streamed / in_bw
    egress = ex["egress_busy_s"]
    if extra_mb > 0:
        period = ends[1] - ends[0]
        step += extra_mb * period
        for ph in br:
            br[ph] += extra_mb * per_mb[1][ph]
        w_stall += extra_mb * per_mb[1]["stall"]
        mb1 = [k for k in prog.kernels if k.micro_batch == 1]
        ingress += extra_mb * sum(k.weight_bytes for k in mb1) / in_bw
        egress += extra_mb * sum(k.grad_bytes for k in mb1) / gradient_path(prog, arch_s)[0]
    # gradient-buffer waits are part of the kernels' stall: split them out (scaled by the
    # micro-batch count when micro-batches are extrapolated)
    g_stall_total = g_stall * n / n_sim
    grad_tail = max(ex["gradient_arrival_end_s"] - ex["kernels_end_s"], 0.0)
    breakdown = {
        **br,
        "weight_io_stall": max(w_stall - g_stall_total, 0.0),
        "gradient_egress_stall": min(g_stall_total, w_stall),
        "gradient_tail": grad_tail,
        "optimizer_tail": max(ex["tail_s"] - grad_tail, 0.0),
    }
    overlapped = {
        "weight_ingress_s": ingress,
        "gradient_egress_s": egress,
        "optimizer_s": ex["optimizer_busy_s"],
    }
    return StepTiming(step, breakdown, overlapped, prog, tr, per, n, wall)


@dataclass
class TrainReport:
    """Everything one ``train()`` run produced; ``to_dict()`` is the JSON report.

    Attributes:
        model, arch, fidelity, precision: the run's choices; ``systems`` data-parallel CS-x.
        batch: global sequences per step; seq_len; tokens_per_step = batch x seq_len.
        steps: optimizer steps timed (the numerics run the first ``numerics["steps_run"]``).
        step_time_s, total_time_s (= steps x step_time_s), samples_per_s, tokens_per_s.
        model_flops_per_step: ``{"dense_6N", "lm_head", "attention", "total"}`` (3 x forward).
        hardware_flops_per_step: FLOPs the Program executes (recompute included), all systems.
        mfu: model_flops / (step_time x systems x peak).
        breakdown_s, overlapped_s: see :class:`StepTiming`.
        training: the lowering's plan (micro-batches, activations stored or recomputed ...).
        numerics: ``{"steps": [{"step", "loss", "grad_norm", "loss_scale", "lr",
            "skipped"}, ...], "steps_run", "steps_total", "check_batch": [K, T], ...}`` or
            ``{"skipped": reason}``.
        swarmx: the SwarmX model and its closed-form gradient-reduce time per step.
        wall_s: host seconds per phase.
        energy: one step's energy (:func:`gpt_workload.training.energy.step_energy`): ``step_j`` (all systems),
            ``components_j`` and ``wafer_avg_w`` / ``system_avg_w`` / ``peak_w`` per system,
            ``j_per_token``, ``tokens_per_j``, ``flop_per_j`` (model FLOPs).
        wall_s: host seconds per phase (the report's only host wall-clock figures).
        notices: one-line warnings printed first and put first in the JSON (a non-finite
            loss kept by ``allow_nonfinite``, every numerics step skipped, seeded weights
            from a ``config.json``).
        health: forward health of the numerics
            (:meth:`gpt_workload.health.HealthTracker.outcome` of the first step that had
            an event, else the last step; ``skipped_steps`` and the first step's gradient
            overflow, which loss scaling handles); ``{"status": "not_checked"}`` without
            numerics.
    """

    model: str
    arch: str
    fidelity: str
    precision: str
    systems: int
    batch: int
    seq_len: int
    tokens_per_step: int
    steps: int
    step_time_s: float
    total_time_s: float
    samples_per_s: float
    tokens_per_s: float
    model_flops_per_step: dict
    hardware_flops_per_step: float
    peak_flops_per_s: float
    mfu: float
    breakdown_s: dict
    overlapped_s: dict
    training: dict
    numerics: dict
    swarmx: dict
    wall_s: dict
    arch_config: dict = field(default_factory=dict)
    energy: dict = field(default_factory=dict)
    notices: list = field(default_factory=list)
    health: dict = field(default_factory=lambda: {"status": "not_checked"})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the report, ``notices`` and ``health`` first; strict JSON
        (:mod:`gpt_workload.strict_json`: NaN/inf as null, listed in ``nonfinite_values``)."""
        d = dataclasses.asdict(self)
        out = {"notices": d.pop("notices"), "health": d.pop("health"), **d}
        return strict_json.to_strict(out)

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as strict JSON to ``path``."""
        Path(path).write_text(strict_json.dumps(self.to_dict(), indent=2))

    def console_rows(self) -> list[tuple[str, str]]:
        """``(label, value)`` rows for the console table."""
        t = self.training
        ck = t["checkpoint_offload"]
        mf = self.model_flops_per_step
        b_last = t.get("sequences_in_last_micro_batch", t["sequences_per_micro_batch"])
        last = f" (last {b_last})" if b_last < t["sequences_per_micro_batch"] else ""
        v = self.samples_per_s  # 3 significant digits below 100 (0.0714, not 0.1)
        sps = f"{v:,.1f}" if abs(v) >= 100 or not math.isfinite(v) else f"{v:.3g}"
        rows = [
            ("model / arch", f"{self.model} on {self.arch} x {self.systems} system(s), "
                             f"{self.fidelity}"),
            ("workload", f"batch {self.batch} x seq {self.seq_len} = {self.tokens_per_step:,} "
                         f"tokens/step, {self.precision}, {self.steps} step(s)"),
            ("per system", f"{t['per_system_batch']} sequences in {t['micro_batches']} "
                           f"micro-batch(es) of {t['sequences_per_micro_batch']}{last} "
                           f"(segments of {t['pes_per_segment']} PEs x {t['tokens_per_segment']} tokens); "
                           f"activations {t['activations']}; gradients accumulate in MemoryX"),
            ("checkpoints", (f"offloaded to MemoryX: {ck['bytes_out_per_step'] / 1e9:.3f} GB "
                             "out and back in per step per system" if ck["used"] else
                             "on the wafer") + f" (--checkpoint-offload {ck['mode']})"),
            ("step time", f"{self.step_time_s * 1e3:.3f} ms ({self.total_time_s:.3f} s for "
                          f"{self.steps} step(s))"),
            ("throughput", f"{sps} samples/s, {self.tokens_per_s:,.0f} "
                           "tokens/s"),
            ("MFU", f"{self.mfu:.1%} (model FLOPs {mf['total']:.3e}/step = 6N "
                    f"{mf['dense_6N']:.3e} + LM head {mf['lm_head']:.3e} + attention "
                    f"{mf['attention']:.3e})"),
            ("step split", ", ".join(f"{k} {v / self.step_time_s:.1%}"
                                     for k, v in self.breakdown_s.items())),
            ("overlapped", ", ".join(f"{k[:-2]} {v * 1e3:.3f} ms"
                                     for k, v in self.overlapped_s.items())),
        ]  # fmt: skip
        if self.systems > 1:
            rows.append(
                (
                    "SwarmX",
                    f"tree depth {self.swarmx['tree_depth']}, gradient reduce "
                    f"{self.swarmx['gradient_reduce_s'] * 1e3:.3f} ms/step (closed form)",
                )
            )
        num = self.numerics
        rows.append(
            (
                "numerics",
                f"skipped: {num['skipped']}"
                if "skipped" in num
                else f"{num['steps_run']:,} of {num['steps_total']:,} step(s) run numerically on a "
                f"check batch of {num['check_batch'][0]} x {num['check_batch'][1]} tokens "
                f"of {num['text']}",
            )
        )
        e = self.energy
        if e:
            from gpt_workload.report import per_joule_text, published_rows, si

            c = e["components_j_per_system"]
            tot = sum(c.values()) or 1.0
            rows.append(("energy", f"{si(e['step_j'], 'J')}/step ({self.systems} system(s)), "
                                   f"{si(e['j_per_token'], 'J')}/token, "
                                   f"{per_joule_text(e, 'flop_per_j', 'FLOP/J')}"))  # fmt: skip
            split = ", ".join(f"{k} {v / tot:.1%}" for k, v in c.items())
            rows.append(("power", f"per system: wafer avg {si(e['wafer_avg_w'], 'W')} "
                                  f"(peak {si(e['peak_w'], 'W')}), system avg "
                                  f"{si(e['system_avg_w'], 'W')}; split {split}"))  # fmt: skip
            rows += published_rows(e.get("published") or {})
        rows.append(("host wall time", ", ".join(f"{k} {v:.2f}s" for k, v in self.wall_s.items())))
        return rows


def train(
    model: str | GPTConfig = "cerebras-gpt-111m",
    arch: str | ArchConfig = "wse2",
    *,
    steps: int = 1,
    systems: int = 1,
    batch: int | None = None,
    seq_len: int | None = None,
    precision: str = "fp16",
    fidelity: str = "event",
    text: str | Path | None = None,
    tokens: str | Path | np.ndarray | None = None,
    lr: float | None = None,
    seed: int = 0,
    check_sequences: int = 4,
    check_seq_len: int | None = None,
    numerics: bool = True,
    numerics_steps: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    progress: Callable[[int, int], None] | None = None,
    allow_nonfinite: bool = False,
    checkpoint_offload: str = "auto",
) -> TrainReport:
    """Time ``steps`` training steps of ``model`` on ``systems`` x ``arch`` and run them.

    Args:
        model: preset name, ``config.json`` path, checkpoint directory (any family; the
            numerics fine-tune from its weights) or GPTConfig.
        arch: preset name, arch TOML path or ArchConfig (one system).
        steps: optimizer steps (>= 1).
        systems: data-parallel systems through SwarmX (1 .. :func:`max_systems`).
        batch: global sequences per step; default the published Cerebras-GPT batch for the
            presets, else the largest single-micro-batch forward batch of one system.
        seq_len: tokens per sequence; default ``min(2048, n_positions)``.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        fidelity: ``event`` or ``analytic``.
        text: path of a UTF-8 text file for the numerics' check batch (byte-tokenized);
            default the shipped public-domain text.
        tokens: int token ids ``[N, T]`` (a ``.npy`` path or an array) for the numerics
            instead of ``text``: each step takes ``min(check_sequences, N)`` rows in turn
            (:mod:`gpt_workload.training.data`); ``T`` is the check batch's length.
        lr: peak learning rate; default the published one, else 6e-4. Linear decay to 10 %
            over ``steps``, no warm-up.
        check_sequences, check_seq_len: the numerics' check batch (default 4 x
            ``min(seq_len, 64)``); 0 sequences or ``numerics=False`` skips the numerics.
        numerics_steps: how many of the ``steps`` run numerically (0 .. ``steps``; default
            ``min(steps, 20)``); the timing covers all ``steps`` either way.
        overrides: ``level.field=value`` arch overrides.
        progress: called as ``progress(done, total)`` before the first numerics step and
            after each one (e.g. for a progress bar).
        allow_nonfinite: keep going when a numerics step's forward loss is not finite (the
            report then says so first). A step whose *gradients* overflow is skipped and
            counted either way (loss scaling).
        checkpoint_offload: ``auto`` (default), ``on`` or ``off``: may / must / must not
            stream the layer-input checkpoints to MemoryX and back
            (:mod:`gpt_workload.training.lowering`).

    Raises:
        ConfigError, FitError: bad input (one-line messages).
        NumericsError: a numerics step's loss is not finite and not ``allow_nonfinite``;
            names the first op, layer, position and precision that overflowed.

    Raises (numerics):
        NumericsError: as above;
            names the first op, layer, position and precision that overflowed.
    """
    from gpt_workload.simulate import check_allow_nonfinite, resolve_model_and_weights

    wall: dict[str, float] = {}
    check_allow_nonfinite(allow_nonfinite)
    get_backend(fidelity, FIDELITIES, where="training", why=_FIDELITY_WHY)
    precision = check_precision(precision)
    check_offload(checkpoint_offload)
    steps = check_int("steps", steps, 1, MAX_STEPS)
    arch_cfg = (
        load_arch(arch, overrides)
        if isinstance(arch, str)
        else (arch.with_overrides(overrides) if overrides else arch)
    )
    systems = check_int("systems", systems, 1, max_systems(arch_cfg))
    batch = check_int("batch", batch, 1, MAX_BATCH, allow_none=True)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    check_sequences = check_int("check_sequences", check_sequences, 0, 64)
    check_seq_len = check_int("check_seq_len", check_seq_len, 2, allow_none=True)
    if numerics_steps is None:
        numerics_steps = min(steps, DEFAULT_NUMERICS_STEPS)
    numerics_steps = check_int("numerics_steps", numerics_steps, 0, steps)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr={lr!r} must be a finite number > 0")
    if text is not None and tokens is not None:
        raise ConfigError("text and tokens are both given: the numerics take one of them")
    cfg, _, _ = resolve_model_and_weights(model, seed, None, need_weights=False,
                                          job="train_numerics")  # fmt: skip
    ids = None if tokens is None else load_token_ids(tokens, cfg)
    if ids is not None and check_seq_len not in (None, ids[0].shape[1]):
        raise ConfigError(f"check_seq_len={check_seq_len} differs from the tokens' T="
                          f"{ids[0].shape[1]}: the token ids set the check batch")  # fmt: skip
    if seq_len is None:
        seq_len = min(2048, cfg.n_positions)
    else:
        why = f"n_positions of {cfg.name}; a next-token loss needs 2 tokens"
        seq_len = check_int("seq_len", seq_len, 2, cfg.n_positions, note=why)
    pub = PUBLISHED_TRAINING.get(cfg.name)
    num_args = (cfg, model, precision, steps, numerics_steps, seed, text, lr, pub,
                check_sequences, ids[0].shape[1] if ids else (check_seq_len or min(seq_len, 64)),
                "stored", wall, progress, allow_nonfinite, ids)  # fmt: skip
    require_lowered(cfg, "wse-sim train", "train")
    if batch is None:
        batch = (
            int(pub["batch_sequences"])
            if pub
            else max_batch_single_micro(cfg, arch_cfg, seq_len, precision)
        )
    if batch < systems:
        raise ConfigError(
            f"batch={batch} is smaller than systems={systems}: every system needs at least "
            "one sequence"
        )
    st = time_training_step(cfg, arch_cfg, batch, seq_len, precision, systems, fidelity,
                            checkpoint_offload)  # fmt: skip
    wall.update(st.wall_s)
    fpt = forward_flops_per_token(cfg, seq_len)
    tokens = batch * seq_len
    mflops = {
        "dense_6N": 3 * fpt["dense"] * tokens,
        "lm_head": 3 * fpt["lm_head"] * tokens,
        "attention": 3 * fpt["attention"] * tokens,
        "total": 3 * fpt["total"] * tokens,
    }
    peak = arch_cfg.peak_flops_per_s(precision)
    prog = st.program
    n_sim = len(prog.training.simulated_micro_batches)
    hw = prog.flops
    if st.micro_batches > n_sim:
        hw += (st.micro_batches - n_sim) * sum(k.flops for k in prog.kernels if k.micro_batch == 1)
    grad_bytes = sum(b.bytes for b in prog.gradient_blocks if b.optimizer_params > 0)
    ckpt_sim = prog.training.checkpoint_bytes_simulated  # each way (out in forward, back in)
    frac = st.micro_batches / n_sim
    ck = prog.training.plan["checkpoint_offload"]  # the searched plan's offload mode and bytes
    training = {
        **prog.training.plan,  # the lowering's plan, for the report
        "checkpoint_offload": ck,
        "per_system_batch": st.per_system_batch,
        "micro_batches": st.micro_batches,
        "simulated_micro_batches": list(prog.training.simulated_micro_batches),
        "extrapolation": prog.training.extrapolation,
        "weight_bytes_streamed_per_step": (prog.weight_bytes_streamed - ckpt_sim) * frac,
        "gradient_bytes_streamed_per_step": (prog.grad_bytes_streamed - ckpt_sim) * frac,
        "optimizer": "AdamW in MemoryX, per layer as its gradients arrive; step ends after "
        "the last update (the embedding's, also the next step's first weight block)",
    }
    swx = {
        "systems": systems,
        "tree_depth": swarmx_depth(systems),
        "swarmx_bytes_per_s": arch_cfg.io.swarmx_bytes_per_s,
        "swarmx_latency_s": arch_cfg.io.swarmx_latency_s,
        "gradient_bytes_per_micro_batch": grad_bytes,
        "gradient_reduce_s": swarmx_reduce_s(arch_cfg, grad_bytes, systems),
        "formula": "bytes / min(egress, swarmx) + ceil(log2 S) x swarmx_latency (pipelined "
        "binary tree); weights broadcast at min(ingress, swarmx)",
    }
    num_args = (*num_args[:11], prog.training.activations, *num_args[12:])
    num = _numerics(numerics, *num_args)
    t0 = time.perf_counter()
    energy = step_energy(st, swarmx_arch(arch_cfg, systems), systems, tokens, mflops["total"])
    wall["energy"] = time.perf_counter() - t0
    health = num.pop("_health", {"status": "not_checked"})
    notices = [n for n in (health.get("notice"), *num.pop("_notices", ())) if n]
    return TrainReport(
        model=cfg.name,
        arch=arch_cfg.name,
        fidelity=fidelity,
        precision=precision,
        systems=systems,
        batch=batch,
        seq_len=seq_len,
        tokens_per_step=tokens,
        steps=steps,
        step_time_s=st.step_time_s,
        total_time_s=steps * st.step_time_s,
        samples_per_s=batch / st.step_time_s,
        tokens_per_s=tokens / st.step_time_s,
        model_flops_per_step=mflops,
        hardware_flops_per_step=hw * systems,
        peak_flops_per_s=peak,
        mfu=mflops["total"] / (st.step_time_s * systems * peak),
        breakdown_s=st.breakdown,
        overlapped_s=st.overlapped,
        training=training,
        numerics=num,
        swarmx=swx,
        wall_s=wall,
        arch_config=arch_cfg.to_dict(),
        energy=energy,
        notices=notices,
        health=health,
    )


def _numerics(on: bool, cfg, model, precision, steps, n_run, seed, text, lr, pub, k,
              *rest) -> dict:  # fmt: skip
    """:func:`_run_numerics` (same arguments after ``on``), or why it was skipped (off, no
    check sequences, no numerics steps, or a model too large)."""
    from gpt_workload.simulate import NUMERICS_MAX_WEIGHT_BYTES

    if not on or k == 0 or n_run == 0:
        return {"skipped": "numerics off (check_sequences=0 or numerics_steps=0)"}
    if 16 * cfg.n_params > NUMERICS_MAX_WEIGHT_BYTES:
        return {
            "skipped": f"fp32 weights, gradients and two Adam moments of {cfg.name} need "
            f"{16 * cfg.n_params / 2**30:.1f} GiB (limit "
            f"{NUMERICS_MAX_WEIGHT_BYTES / 2**30:.0f} GiB); timing covers the full batch"
        }
    return _run_numerics(cfg, model, precision, steps, n_run, seed, text, lr, pub, k, *rest)


def _run_numerics(
    cfg, model, precision, steps, n_run, seed, text, lr, pub, k, T, policy, wall, progress,
    allow_nonfinite=False, ids=None,
) -> dict:
    """Run the first ``n_run`` of ``steps`` real optimizer steps (the schedule of all
    ``steps``) on a ``k x T`` check batch (:class:`gpt_workload.training.trainer.TrainNumerics`); ``_health`` and ``_notices``
    in the result are for the caller to take out. ``ids``: ``(token ids [N, T], source)``
    of :func:`gpt_workload.training.data.load_token_ids`, used instead of ``text``.

    Raises:
        NumericsError: a step's forward loss is not finite and not ``allow_nonfinite``.
    """
    from gpt_workload.simulate import resolve_model_and_weights, seeded_config_notice
    from gpt_workload.training.optim import AdamWConfig
    from gpt_workload.training.trainer import TrainNumerics

    t0 = time.perf_counter()
    if T > cfg.n_positions:
        raise ConfigError(f"check_seq_len={T} exceeds n_positions={cfg.n_positions}")
    if ids is not None:
        src, batches = ids[1], token_id_batches(ids[0], k)
        k = min(k, ids[0].shape[0])
    elif cfg.vocab_size < 256:
        raise ConfigError(
            f"the byte tokenizer needs vocab_size >= 256; {cfg.name} has {cfg.vocab_size}"
        )
    else:
        batches, src = text_batches(text, k, T, seed)
    _, w, wsrc = resolve_model_and_weights(model, seed, job="train_numerics")
    peak_lr = lr if lr is not None else (float(pub["peak_lr"]) if pub else 6.0e-4)
    adamw = AdamWConfig(lr=peak_lr, warmup_steps=0, total_steps=steps)
    tn = TrainNumerics(cfg, w, precision, adamw, None, recompute=policy == "recompute")
    out = []
    fwd = ("weights", "forward")
    health = first_overflow = None
    if progress is not None:
        progress(0, n_run)
    for i in range(n_run):
        s = tn.step(next(batches))
        loss_ok = math.isfinite(s.loss)
        if (not loss_ok or s.health.internal_overflows(fwd)) and not allow_nonfinite:
            raise NumericsError(f"step {s.step}: " + s.health.error_message("loss", fwd))
        if health is None and (not loss_ok or any(p in s.health.first for p in fwd)):
            health = {"step": s.step, **s.health.outcome("loss", loss_ok, allow_nonfinite, fwd)}
        bwd = s.health.first.get("backward")
        if s.skipped and bwd is not None and first_overflow is None:
            first_overflow = {"step": s.step, **dataclasses.asdict(bwd)}
        out.append(
            {
                "step": s.step,
                "loss": float(s.loss),
                "grad_norm": float(s.grad_norm),
                "loss_scale": float(s.loss_scale),
                "lr": float(s.lr),
                "skipped": bool(s.skipped),
                "gradient_overflow": bwd.describe() if s.skipped and bwd else None,
            }
        )
        if progress is not None:
            progress(i + 1, n_run)
    wall["numerics"] = time.perf_counter() - t0
    if health is None:  # every step's forward was finite and in range
        health = {"step": s.step, **s.health.outcome("loss", True, allow_nonfinite, fwd)}
    n_skip = sum(r["skipped"] for r in out)
    health.update(skipped_steps=n_skip, first_gradient_overflow=first_overflow)
    notices = [seeded_config_notice(model, wsrc)]
    if n_skip == n_run:
        notices.append(
            f"all {n_run} numerics step(s) were skipped: the gradients were not finite "
            f"(first: {out[0]['gradient_overflow'] or 'see the step records'}); the loss "
            f"scale backed off to {tn.scaler.scale:g} and no update was applied"
        )
    return {
        "_health": health,
        "_notices": notices,
        "check_batch": [k, T],
        "text": src,
        "weights": wsrc,
        "precision": precision,
        "peak_lr": peak_lr,
        "steps_run": n_run,
        "steps_total": steps,
        "steps_skipped": n_skip,
        "steps": out,
    }

