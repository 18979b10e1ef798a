"""Faces stage: MTCNN detection on a downscaled copy of each frame, mapped back to full resolution, and
linking of detections across sampled frames into tracks (one per person).

facenet-pytorch's ``mtcnn(batch)`` crops faces itself but raises on numpy 2 when a frame has none, so only
``detect()`` is used here and cropping goes through :mod:`deepscan.crops`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        import torch
        from facenet_pytorch import MTCNN

        from .detector import select_device

        self.settings = settings or FaceDetectorSettings()
        self.device = select_device(device)
        self.mtcnn = MTCNN(keep_all=True, device=self.device, thresholds=list(self.settings.thresholds),
                           min_face_size=max(12, int(self.settings.min_face_px * 0.5)), post_process=False,
                           select_largest=False)
        # Channels-last maps make the nets' max-pooling several times faster on CPU (same results).
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)

    def detect(self, images: list[np.ndarray], min_face: float | None = None) -> list[list[Face]]:
        """Faces in each frame. ``min_face`` (full-resolution pixels) skips smaller faces than the card's
        minimum: MTCNN's image pyramid then starts at a coarser scale, which is most of its cost."""
        if not images:
            return []
        import torch

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
            if min(round(h * scale), round(w * scale)) < self.mtcnn.min_face_size:
                continue  # no face that size fits the frame (and MTCNN's empty pyramid raised: a 16x16 video)
            batch = [images[i] if scale == 1.0 else cv2.resize(images[i], (round(w * scale), round(h * scale)),
                                                               interpolation=cv2.INTER_AREA) for i in idxs]
            frames = np.stack(batch)
            if self.device.type == "cpu":
                # facenet-pytorch permutes its HWC input to NCHW and works on that view: handed HWC frames held
                # NCHW in memory, its pyramid and crops run on contiguous tensors (same boxes, measured; the
                # full search ~9% faster on 2 cores).
                frames = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
            boxes, probs, points = self.mtcnn.detect(frames, landmarks=True)
            for i, b, p, pts in zip(idxs, boxes, probs, points, strict=True):
                if b is not None:
                    out[i] = self._kept(b, p, pts, scale, w, h)
        return out

    def _kept(self, boxes, probs, points, scale: float, w: int, h: int) -> list[Face]:
        """Detections on a copy downscaled by ``scale`` as full-resolution faces above the card's thresholds."""
        faces = []
        for box, prob, lm in zip(boxes, probs, points, strict=True):
            if prob is None or prob < self.settings.min_prob:
                continue
            box = np.clip(np.asarray(box, np.float64) / scale, [0, 0, 0, 0], [w, h, w, h])
            face = Face(box=tuple(round(float(v), 2) for v in box), prob=round(float(prob), 5),
                        landmarks=(np.asarray(lm, np.float32) / scale))
            if face.size >= self.settings.min_face_px:
                faces.append(face)
        return faces

    # Candidate boxes around a known face, as (scale, x shift, y shift) in units of its size: sampled frames
    # are a fraction of a second apart, so a face has moved a little; R-net's box regression does the rest.
    FOLLOW_CANDIDATES = ((1.0, 0.0, 0.0), (1.25, 0.0, 0.0), (1.0, -0.2, 0.0), (1.0, 0.2, 0.0), (1.0, 0.0, -0.2),
                         (1.0, 0.0, 0.2), (0.8, 0.0, 0.0))

    def follow(self, image: np.ndarray, known: list[Face]) -> list[Face]:
        """Faces of ``image`` near faces ``known`` from a nearby sampled frame: MTCNN's second and third stages
        (R-net, O-net, the same thresholds, box regression and landmarks) on a few candidate boxes around each,
        skipping the P-net image pyramid that is most of a full search's cost. Faces that appeared since are
        not looked for (the caller's next full search finds them)."""
        import torch
        from facenet_pytorch.models.utils.detect_face import batched_nms, batched_nms_numpy, bbreg, rerec

        if not known:
            return []
        h, w = image.shape[:2]
        scale = min(1.0, self.settings.detect_max_side / max(h, w))
        small = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)),
                                                      interpolation=cv2.INTER_AREA)
        cands = []
        for face in known:
            x1, y1, x2, y2 = (v * scale for v in face.box)
            cx, cy, size = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
            for grow, dx, dy in self.FOLLOW_CANDIDATES:
                half = size * grow / 2
                cands.append([cx + dx * size - half, cy + dy * size - half, cx + dx * size + half,
                              cy + dy * size + half, 1.0])
        device = self.device
        boxes = torch.tensor(cands, dtype=torch.float32, device=device)
        zeros = torch.zeros(len(boxes), dtype=torch.int64, device=device)
        thresholds = self.settings.thresholds
        with torch.inference_mode():
            crops, boxes = self._crops(small, boxes, 24, device)
            out = self.mtcnn.rnet(crops)
            keep = out[1][:, 1] > thresholds[1]
            boxes = torch.cat((boxes[keep, :4], out[1][keep, 1:2]), dim=1)
            regression = out[0][keep]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], zeros[: len(boxes)], 0.7)
            boxes = rerec(bbreg(boxes[pick], regression[pick]))
            if not len(boxes):
                return []
            crops, boxes = self._crops(small, boxes, 48, device)
            out = self.mtcnn.onet(crops)
            score = out[2][:, 1]
            keep = score > thresholds[2]
            boxes, points, regression = boxes[keep], out[1][keep], out[0][keep]
            boxes[:, 4] = score[keep]
            bw, bh = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
            points = torch.stack((bw[:, None] * points[:, :5] + boxes[:, :1] - 1,
                                  bh[:, None] * points[:, 5:] + boxes[:, 1:2] - 1), dim=2)
            boxes = bbreg(boxes, regression)
            pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], zeros[: len(boxes)], 0.7, "Min")
            boxes, points = boxes[pick].cpu().numpy(), points[pick].cpu().numpy()
        return self._kept(boxes[:, :4], boxes[:, 4], points, scale, w, h)

    @staticmethod
    def _crops(image: np.ndarray, boxes, side: int, device):
        """MTCNN's stage input: each box cut from the image (clipped to it, as facenet-pytorch does) and
        area-resampled to ``side`` pixels, normalised to [-1, 1]; and the boxes that lie on the image."""
        import torch
        from facenet_pytorch.models.utils.detect_face import imresample, pad

        h, w = image.shape[:2]
        y, ey, x, ex = pad(boxes, w, h)  # reads the boxes into new arrays
        on_image = [k for k in range(len(y)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
        if not on_image:
            return torch.zeros((0, 3, side, side), device=device), boxes[:0]
        # Cuts of one shape are resampled in one call (most candidates around a face are one size), and
        # channels-first: area resampling is ~2x slower on the channels-last strides of a permuted HWC array.
        # Both give the same numbers as one call per cut.
        by_shape: dict[tuple, list[int]] = {}
        for j, k in enumerate(on_image):
            by_shape.setdefault((ey[k] - y[k], ex[k] - x[k]), []).append(j)
        crops = torch.empty((len(on_image), 3, side, side), device=device)
        for js in by_shape.values():
            cuts = np.stack([image[y[k] - 1:ey[k], x[k] - 1:ex[k]] for k in (on_image[j] for j in js)])
            batch = torch.from_numpy(cuts).to(device).permute(0, 3, 1, 2).contiguous().float()
            crops[js] = imresample(batch, (side, side))
        return (crops - 127.5) * 0.0078125, boxes[on_image]


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
        # Ended tracks can never match again: dropping them keeps a long video's tracker (memory and the cost of
        # each frame's matching) bounded by the faces on screen, not by every face the video ever showed.
        self.tracks = live = [t for t in self.tracks if self._step - t.last_frame <= self.max_gap]
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
