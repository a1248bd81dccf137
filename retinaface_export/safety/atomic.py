"""Writes into an output folder: one run at a time, all of a run's files with its manifest or none.

A run checks its folder (:func:`prepare_output_dir`), takes the folder's lock for the whole run
(:func:`output_lock`: read the manifest, build, commit), builds its files in a staging folder beside the
folder (:func:`staging_dir`), then :func:`commit_run` moves them in and writes the manifest last.

A failed or interrupted run leaves the folder byte-identical: a failure during the commit is rolled back at
once (stop signals wait until the commit is done or undone); a commit cut short by SIGKILL or a power cut is
rolled back by the next run, which also removes the staging folders of runs that are provably dead
(:func:`clean_stale_staging`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import psutil

from retinaface_export.errors import CommitError, FolderBusyError, OutputDirError

log = logging.getLogger(__name__)

OWNER_TOOL = "retinaface-export"
# How long a run waits for another run on the same output folder: an INT8 conversion of Resnet50 takes
# minutes, so the wait is long; the waiting run says who it waits for. RETINAFACE_EXPORT_LOCK_TIMEOUT sets it.
DEFAULT_LOCK_TIMEOUT = float(os.environ.get("RETINAFACE_EXPORT_LOCK_TIMEOUT", "900"))
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
_OWNER_FILE = ".owner.json"
_COMMIT_DIR = ".commit"
_PLAN_FILE = "plan.json"
_REPLACED_DIR = "replaced"
_START_TIME_SLACK = 1.0  # seconds: psutil derives start times from the boot time, which the clock can shift


class InterruptedAfterCommit(KeyboardInterrupt):
    """A stop signal that arrived while the manifest was being written: the run's files are all in place."""

    committed = True

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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


# --- the output folder --------------------------------------------------------------------------------------


def prepare_output_dir(path: str | Path) -> Path:
    """Check that ``path`` can be written as an output folder; returns it resolved, its parents created.

    The folder itself is not created (:func:`commit_run` does), so a failed first run leaves nothing. Its
    staging folders and lock file go beside it, so its nearest existing parent must be writable too.

    Raises:
        OutputDirError: ``path`` is a file, a dangling symlink or a symlink loop, lies under a file, or it
            or its parent is not writable.
    """
    path = Path(path)
    try:
        if path.is_symlink():
            try:
                path.resolve(strict=True)
            except FileNotFoundError:
                raise OutputDirError(path, f"is a symbolic link to {os.readlink(path)}, which does not exist") from None
        resolved = path.resolve()
        if not resolved.name:
            raise OutputDirError(path, "is the root folder; choose a folder to write into")
        if resolved.exists() and not resolved.is_dir():
            raise OutputDirError(path, "exists and is not a folder")
        if resolved.is_dir() and not os.access(resolved, os.W_OK | os.X_OK):
            raise OutputDirError(path, "folder is not writable")
        parent = resolved.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise OutputDirError(parent, "is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputDirError(
                parent, f"folder is not writable (the staging folder and lock of {resolved.name} go there)"
            )
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except RuntimeError:  # Python 3.11 reports a symlink loop this way, later versions as ELOOP
        raise OutputDirError(path, "is a symbolic link loop") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputDirError(path, "is a symbolic link loop") from None
        raise OutputDirError(exc.filename or path, exc.strerror or str(exc)) from exc
    return resolved


