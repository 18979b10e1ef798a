"""``deepscan eval``: video-level metrics of one or more detectors on labelled clips.

Labels come from a TSV/CSV with ``path,label`` columns or the shared ``MANIFEST.tsv`` format (``file``,
``label``, ``method``). Only ``real`` and ``fake`` count; anything else (``unknown``) is skipped. Each detector
scans every clip through the same :class:`Scanner` as ``deepscan scan``; metrics come from scikit-learn.

Clips that are not independent (a recording and its face swap, one source rendered three ways) share a group:
the bootstrap resamples whole groups, else its interval is too narrow. A ``group`` column names them; without
one, a MANIFEST's clips are grouped by who and what is on screen (the training split's identity groups) and a
``path,label`` file's clips each stand alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .results import is_number, json_safe, read_result_lines


@dataclass
class LabelledClip:
    path: Path
    label: int  # 1 = fake, 0 = real
    source: str
    method: str = ""
    group: str = ""  # clips resampled together by the bootstrap; "" = the clip alone


class LabelWarning(UserWarning):
    """Labelled clips left out of an evaluation: rows with an unknown label, clips without a result."""


def read_labels(path, subset: set[str] | None = None, whole_subset: bool = False) -> list[LabelledClip]:
    """The ``real``/``fake`` rows of a labels file (``subset``: only these ``file``/``path`` values). Rows with
    any other label are skipped, and their number is reported as a :class:`LabelWarning`; so are ``subset``
    values the file does not list at all (an error with ``whole_subset``: a fit on part of a split). Column names are
    matched without regard to case or surrounding spaces, and the delimiter (tab or comma) is the header
    line's, whatever the file's suffix. A clip listed twice counts once (warned of); listed as both real
    and fake, it is an error."""
    path = Path(path)
    # utf-8-sig: a spreadsheet's CSV export may start with a byte-order mark, which would otherwise rename the
    # first column ("\ufeffpath") and so drop every row.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    header = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in header or ("," not in header and path.suffix.lower() in (".tsv", ".txt")) else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    # The MANIFEST's `file` column (named exactly so) first, row by row, then `path` (loosely matched): a
    # MANIFEST with `path,label` rows appended keeps both, and a `path,label,File` CSV reads its paths.
    file_column = "file" if "file" in (reader.fieldnames or []) else None
    path_column = columns.get("path") or (columns.get("file") if file_column is None else None)
    if (file_column is None and path_column is None) or "label" not in columns:
        raise ValueError(f"{path}: needs a 'path' (or 'file') and a 'label' column; its header has "
                         f"{', '.join(repr(c) for c in reader.fieldnames or []) or 'none'}")

    def cell(row: dict, name: str) -> str:
        return (row.get(columns.get(name, name)) or "").strip()

    clips: dict[Path, LabelledClip] = {}
    unknown = repeated = 0
    listed = set()
    wanted = None if subset is None else {_as_listed(s, path.parent): s for s in subset}
    for row in reader:
        from_manifest = bool(file_column and (row.get(file_column) or "").strip())
        rel = ((row.get(file_column) if from_manifest else row.get(path_column) if path_column else None)
               or "").strip()
        if not rel:
            continue
        if wanted is not None:  # ./a.mp4, a/../a.mp4 and an absolute path under the labels' folder are a.mp4
            listed_as = wanted.get(_as_listed(rel, path.parent))
            if listed_as is None:
                continue
            listed.add(listed_as)
        label = cell(row, "label").lower()
        if label not in ("real", "fake"):
            unknown += 1
            continue
        p = Path(rel)
        full = p if p.is_absolute() else path.parent / p
        # An explicit source column wins; else a relative path's first folder (the MANIFEST's layout).
        source = cell(row, "source")
        if not source:
            folders = [] if p.is_absolute() else [q for q in p.parts[:-1] if q not in (".", "..")]
            source = folders[0] if folders else "-"
        group = cell(row, "group") or (_manifest_group(rel) if from_manifest else "")
        clip = LabelledClip(full, int(label == "fake"), source, cell(row, "method"), group)
        key = Path(os.path.normpath(full.absolute()))  # ./a.mp4 and a.mp4 are one clip
        if key in clips:
            if clips[key].label != clip.label:
                raise ValueError(f"{path}: {rel} is labelled both real and fake")
            repeated += 1
            continue
        clips[key] = clip
    if unknown:
        warnings.warn(f"{path}: {unknown} row(s) skipped: label not real or fake", LabelWarning, stacklevel=2)
    if repeated:
        warnings.warn(f"{path}: {repeated} row(s) skipped: a clip listed again", LabelWarning, stacklevel=2)
    absent = sorted(set(subset or ()) - listed)
    if absent:
        message = (f"{path} does not list {len(absent)} of the {len(subset)} clips asked for "
                   f"(e.g. {', '.join(absent[:3])})")
        if whole_subset:
            raise ValueError(message + ": the threshold was not refitted; pass the labels file the split was "
                                       "drawn from")
        warnings.warn(message, LabelWarning, stacklevel=2)
    return list(clips.values())


def _as_listed(name: str, base: Path) -> str:
    """A clip's name as a split lists it: relative to the labels file's folder where it lies inside it,
    normalised (``./a.mp4`` → ``a.mp4``)."""
    p = Path(os.path.normpath(name))
    if p.is_absolute():
        try:
            p = p.relative_to(Path(os.path.normpath(base.absolute())))
        except ValueError:
            pass
    return p.as_posix()


def _manifest_group(rel: str) -> str:
    """A MANIFEST clip's group: the shared clips' naming tells who (and which demo) is shown."""
    from .training.cache import identity_group

    return identity_group(rel)


def clip_groups(clips: list[LabelledClip]) -> list[str]:
    """Each clip's bootstrap group; a clip without one is a group of its own (its path)."""
    return [c.group or f"clip:{c.path}" for c in clips]


