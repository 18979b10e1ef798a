"""How much of a self-blend's seam falls inside the model's face crop, at several crop margins?

Draws self-blends of training reals as the shipped recipe does (``sbi.self_blend``), takes Face X-ray's blend
boundary of each mask (``sbi.blend_boundary``: 1 halfway through the transition, 0 inside and outside) and sums
it inside the square crop each margin cuts (``crops.square_box``). The faces are the real clips outside the card's
validation split (its recorded validation files). Run from the repository root, after ``deepscan cache``::

    python tools/seam_coverage.py [models/deepscan-sbi-lite0.json] [--cache cache/crops] [--blends 300]
        [--margins 0.25 0.5 0.75]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("card", nargs="?", default="models/deepscan-sbi-lite0.json")
    parser.add_argument("--cache", default="cache/crops")
    parser.add_argument("--blends", type=int, default=300)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from deepscan.crops import square_box
    from deepscan.detector.card import ModelCard
    from deepscan.training.data import REAL_LABELS, load_clips, load_index
    from deepscan.training.sbi import blend_boundary, self_blend

    held_out = set(ModelCard.load(args.card).training["validation_files"])
    index = load_index(args.cache)
    clips = load_clips(args.cache, [c for c in index["clips"] if c["file"] not in held_out and c["label"] in REAL_LABELS])
    side = index["context_size"]  # every context crop is this square, so one pixel grid serves every blend
    ys, xs = np.mgrid[:side, :side]
    rng = np.random.default_rng(args.seed)
    inside = {m: [] for m in args.margins}
    for _ in range(args.blends):
        clip = clips[rng.integers(len(clips))]
        k = rng.integers(len(clip.crops))
        _, mask = self_blend(clip.crops[k], clip.landmarks[k], rng)
        seam = blend_boundary(mask)
        total = float(seam.sum())
        if total <= 0.0:
            continue
        for margin in args.margins:
            x1, y1, x2, y2 = square_box(clip.boxes[k], margin)
            kept = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
            inside[margin].append(float(seam[kept].sum()) / total)
    print(f"{len(clips)} real training clips, {len(next(iter(inside.values())))} self-blends")
    print("margin  seam inside the crop (mean)  blends losing over a tenth of their seam")
    for margin, shares in inside.items():
        shares = np.asarray(shares)
        print(f"{margin:6.2f}  {shares.mean():27.3f}  {(shares < 0.9).mean():6.3f}")


if __name__ == "__main__":
    main()
