"""The layers hold (``make lint`` checks them too) and the check catches what it is there to catch.

Each case copies the package as installed and adds one import to one module: a function-local import
that goes up a layer, one that closes a cycle inside a package, a runtime library imported outside its
format's package. The check must fail on each and name the module.
"""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lint_imports.py"
spec = importlib.util.spec_from_file_location("lint_imports", SCRIPT)
lint_imports = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lint_imports)


def test_the_package_keeps_its_layers(tmp_path):
    code, output = lint_imports.check(lint_imports.installed_layout(tmp_path), capture=True)
    assert code == 0, output
    assert "0 broken" in output and "0 import cycles" in output


LOCAL_IMPORT = "\n\ndef _late():\n    {statement}  # noqa\n"
BROKEN = {
    # a low module reaching up, inside a function, to the format table
    "upward": ("retinaface_export/detection/metric.py", "from retinaface_export.formats import FORMATS", "metric"),
    # a cycle between two modules of one format package, through a TYPE_CHECKING-free local import
    "cycle": (
        "retinaface_export/converters/onnx/trust.py",
        "from retinaface_export.converters.onnx.runtime import session",
        "import cycle",
    ),
    # ONNX Runtime outside the ONNX package
    "runtime outside its format": ("retinaface_export/pipeline/builds.py", "import onnxruntime", "onnxruntime"),
    # OpenVINO outside the OpenVINO package
    "openvino outside its format": ("retinaface_export/bench/run.py", "import openvino", "openvino"),
    # Ray outside the Ray engine
    "ray outside its engine": ("retinaface_export/inference/stream.py", "import ray", "ray"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_the_check_fails_on_a_broken_layer(tmp_path, case):
    module, statement, named = BROKEN[case]
    layout = lint_imports.installed_layout(tmp_path)
    with (layout / module).open("a") as handle:
        handle.write(LOCAL_IMPORT.format(statement=statement))
    code, output = lint_imports.check(layout, capture=True)
    assert code == 1 and named in output, output


def test_every_module_has_a_layer():
    """A module the layers contract does not name is checked by nothing: each top-level one must be named."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in config if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    package = root / "retinaface_export"
    top = {p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    top |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()} | {"converters"}
    assert {f"retinaface_export.{name}" for name in top} - named == set()
