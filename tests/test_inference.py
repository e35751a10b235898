"""Inference engine: padding, tiling and blending, normalisation, thresholds, CLI denoise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from labdct_live.cli import main
from labdct_live.models import Denoiser, denoise, get_model, save_checkpoint, segment_dl
from labdct_live.models.inference import DEFAULT_MIN_SIZE, tile_starts
from labdct_live.segmentation.threshold import threshold_segment
from labdct_live.training.synthesis import normalize_frame


class SigmoidOfInput(nn.Module):
    """A 'network' whose exact output is known: sigmoid of the input, pixel by pixel.

    Any error in padding, tile placement, blending or cropping shows up as a mismatch.
    """

    input_multiple = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


def _frame(shape, seed=0):
    rng = np.random.default_rng(seed)
    frame = rng.poisson(600, shape).astype(np.uint16)
    frame[shape[0] // 3, shape[1] // 2] = 5000  # a bright pixel: normalisation must not clip
    return frame


@pytest.mark.parametrize("shape", [(37, 53), (100, 70), (1, 5), (130, 16)])
def test_output_is_float32_same_shape_and_exact_for_a_known_network(shape):
    frame = _frame(shape)
    expected = 1.0 / (1.0 + np.exp(-normalize_frame(frame).astype(np.float64)))
    for tile in (None, 32):
        out = denoise(frame, SigmoidOfInput(), tile=tile, overlap=16, batch_size=3, device="cpu")
        assert out.shape == shape and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(45, 61), (96, 80)])
def test_real_network_output_shape_dtype_range(shape):
    torch.manual_seed(0)
    out = denoise(_frame(shape), get_model("compact_s2").eval(), device="cpu")
    assert out.shape == shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_tiled_and_whole_frame_agree_when_half_overlap_exceeds_receptive_field():
    # compact_tiny with 2 levels: 3x3 conv at 1/4 resolution, a stride-2 level, a 3x3 fuse
    # conv: receptive-field radius ~ 4 * (1 + 2 + 1) + 3 = 19 px < overlap / 2 = 32 px.
    torch.manual_seed(3)
    model = get_model("compact_tiny", widths=[8, 16]).eval()
    frame = _frame((300, 410), seed=4)
    whole = denoise(frame, model, device="cpu")
    tiled = denoise(frame, model, tile=128, overlap=64, batch_size=4, device="cpu")
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_tiled_and_whole_frame_close_for_the_default_architecture():
    torch.manual_seed(5)
    model = get_model("compact_s4").eval()
    frame = _frame((600, 700), seed=6)
    whole = denoise(frame, model, device="cpu")
    tiled = denoise(frame, model, tile=512, overlap=128, device="cpu")
    # Untrained weights have a receptive field beyond the overlap; the error stays small.
    assert np.abs(tiled - whole).mean() < 2e-3
    assert np.abs(tiled - whole).max() < 0.05


def test_tile_starts_cover_with_overlap_and_stride_alignment():
    assert tile_starts(100, 128, 32, 16) == [0]
    assert tile_starts(256, 128, 0, 16) == [0, 128]
    for length, tile, overlap, stride in [(704, 256, 64, 16), (2048, 512, 128, 32),
                                          (608, 256, 128, 16), (264, 256, 64, 8)]:
        starts = tile_starts(length, tile, overlap, stride)
        assert starts[0] == 0 and starts[-1] == length - tile
        assert all(s % stride == 0 for s in starts)
        assert all(tile - (b - a) >= overlap for a, b in zip(starts, starts[1:]))
        fewer = len(starts) - 1  # with one tile less, the overlap could not be kept
        assert fewer == 1 or (length - tile) / (fewer - 1) > tile - overlap


def test_normalisation_is_per_frame_and_affine_invariant():
    torch.manual_seed(1)
    model = get_model("compact_tiny").eval()
    frame = _frame((64, 96), seed=2)
    out = denoise(frame, model, device="cpu")
    prenormalised = denoise(normalize_frame(frame), model, device="cpu", normalize=False)
    np.testing.assert_allclose(out, prenormalised, atol=1e-6)
    # A detector with 3x the gain and an offset gives the same normalised frame.
    brighter = frame.astype(np.float64) * 3 + 100
    np.testing.assert_allclose(denoise(brighter, model, device="cpu"), out, atol=1e-5)


def test_segment_dl_thresholds_the_denoised_image():
    frame = _frame((50, 60), seed=8)
    probability = 1.0 / (1.0 + np.exp(-normalize_frame(frame)))
    mask = segment_dl(frame, 0.6, SigmoidOfInput(), device="cpu", min_size=1)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (probability > 0.6).astype(np.uint8))
    model = SigmoidOfInput()
    model.metadata = {"inference": {"threshold": 0.7}}  # as load_model attaches
    np.testing.assert_array_equal(segment_dl(frame, model=model, device="cpu", min_size=1),
                                  (probability > 0.7).astype(np.uint8))
    # The default drops lone pixels and the beam stop, as the live plugin does.
    beamstop = np.zeros(frame.shape, bool)
    beamstop[:10] = True
    np.testing.assert_array_equal(
        segment_dl(frame, 0.6, SigmoidOfInput(), device="cpu", exclude=beamstop),
        threshold_segment(probability, 0.6, DEFAULT_MIN_SIZE, beamstop))
    assert Denoiser(SigmoidOfInput(), device="cpu").threshold == 0.5
    with pytest.raises(ValueError, match="threshold"):
        segment_dl(frame, 1.5, SigmoidOfInput(), device="cpu")


def test_bfloat16_precision_is_close_to_float32():
    torch.manual_seed(2)
    model = get_model("compact_tiny").eval()
    frame = _frame((64, 64), seed=3)
    full = denoise(frame, model, device="cpu")
    half = denoise(frame, model, device="cpu", precision="bfloat16")
    assert half.dtype == np.float32
    assert np.abs(half - full).max() < 0.05


def test_threads_setting_is_restored_and_bad_options_raise():
    before = torch.get_num_threads()
    denoise(_frame((32, 32)), SigmoidOfInput(), threads=1, device="cpu")
    assert torch.get_num_threads() == before
    model = SigmoidOfInput()
    with pytest.raises(ValueError, match="2-D"):
        denoise(np.zeros((2, 8, 8)), model, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        denoise(np.full((8, 8), np.nan), model, device="cpu", normalize=False)
    with pytest.raises(ValueError, match="half the tile"):
        Denoiser(model, tile=64, overlap=48, device="cpu")
    assert Denoiser(model, tile=64, device="cpu").overlap == 32  # default: at most half
    assert Denoiser(model, tile=1024, device="cpu").overlap == 256
    with pytest.raises(ValueError, match="larger tile"):
        Denoiser(model, tile=16, overlap=8, device="cpu")
    with pytest.raises(ValueError, match="precision"):
        Denoiser(model, precision="int4", device="cpu")
    with pytest.raises(ValueError, match="threads"):
        denoise(_frame((32, 32)), model, threads=0, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Denoiser(model, device="cuda")


def test_cli_denoise_writes_float_and_uint8_images(tmp_path):
    torch.manual_seed(0)
    model = get_model("compact_tiny").eval()
    checkpoint = save_checkpoint(tmp_path / "model.pt", model)
    frames = tmp_path / "frames"
    frames.mkdir()
    tifffile.imwrite(frames / "proj_0001.tif", _frame((40, 52), seed=1))
    tifffile.imwrite(frames / "proj_0002.tif", _frame((40, 52), seed=2))
    tifffile.imwrite(frames / "stack.tif", np.stack([_frame((40, 52), seed=s) for s in (3, 4)]))

    assert main(["denoise", str(frames), str(tmp_path / "out"), "--model", str(checkpoint),
                 "--device", "cpu"]) == 0
    first = tifffile.imread(tmp_path / "out" / "proj_0001.tif")
    assert first.dtype == np.float32 and first.shape == (40, 52)
    expected = denoise(_frame((40, 52), seed=1), model, device="cpu")
    np.testing.assert_allclose(first, expected, atol=1e-6)
    stack = tifffile.imread(tmp_path / "out" / "stack.tif")
    assert stack.shape == (2, 40, 52)
    np.testing.assert_allclose(stack[1], denoise(_frame((40, 52), seed=4), model, device="cpu"),
                               atol=1e-6)
    settings = json.loads((tmp_path / "out" / "denoise.json").read_text())
    assert settings["n_frames"] == 4 and settings["architecture"]["name"] == "compact_tiny"

    assert main(["denoise", str(frames), str(tmp_path / "out8"), "--model", str(checkpoint),
                 "--device", "cpu", "--format", "uint8"]) == 0
    eight = tifffile.imread(tmp_path / "out8" / "proj_0001.tif")
    assert eight.dtype == np.uint8
    assert np.abs(eight.astype(int) - np.rint(expected * 255)).max() <= 1
    # A second run into the same folder needs --overwrite; a missing checkpoint is an error.
    assert main(["denoise", str(frames), str(tmp_path / "out"), "--model", str(checkpoint)]) == 2
    assert main(["denoise", str(frames), str(tmp_path / "o2"), "--model",
                 str(tmp_path / "nope.pt")]) == 2


def test_the_three_dl_paths_give_byte_identical_masks(tmp_path, simulator):
    """``segment_dl``, the live/replay ``dl`` method and ``labdct-live segment --method dl``
    share one implementation: the same frame gives the same mask, beam stop included."""
    from labdct_live.methods import DLMethod

    frame = simulator.project(omega=10.0).frame
    beamstop = simulator.geometry.beamstop_mask()
    functional = segment_dl(frame, exclude=beamstop)
    live = DLMethod(exclude=beamstop).push(0, frame)[0].binary
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "f.tif", frame)
    r0, r1, c0, c1 = simulator.geometry.beamstop
    assert main(["segment", "--method", "dl", "--beamstop", f"{r0},{r1},{c0},{c1}",
                 str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    cli = (tifffile.imread(tmp_path / "out" / "f.tif") > 0).astype(np.uint8)
    assert functional.any()
    assert functional.tobytes() == live.tobytes() == cli.tobytes()
    assert not functional[beamstop].any()
