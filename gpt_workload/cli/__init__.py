"""The ``wse-sim`` command line, one module per command:

* ``run`` (:mod:`~gpt_workload.cli.run`), ``train`` (:mod:`~gpt_workload.cli.train`),
  ``generate`` (:mod:`~gpt_workload.cli.generate`), ``sweep`` (:mod:`~gpt_workload.cli.sweep`),
  ``plot`` (:mod:`~gpt_workload.cli.plot`), ``validate`` (:mod:`~gpt_workload.cli.validate`),
  ``kernel gemm|collective`` (:mod:`~gpt_workload.cli.kernel`), ``arch list|show``,
  ``models list`` and ``mappings list`` (:mod:`~gpt_workload.cli.listing`);
* :mod:`~gpt_workload.cli.console`: the console and output-path helpers they share (public).

This module wires the parser (:func:`build_parser`) and holds :func:`main`, the console
script's entry point (also ``python -m gpt_workload.cli``). No module outside this package
imports it.

Every user error (:class:`wse_sim.errors.WseSimError`, bad files) prints one line
``wse-sim: error: ...`` on stderr and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from wse_sim.errors import WseSimError

__all__ = ["build_parser", "main"]

log = logging.getLogger("wse_sim")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error (unknown option, ``--batch abc``, a missing value) is one
    line ``wse-sim CMD: error: ...`` on stderr and exit status 2, without the usage block,
    like every other error of the command line. Subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``wse-sim``: every command module registers its subcommand."""
    from gpt_workload.cli import generate, kernel, listing, plot, run, sweep, train, validate

    p = _OneLineParser(
        prog="wse-sim",
        description=("Simulate GPT models on a wafer-scale engine (Cerebras WSE class)."),
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = p.add_subparsers(dest="cmd")
    run.add_parser(sub)
    train.add_parser(sub)
    generate.add_parser(sub)
    sweep.add_parser(sub)
    plot.add_parser(sub)
    validate.add_parser(sub)
    kernel.add_parser(sub)
    listing.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wse-sim`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except WseSimError as exc:
        print(f"wse-sim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wse-sim: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            "wse-sim: error: out of host memory; lower --check-sequences or use "
            "--check-sequences 0",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as exc:
        print("wse-sim: interrupted" + (f": {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
