"""The README's "Python API" snippet runs as written (paths pointed at ../shared), and the lazy package names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SHARED, require
from retinaface_export.widerface import load_ground_truth, prediction_text

# variable of the snippet -> what it names here
SNIPPET_PATHS = {
    "weights": SHARED / "weights" / "mobilenet0.25_Final.pth",
    "photos": SHARED / "images",
    "ground_truth": SHARED / "widerface" / "ground_truth",
}


def readme_snippet() -> str:
    """The first ```python block under '## Python API' in README.md."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)
    assert len(section) == 2, "README.md has no '## Python API' section"
    body = section[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match, "no ```python block in the README's Python API section"
    return match.group(1)


def point_paths(snippet: str, paths: dict[str, str]) -> str:
    """Replace the values of the snippet's ``name = Path("...")`` lines; each must be there."""
    for name, value in paths.items():
        snippet, count = re.subn(rf'^{name} = Path\("[^"]*"\)', f"{name} = Path({value!r})", snippet, flags=re.M)
        assert count == 1, f"the README snippet no longer sets {name} = Path(...)"
    return snippet


def write_predictions(folder, truth, seed=3):
    """WIDER prediction files: most faces found with jittered boxes, a few false positives."""
    rng = np.random.default_rng(seed)
    for (event, name), gt in zip(truth.images, truth.boxes, strict=True):
        hits = gt[rng.random(len(gt)) < 0.8]
        hits = hits + rng.normal(0, 0.05, hits.shape) * np.repeat(hits[:, 2:], 2, axis=1)
        rows = np.vstack([hits, rng.uniform(5, 400, (2, 4))])
        rows = np.column_stack([rows, rng.uniform(0.3, 1.0, len(rows))])
        (folder / event).mkdir(parents=True, exist_ok=True)
        (folder / event / f"{name}.txt").write_text(prediction_text(name, rows[np.argsort(-rows[:, 4])]))


@pytest.mark.slow
def test_readme_python_api_snippet_runs(tmp_path):
    for path in SNIPPET_PATHS.values():
        require(path)
    predictions = tmp_path / "predictions"
    write_predictions(predictions, load_ground_truth(SNIPPET_PATHS["ground_truth"]))
    snippet = point_paths(
        readme_snippet(),
        {**{k: str(v) for k, v in SNIPPET_PATHS.items()}, "predictions": str(predictions), "out": "out"},
    )
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, str(script)], cwd=work, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mobilenet0.25 38ec7bb3"), lines[0]
    artifacts = [line for line in lines if line.startswith("retinaface_mobilenet0.25_640x640")]
    assert len(artifacts) == 4 and all(line.endswith(" True") for line in artifacts), artifacts
    assert "parity passed: True" in lines
    crowd = next(line for line in lines if line.startswith("crowd_selfie.jpg "))
    assert int(crowd.split()[1]) > 50, crowd  # several hundred faces at full size; letterboxed to 640 fewer
    aps = ast.literal_eval(lines[-1])  # the snippet prints the dict of APs last
    assert set(aps) == {"easy", "medium", "hard"} and all(0.3 < v < 1 for v in aps.values()), aps
    assert (work / "out" / "manifest.json").is_file()


def test_package_names_are_lazy_and_complete():
    code = (
        "import sys, retinaface_export as r\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'nncf', 'cv2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert set(r.__all__) == set(r._API) | {'__version__'}, set(r.__all__) ^ set(r._API)\n"
        "for name in r.__all__:\n"
        "    assert getattr(r, name) is not None, name\n"
        "print(r.__version__, r.Detector.__module__, r.load_checkpoint.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "retinaface_export.inference.detector retinaface_export.checkpoint" in result.stdout


def test_unknown_package_name_is_an_attribute_error():
    import retinaface_export

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = retinaface_export.no_such_name
