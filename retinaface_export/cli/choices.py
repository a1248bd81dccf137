"""Option choices read from the registries when a command runs, so a registered format is a valid choice."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click


class RegistryChoice(click.Choice):
    """``click.Choice`` over names a function returns at parse time (the format table, say)."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        super().__init__(list(names()))

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value: object) -> None:
        del value  # the registry is the only source of choices
