"""Detection on a Ray cluster (``--engine ray``): the one module that imports ``ray`` (the ``[ray]`` extra).

The image list becomes a Ray dataset of paths; an actor pool of ``num_workers`` actors (``map_batches``
with :class:`_DetectActor`) loads the artifact once per actor, its runtime limited to the actor's CPUs,
and turns batches of paths into results; the driver reads them back as they complete
(``iter_batches``) and writes them itself, so outputs are written in one place as with the local engine.
Images are read by the actors: on several machines, the paths must name the same files on every node (a
shared file system). Ray Data retries the tasks of an actor that dies, so no image is lost.

With no address, a local Ray is started for the run (its CPUs limited to what the actors need, no
dashboard, usage statistics off) and stopped at the end; with one, the run joins that cluster as a driver and
leaves it running (``ray.shutdown`` only disconnects a driver). An address nothing answers at is said at once
(Ray itself would retry for minutes); a cluster with token authentication needs ``RAY_AUTH_MODE=token`` and its
token (Ray sends a token to an address given explicitly only when told to).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import warnings
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.detection.faces import Face
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.errors import FileError, UsageError
from retinaface_export.extras import import_extra
from retinaface_export.inference.stream import ImageResult, batch_size_for, detect_stream
from retinaface_export.native_stderr import native_chatter_to_debug

log = logging.getLogger(__name__)
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
# Ray's C++ core logs to the driver's stderr (one ERROR line per run about the actor pool's constructor
# arguments, which Ray Data itself puts in the object store); failures that matter reach us as exceptions.
BACKEND_LOG_ENV = "RAY_BACKEND_LOG_LEVEL"
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
_PROBE_SECONDS = 5.0


def _faces_json(faces: tuple[Face, ...]) -> str:
    # Python floats through json are exact (repr), so the driver rebuilds the very faces the actor found
    return json.dumps([[list(f.box), f.score, [list(p) for p in f.landmarks]] for f in faces])


def _faces_from_json(text: str) -> tuple[Face, ...]:
    return tuple(Face(tuple(box), score, tuple(tuple(p) for p in points)) for box, score, points in json.loads(text))


class _DetectActor:
    """One actor of the pool: the artifact opened once, then batches of paths in, one result row per path out."""

    def __init__(
        self, artifact: str, config: dict[str, Any], threads: int, batch_size: int | None, optimize: bool
    ) -> None:
        from retinaface_export.inference.detector import Detector

        self.detector = Detector.from_artifact(artifact, DetectionConfig(**config), threads, optimize)
        self.batch_size = batch_size_for(self.detector, batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # read by absolute path (an actor's working folder is not the driver's), recorded as the user named it
        files = [Path(p) for p in batch["file"]]
        results = list(detect_stream([self.detector], files, self.batch_size, decode_threads=1))
        return {
            "image": np.array(list(batch["path"]), dtype=object),
            "height": np.array([r.height or 0 for r in results], dtype=np.int64),
            "width": np.array([r.width or 0 for r in results], dtype=np.int64),
            "faces": np.array([_faces_json(r.faces) for r in results], dtype=object),
            "error": np.array([r.error or "" for r in results], dtype=object),
        }


def _quiet_ray_data() -> None:
    # Ray Data logs each execution at INFO on the console; the command reports on its own
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


# A closed port on loopback: HTTP sent through it fails at once, without leaving the machine.
_NOWHERE = "http://127.0.0.1:9"
_PROXY_ENV = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block (the processes started in it inherit them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _no_outside_http() -> AbstractContextManager[None]:
    """While a local Ray starts, its processes' HTTP goes to a closed loopback port.

    Ray 2.60's dashboard process asks the Azure, GCP and AWS metadata servers (169.254.169.254,
    metadata.google.internal) which cloud it runs on as it starts, even with usage statistics off
    (``UsageStatsHead.run`` calls ``get_cluster_config_to_report`` first). Its ``requests`` honour the proxy
    variables, so the questions end on loopback. The processes Ray starts inherit the variables; this
    process gets its own back once they are started.
    """
    return _environment(
        {"HTTP_PROXY": _NOWHERE, "http_proxy": _NOWHERE, "HTTPS_PROXY": _NOWHERE}
        | {"https_proxy": _NOWHERE, "NO_PROXY": "", "no_proxy": ""}
    )


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, set up so that no run reaches the network on its own.

    Raises:
        MissingExtraError: Ray is not installed (``pip install "retinaface-export[ray]"``).
    """
    os.environ.setdefault(USAGE_STATS_ENV, "0")  # no usage statistics: no command reaches the network
    os.environ.setdefault(BACKEND_LOG_ENV, "fatal")
    # Read on every system when ray is imported (the switch is named for Windows and macOS). Without it Ray finds
    # the machine's address by a UDP connect to 8.8.8.8: a local cluster would listen on that address, and a
    # driver joining by a loopback address (127.0.0.1:PORT, localhost:PORT) would have it rewritten to that
    # address, which a cluster started on loopback does not listen on (Ray then retries for minutes). A driver
    # joining an existing cluster takes its node's address from the cluster, so nothing else changes for it.
    os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    ray = import_extra("ray", "ray", "--engine ray")
    import_extra("ray.data", "ray", "--engine ray")
    return ray


def check_address(address: str, timeout: float = _PROBE_SECONDS) -> None:
    """Something answers at ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``; ``auto`` is left to Ray).

    Ray retries a cluster address nothing answers at for about 14 minutes before it gives up; one TCP
    connection to the address the user named says it at once.

    Raises:
        UsageError: the address is malformed, or nothing answers there within ``timeout`` seconds.
    """
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray-address {address}: not auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        message = f"--ray-address {address}: cannot join the Ray cluster (nothing answers there: {reason})"
        raise UsageError(message) from exc


