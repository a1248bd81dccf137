"""trust.py: TorchScript archives are code (issue 16), ONNX files are checked before a runtime opens them.

Every payload here is harmless and live: it creates a marker file when TorchScript runs it. Each test
shows the check refuses the archive and the marker does not appear, then loads the archive anyway to
prove the payload would have run (so a check that let it through could not pass the test).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from retinaface_export.cli import export as export_cli
from retinaface_export.contract import OUTPUT_NAMES
from retinaface_export.converters.onnx.trust import check_onnx_file
from retinaface_export.converters.torchscript.trust import check_torchscript_archive, checked_torchscript_bytes
from retinaface_export.errors import InputFileError, UntrustedArtifactError

PROVENANCE = json.dumps({"variant": "mobilenet0.25", "input_size": [64, 64], "batch": 1})


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A synthetic mobilenet0.25 export at 320 and a dynamic one, in this process (after other traces)."""
    out = tmp_path_factory.mktemp("export")
    for extra in ([], ["--dynamic"]):
        result = CliRunner().invoke(
            export_cli.main, ["--size", "320", "--output-dir", str(out), "-q", *extra], catch_exceptions=False
        )
        assert result.exit_code == 0, result.stderr
    return out


def ts_file(folder: Path) -> Path:
    return folder / "retinaface_mobilenet0.25_320x320.torchscript.pt"


def onnx_file(folder: Path) -> Path:
    return folder / "retinaface_mobilenet0.25_320x320.onnx"


def entry(source: Path, pattern: str) -> str:
    """The one entry name of an archive matching ``pattern`` (torch may number a class's file or not)."""
    with zipfile.ZipFile(source) as archive:
        (name,) = [n for n in archive.namelist() if re.search(pattern, n)]
    return name


