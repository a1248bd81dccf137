"""How long each INT8 conversion of a `make bench` run took, read from the manifests it wrote.

`retinaface-convert` keeps, in each INT8 row's ``conversion.int8_search``, the seconds its INT8 step took
(calibration, accuracy control's search, the final measure) and how many evaluations the search made of
the most it could take; this script puts them in one Markdown table per backbone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(folder: Path) -> list[str]:
    """One Markdown row per INT8 artifact in ``folder``'s manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    variant = manifest["checkpoint"]["variant"]
    synthetic = " (synthetic: no accuracy control)" if manifest["checkpoint"].get("synthetic") else ""
    lines = []
    for artifact in manifest["artifacts"]:
        search = artifact.get("conversion", {}).get("int8_search")
        if artifact["precision"] != "int8" or not search:
            continue
        accuracy = artifact["conversion"].get("int8", {}).get("accuracy", {})
        lines.append(
            f"| {variant}{synthetic} | {artifact['path']} | {search['seconds']:.0f} | "
            f"{search['evaluations']} of ≤ {search['most'] or '-'} | {accuracy.get('int8', float('nan')):.3f} |"
        )
    return lines


def main() -> int:
    """Print (and with --markdown write) the table of the given export folders."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    table = [
        "**INT8 conversion time (`retinaface-convert --precision int8`, OpenVINO)**",
        "",
        "| backbone | artifact | seconds | accuracy-control evaluations | INT8 F1 (validation) |",
        "|---|---|---:|---:|---:|",
    ]
    for folder in args.folders:
        table += rows(folder)
    text = "\n".join(table) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
