"""Networks, registry, checkpoints and shipped-weights loading (labdct_live.models)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

import labdct_live.models as models
import labdct_live.models.pretrained as pretrained
from labdct_live.models import (
    CheckpointError,
    PretrainedWeightsNotFoundError,
    export_checkpoint,
    get_model,
    list_models,
    load_checkpoint,
    load_model,
    load_pretrained,
    load_resnet34_weights,
    save_checkpoint,
)
from labdct_live.models.compact import CompactUNet
from labdct_live.models.layers import PixelShuffleICNR, icnr_
from labdct_live.models.resnet_unet import ResNet34Encoder, ResNet34UNet


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_model_maps_1_channel_to_1_channel_in_unit_range(name):
    torch.manual_seed(0)
    model = get_model(name).eval()
    stride = model.input_multiple
    x = torch.randn(2, 1, 2 * stride, 3 * stride)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert model.architecture["name"] == name
    with pytest.raises(ValueError, match=f"multiples of {stride}"):
        model(torch.zeros(1, 1, stride + 1, stride))


def test_resnet34_unet_has_the_papers_54_convs_and_torchvision_resnet34_size():
    model = ResNet34UNet()
    assert _count(model, nn.Conv2d) == 54
    # torchvision resnet34: 21 797 672 parameters, of which the fc layer has 512*1000 + 1000.
    rgb_encoder = ResNet34Encoder(in_channels=3)
    assert sum(p.numel() for p in rgb_encoder.parameters()) == 21_797_672 - 513_000
    keys = set(rgb_encoder.state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.2.conv2.weight",
                "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias",
                "layer3.5.bn2.num_batches_tracked", "layer4.2.bn2.weight"):
        assert key in keys
    assert model.input_multiple == 32


def test_load_resnet34_weights_sums_rgb_stem_and_rejects_bad_files(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = ResNet34Encoder(in_channels=3).state_dict()
    source["fc.weight"], source["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet34.pth"
    torch.save(source, path)
    model = get_model("resnet34_unet")
    assert load_resnet34_weights(model, path) == path
    assert model.encoder_pretrained is True
    encoder = model.encoder
    torch.testing.assert_close(encoder.conv1.weight, source["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(encoder.layer3[2].conv1.weight, source["layer3.2.conv1.weight"])

    monkeypatch.delenv("LABDCT_RESNET34_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="LABDCT_RESNET34_WEIGHTS"):
        load_resnet34_weights(get_model("resnet34_unet"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(ValueError, match="not a torchvision resnet34"):
        load_resnet34_weights(get_model("resnet34_unet"), wrong)


def test_icnr_makes_pixel_shuffle_start_as_nearest_neighbour_upsampling():
    torch.manual_seed(2)
    weight = icnr_(torch.empty(12, 5, 1, 1), scale=2)
    for c in range(3):  # each output channel's 4 sub-pixel kernels are identical
        for i in range(1, 4):
            assert torch.equal(weight[4 * c + i], weight[4 * c])
    up = PixelShuffleICNR(5, 3).eval()
    with torch.no_grad():
        y = up(torch.randn(1, 5, 4, 6))
    assert y.shape == (1, 3, 8, 12)
    blocks = y.reshape(1, 3, 4, 2, 6, 2)
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    with pytest.raises(ValueError, match="divisible"):
        icnr_(torch.empty(6, 5, 1, 1), scale=2)


def test_compact_unet_stride_and_invalid_configs():
    assert CompactUNet(unshuffle=4, widths=(8, 16, 32)).input_multiple == 16
    assert CompactUNet(unshuffle=1, widths=(8, 16, 32, 64)).input_multiple == 8
    assert _count(CompactUNet(unshuffle=2, widths=(8, 16)), nn.PixelUnshuffle) == 1
    assert _count(CompactUNet(unshuffle=1, widths=(8, 16)), nn.PixelUnshuffle) == 0
    with pytest.raises(ValueError, match="unshuffle"):
        CompactUNet(unshuffle=0)
    with pytest.raises(ValueError, match="widths"):
        CompactUNet(widths=())
    with pytest.raises(ValueError, match="upsample"):
        CompactUNet(upsample="bicubic")


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="compact_s4"):
        get_model("resnet50_unet")
    with pytest.raises(ValueError, match="no option"):
        get_model("compact_s4", depth=3)
    model = get_model("compact_tiny", widths=(8, 16))
    assert model.architecture["config"]["widths"] == [8, 16]
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("compact_s4", CompactUNet)


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = get_model("compact_tiny", widths=[8, 16])
    # Non-trivial batch-norm statistics, so that the round trip must carry buffers too.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_checkpoint_round_trip_restores_outputs_and_metadata(tmp_path):
    model = _tiny()
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, training={"lr": 1e-3},
                           data={"kind": "test"}, metrics={"f1": np.float64(0.75)},
                           inference={"threshold": 0.4})
    raw = torch.load(path, weights_only=True)  # plain values only
    assert raw["format"] == "labdct-live-checkpoint" and raw["metrics"]["f1"] == 0.75
    assert type(raw["metrics"]["f1"]) is float
    loaded = load_model(path)
    x = torch.randn(1, 1, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.architecture == model.architecture
    assert loaded.metadata["inference"]["threshold"] == 0.4
    assert loaded.metadata["data"] == {"kind": "test"}
    assert not loaded.training
    assert not list(tmp_path.glob("sub/.*partial"))


def test_checkpoint_errors_are_clear(tmp_path):
    model = _tiny()
    good = save_checkpoint(tmp_path / "good.pt", model)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="not a labdct-live checkpoint"):
        load_model(bare)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")

    checkpoint = load_checkpoint(good)
    mismatched = dict(checkpoint, architecture={"name": "compact_tiny",
                                                "config": {**checkpoint["architecture"]["config"],
                                                           "widths": [8, 32]}})
    torch.save(mismatched, tmp_path / "mismatched.pt")
    with pytest.raises(CheckpointError, match="do not match architecture"):
        load_model(tmp_path / "mismatched.pt")
    other = dict(checkpoint, architecture={"name": "compact_s2", "config": {}})
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="do not match architecture"):
        load_model(tmp_path / "other.pt")
    unknown = dict(checkpoint, architecture={"name": "mystery_net", "config": {}})
    torch.save(unknown, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="unknown to this labdct-live"):
        load_model(tmp_path / "unknown.pt")
    newer = dict(checkpoint, format_version=99)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_model(tmp_path / "newer.pt")

    with pytest.raises(TypeError, match="metrics"):
        save_checkpoint(tmp_path / "bad.pt", model, metrics={"when": object()})
    with pytest.raises(ValueError, match="get_model"):
        save_checkpoint(tmp_path / "bad.pt", nn.Conv2d(1, 1, 1))
    assert isinstance(CheckpointError("x"), ValueError)
    assert pickle.loads(pickle.dumps(CheckpointError("x"))).args == ("x",)


def test_load_pretrained_names_what_is_missing_and_loads_shipped_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(PretrainedWeightsNotFoundError, match=r"compact_tiny\.pt is missing"):
        load_pretrained("compact_tiny")
    model = _tiny()
    save_checkpoint(tmp_path / "weights" / "compact_tiny.pt", model, inference={"threshold": 0.3})
    loaded = load_pretrained("compact_tiny")
    assert loaded.metadata["inference"]["threshold"] == 0.3
    assert isinstance(PretrainedWeightsNotFoundError("x"), FileNotFoundError)


def test_export_checkpoint_for_shipping_halves_the_file(tmp_path):
    model = _tiny()
    source = save_checkpoint(tmp_path / "run" / "model.pt", model, metrics={"f1": 0.5},
                             train_state={"step": 3})
    shipped = export_checkpoint(source, tmp_path / "weights" / "compact_tiny.pt", threshold=0.35,
                                metrics={"spot_f1": 0.8})
    raw = torch.load(shipped, weights_only=True)
    assert "train_state" not in raw
    assert raw["state_dict"]["head.weight"].dtype == torch.float16
    assert shipped.stat().st_size < 0.7 * source.stat().st_size
    loaded = load_model(shipped)
    assert loaded.metadata["inference"]["threshold"] == 0.35
    assert loaded.metadata["metrics"] == {"f1": 0.5, "spot_f1": 0.8}
    assert loaded.head.weight.dtype == torch.float32
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=5e-3)
    with pytest.raises(ValueError, match="threshold"):
        export_checkpoint(source, tmp_path / "x.pt", threshold=2.0)
