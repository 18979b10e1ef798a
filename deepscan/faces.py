"""Faces stage: MTCNN detection on a downscaled copy of each frame, mapped back to full resolution, and
linking of detections across sampled frames into tracks (one per person).

facenet-pytorch's ``mtcnn(batch)`` crops faces itself but raises on numpy 2 when a frame has none, so only
``detect()`` is used here and cropping goes through :mod:`deepscan.crops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .detector.card import FaceDetectorSettings


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in full-resolution frame pixels
    prob: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right
    track: int = -1

    @property
    def size(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


class FaceFinder:
    """Batched MTCNN over frames of one size; keeps faces above the card's probability and size thresholds."""

    def __init__(self, settings: FaceDetectorSettings | None = None, device=None):
        from facenet_pytorch import MTCNN

        from .detector import select_device

        self.settings = settings or FaceDetectorSettings()
        self.device = select_device(device)
        self.mtcnn = MTCNN(keep_all=True, device=self.device, thresholds=list(self.settings.thresholds),
                           min_face_size=max(12, int(self.settings.min_face_px * 0.5)), post_process=False,
                           select_largest=False)

    def detect(self, images: list[np.ndarray], min_face: float | None = None) -> list[list[Face]]:
        """Faces in each frame. ``min_face`` (full-resolution pixels) skips smaller faces than the card's
        minimum: MTCNN's image pyramid then starts at a coarser scale, which is most of its cost."""
        if not images:
            return []
        smallest = max(self.settings.min_face_px, min_face or 0)
        out: list[list[Face]] = [[] for _ in images]
        # MTCNN batches only same-sized frames; group by shape (one group for a normal video).
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for shape, idxs in groups.items():
            h, w = shape[:2]
            scale = min(1.0, self.settings.detect_max_side / max(h, w))
            # MTCNN's smallest detectable face is ~12 px at its first scale: on the downscaled copy the minimum
            # face size shrinks too, so small faces are still found.
            self.mtcnn.min_face_size = max(12, int(smallest * scale * 0.8))
            batch = [images[i] if scale == 1.0 else cv2.resize(images[i], (round(w * scale), round(h * scale)),
                                                               interpolation=cv2.INTER_AREA) for i in idxs]
            boxes, probs, points = self.mtcnn.detect(np.stack(batch), landmarks=True)
            for i, b, p, pts in zip(idxs, boxes, probs, points, strict=True):
                if b is None:
                    continue
                for box, prob, lm in zip(b, p, pts, strict=True):
                    if prob is None or prob < self.settings.min_prob:
                        continue
                    box = np.clip(np.asarray(box, np.float64) / scale, [0, 0, 0, 0], [w, h, w, h])
                    face = Face(box=tuple(round(float(v), 2) for v in box), prob=round(float(prob), 5),
                                landmarks=(np.asarray(lm, np.float32) / scale))
                    if face.size >= self.settings.min_face_px:
                        out[i].append(face)
        return out


def iou(a, b) -> float:
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: tuple
    last_frame: int
    hits: int = 1
    boxes: list = field(default_factory=list)


class Tracker:
    """Links faces across sampled frames: greedy matching on box overlap and centre distance.

    Sampled frames can be a fraction of a second apart, so besides IoU a face whose centre moved less than
    ``max_centre_shift`` of its size, with a similar size, continues the same track. A track unmatched for
    ``max_gap`` sampled frames ends (a person who leaves and returns starts a new track).
    """

    def __init__(self, min_iou: float = 0.2, max_centre_shift: float = 0.6, max_gap: int = 8):
        self.min_iou = min_iou
        self.max_centre_shift = max_centre_shift
        self.max_gap = max_gap
        self.tracks: list[_Track] = []
        self._next = 0
        self._step = 0

    def _affinity(self, track: _Track, face: Face) -> float:
        overlap = iou(track.box, face.box)
        if overlap >= self.min_iou:
            return 1.0 + overlap
        tb, fb = track.box, face.box
        tsize = max(tb[2] - tb[0], tb[3] - tb[1])
        fsize = face.size
        shift = np.hypot((tb[0] + tb[2] - fb[0] - fb[2]) / 2, (tb[1] + tb[3] - fb[1] - fb[3]) / 2)
        if shift <= self.max_centre_shift * max(tsize, fsize) and 0.6 <= fsize / max(tsize, 1e-6) <= 1.66:
            return 1.0 - shift / (self.max_centre_shift * max(tsize, fsize) + 1e-6)
        return 0.0

    def update(self, faces: list[Face]) -> list[Face]:
        """Assign ``face.track`` for one sampled frame's faces (in place) and return them."""
        live = [t for t in self.tracks if self._step - t.last_frame <= self.max_gap]
        pairs = sorted(((self._affinity(t, f), ti, fi) for ti, t in enumerate(live) for fi, f in enumerate(faces)),
                       reverse=True)
        used_t, used_f = set(), set()
        for score, ti, fi in pairs:
            if score <= 0 or ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            t = live[ti]
            t.box, t.last_frame, t.hits = faces[fi].box, self._step, t.hits + 1
            faces[fi].track = t.id
        for fi, f in enumerate(faces):
            if fi not in used_f:
                t = _Track(id=self._next, box=f.box, last_frame=self._step)
                self._next += 1
                self.tracks.append(t)
                f.track = t.id
        self._step += 1
        return faces
