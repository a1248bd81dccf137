"""Hostile file systems around the output folder and inside named folders (issue 25, items 2-4 and the
hangs, leftovers and tracebacks that came with them): lock files that are links, symbolic links that lead out
of a named folder, crafted staging folders of "dead runs", records that are FIFOs or /dev/zero, a stop
signal delivered twice, a bad lock timeout, reads that fail with EIO.

Each test failed before its fix. Whatever may hang or eat memory before the fix runs in a subprocess with
a timeout and a memory limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
from test_faults_commit import SLOW_CLEANUP

from retinaface_export.errors import FileError, ManifestError, OutputDirError, OutsideFolderError, UsageError
from retinaface_export.safety import atomic
from retinaface_export.safety.atomic import clean_stale_staging, output_lock

REPO = Path(__file__).resolve().parents[1]
SECRET = b"SECRET-CONTENT-OF-AN-OUTSIDE-FILE"
OLD = {"a.onnx": b"old a", "b.onnx": b"old b", "manifest.json": b'{"artifacts": ["a", "b"]}'}
IS_ROOT = os.geteuid() == 0
NOBODY = 65534


def fill(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def tree(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` (links as their targets, never followed)."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path))
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = "other"
    return found


def photo(path: Path, seed: int = 0) -> Path:
    """A small real PNG (64×64, noise), different for each seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def python(code: str, *args: object, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], cwd=REPO, text=True, env=env or os.environ.copy(), **kwargs
    )


# --- item 2: the lock file ----------------------------------------------------------------------------------


def _hard_link(lock: Path, victim: Path) -> None:
    os.link(victim, lock)


def _symlink(lock: Path, victim: Path) -> None:
    lock.symlink_to(victim)


def _fifo(lock: Path, victim: Path) -> None:
    os.mkfifo(lock)


@dataclass(frozen=True)
class BadLock:
    name: str
    make: Callable[[Path, Path], None]  # (lock path, outside victim file)
    says: str


BAD_LOCKS = [
    BadLock("hard link to an outside file", _hard_link, "has 2 hard links"),
    BadLock("symbolic link to an outside file", _symlink, "is a symbolic link"),
    BadLock("FIFO", _fifo, "is not a regular file"),
]


@pytest.mark.parametrize("case", BAD_LOCKS, ids=lambda c: c.name)
def test_a_lock_file_that_is_a_link_or_not_a_file_is_refused_and_nothing_is_written(tmp_path, case):
    victim = fill(tmp_path / "outside", {"victim.txt": SECRET}) / "victim.txt"
    work = fill(tmp_path / "work", {})
    case.make(work / ".out.lock", victim)
    before = tree(tmp_path)
    with pytest.raises(OutputDirError) as caught, output_lock(work / "out", timeout=0):
        pass
    assert caught.value.path == work / ".out.lock"
    assert case.says in caught.value.reason
    assert victim.read_bytes() == SECRET
    assert tree(tmp_path) == before


@pytest.mark.skipif(not IS_ROOT, reason="needs root to make a lock file that belongs to another account")
def test_a_lock_file_of_another_account_locks_but_is_never_written(tmp_path):
    work = fill(tmp_path / "work", {".out.lock": b"their record"})
    os.chown(work / ".out.lock", NOBODY, NOBODY)
    with output_lock(work / "out", timeout=0):
        assert (work / ".out.lock").read_bytes() == b"their record"
    ours = work / ".ours.lock"
    with output_lock(work / "ours", timeout=0):  # our own lock file still says who holds it
        assert ours.read_bytes().startswith(f"pid {os.getpid()} ".encode())


# --- item 3: symbolic links that lead out of a named folder --------------------------------------------------


@pytest.fixture
def outside_photo(tmp_path) -> Path:
    return photo(tmp_path / "outside" / "private.png", seed=99)


def test_a_calibration_photo_that_links_out_of_its_folder_is_refused(tmp_path, outside_photo):
    from retinaface_export.calibration import load_calibration_set, split_photos

    calibration = tmp_path / "calibration"
    for seed in range(3):
        photo(calibration / f"p{seed}.png", seed)
    (calibration / "x.png").symlink_to(outside_photo)
    with pytest.raises(OutsideFolderError, match="leads outside") as caught:
        load_calibration_set(calibration)
    assert caught.value.path == calibration / "x.png"
    with pytest.raises(OutsideFolderError, match="leads outside"):
        split_photos(calibration)
    (calibration / "x.png").unlink()
    validation = fill(tmp_path / "validation", {})
    photo(validation / "v.png", 7)
    (validation / "w.png").symlink_to(outside_photo)
    with pytest.raises(OutsideFolderError, match="leads outside") as caught:
        split_photos(calibration, validation)
    assert caught.value.path == validation / "w.png"
    # a link that stays inside the folder is an ordinary photo
    (validation / "w.png").unlink()
    (validation / "w.png").symlink_to(validation / "v.png")
    assert len(split_photos(calibration, validation).validation.files) == 2


