"""How far do a card's pooled features and its logit move when its held-out validation crops are degraded, and
how much of the features is one direction that every face shares? A check that a consistency loss on the features
(``train.view_consistency``) bought invariance and not collapse.

Run from the repository root, after ``deepscan cache``::

    python tools/feature_invariance.py CARD [CARD ...] [--frames 2]

For each card: the share of the features' energy along their mean direction and the mean pairwise cosine of the
crops' features (near 1: collapsed) and the spread of their logits (a smaller one shrinks every change), then for three of ``deepscan validate``'s degradations the mean cosine distance
between each crop's features and its degraded copy's, and the mean absolute change of the logit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepscan.crops import normalise  # noqa: E402
from deepscan.training.data import PROBE_DEGRADATIONS  # noqa: E402
from deepscan.training.train import load_card_validation  # noqa: E402

DEGRADATIONS = ("jpeg_30", "downscale_0.25", "blur_1.5")


def features_and_logits(net, crops: np.ndarray, mean, std, batch_size: int = 32):
    import torch

    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(crops), batch_size):
            x = normalise(crops[i:i + batch_size], mean, std).contiguous(memory_format=torch.channels_last)
            logit, _, embedding = net(x, with_embedding=True)
            feats.append(embedding.float())
            logits.append(logit.float())
    return torch.cat(feats), torch.cat(logits)


def main(argv=None) -> None:
    import torch.nn.functional as F

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cards", nargs="+")
    parser.add_argument("--frames", type=int, default=2, help="frames of each validation clip (default 2)")
    parser.add_argument("--cache", default="cache/crops")
    args = parser.parse_args(argv)
    for card in args.cards:
        cv = load_card_validation(card, args.cache)
        net = cv.net.eval()
        crops = np.concatenate([item.crops[:args.frames] for item in cv.items])
        feats, logits = features_and_logits(net, crops, cv.card.mean, cv.card.std)
        unit = F.normalize(feats, dim=1)
        shared = (unit @ F.normalize(feats.mean(0), dim=0)).pow(2).mean().item()
        print(f"{card}: {len(crops)} crops, energy along the mean direction {shared:.3f}, "
              f"mean pairwise cosine {(unit @ unit.T).mean().item():.3f}, logit sd {logits.std().item():.2f}")
        for name in DEGRADATIONS:
            degrade = PROBE_DEGRADATIONS[name]
            feats_d, logits_d = features_and_logits(net, np.stack([degrade(c) for c in crops]),
                                                    cv.card.mean, cv.card.std)
            distance = (1.0 - F.cosine_similarity(feats, feats_d, dim=1)).mean().item()
            print(f"  {name}: feature cosine distance {distance:.4f}, "
                  f"mean |logit change| {(logits_d - logits).abs().mean().item():.2f}")


if __name__ == "__main__":
    main()
