"""Would flip test-time augmentation help? Score a card's held-out validation crops and its swap probe as
``deepscan validate`` does, once plainly and once with each face's logit averaged with its mirror image's.

Run from the repository root, after ``deepscan cache``::

    python tools/flip_tta_probe.py models/deepscan-sbi-lite0.json [--cache cache/crops]

Offline only: the scanner has no flip option (it would double the detector's cost, the slowest stage on a
CPU), and the card's thresholds are fitted on plain scores.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("card")
    parser.add_argument("--cache", default="cache/crops")
    args = parser.parse_args()

    from deepscan.training.train import load_card_validation, metrics_from_logits, predict_logits, swap_probe

    loaded = load_card_validation(args.card, args.cache)
    card, clips, items, net = loaded.card, loaded.clips, loaded.items, loaded.net
    frames = loaded.config["val"]["frames_per_clip"]

    def plain(crops):
        return predict_logits(net, card, crops, 32)

    def flipped(crops):  # crops are (N, H, W, 3): axis 2 mirrors left and right
        return (plain(crops) + plain(np.ascontiguousarray(crops[:, :, ::-1]))) / 2

    crops = np.concatenate([it.crops for it in items])
    for name, predict in (("plain", plain), ("flip-averaged", flipped)):
        val = metrics_from_logits(items, predict(crops), card.temperature, card.threshold)
        probe = swap_probe(clips, predict, card.temperature, card.input_size, card.crop_margin, frames)[0]
        degraded = " / ".join(f"{v['video_auc']:.3f}" for v in probe["degraded"].values())
        print(f"{name:>13}: validation crops {val['video_auc']:.3f}, swap probe {probe['video_auc']:.3f}, "
              f"swap probe degraded ({' / '.join(probe['degraded'])}) {degraded}", flush=True)


if __name__ == "__main__":
    main()
