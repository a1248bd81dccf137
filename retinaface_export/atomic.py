"""Atomic writes: build in a staging folder beside the destination, move into place, manifest last.

A failed or interrupted run leaves no partial artifact and keeps an earlier export intact: nothing enters
the destination until every artifact is built and verified, and each file lands with ``os.replace``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open would
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staging_dir(destination: Path) -> Iterator[Path]:
    """A fresh folder on the destination's file system, removed on exit whatever happens."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=destination.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_files(staging: Path, names: list[str], destination: Path) -> None:
    """Move ``names`` from ``staging`` into ``destination`` (created if needed), one ``os.replace`` each."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(staging / name, destination / name)