@pytest.mark.parametrize("by", ["name", "sha256 scan"])
def test_golden_photos_are_looked_up_only_inside_the_images_folders(tmp_path, outside_photo, by):
    from retinaface_export.golden import find_photo

    images = fill(tmp_path / "images", {})
    photo(images / "ordinary.png", 1)
    name = "private.png" if by == "name" else "renamed.png"
    (images / name).symlink_to(outside_photo)
    with pytest.raises(OutsideFolderError, match="leads outside") as caught:
        find_photo("private.png", sha256(outside_photo), [images])
    assert caught.value.path == images / name
    (images / name).unlink()
    (images / name).symlink_to(images / "ordinary.png")  # a link that stays inside is an ordinary photo
    assert find_photo(name, sha256(images / "ordinary.png"), [images])[0] == images / name


def test_a_manifest_that_links_out_of_its_folder_is_refused(tmp_path):
    from retinaface_export.manifest import Manifest

    outside = fill(tmp_path / "outside", {"manifest.json": b'{"tool": "' + SECRET + b'"}'}) / "manifest.json"
    export = fill(tmp_path / "export", {})
    (export / "manifest.json").symlink_to(outside)
    with pytest.raises(ManifestError) as caught:
        Manifest.read(export)
    assert caught.value.path == export / "manifest.json"
    assert "leads outside" in caught.value.reason and SECRET.decode() not in str(caught.value)


# --- item 4: crafted staging folders beside the output folder ----------------------------------------------


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(done.stdout)
    assert not psutil.pid_exists(pid)
    return pid


def _owner(pid: int) -> dict:
    return {"tool": "retinaface-export", "pid": pid, "host": atomic.socket.gethostname(), "started": 1.0}


def crafted_staging(out: Path, names: list[str], plan: Callable[[Path, Path], dict] | None = None) -> Path:
    """A dead run's staging folder as an attacker would write it: replaced/<name> holds the attacker's bytes
    and the plan says to put them back; ``plan(staging, out)`` gives the plan (default: the old format)."""
    pid = _dead_pid()
    staging = fill(
        out.parent / f".{out.name}.staging-{pid}-ab12cd_3", {".owner.json": json.dumps(_owner(pid)).encode()}
    )
    fill(staging / ".commit" / "replaced", {name: b"ATTACKER " + name.encode() for name in names})
    record = (
        plan(staging, out)
        if plan
        else {
            "names": names,
            "manifest": "manifest.json",
            "manifest_sha256": "0" * 64,
            "previous_manifest_sha256": None,
            "created_destination": False,
        }
    )
    (staging / ".commit" / "plan.json").write_text(json.dumps(record))
    return staging


def _identity(path: Path) -> list[int]:
    info = os.lstat(path)
    return [info.st_dev, info.st_ino]


def _current_plan(staging: Path, out: Path, names: list[str], destination: Path | None = None) -> dict:
    """A plan in this version's format, recording the attacker's files as the ones moved aside."""
    return {
        "destination": str((destination or out).resolve()),
        "names": names,
        "moved_in": {name: _identity(out / name) for name in names},
        "moved_aside": {name: _identity(staging / ".commit" / "replaced" / name) for name in names},
        "manifest": "manifest.json",
        "manifest_sha256": "0" * 64,
        "previous_manifest_sha256": None,
        "created_destination": False,
    }


def _private(staging: Path) -> None:
    """Modes as this tool makes them (staging and records 0700/0600), so that only the plan can be wrong."""
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)


def _foreign(staging: Path) -> None:
    for path in [staging, *staging.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)


@dataclass(frozen=True)
class Crafted:
    name: str
    names: list[str]
    plan: Callable[[Path, Path], dict] | None
    tamper: Callable[[Path], None]
    warns: str
    needs_root: bool = False


