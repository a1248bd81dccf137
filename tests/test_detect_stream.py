"""retinaface-detect as a streaming job: JSON lines as it goes, resume, batches, WIDER files eval reads."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.io import savemat

from conftest import REPO, SHARED, require
from retinaface_export.cli.detect import main
from retinaface_export.cli.evaluate import main as eval_main
from retinaface_export.inference.backends import runs_side_by_side
from retinaface_export.inference.detector import Detector
from retinaface_export.inference.stream import default_workers, detect_stream, runtime_threads

PHOTOS = SHARED / "images"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, real_weights):
    """The trained mobilenet0.25 as ONNX: fixed 320x320 batch 1, fixed 320x320 batch 3, dynamic."""
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import InputSize

    checkpoint = load_checkpoint(real_weights)
    out = tmp_path_factory.mktemp("stream-export")
    size = (InputSize(320, 320),)
    export_checkpoint(checkpoint, ExportOptions(sizes=size, formats=("onnx",)), out / "b1")
    export_checkpoint(checkpoint, ExportOptions(sizes=size, formats=("onnx",), batch=3), out / "b3")
    export_checkpoint(
        checkpoint, ExportOptions(sizes=(InputSize(160, 160),), formats=("onnx",), dynamic=True), out / "d"
    )
    return {
        "b1": out / "b1" / "retinaface_mobilenet0.25_320x320.onnx",
        "b3": out / "b3" / "retinaface_mobilenet0.25_320x320_b3.onnx",
        "dynamic": out / "d" / "retinaface_mobilenet0.25_dynamic.onnx",
    }


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """21 photos of 7 sizes (each real photo three times): batches of same-size and of mixed-size images."""
    folder = tmp_path_factory.mktemp("repeated")
    for copy in range(3):
        for photo in sorted(require(PHOTOS).glob("*.jpg")):
            shutil.copy(photo, folder / f"{photo.stem}_{copy}.jpg")
    return folder


def test_one_line_per_image_with_size_and_the_detectors_faces(tmp_path, artifacts, repeated):
    out = tmp_path / "faces.jsonl"
    result = run(repeated, "--model", artifacts["b1"], "--predictions", out, "-q")
    assert result.exit_code == 0, result.stderr
    lines = records(out)
    assert sorted(r["image"] for r in lines) == sorted(str(p) for p in repeated.iterdir())
    # each worker's runtime on the threads the command gives it: the same arithmetic, the same faces
    detector = Detector.from_artifact(artifacts["b1"], threads=runtime_threads(default_workers()))
    for record in lines:
        image = cv2.imread(record["image"])
        assert (record["height"], record["width"]) == image.shape[:2]
        assert record["faces"] == [face.to_dict() for face in detector.detect(image)]
    assert sum(len(r["faces"]) for r in lines) > 100


def test_batches_give_the_faces_of_batch_one(tmp_path, artifacts, repeated):
    # a dynamic artifact: same-size images go through together, and the faces are those of batch 1, exactly
    one, four = tmp_path / "one.jsonl", tmp_path / "four.jsonl"
    assert run(repeated, "--model", artifacts["dynamic"], "--predictions", one, "-q").exit_code == 0
    assert run(repeated, "--model", artifacts["dynamic"], "--predictions", four, "--batch-size", 4, "-q").exit_code == 0
    by_image = {r["image"]: r for r in records(one)}
    assert {r["image"]: r for r in records(four)} == by_image and len(by_image) == 21
    # a fixed batch of 3 (the image sizes mixed, each letterboxed to 320x320) against the batch-1 export
    three = tmp_path / "three.jsonl"
    assert run(repeated, "--model", artifacts["b3"], "--predictions", three, "-q").exit_code == 0
    single = tmp_path / "single.jsonl"
    assert run(repeated, "--model", artifacts["b1"], "--predictions", single, "-q").exit_code == 0
    expected = {r["image"]: r for r in records(single)}
    for record in records(three):
        faces = expected[record["image"]]["faces"]
        assert len(record["faces"]) == len(faces)
        for got, want in zip(record["faces"], faces, strict=True):
            assert got["box"] == pytest.approx(want["box"], abs=1e-3) and got["score"] == pytest.approx(
                want["score"], abs=1e-5
            )


def test_optimized_runtime_finds_the_same_faces_within_rounding(tmp_path, artifacts):
    plain, optimized = tmp_path / "plain.jsonl", tmp_path / "optimized.jsonl"
    assert run(require(PHOTOS), "--model", artifacts["b1"], "--predictions", plain, "-q").exit_code == 0
    assert run(PHOTOS, "--model", artifacts["b1"], "--predictions", optimized, "--optimize", "-q").exit_code == 0
    expected = {r["image"]: r["faces"] for r in records(plain)}
    for record in records(optimized):
        faces = expected[record["image"]]
        assert len(record["faces"]) == len(faces)
        for got, want in zip(record["faces"], faces, strict=True):
            assert got["box"] == pytest.approx(want["box"], abs=0.05) and got["score"] == pytest.approx(
                want["score"], abs=1e-4
            )


def test_a_batch_the_artifact_cannot_take_is_refused(tmp_path, artifacts):
    result = run(require(PHOTOS), "--model", artifacts["b1"], "--predictions", tmp_path / "f.jsonl", "--batch-size", 4)
    assert result.exit_code == 2
    assert f"--batch-size 4: {artifacts['b1']} takes batches of exactly 1" in result.stderr
    assert not (tmp_path / "f.jsonl").exists()


def test_images_in_flight_are_bounded(artifacts):
    """The stream pulls paths only a bounded distance ahead of its results: memory does not grow with the folder."""
    photo = require(PHOTOS / "wider_sample_1.jpg")
    pulled = []

    def paths():
        for index in range(10_000):
            pulled.append(index)
            yield photo

    detectors = [Detector.from_artifact(artifacts["b1"]) for _ in range(2)]
    stream = detect_stream(detectors, paths(), batch_size=1, decode_threads=2)
    for count, _ in enumerate(stream, start=1):
        # decoding: 2 x batch + 2 x decode threads ahead, at most; running or waiting: 2 batches per worker
        assert len(pulled) - count <= 6 + 4
        if count == 20:
            break
    stream.close()


def test_workers_run_side_by_side_and_results_keep_the_input_order(tmp_path, artifacts):
    """Two workers, each with its own runtime, run batches at the same time; results come out as one worker's."""
    folder = tmp_path / "in"
    folder.mkdir()
    photos = sorted(require(PHOTOS).glob("*.jpg"))
    paths = []
    for index in range(12):  # an unreadable image in the middle: its error keeps its place
        path = folder / f"{index:02d}.jpg"
        path.write_bytes(b"not an image" if index == 5 else photos[index % len(photos)].read_bytes())
        paths.append(path)
    lock, active, most = threading.Lock(), [0], [0]

    def counted(detector):
        run_network = detector.backend.run

        def run_and_count(inputs):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                time.sleep(0.05)  # long enough for the other worker to start its own batch meanwhile
                return run_network(inputs)
            finally:
                with lock:
                    active[0] -= 1

        return Detector(dataclasses.replace(detector.backend, run=run_and_count), detector.config)

    one = [Detector.from_artifact(artifacts["b1"], threads=1)]
    two = [counted(Detector.from_artifact(artifacts["b1"], threads=1)) for _ in range(2)]
    expected = [r.record() for r in detect_stream(one, paths)]
    assert [r.record() for r in detect_stream(two, paths)] == expected
    assert most[0] == 2
    assert [r["image"] for r in expected] == [str(p) for p in paths]
    assert expected[5] == {"image": str(paths[5]), "error": "cannot be read as an image"}
    assert sum(len(r.get("faces", ())) for r in expected) > 20


