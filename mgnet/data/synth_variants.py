"""Variants of the synthetic benchmark in which no single cheap statistic gives an anomaly away.

The `default` variant is the benchmark the method was developed on (every anomaly type has one
planted cue: saturated object colours, a scene-specific horizon, clean keypoints). The other
variants are what the validation protocol (`mgnet protocol`) trains and evaluates on. Each is a
`Variant`: a set of generator knobs, all off in `default` (whose output stays bit-identical):

* objects / object_colours: which carried or pushed objects appear (bicycle, cart, big box, board)
  and whether they are saturated (default) or drawn from the shirts' own colour distribution with
  outlines in their own shade ("natural");
* light_train / light_shift: per-video brightness and white-balance jitter (std of the log channel
  gain) and a per-channel log-gain shift of every test video relative to training;
* noise / jpeg_quality / crf: sensor noise std (grey levels), JPEG quality range of the test frames,
  H.264 CRF of the training videos;
* perspective / scale_spread: people at several distances (body height proportional to the distance
  below the horizon, mixed in with weight `perspective`) over a wider height range;
* occluders: static foreground objects (posts, hedges, parked blocks) over people; the detector
  gives the hidden joints low scores and guesses their positions, and misses mostly hidden people;
* cameras / shared_geometry: camera geometries per scene (horizon, zoom, mirrored background,
  tilted walking paths); with shared_geometry every scene has the same set of geometries, so a
  scene anomaly (sitting where nobody sits) differs from the normal sitting of another scene only
  by the background: same camera, same motion;
* motion_var: realistic variability of gait (stride, knee, arm swing, cadence, walking speed) and
  of the motion anomalies (jogging to sprinting, low to high jumps, slow to fast falls, weak to
  wild flailing);
* pose_noise / miss_joint / low_score / id_switch: detector jitter (multiplier of the default
  0.012 h), joints missed (score near 0, position a guess), scores lowered, track id switches
  (a track continues under a new id, or two visible people swap ids);
* aspect: frame width / height (None keeps the size's own frame).

`SELECTION` are the variants (and `SELECTION_SEEDS` the seeds) the protocol chooses defaults on;
`REPORT` / `REPORT_SEEDS` is the held-back set it reports on, never used to choose anything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import DataError

VERSION = 1  # bump when a non-default variant's generated content changes (the default has synthetic.VERSION)


@dataclass(frozen=True)
class Variant:
    name: str = "default"
    objects: tuple = ("box", "cart", "board")
    object_colours: str = "saturated"        # saturated | natural
    light_train: float = 0.0                 # std of the per-video log gain (brightness; half of it per channel)
    light_shift: tuple = (0.0, 0.0, 0.0)     # log-gain shift (R, G, B) of test videos vs training
    noise: float = 2.5                       # sensor noise std, grey levels
    jpeg_quality: tuple = (92, 92)           # test JPEG quality range (inclusive)
    crf: int = 17                            # training video H.264 CRF
    perspective: float = 0.0                 # 0: height linear in the depth band (default), 1: pinhole
    scale_spread: float = 1.0                # widen the body-height range (far / near) by this factor
    occluders: int = 0                       # foreground occluders per camera
    cameras: int = 1                         # camera geometries per scene
    shared_geometry: bool = False            # the same geometries in every scene
    motion_var: float = 0.0                  # 0: the default kinematics; 1: full variability
    pose_noise: float = 1.0                  # keypoint jitter multiplier
    miss_joint: float = 0.0                  # per-joint probability of a miss
    low_score: float = 0.0                   # scores scaled down by up to this fraction
    id_switch: float = 0.0                   # per-track, per-frame probability of an id switch
    aspect: float | None = None              # frame W / H (None: the size's own)

    @property
    def is_default(self) -> bool:
        return self == Variant()

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


_NATURAL = dict(objects=("bicycle", "cart", "box"), object_colours="natural")

VARIANTS = {
    "default": Variant(),
    # selection set ------------------------------------------------------------------------------
    # natural objects under a strong lighting / white-balance change, a lower-quality camera
    "natural": Variant(name="natural", **_NATURAL, light_train=0.06, light_shift=(-0.15, -0.3, -0.45),
                       noise=5.0, jpeg_quality=(55, 85), crf=26, perspective=0.5, scale_spread=1.3,
                       motion_var=0.6, pose_noise=1.5, miss_joint=0.02, low_score=0.15, id_switch=0.002),
    # wide depth range, occluders, two cameras per scene, a poor detector
    "occluded": Variant(name="occluded", **_NATURAL, light_train=0.05, light_shift=(0.12, 0.05, -0.1),
                        noise=3.5, jpeg_quality=(65, 90), crf=23, perspective=1.0, scale_spread=1.7,
                        occluders=3, cameras=2, motion_var=0.8, pose_noise=2.0, miss_joint=0.05,
                        low_score=0.25, id_switch=0.005),
    # the same camera geometries in every scene: only the background tells a scene anomaly
    "scenes": Variant(name="scenes", **_NATURAL, light_train=0.05, light_shift=(-0.2, -0.1, 0.05),
                      noise=4.0, jpeg_quality=(60, 90), crf=24, perspective=0.7, scale_spread=1.4,
                      occluders=1, cameras=2, shared_geometry=True, motion_var=0.7, pose_noise=1.5,
                      miss_joint=0.03, low_score=0.2, id_switch=0.003),
    # report set (held back) -----------------------------------------------------------------------
    # everything at once, three cameras per scene, 16:9 frames
    "mixed": Variant(name="mixed", **_NATURAL, light_train=0.08, light_shift=(0.1, -0.2, -0.35),
                     noise=5.0, jpeg_quality=(50, 80), crf=27, perspective=0.8, scale_spread=1.6,
                     occluders=2, cameras=3, shared_geometry=True, motion_var=1.0, pose_noise=2.0,
                     miss_joint=0.05, low_score=0.3, id_switch=0.005, aspect=16 / 9),
    # far, small people in wide 16:9 frames, a cooler test light
    "wide": Variant(name="wide", objects=("bicycle", "cart", "box", "board"), object_colours="natural",
                    light_train=0.05, light_shift=(-0.3, -0.15, 0.1), noise=3.0, jpeg_quality=(60, 92),
                    crf=22, perspective=1.0, scale_spread=1.5, occluders=2, cameras=2, motion_var=0.9,
                    pose_noise=1.8, miss_joint=0.04, low_score=0.2, id_switch=0.004, aspect=16 / 9),
}
SELECTION = ("natural", "occluded", "scenes")
REPORT = ("mixed", "wide")
SELECTION_SEEDS = (0, 1)
REPORT_SEEDS = (100, 101)


def get(name: str) -> Variant:
    """The variant called `name`; DataError naming the choices otherwise."""
    if name not in VARIANTS:
        raise DataError(None, f"unknown synthetic benchmark variant {name!r}; one of {', '.join(VARIANTS)}")
    return VARIANTS[name]
