"""The wheel works where users install it: outside the repository, with no flag but the export folder."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REAL_WEIGHTS, require

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_exports_converts_and_passes_parity_outside_the_repo(tmp_path):
    weights = require(REAL_WEIGHTS)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO)], check=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for packaged in (
        "retinaface_export/manifest.schema.json",
        "retinaface_export/configs/mobilenet0.25.toml",
        "retinaface_export/goldens/mobilenet0.25_Final/golden.json",
        "retinaface_export/goldens/mobilenet0.25_Final/tensors.npz",
    ):
        assert packaged in names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's files first, the venv's dependencies after

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "retinaface_export", *args]
        return subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)

    where = subprocess.run(
        [sys.executable, "-c", "import retinaface_export; print(retinaface_export.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site))
    assert run("export", "--weights", str(weights), "--size", "320", "--output-dir", "out", "-q").returncode == 0
    assert run("convert", "out", "--to", "openvino", "-q").returncode == 0
    parity = run("parity", "out")
    assert parity.returncode == 0, parity.stdout + parity.stderr
    assert "3 passed, 0 failed" in parity.stdout + parity.stderr