def auc_with_intervals(ys, ss, groups) -> dict:
    """AUC, its 95% interval with whole ``groups`` resampled (the one to quote), and with clips resampled (as
    figures before session 49 were), plus how many units were resampled."""
    auc, lo, hi = bootstrap_auc(ys, ss, groups=groups)
    n_groups = len(set(groups))
    clip_lo, clip_hi = (lo, hi) if n_groups == len(ys) else bootstrap_auc(ys, ss)[1:]
    return {"auc": auc, "auc_ci95": [lo, hi], "auc_ci95_clips": [clip_lo, clip_hi],
            "resampled": {"unit": "clip" if n_groups == len(ys) else "group", "n": n_groups}}


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
    if groups is not None and len(set(groups)) < len(y):  # all apart: the clip resamples, draw for draw
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
            writer.keep_last(previous)  # readers of results.jsonl take each path's last line
            return previous
    result = scanner.scan_video(path, sha256=digest)
    if writer is not None:
        writer.write(result)
    # The score as results.jsonl holds it (6 decimals), so a resumed evaluation scores exactly as a fresh one
    # (rounding only at resume could create ties and move a score across the threshold).
    if result.score is not None:
        result.score = round(float(result.score), 6)
    return result


def evaluate(clips: list[LabelledClip], detectors: list[dict], frames: int = 32, out_dir: Path | None = None,
             progress=None, force: bool = False, **scan_options) -> dict:
    """Scan every clip with every detector (``{"detector": name, "weights": path|None}``) and score them;
    ``scan_options`` go to :class:`~deepscan.scanner.ScanOptions` (e.g. ``precision``, ``full_detect_every``).
    With ``out_dir``, clips already scanned there alike are not scanned again unless ``force``."""
    from sklearn.metrics import roc_curve

    from .detector import resolve_card
    from .scanner import ResultsWriter, Scanner, ScanOptions

    # The settings the scans ran with, defaults included: metrics.json must say how its scores were made.
    effective = ScanOptions(frames=frames, **scan_options)
    recorded = {k: getattr(effective, k) for k in ("precision", "full_detect_every", "follow_faces")}
    report = {"n_clips": len(clips), "n_fake": sum(c.label for c in clips), "frames": frames,
              "scan_options": {**recorded, **scan_options}, "detectors": []}
    curves, groups = {}, clip_groups(clips)
    # Card names (the cards alone are read) to tell in advance which detectors share one: those get a key of
    # their own, else they would write into one results.jsonl and one ROC curve.
    names = Counter(resolve_card(spec.get("detector")).name for spec in detectors)
    for spec in detectors:
        scanner = Scanner(ScanOptions(detector=spec.get("detector"), weights=spec.get("weights"), frames=frames,
                                      keep_heatmaps=False, **scan_options))
        name = card_name = scanner.detector.name
        # A unique name keeps out_dir/name, the layout earlier runs (and their resumption) rely on.
        if names[card_name] > 1 or name in curves:
            name = base = f"{card_name}-{(scanner.detector.weights_sha256 or '')[:8]}"
            n = 2
            while name in curves:  # the same card and weights twice
                name, n = f"{base}-{n}", n + 1
        writer = ResultsWriter(out_dir / name) if out_dir else None
        ids, ys, ss, srcs, kept_groups, failed, resumed = [], [], [], [], [], [], 0
        for clip, group in zip(clips, groups, strict=True):
            r = scan_or_resume(scanner, clip.path, writer, force)
            resumed += r.resumed
            if progress:
                progress(name, clip, r)
            if r.score is None:
                failed.append({"path": str(clip.path), "status": r.status, "error": r.error})
            if r.status == "error":  # not judged: left out, as a clip without a result is (scored 0 it read as
                continue  # a correct "real" for a real clip, flattering the rates)
            # No face: judged "not flagged", scored 0.
            ids.append(clip.path)
            ys.append(clip.label)
            ss.append(0.0 if r.score is None else r.score)
            srcs.append(clip.source)
            kept_groups.append(group)
        if len(set(ys)) < 2:
            why = "; ".join(f"{u['path']}: {u.get('error') or u.get('status')}" for u in failed[:3])
            raise ValueError(f"{name}: {len(ys)} of {len(clips)} clips were judged, not both real and fake"
                             + (f" (e.g. {why})" if why else ""))
        entry = {"detector": name, "card": card_name, "weights_sha256": scanner.detector.weights_sha256,
                 "precision": scanner.detector.precision, "n_clips": len(ys), "n_fake": int(sum(ys)),
                 **auc_with_intervals(ys, ss, kept_groups), "at_threshold": rates_at(ys, ss, scanner.threshold),
                 "unscored": failed, "per_source": per_source_table(ys, ss, srcs, scanner.threshold),
                 "video_scores": video_scores(ids, ys, ss, kept_groups), "resumed": resumed}
        entry["at_threshold"]["fitted_on_clips"] = threshold_fitted_on(getattr(scanner.detector, "card", None), ids)
        report["detectors"].append(entry)
        curves[name] = roc_curve(ys, ss)
    pair_with_first(report["detectors"])
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
        plot_roc(curves, report, out_dir / "roc.png")
    return report


