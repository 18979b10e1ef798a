"""Would another face score or another pooling of a person's faces rank the videos better? Recompute the video
scores of finished scans (``deepscan eval``'s ``results.jsonl``) from each face's recorded classifier score and
mask-head peak, and print each variant's video AUC beside the scanner's own.

Run from the repository root::

    python tools/rescore_scans.py ../shared/data/clips/MANIFEST.tsv runs/eval-*/*/results.jsonl

Face scores: ``score`` (the scanner's), ``peak`` (the mask head's maximum), and their ``mean``, ``max`` and
geometric mean ``geo`` (``n/a`` for a detector without a mask head: Grad-CAM maps record no peak, or, before
session 49, one scaled to its own maximum, 1.0 on every face). Poolings of a track's scores in place of the scanner's confident strategy
(:func:`deepscan.scoring.track_score`): plain ``mean``, ``median``, ``logit_mean`` and ``top_quarter`` (mean of the
highest quarter). Tracks, the tracks counted and the video score come from :func:`deepscan.scoring.aggregate`, as in
a scan. Offline only.
"""

from __future__ import annotations

import argparse
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
    from deepscan.results import VideoResult, read_result_lines
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
        # The last line for each path, as every reader of results.jsonl takes it (a rescan appends another).
        lines = {d["path"]: d for d in read_result_lines(path)[0]}
        results = [VideoResult.from_dict(d) for d in lines.values()]
        results = [r for r in results if r.status == "ok" and str(Path(r.path).resolve()) in labels]
        peaks = {x.heat_peak for r in results for f in r.frames for x in f.faces}
        with_peaks = None not in peaks and len(peaks) > 2  # else no mask head: the peak ranks nothing
        face_scores = {k: v for k, v in FACE_SCORES.items() if with_peaks or k == "score"}
        for result in results:
            y.append(labels[str(Path(result.path).resolve())])
            for name, face_score in face_scores.items():
                score, tracks = scored(result.frames, face_score)
                by_face[name].append(score)
                if name == "score":  # the scanner's own tracks, pooled other ways below
                    counted = [t for t in tracks if t.counted]
            for name, pool in POOLINGS.items():
                by_pool[name].append(max(pool(t.scores) for t in counted))
        aucs = [f"{roc_auc_score(y, by_face[k]):.3f}" if k in face_scores else "n/a" for k in FACE_SCORES]
        aucs += [f"{roc_auc_score(y, by_pool[k]):.3f}" for k in POOLINGS]
        print("\t".join([path.parent.name, *aucs]))


if __name__ == "__main__":
    main()
