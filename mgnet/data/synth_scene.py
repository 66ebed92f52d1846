"""Drawing for the synthetic benchmark: scene backgrounds and articulated people (numpy + PIL).

Scenes have clearly different static backgrounds (colour, texture, structures): a park (grass,
trees, benches), a plaza (grey tiles, building with windows, fountain), a street (asphalt, zebra
crossing, brick facades), a beach (sand ripples, sea, sky), an indoor hall (checker floor, pillars)
and a snowy yard. People are drawn with thick limbs in muted clothing colours; carried/pushed
objects (appearance anomalies) are large and strongly saturated, placed beside the body inside its
keypoint crop box; benchmark variants (mgnet.data.synth_variants) draw them in the shirts' own colour
distribution, add a bicycle, foreground occluders and a lighting / white-balance gain.
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

SCENE_NAMES = ("park", "plaza", "street", "beach", "hall", "snow")
SKIN = [(224, 172, 105), (198, 134, 66), (141, 85, 36), (241, 194, 150), (110, 70, 40)]
OBJECT_COLOURS = [(255, 0, 255), (0, 255, 255), (255, 230, 0), (255, 90, 0), (0, 255, 80)]


def horizon(kind: int, H: int) -> int:
    return int(H * (0.36 if kind in (0, 3, 5) else 0.40))


def background(kind: int, W: int, H: int, rng: np.random.Generator, hz: int | None = None) -> np.ndarray:
    """A static background (H, W, 3) uint8 for scene `kind` (index into SCENE_NAMES); `hz` moves the
    horizon (a camera geometry of a benchmark variant; default: the scene's own `horizon`)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    hz = horizon(kind, H) if hz is None else int(hz)
    img = np.zeros((H, W, 3), np.float32)
    tex = rng.normal(0, 1, (H // 4 + 1, W // 4 + 1)).repeat(4, 0).repeat(4, 1)[:H, :W]

    def fill(mask, col, noise=0.0):
        img[mask] = np.asarray(col, np.float32) + noise * tex[mask][:, None]

    def rect(x0, y0, x1, y1, col):
        img[max(int(y0), 0):max(int(y1), 0), max(int(x0), 0):max(int(x1), 0)] = col

    sky = yy < hz
    if kind == 0:  # park: sky, tree line, grass, benches
        fill(sky, (150, 190, 230), 3)
        fill(~sky, (70, 125, 55), 10)
        for x in np.linspace(0, W, 7)[:-1] + rng.uniform(0, W / 7, 6):
            r = rng.uniform(0.08, 0.12) * H
            rect(x - 2, hz - r, x + 2, hz + 2, (90, 60, 30))
            img[(xx - x) ** 2 + (yy - (hz - r)) ** 2 < r * r] = (40, 90, 35)
        for x in (0.15 * W, 0.6 * W):
            y = hz + 0.18 * H
            rect(x, y, x + 0.2 * W, y + 0.04 * H, (120, 80, 40))
            rect(x + 3, y + 0.04 * H, x + 6, y + 0.09 * H, (60, 40, 20))
            rect(x + 0.2 * W - 6, y + 0.04 * H, x + 0.2 * W - 3, y + 0.09 * H, (60, 40, 20))
    elif kind == 1:  # plaza: beige building with windows, grey tiles, fountain
        fill(sky, (200, 185, 160), 4)
        for x in np.arange(6, W - 10, W / 8):
            for y in np.arange(6, hz - 10, hz / 3):
                rect(x, y, x + W / 16, y + hz / 5, (70, 90, 120))
        fill(~sky, (150, 150, 150), 6)
        tiles = (~sky) & (((xx % 16) < 1.5) | (((yy - hz) % 10) < 1.2))
        img[tiles] = (105, 105, 110)
        cx, cy = 0.8 * W, hz + 0.12 * H
        img[((xx - cx) / (0.12 * W)) ** 2 + ((yy - cy) / (0.05 * H)) ** 2 < 1] = (60, 120, 200)
    elif kind == 2:  # street: brick facades, asphalt, zebra crossing, kerb
        fill(sky, (150, 65, 50), 8)
        bricks = sky & ((((yy % 6) < 1) | (((xx + 6 * ((yy // 6) % 2)) % 12) < 1)))
        img[bricks] = (190, 170, 160)
        for x in np.arange(8, W - 12, W / 6):
            rect(x, 0.15 * hz, x + W / 14, 0.7 * hz, (30, 30, 45))
        fill(~sky, (55, 55, 60), 5)
        rect(0, hz, W, hz + 3, (170, 170, 160))
        zebra = (~sky) & (xx > 0.35 * W) & (xx < 0.65 * W) & (((yy - hz) % 12) < 6) & (yy > hz + 8)
        img[zebra] = (215, 215, 210)
    elif kind == 3:  # beach: sky, sea, sand with ripples
        fill(sky, (120, 180, 240), 2)
        sea = (~sky) & (yy < hz + 0.12 * H)
        fill(sea, (30, 90, 170), 8)
        sand = (~sky) & ~sea
        img[sand] = np.stack([225 + 8 * np.sin(yy[sand] / 2.5 + xx[sand] / 20), 200 + 6 * np.sin(yy[sand] / 2.5),
                              150 + 0 * yy[sand]], 1)
    elif kind == 4:  # indoor hall: dark wall, pillars, checker floor
        fill(sky, (70, 60, 90), 3)
        for x in np.arange(0, W, W / 5):
            rect(x, 0, x + W / 20, hz, (180, 175, 190))
        fill(~sky, (120, 100, 140), 0)
        checker = (~sky) & ((((xx // 14) + ((yy - hz) // 10)) % 2) == 0)
        img[checker] = (200, 190, 150)
    else:  # snow: grey sky, dark pines, white ground with blue shadows
        fill(sky, (190, 195, 205), 2)
        for x in np.linspace(0, W, 9)[:-1] + rng.uniform(0, W / 9, 8):
            r = rng.uniform(0.07, 0.1) * H
            tri = sky & (yy > hz - 2.5 * r) & (np.abs(xx - x) < (yy - (hz - 2.5 * r)) * 0.45)
            img[tri] = (25, 60, 40)
        fill(~sky, (235, 238, 245), 4)
        img[(~sky) & (np.sin(xx / 9 + yy / 3) > 0.93)] = (190, 200, 225)
    return np.clip(img, 0, 255).astype(np.uint8)


def muted(rng: np.random.Generator, smax=0.6, vlo=0.3, vhi=0.8) -> tuple:
    """A muted RGB colour: hue uniform, saturation in [0.1, smax], value in [vlo, vhi]."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, smax), rng.uniform(vlo, vhi))
    return (int(r * 255), int(g * 255), int(b * 255))


def natural_object_colour(rng: np.random.Generator) -> tuple:
    """An object colour drawn from the shirts' own distribution (`random_clothes`), so neither hue,
    saturation nor brightness tells a carried or pushed object from clothing."""
    return muted(rng)


def random_clothes(rng: np.random.Generator) -> dict:
    """Muted clothing colours (saturation <= 0.6, value <= 0.8) so anomaly objects stand out."""
    return dict(shirt=muted(rng), pants=muted(rng, 0.5, 0.15, 0.55), skin=SKIN[rng.integers(len(SKIN))],
                hair=muted(rng, 0.5, 0.05, 0.3), shoes=(30, 30, 30), sleeves=bool(rng.random() < 0.6))


def _shade(c, f):
    return tuple(int(v * f) for v in c)


def draw_person(draw: ImageDraw.ImageDraw, j: np.ndarray, h: float, d: int, clothes: dict) -> None:
    """Draw a body from its COCO-17 joints j (17, 2): far limbs, torso, near limbs, head."""
    w = max(2, int(round(0.075 * h)))
    # near side = left joints when facing right
    near, far = ((5, 7, 9, 11, 13, 15), (6, 8, 10, 12, 14, 16)) if d > 0 else ((6, 8, 10, 12, 14, 16), (5, 7, 9, 11, 13, 15))

    def seg(a, b, col, width):
        pa, pb = tuple(j[a]), tuple(j[b])
        draw.line([pa, pb], fill=col, width=width)
        r = width / 2
        for p in (pa, pb):
            draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=col)

    def leg(side, f):
        sh, el, wr, hp, kn, an = side
        seg(hp, kn, _shade(clothes["pants"], f), w + 1)
        seg(kn, an, _shade(clothes["pants"], f), w)
        a = j[an]
        draw.ellipse([a[0] - w * 0.7, a[1] - w * 0.5, a[0] + w * 0.7, a[1] + w * 0.5], fill=clothes["shoes"])

    def arm(side, f):
        sh, el, wr, hp, kn, an = side
        seg(sh, el, _shade(clothes["shirt"] if clothes["sleeves"] else clothes["skin"], f), w)
        seg(el, wr, _shade(clothes["skin"], f), max(2, w - 1))

    arm(far, 0.75)
    leg(far, 0.75)
    neck = 0.5 * (j[5] + j[6])
    hip = 0.5 * (j[11] + j[12])
    axis = neck - hip
    norm = np.array([-axis[1], axis[0]]) / (np.linalg.norm(axis) + 1e-6)
    tw = 0.085 * h
    poly = [tuple(neck + norm * tw), tuple(neck - norm * tw), tuple(hip - norm * tw * 0.9), tuple(hip + norm * tw * 0.9)]
    draw.polygon(poly, fill=clothes["shirt"])
    leg(near, 1.0)
    head = j[[1, 2, 3, 4]].mean(0)
    r = 0.068 * h
    draw.ellipse([head[0] - r, head[1] - r, head[0] + r, head[1] + r], fill=clothes["skin"])
    draw.chord([head[0] - r, head[1] - r, head[0] + r, head[1] + r], 180, 360, fill=clothes["hair"])
    arm(near, 1.0)


def draw_object(draw: ImageDraw.ImageDraw, j: np.ndarray, h: float, d: int, obj: dict) -> None:
    """A large object beside the body (inside the keypoint box expanded by 20%): 'box' carried at
    chest height, 'cart' pushed at hip height (with wheels), 'board' held upright, 'bicycle' wheeled
    alongside (two wheels, frame, handlebar at hand height). With ``obj["natural"]`` the outline and
    the band are shades of the object's own colour instead of black."""
    hip = 0.5 * (j[11] + j[12])
    feet = j[:, 1].max()
    col = obj["colour"]
    kind = obj["kind"]
    natural = bool(obj.get("natural"))
    edge, band_col = ((_shade(col, 0.6), _shade(col, 0.8)) if natural else ((0, 0, 0), (20, 20, 20)))
    if kind == "bicycle":
        _draw_bicycle(draw, hip, feet, h, d, col, obj.get("tyres", (35, 35, 35)))
        return
    if kind == "box":
        x0, x1, y0, y1 = hip[0] + d * 0.08 * h, hip[0] + d * 0.46 * h, feet - 0.78 * h, feet - 0.42 * h
    elif kind == "cart":
        x0, x1, y0, y1 = hip[0] + d * 0.12 * h, hip[0] + d * 0.5 * h, feet - 0.55 * h, feet - 0.12 * h
    else:
        x0, x1, y0, y1 = hip[0] + d * 0.1 * h, hip[0] + d * 0.4 * h, feet - 0.95 * h, feet - 0.2 * h
    x0, x1 = min(x0, x1), max(x0, x1)
    draw.rectangle([x0, y0, x1, y1], fill=col, outline=edge, width=max(1, int(0.025 * h)))
    band = (y0 + y1) / 2
    draw.line([(x0, band), (x1, band)], fill=band_col, width=max(1, int(0.04 * h)))
    if kind == "cart":
        r = 0.06 * h
        for cx in (x0 + r, x1 - r):
            draw.ellipse([cx - r, feet - 2 * r, cx + r, feet], fill=obj.get("tyres", (15, 15, 15)))


def _draw_bicycle(draw, hip, feet, h, d, col, tyres):
    r = 0.16 * h
    rear = np.array([hip[0] - d * 0.05 * h, feet - r])
    front = np.array([hip[0] + d * 0.62 * h, feet - r])
    crank = np.array([hip[0] + d * 0.22 * h, feet - r])
    seat = crank + np.array([-d * 0.06 * h, -0.42 * h])
    head = front + np.array([-d * 0.08 * h, -0.4 * h])
    wt = max(1, int(round(0.03 * h)))
    for c in (rear, front):
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=tyres, width=wt)
    fw = max(1, int(round(0.035 * h)))
    for a, b in ((rear, crank), (crank, seat), (seat, rear), (seat, head), (head, crank), (head, front)):
        draw.line([tuple(a), tuple(b)], fill=col, width=fw)
    bar = head + np.array([-d * 0.07 * h, -0.04 * h])
    draw.line([tuple(head), tuple(bar)], fill=tyres, width=fw)
    draw.line([tuple(seat + np.array([-0.05 * h, 0])), tuple(seat + np.array([0.05 * h, 0]))], fill=tyres, width=fw + 1)


def occluder_mask(occluders: list, W: int, H: int) -> np.ndarray:
    """(H, W) bool: the pixels the static foreground occluders cover."""
    im = Image.new("L", (W, H), 0)
    draw_occluders(ImageDraw.Draw(im), occluders, fill=255)
    return np.asarray(im) > 0


def draw_occluders(draw: ImageDraw.ImageDraw, occluders: list, fill=None) -> None:
    """Static foreground occluders (dicts kind 'post' | 'hedge' | 'block', box, colour), drawn over people."""
    for o in occluders:
        x0, y0, x1, y1 = o["box"]
        c = fill if fill is not None else tuple(o["colour"])
        if o["kind"] == "hedge":
            draw.ellipse([x0, y0, x1, y1 + (y1 - y0)], fill=c)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=c)


def random_occluders(rng: np.random.Generator, n: int, W: int, H: int, hz: int) -> list:
    """n foreground occluders standing on the lower frame edge: lamp posts, hedges, parked blocks."""
    out = []
    for _ in range(n):
        kind = ("post", "hedge", "block")[int(rng.integers(3))]
        x = rng.uniform(0.05, 0.95) * W
        if kind == "post":
            w, top = rng.uniform(0.02, 0.04) * W, rng.uniform(0.05, 0.4) * H
        elif kind == "hedge":
            w, top = rng.uniform(0.12, 0.25) * W, H - rng.uniform(0.12, 0.22) * H
        else:
            w, top = rng.uniform(0.08, 0.16) * W, H - rng.uniform(0.15, 0.3) * H
        col = muted(rng, 0.4, 0.2, 0.6)
        out.append(dict(kind=kind, box=[float(x - w / 2), float(max(top, hz)), float(x + w / 2), float(H)], colour=list(col)))
    return out


def render(bg: np.ndarray, people: list, noise: np.ndarray | None = None, occluders: list | None = None,
           gain: np.ndarray | None = None) -> np.ndarray:
    """Frame = background + people (each: dict joints, h, d, clothes, object or None), far ones first,
    then the foreground occluders; `gain` (3,) scales the channels (lighting and white balance)
    before the sensor noise is added."""
    im = Image.fromarray(bg)
    draw = ImageDraw.Draw(im)
    for p in sorted(people, key=lambda p: p["joints"][:, 1].max()):
        draw_person(draw, p["joints"], p["h"], p["d"], p["clothes"])
        if p.get("object") is not None:
            draw_object(draw, p["joints"], p["h"], p["d"], p["object"])
    if occluders:
        draw_occluders(draw, occluders)
    out = np.asarray(im)
    if gain is not None:
        out = np.clip(out.astype(np.float32) * np.asarray(gain, np.float32), 0, 255).round().astype(np.uint8)
    if noise is not None:
        out = np.clip(out.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out