def match_results(clips: list[LabelledClip], lines: list[dict]) -> list[dict | None]:
    """Each clip's result line (the last one for it), or None: matched by resolved path, then, for a results
    file written from another working directory or machine, by the file's content sha256 (only the clips still
    unmatched are hashed)."""
    from .detector.card import sha256_file

    by_path, by_sha = {}, {}
    for d in lines:
        by_path[str(Path(d["path"]).resolve())] = d
        if isinstance(d.get("sha256"), str):
            by_sha[d["sha256"]] = d
    found = [by_path.get(str(c.path.resolve())) for c in clips]
    for i, clip in enumerate(clips):
        if found[i] is None and by_sha and clip.path.is_file():
            try:
                found[i] = by_sha.get(sha256_file(clip.path))
            except OSError:
                pass
    return found


def _number(value) -> float | None:
    """A score as read from a line, or None (unscored): JSON has no NaN, but another tool's line may hold one."""
    return float(value) if is_number(value) and math.isfinite(value) else None


def metrics_from_results(clips: list[LabelledClip], results_path: Path) -> dict:
    """Metrics of an earlier scan: ``results.jsonl`` lines matched to the labelled clips (:func:`match_results`).
    Clips without a result are left out, listed under ``missing`` and reported as a :class:`LabelWarning`;
    a ValueError when what remains does not hold both classes."""
    found = match_results(clips, read_result_lines(results_path)[0])
    # One results.jsonl may hold scans by several detectors or settings (`deepscan scan --out` appends): mixed,
    # one detector's scores were judged at another's threshold under its name.
    kinds = Counter(_scored_by(d) for d in found if d is not None)
    if len(kinds) > 1:
        raise ValueError(f"{results_path}: the labelled clips' lines come from {len(kinds)} different detectors or "
                         f"scan settings ({'; '.join(f'{n} by {k[0]} at {k[3]}, config {k[4]}' for k, n in kinds.most_common())}): score "
                         "one scan at a time (a results.jsonl of its own, or the lines of one run)")
    ids, ys, ss, srcs, groups, unscored, missing = [], [], [], [], [], [], []
    model, threshold = None, 0.5
    for clip, group, d in zip(clips, clip_groups(clips), found, strict=True):
        if d is None:
            missing.append(str(clip.path))
            continue
        info = _model_of(d)
        model = model or info.get("name")
        if _number(info.get("threshold")) is not None:
            threshold = _number(info["threshold"])
        score = _number(d.get("score"))
        if score is None:
            unscored.append({"path": str(clip.path), "status": d.get("status"), "error": d.get("error")})
            if d.get("status") == "error":  # not judged: left out (see evaluate)
                continue
        ids.append(clip.path)
        ys.append(clip.label)
        ss.append(0.0 if score is None else score)
        srcs.append(clip.source)
        groups.append(group)
    if missing:
        warnings.warn(f"{results_path}: {len(missing)} of {len(clips)} labelled clips have no result there and "
                      f"are left out (e.g. {', '.join(missing[:3])})", LabelWarning, stacklevel=2)
    if len(set(ys)) < 2:
        raise ValueError(f"{results_path}: {len(ys)} of {len(clips)} labelled clips have a result there, "
                         f"{'not both real and fake' if ys else 'none'}: nothing to evaluate (is it a scan of "
                         "these clips?)")
    card = _card_of(next(d for d in found if d is not None))
    at_threshold = {**rates_at(ys, ss, threshold), "fitted_on_clips": threshold_fitted_on(card, ids) if card else 0}
    return {"detector": model, "n_clips": len(ys), "n_fake": int(sum(ys)), **auc_with_intervals(ys, ss, groups),
            "at_threshold": at_threshold, "unscored": unscored, "missing": missing,
            "per_source": per_source_table(ys, ss, srcs, threshold),
            "video_scores": video_scores(ids, ys, ss, groups)}


