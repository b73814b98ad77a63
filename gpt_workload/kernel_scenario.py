"""Bare kernel scenarios: one GEMM, one collective, one PE's vector op, one relay.

The building blocks the calibration figures of ``shared/reference/measured.md`` need
(``wse-sim kernel ...`` and :mod:`gpt_workload.validation`), each timed by the simulator's
own machinery, nothing re-derived here:

* :func:`gemm_scenario` -- ``C[M, N] = A[M, K] B[K, N]`` on a ``rows x cols`` PE region under
  one of the GEMM mappings of :mod:`gpt_workload.mappings.gemm` (``gemm_plan``: per-PE
  cost, transfers), lowered into a one-kernel :class:`wse_sim.program.Program` and timed by
  a timing backend (``analytic``, ``event``; ``packet`` on small regions). ``resident``
  operands are already on the PEs; ``streamed`` B arrives from MemoryX as one weight block.
* :func:`collective_scenario` -- reduce / all-reduce / broadcast of ``n`` fp32 per PE on a
  row of ``p`` PEs (:mod:`wse_sim.fabric.collectives`): the packet engine at ``packet``
  fidelity, its zero-load closed form at ``analytic`` (where one exists; the ring has its
  latency bound only, so it always runs on the engine).
* :func:`fma_rate_scenario` -- one PE running one SIMD vector op of ``L`` elements
  (``L / fmac_per_cycle`` busy cycles + ``vector_op_overhead_cycles``): elements per cycle.
* :func:`relay_scenario` -- ``B`` wavelets sent ``N`` hops along a row on the packet engine,
  router relay (cut-through, the link rate and hop latency) or PE relay (each of the ``N``
  PEs on the way receives the whole message and re-sends it).

Every function raises :class:`wse_sim.errors.ConfigError` on bad input (one line naming the
argument, the value and what is allowed) and :class:`wse_sim.errors.FitError` when the
operands do not fit the PEs' SRAM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from gpt_workload.checks import check_int
from wse_sim.arch import ArchConfig, load_arch
from wse_sim.errors import ConfigError, FitError
from wse_sim.program import Kernel, PEClass, Program, WeightBlock
from wse_sim.timing import get_backend

#: operand placements of :func:`gemm_scenario` (CLI ``--resident`` / ``--streamed``)
OPERANDS = ("resident", "streamed")


def _arch(arch: str | ArchConfig, overrides=()) -> ArchConfig:
    if isinstance(arch, ArchConfig):
        return arch.with_overrides(list(overrides)) if overrides else arch
    return load_arch(arch, list(overrides))


def _fidelity(fidelity: str) -> str:
    get_backend(fidelity)
    return fidelity


def _time(program: Program, arch: ArchConfig, fidelity: str):
    return get_backend(fidelity)(program, arch)


# ------------------------------------------------------------------------------- GEMM
@dataclass(frozen=True)
class GemmResult:
    """One GEMM on a PE region.

    Attributes:
        M, K, N, mapping, rows, cols, operands, precision, arch, fidelity: the inputs.
        time_s: simulated time; cycles: the same in PE cycles.
        flops: ``2 M K N``; tflops: ``flops / time_s / 1e12``.
        peak_flops_per_s: the region's peak (``rows x cols x 2 x fmac x clock``).
        utilisation: achieved / region peak.
        compute_cycles: busy + vector-op overhead cycles of the busiest PE;
        overhead_cycles: the overhead part; fabric_cycles: the busiest link group's
            serialisation; latency_cycles: pipeline-fill latency (all from
            :mod:`wse_sim.timing.common`).
        n_steps: algorithm steps (the kernel's pipeline chunks).
        sram_bytes: operand + buffer SRAM per PE.
    """

    M: int
    K: int
    N: int
    mapping: str
    rows: int
    cols: int
    operands: str
    precision: str
    arch: str
    fidelity: str
    time_s: float
    cycles: float
    flops: float
    tflops: float
    peak_flops_per_s: float
    utilisation: float
    compute_cycles: float
    overhead_cycles: float
    fabric_cycles: float
    latency_cycles: float
    n_steps: int
    sram_bytes: int

    def to_dict(self) -> dict:
        """Plain data (JSON / CSV row)."""
        return asdict(self)


def gemm_program(plan, precision: str, operands: str) -> Program:
    """A one-kernel :class:`Program` running ``plan`` (a
    :class:`gpt_workload.mappings.gemm.GemmPlan`) on its ``pr x pc`` region: one PE class
    with the busiest PE's cost (every PE of a divisible shape does the same work), the plan's
    transfers overlapped with compute over ``n_steps`` pipeline chunks (the algorithm's
    panels / shifts). ``streamed``: B's ``K x N`` elements form one weight block from
    MemoryX that the kernel consumes."""
    from gpt_workload.precision import bytes_per_element

    pr, pc = plan.pr, plan.pc
    cls = PEClass(0, pr * pc, plan.busy_cycles, plan.overhead_cycles, plan.flops)
    wbytes = int(plan.K * plan.N * bytes_per_element(precision)) if operands == "streamed" else 0
    kernel = Kernel(
        f"gemm.{plan.algorithm}",
        "gemm",
        0,
        0,
        (cls,),
        "block",
        plan.transfers,
        weight_block=0 if wbytes else -1,
        weight_bytes=wbytes,
        sram_bytes=plan.sram_bytes,
        flops=plan.flops_total,
        n_chunks=max(int(plan.n_steps), 1),
    )
    blocks = [WeightBlock(0, "B", wbytes)] if wbytes else []
    cmap = np.zeros((pr, pc), dtype=np.int16)
    prog = Program(
        f"gemm/{plan.algorithm}", pr, pc, precision, [kernel], blocks, {"block": cmap},
        {"systems": 1},
    )  # fmt: skip
    prog.validate()
    return prog


def parse_region(text: str) -> tuple[int, int]:
    """``"750x750"`` -> ``(750, 750)`` (rows x cols).

    Raises:
        ConfigError: not two positive integers joined by ``x``.
    """
    parts = str(text).lower().split("x")
    try:
        rows, cols = (int(p) for p in parts)
        if rows < 1 or cols < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--region {text!r} is not allowed: expected ROWSxCOLS, two integers >= 1 "
            "(e.g. 750x750)"
        ) from None
    return rows, cols


def gemm_scenario(
    M: int,
    K: int,
    N: int,
    *,
    arch: str | ArchConfig = "wse2",
    mapping: str = "summa",
    region: tuple[int, int] | None = None,
    operands: str = "resident",
    precision: str = "fp32",
    fidelity: str = "analytic",
    overrides=(),
) -> GemmResult:
    """Time ``C[M, N] = A[M, K] B[K, N]`` on a PE region.

    Args:
        M, K, N: GEMM shape.
        arch: preset name, TOML path or ArchConfig.
        mapping: a GEMM algorithm of :data:`gpt_workload.mappings.gemm.GEMM_ALGORITHMS`
            (``summa``, ``cannon``, ``meshgemm``, ``ws``, ``row_1d``, ``col_1d``).
        region: ``(rows, cols)`` of PEs; default the whole kernel region of ``arch``.
        operands: ``resident`` (A and B on the PEs) or ``streamed`` (B from MemoryX).
        precision: ``fp32``, ``fp16`` or ``bf16``.
        fidelity: ``analytic``, ``event`` or ``packet`` (packet: small regions only).
        overrides: ``level.field=value`` arch overrides.

    Raises:
        ConfigError: a bad argument, a region larger than the wafer.
        FitError: the operands and buffers of one PE exceed its usable SRAM.
    """
    from gpt_workload.mappings.gemm import gemm_plan
    from gpt_workload.precision import check_precision

    a = _arch(arch, overrides)
    check_precision(precision)
    _fidelity(fidelity)
    if operands not in OPERANDS:
        raise ConfigError(f"operands={operands!r} is not allowed; allowed: {', '.join(OPERANDS)}")
    rows, cols = region if region is not None else (a.wafer.rows, a.wafer.cols)
    rows = check_int("region rows", rows, 1, a.wafer.rows)
    cols = check_int("region cols", cols, 1, a.wafer.cols)
    M, K, N = (check_int(n, v, 1) for n, v in (("M", M), ("K", K), ("N", N)))
    plan = gemm_plan(
        mapping, M=M, K=K, N=N, pr=rows, pc=cols, precision=precision, arch=a,
        weights="resident" if operands == "resident" else "stream",
    )  # fmt: skip
    if plan.sram_bytes > a.pe.sram_usable_bytes:
        raise FitError(
            f"gemm {M}x{K}x{N} {mapping} on {rows}x{cols} PEs needs {plan.sram_bytes:,} B of "
            f"SRAM per PE; {a.name} has {a.pe.sram_usable_bytes:,} B usable: use more PEs"
        )
    prog = gemm_program(plan, precision, operands)
    res = _time(prog, a, fidelity)
    from wse_sim.timing.common import compute_cycles, fabric_cycles, latency_cycles

    k = prog.kernels[0]
    clk = a.pe.clock_hz
    peak = rows * cols * a.pe.flops_per_cycle(precision) * clk
    flops = plan.flops_total
    return GemmResult(
        M=M, K=K, N=N, mapping=mapping, rows=rows, cols=cols, operands=operands,
        precision=precision, arch=a.name, fidelity=fidelity, time_s=res.total_s,
        cycles=res.total_s * clk, flops=flops, tflops=flops / res.total_s / 1e12,
        peak_flops_per_s=peak, utilisation=flops / res.total_s / peak,
        compute_cycles=compute_cycles(k), overhead_cycles=plan.overhead_cycles,
        fabric_cycles=fabric_cycles(k, a), latency_cycles=latency_cycles(k, a),
        n_steps=int(plan.n_steps), sram_bytes=int(plan.sram_bytes),
    )  # fmt: skip


# ------------------------------------------------------------------------- collective
@dataclass(frozen=True)
class CollectiveScenarioResult:
    """One collective on a row of PEs.

    Attributes:
        kind, algorithm, pes, elements, arch, fidelity: the inputs (``elements`` fp32 per PE,
            one wavelet each).
        cycles: simulated cycles (packet engine, or the zero-load closed form at
            ``analytic``); time_s: ``cycles / clock``.
        closed_form_cycles: zero-load model with the arch's constants (NaN for the ring).
        hpdc24_cycles: the published [HPDC24] model with ``T_R = 2`` (NaN where it does not
            apply: ring, broadcast).
        latency_bound_cycles: no schedule of this algorithm can be faster
            (:func:`wse_sim.fabric.collectives.latency_bound_cycles`).
        link_utilisation: ``elements`` wavelets over ``cycles`` at the link rate (the share
            of one link's capacity the vector's serialisation needs).
    """

    kind: str
    algorithm: str
    pes: int
    elements: int
    arch: str
    fidelity: str
    cycles: float
    time_s: float
    closed_form_cycles: float
    hpdc24_cycles: float
    latency_bound_cycles: float
    link_utilisation: float

    def to_dict(self) -> dict:
        """Plain data (JSON / CSV row)."""
        return asdict(self)


def collective_scenario(
    kind: str,
    algorithm: str,
    pes: int,
    elements: int,
    *,
    arch: str | ArchConfig = "wse2",
    fidelity: str = "packet",
    packet_wavelets: int = 64,
    overrides=(),
) -> CollectiveScenarioResult:
    """Time a ``kind`` collective by ``algorithm`` over a row of ``pes`` PEs, ``elements``
    fp32 each, with ``arch``'s fabric constants.

    ``packet`` runs :func:`wse_sim.fabric.collectives.run_collective`; ``analytic`` (and
    ``event``, which has no collective model of its own) use
    :func:`wse_sim.fabric.collectives.closed_form_cycles`, falling back to the packet engine
    for the ring, which has no closed form.

    Raises:
        ConfigError: unknown kind / algorithm / fidelity, ``pes`` above the arch's columns,
            a non-positive size.
    """
    from wse_sim.fabric.collectives import (
        ALGORITHMS,
        KINDS,
        closed_form_cycles,
        hpdc24_model,
        latency_bound_cycles,
        run_collective,
    )
    from wse_sim.fabric.engine import PacketFabric
    from wse_sim.fabric.topology import Mesh

    a = _arch(arch, overrides)
    _fidelity(fidelity)
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is unknown; allowed: {', '.join(KINDS)}")
    if algorithm not in ALGORITHMS[kind]:
        raise ConfigError(
            f"{kind} algorithm={algorithm!r} is unknown; allowed: {', '.join(ALGORITHMS[kind])}"
        )
    p = check_int("pes", pes, 1, a.wafer.cols)
    n = check_int("elements", elements, 1)
    mesh = Mesh(1, p)
    fwd = a.fabric.pe_forward_latency_cycles
    eng = PacketFabric.from_arch(mesh, a.fabric, packet_wavelets=packet_wavelets)
    cf = closed_form_cycles(kind, algorithm, p, n, eng, fwd)
    if fidelity == "packet" or math.isnan(cf):
        res, _ = run_collective(kind, algorithm, "row", mesh, n, eng=eng, fwd_latency_cycles=fwd)
        cyc = res.time_cycles
    else:
        cyc = cf
    return CollectiveScenarioResult(
        kind=kind, algorithm=algorithm, pes=p, elements=n, arch=a.name, fidelity=fidelity,
        cycles=cyc, time_s=cyc / a.pe.clock_hz, closed_form_cycles=cf,
        hpdc24_cycles=hpdc24_model(kind, algorithm, p, n),
        latency_bound_cycles=latency_bound_cycles(kind, algorithm, p, n, eng, fwd),
        link_utilisation=(n / eng.link_rate) / cyc if cyc > 0 else 0.0,
    )  # fmt: skip


# ------------------------------------------------------------------------ vector op
@dataclass(frozen=True)
class FmaRateResult:
    """One PE running one SIMD FMA vector op.

    Attributes:
        elements, precision, arch, fidelity: the inputs.
        cycles: simulated cycles of the op (busy + setup overhead).
        elements_per_cycle: ``elements / cycles``.
        peak_elements_per_cycle: the arch's ``pe.fmac_<precision>_per_cycle``.
    """

    elements: int
    precision: str
    arch: str
    fidelity: str
    cycles: float
    elements_per_cycle: float
    peak_elements_per_cycle: float

    def to_dict(self) -> dict:
        """Plain data."""
        return asdict(self)


def fma_rate_scenario(
    elements: int,
    *,
    arch: str | ArchConfig = "wse3",
    precision: str = "fp16",
    fidelity: str = "analytic",
    overrides=(),
) -> FmaRateResult:
    """One FMA vector op ``y += a * x`` of ``elements`` on one PE (a 1 x 1 Program with one
    kernel: ``elements / fmac_per_cycle`` busy cycles and ``pe.vector_op_overhead_cycles``
    of setup, the lowering's PE cost model), timed by a backend.

    Raises:
        ConfigError: bad precision or fidelity, ``elements`` < 1.
        FitError: the two operand vectors exceed one PE's usable SRAM.
    """
    from gpt_workload.precision import bytes_per_element, check_precision

    a = _arch(arch, overrides)
    check_precision(precision)
    _fidelity(fidelity)
    L = check_int("elements", elements, 1)
    sram = 2 * L * bytes_per_element(precision)
    if sram > a.pe.sram_usable_bytes:
        raise FitError(
            f"elements={L}: x and y need {sram:,} B; one {a.name} PE has "
            f"{a.pe.sram_usable_bytes:,} B usable"
        )
    W = a.pe.fmac_per_cycle(precision)
    cls = PEClass(0, 1, L / W, float(a.pe.vector_op_overhead_cycles), 2.0 * L)
    k = Kernel("fma", "fma", 0, 0, (cls,), "pe", (), sram_bytes=sram, flops=2.0 * L, n_chunks=1)
    prog = Program("fma", 1, 1, precision, [k], [], {"pe": np.zeros((1, 1), np.int16)})
    prog.validate()
    cyc = _time(prog, a, fidelity).total_s * a.pe.clock_hz
    return FmaRateResult(L, precision, a.name, fidelity, cyc, L / cyc, W)


# ----------------------------------------------------------------------------- relay
@dataclass(frozen=True)
class RelayResult:
    """``wavelets`` sent over ``hops`` hops of a row.

    Attributes:
        hops, wavelets, mode, arch: the inputs (``mode`` ``router``: cut-through through the
            routers; ``pe``: every PE on the way receives the whole message and re-sends it).
        cycles: packet-engine cycles from the first send to the last wavelet's arrival.
    """

    hops: int
    wavelets: int
    mode: str
    arch: str
    cycles: float

    def to_dict(self) -> dict:
        """Plain data."""
        return asdict(self)


def relay_scenario(
    hops: int,
    wavelets: int,
    *,
    arch: str | ArchConfig = "wse3",
    mode: str = "router",
    packet_wavelets: int = 1,
    overrides=(),
) -> RelayResult:
    """Send ``wavelets`` 32-bit wavelets from PE 0 to PE ``hops`` of a ``1 x (hops + 1)`` row
    on the packet engine with ``arch``'s fabric constants (``packet_wavelets=1``:
    wavelet-exact, so no per-packet credit gap; larger packets run faster on the host but a
    packet that fills a router's buffer waits one hop latency for the credit).

    Raises:
        ConfigError: ``hops`` or ``wavelets`` < 1, ``hops`` above the arch's columns - 1, an
            unknown mode.
    """
    from wse_sim.fabric.dataflow import Dataflow
    from wse_sim.fabric.engine import PacketFabric
    from wse_sim.fabric.routing import RouteTable, xy_route
    from wse_sim.fabric.topology import Mesh

    a = _arch(arch, overrides)
    h = check_int("hops", hops, 1, a.wafer.cols - 1)
    B = check_int("wavelets", wavelets, 1)
    if mode not in ("router", "pe"):
        raise ConfigError(f"relay mode={mode!r} is unknown; allowed: router, pe")
    mesh = Mesh(1, h + 1)
    eng = PacketFabric.from_arch(mesh, a.fabric, packet_wavelets=packet_wavelets)
    table = RouteTable(mesh, eng.C)
    pool = list(range(eng.C))
    legs = [(0, h)] if mode == "router" else [(i, i + 1) for i in range(h)]
    routes = [table.allocate(xy_route(0, (0, s), (0, d)), pool) for s, d in legs]
    eng.install(table)
    flow = Dataflow(eng, a.fabric.pe_forward_latency_cycles)
    prev = None
    for (s, _d), r in zip(legs, routes):
        prev = flow.message((0, s), r.colour, B, whole=() if prev is None else (prev,))
    eng.run()
    got = flow.arrival(prev, (0, h))
    if got is None:  # pragma: no cover - an engine bug
        raise RuntimeError("relay message never arrived")
    return RelayResult(h, B, mode, a.name, float(got[1]))
