"""retinaface-detect --engine ray: an actor pool on a local Ray gives the local engine's faces, image for image.

One local Ray for the module, started the way the command starts one (``ray_cluster``: loopback, no
dashboard, usage statistics off); the command, finding it running, uses it.
"""

import json
import os
import shutil
import sys

import pytest
from click.testing import CliRunner

from conftest import SHARED, require
from retinaface_export.cli.detect import main
from retinaface_export.inference import ray_engine

pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytestmark = pytest.mark.slow  # a local Ray starts in ~15 s on 2 cores; the whole module costs ~45 s


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def by_image(path):
    return {record["image"]: record for record in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def local_ray():
    with ray_engine.ray_cluster(None, num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The real photos twice over, and one file that is not an image."""
    folder = tmp_path_factory.mktemp("ray-photos")
    for copy in range(2):
        for photo in sorted(require(SHARED / "images").glob("*.jpg")):
            shutil.copy(photo, folder / f"{photo.stem}_{copy}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def test_ray_gives_the_faces_of_the_local_engine(tmp_path, onnx_320, local_ray, photos):
    ours, local = tmp_path / "ray.jsonl", tmp_path / "local.jsonl"
    # one runtime thread per actor, and one locally: the same arithmetic, so the same faces to the last digit
    result = run(photos, "--model", onnx_320, "--predictions", ours, "--engine", "ray", "--num-workers", 2, "-q")
    assert result.exit_code == 1  # the broken file
    assert f"{photos / 'broken.jpg'}: cannot be read as an image" in result.stderr
    assert run(photos, "--model", onnx_320, "--predictions", local, "--threads", 1, "-q").exit_code == 1
    expected = by_image(local)
    assert by_image(ours) == expected and len(expected) == 15
    assert len(ours.read_text().splitlines()) == 15  # one line per image
    assert expected[str(photos / "broken.jpg")] == {
        "image": str(photos / "broken.jpg"),
        "error": "cannot be read as an image",
    }
    assert sum(len(r.get("faces", [])) for r in expected.values()) > 80


class DiesOnce(ray_engine._DetectActor):
    """An actor whose first call kills its process (the marker file says it already happened)."""

    marker = ""

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(batch)


def test_a_dead_workers_images_are_retried_never_lost_or_doubled(tmp_path, onnx_320, local_ray, photos, monkeypatch):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    monkeypatch.setattr(DiesOnce, "marker", str(tmp_path / "died"))
    monkeypatch.setattr(ray_engine, "_DetectActor", DiesOnce)
    out = tmp_path / "faces.jsonl"
    result = run(photos, "--model", onnx_320, "--predictions", out, "--engine", "ray", "--num-workers", 2, "-q")
    assert (tmp_path / "died").exists()
    assert result.exit_code == 1 and result.stderr.count("cannot be read as an image") == 1
    images = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert sorted(images) == sorted(str(p) for p in photos.iterdir())