def rewrite(source: Path, target: Path, change: dict[str, bytes | None], extra: dict[str, bytes] | None = None):
    """Copy a zip archive entry by entry; ``change`` maps entry names to new bytes (None drops the entry)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change.get(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        top = zin.namelist()[0].split("/")[0]
        for name, data in (extra or {}).items():
            zout.writestr(f"{top}/{name}", data)
    return target


def refused(path: Path, says: str) -> str:
    with pytest.raises(UntrustedArtifactError) as info:
        check_torchscript_archive(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message, message
    assert "refused before loading" in message
    return message


# ---------------------------------------------------------------- TorchScript


def test_our_exports_pass(exported):
    for name in ("retinaface_mobilenet0.25_320x320.torchscript.pt", "retinaface_mobilenet0.25_dynamic.torchscript.pt"):
        check_torchscript_archive(exported / name)
    data = checked_torchscript_bytes(ts_file(exported))
    assert data == ts_file(exported).read_bytes()
    module = torch.jit.load(io.BytesIO(data))  # what the runner loads is what was checked
    assert [tuple(out.shape) for out in module(torch.zeros(1, 3, 320, 320))] == [
        (1, 4200, 4),
        (1, 4200, 2),
        (1, 4200, 10),
    ]


def test_an_export_from_a_fresh_process_passes(tmp_path):
    """A fresh process's first trace names torch's classes without numbers: the check must not care."""
    script = Path(sys.executable).with_name("retinaface-export")
    command = [str(script), "--size", "320", "--format", "torchscript", "--output-dir", str(tmp_path), "-q"]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    check_torchscript_archive(ts_file(tmp_path))


def test_payload_in_forward_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"

    class Payload(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.path = str(marker)

        def forward(self, data: torch.Tensor):
            touched = torch.from_file(self.path, True, 1)
            return data + touched.sum(), data, data

    path = tmp_path / "retinaface_mobilenet0.25_64x64.torchscript.pt"
    torch.jit.save(torch.jit.script(Payload()), str(path), _extra_files={"provenance.json": PROVENANCE})
    refused(path, "is not code retinaface-export writes")
    assert not marker.exists()
    torch.jit.load(str(path))(torch.zeros(1))  # the payload is live
    assert marker.exists()


def test_payload_in_setstate_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"

    class Payload(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.path = str(marker)

        def forward(self, data: torch.Tensor) -> torch.Tensor:
            return data

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.training = state[1]
            self.path = state[0] + str(torch.from_file(state[0], True, 1).sum().item())

    path = tmp_path / "x.torchscript.pt"
    torch.jit.save(torch.jit.script(Payload()), str(path), _extra_files={"provenance.json": PROVENANCE})
    refused(path, "is not code retinaface-export writes")
    assert not marker.exists()
    torch.jit.load(str(path))  # unpickling alone runs __setstate__
    assert marker.exists()


def test_payload_injected_into_our_own_archive_is_refused(tmp_path, exported):
    marker = tmp_path / "marker"
    source = ts_file(exported)
    name = entry(source, r"model/retinaface(/___torch_mangle_\d+)?\.py$")
    with zipfile.ZipFile(source) as archive:
        code = archive.read(name)
    line = next(text for text in code.splitlines() if b"torch.cat(" in text)
    target, call = line.split(b" = ", 1)
    payload = b'torch.from_file("%s", True, 1).sum()' % str(marker).encode()
    injected = code.replace(line, b"%s = torch.add(%s, %s)" % (target, call, payload))
    assert injected != code
    path = rewrite(source, tmp_path / source.name, {name: injected})
    message = refused(path, "is not code retinaface-export writes")
    assert re.search(r"retinaface(/___torch_mangle_\d+)?\.py' is not code", message), message  # numbered or not
    assert not marker.exists()
    torch.jit.load(str(path))(torch.zeros(1, 3, 64, 64))
    assert marker.exists()


class _Global:
    """Pickled by reference: its module and name land in a GLOBAL opcode."""


@pytest.mark.parametrize(
    "fault, says",
    [
        ("extra-code-file", "evil.py' is not code retinaface-export writes"),
        ("missing-code-file", "is missing"),
        ("extra-entry", "entry 'extra/notes.txt' is not in archives retinaface-export writes"),
        ("stack-global", "data.pkl builds objects with STACK_GLOBAL"),
        ("foreign-global", "its pickles name"),
        ("not-a-pickle", "data.pkl is not a valid pickle"),
        ("duplicate-entry", "duplicate entry names"),
        ("same-name-but-for-case", "duplicate entry names"),
        ("trailing-data", "data after its end"),
        ("leading-data", "not a zip file"),
        ("entry-outside-top-folder", "is outside the archive's one top folder"),
    ],
)
def test_archive_tricks_are_refused(tmp_path, exported, fault, says):
    source, target = ts_file(exported), tmp_path / ts_file(exported).name
    data_pkl = entry(source, r"^[^/]+/data\.pkl$")
    if fault == "extra-code-file":
        rewrite(source, target, {}, {"code/__torch__/evil.py": b"class Evil(Module):\n  pass\n"})
    elif fault == "missing-code-file":
        rewrite(source, target, {entry(source, r"model/backbones(/___torch_mangle_\d+)?\.py$"): None})
    elif fault == "extra-entry":
        rewrite(source, target, {}, {"extra/notes.txt": b"hello"})
    elif fault == "stack-global":
        rewrite(source, target, {data_pkl: pickle.dumps(os.getcwd, protocol=4)})
    elif fault == "foreign-global":
        rewrite(source, target, {data_pkl: pickle.dumps(_Global, protocol=2)})
    elif fault == "not-a-pickle":
        rewrite(source, target, {data_pkl: b"\x80\x02garbage"})
    elif fault == "duplicate-entry":
        rewrite(source, target, {})
        with zipfile.ZipFile(target, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr(archive.namelist()[0], b"")
    elif fault == "same-name-but-for-case":  # torch's reader finds names ignoring case
        code = entry(source, r"model/retinaface(/___torch_mangle_\d+)?\.py$")
        rewrite(source, target, {}, {code.split("/", 1)[1].replace("code/", "Code/"): b"class Evil(Module):\n"})
    elif fault == "trailing-data":
        target.write_bytes(source.read_bytes() + b"\0" * 10)
    elif fault == "leading-data":
        target.write_bytes(b"#!payload\n" + source.read_bytes())
    elif fault == "entry-outside-top-folder":
        with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info))
            zout.writestr("elsewhere/code/x.py", b"")
    refused(target, says)


def test_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe.torchscript.pt")
    with pytest.raises(InputFileError, match="is a FIFO"):
        check_torchscript_archive(tmp_path / "pipe.torchscript.pt")


@pytest.mark.slow
def test_resnet50_export_passes(tmp_path):
    result = CliRunner().invoke(
        export_cli.main,
        ["--backbone", "resnet50", "--size", "320", "--format", "torchscript", "--output-dir", str(tmp_path), "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    check_torchscript_archive(tmp_path / "retinaface_resnet50_320x320.torchscript.pt")


# ---------------------------------------------------------------- ONNX


def onnx_refused(path: Path, says: str) -> None:
    with pytest.raises(UntrustedArtifactError) as info:
        check_onnx_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message, message


def test_our_onnx_files_pass(exported):
    check_onnx_file(onnx_file(exported))
    check_onnx_file(exported / "retinaface_mobilenet0.25_dynamic.onnx")


def _largest_initializer(model: onnx.ModelProto) -> Any:
    return max(model.graph.initializer, key=lambda t: len(t.raw_data))


def _externalise(model: onnx.ModelProto, location: str, data_file: Path | None) -> None:
    tensor = _largest_initializer(model)
    if data_file is not None:
        data_file.parent.mkdir(parents=True, exist_ok=True)
        data_file.write_bytes(tensor.raw_data)
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


@pytest.mark.parametrize(
    "location",
    ["../outside/weights.bin", str(Path("/tmp/weights.bin")), "weights.bin"],
    ids=["dot-dot", "absolute", "symlink-leading-out"],
)
def test_external_data_outside_the_folder_is_refused(tmp_path, exported, location):
    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "outside" / "weights.bin"
    model = onnx.load(onnx_file(exported))
    _externalise(model, location, outside)
    if location == "weights.bin":
        os.symlink(outside, folder / "weights.bin")
    path = folder / "m.onnx"
    onnx.save(model, path)
    onnx_refused(path, "outside its folder")


def test_external_data_inside_the_folder_passes(tmp_path, exported):
    folder = tmp_path / "model"
    model = onnx.load(onnx_file(exported))
    _externalise(model, "weights.bin", folder / "weights.bin")
    onnx.save(model, folder / "m.onnx")
    check_onnx_file(folder / "m.onnx")
    (folder / "weights.bin").write_bytes(b"short")
    onnx_refused(folder / "m.onnx", "is shorter than its tensor claims")


def _edited(exported: Path, tmp_path: Path, edit) -> Path:
    model = onnx.load(onnx_file(exported))
    edit(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _swap_outputs(model: onnx.ModelProto) -> None:
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend([outputs[1], outputs[0], outputs[2]])


def _rename(node_field: str, value: str):
    def edit(model: onnx.ModelProto) -> None:
        setattr(next(n for n in model.graph.node if n.op_type == "Conv"), node_field, value)

    return edit


@pytest.mark.parametrize(
    "edit, says",
    [
        (_rename("op_type", "EvilConv"), "unknown operator 'EvilConv' (domain '')"),
        (_rename("domain", "com.example.custom"), "(domain 'com.example.custom')"),
        (_swap_outputs, f"not the contract's {', '.join(OUTPUT_NAMES)} (in that order)"),
        (lambda m: setattr(m.graph.output[2], "name", "landmarks"), "outputs are 'face_rpn_bbox_pred'"),
        (lambda m: setattr(m.graph.input[0], "name", "image"), "not the contract's one input 'data'"),
        (lambda m: m.functions.add().CopyFrom(onnx.FunctionProto(name="f", domain="x")), "defines local functions"),
    ],
    ids=["unknown-op", "custom-domain", "swapped-outputs", "renamed-output", "renamed-input", "local-function"],
)
def test_graph_faults_are_refused(tmp_path, exported, edit, says):
    onnx_refused(_edited(exported, tmp_path, edit), says)


def test_onnx_runtime_would_have_opened_the_swapped_model(tmp_path, exported):
    """The contract check is what stops it: ONNX Runtime runs a model with swapped outputs happily."""
    import onnxruntime as ort

    path = _edited(exported, tmp_path, _swap_outputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAMES[1], OUTPUT_NAMES[0], OUTPUT_NAMES[2]]
    onnx_refused(path, "in that order")


def test_garbage_and_special_files(tmp_path):
    (tmp_path / "m.onnx").write_bytes(np.random.default_rng(0).bytes(1000))
    onnx_refused(tmp_path / "m.onnx", "not an ONNX model")
    with pytest.raises(InputFileError, match="is a character device"):
        check_onnx_file("/dev/zero")


# ---------------------------------------------------------------- torch's class numbering (issue 25, item 1)


def _numbered_twins(source: Path) -> tuple[str, str]:
    """Two numbered container classes of the same kind: erasing torch's numbers makes their files look alike."""
    with zipfile.ZipFile(source) as archive:
        files = {n: archive.read(n) for n in archive.namelist() if re.search(r"container/___torch_mangle_\d+\.py$", n)}
    by_kind: dict[bytes, list[str]] = {}
    for name, code in files.items():
        by_kind.setdefault(re.sub(rb"___torch_mangle_\d+", b"", code), []).append(name)
    return next(tuple(sorted(names)[:2]) for names in by_kind.values() if len(names) > 1)


