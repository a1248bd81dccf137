"""``retinaface-eval``: WIDER FACE validation AP of a prediction folder, or of a model run over the images.

Two protocols: ``official`` (easy/medium/hard, the WIDER FACE evaluation code) and ``omz`` (the Open Model
Zoo accuracy checker's single mAP over the whole set, as retinaface-resnet50-pytorch's accuracy-check.yml
configures it). Scoring a prediction folder imports no model runtime (nor OpenCV): those are imported only
with --images. ``--cache-dir`` keeps the parsed ground truth (keyed by the .mat files' sha256) in a folder
the user names; without it nothing is written but the --json and --save-predictions outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from retinaface_export.cli.common import (
    artifact_inputs,
    configure_logging,
    handle_errors,
    json_option,
    json_to_stdout,
    stderr_console,
    write_json,
)
from retinaface_export.errors import FileError, UsageError
from retinaface_export.evaluation import evaluate_rows
from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs, require_folder
from retinaface_export.widerface import (
    CACHE_SUFFIX,
    GroundTruth,
    ground_truth_cache,
    ground_truth_key,
    load_ground_truth,
    prediction_text,
    read_ground_truth_cache,
    read_prediction_rows,
    split_rows,
)

if TYPE_CHECKING:
    from retinaface_export.inference.detector import Detector

COMMAND = "retinaface-eval"
PROTOCOLS = ("official", "omz")
# biubug6 test_widerface.py: keep nearly everything, the AP sweep sets the operating point
# --long-side: 8192 px is past any WIDER photo (1024 px wide) and keeps the resized image under 200 MB
MAX_LONG_SIDE = 8192
EVAL_DETECTION = {"score_threshold": 0.02, "nms_threshold": 0.4, "top_k": 5000, "keep_top_k": 750}


def _resize_long_side(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    import cv2

    scale = long_side / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), scale


def _detector(artifact: str | None, weights: str | None, anchors: str | None, origin_size: bool) -> Detector:
    from retinaface_export.anchors import load_anchors
    from retinaface_export.detection.postprocess import DetectionConfig
    from retinaface_export.inference.detector import Detector

    config = DetectionConfig(**EVAL_DETECTION)
    if weights:
        return Detector.from_checkpoint(weights, anchors=load_anchors(anchors) if anchors else None, config=config)
    assert artifact is not None
    detector = Detector.from_artifact(artifact, config)
    fixed = detector.backend.input_size
    if origin_size and fixed is not None:
        raise UsageError(
            f"--origin-size: {artifact} has a fixed {fixed} input (each image would be letterboxed to it); "
            "use an artifact exported with --dynamic, or --weights"
        )
    return detector


def _run_model(
    detector: Detector, images_root: Path, truth: GroundTruth, long_side: int | None, save: Path | None, quiet: bool
) -> list[np.ndarray]:
    from rich.progress import Progress

    from retinaface_export.images import read_image
    from retinaface_export.safety.safe_paths import resolve_inside

    # names from the .mat are plain (load_ground_truth checks them); symlinks must not lead out either, which
    # is checked for every file before the first detection
    targets = [resolve_inside(save, event, f"{name}.txt") for event, name in truth.images] if save else []
    predictions, texts = [], {}
    with Progress(console=stderr_console(), disable=quiet, transient=True) as progress:
        task = progress.add_task("detecting", total=len(truth.images))
        for index, (event, name) in enumerate(truth.images):
            image = read_image(resolve_inside(images_root, event, f"{name}.jpg"))
            scale = 1.0
            if long_side:
                image, scale = _resize_long_side(image, long_side)
            faces = detector.detect(image)
            rows = np.array(
                [[f.box[0], f.box[1], f.box[2] - f.box[0] + 1, f.box[3] - f.box[1] + 1, f.score] for f in faces]
            ).reshape(-1, 5)
            rows[:, :4] /= scale
            predictions.append(rows)
            if save is not None:
                texts[targets[index]] = prediction_text(name, rows).encode()
            progress.advance(task)
    if save is not None:
        _save_all(save, texts)
    return predictions


def _save_all(save: Path, texts: dict[Path, bytes]) -> None:
    """Write every prediction file or none: built in a staging folder beside ``save``, then moved in."""
    import os

    from retinaface_export.safety.atomic import staging_dir

    with staging_dir(save) as staging:
        built = staging / "predictions"
        for target, data in texts.items():
            path = built / target.relative_to(save)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if not save.exists():
            built.mkdir(exist_ok=True)
            os.replace(built, save)  # the whole folder at once
            return
        for target in texts:  # into a folder that is there already: file by file, after every one was made
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built / target.relative_to(save), target)


def _ground_truth(gt_dir: Path, cache_dir: Path | None) -> GroundTruth:
    """The ground truth, through ``cache_dir``'s copy of it when there is one (a bad copy is rebuilt)."""
    if cache_dir is None:
        return load_ground_truth(gt_dir)
    import logging

    key = ground_truth_key(gt_dir)
    cached = cache_dir / f"wider_val_ground_truth-{key}{CACHE_SUFFIX}"
    if cached.exists():
        try:
            return read_ground_truth_cache(cached, key)
        except FileError as exc:
            logging.getLogger(__name__).warning("%s; rebuilding it", exc)
    truth = load_ground_truth(gt_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise FileError(cache_dir, "is not a folder; --cache-dir must be one")
    if not cache_dir.parent.is_dir():
        if cache_dir.parent.exists():
            raise FileError(cache_dir.parent, "is not a folder: --cache-dir cannot be made in it")
        raise FileError(cache_dir, "--cache-dir: its parent folder does not exist")
    from retinaface_export.safety.atomic import atomic_write_bytes

    try:
        atomic_write_bytes(cached, ground_truth_cache(truth, key))
    except OSError as exc:  # a cache only saves time: say so and go on
        reason = exc.strerror or type(exc).__name__
        logging.getLogger(__name__).warning(
            "%s: cannot write the ground-truth cache (%s); going on without it", cached, reason
        )
    return truth


def ap_table(title: str, columns: dict[str, float], encoding: str | None = "utf-8") -> str:
    """The AP table as text: rich's default box drawn without rich (importing it took longer than scoring).

    ASCII lines where ``encoding`` is not a UTF one. Values with four decimals, right-aligned.
    """
    cells = [f"{value:.4f}" for value in columns.values()]
    widths = [max(len(name), len(cell)) + 2 for name, cell in zip(columns, cells, strict=True)]
    unicode = (encoding or "").lower().replace("-", "").startswith("utf")
    box = "┏━┳┓┃┡╇┩│└─┴┘" if unicode else "+-++|+++|+-++"

    def rule(left: str, fill: str, cross: str, right: str) -> str:
        return left + cross.join(fill * width for width in widths) + right

    def row(edge: str, texts: list[str]) -> str:
        return edge + edge.join(f" {text:>{width - 2}} " for text, width in zip(texts, widths, strict=True)) + edge

    lines = [
        rule(box[0], box[1], box[2], box[3]),
        row(box[4], list(columns)),
        rule(box[5], box[1], box[6], box[7]),
        row(box[8], cells),
        rule(box[9], box[10], box[11], box[12]),
    ]
    return "\n".join([title.center(len(lines[0])).rstrip(), *lines]) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--predictions", type=click.Path(path_type=Path), help="Folder of WIDER-format prediction files.")
@click.option(
    "--images",
    "images_root",
    type=click.Path(path_type=Path),
    help="WIDER_val/images: run --model or --weights over it.",
)
@click.option("--model", "artifact", type=str, help="Exported artifact for --images.")
@click.option("--weights", type=str, help="Checkpoint for --images (PyTorch eager).")
@click.option("--anchors", type=str, help="With --weights: anchors file or preset.")
@click.option(
    "--origin-size",
    is_flag=True,
    help="Run at each image's own size (the default for --weights and dynamic artifacts; "
    "refused for fixed-size artifacts, which letterbox).",
)
@click.option(
    "--long-side",
    type=click.IntRange(32, MAX_LONG_SIDE),
    help=f"Resize so the long side is N pixels first (at most {MAX_LONG_SIDE}).",
)
@click.option("--save-predictions", type=click.Path(file_okay=False, path_type=Path), help="Write prediction files.")
@click.option(
    "--ground-truth",
    "gt_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat.",
)
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default="official",
    show_default=True,
    help="official: AP per easy/medium/hard setting (WIDER FACE's evaluation code); omz: the Open Model Zoo "
    "accuracy checker's mAP over the whole set, faces 64-1024 px high (retinaface-resnet50-pytorch's "
    "accuracy-check.yml; reference 0.9178).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the parsed ground truth in this folder (one file named by the .mat files' sha256): later runs "
    "read it instead of the .mat files. Nothing is cached without it.",
)
@json_option("the APs (schema: retinaface_export/eval.schema.json)")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors (the AP table is still shown).")
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
@handle_errors(COMMAND)
def main(
    predictions: Path | None,
    images_root: Path | None,
    artifact: str | None,
    weights: str | None,
    anchors: str | None,
    origin_size: bool,
    long_side: int | None,
    save_predictions: Path | None,
    gt_dir: Path,
    protocol: str,
    cache_dir: Path | None,
    json_path: Path | None,
    quiet: bool,
) -> None:
    """WIDER FACE validation AP (easy, medium, hard) of --predictions, or of --model/--weights over --images.

    Example: retinaface-eval --predictions preds/ --ground-truth wider_face_split/ --json -

    With --protocol omz: the Open Model Zoo accuracy checker's mAP over the whole set instead.
    """
    configure_logging(quiet, plain=True)
    if (predictions is None) == (images_root is None):
        raise UsageError("give exactly one of --predictions DIR or --images WIDER_VAL_IMAGES")
    if origin_size and long_side:
        raise UsageError("--origin-size and --long-side exclude each other")
    inputs = [
        ("--predictions", predictions),
        ("--images", images_root),
        ("--ground-truth", gt_dir),
        ("--cache-dir", cache_dir),
        ("--weights", weights),
        ("--anchors", anchors),
        *artifact_inputs("--model", artifact),
    ]
    refuse_outputs_over_inputs([("--json", json_path), ("--save-predictions", save_predictions)], inputs)
    truth = _ground_truth(gt_dir, cache_dir)
    if predictions is not None:
        rows, counts = read_prediction_rows(predictions, truth)  # every image's rows in one array
    else:
        import gc

        gc.enable()  # a model over every photo is a long run: the console script turned it off for a short one
        assert images_root is not None
        if (artifact is None) == (weights is None):
            raise UsageError("with --images, give exactly one of --model ARTIFACT or --weights CKPT")
        require_folder(images_root, "images folder")
        detector = _detector(artifact, weights, anchors, origin_size)
        preds = _run_model(detector, images_root, truth, long_side, save_predictions, quiet)
        rows, counts = np.concatenate([np.zeros((0, 5)), *preds]), np.array([len(p) for p in preds], np.int64)
    if protocol == "omz":
        from retinaface_export.omz_protocol import evaluate_omz

        result: dict[str, float | str] = {"protocol": "omz", "map": evaluate_omz(split_rows(rows, counts), truth)}
        columns = {"mAP (OMZ accuracy checker)": float(result["map"])}
    else:
        aps = evaluate_rows(rows, counts, truth)
        result, columns = dict(aps), aps
    if json_path:
        write_json(json_path, result, indent=None)
    title = "WIDER FACE val AP" if protocol == "official" else "WIDER FACE val, OMZ protocol"
    stream = sys.stderr if json_to_stdout(json_path) else sys.stdout
    stream.write(ap_table(f"{title} ({len(truth.images)} images)", columns, getattr(stream, "encoding", None)))
    stream.flush()
