"""Face-crop cache for training: decode each labelled clip once, find faces with the same face stage the
scanner uses, and store context crops (a wide square around each face) with the face box and landmarks in
crop coordinates. Training then cuts the model's input from the context crop with ``crop_face`` — the same
function inference uses — after self-blending or augmenting it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..crops import crop_face, to_crop
from ..detector.card import FaceDetectorSettings
from .landmarks68 import sidecar_fits, sidecar_path

# Clips whose names carry a person: the same person must never sit on both sides of a split.
_IDENTITY_ALIASES = {"obama": "obama", "obama_short": "obama", "obama_speaking": "obama"}


# How video.iter_frames chooses a clip's frames, recorded with the crops cut from them. Session 48 made the N
# samples span the video stream itself from its first frame (the container's duration may be another stream's)
# and never lose the last one: some clips' cached frames moved, so an older cache is cut another way.
FRAME_SAMPLING = "video-stream-span"
LEGACY_FRAME_SAMPLING = "container-span"  # caches written before the name was recorded
# Where a crop's box and landmarks are measured from. Session 49 measures them from the pixel square the crop
# is cut from (crops.to_crop), as inference cuts it; caches before took the float square (box coordinates 0.56
# context px off on average, 2.2 at most, on the shared clips), so their boxes sat beside the faces the crops show.
CROP_GEOMETRY = "pixel-square"
LEGACY_CROP_GEOMETRY = "float-square"


MANIFEST_LABELS = ("real", "fake", "unknown")


class TrainingDataWarning(UserWarning):
    """Something in the training data left out or doubtful (a repeated manifest row, recordings shared across
    the split)."""


def read_manifest(path) -> list[dict]:
    """The manifest's rows, each ``label`` lower-cased and stripped (a "Fake" row was silently left out of
    training while `deepscan eval` counted it as a fake). A label other than real, fake or unknown is an error,
    and so is a file labelled two ways; a file listed again is counted once, with a warning (it was validated
    twice and counted twice in the card)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    kept: dict[str, dict] = {}
    bad, repeated = [], 0
    for row in rows:
        row["label"] = (row.get("label") or "").strip().lower()
        name = (row.get("file") or "").strip()
        if row["label"] not in MANIFEST_LABELS:
            bad.append(f"{name or '(no file)'}: {row['label'] or '(empty)'}")
            continue
        if name in kept:
            if kept[name]["label"] != row["label"]:
                raise ValueError(f"{path}: {name} is labelled both {kept[name]['label']} and {row['label']}")
            repeated += 1
            continue
        kept[name] = row
    if bad:
        raise ValueError(f"{path}: {len(bad)} row(s) with a label other than {', '.join(MANIFEST_LABELS)} "
                         f"(e.g. {'; '.join(bad[:3])})")
    if repeated:
        warnings.warn(f"{path}: {repeated} row(s) skipped: a file listed again", TrainingDataWarning, stacklevel=2)
    return list(kept.values())


def identity_group(rel_path: str) -> str:
    """Split key: who is on screen (and, for DeepFaceLive demos, both halves of a demo together)."""
    folder, name = rel_path.split("/", 1) if "/" in rel_path else ("", rel_path)
    stem = Path(name).stem
    if folder == "deepfacelive_split":
        return "dfl:" + re.sub(r"_\d+__(left_original|right_swapped)$", "", stem).lower().replace(" ", "_")
    if folder == "hdtf_via_sadtalker":
        return "person:" + re.sub(r"^(WDA|RD)_|\d*_000$", "", stem).lower()
    if folder == "sadtalker_outputs":
        return "sadtalker:" + re.sub(r"(_e|_full_e|\d+)$", "", stem.split("##")[0]).lower()
    key = _IDENTITY_ALIASES.get(stem.lower())
    if key:
        return "person:" + key
    return f"{folder}:{stem.lower()}"


def _keep_faces(faces, label: str):
    """Real clips: every confident face. Fake clips: only the largest face per frame — other faces in a
    face-swap demo (a photo on the wall, the source image in the app window) are not manipulated."""
    if label == "fake" and faces:
        return [max(faces, key=lambda f: f.size)]
    return faces


