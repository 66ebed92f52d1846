"""Articulated 2-D people for the synthetic benchmark: side-view kinematics and behaviour timelines.

A body is h pixels tall (feet to top of head), faces d = +1 (right) or -1 (left), and is described
per frame by a parameter vector (`PARAMS`): torso lean, thigh angle and knee bend of the near and
far leg, upper-arm angle and elbow bend of the near and far arm (angles in radians from the
downward vertical, positive = forward), a vertical lift (jumps) and a whole-body rotation about the
feet (falls). `joints()` turns it into COCO-17 keypoints; `Timeline` strings behaviours together
(walk, run, sit, wave, jump, fall, flail) and records which frames are abnormal.
"""
from __future__ import annotations

import numpy as np

PARAMS = ("lean", "th_n", "kn_n", "th_f", "kn_f", "ua_n", "eb_n", "ua_f", "eb_f", "lift", "rot")
P = {k: i for i, k in enumerate(PARAMS)}

# segment lengths as fractions of the body height
HEAD_R, NECK_HEAD, TORSO, THIGH, SHIN, UPPER_ARM, FOREARM = 0.065, 0.085, 0.30, 0.245, 0.245, 0.17, 0.16

WALK = dict(A_t=0.38, A_k=0.65, A_a=0.35, eb=0.25, lean=0.04, cycle=0.78)
RUN = dict(A_t=0.75, A_k=1.5, A_a=0.9, eb=1.5, lean=0.25, cycle=1.7, lift=0.04)


def vary_style(rng: np.random.Generator, base: dict, var: float) -> dict:
    """A person's own gait: `base`'s stride, knee bend, arm swing, elbow, lean and cadence each
    scaled by exp(N(0, 0.15 var)) (var 0: `base` itself)."""
    out = dict(base)
    for k in ("A_t", "A_k", "A_a", "eb", "cycle"):
        out[k] = base[k] * float(np.exp(rng.normal(0, 0.15 * var)))
    out["lean"] = base["lean"] + float(rng.normal(0, 0.05 * var))
    return out


def run_style(u: float) -> dict:
    """A gait between walking (u=0) and the default sprint (u=1): jogging at u ~ 0.5."""
    out = {k: WALK[k] + u * (RUN[k] - WALK[k]) for k in WALK}
    out["lift"] = RUN["lift"] * u
    return out


def vec(**kw) -> np.ndarray:
    v = np.zeros(len(PARAMS))
    v[P["kn_n"]] = v[P["kn_f"]] = 0.05
    v[P["eb_n"]] = v[P["eb_f"]] = 0.15
    for k, x in kw.items():
        v[P[k]] = x
    return v


STAND = vec()
SIT = vec(lean=-0.05, th_n=1.5, kn_n=1.5, th_f=1.45, kn_f=1.45, ua_n=0.55, eb_n=0.9, ua_f=0.5, eb_f=0.9)


def gait(phi: float, style: dict) -> np.ndarray:
    """Walking / running parameters at gait phase phi (near leg phase phi, far leg phi + pi)."""
    v = vec(lean=style["lean"])
    for side, ph in (("n", phi), ("f", phi + np.pi)):
        v[P["th_" + side]] = style["A_t"] * np.sin(ph)
        v[P["kn_" + side]] = 0.08 + style["A_k"] * max(0.0, np.cos(ph)) ** 1.5
        v[P["ua_" + side]] = -style["A_a"] * np.sin(ph)
        v[P["eb_" + side]] = style["eb"]
    return v


def _limb(origin, l1, a1, l2, a2, d):
    p1 = origin + l1 * np.array([d * np.sin(a1), np.cos(a1)])
    p2 = p1 + l2 * np.array([d * np.sin(a2), np.cos(a2)])
    return p1, p2


