"""What does a platform-like re-encode of the footage cost a detector? Video-level AUC on re-encoded copies.

The degradation probe of ``deepscan validate`` degrades face *crops* (resampling, blur, JPEG); footage from social
platforms has been re-encoded as *video* (H.264 at a platform's bitrate, often downscaled) before deepscan
decodes it and finds the faces again. This probe re-encodes the held-out clips of the first card (its
``training.validation_files`` with a real/fake label) and scans the originals and every copy with each card, as
``deepscan eval`` does::

    python tools/recompression_probe.py models/deepscan-sbi-lite0.json [CARD ...] [--out runs/recompression]

Conditions (libx264, yuv420p, no audio, the ``medium`` preset; ``half``: width and height halved first):
``crf23`` (a careful re-upload), ``crf30`` (a messenger's), ``crf36`` (a heavily squeezed copy) and
``crf30-half``. For each card and condition it prints the video AUC with its bootstrap 95% interval (whole
groups resampled, as ``deepscan eval`` does: a MANIFEST's identity groups; the clip-resampled one kept in the
JSON), the paired
difference against the originals (same clips, the copy's score in place of the original's) and the mean video
score of the real and the fake clips, and for each further card its paired difference from the first card on the
same copies; ``OUT/probe.json`` keeps them. Copies and scans are kept under ``OUT``
(never in the repository) and reused by a second run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepscan.detector.card import ModelCard  # noqa: E402
from deepscan.evaluate import (  # noqa: E402
    auc_with_intervals,
    bootstrap_auc_difference,
    clip_groups,
    evaluate,
    read_labels,
)
from deepscan.training.cache import read_manifest  # noqa: E402
from deepscan.video import ffmpeg_exe  # noqa: E402

CONDITIONS = {  # name -> (CRF, scale filter or None)
    "crf23": (23, None),
    "crf30": (30, None),
    "crf36": (36, None),
    "crf30-half": (30, "scale=trunc(iw/4)*2:trunc(ih/4)*2"),
}


def reencode(src: Path, dst: Path, crf: int, scale: str | None) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp" + dst.suffix)
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(src), "-an", "-c:v", "libx264", "-preset", "medium",
           "-crf", str(crf), "-pix_fmt", "yuv420p"]
    if scale:
        cmd += ["-vf", scale]
    subprocess.run([*cmd, str(tmp)], check=True)
    tmp.replace(dst)


def write_copies(manifest: Path, files: list[str], out: Path, crf: int, scale: str | None) -> Path:
    """Re-encode ``files`` (paths relative to the manifest) under ``out`` and write ``out/MANIFEST.tsv`` for them."""
    wanted = set(files)
    rows = [r for r in read_manifest(manifest) if r["file"] in wanted]
    for row in rows:
        reencode(manifest.parent / row["file"], out / row["file"], crf, scale)
    copy_manifest = out / "MANIFEST.tsv"
    with open(copy_manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return copy_manifest


def scores_by_file(report: dict, root: Path) -> dict[str, float]:
    (entry,) = report["detectors"]
    scores = entry["video_scores"]
    return {str(Path(p).resolve().relative_to(root.resolve())): s for p, s in zip(scores["ids"], scores["scores"],
                                                                                  strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cards", nargs="+", type=Path)
    shared = Path(os.environ.get("DEEPSCAN_SHARED", REPO.parent / "shared"))
    parser.add_argument("--manifest", type=Path, default=shared / "data/clips/MANIFEST.tsv")
    parser.add_argument("--out", type=Path, default=REPO / "runs/recompression")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    if not args.manifest.is_file():
        sys.exit(f"no manifest at {args.manifest} (set DEEPSCAN_SHARED or pass --manifest)")
    files = ModelCard.load(args.cards[0]).training.get("validation_files") or []
    originals = read_labels(args.manifest, set(files))
    if not originals:
        sys.exit(f"no labelled held-out clips of {args.cards[0]} in {args.manifest}")
    label_of = {str(c.path.relative_to(args.manifest.parent)): c.label for c in originals}
    keys = sorted(label_of)
    y = np.array([label_of[k] for k in keys])
    # Clips that are not independent (one person's clips, a demo's two panels) are resampled together.
    group_of = dict(zip((str(c.path.relative_to(args.manifest.parent)) for c in originals), clip_groups(originals),
                        strict=True))
    groups = [group_of[k] for k in keys]
    roots = {"original": (args.manifest, args.manifest.parent)}
    for name in args.conditions:
        crf, scale = CONDITIONS[name]
        copy_manifest = write_copies(args.manifest, keys, args.out / name, crf, scale)
        roots[name] = (copy_manifest, copy_manifest.parent)

    results, first_scores = {}, {}
    for card in args.cards:
        per_condition, base = {}, None
        for name, (manifest, root) in roots.items():
            clips = read_labels(manifest, set(files))
            report = evaluate(clips, [{"detector": str(card)}], out_dir=args.out / "scans" / name,
                              precision=args.precision)
            by_file = scores_by_file(report, root)
            s = np.array([by_file[k] for k in keys])
            base = s if base is None else base  # the originals come first
            intervals = auc_with_intervals(y, s, groups)
            auc, (lo, hi) = intervals["auc"], intervals["auc_ci95"]
            diff, dlo, dhi = bootstrap_auc_difference(y, base, s, groups=groups)
            per_condition[name] = {**intervals, "vs_original": diff,
                                   "vs_original_ci95": [dlo, dhi], "mean_real": float(s[y == 0].mean()),
                                   "mean_fake": float(s[y == 1].mean()), "n_clips": len(keys), "n_fake": int(y.sum())}
            r = per_condition[name]
            line = (f"{card.stem:<44} {name:<11} AUC {auc:.3f} [{lo:.3f}, {hi:.3f}]  vs original {diff:+.3f} "
                    f"[{dlo:+.3f}, {dhi:+.3f}]  mean real {r['mean_real']:.3f} fake {r['mean_fake']:.3f}")
            if card == args.cards[0]:
                first_scores[name] = s
            else:  # the same copies scored by the first card: a paired comparison of the two detectors
                fdiff, flo, fhi = bootstrap_auc_difference(y, first_scores[name], s, groups=groups)
                r["vs_first_card"], r["vs_first_card_ci95"] = fdiff, [flo, fhi]
                line += f"  vs {args.cards[0].stem} {fdiff:+.3f} [{flo:+.3f}, {fhi:+.3f}]"
            print(line, flush=True)
        results[str(card)] = per_condition
    (args.out / "probe.json").write_text(json.dumps({"conditions": {k: CONDITIONS[k] for k in args.conditions},
                                                     "results": results}, indent=2))


if __name__ == "__main__":
    main()
