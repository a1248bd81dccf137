"""No network, ever, by default: every command runs with OpenVINO's and NNCF's telemetry off.

The commands run as console scripts in fresh interpreters whose environment holds none of the libraries'
own switches (CI, NNCF_CI) and whose home folder is empty (no telemetry consent file), as on a fresh
machine. Two tracers watch them: a ``sitecustomize`` audit hook in every Python process (fork and spawn
children too) records, with a stack, and blocks any socket connect, DNS look-up or datagram to a host
other than loopback; ``strace -f -e trace=connect``, where it runs, records every ``connect()`` of the
process tree at the system-call level. Either seeing one attempt fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REAL_WEIGHTS, REPO, SHARED, require
from retinaface_export.cli.entry import ALLOW_TELEMETRY_ENV, NO_TELEMETRY_ENV

# every command traced in a subprocess: make test, not the fast tier
pytestmark = pytest.mark.slow

IMAGES = SHARED / "images"

AUDIT_HOOK = '''
"""Test tracer: record and block every attempt to reach a host other than loopback."""
import os
import socket
import sys
import traceback

_LOG = os.environ["RETINAFACE_TEST_NETWORK_LOG"]


def _local(host):
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host is None or host in ("", "localhost", "::1"):
        return True
    return isinstance(host, str) and (host.startswith("127.") or host.startswith("::ffff:127."))


def _outside(what):
    stack = "".join(traceback.format_stack()[:-2][-12:])
    with open(_LOG, "a") as log:
        log.write(f"pid {os.getpid()}: {what}\\n{stack}\\n")
    raise OSError(f"outside connection blocked by the test: {what}")


def _hook(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[1] if len(args) > 1 else None
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address is not None:
            if not _local(address[0] if isinstance(address, tuple) else address):
                _outside(f"{event} {address!r}")
    elif event == "socket.getaddrinfo" and not _local(args[0]):
        _outside(f"{event} {args[0]!r}")
    elif event in ("socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr") and not _local(args[0]):
        _outside(f"{event} {args[0]!r}")


sys.addaudithook(_hook)
'''

# a connect() to an IPv4/IPv6 address that is not loopback, as strace prints it
_STRACE_CONNECT = re.compile(r"connect\(\d+, \{sa_family=AF_INET6?, (?P<address>[^}]*)\}")
_LOOPBACK = re.compile(r'inet_addr\("127\.|inet_pton\(AF_INET6, "::1"|"::ffff:127\.')


def outside_connects(strace_log: str) -> list[str]:
    """The lines of an ``strace -e trace=connect`` log that connect to a host other than loopback."""
    return [
        line
        for line in strace_log.splitlines()
        if (m := _STRACE_CONNECT.search(line)) and not _LOOPBACK.search(m.group("address"))
    ]


def test_outside_connects_reads_strace_lines():
    log = "\n".join(
        [
            '12 connect(4, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
            '12 connect(5, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.0.0.1")}, 16) = -1',
            '12 connect(6, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
            "13 connect(7, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "
            '"2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = -1',
            '13 connect(8, {sa_family=AF_INET6, sin6_port=htons(80), inet_pton(AF_INET6, "::1", &sin6_addr)}, 28) = 0',
        ]
    )
    assert [line.split()[1] for line in outside_connects(log)] == ["connect(4,", "connect(7,"]


def _strace() -> list[str]:
    """``strace`` filtering connect() in the kernel (cheap), when it is installed and may trace here."""
    strace = shutil.which("strace")
    if strace is None:
        return []
    command = [strace, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", os.devnull, "true"]
    works = subprocess.run(command, capture_output=True, check=False).returncode == 0
    return [strace, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect"] if works else []


class Traced:
    """Runs console scripts as a user on a fresh machine would, under both tracers."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "trace"
        hook = self.folder / "hook"
        hook.mkdir(parents=True)
        (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
        (self.folder / "home").mkdir()
        self.audit_log = self.folder / "audit.log"
        self.strace = _strace()
        env = {k: v for k, v in os.environ.items() if k not in (*NO_TELEMETRY_ENV, ALLOW_TELEMETRY_ENV, "PYTHONPATH")}
        env |= {
            "HOME": str(self.folder / "home"),  # no consent file: the libraries' defaults apply
            "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]),
            "RETINAFACE_TEST_NETWORK_LOG": str(self.audit_log),
        }
        self.env = env
        self.runs: list[str] = []

    def run(
        self, name: str, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """``python -m retinaface_export <args>`` (no -q: the tables print too); fails the test if it fails."""
        command = [sys.executable, "-m", "retinaface_export", *args]
        strace_log = self.folder / f"{name}.strace"
        if self.strace:
            command = [*self.strace, "-o", str(strace_log), *command]
        env = self.env | (extra_env or {})
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        self.runs.append(name)
        return done

    def attempts(self) -> tuple[str, dict[str, list[str]]]:
        """(what the audit hook recorded, outside connect() lines per run from strace)."""
        audit = self.audit_log.read_text() if self.audit_log.exists() else ""
        syscalls = {}
        for name in self.runs:
            log = self.folder / f"{name}.strace"
            if log.exists() and (lines := outside_connects(log.read_text())):
                syscalls[name] = lines
        return audit, syscalls


@pytest.fixture
def traced(tmp_path) -> Traced:
    return Traced(tmp_path)


def run_every_command(traced: Traced, out: Path, mode: str, conversions: dict[str, tuple[str, ...]]) -> None:
    """export, convert (``target -> precisions``, INT8 with calibration photos), parity, detect and bench,
    in table mode, then fail on any outside connection attempt either tracer saw."""
    weights, images = require(REAL_WEIGHTS), require(IMAGES)
    traced.run("export", "export", "--weights", str(weights), "--size", "320", "--postprocess", mode,
               "--output-dir", str(out))  # fmt: skip
    for target, precisions in conversions.items():
        calibration = ("--calibration", str(images)) if "int8" in precisions else ()
        traced.run(target, "convert", str(out), "--to", target, "--precision", *precisions, *calibration)
    parity = traced.run("parity", "parity", str(out))
    artifacts = 2 + sum(len(precisions) for precisions in conversions.values())
    assert f"parity: {artifacts} passed, 0 failed" in parity.stdout, parity.stdout
    ir = next(out.glob("*.xml"))
    traced.run("detect", "detect", "--model", str(ir), str(images / "crowd_selfie.jpg"))
    traced.run("bench", "bench", str(out), "--runs", "3", "--warmup", "0", "--mode", "latency", "--no-eager")
    audit, syscalls = traced.attempts()
    assert not audit, f"outside connection attempts (Python stacks):\n{audit[:6000]}"
    assert not syscalls, f"outside connect() calls under strace: {syscalls}"
    # the libraries did not even set telemetry up: no client id in the (empty) home
    assert not (traced.folder / "home" / "intel").exists()


def test_commands_make_no_outside_connection(tmp_path, traced):
    """Each command once, and each library that phones home: OpenVINO's converter (its import alone starts a
    session), NNCF (INT8). About 35 s; every target and precision in the slow test below."""
    run_every_command(traced, tmp_path / "out", "none", {"openvino": ("fp32",), "onnx": ("int8",)})


@pytest.mark.slow
def test_every_command_target_and_precision_makes_no_outside_connection(tmp_path, traced):
    """Every target and precision, nms inside the graph: also the table test of nms INT8 conversions."""
    conversions = {"onnxsim": ("fp32",), "openvino": ("fp32", "fp16", "int8"), "onnx": ("fp16", "int8")}
    run_every_command(traced, tmp_path / "out", "nms", conversions)


def test_detect_on_a_local_ray_makes_no_outside_connection(tmp_path, traced):
    """retinaface-detect --engine ray starts a local Ray (GCS, raylet, dashboard, workers): none of its processes
    looks for the machine's address through 8.8.8.8 or asks a cloud metadata server which cloud it is on."""
    pytest.importorskip("ray")
    weights, images = require(REAL_WEIGHTS), require(IMAGES)
    out = tmp_path / "out"
    traced.run("export", "export", "--weights", str(weights), "--size", "320", "--format", "onnx",
               "--output-dir", str(out))  # fmt: skip
    model = next(out.glob("*.onnx"))
    faces = tmp_path / "faces.jsonl"
    done = traced.run("detect-ray", "detect", str(images), "--model", str(model), "--predictions", str(faces),
                      "--engine", "ray")  # fmt: skip
    assert len(faces.read_text().splitlines()) == len(list(images.glob("*.jpg")))
    # nothing outside the named folders: Ray 2.60 wrote ~/.ray/auth_token for a local cluster unless told not to
    assert not list((traced.folder / "home").rglob("*")), list((traced.folder / "home").rglob("*"))
    # and none of Ray's own lines on the console (its C++ log level notice, Ray Data's idle-actor warning)
    assert "logging.cc" not in done.stderr and "UserWarning" not in done.stderr, done.stderr
    audit, syscalls = traced.attempts()
    assert not audit, f"outside connection attempts (Python stacks):\n{audit[:6000]}"
    assert not syscalls, f"outside connect() calls under strace: {syscalls}"


def test_tracer_sees_telemetry_when_the_user_allows_it(tmp_path, traced):
    """The check above can fail: with telemetry allowed, importing OpenVINO alone tries to reach the outside."""
    pytest.importorskip("openvino_telemetry")
    code = textwrap.dedent(
        """
        import os, time
        from retinaface_export.cli.entry import no_telemetry
        assert no_telemetry() is False  # RETINAFACE_EXPORT_ALLOW_TELEMETRY=1 leaves it to the libraries
        import openvino  # starts a telemetry session
        deadline = time.monotonic() + 30
        while not os.path.exists(os.environ["RETINAFACE_TEST_NETWORK_LOG"]) and time.monotonic() < deadline:
            time.sleep(0.1)  # the event goes out from a thread, through a forked child
        """
    )
    command = [sys.executable, "-c", code]
    if traced.strace:
        command = [*traced.strace, "-o", str(traced.folder / "allowed.strace"), *command]
    env = traced.env | {ALLOW_TELEMETRY_ENV: "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    traced.runs.append("allowed")
    audit, syscalls = traced.attempts()
    assert "google-analytics" in audit or syscalls, "the tracers saw nothing: they would miss telemetry too"


def test_no_telemetry_sets_the_libraries_switches(monkeypatch):
    from retinaface_export.cli.entry import no_telemetry

    for name in NO_TELEMETRY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ALLOW_TELEMETRY_ENV, "1")
    assert no_telemetry() is False
    assert not any(name in os.environ for name in NO_TELEMETRY_ENV)
    monkeypatch.delenv(ALLOW_TELEMETRY_ENV)
    monkeypatch.setenv("CI", "false")  # a user's own CI=false does not turn telemetry back on
    assert no_telemetry() is True
    assert {name: os.environ[name] for name in NO_TELEMETRY_ENV} == NO_TELEMETRY_ENV


FORKED_CHILD = """
import multiprocessing, os, signal, sys, time
from retinaface_export.cli.entry import install_signal_handlers

install_signal_handlers("retinaface-test")
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
child.start()
time.sleep(0.5)
os.kill(child.pid, signal.{name})
child.join(30)
print(child.exitcode)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork children are a POSIX matter")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_forked_child_does_not_run_our_handler(signum):
    """A library's forked worker (OpenVINO's telemetry sender) dies by the signal, silently."""
    code = FORKED_CHILD.format(name=signum.name)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(-signum)], done.stdout + done.stderr  # ended by the signal itself
    assert "Traceback" not in done.stderr and "interrupted" not in done.stderr, done.stderr


PARENT_AFTER_FORK = """
import multiprocessing, os, signal, sys, time
from retinaface_export.cli.entry import install_signal_handlers

install_signal_handlers("retinaface-test")
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0,))
child.start()
child.join(30)
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
except KeyboardInterrupt as exc:
    sys.exit(128 + exc.signum)
