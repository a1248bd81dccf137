"""Real commands at once on one folder: the folder lock makes them take turns, and the manifest lists
exactly the files that are there (issues 12 and 16: two exports, or an export and a convert, lost entries)."""

import json
import os
import subprocess
import sys

import pytest

from retinaface_export.hashing import sha256_file


def _script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _listed(folder) -> dict[str, str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {}
    for artifact in manifest["artifacts"]:
        for ref in [{"path": artifact["path"], "sha256": artifact["sha256"]}, *artifact["companions"]]:
            listed[ref["path"]] = ref["sha256"]
    return listed


@pytest.mark.slow
def test_export_and_convert_at_once_keep_every_entry(tmp_path):
    out = tmp_path / "out"
    first = [_script("retinaface-export"), "--size", "256", "--format", "onnx", "--output-dir", str(out), "-q"]
    subprocess.run(first, check=True, capture_output=True)
    runs = [
        [
            _script("retinaface-export"),
            "--size",
            "320",
            "--format",
            "onnx",
            "torchscript",
            "--output-dir",
            str(out),
            "-q",
        ],
        [_script("retinaface-convert"), str(out), "--to", "onnxsim", "--size", "256", "-q"],
        [_script("retinaface-convert"), str(out), "--to", "openvino", "--size", "256", "-q"],
    ]
    procs = [subprocess.Popen(r, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in runs]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
    files = {p.name: sha256_file(p) for p in out.iterdir() if p.name != "manifest.json"}
    assert _listed(out) == files
    assert {
        "retinaface_mobilenet0.25_256x256.onnx",
        "retinaface_mobilenet0.25_320x320.onnx",
        "retinaface_mobilenet0.25_320x320.torchscript.pt",
        "retinaface_mobilenet0.25_256x256.sim.onnx",
        "retinaface_mobilenet0.25_256x256_fp32.xml",
        "retinaface_mobilenet0.25_256x256_fp32.bin",
    } == set(files)
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]
