"""Landmark-driven face replacement from MTCNN's five points (left eye, right eye, nose, mouth left, mouth right).

A graphics face swap in the manner of FaceForensics++'s FaceSwap (similarity warp, colour transfer, feathered
blend): ``tools/make_sample_clips.py`` makes the demo fake with it, and the training probe
(:func:`deepscan.training.data.swapped_items`) uses it as a manipulation method that is neither the labelled
swaps nor the self-blends a model was trained on.
"""

from __future__ import annotations

import cv2
import numpy as np


def face_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Eye centre, mouth centre, eye distance and roll angle (degrees) from the five landmarks."""
    eye_c = (lm[0] + lm[1]) / 2.0
    mouth_c = (lm[3] + lm[4]) / 2.0
    eye_vec = lm[1] - lm[0]
    roll = float(np.degrees(np.arctan2(eye_vec[1], eye_vec[0])))
    return eye_c, mouth_c, float(np.linalg.norm(eye_vec)), roll


def face_mask(
    shape: tuple[int, int], lm: np.ndarray, width: float, height: float, centre_at: float, feather: float
) -> np.ndarray:
    """Feathered ellipse (float32 HxW in [0, 1]) aligned with the face.

    ``centre_at`` places the centre along eye-centre -> mouth-centre; ``width``/``height`` are semi-axes in
    units of eye distance and eye-mouth distance; ``feather`` is the blur sigma in units of eye distance.
    """
    eye_c, mouth_c, eye_dist, angle = face_frame(lm)
    em_dist = float(np.linalg.norm(mouth_c - eye_c))
    centre = eye_c + centre_at * (mouth_c - eye_c)
    mask = np.zeros(shape, np.float32)
    centre_px = (int(round(centre[0])), int(round(centre[1])))
    axes_px = (int(round(width * eye_dist)), int(round(height * em_dist)))
    cv2.ellipse(mask, centre_px, axes_px, angle, 0, 360, 1.0, thickness=-1)
    sigma = max(1.0, feather * eye_dist)
    # Blur then re-stretch the inside so the core stays fully replaced and only the rim is a gradient.
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return np.clip(mask * 1.6 - 0.3, 0.0, 1.0)


def match_colour(source: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Shift ``source``'s LAB mean/std inside ``region`` to ``target``'s (Reinhard colour transfer)."""
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    tgt = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    inside = region > 0.5
    out = src.copy()
    for c in range(3):
        s_mean, s_std = src[..., c][inside].mean(), src[..., c][inside].std() + 1e-6
        t_mean, t_std = tgt[..., c][inside].mean(), tgt[..., c][inside].std() + 1e-6
        out[..., c] = (src[..., c] - s_mean) * (t_std / s_std) + t_mean
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    alpha = mask[..., None]
    return np.clip(source * alpha + target * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)


def swap_face(target: np.ndarray, tgt_lm: np.ndarray, source: np.ndarray, src_lm: np.ndarray) -> np.ndarray:
    """Warp ``source``'s face onto ``target``'s by a landmark similarity transform, colour-match, blend."""
    matrix, _ = cv2.estimateAffinePartial2D(
        src_lm.astype(np.float32), tgt_lm.astype(np.float32), method=cv2.LMEDS
    )
    h, w = target.shape[:2]
    warped = cv2.warpAffine(source, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    mask = face_mask((h, w), tgt_lm, width=0.95, height=1.15, centre_at=0.7, feather=0.12)
    return blend(target, match_colour(warped, target, mask), mask)