def _causes(exc: BaseException) -> str:
    texts = []
    while exc is not None and len(texts) < 8:
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return "\n".join(texts)


def _join_error(address: str, exc: BaseException) -> UsageError:
    """One line for a failed ``ray.init(address=...)``: a token refused or missing says what to set."""
    causes = _causes(exc)
    if any(sign in causes for sign in ("Unauthenticated", "InvalidAuthToken", "AuthenticationError")):
        if os.environ.get(AUTH_MODE_ENV, "").lower() == "token":
            return UsageError(f"--ray-address {address}: the Ray cluster refused our token (RAY_AUTH_TOKEN, "
                              "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token must hold the cluster's token)")  # fmt: skip
        return UsageError(
            f"--ray-address {address}: the Ray cluster asks for a token: set RAY_AUTH_MODE=token, "
            "with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
        )
    return UsageError(f"--ray-address {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})")


def _ray_stderr() -> AbstractContextManager[None]:
    """Whatever is written to file descriptor 2 in the block goes to the debug log instead.

    While a driver joins a cluster, Ray's C++ client logs each failed attempt on stderr before its own log
    settings apply (``RAY_BACKEND_LOG_LEVEL`` is not read yet); the command says what failed in one line. A
    local start logs that it read ``RAY_BACKEND_LOG_LEVEL`` there too.
    """
    return native_chatter_to_debug(lambda line: True, "Ray, while it started or joined,")


@contextmanager
def ray_cluster(address: str | None, num_cpus: int) -> Iterator[Any]:
    """Ray for the ``with`` block: the cluster at ``address`` joined, or a local one started and stopped after.

    A Ray this process already runs (a test's, a notebook's) is used as it is and left running.

    Args:
        address: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; None starts a local cluster of ``num_cpus``
            CPUs (no dashboard, usage statistics off, on loopback).
        num_cpus: the local cluster's CPUs.

    Raises:
        MissingExtraError: Ray is not installed.
        UsageError: the cluster cannot be joined (nothing answers at ``address``, a token is missing or
            refused), or a local one cannot be started.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    with ExitStack() as stack:
        if address:
            check_address(address)
            try:
                with _ray_stderr():
                    ray.init(address=address, **options)  # a driver of that cluster: none of the local settings
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
                raise _join_error(address, exc) from exc
        else:
            # A local cluster listens on loopback only: no token. Ray 2.60 would otherwise write ~/.ray/auth_token
            # (outside the folders the user named), which also turns token authentication on for the user's later
            # clusters.
            stack.enter_context(_environment({AUTH_MODE_ENV: os.environ.get(AUTH_MODE_ENV) or "disabled"}))
            try:
                with _no_outside_http(), _ray_stderr():
                    ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"--engine ray: cannot start a local Ray ({exc})") from exc
        try:
            yield ray
        finally:
            ray.shutdown()  # stops a local Ray; a joined cluster only loses this driver


def detect_with_ray(
    artifact: str | Path,
    paths: Iterable[Path],
    config: DetectionConfig,
    num_workers: int = 2,
    threads_per_worker: int = 1,
    batch_size: int | None = None,
    address: str | None = None,
    optimize: bool = False,
) -> Iterator[ImageResult]:
    """Faces in each image of ``paths`` by an actor pool on Ray, one result per image as batches complete.

    Args:
        artifact: the artifact every actor opens (a path every node can read).
        paths: the images (every node must see them under these paths).
        config: the detection thresholds.
        num_workers: actors in the pool, each with ``threads_per_worker`` CPUs and as many runtime threads.
        threads_per_worker: CPUs per actor, the runtime's thread count.
        batch_size: images per network run in each actor (see :func:`~.stream.batch_size_for`).
        address: a running cluster (``auto``, ``ray://host:port``, ``host:port``); None starts a local one.
        optimize: let each actor's runtime optimise the graph (see ``Detector.from_artifact``).

    Raises:
        MissingExtraError: Ray is not installed (``pip install "retinaface-export[ray]"``), raised at the call.
        FileError: no such artifact.
        UsageError: the cluster cannot be joined (once the results are asked for).
    """
    import_ray()  # a missing extra is said before anything runs
    if not Path(artifact).is_file():
        raise FileError(artifact, "no such artifact file")
    settings = {
        "artifact": str(artifact),
        "config": dataclasses.asdict(config),
        "threads": threads_per_worker,
        "batch_size": batch_size,
        "optimize": optimize,
    }
    return _results(settings, paths, num_workers, threads_per_worker, address)


def _results(
    settings: dict[str, Any], paths: Iterable[Path], num_workers: int, threads: int, address: str | None
) -> Iterator[ImageResult]:
    items = [{"path": str(path), "file": os.path.abspath(path)} for path in paths]
    if not items:
        return
    with ray_cluster(address, num_workers * threads) as ray:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command draws its own
        context.print_on_execution_start = False
        _quiet_ray_data()
        # fewer images than actors: Ray Data says some actors will idle (the command's progress shows the run)
        warnings.filterwarnings("ignore", "The minimum number of concurrent actors", UserWarning, "ray.data")
        rows = max(1, settings["batch_size"] or 1) * 4  # paths per actor call: several network batches
        dataset = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // rows))).map_batches(
            _DetectActor,
            fn_constructor_kwargs=settings,
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=threads,
            batch_size=rows,
            batch_format="numpy",
        )
        del items
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for image, height, width, faces, error in zip(
                batch["image"], batch["height"], batch["width"], batch["faces"], batch["error"], strict=True
            ):
                if error:
                    yield ImageResult(str(image), error=str(error))
                else:
                    yield ImageResult(str(image), int(height), int(width), _faces_from_json(faces))
