"""Report pieces: events and thresholds, score colours, the timeline PNG, the H.264 annotated
video (read back), and the HTML report opened in headless Chromium."""
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from mgnet.report.annotated_video import write_annotated_video
from mgnet.report.colours import GREY, score_colour, score_unit
from mgnet.report.events import best_f1_threshold, find_events, resolve_threshold
from mgnet.report.html import write_report
from mgnet.report.timeline import plot_timeline

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str:
    """Path of headless Chromium (`make test` installs it once, before the suite). Fails with a
    clear message when it is absent -- never skips, never installs from inside a test."""
    exe = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if not exe:
        pytest.fail("headless Chromium is needed to check the HTML report and is not installed; "
                    "`make test` installs it (apt-get install chromium)")
    return exe


def dump_dom(html_path) -> str:
    """The DOM of a local HTML file after Chromium has loaded it (and its video's metadata)."""
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--dump-dom", f"file://{os.path.abspath(html_path)}"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_find_events_known_runs_merging_and_persons():
    s = np.array([0, 1, 1, 0, 1, 0, 0, 0, 2, 2, 3, 0, np.nan, 1], dtype=float)
    p = {7: np.where(np.arange(14) < 6, s, 0.0), 9: np.where(np.arange(14) >= 6, s, 0.0)}
    ev = find_events(s, 1.0, p)
    assert [(e["start"], e["end"]) for e in ev] == [(1, 2), (4, 4), (8, 10), (13, 13)]
    assert ev[2]["peak_frame"] == 10 and ev[2]["peak_score"] == 3.0 and ev[2]["persons"] == [9]
    assert ev[0]["persons"] == [7]
    ev = find_events(s, 1.0, p, merge_gap=1, min_length=2, fps=10)
    assert [(e["start"], e["end"]) for e in ev] == [(1, 4), (8, 10)]
    assert ev[0]["start_s"] == 0.1 and ev[0]["end_s"] == 0.5
    assert find_events(np.zeros(5), 0.5) == []


def test_best_f1_threshold_and_resolve():
    thr, f1 = best_f1_threshold(np.array([0.1, 0.2, 0.8, 0.9, 0.3]), np.array([0, 0, 1, 1, 0]))
    assert thr == 0.8 and f1 == 1.0
    thr, f1 = best_f1_threshold(np.array([0.1, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1]))
    assert thr == 0.5 and f1 == pytest.approx(0.8)  # cut at 0.5: tp 2, fp 1 -> 4/5
    # unscored frames (-inf) count as normal and never become the threshold
    thr, f1 = best_f1_threshold(np.array([-np.inf, -np.inf, 0.2, 0.9, np.nan]), np.array([1, 1, 0, 1, 1]))
    assert thr == 0.9 and f1 == pytest.approx(2 * 1 / (1 + 0 + 3))
    stats = {"fused": {"p99": 1.7, "p95": 1.2}}
    assert resolve_threshold("p99", stats) == 1.7 and resolve_threshold("0.4", stats) == 0.4
    with pytest.raises(ValueError, match="only percentiles"):
        resolve_threshold("p98", stats)
    with pytest.raises(ValueError, match="expected a number"):
        resolve_threshold("high", stats)


def test_score_colours_run_green_yellow_red():
    assert score_colour(float("nan"), 1.0) == GREY
    assert score_unit(1.0, 1.0) == 0.5 and score_unit(5.0, 1.0) == 1.0 and score_unit(-1.0, 1.0) == 0.0
    r, g, b = score_colour(0.0, 1.0)
    assert g > r  # green
    r, g, b = score_colour(2.0, 1.0)
    assert r > 2 * g  # red
    r, g, b = score_colour(1.0, 1.0)
    assert r > 200 and g > 200 and b < 200  # yellow


def test_timeline_png(tmp_path):
    s = np.r_[np.full(8, np.nan), np.linspace(0, 2, 40)]
    ev = find_events(s, 1.0)
    p = plot_timeline(tmp_path / "t.png", s, 1.0, ev, components={"mo": s / 2}, fps=25, title="v",
                      labels=(s > 1.5).astype(int))
    img = np.asarray(Image.open(p))
    assert img.shape[0] > 200 and img.shape[1] > 600
    assert list(tmp_path.iterdir()) == [p]  # no temp file left


