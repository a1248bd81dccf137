"""``retinaface-golden record``: PyTorch outputs of a checkpoint on fixed inputs, for parity checks."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from retinaface_export.anchors import load_anchors
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.common import (
    MultiValueCommand,
    configure_logging,
    handle_errors,
    not_an_option,
    size_option,
    wide_console,
)
from retinaface_export.errors import UsageError
from retinaface_export.golden import record_golden
from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs
from retinaface_export.sizes import STANDARD_SIZES, InputSize
from retinaface_export.synthetic import synthetic_checkpoint
from retinaface_export.variants import get_variant, list_variants

COMMAND = "retinaface-golden"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
def main() -> None:
    """Golden sets: the PyTorch eager outputs that retinaface-parity compares artifacts with.

    Example: retinaface-golden record --weights mobilenet0.25_Final.pth --image crowd.jpg --output-dir golden/mine
    """


@main.command(
    cls=MultiValueCommand,
    multi_value={"--size": not_an_option, "--image": not_an_option, "--seed": not_an_option},
)
@click.option("--weights", type=str, default=None, help="Checkpoint; without it the synthetic --backbone model.")
@click.option(
    "--backbone", type=click.Choice(list_variants()), default=None, help="Variant (synthetic default mobilenet0.25)."
)
@click.option("--anchors", type=str, default=None, help="Anchors file or preset, for checkpoints trained with others.")
@size_option("Default: 320 416 512 608 640.")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="PATH...",
    help="Photos, referenced by name and sha256 (never copied).",
)
@click.option("--seed", "seeds", multiple=True, type=int, metavar="N...", help="Synthetic photos by seed (default 0).")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the golden set goes (golden.json and tensors.npz). Required.",
)
@click.option("--output", "old_output", type=click.Path(file_okay=False, path_type=Path), default=None, hidden=True)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@handle_errors(COMMAND)
def record(
    weights: str | None,
    backbone: str | None,
    anchors: str | None,
    sizes: tuple[InputSize, ...],
    images: tuple[Path, ...],
    seeds: tuple[int, ...],
    output_dir: Path | None,
    old_output: Path | None,
    quiet: bool,
) -> None:
    """Record a golden set: PyTorch eager outputs of a checkpoint on photos and seeded synthetic inputs.

    Photos are referenced by file name and sha256, never copied: retinaface-parity finds them by sha256 in
    its --images folders.

    Example: retinaface-golden record --weights mobilenet0.25_Final.pth --image crowd.jpg --output-dir golden/mine
    """
    configure_logging(quiet)
    if output_dir is not None and old_output is not None:
        raise UsageError("--output is the old name of --output-dir: give one of them")
    output = output_dir or old_output
    if output is None:
        raise UsageError("missing --output-dir DIR: where the golden set goes")
    inputs = [("--weights", weights), ("--anchors", anchors), *(("--image", image) for image in images)]
    refuse_outputs_over_inputs([("--output-dir", output)], inputs)
    anchor_config = load_anchors(anchors) if anchors else None
    if weights:
        checkpoint = load_checkpoint(weights, backbone=backbone, anchors=anchor_config)
    else:
        variant = get_variant(backbone or "mobilenet0.25")
        checkpoint = synthetic_checkpoint(variant.with_anchors(anchor_config) if anchor_config else variant)
    parsed = sizes or tuple(InputSize(s, s) for s in STANDARD_SIZES)
    command = shlex.join(["retinaface-golden", *sys.argv[1:]]) if sys.argv[1:2] == ["record"] else COMMAND
    golden = record_golden(checkpoint, parsed, tuple(images), tuple(seeds) or (0,), output, command)
    if not quiet:
        total = sum((output / name).stat().st_size for name in ("golden.json", "tensors.npz"))
        wide_console().print(f"golden set {output}: {len(golden.cases)} cases, {total / 1e6:.2f} MB")
