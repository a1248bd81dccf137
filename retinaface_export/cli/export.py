"""``retinaface-export``: a checkpoint to TorchScript and ONNX at the sizes asked for."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from click.core import ParameterSource
from rich.panel import Panel
from rich.table import Table

from retinaface_export.anchors import bundled_anchor_presets, load_anchors
from retinaface_export.checkpoint import LoadedCheckpoint, load_checkpoint
from retinaface_export.cli.choices import RegistryChoice
from retinaface_export.cli.common import (
    MultiValueCommand,
    artifacts_title,
    configure_logging,
    handle_errors,
    jobs_option,
    not_an_option,
    size_option,
    stderr,
    step_progress,
    titled_table,
    wide_console,
)
from retinaface_export.converters.onnx.format import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from retinaface_export.errors import UsageError
from retinaface_export.formats import export_formats
from retinaface_export.pipeline.builds import RunResult
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.postprocess.settings import (
    MAX_DETECTIONS,
    MAX_TOP_K,
    POSTPROCESS_MODES,
    NmsSettings,
    PostprocessSpec,
)
from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs
from retinaface_export.sizes import InputSize, check_batch
from retinaface_export.synthetic import synthetic_checkpoint
from retinaface_export.variants import get_variant, list_variants

log = logging.getLogger(__name__)
DEFAULT_BACKBONE = "mobilenet0.25"


def _announce_synthetic(checkpoint: LoadedCheckpoint) -> None:
    stderr.print(
        Panel(
            f"No --weights given: exporting a SYNTHETIC {checkpoint.variant.name} RetinaFace with seeded random "
            "weights.\nIts detections are meaningless; it exists so the pipeline can run without trained "
            "weights.\nThe manifest records it as synthetic.",
            title="synthetic model",
            border_style="bold yellow",
        )
    )


def _summary(result: RunResult) -> Table:
    table = titled_table(artifacts_title(len(result.added), result.output_dir))
    for column in ("artifact", "format", "size", "anchors", "check vs PyTorch", "MB"):
        table.add_column(column, justify="right" if column in ("anchors", "MB") else "left")
    for artifact in result.added:
        table.add_row(
            artifact.path,
            artifact.format,
            artifact.size_label,
            str(artifact.num_anchors or "-"),
            artifact.checked.summary(),  # tensors: max |Δ|; nms detections: F1
            f"{artifact.bytes / 1e6:.1f}",
        )
    return table


NMS_OPTIONS = {
    "score_threshold": "--score-threshold",
    "nms_iou": "--nms-iou",
    "top_k": "--top-k",
    "max_detections": "--max-detections",
}


def _refuse_nms_options_without_nms(postprocess: str) -> None:
    """NMS settings given on the command line for a mode that runs no NMS would be silently ignored: refused."""
    if postprocess == "nms":
        return
    ctx = click.get_current_context()
    given = [
        flag for name, flag in NMS_OPTIONS.items() if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --postprocess nms "
            f"(--postprocess {postprocess} runs no NMS); drop {'it' if len(given) == 1 else 'them'} or use nms"
        )


@click.command(
    cls=MultiValueCommand,
    multi_value={"--size": not_an_option, "--format": lambda token: token in export_formats()},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--weights",
    type=str,
    default=None,
    help="RetinaFace checkpoint (.pth, biubug6 layout). Without it: a deterministic synthetic model of --backbone.",
)
@click.option(
    "--backbone",
    type=click.Choice(list_variants()),
    default=None,
    help=f"Variant; inferred from --weights (an error if it disagrees). Default without weights: {DEFAULT_BACKBONE}.",
)
@click.option(
    "--anchors",
    type=str,
    default=None,
    help=f"Anchors file (TOML: min_sizes, steps, variance) or a bundled preset "
    f"({', '.join(bundled_anchor_presets())}) for checkpoints trained with other anchors.",
)
@size_option("Default 640.")
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=RegistryChoice(export_formats),
    metavar="FORMAT...",
    help=f"Formats ({', '.join(export_formats())}); several after one flag. Default: all.",
)
@click.option(
    "--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True, help="ONNX opset."
)
@click.option(
    "--dynamic",
    is_flag=True,
    help="One model per format with dynamic batch, height and width "
    "(traced at the first --size, verified at every --size).",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size of fixed-size models."
)
@click.option(
    "--postprocess",
    type=click.Choice(POSTPROCESS_MODES),
    default="none",
    show_default=True,
    help="Inside the graph: none (raw outputs, the Open Model Zoo contract), decode (boxes, scores, landmarks "
    "in input pixels) or nms (also threshold, top-k, NMS with the reference's +1 convention: detections N×K×15 "
    "and num_detections).",
)
@click.option("--score-threshold", type=float, default=0.02, show_default=True, help="With nms: faces above it.")
@click.option("--nms-iou", type=float, default=0.4, show_default=True, help="With nms: IoU that suppresses.")
@click.option(
    "--top-k",
    type=click.IntRange(1, MAX_TOP_K),
    default=5000,
    show_default=True,
    help=f"With nms: candidates before NMS (at most {MAX_TOP_K}).",
)
@click.option(
    "--max-detections",
    type=click.IntRange(1, MAX_DETECTIONS),
    default=750,
    show_default=True,
    help=f"With nms: K, faces kept (at most {MAX_DETECTIONS}).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("export"),
    show_default=True,
    help="Where artifacts and manifest.json go.",
)
@jobs_option
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="retinaface-export", prog_name="retinaface-export")
@handle_errors("retinaface-export")
def main(
    weights: str | None,
    backbone: str | None,
    anchors: str | None,
    sizes: tuple[InputSize, ...],
    formats: tuple[str, ...],
    opset: int,
    dynamic: bool,
    batch: int,
    postprocess: str,
    score_threshold: float,
    nms_iou: float,
    top_k: int,
    max_detections: int,
    output_dir: Path,
    workers: int,
    quiet: bool,
) -> None:
    """Export a RetinaFace checkpoint to TorchScript and ONNX, verified against PyTorch.

    Example: retinaface-export --weights mobilenet0.25_Final.pth --size 640 512 320 --output-dir out
    """
    configure_logging(quiet)
    _refuse_nms_options_without_nms(postprocess)
    refuse_outputs_over_inputs([("--output-dir", output_dir)], [("--weights", weights), ("--anchors", anchors)])
    check_batch(batch)
    sizes = sizes or (InputSize(640, 640),)
    anchor_config = load_anchors(anchors) if anchors else None
    options = ExportOptions(
        sizes=sizes,
        formats=formats,
        opset=opset,
        dynamic=dynamic,
        batch=batch,
        workers=workers,
        postprocess=PostprocessSpec(postprocess, NmsSettings(score_threshold, nms_iou, top_k, max_detections)),
    )
    if weights is None:
        variant = get_variant(backbone or DEFAULT_BACKBONE)
        checkpoint = synthetic_checkpoint(variant.with_anchors(anchor_config) if anchor_config else variant)
        _announce_synthetic(checkpoint)
    else:
        checkpoint = load_checkpoint(weights, backbone=backbone, anchors=anchor_config)
        log.info("loaded %s: %s, sha256 %s", weights, checkpoint.variant.name, checkpoint.file_sha256)

    with step_progress("exporting", quiet) as on_step:
        result = export_checkpoint(
            checkpoint, options, output_dir, on_step=lambda job, i, n: on_step(job.describe(), i, n)
        )
    if not quiet:
        stdout = wide_console()
        stdout.print(_summary(result))
        stdout.print(f"manifest: {output_dir / 'manifest.json'}")
