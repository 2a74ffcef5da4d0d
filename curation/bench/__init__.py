"""Benchmarks behind `python -m curation bench KIND` (one module per kind).

``BENCHES`` maps a kind to the function that runs it from parsed CLI arguments and returns
the exit code. Entries import their module lazily, so building the CLI parser stays cheap
(no torch import). A new kind (e.g. "quality") is one module plus one entry here.
"""

from __future__ import annotations

import argparse
from typing import Callable

Bench = Callable[[argparse.Namespace], int]


def _speed(args: argparse.Namespace) -> int:
    from curation.bench.speed import main
    return main(args)


def _quality(args: argparse.Namespace) -> int:
    from curation.bench.quality import main
    return main(args)


def _diagnose(args: argparse.Namespace) -> int:
    from curation.bench.diagnose import main
    return main(args)


def _fidelity(args: argparse.Namespace) -> int:
    from curation.bench.fidelity import main
    return main(args)


def _ui(args: argparse.Namespace) -> int:
    from curation.bench.ui import main
    return main(args)


def _reliability(args: argparse.Namespace) -> int:
    from curation.bench.reliability import main
    return main(args)


def _peers(args: argparse.Namespace) -> int:
    from curation.bench.peers import main
    return main(args)


def _rescore(args: argparse.Namespace) -> int:
    from curation.bench.rescore import main
    return main(args)


BENCHES: dict[str, Bench] = {
    "speed": _speed,  # engine vs the LESS way, FLOP-floor fraction, scoring vs a bandwidth scan
    "quality": _quality,  # precision, planted-noise rate and downstream accuracy of each method's selection
    "diagnose": _diagnose,  # why ROSE trails LESS: one re-scored variant per hypothesis
    "fidelity": _fidelity,  # Spearman / top-5% overlap of projected vs exact scores per setting
    "peers": _peers,  # EleutherAI's bergson beside our engine: examples/s, peak RSS, ranking Spearman
    "rescore": _rescore,  # pair added -> new selection stored, on a big pool with stored features
    "reliability": _reliability,  # kills, concurrent decide/undo/export/import, bad inputs: counts
    "ui": _ui,  # seconds to each page's script end on a big pool (default 100k examples)
}


def run_bench(args: argparse.Namespace) -> int:
    """Dispatch ``args.kind`` to its benchmark."""
    return BENCHES[args.kind](args)
