"""A separate Ray cluster for tests that join one: ``ray start --head`` from the venv, as a user starts it.

On loopback only (``--node-ip-address 127.0.0.1`` with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: without the
switch Ray replaces 127.0.0.1 by the machine's network address), a free port, two CPUs, no dashboard, usage
statistics off, its session files in a short temporary folder (Ray's socket paths must fit in 107 bytes), a
home folder of its own (so no ``~/.ray`` file is read or written), and token authentication with a token made
for the test (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``): drivers need :attr:`Cluster.driver_env` to join.

It is stopped by its process group, never by ``ray stop``: ``ray stop`` ends every Ray process of the user on
the machine, other checkouts' tests included. ``ray start`` runs in a session of its own, and every process of
the cluster (GCS, raylet, agents, workers) stays in its process group.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
CLOSED_PORT = "http://127.0.0.1:9"  # a proxy nothing listens on: HTTP the cluster sends ends on loopback


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    """A running cluster: its address, session folder and process group."""

    address: str
    temp_dir: Path
    group: int
    driver_env: dict[str, str]

    def driver_pids(self) -> set[int]:
        """The processes that joined as drivers: Ray logs each in the cluster's session folder by its pid."""
        logs = self.temp_dir / "session_latest" / "logs"
        return {int(log.stem.rsplit("_", 1)[1]) for log in logs.glob("python-core-driver-*_*.log")}

    def processes(self) -> list[str]:
        """The command lines of the live processes in the cluster's process group."""
        lines = []
        for pid in _members(self.group):
            try:
                lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
        return lines

    def runs_a_task(self, timeout: float = 120) -> bool:
        """A new driver joins the cluster and gets a task run (the cluster is up and can work)."""
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(ray.get(ray.remote(lambda: 6 * 7).remote()))"
        )
        env = self.driver_env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        done = subprocess.run(
            [sys.executable, "-c", code, self.address], env=env, capture_output=True, text=True, timeout=timeout
        )
        return done.returncode == 0 and done.stdout.split()[-1:] == ["42"]


def _members(group: int) -> list[int]:
    """The live processes of a process group (zombies left out: they are dead, waiting to be reaped)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:  # state, ppid, pgrp
            pids.append(int(stat.parent.name))
    return pids


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the cluster's process group, SIGKILL to what is left a second later."""
    for signum, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while _members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _members(process.pid):
            break
    process.wait(timeout=10)
    assert not _members(process.pid), "the test cluster's processes outlived SIGKILL"


@contextmanager
def ray_start_head(extra_env: dict[str, str | None] | None = None, wrapper: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """A cluster started by ``ray start --head`` (under ``wrapper``, e.g. strace), stopped at the end, always.

    Args:
        extra_env: more variables for the cluster's processes (its workers inherit them); None removes one.
        wrapper: a command ``ray start`` runs under.
    """
    if not RAY.exists():
        import pytest

        pytest.skip(f"no ray command beside {sys.executable}")
    folder = Path(tempfile.mkdtemp(prefix="rfray-", dir="/tmp"))
    (folder / "home").mkdir()
    port, token = free_port(), secrets.token_hex(24)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env = (
        os.environ
        | auth
        | {
            "HOME": str(folder / "home"),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            **{name: CLOSED_PORT for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
            **(extra_env or {}),
        }
    )
    env = {name: value for name, value in env.items() if value is not None}
    command = [*wrapper, str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
               "--include-dashboard", "false", "--num-cpus", "2", "--temp-dir", str(folder / "t"),
               "--disable-usage-stats"]  # fmt: skip
    log = folder / "start.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # ray start returns once the cluster is up; under strace -f the tracer stays for the cluster's processes
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert process.poll() in (None, 0), f"ray start failed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ray start did not finish:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield Cluster(f"127.0.0.1:{port}", folder / "t", process.pid, auth)
    finally:
        _stop(process)
        shutil.rmtree(folder, ignore_errors=True)