def test_num_workers_is_each_engines_own_and_cpus_per_worker_is_rays(tmp_path, artifacts):
    out = tmp_path / "faces.jsonl"
    result = run(require(PHOTOS), "--model", artifacts["b1"], "--predictions", out, "--num-workers", 3, "-q")
    assert result.exit_code == 0, result.stderr
    assert len(records(out)) == 7
    refused = run(PHOTOS, "--model", artifacts["b1"], "--predictions", tmp_path / "r.jsonl", "--cpus-per-worker", 1)
    assert refused.exit_code == 2 and "--cpus-per-worker go with --engine ray" in refused.stderr


def test_more_local_workers_than_the_limit_are_refused_before_any_is_loaded(tmp_path, artifacts, monkeypatch):
    monkeypatch.setenv("RETINAFACE_EXPORT_MAX_WORKERS", "2")
    out = tmp_path / "faces.jsonl"
    refused = run(require(PHOTOS), "--model", artifacts["b1"], "--predictions", out, "--num-workers", 3)
    assert refused.exit_code == 2
    assert "--num-workers 3 is above 2: each local worker loads the model" in refused.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "name, side_by_side",
    [
        ("m.onnx", True),
        ("m.xml", True),
        ("m.torchscript.pt", True),
        ("m.ncnn.param", True),
        ("m.tflite", True),
        ("m_fp32.mnn", False),
        ("m.unknown", True),
    ],
)
def test_a_runtime_whose_runs_take_turns_gets_one_worker(name, side_by_side, monkeypatch):
    # MNN's binding holds the GIL while it computes: two workers would take turns on half the threads each
    monkeypatch.setattr("retinaface_export.inference.stream.available_cpus", lambda: 8)
    assert runs_side_by_side(name) is side_by_side
    assert default_workers(runs_side_by_side(name)) == (4 if side_by_side else 1)
    assert runtime_threads(default_workers(runs_side_by_side(name))) == (2 if side_by_side else 8)