"""


def test_parent_still_runs_our_handler_after_forking():
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PARENT_AFTER_FORK], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr


def test_detect_joining_a_cluster_makes_no_outside_connection(tmp_path, traced):
    """retinaface-detect --ray-address joins a cluster started apart (``ray start --head`` on loopback, see
    started_ray.py). The cluster runs under the same tracers as the command, from its start, and its workers
    (which run our actors) load the audit hook too. Its environment has neither the libraries' telemetry
    switches nor a consent file, as a user's cluster may not, and the model is an OpenVINO IR, which the actors
    import OpenVINO for. Before the fix the command's own process looked for the machine's address through
    8.8.8.8 and then waited on that address, which a cluster on loopback does not listen on."""
    pytest.importorskip("ray")
    from started_ray import ray_start_head

    weights, images = require(REAL_WEIGHTS), require(IMAGES)
    out = tmp_path / "out"
    traced.run("export", "export", "--weights", str(weights), "--size", "320", "--format", "onnx",
               "--output-dir", str(out))  # fmt: skip
    traced.run("openvino", "convert", str(out), "--to", "openvino", "--precision", "fp32")
    model = next(out.glob("*.xml"))
    faces = tmp_path / "faces.jsonl"
    wrapper = (*traced.strace, "-o", str(traced.folder / "cluster.strace")) if traced.strace else ()
    fresh = {name: None for name in (*NO_TELEMETRY_ENV, ALLOW_TELEMETRY_ENV)} | {
        name: traced.env[name] for name in ("PYTHONPATH", "RETINAFACE_TEST_NETWORK_LOG")
    }
    with ray_start_head(fresh, wrapper) as cluster:
        traced.run("detect-joined", "detect", str(images), "--model", str(model), "--predictions", str(faces),
                   "--engine", "ray", "--ray-address", cluster.address, extra_env=cluster.driver_env,
                   timeout=180)  # fmt: skip
    traced.runs.append("cluster")
    assert len(faces.read_text().splitlines()) == len(list(images.glob("*.jpg")))
    audit, syscalls = traced.attempts()
    assert not audit, f"outside connection attempts (Python stacks):\n{audit[:6000]}"
    assert not syscalls, f"outside connect() calls under strace: {syscalls}"