def _model_of(line: dict) -> dict:
    """A result line's ``model`` record ({} when it has none, or one that is not a record)."""
    model = line.get("model")
    return model if isinstance(model, dict) else {}


def _scored_by(line: dict) -> tuple:
    """What made a result line's score: model name, weights, card, precision and scan settings."""
    model = _model_of(line)
    # A --dedupe scan's inherited copies carry their representative's hash + "+campaign": the same scan.
    config = str(line.get("config_hash") or "").removesuffix("+campaign")
    return (str(model.get("name")), model.get("sha256"), model.get("card_hash"), model.get("precision"), config)


def threshold_fitted_on(card, paths) -> int:
    """How many of ``paths`` (clips) the card's threshold was chosen on: training and ``deepscan calibrate``
    both fit it on the card's validation split (``training.validation_files``), so its rates there are not
    held out."""
    chosen_on = {str(f) for f in (getattr(card, "training", None) or {}).get("validation_files") or []}
    return sum(any(Path(c).as_posix().endswith("/" + f) or Path(c).as_posix() == f for f in chosen_on)
               for c in paths) if chosen_on else 0


def _card_of(line: dict):
    """The card a result line's model names, when one by that name with the same weights is found (else None)."""
    from .detector import resolve_card

    model = _model_of(line)
    try:
        card = resolve_card(model.get("name"))
    except Exception:  # noqa: BLE001 - an unknown or unreadable card: nothing to say of its threshold
        return None
    return card if card.sha256 and card.sha256 == model.get("sha256") else None


def video_scores(ids, labels, scores, groups=None) -> dict:
    """Each clip's id (its path, for scans), label and video score, kept for paired comparisons; ``groups``:
    clips that must be resampled together."""
    out = {"ids": [str(i) for i in ids], "labels": [int(v) for v in labels], "scores": [float(v) for v in scores]}
    return out if groups is None else {**out, "groups": [str(g) for g in groups]}


