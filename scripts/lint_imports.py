"""Check the import contracts (``[tool.importlinter]`` in pyproject.toml) on the package as it is installed.

``converters/`` is installed as ``retinaface_export.converters`` (a package-dir mapping), which the import
graph cannot see in the source tree: the package is laid out as installed in a temporary folder (a copy),
then ``lint-imports`` and a whole-graph cycle check run on that copy. Exit 0 when every contract holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Every module imported by another, function-local and TYPE_CHECKING imports included: any cycle fails.
CYCLES = """
import sys, grimp
graph = grimp.build_graph("retinaface_export")
edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
index, low, stack, on_stack, cycles = {}, {}, [], set(), []
sys.setrecursionlimit(10_000)
def visit(v):
    index[v] = low[v] = len(index); stack.append(v); on_stack.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop(); on_stack.discard(w); component.append(w)
            if w == v: break
        if len(component) > 1: cycles.append(sorted(component))
for module in sorted(edges):
    if module not in index: visit(module)
for cycle in cycles:
    print("import cycle:", " ".join(cycle))
    for a in cycle:
        print("   ", a, "->", ", ".join(sorted(edges[a] & set(cycle))))
print(f"{len(edges)} modules, {len(cycles)} import cycles")
sys.exit(1 if cycles else 0)
"""


def installed_layout(folder: Path) -> Path:
    """A copy of the package with ``converters/`` inside it, as the wheel installs it; returns ``folder``."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "retinaface_export", folder / "retinaface_export", ignore=ignore)
    shutil.copytree(REPO / "converters", folder / "retinaface_export" / "converters", ignore=ignore)
    return folder


def check(folder: Path, capture: bool = False) -> tuple[int, str]:
    """``(exit code, output)`` of the contracts and the cycle check on the layout in ``folder``."""
    env = os.environ | {"PYTHONPATH": str(folder)}
    lint = str(Path(sys.executable).with_name("lint-imports"))
    runs = [
        subprocess.run(command, env=env, cwd=folder, check=False, capture_output=capture, text=True)
        for command in ([lint, str(REPO / "pyproject.toml")], [sys.executable, "-c", CYCLES])
    ]
    output = "".join((run.stdout or "") + (run.stderr or "") for run in runs)
    return (1 if any(run.returncode for run in runs) else 0), output


def main() -> int:
    """Run ``lint-imports`` and the cycle check on the installed layout."""
    with tempfile.TemporaryDirectory() as tmp:
        return check(installed_layout(Path(tmp)))[0]


if __name__ == "__main__":
    sys.exit(main())
