"""``retinaface-detect``: faces out of images with a checkpoint or any exported artifact.

Two ways to run: over a few images, with a table, ``--json`` and drawings; or as a streaming job over folders of
any size (``--predictions OUT.jsonl``, ``--widerface-predictions DIR``), one record per image written as it
completes, folders read lazily and nothing kept, ``--resume`` to go on after an interruption. ``--engine ray``
runs the job on a Ray cluster (the ``[ray]`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from retinaface_export.anchors import load_anchors
from retinaface_export.cli.common import (
    artifact_inputs,
    configure_logging,
    handle_errors,
    json_option,
    json_to_stdout,
    stderr,
    titled_table,
    wide_console,
    write_json,
)
from retinaface_export.detection.drawing import draw_faces
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.errors import FileError, UsageError
from retinaface_export.formats import FORMATS
from retinaface_export.images import IMAGE_SUFFIXES, images_in_folder
from retinaface_export.inference.backends import runs_side_by_side
from retinaface_export.inference.detector import Detector
from retinaface_export.inference.outputs import JsonLines, write_widerface_prediction
from retinaface_export.inference.stream import (
    MAX_WORKERS,
    MAX_WORKERS_ENV,
    ImageResult,
    batch_size_for,
    default_workers,
    detect_stream,
    iter_images,
    runtime_threads,
)
from retinaface_export.safety.atomic import atomic_write_bytes
from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs
from retinaface_export.sizes import MAX_BATCH, MAX_BATCH_ENV, env_limit
from retinaface_export.variants import list_variants

log = logging.getLogger(__name__)
COMMAND = "retinaface-detect"


def _expand(arguments: tuple[Path, ...]) -> tuple[list[Path], list[str]]:
    """Image paths (a folder stands for its images, by suffix, not recursive) and errors for empty folders."""
    paths, errors = [], []
    for argument in arguments:
        if argument.is_dir():
            found = images_in_folder(argument)
            if not found:
                errors.append(f"{argument}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            paths.extend(found)
        else:
            paths.append(argument)
    return paths, errors


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except (OSError, RuntimeError):  # a symlink loop: not the same as anything we write
        return False


def _refuse_overwriting_inputs(
    images: list[Path],
    output_dir: Path | None,
    json_path: Path | None,
    png_names: list[str],
    inputs: list[tuple[str, Path | str | None]],
) -> None:
    """Outputs never replace inputs: the rule of every command, and no drawing folder among the photos."""
    refuse_outputs_over_inputs(
        [("--json", json_path), ("--output-dir", output_dir)], [*inputs, *(("image", image) for image in images)]
    )
    if output_dir is not None:
        for image in images:
            if _same_file(image.parent, output_dir):
                raise UsageError(
                    f"--output-dir {output_dir} is the folder of the input image {image}: drawings could replace "
                    "photos there; choose another folder"
                )
    drawings = [output_dir / name for name in png_names] if output_dir is not None else []
    if json_path is not None and not json_to_stdout(json_path) and any(_same_file(json_path, d) for d in drawings):
        raise UsageError(f"--json {json_path} is the name of a drawing in --output-dir; choose another name")


def _output_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` per image; where that is taken, ``<stem>_<n>.png`` with the first n not taken."""
    names: list[str] = []
    taken: set[str] = {f"{path.stem}.png" for path in paths}  # a later a_1.jpg keeps its own a_1.png
    used: set[str] = set()
    for path in paths:
        name, count = f"{path.stem}.png", 0
        while name in used or (count and name in taken):
            count += 1
            name = f"{path.stem}_{count}.png"
        used.add(name)
        names.append(name)
    return names


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _refuse_streams_over_inputs(
    arguments: tuple[Path, ...],
    streams: list[tuple[str, Path | None]],
    others: list[tuple[str, Path | None]],
    inputs: list[tuple[str, Path | str | None]],
) -> None:
    """The streaming outputs follow every command's rule: never an input, inside an input folder or another output.

    And the WIDER folder holds no input: its event folders could be input folders.
    """
    if all(path is None for _, path in streams):
        return
    images = [("image", argument) for argument in arguments if not argument.is_dir()]
    refuse_outputs_over_inputs([*others, *streams], [*inputs, *images])
    widerface = dict(streams)["--widerface-predictions"]
    for argument in arguments if widerface is not None else ():
        if _inside(argument, widerface):
            raise UsageError(
                f"--widerface-predictions {widerface} holds the input {argument}: its event folders could be "
                "input folders; write it outside the inputs"
            )


class _Rate(ProgressColumn):
    """Images per second over the last seconds."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} images/s" if speed else "… images/s")


@contextmanager
def _progress_bar(total: int | None, quiet: bool) -> Iterator[tuple[Progress, TaskID]]:
    count = "{task.completed}/{task.total}" if total is not None else "{task.completed}"
    columns = (TextColumn("detecting"), BarColumn(), TextColumn(count + " images"), _Rate(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, disable=quiet, transient=True) as progress:
        yield progress, progress.add_task("detecting", total=total)


# the options of --engine ray alone (--num-workers goes with both engines)
_RAY_ONLY = ("--cpus-per-worker", "--ray-address")


def _check_engine_options(
    engine: str, weights: str | None, output_dir: Path | None, threads: int | None, engine_options: dict
) -> None:
    if engine == "ray":
        if weights:
            raise UsageError("--engine ray runs an artifact (--model); export the checkpoint first")
        if output_dir is not None:
            raise UsageError("--output-dir draws on this machine: use it with --engine local")
        if threads is not None:
            raise UsageError("--threads is for --engine local; with --engine ray, --cpus-per-worker sets them")
        from retinaface_export.inference.ray_engine import import_ray

        import_ray()  # a missing extra is said before anything runs
        return
    given = [flag for flag in _RAY_ONLY if engine_options[flag] is not None]
    if given:
        raise UsageError(f"{', '.join(given)} go with --engine ray")
    workers, limit = engine_options["--num-workers"], env_limit(MAX_WORKERS_ENV, MAX_WORKERS)
    if workers is not None and workers > limit:
        raise UsageError(
            f"--num-workers {workers} is above {limit}: each local worker loads the model (set {MAX_WORKERS_ENV}=N "
            "to allow more)"
        )


def _ray_workers(engine_options: dict) -> tuple[int, int]:
    """(actors, CPUs per actor) for --engine ray."""
    return engine_options["--num-workers"] or 2, engine_options["--cpus-per-worker"] or 1


def _detectors(
    engine: str,
    weights: str | None,
    artifact: str | None,
    backbone: str | None,
    anchors: str | None,
    config: DetectionConfig,
    workers: int | None,
    threads: int | None,
    optimize: bool,
) -> list[Detector]:
    """One detector per local worker, each with a runtime of its own (one for --engine ray: its actors load theirs).

    An artifact gets one worker per CPU by default (at most four; one if its runtime's runs take turns), the CPUs
    shared out as runtime threads; a checkpoint runs in PyTorch eager on one worker by default (PyTorch spreads
    it over the CPUs itself).
    """
    if weights:
        loaded = load_anchors(anchors) if anchors else None
        return [Detector.from_checkpoint(weights, backbone, loaded, config) for _ in range(workers or 1)]
    if engine != "local":
        return [Detector.from_artifact(artifact, config, threads=threads, optimize=optimize)]
    workers = workers or default_workers(runs_side_by_side(artifact))
    threads = threads or runtime_threads(workers)
    return [Detector.from_artifact(artifact, config, threads=threads, optimize=optimize) for _ in range(workers)]


@contextmanager
def _engine_session(engine: str, engine_options: dict) -> Iterator[None]:
    """For --engine ray, the cluster joined (or a local one started) for the block.

    A cluster that cannot be joined is said before any output file is created; a joined one is left running.
    """
    if engine != "ray":
        yield
        return
    from retinaface_export.inference.ray_engine import ray_cluster

    workers, cpus = _ray_workers(engine_options)
    with ray_cluster(engine_options["--ray-address"], workers * cpus):
        yield


def _results(
    engine: str,
    detectors: list[Detector],
    artifact: str | None,
    paths: Iterable[Path],
    config: DetectionConfig,
    batch_size: int,
    decode_threads: int,
    keep_images: bool,
    optimize: bool,
    engine_options: dict,
) -> Iterator[ImageResult]:
    if engine == "local":
        return detect_stream(detectors, paths, batch_size, decode_threads, keep_images)
    from retinaface_export.inference.ray_engine import detect_with_ray

    assert artifact is not None
    workers, cpus = _ray_workers(engine_options)
    return detect_with_ray(
        artifact,
        paths,
        config,
        num_workers=workers,
        threads_per_worker=cpus,
        batch_size=batch_size,
        address=engine_options["--ray-address"],
        optimize=optimize,
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IMAGE|FOLDER...")
@click.option("--weights", type=str, default=None, help="Checkpoint (.pth): PyTorch eager at each image's size.")
@click.option(
    "--model",
    "artifact",
    type=str,
    default=None,
    help="An artifact of any format retinaface-export or retinaface-convert writes: "
    + ", ".join(fmt.suffix for fmt in FORMATS.values())
    + " (an IR's .bin beside it).",
)
@click.option("--backbone", type=click.Choice(list_variants()), default=None, help="With --weights: expected variant.")
@click.option("--anchors", type=str, default=None, help="With --weights: anchors file or preset.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Score threshold.")
@click.option("--nms", type=click.FloatRange(0, 1), default=0.4, show_default=True, help="NMS IoU threshold.")
@json_option("the faces in original-image pixels (schema: retinaface_export/detect.schema.json)")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Draw boxes, scores and landmarks into PNGs here.",
)
@click.option(
    "--predictions",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Stream one JSON line per image to this file as each completes (image, width, height, faces; or the "
    "error that kept an image from being read). Folders are read lazily and nothing is kept: any number of images.",
)
@click.option("--resume", is_flag=True, help="With --predictions: skip the images already in the file.")
@click.option(
    "--widerface-predictions",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write DIR/EVENT/IMAGE.txt per image (EVENT: the image's folder), the layout retinaface-eval "
    "--predictions reads (use --threshold 0.02 for AP).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per network run: any N for artifacts exported with --dynamic (same-size images are batched), "
    "the artifact's own batch for --batch N exports; default 1 (or the artifact's batch).",
)
@click.option(
    "--decode-threads",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Threads reading, decoding and letterboxing images while the runtimes run (--engine local).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="With --model: threads inside each worker's runtime (default: the CPUs available shared out among the "
    "workers; with --engine ray, --cpus-per-worker sets them).",
)
@click.option(
    "--optimize",
    is_flag=True,
    help="With --model: let the runtime optimise the graph, as deployments run it (ONNX Runtime's graph "
    "optimisations: ~30%% faster here, faces equal within float rounding); default: the graph as written, as "
    "it was verified.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help='local: this process; ray: an actor pool on Ray (pip install "retinaface-export[ray]").',
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Runtimes side by side, each loading the model once: --engine local, in this process (default: one per "
    "CPU, at most 4; 1 with --weights); --engine ray, actors (default 2).",
)
@click.option(
    "--cpus-per-worker",
    type=click.IntRange(min=1),
    default=None,
    help="--engine ray: CPUs per actor, and its runtime's threads (default 1).",
)
@click.option(
    "--ray-address",
    type=str,
    default=None,
    help="--engine ray: join this cluster (auto, HOST:PORT, ray://HOST:PORT); default: start a local Ray for the run.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
@handle_errors(COMMAND)
def main(
    images: tuple[Path, ...],
    weights: str | None,
    artifact: str | None,
    backbone: str | None,
    anchors: str | None,
    threshold: float,
    nms: float,
    json_path: Path | None,
    output_dir: Path | None,
    predictions: Path | None,
    resume: bool,
    widerface_predictions: Path | None,
    batch_size: int | None,
    decode_threads: int,
    threads: int | None,
    optimize: bool,
    engine: str,
    num_workers: int | None,
    cpus_per_worker: int | None,
    ray_address: str | None,
    quiet: bool,
) -> None:
    """Detect faces in images (a folder stands for the images in it) with --weights or --model.

    Example: retinaface-detect photo.jpg --model out/retinaface_mobilenet0.25_640x640.onnx --output-dir drawn

    Over a folder of any size: retinaface-detect photos/ --model m.onnx --predictions faces.jsonl --resume
    """
    configure_logging(quiet)
    if (weights is None) == (artifact is None):
        raise UsageError("give exactly one of --weights CKPT or --model ARTIFACT")
    if artifact and (backbone or anchors):
        raise UsageError("--backbone and --anchors go with --weights; an artifact carries its own")
    if (threads is not None or optimize) and artifact is None:
        raise UsageError("--threads and --optimize go with --model (they set its runtime)")
    if resume and predictions is None:
        raise UsageError("--resume goes with --predictions FILE (the file it goes on with)")
    limit = env_limit(MAX_BATCH_ENV, MAX_BATCH)
    if batch_size is not None and batch_size > limit:
        raise UsageError(f"--batch-size {batch_size} is above {limit} (set {MAX_BATCH_ENV}=N to allow more)")
    engine_options = {"--num-workers": num_workers, "--cpus-per-worker": cpus_per_worker, "--ray-address": ray_address}
    _check_engine_options(engine, weights, output_dir, threads, engine_options)
    config = DetectionConfig(score_threshold=threshold, nms_threshold=nms)
    streaming = predictions is not None or widerface_predictions is not None
    empty: list[Path] = []
    inputs = [("IMAGE|FOLDER", a) for a in images if a.is_dir()]
    inputs += [("--weights", weights), ("--anchors", anchors), *artifact_inputs("--model", artifact)]
    if json_path is not None or output_dir is not None or not streaming:
        # a listing, a table or drawings: the images are listed first (numbered drawing names need them all)
        paths, folder_errors = _expand(images)
        png_names = _output_names(paths)
        _refuse_overwriting_inputs(paths, output_dir, json_path, png_names, inputs)
        listed: list[tuple[Path, str]] | None = list(zip(paths, png_names, strict=True))
    else:  # a streaming job: folders are read as the job goes
        listed, folder_errors = None, []
    streams = [("--predictions", predictions), ("--widerface-predictions", widerface_predictions)]
    _refuse_streams_over_inputs(images, streams, [("--json", json_path), ("--output-dir", output_dir)], inputs)
    detectors = _detectors(engine, weights, artifact, backbone, anchors, config, num_workers, threads, optimize)
    detector = detectors[0]
    for notice in detector.backend.notices:
        log.warning("%s: %s", artifact, notice)
    batch = batch_size_for(detector, batch_size)
    with _engine_session(engine, engine_options):  # Ray joined or started before anything is written
        outputs = _Outputs(
            JsonLines(predictions, resume) if predictions is not None else None,
            widerface_predictions,
            json_path,
            output_dir,
            _faces_table(detector) if not streaming else None,
        )
        done = outputs.stream.done if outputs.stream is not None else set()
        if done:
            log.info("%s: %d images already recorded; skipping them", predictions, len(done))
        if listed is not None:
            listed = [(path, name) for path, name in listed if str(path) not in done]
            todo: Iterable[Path] = [path for path, _ in listed]
            outputs.png_names = iter([name for _, name in listed])
        else:
            todo = (path for path in iter_images(images, empty) if str(path) not in done)

        for message in folder_errors:
            click.echo(f"{COMMAND}: error: {message}", err=True)
        outputs.failures = len(folder_errors)
        keep = output_dir is not None
        results = _results(
            engine, detectors, artifact, todo, config, batch, decode_threads, keep, optimize, engine_options
        )
        try:
            with _progress_bar(len(listed) if listed is not None else None, quiet) as (progress, task):
                for result in results:
                    outputs.take(result)
                    progress.advance(task)
        except KeyboardInterrupt as exc:
            if outputs.stream is not None:  # every line written so far is whole: the file is valid, --resume goes on
                log.warning("%s: %d images recorded before the stop; --resume goes on", predictions, outputs.images)
                exc.committed = True  # type: ignore[attr-defined]
            raise
        finally:
            if outputs.stream is not None:
                outputs.stream.close()
        for folder in empty:
            click.echo(f"{COMMAND}: error: {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", err=True)
            outputs.failures += 1
        outputs.finish(quiet)
        if outputs.failures:
            raise click.exceptions.Exit(1)


def _faces_table(detector: Detector) -> Table:
    table = titled_table(f"faces ({detector.backend.name}, {detector.backend.source})")
    table.add_column("image")
    table.add_column("faces", justify="right")
    return table


class _Outputs:
    """Where each result goes: the JSON lines, the WIDER files, the --json listing, the table, the drawings."""

    def __init__(
        self,
        stream: JsonLines | None,
        widerface: Path | None,
        json_path: Path | None,
        output_dir: Path | None,
        table: Table | None,
    ) -> None:
        self.stream, self.widerface, self.json_path, self.output_dir, self.table = (
            stream,
            widerface,
            json_path,
            output_dir,
            table,
        )
        self.png_names: Iterator[str] = iter(())
        self.report: list[dict] = []
        self.images = self.faces = self.failures = 0

    def take(self, result: ImageResult) -> None:
        if self.stream is not None:
            self.stream.write(result.record())
        self.images += 1
        png_name = next(self.png_names, None)
        if result.error is not None:  # report it, go on with the other images, fail at the end
            click.echo(f"{COMMAND}: error: {result.path}: {result.error}", err=True)
            self.failures += 1
            return
        self.faces += len(result.faces)
        if self.widerface is not None:
            write_widerface_prediction(self.widerface, Path(result.path), result.faces)
        if self.json_path is not None:
            self.report.append({"image": result.path, "faces": [face.to_dict() for face in result.faces]})
        if self.table is not None:
            self.table.add_row(result.path, str(len(result.faces)))
        if self.output_dir is not None:
            _draw(self.output_dir, png_name, result)

    def finish(self, quiet: bool) -> None:
        if self.json_path is not None:
            write_json(self.json_path, self.report, indent=None)
        if self.table is None:
            log.info("%d images, %d faces, %d errors", self.images, self.faces, self.failures)
        elif not quiet:
            wide_console(stderr_output=json_to_stdout(self.json_path)).print(self.table)


def _draw(output_dir: Path, png_name: str | None, result: ImageResult) -> None:
    import cv2

    assert png_name is not None and result.image is not None
    ok, encoded = cv2.imencode(".png", draw_faces(result.image, list(result.faces)))
    if not ok:
        raise FileError(output_dir / png_name, "PNG encoding failed")
    atomic_write_bytes(output_dir / png_name, encoded.tobytes())
