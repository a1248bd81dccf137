"""Outputs against inputs, limits and messages (issue 25, items 5 and the tracebacks, hangs and messages).

OVERWRITES: every command × every output option pointed at (or into) one of that command's own inputs is
refused before anything runs: one line, exit 2, nothing under tmp_path changed. UNDER_A_FILE: an output
path through a regular file (``one.png/r.json``) is one line, not a traceback. LIMITS: counts and
durations a typo makes absurd are refused naming the limit. NOT_A_FOLDER: a file where a folder is expected
is called "not a folder", not "missing".
"""

from __future__ import annotations

import signal
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from test_faults_inputs import snapshot, weights, wider_images, wider_truth, write

from retinaface_export.cli import bench as bench_cli
from retinaface_export.cli import convert as convert_cli
from retinaface_export.cli import detect as detect_cli
from retinaface_export.cli import evaluate as evaluate_cli
from retinaface_export.cli import export as export_cli
from retinaface_export.cli import golden as golden_cli
from retinaface_export.cli import parity as parity_cli

PROGRAMS = {
    bench_cli.main: bench_cli.COMMAND,
    convert_cli.main: convert_cli.COMMAND,
    detect_cli.main: detect_cli.COMMAND,
    evaluate_cli.main: evaluate_cli.COMMAND,
    export_cli.main: "retinaface-export",
    golden_cli.main: golden_cli.COMMAND,
    parity_cli.main: parity_cli.COMMAND,
}
ARTIFACT = "retinaface_mobilenet0.25_320x320.onnx"


# ---------------------------------------------------------------- inputs, faked: the refusals come first


def export_dir(tmp: Path) -> Path:
    """An export folder as far as its paths go (nothing reads it: the refusal comes before)."""
    write(tmp / "export" / "manifest.json", '{"tool": "retinaface-export"}\n')
    write(tmp / "export" / ARTIFACT, b"onnx bytes")
    return tmp / "export"


def photo(tmp: Path, name: str = "p.jpg") -> Path:
    return write(tmp / "in" / name, b"\xff\xd8\xff\xe0 a photo")


def predictions(tmp: Path) -> list[str]:
    """A prediction folder and WIDER ground truth (image 'face': the reference strips '.jpg' characters)."""
    gt = wider_truth(tmp / "gt", {"0--E": ["face"]})
    write(tmp / "preds" / "0--E" / "face.txt", "face\n1\n10 10 20 20 0.9\n")
    return ["--predictions", str(tmp / "preds"), "--ground-truth", str(gt)]


def _p(tmp: Path, name: str) -> str:
    return str(tmp / name)


@dataclass(frozen=True)
class Case:
    name: str
    command: click.Command
    build: Callable[[Path], list[str]]
    says: tuple[str, ...]
    code: int = 2


