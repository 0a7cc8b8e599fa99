"""Print the README's results tables from metrics/*.json, or rewrite them in README.md (--write)."""

import argparse
import sys
from pathlib import Path

from tinycap import results

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="rewrite the block between the README's results markers")
    args = ap.parse_args()
    if args.write:
        changed = results.rewrite(ROOT / "README.md", ROOT / "metrics")
        print("README.md results updated" if changed else "README.md results already match metrics/", file=sys.stderr)
    else:
        print(results.tables(ROOT / "metrics"))
