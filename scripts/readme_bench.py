"""Put the Markdown tables `make bench` wrote into docs/performance.md between the bench markers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
TARGET = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def main() -> int:
    """Replace the bench section of docs/performance.md (or --readme FILE) with the given Markdown files, in order."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tables", nargs="+", type=Path, help="Markdown files, in the order they go in")
    parser.add_argument("--readme", type=Path, default=TARGET, help="the file to update (default: docs/performance.md)")
    args = parser.parse_args()
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"{args.readme}: no {START} ... {END} section", file=sys.stderr)
        return 1
    tables = "\n".join(path.read_text() for path in args.tables)
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    args.readme.write_text(f"{head}{START}\n{tables}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