def _person(cx, cy, score):
    ys = np.linspace(-25, 25, 17)
    xs = np.tile([-8.0, 8.0], 9)[:17]
    return np.stack([cx + xs, cy + ys, np.full(17, 0.9)], -1).astype(np.float32), score


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    d = tmp_path_factory.mktemp("av")
    n, h, w = 30, 120, 161  # odd width: the writer must pad for yuv420p
    frames = [np.full((h, w, 3), 40, np.uint8) for _ in range(n)]
    scores = np.r_[np.full(8, np.nan), np.linspace(0.0, 3.0, n - 8)]
    people = []
    for t in range(n):
        k1, _ = _person(40, 55, 0.0)
        k2, _ = _person(120, 55, 0.0)
        people.append([(1, k1, 0.0), (2, k2, 3.0 if t >= 8 else float("nan"))])
    vid = write_annotated_video(d / "a.mp4", frames, people, scores, threshold=1.0, fps=10, min_height=0)
    return d, vid, n, h, w


def test_annotated_video_reads_back_as_h264_with_coloured_people(small_video):
    d, vid, n, h, w = small_video
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(vid))
    info = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(info["size"][1], info["size"][0], 3) for f in reader]
    assert info["codec"] == "h264" and info["pix_fmt"].startswith("yuv420p")
    assert len(frames) == n
    assert info["size"][0] % 2 == 0 and info["size"][0] >= w and info["size"][1] > h  # strip under the frame
    f = frames[20].astype(int)
    box1 = f[28:84, 30:52]  # person 1: score 0 -> green
    box2 = f[28:84, 110:132]  # person 2: score 3 (3x threshold) -> red
    g1 = box1[(box1[..., 1] - box1[..., 0]) > 60]
    r2 = box2[(box2[..., 0] - box2[..., 1]) > 60]
    assert len(g1) > 30 and len(r2) > 30
    assert not ((box1[..., 0] - box1[..., 1]) > 60).sum() > 5  # no red on the normal person
    early = frames[3].astype(int)[28:84, 110:132]
    assert ((early[..., 0] - early[..., 1]) > 60).sum() < 5  # not scored yet: grey, not red
    strip = f[h:, :]
    assert (strip > 200).sum() > 20  # the running curve is drawn
    Image.fromarray(frames[20]).save(d / "frame20.png")
    assert not [p for p in d.iterdir() if p.name.startswith(".")]


def test_html_report_opens_in_headless_chromium(small_video, tmp_path):
    d, vid, n, h, w = small_video
    s = np.linspace(0, 2, n)
    ev = find_events(s, 1.0, fps=10)
    png = plot_timeline(d / "timeline.png", s, 1.0, ev)
    rep = write_report(d / "report.html", "clip <a>", png, vid, ev, {"video": "a.mp4", "threshold": 1.0})
    text = rep.read_text()
    assert "clip &lt;a&gt;" in text and 'src="a.mp4"' in text and "http" not in text
    dom = dump_dom(rep)
    assert '<img id="timeline"' in dom and "data:image/png;base64," in dom
    assert '<video id="annotated"' in dom
    assert 'data-loaded="yes"' in dom, "Chromium could not decode the annotated H.264 video"
    assert 'data-duration="3.00"' in dom
    assert dom.count("<tr>") == 2 + 1 + len(ev)  # meta rows + events header + one row per event
    emb = write_report(tmp_path / "r.html", "x", png, vid, [], embed_video_max_bytes=10**7, links=["s.csv"])
    assert '<a href="s.csv">s.csv</a>' in emb.read_text()
    assert "data:video/mp4;base64," in emb.read_text() and "No frame reached" in emb.read_text()


def test_small_frames_are_enlarged_for_legible_labels():
    from mgnet.report.annotated_video import render_frame
    k, _ = _person(40, 50, 2.0)
    out = render_frame(np.zeros((96, 128, 3), np.uint8), [(1, k, 2.0)], np.full(5, 2.0), 2, 1.0, 4.0)
    assert out.shape[1] == 4 * 128 and out.shape[0] == 4 * 96 + 96  # x4 (>= 360 rows), strip of H/4
    red = (out[..., 0].astype(int) - out[..., 1]) > 60
    ys, xs = np.nonzero(red[:4 * 96])
    assert xs.min() >= 4 * 30 - 20 and xs.max() <= 4 * 50 + 20  # the skeleton scaled with the frame
