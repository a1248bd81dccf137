"""INT8 post-training quantisation with NNCF, for an ``openvino.Model`` or an ``onnx.ModelProto``.

:func:`quantize` quantises a model from calibration samples. :func:`quantize_with_accuracy_control` does
the same with NNCF's accuracy control: the quantised model is scored on validation samples with a metric
against the float model, and layers are reverted to float, those that cost the most first, until the drop
is within ``max_drop``; it returns the model and an :class:`AccuracyResult` that names the layers left in
float, and raises :class:`~retinaface_export.errors.AccuracyDropError` when the drop cannot be met.
:func:`quantize_detector` is the whole INT8 step of a RetinaFace artifact: calibration and validation
photos in, the model and its manifest record out, judged by strict detection F1 against the float model.

The library decides nothing about files: models go in and come out, the caller writes them.

The defaults were chosen on mobilenet0.25 by strict F1 against FP32 on photos left out of calibration
(``scripts/bench_int8.py``; 3-fold cross-validation over the 7 shared photos, each photo's 6 views): the
MIXED preset (symmetric PERFORMANCE lost faces: F1 0.77-0.88 at every size), full bias correction (held
out at 320/640: 0.956/0.983, fast 0.951/0.979, for 1.4-2x the quantisation time), the prediction heads
in INT8 (kept in float: the same F1, 0.979-0.985, for ~5% of the speed-up), and only the softmax in
float. Plain INT8 at 320 lands between 0.95 and 0.98 depending on which samples NNCF's subset steps read;
accuracy control is what holds the target (it reverts the first convolution there).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.calibration import CalibrationSet, PhotoSplit
from retinaface_export.detection.metric import DetectionF1, strict_f1
from retinaface_export.errors import AccuracyDropError, UsageError
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.sizes import InputSize

log = logging.getLogger(__name__)

# Called as progress(stage, done, total): ("calibration", n, None) after each calibration sample NNCF reads
# (it reads the set once per statistics pass, so n passes the sample count); ("evaluation", n, most) after
# each evaluation of a model during accuracy control, ``most`` being how many its search can take at most
# (:func:`most_evaluations`).
Progress = Callable[[str, int, int | None], None]
# metric(reference runs, candidate runs) -> (value, value of each run); higher is better.
Metric = Callable[[Sequence[Sequence[np.ndarray]], Sequence[Sequence[np.ndarray]]], tuple[float, list[float]]]

# NNCF sets its log level and redirects sys.stdout for the whole process while it runs: one at a time.
_NNCF_LOCK = threading.Lock()


class Int8Backend(Protocol):
    """What INT8 needs of a format's in-memory models (``openvino.Model``, ``onnx.ModelProto``).

    Implemented in each format package that quantises (``converters/<format>/int8.py``): this module
    knows formats only through it, and never imports a runtime.
    """

    # NNCF's backend, as the settings and records name it ("openvino", "onnx")
    name: str
    # NNCF's fast bias correction by default (the full one where it works and pays)
    fast_bias_correction: bool

    def prepare(self) -> None:
        """Whatever must happen before NNCF is imported (OpenVINO's numpy bridge, made in one thread)."""
        ...

    def run(self, model: Any, inputs: Iterable[np.ndarray]) -> list[list[np.ndarray]]:
        """The outputs of ``model`` (float or quantised, or what NNCF hands a validation function) per input."""
        ...

    def feed(self, model: Any) -> Callable[[np.ndarray], Any]:
        """An input array as NNCF's engine for ``model`` takes it."""
        ...

    def float_layers(self, model: Any) -> list[str]:
        """Names of the quantisable layers (convolutions, matrix products) whose input is not quantised."""
        ...

    def quantisable_count(self, model: Any) -> int:
        """How many layers NNCF could quantise."""
        ...


@dataclass(frozen=True)
class QuantizationSettings:
    """NNCF settings for INT8 (defaults: what the project ships, see the README's INT8 table)."""

    # "mixed": symmetric weights, asymmetric activations; "performance": symmetric both.
    preset: str = "mixed"
    # NNCF's fast bias correction (one shift per layer from float statistics) or the full one (layer by
    # layer on the partly quantised model). None: full for OpenVINO, fast for ONNX, whose full bias
    # correction fails in NNCF 3.4 on RetinaFace (ONNX Runtime: "Duplicate definition-site" of an FPN tensor).
    fast_bias_correction: bool | None = None
    # Calibration samples NNCF collects statistics on; None: all given.
    subset_size: int | None = None
    # Node-name regexes and op types kept in float. The softmax makes the scores the 0.5 cut reads; the
    # prediction heads are INT8: keeping them in float gave the same held-out F1 for ~5% less speed.
    ignored_patterns: tuple[str, ...] = ()
    ignored_types: tuple[str, ...] = ("Softmax", "SoftMax")
    # Accuracy control: most groups of layers it may revert to float (None: no limit). Each layer in float
    # costs speed (the first convolution of mobilenet0.25 ~5%); past the limit the target counts as unmet.
    max_reverted_groups: int | None = 8

    def __post_init__(self) -> None:
        if self.preset not in ("mixed", "performance"):
            raise ValueError(f"preset must be 'mixed' or 'performance', not {self.preset!r}")
        if self.max_reverted_groups is not None and self.max_reverted_groups < 1:
            # NNCF's restorer returns no model at all when allowed zero iterations
            raise ValueError("max_reverted_groups must be at least 1 (or None)")

    def for_backend(self, backend: Int8Backend) -> QuantizationSettings:
        """These settings with the bias correction ``backend`` gets by default decided."""
        if self.fast_bias_correction is not None:
            return self
        return replace(self, fast_bias_correction=backend.fast_bias_correction)

    def record(self) -> dict[str, Any]:
        """Plain values for a manifest."""
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


# The PERFORMANCE preset applied to the whole graph: the speed ceiling INT8 is compared with.
WHOLE_GRAPH_PERFORMANCE = QuantizationSettings(preset="performance", ignored_patterns=(), ignored_types=())


@dataclass(frozen=True)
class AccuracyResult:
    """What accuracy control reached on the validation samples."""

    metric: str
    fp32: float
    int8: float
    max_drop: float
    validation_samples: int
    # Quantisable layers still INT8; layers the ignored scope kept in float; the other layers in float (those
    # accuracy control reverted, and any NNCF itself left unquantised).
    quantized_layers: int
    ignored_layers: tuple[str, ...]
    float_layers: tuple[str, ...]
    settings: QuantizationSettings = field(default_factory=QuantizationSettings)

    @property
    def drop(self) -> float:
        """FP32 metric minus INT8 metric."""
        return self.fp32 - self.int8

    @property
    def met(self) -> bool:
        """The drop is within ``max_drop`` and some layers are still INT8."""
        return self.drop <= self.max_drop + 1e-12 and self.quantized_layers > 0

    def record(self) -> dict[str, Any]:
        """Plain values for a manifest and an artifact's provenance."""
        return {
            "metric": self.metric,
            "fp32": self.fp32,
            "int8": self.int8,
            "drop": self.drop,
            "max_drop": self.max_drop,
            "met": self.met,
            "validation_samples": self.validation_samples,
            "quantized_layers": self.quantized_layers,
            "ignored_layers": list(self.ignored_layers),
            "float_layers": list(self.float_layers),
            "settings": self.settings.record(),
        }

    def summary(self) -> str:
        """One line: metric values, drop, layers in float."""
        return (
            f"{self.metric}: FP32 {self.fp32:.3f}, INT8 {self.int8:.3f} on {self.validation_samples} validation "
            f"samples (drop {self.drop:.3f}, max {self.max_drop:.3f}); {len(self.float_layers)} layers "
            f"in float, {self.quantized_layers} INT8"
        )


def _ignored(name: str, settings: QuantizationSettings) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in settings.ignored_patterns)


