"""Would another face score or another pooling of a person's faces rank the videos better? Recompute the video
scores of finished scans (``deepscan eval``'s ``results.jsonl``) from each face's recorded classifier score and
mask-head peak, and print each variant's video AUC beside the scanner's own.

Run from the repository root::

    python tools/rescore_scans.py ../shared/data/clips/MANIFEST.tsv runs/eval-*/*/results.jsonl

Face scores: ``score`` (the scanner's), ``peak`` (the mask head's maximum), and their ``mean``, ``max`` and
geometric mean ``geo``. Poolings of a track's scores in place of the scanner's confident strategy
(:func:`deepscan.scoring.track_score`): plain ``mean``, ``median``, ``logit_mean`` and ``top_quarter`` (mean of the
highest quarter). Tracks, the tracks counted and the video score come from :func:`deepscan.scoring.aggregate`, as in
a scan. Offline only.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np


def _logit_mean(scores) -> float:
    p = np.clip(np.asarray(scores, np.float64), 1e-6, 1 - 1e-6)
    return float(np.log(p / (1 - p)).mean())


FACE_SCORES = {
    "score": lambda s, p: s,
    "peak": lambda s, p: p,
    "mean": lambda s, p: (s + p) / 2,
    "max": max,
    "geo": lambda s, p: (s * p) ** 0.5,
}
# In place of the scanner's confident strategy (the face:score column).
POOLINGS = {
    "mean": np.mean,
    "median": np.median,
    "logit_mean": _logit_mean,
    "top_quarter": lambda s: float(np.mean(sorted(s)[-max(1, len(s) // 4):])),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", type=Path, help="the MANIFEST.tsv (or path,label TSV/CSV) the scans were made of")
    parser.add_argument("results", nargs="+", type=Path, help="results.jsonl files of deepscan eval")
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from deepscan.evaluate import read_labels
    from deepscan.results import VideoResult
    from deepscan.scoring import aggregate

    def scored(frames, face_score):
        """The video score and tracks that the scanner's aggregation gives with each face rescored."""
        rescored = [replace(f, faces=[replace(x, score=face_score(x.score, x.heat_peak)) for x in f.faces])
                    for f in frames]
        score, _, tracks = aggregate(rescored, threshold=0.5, band=0.0)  # threshold and band set only verdicts
        return score, tracks

    labels = {str(c.path.resolve()): c.label for c in read_labels(args.labels)}
    print("\t".join(["run", *(f"face:{k}" for k in FACE_SCORES), *(f"pool:{k}" for k in POOLINGS)]))
    for path in args.results:
        y, by_face, by_pool = [], {k: [] for k in FACE_SCORES}, {k: [] for k in POOLINGS}
        for line in path.read_text().splitlines():
            result = VideoResult.from_dict(json.loads(line))
            key = str(Path(result.path).resolve())
            if result.status != "ok" or key not in labels:
                continue
            y.append(labels[key])
            for name, face_score in FACE_SCORES.items():
                score, tracks = scored(result.frames, face_score)
                by_face[name].append(score)
                if name == "score":  # the scanner's own tracks, pooled other ways below
                    counted = [t for t in tracks if t.counted]
            for name, pool in POOLINGS.items():
                by_pool[name].append(max(pool(t.scores) for t in counted))
        aucs = [roc_auc_score(y, by_face[k]) for k in FACE_SCORES] + [roc_auc_score(y, by_pool[k]) for k in POOLINGS]
        print("\t".join([path.parent.name, *(f"{a:.3f}" for a in aucs)]))


if __name__ == "__main__":
    main()