def wider_tree(root, events):
    """Real photos laid out as WIDER_val/images/EVENT/NAME.jpg, and a ground truth naming them."""
    for event, names in events.items():
        (root / "images" / event).mkdir(parents=True)
        for name in names:
            shutil.copy(require(PHOTOS / f"{name}.jpg"), root / "images" / event / f"{name}.jpg")
    gt = root / "gt"
    gt.mkdir()

    def cell(items):
        array = np.empty((len(items), 1), dtype=object)
        for i, item in enumerate(items):
            array[i, 0] = item
        return array

    boxes = [cell([np.array([[10.0, 10.0, 40.0, 40.0]]) for _ in names]) for names in events.values()]
    savemat(
        gt / "wider_face_val.mat",
        {
            "event_list": cell([np.array([e]) for e in events]),
            "file_list": cell([cell([np.array([n]) for n in names]) for names in events.values()]),
            "face_bbx_list": cell(boxes),
        },
    )
    keep = cell([cell([np.array([[1]]) for _ in names]) for names in events.values()])
    for setting in ("easy", "medium", "hard"):
        savemat(gt / f"wider_{setting}_val.mat", {"gt_list": keep})
    return root / "images", gt


def test_widerface_files_are_what_eval_writes_and_reads(tmp_path, artifacts, monkeypatch):
    # the runtime on its default thread count, as retinaface-eval runs it: the same arithmetic, the same bytes
    monkeypatch.setattr("retinaface_export.cli.detect.runtime_threads", lambda workers=1: None)
    events = {"0--Parade": ["wider_sample_1", "wider_sample_2"], "1--Handshaking": ["wider_sample_3", "crowd_selfie"]}
    images, gt = wider_tree(tmp_path, events)
    ours = tmp_path / "ours"
    folders = [images / event for event in events]
    result = run(*folders, "--model", artifacts["b1"], "--widerface-predictions", ours, "--threshold", 0.02, "-q")
    assert result.exit_code == 0, result.stderr
    theirs = tmp_path / "theirs"
    args = ["--ground-truth", gt, "--json", "-", "-q"]
    made = CliRunner().invoke(
        eval_main,
        [str(a) for a in ["--images", images, "--model", artifacts["b1"], "--save-predictions", theirs, *args]],
    )
    assert made.exit_code == 0, made.output
    for event, names in events.items():
        for name in names:  # byte for byte what retinaface-eval --images writes for the same artifact
            assert (ours / event / f"{name}.txt").read_bytes() == (theirs / event / f"{name}.txt").read_bytes()
    scored = CliRunner().invoke(eval_main, [str(a) for a in ["--predictions", ours, *args]])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout) == json.loads(made.stdout)


@pytest.mark.parametrize(
    "damage, exit_code, says",
    [
        ("torn_last", 0, "line 3 was cut short by an interrupted run; dropped"),
        ("corrupt_middle", 1, "line 2 is not a detection record; --resume cannot trust this file"),
    ],
)
def test_resume_after_damage(tmp_path, artifacts, damage, exit_code, says):
    out = tmp_path / "faces.jsonl"
    photos = require(PHOTOS)
    assert run(photos, "--model", artifacts["b1"], "--predictions", out, "-q").exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    if damage == "torn_last":  # a run killed while writing its third line
        out.write_bytes(b"".join(lines[:2]) + lines[2][:25])
    else:
        out.write_bytes(lines[0] + b'{"image": "x.jpg", "fac\n' + b"".join(lines[2:]))
    result = run(photos, "--model", artifacts["b1"], "--predictions", out, "--resume", "-q")
    assert result.exit_code == exit_code
    assert says in result.stderr
    if exit_code == 0:
        again = records(out)
        assert sorted(r["image"] for r in again) == sorted(str(p) for p in photos.glob("*.jpg"))
        assert again[:2] == [json.loads(line) for line in lines[:2]]


