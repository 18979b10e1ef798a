from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLE_CLIPS

from deepscan.faces import Face, FaceFinder, Tracker, iou


def face(x, y, s=50):
    return Face(box=(x, y, x + s, y + s), prob=0.99, landmarks=np.zeros((5, 2), np.float32))


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_tracker_follows_two_people_and_keeps_them_apart():
    tracker = Tracker()
    ids = []
    for step in range(10):
        # person A drifts right, person B stays; B is listed first on odd frames
        a, b = face(20 + 8 * step, 50), face(300, 60)
        faces = [b, a] if step % 2 else [a, b]
        tracker.update(faces)
        ids.append((a.track, b.track))
    assert len({a for a, _ in ids}) == 1 and len({b for _, b in ids}) == 1
    assert ids[0][0] != ids[0][1]


def test_tracker_links_across_a_jump_within_reach_but_not_far_away():
    tracker = Tracker()
    first = tracker.update([face(100, 100)])[0]
    near = tracker.update([face(125, 100)])[0]  # moved half a face: same person
    far = tracker.update([face(400, 300)])[0]  # somewhere else entirely: someone new
    assert near.track == first.track and far.track != first.track


def test_tracker_forgets_ended_tracks_but_keeps_those_that_may_return():
    tracker = Tracker(max_gap=3)
    tracker.update([face(0, 0)])
    # A crowd: every sampled frame shows a new face somewhere else, for a long video's worth of frames.
    for step in range(1, 2000):
        tracker.update([face(100 * (step % 20), 100 * (step // 20), 30)])
    assert len(tracker.tracks) <= tracker.max_gap + 1  # it held all 2,000 before, matched against each frame
    # A face missed for fewer than max_gap sampled frames continues its track; one missed for max_gap ended.
    tracker = Tracker(max_gap=3)
    returning = tracker.update([face(500, 500)])[0].track
    for _ in range(2):
        tracker.update([])
    assert tracker.update([face(500, 500)])[0].track == returning
    for _ in range(3):
        tracker.update([])
    assert tracker.update([face(500, 500)])[0].track != returning


def test_face_finder_maps_boxes_to_full_resolution():
    path = SAMPLE_CLIPS / "astronaut_real.mp4"
    if not path.exists():
        pytest.skip("sample clips not generated")
    from deepscan.detector.card import FaceDetectorSettings
    from deepscan.video import iter_frames

    frame = next(iter_frames(path, n_frames=1))[0].image
    full = FaceFinder(FaceDetectorSettings(detect_max_side=10_000)).detect([frame])[0]
    small = FaceFinder(FaceDetectorSettings(detect_max_side=frame.shape[1] // 2)).detect([frame])[0]
    assert len(full) >= 1 and len(small) >= 1
    big_full = max(full, key=lambda f: f.size)
    big_small = max(small, key=lambda f: f.size)
    # The half-size detection, mapped back, lands on the same face within a few percent of its size.
    assert np.abs(np.subtract(big_full.box, big_small.box)).max() < 0.15 * big_full.size
    assert big_small.landmarks.shape == (5, 2)


def test_follow_crops_equal_one_resampling_per_cut():
    """FaceFinder._crops resamples cuts of one shape together and channels-first: the same numbers as
    facenet-pytorch's way, one imresample per cut of the HWC image (boxes partly off the image included)."""
    import torch
    from facenet_pytorch.models.utils.detect_face import imresample, pad

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    centres = rng.uniform([-30, -30, 16], [350, 270, 150], (12, 3))
    boxes = torch.tensor([[x - s / 2, y - s / 2, x + s / 2, y + s / 2, 1.0] for x, y, s in centres], dtype=torch.float32)
    boxes = torch.cat([boxes, boxes + torch.tensor([7.0, 3.0, 7.0, 3.0, 0.0])])  # pairs of one size
    for side in (24, 48):
        crops, kept = FaceFinder._crops(image, boxes.clone(), side, "cpu")
        y, ey, x, ex = pad(boxes.clone(), image.shape[1], image.shape[0])
        on = [k for k in range(len(y)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
        expected = torch.cat([imresample(torch.from_numpy(image[y[k] - 1:ey[k], x[k] - 1:ex[k]].copy())
                                         .permute(2, 0, 1)[None].float(), (side, side)) for k in on])
        assert torch.equal(crops, (expected - 127.5) * 0.0078125)
        assert torch.equal(kept, boxes[on])


def test_detect_finds_what_facenet_finds_on_its_own_input_layout():
    """On the CPU the frames go to facenet-pytorch held channels-first in memory (faster there); its
    detections must be those of the plain HWC arrays, box for box and landmark for landmark."""
    from deepscan.video import iter_frames

    clips = sorted(SAMPLE_CLIPS.glob("*.mp4"))
    if not clips:
        pytest.skip("sample clips not generated")
    finder = FaceFinder()
    for clip in clips:
        images = [f.image for batch in iter_frames(clip, n_frames=6) for f in batch]
        h, w = images[0].shape[:2]
        assert max(h, w) <= finder.settings.detect_max_side  # no downscaling: facenet sees these very arrays
        found = finder.detect(images)
        boxes, probs, points = finder.mtcnn.detect(np.stack(images), landmarks=True)
        expected = [finder._kept(b, p, pts, 1.0, w, h) if b is not None else []
                    for b, p, pts in zip(boxes, probs, points, strict=True)]
        assert sum(len(f) for f in found) >= len(images)
        for got, want in zip(found, expected, strict=True):
            assert [(f.box, f.prob) for f in got] == [(f.box, f.prob) for f in want]
            assert all(np.array_equal(a.landmarks, b.landmarks) for a, b in zip(got, want, strict=True))
