"""The one face-crop and normalise path, shared by inference and training.

A detector's accuracy depends on seeing crops made exactly as in training: same square expansion, same
margin, same interpolation, same normalisation. Everything that cuts a face out of a frame calls
:func:`square_box` and :func:`crop_face`; everything that turns crops into a tensor calls :func:`normalise`.
"""

from __future__ import annotations

import cv2
import numpy as np


def square_box(box, margin: float) -> tuple[float, float, float, float]:
    """Square box centred on ``box`` (x1, y1, x2, y2) whose side is the longer side times (1 + margin)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    half = side / 2.0
    return (cx - half, cy - half, cx + half, cy + half)


def crop_square(box, margin: float) -> tuple[int, int, int]:
    """The pixel square :func:`crop_face` cuts for ``box``: its top-left corner (x, y) and side, in whole
    pixels of the frame (the float :func:`square_box` snapped to the pixel grid)."""
    sx1, sy1, sx2, _ = square_box(box, margin)
    return int(np.floor(sx1)), int(np.floor(sy1)), max(1, int(round(sx2 - sx1)))


def to_crop(points, box, margin: float, size: int) -> np.ndarray:
    """Frame coordinates (..., 2) → coordinates in the ``size``² crop :func:`crop_face` cuts for ``box``:
    the same pixel square, so a box or landmark lands where the crop shows it (the float square's corner is
    up to a pixel off the cut one, and its side up to half a pixel)."""
    x1, y1, side = crop_square(box, margin)
    return (np.asarray(points, np.float64) - [x1, y1]) * (size / side)


def crop_face(frame: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """Cut the square, margin-expanded face region out of an RGB uint8 frame and resize to ``size``².

    Parts of the square outside the frame are filled by edge replication rather than black, so a face at the
    border does not get a hard artificial edge that a detector could learn to read as manipulation.
    """
    h, w = frame.shape[:2]
    ix1, iy1, side = crop_square(box, margin)
    ix2, iy2 = ix1 + side, iy1 + side
    pad_l, pad_t = max(0, -ix1), max(0, -iy1)
    pad_r, pad_b = max(0, ix2 - w), max(0, iy2 - h)
    region = frame[max(0, iy1) : min(h, iy2), max(0, ix1) : min(w, ix2)]
    if region.size == 0:
        return np.zeros((size, size, 3), dtype=np.uint8)
    if pad_l or pad_t or pad_r or pad_b:
        region = cv2.copyMakeBorder(region, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(region, (size, size), interpolation=interp))


def normalise(crops: np.ndarray, mean, std):
    """uint8 NHWC RGB crops → float32 NCHW torch tensor, (x/255 - mean) / std."""
    import torch

    arr = np.asarray(crops)
    if arr.ndim == 3:
        arr = arr[None]
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (t - m) / s


def paste_heatmap(heatmap: np.ndarray, box, margin: float, frame_shape) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Map a crop-space heatmap back to frame coordinates.

    Returns the heatmap resized to the crop square clipped to the frame, and that clipped square (x1, y1, x2, y2).
    """
    h, w = frame_shape[:2]
    ix1, iy1, side = crop_square(box, margin)
    full = cv2.resize(heatmap.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    cx1, cy1, cx2, cy2 = max(0, ix1), max(0, iy1), min(w, ix1 + side), min(h, iy1 + side)
    if cx2 <= cx1 or cy2 <= cy1:
        return np.zeros((0, 0), np.float32), (cx1, cy1, cx1, cy1)
    return full[cy1 - iy1 : cy2 - iy1, cx1 - ix1 : cx2 - ix1], (cx1, cy1, cx2, cy2)