def _swap_code(source: Path, target: Path) -> Path:
    first, second = _numbered_twins(source)
    with zipfile.ZipFile(source) as archive:
        return rewrite(source, target, {first: archive.read(second), second: archive.read(first)})


def _swap_classes_in_data_pkl(source: Path, target: Path) -> Path:
    """The module tree rewired: two numbered classes' objects trade classes in data.pkl (code untouched)."""
    first, second = (re.search(r"___torch_mangle_\d+", n).group(0).encode() for n in _numbered_twins(source))
    name = entry(source, r"^[^/]+/data\.pkl$")
    with zipfile.ZipFile(source) as archive:
        data = archive.read(name)
    pattern = re.compile(b"(?:" + re.escape(first) + b"|" + re.escape(second) + rb")(?=\s)")
    swapped = pattern.sub(lambda m: second if m.group(0) == first else first, data)
    assert swapped != data
    return rewrite(source, target, {name: swapped})


SWAPS = {"code-files-swapped": _swap_code, "data-pkl-classes-swapped": _swap_classes_in_data_pkl}


@pytest.mark.parametrize("swap", SWAPS)
def test_classes_swapped_under_torch_numbering_are_refused(tmp_path, exported, swap):
    """``tsx_ts_mangle_swap_detect``: the check used to erase ``___torch_mangle_N`` and accept these."""
    path = SWAPS[swap](ts_file(exported), tmp_path / ts_file(exported).name)
    refused(path, "its code is not what retinaface-export writes")


