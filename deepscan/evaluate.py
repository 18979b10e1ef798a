"""``deepscan eval``: video-level metrics of one or more detectors on labelled clips.

Labels come from a TSV/CSV with ``path,label`` columns or the shared ``MANIFEST.tsv`` format (``file``,
``label``, ``method``). Only ``real`` and ``fake`` count; anything else (``unknown``) is skipped. Each detector
scans every clip through the same :class:`Scanner` as ``deepscan scan``; metrics come from scikit-learn.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class LabelledClip:
    path: Path
    label: int  # 1 = fake, 0 = real
    source: str
    method: str = ""


def read_labels(path, subset: set[str] | None = None) -> list[LabelledClip]:
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter=delimiter))
    clips = []
    for row in rows:
        rel = row.get("file") or row.get("path")
        label = (row.get("label") or "").strip().lower()
        if not rel or label not in ("real", "fake"):
            continue
        if subset is not None and rel not in subset:
            continue
        p = Path(rel)
        full = p if p.is_absolute() else path.parent / p
        source = rel.split("/")[0] if "/" in rel else (row.get("source") or "-")
        clips.append(LabelledClip(full, int(label == "fake"), source, row.get("method", "")))
    return clips


def bootstrap_auc(y, s, n_boot: int = 2000, seed: int = 0, groups=None) -> tuple[float, float, float]:
    """ROC AUC with a percentile bootstrap 95% interval (clips resampled with replacement). With ``groups``,
    whole groups are resampled instead (e.g. a real clip and its manipulated copy: they are not independent)."""
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(y), np.asarray(s)
    stats = [roc_auc_score(y[idx], s[idx]) for idx in _resamples(y, n_boot, seed, groups)]
    return float(roc_auc_score(y, s)), *_interval95(stats)


def bootstrap_auc_difference(y, s_a, s_b, n_boot: int = 2000, seed: int = 0,
                             groups=None) -> tuple[float, float, float]:
    """AUC of scores ``s_b`` minus that of ``s_a`` on the same clips, with a paired percentile bootstrap 95%
    interval: each resample is applied to both, so what the clips share (how hard they are) cancels, and the
    interval is much narrower than the two AUCs' own intervals would suggest."""
    from sklearn.metrics import roc_auc_score

    y, s_a, s_b = np.asarray(y), np.asarray(s_a), np.asarray(s_b)
    stats = [roc_auc_score(y[idx], s_b[idx]) - roc_auc_score(y[idx], s_a[idx])
             for idx in _resamples(y, n_boot, seed, groups)]
    return float(roc_auc_score(y, s_b) - roc_auc_score(y, s_a)), *_interval95(stats)


def _interval95(stats) -> tuple[float, float]:
    """Percentile 95% interval of bootstrap statistics (nan, nan when no resample held both classes)."""
    if not stats:
        return float("nan"), float("nan")
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _resamples(y: np.ndarray, n_boot: int, seed: int, groups=None):
    """Bootstrap index sets over clips (or whole ``groups`` of clips); sets holding one class only are skipped."""
    rng = np.random.default_rng(seed)
    members = None
    if groups is not None:
        codes = np.unique(np.asarray(groups), return_inverse=True)[1]
        members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    for _ in range(n_boot):
        if members is None:
            idx = rng.integers(0, len(y), len(y))
        else:
            idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if y[idx].min() != y[idx].max():
            yield idx


def rates_at(y, s, threshold: float) -> dict:
    y, s = np.asarray(y), np.asarray(s)
    pred = s >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    return {"threshold": threshold, "accuracy": float((pred == (y == 1)).mean()),
            "tpr": tp / n_pos if n_pos else float("nan"), "fpr": fp / n_neg if n_neg else float("nan")}


def scan_or_resume(scanner, path: Path, writer=None, force: bool = False):
    """``scanner``'s result for one clip: taken from ``writer``'s results.jsonl when an earlier run there
    finished it with the same content, model and settings (marked ``resumed``), else scanned and appended.
    An interrupted evaluation rerun into the same directory so picks up where it stopped."""
    from .scanner import file_sha256

    digest = None
    if writer is not None:
        try:
            digest = file_sha256(path)
        except OSError:  # unreadable: the scan below reports why
            pass
        previous = scanner.stored_result(writer, path, digest) if digest and not force else None
        if previous is not None:
            previous.resumed = True
            return previous
    result = scanner.scan_video(path, sha256=digest)
    if writer is not None:
        writer.write(result)
    return result


