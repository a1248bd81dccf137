"""Console-script entry points: stop signals are handled before the command's heavy imports begin.

SIGINT, SIGTERM and SIGHUP all raise :class:`Interrupted` (a ``KeyboardInterrupt``), so a run stops the way
Ctrl-C stops it: context managers remove staging folders and release locks, a commit in progress is finished
or undone first (:func:`retinaface_export.safety.atomic.commit_run`), and the command prints one line and exits
128 + the signal number. Importing torch and friends takes seconds; a signal then ends the run the same way.
This module imports only the standard library, so the handlers are in place within milliseconds.

A second signal while the first one's cleanup runs (worker threads finish their artifact first) exits at
once: what it leaves (a staging folder, a commit cut short) belongs to a dead process, which the next run
into that folder removes or undoes (:func:`retinaface_export.safety.atomic.clean_stale_staging`). The same
signal again within SAME_STOP_SECONDS is the same stop, not a second one: ``timeout -s TERM`` signals the
process and then its whole process group, and a shell's ``kill`` of a job can do the same, so one stop
arrives twice; its cleanup then completes.

The handlers act in the process that installed them only: a process forked from it (OpenVINO's telemetry
sender, a multiprocessing worker) inherits them, and there a stop signal takes its default action (the
child ends, silently) instead of printing our message or a traceback.

No command reaches the network: :func:`no_telemetry` turns OpenVINO's and NNCF's usage telemetry off
before either library loads (``import openvino`` alone starts a telemetry session), see ``docs/privacy.md``.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import click

STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
# A repeat of the first stop signal this soon after it is the same stop (``timeout`` sends it to the process,
# then to its group, microseconds apart); a person pressing Ctrl-C again to stop at once waits longer.
SAME_STOP_SECONDS = 0.5
COMMANDS = {
    "retinaface-export": "retinaface_export.cli.export",
    "retinaface-convert": "retinaface_export.cli.convert",
    "retinaface-detect": "retinaface_export.cli.detect",
    "retinaface-golden": "retinaface_export.cli.golden",
    "retinaface-parity": "retinaface_export.cli.parity",
    "retinaface-bench": "retinaface_export.cli.bench",
    "retinaface-eval": "retinaface_export.cli.evaluate",
}
# What `python -m retinaface_export --help` lists, without importing the commands (a test checks each begins
# the command's own help).
SUMMARIES = {
    "export": "Export a RetinaFace checkpoint to TorchScript and ONNX, verified against PyTorch.",
    "convert": "Convert the ONNX models of EXPORT_DIR (made by retinaface-export) to TARGET.",
    "detect": "Detect faces in images (a folder stands for the images in it) with --weights or --model.",
    "golden": "Golden sets: the PyTorch eager outputs that retinaface-parity compares artifacts with.",
    "parity": "Check every artifact in EXPORT_DIR/manifest.json against golden PyTorch outputs; exit 0 only if "
    "all pass.",
    "bench": "Time every artifact in EXPORT_DIR and PyTorch eager.",
    "eval": "WIDER FACE validation AP (easy, medium, hard) of --predictions, or of --model/--weights over --images.",
}


# Commands whose NumPy arithmetic is elementwise (no matrix products): OpenBLAS's thread pool, started when
# NumPy is imported, only costs them time (~50 ms of a ~0.4 s retinaface-eval). A value the user set wins.
ONE_BLAS_THREAD = frozenset({"retinaface-eval"})
BLAS_THREADS_ENV = "OPENBLAS_NUM_THREADS"
# Commands that run for a fraction of a second over arrays of a few MB (retinaface-eval: ~30 arrays of 2.3 MB,
# one value per prediction) and many small containers (NumPy's import, a record per prediction file):
# - the cyclic garbage collector's passes cost ~8 ms of ~0.3 s and free nothing (no reference cycles);
#   a long run among them turns it back on (retinaface-eval --images);
# - glibc's malloc gives every block above its mmap threshold (128 KiB at start) a fresh mapping, unmapped
#   when freed, so each such array is new memory, faulted in page by page (~15 ms of ~0.3 s). Freeing one
#   block of LARGE_BLOCK raises the threshold to that size (mallopt(3): the dynamic mmap threshold), and
#   freed blocks below it are reused. bytes(n) is calloc'd: a fresh mapping, never touched, freed in
#   microseconds. Elsewhere than glibc it changes nothing (mallopt itself would take ctypes and glibc-only
#   code).
SHORT_ARRAY_RUNS = frozenset({"retinaface-eval"})
LARGE_BLOCK = 16 << 20  # at most glibc's DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit), above which it is not raised


def prepare_process(command: str) -> None:
    """Before NumPy loads: OpenBLAS threads and garbage collection as ``command`` wants them.

    One OpenBLAS thread for a command of :data:`ONE_BLAS_THREAD` (unless the user set it); for one of
    :data:`SHORT_ARRAY_RUNS`, no cyclic garbage collection, and freed blocks of a few MB kept for reuse.
    """
    if command in ONE_BLAS_THREAD:
        os.environ.setdefault(BLAS_THREADS_ENV, "1")
    if command in SHORT_ARRAY_RUNS:
        gc.disable()
        bytes(LARGE_BLOCK)  # allocated and freed: malloc's mmap threshold rises to its size (see above)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Environment read by the libraries when they load or start a telemetry session. openvino_telemetry
# declines consent when CI is "true" for tools created with disable_in_ci=True, which OpenVINO's converter
# (``import openvino`` and ``convert_model``) and NNCF both are; NNCF swaps its telemetry for a no-op stub
# when NNCF_CI is set (nncf/telemetry/wrapper.py, read at import).
NO_TELEMETRY_ENV = {"CI": "true", "NNCF_CI": "1"}
# Set to 1 to leave telemetry to the libraries' own consent (``opt_in_out --opt_in`` / ``--opt_out``).
ALLOW_TELEMETRY_ENV = "RETINAFACE_EXPORT_ALLOW_TELEMETRY"


def no_telemetry() -> bool:
    """Turn OpenVINO's and NNCF's usage telemetry off for this process and the processes it starts.

    Every command calls it first. Library users call it before importing ``openvino`` or ``nncf`` (the
    decision is read when they load); a no-op when ``RETINAFACE_EXPORT_ALLOW_TELEMETRY=1`` is set.

    Returns:
        Whether telemetry was turned off (False: the user allowed it).
    """
    if os.environ.get(ALLOW_TELEMETRY_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    os.environ.update(NO_TELEMETRY_ENV)
    return True


_received: list[tuple[int, float]] = []  # the first stop signal and when it arrived (time.monotonic)
_command = ["retinaface-export"]
# The process that installed the handlers; children forked from it inherit them but must not act on them.
_installer_pid = [0]


def _raise_interrupted(signum: int, frame: object) -> None:
    if os.getpid() != _installer_pid[0]:  # a forked child (a library's worker): the signal's default action
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _received:
        first, at = _received[0]
        if signum == first and time.monotonic() - at < SAME_STOP_SECONDS:
            return  # the same stop delivered twice (process, then group): let its cleanup finish
        # a second stop while the first one's cleanup runs: stop now
        _write_line(f"{_command[0]}: interrupted again; stopped at once (the next run cleans up after it)")
        os._exit(128 + signum)
    _received.append((signum, time.monotonic()))
    raise Interrupted(signum)


def _write_line(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # the terminal that sent SIGHUP may be gone
        pass


def install_signal_handlers(command: str) -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread (``command`` for messages)."""
    _command[0] = command
    _installer_pid[0] = os.getpid()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_interrupted)