def _nncf_arguments(settings: QuantizationSettings, samples: int) -> dict[str, Any]:
    import nncf

    ignored = None
    if settings.ignored_patterns or settings.ignored_types:
        ignored = nncf.IgnoredScope(
            patterns=list(settings.ignored_patterns), types=list(settings.ignored_types), validate=False
        )
    return {
        "preset": nncf.QuantizationPreset(settings.preset),
        "subset_size": settings.subset_size or samples,
        "fast_bias_correction": settings.fast_bias_correction,
        "ignored_scope": ignored,
    }


@contextlib.contextmanager
def _quiet_nncf(backend: Int8Backend):
    """NNCF quiet while it runs, one run at a time: its log lowered to warnings, its stdout captured.

    NNCF logs at INFO to its own handler and draws progress bars on stdout with no switch to turn them off;
    the log level goes through its public ``set_log_level``.
    """
    backend.prepare()
    import nncf

    with _NNCF_LOCK, contextlib.redirect_stdout(io.StringIO()):
        nncf.set_log_level(logging.WARNING)
        yield


def _calibration_dataset(backend: Int8Backend, model: Any, samples: Sequence[np.ndarray], progress: Progress | None):
    import nncf

    count = 0
    to_input = backend.feed(model)

    def feed(sample: np.ndarray) -> Any:
        nonlocal count
        count += 1
        if progress:
            progress("calibration", count, None)
        return to_input(sample)

    return nncf.Dataset(list(samples), feed)


