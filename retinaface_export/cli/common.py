"""What every command shares: multi-value options, logging to stderr, errors as one line and an exit code.

Stop signals (SIGINT, SIGTERM, SIGHUP) are installed by the console-script entry points
(:mod:`retinaface_export.cli.entry`), before the heavy imports; :func:`handle_errors` reports them.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from retinaface_export.cli.entry import exit_interrupted
from retinaface_export.errors import RetinaFaceExportError

F = TypeVar("F", bound=Callable[..., Any])

stderr = Console(stderr=True)


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
    """Repeat a multi-value flag before each of its values (stops at ``--`` or a token the option rejects)."""
    out: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        out.append(token)
        index += 1
        if token == "--":
            out.extend(args[index:])
            break
        if token in options:
            accepts = options[token]
            first = True
            while index < len(args) and accepts(args[index]):
                if not first:
                    out.append(token)
                out.append(args[index])
                first = False
                index += 1
    return out


def not_an_option(token: str) -> bool:
    """Predicate for free-form values: anything that does not look like a flag."""
    return not token.startswith("-")


def configure_logging(quiet: bool, verbose: bool = False) -> None:
    """Library logs go to stderr through rich; ``--quiet`` keeps warnings and errors only."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("filelock").setLevel(max(level, logging.INFO))  # its DEBUG lines narrate every poll


def handle_errors(command_name: str) -> Callable[[F], F]:
    """Turn library errors into ``<command>: error: <one line>`` on stderr and the error's exit code.

    A stop signal or Ctrl-C becomes ``<command>: interrupted; nothing was written`` and 128 + its number.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
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
def step_progress(verb: str, quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr for multi-artifact runs; yields ``on_step(label, index, total)``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, disable=quiet, transient=True) as progress:
        task = progress.add_task(verb, total=None)

        def on_step(label: str, index: int, total: int) -> None:
            progress.update(task, total=total, completed=index, description=f"{verb} {label}")

        yield on_step


jobs_option = click.option(
    "--jobs",
    "workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Artifacts built and verified at once, in threads. Worth it with more cores than a runtime uses; "
    "no gain measured on 2 cores.",
)
