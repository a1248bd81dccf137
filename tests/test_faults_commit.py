"""Faults around writing an output folder: bad folders, failed and interrupted commits, concurrent runs,
dead runs' staging folders, stop signals. Real processes where it matters (locks, signals, SIGKILL)."""

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import click
import psutil
import pytest
from click.testing import CliRunner

from retinaface_export.cli import entry
from retinaface_export.cli.common import handle_errors
from retinaface_export.errors import CommitError, FolderBusyError, OutputDirError
from retinaface_export.safety import atomic
from retinaface_export.safety.atomic import (
    InterruptedAfterCommit,
    clean_stale_staging,
    commit_run,
    output_lock,
    prepare_output_dir,
    staging_dir,
)

REPO = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"
OLD = {"a.onnx": b"old a", "b.onnx": b"old b", "keep.txt": b"not ours", MANIFEST: b'{"artifacts": ["a", "b"]}'}
NEW = {"a.onnx": b"new a", "b.onnx": b"new b", "c.onnx": b"new c"}
NEW_MANIFEST = b'{"artifacts": ["a", "b", "c"]}'


def snapshot(folder: Path) -> dict[str, object] | None:
    """Every entry under ``folder``: file bytes, symlink targets, folders; None when it does not exist."""
    if not os.path.lexists(folder):
        return None
    tree: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        tree[key] = ("link", os.readlink(path)) if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return tree


def fill(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def stagings(destination: Path) -> list[Path]:
    return sorted(destination.parent.glob(f".{destination.name}.staging-*"))


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, text=True, **kwargs)


# --- the output folder --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFolder:
    name: str
    build: Callable[[Path], Path]  # makes the fault under tmp, returns the path given as output folder
    named: Callable[[Path], Path]  # the path the message must name
    says: str


def _file(tmp: Path) -> Path:
    (tmp / "out").write_text("a file")
    return tmp / "out"


def _dangling(tmp: Path) -> Path:
    (tmp / "out").symlink_to(tmp / "gone")
    return tmp / "out"


def _loop(tmp: Path) -> Path:
    (tmp / "out").symlink_to(tmp / "out")
    return tmp / "out"


def _under_file(tmp: Path) -> Path:
    (tmp / "f.txt").write_text("a file")
    return tmp / "f.txt" / "out"


BAD_FOLDERS = [
    BadFolder("path is a file", _file, lambda t: t / "out", "exists and is not a folder"),
    BadFolder("dangling symlink", _dangling, lambda t: t / "out", "is a symbolic link to"),
    BadFolder("symlink loop", _loop, lambda t: t / "out", "is a symbolic link loop"),
    BadFolder("below a file", _under_file, lambda t: t / "f.txt", "is not a folder"),
]