def quantize(
    backend: Int8Backend,
    model: Any,
    samples: Sequence[np.ndarray],
    settings: QuantizationSettings | None = None,
    progress: Progress | None = None,
) -> Any:
    """``model`` quantised to INT8 from calibration ``samples`` (network inputs); ``model`` is left as it is.

    Args:
        backend: the model's format's INT8 backend.
        model: an ``openvino.Model`` or ``onnx.ModelProto`` (a dynamic one runs at the samples' shapes).
        samples: calibration inputs as the model takes them.
        settings: NNCF settings (default :class:`QuantizationSettings`).
        progress: see :data:`Progress`.
    """
    import nncf

    if not samples:
        raise ValueError("INT8 needs calibration samples")
    settings = (settings or QuantizationSettings()).for_backend(backend)
    with _quiet_nncf(backend):
        return nncf.quantize(
            model, _calibration_dataset(backend, model, samples, progress), **_nncf_arguments(settings, len(samples))
        )


def measure_accuracy(
    backend: Int8Backend,
    model: Any,
    quantized: Any,
    validation: Sequence[np.ndarray],
    metric: Metric,
    max_drop: float,
    settings: QuantizationSettings | None = None,
    metric_name: str | None = None,
    reference: Sequence[Sequence[np.ndarray]] | None = None,
) -> AccuracyResult:
    """``metric`` of ``quantized`` against the float ``model`` on ``validation``, and its layers in float.

    ``reference``: the float model's runs on ``validation`` when already at hand.
    """
    settings = (settings or QuantizationSettings()).for_backend(backend)
    if reference is None:
        reference = backend.run(model, validation)
    in_float = backend.float_layers(quantized)
    return AccuracyResult(
        metric=metric_name or getattr(metric, "name", "metric"),
        fp32=metric(reference, reference)[0],
        int8=metric(reference, backend.run(quantized, validation))[0],
        max_drop=max_drop,
        validation_samples=len(validation),
        quantized_layers=backend.quantisable_count(quantized) - len(in_float),
        ignored_layers=tuple(name for name in in_float if _ignored(name, settings)),
        float_layers=tuple(name for name in in_float if not _ignored(name, settings)),
        settings=settings,
    )


def most_evaluations(quantisable_layers: int, max_reverted_groups: int | None) -> int:
    """The most model evaluations NNCF's accuracy control can make (NNCF 3.x's restorer, read from its source).

    The float and the INT8 model once each; one ranking evaluation per group of quantisers (at most one group
    per quantisable layer); then per iteration one evaluation of the model with one more group in float,
    and, after an iteration that made the drop worse, a new ranking of the groups left.
    """
    groups = quantisable_layers
    iterations = min(max_reverted_groups or groups, groups)
    return 2 + groups + iterations * (1 + groups)


