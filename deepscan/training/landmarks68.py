"""68-point face landmarks for the crop cache, so self-blends can take their masks from the face's own outline.

SBI (Shiohara & Yamasaki 2022) and Face X-ray draw their blending masks from dlib's 68/81 landmarks: the hull
follows the jaw, which moves with the head's pose. MTCNN gives five points, from which :mod:`.sbi` extrapolates a
symmetric outline. dlib's Python module comes from the ``dlib-bin`` wheel (the ``landmarks`` extra) and its
68-point shape predictor from Debian's ``libdlib-data`` package (``/usr/share/dlib/shape_predictor_68_face_
landmarks.dat``, CC0 per Debian's copyright file); neither is needed to scan, nor shipped with the weights.

Each clip's points go beside its crops as ``<id>.lm68.npy`` (K, 68, 2) float32 in context-crop coordinates, NaN
for a frame whose 68 points disagree with MTCNN's five (training then falls back to the five-point outline).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .sbi import face_axes

DEFAULT_PREDICTOR = Path("/usr/share/dlib/shape_predictor_68_face_landmarks.dat")
# 68 points whose eyes, nose tip and mouth corners sit further than this (in inter-ocular distances, mean of the
# five) from MTCNN's are a failed fit: on 80 cached frames fitted in dlib's own (HOG) boxes the median distance
# was 0.04 and the 99th percentile 0.07; in MTCNN's boxes 0.04 and 0.26. On the 149 shared clips 4,876 of 4,985
# cached faces pass.
MAX_DISAGREEMENT = 0.15


def five_of_68(points: np.ndarray) -> np.ndarray:
    """MTCNN's five points (eye centres, nose tip, mouth corners) read off a 68-point layout."""
    p = np.asarray(points, np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def disagreement(points68: np.ndarray, five: np.ndarray) -> float:
    """Mean distance of :func:`five_of_68` from ``five``, in ``five``'s inter-ocular distances."""
    five = np.asarray(five, np.float64)
    _, _, _, iod, _ = face_axes(five)
    return float(np.linalg.norm(five_of_68(points68) - five, axis=1).mean() / iod)


def sidecar_path(cache_dir, clip: dict) -> Path:
    return Path(cache_dir) / (Path(clip["npz"]).stem + ".lm68.npy")


def sidecar_fits(cache_dir, clip: dict) -> bool:
    """Whether ``clip`` has a sidecar of one point set per cached face. A clip re-cached with another face count
    keeps its old sidecar until refitted, and its points would then belong to other frames."""
    path = sidecar_path(cache_dir, clip)
    if not path.is_file():
        return False
    n_crops = clip.get("n_crops")
    if n_crops is None:  # an index without crop counts: read them from the clip itself
        with np.load(Path(cache_dir) / clip["npz"]) as z:
            n_crops = len(z["boxes"])
    return len(np.load(path, mmap_mode="r")) == n_crops


class DenseLandmarker:
    """dlib's HOG face detector and 68-point shape predictor, checked against MTCNN's five points."""

    def __init__(self, predictor_path=DEFAULT_PREDICTOR):
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("68-point landmarks need dlib: pip install -e '.[landmarks]'") from exc
        path = Path(predictor_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: dlib's 68-point shape predictor (Debian: apt-get install libdlib-data)")
        self.predictor_path = path
        self._dlib = dlib
        self._detect = dlib.get_frontal_face_detector()
        self._predict = dlib.shape_predictor(str(path))

    def _points(self, image: np.ndarray, rect) -> np.ndarray:
        shape = self._predict(image, rect)
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)

    def __call__(self, image: np.ndarray, box, five: np.ndarray) -> np.ndarray | None:
        """The 68 points of the face MTCNN found at ``box`` with ``five``, or None when no fit agrees with them.

        dlib's predictor was trained on its HOG detector's boxes (squarer and lower than MTCNN's), so the HOG box
        that best matches is tried first, then MTCNN's own box."""
        image = np.ascontiguousarray(image)
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        found = sorted(self._detect(image, 0),
                       key=lambda r: np.hypot(r.center().x - centre[0], r.center().y - centre[1]))
        candidates = found[:1] + [self._dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))]
        for rect in candidates:
            points = self._points(image, rect)
            if disagreement(points, five) <= MAX_DISAGREEMENT:
                return points
        return None


def add_dense_landmarks(cache_dir, predictor_path=DEFAULT_PREDICTOR, progress: bool = True) -> dict:
    """Write a ``.lm68.npy`` beside every cached clip that lacks one, or whose one no longer matches its crops
    (:func:`sidecar_fits`); return counts for the cache's index."""
    from rich.progress import Progress

    cache_dir = Path(cache_dir)
    index_path = cache_dir / "index.json"
    index = json.loads(index_path.read_text())
    landmarker = DenseLandmarker(predictor_path)
    t0 = time.time()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("68-point landmarks", total=len(index["clips"]))
        for clip in index["clips"]:
            target = sidecar_path(cache_dir, clip)
            if not sidecar_fits(cache_dir, clip):
                with np.load(cache_dir / clip["npz"]) as z:
                    crops, boxes, fives = z["crops"], z["boxes"], z["landmarks"]
                points = np.full((len(crops), 68, 2), np.nan, np.float32)
                for k in range(len(crops)):
                    fitted = landmarker(crops[k], boxes[k], fives[k])
                    if fitted is not None:
                        points[k] = fitted
                tmp = target.with_suffix(".tmp.npy")
                np.save(tmp, points)
                tmp.replace(target)
            bar.advance(task)
    n_frames = n_fitted = 0
    for clip in index["clips"]:
        points = np.load(sidecar_path(cache_dir, clip))
        n_frames += len(points)
        n_fitted += int(np.isfinite(points).all(axis=(1, 2)).sum())
    index["dense_landmarks"] = {
        "predictor": landmarker.predictor_path.name,
        "predictor_sha256": hashlib.sha256(landmarker.predictor_path.read_bytes()).hexdigest(),
        "max_disagreement": MAX_DISAGREEMENT, "frames": n_frames, "fitted": n_fitted,
        "seconds": round(time.time() - t0, 1)}
    tmp = index_path.with_suffix(".tmp.json")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)
    return index["dense_landmarks"]