def test_existing_records_without_resume_are_refused(tmp_path, artifacts):
    out = tmp_path / "faces.jsonl"
    out.write_text('{"image": "a.jpg", "faces": []}\n')
    result = run(require(PHOTOS), "--model", artifacts["b1"], "--predictions", out)
    assert result.exit_code == 2 and "already has records: add --resume" in result.stderr
    assert out.read_text() == '{"image": "a.jpg", "faces": []}\n'


def test_unreadable_images_are_recorded_and_the_run_goes_on(tmp_path, artifacts):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    shutil.copy(require(PHOTOS / "wider_sample_1.jpg"), folder / "good.jpg")
    out = tmp_path / "faces.jsonl"
    result = run(folder, "--model", artifacts["b1"], "--predictions", out, "-q")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"retinaface-detect: error: {folder / 'broken.jpg'}: cannot be read as an image"
    ]
    by_image = {r["image"]: r for r in records(out)}
    assert by_image[str(folder / "broken.jpg")] == {
        "image": str(folder / "broken.jpg"),
        "error": "cannot be read as an image",
    }
    assert len(by_image[str(folder / "good.jpg")]["faces"]) > 0


@pytest.mark.parametrize(
    "flag, where, says",
    [
        ("--predictions", lambda inp: inp / "faces.jsonl", "is inside the input"),
        ("--widerface-predictions", lambda inp: inp / "wider", "is inside the input"),
        ("--widerface-predictions", lambda inp: inp.parent, "holds the input"),
        ("--predictions", lambda inp: inp / "wider_sample_1.jpg", "is inside the input"),
    ],
)
def test_outputs_inside_inputs_are_refused(tmp_path, artifacts, flag, where, says):
    inp = tmp_path / "photos"
    inp.mkdir()
    shutil.copy(require(PHOTOS / "wider_sample_1.jpg"), inp)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run(inp, "--model", artifacts["b1"], flag, where(inp))
    assert result.exit_code == 2 and says in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_link_leading_out_of_a_folder_is_refused(tmp_path, artifacts):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "elsewhere.jpg").symlink_to(require(PHOTOS / "wider_sample_1.jpg"))
    result = run(folder, "--model", artifacts["b1"], "--predictions", tmp_path / "faces.jsonl", "-q")
    assert result.exit_code == 1
    assert f"{folder / 'elsewhere.jpg'}: leads outside {folder}" in result.stderr


def test_interrupted_run_leaves_a_valid_file_and_resume_does_every_image_once(tmp_path, artifacts):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(60):  # the crowd photo (3 MP) 60 times: long enough to stop the run in the middle
        shutil.copy(require(PHOTOS / "crowd_selfie.jpg"), folder / f"crowd_{index:03d}.jpg")
    out = tmp_path / "faces.jsonl"
    command = [sys.executable, "-m", "retinaface_export", "detect", str(folder), "--model", str(artifacts["b1"])]
    command += ["--predictions", str(out), "-q"]
    child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "--resume goes on" in err
    first = records(out)  # every line whole
    assert 3 <= len(first) < 60
    resumed = run(folder, "--model", artifacts["b1"], "--predictions", out, "--resume", "-q")
    assert resumed.exit_code == 0, resumed.stderr
    images = [r["image"] for r in records(out)]
    assert sorted(images) == sorted(str(p) for p in folder.iterdir())  # each exactly once


def test_missing_ray_extra_names_the_pip_install(monkeypatch, tmp_path, artifacts):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    result = run(require(PHOTOS), "--model", artifacts["b1"], "--predictions", tmp_path / "f.jsonl", "--engine", "ray")
    assert result.exit_code == 2
    assert 'pip install "retinaface-export[ray]"' in result.stderr
    assert not (tmp_path / "f.jsonl").exists()