def joints(p: np.ndarray, h: float, d: int, x: float, ground: float) -> np.ndarray:
    """COCO-17 (x, y) image coordinates (17, 2) of a body with parameters p, feet at (x, ground)."""
    hip = np.zeros(2)
    lean = p[P["lean"]]
    neck = hip + TORSO * h * np.array([d * np.sin(lean), -np.cos(lean)])
    head = neck + NECK_HEAD * h * np.array([d * np.sin(lean), -np.cos(lean)])
    sh_n, sh_f = neck + np.array([-0.012 * d * h, 0.0]), neck + np.array([0.025 * d * h, -0.005 * h])
    hp_n, hp_f = hip + np.array([-0.01 * d * h, 0.0]), hip + np.array([0.02 * d * h, -0.004 * h])
    kn_n, an_n = _limb(hp_n, THIGH * h, p[P["th_n"]], SHIN * h, p[P["th_n"]] - p[P["kn_n"]], d)
    kn_f, an_f = _limb(hp_f, THIGH * h, p[P["th_f"]], SHIN * h, p[P["th_f"]] - p[P["kn_f"]], d)
    el_n, wr_n = _limb(sh_n, UPPER_ARM * h, p[P["ua_n"]], FOREARM * h, p[P["ua_n"]] + p[P["eb_n"]], d)
    el_f, wr_f = _limb(sh_f, UPPER_ARM * h, p[P["ua_f"]], FOREARM * h, p[P["ua_f"]] + p[P["eb_f"]], d)
    r = HEAD_R * h
    nose = head + np.array([d * 0.9 * r, 0.15 * r])
    eye_n, eye_f = head + np.array([d * 0.55 * r, -0.2 * r]), head + np.array([d * 0.75 * r, -0.25 * r])
    ear_n, ear_f = head + np.array([-d * 0.1 * r, -0.05 * r]), head + np.array([d * 0.15 * r, -0.1 * r])
    # near side is the body's left when facing right (d=+1), its right when facing left
    left = dict(eye=eye_n, ear=ear_n, sh=sh_n, el=el_n, wr=wr_n, hp=hp_n, kn=kn_n, an=an_n)
    right = dict(eye=eye_f, ear=ear_f, sh=sh_f, el=el_f, wr=wr_f, hp=hp_f, kn=kn_f, an=an_f)
    if d < 0:
        left, right = right, left
    pts = [nose, left["eye"], right["eye"], left["ear"], right["ear"], left["sh"], right["sh"],
           left["el"], right["el"], left["wr"], right["wr"], left["hp"], right["hp"],
           left["kn"], right["kn"], left["an"], right["an"]]
    j = np.stack(pts)
    rot = p[P["rot"]]
    if rot:
        foot = j[[15, 16]].mean(0)  # pivot about the ankles
        rel = j - foot
        c, s = np.cos(rot), np.sin(rot)
        j = foot + np.stack([rel[:, 0] * c - d * rel[:, 1] * s, d * rel[:, 0] * s + rel[:, 1] * c], 1)
    j[:, 1] += ground - j[:, 1].max() - p[P["lift"]] * h
    j[:, 0] += x
    return j