OVERWRITES = [
    Case(
        "parity-json-onto-the-manifest",
        parity_cli.main,
        lambda t: [str(export_dir(t)), "--json", _p(t, "export/manifest.json")],
        ("--json", "export/manifest.json is inside the input EXPORT_DIR", "would be overwritten"),
    ),
    Case(
        "parity-junit-onto-an-artifact",
        parity_cli.main,
        lambda t: [str(export_dir(t)), "--junit", _p(t, f"export/{ARTIFACT}")],
        ("--junit", "is inside the input EXPORT_DIR"),
    ),
    Case(
        "parity-json-into-an-images-folder",
        parity_cli.main,
        lambda t: [str(export_dir(t)), "--images", str(photo(t).parent), "--json", _p(t, "in/r.json")],
        ("--json", "is inside the input --images"),
    ),
    Case(
        "parity-json-and-junit-one-file",
        parity_cli.main,
        lambda t: [str(export_dir(t)), "--json", _p(t, "r.txt"), "--junit", _p(t, "r.txt")],
        ("--junit", "is also --json"),
    ),
    Case(
        "bench-markdown-onto-an-artifact",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--markdown", _p(t, f"export/{ARTIFACT}")],
        ("--markdown", "is inside the input EXPORT_DIR"),
    ),
    Case(
        "bench-json-onto-the-manifest",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--json", _p(t, "export/manifest.json")],
        ("--json", "is inside the input EXPORT_DIR"),
    ),
    Case(
        "bench-plot-onto-its-image",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--image", str(photo(t)), "--plot", _p(t, "in/p.jpg")],
        ("--plot", "is the input --image"),
    ),
    Case(
        "eval-json-onto-a-prediction-file",
        evaluate_cli.main,
        lambda t: [*predictions(t), "--json", _p(t, "preds/0--E/face.txt")],
        ("--json", "is inside the input --predictions"),
    ),
    Case(
        "eval-json-onto-the-ground-truth",
        evaluate_cli.main,
        lambda t: [*predictions(t), "--json", _p(t, "gt/wider_face_val.mat")],
        ("--json", "is inside the input --ground-truth"),
    ),
    Case(
        "eval-save-predictions-into-the-images",
        evaluate_cli.main,
        lambda t: [
            "--images",
            str(photo(t).parent),
            "--weights",
            _p(t, "w.pth"),
            "--ground-truth",
            str(wider_truth(t / "gt", {"0--E": ["face"]})),
            "--save-predictions",
            _p(t, "in/saved"),
        ],
        ("--save-predictions", "is inside the input --images"),
    ),
    Case(
        "eval-json-onto-the-model",
        evaluate_cli.main,
        lambda t: [
            "--images",
            str(photo(t).parent),
            "--model",
            str(write(t / "m.onnx", b"onnx")),
            "--ground-truth",
            str(wider_truth(t / "gt", {"0--E": ["face"]})),
            "--json",
            _p(t, "m.onnx"),
        ],
        ("--json", "is the input --model"),
    ),
    Case(
        "detect-json-onto-its-model",
        detect_cli.main,
        lambda t: [str(photo(t)), "--model", str(write(t / "m.onnx", b"onnx")), "--json", _p(t, "m.onnx")],
        ("--json", "m.onnx is the input --model"),
    ),
    Case(
        "detect-json-onto-the-bin-of-its-ir",
        detect_cli.main,
        lambda t: [str(photo(t)), "--model", str(write(t / "m.xml", "<net/>")), "--json", _p(t, "m.bin")],
        ("--json", "m.bin is the input --model"),
    ),
    Case(
        "detect-json-onto-its-weights",
        detect_cli.main,
        lambda t: [str(photo(t)), "--weights", str(write(t / "w.pth", b"w")), "--json", _p(t, "w.pth")],
        ("--json", "is the input --weights"),
    ),
    Case(
        "detect-output-dir-inside-the-photo-folder",
        detect_cli.main,
        lambda t: [str(photo(t).parent), "--weights", _p(t, "w.pth"), "--output-dir", _p(t, "in/drawn")],
        ("--output-dir", "is inside the input IMAGE|FOLDER"),
    ),
    # retinaface-export's inputs are files (--weights, --anchors): an --output-dir onto one is click's refusal
    Case(
        "convert-output-dir-inside-the-calibration-photos",
        convert_cli.main,
        lambda t: [
            str(export_dir(t)),
            "--to",
            "openvino",
            "--calibration",
            str(photo(t).parent),
            "--output-dir",
            _p(t, "in/out"),
        ],
        ("--output-dir", "is inside the input --calibration"),
    ),
    # retinaface-golden record's inputs are files (--weights, --anchors, --image): click refuses a folder there
]

UNDER_A_FILE = [
    Case(
        "parity-json",
        parity_cli.main,
        lambda t: [str(export_dir(t)), "--json", str(photo(t, "one.png") / "r.json")],
        ("--json: ", "one.png in its path is not a folder"),
        1,
    ),
    Case(
        "parity-junit",
        parity_cli.main,
        lambda t: [str(export_dir(t)), "--junit", str(photo(t, "one.png") / "r.xml")],
        ("--junit: ", "one.png in its path is not a folder"),
        1,
    ),
    Case(
        "detect-json",
        detect_cli.main,
        lambda t: [str(photo(t)), "--weights", _p(t, "w.pth"), "--json", str(photo(t, "one.png") / "r.json")],
        ("--json: ", "one.png in its path is not a folder"),
        1,
    ),
    Case(
        "detect-output-dir",
        detect_cli.main,
        lambda t: [str(photo(t)), "--weights", _p(t, "w.pth"), "--output-dir", str(photo(t, "one.png") / "d" / "e")],
        ("--output-dir: ", "one.png in its path is not a folder"),
        1,
    ),
    Case(
        "eval-json",
        evaluate_cli.main,
        lambda t: [*predictions(t), "--json", str(photo(t, "one.png") / "r.json")],
        ("--json: ", "one.png in its path is not a folder"),
        1,
    ),
    Case(
        "eval-save-predictions",
        evaluate_cli.main,
        lambda t: [
            "--images",
            _p(t, "images"),
            "--weights",
            _p(t, "w.pth"),
            "--ground-truth",
            _p(t, "gt"),
            "--save-predictions",
            str(photo(t, "one.png") / "p"),
        ],
        ("--save-predictions: ", "one.png in its path is not a folder"),
        1,
    ),
    Case(
        "bench-markdown",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--markdown", str(photo(t, "one.png") / "r.md")],
        ("--markdown: ", "one.png in its path is not a folder"),
        1,
    ),
]

LIMITS = [
    Case(
        "bench-batch-100000",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--batch", "100000"],
        ("--batch 100000 is above the largest allowed batch, 64", "RETINAFACE_EXPORT_MAX_BATCH"),
    ),
    Case(
        "bench-time-nan",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--time", "nan"],
        ("--time must be above 0 and at most 3600 seconds, got nan",),
    ),
    Case(
        "export-decode-with-nms-options",
        export_cli.main,
        lambda t: ["--postprocess", "decode", "--top-k", "10", "--nms-iou", "0.3", "--output-dir", _p(t, "out")],
        ("--nms-iou, --top-k apply only with --postprocess nms (--postprocess decode runs no NMS)",),
    ),
    Case(
        "export-none-with-a-score-threshold",
        export_cli.main,
        lambda t: ["--score-threshold", "0.5", "--output-dir", _p(t, "out")],
        ("--score-threshold applies only with --postprocess nms (--postprocess none runs no NMS)",),
    ),
]

# click's own range errors: a usage block, then the error naming the limit
CLICK_LIMITS = [
    Case("bench-time-inf", bench_cli.main, lambda t: [str(export_dir(t)), "--time", "inf"], ("0<x<=3600",)),
    Case(
        "bench-runs-10e12",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--runs", str(10**12)],
        ("3<=x<=100000",),
    ),
    Case(
        "bench-warmup-10e12",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--warmup", str(10**12)],
        ("0<=x<=10000",),
    ),
    Case(
        "bench-threads-10e6",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--threads", str(10**6)],
        ("1<=x<=256",),
    ),
    Case(
        "bench-streams-10e6",
        bench_cli.main,
        lambda t: [str(export_dir(t)), "--streams", str(10**6)],
        ("1<=x<=256",),
    ),
    Case(
        "eval-long-side-10e6",
        evaluate_cli.main,
        lambda t: [
            "--images",
            _p(t, "i"),
            "--weights",
            _p(t, "w.pth"),
            "--ground-truth",
            _p(t, "gt"),
            "--long-side",
            str(10**6),
        ],
        ("32<=x<=8192",),
    ),
    Case(
        "export-top-k-10e12",
        export_cli.main,
        lambda t: ["--postprocess", "nms", "--top-k", str(10**12), "--output-dir", _p(t, "out")],
        ("--top-k", "1<=x<=200000"),
    ),
    Case(
        "export-max-detections-10e30",
        export_cli.main,
        lambda t: ["--postprocess", "nms", "--max-detections", str(10**30), "--output-dir", _p(t, "out")],
        ("--max-detections", "1<=x<=10000"),
    ),
]

NOT_A_FOLDER = [
    Case(
        "eval-predictions",
        evaluate_cli.main,
        lambda t: [
            "--predictions",
            str(write(t / "preds", "x")),
            "--ground-truth",
            str(wider_truth(t / "gt", {"0--E": ["face"]})),
        ],
        ("preds: is not a folder (a regular file); the predictions folder must be one",),
        1,
    ),
    Case(
        "eval-ground-truth",
        evaluate_cli.main,
        lambda t: ["--predictions", _p(t, "preds"), "--ground-truth", str(write(t / "gt", "x"))],
        ("gt: is not a folder (a regular file); the ground-truth folder must be one",),
        1,
    ),
    Case(
        "eval-images",
        evaluate_cli.main,
        lambda t: [
            "--images",
            str(write(t / "images", "x")),
            "--weights",
            _p(t, "w.pth"),
            "--ground-truth",
            str(wider_truth(t / "gt", {"0--E": ["face"]})),
        ],
        ("images: is not a folder (a regular file); the images folder must be one",),
        1,
    ),
    Case(
        "eval-cache-dir-under-a-file",
        evaluate_cli.main,
        lambda t: [*predictions(t), "--cache-dir", str(write(t / "c", "x") / "cache")],
        ("c: is not a folder: --cache-dir cannot be made in it",),
        1,
    ),
    Case(
        "parity-export-dir",
        parity_cli.main,
        lambda t: [str(write(t / "export", "x"))],
        ("export: is not a folder (a regular file); the export folder must be one",),
        1,
    ),
    Case(
        "parity-golden",
        parity_cli.main,
        lambda t: [str(export_dir(t)), "--golden", str(write(t / "golden", "x"))],
        ("golden: is not a folder (a regular file); the golden folder must be one",),
        1,
    ),
]


