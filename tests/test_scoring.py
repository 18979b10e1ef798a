from __future__ import annotations

import numpy as np
import pytest

from deepscan.results import FaceResult, FrameResult
from deepscan.scoring import Aggregation, aggregate, track_score, verdict_for


def frames_from(tracks: dict[int, list[float]]) -> list[FrameResult]:
    n = max(len(v) for v in tracks.values())
    frames = []
    for i in range(n):
        fr = FrameResult(index=i, time_s=i * 0.5)
        for tid, scores in tracks.items():
            if i < len(scores):
                fr.faces.append(FaceResult(box=[0, 0, 10, 10], prob=0.99, track=tid, score=scores[i]))
        frames.append(fr)
    return frames


def test_confident_fakes_are_not_diluted_by_ordinary_frames():
    scores = [0.95] * 14 + [0.3] * 18  # manipulation visible in 14 of 32 frames
    assert track_score(scores) == pytest.approx(0.95)
    assert sum(scores) / len(scores) < 0.6  # a plain mean would have missed it


def test_mostly_confident_reals_use_their_mean():
    scores = [0.05] * 30 + [0.7, 0.9]
    assert track_score(scores) == pytest.approx(0.05)


def test_mixed_scores_fall_back_to_the_mean():
    scores = [0.1, 0.5, 0.6, 0.3]
    assert track_score(scores) == pytest.approx(0.375)


def test_a_single_high_face_alone_does_not_count_as_confident():
    assert track_score([0.99] + [0.4] * 31) == pytest.approx((0.99 + 0.4 * 31) / 32)


def test_verdicts_around_threshold():
    assert verdict_for(0.7, 0.6, 0.1) == "fake"
    assert verdict_for(0.6, 0.6, 0.1) == "fake"
    assert verdict_for(0.55, 0.6, 0.1) == "uncertain"
    assert verdict_for(0.2, 0.6, 0.1) == "real"
    assert verdict_for(None, 0.6, 0.1) == "no_face"


def test_video_is_as_fake_as_its_most_suspicious_person():
    frames = frames_from({0: [0.05] * 20, 1: [0.9] * 20})
    score, verdict, tracks = aggregate(frames, threshold=0.5, band=0.1)
    assert verdict == "fake" and score == pytest.approx(0.9)
    assert [t.verdict for t in tracks] == ["real", "fake"]


def test_a_fleeting_detection_does_not_decide_the_video():
    frames = frames_from({0: [0.05] * 32, 1: [0.99]})  # one false detection in one frame
    score, verdict, tracks = aggregate(frames, threshold=0.5, band=0.1)
    assert verdict == "real" and score == pytest.approx(0.05)
    assert tracks[1].counted is False


def test_no_faces_means_no_face_verdict():
    score, verdict, tracks = aggregate([FrameResult(index=0, time_s=0.0)], 0.5, 0.1)
    assert (score, verdict, tracks) == (None, "no_face", [])


def test_aggregation_parameters_are_respected():
    agg = Aggregation(hi=0.6, fake_fraction=0.2)
    assert track_score([0.7] * 3 + [0.3] * 7, agg) == pytest.approx(0.7)


def test_score_interval_brackets_the_score_and_is_reproducible():
    from deepscan.scoring import score_interval

    frames = frames_from({0: [0.2, 0.4, 0.6, 0.3, 0.5, 0.45, 0.35, 0.55]})
    score, _, tracks = aggregate(frames, threshold=0.5, band=0.1)
    lo, hi = score_interval(tracks)
    assert lo <= score <= hi and hi - lo > 0.05
    assert score_interval(tracks) == (lo, hi)
    steady = frames_from({0: [0.05] * 32})
    _, _, tracks = aggregate(steady, 0.5, 0.1)
    assert score_interval(tracks) == (0.05, 0.05)


def test_track_scores_follow_the_confident_strategy_on_every_row():
    """The vectorised rule (tracks and the bootstrap's resamples) takes the branch the module docstring states
    (confident fakes, confident reals, plain mean) on every row, including short tracks and the branch
    boundaries; the reference below is that statement written out one row at a time."""
    from deepscan.scoring import track_scores

    def confident_strategy(row, agg):
        fakes = [x for x in row if x > agg.hi]
        reals = [x for x in row if x < agg.lo]
        # A track shorter than min_confident needs one confident fake (and the fraction).
        needed = agg.min_confident if len(row) >= agg.min_confident else 1
        if len(fakes) >= agg.fake_fraction * len(row) and len(fakes) >= needed:
            return sum(fakes) / len(fakes)
        if len(reals) > agg.real_fraction * len(row):
            return sum(reals) / len(reals)
        return sum(row) / len(row)

    rng = np.random.default_rng(1)
    agg = Aggregation()
    for n in (1, 2, 3, 5, 8, 10, 32):
        # Exactly as many confident scores as a branch needs: 9 of 10 real (not > 0.9 n), 4 of 10 fake (0.4 n),
        # 3 of 5 fake (min_confident).
        edges = [[0.05] * k + [0.5] * (n - k) for k in range(n + 1)] + [[0.95] * k + [0.5] * (n - k) for k in range(n + 1)]
        rows = np.concatenate([rng.random((200, n)),
                               rng.choice([0.05, 0.5, 0.95], (200, n)),
                               np.array(edges), np.full((1, n), agg.hi), np.full((1, n), agg.lo)])
        expected = [confident_strategy(list(r), agg) for r in rows]
        np.testing.assert_allclose(track_scores(rows, agg), expected, rtol=0, atol=1e-12)