def exit_interrupted(command: str, exc: KeyboardInterrupt) -> NoReturn:
    """Print ``<command>: interrupted; ...`` and exit 128 + the signal number (130 for Ctrl-C)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    done = "its files were written before it stopped" if getattr(exc, "committed", False) else "nothing was written"
    _write_line(f"{command}: interrupted; {done}")
    sys.exit(128 + signum)


def run(command: str) -> NoReturn:
    """Turn telemetry off, install the handlers, then import ``command``'s module and run its click ``main``."""
    no_telemetry()
    install_signal_handlers(command)
    prepare_process(command)
    try:
        main = importlib.import_module(COMMANDS[command]).main
        main(prog_name=command)
    except KeyboardInterrupt as exc:
        exit_interrupted(command, exc)
    sys.exit(0)  # click's standalone main exits itself; this is not reached


def _entry(command: str) -> Callable[[], NoReturn]:
    def entry() -> NoReturn:
        run(command)

    entry.__name__ = entry.__qualname__ = command.removeprefix("retinaface-")
    entry.__doc__ = f"The ``{command}`` console script."
    return entry


export = _entry("retinaface-export")
convert = _entry("retinaface-convert")
detect = _entry("retinaface-detect")
golden = _entry("retinaface-golden")
parity = _entry("retinaface-parity")
bench = _entry("retinaface-bench")
evaluate = _entry("retinaface-eval")


def module_main() -> NoReturn:
    """``python -m retinaface_export``: one click group whose subcommands are the console scripts' commands.

    Each command's module is imported only when that command runs or its help is shown. A stop signal at any
    point, the command's import included, ends it as it ends the console scripts: one line, 128 + its number
    (click's own ``Aborted!`` and exit 1 never show).
    """
    no_telemetry()
    install_signal_handlers("retinaface_export")
    try:
        _module_group().main(prog_name="python -m retinaface_export")
    except KeyboardInterrupt as exc:
        exit_interrupted(_command[0], exc)
    sys.exit(0)


def _module_group() -> click.Group:
    import click

    class Commands(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return [name.removeprefix("retinaface-") for name in COMMANDS]

        def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
            module = COMMANDS.get(f"retinaface-{name}")
            if module is None:
                return None
            _command[0] = f"retinaface-{name}"  # what a stop signal's message names from here on
            prepare_process(_command[0])
            return importlib.import_module(module).main

        def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            # click would import every command for its short help; the summaries are here instead
            with formatter.section("Commands"):
                formatter.write_dl([(name, SUMMARIES[name]) for name in self.list_commands(ctx)])

        def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
            try:
                return super().make_context(*args, **kwargs)
            except KeyboardInterrupt as exc:  # click would print "Aborted!" and exit 1
                exit_interrupted(_command[0], exc)

        def invoke(self, ctx: click.Context) -> Any:
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt as exc:  # the command's import included
                exit_interrupted(_command[0], exc)

    return Commands(
        name="retinaface_export",
        help="RetinaFace checkpoints to verified TorchScript, ONNX and OpenVINO artifacts. Each command is also "
        "installed as a console script: retinaface-export, retinaface-convert, ...\n\n"
        "Example: python -m retinaface_export export --weights mobilenet0.25_Final.pth --size 640 --output-dir out",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
