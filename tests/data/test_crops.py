"""Crop boxes from keypoints, crops at image borders (zero padding), scene images."""
import numpy as np
import pytest

from mgnet.data.crops import crop_squares, person_boxes, scene_images


def test_box_expanded_and_square():
    kps = np.zeros((1, 18, 3), np.float32)
    kps[0, :, 2] = 0.9
    kps[0, :9, :2] = [10, 20]
    kps[0, 9:, :2] = [30, 70]  # bbox 20 x 50
    (cx, cy, side), = person_boxes(kps, expand=0.2)
    assert (cx, cy) == (20, 45) and side == pytest.approx(60)


def test_box_ignores_low_confidence_joints():
    kps = np.zeros((1, 18, 3), np.float32)
    kps[0, :, :2] = [[10, 10]] * 9 + [[20, 30]] * 9
    kps[0, :, 2] = 0.9
    kps[0, 0] = [500, 500, 0.05]  # an outlier the detector is unsure about
    (cx, cy, side), = person_boxes(kps, expand=0.0, min_conf=0.1)
    assert side == pytest.approx(20)
    kps[:, :, 2] = 0.0  # no confident joint at all: use them all
    assert person_boxes(kps, 0.0, 0.1)[0, 2] == pytest.approx(490)


def test_crop_interior_is_exact_at_native_size():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    out = crop_squares(frame, np.array([[25.0, 20.0, 16.0]]), size=16)
    assert out.shape == (1, 3, 16, 16) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], frame[12:28, 17:33].transpose(2, 0, 1))


@pytest.mark.parametrize("cx,cy", [(2.0, 3.0), (48.0, 38.0), (2.0, 38.0), (25.0, 0.0)])
def test_crop_pads_at_border(cx, cy):
    rng = np.random.default_rng(1)
    frame = rng.integers(1, 255, (40, 50, 3), dtype=np.uint8)  # no zero pixels: padding is recognisable
    (c,) = crop_squares(frame, np.array([[cx, cy, 16.0]]), size=16)
    x0, y0 = int(round(cx - 8)), int(round(cy - 8))
    for yy in range(16):
        for xx in range(16):
            y, x = y0 + yy, x0 + xx
            want = frame[y, x] if (0 <= y < 40 and 0 <= x < 50) else 0
            np.testing.assert_array_equal(c[:, yy, xx], want)


def test_crop_resizes_large_box():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[:, 50:] = 200  # right half bright
    (c,) = crop_squares(frame, np.array([[50.0, 50.0, 80.0]]), size=16)
    assert c[:, :, :7].max() == 0 and c[:, :, 9:].min() == 200


def test_crop_fully_outside_is_zero():
    frame = np.full((20, 20, 3), 9, np.uint8)
    (c,) = crop_squares(frame, np.array([[-50.0, -50.0, 10.0]]), size=8)
    assert c.max() == 0


def test_scene_images():
    frames = np.zeros((2, 48, 64, 3), np.uint8)
    frames[0] = (10, 20, 30)
    frames[1, :24] = 255
    s = scene_images(frames, 8)
    assert s.shape == (2, 3, 8, 8) and s.dtype == np.uint8
    np.testing.assert_array_equal(s[0, :, 3, 3], [10, 20, 30])
    assert s[1, :, :3].min() == 255 and s[1, :, 5:].max() == 0
