import numpy as np
import pytest
import torch

from conftest import photo_input
from reference_forward import reference_forward
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.model import build_model
from retinaface_export.synthetic import synthetic_checkpoint, synthetic_state_dict
from retinaface_export.variants import get_variant

# torchvision's resnet50 has 25,557,032 parameters, of which fc holds 2048·1000 + 1000.
TORCHVISION_RESNET50_WITHOUT_FC = 25_557_032 - 2_049_000


def test_real_checkpoint_loads_key_for_key(real_weights):
    raw = torch.load(real_weights, map_location="cpu", weights_only=True)
    loaded = load_checkpoint(real_weights)
    state = loaded.model.state_dict()
    assert list(state) == [k.removeprefix("module.") for k in raw]
    for key, value in raw.items():
        assert torch.equal(state[key.removeprefix("module.")], value), key
    # shared/README: 426,608 parameters
    assert sum(p.numel() for p in loaded.model.parameters()) == 426_608
    assert loaded.variant.name == "mobilenet0.25"


def test_resnet50_backbone_has_torchvision_layout():
    model = build_model(get_variant("resnet50"))
    body = sum(p.numel() for name, p in model.named_parameters() if name.startswith("body."))
    assert body == TORCHVISION_RESNET50_WITHOUT_FC
    keys = set(model.state_dict())
    assert {"body.conv1.weight", "body.layer1.0.downsample.0.weight", "body.layer4.2.bn3.running_var"} <= keys
    assert not any(k.startswith(("body.fc", "body.avgpool")) for k in keys)


@pytest.mark.parametrize("size", [(640, 640), (320, 480)])
def test_real_model_matches_independent_reference(real_weights, crowd_photo, size):
    raw = torch.load(real_weights, map_location="cpu", weights_only=True)
    model = load_checkpoint(real_weights).model
    data = torch.from_numpy(photo_input(crowd_photo, *size))
    with torch.inference_mode():
        ours, theirs = model(data), reference_forward(raw, data)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_real_model_finds_faces_in_crowd(real_weights, crowd_photo):
    # A trained detector on a photo of several hundred faces: many confident anchors. A wrong slope or
    # wiring collapses this even when shapes are right.
    model = load_checkpoint(real_weights).model
    h, w = crowd_photo.shape[:2]
    with torch.inference_mode():
        _, cls, _ = model(torch.from_numpy(photo_input(crowd_photo, h - h % 32, w - w % 32)))
    assert int((cls[0, :, 1] > 0.9).sum()) > 300


def test_synthetic_resnet50_matches_independent_reference(crowd_photo):
    state = synthetic_state_dict(get_variant("resnet50"))
    model = synthetic_checkpoint(get_variant("resnet50")).model
    data = torch.from_numpy(photo_input(crowd_photo, 320, 320))
    with torch.inference_mode():
        for a, b in zip(model(data), reference_forward(state, data), strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["mobilenet0.25", "resnet50"])
def test_synthetic_model_is_deterministic_and_realistic(name, crowd_photo):
    first = synthetic_checkpoint(get_variant(name))
    second = synthetic_checkpoint(get_variant(name))
    assert first.state_dict_sha256 == second.state_dict_sha256
    assert first.synthetic and first.file_sha256 is None
    with torch.inference_mode():
        bbox, cls, landmarks = first.model(torch.from_numpy(photo_input(crowd_photo, 320, 320)))
    # trained-model ranges: regressions of a few units, probabilities spread over (0, 1)
    assert 0.1 < float(bbox.std()) < 3 and float(bbox.abs().max()) < 20
    assert float(cls[..., 1].std()) > 0.05 and float(cls[..., 1].min()) < 0.1 and float(cls[..., 1].max()) > 0.9
    assert np.isfinite(landmarks.numpy()).all()
    running_vars = [v for k, v in first.model.state_dict().items() if k.endswith("running_var")]
    assert all(float(v.min()) > 0 for v in running_vars)


def test_synthetic_seed_changes_weights():
    a = synthetic_state_dict(get_variant("mobilenet0.25"), seed=1)
    b = synthetic_state_dict(get_variant("mobilenet0.25"), seed=2)
    assert not torch.equal(a["body.stage1.0.0.weight"], b["body.stage1.0.0.weight"])
