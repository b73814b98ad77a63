"""``simulate()``: one configuration (model x arch x mapping) timed and computed.

Lower once, run anywhere: the model is lowered to a :class:`wse_sim.program.Program`, one
timing backend times the whole batch on every PE of the arch, and the same Program's kernels
compute the real logits of ``check_sequences`` sequences, which are compared with the float64
NumPy reference model.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from gpt_workload.config import WEIGHT_FILES, GPTConfig, forward_flops_per_token
from gpt_workload.mappings import MAPPINGS, Mapping, parse_mapping  # noqa: F401 (re-export)
from gpt_workload.mappings.weight_streaming.head_split import head_split_summary
from gpt_workload.models import init_model_weights, require_lowered, resolve_model
from gpt_workload.models import load_checkpoint as load_any_checkpoint
from gpt_workload.checks import check_int
from gpt_workload.precision import check_precision, unit_roundoff
from gpt_workload.reference import cross_entropy, reference_forward
from gpt_workload.report import Report, add_power_to_timeline
from gpt_workload.weights import GPTWeights, load_checkpoint
from wse_sim import metrics
from wse_sim.arch import ArchConfig, load_arch
from wse_sim.energy import energy_report
from wse_sim.errors import ConfigError, NumericsError
from wse_sim.program import Program
from wse_sim.timing import get_backend

log = logging.getLogger(__name__)

# the largest batch accepted; beyond it runs take minutes of lowering for no new insight
MAX_BATCH = 1_000_000
# numerics are skipped, with a note in the report, when fp32 weights exceed this
NUMERICS_MAX_WEIGHT_BYTES = 6 * 2**30


def resolve_model_and_weights(
    model: str | GPTConfig,
    seed: int,
    weights: GPTWeights | None = None,
    need_weights: bool = True,
    job: str = "run",
) -> tuple[GPTConfig, GPTWeights | None, str]:
    """A model spec -> (config, weights, weight source).

    A checkpoint directory (with ``model.safetensors`` or ``pytorch_model.bin``) loads its
    weights (any family); a preset name or ``config.json`` gets seeded initialisation
    (:func:`gpt_workload.models.init_model_weights`). ``job``: the
    :data:`gpt_workload.models.LOWERED_FOR` key whose families are accepted.

    Raises:
        ConfigError: unknown model, or a family not lowered yet
            (:func:`gpt_workload.models.require_lowered`); CheckpointError: malformed
            checkpoint or NaN weights.
    """
    if isinstance(model, GPTConfig):
        cfg = model
        ckpt = None
    else:
        cfg = resolve_model(model)
        ckpt = checkpoint_dir(model)
    require_lowered(cfg, f"wse-sim {job}", job)
    if weights is not None:
        weights.validate(cfg)
        return cfg, weights, "given"
    if not need_weights:
        return cfg, None, "none"
    if ckpt is not None:
        cfg, w = load_checkpoint(ckpt) if cfg.family == "gpt2" else load_any_checkpoint(ckpt)
        return cfg, w, f"checkpoint {ckpt}"
    return cfg, init_model_weights(cfg, seed), f"seeded init (seed {seed})"


def checkpoint_dir(spec: str) -> Path | None:
    """``spec`` as a checkpoint directory if it is a directory (which
    :func:`gpt_workload.models.resolve_model` has checked holds one of
    :data:`WEIGHT_FILES`), else ``None`` (a preset name or a ``config.json`` file, which run
    on seeded weights)."""
    p = Path(spec)
    if p.is_dir() and any((p / f).exists() for f in WEIGHT_FILES):
        return p
    return None


def seeded_config_notice(model, wsrc: str) -> str | None:
    """The notice for a ``config.json`` given as a file path, which holds no weights: the run
    used seeded weights (``wsrc``). None for presets, checkpoints and given weights."""
    if isinstance(model, str) and wsrc.startswith("seeded") and Path(model).is_file():
        return (
            f"weights: {wsrc}, not trained weights: {model} is a config.json, which holds "
            "none; give a checkpoint directory to run real weights"
        )
    return None


def check_allow_nonfinite(value) -> bool:
    """``allow_nonfinite`` must be a bool.

    Raises:
        ConfigError: naming the value.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"allow_nonfinite={value!r} must be True or False")
    return bool(value)


