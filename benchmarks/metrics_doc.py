"""Print, write or check docs/metrics.md, the metric reference page generated from apex_opt/metrics.py.

    python benchmarks/metrics_doc.py            # print the page
    python benchmarks/metrics_doc.py --write    # rewrite docs/metrics.md
    python benchmarks/metrics_doc.py --check    # exit 1 when docs/metrics.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apex_opt.metrics import markdown

PAGE = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"rewrite {PAGE.name}")
    action.add_argument("--check", action="store_true", help=f"exit 1 when {PAGE.name} is out of date")
    args = parser.parse_args()
    page = markdown()
    if args.write:
        PAGE.write_text(page, encoding="utf-8")
        print(f"wrote {PAGE}")
    elif args.check:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != page:
            print(f"{PAGE} is out of date: run python benchmarks/metrics_doc.py --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
