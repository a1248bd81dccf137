"""This tool's version, from its installed distribution (no import of the package's API)."""

from __future__ import annotations

from functools import cache


@cache
def tool_version() -> str:
    """The installed distribution's version; ``0.0.0+unknown`` in a source tree never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("retinaface-export")
    except PackageNotFoundError:
        return "0.0.0+unknown"