@pytest.mark.parametrize("case", BAD_FOLDERS, ids=lambda c: c.name)
def test_bad_output_folder_is_one_typed_error_naming_it(tmp_path, case):
    path = case.build(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(OutputDirError) as caught:
        prepare_output_dir(path)
    assert caught.value.path == case.named(tmp_path)
    assert case.says in caught.value.reason
    assert snapshot(tmp_path) == before
    with pytest.raises(OutputDirError), output_lock(path, timeout=0):  # the lock checks the folder first
        pass
    assert snapshot(tmp_path) == before


def test_good_output_folder_resolves_symlinks_and_is_not_created(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert prepare_output_dir(tmp_path / "link") == (tmp_path / "real").resolve()
    new = prepare_output_dir(tmp_path / "a" / "b" / "out")
    assert new == (tmp_path / "a" / "b" / "out").resolve()
    assert new.parent.is_dir() and not new.exists()  # parents made for staging and lock; the folder by the commit


@pytest.fixture
def read_only_modes_apply():
    """A command prefix under which read-only modes hold: root ignores them unless it drops the capabilities."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root, which ignores read-only modes, and setpriv (util-linux) is missing")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def run_restricted(prefix: list[str], code: str, *args: object) -> subprocess.CompletedProcess:
    command = [*prefix, sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


REPORT_ERROR = """
import sys
from pathlib import Path
from retinaface_export.errors import FileError
try:
{body}
except FileError as exc:
    print(type(exc).__name__, exc.path, "|", exc.reason, sep="\\t")
else:
    print("no error")
"""


def test_read_only_folder_and_read_only_parent_are_named(tmp_path, read_only_modes_apply):
    read_only = fill(tmp_path / "ro", OLD)
    read_only.chmod(0o555)
    parent = tmp_path / "ro-parent"
    parent.mkdir()
    parent.chmod(0o555)
    before = snapshot(tmp_path)

    body = (
        "    from retinaface_export.safety.atomic import prepare_output_dir\n    prepare_output_dir(Path(sys.argv[1]))"
    )
    done = run_restricted(read_only_modes_apply, REPORT_ERROR.format(body=body), read_only)
    assert done.stdout.strip() == f"OutputDirError\t{read_only}\t|\tfolder is not writable", done.stderr
    done = run_restricted(read_only_modes_apply, REPORT_ERROR.format(body=body), parent / "out")
    assert done.stdout.startswith(f"OutputDirError\t{parent}\t|\tfolder is not writable"), done.stderr

    # a commit into the read-only folder (staging beside it is writable): refused before anything moves
    body = (
        "    from retinaface_export.safety.atomic import commit_run, staging_dir\n"
        "    out = Path(sys.argv[1])\n"
        "    with staging_dir(out) as staging:\n"
        "        (staging / 'a.onnx').write_bytes(b'new')\n"
        "        commit_run(staging, ['a.onnx'], out, 'manifest.json', b'{}')"
    )
    done = run_restricted(read_only_modes_apply, REPORT_ERROR.format(body=body), read_only)
    assert done.stdout.startswith(f"CommitError\t{read_only}\t|\tfolder is not writable"), done.stderr
    assert snapshot(tmp_path) == before


# --- the commit ---------------------------------------------------------------------------------------------


def test_commit_moves_every_file_in_and_writes_the_manifest_last(tmp_path):
    out = fill(tmp_path / "out", OLD)
    with staging_dir(out) as staging:
        fill(staging, NEW)
        commit_run(staging, list(NEW), out, MANIFEST, NEW_MANIFEST)
        assert sorted(p.name for p in staging.iterdir()) == [".owner.json"]  # no backups, no plan left
    assert snapshot(out) == {**OLD, **NEW, MANIFEST: NEW_MANIFEST}
    assert stagings(out) == []

    first = tmp_path / "first"  # a first run creates the folder
    with staging_dir(first) as staging:
        fill(staging, NEW)
        commit_run(staging, list(NEW), first, MANIFEST, NEW_MANIFEST)
    assert snapshot(first) == {**NEW, MANIFEST: NEW_MANIFEST}


@dataclass(frozen=True)
class RefusedCommit:
    name: str
    setup: Callable[[Path, Path], list[str]]  # (staging, out) -> names to commit
    named: Callable[[Path, Path], Path]
    says: str


def _folder_in_the_way(staging, out):
    (out / "b.onnx").unlink()
    fill(out / "b.onnx", {"inside.txt": b"x"})
    return list(NEW)


def _empty_folder_in_the_way(staging, out):
    (out / "c.onnx").mkdir()
    return list(NEW)


def _manifest_is_a_folder(staging, out):
    (out / MANIFEST).unlink()
    (out / MANIFEST).mkdir()
    return list(NEW)


def _not_staged(staging, out):
    (staging / "c.onnx").unlink()
    return list(NEW)


def _staged_symlink(staging, out):
    (staging / "c.onnx").unlink()
    (staging / "c.onnx").symlink_to(out / "keep.txt")
    return list(NEW)


REFUSED = [
    RefusedCommit("name taken by a folder", _folder_in_the_way, lambda s, o: o / "b.onnx", "is a folder"),
    RefusedCommit("name taken by an empty folder", _empty_folder_in_the_way, lambda s, o: o / "c.onnx", "is a folder"),
    RefusedCommit("manifest name taken by a folder", _manifest_is_a_folder, lambda s, o: o / MANIFEST, "is a folder"),
    RefusedCommit("file not staged", _not_staged, lambda s, o: s / "c.onnx", "was not staged"),
    RefusedCommit("staged symlink", _staged_symlink, lambda s, o: s / "c.onnx", "not as a regular file"),
    RefusedCommit("name with ..", lambda s, o: ["../x.onnx"], lambda s, o: o / "../x.onnx", "not a plain file name"),
    RefusedCommit("absolute name", lambda s, o: ["/tmp/x.onnx"], lambda s, o: Path("/tmp/x.onnx"), "not a plain"),
    RefusedCommit("hidden name", lambda s, o: [".owner.json"], lambda s, o: o / ".owner.json", "not a plain"),
    RefusedCommit("manifest among the files", lambda s, o: ["a.onnx", MANIFEST], lambda s, o: o, "two files of one"),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
def test_commit_refused_before_anything_moves(tmp_path, case):
    out = fill(tmp_path / "out", OLD)
    with staging_dir(out) as staging:
        fill(staging, NEW)
        names = case.setup(staging, out)
        before, staged = snapshot(out), snapshot(staging)
        with pytest.raises(CommitError) as caught:
            commit_run(staging, names, out, MANIFEST, NEW_MANIFEST)
        assert caught.value.path == case.named(staging, out)
        assert case.says in caught.value.reason
        assert snapshot(out) == before and snapshot(staging) == staged
    assert stagings(out) == []


class Fault(KeyboardInterrupt):
    """Stands for Ctrl-C arriving at one exact step (a KeyboardInterrupt, as the signal handlers raise)."""


def _replace_calls_of_a_commit(tmp_path: Path, initial: dict[str, bytes]) -> int:
    """How many os.replace calls one commit makes (backups, moves, plan and manifest writes, none to undo)."""
    out = tmp_path / "count"
    shutil.rmtree(out, ignore_errors=True)
    if initial:
        fill(out, initial)
    calls = 0
    real = os.replace

    def counting(*args):
        nonlocal calls
        calls += 1
        return real(*args)

    with staging_dir(out) as staging:
        fill(staging, NEW)
        os.replace = counting
        try:
            commit_run(staging, list(NEW), out, MANIFEST, NEW_MANIFEST)
        finally:
            os.replace = real
    assert snapshot(out) == {**initial, **NEW, MANIFEST: NEW_MANIFEST}
    return calls


@pytest.mark.parametrize("fault", [OSError(5, "Input/output error"), Fault()], ids=["OSError", "KeyboardInterrupt"])
@pytest.mark.parametrize("fresh_folder", [False, True], ids=["over an export", "first export"])
def test_commit_failing_at_any_step_leaves_the_folder_byte_identical(tmp_path, monkeypatch, fault, fresh_folder):
    initial = {} if fresh_folder else OLD
    steps = _replace_calls_of_a_commit(tmp_path, initial)
    # the plan, a and b moved aside and their new versions in, c in, the manifest
    assert steps == (1 + 3 + 1 if fresh_folder else 1 + 2 * 2 + 1 + 1)
    real = os.replace
    for step in range(steps):
        out = tmp_path / f"out{step}"
        if not fresh_folder:
            fill(out, OLD)
        before = snapshot(out)
        calls = 0

        def failing(*args, at=step + 1):
            nonlocal calls
            calls += 1
            if calls == at:
                raise fault
            return real(*args)

        with staging_dir(out) as staging:
            fill(staging, NEW)
            monkeypatch.setattr(os, "replace", failing)
            with pytest.raises(type(fault) if isinstance(fault, Fault) else CommitError) as caught:
                commit_run(staging, list(NEW), out, MANIFEST, NEW_MANIFEST)
            monkeypatch.setattr(os, "replace", real)
            assert snapshot(out) == before, f"fault at os.replace #{step + 1}"
            assert sorted(p.name for p in staging.iterdir()) == sorted([".owner.json", *NEW]), step
            if isinstance(caught.value, CommitError):
                assert "nothing was committed" in caught.value.reason
                assert caught.value.path.name in (*NEW, MANIFEST, "plan.json"), caught.value.path
        assert stagings(out) == []


class _AltStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@pytest.fixture
def own_alternate_signal_stack():
    """The main thread's alternate signal stack set to one this test owns while it signals its own process.

    OpenVINO's CPU plugin sets an alternate signal stack on the thread that loads it and frees it with the
    ov.Core that loaded it. The package makes one Core per process (tests/test_openvino_threads.py), but
    this pytest process also holds the Cores of other tests and of NNCF, made and dropped in any order, so
    the stack in place when this test runs may be freed memory, and Python handles SIGTERM on it
    (SA_ONSTACK): that would crash pytest, not judge the commit.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    memory = ctypes.create_string_buffer(1 << 16)
    previous = _AltStack()
    mine = _AltStack(ctypes.cast(memory, ctypes.c_void_p), 0, len(memory))
    assert libc.sigaltstack(ctypes.byref(mine), ctypes.byref(previous)) == 0, ctypes.get_errno()
    yield
    libc.sigaltstack(ctypes.byref(previous), None)


@pytest.mark.usefixtures("own_alternate_signal_stack")
def test_stop_signal_during_a_commit_waits_for_it_to_finish_or_be_undone(tmp_path, monkeypatch):
    """SIGTERM at each step: before the manifest the commit is undone, then the handler runs; during the
    manifest write the commit completes and the interruption says so."""
    steps = _replace_calls_of_a_commit(tmp_path, OLD)
    real = os.replace

    class Stop(Exception):  # what the handler raises (not a KeyboardInterrupt, so a failure cannot end pytest)
        pass

    in_the_middle = False
    handled_in_the_middle = []

    def stop(signum, frame):
        handled_in_the_middle.append(in_the_middle)
        raise Stop

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for step in range(steps):
            out = fill(tmp_path / f"out{step}", OLD)
            before = snapshot(out)
            calls = 0

            def signalled(*args, at=step + 1):
                nonlocal calls, in_the_middle
                calls += 1
                if calls == at:
                    in_the_middle = True
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.01)  # the handler would run here if the commit did not hold it
                    in_the_middle = False
                return real(*args)

            with staging_dir(out) as staging:
                fill(staging, NEW)
                monkeypatch.setattr(os, "replace", signalled)
                last = step == steps - 1
                with pytest.raises(InterruptedAfterCommit if last else Stop):
                    commit_run(staging, list(NEW), out, MANIFEST, NEW_MANIFEST)
                monkeypatch.setattr(os, "replace", real)
            assert snapshot(out) == ({**OLD, **NEW, MANIFEST: NEW_MANIFEST} if last else before), step
            assert stagings(out) == []
            assert signal.getsignal(signal.SIGTERM) is stop
            assert handled_in_the_middle == [False] * (step + 1 - last), step  # after the commit, or not at all
    finally:
        signal.signal(signal.SIGTERM, previous)


KILLED_MID_COMMIT = """
import os, signal, sys
from pathlib import Path
from retinaface_export.safety.atomic import commit_run, staging_dir
out, kill_at = Path(sys.argv[1]), int(sys.argv[2])
real, calls = os.replace, 0
def replace(*args):
    global calls
    real(*args)
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
with staging_dir(out) as staging:
    for name in ("a.onnx", "b.onnx", "c.onnx"):
        (staging / name).write_bytes(b"new " + name.encode())
    commit_run(staging, ["a.onnx", "b.onnx", "c.onnx"], out, "manifest.json", b"new manifest")
"""


@pytest.mark.parametrize(
    ("kill_after", "committed"),
    [(1, False), (2, False), (3, False), (6, False), (7, True)],
    ids=["plan written", "a moved aside", "a replaced", "all moved in", "manifest written"],
)
def test_commit_cut_by_sigkill_is_undone_by_the_next_run(tmp_path, kill_after, committed):
    out = fill(tmp_path / "out", OLD)
    before = snapshot(out)
    killed = python(KILLED_MID_COMMIT, out, kill_after)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    (left,) = stagings(out)  # SIGKILL cannot be handled: the staging folder and its plan stay
    assert (left / ".commit" / "plan.json").is_file()
    assert (snapshot(out) == before) == (kill_after == 1)

    with output_lock(out, timeout=5):
        pass
    assert stagings(out) == []
    new = {"a.onnx": b"new a.onnx", "b.onnx": b"new b.onnx", "c.onnx": b"new c.onnx", MANIFEST: b"new manifest"}
    assert snapshot(out) == ({**OLD, **new} if committed else before)


# --- concurrent runs ----------------------------------------------------------------------------------------

WRITER = """
import json, sys, time
from pathlib import Path
from retinaface_export.safety.atomic import commit_run, output_lock, staging_dir
folder, name = Path(sys.argv[1]), sys.argv[2]
with output_lock(folder, timeout=60) as out:
    manifest = out / "manifest.json"
    entries = json.loads(manifest.read_text())["artifacts"] if manifest.exists() else []
    time.sleep(0.5)  # a run builds between reading the manifest and committing
    with staging_dir(out) as staging:
        (staging / name).write_text(name)
        commit = json.dumps({"artifacts": sorted([*entries, name])}).encode()
        commit_run(staging, [name], out, "manifest.json", commit)
"""


def test_concurrent_runs_into_one_folder_never_lose_manifest_entries(tmp_path):
    out = tmp_path / "out"
    names = [f"run{i}.onnx" for i in range(3)]
    writers = [python(WRITER, out, name, stderr=subprocess.PIPE) for name in names]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    assert json.loads((out / MANIFEST).read_text())["artifacts"] == names
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, MANIFEST])
    assert stagings(out) == []