def paired_difference(first: dict | None, other: dict | None) -> dict | None:
    """``other``'s AUC minus ``first``'s (two :func:`video_scores` records) with a paired bootstrap 95% interval,
    on the clips both judged (``n_clips``; ``left_out``: those only one of them judged, e.g. an error record);
    None when those do not hold both classes."""
    if not first or not other:
        return None
    where = {clip: k for k, clip in enumerate(other["ids"])}
    common = [k for k, clip in enumerate(first["ids"]) if clip in where]
    labels = [first["labels"][k] for k in common]
    if len(set(labels)) < 2:
        return None
    groups = [first["groups"][k] for k in common] if first.get("groups") else None
    diff, lo, hi = bootstrap_auc_difference(labels, [first["scores"][k] for k in common],
                                            [other["scores"][where[first["ids"][k]]] for k in common],
                                            groups=groups)
    left_out = len(set(first["ids"]) ^ set(other["ids"]))
    return {"auc_difference": diff, "ci95": [lo, hi], "n_clips": len(common), "left_out": left_out}


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
    ax.set_title(f"video-level ROC, {report['n_clips']} labelled clips ({report['n_fake']} fake)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _comparable(config: dict) -> dict:
    """A scan configuration without what a calibration does not compare: who scored (detector, weights and
    precision are checked on the model) and the threshold (what it refits)."""
    as_stored = json.loads(json.dumps(config, default=str))  # tuples as lists, as a results line holds them
    return {k: v for k, v in as_stored.items() if k not in ("detector", "weights", "precision", "threshold")}


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
    from .scanner import ResultsWriter, Scanner, ScanOptions, card_hash
    from .training.train import video_threshold

    if not (is_number(max_fpr) and 0.0 <= max_fpr < 1.0):
        raise ValueError(f"max_fpr must be from 0 to below 1 (0.05 is 5%), not {max_fpr!r}")
    card_path = Path(card_path)
    card = ModelCard.load(card_path)
    subset = set(card.training.get("validation_files") or [])
    if not subset:
        raise ValueError(f"{card_path} names no training.validation_files")
    clips = read_labels(labels, subset, whole_subset=True)
    if len({c.label for c in clips}) < 2:
        raise ValueError("the validation split needs labelled real and fake clips")
    if results_path is None:
        scanner = Scanner(ScanOptions(detector=str(card_path), frames=frames, keep_heatmaps=False,
                                      precision=precision))
        writer = ResultsWriter(out_dir) if out_dir else None
        found = []
        for clip in clips:
            r = scan_or_resume(scanner, clip.path, writer)
            found.append({"score": r.score, "config": r.config, "status": r.status, "error": r.error})
    else:
        # The scan settings the fit is for, as `deepscan scan` runs by default at `frames` (sample places,
        # search, aggregation...): a line scanned otherwise scores the same clips otherwise. Who scored it is
        # checked on the model instead (weights, card hash, precision); the threshold is what is refitted.
        wanted = _comparable(ScanOptions(frames=frames).scoring_config())
        lines = []
        for d in read_result_lines(results_path)[0]:
            model = _model_of(d)
            scored_at = model.get("precision") or (d.get("environment") or {}).get("precision") or "fp32"
            config = d.get("config") if isinstance(d.get("config"), dict) else {}
            # The card hash too: a copy of the card with another temperature, crop or face detector scores the
            # same weights otherwise (a line without one is of unknown card, as for the scanner's resume).
            if (model.get("sha256") == card.sha256 and model.get("card_hash") == card_hash(card)
                    and scored_at == precision and _comparable(config) == wanted):
                lines.append(d)
        found = match_results(clips, lines)
    # A clip without a score must not enter the fit as a 0: a partial results file would drag the threshold down
    # (0.891 -> 0.202 with half the split) and the card would vouch for a false-positive rate it does not have;
    # nor may a clip that could not be screened (an error record: 0.891 -> 0.654 from one real clip).
    missing = [str(c.path) for c, d in zip(clips, found, strict=True) if d is None]
    if missing:
        raise ValueError(f"{len(missing)} of {len(clips)} validation clips have no score from this card (its weights "
                         f"and scoring settings) at {precision} and {frames} frames in {results_path} "
                         f"(e.g. {', '.join(missing[:3])}); "
                         "the threshold was not refitted: scan the whole split (without --results) or pass results "
                         "that cover it")
    failed = [f"{c.path} ({d.get('error') or 'no score'})" for c, d in zip(clips, found, strict=True)
              if d.get("status") == "error" or (d.get("score") is None and d.get("status") != "no_face")]
    if failed:
        raise ValueError(f"{len(failed)} of {len(clips)} validation clips could not be screened (e.g. "
                         f"{'; '.join(failed[:3])}); the threshold was not refitted")
    scan_config = next((d.get("config") for d in found if d.get("config")), None)
    ys = np.array([c.label for c in clips])
    ss = np.array([_number(d.get("score")) or 0.0 for d in found], np.float64)
    previous = card.threshold_for(precision)
    threshold = video_threshold(ss[ys == 0], max_fpr)
    if precision == "fp32":
        card.threshold = threshold
    else:
        card.precision_thresholds[precision] = threshold
    resampled = auc_with_intervals(ys, ss, clip_groups(clips))
    auc, (lo, hi) = resampled["auc"], resampled["auc_ci95"]
    key = "scanner" if precision == "fp32" else f"scanner_{precision}"
    card.metrics[key] = {
        "what": f"deepscan scan on the validation clips, {frames} frames each, {precision}; threshold refitted "
                "here",
        "frames": frames, "precision": precision, "videos": int(len(ys)), "real_videos": int((ys == 0).sum()),
        "fake_videos": int(ys.sum()), "video_auc": auc, "video_auc_ci95": [lo, hi],
        "video_auc_ci95_clips": resampled["auc_ci95_clips"], "resampled": resampled["resampled"], "max_fpr": max_fpr,
        "threshold": threshold, "threshold_before": previous,
        **{f"{k}_at_threshold": v for k, v in rates_at(ys, ss, threshold).items() if k != "threshold"},
        "missing": 0,  # kept for readers of older cards: a fit now needs every clip
        "scan_config": scan_config,
    }
    card.save(card_path)
    return card.metrics[key]
