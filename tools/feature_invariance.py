"""How far do a card's pooled features and its logit move when its held-out validation crops are degraded, and
how much of the features is one direction that every face shares? A check that a consistency loss on the features
(``train.view_consistency``) bought invariance and not collapse.

Run from the repository root, after ``deepscan cache``::

    python tools/feature_invariance.py CARD [CARD ...] [--frames 2]

For each card: the share of the features' energy along their mean direction and the mean pairwise cosine of the
crops' features (near 1: collapsed) and the spread of their logits (a smaller one shrinks every change), then for
three of ``deepscan validate``'s degradations the mean cosine distance between each crop's features and its
degraded copy's, and the mean absolute change of the logit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepscan.training.data import PROBE_DEGRADATIONS  # noqa: E402
from deepscan.training.train import load_card_validation, predict_logits  # noqa: E402

DEGRADATIONS = ("jpeg_30", "downscale_0.25", "blur_1.5")


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cards", nargs="+")
    parser.add_argument("--frames", type=int, default=2, help="frames of each validation clip (default 2)")
    parser.add_argument("--cache", default="cache/crops")
    args = parser.parse_args(argv)
    for card in args.cards:
        cv = load_card_validation(card, args.cache)
        crops = np.concatenate([item.crops[:args.frames] for item in cv.items])
        logits, feats = predict_logits(cv.net, cv.card, crops, with_embedding=True)
        unit = _unit(feats)
        shared = float(((unit @ _unit(feats.mean(0))) ** 2).mean())
        print(f"{card}: {len(crops)} crops, energy along the mean direction {shared:.3f}, "
              f"mean pairwise cosine {(unit @ unit.T).mean():.3f}, logit sd {logits.std(ddof=1):.2f}")
        for name in DEGRADATIONS:
            degrade = PROBE_DEGRADATIONS[name]
            logits_d, feats_d = predict_logits(cv.net, cv.card, np.stack([degrade(c) for c in crops]),
                                               with_embedding=True)
            distance = float((1.0 - (unit * _unit(feats_d)).sum(axis=1)).mean())
            print(f"  {name}: feature cosine distance {distance:.4f}, "
                  f"mean |logit change| {np.abs(logits_d - logits).mean():.2f}")


if __name__ == "__main__":
    main()
