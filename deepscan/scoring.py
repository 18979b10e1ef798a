"""Scoring stage: face scores → track (person) scores → video score and verdict.

Aggregation follows the "confident strategy" that won the DFDC (Seferbekov, 1st place): a plain mean lets
many unremarkable frames drown a manipulation that is only visible in part of a clip, and lets a few noisy
frames push a real clip upwards. For each track, with n face scores:

* if at least ``fake_fraction`` of them (and at least ``min_confident``; one, in a track shorter than that)
  are confidently fake (> ``hi``), the track score is the mean of those confident scores;
* else if more than ``real_fraction`` of them are confidently real (< ``lo``), the mean of those;
* else the plain mean.

A video is as fake as its most suspicious person: the video score is the maximum track score over tracks
seen often enough to be trusted (at least ``min_track_fraction`` of the sampled frames, and 2 sightings);
if no track qualifies, over all tracks. The verdict compares it with the model card's threshold:
``fake`` at or above it, ``uncertain`` within ``uncertain_band`` below it, else ``real``; ``no_face`` when
no face was found in any sampled frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .results import FrameResult, TrackResult, scores_by_track


@dataclass(frozen=True)
class Aggregation:
    hi: float = 0.8
    lo: float = 0.2
    fake_fraction: float = 0.4
    min_confident: int = 3
    real_fraction: float = 0.9
    min_track_fraction: float = 0.1


def track_score(scores: Sequence[float], agg: Aggregation = Aggregation()) -> float:
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("a track without scores")
    return float(track_scores(s[None, :], agg)[0])


def track_scores(samples: np.ndarray, agg: Aggregation = Aggregation()) -> np.ndarray:
    """The confident strategy (module docstring) for each row of ``samples`` (rows of one length): one track,
    or the bootstrap's 500 resamples of a track in one pass. :func:`track_score` is its one-row case, so the
    rule is stated once."""
    s = np.asarray(samples, dtype=np.float64)
    n = s.shape[1]
    fake, real = s > agg.hi, s < agg.lo
    n_fake, n_real = fake.sum(1), real.sum(1)
    use_fake = n_fake >= max(agg.min_confident if n >= agg.min_confident else 1, agg.fake_fraction * n)
    use_real = ~use_fake & (n_real > agg.real_fraction * n)
    with np.errstate(invalid="ignore", divide="ignore"):  # rows whose branch is not taken may divide by 0
        out = np.where(use_fake, np.where(fake, s, 0.0).sum(1) / n_fake,
                       np.where(use_real, np.where(real, s, 0.0).sum(1) / n_real, s.mean(1)))
    return out


def verdict_for(score: float | None, threshold: float, band: float) -> str:
    if score is None:
        return "no_face"
    if score >= threshold:
        return "fake"
    if score >= threshold - band:
        return "uncertain"
    return "real"


def aggregate(frames: list[FrameResult], threshold: float, band: float,
              agg: Aggregation = Aggregation()) -> tuple[float | None, str, list[TrackResult]]:
    """Return (video score, verdict, per-track results) for one video's scored frames."""
    per_track = scores_by_track(frames)
    if not per_track:
        return None, "no_face", []
    min_hits = max(2, int(np.ceil(agg.min_track_fraction * max(1, len(frames)))))
    tracks = []
    for tid, seen in sorted(per_track.items()):
        scores = [s for _, s in seen]
        ts = track_score(scores, agg)
        tracks.append(TrackResult(id=tid, n_faces=len(seen), score=ts, verdict=verdict_for(ts, threshold, band),
                                  first_time_s=min(t for t, _ in seen), last_time_s=max(t for t, _ in seen),
                                  counted=len(seen) >= min_hits, scores=scores))
    counted = [t for t in tracks if t.counted] or tracks
    for t in tracks:
        t.counted = t in counted
    score = max(t.score for t in counted)
    return score, verdict_for(score, threshold, band), tracks


def score_interval(tracks: list[TrackResult], agg: Aggregation = Aggregation(), n_boot: int = 500,
                   seed: int = 0) -> tuple[float, float] | None:
    """95% bootstrap interval of the video score: each counted track's face scores are resampled with
    replacement and aggregated as above. Seeded, so the same result always gets the same interval."""
    counted = [np.asarray(t.scores, np.float64) for t in tracks if t.counted and t.scores]
    if not counted:
        return None
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(s), (n_boot, len(s))) for s in counted]
    boots = np.max([track_scores(s[idx], agg) for s, idx in zip(counted, draws, strict=True)], axis=0)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(lo), float(hi)
