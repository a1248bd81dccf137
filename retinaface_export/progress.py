"""Progress inside long library steps (INT8 calibration, parity per artifact), for whoever displays it.

The library calls :func:`report_progress` with a label, how much is done and the total; nothing happens
unless a caller installed a listener with :func:`progress_listener` (the commands' progress bars do). The
library never draws anything itself. Listeners are process-wide rather than per thread, so steps that run
in worker threads (``--jobs``) reach them as well.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressCallback = Callable[[str, int, int], None]
"""``on_progress(label, done, total)``: ``label`` names the step (an artifact, say), ``done`` of ``total``."""

_listeners: list[ProgressCallback] = []
_lock = threading.Lock()


@contextmanager
def progress_listener(on_progress: ProgressCallback) -> Iterator[None]:
    """Send every :func:`report_progress` call to ``on_progress`` while the context is open."""
    with _lock:
        _listeners.append(on_progress)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(on_progress)


def report_progress(label: str, done: int, total: int) -> None:
    """Tell the listeners that ``done`` of ``total`` units of the step ``label`` are done (a no-op without any).

    Call it with ``done == total`` when the step ends: displays drop the step's bar then.
    """
    with _lock:
        listeners = list(_listeners)
    for on_progress in listeners:
        on_progress(label, done, total)
