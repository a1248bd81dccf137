"""``retinaface-convert``: an export folder's ONNX models to simplified ONNX or OpenVINO IR."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.table import Table

from retinaface_export.cli.choices import RegistryChoice
from retinaface_export.cli.common import (
    MultiValueCommand,
    artifacts_title,
    configure_logging,
    handle_errors,
    jobs_option,
    size_option,
    size_token,
    step_progress,
    titled_table,
    wide_console,
)
from retinaface_export.errors import UsageError
from retinaface_export.formats import FORMATS, convert_targets
from retinaface_export.manifest import ArtifactRecord
from retinaface_export.pipeline.builds import RunResult
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.precision import PRECISIONS
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT
from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs
from retinaface_export.sizes import InputSize

log = logging.getLogger(__name__)
COMMAND = "retinaface-convert"


def _check(artifact: ArtifactRecord) -> str:
    """How it was verified (tensors: max |Δ|; detections: F1), then what its format says of the conversion."""
    said = FORMATS[artifact.format].describe_conversion(artifact.conversion)
    return artifact.checked.summary() + (f", {said}" if said else "")


def _summary(result: RunResult) -> Table:
    table = titled_table(artifacts_title(len(result.added), result.output_dir))
    for column in ("artifact", "precision", "input", "check", "MB"):
        table.add_column(column, justify="right" if column == "MB" else "left")
    for artifact in result.added:
        table.add_row(
            artifact.path, artifact.precision, artifact.input_format, _check(artifact), f"{artifact.bytes / 1e6:.1f}"
        )
    return table


@click.command(
    cls=MultiValueCommand,
    multi_value={"--precision": lambda token: token in PRECISIONS, "--size": size_token},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--to", "target", type=RegistryChoice(convert_targets), required=True, help="Target format.")
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(list(PRECISIONS)),
    metavar="P...",
    help="Precisions to make, several after one flag (which each target makes: see --to). Default fp32.",
)
@click.option("--embed-mean", is_flag=True, help="The IR takes raw BGR pixels and subtracts 104/117/123 itself.")
@click.option(
    "--input",
    "input_layout",
    type=click.Choice(["f32-nchw", "u8-nhwc"]),
    default=None,
    help="With --embed-mean: input as float32 N×3×H×W (default) or uint8 N×H×W×3 images.",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of photos for INT8 calibration (required with int8).",
)
@click.option(
    "--validation",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of photos INT8 accuracy is judged on, none also in --calibration "
    "(default: a quarter of the calibration photos, chosen by content hash, held out of calibration); "
    "bf16: the photos its detections are judged on (default: the --calibration folder).",
)
@click.option(
    "--max-f1-drop",
    type=float,
    default=0.03,
    show_default=True,
    help="INT8: largest drop of strict detection F1 against FP32 on the validation photos; layers go back "
    "to float until it is met, else the run fails.",
)
@click.option(
    "--allow-accuracy-drop",
    is_flag=True,
    help="INT8: keep a model that misses --max-f1-drop (its manifest row says so) instead of failing.",
)
@click.option(
    "--int8-budget",
    type=click.FloatRange(min=0, min_open=True, max=7 * 24 * 3600),
    default=None,
    metavar="SECONDS",
    help="INT8: the longest accuracy control may search per artifact; past it the run fails, naming the best "
    "F1 reached (default: no limit; the progress bar counts evaluations against the most it can take).",
)
@size_option("Only the artifacts of these sizes (default: every size in the manifest).")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where results go (default: EXPORT_DIR); its manifest gets them.",
)
@jobs_option
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
@handle_errors(COMMAND)
def main(
    export_dir: Path,
    target: str,
    precisions: tuple[str, ...],
    embed_mean: bool,
    input_layout: str | None,
    calibration: Path | None,
    validation: Path | None,
    max_f1_drop: float,
    allow_accuracy_drop: bool,
    int8_budget: float | None,
    sizes: tuple[InputSize, ...],
    output_dir: Path | None,
    workers: int,
    quiet: bool,
) -> None:
    """Convert the ONNX models of EXPORT_DIR (made by retinaface-export) to TARGET.

    INT8 is judged by strict detection F1 against FP32 on photos calibration never saw; layers stay in
    float until the drop is at most --max-f1-drop, or nothing is written. bf16 (OpenVINO) is judged by a
    tensor rule and strict detection F1 >= 0.99 against FP32 on the --validation photos.

    Example: retinaface-convert out --to openvino --precision fp32 fp16 int8 --calibration photos/
    """
    configure_logging(quiet)
    # EXPORT_DIR is the default --output-dir: a conversion adds its files to the export's manifest
    refuse_outputs_over_inputs(
        [("--output-dir", output_dir)], [("--calibration", calibration), ("--validation", validation)]
    )
    if input_layout == "u8-nhwc":
        embed_mean = True  # uint8 images cannot arrive mean-subtracted
    elif input_layout is not None and not embed_mean:
        raise UsageError("--input f32-nchw describes raw pixels: it needs --embed-mean")
    input_format = (input_layout or "f32-nchw") if embed_mean else DEFAULT_INPUT_FORMAT
    options = ConvertOptions(
        target=target,
        precisions=precisions or (("fp32",) if "fp32" in FORMATS[target].conversion_precisions else ()),
        input_format=input_format,
        calibration=calibration,
        validation=validation,
        max_f1_drop=max_f1_drop,
        allow_accuracy_drop=allow_accuracy_drop,
        int8_budget=int8_budget,
        sizes=sizes,
        workers=workers,
    )
    with step_progress("converting", quiet) as on_step:
        result = convert_export(
            export_dir, options, output_dir, on_step=lambda job, i, n: on_step(job.describe(), i, n)
        )
    if not quiet:
        wide_console().print(_summary(result))