def _run(tmp_path: Path, case: Case, one_line: bool = True) -> None:
    args = [*case.build(tmp_path), "-q"]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(case.command, args, catch_exceptions=False)
    output = result.stdout + result.stderr
    assert result.exit_code == case.code, output
    assert "Traceback" not in output and "does not exist" not in output
    for fragment in case.says:
        assert fragment in result.stderr, result.stderr
    if one_line:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{PROGRAMS[case.command]}: error: "), lines
    assert snapshot(tmp_path) == before, "something under tmp_path was written, changed or removed"


@pytest.mark.parametrize("case", OVERWRITES, ids=lambda c: c.name)
def test_an_output_never_overwrites_an_input(tmp_path, case):
    _run(tmp_path, case)


@pytest.mark.parametrize("case", UNDER_A_FILE, ids=lambda c: c.name)
def test_an_output_under_a_file_is_one_line(tmp_path, case):
    _run(tmp_path, case)


@pytest.mark.parametrize("case", LIMITS, ids=lambda c: c.name)
def test_absurd_counts_and_ignored_options_are_refused(tmp_path, case):
    _run(tmp_path, case)


@pytest.mark.parametrize("case", CLICK_LIMITS, ids=lambda c: c.name)
def test_click_ranges_name_the_limit(tmp_path, case):
    _run(tmp_path, case, one_line=False)


@pytest.mark.parametrize("case", NOT_A_FOLDER, ids=lambda c: c.name)
def test_a_file_given_for_a_folder_is_not_a_folder(tmp_path, case):
    _run(tmp_path, case)


def test_outputs_beside_the_inputs_are_fine(tmp_path):
    """The rule refuses only outputs that are, or are inside, an input: a sibling path passes it."""
    from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs

    export = export_dir(tmp_path)
    refuse_outputs_over_inputs(
        [("--json", tmp_path / "export.json"), ("--junit", tmp_path / "export.xml"), ("--json", Path("-"))],
        [("EXPORT_DIR", export), ("--images", tmp_path / "in"), ("--golden", None)],
    )


# ---------------------------------------------------------------- prediction rows: a configurable limit


