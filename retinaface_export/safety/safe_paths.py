"""Opening input files safely, and keeping names read from data files inside their folders.

Every input the tools read (checkpoints, images, golden sets, prediction files) goes through
:func:`open_regular`: it opens without blocking (a FIFO called ``photo.jpg`` cannot hang a run), then
checks on the open descriptor that it is a regular file, so the check and the read see the same file.
A read that fails (EIO from a disk or from ``/proc/self/mem``) is :func:`read_error`, naming the file.
Names that come from data files (a WIDER event, a golden set's photo) are plain names checked by
:func:`check_plain_name` and joined with :func:`resolve_inside`, which refuses a symlink leading out. The
same rule keeps a file found in a named folder (a photo of ``--calibration``, a manifest) inside it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from retinaface_export.errors import InputFileError, OutputDirError, OutsideFolderError, UsageError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
# Longest name from a data file echoed in a message.
_NAME_SHOWN = 80


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _os_error_reason(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file (a broken symbolic link)" if path.is_symlink() else "no such file"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "no such file (a folder in its path is not a folder)"
    if exc.errno == errno.ENXIO:  # a socket, or a device without a driver
        try:
            return f"is {_kind(os.stat(path).st_mode)}, not a regular file"
        except OSError:
            return "is not a regular file"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return exc.strerror or type(exc).__name__


def read_error(path: str | Path, exc: OSError) -> InputFileError:
    """The error for a read of ``path`` that failed with ``exc`` (EIO, say): one line, the file and the reason."""
    return InputFileError(path, f"cannot be read ({exc.strerror or type(exc).__name__})")


def open_regular(path: str | Path, what: str = "a regular file", follow_symlinks: bool = True) -> BinaryIO:
    """Open ``path`` for binary reading if, once open, it is a regular file.

    Args:
        path: the file.
        what: how a folder given instead is told apart in the message ("is a directory, not <what>").
        follow_symlinks: False refuses a symbolic link (``O_NOFOLLOW``), for files this tool wrote itself.

    Raises:
        InputFileError: missing, a broken link or a link loop, no permission, a folder, a FIFO, a device; a
            symbolic link when ``follow_symlinks`` is False.
    """
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_symlinks and exc.errno == errno.ELOOP and path.is_symlink():
            raise InputFileError(path, "is a symbolic link; refused") from None
        raise InputFileError(path, _os_error_reason(path, exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputFileError(path, f"is a directory, not {what}")
        if not stat.S_ISREG(mode):
            raise InputFileError(path, f"is {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError as exc:  # fstat or fcntl failing on an open file (EIO): the file and the reason
        os.close(fd)
        raise read_error(path, exc) from None
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(
    path: str | Path, what: str = "a regular file", max_bytes: int | None = None, follow_symlinks: bool = True
) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`), refusing files over ``max_bytes``.

    Raises:
        InputFileError: not a readable regular file, larger than ``max_bytes`` (by its size or by what a read
            returns: a file in ``/proc`` says 0 bytes), or the read failed (EIO).
    """
    with open_regular(path, what, follow_symlinks) as handle:
        try:
            size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise read_error(path, exc) from None
        if max_bytes is not None and size > max_bytes:
            raise InputFileError(path, f"{size} bytes is more than the {max_bytes} such a file may have")
        try:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except OSError as exc:
            raise read_error(path, exc) from None
        if max_bytes is not None and len(data) > max_bytes:
            raise InputFileError(path, f"more than the {max_bytes} bytes such a file may have")
        return data


def shown(name: str) -> str:
    """A name from a data file as a message shows it: quoted, escaped, cut to a readable length."""
    text = repr(name)
    return text if len(text) <= _NAME_SHOWN else text[: _NAME_SHOWN - 4] + "...'"


def check_plain_name(name: object) -> str:
    """``name`` if it is one path component (no separator, not ``.``/``..``, no NUL), else ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"{shown(str(name))} is not a text name")
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{shown(name)} is not a plain file or folder name (no '/', '..' or absolute paths)")
    return name


def resolve_inside(root: Path, *parts: str) -> Path:
    """``root / parts`` if, with symlinks resolved, it stays inside ``root`` (it need not exist yet).

    ``parts`` are plain names (see :func:`check_plain_name`); this catches symlinks among them.

    Raises:
        OutsideFolderError: the path leaves ``root`` (a symlinked folder or file pointing elsewhere).
    """
    joined = root.joinpath(*parts)
    try:
        inside = joined.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError up to Python 3.12)
        raise OutsideFolderError(joined, "symbolic link loop; refused") from None
    if not inside:
        raise OutsideFolderError(joined, f"leads outside {root} (a symbolic link); refused")
    return joined


# --- outputs that would overwrite inputs ---------------------------------------------------------------------


def folder_problem(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be used as ``what`` (a folder), or None when it is a folder (a link to one counts)."""
    try:
        if path.is_dir():
            return None
        if not os.path.lexists(path):
            return f"no such {what}"
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _os_error_reason(path, exc)
    kind = "a regular file" if stat.S_ISREG(mode) else _kind(mode)
    return f"is not a folder ({kind}); the {what} must be one"


def require_folder(path: str | Path, what: str) -> Path:
    """``path`` if it is a folder, else a one-line error telling a missing folder from a file in its place.

    Raises:
        InputFileError: ``path`` does not exist ("no such <what>") or is not a folder ("is not a folder").
    """
    path = Path(path)
    problem = folder_problem(path, what)
    if problem is not None:
        raise InputFileError(path, problem)
    return path


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: it is nothing we read
        return None


def _same_or_inside(output: Path, source: Path) -> bool:
    """Whether ``output`` is ``source`` (a symlink or hard link to it included) or lies inside it."""
    out, src = _resolved(output), _resolved(source)
    if out is None or src is None:
        return False
    if out.is_relative_to(src):
        return True
    try:
        return os.path.lexists(out) and os.path.lexists(src) and os.path.samefile(out, src)
    except OSError:
        return False


def check_output_parent(label: str, path: Path) -> None:
    """Refuse an output whose path runs through something that is not a folder (``photo.png/r.json``).

    Raises:
        OutputDirError: the nearest existing ancestor of ``path`` is not a folder.
    """
    for parent in Path(os.path.abspath(path)).parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise OutputDirError(path, f"{label}: {parent} in its path is not a folder")
            return


def refuse_outputs_over_inputs(
    outputs: Sequence[tuple[str, Path | None]], inputs: Sequence[tuple[str, Path | str | None]]
) -> None:
    """The rule every command follows: an output is never one of its inputs, nor inside an input folder.

    Args:
        outputs: (option, path) of what the command writes (None or ``-`` for standard output: skipped).
        inputs: (option, path) of what it reads: files, and folders whose contents it reads.

    Raises:
        OutputDirError: an output path runs through a file (it could not be written).
        UsageError: an output is, or is inside, an input (it would be overwritten), or two outputs are one.
    """
    given = [(label, Path(path)) for label, path in outputs if path is not None and str(path) != "-"]
    for index, (label, output) in enumerate(given):
        check_output_parent(label, output)
        for in_label, source in inputs:
            if source is None or not str(source):
                continue
            source = Path(source)
            if _same_or_inside(output, source):
                where = "is" if _resolved(output) == _resolved(source) or not source.is_dir() else "is inside"
                raise UsageError(
                    f"{label} {output} {where} the input {in_label} {source}: it would be overwritten (an output "
                    "never replaces or goes into what a command reads); choose another path"
                )
        for other_label, other in given[:index]:
            if _resolved(output) == _resolved(other):
                raise UsageError(f"{label} {output} is also {other_label}: give each output its own path")
