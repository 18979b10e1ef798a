"""Would another face score or another pooling of a person's faces rank the videos better? Recompute the video
scores of finished scans (``deepscan eval``'s ``results.jsonl``) from each face's recorded classifier score and
mask-head peak, and print each variant's video AUC beside the scanner's own.

Run from the repository root::

    python tools/rescore_scans.py ../shared/data/clips/MANIFEST.tsv runs/eval-*/*/results.jsonl

Face scores: ``score`` (the scanner's), ``peak`` (the mask head's maximum), and their ``mean``, ``max`` and
geometric mean ``geo``. Pooling of a track's scores: ``confident`` (the scanner's, :func:`deepscan.scoring.
track_score`), plain ``mean``, ``median``, ``logit_mean`` and ``top_quarter`` (mean of the highest quarter).
A video's score is the maximum over its counted tracks, as in :func:`deepscan.scoring.aggregate`. Offline only.
"""

from __future__ import annotations

import argparse
import json
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


def poolings():
    from deepscan.scoring import track_score

    return {"confident": track_score, "mean": np.mean, "median": np.median, "logit_mean": _logit_mean,
            "top_quarter": lambda s: float(np.mean(sorted(s)[-max(1, len(s) // 4):]))}


def video_tracks(record: dict) -> list[list[tuple[float, float]]]:
    """(score, peak) of every face of each counted track of one scanned video."""
    counted = {t["id"] for t in record["tracks"] if t["counted"]}
    per_track: dict[int, list[tuple[float, float]]] = {}
    for frame in record["frames"]:
        for face in frame["faces"]:
            if face["track"] in counted:
                per_track.setdefault(face["track"], []).append((face["score"], face["heat_peak"]))
    return list(per_track.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", type=Path, help="the MANIFEST.tsv (or path,label TSV/CSV) the scans were made of")
    parser.add_argument("results", nargs="+", type=Path, help="results.jsonl files of deepscan eval")
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from deepscan.evaluate import read_labels

    labels = {str(c.path.resolve()): c.label for c in read_labels(args.labels)}
    pools = poolings()
    header = ["run", *(f"face:{k}" for k in FACE_SCORES), *(f"pool:{k}" for k in pools if k != "confident")]
    print("\t".join(header))
    for path in args.results:
        y, by_face, by_pool = [], {k: [] for k in FACE_SCORES}, {k: [] for k in pools}
        for line in path.read_text().splitlines():
            record = json.loads(line)
            key = str(Path(record["path"]).resolve())
            if record["status"] != "ok" or key not in labels:
                continue
            tracks = video_tracks(record)
            y.append(labels[key])
            for name, fuse in FACE_SCORES.items():
                by_face[name].append(max(pools["confident"]([fuse(s, p) for s, p in t]) for t in tracks))
            for name, pool in pools.items():
                by_pool[name].append(max(pool([s for s, _ in t]) for t in tracks))
        aucs = [roc_auc_score(y, by_face[k]) for k in FACE_SCORES]
        aucs += [roc_auc_score(y, by_pool[k]) for k in pools if k != "confident"]
        print("\t".join([path.parent.name, *(f"{a:.3f}" for a in aucs)]))


if __name__ == "__main__":
    main()
