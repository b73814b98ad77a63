"""Numerical health of a job: where a stored value first leaves its format's range or turns
non-finite.

A :class:`HealthTracker` is handed every tensor an executor stores (the forward numerics of
:mod:`gpt_workload.numerics` and the mappings, training's forward and backward in
:mod:`gpt_workload.training.backward_graph`; decode can use the same object) at op granularity:
one cheap test per op output (a float32 sum, exact when finite; the element-wise search runs
only when it is not), never inside a kernel's inner loop. It keeps

* the **first event** of each phase (``forward``, ``backward``, ``decode``; ``weights`` for
  parameters that do not fit the format): op, layer, position (sequence, token, feature for
  activations; the array index for weights), the kind and the offending value;
* how many tensors were checked and how many held non-finite values.

Kinds of event:

* ``overflow``: a finite fp32 value whose magnitude rounds to +-inf when stored in the
  format (:data:`OVERFLOW_AT`: ``|x| >= 65520`` for fp16, where the largest finite value is
  65504; ``|x| >= (2 - 2**-8) 2**127`` for bf16); reported with ``value = |x|``;
* ``inf`` / ``nan``: the op's fp32 arithmetic itself produced +-inf or NaN (for example
  ``inf - inf`` downstream of an overflow);
* ``internal_overflow``: a reduction *inside* an op can pass fp32's range although the op's
  input and its stored output are finite (:meth:`HealthTracker.check_norm_input`: a
  LayerNorm/RMSNorm's sum of squares, whose ``inf`` turns the normalised row into ``b``;
  :meth:`HealthTracker.check_scores`: an attention score ``q . k`` whose ``-inf`` silently
  masks a key). Checked on the op's input, at op granularity, in float64 NumPy, before the
  kernel runs; reported with ``value`` = the magnitude the reduction reaches. A GEMM's
  accumulator needs no such check: an overflowed accumulator stays inf (or NaN) and shows
  in the stored output; GELU's ``x^3`` and softmax's ``exp`` after max-subtraction saturate
  to the right value.

The run decides what is an error (:meth:`HealthTracker.error_message`): ``simulate()`` stops
when the logits are not finite or an op overflowed inside (``internal_overflow``), ``train()``
when a step's forward loss is not finite or its forward had an ``internal_overflow`` (an
overflowing *gradient* is loss scaling's job: the step is skipped and counted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from gpt_workload.precision import Precision, check_precision, round_storage

#: largest finite value of each storage format (IEEE 754 binary16 ``(2 - 2**-10) 2**15``,
#: bfloat16 ``(2 - 2**-7) 2**127``, binary32 ``(2 - 2**-23) 2**127``)
FORMAT_MAX: dict[str, float] = {p.value: p.max_finite for p in Precision}
#: smallest magnitude that rounds to +-inf when stored (round to nearest, ties to even:
#: halfway between :data:`FORMAT_MAX` and the next power of two, where the tie goes to inf
#: because FORMAT_MAX's significand is odd); no finite float32 overflows fp32 storage
OVERFLOW_AT: dict[str, float] = {
    p.value: math.inf if p is Precision.FP32 else p.overflow_threshold for p in Precision
}
#: smallest magnitude an fp32 operation rounds to +-inf (``(2 - 2**-24) 2**127``): the limit
#: of every accumulation, whatever the storage format (fp32 arithmetic throughout)
FP32_OVERFLOW_AT: float = Precision.FP32.overflow_threshold

PHASES = ("weights", "forward", "backward", "decode")

#: ``locate(idx, shape)`` maps the indices of the non-finite elements (``np.nonzero`` of an
#: array of ``shape``) to ``(sequence, token, feature)`` arrays; see :func:`tile_locator`,
#: :func:`rows_locator`, :func:`dense_locator`
Locator = Callable[
    [tuple[np.ndarray, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray, np.ndarray]
]


def tile_locator(segs_per_seq: int, m: int, seq_len: int) -> Locator:
    """Locator of a tile array ``[S, P, m, ft]``
    (:class:`gpt_workload.mappings.weight_streaming.layout.TileLayout`):
    segment ``s`` is segment ``s % segs_per_seq`` of sequence ``s // segs_per_seq``; PE
    ``j`` holds features ``j ft .. (j + 1) ft - 1``. Padded token slots map to tokens
    ``>= seq_len`` and rank after every real token."""

    def locate(idx, shape):
        s, j, t, f = idx
        return s // segs_per_seq, (s % segs_per_seq) * m + t, j * shape[3] + f

    return locate


def rows_locator(seq_len: int) -> Locator:
    """Locator of a token-major 2-D array ``[B*T, F]`` (row ``b T + t``) or ``[B*T]``."""

    def locate(idx, shape):
        r = idx[0]
        f = idx[1] if len(idx) > 1 else np.zeros_like(r)
        return r // seq_len, r % seq_len, f

    return locate


def dense_locator(idx, shape):
    """Locator of a dense ``[K, T, F]`` (or ``[K, T]``) array."""
    f = idx[2] if len(idx) > 2 else np.zeros_like(idx[0])
    return idx[0], idx[1], f


@dataclass(frozen=True)
class HealthEvent:
    """The first place a tensor of one phase left the format's range or turned non-finite.

    Attributes:
        phase: ``weights``, ``forward``, ``backward`` or ``decode``.
        op: the op whose stored output it is (a weight's HF name for phase ``weights``).
        layer: transformer layer (0-based) or None (embedding, final LayerNorm, LM head).
        precision: storage format of the run.
        kind: ``overflow``, ``inf`` or ``nan`` (module docstring).
        position: ``{"sequence", "token", "feature"}`` of the earliest non-finite element in
            (sequence, token, feature) order, or ``{"index": [...]}`` for a weight or an
            array without a locator.
        value: ``|x|`` before storing for ``overflow``; None otherwise.
        count, size: non-finite elements of the tensor, and its elements (for
            ``internal_overflow``: the rows whose reduction overflows, and the rows).
        reduction: for ``internal_overflow``, what overflowed (``"sum of squares over 64
            features"``); None otherwise.
    """

    phase: str
    op: str
    layer: int | None
    precision: str
    kind: str
    position: dict
    value: float | None
    count: int
    size: int
    reduction: str | None = None

    def describe(self) -> str:
        """One phrase: ``op ffn_up of layer 0 (forward), sequence 0 token 3 feature 17:
        |x| = 1.2e+05 rounds to inf in fp16 (largest 65504); 4096 of 4096 values``."""
        layer = f" of layer {self.layer}" if self.layer is not None else ""
        where = "weight" if self.phase == "weights" else "op"
        phase = "" if self.phase == "weights" else f" ({self.phase})"
        pos = self.position
        at = (
            f"sequence {pos['sequence']} token {pos['token']} feature {pos['feature']}"
            if "sequence" in pos
            else f"index {pos['index']}"
        )
        if self.kind == "overflow":
            sym = "|w|" if self.phase == "weights" else "|x|"
            what = (
                f"{sym} = {self.value:.3g} rounds to inf in {self.precision} (largest "
                f"{FORMAT_MAX[self.precision]:.6g})"
            )
        elif self.kind == "internal_overflow":
            return (
                f"{where} {self.op}{layer}{phase}, {at}: its {self.reduction} reaches "
                f"{self.value:.3g}, beyond fp32's {FORMAT_MAX['fp32']:.3g}: the op's fp32 "
                f"arithmetic overflows inside it while its stored output stays finite (and "
                f"wrong); {self.count} of {self.size} rows"
            )
        else:
            what = f"fp32 arithmetic gave {self.kind}"
        return (
            f"{where} {self.op}{layer}{phase}, {at}: {what}; "
            f"{self.count} of {self.size} values not finite"
        )


class HealthTracker:
    """Collects the first out-of-range / non-finite event of each phase of one job.

    Args:
        precision: the storage format (``fp32``, ``fp16``, ``bf16``).
        phase: the phase of the next checks (set :attr:`phase` as the job moves on).

    Attributes:
        first: ``{phase: HealthEvent}``, the first event of each phase that had one.
        checked, nonfinite: tensors checked, and tensors that held non-finite values
            (``nonfinite_by_phase``: the latter per phase); ``internal_by_phase``: ops per
            phase whose internal fp32 reduction overflowed (:meth:`internal_overflows`).

    Raises:
        ConfigError: unknown precision.
    """

    def __init__(self, precision: str, phase: str = "forward") -> None:
        self.precision = check_precision(precision)
        self.phase = phase
        self.first: dict[str, HealthEvent] = {}
        self.checked = 0
        self.nonfinite = 0
        self.nonfinite_by_phase: dict[str, int] = {}
        self.internal_by_phase: dict[str, int] = {}

    # ------------------------------------------------------------------ checks
    def store(
        self, op: str, layer: int | None, raw: np.ndarray, locate: Locator | None = None
    ) -> np.ndarray:
        """``raw`` rounded to the storage format (:func:`round_storage`, a new float32 array),
        checked as op ``op``'s stored output; values that overflow on storing are reported
        as ``overflow`` with their fp32 magnitude."""
        out = round_storage(raw, self.precision)
        self.check(op, layer, out, locate, raw=raw)
        return out

    def check(
        self,
        op: str,
        layer: int | None,
        stored: np.ndarray,
        locate: Locator | None = None,
        raw: np.ndarray | None = None,
    ) -> bool:
        """Check one stored tensor; True when every element is finite.

        The fast path is one float32 sum (NaN or inf iff an element is, unless finite values
        overflow the sum, which the exact test below then clears)."""
        self.checked += 1
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(float(np.sum(stored, dtype=np.float32))):
                return True
        bad = ~np.isfinite(stored)
        if not bad.any():
            return True
        self._count(self.phase)
        if self.phase not in self.first:
            self.first[self.phase] = self._event(op, layer, stored, bad, locate, raw)
        return False

    def check_weights(self, weights) -> bool:
        """Check that every parameter of a :class:`gpt_workload.weights.GPTWeights` fits the
        storage format (``|w| < OVERFLOW_AT``); the first one that does not is the
        ``weights`` event (named by its HF tensor name). True when all fit."""
        lim = OVERFLOW_AT[self.precision]
        ok = True
        for name, a in weights.named_arrays():
            self.checked += 1
            if a.size == 0 or float(np.max(np.abs(a))) < lim:
                continue
            ok = False
            self._count("weights")
            if "weights" in self.first:
                continue
            over = np.abs(a) >= lim
            idx = np.unravel_index(int(np.argmax(over)), a.shape)
            layer = int(name.split(".")[1]) if name.startswith("h.") else None
            self.first["weights"] = HealthEvent(
                "weights", name, layer, self.precision, "overflow",
                {"index": [int(i) for i in idx]}, float(abs(a[idx])), int(over.sum()), a.size,
            )  # fmt: skip
        return ok

    def check_norm_input(
        self,
        op: str,
        layer: int | None,
        x: np.ndarray,
        feature_axes: tuple[int, ...],
        locate: Locator | None = None,
        centered: bool = True,
    ) -> bool:
        """Check that a LayerNorm (``centered``) or RMSNorm's fp32 reductions over the
        ``feature_axes`` of its input ``x`` stay below :data:`FP32_OVERFLOW_AT` in every row:
        the sum ``sum x`` (of ``|x|``, which bounds every partial sum) and the sum of squares
        ``sum (x - mean)^2`` (``sum x^2`` for RMSNorm), computed in float64. Past it the
        kernel's variance is inf, ``1 / sqrt(var)`` is 0 and the row comes out as ``b``:
        finite and wrong. The first offending row is an ``internal_overflow`` event (feature:
        the row's largest ``|x|``). Fast path: one ``max |x|`` when ``F (2 max|x|)^2`` is
        below the limit. True when no row overflows (or ``x`` is not finite, which the op
        that stored it already reported)."""
        self.checked += 1
        if x.size == 0:
            return True
        amax = float(np.max(np.abs(x)))
        F = int(np.prod([x.shape[a] for a in feature_axes]))
        if not math.isfinite(amax) or F * (2.0 * amax) ** 2 < FP32_OVERFLOW_AT:
            return True
        x64 = x.astype(np.float64)
        s_abs = np.abs(x64).sum(axis=feature_axes, keepdims=True)
        dev = x64 - x64.sum(axis=feature_axes, keepdims=True) / F if centered else x64
        s2 = (dev * dev).sum(axis=feature_axes, keepdims=True)
        reach = np.maximum(s2, s_abs) if centered else s2
        bad_row = reach >= FP32_OVERFLOW_AT
        if not bad_row.any():
            return True
        a = np.abs(x64)
        bad = bad_row & (a == a.max(axis=feature_axes, keepdims=True))
        what = "sum of squares" if not centered or s2.max() >= s_abs.max() else "sum"
        red = f"{what} over {F} features"
        return self._internal(op, layer, bad, np.broadcast_to(reach, x.shape), locate,
                              int(bad_row.sum()), int(bad_row.size), red)  # fmt: skip

    def check_scores(
        self, op: str, layer: int | None, q: np.ndarray, k: np.ndarray, seq_len: int
    ) -> bool:
        """Check that causal attention's fp32 scores ``q_t . k_s`` (``s <= t < seq_len``) of
        ``q, k [sequences, heads, tokens, d_head]`` stay below :data:`FP32_OVERFLOW_AT`,
        bounding every partial sum by ``sum_e |q_te| |k_se|`` (float64). Past it a score is
        +-inf: ``-inf`` masks the key silently, ``+inf`` gives NaN after max-subtraction. The
        first offending query is an ``internal_overflow`` event (token: the query; feature:
        the first feature of its head, ``head * d_head``). Fast path: ``d_head max|q|
        max|k|`` below the limit. True when no score can overflow."""
        self.checked += 1
        if q.size == 0:
            return True
        aq, ak = float(np.max(np.abs(q))), float(np.max(np.abs(k)))
        dh = q.shape[-1]
        if not (math.isfinite(aq) and math.isfinite(ak)) or dh * aq * ak < FP32_OVERFLOW_AT:
            return True
        qa = np.abs(q[:, :, :seq_len].astype(np.float64))
        ka = np.abs(k[:, :, :seq_len].astype(np.float64))
        bound = np.einsum("bhte,bhse->bhts", qa, ka)
        bound[..., np.triu(np.ones((seq_len, seq_len), dtype=bool), k=1)] = 0.0
        reach = bound.max(-1)  # [b, h, t]
        bad = reach >= FP32_OVERFLOW_AT
        if not bad.any():
            return True

        def locate(idx, shape):
            return idx[0], idx[2], idx[1] * dh

        return self._internal(op, layer, bad, reach, locate, int(bad.sum()), int(bad.size),
                              f"QK^T score over {dh} head features")  # fmt: skip

    def _internal(self, op, layer, bad, reach, locate, count, size, reduction) -> bool:
        self.internal_by_phase[self.phase] = self.internal_by_phase.get(self.phase, 0) + 1
        if self.phase in self.first:
            return False
        ev = self._event(op, layer, bad, bad, locate, None)
        at = self._first_index(bad, locate)
        self.first[self.phase] = HealthEvent(
            self.phase, op, layer, self.precision, "internal_overflow", ev.position,
            float(reach[at]), count, size, reduction,
        )  # fmt: skip
        return False

    @staticmethod
    def _first_index(bad, locate) -> tuple[int, ...]:
        idx = np.nonzero(bad)
        if locate is None:
            return tuple(int(i[0]) for i in idx)
        seq, tok, feat = (np.asarray(v) for v in locate(idx, bad.shape))
        k = int(np.lexsort((feat, tok, seq))[0])
        return tuple(int(i[k]) for i in idx)

    def internal_overflows(self, phases: tuple[str, ...] | None = None) -> int:
        """Ops (of ``phases``, if given) whose internal reduction overflowed fp32."""
        return sum(n for p, n in self.internal_by_phase.items()
                   if phases is None or p in phases)  # fmt: skip

    def _count(self, phase: str) -> None:
        self.nonfinite += 1
        self.nonfinite_by_phase[phase] = self.nonfinite_by_phase.get(phase, 0) + 1

    def _event(self, op, layer, stored, bad, locate, raw) -> HealthEvent:
        idx = np.nonzero(bad)
        if locate is not None:
            seq, tok, feat = (np.asarray(v) for v in locate(idx, stored.shape))
            k = int(np.lexsort((feat, tok, seq))[0])
            position = {"sequence": int(seq[k]), "token": int(tok[k]), "feature": int(feat[k])}
        else:
            k = 0
            position = {"index": [int(i[0]) for i in idx]}
        at = tuple(int(i[k]) for i in idx)
        v = float(stored[at])
        r = float(raw[at]) if raw is not None else v
        if math.isfinite(r):
            kind, value = "overflow", abs(r)
        else:
            kind, value = ("nan" if math.isnan(v) else "inf"), None
        return HealthEvent(
            self.phase, op, layer, self.precision, kind, position, value, int(bad.sum()),
            int(stored.size),
        )  # fmt: skip

    # ------------------------------------------------------------------ results
    @property
    def earliest(self) -> HealthEvent | None:
        """The first event in phase order (weights, forward, backward, decode), or None."""
        for p in PHASES:
            if p in self.first:
                return self.first[p]
        return next(iter(self.first.values()), None)

    def summary(self, phases: tuple[str, ...] | None = None) -> dict:
        """JSON-ready: ``{"precision", "tensors_checked", "tensors_nonfinite", "first":
        {phase: event dict}}``, restricted to ``phases`` if given."""
        keep = self.first if phases is None else {p: self.first[p] for p in phases
                                                  if p in self.first}  # fmt: skip
        n = self.nonfinite if phases is None else sum(
            self.nonfinite_by_phase.get(p, 0) for p in phases
        )
        return {
            "precision": self.precision,
            "tensors_checked": self.checked,
            "tensors_nonfinite": n,
            "ops_overflowed_internally": self.internal_overflows(phases),
            "first": {p: asdict(e) for p, e in keep.items()},
        }

    def outcome(
        self,
        what: str,
        outputs_finite: bool,
        allow_nonfinite: bool,
        phases: tuple[str, ...] | None = None,
    ) -> dict:
        """The run's ``health`` block: :meth:`summary` plus ``status`` (``ok``: every checked
        tensor finite and in range; ``contained``: some were not, but the ``what`` (the
        checked outputs) are finite; ``nonfinite_allowed``: the outputs are not finite and
        the user kept going; ``overflow_allowed``: the outputs are finite but an op
        overflowed inside (``internal_overflow``), so they are wrong, and the user kept
        going), ``outputs_finite``, ``allow_nonfinite`` and ``notice`` (one
        line for the top of the report, or None when the status is ``ok``). ``phases``
        restricts it to those phases (training leaves ``backward`` to loss scaling)."""
        summary = self.summary(phases)
        first = self.describe_first(phases)
        if not outputs_finite:
            status = "nonfinite_allowed"
            notice = (
                f"NON-FINITE {what.upper()} kept by --allow-nonfinite: {self.precision} "
                f"numerics, first: {first}; numbers derived from them are null in the JSON"
            )
        elif summary["ops_overflowed_internally"]:
            status = "overflow_allowed"
            notice = (
                f"WRONG {what.upper()} kept by --allow-nonfinite: {self.precision} numerics, "
                f"an op overflowed fp32 inside it; first: {first}; the {what} {_are(what)} "
                "finite but numbers derived from them are not to be trusted"
            )
        elif summary["tensors_nonfinite"]:
            status = "contained"
            notice = (
                f"{self.precision} numerics: {summary['tensors_nonfinite']} stored tensor(s) "
                f"left the format's range but the {what} {_are(what)} finite; first: {first}"
            )
        else:
            status, notice = "ok", None
        return {
            "status": status,
            "outputs_finite": bool(outputs_finite),
            "allow_nonfinite": bool(allow_nonfinite),
            **summary,
            "notice": notice,
        }

    def describe_first(self, phases: tuple[str, ...] | None = None) -> str:
        """The first event of each phase (of ``phases``, if given), in phase order, as one
        phrase."""
        evs = [self.first[p] for p in PHASES if p in self.first]
        evs += [e for p, e in self.first.items() if p not in PHASES]
        if phases is not None:
            evs = [e for e in evs if e.phase in phases]
        if not evs:
            return "no stored tensor was out of range"
        return "; then ".join(e.describe() for e in evs)

    def error_message(self, what: str, phases: tuple[str, ...] | None = None) -> str:
        """The one-line error for a run whose ``what`` (e.g. ``"logits"``) are not finite, or
        are finite but wrong because an op overflowed inside (:meth:`internal_overflows`):
        names the first event of each phase (op, layer, position, precision) and what to
        try."""
        internal = self.internal_overflows(phases)
        state = (
            f"{_are(what)} wrong: an op's fp32 arithmetic overflowed inside it"
            if internal
            else f"{_are(what)} not finite"
        )
        todo = (
            "every precision accumulates in fp32, so another --precision does not help: "
            "check the weights and inputs"
            if internal
            else suggestion(self.precision)
        )
        return (
            f"{self.precision} numerics: the {what} {state} (first: "
            f"{self.describe_first(phases)}); "
            f"{todo}; or pass --allow-nonfinite (allow_nonfinite=True) "
            "to keep the report"
        )


def check_op_input(
    health: HealthTracker | None,
    op: str,
    layer: int | None,
    x: np.ndarray,
    seq_len: int,
    n_head: int | None = None,
) -> None:
    """Check a token-major input ``x [B*T, F]`` for fp32 overflow inside op ``op`` (no-op
    when ``health`` is None): attention's scores when ``n_head`` is given (``x`` is then
    ``qkv [B*T, 3 d]``, ``[q | k | v]`` with heads in order,
    :meth:`HealthTracker.check_scores`), else a LayerNorm's reductions over the features
    (:meth:`HealthTracker.check_norm_input`)."""
    if health is None:
        return
    if n_head is None:
        health.check_norm_input(op, layer, x, (1,), rows_locator(seq_len))
        return
    a = x.reshape(-1, seq_len, 3, n_head, x.shape[1] // (3 * n_head)).transpose(2, 0, 3, 1, 4)
    health.check_scores(op, layer, a[0], a[1], seq_len)


def _are(what: str) -> str:
    return "are" if what.endswith("s") and not what.endswith("ss") else "is"


def suggestion(precision: str | Precision) -> str:
    """What to try when ``precision`` overflows."""
    precision = Precision.parse(precision)
    if precision is Precision.FP16:
        return (
            "try --precision bf16 (2 bytes, range to 3.4e38) or fp32, or scale the weights "
            "down; in training, loss scaling handles gradient overflow but not a forward one"
        )
    if precision is Precision.BF16:
        return "try --precision fp32, or check the weights and inputs"
    return "the values overflow even fp32: check the weights and inputs"
