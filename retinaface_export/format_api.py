"""The interface every artifact format implements, and what the pipeline hands a format to build one artifact.

A format is one module in ``converters/`` holding one :class:`ArtifactFormat` subclass: how the artifact is
made from its source (the PyTorch model for the formats ``retinaface-export`` writes, another artifact for
the ones ``retinaface-convert`` writes), how its file is named, how it is run, and how the provenance
inside it is written and read. ``retinaface_export.formats.FORMATS`` lists one instance of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from retinaface_export.postprocess_settings import PostprocessSpec
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT
from retinaface_export.sizes import InputSize

if TYPE_CHECKING:
    import torch

    from retinaface_export.anchors import AnchorConfig
    from retinaface_export.manifest import ArtifactRecord
    from retinaface_export.quantize import Int8Request
    from retinaface_export.workers import OnceCache

Runner = Callable[[np.ndarray], list[np.ndarray]]


class Exporter(Protocol):
    """Made once per checkpoint (the costly trace or export); then one artifact per size, cheaply."""

    def artifact(self, job: Job, anchors: AnchorConfig, provenance: dict[str, Any]) -> bytes:
        """The artifact file's bytes for ``job`` (its size, batch and post-processing) with ``provenance``."""
        ...


@dataclass(frozen=True)
class Job:
    """One artifact to make: a format at a size, precision and input format, from the model or a source."""

    fmt: ArtifactFormat
    file_name: str
    # None: dynamic batch, height and width
    size: InputSize | None
    # the batch of a fixed-size artifact; a dynamic one is verified at this batch and at 2
    batch: int
    # the sizes the artifact is verified at (its own size, or several for a dynamic one)
    verify_sizes: tuple[InputSize, ...]
    precision: str = "fp32"
    input_format: str = DEFAULT_INPUT_FORMAT
    opset: int | None = None
    # the artifact it is converted from; None for artifacts exported from the PyTorch model
    source: ArtifactRecord | None = None
    # what the artifact computes after the network (raw outputs by default)
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)

    @property
    def dynamic(self) -> bool:
        """Dynamic batch, height and width."""
        return self.size is None

    def describe(self) -> str:
        """Short label for progress displays."""
        return self.file_name


@dataclass
class ConvertInputs:
    """What a converter gets besides its job: the source, the provenance to write, shared work, checks."""

    source_path: Path
    # every key to write into the artifact's own provenance block
    provenance: dict[str, Any]
    # work several jobs of one run share (parsed sources, a converted graph reused per size), computed once
    shared: OnceCache
    # ``(network input, source outputs)`` pairs at the job's sizes, for converters that check their own work
    source_cases: Callable[[], list[tuple[np.ndarray, list[np.ndarray]]]]
    # for INT8: calibration and validation photos, the model's shape and the accuracy target; else None
    int8: Int8Request | None = None


class ArtifactFormat:
    """One kind of artifact file. Subclasses (one per module in ``converters/``) set the class attributes."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    # the runtime that runs it, as reports name it
    backend: ClassVar[str]
    # ``retinaface-export`` makes it from the PyTorch model (always FP32)
    exported: ClassVar[bool] = False
    # the format ``retinaface-convert`` converts it from; None: not made by conversion
    source_format: ClassVar[str | None] = None
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # the precisions ``retinaface-convert`` makes (an exported format's FP32 is the source itself)
    conversion_precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    input_formats: ClassVar[tuple[str, ...]] = (DEFAULT_INPUT_FORMAT,)
    # files that travel with the main one (OpenVINO's weights), as suffixes replacing ``suffix``
    companion_suffixes: ClassVar[tuple[str, ...]] = ()
    uses_opset: ClassVar[bool] = False

    def file_name(self, stem: str, precision: str, input_format: str) -> str:
        """The artifact's file name from its source's stem (``retinaface_<variant>_<size>``)."""
        del precision, input_format
        return stem + self.suffix

    def companions(self, path: Path) -> list[Path]:
        """The files that must sit beside ``path`` (``model.bin`` for ``model.xml``)."""
        stem = path.name.removesuffix(self.suffix)
        return [path.with_name(stem + suffix) for suffix in self.companion_suffixes]

    def exporter(self, model: torch.nn.Module, example: torch.Tensor, opset: int) -> Exporter:
        """The exporter of a format made from the PyTorch model (``exported``)."""
        raise NotImplementedError(f"{self.name} is not exported from a PyTorch model")

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        """Write ``job``'s artifact (and companions) into ``staging``; return what the manifest keeps of it.

        Implemented by formats converted from another artifact (source_format set).
        """
        raise NotImplementedError(f"{self.name} is not converted from another artifact")

    def open_runner(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        """Run the artifact: network input in, the three outputs out.

        ``optimize`` False runs the graph as written where the runtime allows (verification); benchmarks
        ask for the runtime's optimisations, as deployments have them.
        """
        raise NotImplementedError

    def read_provenance(self, path: Path) -> dict[str, Any]:
        """Every provenance entry inside the artifact; {} when there is none."""
        raise NotImplementedError

    def provenance_blocks(self, path: Path) -> dict[str, dict[str, Any]]:
        """Every block of metadata inside the artifact by name (tests check each describes the artifact)."""
        return {"retinaface_export": self.read_provenance(path)}
