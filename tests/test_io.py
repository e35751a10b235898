"""Reading frame folders and writing output atomically (labdct_live.io)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from labdct_live.io.frames import (
    EmptyFolderError,
    FrameReadError,
    check_frame,
    natural_key,
    open_frame_folder,
    read_frame,
)
from labdct_live.io.output import OUTPUT_MARKER, AtomicOutputDir
from labdct_live.io.tiff import write_mask_tiff


@pytest.mark.filterwarnings("ignore:<tifffile.TiffWriter.write>:DeprecationWarning")
def test_folder_of_mixed_files_in_natural_order(tmp_path):
    """(3, rows, cols) is stored by tifffile as planar samples of one page: still 3 frames."""
    rng = np.random.default_rng(0)
    single = rng.integers(0, 65535, (12, 9), dtype=np.uint16)
    stack = rng.normal(size=(3, 12, 9)).astype(np.float32)
    tifffile.imwrite(tmp_path / "proj_10.tif", single)
    tifffile.imwrite(tmp_path / "proj_2.tiff", stack)
    tifffile.imwrite(tmp_path / "proj_1.TIF", single.astype(np.int32) - 100)
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = open_frame_folder(tmp_path)
    assert frames.names == ["proj_1.TIF", "proj_2.tiff#0", "proj_2.tiff#1", "proj_2.tiff#2",
                            "proj_10.tif"]
    assert len(frames) == 5 and frames.shape == (12, 9)
    np.testing.assert_array_equal(frames[0], single.astype(np.int32) - 100)
    np.testing.assert_array_equal(frames[2], stack[1])
    np.testing.assert_array_equal(frames[-1], single)
    assert frames.load().shape == (5, 12, 9)


def test_stack_read_page_by_page(tmp_path):
    stack = np.arange(7 * 5 * 4, dtype=np.uint16).reshape(7, 5, 4)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    frames = open_frame_folder(tmp_path)
    assert len(frames) == 7
    np.testing.assert_array_equal(frames[5], stack[5])


def test_natural_key_orders_numbers_numerically():
    assert sorted(["a10", "a9", "a100"], key=natural_key) == ["a9", "a10", "a100"]


@pytest.mark.parametrize("make", ["missing", "empty", "only_other_files"])
def test_empty_or_missing_folder_is_a_clear_error(tmp_path, make):
    folder = tmp_path / "frames"
    if make != "missing":
        folder.mkdir()
    if make == "only_other_files":
        (folder / "readme.md").write_text("x")
    with pytest.raises(EmptyFolderError, match="frame"):
        open_frame_folder(folder)


def test_unreadable_file_is_named(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4), np.uint16))
    (tmp_path / "b.tif").write_bytes(b"this is not a tiff file at all")
    with pytest.raises(FrameReadError, match="b.tif.*cannot be read"):
        open_frame_folder(tmp_path)


def test_colour_image_is_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(FrameReadError, match="grayscale"):
        open_frame_folder(tmp_path)


def test_frames_of_different_sizes_are_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((8, 9), np.uint16))
    with pytest.raises(FrameReadError, match=r"b.tif.*\(8, 9\) differs"):
        open_frame_folder(tmp_path)


def test_complex_pixels_are_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((8, 8), np.complex64))
    with pytest.raises(FrameReadError, match="pixel type complex64"):
        open_frame_folder(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_pixels_are_reported_when_read(tmp_path, bad):
    frame = np.ones((6, 6), np.float32)
    frame[2, 3] = bad
    frame[4, 4] = bad
    tifffile.imwrite(tmp_path / "f.tif", frame)
    frames = open_frame_folder(tmp_path)
    with pytest.raises(FrameReadError, match="f.tif: 2 pixel"):
        frames[0]


@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 4, 5)), "2-D"),
    (np.zeros((0, 4)), "empty"),
    (np.zeros((3, 3), bool), "pixel type bool"),
    (np.array([["a"]]), "pixel type"),
])
def test_check_frame_rejects(array, message):
    with pytest.raises(FrameReadError, match=message):
        check_frame(array)


def test_read_frame_page_out_of_range(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 4, 4), np.uint16))
    assert read_frame(tmp_path / "s.tif", 1).shape == (4, 4)
    with pytest.raises(FrameReadError, match="has 2 frame"):
        read_frame(tmp_path / "s.tif", 2)


def test_mask_written_as_0_255_without_leftovers(tmp_path):
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    path = write_mask_tiff(tmp_path / "m.tif", mask)
    np.testing.assert_array_equal(tifffile.imread(path), mask * 255)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_atomic_output_dir_appears_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with AtomicOutputDir(final) as tmp:
            (tmp / "half.tif").write_text("x")
            raise RuntimeError("interrupted")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with AtomicOutputDir(final) as tmp:
        (tmp / "done.txt").write_text("x")
    assert sorted(p.name for p in final.iterdir()) == [OUTPUT_MARKER, "done.txt"]
    with pytest.raises(FileExistsError, match="not empty"):
        AtomicOutputDir(final)
    with AtomicOutputDir(final, overwrite=True) as tmp:  # replaces: it holds the marker
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == [OUTPUT_MARKER, "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
