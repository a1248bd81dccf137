"""What every command shares: options spelt and helped alike, logging to stderr, errors as one line and an exit code.

The conventions: ``--output-dir`` for where files go; ``--size`` for network input sizes [H, W] (``640`` or
``HxW``, sides multiples of 32, several after one flag, ``--size=640`` too); ``--jobs`` for artifacts
handled at once (threads) and ``--threads`` for threads inside each runtime; ``--json FILE`` or ``--json -``
(standard output, the human table then goes to standard error); tables that never cut file names when
standard output is not a terminal; progress bars on standard error.

Stop signals (SIGINT, SIGTERM, SIGHUP) are installed by the console-script entry points
(:mod:`retinaface_export.cli.entry`), before the heavy imports; :func:`handle_errors` reports them.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from retinaface_export.cli.entry import exit_interrupted, no_telemetry
from retinaface_export.errors import RetinaFaceExportError, UsageError
from retinaface_export.progress import progress_listener

if TYPE_CHECKING:  # rich is imported where a console, table or bar is made: retinaface-eval prints without it
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from retinaface_export.sizes import InputSize

F = TypeVar("F", bound=Callable[..., Any])

_consoles: dict[str, Console] = {}


def stderr_console() -> Console:
    """The rich console on standard error that logs and progress bars share (made, and rich imported, on first use)."""
    if "stderr" not in _consoles:
        from rich.console import Console

        _consoles["stderr"] = Console(stderr=True)
    return _consoles["stderr"]


def __getattr__(name: str) -> Any:
    if name == "stderr":  # ``from retinaface_export.cli.common import stderr``: the shared console
        return stderr_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MultiValueCommand(click.Command):
    """A command whose listed options take several values after one flag: ``--size 640 512 320``.

    Click options take one value per flag; before parsing, ``--size 640 512`` is rewritten to
    ``--size 640 --size 512``. Values are the tokens after the flag that the option's predicate accepts.
    """

    def __init__(self, *args: Any, multi_value: dict[str, Callable[[str], bool]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.multi_value = multi_value or {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_value(args, self.multi_value))


def expand_multi_value(args: Sequence[str], options: dict[str, Callable[[str], bool]]) -> list[str]:
    """Repeat a multi-value flag before each of its values (stops at ``--`` or a token the option rejects).

    ``--size=640 512`` is read as ``--size 640 512``: the value glued with ``=`` is the first one.
    """
    out: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if token == "--":
            out.append(token)
            out.extend(args[index:])
            break
        flag, glued, value = token.partition("=")
        if flag in options and token.startswith("--"):
            accepts = options[flag]
            values = [value] if glued else []
            while index < len(args) and accepts(args[index]):
                values.append(args[index])
                index += 1
            if not values:  # click says what is missing
                out.append(token)
            for item in values:
                out += [flag, item]
        else:
            out.append(token)
    return out


def not_an_option(token: str) -> bool:
    """Predicate for free-form values: anything that does not look like a flag."""
    return not token.startswith("-")


def size_token(token: str) -> bool:
    """Predicate for ``--size`` values: they start with a digit (so a folder argument after them is left alone)."""
    return token[:1].isdigit()


def _parse_sizes(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> tuple[InputSize, ...]:
    from retinaface_export.sizes import parse_size  # imported by the commands that take --size only

    try:
        return tuple(parse_size(v) for v in values)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from exc


def size_option(default: str) -> Callable[[F], F]:
    """``--size SIZE...``, the same everywhere: parsed into :class:`InputSize` values (empty when not given).

    Args:
        default: what the command does without ``--size``, for the help.
    """
    return click.option(
        "--size",
        "sizes",
        multiple=True,
        callback=_parse_sizes,
        metavar="SIZE...",
        help="Network input sizes [H, W]: 640 (square) or HxW (e.g. 480x640), sides positive multiples of 32; "
        f"several after one flag (--size 640 512, --size=640). {default}",
    )


def warn_input_notices(command: str, export_dir: Path) -> None:
    """One warning line per kind of notice the artifacts of EXPORT_DIR give about their client metadata.

    The commands feed an artifact as its provenance says; this is for what another client, reading the metadata
    (OpenVINO ``model_info``), must do or would do differently. Artifacts with the same notice share one line
    (the first named, the others counted). Nothing when the manifest cannot be read (the command reports that).
    """
    from retinaface_export.inference.backends import input_notices
    from retinaface_export.manifest import Manifest

    try:
        paths = [export_dir / record.path for record in Manifest.read(export_dir).artifacts]
    except RetinaFaceExportError:
        return
    named: dict[str, list[Path]] = {}
    for path in paths:
        for notice in input_notices(path):
            named.setdefault(notice, []).append(path)
    log = logging.getLogger(f"retinaface_export.cli.{command}")
    for notice, where in named.items():
        others = f" and {len(where) - 1} more" if len(where) > 1 else ""
        log.warning("%s%s: %s", where[0], others, notice)


class PlainHandler(logging.Handler):
    """Log records as ``LEVEL    message`` lines on whatever ``sys.stderr`` is when they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{record.levelname:<8} {self.format(record)}\n")
            sys.stderr.flush()
        except Exception:  # logging's own rule: a failing handler reports and goes on
            self.handleError(record)


