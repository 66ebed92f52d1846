"""The ONNX pose estimator: RTMPose (+ a YOLOX person detector) or RTMO, run through onnxruntime.

For users who have the exported models (mmdeploy ``end2end.onnx`` files, as rtmlib and the MMPose
model zoo ship them); nothing is downloaded. The model kind is read from the output names:

``simcc_x``, ``simcc_y``   RTMPose (top-down): input ``(N, 3, H, W)`` (typically 256 x 192) person
                           crop, RGB normalised with ImageNet mean/std; outputs ``(N, K, W*r)`` and
                           ``(N, K, H*r)`` (SimCC, split ratio r = 2). A keypoint is at the argmax
                           of each axis / r in crop pixels, its score the smaller of the two maxima
                           (mmpose's get_simcc_maximum). Needs ``det_model``.
``dets``, ``keypoints``    RTMO (one-stage): input ``(1, 3, 640, 640)`` letterboxed frame (BGR,
                           114 padding, no normalisation); outputs ``(1, N, 5)`` boxes + score and
                           ``(1, N, K, 3)`` keypoints (x, y, score) in input pixels.
``dets``, ``labels``       (the ``det_model``) YOLOX end2end: the same letterboxed input; ``(1, N, 5)``
                           boxes (x1, y1, x2, y2, score) after NMS and ``(1, N)`` class ids, 0 = person.

Crops for RTMPose: the detection box x ``padding`` (1.25), grown to the model's aspect ratio,
warped to the input size (mmpose's top-down affine without rotation). K > 17 keypoint sets
(Halpe-26, COCO-WholeBody 133) begin with the COCO-17 body joints, so the first 17 are kept.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .common import PoseEstimatorError, box_matrix, fix_aspect, letterbox, outside_to_zero, require, to_frame, warp

__all__ = ["OnnxSettings", "OnnxEstimator", "decode_simcc"]

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


@dataclass(frozen=True)
class OnnxSettings:
    pose_model: str | None = None
    det_model: str | None = None
    det_score: float = 0.3
    max_people: int = 20
    padding: float = 1.25
    threads: int = 1


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_x: float, split_y: float):
    """(N, K, Wx), (N, K, Wy) -> keypoints (N, K, 2) in crop pixels and scores (N, K) (the lower
    of the two axis maxima; keypoints with score <= 0 get score 0)."""
    x = np.argmax(simcc_x, axis=2).astype(np.float64) / split_x
    y = np.argmax(simcc_y, axis=2).astype(np.float64) / split_y
    score = np.minimum(simcc_x.max(axis=2), simcc_y.max(axis=2)).astype(np.float64)
    return np.stack([x, y], -1), np.clip(score, 0.0, 1.0)


def _session(ort, path, threads: int):
    if not path or not os.path.isfile(path):
        raise PoseEstimatorError(path, "ONNX model file not found")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / NoSuchFile types
        raise PoseEstimatorError(path, f"not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None


def _input_hw(sess, path, default):
    shape = sess.get_inputs()[0].shape
    if len(shape) != 4 or shape[1] not in (3, "3"):
        raise PoseEstimatorError(path, f"expected one image input (N, 3, H, W), got {shape}")
    h, w = shape[2], shape[3]
    return (h if isinstance(h, int) else default[0], w if isinstance(w, int) else default[1])


class OnnxEstimator:
    """``est(frame_rgb, index) -> (N, 17, 3)`` float32 COCO-17 poses of one frame (stateless)."""

    def __init__(self, settings: OnnxSettings):
        self.settings = s = settings
        ort = require("onnxruntime", "the onnx pose estimator")
        require("cv2", "the onnx pose estimator")
        if not s.pose_model:
            raise PoseEstimatorError(None, "the onnx pose estimator needs a pose model (--pose-model / data.pose_model)")
        self._pose = _session(ort, s.pose_model, s.threads)
        outs = {o.name for o in self._pose.get_outputs()}
        if {"simcc_x", "simcc_y"} <= outs:
            self.kind = "rtmpose"
            if not s.det_model:
                raise PoseEstimatorError(s.pose_model, "an RTMPose model needs a person detector too "
                                                       "(--det-model yolox.onnx / data.det_model)")
            self._det = _session(ort, s.det_model, s.threads)
            douts = {o.name for o in self._det.get_outputs()}
            if not {"dets", "labels"} <= douts:
                raise PoseEstimatorError(s.det_model, f"expected a YOLOX end2end detector with outputs 'dets' and "
                                                      f"'labels', got {sorted(douts)}")
            self._det_hw = _input_hw(self._det, s.det_model, (640, 640))
            self._pose_hw = _input_hw(self._pose, s.pose_model, (256, 192))
        elif {"dets", "keypoints"} <= outs:
            self.kind = "rtmo"
            self._det = None
            self._det_hw = _input_hw(self._pose, s.pose_model, (640, 640))
        else:
            raise PoseEstimatorError(s.pose_model, f"unknown pose model: outputs {sorted(outs)}; expected RTMPose "
                                                   f"('simcc_x', 'simcc_y') or RTMO ('dets', 'keypoints')")

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _letterboxed(self, frame):
        h, w = self._det_hw
        canvas, ratio = letterbox(frame[:, :, ::-1], w, h)  # mmdet pipelines read BGR
        return canvas.transpose(2, 0, 1)[None].astype(np.float32), ratio

    def _keep(self, scores: np.ndarray) -> np.ndarray:
        keep = np.flatnonzero(scores >= self.settings.det_score)
        return keep[np.argsort(-scores[keep], kind="stable")][: self.settings.max_people]

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Person boxes (N, 5) x1, y1, x2, y2, score in frame pixels (YOLOX, class 0 only)."""
        blob, ratio = self._letterboxed(frame)
        out = dict(zip([o.name for o in self._det.get_outputs()], self._det.run(None, {self._det.get_inputs()[0].name: blob})))
        dets = np.asarray(out["dets"], np.float64).reshape(-1, 5)
        labels = np.asarray(out["labels"]).reshape(-1)
        dets = dets[labels == 0]
        dets = dets[self._keep(dets[:, 4])]
        dets[:, :4] /= ratio
        return dets

    def _rtmpose(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        ih, iw = self._pose_hw
        crops, mats = [], []
        for x1, y1, x2, y2 in boxes[:, :4]:
            w, h = fix_aspect(max(x2 - x1, 1.0) * self.settings.padding, max(y2 - y1, 1.0) * self.settings.padding, iw / ih)
            m = box_matrix((x1 + x2) / 2, (y1 + y2) / 2, w, h, iw, ih)
            crop = (warp(frame, m, iw, ih, fill=(0, 0, 0)).astype(np.float32) - MEAN) / STD
            crops.append(crop.transpose(2, 0, 1))
            mats.append(m)
        name = self._pose.get_inputs()[0].name
        kps = []
        for crop, m in zip(crops, mats):  # batch 1: static-batch exports are common
            sx, sy = self._pose.run(["simcc_x", "simcc_y"], {name: crop[None]})
            xy, sc = decode_simcc(np.asarray(sx), np.asarray(sy), sx.shape[2] / iw, sy.shape[2] / ih)
            kps.append(np.concatenate([to_frame(xy[0, :17], m), sc[0, :17, None]], 1))
        return np.stack(kps)

    def _rtmo(self, frame: np.ndarray) -> np.ndarray:
        blob, ratio = self._letterboxed(frame)
        out = dict(zip([o.name for o in self._pose.get_outputs()],
                       self._pose.run(None, {self._pose.get_inputs()[0].name: blob})))
        dets = np.asarray(out["dets"], np.float64).reshape(-1, 5)
        kps = np.asarray(out["keypoints"], np.float64)
        kps = kps.reshape(-1, kps.shape[-2], kps.shape[-1])[:, :17]
        keep = self._keep(dets[:, 4])
        kps = kps[keep]
        kps[..., :2] /= ratio
        kps[..., 2] = np.clip(kps[..., 2], 0.0, 1.0)
        return kps

    def __call__(self, frame: np.ndarray, index: int | None = None) -> np.ndarray:
        H, W = frame.shape[:2]
        if self.kind == "rtmo":
            kps = self._rtmo(frame)
        else:
            boxes = self.detect(frame)
            kps = self._rtmpose(frame, boxes) if len(boxes) else np.zeros((0, 17, 3))
        if not len(kps):
            return np.zeros((0, 17, 3), np.float32)
        return outside_to_zero(kps, W, H)