HOLDER = """
import sys, time
from retinaface_export.safety.atomic import output_lock
with output_lock(sys.argv[1], timeout=0):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_second_run_waits_a_bounded_time_then_fails_naming_the_folder(tmp_path):
    out = fill(tmp_path / "out", {})
    (tmp_path / "link").symlink_to(out)  # another spelling of the same folder takes the same lock
    holder = python(HOLDER, out, 300, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(FolderBusyError) as caught, output_lock(tmp_path / "link", timeout=0.6):
            pass
        waited = time.monotonic() - started
        assert 0.6 <= waited < 10
        message = str(caught.value)
        assert message.startswith(f"{out.resolve()}: another run (pid {holder.pid} ")
        assert "waited 0.6 s" in message
    finally:
        holder.kill()  # the kernel releases the lock of a killed holder
        holder.wait()
    with output_lock(out, timeout=5) as locked:
        assert locked == out.resolve()


def test_second_run_gets_the_folder_when_the_first_finishes(tmp_path):
    out = tmp_path / "out"
    holder = python(HOLDER, out, 1.0, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    with output_lock(out, timeout=30):
        assert time.monotonic() - started > 0.5  # it waited for the holder
    assert holder.wait(timeout=30) == 0


# --- dead runs' staging folders -----------------------------------------------------------------------------


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(done.stdout)
    assert not psutil.pid_exists(pid)
    return pid


def _me() -> dict:
    me = psutil.Process()
    return {
        "tool": "retinaface-export",
        "pid": me.pid,
        "host": atomic.socket.gethostname(),
        "started": me.create_time(),
    }


@dataclass(frozen=True)
class Leftover:
    name: str
    owner: Callable[[], dict | None]  # None: no owner file
    removed: bool
    folder_name: str = "out"  # whose staging folder it is by name
    name_pid: Callable[[dict | None], int] = lambda owner: owner["pid"] if owner else _dead_pid()


LEFTOVERS = [
    Leftover("dead pid", lambda: {**_me(), "pid": _dead_pid()}, removed=True),
    Leftover("pid reused by a later process", lambda: {**_me(), "started": _me()["started"] - 1000}, removed=True),
    Leftover("owner alive", _me, removed=False),
    Leftover("other host", lambda: {**_me(), "pid": _dead_pid(), "host": "elsewhere"}, removed=False),
    Leftover("no owner file", lambda: None, removed=False),
    Leftover("other tool", lambda: {**_me(), "pid": _dead_pid(), "tool": "other"}, removed=False),
    Leftover("pid in name differs", lambda: {**_me(), "pid": _dead_pid()}, False, name_pid=lambda o: o["pid"] + 1),
    Leftover("another folder's", lambda: {**_me(), "pid": _dead_pid()}, removed=False, folder_name="other"),
]


@pytest.mark.parametrize("case", LEFTOVERS, ids=lambda c: c.name)
def test_stale_staging_is_removed_only_when_provably_a_dead_run_of_this_tool(tmp_path, case):
    out = fill(tmp_path / "out", OLD)
    owner = case.owner()
    leftover = fill(tmp_path / f".{case.folder_name}.staging-{case.name_pid(owner)}-ab12cd_3", {"x.onnx": b"x"})
    leftover.chmod(0o700)  # as mkdtemp makes it: whatever the umask, writable by no one else
    if owner is not None:
        (leftover / ".owner.json").write_text(json.dumps(owner))
    removed = clean_stale_staging(out)
    assert removed == ([leftover] if case.removed else [])
    assert leftover.exists() != case.removed
    assert snapshot(out) == OLD


def test_staging_named_symlink_is_never_followed(tmp_path):
    target = fill(tmp_path / "precious", {"x": b"x", ".owner.json": json.dumps({**_me(), "pid": _dead_pid()}).encode()})
    link = tmp_path / f".out.staging-{json.loads((target / '.owner.json').read_text())['pid']}-abcdefgh"
    link.symlink_to(target)
    assert clean_stale_staging(tmp_path / "out") == []
    assert link.is_symlink() and (target / "x").exists()


SLEEPS_IN_STAGING = """
import sys, time
from pathlib import Path
from retinaface_export.safety.atomic import staging_dir
with staging_dir(Path(sys.argv[1])) as staging:
    print(staging, flush=True)
    time.sleep(300)
