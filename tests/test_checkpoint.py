import pytest
import torch

from checkpoint_cases import BAD_CHECKPOINTS, wrap_with_module_prefix
from conftest import SMALL_ANCHORS_WEIGHTS, require
from retinaface_export.anchors import load_anchors
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.hashing import sha256_file
from retinaface_export.synthetic import synthetic_checkpoint, synthetic_state_dict
from retinaface_export.variants import get_variant


@pytest.mark.parametrize("case", BAD_CHECKPOINTS, ids=lambda c: c.name)
def test_bad_checkpoint_raises_typed_error_naming_file_and_reason(tmp_path, case):
    path = case.build(tmp_path)
    backbone = case.extra_args[1] if case.extra_args else None
    with pytest.raises(case.error) as info:
        load_checkpoint(path, backbone=backbone)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert case.says in message, message
    assert "\n" not in message


def test_upstream_resnet50_layout_loads_unchanged(tmp_path):
    # Resnet50_Final.pth keeps DataParallel's `module.` prefix; here with a state_dict wrapper as well.
    state = synthetic_state_dict(get_variant("resnet50"))
    path = tmp_path / "Resnet50_Final.pth"
    torch.save(wrap_with_module_prefix(state), path)
    loaded = load_checkpoint(path)
    assert loaded.variant.name == "resnet50"
    assert loaded.file_sha256 == sha256_file(path)
    assert loaded.state_dict_sha256 == synthetic_checkpoint(get_variant("resnet50")).state_dict_sha256
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    state = {
        k: v
        for k, v in synthetic_state_dict(get_variant("mobilenet0.25")).items()
        if not k.endswith("num_batches_tracked")
    }
    torch.save(state, tmp_path / "old.pth")
    assert load_checkpoint(tmp_path / "old.pth").variant.name == "mobilenet0.25"


def test_backbone_option_that_agrees_is_accepted(real_weights):
    assert load_checkpoint(real_weights, backbone="mobilenet0.25").variant.name == "mobilenet0.25"


def test_custom_anchors_travel_with_the_checkpoint():
    path = require(SMALL_ANCHORS_WEIGHTS)
    loaded = load_checkpoint(path, anchors=load_anchors("small_faces"))
    assert loaded.variant.anchors.min_sizes == ((10, 20), (32, 64), (128, 256))
    assert loaded.provenance()["anchors"]["min_sizes"] == [[10, 20], [32, 64], [128, 256]]
    # same architecture: it loads key for key like the default-anchor checkpoint
    assert loaded.variant.name == "mobilenet0.25"


def test_real_checkpoint_sha256_is_the_files(real_weights):
    import hashlib

    assert load_checkpoint(real_weights).file_sha256 == hashlib.sha256(real_weights.read_bytes()).hexdigest()