def test_numbering_does_not_matter_where_it_is_consistent(tmp_path, exported):
    """The in-process export (numbered classes) passes, and so does the same archive renumbered throughout."""
    source = ts_file(exported)
    with zipfile.ZipFile(source) as archive:
        numbers = sorted({int(n) for n in re.findall(r"___torch_mangle_(\d+)", " ".join(archive.namelist()))})
        shift = {str(n).encode(): str(n + 1000).encode() for n in numbers}
        renumbered = {
            re.sub(r"___torch_mangle_(\d+)", lambda m: f"___torch_mangle_{int(m.group(1)) + 1000}", info.filename): (
                re.sub(rb"___torch_mangle_(\d+)", lambda m: b"___torch_mangle_" + shift[m.group(1)], archive.read(info))
                if not _is_storage(info.filename)
                else archive.read(info)
            )
            for info in archive.infolist()
        }
    target = tmp_path / source.name
    with zipfile.ZipFile(target, "w") as out:
        for name, data in renumbered.items():
            out.writestr(name, data)
    check_torchscript_archive(target)


def _is_storage(name: str) -> bool:
    return re.search(r"/(data|traced_inputs)/\d+$", name) is not None


def test_detect_parity_and_bench_refuse_the_swapped_archive(tmp_path, exported):
    from retinaface_export.cli import bench as bench_cli
    from retinaface_export.cli import detect as detect_cli
    from retinaface_export.golden import find_golden_sets
    from retinaface_export.hashing import sha256_file
    from retinaface_export.manifest import Manifest
    from retinaface_export.parity import check_artifact, packaged_golden_root

    folder = tmp_path / "export"
    folder.mkdir()
    swapped = _swap_code(ts_file(exported), folder / ts_file(exported).name)
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] == swapped.name]
    manifest["artifacts"][0] |= {"sha256": sha256_file(swapped), "bytes": swapped.stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    photo = tmp_path / "photo.png"
    import cv2

    cv2.imwrite(str(photo), np.zeros((64, 64, 3), np.uint8))
    runs = {
        "detect": CliRunner().invoke(detect_cli.main, [str(photo), "--model", str(swapped), "-q"]),
        "bench": CliRunner().invoke(bench_cli.main, [str(folder), "--no-eager", "--runs", "3", "--mode", "latency"]),
    }
    for command, result in runs.items():
        assert result.exit_code == 1, (command, result.output)
        assert "refused before loading" in result.stderr and "Traceback" not in result.output, (command, result.output)
    read = Manifest.read(folder)
    verdict = check_artifact(
        folder, read.artifacts[0], find_golden_sets(packaged_golden_root())[0], [], read.checkpoint
    )
    assert not verdict.passed and "refused before loading" in " ".join(verdict.failures), verdict.failures


# ---------------------------------------------------------------- provenance is input (issue 25, items 2 and 3)

# What an artifact may claim, crafted: every row must be one line naming the file, never a traceback.
BAD_PROVENANCE = {
    "anchors-a-string": ("anchors", "abc", "expected a table of min_sizes"),
    "anchors-step-0": (
        "anchors",
        {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [0, 16, 32], "variance": [0.1, 0.2]},
        "steps must hold positive integers",
    ),
    "anchors-10000-per-cell": (
        "anchors",
        {"min_sizes": [[16] * 10**4] * 3, "steps": [8, 16, 32], "variance": [0.1, 0.2]},
        "anchors per cell",
    ),
    "input-size-0x0": ("input_size", [0, 0], "sides must be positive multiples of 32"),
    "input-size-a-string": ("input_size", "abc", "'input_size' must be [height, width]"),
    "input-size-99968": ("input_size", [99968, 99968], "above the largest allowed side"),
    "batch-a-string": ("batch", "abc", "'batch' must be an integer"),
    "batch-huge": ("batch", 10**9, "above the largest allowed batch"),
    "postprocess-unknown": ("postprocess", {"mode": "abc"}, "unknown post-processing"),
    "top-k-huge": ("postprocess", {"mode": "nms", "top_k": 10**12}, "--top-k must be from 1 to 200000"),
    "input-format-unknown": ("input_format", "abc", "unknown input format"),
    "precision-unknown": ("precision", "fp64", "unknown precision 'fp64'"),
    "mean-nan": ("mean_bgr", ["NaN", 1, 2], "'mean_bgr' must be three finite numbers"),
}


def _onnx_with(source: Path, target: Path, key: str, value: Any) -> Path:
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = json.dumps(value)
            break
    else:
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(target))
    return target