def configure_logging(quiet: bool, verbose: bool = False, plain: bool = False) -> None:
    """Library logs go to stderr through rich (``plain``: as plain lines, without importing rich).

    ``--quiet`` keeps warnings and errors only.
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    if plain:
        handler: logging.Handler = PlainHandler()
    else:
        from rich.logging import RichHandler

        handler = RichHandler(console=stderr_console(), show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("filelock").setLevel(max(level, logging.INFO))  # its DEBUG lines narrate every poll


def handle_errors(command_name: str) -> Callable[[F], F]:
    """Turn library errors into ``<command>: error: <one line>`` on stderr and the error's exit code.

    A stop signal or Ctrl-C becomes ``<command>: interrupted; nothing was written`` and 128 + its number.
    Telemetry is turned off first (:func:`~retinaface_export.cli.entry.no_telemetry`; the console scripts
    already did, a command invoked as a click object, ``CliRunner`` say, gets it here, before any library
    that could phone home is imported: the command modules import them inside the command).
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            no_telemetry()
            try:
                return func(*args, **kwargs)
            except RetinaFaceExportError as exc:
                message = " ".join(str(exc).split())
                click.echo(f"{command_name}: error: {message}", err=True)
                sys.exit(exc.exit_code)
            except KeyboardInterrupt as exc:
                exit_interrupted(command_name, exc)

        return wrapper  # type: ignore[return-value]

    return decorate


@contextmanager
def reported_progress(quiet: bool) -> Iterator[Progress]:
    """Progress bars on stderr for what the library reports while the context is open.

    Each label that ``retinaface_export.progress.report_progress`` sends (INT8 calibration of an artifact,
    parity's artifacts) gets a bar of its own, removed when it is done. Nothing shows for steps the library
    does not report. Yields the :class:`rich.progress.Progress`, for bars of the caller's own.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), disable=quiet, transient=True) as progress:
        bars: dict[str, Any] = {}

        def on_progress(label: str, done: int, total: int) -> None:
            if label not in bars:
                bars[label] = progress.add_task(f"  {label}", total=total)
            progress.update(bars[label], total=total, completed=done)
            if done >= total:
                progress.remove_task(bars.pop(label))

        with progress_listener(on_progress):
            yield progress


@contextmanager
def step_progress(verb: str, quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr for multi-artifact runs; yields ``on_step(label, index, total)``.

    What the library reports inside a step shows under it (see :func:`reported_progress`).
    """
    with reported_progress(quiet) as progress:
        task = progress.add_task(verb, total=None)

        def on_step(label: str, index: int, total: int) -> None:
            progress.update(task, total=total, completed=index, description=f"{verb} {label}")

        yield on_step


def wide_console(stderr_output: bool = False) -> Console:
    """A console for result tables: the terminal's width on a terminal, else wide enough for any file name.

    Rich wraps table cells to 80 columns when output is piped; a log or CI page should get whole names.
    """
    from rich.console import Console

    console = Console(stderr=stderr_output)
    return console if console.is_terminal else Console(stderr=stderr_output, width=100_000)


def titled_table(title: str) -> Table:
    """A result table at least as wide as its title: a title naming a file or folder is not cut.

    Rich wraps a title to its table's width; a narrow table (detect's two columns) cut the model's path in
    two even on a pipe, where :func:`wide_console` gives tables all the width they ask for.
    """
    from rich.table import Table

    return Table(title=title, min_width=len(title))


def artifacts_title(count: int, folder: Path) -> str:
    """The title of a run's result table: ``1 artifact in DIR``, ``3 artifacts in DIR``."""
    return f"{count} artifact{'' if count == 1 else 's'} in {folder}"


def json_option(what: str) -> Callable[[F], F]:
    """``--json FILE`` (written atomically) or ``--json -`` (standard output; the table goes to standard error)."""
    return click.option(
        "--json",
        "json_path",
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        default=None,
        help=f"Write {what} as JSON to FILE, or to standard output with '-' (the table then goes to standard error).",
    )


def artifact_inputs(label: str, artifact: str | Path | None) -> list[tuple[str, Path]]:
    """(``label``, path) of an artifact given as an input and of its companion files (an IR's ``.bin``).

    For :func:`~retinaface_export.safety.safe_paths.refuse_outputs_over_inputs`.
    """
    if not artifact:
        return []
    from retinaface_export.formats import format_for_path  # the format table only when an artifact is given

    path = Path(artifact)
    fmt = format_for_path(path)
    return [(label, path), *((label, companion) for companion in (fmt.companions(path) if fmt else []))]


def json_to_stdout(json_path: Path | None) -> bool:
    """Whether ``--json -`` was given."""
    return json_path is not None and str(json_path) == "-"


def write_json(json_path: Path, body: Any, indent: int | None = 1) -> None:
    """``body`` as JSON to ``json_path``, atomically, or to standard output for ``-``."""
    text = json.dumps(body, indent=indent) + "\n"
    if json_to_stdout(json_path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from retinaface_export.safety.atomic import atomic_write_bytes

    atomic_write_bytes(json_path, text.encode())


jobs_option = click.option(
    "--jobs",
    "workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Artifacts handled at once, each in a thread of this process (not the threads inside a runtime: "
    "see --threads where a command has it). Worth it with more cores than a runtime uses; no gain measured "
    "on 2 cores.",
)
