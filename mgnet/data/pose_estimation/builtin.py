"""The built-in pose estimator: MediaPipe BlazePose (the models inside the mediapipe 0.10.21 wheel).

BlazePose finds ONE person per image (its detector keys on the face, then a landmark model reads 33
body landmarks). Several people per frame, as surveillance video has, come from three sources of
regions, each run through BlazePose and then blanked out of a working copy of the frame so the
next pass finds somebody else:

1. the people of the previous frame: a square crop around each one's keypoints (``roi_scale`` x
   the larger side of the keypoint box), i.e. BlazePose's own tracking, per person;
2. discovery: BlazePose on the whole (blanked) frame, repeated until it finds nobody new or
   ``max_people`` are found, on every ``detect_every``-th frame; ``tiles=n`` also runs it on an
   n x n grid of overlapping tiles (finds smaller people, costs n^2 more passes);
3. ``detector="hog"`` adds OpenCV's HOG people detector's boxes as crops (no download; measured
   weaker than discovery here, see the README).

The 33 landmarks map to COCO-17 (``BLAZEPOSE33_TO_COCO17``) with the landmark visibility as the
score; a pose is kept when its mean COCO-17 visibility is >= ``min_score``. Only model_complexity=1
(pose_landmark_full) ships in the wheel: complexity 0 and 2 download at run time and fail offline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import box_matrix, dedup, outside_to_zero, require, to_frame, warp

__all__ = ["BLAZEPOSE33_TO_COCO17", "BuiltinSettings", "BlazePoseEstimator"]

# BlazePose: 0 nose, 2 l-eye, 5 r-eye, 7 l-ear, 8 r-ear, 11/12 shoulders, 13/14 elbows, 15/16 wrists,
# 23/24 hips, 25/26 knees, 27/28 ankles (left first; the person's left). COCO-17 joint i is
# BlazePose landmark BLAZEPOSE33_TO_COCO17[i]:
BLAZEPOSE33_TO_COCO17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)

CROP = 256  # side of the square crop a region is warped to before BlazePose


@dataclass(frozen=True)
class BuiltinSettings:
    detector: str = "blazepose"   # "blazepose" (discovery passes) or "hog" (discovery + HOG boxes)
    max_people: int = 8
    detect_every: int = 1
    tiles: int = 1
    min_score: float = 0.5
    roi_scale: float = 2.0

    def check(self) -> "BuiltinSettings":
        from .common import PoseEstimatorError
        if self.detector not in ("blazepose", "hog"):
            raise PoseEstimatorError(None, f"builtin pose estimator: detector must be 'blazepose' or 'hog', got {self.detector!r}")
        for k in ("max_people", "detect_every", "tiles"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise PoseEstimatorError(None, f"builtin pose estimator: {k} must be an integer >= 1, got {getattr(self, k)!r}")
        if not 0.0 <= float(self.min_score) <= 1.0 or float(self.roi_scale) <= 1.0:
            raise PoseEstimatorError(None, "builtin pose estimator: min_score must be in [0, 1] and roi_scale > 1")
        return self


class BlazePoseEstimator:
    """``est(frame_rgb, index) -> (N, 17, 3)`` float32 COCO-17 poses (x, y, visibility) of one frame.

    Frames must come in order (the previous frame's people seed the next one's crops); ``reset()``
    between videos.
    """

    def __init__(self, settings: BuiltinSettings = BuiltinSettings()):
        self.settings = settings.check()
        mp = require("mediapipe", "the builtin pose estimator")
        self._cv2 = require("cv2", "the builtin pose estimator")
        if not hasattr(mp, "solutions"):
            from .common import PoseEstimatorError
            raise PoseEstimatorError(None, f"the builtin pose estimator needs mediapipe 0.10.21 (its wheel ships the "
                                           f"pose models); found mediapipe {getattr(mp, '__version__', '?')}")
        # static_image_mode: every call detects afresh (crops of different people share one graph)
        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                            enable_segmentation=False, min_detection_confidence=0.5)
        self._hog = None
        if settings.detector == "hog":
            self._hog = self._cv2.HOGDescriptor()
            self._hog.setSVMDetector(self._cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.reset()

    def reset(self) -> None:
        self._prev: list[np.ndarray] = []
        self._count = 0

    def close(self) -> None:
        self._pose.close()

    # ----------------------------------------------------------------- one BlazePose pass
    def _landmarks(self, image: np.ndarray):
        """(17, 3) COCO-17 in ``image`` pixels, or None if BlazePose finds nobody / too unsure."""
        res = self._pose.process(image)
        if res.pose_landmarks is None:
            return None
        lm = res.pose_landmarks.landmark
        h, w = image.shape[:2]
        kp = np.array([[lm[i].x * w, lm[i].y * h, lm[i].visibility] for i in BLAZEPOSE33_TO_COCO17], np.float64)
        if kp[:, 2].mean() < self.settings.min_score:
            return None
        return kp

    def _in_region(self, work: np.ndarray, cx, cy, side):
        m = box_matrix(cx, cy, side, side, CROP, CROP)
        kp = self._landmarks(warp(work, m, CROP, CROP))
        if kp is None:
            return None
        kp[:, :2] = to_frame(kp[:, :2], m)
        return kp

    def _in_window(self, work: np.ndarray, x0, y0, x1, y1):
        kp = self._landmarks(np.ascontiguousarray(work[y0:y1, x0:x1]))
        if kp is not None:
            kp[:, 0] += x0
            kp[:, 1] += y0
        return kp

    @staticmethod
    def _blank(work: np.ndarray, kp: np.ndarray) -> None:
        ok = kp[:, 2] > 0.3
        pts = kp[ok, :2] if ok.sum() >= 2 else kp[:, :2]
        (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
        w, h = x2 - x1, y2 - y1
        H, W = work.shape[:2]
        ya, yb = int(max(0, y1 - 0.25 * h)), int(min(H, y2 + 0.1 * h + 1))
        xa, xb = int(max(0, x1 - 0.25 * w)), int(min(W, x2 + 0.25 * w + 1))
        if yb > ya and xb > xa:
            work[ya:yb, xa:xb] = 114

    def _windows(self, W: int, H: int):
        n = self.settings.tiles
        yield 0, 0, W, H
        if n > 1:
            tw, th = int(np.ceil(W / n * 1.25)), int(np.ceil(H / n * 1.25))
            for i in range(n):
                for j in range(n):
                    x0 = int(round(j * (W - tw) / (n - 1)))
                    y0 = int(round(i * (H - th) / (n - 1)))
                    yield x0, y0, x0 + tw, y0 + th

    # ----------------------------------------------------------------- one frame
    def __call__(self, frame: np.ndarray, index: int | None = None) -> np.ndarray:
        s = self.settings
        H, W = frame.shape[:2]
        work = np.array(frame, np.uint8, copy=True)
        found: list[np.ndarray] = []

        def take(kp) -> bool:
            if kp is None or len(found) >= s.max_people or len(dedup(found + [kp])) == len(found):
                return False
            found.append(kp)
            self._blank(work, kp)
            return True

        for prev in self._prev:  # 1. last frame's people, each in its own crop
            ok = prev[:, 2] > 0.3
            pts = prev[ok, :2] if ok.sum() >= 2 else prev[:, :2]
            (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
            take(self._in_region(work, (x1 + x2) / 2, (y1 + y2) / 2, s.roi_scale * max(x2 - x1, y2 - y1, 8.0)))
        if self._count % s.detect_every == 0 or not found:  # 2. discovery on what is left
            for x0, y0, x1, y1 in self._windows(W, H):
                while len(found) < s.max_people and take(self._in_window(work, x0, y0, x1, y1)):
                    pass
            if self._hog is not None:  # 3. HOG boxes (person ~ 3/4 of the 64x128 window's height)
                gray = self._cv2.cvtColor(work, self._cv2.COLOR_RGB2GRAY)
                boxes, _ = self._hog.detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)
                for bx, by, bw, bh in np.asarray(boxes).reshape(-1, 4):
                    take(self._in_region(work, bx + bw / 2, by + bh / 2, s.roi_scale * 0.75 * bh))
        self._count += 1
        self._prev = [k.copy() for k in found]
        if not found:
            return np.zeros((0, 17, 3), np.float32)
        return outside_to_zero(np.stack(found), W, H)
