"""retinaface-detect --engine ray --ray-address: joining a cluster started apart, as a user starts one.

One cluster for the module (``ray start --head`` on loopback with token authentication, see
``started_ray.py``); the command runs as a console script in its own process, as a user runs it, so nothing
of this process's Ray state (none, here) can stand in for the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from started_ray import free_port, ray_start_head

from conftest import REPO, SHARED, require

pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytestmark = pytest.mark.slow  # a cluster start (~5 s) and a job (~10 s) on 2 shared cores

PHOTOS = SHARED / "images"


def detect(*args, env: dict[str, str] | None = None, timeout: float = 180) -> tuple[int, subprocess.CompletedProcess]:
    """``python -m retinaface_export detect ARGS`` in a process of its own: (its pid, what it did)."""
    command = [sys.executable, "-m", "retinaface_export", "detect", *map(str, args), "-q"]
    full_env = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    with subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        try:
            out, err = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.kill()
            out, err = run.communicate()
            pytest.fail(f"retinaface-detect still running after {timeout} s:\n{err[-3000:]}")
    return run.pid, subprocess.CompletedProcess(command, run.returncode, out, err)


def by_image(path):
    return {record["image"]: record for record in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def cluster():
    # the workers import the package of this checkout, as the driver does
    with ray_start_head({"PYTHONPATH": str(REPO)}) as started:
        yield started


def test_joins_the_running_cluster_gives_the_local_faces_and_leaves_it_running(tmp_path, onnx_320, cluster):
    """Fails if the command starts a Ray of its own (its driver is logged in that Ray's session, not the
    cluster's), loses or changes a face, or stops the cluster it joined."""
    from retinaface_export.cli.detect import main

    photos, ours, local = require(PHOTOS), tmp_path / "ray.jsonl", tmp_path / "local.jsonl"
    before = cluster.processes()
    pid, done = detect(photos, "--model", onnx_320, "--predictions", ours, "--engine", "ray",
                       "--ray-address", cluster.address, "--num-workers", 2, env=cluster.driver_env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # nothing from Ray on the console
    assert pid in cluster.driver_pids()  # it joined that cluster as a driver
    # one runtime thread per actor, and one locally: the same arithmetic, so the same faces to the last digit
    result = CliRunner().invoke(main, [str(photos), "--model", str(onnx_320), "--predictions", str(local),
                                       "--threads", "1", "-q"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    expected = by_image(local)
    assert by_image(ours) == expected and len(expected) == len(list(photos.glob("*.jpg")))
    assert sum(len(record["faces"]) for record in expected.values()) > 40
    # still up, and still working for the next driver
    assert [line for line in before if "gcs_server" in line or "raylet" in line] == [
        line for line in cluster.processes() if "gcs_server" in line or "raylet" in line
    ]
    assert cluster.runs_a_task()


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "the Ray cluster asks for a token: set RAY_AUTH_MODE=token"),
        ("0" * 48, "the Ray cluster refused our token"),
    ],
    ids=["no token", "wrong token"],
)
def test_a_cluster_that_refuses_us_is_one_line_and_nothing_written(tmp_path, onnx_320, cluster, token, message):
    env = {"RAY_gcs_server_port_wait_time_s": "1"}  # one attempt, not Ray's 20 (1 s apart): the same path, sooner
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"HOME": str(tmp_path)}
    out = tmp_path / "out" / "faces.jsonl"
    out.parent.mkdir()
    _, done = detect(PHOTOS, "--model", onnx_320, "--predictions", out, "--engine", "ray",
                     "--ray-address", cluster.address, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"retinaface-detect: error: --ray-address {cluster.address}: {message}"), lines
    assert list(out.parent.iterdir()) == []


def test_an_address_nothing_answers_at_is_one_line_at_once_and_nothing_written(tmp_path, onnx_320):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there (Ray alone retries it for ~14 minutes)
    out = tmp_path / "out" / "faces.jsonl"
    out.parent.mkdir()
    _, done = detect(PHOTOS, "--model", onnx_320, "--predictions", out, "--engine", "ray",
                     "--ray-address", address, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"retinaface-detect: error: --ray-address {address}: cannot join the Ray cluster "
        "(nothing answers there: Connection refused)"
    ]
    assert list(out.parent.iterdir()) == []
