"""Put the Markdown tables `make bench` wrote into README.md between the bench markers."""

from __future__ import annotations

import sys
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main() -> int:
    """Replace the README's bench section with the given Markdown files, in order."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: no {START} ... {END} section", file=sys.stderr)
        return 1
    tables = "\n".join(Path(p).read_text() for p in sys.argv[1:])
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{START}\n{tables}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
