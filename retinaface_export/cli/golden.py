"""``retinaface-golden record``: PyTorch outputs of a checkpoint on fixed inputs, for parity checks."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from rich.console import Console

from retinaface_export.anchors import load_anchors
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.common import MultiValueCommand, configure_logging, handle_errors, not_an_option
from retinaface_export.golden import record_golden
from retinaface_export.sizes import STANDARD_SIZES, InputSize, parse_size
from retinaface_export.synthetic import synthetic_checkpoint
from retinaface_export.variants import get_variant, list_variants

COMMAND = "retinaface-golden"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
def main() -> None:
    """Golden sets: the PyTorch eager outputs that retinaface-parity compares artifacts with."""


@main.command(
    cls=MultiValueCommand,
    multi_value={"--size": not_an_option, "--image": not_an_option, "--seed": not_an_option},
)
@click.option("--weights", type=str, default=None, help="Checkpoint; without it the synthetic --backbone model.")
@click.option(
    "--backbone", type=click.Choice(list_variants()), default=None, help="Variant (synthetic default mobilenet0.25)."
)
@click.option("--anchors", type=str, default=None, help="Anchors file or preset, for checkpoints trained with others.")
@click.option("--size", "sizes", multiple=True, metavar="SIZE...", help="Sizes (default: 320 416 512 608 640).")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="PATH...",
    help="Photos, referenced by name and sha256 (never copied).",
)
@click.option("--seed", "seeds", multiple=True, type=int, metavar="N...", help="Synthetic photos by seed (default 0).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Golden set folder.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@handle_errors(COMMAND)
def record(weights, backbone, anchors, sizes, images, seeds, output, quiet) -> None:
    """Record a golden set (example: --weights ckpt.pth --image photo.jpg --output golden/mine)."""
    configure_logging(quiet)
    anchor_config = load_anchors(anchors) if anchors else None
    if weights:
        checkpoint = load_checkpoint(weights, backbone=backbone, anchors=anchor_config)
    else:
        variant = get_variant(backbone or "mobilenet0.25")
        checkpoint = synthetic_checkpoint(variant.with_anchors(anchor_config) if anchor_config else variant)
    parsed = tuple(parse_size(s) for s in sizes) or tuple(InputSize(s, s) for s in STANDARD_SIZES)
    command = shlex.join(["retinaface-golden", *sys.argv[1:]]) if sys.argv[1:2] == ["record"] else COMMAND
    golden = record_golden(checkpoint, parsed, tuple(images), tuple(seeds) or (0,), output, command)
    if not quiet:
        total = sum((output / name).stat().st_size for name in ("golden.json", "tensors.npz"))
        Console().print(f"golden set {output}: {len(golden.cases)} cases, {total / 1e6:.2f} MB")