def evaluate(clips: list[LabelledClip], detectors: list[dict], frames: int = 32, out_dir: Path | None = None,
             progress=None, force: bool = False, **scan_options) -> dict:
    """Scan every clip with every detector (``{"detector": name, "weights": path|None}``) and score them;
    ``scan_options`` go to :class:`~deepscan.scanner.ScanOptions` (e.g. ``precision``, ``full_detect_every``).
    With ``out_dir``, clips already scanned there alike are not scanned again unless ``force``."""
    from sklearn.metrics import roc_curve

    from .scanner import ResultsWriter, Scanner, ScanOptions

    report = {"n_clips": len(clips), "n_fake": sum(c.label for c in clips), "frames": frames,
              "scan_options": scan_options, "detectors": []}
    curves = {}
    for spec in detectors:
        scanner = Scanner(ScanOptions(detector=spec.get("detector"), weights=spec.get("weights"), frames=frames,
                                      keep_heatmaps=False, **scan_options))
        name = scanner.detector.name
        writer = ResultsWriter(out_dir / name) if out_dir else None
        ys, ss, srcs, failed, resumed = [], [], [], [], 0
        for clip in clips:
            r = scan_or_resume(scanner, clip.path, writer, force)
            resumed += r.resumed
            if progress:
                progress(name, clip, r)
            if r.score is None:  # no face or error: counted as "not flagged" with score 0, and listed
                failed.append({"path": str(clip.path), "status": r.status, "error": r.error})
            ys.append(clip.label)
            ss.append(0.0 if r.score is None else r.score)
            srcs.append(clip.source)
        auc, lo, hi = bootstrap_auc(ys, ss)
        entry = {"detector": name, "weights_sha256": scanner.detector.weights_sha256, "auc": auc,
                 "auc_ci95": [lo, hi], "at_threshold": rates_at(ys, ss, scanner.threshold), "unscored": failed,
                 "per_source": per_source_table(ys, ss, srcs, scanner.threshold),
                 "video_scores": video_scores([c.path for c in clips], ys, ss), "resumed": resumed}
        report["detectors"].append(entry)
        curves[name] = roc_curve(ys, ss)
    pair_with_first(report["detectors"])
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        plot_roc(curves, report, out_dir / "roc.png")
    return report


def metrics_from_results(clips: list[LabelledClip], results_path: Path) -> dict:
    """Metrics of an earlier scan: match ``results.jsonl`` lines to the labelled clips by resolved path."""
    by_path = {}
    for line in Path(results_path).read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        by_path[str(Path(d["path"]).resolve())] = d
    ys, ss, srcs, unscored, missing = [], [], [], [], []
    model, threshold = None, 0.5
    for clip in clips:
        d = by_path.get(str(clip.path.resolve()))
        if d is None:
            missing.append(str(clip.path))
            continue
        model = model or d.get("model", {}).get("name")
        threshold = d.get("model", {}).get("threshold", threshold)
        if d.get("score") is None:
            unscored.append({"path": str(clip.path), "status": d.get("status"), "error": d.get("error")})
        ys.append(clip.label)
        ss.append(0.0 if d.get("score") is None else d["score"])
        srcs.append(clip.source)
    auc, lo, hi = bootstrap_auc(ys, ss)
    scored = [c.path for c in clips if str(c.path.resolve()) in by_path]
    return {"detector": model, "n_clips": len(ys), "n_fake": int(sum(ys)), "auc": auc, "auc_ci95": [lo, hi],
            "at_threshold": rates_at(ys, ss, threshold), "unscored": unscored, "missing": missing,
            "per_source": per_source_table(ys, ss, srcs, threshold), "video_scores": video_scores(scored, ys, ss)}


def video_scores(ids, labels, scores, groups=None) -> dict:
    """Each clip's id (its path, for scans), label and video score, kept for paired comparisons; ``groups``:
    clips that must be resampled together."""
    out = {"ids": [str(i) for i in ids], "labels": [int(v) for v in labels], "scores": [float(v) for v in scores]}
    return out if groups is None else {**out, "groups": [str(g) for g in groups]}


def paired_difference(first: dict | None, other: dict | None) -> dict | None:
    """``other``'s AUC minus ``first``'s (two :func:`video_scores` records) with a paired bootstrap 95% interval;
    None unless both scored the same clips."""
    if not first or not other or first["ids"] != other["ids"]:
        return None
    diff, lo, hi = bootstrap_auc_difference(first["labels"], first["scores"], other["scores"],
                                            groups=first.get("groups"))
    return {"auc_difference": diff, "ci95": [lo, hi]}


def pair_with_first(entries: list[dict]) -> None:
    """Each detector after the first that scored the same clips gets ``paired_with_first``: its AUC minus the
    first's with a paired bootstrap 95% interval (the same resamples for both: a clip's difficulty cancels)."""
    for entry in entries[1:]:
        paired = paired_difference(entries[0]["video_scores"], entry["video_scores"])
        if paired is not None:
            entry["paired_with_first"] = {"against": entries[0]["detector"], **paired}


