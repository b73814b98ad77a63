"""Scenario kinds of the validation table: their typed fields and how each one runs.

========== =================================================== ==================================
kind       fields (type, default)                              simulated value (units)
========== =================================================== ==================================
gemm       arch, m, k, n, mapping (summa), region ("RxC",      TFLOP/s of
           whole wafer), operands (resident), precision (fp32) :func:`~gpt_workload.kernel_scenario.gemm_scenario`
collective arch, collective (reduce), algorithm (chain), pes,  cycles of
           elements                                            :func:`~gpt_workload.kernel_scenario.collective_scenario`
fma_rate   arch, precision (fp16), elements                    elements/cycle of one PE's vector op
relay      arch, metric (cycles | cycles_per_wavelet |         cycles, cycles/wavelet (slope over
           cycles_per_hop), mode (router | pe), hops,          ``wavelets .. wavelets2``) or
           wavelets, hops2, wavelets2                          cycles/hop (slope over ``hops .. hops2``)
train      model, arch, batch, seq_len, precision (fp16),      samples/s of
           systems (1)                                         :func:`gpt_workload.training.train.train`
generate   model, arch, batch (1), precision (fp16)            tokens/s per request of
                                                               ``gpt_workload.generation.job.generate``
========== =================================================== ==================================

A scenario that the simulator cannot run yet (a model family ``train`` does not lower, no
``generate`` yet, a region the packet backend refuses) raises ConfigError / FitError from the
project's own code; :func:`gpt_workload.validation.table.validate` reports its message as the
row's reason. Nothing here special-cases a row: once ``train`` lowers GPT-J or ``generate``
exists, the same rows run.
"""

from __future__ import annotations

from gpt_workload.checks import check_int
from wse_sim.errors import ConfigError

_REQ = object()  # marks a required field

#: ``{kind: {field: (type, default or required)}}``
SCENARIO_FIELDS: dict[str, dict[str, tuple[type, object]]] = {
    "gemm": {
        "arch": (str, _REQ), "m": (int, _REQ), "k": (int, _REQ), "n": (int, _REQ),
        "mapping": (str, "summa"), "region": (str, ""), "operands": (str, "resident"),
        "precision": (str, "fp32"),
    },
    "collective": {
        "arch": (str, _REQ), "collective": (str, "reduce"), "algorithm": (str, "chain"),
        "pes": (int, _REQ), "elements": (int, _REQ),
    },
    "fma_rate": {"arch": (str, _REQ), "precision": (str, "fp16"), "elements": (int, _REQ)},
    "relay": {
        "arch": (str, _REQ), "metric": (str, "cycles"), "mode": (str, "router"),
        "hops": (int, _REQ), "wavelets": (int, _REQ), "hops2": (int, 0), "wavelets2": (int, 0),
    },
    "train": {
        "model": (str, _REQ), "arch": (str, _REQ), "batch": (int, _REQ), "seq_len": (int, _REQ),
        "precision": (str, "fp16"), "systems": (int, 1),
    },
    "generate": {
        "model": (str, _REQ), "arch": (str, _REQ), "batch": (int, 1), "precision": (str, "fp16"),
    },
}  # fmt: skip

RELAY_METRICS = {"cycles": "cycles", "cycles_per_wavelet": "cycles/wavelet",
                 "cycles_per_hop": "cycles/hop"}  # fmt: skip
#: units each kind produces (relay: by metric)
KIND_UNITS = {"gemm": "TFLOP/s", "collective": "cycles", "fma_rate": "elements/cycle",
              "train": "samples/s", "generate": "tokens/s"}  # fmt: skip


