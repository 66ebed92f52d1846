"""A contact sheet of synthetic frames (what docs/synthetic_frames.png shows).

``python -m mgnet.data.synth_preview ROOT OUT.png`` tiles one training frame per scene and, per
test event kind, the middle abnormal frame of its first video, each labelled (2x nearest upscale).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from .video import open_frames


def preview(root, out, cols: int = 4, scale: int = 2) -> str:
    with open(os.path.join(root, "synth.json")) as f:
        meta = json.load(f)
    tiles, scenes_done, events_done = [], set(), set()
    for name, v in sorted(meta["videos"].items()):
        if v["split"] == "train" and v["scene"] not in scenes_done:
            scenes_done.add(v["scene"])
            src = open_frames(os.path.join(root, "training", "videos", name + ".avi"))
            tiles.append((src.get([len(src) // 2])[0], f"train {name} ({meta['scenes'][v['scene']]}): normal"))
    for name, v in sorted(meta["videos"].items()):
        ev = tuple(v["event"])
        if v["split"] != "test" or ev in events_done or ev[0] == "none":
            continue
        events_done.add(ev)
        types = np.load(os.path.join(root, "gt", "test_frame_types", name + ".npy"))
        idx = np.nonzero(types)[0]
        t = int(idx[len(idx) // 2]) if len(idx) else len(types) // 2
        src = open_frames(os.path.join(root, "testing", "frames", name))
        tiles.append((src.get([t])[0], f"test {name}: {ev[0]} ({ev[1]}), frame {t}"))
    h, w = tiles[0][0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    lab = 14
    sheet = Image.new("RGB", (cols * w * scale, rows * (h * scale + lab)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (img, text) in enumerate(tiles):
        r, c = divmod(k, cols)
        y = r * (h * scale + lab)
        sheet.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST), (c * w * scale, y + lab))
        draw.text((c * w * scale + 3, y + 1), text, fill="black")
    tmp = str(out) + ".tmp.png"
    sheet.save(tmp)
    os.replace(tmp, out)
    return str(out)


if __name__ == "__main__":
    print(preview(sys.argv[1], sys.argv[2]))