CRAFTED = [
    Crafted("another account's, replacing a file", ["a.onnx"], None, _foreign, "belongs to another user", True),
    Crafted(
        "another account's, replacing the manifest",
        ["manifest.json"],
        lambda s, o: _current_plan(s, o, ["manifest.json"]),
        _foreign,
        "belongs to another user",
        True,
    ),
    Crafted("writable by others", ["a.onnx"], None, lambda s: s.chmod(0o777), "is writable by others"),
    Crafted("a plan without records", ["a.onnx", "b.onnx"], None, _private, "not a commit record of this version"),
    Crafted(
        "a plan for another folder",
        ["a.onnx"],
        lambda s, o: _current_plan(s, o, ["a.onnx"], destination=o.parent / "elsewhere"),
        _private,
        "its commit record is for",
    ),
    Crafted(
        "a plan naming the manifest",
        ["manifest.json"],
        lambda s, o: _current_plan(s, o, ["manifest.json"]),
        _private,
        "not a commit record of this version",
    ),
    Crafted(
        "a plan whose moved-aside file is another one",
        ["a.onnx"],
        lambda s, o: {**_current_plan(s, o, ["a.onnx"]), "moved_aside": {"a.onnx": _identity(o / "b.onnx")}},
        _private,
        "is not the file this commit moved aside",
    ),
]


@pytest.mark.parametrize("case", CRAFTED, ids=lambda c: c.name)
def test_a_crafted_staging_folder_never_changes_the_output_folder(tmp_path, caplog, case):
    if case.needs_root and not IS_ROOT:
        pytest.skip("needs root to make a folder that belongs to another account")
    out = fill(tmp_path / "out", OLD)
    staging = crafted_staging(out, case.names, case.plan)
    case.tamper(staging)
    before, left = tree(out), tree(staging)
    with caplog.at_level(logging.WARNING, logger="retinaface_export.safety.atomic"):
        assert clean_stale_staging(out) == []
    assert tree(out) == before, "the crafted plan changed the output folder"
    assert staging.is_dir() and tree(staging) == left
    assert any(case.warns in r.getMessage() and str(staging) in r.getMessage() for r in caplog.records), caplog.text


# --- records read back: FIFOs, /dev/zero, huge files (hangs and memory) --------------------------------------

