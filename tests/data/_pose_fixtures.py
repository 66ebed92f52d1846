"""Test inputs for pose estimation: walking figures drawn by the synthetic benchmark's renderer,
with their true COCO-17 joints, and tiny ONNX stand-ins for RTMPose / YOLOX / RTMO whose outputs
are known in advance (built with the onnx helper API)."""
from __future__ import annotations

import numpy as np

from mgnet.data.video import FrameSource


class ArraySource(FrameSource):
    """Frames held in memory, as a FrameSource."""

    def __init__(self, frames, fps=25.0):
        self.frames = np.asarray(frames, np.uint8)
        self.path = "<memory>"
        self.size = (self.frames.shape[2], self.frames.shape[1])
        self.fps = fps

    def __len__(self):
        return len(self.frames)

    def get(self, indices):
        return self.frames[np.asarray(indices, np.int64)]


def walkers(n=16, W=640, H=360, h=200, starts=((140, 1), (500, -1)), speed=4.0, seed=0):
    """Frames (n, H, W, 3) of figures of height ``h`` walking (start x, direction) and their true
    joints {person: (frames, (n, 17, 3) with score 1)}; person p is starts[p - 1]."""
    from mgnet.data import synth_body as sb, synth_scene as ss
    rng = np.random.default_rng(seed)
    bg = ss.background(0, W, H, rng)
    clothes = [ss.random_clothes(rng) for _ in starts]
    frames, truth = [], {i + 1: [] for i in range(len(starts))}
    ground = H - 0.1 * (H - h) - 10
    for f in range(n):
        people = []
        for i, (x0, d) in enumerate(starts):
            j = sb.joints(sb.gait(0.5 * f + i, sb.WALK), h, d, x0 + d * speed * f, ground)
            truth[i + 1].append(np.concatenate([j, np.ones((17, 1))], 1))
            people.append(dict(joints=j, h=h, d=d, clothes=clothes[i], object=None))
        frames.append(ss.render(bg, people))
    return np.stack(frames), {p: (np.arange(n), np.stack(k).astype(np.float32)) for p, k in truth.items()}


def walkers_video(path, n=20):
    """An H.264 mp4 of two figures (170 px tall in 480 x 272) walking towards each other; returns
    their true joints."""
    from tests.data._fixtures import write_video
    frames, truth = walkers(n=n, W=480, H=272, h=170, starts=((110, 1), (370, -1)), speed=3.0)
    write_video(str(path), frames, fps=10)
    return truth


# ----------------------------------------------------------------------------- ONNX stand-ins
def _save(graph, path):
    import onnx
    from onnx import helper
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(name, arr):
    from onnx import helper, numpy_helper
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name + "_v"))


def _zero_of_input(prefix, nodes):
    """A scalar 0.0 computed from the input, so the model reads its input as a real one does."""
    from onnx import helper
    nodes.append(helper.make_node("ReduceSum", ["input"], [prefix + "_sum"], keepdims=0))
    nodes.append(_const(prefix + "_zero", np.float32(0.0)))
    nodes.append(helper.make_node("Mul", [prefix + "_sum", prefix + "_zero"], [prefix + "_z"]))
    return prefix + "_z"


def rtmpose_standin(path, h=256, w=192, k=17, gain=0.25):
    """RTMPose's signature: input (N, 3, h, w) -> simcc_x (N, k, 2w), simcc_y (N, k, 2h). Every
    keypoint is at the crop's brightest pixel of channel 0 (R after the RGB normalisation), its
    SimCC value gain x that pixel's normalised value (each bin doubled: split ratio 2)."""
    from onnx import TensorProto, helper
    nodes = [_const("starts", np.array([0], np.int64)), _const("ends", np.array([1], np.int64)),
             _const("axes", np.array([1], np.int64)),
             helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["r"]),  # (N, 1, h, w)
             _const("gain", np.float32(gain)), helper.make_node("Mul", ["r", "gain"], ["rg"])]
    for axis, name, size in ((2, "x", w), (3, "y", h)):
        nodes += [helper.make_node("ReduceMax", ["rg"], [f"m{name}"], axes=[axis], keepdims=0),  # (N, 1, size)
                  helper.make_node("Unsqueeze", [f"m{name}", "ax3"], [f"u{name}"]),
                  helper.make_node("Concat", [f"u{name}", f"u{name}"], [f"c{name}"], axis=3),  # (N, 1, size, 2)
                  _const(f"shape{name}", np.array([0, 1, 2 * size], np.int64)),
                  helper.make_node("Reshape", [f"c{name}", f"shape{name}"], [f"d{name}"]),
                  _const(f"k{name}", np.array([1, k, 1], np.int64)),
                  helper.make_node("Tile", [f"d{name}", f"k{name}"], [f"simcc_{name}"])]
    nodes.insert(0, _const("ax3", np.array([3], np.int64)))
    g = helper.make_graph(nodes, "rtmpose_standin",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, h, w])],
                          [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, ["batch", k, 2 * w]),
                           helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, ["batch", k, 2 * h])])
    return _save(g, path)


def yolox_standin(path, dets, labels, size=640):
    """YOLOX end2end's signature: input (1, 3, size, size) -> dets (1, N, 5), labels (1, N) int64,
    the given boxes (letterboxed-input pixels)."""
    from onnx import TensorProto, helper
    dets = np.asarray(dets, np.float32)[None]
    nodes = []
    z = _zero_of_input("d", nodes)
    nodes += [_const("dets_c", dets), helper.make_node("Add", ["dets_c", z], ["dets"]),
              _const("labels", np.asarray(labels, np.int64)[None])]
    g = helper.make_graph(nodes, "yolox_standin",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                          [helper.make_tensor_value_info("dets", TensorProto.FLOAT, list(dets.shape)),
                           helper.make_tensor_value_info("labels", TensorProto.INT64, list(dets.shape[:2]))])
    return _save(g, path)


def rtmo_standin(path, dets, keypoints, size=640):
    """RTMO's signature: input (1, 3, size, size) -> dets (1, N, 5), keypoints (1, N, K, 3)."""
    from onnx import TensorProto, helper
    dets = np.asarray(dets, np.float32)[None]
    kps = np.asarray(keypoints, np.float32)[None]
    nodes = []
    z = _zero_of_input("d", nodes)
    nodes += [_const("dets_c", dets), helper.make_node("Add", ["dets_c", z], ["dets"]),
              _const("kps_c", kps), helper.make_node("Add", ["kps_c", z], ["keypoints"])]
    g = helper.make_graph(nodes, "rtmo_standin",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                          [helper.make_tensor_value_info("dets", TensorProto.FLOAT, list(dets.shape)),
                           helper.make_tensor_value_info("keypoints", TensorProto.FLOAT, list(kps.shape))])
    return _save(g, path)