def quantize_with_accuracy_control(
    backend: Int8Backend,
    model: Any,
    samples: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    metric: Metric,
    max_drop: float,
    settings: QuantizationSettings | None = None,
    allow_accuracy_drop: bool = False,
    metric_name: str = "metric",
    progress: Progress | None = None,
    budget_seconds: float | None = None,
) -> tuple[Any, AccuracyResult]:
    """``model`` quantised to INT8, with layers reverted to float until ``metric`` drops by ``max_drop`` at most.

    The float model runs once on ``validation``; ``metric(float runs, candidate runs)`` scores each
    candidate NNCF tries (``nncf.quantize_with_accuracy_control``, absolute drop). The returned result is
    measured again on the final model, not taken from NNCF's log.

    Args:
        backend: the model's format's INT8 backend.
        model: an ``openvino.Model`` or ``onnx.ModelProto`` (a dynamic one runs at the samples' shapes).
        samples: calibration inputs.
        validation: inputs the metric is measured on; none of them should be a calibration input.
        metric: see :data:`Metric`; higher is better.
        max_drop: largest accepted ``metric(float, float) - metric(float, int8)``.
        settings: NNCF settings (default :class:`QuantizationSettings`).
        allow_accuracy_drop: return the model even when the drop is not met (the result says so).
        metric_name: how the result names the metric.
        progress: see :data:`Progress`.
        budget_seconds: stop the search (with :class:`AccuracyDropError`) at the first evaluation that starts
            after this many seconds; None: no limit.

    Raises:
        AccuracyDropError: the drop is above ``max_drop`` after reverting ``settings.max_reverted_groups``
            groups of layers, or is met only with every layer in float; not raised with
            ``allow_accuracy_drop``. Also when the search runs past ``budget_seconds``, whatever
            ``allow_accuracy_drop`` says (there is no model to keep).
    """
    import nncf

    if not samples or not validation:
        raise ValueError("accuracy control needs calibration and validation samples")
    if not 0 <= max_drop < 1:
        raise UsageError(f"the maximum accuracy drop must be in [0, 1), got {max_drop}")
    settings = (settings or QuantizationSettings()).for_backend(backend)
    if budget_seconds is not None and not budget_seconds > 0:
        raise UsageError(f"the INT8 time budget must be a positive number of seconds, got {budget_seconds}")
    reference = backend.run(model, validation)
    to_input = backend.feed(model)
    most = most_evaluations(backend.quantisable_count(model), settings.max_reverted_groups)
    evaluations = 0
    best = float("-inf")  # of the INT8 candidates (the first evaluation is the float model's)
    start = time.monotonic()

    def validate(candidate: Any, items: Iterable[tuple[int, np.ndarray]]) -> tuple[float, list[float]]:
        nonlocal evaluations, best
        elapsed = time.monotonic() - start
        if budget_seconds is not None and elapsed > budget_seconds:
            best_text = f"{best:.3f}" if evaluations > 1 else "none yet"
            raise AccuracyDropError(
                f"accuracy control stopped at its time budget ({budget_seconds:g} s) after {evaluations} "
                f"evaluations of at most {most}; best {metric_name} so far {best_text}",
                {"budget_seconds": budget_seconds, "evaluations": evaluations, "most_evaluations": most},
            )
        items = list(items)
        value = metric([reference[index] for index, _ in items], backend.run(candidate, [data for _, data in items]))
        evaluations += 1
        if evaluations > 1 and len(items) == len(validation):
            best = max(best, value[0])
        if progress:
            progress("evaluation", evaluations, max(most, evaluations))
        return value

    restorer = nncf.AdvancedAccuracyRestorerParameters(num_ranking_workers=1)
    if settings.max_reverted_groups is not None:
        restorer.max_num_iterations = settings.max_reverted_groups
    with _quiet_nncf(backend):
        quantized = nncf.quantize_with_accuracy_control(
            model,
            _calibration_dataset(backend, model, samples, progress),
            nncf.Dataset(list(enumerate(validation)), lambda item: to_input(item[1])),
            validate,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=restorer,
            **_nncf_arguments(settings, len(samples)),
        )
    if progress:  # the search is over: its bar is complete
        progress("evaluation", max(most, evaluations), max(most, evaluations))
    log.info("accuracy control: %d evaluations in %.0f s (at most %d)", evaluations, time.monotonic() - start, most)
    result = measure_accuracy(backend, model, quantized, validation, metric, max_drop, settings, metric_name, reference)
    if not result.met:
        if not allow_accuracy_drop:
            raise AccuracyDropError(result.summary(), result.record())
        log.warning("INT8 kept although its accuracy target is not met: %s", result.summary())
    return quantized, result


