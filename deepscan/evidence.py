"""Evidence images for the HTML report: the most suspicious face crops with their heatmaps, one thumbnail per
person (track), and a score-over-time plot per video.

:func:`save_evidence` runs right after a video is scanned with ``keep_heatmaps=True`` (it needs each face's
``crop`` and ``heatmap``; without them only the timeline is drawn) and returns a JSON-ready description of
what it wrote, with paths relative to the report folder so the folder can be moved or zipped as a whole. Each
image is written to a temporary name and renamed into place, so an interrupted scan never leaves a truncated
PNG behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from .results import FaceResult, FrameResult, VideoResult, decimals_to_compare, scores_by_track, verdict_cuts

EVIDENCE_VERSION = 1
COLORMAP = "jet"  # blue = no evidence, red = strongest evidence: the convention readers of heatmaps expect
OVERLAY_ALPHA = 0.45
THUMB_SIZE = 96
LEGEND_PEOPLE = 8
VERDICT_COLOURS = {"fake": "#c62828", "uncertain": "#ef8f00", "real": "#2e7d32"}


def asset_key(result: VideoResult) -> str:
    """Folder name for a video's images: its content hash (stable across renames; else a hash of its path) and
    a hash of how it was judged (model, threshold, scan options). A rescan with other settings writes a folder
    of its own, so the images an earlier line points to are never replaced by another scan's."""
    if result.sha256:
        content = result.sha256[:16]
    else:
        content = "p" + hashlib.sha256(result.path.encode("utf-8", "surrogateescape")).hexdigest()[:15]
    judged = json.dumps([result.model, result.config_hash], sort_keys=True, default=str)
    return f"{content}-{hashlib.sha256(judged.encode()).hexdigest()[:8]}"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step: a reader or a crash never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def heatmap_overlay(crop: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA,
                    colormap: str = COLORMAP) -> np.ndarray:
    """Blend a [0, 1] heatmap, coloured by ``colormap``, over an RGB uint8 crop (resized to the crop first)."""
    import cv2
    from matplotlib import colormaps

    h, w = crop.shape[:2]
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    coloured = colormaps[colormap](heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * crop.astype(np.float32) + alpha * coloured
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _thumbnail(crop: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    import cv2

    if crop.shape[0] <= size:
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def pick_faces(candidates: list[tuple[FrameResult, FaceResult]], top_k: int) -> list[tuple[FrameResult, FaceResult]]:
    """The ``top_k`` most suspicious faces, spread out: each person's worst face first (so a second face in the
    video is not hidden behind many frames of the first), then the highest remaining scores."""
    ranked = sorted(candidates, key=lambda c: (-c[1].score, c[0].index, c[1].track))
    picked, seen_tracks = [], set()
    for cand in ranked:
        if len(picked) < top_k and cand[1].track not in seen_tracks:
            picked.append(cand)
            seen_tracks.add(cand[1].track)
    taken = {id(c) for c in picked}
    picked += [c for c in ranked if id(c) not in taken][: max(0, top_k - len(picked))]
    return sorted(picked, key=lambda c: (-c[1].score, c[0].index))


def _timeline_png(result: VideoResult, threshold: float | None, band: float | None) -> bytes:
    # Figure + Agg canvas directly (not pyplot): no global state, safe beside a GUI backend or in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 2.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    per_track = scores_by_track(result.frames)
    track_verdict = {t.id: t for t in result.tracks}
    # A legend holds the LEGEND_PEOPLE most suspicious people, each in a colour of its own; the rest are drawn
    # in grey under one entry (a crowd's legend ran off the image, threshold entry included, and colours
    # repeated after ten).
    # Legend scores and threshold at one precision, as many decimals as keep them on their verdicts' sides.
    cuts = verdict_cuts(threshold, band) if threshold is not None else ()
    digits = decimals_to_compare([(t.score, cuts) for t in result.tracks])
    ranked = sorted(per_track, key=lambda k: -max(s for _, s in per_track[k]))
    named = set(ranked[:LEGEND_PEOPLE])
    others = 0
    for track in sorted(per_track, key=lambda k: (k in named, k)):  # the named drawn last, on top
        points = sorted(per_track[track])
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if track not in named:
            others += 1
            ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=0.8, color="#b0b0b0",
                    label=f"{len(per_track) - LEGEND_PEOPLE} other people" if others == 1 else None)
            continue
        t = track_verdict.get(track)
        label = f"person #{track}" + (f" ({t.score:.{digits}f})" if t is not None else "")
        ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.4, color=f"C{ranked.index(track)}", label=label)
    empty = [f.time_s for f in result.frames if not f.faces]
    if empty:  # sampled but faceless frames: shows where nothing could be judged
        ax.plot(empty, [0.0] * len(empty), linestyle="none", marker="|", markersize=9, color="#9e9e9e",
                label="no face")
    if threshold is not None:
        if band:
            ax.axhspan(max(0.0, threshold - band), threshold, color=VERDICT_COLOURS["uncertain"], alpha=0.10,
                       linewidth=0)
        ax.axhline(threshold, linestyle="--", linewidth=1.2, color=VERDICT_COLOURS["fake"],
                   label=f"threshold {threshold:.{digits}f}")
    duration = (result.video or {}).get("duration_s")
    last = max((f.time_s for f in result.frames), default=0.0)
    ax.set_xlim(0.0, max(float(duration or 0.0), last, 1e-3) * 1.02)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("fake score")
    ax.grid(True, linewidth=0.5, alpha=0.4)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout(pad=0.6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_evidence(result: VideoResult, out_dir: Path, top_k: int = 4) -> dict:
    """Write the evidence images of one scanned video under ``out_dir/assets/<key>/`` and describe them.

    The returned dict (store it as ``result.extra["evidence"]``) holds paths relative to ``out_dir``:
    ``timeline`` (or None without faces), ``faces`` (the ``top_k`` most suspicious: ``crop``, ``overlay``,
    ``score``, ``time_s``, ``frame``, ``track``, ``heat_peak``) and ``tracks`` (one ``thumb`` per person that
    has a crop, with the track score and its most suspicious face's score and time).
    """
    out_dir = Path(out_dir)
    key = asset_key(result)
    rel_dir = f"assets/{key}"
    evidence: dict = {"version": EVIDENCE_VERSION, "dir": None, "colormap": COLORMAP, "alpha": OVERLAY_ALPHA,
                      "timeline": None, "faces": [], "tracks": []}
    candidates = [(fr, f) for fr in result.frames for f in fr.faces]
    if not candidates:
        return evidence
    asset_dir = out_dir / rel_dir
    asset_dir.mkdir(parents=True, exist_ok=True)
    evidence["dir"] = rel_dir

    def write(name: str, data: bytes) -> str:
        write_atomic(asset_dir / name, data)
        return f"{rel_dir}/{name}"

    threshold = result.model.get("threshold")
    band = result.model.get("uncertain_band")  # present when the scanner records it with the model
    evidence["timeline"] = write("timeline.png", _timeline_png(result, threshold, band))

    with_pixels = [c for c in candidates if c[1].crop is not None]
    for rank, (frame, face) in enumerate(pick_faces(with_pixels, top_k)):
        item = {"rank": rank, "score": round(float(face.score), 6), "time_s": round(float(frame.time_s), 4),
                "frame": frame.index, "track": face.track, "box": [round(float(v), 2) for v in face.box],
                "heat_peak": None if face.heat_peak is None else round(float(face.heat_peak), 4),
                "crop": write(f"face{rank}_crop.png", _png_bytes(face.crop)), "overlay": None}
        if face.heatmap is not None:
            item["overlay"] = write(f"face{rank}_heat.png", _png_bytes(heatmap_overlay(face.crop, face.heatmap)))
        evidence["faces"].append(item)

    track_scores = {t.id: t.score for t in result.tracks}
    best: dict[int, tuple[FrameResult, FaceResult]] = {}
    for frame, face in with_pixels:
        if face.track not in best or face.score > best[face.track][1].score:
            best[face.track] = (frame, face)
    for track, (frame, face) in sorted(best.items()):
        evidence["tracks"].append({
            "track": track,
            "score": None if track not in track_scores else round(float(track_scores[track]), 6),
            "face_score": round(float(face.score), 6), "time_s": round(float(frame.time_s), 4),
            "frame": frame.index, "thumb": write(f"track{track}.png", _png_bytes(_thumbnail(face.crop)))})
    return evidence


def image_paths(evidence: dict) -> list[str]:
    """Every image path (relative to the report folder) an evidence record from :func:`save_evidence` names."""
    names = [evidence.get("timeline")]
    names += [f.get(k) for f in evidence.get("faces") or [] if isinstance(f, dict) for k in ("crop", "overlay")]
    names += [t.get("thumb") for t in evidence.get("tracks") or [] if isinstance(t, dict)]
    return [n for n in names if isinstance(n, str)]


def drop_pixels(result: VideoResult) -> None:
    """Free each face's crop and heatmap once its evidence is written (they would otherwise stay in memory
    for every video of a long scan)."""
    for frame in result.frames:
        for face in frame.faces:
            face.crop = None
            face.heatmap = None
