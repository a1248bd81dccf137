"""The interface every artifact format implements, and what the pipeline hands a format to build one artifact.

A format is one package in ``converters/`` whose ``FORMAT`` is an :class:`ArtifactFormat`: how the artifact
is made from its source (the PyTorch model for the formats ``retinaface-export`` writes, another artifact for
the ones ``retinaface-convert`` writes), how its file is named, how the provenance inside it is written and
read, and its :class:`Runtime`: the one place its runtime library is imported, which every caller (the
pipeline's verification, INT8 accuracy control, detect, parity, bench, scripts) opens it through.
``retinaface_export.formats.FORMATS`` lists one instance of each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT
from retinaface_export.sizes import InputSize

if TYPE_CHECKING:
    import torch

    from retinaface_export.anchors import AnchorConfig
    from retinaface_export.quantize import Int8Backend, Int8Request
    from retinaface_export.workers import OnceCache

# Network input in, the model's outputs out (in the model's order: the contract's for raw outputs).
Runner = Callable[[np.ndarray], list[np.ndarray]]


class Budget(Protocol):
    """How long a throughput measurement runs (``retinaface_export.bench.stats.Budget``)."""

    warmup: int

    def done(self, runs: int, elapsed: float) -> bool:
        """Whether ``runs`` timed runs in ``elapsed`` seconds are enough."""
        ...


@dataclass
class ThroughputRun:
    """What one throughput measurement saw."""

    images: int
    # from the first submission to the last completion
    seconds: float
    # per request, submission to completion
    latencies_ms: list[float]


# Runs requests on ``data`` (one prepared batch) within the budget.
ThroughputRunner = Callable[[np.ndarray, Budget], ThroughputRun]


def sequential_throughput(run: Runner) -> ThroughputRunner:
    """One request after another: for runtimes whose parallelism is inside each request (torch)."""

    def measure(data: np.ndarray, budget: Budget) -> ThroughputRun:
        for _ in range(budget.warmup):
            run(data)
        latencies, completions = [], []
        start = time.perf_counter()
        while not budget.done(len(completions), time.perf_counter() - start):
            begin = time.perf_counter()
            run(data)
            completions.append(time.perf_counter())
            latencies.append((completions[-1] - begin) * 1e3)
        return ThroughputRun(len(latencies) * len(data), completions[-1] - start, latencies)

    return measure


class Runtime:
    """How one runtime library opens and runs artifact files: the only code that imports that library.

    ``open`` is what verification, detect and parity run (``optimize`` False: the graph as written where
    the runtime allows); ``throughput`` is the runtime's own way of keeping the CPU busy (bench).
    """

    # how reports and manifests name it
    name: ClassVar[str]
    # distributions whose versions shape its numerics (recorded in every manifest)
    libraries: ClassVar[tuple[str, ...]] = ()
    # whether runs from several threads go side by side (the library lets the GIL go while it computes);
    # False: they take turns, so retinaface-detect gives it one worker with every CPU instead of several
    runs_side_by_side: ClassVar[bool] = True

    def open(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        """A runner for the artifact at ``path``: one request at a time, ``threads`` threads inside."""
        raise NotImplementedError

    def throughput(self, path: Path, threads: int, streams: int | None) -> tuple[int, ThroughputRunner]:
        """``(streams used, runner)`` keeping requests in flight; default: one request after another."""
        del streams
        return 1, sequential_throughput(self.open(path, threads=threads, optimize=True))

    def machine(self) -> dict[str, Any]:
        """What this runtime reports about the CPU it runs on (bench records it); {} when nothing."""
        return {}

    def execution(self, path: Path) -> dict[str, Any]:
        """What the runtime executes the artifact in where it decides that itself (OpenVINO may pick bf16).

        ``{"executed": "f32", ...}``; {} for runtimes that execute the file's own precision.
        """
        del path
        return {}


class SourceArtifact(Protocol):
    """The artifact a conversion starts from, as the manifest records it."""

    path: str
    sha256: str


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
    source: SourceArtifact | None = None
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
    # the export's PyTorch network (eval mode) rebuilt from the manifest's checkpoint, sha256-checked, loaded
    # once per run on the first call; for formats whose converter needs the model rather than the source
    # file (LiteRT's litert-torch runs torch.export). None where no checkpoint record is at hand.
    checkpoint_model: Callable[[], torch.nn.Module] | None = None


class ArtifactFormat:
    """One kind of artifact file. Subclasses (one per package in ``converters/``) set the class attributes."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    # what runs it
    runtime: ClassVar[Runtime]
    # INT8 through NNCF on this format's in-memory models; None: no INT8 conversion
    int8: ClassVar[Int8Backend | None] = None
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

    @property
    def backend(self) -> str:
        """The runtime that runs it, as reports and manifests name it."""
        return self.runtime.name

    def companions(self, path: Path) -> list[Path]:
        """The files that must sit beside ``path`` (``model.bin`` for ``model.xml``)."""
        stem = path.name.removesuffix(self.suffix)
        return [path.with_name(stem + suffix) for suffix in self.companion_suffixes]

    def exporter(self, model: torch.nn.Module, example: torch.Tensor, opset: int) -> Exporter:
        """The exporter of a format made from the PyTorch model (``exported``)."""
        raise NotImplementedError(f"{self.name} is not exported from a PyTorch model")

    def exporter_key(self, job: Job) -> Any:
        """Jobs with equal keys share one exporter (made on the first one's example); default: one per run."""
        del job
        return None

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
        return self.runtime.open(path, threads=threads, optimize=optimize)

    def load(self, path: Path, threads: int | None = None, optimize: bool = False) -> tuple[dict[str, Any], Runner]:
        """``(provenance, runner)`` of the artifact; formats that can read both in one load override it."""
        return self.read_provenance(path), self.open_runner(path, threads=threads, optimize=optimize)

    def describe_conversion(self, conversion: dict[str, Any]) -> str:
        """The conversion record in a few words for summary tables ("" when there is nothing to say)."""
        in_float = conversion.get("int8", {}).get("accuracy", {}).get("float_layers", [])
        return f"{len(in_float)} layer{'s' if len(in_float) > 1 else ''} in float" if in_float else ""

    def read_provenance(self, path: Path) -> dict[str, Any]:
        """Every provenance entry inside the artifact; {} when there is none."""
        raise NotImplementedError

    def refusal(self, job: Job) -> str | None:
        """Why this format cannot make ``job`` (a source's post-processing or dynamic shape), or None.

        Asked for every job when the run is planned, so a refusal is one line before any work.
        """
        return None

    def client_resize(self, path: Path) -> str:
        """How the artifact tells its clients to fit an image to its fixed size.

        ``letterbox`` (aspect kept, padded bottom/right with the mean) or ``stretch`` (the whole image resized).
        """
        return "letterbox"

    def input_notices(self, path: Path, provenance: dict[str, Any]) -> list[str]:
        """What the artifact tells other clients about its input that its provenance does not back ([] if nothing)."""
        return []

    def provenance_blocks(self, path: Path) -> dict[str, dict[str, Any]]:
        """Every block of metadata inside the artifact by name (tests check each describes the artifact)."""
        return {"retinaface_export": self.read_provenance(path)}