class Timeline:
    """Per-frame (x, params, abnormal) of one actor, built by appending behaviours.

    x is the feet position along the walking line; the caller supplies h, d, ground and the rng.
    """

    def __init__(self, x0: float, h: float, d: int, rng: np.random.Generator, speed_scale: float = 1.0):
        self.x, self.h, self.d, self.rng = float(x0), h, d, rng
        self.phi = rng.uniform(0, 2 * np.pi)
        self.v = h * rng.uniform(0.022, 0.032) * speed_scale
        self.wobble = (rng.uniform(40, 90), rng.uniform(0, 2 * np.pi))
        self.xs, self.ps, self.ab = [], [], []
        self.style = WALK  # this person's walking gait (vary_style)

    def _push(self, p, abnormal):
        self.xs.append(self.x)
        self.ps.append(np.asarray(p, float))
        self.ab.append(bool(abnormal))

    def _speed(self, factor=1.0):
        per, ph = self.wobble
        return self.v * factor * (1 + 0.12 * np.sin(2 * np.pi * len(self.xs) / per + ph))

    def walk(self, n=None, until=None, style=None, factor=1.0, abnormal=False, arms=None):
        """Walk n frames, or until x passes `until` (style: gait dict, default self.style; a
        "lift" key bounces the body, as running does); arms(t) may override the arm parameters."""
        style = self.style if style is None else style
        t = 0
        while (n is not None and t < n) or (n is None and (until - self.x) * self.d > 0):
            v = self._speed(factor)
            p = gait(self.phi, style)
            if arms is not None:
                p[[P["ua_n"], P["eb_n"], P["ua_f"], P["eb_f"]]] = arms(t)
            if style.get("lift"):
                p[P["lift"]] = style["lift"] * abs(np.sin(self.phi))
            self._push(p, abnormal)
            self.x += self.d * v
            self.phi += 2 * np.pi * v / (style["cycle"] * self.h)
            t += 1
            if t > 5000:
                raise RuntimeError("walk did not reach its target")

    def last(self):
        return self.ps[-1] if self.ps else STAND

    def blend(self, target, n, abnormal=False):
        start = self.last()
        for i in range(1, n + 1):
            a = i / n
            a = a * a * (3 - 2 * a)
            self._push((1 - a) * start + a * target, abnormal)

    def hold(self, n, fn, abnormal=False):
        for t in range(n):
            self._push(fn(t), abnormal)

    # behaviours -----------------------------------------------------------------------------
    def sit(self, n, abnormal=False):
        self.blend(SIT, 10, abnormal)
        ph = self.rng.uniform(0, 6.3)
        self.hold(n, lambda t: SIT + vec(lean=0.03 * np.sin(t / 9 + ph)) - vec(), abnormal)
        self.blend(STAND, 10, abnormal)

    def wave(self, n, abnormal=False):
        up = vec(ua_n=2.7, eb_n=0.5, ua_f=0.1)
        self.blend(up, 6, abnormal)
        per = self.rng.uniform(8, 12)
        self.hold(n, lambda t: up + vec(eb_n=0.45 * np.sin(2 * np.pi * t / per), ua_n=0.15 * np.sin(2 * np.pi * t / per)) - vec(), abnormal)
        self.blend(STAND, 6, abnormal)

    def jump(self, n_jumps, abnormal=True, height=None):
        """n_jumps jumps in place; height (fraction of h) drawn in [0.25, 0.4) unless given."""
        per = int(self.rng.integers(12, 17))
        drawn = self.rng.uniform(0.25, 0.4)  # drawn either way: the same random stream
        height = drawn if height is None else height

        def f(t):
            air = max(0.0, np.sin(np.pi * (t % per) / per * 1.25)) if (t % per) < per / 1.25 else 0.0
            crouch = 1 - air
            return vec(lift=height * air, th_n=0.9 * air + 0.5 * crouch * 0.4, kn_n=1.7 * air + 0.8 * crouch * 0.4,
                       th_f=0.8 * air + 0.5 * crouch * 0.4, kn_f=1.6 * air + 0.8 * crouch * 0.4,
                       ua_n=2.6 * air + 0.3, ua_f=2.4 * air + 0.3, eb_n=0.3, eb_f=0.3, lean=0.1 * crouch)
        self.blend(f(0), 4, abnormal)
        self.hold(per * n_jumps, f, abnormal)
        self.blend(STAND, 4, abnormal)

    def fall(self, lie, abnormal=True, n=9):
        """Fall over in n frames, lie `lie` frames, get up."""
        start = self.last().copy()
        for i in range(1, n + 1):
            a = (i / n) ** 2
            p = start * (1 - a)
            p[P["rot"]] = a * np.pi / 2
            p[P["ua_n"]], p[P["ua_f"]] = 1.6 * a + 0.3, 2.2 * a
            self._push(p, abnormal)
        down = self.last().copy()
        self.hold(lie, lambda t: down + 0.04 * np.sin(t / 5) * (vec(ua_n=1.0, th_f=1.0) - vec()), abnormal)
        self.blend(STAND, 14, abnormal)

    def flail(self, n, abnormal=True, amp=None):
        """Walk slowly flailing: arms windmilling (amp None) or swinging +-amp radians."""
        w = 2 * np.pi / self.rng.uniform(7, 10)
        if amp is None:
            def arms(t):
                return (w * t, 0.6 + 0.5 * np.sin(3 * w * t), w * t + np.pi, 0.6 + 0.5 * np.cos(3 * w * t))
        else:
            def arms(t):
                return (1.4 + amp * np.sin(w * t), 0.6 + 0.5 * np.sin(3 * w * t), 1.4 + amp * np.sin(w * t + 2.0),
                        0.6 + 0.5 * np.cos(3 * w * t))
        self.walk(n, factor=0.6, abnormal=abnormal, arms=arms)

    def pause(self, n):
        """Stand still for n frames (looking around): a normal interruption of walking."""
        self.blend(STAND, 6)
        ph = self.rng.uniform(0, 6.3)
        self.hold(n, lambda t: STAND + vec(lean=0.02 * np.sin(t / 11 + ph)) - vec())

    def arrays(self):
        return np.asarray(self.xs), np.stack(self.ps), np.asarray(self.ab)
