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
import math
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

from retinaface_export.errors import CommitError, FileError, FolderBusyError, OutputDirError, UsageError
from retinaface_export.safety.safe_paths import open_regular, read_regular_bytes, shown

log = logging.getLogger(__name__)

OWNER_TOOL = "retinaface-export"
# How long a run waits for another run on the same output folder: an INT8 conversion of Resnet50 takes
# minutes, so the wait is long; the waiting run says who it waits for. RETINAFACE_EXPORT_LOCK_TIMEOUT sets it
# (read when a lock is taken, not at import: a bad value fails the run that uses it, naming the variable).
DEFAULT_LOCK_TIMEOUT = 900.0
LOCK_TIMEOUT_ENV = "RETINAFACE_EXPORT_LOCK_TIMEOUT"
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
_OWNER_FILE = ".owner.json"
_COMMIT_DIR = ".commit"
_PLAN_FILE = "plan.json"
_REPLACED_DIR = "replaced"
_START_TIME_SLACK = 1.0  # seconds: psutil derives start times from the boot time, which the clock can shift
# Largest owner record or commit plan read back: ours are a few hundred bytes (a plan lists file names).
_MAX_RECORD_BYTES = 1 << 20


class InterruptedAfterCommit(KeyboardInterrupt):
    """A stop signal that arrived while the manifest was being written: the run's files are all in place."""

    committed = True

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def atomic_write_bytes(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the mode a plain ``open`` would give it, or 0600 when ``private``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if not private:
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


def lock_timeout() -> float:
    """Seconds a run waits for another run's lock: ``RETINAFACE_EXPORT_LOCK_TIMEOUT``, else 900.

    Raises:
        UsageError: the variable is set to something other than a finite number of seconds, 0 or more
            (``-1`` would wait forever and ``nan`` is no time at all).
    """
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{LOCK_TIMEOUT_ENV}={text[:40]!r}: must be a number of seconds, 0 or more")
    return value


@contextmanager
def output_lock(folder: str | Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold the output folder's exclusive lock; yields the folder resolved (see :func:`prepare_output_dir`).

    Hold it across the whole run (read the manifest, build, :func:`commit_run`) so that two runs on one folder
    never interleave. The lock file is ``.<name>.lock`` beside the folder, where the staging folders go: the
    folder need not exist yet (a failed first run leaves it absent), and a symlink to the folder locks the
    same file. It is a ``flock``, so the kernel releases it when its process dies; the file stays (removing a
    lock file races with waiters). Once held, the staging folders of dead runs are removed
    (:func:`clean_stale_staging`). Not reentrant: take it once per run.

    The lock file is never a way to write elsewhere: it is opened without following a symbolic link, and
    one that is not a regular file, or has more than one hard link (another name of some other file, which
    the holder record would overwrite), is refused before anything is written.

    Args:
        folder: the output folder.
        timeout: seconds to wait for another run to release it; None: :func:`lock_timeout`.

    Raises:
        UsageError: ``RETINAFACE_EXPORT_LOCK_TIMEOUT`` is not a number of seconds, 0 or more.
        OutputDirError: see :func:`prepare_output_dir`; or the lock file cannot be opened, or is refused.
        FolderBusyError: another run held the lock for ``timeout`` seconds.
    """
    if timeout is None:
        timeout = lock_timeout()
    folder = prepare_output_dir(folder)
    lock_path = folder.parent / f".{folder.name}.lock"
    _check_lock_file(lock_path)
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


def _lock_file_refusal(info: os.stat_result) -> str | None:
    """Why a lock file may not be used, or None. One this tool creates is a regular file with one link."""
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file; a lock file must be one (remove it)"
    if info.st_nlink != 1:
        return (
            f"has {info.st_nlink} hard links: it is another name of some other file, which taking the lock would "
            "write into; refused (remove it)"
        )
    return None


def _check_lock_file(lock_path: Path) -> None:
    """Refuse a lock file that is a link (symbolic or hard) or not a regular file, before filelock opens it.

    filelock opens an existing lock file without truncating it and without following a symbolic link; what
    would write into another file is our holder record, which :func:`_record_holder` checks again on the
    descriptor it writes through (a link made in between is not written into either).
    """
    try:
        info = os.lstat(lock_path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputDirError(lock_path, f"cannot lock ({exc.strerror or exc})") from exc
    if stat.S_ISLNK(info.st_mode):
        raise OutputDirError(lock_path, "is a symbolic link; a lock file must be a regular file (remove it)")
    reason = _lock_file_refusal(info)
    if reason:
        raise OutputDirError(lock_path, reason)


def _open_lock_file(lock_path: Path, flags: int) -> int | None:
    """The lock file opened without following links or blocking, if it is a regular file with one link."""
    try:
        fd = os.open(lock_path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _lock_file_refusal(os.fstat(fd)) is None:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _record_holder(lock_path: Path) -> None:
    """Write who holds the lock into the lock file, for the message of a run that waits in vain.

    Written only into a lock file that, checked on the descriptor written through, is a regular file with
    one link and is ours: one that another account made in a shared folder still locks, but is not written.
    """
    text = f"pid {os.getpid()} on {socket.gethostname()}, {Path(sys.argv[0]).name or 'python'}"
    fd = _open_lock_file(lock_path, os.O_WRONLY)
    if fd is None:
        return
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.ftruncate(fd, 0)
            os.write(fd, text.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _holder(lock_path: Path) -> str:
    """Who holds the lock, as its holder wrote it (at most 200 bytes, from a lock file that passes the checks)."""
    fd = _open_lock_file(lock_path, os.O_RDONLY)
    if fd is None:
        return "holder unknown"
    try:
        text = os.read(fd, 200).decode(errors="replace")
    except OSError:
        text = ""
    finally:
        os.close(fd)
    return " ".join(text.split()) or "holder unknown"


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

    Whoever can write beside ``destination`` can make a folder of that name, so its records are believed only
    when it cannot have been made or changed by anyone else: the folder is ours (this process's user) and
    writable by no one else (``mkdtemp`` makes it 0700), and so is every record in it; an undo moves only
    the very files the plan recorded (device and inode), names confined to ``destination`` and never its
    manifest (see :func:`_undo_unfinished_commit`). Any other folder of that name is left alone, with a
    warning.
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
        foreign = _not_ours(entry)
        if foreign:
            log.warning("%s: left in place, a dead run's staging folder that %s", entry, foreign)
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


def _not_ours(path: Path) -> str | None:
    """Why ``path`` (not followed if a link) may have been made or changed by another account, or None."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if info.st_uid != os.geteuid():
        return f"belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    """A record this tool wrote (owner file, commit plan): a regular file, not a link, at most 1 MiB.

    Anything else (a FIFO that would hang the read, a link to ``/dev/zero``, a huge file) is no record.
    """
    try:
        data = json.loads(read_regular_bytes(path, "a record", _MAX_RECORD_BYTES, follow_symlinks=False))
    except (FileError, ValueError, RecursionError):
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
        "destination": str(destination.resolve()),
        "names": names,
        # which file each move concerns, so that an undo moves those and nothing else
        "moved_in": {name: _identity(staging / name) for name in names},
        "moved_aside": {name: _identity(destination / name) for name in names},
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
            commit.mkdir(mode=0o700)  # writable by no one else, or the next run would not trust the plan
            replaced.mkdir(mode=0o700)
            atomic_write_bytes(current, json.dumps(plan).encode(), private=True)
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
    place is complete and left alone (with ``committed=None``, the manifest tells; a live run knows).

    The plan is believed only as far as it cannot have been forged (:func:`_checked_plan`): it must be ours
    and writable by no one else, name this very destination, and list plain names other than the manifest;
    a file is moved only if it is the very file (device and inode) the plan recorded for that move.

    Raises:
        ValueError: the plan or a file is not what this commit wrote; nothing more was moved.
        OSError: a move failed.
    """
    commit = staging / _COMMIT_DIR
    plan = _checked_plan(staging, destination) if os.path.lexists(commit / _PLAN_FILE) else None
    if committed is None:
        committed = plan is not None and _manifest_committed(destination, plan)
    if plan is not None and not committed:
        replaced = commit / _REPLACED_DIR
        moves = []  # every move is checked before any is made
        for name in reversed(plan["names"]):
            target, new, old = destination / name, staging / name, replaced / name
            if not os.path.lexists(new) and os.path.lexists(target):
                _same_file(target, plan["moved_in"][name], "the file this commit moved in")
                moves.append((target, new))
            elif os.path.lexists(old) and os.path.lexists(target):
                raise ValueError(f"{target} is in the way of the file this commit moved aside")
            if os.path.lexists(old):
                _same_file(old, plan["moved_aside"][name], "the file this commit moved aside")
                moves.append((old, target))
        for source, target in moves:
            os.replace(source, target)
        if plan.get("created_destination"):
            with contextlib.suppress(OSError):
                destination.rmdir()
        _fsync_dir(destination)
    shutil.rmtree(commit, ignore_errors=True)


def _checked_plan(staging: Path, destination: Path) -> dict[str, Any]:
    """The commit plan in ``staging``, if nobody but this tool (run by this user) can have written it.

    Raises:
        ValueError: the staging folder, its commit folder, the plan or a moved-aside file may have been made
            or changed by another account, or the plan is not one of this version for ``destination``.
    """
    commit = staging / _COMMIT_DIR
    for path in (staging, commit, commit / _PLAN_FILE, commit / _REPLACED_DIR):
        why = _not_ours(path) if os.path.lexists(path) or path.name != _REPLACED_DIR else None
        if why:
            raise ValueError(f"{path} {why}: its commit record is not trusted")
    plan = _read_json(commit / _PLAN_FILE)
    if plan is None:
        raise ValueError(f"{commit / _PLAN_FILE} is not a commit record")
    names, manifest = plan.get("names"), plan.get("manifest")
    moved_in, moved_aside = plan.get("moved_in"), plan.get("moved_aside")
    if not (
        isinstance(plan.get("destination"), str)
        and isinstance(names, list)
        and _plain_name(manifest)
        and all(_plain_name(n) and n != manifest for n in names)
        and len(set(names)) == len(names)
        and isinstance(moved_in, dict)
        and isinstance(moved_aside, dict)
        and all(n in moved_in and n in moved_aside for n in names)
    ):
        raise ValueError(f"{commit / _PLAN_FILE} is not a commit record of this version")
    if plan["destination"] != str(destination.resolve()):
        raise ValueError(f"its commit record is for {shown(plan['destination'])}, not {destination}")
    return plan


def _identity(path: Path) -> list[int] | None:
    """Device and inode of ``path`` (not followed if a link), None when there is nothing there.

    A rename keeps both, so they tell the file a commit moved from any other file put in its place.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return [info.st_dev, info.st_ino]


def _same_file(path: Path, recorded: object, what: str) -> None:
    if recorded is None or _identity(path) != recorded:
        raise ValueError(f"{path} is not {what} (device and inode differ from its record); not moved")


def _manifest_committed(destination: Path, plan: dict[str, Any]) -> bool:
    """Whether the new manifest replaced the old one (when they are identical, undoing is as good)."""
    name, new, old = plan.get("manifest"), plan.get("manifest_sha256"), plan.get("previous_manifest_sha256")
    return _plain_name(name) and new != old and _sha256_or_none(destination / name) == new


def _sha256_or_none(path: Path) -> str | None:
    """sha256 of a regular file (not a link: a FIFO or device is no manifest), None for anything else."""
    try:
        with open_regular(path, follow_symlinks=False) as handle:
            digest = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
            return digest.hexdigest()
    except (FileError, OSError):
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