def per_source_table(ys, ss, srcs, threshold: float) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    ys, ss, srcs = np.asarray(ys), np.asarray(ss), np.asarray(srcs)
    rows = []
    for src in sorted(set(srcs)):
        m = srcs == src
        y, s = ys[m], ss[m]
        row = {"source": str(src), "n": int(m.sum()), "n_fake": int(y.sum()), "mean_score": float(s.mean()),
               **rates_at(y, s, threshold)}
        row["auc"] = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None
        rows.append(row)
    return rows


def plot_roc(curves: dict, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    aucs = {d["detector"]: d for d in report["detectors"]}
    for name, (fpr, tpr, _) in curves.items():
        d = aucs[name]
        ax.plot(fpr, tpr, label=f"{name}: AUC {d['auc']:.3f} [{d['auc_ci95'][0]:.2f}, {d['auc_ci95'][1]:.2f}]")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("false positive rate (real clips flagged)")
    ax.set_ylabel("true positive rate (fake clips flagged)")
    ax.set_title(f"video-level ROC, {report['n_clips']} clips ({report['n_fake']} fake)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def calibrate(card_path, labels, frames: int = 32, max_fpr: float = 0.05, results_path: Path | None = None,
              out_dir: Path | None = None, precision: str = "fp32") -> dict:
    """Refit a model card's decision threshold on the video scores ``deepscan scan`` itself gives its
    held-out clips (``training.validation_files``) at ``frames`` per video, so the card's false-positive rate
    on validation reals holds for real scans (training validates on cached crops and a few frames per clip,
    whose video scores run lower). Writes the threshold and the scanner's validation metrics into the card;
    the weights (and their sha256) are unchanged. ``results_path`` reuses an earlier scan of those clips.

    ``precision`` other than fp32 (bf16) fits the threshold used for scores computed at that precision
    (``precision_thresholds``, metrics under ``scanner_<precision>``); fp32's threshold is left alone.
    """
    from .detector import ModelCard
    from .scanner import ResultsWriter, Scanner, ScanOptions
    from .training.train import video_threshold

    card_path = Path(card_path)
    card = ModelCard.load(card_path)
    subset = set(card.training.get("validation_files") or [])
    if not subset:
        raise ValueError(f"{card_path} names no training.validation_files")
    clips = read_labels(labels, subset)
    if len({c.label for c in clips}) < 2:
        raise ValueError("the validation split needs labelled real and fake clips")
    scores, scan_config = {}, None
    if results_path is None:
        scanner = Scanner(ScanOptions(detector=str(card_path), frames=frames, keep_heatmaps=False,
                                      precision=precision))
        writer = ResultsWriter(out_dir) if out_dir else None
        for clip in clips:
            r = scan_or_resume(scanner, clip.path, writer)
            scores[str(Path(r.path).resolve())] = r.score
            scan_config = scan_config or r.config
    else:
        for line in Path(results_path).read_text(encoding="utf-8").splitlines():
            d = json.loads(line)
            model = d.get("model") or {}
            scored_at = model.get("precision") or (d.get("environment") or {}).get("precision") or "fp32"
            if model.get("sha256") == card.sha256 and scored_at == precision:
                scores[str(Path(d["path"]).resolve())] = d.get("score")
                scan_config = scan_config or d.get("config")
    ys = np.array([c.label for c in clips])
    ss = np.array([scores.get(str(c.path.resolve())) or 0.0 for c in clips], np.float64)
    previous = card.threshold_for(precision)
    threshold = video_threshold(ss[ys == 0], max_fpr)
    if precision == "fp32":
        card.threshold = threshold
    else:
        card.precision_thresholds[precision] = threshold
    auc, lo, hi = bootstrap_auc(ys, ss)
    key = "scanner" if precision == "fp32" else f"scanner_{precision}"
    card.metrics[key] = {
        "what": f"deepscan scan on the validation clips, {frames} frames each, {precision}; threshold refitted "
                "here",
        "frames": frames, "precision": precision, "videos": int(len(ys)), "real_videos": int((ys == 0).sum()),
        "fake_videos": int(ys.sum()), "video_auc": auc, "video_auc_ci95": [lo, hi], "max_fpr": max_fpr,
        "threshold": threshold, "threshold_before": previous,
        **{f"{k}_at_threshold": v for k, v in rates_at(ys, ss, threshold).items() if k != "threshold"},
        "missing": sum(str(c.path.resolve()) not in scores for c in clips),
        "scan_config": scan_config,
    }
    card.save(card_path)
    return card.metrics[key]
