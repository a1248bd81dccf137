"""``retinaface-detect``: faces out of images with a checkpoint or any exported artifact."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from retinaface_export.anchors import load_anchors
from retinaface_export.cli.common import (
    artifact_inputs,
    configure_logging,
    handle_errors,
    json_option,
    json_to_stdout,
    titled_table,
    wide_console,
    write_json,
)
from retinaface_export.detection.drawing import draw_faces
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.errors import FileError, UsageError
from retinaface_export.formats import FORMATS
from retinaface_export.images import IMAGE_SUFFIXES, images_in_folder, read_image
from retinaface_export.inference.detector import Detector
from retinaface_export.safety.atomic import atomic_write_bytes
from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs
from retinaface_export.variants import list_variants

log = logging.getLogger(__name__)
COMMAND = "retinaface-detect"


def _expand(arguments: tuple[Path, ...]) -> tuple[list[Path], list[str]]:
    """Image paths (a folder stands for its images, by suffix, not recursive) and errors for empty folders."""
    paths, errors = [], []
    for argument in arguments:
        if argument.is_dir():
            found = images_in_folder(argument)
            if not found:
                errors.append(f"{argument}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            paths.extend(found)
        else:
            paths.append(argument)
    return paths, errors


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except (OSError, RuntimeError):  # a symlink loop: not the same as anything we write
        return False


def _refuse_overwriting_inputs(
    images: list[Path],
    output_dir: Path | None,
    json_path: Path | None,
    png_names: list[str],
    inputs: list[tuple[str, Path | str | None]],
) -> None:
    """Outputs never replace inputs: the rule of every command, and no drawing folder among the photos."""
    refuse_outputs_over_inputs(
        [("--json", json_path), ("--output-dir", output_dir)], [*inputs, *(("image", image) for image in images)]
    )
    if output_dir is not None:
        for image in images:
            if _same_file(image.parent, output_dir):
                raise UsageError(
                    f"--output-dir {output_dir} is the folder of the input image {image}: drawings could replace "
                    "photos there; choose another folder"
                )
    drawings = [output_dir / name for name in png_names] if output_dir is not None else []
    if json_path is not None and not json_to_stdout(json_path) and any(_same_file(json_path, d) for d in drawings):
        raise UsageError(f"--json {json_path} is the name of a drawing in --output-dir; choose another name")


def _output_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` per image; where that is taken, ``<stem>_<n>.png`` with the first n not taken."""
    names: list[str] = []
    taken: set[str] = {f"{path.stem}.png" for path in paths}  # a later a_1.jpg keeps its own a_1.png
    used: set[str] = set()
    for path in paths:
        name, count = f"{path.stem}.png", 0
        while name in used or (count and name in taken):
            count += 1
            name = f"{path.stem}_{count}.png"
        used.add(name)
        names.append(name)
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IMAGE|FOLDER...")
@click.option("--weights", type=str, default=None, help="Checkpoint (.pth): PyTorch eager at each image's size.")
@click.option(
    "--model",
    "artifact",
    type=str,
    default=None,
    help="An artifact of any format retinaface-export or retinaface-convert writes: "
    + ", ".join(fmt.suffix for fmt in FORMATS.values())
    + " (an IR's .bin beside it).",
)
@click.option("--backbone", type=click.Choice(list_variants()), default=None, help="With --weights: expected variant.")
@click.option("--anchors", type=str, default=None, help="With --weights: anchors file or preset.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Score threshold.")
@click.option("--nms", type=click.FloatRange(0, 1), default=0.4, show_default=True, help="NMS IoU threshold.")
@json_option("the faces in original-image pixels (schema: retinaface_export/detect.schema.json)")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Draw boxes, scores and landmarks into PNGs here.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
@handle_errors(COMMAND)
def main(
    images: tuple[Path, ...],
    weights: str | None,
    artifact: str | None,
    backbone: str | None,
    anchors: str | None,
    threshold: float,
    nms: float,
    json_path: Path | None,
    output_dir: Path | None,
    quiet: bool,
) -> None:
    """Detect faces in images (a folder stands for the images in it) with --weights or --model.

    Example: retinaface-detect photo.jpg --model out/retinaface_mobilenet0.25_640x640.onnx --output-dir drawn
    """
    configure_logging(quiet)
    if (weights is None) == (artifact is None):
        raise UsageError("give exactly one of --weights CKPT or --model ARTIFACT")
    if artifact and (backbone or anchors):
        raise UsageError("--backbone and --anchors go with --weights; an artifact carries its own")
    config = DetectionConfig(score_threshold=threshold, nms_threshold=nms)
    paths, folder_errors = _expand(images)
    png_names = _output_names(paths)
    inputs = [("IMAGE|FOLDER", a) for a in images if a.is_dir()]
    inputs += [("--weights", weights), ("--anchors", anchors), *artifact_inputs("--model", artifact)]
    _refuse_overwriting_inputs(paths, output_dir, json_path, png_names, inputs)
    if weights:
        detector = Detector.from_checkpoint(weights, backbone, load_anchors(anchors) if anchors else None, config)
    else:
        detector = Detector.from_artifact(artifact, config)

    for message in folder_errors:
        click.echo(f"{COMMAND}: error: {message}", err=True)
    failures = len(folder_errors)
    report = []
    table = titled_table(f"faces ({detector.backend.name}, {detector.backend.source})")
    table.add_column("image")
    table.add_column("faces", justify="right")
    for path, png_name in zip(paths, png_names, strict=True):
        try:
            image = read_image(path)
        except FileError as exc:  # report it, go on with the other images, fail at the end
            click.echo(f"{COMMAND}: error: {exc}", err=True)
            failures += 1
            continue
        faces = detector.detect(image)
        report.append({"image": str(path), "faces": [face.to_dict() for face in faces]})
        table.add_row(str(path), str(len(faces)))
        if output_dir is not None:
            import cv2

            ok, encoded = cv2.imencode(".png", draw_faces(image, faces))
            if not ok:
                raise FileError(output_dir / png_name, "PNG encoding failed")
            atomic_write_bytes(output_dir / png_name, encoded.tobytes())
    if json_path is not None:
        write_json(json_path, report, indent=None)
    if not quiet:
        wide_console(stderr_output=json_to_stdout(json_path)).print(table)
    if failures:
        raise click.exceptions.Exit(1)