"""


def test_a_live_runs_staging_survives_and_a_killed_runs_is_cleaned(tmp_path):
    out = tmp_path / "out"
    run = python(SLEEPS_IN_STAGING, out, stdout=subprocess.PIPE)
    try:
        staging = Path(run.stdout.readline().strip())
        assert staging.is_dir() and staging.name.startswith(f".out.staging-{run.pid}-")
        with output_lock(out, timeout=5):
            pass
        assert staging.is_dir()  # its owner is alive
    finally:
        run.kill()
        run.wait()
    assert staging.is_dir()  # SIGKILL leaves it
    with output_lock(out, timeout=5):
        pass
    assert not staging.exists()


# --- stop signals -------------------------------------------------------------------------------------------


def _script(command: str) -> str:
    script = shutil.which(command, path=os.path.dirname(sys.executable))
    assert script, f"{command} is not installed next to this Python (pip install -e .)"
    return script


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (Linux: the SigCgt mask of /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(mask >> (signum - 1) & 1)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, f"exited before {what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


EXPORT_ARGS = ["--size", "320", "--format", "onnx", "-q"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc (Linux)")
@pytest.mark.parametrize(
    ("signum", "when"),
    [
        (signal.SIGINT, "during imports"),
        (signal.SIGTERM, "during imports"),
        (signal.SIGINT, "while building"),
        (signal.SIGTERM, "while building"),
        (signal.SIGHUP, "while building"),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v.replace(" ", "-"),
)
def test_signal_ends_a_console_script_with_one_line_and_no_staging(tmp_path, signum, when):
    out = tmp_path / "out"
    run = subprocess.Popen(
        ["nice", "-n", "10", _script("retinaface-export"), *EXPORT_ARGS, "--output-dir", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if when == "during imports":  # handlers in place (SIGTERM is not caught by default), torch not loaded yet
            _wait_for(lambda: _catches(run.pid, signal.SIGTERM), run, "the signal handlers")
        else:
            _wait_for(lambda: bool(stagings(out)), run, "the staging folder")
        run.send_signal(signum)
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "retinaface-export: interrupted; nothing was written", stderr
    assert sum("interrupted" in line for line in stderr.splitlines()) == 1
    assert not out.exists()
    assert stagings(out) == []


SLOW_CLEANUP = """
import sys, time
from pathlib import Path
from retinaface_export.safety.atomic import staging_dir
from retinaface_export.cli.entry import exit_interrupted, install_signal_handlers
install_signal_handlers("cmd")
try:
    with staging_dir(Path(sys.argv[1])) as staging:
        try:
            print(staging, flush=True)
            time.sleep(300)
        finally:
            print("cleaning up", flush=True)
            time.sleep(300)  # as when worker threads finish the artifact they are building