@dataclass(frozen=True)
class Int8Request:
    """What an INT8 conversion of a RetinaFace artifact needs besides the model, and its accuracy target."""

    photos: PhotoSplit
    # the size and batch calibration and accuracy control run at (a dynamic model's first verified size)
    size: InputSize
    batch: int
    anchors: AnchorConfig
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    # largest accepted strict-F1 drop against the float model on the validation photos
    max_f1_drop: float = 0.03
    allow_accuracy_drop: bool = False
    # False for synthetic weights, whose detections mean nothing: the model is quantised whole and its F1
    # measured and recorded, with no target (reverting layers would chase noise)
    accuracy_control: bool = True
    settings: QuantizationSettings = field(default_factory=QuantizationSettings)
    progress: Progress | None = None
    # accuracy control stops (failing the conversion) at its first evaluation past this many seconds
    budget_seconds: float | None = None

    def metric(self, size: InputSize | None = None) -> DetectionF1:
        """Strict detection F1 (IoU 0.5) of outputs at ``size`` (default: the request's), read as written."""
        return strict_f1(self.anchors, size or self.size, self.postprocess)

    def samples(self, photos: CalibrationSet) -> list[np.ndarray]:
        """Network inputs (mean subtracted) of ``photos`` at the model's size; each repeated to its batch."""
        samples = photos.samples(self.size)
        if self.batch > 1:
            samples = [np.repeat(sample, self.batch, axis=0) for sample in samples]
        return samples


def quantize_detector(backend: Int8Backend, model: Any, request: Int8Request) -> tuple[Any, dict[str, Any]]:
    """A RetinaFace model quantised to INT8, judged by strict detection F1 against itself in float.

    Calibrates on ``request.photos.calibration`` and validates on ``request.photos.validation`` (both
    letterboxed to the model's size, augmented as their sets say) with
    :class:`~retinaface_export.detection.metric.DetectionF1` (score > 0.5 on both sides, IoU >= 0.5).

    Args:
        backend: the model's format's INT8 backend.
        model: an ``openvino.Model`` or ``onnx.ModelProto`` taking N×3×H×W float32 minus the mean, fixed
            at ``request.size`` and ``request.batch`` or dynamic (then run at those).
        request: photos, the model's shape, anchors and post-processing, the accuracy target.

    Returns:
        The quantised model, and the record for the manifest row and the artifact's provenance: both photo
        sets (files, sha256, counts, how the validation set was chosen) and the accuracy result (metric,
        FP32 and INT8 values, drop, layers in float, NNCF settings).

    Raises:
        AccuracyDropError: see :func:`quantize_with_accuracy_control`.
    """
    metric = request.metric()
    calibration = request.samples(request.photos.calibration)
    validation = request.samples(request.photos.validation)
    if not request.accuracy_control:
        quantized = quantize(backend, model, calibration, request.settings, request.progress)
        result = measure_accuracy(backend, model, quantized, validation, metric, request.max_f1_drop, request.settings)
        record = result.record() | {"accuracy_control": False, "reason": "synthetic weights: detections mean nothing"}
        return quantized, request.photos.record() | {"accuracy": record}
    quantized, result = quantize_with_accuracy_control(
        backend,
        model,
        calibration,
        validation,
        metric,
        request.max_f1_drop,
        settings=request.settings,
        allow_accuracy_drop=request.allow_accuracy_drop,
        metric_name=metric.name,
        progress=request.progress,
        budget_seconds=request.budget_seconds,
    )
    return quantized, request.photos.record() | {"accuracy": result.record() | {"accuracy_control": True}}
