"""Frame reading from a video file (decord, batched reads) or a folder of JPEG frames.

`open_frames(path)` returns a `FrameSource`: ``len(src)`` frames of ``src.size == (W, H)``, and
``src.get(indices) -> (N, H, W, 3) uint8 RGB``. Failures raise DataError naming the file.
"""
from __future__ import annotations

import os
import re

import numpy as np

from .errors import DataError

VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class FrameSource:
    path: str
    size: tuple  # (W, H)
    fps: float = 0.0  # frames per second as the container states it; 0.0 where unknown (JPEG folders)

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, indices) -> np.ndarray:
        raise NotImplementedError

    def iter_chunks(self, chunk: int = 64):
        """Yield (first_index, frames (n, H, W, 3) uint8) over the whole source, `chunk` frames at a time."""
        for s in range(0, len(self), chunk):
            yield s, self.get(np.arange(s, min(s + chunk, len(self))))


class VideoFile(FrameSource):
    """A video file read with decord (batched `get_batch`)."""

    def __init__(self, path):
        import decord  # deferred: importing decord is slow-ish and optional for JPEG-only use
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DataError(self.path, "video file not found")
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=1)
            n = len(self._vr)
            if n == 0:
                raise RuntimeError("no frames")
            first = self._vr[0].asnumpy()
        except DataError:
            raise
        except Exception as e:  # decord raises its own DECORDError / RuntimeError types
            raise DataError(self.path, f"video does not decode ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self._n = n
        self.size = (int(first.shape[1]), int(first.shape[0]))
        try:
            fps = float(self._vr.get_avg_fps())
        except Exception:  # containers without a frame rate
            fps = 0.0
        self.fps = fps if fps > 0 and fps == fps and fps != float("inf") else 0.0

    def __len__(self):
        return self._n

    def get(self, indices):
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self._n):
            raise DataError(self.path, f"frame index out of range [0, {self._n})")
        try:
            return self._vr.get_batch(indices.tolist()).asnumpy()
        except Exception as e:
            raise DataError(self.path, f"video does not decode at frames {indices[0]}..{indices[-1]} "
                                       f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _frame_number(name):
    m = re.search(r"(\d+)(?=\.[^.]+$)", name)
    return int(m.group(1)) if m else None


class JpegFolder(FrameSource):
    """A folder of frame images named with their frame number (ShanghaiTech: 000.jpg, 001.jpg, ...),
    sorted numerically; numbering must be consecutive from the first file."""

    def __init__(self, path):
        from PIL import Image
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DataError(self.path, "frame folder not found")
        names = [n for n in os.listdir(self.path) if n.lower().endswith(IMAGE_EXTS)]
        if not names:
            raise DataError(self.path, "frame folder holds no images (.jpg/.png)")
        nums = [_frame_number(n) for n in names]
        if any(n is None for n in nums):
            bad = names[nums.index(None)]
            raise DataError(os.path.join(self.path, bad), "frame image name holds no frame number")
        order = np.argsort(nums, kind="stable")
        self._files = [os.path.join(self.path, names[i]) for i in order]
        nums = np.asarray(nums)[order]
        if np.any(np.diff(nums) != 1):
            k = int(np.nonzero(np.diff(nums) != 1)[0][0])
            raise DataError(self.path, f"frame numbers are not consecutive after {os.path.basename(self._files[k])}")
        first = self._read(0, Image)
        self.size = (first.shape[1], first.shape[0])

    def _read(self, i, Image):
        try:
            with Image.open(self._files[i]) as im:
                return np.asarray(im.convert("RGB"))
        except Exception as e:
            raise DataError(self._files[i], f"image does not decode ({e})") from None

    def __len__(self):
        return len(self._files)

    def get(self, indices):
        from PIL import Image
        indices = np.asarray(indices, np.int64)
        w, h = self.size
        out = np.empty((len(indices), h, w, 3), np.uint8)
        for j, i in enumerate(indices):
            if i < 0 or i >= len(self._files):
                raise DataError(self.path, f"frame index {i} out of range [0, {len(self._files)})")
            im = self._read(int(i), Image)
            if im.shape[:2] != (h, w):
                raise DataError(self._files[i], f"frame size {im.shape[1]}x{im.shape[0]} differs from the first frame's {w}x{h}")
            out[j] = im
        return out


def open_frames(path) -> FrameSource:
    """A video file (decord) or a folder of frame images, chosen by what `path` is."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return JpegFolder(path)
    if not os.path.exists(path):
        raise DataError(path, "video file or frame folder not found")
    return VideoFile(path)
