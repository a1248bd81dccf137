"""A model ready to run on images: the eager model of a checkpoint, or an artifact with its own runtime.

An artifact says what it needs (input size, batch, anchors) through the provenance the exporter put in
it, so it can be used without its manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.checkpoint import LoadedCheckpoint
from retinaface_export.eager import eager_runner
from retinaface_export.errors import FileError, RetinaFaceExportError
from retinaface_export.format_api import ArtifactFormat, Runner
from retinaface_export.formats import FORMATS, format_for_path
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.preprocess import INPUT_FORMATS, to_network_input
from retinaface_export.provenance import checked_provenance
from retinaface_export.sizes import InputSize


@dataclass(frozen=True)
class Backend:
    """Something that maps a batch of BGR uint8 images (N×H×W×3) to the three outputs."""

    name: str
    source: str
    run: Runner
    anchors: AnchorConfig
    # Fixed network input size; None runs each image at its own resolution (eager, dynamic artifacts).
    input_size: InputSize | None
    # Fixed batch size; None takes any.
    batch: int | None
    # Images (N×H×W×3 uint8) to what ``run`` takes; the default subtracts the mean, NCHW float32.
    prepare: Callable[[np.ndarray], np.ndarray] = to_network_input
    # What the model computes after the network (raw outputs, decoded boxes, or NMS'd detections).
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    # How an image is fitted to a fixed input: "letterbox" (aspect kept, padded) or "stretch", as the artifact
    # tells its clients (an OpenVINO IR's rt_info/model_info resize_type)
    resize: str = "letterbox"
    # What the artifact tells other clients about its input that its provenance does not back (the CLI warns).
    notices: tuple[str, ...] = ()


def eager_backend(checkpoint: LoadedCheckpoint, input_size: InputSize | None = None) -> Backend:
    """PyTorch eager on a loaded checkpoint, at each image's own resolution unless ``input_size`` is given."""
    source = str(checkpoint.path) if checkpoint.path else f"synthetic {checkpoint.variant.name}"
    anchors = checkpoint.variant.anchors
    return Backend("torch-eager", source, eager_runner(checkpoint.model), anchors, input_size, None)


def format_of(path: Path) -> ArtifactFormat:
    """The format of an artifact file, from its name.

    Raises:
        FileError: no known suffix.
    """
    fmt = format_for_path(path)
    if fmt is None:
        known = ", ".join(f.suffix for f in FORMATS.values())
        raise FileError(path, f"not a known artifact type (expected a name ending in {known})")
    return fmt


def artifact_backend(path: str | Path, threads: int | None = None, optimize: bool = False) -> Backend:
    """Open an exported artifact with its runtime, configured from the provenance inside it.

    Raises:
        FileError: missing file, unknown type, unreadable, or without retinaface-export provenance.
        ProvenanceError: its provenance is malformed or out of bounds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileError(path, "no such artifact file")
    fmt = format_of(path)
    for companion in fmt.companions(path):
        if not companion.is_file():
            raise FileError(companion, f"missing: {path.name} needs it beside it")
    try:
        provenance, run = fmt.load(path, threads=threads, optimize=optimize)  # one trust check, one load
    except (RetinaFaceExportError, ImportError):
        raise  # refused by the trust checks (their message names the file and the reason), or no runtime
    except Exception as exc:  # each runtime's loader fails in its own types on a damaged file
        raise FileError(path, f"cannot read {fmt.name} artifact ({type(exc).__name__}: {exc})") from exc
    claimed = checked_provenance(path, provenance)
    return Backend(
        name=fmt.backend,
        source=str(path),
        run=run,
        anchors=claimed.anchors,
        input_size=claimed.input_size,
        batch=claimed.batch,
        prepare=INPUT_FORMATS[claimed.input_format],
        postprocess=claimed.postprocess,
        resize=fmt.client_resize(path),
        notices=tuple(fmt.input_notices(path, provenance)),
    )


def runs_side_by_side(path: str | Path) -> bool:
    """Whether the runtime of the artifact at ``path`` runs requests from several threads at once.

    See :attr:`~retinaface_export.format_api.Runtime.runs_side_by_side`; True for a name of no known format
    (opening it says what is wrong).
    """
    fmt = format_for_path(Path(path))
    return fmt is None or fmt.runtime.runs_side_by_side


def input_notices(path: str | Path) -> list[str]:
    """What the artifact at ``path`` tells other clients about its input that its provenance does not back.

    Reads nothing for formats that state nothing to other clients; [] for a file that cannot be read (opening
    it reports that).
    """
    path = Path(path)
    try:
        fmt = format_of(path)
        if type(fmt).input_notices is ArtifactFormat.input_notices:
            return []
        return fmt.input_notices(path, fmt.read_provenance(path))
    except Exception:  # an unreadable or refused file: the command that opens it says why
        return []
