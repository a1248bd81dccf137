"""What native libraries write straight to file descriptor 2: their chatter to the debug log, the rest through.

LiteRT's interpreter ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU."), TensorFlow under
litert-torch (absl and glog lines) and Ray's C++ client write below Python, where no logging level reaches,
so a ``-q`` command would still show them. Inside :func:`native_chatter_to_debug`, file descriptor 2 is a
pipe that a thread reads: whole lines one of the active blocks calls chatter are kept for the debug log,
every other byte goes on to the real stderr in order (a command's own warnings and progress still show).
Blocks may nest and overlap across threads: the first installs the pipe, the last removes it, and the kept
lines are logged at debug level after that (logged before, they would run back into the pipe).

Written here rather than on ``wurlitzer`` (which redirects C-level output to a Python stream): the filter, the
ordering and the nesting across threads would still be ours, and the redirect it would save is ``os.dup2``
and a thread, not worth a dependency of every command.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# A test on one line of bytes (its newline included): True for a library's chatter.
Chatter = Callable[[bytes], bool]

_lock = threading.Lock()
_blocks: list[int] = []  # one entry per block inside, whatever its thread
# every active block's test and source, kept until the pipe is removed (a block's lines may still be in it)
_tests: list[tuple[Chatter, str]] = []
_pipe: dict[str, object] = {}  # the saved stderr, the read end and the reader thread while installed
_kept: list[tuple[str, bytes]] = []  # (source, line)


def _source_of(line: bytes) -> str | None:
    return next((source for test, source in list(_tests) if test(line)), None)


def _pump(read_end: int, saved: int) -> None:
    """Reads the pipe until its last write end closes: chatter kept, the rest written to the real stderr."""
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _forward(line + b"\n", saved)
    if pending:
        _forward(pending, saved)


def _forward(line: bytes, saved: int) -> None:
    # never raises: a reader that stopped would leave every later write to stderr blocked on a full pipe
    try:
        source = _source_of(line)
    except Exception:  # a test that fails on some line passes that line through
        source = None
    if source is not None:
        _kept.append((source, line))
        return
    view = memoryview(line)
    try:
        while view:
            view = view[os.write(saved, view) :]
    except OSError:  # the real stderr is gone (closed): as without the pipe, the bytes are lost
        pass


def _install() -> None:
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    reader = threading.Thread(target=_pump, args=(read_end, saved), name="native-stderr", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)  # file descriptor 2 is the pipe's one write end now
    _pipe.update(saved=saved, read_end=read_end, reader=reader)


def _remove() -> list[tuple[str, bytes]]:
    sys.stderr.flush()
    saved, read_end, reader = _pipe.pop("saved"), _pipe.pop("read_end"), _pipe.pop("reader")
    os.dup2(saved, 2)  # the pipe's last write end closes: the reader drains it and stops
    reader.join(10)  # type: ignore[attr-defined]
    os.close(read_end)  # type: ignore[arg-type]
    os.close(saved)  # type: ignore[arg-type]
    kept = list(_kept)
    _kept.clear()
    _tests.clear()
    return kept


@contextmanager
def native_chatter_to_debug(is_chatter: Chatter, source: str) -> Iterator[None]:
    """In the block, lines ``is_chatter`` accepts on file descriptor 2 go to the debug log instead.

    Args:
        is_chatter: a test on one line of bytes (newline included).
        source: what wrote them, for the debug log.
    """
    with _lock:
        if not _blocks:
            _install()
        _blocks.append(1)
        _tests.append((is_chatter, source))
    try:
        yield
    finally:
        kept: list[tuple[str, bytes]] = []
        with _lock:
            _blocks.pop()
            if not _blocks:
                kept = _remove()
        for name in dict.fromkeys(name for name, _ in kept):
            text = b"".join(line for by, line in kept if by == name).decode(errors="replace").rstrip()
            log.debug("%s on standard error:\n%s", name, text)


def library_log_line(line: bytes) -> bool:
    """An information line of a native library's own logging.

    glog and absl ``I`` lines (``I1205 12:00:00.000 123 file.cc:45] ...``, ``I0000 00:00:...``), TensorFlow
    Lite's ``INFO: ...`` and absl's note that it logs before being set up. Warnings and errors pass.
    """
    if line.startswith((b"INFO: ", b"WARNING: All log messages before absl::InitializeLog()")):
        return True
    return line[:1] == b"I" and line[1:5].isdigit() and line[5:6] == b" " and b"] " in line[:160]
