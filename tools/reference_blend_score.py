"""Does a face's score relative to its own self-blends rank videos better than the score itself?

The shipped model orders the two halves of a held-out DeepFaceLive demo correctly in all 16 pairs, yet its
real clips' scores spread from 0.09 to 0.91 from clip to clip (issue #3): part of a score is an offset that
belongs to the footage (grain, sharpening, coding), not to manipulation. A self-blend of a face (the training
recipe's own pseudo-fake, ``sbi.self_blend``) shares that footage, so the difference between a face's logit and
the mean logit of ``K`` self-blends of the same frame could cancel the offset: a real face sits far below its
blends, a manipulated one, already carrying blending evidence, nearer to them. Measured offline here on cached
crops before any scanner change.

Run from the repository root, after ``deepscan cache``::

    python tools/reference_blend_score.py CARD [CARD ...] [--blends 4]

For each card, on its held-out validation crops (8 frames a clip, cut as at inference, as ``deepscan validate``)
and on its swap probe (held-out reals against the same frames with another's face swapped in, JPEG 90), video
AUC with three scores:
- ``plain``: the scanner's score (``scoring.track_score`` of the calibrated probabilities), the figure
  ``deepscan validate`` prints (``train.scores_by_clip``);
- ``mean logit``: the mean of a clip's face logits (the same aggregation as the next, without a reference);
- ``relative``: the mean over a clip's faces of (face logit - the mean logit of its ``K`` self-blends).
Paired bootstrap 95% intervals of ``relative`` minus each (the same resamples; swap-probe pairs resampled whole).

Rule, written before the first run (session 43): the relative score is worth building into the scanner only if
it ranks higher than both other scores on the validation crops and on the swap probe for the shipped model and
for the seed-3 control (runs/experiments/sbi-lite0-tone-3600-seed3-freeze2-wd005-fp32.json); then it must still
be measured on the held-out footage through ``deepscan eval``. Self-blends are drawn with the card's own
training settings from a generator seeded by (clip, frame, blend), so a rerun repeats every number.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepscan.crops import crop_face  # noqa: E402
from deepscan.evaluate import bootstrap_auc_difference  # noqa: E402
from deepscan.scoring import track_score  # noqa: E402
from deepscan.training.data import swapped_frames, val_frame_indices  # noqa: E402
from deepscan.training.sbi import self_blend  # noqa: E402
from deepscan.training.train import _auc, _sigmoid, load_card_validation, predict_logits  # noqa: E402


class Faces:
    """Context images of a clip's sampled frames with their boxes and landmarks, and the clip's label."""

    def __init__(self, clip_id: str, label: int, images, boxes, landmarks, group: str):
        self.clip_id, self.label, self.group = clip_id, label, group
        self.images, self.boxes, self.landmarks = images, boxes, landmarks


def validation_faces(clips, frames_per_clip: int) -> list[Faces]:
    out = []
    for c in clips:
        if c.label not in ("real", "fake"):
            continue
        idx = val_frame_indices(len(c.crops), frames_per_clip)
        out.append(Faces(c.id, int(c.label == "fake"), [c.crops[k] for k in idx], c.boxes[idx], c.landmarks[idx],
                         c.id))
    return out


def swap_probe_faces(clips, frames_per_clip: int) -> list[Faces]:
    """The swap probe's frames (``data.swapped_frames``), kept as context images."""
    out = []
    for target, donor, idx, real, fake in swapped_frames(clips, frames_per_clip):
        out.append(Faces(target.id, 0, real, target.boxes[idx], target.landmarks[idx], target.id))
        out.append(Faces(f"{target.id}~{donor.id}", 1, fake, target.boxes[idx], target.landmarks[idx], target.id))
    return out


def clip_logits(cv, faces: list[Faces], blends: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per clip: the faces' logits (n,) and their self-blends' logits (n, blends)."""
    card, ct = cv.card, cv.config["train"]
    crops, refs = [], []
    for f in faces:
        for j, (img, box, lms) in enumerate(zip(f.images, f.boxes, f.landmarks, strict=True)):
            crops.append(crop_face(img, box, card.crop_margin, card.input_size))
            for b in range(blends):
                rng = np.random.default_rng([zlib.crc32(f.clip_id.encode()), j, b])
                blended, _ = self_blend(img, lms, rng, ct["sbi_p_sharpen"], p_smooth=ct["sbi_p_smooth"],
                                        p_flow=ct["sbi_p_flow"], p_box=ct["sbi_p_box"])
                refs.append(crop_face(blended, box, card.crop_margin, card.input_size))
    logits = predict_logits(cv.net, card, np.stack(crops))
    ref_logits = predict_logits(cv.net, card, np.stack(refs)).reshape(len(crops), blends)
    bounds = np.cumsum([len(f.images) for f in faces])[:-1]
    return np.split(logits, bounds), np.split(ref_logits, bounds)


def compare(cv, faces: list[Faces], blends: int, name: str) -> None:
    logits, refs = clip_logits(cv, faces, blends)
    labels = np.array([f.label for f in faces])
    groups = [f.group for f in faces] if name == "swap probe" else None
    scores = {
        "plain": np.array([track_score(_sigmoid(x / cv.card.temperature)) for x in logits]),
        "mean logit": np.array([x.mean() for x in logits]),
        "relative": np.array([(x - r.mean(axis=1)).mean() for x, r in zip(logits, refs, strict=True)]),
    }
    gap = {lab: np.mean([(r.mean(axis=1) - x).mean() for x, r, y in zip(logits, refs, labels, strict=True)
                         if y == lab]) for lab in (0, 1)}
    print(f"  {name}: {len(faces)} clips ({int(labels.sum())} fake); mean logit gap to the self-blends, "
          f"real {gap[0]:.2f} / fake {gap[1]:.2f}")
    for key, s in scores.items():
        line = f"    {key:<10} AUC {_auc(labels, s):.3f}"
        for other in list(scores)[:list(scores).index(key)]:  # each score against those listed before it
            diff, lo, hi = bootstrap_auc_difference(labels, scores[other], s, groups=groups)
            line += f"   vs {other}: {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        print(line)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cards", nargs="+")
    parser.add_argument("--blends", type=int, default=4, help="self-blends of each face (default 4)")
    parser.add_argument("--cache", default="cache/crops")
    args = parser.parse_args(argv)
    for card in args.cards:
        cv = load_card_validation(card, args.cache)
        frames = cv.config["val"]["frames_per_clip"]
        print(f"{card}: {args.blends} self-blends a face, {frames} frames a clip")
        compare(cv, validation_faces(cv.clips, frames), args.blends, "validation crops")
        compare(cv, swap_probe_faces(cv.clips, frames), args.blends, "swap probe")


if __name__ == "__main__":
    main()