def build_cache(manifest: Path, out_dir: Path, frames_per_clip: int = 32, context_margin: float = 1.0,
                context_size: int = 384, settings: FaceDetectorSettings | None = None, limit: int | None = None,
                progress: bool = True) -> dict:
    """Write ``out_dir/index.json`` and one ``<id>.npz`` per clip; clips already cached are kept.

    A clip that cannot be read is left out and listed under ``failed`` (the others are cached). The index is
    rewritten after every clip cut, marked ``complete: false`` until the build ends, so it always describes
    the crops on disk: an interrupted build resumes where it stopped, and training refuses an unfinished one."""
    from rich.progress import Progress

    from ..faces import FaceFinder
    from ..video import VideoError, iter_frames, probe

    settings = settings or FaceDetectorSettings()
    clips_dir = manifest.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(manifest)[:limit]
    index_path = out_dir / "index.json"
    previous = json.loads(index_path.read_text()) if index_path.is_file() else None
    finder = FaceFinder(settings)
    index = {"context_margin": context_margin, "context_size": context_size, "frames_per_clip": frames_per_clip,
             "face_detector": asdict(settings), "frame_sampling": FRAME_SAMPLING, "crop_geometry": CROP_GEOMETRY,
             "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(), "clips": [], "failed": [],
             "complete": False}
    before = {c["id"]: c for c in (previous or {}).get("clips", [])}
    pending = [c for c in (previous or {}).get("clips", [])]  # still on disk as the earlier index says

    def write_index() -> None:
        # The clips cut so far, then those not reached yet as the earlier index has them: what is on disk now.
        done = {c["id"] for c in index["clips"]}
        current = {**index, "clips": index["clips"] + [c for c in pending if c["id"] not in done]}
        tmp = index_path.with_suffix(".tmp.json")
        tmp.write_text(json.dumps(current, indent=1))
        tmp.replace(index_path)

    t0 = time.time()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("caching faces", total=len(rows))
        for row in rows:
            rel = row["file"]
            clip_id = hashlib.sha1(rel.encode()).hexdigest()[:16]
            entry = {"id": clip_id, "file": rel, "label": row["label"], "group": identity_group(rel),
                     "source": rel.split("/")[0], "method": row.get("method", ""), "npz": f"{clip_id}.npz"}
            target = out_dir / entry["npz"]
            # A clip's crops are kept only if they were cut as they would be now: another face detector, frame
            # count, crop size, sampling, or label (fakes keep only their largest face) re-cuts them.
            # The clip's file too (its size and the manifest's commit): one replaced under the same name is cut
            # again, not described by the new manifest's hash with the old file's crops.
            source = {"bytes": _file_size(clips_dir / rel), "commit": row.get("commit") or None}
            entry["cached_with"] = {**_cut_with(index, row["label"]), "source": source}
            cut = not target.exists() or not _same_cut(_cached_with(previous, before.get(clip_id)),
                                                       entry["cached_with"])
            if cut:
                crops, boxes, marks, fidx, probs = [], [], [], [], []
                try:
                    info = probe(clips_dir / rel)
                    # The fixed schedule (no sample_seed): a cache is cut as every earlier one was, so a config
                    # trains on the same crops; a scan's seeded places are as evenly spread.
                    for batch in iter_frames(clips_dir / rel, info, n_frames=frames_per_clip, batch_size=16):
                        for frame, faces in zip(batch, finder.detect([f.image for f in batch]), strict=True):
                            for face in _keep_faces(faces, row["label"]):
                                crops.append(crop_face(frame.image, face.box, context_margin, context_size))
                                corners = np.reshape(face.box[:4], (2, 2))
                                boxes.append(to_crop(corners, face.box, context_margin, context_size).ravel())
                                marks.append(to_crop(face.landmarks, face.box, context_margin, context_size))
                                fidx.append(frame.index)
                                probs.append(face.prob)
                except (VideoError, OSError) as exc:
                    index["failed"].append({"file": rel, "error": str(exc)})
                    pending[:] = [c for c in pending if c["id"] != clip_id]  # its old crops describe another file
                    bar.advance(task)
                    write_index()
                    continue
                tmp = target.with_suffix(".tmp.npz")
                np.savez(tmp, crops=np.asarray(crops, np.uint8).reshape(-1, context_size, context_size, 3),
                         boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                         landmarks=np.asarray(marks, np.float32).reshape(-1, 5, 2),
                         frame_index=np.asarray(fidx, np.int64), prob=np.asarray(probs, np.float32))
                tmp.replace(target)
                # Its 68-point sidecar belongs to the frames cut before: with the same face count it would pass
                # for these (sidecar_fits counts faces), so it goes; `deepscan landmarks` fits the new ones.
                sidecar_path(out_dir, entry).unlink(missing_ok=True)
            with np.load(target) as z:
                entry["n_crops"] = int(len(z["prob"]))
            index["clips"].append(entry)
            if cut:
                write_index()
            bar.advance(task)
    index["build_seconds"] = round(time.time() - t0, 1)
    index["complete"] = True
    pending.clear()  # the finished index holds this manifest's clips only
    if _dense_landmarks_still_apply(out_dir, previous, index["clips"]):
        index["dense_landmarks"] = previous["dense_landmarks"]
    write_index()
    return index


def cut_settings(index: dict) -> dict:
    """How ``index``'s crops are cut (face detector, frames, context crop, sampling, geometry), as index.json
    gives it back (tuples are lists)."""
    return json.loads(json.dumps({
        "face_detector": index.get("face_detector"), "frames_per_clip": index.get("frames_per_clip"),
        "context_margin": index.get("context_margin"), "context_size": index.get("context_size"),
        "frame_sampling": index.get("frame_sampling", LEGACY_FRAME_SAMPLING),
        "crop_geometry": index.get("crop_geometry", LEGACY_CROP_GEOMETRY)}))


def _cut_with(index: dict, label) -> dict:
    """How a clip's crops are cut under ``index``'s settings: :func:`cut_settings` and the clip's label."""
    return {**cut_settings(index), "label": label}


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _same_cut(before: dict | None, now: dict) -> bool:
    """Whether crops cut as ``before`` says are those ``now`` asks for; a record from before clips' files were
    recorded (no ``source``) is compared on the rest, so an existing cache is not cut again for it."""
    if before is None:
        return False
    if "source" not in before:
        now = {k: v for k, v in now.items() if k != "source"}
    return before == now


def _cached_with(previous: dict | None, entry: dict | None) -> dict | None:
    """How an earlier build cut a clip's crops: its own record, or for an index written before clips had one,
    that index's settings and the clip's label then (None when nothing says: the clip is cut again)."""
    if not previous or not entry:
        return None
    return entry["cached_with"] if "cached_with" in entry else _cut_with(previous, entry.get("label"))


def _dense_landmarks_still_apply(out_dir: Path, previous: dict | None, clips: list[dict]) -> bool:
    """The summary that ``deepscan landmarks`` wrote (predictor, counts) describes a rebuilt index only when the
    clips are the same and every one still has a sidecar of one point set per cached face."""
    if not previous or "dense_landmarks" not in previous:
        return False
    if [c["id"] for c in previous.get("clips", [])] != [c["id"] for c in clips]:
        return False
    return all(sidecar_fits(out_dir, clip) for clip in clips)
