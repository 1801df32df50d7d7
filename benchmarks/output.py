"""Where a benchmark writes: the one rule every script in ``benchmarks/`` follows.

``benchmarks/results/`` holds the committed figures README.md and docs/ are generated from (and the
fast tier checks), so a quick or ad-hoc run must not replace them. A script therefore writes

* to ``--out PATH`` when given (``--out benchmarks/results/...`` records on purpose);
* to ``benchmarks/results/<relative>`` with ``--record`` (refused together with ``--quick``: a
  smoke run's numbers are not results);
* otherwise to ``<scratch>/<relative>``, ``$LOPT_BENCHMARK_SCRATCH`` or
  ``<tmp>/lopt-benchmarks``, outside the checkout.

Usage::

    output.add_arguments(parser)
    args = parser.parse_args(argv)
    out = output.resolve(args, "paper")         # a folder, or "jit_cache.json" for a file
"""

from __future__ import annotations

import argparse
import os
import tempfile

from benchmarks.provenance import ROOT

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SCRATCH_ENV = "LOPT_BENCHMARK_SCRATCH"


def scratch() -> str:
    """The default output root of unrecorded runs (outside the checkout)."""
    return os.environ.get(SCRATCH_ENV) or os.path.join(tempfile.gettempdir(), "lopt-benchmarks")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out`` (default: scratch) and ``--record`` (write into ``benchmarks/results/``)."""
    parser.add_argument(
        "--out",
        default=None,
        help=f"output path (default: under ${SCRATCH_ENV} or {scratch()}; "
        "benchmarks/results/ only with --record or an explicit --out there)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="write into benchmarks/results/, replacing the committed figures",
    )


def resolve(args: argparse.Namespace, relative: str) -> str:
    """The output path of this run: ``args.out``, or ``relative`` under results or scratch.

    Raises ``SystemExit`` (one line) for ``--record`` with ``--quick`` or with ``--out``.
    """
    record = getattr(args, "record", False)
    if record and getattr(args, "quick", False):
        raise SystemExit("--record with --quick: a smoke run is not recorded; drop one of them")
    if record and args.out is not None:
        raise SystemExit("--record writes to benchmarks/results/; drop --out, or drop --record")
    if args.out is not None:
        return args.out
    path = os.path.join(RESULTS if record else scratch(), relative)
    print(f"writing to {path}" + ("" if record else " (scratch; --record to keep it)"), flush=True)
    return path
