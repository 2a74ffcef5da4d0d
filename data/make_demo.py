"""Regenerate the embedded demo data from `curation.synthetic`, byte-identical on every run.

    python data/make_demo.py            # rewrites data/demo_*.jsonl
    python data/make_demo.py --out DIR  # writes them into DIR instead

The tests regenerate into a temporary folder and compare bytes with the committed files, so a
change to the generator must come with regenerated data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(ROOT))

from curation.synthetic import TARGET_FAMILY, make_heldout, make_pool, make_prefs, to_jsonl  # noqa: E402

POOL_SIZE = 3000
POOL_SEED, PREFS_SEED, HELDOUT_SEED = 0, 1, 2
POOL_NOISE = {TARGET_FAMILY: 0.10}  # wrong answers planted in the target family for selection to avoid
PREF_SHOTS = 5                       # per subtask
HELDOUT_SIZE = 100


def demo_files() -> dict[str, str]:
    """File name -> JSON Lines text of every demo file."""
    return {
        "demo_pool.jsonl": to_jsonl(make_pool(POOL_SIZE, POOL_SEED, noise=POOL_NOISE)),
        "demo_prefs.jsonl": to_jsonl(make_prefs(TARGET_FAMILY, PREF_SHOTS, PREFS_SEED)),
        "demo_heldout.jsonl": to_jsonl(make_heldout(TARGET_FAMILY, HELDOUT_SIZE, HELDOUT_SEED)),
    }


def write_demo(out_dir: Path) -> list[Path]:
    """Write the demo files into out_dir as UTF-8 with '\\n' line ends, whatever the platform."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in demo_files().items():
        path = out_dir / name
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return paths


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data", help="folder to write into (default: data/)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    for path in write_demo(args.out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
