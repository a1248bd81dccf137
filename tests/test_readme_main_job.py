"""The README's main job, run as it is written there: its commands in a fresh folder beside ``../shared``.

tests/test_docs.py checks every documented command against its parser; this runs the main job for real
(export, convert with INT8, parity), so the README cannot drift from what the tools do.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED, require

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent


def main_job_commands() -> list[str]:
    section = README.read_text().split("## The main job", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith(".venv/bin/")]


def test_the_main_job_is_in_the_readme():
    commands = main_job_commands()
    assert [shlex.split(c)[0].rsplit("/", 1)[1] for c in commands] == [
        "retinaface-export",
        "retinaface-convert",
        "retinaface-parity",
    ]


@pytest.mark.slow
def test_the_readme_main_job_runs_as_written(tmp_path):
    (tmp_path / "shared").symlink_to(require(SHARED), target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in main_job_commands():
        argv = shlex.split(command)
        argv[0] = str(BIN / Path(argv[0]).name)
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    names = sorted(p.name for p in (work / "out").iterdir())
    assert "manifest.json" in names
    assert {f"retinaface_mobilenet0.25_{s}x{s}.onnx" for s in (640, 512, 320)} <= set(names)
    assert {f"retinaface_mobilenet0.25_{s}x{s}_int8.xml" for s in (640, 512, 320)} <= set(names)
