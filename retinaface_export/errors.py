"""Typed errors raised by the library.

The library never prints or exits: it raises one of these, and the command-line layer turns it into a
one-line message and an exit code. ``str(error)`` is that line.
"""

from __future__ import annotations

from pathlib import Path


class RetinaFaceExportError(Exception):
    """Base class of every error the library raises on purpose."""

    exit_code = 1


class UsageError(RetinaFaceExportError):
    """An option value the user gave is invalid (a size that is not a multiple of 32, say)."""

    exit_code = 2


class UnknownVariantError(UsageError):
    """A variant name that is not in the registry."""


class FileError(RetinaFaceExportError):
    """Something is wrong with a file: the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CheckpointError(FileError):
    """A checkpoint that cannot be loaded into a RetinaFace."""


class CheckpointNotFoundError(CheckpointError):
    """The checkpoint path does not exist or is not a file."""


class CorruptCheckpointError(CheckpointError):
    """Empty, truncated, or not a PyTorch checkpoint at all."""


class BackboneOnlyCheckpointError(CheckpointError):
    """A classification backbone (e.g. ImageNet MobileNetV1) rather than a RetinaFace detector."""


class StateDictMismatchError(CheckpointError):
    """Missing or unexpected keys, or tensors whose shapes differ from the model's."""


class BackboneMismatchError(CheckpointError):
    """The checkpoint holds another backbone than the one asked for."""


class NonFiniteWeightsError(CheckpointError):
    """NaN or Inf values in the weights."""


class AnchorsFileError(FileError):
    """An anchors file that cannot be read or does not describe anchors."""


class ManifestError(FileError):
    """A manifest that is missing, malformed, or belongs to another checkpoint."""


class ExportError(RetinaFaceExportError):
    """An export that failed or whose artifact does not reproduce the PyTorch model."""


class OutputDirError(FileError):
    """An output folder that cannot be written: a file, a dangling symlink, a read-only folder or parent."""


class FolderBusyError(FileError):
    """Another run holds the output folder's lock and did not release it in time."""


class CommitError(FileError):
    """A run's files could not all be moved into the output folder; the folder was left as it was."""


class InputFileError(FileError):
    """A path that cannot be read as a regular file: missing, a folder, a FIFO or device, a symlink loop."""


class ImageTooLargeError(FileError):
    """An image whose header declares more pixels than the configured limit."""


class UntrustedArtifactError(FileError):
    """An artifact refused before any runtime opens it: its code, structure or contract is not ours."""


class OutsideFolderError(FileError):
    """A name from a data file (or a symlink) that leads outside the folder it must stay in."""


class EvaluationError(RetinaFaceExportError):
    """Predictions that cannot be scored (non-finite values)."""


class AccuracyDropError(ExportError):
    """An INT8 model whose accuracy drop against float is above the accepted maximum."""

    def __init__(self, summary: str, record: dict, artifact: str | None = None) -> None:
        self.summary, self.record, self.artifact = summary, record, artifact
        super().__init__(f"{artifact + ': ' if artifact else ''}INT8 accuracy target not met: {summary}")

    def naming(self, artifact: str) -> AccuracyDropError:
        """The same error naming the artifact it is about."""
        return AccuracyDropError(self.summary, self.record, artifact)


class MissingExtraError(UsageError):
    """A format's runtime or converter needs an optional extra that is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package, self.extra = package, extra
        super().__init__(
            f"{purpose} needs the Python package {package!r}, which is not installed: "
            f'pip install "retinaface-export[{extra}]"'
        )


class ProvenanceError(FileError):
    """An artifact whose provenance (what it says it takes and gives) is malformed or out of bounds."""
