"""Run independent jobs in a few threads (results in job order), and share work between them once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


def run_jobs(work: Callable[[Job], Result], jobs: Sequence[Job], workers: int) -> list[Result]:
    """``[work(job) for job in jobs]``, with up to ``workers`` jobs running at once.

    Threads, not processes: the heavy parts (PyTorch, ONNX Runtime, OpenVINO, protobuf serialisation)
    release the GIL, and the models stay shared instead of being copied into each worker. Once a job
    fails, jobs not yet started are cancelled and the failure is raised.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [work(job) for job in jobs]
    with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
        futures = [pool.submit(work, job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


class OnceCache:
    """``get(key, compute)`` computes each key's value once, however many threads ask for it at once."""

    def __init__(self) -> None:
        self._values: dict = {}
        self._locks: dict = {}
        self._lock = threading.Lock()

    def get(self, key, compute: Callable[[], Result]) -> Result:
        """The value of ``key``, from ``compute()`` the first time."""
        with self._lock:
            key_lock = self._locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._values:
                self._values[key] = compute()
            return self._values[key]
