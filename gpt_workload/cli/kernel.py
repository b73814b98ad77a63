"""``wse-sim kernel gemm|collective``: one bare GEMM or collective on a PE region, timed
(:mod:`gpt_workload.kernel_scenario`).

Errors are the project's (:class:`wse_sim.errors.WseSimError`): ``wse-sim``'s ``main`` prints
them as one line and exits 2.
"""

from __future__ import annotations

import argparse

from gpt_workload.cli.console import print_kv
from wse_sim.errors import ConfigError
from wse_sim.precision import PRECISIONS

__all__ = ["add_parser", "cmd_kernel_collective", "cmd_kernel_gemm"]


def add_parser(sub) -> None:
    """Add ``kernel gemm`` and ``kernel collective`` to the subcommands ``sub``."""
    k = sub.add_parser("kernel", help="one bare GEMM or collective on a PE region")
    ksub = k.add_subparsers(dest="kernel_cmd", required=True)
    g = ksub.add_parser("gemm", help="C[M,N] = A[M,K] B[K,N] under a GEMM mapping")
    g.add_argument("--m", type=int, required=True, help="rows of A and C")
    g.add_argument("--k", type=int, required=True, help="inner dimension")
    g.add_argument("--n", type=int, required=True, help="columns of B and C")
    g.add_argument("--arch", default="wse2", help="arch preset or TOML")
    g.add_argument(
        "--mapping", default="summa", help="summa, cannon, meshgemm, ws, row_1d or col_1d"
    )
    g.add_argument("--region", help="ROWSxCOLS of PEs (default: the whole wafer)")
    place = g.add_mutually_exclusive_group()
    place.add_argument("--resident", dest="operands", action="store_const", const="resident",
                       help="A and B already on the PEs (default)")  # fmt: skip
    place.add_argument("--streamed", dest="operands", action="store_const", const="streamed",
                       help="B streams in from MemoryX")  # fmt: skip
    g.set_defaults(operands="resident")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS, help="fp32, fp16 or bf16")
    g.add_argument("--fidelity", default="analytic", help="analytic, event or packet")
    g.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE", help="arch override")
    g.set_defaults(func=cmd_kernel_gemm)
    c = ksub.add_parser("collective", help="reduce / all-reduce / broadcast on a row of PEs")
    c.add_argument("--kind", default="reduce", help="reduce, allreduce or broadcast")
    c.add_argument(
        "--algorithm", default="chain", help="chain, tree (reduce), ring (allreduce), tree (broadcast)"
    )
    c.add_argument("--pes", type=int, required=True, help="PEs on the row")
    c.add_argument("--elements", type=int, required=True, help="fp32 elements per PE")
    c.add_argument("--arch", default="wse2", help="arch preset or TOML")
    c.add_argument("--fidelity", default="packet", help="packet (engine) or analytic (closed form)")
    c.add_argument("--set", action="append", metavar="LEVEL.FIELD=VALUE", help="arch override")
    c.set_defaults(func=cmd_kernel_collective)


def _overrides(args) -> list[str]:
    return list(args.set or [])


def cmd_kernel_gemm(args: argparse.Namespace) -> int:
    """``wse-sim kernel gemm``: time, TFLOP/s and utilisation of one GEMM."""
    from gpt_workload.kernel_scenario import gemm_scenario, parse_region

    region = parse_region(args.region) if args.region else None
    r = gemm_scenario(
        args.m, args.k, args.n, arch=args.arch, mapping=args.mapping, region=region,
        operands=args.operands, precision=args.precision, fidelity=args.fidelity,
        overrides=_overrides(args),
    )  # fmt: skip
    print_kv(
        f"GEMM {r.M} x {r.K} x {r.N} ({r.precision}, {r.operands}) by {r.mapping} on "
        f"{r.rows} x {r.cols} PEs of {r.arch} ({r.fidelity})",
        [
            ("time", f"{r.time_s * 1e3:.4g} ms ({r.cycles:,.0f} cycles)"),
            ("throughput", f"{r.tflops:.4g} TFLOP/s"),
            ("utilisation", f"{r.utilisation:.1%} of the region's {r.peak_flops_per_s / 1e12:.4g} TFLOP/s peak"),
            ("compute / PE", f"{r.compute_cycles:,.0f} cycles ({r.overhead_cycles:,.0f} vector-op setup)"),
            ("fabric", f"{r.fabric_cycles:,.0f} cycles busiest link group; latency {r.latency_cycles:,.0f}"),
            ("steps", f"{r.n_steps:,} (pipeline chunks)"),
            ("SRAM / PE", f"{r.sram_bytes:,} B"),
        ],
    )  # fmt: skip
    return 0


def cmd_kernel_collective(args: argparse.Namespace) -> int:
    """``wse-sim kernel collective``: cycles and link utilisation of one collective."""
    from gpt_workload.kernel_scenario import collective_scenario

    if args.fidelity not in ("packet", "analytic"):
        raise ConfigError(f"--fidelity {args.fidelity!r} is not allowed: expected packet or analytic")
    r = collective_scenario(
        args.kind, args.algorithm, args.pes, args.elements, arch=args.arch,
        fidelity=args.fidelity, overrides=_overrides(args),
    )  # fmt: skip

    def cyc(x):
        return "n/a" if x != x else f"{x:,.1f} cycles"

    print_kv(
        f"{r.kind} ({r.algorithm}) of {r.elements:,} fp32 per PE on a row of {r.pes} PEs of "
        f"{r.arch} ({r.fidelity})",
        [
            ("time", f"{r.cycles:,.1f} cycles = {r.time_s * 1e6:.4g} us"),
            ("closed form", cyc(r.closed_form_cycles)),
            ("[HPDC24] model", cyc(r.hpdc24_cycles) + " (T_R = 2, 1-cycle hops)"),
            ("latency bound", cyc(r.latency_bound_cycles)),
            ("utilisation", f"{r.link_utilisation:.1%} of one link (vector / time)"),
        ],
    )
    return 0