CLEAN_UP = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from retinaface_export.safety.atomic import clean_stale_staging
print(clean_stale_staging(Path(sys.argv[1])), flush=True)
"""


def _fifo_at(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero_at(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _huge_at(path: Path) -> None:
    with path.open("wb") as handle:
        handle.truncate(2 << 30)  # sparse: 2 GiB of zeros that take no disk


@pytest.mark.parametrize("record", [".owner.json", ".commit/plan.json"])
@pytest.mark.parametrize("make", [_fifo_at, _dev_zero_at, _huge_at], ids=["FIFO", "link to /dev/zero", "2 GiB"])
def test_a_hostile_record_in_a_staging_folder_is_no_record(tmp_path, record, make):
    out = fill(tmp_path / "out", OLD)
    pid = _dead_pid()
    staging = fill(tmp_path / f".out.staging-{pid}-ab12cd_3", {".owner.json": json.dumps(_owner(pid)).encode()})
    (staging / ".commit").mkdir()
    if record == ".owner.json":
        (staging / record).unlink()
    make(staging / record)
    run = python(CLEAN_UP, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = run.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        pytest.fail(f"clean-up hung on {record} ({make.__name__})")
    assert run.returncode == 0 and "Traceback" not in stderr, stderr
    # an unreadable owner record proves nothing, an unreadable plan says nothing to undo by: both left alone
    assert stdout.strip() == "[]"
    assert staging.is_dir()
    assert tree(out) == OLD


# --- item 5: one stop delivered twice -----------------------------------------------------------------------

# test_faults_commit's child whose clean-up takes 1.5 s instead of 300 (a second signal arrives meanwhile)
STOPPED_TWICE = SLOW_CLEANUP.replace("time.sleep(300)  # as when", "time.sleep(1.5)  # as when")
assert STOPPED_TWICE != SLOW_CLEANUP


@pytest.mark.parametrize(("gap", "same_stop"), [(0.05, True), (0.8, False)], ids=["within a moment", "later"])
def test_the_same_signal_twice_within_a_moment_is_one_stop(tmp_path, gap, same_stop):
    """As ``timeout -s TERM`` sends it (to the process, then its group): cleanup completes, one line."""
    out = tmp_path / "out"
    run = python(STOPPED_TWICE, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        staging = Path(run.stdout.readline().strip())
        run.send_signal(signal.SIGTERM)
        assert run.stdout.readline().strip() == "cleaning up"
        time.sleep(gap)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        run.kill()
    stderr = run.stderr.read()
    assert "Traceback" not in stderr
    if same_stop:
        assert stderr.strip() == "cmd: interrupted; nothing was written"
        assert not staging.exists()
    else:  # a second stop, seconds later, still stops at once (the next run cleans up)
        assert "cmd: interrupted again; stopped at once" in stderr
        assert staging.is_dir()


# --- item 6: RETINAFACE_EXPORT_LOCK_TIMEOUT -----------------------------------------------------------------


def test_a_bad_lock_timeout_does_not_break_importing():
    env = {**os.environ, "RETINAFACE_EXPORT_LOCK_TIMEOUT": "abc"}
    done = subprocess.run(
        [sys.executable, "-c", "import retinaface_export.safety.atomic, retinaface_export.cli.detect"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "inf", "1e999", ""])
def test_a_bad_lock_timeout_is_a_usage_error_naming_the_variable(tmp_path, monkeypatch, value):
    monkeypatch.setenv("RETINAFACE_EXPORT_LOCK_TIMEOUT", value)
    if value == "":  # unset or empty: the default
        with output_lock(tmp_path / "out"):
            pass
        return
    with pytest.raises(UsageError) as caught, output_lock(tmp_path / "out"):
        pass
    assert str(caught.value) == f"RETINAFACE_EXPORT_LOCK_TIMEOUT={value!r}: must be a number of seconds, 0 or more"
    assert list(tmp_path.iterdir()) == []  # refused before the lock file or anything else was made


def test_a_bad_lock_timeout_is_one_line_from_the_command(tmp_path):
    from click.testing import CliRunner

    from retinaface_export.cli import export as export_cli

    result = CliRunner(env={"RETINAFACE_EXPORT_LOCK_TIMEOUT": "nan"}).invoke(
        export_cli.main, ["--size", "320", "--format", "onnx", "--output-dir", str(tmp_path / "out"), "-q"]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == (
        "retinaface-export: error: RETINAFACE_EXPORT_LOCK_TIMEOUT='nan': must be a number of seconds, 0 or more"
    )
    assert not (tmp_path / "out").exists()


def test_a_valid_lock_timeout_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("RETINAFACE_EXPORT_LOCK_TIMEOUT", " 2.5 ")
    assert atomic.lock_timeout() == 2.5


# --- item 7: reads that fail (EIO) ---------------------------------------------------------------------------


def test_a_golden_photo_whose_read_fails_is_named(tmp_path):
    """/proc/self/mem is a regular file whose read at offset 0 fails with EIO."""
    from retinaface_export.golden import find_photo

    with pytest.raises(FileError) as caught:
        find_photo("mem", "0" * 64, [Path("/proc/self")])
    assert caught.value.reason == "cannot be read (Input/output error)"
    assert caught.value.path.name == "mem"


def test_photos_given_by_name_to_golden_record_are_read_once_and_may_be_links(tmp_path):
    """Only what a folder holds is confined to it: a photo named on the command line may be a link."""
    from retinaface_export.golden import record_golden
    from retinaface_export.sizes import InputSize
    from retinaface_export.synthetic import synthetic_checkpoint
    from retinaface_export.variants import get_variant

    target = photo(tmp_path / "elsewhere" / "face.png", 3)
    (tmp_path / "link.png").symlink_to(target)
    mem = tmp_path / "mem.png"
    mem.symlink_to("/proc/self/mem")
    checkpoint = synthetic_checkpoint(get_variant("mobilenet0.25"))
    with pytest.raises(FileError) as caught:
        record_golden(checkpoint, (InputSize(64, 64),), (mem,), (), tmp_path / "g1", "test")
    assert str(caught.value) == f"{mem}: cannot be read (Input/output error)"
    golden = record_golden(checkpoint, (InputSize(64, 64),), (tmp_path / "link.png",), (), tmp_path / "g2", "test")
    assert [c.input.photo_sha256 for c in golden.cases] == [sha256(target)]


def test_a_checkpoint_whose_read_fails_midway_is_named(monkeypatch):
    """A disk that fails (EIO) after the file opened and its head was read: one typed error, no traceback."""
    from conftest import REAL_WEIGHTS, require
    from retinaface_export import checkpoint
    from retinaface_export.errors import CorruptCheckpointError

    def failing(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.hashlib, "file_digest", failing)
    with pytest.raises(CorruptCheckpointError) as caught:
        checkpoint.load_checkpoint(require(REAL_WEIGHTS))
    assert str(caught.value) == f"{REAL_WEIGHTS}: cannot be read (Input/output error)"