def _choices(kind: str, sc: dict) -> dict[str, tuple[str, ...]]:
    """The enumerated fields of a scenario kind and their allowed values."""
    from gpt_workload.kernel_scenario import OPERANDS
    from gpt_workload.mappings.gemm import GEMM_ALGORITHMS
    from wse_sim.fabric.collectives import ALGORITHMS, KINDS

    prec = ("fp32", "fp16", "bf16")
    if kind == "gemm":
        return {"mapping": GEMM_ALGORITHMS, "operands": OPERANDS, "precision": prec}
    if kind == "collective":
        algos = ALGORITHMS.get(sc["collective"], ())
        return {"collective": KINDS, **({"algorithm": algos} if algos else {})}
    if kind == "relay":
        return {"mode": ("router", "pe")}
    if kind in ("fma_rate", "train", "generate"):
        return {"precision": prec}
    return {}


def _typename(t: type) -> str:
    return {int: "an integer", str: "text", float: "a number"}[t]


def check_scenario(where: str, table: object, units: str) -> dict:
    """Check a row's ``scenario`` table; return it with the kind's defaults filled in.

    Raises:
        ConfigError: ``WHERE: scenario ...`` naming the field: not a table, missing or unknown
            kind, unknown field, wrong type, a missing required field, or units that are not
            what the kind produces.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: field scenario must be a table ([figure.scenario])")
    kind = table.get("kind")
    if kind not in SCENARIO_FIELDS:
        raise ConfigError(
            f"{where}: scenario field kind={kind!r} is not allowed; allowed: "
            f"{', '.join(SCENARIO_FIELDS)}"
        )
    spec = SCENARIO_FIELDS[kind]
    out: dict = {"kind": kind}
    for key, val in table.items():
        if key == "kind":
            continue
        if key not in spec:
            raise ConfigError(
                f"{where}: scenario field {key!r} is unknown for kind {kind}; allowed: "
                f"{', '.join(spec)}"
            )
        typ = spec[key][0]
        if isinstance(val, bool) or not isinstance(val, typ):
            raise ConfigError(f"{where}: scenario field {key}={val!r} must be {_typename(typ)}")
        if typ is int:
            val = check_int(f"{where}: scenario field {key}", val, 1)
        out[key] = val
    for key, (_typ, default) in spec.items():
        if key in out:
            continue
        if default is _REQ:
            raise ConfigError(f"{where}: scenario field {key!r} is missing (required for {kind})")
        out[key] = default
    for key, allowed in _choices(kind, out).items():
        if out[key] not in allowed:
            raise ConfigError(
                f"{where}: scenario field {key}={out[key]!r} is not allowed; allowed: "
                f"{', '.join(allowed)}"
            )
    if kind == "gemm" and out["region"]:
        from gpt_workload.kernel_scenario import parse_region

        try:
            parse_region(out["region"])
        except ConfigError:
            raise ConfigError(
                f"{where}: scenario field region={out['region']!r} is not allowed: expected "
                "ROWSxCOLS, two integers >= 1 (e.g. 750x750)"
            ) from None
    if kind == "relay":
        metric = out["metric"]
        if metric not in RELAY_METRICS:
            raise ConfigError(
                f"{where}: scenario field metric={metric!r} is not allowed; allowed: "
                f"{', '.join(RELAY_METRICS)}"
            )
        second = {"cycles_per_wavelet": "wavelets2", "cycles_per_hop": "hops2"}.get(metric)
        if second and not out[second]:
            raise ConfigError(f"{where}: scenario field {second!r} is missing (metric {metric})")
        want = RELAY_METRICS[metric]
    else:
        want = KIND_UNITS[kind]
    if units != want:
        raise ConfigError(f"{where}: field units={units!r} is not what a {kind} scenario gives ({want!r})")
    return out


def _decode_rate(sc: dict, fidelity: str) -> tuple[float, str]:
    """Decode tokens/s per request of :func:`gpt_workload.generation.job.generate` (the
    mean time per output token of the requests, inverted), and a detail string."""
    from gpt_workload.generation.job import generate

    rep = generate(sc["model"], sc["arch"], batch=sc["batch"], precision=sc["precision"],
                   fidelity=fidelity, placement="resident")  # fmt: skip
    agg = rep.generation["aggregate"]
    rate = agg["tokens_per_s_per_request"]
    if not rate:
        raise ConfigError("the generate scenario produced no decode step (new_tokens < 2)")
    return float(rate), f"TPOT {agg['mean_tpot_s'] * 1e6:.0f} us; TTFT {agg['mean_ttft_s'] * 1e3:.2f} ms"


def run_scenario(sc: dict, fidelity: str = "analytic") -> tuple[float, str]:
    """Run one scenario; return ``(simulated value in the kind's units, detail text)``.

    Args:
        sc: a checked scenario (:func:`check_scenario`).
        fidelity: the timing backend for GEMM, FMA and training scenarios (``analytic``,
            ``event``; ``packet`` where the region is small enough). Collectives use their
            closed form at ``analytic`` and the packet engine otherwise; relays always run on
            the packet engine (wavelet-exact, a few hundred PEs at most).

    Raises:
        ConfigError, FitError: the scenario cannot be expressed (the message says why).
    """
    from gpt_workload import kernel_scenario as ks

    kind = sc["kind"]
    if kind == "gemm":
        region = ks.parse_region(sc["region"]) if sc["region"] else None
        r = ks.gemm_scenario(
            sc["m"], sc["k"], sc["n"], arch=sc["arch"], mapping=sc["mapping"], region=region,
            operands=sc["operands"], precision=sc["precision"], fidelity=fidelity,
        )  # fmt: skip
        return r.tflops, (
            f"{r.cycles:,.0f} cycles; utilisation {r.utilisation:.1%} of the region's peak; "
            f"vector-op setup {r.overhead_cycles / r.compute_cycles:.1%} of compute"
        )
    if kind == "collective":
        fid = "analytic" if fidelity == "analytic" else "packet"
        r = ks.collective_scenario(
            sc["collective"], sc["algorithm"], sc["pes"], sc["elements"], arch=sc["arch"],
            fidelity=fid,
        )  # fmt: skip
        return r.cycles, f"{fid}; latency bound {r.latency_bound_cycles:,.0f} cycles"
    if kind == "fma_rate":
        r = ks.fma_rate_scenario(
            sc["elements"], arch=sc["arch"], precision=sc["precision"], fidelity=fidelity
        )
        return r.elements_per_cycle, f"{r.cycles:,.1f} cycles for {r.elements} elements"
    if kind == "relay":
        def cyc(h, b):
            return ks.relay_scenario(h, b, arch=sc["arch"], mode=sc["mode"]).cycles

        h, b = sc["hops"], sc["wavelets"]
        if sc["metric"] == "cycles":
            return cyc(h, b), f"{sc['mode']} relay, {h} hops x {b} wavelets"
        if sc["metric"] == "cycles_per_wavelet":
            b2 = sc["wavelets2"]
            if b2 == b:
                raise ConfigError("relay scenario: wavelets2 must differ from wavelets")
            return (cyc(h, b2) - cyc(h, b)) / (b2 - b), f"slope over {b}..{b2} wavelets, {h} hops"
        h2 = sc["hops2"]
        if h2 == h:
            raise ConfigError("relay scenario: hops2 must differ from hops")
        return (cyc(h2, b) - cyc(h, b)) / (h2 - h), f"slope over {h}..{h2} hops, {b} wavelets"
    if kind == "train":
        from gpt_workload.training.train import train

        rep = train(
            sc["model"], sc["arch"], batch=sc["batch"], seq_len=sc["seq_len"],
            precision=sc["precision"], systems=sc["systems"], fidelity=fidelity,
            numerics=False, check_sequences=0,
        )  # fmt: skip
        return rep.samples_per_s, f"step {rep.step_time_s:.3f} s; MFU {rep.mfu:.1%}"
    if kind == "generate":
        return _decode_rate(sc, fidelity)
    raise ConfigError(f"scenario kind {kind!r} unknown")  # pragma: no cover - checked on load
