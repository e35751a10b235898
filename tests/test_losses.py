"""Loss terms, their composition by name, and the VGG16 loss network."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from labdct_live.models.losses import (
    LOSS_TERMS,
    PerceptualLoss,
    VGG16Features,
    dice_loss,
    focal_loss,
    get_loss,
    gram_matrix,
)


def _mask(shape=(1, 1, 8, 8)) -> torch.Tensor:
    target = torch.zeros(shape)
    target[..., 2:4, 2:4] = 1.0  # 4 spot pixels
    return target


@pytest.mark.parametrize("term", ["mse", "l1", "bce", "dice", "focal"])
def test_pixel_terms_vanish_for_a_perfect_prediction(term):
    target = _mask()
    total, parts = get_loss(term)(target.clone(), target)
    assert parts[term] == pytest.approx(0.0, abs=1e-5)
    wrong, _ = get_loss(term)(1.0 - target, target)
    assert float(wrong) > 0.1


def test_dice_closed_form():
    target = _mask()
    prediction = torch.zeros_like(target)
    prediction[..., 2:4, 2:3] = 1.0  # 2 of the 4 spot pixels
    prediction[..., 6:7, 6:8] = 1.0  # and 2 background pixels
    # 1 - (2 * 2 + 1) / (4 + 4 + 1)
    assert float(dice_loss(prediction, target)) == pytest.approx(1 - 5 / 9)


def test_focal_closed_form_and_reduction_to_bce():
    p, t = torch.tensor([0.8, 0.3]), torch.tensor([1.0, 0.0])
    expected = (0.25 * 0.2**2 * -math.log(0.8) + 0.75 * 0.3**2 * -math.log(0.7)) / 2
    assert float(focal_loss(p, t, gamma=2.0, alpha=0.25)) == pytest.approx(expected, rel=1e-5)
    assert float(focal_loss(p, t, gamma=0.0, alpha=-1)) == pytest.approx(
        float(F.binary_cross_entropy(p, t)), rel=1e-5)


def test_gram_matrix_is_normalised_by_c_h_w():
    features = torch.ones(2, 3, 4, 5)
    torch.testing.assert_close(gram_matrix(features), torch.full((2, 3, 3), 1 / 3))
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0] = 2.0
    gram = gram_matrix(features)  # only channel 0: 4 pixels * 2 * 2 / (2 * 2 * 2)
    torch.testing.assert_close(gram[0], torch.tensor([[2.0, 0.0], [0.0, 0.0]]))


def test_composite_loss_weights_and_names():
    target = _mask()
    prediction = torch.full_like(target, 0.5)
    loss = get_loss("mse+dice", weights={"dice": 0.5})
    total, parts = loss(prediction, target)
    assert set(parts) == {"mse", "dice"}
    assert float(total) == pytest.approx(parts["mse"] + 0.5 * parts["dice"], rel=1e-6)
    assert parts["mse"] == pytest.approx(0.25)
    assert set(get_loss("paper").terms) == {"mse", "perceptual"}
    with pytest.raises(ValueError, match="unknown loss term"):
        get_loss("mse+ssim")
    with pytest.raises(ValueError, match="not in loss"):
        get_loss("mse", weights={"dice": 1.0})
    with pytest.raises(ValueError, match="shape"):
        loss(prediction[..., :4], target)
    assert "perceptual" in LOSS_TERMS


def test_vgg16_without_weights_is_fixed_random_and_says_so(caplog, monkeypatch):
    monkeypatch.delenv("LABDCT_VGG16_WEIGHTS", raising=False)
    with caplog.at_level(logging.WARNING):
        first = VGG16Features(["relu1_2", "relu2_2"])
    assert "random weights" in caplog.text
    second = VGG16Features(["relu1_2", "relu2_2"])
    assert not first.pretrained
    torch.testing.assert_close(first.features[2].weight, second.features[2].weight)
    # Only the layers up to the deepest one used are kept, with torchvision's indices.
    assert len(first.features) == 9
    assert all(not p.requires_grad for p in first.parameters())
    x = torch.rand(2, 1, 16, 16)
    out = first(x)
    assert [tuple(f.shape) for f in out] == [(2, 64, 16, 16), (2, 128, 8, 8)]
    first.train()
    assert not first.training
    with pytest.raises(ValueError, match="unknown VGG16 layer"):
        VGG16Features(["conv9_9"])


def test_vgg16_loads_torchvision_layout_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = VGG16Features(["relu5_3"])  # all 30 feature modules
    state = {f"features.{k}": torch.randn_like(v)
             for k, v in reference.features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # classifier keys are ignored
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    monkeypatch.setenv("LABDCT_VGG16_WEIGHTS", str(path))
    loaded = VGG16Features(["relu3_3"])
    assert loaded.pretrained
    torch.testing.assert_close(loaded.features[14].bias, state["features.14.bias"])
    monkeypatch.delenv("LABDCT_VGG16_WEIGHTS")
    with pytest.raises(FileNotFoundError):
        VGG16Features(["relu3_3"], weights_path=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision vgg16"):
        VGG16Features(["relu3_3"], weights_path=bad)


def test_perceptual_loss_is_zero_for_identical_images_and_differentiable():
    torch.manual_seed(1)
    loss = PerceptualLoss()
    target = torch.rand(1, 1, 32, 32)
    assert float(loss(target.clone(), target)) == pytest.approx(0.0, abs=1e-6)
    prediction = torch.rand(1, 1, 32, 32, requires_grad=True)
    value = loss(prediction, target)
    value.backward()
    assert float(value.detach()) > 0 and float(prediction.grad.abs().sum()) > 0
    total, parts = get_loss("paper")(prediction.detach(), target)
    assert float(total) == pytest.approx(parts["mse"] + parts["perceptual"], rel=1e-5)
    with pytest.raises(ValueError, match="one per layer"):
        PerceptualLoss(feature_weights=[1.0])