except KeyboardInterrupt as exc:
    exit_interrupted("cmd", exc)
"""


def test_second_signal_during_cleanup_stops_at_once_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "out"
    run = python(SLOW_CLEANUP, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        staging = Path(run.stdout.readline().strip())
        run.send_signal(signal.SIGTERM)
        assert run.stdout.readline().strip() == "cleaning up"
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=30) == 130
    finally:
        run.kill()
    assert "cmd: interrupted again; stopped at once" in run.stderr.read()
    assert staging.is_dir()
    with output_lock(out, timeout=5):
        pass
    assert not staging.exists()


def test_every_console_script_installs_the_signal_handlers_first():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    # every module of cli/ that defines a command's main (helpers such as common.py define none)
    commands = {
        path.stem
        for path in (REPO / "retinaface_export" / "cli").glob("*.py")
        if path.stem != "entry" and "\ndef main(" in path.read_text()
    }
    assert set(scripts) == set(entry.COMMANDS)
    assert {module.rsplit(".", 1)[1] for module in entry.COMMANDS.values()} == commands
    for script, target in scripts.items():
        module, function = target.split(":")
        assert module == "retinaface_export.cli.entry", script
        assert callable(getattr(entry, function)), script
        assert find_spec(entry.COMMANDS[script]) is not None, script


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (entry.Interrupted(signal.SIGTERM), 143, "cmd: interrupted; nothing was written"),
        (entry.Interrupted(signal.SIGHUP), 129, "cmd: interrupted; nothing was written"),
        (KeyboardInterrupt(), 130, "cmd: interrupted; nothing was written"),
        (InterruptedAfterCommit(signal.SIGTERM), 143, "cmd: interrupted; its files were written before it stopped"),
    ],
    ids=["SIGTERM", "SIGHUP", "Ctrl-C", "after commit"],
)
def test_handle_errors_reports_an_interruption_in_one_line(error, code, line):
    @click.command()
    @handle_errors("cmd")
    def command():
        raise error

    result = CliRunner().invoke(command, [])
    assert result.exit_code == code
    assert result.stderr == line + "\n"