@contextmanager
def output_lock(folder: str | Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold the output folder's exclusive lock; yields the folder resolved (see :func:`prepare_output_dir`).

    Hold it across the whole run (read the manifest, build, :func:`commit_run`) so that two runs on one folder
    never interleave. The lock file is ``.<name>.lock`` beside the folder, where the staging folders go: the
    folder need not exist yet (a failed first run leaves it absent), and a symlink to the folder locks the
    same file. It is a ``flock``, so the kernel releases it when its process dies; the file stays (removing a
    lock file races with waiters). Once held, the staging folders of dead runs are removed
    (:func:`clean_stale_staging`). Not reentrant: take it once per run.

    Args:
        folder: the output folder.
        timeout: seconds to wait for another run to release it.

    Raises:
        OutputDirError: see :func:`prepare_output_dir`; or the lock file cannot be opened.
        FolderBusyError: another run held the lock for ``timeout`` seconds.
    """
    folder = prepare_output_dir(folder)
    lock_path = folder.parent / f".{folder.name}.lock"
    lock = filelock.FileLock(lock_path)
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            log.info("%s: another run (%s) is writing it; waiting up to %g s", folder, _holder(lock_path), timeout)
            lock.acquire(timeout=timeout, poll_interval=0.1)
    except filelock.Timeout:
        raise FolderBusyError(
            folder,
            f"another run ({_holder(lock_path)}) is writing this folder; waited {timeout:g} s. "
            "Let it finish or choose another output folder",
        ) from None
    except OSError as exc:
        raise OutputDirError(lock_path, f"cannot lock ({exc.strerror or exc})") from exc
    try:
        _record_holder(lock_path)
        clean_stale_staging(folder)
        yield folder
    finally:
        lock.release()


def _record_holder(lock_path: Path) -> None:
    """Write who holds the lock into the lock file, for the message of a run that waits in vain."""
    text = f"pid {os.getpid()} on {socket.gethostname()}, {Path(sys.argv[0]).name or 'python'}"
    with contextlib.suppress(OSError):
        fd = os.open(lock_path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.ftruncate(fd, 0)
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text(errors="replace")[:200].strip() or "holder unknown"
    except OSError:
        return "holder unknown"


# --- staging folders ----------------------------------------------------------------------------------------


@contextmanager
def staging_dir(destination: Path) -> Iterator[Path]:
    """A fresh folder beside ``destination`` (same file system), removed on exit whatever happens.

    Named ``.<destination name>.staging-<pid>-<random>`` and holding ``.owner.json`` (tool, pid, host and
    process start time), so that a later run can prove it belongs to a dead run of this tool. A commit that
    could not be undone is left for the next run to undo (see :func:`clean_stale_staging`).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-{os.getpid()}-", dir=destination.parent))
    try:
        (staging / _OWNER_FILE).write_text(json.dumps(_owner_record()))
        yield staging
    finally:
        if (staging / _COMMIT_DIR / _PLAN_FILE).exists():
            log.warning("%s: kept, to finish undoing an interrupted commit into %s later", staging, destination)
        else:
            shutil.rmtree(staging, ignore_errors=True)


def clean_stale_staging(destination: Path) -> list[Path]:
    """Remove the staging folders beside ``destination`` whose run is provably dead; returns them.

    A folder is removed only when its name is ``.<destination name>.staging-<pid>-<random>``, it holds this
    tool's owner file with that pid, the owner ran on this host, and that process is gone (its pid is free or
    belongs to a process started later). A dead run's unfinished commit is undone first, so the folder
    returns to its state before that run. Call it with the folder's lock held (:func:`output_lock` does).
    """
    destination = Path(destination)
    pattern = re.compile(rf"\.{re.escape(destination.name)}\.staging-(\d+)-[a-z0-9_]+")
    try:
        entries = sorted(destination.parent.iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        owner = _read_json(entry / _OWNER_FILE)
        if not (owner and owner.get("tool") == OWNER_TOOL and owner.get("pid") == int(match[1])):
            continue
        if not _owner_is_gone(owner):
            continue
        try:
            _undo_unfinished_commit(entry, destination)
        except (OSError, ValueError) as exc:
            log.warning("%s: left in place, undoing its unfinished commit failed: %s", entry, exc)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log.info("removed %s, left by a run that no longer exists (pid %s)", entry, owner["pid"])
        removed.append(entry)
    return removed


def _owner_record() -> dict[str, Any]:
    me = psutil.Process()
    return {"tool": OWNER_TOOL, "pid": me.pid, "host": socket.gethostname(), "started": me.create_time()}


def _owner_is_gone(owner: dict[str, Any]) -> bool:
    """True only when it is certain: same host, and its pid is free or taken by a process started later."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        started = psutil.Process(int(owner["pid"])).create_time()
        return abs(started - float(owner["started"])) > _START_TIME_SLACK
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the commit ---------------------------------------------------------------------------------------------


def commit_files(staging: Path, names: list[str], destination: Path) -> None:
    """Move ``names`` from ``staging`` into ``destination`` (created if needed), one ``os.replace`` each.

    Not atomic as a whole; kept until every caller uses :func:`commit_run`.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(staging / name, destination / name)


def commit_run(staging: Path, names: list[str], destination: Path, manifest_name: str, manifest_bytes: bytes) -> None:
    """Move a run's files from ``staging`` into ``destination`` and write its manifest last: all or nothing.

    Files the run replaces are moved aside into ``staging`` first; the manifest's atomic replacement is the
    commit point. On any failure or stop signal before it, every file is put back, so ``destination`` is
    byte-identical to before (absent if it did not exist). SIGINT, SIGTERM and SIGHUP wait for the commit or
    its undoing and are then delivered to their handlers. What can be checked is checked before anything
    moves. If even the undoing fails, the staging folder is kept and the next run finishes it.

    Args:
        staging: from :func:`staging_dir`, holding ``names``.
        names: plain file names (no folders, none starting with ``.``), without the manifest.
        destination: the output folder, created if absent (its parent must exist).
        manifest_name: the manifest's file name in ``destination``.
        manifest_bytes: the manifest's full new content.

    Raises:
        CommitError: naming the file and the reason; ``destination`` is as it was.
        InterruptedAfterCommit: a stop signal arrived while the manifest was written; the run is committed.
    """
    staging, destination = Path(staging), Path(destination)
    _check_commit(staging, names, destination, manifest_name)
    commit = staging / _COMMIT_DIR
    replaced = commit / _REPLACED_DIR
    plan = {
        "names": names,
        "manifest": manifest_name,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "previous_manifest_sha256": _sha256_or_none(destination / manifest_name),
        "created_destination": not destination.exists(),
    }
    held = _HeldSignals()
    committed = False
    try:
        current = destination
        try:
            for name in names:
                current = staging / name
                _fsync_file(current)
            current = commit / _PLAN_FILE
            replaced.mkdir(parents=True)
            atomic_write_bytes(current, json.dumps(plan).encode())
            current = destination
            destination.mkdir(exist_ok=True)
            for name in names:
                current = destination / name
                if os.path.lexists(current):
                    os.replace(current, replaced / name)
                os.replace(staging / name, current)
            _fsync_dir(destination)
            if held.pending is not None:
                raise KeyboardInterrupt  # replaced by the signal's own handler once the commit is undone
            current = destination / manifest_name
            atomic_write_bytes(current, manifest_bytes)
            committed = True
            _fsync_dir(destination)
        except BaseException as exc:
            if committed:
                raise
            _undo_commit(staging, destination, current)
            if isinstance(exc, OSError):
                raise CommitError(
                    current, f"{exc.strerror or exc}; nothing was committed, {destination} is as it was"
                ) from exc
            raise
        shutil.rmtree(commit, ignore_errors=True)
    finally:
        held.release(committed)


def _check_commit(staging: Path, names: list[str], destination: Path, manifest_name: str) -> None:
    """Everything that can be known before moving anything."""
    for name in [*names, manifest_name]:
        if not _plain_name(name):
            raise CommitError(destination / name, "is not a plain file name that a run may write")
    if len({*names, manifest_name}) != len(names) + 1:
        raise CommitError(destination, "a run cannot write two files of one name")
    for name in names:
        try:
            mode = os.lstat(staging / name).st_mode
        except OSError as exc:
            raise CommitError(staging / name, f"was not staged ({exc.strerror})") from exc
        if not stat.S_ISREG(mode):
            raise CommitError(staging / name, "staged, but not as a regular file")
    if os.path.lexists(destination) and not destination.is_dir():
        raise CommitError(destination, "exists and is not a folder")
    base = destination if destination.is_dir() else destination.parent
    if not base.is_dir():
        raise CommitError(base, "no such folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise CommitError(base, "folder is not writable; nothing was committed")
    if os.stat(base).st_dev != os.stat(staging).st_dev:
        raise CommitError(destination, f"is on another file system than its staging folder {staging}")
    for name in [*names, manifest_name]:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(destination / name).st_mode):
                raise CommitError(
                    destination / name,
                    "is a folder where this run writes a file; move it away or choose another output folder",
                )


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and name == Path(name).name and not name.startswith(".")


def _undo_commit(staging: Path, destination: Path, failed: Path) -> None:
    """Roll back in this process; if even that fails, keep the staging folder for the next run to finish."""
    try:
        _undo_unfinished_commit(staging, destination, committed=False)
    except (OSError, ValueError) as exc:
        raise CommitError(
            failed,
            f"commit failed and undoing it failed too ({exc}); the next run into {destination} finishes undoing it",
        ) from exc


def _undo_unfinished_commit(staging: Path, destination: Path, committed: bool | None = None) -> None:
    """Put back what a commit that did not reach its manifest moved, judging by what is on disk.

    Works for a commit cut anywhere, in this process or by a crash: a file missing from ``staging`` was moved
    in and goes back; a file in ``replaced/`` was moved aside and returns. A commit whose new manifest is in
    place is complete and left alone (with ``committed=None``, the manifest tells; a live run knows). Names
    come from the plan but only plain ones are used, and the destination is the caller's, never the plan's:
    a crafted staging folder cannot make this touch other paths.
    """
    commit = staging / _COMMIT_DIR
    plan = _read_json(commit / _PLAN_FILE)
    if committed is None:
        committed = plan is not None and _manifest_committed(destination, plan)
    if plan is not None and not committed:
        names = [n for n in plan.get("names", []) if _plain_name(n)]
        for name in reversed(names):
            target, new, old = destination / name, staging / name, commit / _REPLACED_DIR / name
            if not os.path.lexists(new) and os.path.lexists(target):
                os.replace(target, new)
            if os.path.lexists(old):
                os.replace(old, target)
        if plan.get("created_destination"):
            with contextlib.suppress(OSError):
                destination.rmdir()
        _fsync_dir(destination)
    shutil.rmtree(commit, ignore_errors=True)


def _manifest_committed(destination: Path, plan: dict[str, Any]) -> bool:
    """Whether the new manifest replaced the old one (when they are identical, undoing is as good)."""
    name, new, old = plan.get("manifest"), plan.get("manifest_sha256"), plan.get("previous_manifest_sha256")
    return _plain_name(name) and new != old and _sha256_or_none(destination / name) == new


def _sha256_or_none(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk; best effort, as some file systems refuse."""
    with contextlib.suppress(OSError):
        _fsync_file(path)


class _HeldSignals:
    """SIGINT, SIGTERM and SIGHUP recorded instead of handled until ``release``, which delivers the first.

    Only the main thread receives signals and can set handlers; elsewhere this holds nothing.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: object) -> None:
        if self.pending is None and self.previous.get(signum) is not signal.SIG_IGN:
            self.pending = signum

    def release(self, committed: bool) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.pending is None:
            return
        handler = self.previous[self.pending]
        if not callable(handler):  # SIG_DFL (or set outside Python): let the default action happen
            os.kill(os.getpid(), self.pending)
        elif committed:
            raise InterruptedAfterCommit(self.pending)
        else:
            handler(self.pending, None)