def default_batch(
    cfg: GPTConfig,
    arch: ArchConfig,
    seq_len: int,
    precision: str,
    mapping: str | Mapping = "weight_streaming",
) -> int:
    """The batch ``wse-sim run`` uses when none is given: the published Cerebras-GPT training
    batch for the presets (``shared/reference/cerebras_gpt.md``), capped at the largest
    batch the wafer holds as one micro-batch under ``mapping``
    (:meth:`Mapping.max_batch_single_micro`); other models get that largest batch."""
    from gpt_workload.config import PUBLISHED_TRAINING

    cap = parse_mapping(mapping).max_batch_single_micro(cfg, arch, seq_len, precision)
    pub = PUBLISHED_TRAINING.get(cfg.name)
    if pub is not None:
        return min(int(pub["batch_sequences"]), cap)
    return cap


def _available_memory_bytes() -> int:
    """Host memory available now (Linux ``/proc/meminfo``; a large default elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 40


def _check_host_memory(cfg: GPTConfig, k_seq: int, seq_len: int) -> None:
    """Refuse numerics whose logits would not fit host memory (float32 result + float64
    reference + temporaries: about 24 bytes per logit).

    Raises:
        ConfigError: naming check_sequences and the bytes needed and available.
    """
    need = 24 * k_seq * seq_len * cfg.vocab_size
    avail = _available_memory_bytes()
    if k_seq and need > 0.8 * avail:
        raise ConfigError(
            f"check_sequences={k_seq} needs about {need / 2**30:.1f} GiB of host memory for "
            f"the logits ({k_seq} x {seq_len} x {cfg.vocab_size}); {avail / 2**30:.1f} GiB "
            "available: lower check_sequences"
        )


def simulate(
    model: str | GPTConfig = "cerebras-gpt-111m",
    arch: str | ArchConfig = "wse2",
    *,
    mapping: str | Mapping = "weight_streaming",
    fidelity: str = "event",
    precision: str = "fp16",
    batch: int | None = None,
    seq_len: int | None = None,
    check_sequences: int | None = None,
    tokens: np.ndarray | None = None,
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
    weights: GPTWeights | None = None,
    reference: bool = True,
    keep_logits: bool = False,
    energy: bool = True,
    allow_nonfinite: bool = False,
    lowering_cache=None,
    per_pe_maps: bool = True,
) -> Report:
    """Simulate a GPT forward pass on a wafer and compute its real outputs.

    Args:
        model: preset name, ``config.json`` path, checkpoint directory, or a GPTConfig.
        arch: preset name, arch TOML path, or an ArchConfig.
        mapping: a :class:`gpt_workload.mappings.Mapping` or its spec
            ``NAME[:knob=value,...]`` (``wse-sim mappings list``; default
            ``weight_streaming``).
        fidelity: timing backend, ``event`` (SimPy, default), ``analytic`` or ``packet``
            (every router; grids up to 128 x 128 PEs).
        precision: ``fp32``, ``fp16`` or ``bf16`` (16-bit storage, fp32 accumulation).
        batch: sequences timed; default :func:`default_batch`.
        seq_len: tokens per sequence; default ``min(2048, n_positions)``.
        check_sequences: K sequences whose numerics run through the per-PE kernels (0 skips;
            default 1, or the number of sequences in ``tokens``); at most ``batch``.
        tokens: int [K, T] token ids for the numerics; default seeded random tokens.
        seed: weight initialisation and default-token seed.
        overrides: ``level.field=value`` arch overrides.
        weights: weights to use instead of loading or initialising them.
        reference: also run the float64 NumPy reference and report the error.
        keep_logits: keep the float32 logits [K, T, V] on ``Report.logits``.
        energy: run the energy model (:mod:`wse_sim.energy`) on the timed Program
            (``Report.energy``, the per-PE power map, power in the timeline); ``False`` only
            to measure its cost (``benchmarks/bench_energy.py``).
        allow_nonfinite: keep going when the numerics' logits are not finite; the report
            then says so first (``Report.notices[0]``, ``health.status ==
            "nonfinite_allowed"``).
        lowering_cache: a :class:`gpt_workload.sweep.cache.LoweringCache` to take the
            Program from when an earlier call lowered the same one (sweeps); None lowers.
        per_pe_maps: ``False`` leaves the per-PE maps out of the Report
            (``pe_utilisation_map``, ``sram_peak_map`` and ``pe_power_map`` are ``None``,
            ``energy`` has no ``pe_avg_w_mean`` / ``pe_avg_w_max``): what a sweep's rows
            need (:mod:`gpt_workload.sweep.point`); every other figure is the same.

    Raises:
        ConfigError, FitError, CheckpointError: bad input, with one-line messages.
        NumericsError: the logits are not finite (a value overflowed the storage format or
            turned NaN), or are wrong because an op's fp32 reduction overflowed inside it
            (a LayerNorm's sum of squares, an attention score), and ``allow_nonfinite`` is
            False; the message names the first op, layer, position and precision and what
            to try. Without an error, logits that disagree with the float64 reference by
            ``REFERENCE_MISMATCH_REL`` of max |logit| or more give ``health.status ==
            "reference_mismatch"`` and a first notice.
    """
    wall: dict[str, float] = {}
    backend = get_backend(fidelity)
    mapping = parse_mapping(mapping)
    if fidelity == "packet" and not getattr(mapping, "packet_ok", True):
        raise ConfigError(
            f"fidelity=packet cannot time mapping={mapping.spec}: its transfer patterns have "
            "no packet-level expansion; use fidelity=event or analytic"
        )
    precision = check_precision(precision)
    check_allow_nonfinite(allow_nonfinite)
    arch_cfg = (
        load_arch(arch, overrides)
        if isinstance(arch, str)
        else (arch.with_overrides(overrides) if overrides else arch)
    )
    seed = check_int("seed", seed, 0, 2**63 - 1)
    batch = check_int("batch", batch, 1, MAX_BATCH, allow_none=True)
    seq_len = check_int("seq_len", seq_len, 1, allow_none=True)
    check_sequences = check_int("check_sequences", check_sequences, 0, allow_none=True)
    if tokens is not None:
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ConfigError(f"tokens must have shape [K, T] with K, T >= 1, got {tokens.shape}")
        if check_sequences is not None and check_sequences != tokens.shape[0]:
            raise ConfigError(
                f"check_sequences={check_sequences} disagrees with the {tokens.shape[0]} "
                "sequence(s) in tokens; give one or the other"
            )
        check_sequences = tokens.shape[0]
    if check_sequences is None:
        check_sequences = 1
    cfg, _, _ = resolve_model_and_weights(model, seed, weights, need_weights=False)
    mapping.check_family(cfg)
    if seq_len is None:
        seq_len = tokens.shape[1] if tokens is not None else min(2048, cfg.n_positions)
    if not isinstance(seq_len, int) or not 1 <= seq_len <= cfg.n_positions:
        raise ConfigError(
            f"seq_len={seq_len!r} must be an integer in 1..{cfg.n_positions} "
            f"(n_positions of {cfg.name})"
        )
    if tokens is not None and tokens.shape[1] != seq_len:
        raise ConfigError(f"tokens have {tokens.shape[1]} positions but seq_len={seq_len}")

    t0 = time.perf_counter()
    if batch is None:
        batch = default_batch(cfg, arch_cfg, seq_len, precision, mapping)
    if check_sequences > batch:
        raise ConfigError(
            f"check_sequences={check_sequences} exceeds batch={batch}: the numerics check "
            "sequences of the simulated batch"
        )
    _check_host_memory(cfg, check_sequences, seq_len)
    if lowering_cache is not None:
        program = lowering_cache.lower(mapping, cfg, arch_cfg, batch, seq_len, precision)
    else:
        program = mapping.lower(cfg, arch_cfg, batch, seq_len, precision)
    wall["lowering"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    timing = backend(program, arch_cfg)
    wall["timing"] = time.perf_counter() - t0
    energy_rep = None
    if energy:
        t0 = time.perf_counter()
        energy_rep = energy_report(program, arch_cfg, timing)
        energy_sum = energy_rep.summary(batch * seq_len, program.flops, per_pe=per_pe_maps)
        power_map = energy_rep.pe_power_density_w_per_mm2() if per_pe_maps else None
        wall["energy"] = time.perf_counter() - t0

    numerics = _numerics(
        program,
        cfg,
        model,
        seed,
        weights,
        tokens,
        check_sequences,
        precision,
        reference,
        wall,
        mapping,
        allow_nonfinite,
    )
    logits = numerics.pop("_logits", None)
    health = numerics.pop("_health", {"status": "not_checked"})
    notices = [n for n in (health.get("notice"), numerics.pop("_notice", None)) if n]

    total = timing.total_s
    util, util_summary = metrics.pe_utilisation(timing, arch_cfg.pe.clock_hz)
    _, _, sram_max, sram_mean_active = metrics.map_summary(
        timing.pe_busy_cycles, timing.sram_peak_bytes
    )
    peak = arch_cfg.peak_flops_per_s(precision)
    flops = program.flops
    tokens_n = batch * seq_len
    rows, totals = metrics.breakdown(timing)
    fpt = forward_flops_per_token(cfg, seq_len)
    timeline = {
        "kernels": metrics.kernel_rows(program, timing),
        "io_blocks": [
            {"name": b.name, "block": b.block, "start_s": b.start_s, "end_s": b.end_s,
             "bytes": b.bytes}
            for b in timing.io_blocks
        ],
    }  # fmt: skip
    if energy_rep is not None:
        add_power_to_timeline(timeline, energy_rep)
    return Report(
        model=cfg.name,
        arch=arch_cfg.name,
        arch_config=arch_cfg.to_dict(),
        grid=[program.rows, program.cols],
        fidelity=fidelity,
        precision=precision,
        mapping=mapping.spec,
        batch=batch,
        seq_len=seq_len,
        micro_batches=program.workload.micro_batches,
        tokens=tokens_n,
        simulated_time_s=total,
        tokens_per_s=tokens_n / total,
        model_flops=flops,
        achieved_flops_per_s=flops / total,
        peak_flops_per_s=peak,
        mfu=metrics.mfu(flops, total, peak),
        pe_utilisation=util_summary,
        sram_peak_bytes={
            "max": sram_max,
            "mean_active": sram_mean_active,
            "capacity": arch_cfg.pe.sram_usable_bytes,
        },
        io_utilisation=metrics.io_utilisation(
            program.weight_bytes_streamed, total, arch_cfg.io.ingress_bytes_per_s
        ),
        breakdown=rows,
        totals=totals,
        roofline=metrics.roofline(program, arch_cfg, timing),
        numerics=numerics,
        layout={
            **program.layout.describe(),
            "model_flops_per_token": flops / tokens_n,
            "closed_form_flops_per_token": fpt["total"],
            "weights": numerics.get("weights", "not loaded (numerics skipped)"),
            "weight_bytes_streamed": program.weight_bytes_streamed,
            # a weight-streaming segment's distinct-weight entry rate (gpt_workload.mappings.weight_streaming.head_split)
            **(
                head_split_summary(cfg, arch_cfg, program.layout.pes_per_segment)
                if program.layout.pes_per_head is not None
                else {}
            ),
        },
        wall_s=wall,
        events=timing.events,
        timeline=timeline,
        energy=energy_sum if energy_rep is not None else {},
        pe_power_map=power_map if energy_rep is not None else None,
        pe_utilisation_map=util if per_pe_maps else None,
        sram_peak_map=timing.sram_peak_bytes if per_pe_maps else None,
        logits=logits if keep_logits else None,
        program=program,
        notices=notices,
        health=health,
    )


def _numerics(
    program: Program,
    cfg: GPTConfig,
    model,
    seed: int,
    weights,
    tokens,
    k_seq: int,
    precision: str,
    reference: bool,
    wall: dict,
    mapping: Mapping | None = None,
    allow_nonfinite: bool = False,
) -> dict:
    """Run the numerics (through ``mapping.numerics``: its own GEMM and attention order) and
    the reference; a dict for ``Report.numerics`` (with ``_logits``, ``_health`` and
    ``_notice`` for the caller to take out).

    Raises:
        NumericsError: non-finite logits and not ``allow_nonfinite``.
    """
    if k_seq == 0:
        return {"skipped": "check_sequences=0", "precision": precision, "check_sequences": 0}
    fp32_bytes = 4 * cfg.n_params
    if fp32_bytes > NUMERICS_MAX_WEIGHT_BYTES and weights is None:
        return {
            "skipped": f"fp32 weights of {cfg.name} need {fp32_bytes / 2**30:.1f} GiB of "
            f"host memory (limit {NUMERICS_MAX_WEIGHT_BYTES / 2**30:.0f} GiB); "
            "timing covers the full batch",
            "precision": precision,
            "check_sequences": 0,
        }
    t0 = time.perf_counter()
    cfg, w, wsrc = resolve_model_and_weights(
        cfg if isinstance(model, GPTConfig) else model, seed, weights
    )
    T = program.workload.seq_len
    if tokens is None:
        tokens = np.random.default_rng(seed + 1).integers(0, cfg.vocab_size, size=(k_seq, T))
    wall["weights"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # the health tracker reports them
        res = (mapping or parse_mapping("weight_streaming")).numerics(
            program, cfg, w, tokens, precision
        )
    wall["numerics"] = time.perf_counter() - t0
    out = {
        "precision": precision,
        "check_sequences": int(tokens.shape[0]),
        "unit_roundoff": unit_roundoff(precision),
        "loss": res.loss,
        "next_token_predictions": _predictions(res.predictions, res.logits),
        "kernels_run": res.kernels_run,
        "weights": wsrc,
        "_logits": res.logits,
    }
    finite = bool(np.isfinite(res.logits).all())
    if not finite:
        out["non_finite_logits"] = int((~np.isfinite(res.logits)).sum())
    if res.health is not None:
        if (not finite or res.health.internal_overflows()) and not allow_nonfinite:
            raise NumericsError(res.health.error_message("logits"))
        out["_health"] = res.health.outcome("logits", finite, allow_nonfinite)
    elif not finite and not allow_nonfinite:
        raise NumericsError(
            f"{precision} numerics: the logits are not finite; try another precision, or "
            "pass --allow-nonfinite (allow_nonfinite=True) to keep the report"
        )
    out["_notice"] = seeded_config_notice(model, wsrc)
    if reference:
        t0 = time.perf_counter()
        ref = reference_forward(cfg, w, tokens)
        wall["reference"] = time.perf_counter() - t0
        err = np.abs(res.logits.astype(np.float64) - ref)
        scale = float(np.abs(ref).max())
        out.update(
            {
                "reference_loss": cross_entropy(ref, tokens) if T > 1 else None,
                "max_abs_error_vs_reference": float(err.max()),
                "max_abs_reference_logit": scale,
                "max_rel_error_vs_reference": float(err.max() / scale) if scale else 0.0,
                "reference_predictions_agree": (
                    float((ref.argmax(-1) == res.predictions).mean()) if finite else math.nan
                ),
            }
        )
        rel = out["max_rel_error_vs_reference"]
        if finite and rel >= REFERENCE_MISMATCH_REL:
            out["_health"] = reference_mismatch(out.get("_health"), rel, precision)
    return out


#: relative logit error (``max |logit - reference| / max |reference logit|``) from which the
#: numerics are reported as disagreeing with the float64 reference; see
#: :func:`reference_mismatch`
REFERENCE_MISMATCH_REL = 0.5


def reference_mismatch(health: dict | None, rel: float, precision: str) -> dict:
    """The ``health`` block of a run whose logits are finite but disagree grossly with the
    float64 reference (``rel >= REFERENCE_MISMATCH_REL``): status ``reference_mismatch``
    (unless already worse than ``contained``) and a notice for the top of the report.

    The threshold is fixed, not derived from a rounding bound: worst-case bounds
    (``gamma_n = n u / (1 - n u)``, Higham 2002, ch. 3) pass 0.5 already at ``n = 86``
    bf16 roundings (``u = 2**-8``), so they cannot separate rounding from breakage. Measured
    healthy runs sit orders of magnitude below (README, "Numerical health"); an error of half
    the largest logit means the logits carry no information on the reference's scale: an
    overflow the checks did not see, or a kernel bug."""
    h = dict(health or {"status": "ok"})
    line = (
        f"{precision} numerics DISAGREE with the float64 reference: max |logit error| is "
        f"{rel:.2f} of max |logit| (threshold {REFERENCE_MISMATCH_REL}); the loss and "
        "predictions of this run are not to be trusted"
    )
    if h.get("status") in (None, "ok", "contained", "not_checked"):
        h["status"] = "reference_mismatch"
    h["reference_mismatch"] = True
    h["notice"] = line if not h.get("notice") else f"{line}; {h['notice']}"
    return h


def _predictions(pred: np.ndarray, logits: np.ndarray) -> list:
    """``pred [K, T]`` as lists, with NaN (``null`` in the JSON, listed under
    ``nonfinite_values``) where the position's logits are not all finite."""
    ok = np.isfinite(logits).all(-1)
    if ok.all():
        return pred.tolist()
    return np.where(ok, pred.astype(np.float64), np.nan).tolist()
