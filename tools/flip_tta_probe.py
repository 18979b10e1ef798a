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

    import torch
    from safetensors.torch import load_file

    from deepscan.detector.card import ModelCard
    from deepscan.training.data import load_clips, load_index, val_items
    from deepscan.training.train import (
        DEFAULTS,
        _build_net,
        _merge,
        metrics_from_logits,
        predict_logits,
        swap_probe,
    )

    card = ModelCard.load(args.card)
    card.verify_weights()
    cfg = _merge(DEFAULTS, card.training["config"])
    index = load_index(args.cache)
    wanted = set(card.training["validation_files"])
    clips = load_clips(args.cache, [c for c in index["clips"] if c["file"] in wanted and c["label"] in ("real", "fake")])
    frames = cfg["val"]["frames_per_clip"]
    items = val_items(clips, card.input_size, card.crop_margin, frames)
    net = _build_net(cfg["model"])
    net.load_state_dict(load_file(str(card.weights_path)), strict=True)
    net = net.to(memory_format=torch.channels_last)

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
