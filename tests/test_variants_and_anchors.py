from importlib import resources

import pytest
import torch

from retinaface_export.anchors import AnchorConfig, bundled_anchor_presets, load_anchors
from retinaface_export.errors import AnchorsFileError, UnknownVariantError, UsageError
from retinaface_export.model import build_model
from retinaface_export.sizes import STANDARD_SIZES, InputSize, parse_size
from retinaface_export.variants import get_variant, list_variants

# A = 2·(⌈H/8⌉⌈W/8⌉ + ⌈H/16⌉⌈W/16⌉ + ⌈H/32⌉⌈W/32⌉), worked by hand for the standard sizes.
HAND_COUNTED = {
    320: 2 * (1600 + 400 + 100),
    416: 2 * (2704 + 676 + 169),
    512: 2 * (4096 + 1024 + 256),
    608: 2 * (5776 + 1444 + 361),
    640: 16800,
}


def test_registry_lists_both_backbones():
    assert list_variants() == ["mobilenet0.25", "resnet50"]


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(UnknownVariantError) as info:
        get_variant("resnet18")
    assert "resnet18" in str(info.value)
    assert "mobilenet0.25, resnet50" in str(info.value)


def test_configs_are_package_data():
    names = {entry.name for entry in resources.files("retinaface_export.configs").iterdir()}
    assert {"mobilenet0.25.toml", "resnet50.toml"} <= names
    assert "small_faces" in bundled_anchor_presets()


@pytest.mark.parametrize("size", STANDARD_SIZES)
def test_anchor_count_formula(size):
    anchors = get_variant("mobilenet0.25").anchors
    assert anchors.num_anchors(size, size) == HAND_COUNTED[size]


@pytest.mark.parametrize("size", STANDARD_SIZES)
def test_model_emits_one_row_per_anchor(size):
    model = build_model(get_variant("mobilenet0.25"))
    with torch.inference_mode():
        bbox, cls, landmarks = model(torch.zeros(1, 3, size, size))
    assert bbox.shape == (1, HAND_COUNTED[size], 4)
    assert cls.shape == (1, HAND_COUNTED[size], 2)
    assert landmarks.shape == (1, HAND_COUNTED[size], 10)


def test_non_square_anchor_count():
    # 480x640: 60·80 + 30·40 + 15·20 = 6300 cells, 2 anchors each
    assert get_variant("resnet50").anchors.num_anchors(480, 640) == 12600


def test_small_faces_preset_loads():
    anchors = load_anchors("small_faces")
    assert anchors.min_sizes == ((10, 20), (32, 64), (128, 256))
    assert anchors.steps == (8, 16, 32)


def test_anchors_file_round_trip(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("min_sizes = [[8, 16], [32, 64], [128, 256]]\nsteps = [8, 16, 32]\nvariance = [0.1, 0.2]\n")
    assert load_anchors(path) == AnchorConfig(((8, 16), (32, 64), (128, 256)), (8, 16, 32), (0.1, 0.2))


@pytest.mark.parametrize(
    "text, reason",
    [
        ("steps = [8, 16, 32]\n", "missing keys"),
        ("min_sizes = [[1]]\nsteps = [8, 16]\nvariance = [0.1, 0.2]\n", "1 min_sizes lists for 2 steps"),
        ("not toml [", "not an anchors"),
    ],
)
def test_bad_anchors_file_names_file_and_reason(tmp_path, text, reason):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(AnchorsFileError) as info:
        load_anchors(path)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_missing_anchors_file():
    with pytest.raises(AnchorsFileError, match="no such anchors file"):
        load_anchors("/nonexistent/anchors.toml")


@pytest.mark.parametrize(
    "text, expected", [("640", InputSize(640, 640)), ("480x640", InputSize(480, 640)), ("320X416", InputSize(320, 416))]
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["650", "0", "640x100", "abc", "-32", "64x"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)
