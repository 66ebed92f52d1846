"""The built-in synthetic benchmark, written in the ShanghaiTech layout (what `make demo` runs on).

``generate(out, size="small", seed=0)`` / ``mgnet synth --out DIR --size tiny|small|full --seed N``
writes, deterministically from the seed::

    <out>/training/videos/<SS>_<VVV>.avi           H.264 videos (decord-readable), normal behaviour only
    <out>/testing/frames/<SS>_<VVVV>/000.jpg ...   JPEG frame folders
    <out>/pose/{train,test}/<vid>_alphapose_tracked_person.json   noisy keypoints, missed detections
    <out>/gt/test_frame_mask/<vid>.npy             uint8 per frame, 1 = abnormal
    <out>/gt/test_frame_types/<vid>.npy            int8 per frame: 0 normal, 1 motion, 2 appearance, 3 scene
    <out>/gt/anomaly_types.json                    {"0": "normal", "1": "motion", ...}
    <out>/synth.json                               size, seed, scenes, per-video scene and events, sizes

Scenes differ in background (park, plaza, street, beach, hall, snow). Everyone walks; what else is
normal depends on the scene: sitting only in scene 01 (park), standing still waving only in scene
02 (plaza). Test anomalies, each kind in several videos:
  * motion: running (fast, long strides), jumping, falling to the ground, flailing arms;
  * appearance: a normal walking skeleton beside a large saturated object (carried box, pushed cart,
    upright board) inside the person's crop box, so the pose alone looks normal;
  * scene: sitting or waving in a scene where training never showed it (the same behaviour is
    normal, and appears unlabelled, in its own scene's test videos).
Sizes (frames W x H; videos x frames per video): see SIZES; `tiny` takes a few seconds, `small`
(the demo default) well under a minute on 2 cores.

``--variant NAME`` (``data.synth.variant``) writes one of the variants of mgnet.data.synth_variants
instead (natural object colours, lighting shifts, noise and JPEG, perspective, occluders, several
camera geometries, shared geometries across scenes, motion variability, detector noise and id
switches); the same layout, synth.json then also records the variant and, per video, its camera,
light gain, JPEG quality and actors (kind, track ids, type). `default` is bit-identical to the
generator before variants existed.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from . import synth_body as B
from . import synth_scene as S
from . import synth_variants as SV
from .errors import DataError
from .poses import write_pose_json

VERSION = 3  # bump when the generated content changes: older folders are regenerated
TYPE_NAMES = {0: "normal", 1: "motion", 2: "appearance", 3: "scene"}
SCENE_NORMAL = {0: "sit", 1: "wave"}  # scene index -> the extra behaviour normal there only

SIZES = {
    # W, H: frame size; h: body height range (far..near); per scene: train/test videos and frames
    "tiny": dict(W=128, H=96, h=(34, 46), scenes=2, train_videos=2, train_frames=96,
                 test_videos=3, test_frames=80, hold=(18, 30)),
    "small": dict(W=192, H=144, h=(44, 62), scenes=4, train_videos=4, train_frames=200,
                  test_videos=5, test_frames=160, hold=(30, 55)),
    "full": dict(W=256, H=192, h=(56, 84), scenes=6, train_videos=8, train_frames=320,
                 test_videos=8, test_frames=240, hold=(40, 80)),
}
MOTIONS = ("run", "jump", "fall", "flail")
OBJECTS = ("box", "cart", "board")


def identity(meta: dict) -> tuple:
    """(size, seed, variant, version, variant version) of a synth.json dict (variant "default" and
    variant version None when absent)."""
    return (meta.get("size"), meta.get("seed"), meta.get("variant", "default"), meta.get("version"),
            meta.get("variant_version"))


def current_identity(size: str, seed: int, variant: str = "default") -> tuple:
    """What identity() of a benchmark written now by this generator is."""
    return size, seed, variant, VERSION, None if variant == "default" else SV.VERSION


def scene_id(s: int) -> str:
    return f"{s + 1:02d}"


def video_names(size: str) -> dict:
    """{"train": [...], "test": [...]} video names of a size (ShanghaiTech naming)."""
    c = SIZES[size]
    return {"train": [f"{scene_id(s)}_{i + 1:03d}" for s in range(c["scenes"]) for i in range(c["train_videos"])],
            "test": [f"{scene_id(s)}_{i + 1:04d}" for s in range(c["scenes"]) for i in range(c["test_videos"])]}


def size_config(size: str, variant: SV.Variant = SV.VARIANTS["default"]) -> dict:
    """SIZES[size] as the variant changes it: frame width from its aspect ratio, body heights
    widened by its scale_spread (at most 3/4 of the frame height)."""
    c = dict(SIZES[size])
    if variant.aspect:
        c["W"] = int(round(c["H"] * variant.aspect / 4)) * 4
    if variant.scale_spread != 1.0:
        lo, hi = c["h"]
        c["h"] = (lo / variant.scale_spread, min(hi * variant.scale_spread ** 0.5, 0.75 * c["H"]))
    return c


def camera_geometry(variant: SV.Variant, seed: int, s: int, g: int):
    """Camera geometry g of scene s (None: the scene's default camera): horizon as a fraction of
    the frame height, zoom (body-height factor), mirrored background, walking-path tilt (dy/dx).
    With shared_geometry every scene gets the same geometries (the rng ignores the scene)."""
    if variant.cameras <= 1 and not variant.shared_geometry:
        return None
    vk = zlib.crc32(variant.name.encode())
    rng = np.random.default_rng([seed, 97, g, vk] if variant.shared_geometry else [seed, 97, s, g, vk])
    return dict(hz=float(rng.uniform(0.28, 0.46)), zoom=float(rng.uniform(0.8, 1.2)), flip=bool(rng.random() < 0.5),
                tilt=float(rng.uniform(-0.15, 0.15)) if variant.cameras > 1 else 0.0)


def _test_event(size: str, s: int, i: int, objects: tuple = OBJECTS) -> tuple:
    """(type, variant) of test video i of scene s. Types rotate over scenes so each recurs; the
    variants of a type (e.g. run, jump, fall, flail) cycle over that type's videos in order."""
    c = SIZES[size]
    k = 3 if size == "tiny" else 4
    kinds = ("motion", "appearance", "scene", "none")

    def kind(s_, i_):
        return kinds[(i_ + s_) % k]
    t = kind(s, i)
    if t == "none":
        return t, None
    order = [(s_, i_) for s_ in range(c["scenes"]) for i_ in range(c["test_videos"]) if kind(s_, i_) == t]
    n = order.index((s, i))
    if t == "motion":
        return t, MOTIONS[n % len(MOTIONS)]
    if t == "appearance":
        return t, objects[n % len(objects)]
    if s in SCENE_NORMAL:  # the behaviour normal in the other special scene
        return t, SCENE_NORMAL[1 - s]
    return t, ("sit", "wave")[n % 2]


class _Video:
    """Actors, rendering and pose/gt bookkeeping of one video."""

    def __init__(self, size, scene, n_frames, rng, variant=SV.VARIANTS["default"], vrng=None, geometry=None,
                 occluders=()):
        self.v, self.vrng, self.geo = variant, vrng, geometry
        self.c, self.scene, self.n, self.rng = size_config(size, variant), scene, n_frames, rng
        self.W, self.H = self.c["W"], self.c["H"]
        hz = S.horizon(scene, self.H) if geometry is None else int(geometry["hz"] * self.H)
        self.hz = hz
        f0 = 0.3 - 0.2 * variant.perspective
        self.gy = (hz + f0 * (self.H - hz), self.H - 0.04 * self.H)
        self.occluders = list(occluders)
        self.occ_mask = S.occluder_mask(self.occluders, self.W, self.H) if self.occluders else None
        self.actors = []

    def _height(self, gy):
        lo, hi = self.c["h"]
        if self.v.is_default:
            return lo + (gy - self.gy[0]) / (self.gy[1] - self.gy[0]) * (hi - lo)
        zoom = 1.0 if self.geo is None else self.geo["zoom"]
        lin = lo + (gy - self.gy[0]) / (self.gy[1] - self.gy[0]) * (hi - lo)
        pin = hi * (gy - self.hz) / (self.gy[1] - self.hz)  # pinhole: height ~ distance below the horizon
        p = self.v.perspective
        return max(0.35 * lo, min(((1 - p) * lin + p * pin) * zoom, 0.8 * self.H))

    def add(self, t0, kind="walk", variant=None, abnormal_type=0, inside=False):
        rng = self.rng
        gy = rng.uniform(*self.gy)
        h = self._height(gy)
        d = int(rng.choice([-1, 1]))
        W = self.W
        enter = -0.1 * h if d > 0 else W + 0.1 * h
        if inside:
            enter = rng.uniform(0.1, 0.9) * W
        elif kind != "walk":
            enter = (rng.uniform(0.0, 0.15) * W) if d > 0 else W - rng.uniform(0.0, 0.15) * W
        exit_x = W + 0.3 * h if d > 0 else -0.3 * h
        stop = enter + d * rng.uniform(0.15, 0.35) * W
        mv, vr = self.v.motion_var, self.vrng
        if vr is not None:  # small, far people walk slowly: start the behaviour within about a body height
            stop = enter + d * min(abs(stop - enter), vr.uniform(0.3, 1.2) * h)
        tl = B.Timeline(enter, h, d, rng, speed_scale=float(np.exp(vr.normal(0, 0.25 * mv))) if mv else 1.0)
        if mv:
            tl.style = B.vary_style(vr, B.WALK, mv)
        hold = int(rng.integers(*self.c["hold"]))
        ab = abnormal_type > 0
        obj = None
        if kind == "walk":
            if mv and vr.random() < 0.15 * mv:  # a normal pause half-way
                tl.walk(until=stop)
                tl.pause(int(vr.integers(10, 40)))
            tl.walk(until=exit_x)
        elif kind == "run":
            tl.v = h * rng.uniform(0.085, 0.11)
            style = B.RUN
            if mv:  # jogging to sprinting
                u = float(vr.uniform(1 - 0.55 * mv, 1.0))
                tl.v = h * (0.03 + 0.075 * u) * float(vr.uniform(0.9, 1.1))
                style = B.vary_style(vr, B.run_style(u), 0.5 * mv)
            tl.walk(until=exit_x, style=style, abnormal=ab)
        elif kind == "flail":
            amp = float(vr.uniform(0.8, 2.2)) if mv and vr.random() < 0.5 else None
            tl.flail(int(hold * 1.5), abnormal=ab, amp=amp)
            tl.walk(until=exit_x)
        elif kind == "carry":
            colour = S.OBJECT_COLOURS[rng.integers(len(S.OBJECT_COLOURS))]
            obj = dict(kind=variant, colour=colour)
            if self.v.object_colours == "natural":
                obj.update(colour=S.natural_object_colour(vr), natural=True, tyres=S.muted(vr, 0.2, 0.05, 0.25))
            tl.walk(until=exit_x, abnormal=ab)
        else:
            tl.walk(until=stop)
            if kind == "sit":
                tl.sit(hold, abnormal=ab)
            elif kind == "wave":
                tl.wave(hold, abnormal=ab)
            elif kind == "jump":
                n_j, height = max(2, hold // 14), None
                if mv:  # hops to high jumps, one to several
                    n_j, height = int(vr.integers(1, 2 + n_j)), float(vr.uniform(0.4 - 0.3 * mv, 0.4))
                tl.jump(n_j, abnormal=ab, height=height)
            elif kind == "fall":
                tl.fall(hold, abnormal=ab, n=int(vr.integers(6, 9 + int(10 * mv))) if mv else 9)
            else:
                raise ValueError(kind)
            tl.walk(until=exit_x)
        xs, ps, abn = tl.arrays()
        actor = dict(t0=int(t0), xs=xs, ps=ps, ab=abn, h=h, d=d, gy=gy, type=abnormal_type,
                     clothes=S.random_clothes(rng), object=obj, kind=kind)
        tilt = 0.0 if self.geo is None else self.geo["tilt"] * float(vr.uniform(0.5, 1.5))
        if tilt:  # a walking path across the depth band: ground line and body height per frame
            g = np.clip(gy + tilt * (xs - xs[0]), *self.gy)
            actor.update(gys=g, hs=np.array([self._height(y) for y in g]))
        self.actors.append(actor)

    def populate(self, split, event):
        rng, n = self.rng, self.n
        for _ in range(2):
            self.add(0, inside=True)
        t = int(rng.integers(5, 30))
        while t < n - 20:
            self.add(t)
            t += int(rng.integers(35, 75))
        normal_special = SCENE_NORMAL.get(self.scene)
        if normal_special and (split == "train" or event[0] == "none" or rng.random() < 0.5):
            for _ in range(1 if split == "test" else int(rng.integers(2, 4))):
                self.add(int(rng.uniform(0.0, 0.4) * n), kind=normal_special)
        if split == "test" and event[0] != "none":
            t0 = int(rng.uniform(0.05, 0.25) * n)
            typ, var = event
            kind = {"motion": var, "appearance": "carry", "scene": var}[typ]
            self.add(t0, kind=kind, variant=var, abnormal_type={"motion": 1, "appearance": 2, "scene": 3}[typ])

    def frames(self, bg, noise_bank, gain=None):
        """Yield (t, frame uint8 (H, W, 3)); fill self.poses, self.gt, self.types as a side effect
        (and each actor's "ids": the track ids its detections were written under)."""
        rng, W, H = self.rng, self.W, self.H
        self.poses = {i + 1: {} for i in range(len(self.actors))}
        self.gt = np.zeros(self.n, np.uint8)
        self.types = np.zeros(self.n, np.int8)
        gaps = {i: 0 for i in range(len(self.actors))}
        track = {i: i + 1 for i in range(len(self.actors))}  # actor -> current track id
        for i, a in enumerate(self.actors):
            a["ids"] = [i + 1]
        for t in range(self.n):
            people, seen = [], []
            for i, a in enumerate(self.actors):
                k = t - a["t0"]
                if k < 0 or k >= len(a["xs"]):
                    continue
                x = a["xs"][k]
                h, gy = (a["hs"][k], a["gys"][k]) if "hs" in a else (a["h"], a["gy"])
                j = B.joints(a["ps"][k], h, a["d"], x, gy)
                people.append(dict(joints=j, h=h, d=a["d"], clothes=a["clothes"], object=a["object"]))
                if not (0.02 * W <= x <= 0.98 * W):
                    continue  # off screen: no detection, no label
                if a["ab"][k]:
                    self.gt[t] = 1
                    self.types[t] = max(self.types[t], a["type"])
                if gaps[i] > 0:
                    gaps[i] -= 1
                    continue
                u = rng.random()
                if u < 0.003:
                    gaps[i] = int(rng.integers(3, 9))  # a long miss: splits the track
                    continue
                if u < 0.03:
                    continue  # a single missed detection: interpolated over
                det = self._detect(j, h, a["d"])
                if det is not None:
                    seen.append((i, det))
            if self.v.id_switch:
                self._switch_ids(track, [i for i, _ in seen])
            for i, det in seen:
                self.poses.setdefault(track[i], {})[t] = det
            yield t, S.render(bg, people, noise_bank[rng.integers(len(noise_bank))], self.occluders, gain)

    def _switch_ids(self, track, visible):
        """Tracker failures: a visible track continues under a new id, or two visible people swap ids."""
        vr = self.vrng
        for i in visible:
            if vr.random() >= self.v.id_switch:
                continue
            others = [o for o in visible if o != i]
            if others and vr.random() < 0.5:
                o = others[int(vr.integers(len(others)))]
                track[i], track[o] = track[o], track[i]
                self.actors[o]["ids"].append(track[o])
            else:
                track[i] = max(max(a["ids"]) for a in self.actors) + 1
            self.actors[i]["ids"].append(track[i])

    def _detect(self, j, h, d):
        """AlphaPose-like detection (17, 3) of joints j, or None when the person is mostly hidden."""
        rng, v = self.rng, self.v
        kp = j + rng.normal(0, 0.012 * h, j.shape) * v.pose_noise
        conf = rng.uniform(0.65, 0.95, 17)
        far = [6, 8, 10, 12, 14, 16] if d > 0 else [5, 7, 9, 11, 13, 15]
        conf[far] -= 0.12
        out = rng.random(17) < 0.01
        kp[out] += rng.normal(0, 0.1 * h, (int(out.sum()), 2))
        conf[out] = rng.uniform(0.05, 0.3, int(out.sum()))
        if not v.is_default:
            vr = self.vrng
            if self.occ_mask is not None:
                xi = np.clip(j[:, 0].astype(int), 0, self.W - 1)
                yi = np.clip(j[:, 1].astype(int), 0, self.H - 1)
                hidden = self.occ_mask[yi, xi]
                if hidden.mean() > 0.7:
                    return None  # mostly hidden: no detection
                kp[hidden] += vr.normal(0, 0.06 * h, (int(hidden.sum()), 2))
                conf[hidden] = vr.uniform(0.05, 0.35, int(hidden.sum()))
            miss = vr.random(17) < v.miss_joint
            kp[miss] += vr.normal(0, 0.15 * h, (int(miss.sum()), 2))
            conf[miss] = vr.uniform(0.01, 0.05, int(miss.sum()))
            conf *= 1 - v.low_score * vr.random()
            conf = np.clip(conf, 0.01, 0.99)
        kp[:, 0] = np.clip(kp[:, 0], 0, self.W - 1)
        kp[:, 1] = np.clip(kp[:, 1], 0, self.H - 1)
        return np.concatenate([kp, conf[:, None]], 1)


def _light_gain(variant: SV.Variant, vrng, split: str):
    """Per-video channel gain (3,): brightness and white-balance jitter, shifted on test videos."""
    if not variant.light_train and not any(variant.light_shift):
        return None
    log_g = variant.light_train * vrng.normal() + 0.5 * variant.light_train * vrng.normal(size=3)
    if split == "test":
        log_g = log_g + np.asarray(variant.light_shift, float)
    return np.exp(log_g)


def _make_video(args):
    out, size, seed, split, name = args[:5]
    variant = SV.get(args[5] if len(args) > 5 else "default")
    c = size_config(size, variant)
    s, i = int(name[:2]) - 1, int(name[3:]) - 1
    sp = 0 if split == "train" else 1
    vk = [] if variant.is_default else [zlib.crc32(variant.name.encode())]  # each variant its own scenarios
    rng = np.random.default_rng([seed, sp, s, i] + vk)
    vrng = None if variant.is_default else np.random.default_rng([seed, sp, s, i, 7] + vk)
    cam = i % max(1, variant.cameras)
    geo = camera_geometry(variant, seed, s, cam)
    if geo is None:
        bg = S.background(s, c["W"], c["H"], np.random.default_rng([seed, 99, s]))
    else:
        bg = S.background(s, c["W"], c["H"], np.random.default_rng([seed, 99, s, cam] + vk), hz=int(geo["hz"] * c["H"]))
        if geo["flip"]:
            bg = np.ascontiguousarray(bg[:, ::-1])
    occ = []
    if variant.occluders:
        hz = S.horizon(s, c["H"]) if geo is None else int(geo["hz"] * c["H"])
        occ = S.random_occluders(np.random.default_rng([seed, 96, s, cam] + vk), variant.occluders, c["W"], c["H"], hz)
    noise_bank = np.random.default_rng([seed, 98]).normal(0, variant.noise, (8, c["H"], c["W"], 3)).round().astype(np.int16)
    event = _test_event(size, s, i, variant.objects) if split == "test" else ("none", None)
    n = c["train_frames"] if split == "train" else c["test_frames"]
    v = _Video(size, s, n, rng, variant, vrng, geo, occ)
    v.populate(split, event)
    gain = _light_gain(variant, vrng, split)
    extra = {}
    if split == "train":
        import imageio_ffmpeg
        path = os.path.join(out, "training", "videos", f"{name}.avi")
        tmp = path[:-4] + ".tmp.avi"
        w = imageio_ffmpeg.write_frames(tmp, (c["W"], c["H"]), fps=25, codec="libx264", quality=None,
                                        pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                                        output_params=["-preset", "ultrafast", "-crf", str(variant.crf), "-threads", "1"])
        w.send(None)
        for _, f in v.frames(bg, noise_bank, gain):
            w.send(np.ascontiguousarray(f))
        w.close()
        os.replace(tmp, path)
    else:
        from PIL import Image
        d = os.path.join(out, "testing", "frames", name)
        os.makedirs(d)
        lo, hi = variant.jpeg_quality
        quality = int(vrng.integers(lo, hi + 1)) if vrng is not None else 92
        for t, f in v.frames(bg, noise_bank, gain):
            Image.fromarray(f).save(os.path.join(d, f"{t:03d}.jpg"), quality=quality)
        np.save(os.path.join(out, "gt", "test_frame_mask", f"{name}.npy"), v.gt)
        np.save(os.path.join(out, "gt", "test_frame_types", f"{name}.npy"), v.types)
        extra["jpeg_quality"] = quality
    write_pose_json(os.path.join(out, "pose", split, f"{name}_alphapose_tracked_person.json"), v.poses)
    abnormal_people = [k + 1 for k, a in enumerate(v.actors) if a["type"] > 0]
    info = dict(scene=scene_id(s), split=split, frames=n, event=list(event),
                abnormal_frames=int(v.gt.sum()), people=len(v.actors), abnormal_people=abnormal_people)
    if not variant.is_default:  # what the variant planted, for tests and inspection
        info.update(extra, camera=cam, geometry=geo, light_gain=None if gain is None else [round(float(g), 4) for g in gain],
                    abnormal_people=sorted({t for a in v.actors if a["type"] > 0 for t in a["ids"]}),
                    actors=[dict(kind=a["kind"], ids=a["ids"], type=int(a["type"])) for a in v.actors])
    return name, info


def generate(out, size: str = "small", seed: int = 0, workers: int | None = None, force: bool = False,
             variant: str = "default") -> dict:
    """Write the benchmark into `out` (atomically: built beside it, then renamed). Returns synth.json's dict.

    An existing `out` holding the same (size, seed, variant, version) is kept as is, one of an older
    generator version is regenerated; anything else already at `out` raises DataError unless
    force=True (then it is replaced). `variant`: a name in mgnet.data.synth_variants.VARIANTS.
    """
    if size not in SIZES:
        raise DataError(None, f"--size must be one of {sorted(SIZES)}, got {size!r}")
    var = SV.get(variant)
    out = os.path.abspath(os.fspath(out))
    meta_path = os.path.join(out, "synth.json")
    if os.path.exists(out):
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                old = json.load(f)
            if identity(old) == current_identity(size, seed, variant):
                return old
            if identity(old)[:3] == (size, seed, variant):
                force = True  # our own output from an older generator version: regenerate it
        if not force and (not os.path.isdir(out) or os.listdir(out)):
            raise DataError(out, "exists and is not this synthetic benchmark (size/seed differ or not "
                                 "generated by mgnet synth); pass --force to replace it")
    t_start = time.time()
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ("training/videos", "testing/frames", "pose/train", "pose/test", "gt/test_frame_mask", "gt/test_frame_types"):
        os.makedirs(os.path.join(tmp, d))
    names = video_names(size)
    jobs = [(tmp, size, int(seed), split, n) + (() if var.is_default else (variant,))
            for split in ("train", "test") for n in names[split]]
    workers = workers or min(2, os.cpu_count() or 1)
    try:
        if workers > 1:
            import multiprocessing as mp
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
                results = dict(ex.map(_make_video, jobs))
        else:
            results = dict(map(_make_video, jobs))
        c = size_config(size, var)
        meta = dict(version=VERSION, size=size, seed=int(seed), frame_size=[c["W"], c["H"]],
                    scenes={scene_id(s): S.SCENE_NAMES[s] for s in range(c["scenes"])},
                    scene_normal={scene_id(s): ["walk"] + ([SCENE_NORMAL[s]] if s in SCENE_NORMAL else [])
                                  for s in range(c["scenes"])},
                    type_names={str(k): v for k, v in TYPE_NAMES.items()}, videos=results,
                    generation_seconds=round(time.time() - t_start, 2))
        if not var.is_default:
            meta.update(variant=variant, variant_version=SV.VERSION, variant_config=var.to_dict())
        with open(os.path.join(tmp, "gt", "anomaly_types.json"), "w") as f:
            json.dump(meta["type_names"], f)
        with open(os.path.join(tmp, "synth.json"), "w") as f:
            json.dump(meta, f, indent=1)
        if os.path.exists(out):
            old = f"{out}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta
