"""Fast start: `--help` of every command and `retinaface-eval --predictions` import no heavy library.

Each case runs in a fresh interpreter with ``-X importtime``; a failure names the heavy module and the chain
of imports that brought it in (innermost first), e.g. ``torch <- retinaface_export.checkpoint <- ...``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from retinaface_export.cli.entry import COMMANDS, SUMMARIES

HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "openvino", "nncf", "cv2", "scipy", "matplotlib")
_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)")


def heavy_imports(importtime: str, allowed: tuple[str, ...] = ()) -> dict[str, str]:
    """Each heavy top-level package imported, with its import chain, from ``-X importtime`` output.

    importtime prints a module after the modules it imported, indented one level deeper; a module's importer
    is the next line with less indentation.
    """
    rows = [(len(m.group(1)) // 2, m.group(2)) for m in map(_LINE.match, importtime.splitlines()) if m]
    found: dict[str, str] = {}
    for index, (depth, name) in enumerate(rows):
        top = name.split(".")[0]
        if top in HEAVY and top not in allowed and top not in found:
            chain = [name]
            for later_depth, later in rows[index + 1 :]:
                if later_depth < depth:
                    chain.append(later)
                    depth = later_depth
            found[top] = " <- ".join(chain)
    return found


def run_importtime(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def console_script(command: str, *argv: str) -> list[str]:
    """Arguments that run ``command`` as its console script does (the entry point, with sys.argv set)."""
    code = f"import sys; from retinaface_export.cli.entry import run; sys.argv = {[command, *argv]!r}; run({command!r})"
    return ["-c", code]


def assert_light(result: subprocess.CompletedProcess, what: str, allowed: tuple[str, ...] = ()) -> None:
    assert result.returncode == 0, f"{what} failed: {result.stderr[-2000:]}"
    heavy = heavy_imports(result.stderr, allowed)
    assert not heavy, f"{what} imports " + "; ".join(f"{name} ({chain})" for name, chain in heavy.items())


def test_chain_reader_names_the_importer():
    sample = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       100 |        100 |     torch._C\n"
        "import time:       100 |        200 |   torch\n"
        "import time:        10 |         10 |   numpy\n"
        "import time:        10 |        300 | retinaface_export.checkpoint\n"
    )
    assert heavy_imports(sample) == {"torch": "torch._C <- torch <- retinaface_export.checkpoint"}
    assert heavy_imports(sample, allowed=("torch",)) == {}


HELP_CASES = list(COMMANDS)


@pytest.mark.parametrize("command", HELP_CASES)
def test_console_script_help_imports_no_heavy_library(command):
    result = run_importtime(console_script(command, "--help"))
    assert_light(result, f"{command} --help")
    assert "Example:" in result.stdout, f"{command} --help shows no example"


def test_golden_record_help_imports_no_heavy_library():
    result = run_importtime(console_script("retinaface-golden", "record", "--help"))
    assert_light(result, "retinaface-golden record --help")
    assert "Example:" in result.stdout and "--output-dir" in result.stdout


def test_module_group_help_lists_every_command_without_importing_them():
    result = run_importtime(["-m", "retinaface_export", "--help"])
    assert_light(result, "python -m retinaface_export --help")
    assert "retinaface_export.cli.bench" not in result.stderr  # the listing imports no command module
    for name in SUMMARIES:
        assert re.search(rf"^\s+{name}\s", result.stdout, re.M), f"{name} not listed"
    assert "Example:" in result.stdout


@pytest.mark.parametrize("name", list(SUMMARIES))
def test_module_subcommand_help_imports_no_heavy_library(name):
    result = run_importtime(["-m", "retinaface_export", name, "--help"])
    assert_light(result, f"python -m retinaface_export {name} --help")
    assert "Example:" in result.stdout


@pytest.mark.parametrize("name", list(SUMMARIES))
def test_group_summary_begins_the_commands_own_help(name):
    import importlib

    from click.testing import CliRunner

    main = importlib.import_module(COMMANDS[f"retinaface-{name}"]).main
    text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert SUMMARIES[name].rstrip(".") in text, (SUMMARIES[name], text[:300])


def _cell(items: list) -> np.ndarray:
    array = np.empty((len(items), 1), dtype=object)
    for index, item in enumerate(items):
        array[index, 0] = item
    return array


def test_eval_of_predictions_imports_no_model_runtime(tmp_path):
    """scipy reads the .mat ground truth; nothing else heavy is imported."""
    gt = tmp_path / "gt"
    gt.mkdir()
    savemat(
        gt / "wider_face_val.mat",
        {
            "event_list": _cell([np.array(["0--E"])]),
            "file_list": _cell([_cell([np.array(["img_1"])])]),
            "face_bbx_list": _cell([_cell([np.array([[10.0, 10.0, 20.0, 20.0]])])]),
        },
    )
    for setting in ("easy", "medium", "hard"):
        savemat(gt / f"wider_{setting}_val.mat", {"gt_list": _cell([_cell([np.array([[1]])])])})
    (tmp_path / "preds" / "0--E").mkdir(parents=True)
    (tmp_path / "preds" / "0--E" / "img_1.txt").write_text("img_1\n1\n10 10 20 20 0.9\n")
    args = ["--predictions", str(tmp_path / "preds"), "--ground-truth", str(gt), "--json", "-"]
    result = run_importtime(console_script("retinaface-eval", *args))
    assert_light(result, "retinaface-eval --predictions", allowed=("scipy",))
    assert result.stdout.splitlines()[0] == '{"easy": 1.0, "medium": 1.0, "hard": 1.0}'
    # rich took ~60 ms of a ~0.4 s command: the AP table and the logs are drawn without it
    imported = {m.group(2).split(".")[0] for m in map(_LINE.match, result.stderr.splitlines()) if m}
    assert "rich" not in imported
    assert "WIDER FACE val AP (1 images)" in result.stderr and "│ 1.0000 │ 1.0000 │ 1.0000 │" in result.stderr


def test_legacy_magic_number_is_torchs():
    import torch

    from retinaface_export.checkpoint import LEGACY_MAGIC_NUMBER

    assert torch.serialization.MAGIC_NUMBER == LEGACY_MAGIC_NUMBER


@pytest.mark.parametrize(
    ("command", "user_value", "expected", "collecting"),
    [
        # elementwise arithmetic: OpenBLAS's thread pool only cost ~50 ms; the cycle collector ~8 ms
        ("retinaface-eval", None, "1", False),
        ("retinaface-eval", "2", "2", False),  # the user's setting wins
        ("retinaface-export", None, None, True),  # other commands keep OpenBLAS's default and the collector
    ],
)
def test_eval_starts_openblas_with_one_thread(command, user_value, expected, collecting):
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user_value is not None:
        env["OPENBLAS_NUM_THREADS"] = user_value
    code = (
        "import atexit, os, sys; from retinaface_export.cli.entry import run; "
        "import gc; atexit.register(lambda: print('BLAS', os.environ.get('OPENBLAS_NUM_THREADS'), "
        "'numpy' in sys.modules, 'GC', gc.isenabled(), file=sys.stderr)); "
        f"sys.argv = [{command!r}, '--help']; run({command!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"BLAS {expected} " in done.stderr and f"GC {collecting}" in done.stderr


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's dynamic mmap threshold")
@pytest.mark.parametrize(("command", "reused"), [("retinaface-eval", True), ("retinaface-export", False)])
def test_eval_reuses_freed_arrays_of_a_few_megabytes(command, reused):
    # arrays of 0.5 to 3.5 MB, each one larger than the one freed before: fresh memory each time (14 MB,
    # ~3,400 page faults) unless retinaface-eval's start kept freed blocks of that size for reuse (~900)
    code = (
        "import resource, sys; from retinaface_export.cli.entry import prepare_process; "
        f"prepare_process({command!r}); import numpy as np; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for n in range(1, 8):\n    np.ones(n * 62_500)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    faults = int(done.stdout)
    assert (faults < 2000) == reused, faults
