"""Frame reading from video files (decord) and JPEG folders, and their error messages."""
import os

import numpy as np
import pytest

from mgnet.data.errors import DataError
from mgnet.data.video import JpegFolder, VideoFile, open_frames

from ._fixtures import frames_pattern, write_jpegs, write_video


def test_video_file_reads_batches(tmp_path):
    frames = frames_pattern(20, 64, 48)
    p = str(tmp_path / "v.avi")
    write_video(p, frames)
    src = open_frames(p)
    assert isinstance(src, VideoFile) and len(src) == 20 and src.size == (64, 48)
    got = src.get([0, 5, 19])
    assert got.shape == (3, 48, 64, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - frames[[0, 5, 19]]).mean() < 4  # lossy codec, smooth frames
    chunks = list(src.iter_chunks(8))
    assert [s for s, _ in chunks] == [0, 8, 16] and sum(len(c) for _, c in chunks) == 20


def test_jpeg_folder(tmp_path):
    frames = frames_pattern(5, 32, 24)
    write_jpegs(tmp_path / "f", frames)
    src = open_frames(tmp_path / "f")
    assert isinstance(src, JpegFolder) and len(src) == 5 and src.size == (32, 24)
    assert np.abs(src.get([4]).astype(int) - frames[[4]]).mean() < 4


def test_jpeg_folder_gap_is_an_error(tmp_path):
    write_jpegs(tmp_path / "f", frames_pattern(4, 16, 16))
    os.remove(tmp_path / "f" / "002.jpg")
    with pytest.raises(DataError, match="not consecutive after 001.jpg"):
        JpegFolder(tmp_path / "f")


def test_corrupt_video_names_file(tmp_path):
    p = tmp_path / "broken.avi"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(DataError, match="video does not decode") as e:
        open_frames(p)
    assert str(p) in str(e.value)


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_frames(tmp_path / "none.mp4")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match="holds no images"):
        open_frames(tmp_path / "empty")