def test_prediction_rows_are_bounded_and_the_limit_configurable(tmp_path, monkeypatch):
    """Before the fix a 400,000-row file was scored (2 GiB); the limit is tested at 2 rows, not 400,000."""
    gt = wider_truth(tmp_path / "gt", {"0--E": ["face"]})
    rows = "\n".join(f"{10 + i} 10 20 20 0.{i + 1}" for i in range(3))
    write(tmp_path / "preds" / "0--E" / "face.txt", f"face\n3\n{rows}\n")
    args = ["--predictions", str(tmp_path / "preds"), "--ground-truth", str(gt), "--json", "-", "-q"]
    monkeypatch.setenv("RETINAFACE_EXPORT_MAX_PREDICTIONS", "2")
    result = CliRunner().invoke(evaluate_cli.main, args, catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"retinaface-eval: error: {tmp_path / 'preds' / '0--E' / 'face.txt'}: 3 predictions is more than the 2 a "
        "prediction file may hold (set RETINAFACE_EXPORT_MAX_PREDICTIONS=N to allow more)"
    )
    monkeypatch.setenv("RETINAFACE_EXPORT_MAX_PREDICTIONS", "3")
    result = CliRunner().invoke(evaluate_cli.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr


def test_budget_and_nms_limits_in_the_library():
    """The Python API is bounded as the commands are (NaN included)."""
    from retinaface_export.bench.stats import Budget
    from retinaface_export.errors import UsageError
    from retinaface_export.postprocess.settings import NmsSettings

    for bad in (
        lambda: Budget(seconds=float("nan")),
        lambda: Budget(seconds=1e9),
        lambda: Budget(seconds=None, runs=10**9),
        lambda: Budget(warmup=10**9),
        lambda: NmsSettings(top_k=10**12),
        lambda: NmsSettings(max_detections=10**30),
    ):
        with pytest.raises(UsageError):
            bad()


# ---------------------------------------------------------------- retinaface-eval --save-predictions: all or nothing


def test_save_predictions_is_all_or_nothing(tmp_path):
    """Before the fix the first image's prediction file was written, then the second image failed."""
    events = {"0--E": ["a", "b"]}
    wider_images(tmp_path / "images", events)
    write(tmp_path / "images" / "0--E" / "b.jpg", b"")  # the second image is unreadable
    gt = wider_truth(tmp_path / "gt", events)
    saved = tmp_path / "saved"
    args = ["--images", str(tmp_path / "images"), "--weights", weights(), "--ground-truth", str(gt), "-q"]
    args += ["--long-side", "320", "--save-predictions", str(saved)]
    result = CliRunner().invoke(evaluate_cli.main, args, catch_exceptions=False)
    assert result.exit_code == 1 and "b.jpg: empty file" in result.stderr, result.stderr
    assert not saved.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gt", "images"]
    # into a folder that is there already, every file arrives, and what else it holds stays
    write(tmp_path / "images" / "0--E" / "b.jpg", (tmp_path / "images" / "0--E" / "a.jpg").read_bytes())
    write(saved / "0--E" / "a.txt", "old\n")
    write(saved / "notes.txt", "mine\n")
    result = CliRunner().invoke(evaluate_cli.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert sorted(str(p.relative_to(saved)) for p in saved.rglob("*.txt")) == ["0--E/a.txt", "0--E/b.txt", "notes.txt"]
    assert (saved / "0--E" / "a.txt").read_text().startswith("a\n") and (saved / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "images", "saved"]  # no staging left


# ---------------------------------------------------------------- detect: drawing names


@pytest.mark.parametrize(
    "images",
    [
        ["a.png", "x/a.jpg", "a_1.jpg"],  # before the fix: a.png, a_1.png, a_1.png
        ["a_1.jpg", "a.png", "x/a.jpg"],
        ["a.jpg", "x/a.jpg", "y/a.jpg", "a_2.png", "a_1.png"],
        ["b.jpg", "c.jpg"],
    ],
)
def test_drawing_names_never_collide(images):
    names = detect_cli._output_names([Path(i) for i in images])
    assert len(set(names)) == len(names), names
    assert all(name.endswith(".png") and name.startswith(Path(i).stem) for name, i in zip(names, images, strict=True))
    assert names[0] == f"{Path(images[0]).stem}.png"


# ---------------------------------------------------------------- calibration photos that are not photos


@pytest.mark.parametrize(
    "files, named",
    [
        ({"a.jpg": b""}, "a.jpg: empty file (0 bytes), not an image"),
        ({"a.jpg": b"", "b.jpg": b""}, "a.jpg: empty file (0 bytes), not an image"),
        ({"t.jpg": b"some text\n"}, "t.jpg: cannot be read as an image"),
    ],
)
def test_calibration_photo_that_is_not_one_is_named(tmp_path, files, named):
    """Before the fix: '<folder>: holds one photo', the empty or text .jpg counted and never named."""
    from retinaface_export.calibration import split_photos
    from retinaface_export.errors import FileError

    for name, data in files.items():
        write(tmp_path / "cal" / name, data)
    with pytest.raises(FileError) as info:
        split_photos(tmp_path / "cal")
    assert str(info.value) == f"{tmp_path / 'cal'}/{named}"


def test_calibration_folder_that_is_a_file(tmp_path):
    from retinaface_export.calibration import split_photos
    from retinaface_export.errors import FileError

    with pytest.raises(FileError, match="is not a folder \\(a regular file\\); the calibration folder must be one"):
        split_photos(write(tmp_path / "cal", "x"))


# ---------------------------------------------------------------- python -m: a stop during the command's import


def test_python_m_interrupted_during_import_says_interrupted(monkeypatch, capsys):
    """Before the fix click caught it: 'Aborted!' and exit 1, where the console scripts say 'interrupted', 130."""
    from retinaface_export.cli import entry

    class Importing(types.ModuleType):
        @property
        def main(self) -> None:  # the command's module, still importing when Ctrl-C arrives
            raise entry.Interrupted(signal.SIGINT)

    monkeypatch.setattr(entry, "install_signal_handlers", lambda command: None)  # the test process keeps its own
    monkeypatch.setitem(sys.modules, "retinaface_export_importing", Importing("retinaface_export_importing"))
    monkeypatch.setitem(entry.COMMANDS, "retinaface-export", "retinaface_export_importing")
    monkeypatch.setattr("sys.argv", ["retinaface_export", "export", "--output-dir", "out"])
    with pytest.raises(SystemExit) as info:
        entry.module_main()
    err = capsys.readouterr().err
    assert info.value.code == 130, err
    assert err.strip() == "retinaface-export: interrupted; nothing was written"
