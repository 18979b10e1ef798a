from __future__ import annotations

import numpy as np
import pytest

from deepscan.crops import crop_face, normalise, paste_heatmap, square_box


def test_square_box_is_centred_and_expanded():
    x1, y1, x2, y2 = square_box((10, 20, 50, 100), margin=0.5)
    assert (x2 - x1) == pytest.approx(120) and (y2 - y1) == pytest.approx(120)
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == (30, 60)


def test_crop_face_takes_the_right_pixels():
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[50:150, 100:200] = 255  # a white "face" 100 px wide
    crop = crop_face(frame, (100, 50, 200, 150), margin=0.0, size=50)
    assert crop.shape == (50, 50, 3)
    assert crop.mean() > 250  # exactly the white square, nothing around it
    wide = crop_face(frame, (100, 50, 200, 150), margin=1.0, size=100)
    assert wide[25:75, 25:75].mean() > 250 and wide[:20].mean() < 5  # face in the middle half


def test_crop_at_the_border_replicates_edges_instead_of_black():
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_face(frame, (0, 0, 40, 40), margin=1.0, size=64)
    assert crop.min() == 200  # no black padding a detector could learn


def test_normalise_layout_and_values():
    crops = np.zeros((2, 8, 8, 3), np.uint8)
    crops[1, ..., 0] = 255
    t = normalise(crops, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert tuple(t.shape) == (2, 3, 8, 8)
    assert float(t[0].min()) == pytest.approx(-1.0)
    assert float(t[1, 0].max()) == pytest.approx(1.0)


def test_paste_heatmap_maps_back_into_the_face_square():
    box = (40, 40, 80, 80)
    heat = np.zeros((32, 32), np.float32)
    heat[8:24, 8:24] = 1.0  # middle half of the crop
    full, (x1, y1, x2, y2) = paste_heatmap(heat, box, margin=1.0, frame_shape=(200, 200))
    assert (x1, y1, x2, y2) == (20, 20, 100, 100)
    assert full.shape == (80, 80)
    assert full[40, 40] == pytest.approx(1.0) and full[2, 2] == pytest.approx(0.0)


@pytest.mark.parametrize("x1", [100.0, 100.3, 100.7, 100.95])
def test_points_land_where_the_crop_shows_them(x1):
    """A landmark mapped into the crop (what the training cache stores beside each crop) falls on the pixel
    the crop shows it at: measured from the pixel square crop_face cuts, not the float square, which was up
    to a pixel off (0.9 context px on average on real faces)."""
    from deepscan.crops import to_crop

    frame = np.zeros((400, 400, 3), np.uint8)
    marks = np.array([[150, 170], [210, 160], [185, 230]])
    frame[marks[:, 1], marks[:, 0]] = 255
    box = (x1 + 40, 140.2, x1 + 140, 240.2)  # margin 0: a 100-px square cut at full size, so pixels map 1:1
    crop = crop_face(frame, box, 0.0, 100)
    mapped = to_crop(marks, box, 0.0, 100)
    assert np.array_equal(mapped, np.round(mapped))  # whole pixels, as they are in the frame
    lit = np.argwhere(crop[..., 0] == 255)[:, ::-1]
    assert sorted(map(tuple, mapped.astype(int))) == sorted(map(tuple, lit))