def _torchscript_with(source: Path, target: Path, key: str, value: Any) -> Path:
    name = entry(source, r"extra/provenance\.json$")
    with zipfile.ZipFile(source) as archive:
        provenance = json.loads(archive.read(name))
    return rewrite(source, target, {name: json.dumps(provenance | {key: value}).encode()})


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", BAD_PROVENANCE)
def test_crafted_provenance_is_one_line_never_a_traceback(tmp_path, exported, case, fmt):
    from retinaface_export.cli import detect as detect_cli

    key, value, says = BAD_PROVENANCE[case]
    if fmt == "onnx":
        model = _onnx_with(onnx_file(exported), tmp_path / onnx_file(exported).name, key, value)
    else:
        model = _torchscript_with(ts_file(exported), tmp_path / ts_file(exported).name, key, value)
    photo = tmp_path / "photo.png"
    photo.write_bytes(_PNG_64)
    result = CliRunner().invoke(detect_cli.main, [str(photo), "--model", str(model), "-q"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{model}: malformed provenance" in lines[0] and says in lines[0], lines


def _png(height: int, width: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    return data.tobytes()


_PNG_64 = _png(64, 64)


def test_trust_check_builds_no_reference_from_an_unbounded_claim(tmp_path, exported, monkeypatch):
    """A claim of NMS with 10,000 anchors per cell used to make the check build that reference (OOM)."""
    from retinaface_export.converters.torchscript import trust

    built = []
    original = trust._traced_archive

    def guarded(variant: str, post: str) -> bytes:
        built.append(post)
        assert len(post) < 10_000, "a reference was built from an unbounded claim"
        return original(variant, post)

    monkeypatch.setattr(trust, "_traced_archive", guarded)
    monkeypatch.setattr(trust, "_REFERENCES", {})
    anchors = {"min_sizes": [[16] * 10**4] * 3, "steps": [8, 16, 32], "variance": [0.1, 0.2]}
    path = _torchscript_with(ts_file(exported), tmp_path / "x.torchscript.pt", "postprocess", {"mode": "nms"})
    path = _torchscript_with(path, tmp_path / "y.torchscript.pt", "anchors", anchors)
    check_torchscript_archive(path)  # the code is ours (raw outputs); the claim is refused where it is used
    assert built == [""]


@pytest.mark.parametrize("what", ["provenance", "pickle"])
def test_oversized_torchscript_entries_are_refused(tmp_path, exported, what):
    """What the check keeps of an archive is bounded: provenance.json and each pickle at most 1 MiB."""
    source, target = ts_file(exported), tmp_path / "x.torchscript.pt"
    if what == "provenance":
        _torchscript_with(source, target, "pad", "x" * (2 << 20))
        refused(target, "provenance.json larger than")
    else:
        rewrite(source, target, {entry(source, r"^[^/]+/data\.pkl$"): b"\x80\x02" + b"N0" * (1 << 20) + b"N."})
        refused(target, "data.pkl larger than")
