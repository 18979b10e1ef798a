"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022) from five MTCNN landmarks.

A pseudo-fake is a face blended with a slightly altered copy of itself: colour, frequency content and geometry
of the "source" copy are perturbed, and it is pasted back through a soft face-shaped mask. The result carries
the generic traces of face swapping (blending boundary, colour mismatch, resampling, landmark misalignment)
without identity or generator artefacts, which is what lets an SBI detector generalise to unseen methods.

SBI builds its masks from 68/81 dlib landmarks. MTCNN gives five points (eyes, nose, mouth corners), from which
forehead, jaw and chin are extrapolated by the eye-mouth geometry; where the crop cache also holds dlib's 68
points (:mod:`.landmarks68`), a mask can follow the face's own outline instead (``dense``).
"""

from __future__ import annotations

import cv2
import numpy as np

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # SBI's dynamic blend: full-strength blends twice as likely


def face_axes(landmarks: np.ndarray):
    """Eye centre, unit "right" and "down" axes of the face, inter-ocular distance and eye-mouth distance."""
    lm = np.asarray(landmarks, np.float64)
    eyes = (lm[0] + lm[1]) / 2.0
    mouth = (lm[3] + lm[4]) / 2.0
    right = lm[1] - lm[0]
    iod = max(np.linalg.norm(right), 1.0)
    right = right / iod
    down = mouth - eyes
    emd = max(np.linalg.norm(down), 1.0)
    down = down / emd
    return eyes, right, down, iod, emd


def face_outline(landmarks: np.ndarray, kind: str = "face", scale_w: float = 1.0, scale_h: float = 1.0,
                 n_points: int = 32) -> np.ndarray:
    """Polygon (n, 2) of a face region extrapolated from five landmarks.

    ``face``: forehead to chin, cheek to cheek (the usual swap region); ``inner``: brows to below the mouth;
    ``lower``: from the nose down to the chin (mouth-driven reenactment region).
    """
    eyes, right, down, iod, emd = face_axes(landmarks)
    # Proportions of a frontal face in units of the eye-mouth distance (emd) and inter-ocular distance (iod).
    if kind == "face":
        top, bottom, half_w = -0.75 * emd, 1.75 * emd, 1.05 * iod
    elif kind == "inner":
        top, bottom, half_w = -0.45 * emd, 1.35 * emd, 0.85 * iod
    elif kind == "lower":
        top, bottom, half_w = 0.45 * emd, 1.75 * emd, 0.95 * iod
    else:
        raise ValueError(kind)
    centre = eyes + down * (top + bottom) / 2.0
    half_h = (bottom - top) / 2.0 * scale_h
    half_w = half_w * scale_w
    t = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    # A superellipse (exponent < 2 squares the corners a little) fits jaw and forehead better than an ellipse.
    c, s = np.cos(t), np.sin(t)
    p = 2.5
    x = half_w * np.sign(c) * np.abs(c) ** (2 / p)
    y = half_h * np.sign(s) * np.abs(s) ** (2 / p)
    return centre + np.outer(x, right) + np.outer(y, down)


def dense_outline(dense: np.ndarray, kind: str = "face", scale_w: float = 1.0, scale_h: float = 1.0) -> np.ndarray:
    """Points (n, 2) of a face region in dlib's 68-point layout, whose hull is the region (as SBI's masks).

    ``face``: jaw, brows and the forehead above them (SBI's 81-point layout adds the forehead; here the brows
    are raised by 0.45 eye-mouth distances, to the top of :func:`face_outline`'s face); ``inner``: brows, eyes,
    nose and mouth; ``lower``: cheek to cheek from the nose down to the chin. Scaled about the region's centre
    along the face's own axes.
    """
    from .landmarks68 import five_of_68

    p = np.asarray(dense, np.float64)
    _, right, down, _, emd = face_axes(five_of_68(p))
    if kind == "face":
        points = np.concatenate([p, p[17:27] - down * 0.45 * emd])
    elif kind == "inner":
        points = p[17:68]
    elif kind == "lower":
        points = np.concatenate([p[2:15], p[29:36], p[48:68]])
    else:
        raise ValueError(kind)
    centre = points.mean(axis=0)
    rel = points - centre
    return centre + np.outer(rel @ right * scale_w, right) + np.outer(rel @ down * scale_h, down)


def landmark_mask(shape, landmarks: np.ndarray, kind: str = "face", scale_w: float = 1.0,
                  scale_h: float = 1.0, dense: np.ndarray | None = None) -> np.ndarray:
    """Hard {0, 1} float32 mask of :func:`face_outline` plus the convex hull of the landmarks themselves, or with
    ``dense`` (68 points) the hull of :func:`dense_outline`."""
    h, w = shape[:2]
    mask = np.zeros((h, w), np.uint8)
    if dense is not None:
        poly = dense_outline(dense, kind, scale_w, scale_h)
    else:
        poly = np.concatenate([face_outline(landmarks, kind, scale_w, scale_h), np.asarray(landmarks, np.float64)])
    hull = cv2.convexHull(poly.astype(np.float32))
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    return mask.astype(np.float32)


def paste_box_mask(shape, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hard {0, 1} float32 mask of an upright rectangle about the face, as talking-head, lip-sync and reenactment
    tools paste back the crop they re-rendered (SadTalker, Wav2Lip, face-vid2vid): "head", a box around the whole
    face with some hair and background; "lower", from the nose to below the chin (the lip-sync region). Sized in
    the face's own units, so its top and side seams fall inside the detector's crop (the face box widened by a
    quarter); the bottom one may run below it."""
    eyes, _, _, iod, emd = face_axes(landmarks)
    face = max(iod, emd)
    # Edges in face units from the eyes' midpoint: above it (up), below it (down) and to each side (half_w).
    if rng.random() < 0.5:
        half_w, up = rng.uniform(1.1, 1.45) * face, rng.uniform(0.8, 1.2) * face
    else:
        half_w, up = rng.uniform(0.95, 1.3) * face, -rng.uniform(0.2, 0.5) * face
    down = rng.uniform(1.5, 2.0) * face
    shift = rng.uniform(-0.08, 0.08, 2) * face  # tools centre their crop on a detector's box, not on the landmarks
    x0, x1 = eyes[0] + shift[0] - half_w, eyes[0] + shift[0] + half_w
    y0, y1 = eyes[1] + shift[1] - up, eyes[1] + shift[1] + down
    h, w = shape[:2]
    mask = np.zeros((h, w), np.float32)
    mask[max(0, int(round(y0))):max(0, int(round(y1))), max(0, int(round(x0))):max(0, int(round(x1)))] = 1.0
    return mask


def _smooth_displacement(shape, rng: np.random.Generator, amplitude: float,
                         grid: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps of a smooth random displacement field (coarse noise upsampled) of at most about
    ``amplitude`` pixels along each axis."""
    h, w = shape[:2]
    dx = cv2.resize(rng.uniform(-1, 1, (grid, grid)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(rng.uniform(-1, 1, (grid, grid)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    amplitude = np.float32(amplitude)
    return xs + amplitude * dx, ys + amplitude * dy


def _elastic(mask: np.ndarray, rng: np.random.Generator, amplitude: float, grid: int = 6) -> np.ndarray:
    """Warp a mask by a smooth random displacement field, so outlines are not convex."""
    map_x, map_y = _smooth_displacement(mask.shape, rng, amplitude, grid)
    return cv2.remap(mask, map_x, map_y, cv2.INTER_LINEAR, borderValue=0)


def random_mask(shape, landmarks: np.ndarray, rng: np.random.Generator, dense: np.ndarray | None = None,
                p_box: float = 0.0) -> np.ndarray:
    """Soft blending mask in [0, 1] (before the blend ratio): random region, deformation and edge softness; the
    region follows the 68 points of ``dense`` when given (the same random draws either way). ``p_box`` of the
    masks are instead a pasted-back rectangle (:func:`paste_box_mask`), whose straight edges are not deformed."""
    _, _, _, iod, emd = face_axes(landmarks)
    face = max(iod, emd)
    # At 0 it draws nothing, so recipes without it replay their random streams unchanged.
    if p_box and rng.random() < p_box:
        mask = paste_box_mask(shape, landmarks, rng)
    else:
        kind = rng.choice(["face", "face", "inner", "lower"])
        mask = landmark_mask(shape, landmarks, kind, rng.uniform(0.8, 1.15), rng.uniform(0.85, 1.15), dense)
        if rng.random() < 0.7:
            mask = _elastic(mask, rng, amplitude=rng.uniform(0.05, 0.2) * face)
    k = int(round(rng.uniform(0.05, 0.2) * face)) * 2 + 1
    if rng.random() < 0.5:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    else:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    # Two blurs as in SBI: a wide one sets the transition width, a narrow one removes any remaining step.
    sigma = rng.uniform(0.05, 0.35) * face
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(sigma, 0.5))
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=rng.uniform(0.5, 2.0))
    # Keep the blend inside the mask's support: tails below 1/255 would change pixels outside any visible edge.
    mask[mask < 1.0 / 255.0] = 0.0
    return np.clip(mask, 0.0, 1.0)


def blend_boundary(mask: np.ndarray) -> np.ndarray:
    """Face X-ray's target (Li et al., CVPR 2020): ``4 M (1 - M)`` of a soft blending mask ``M`` scaled to peak 1,
    so it is 1 halfway through the mask's transition and 0 both deep inside and outside it, whatever the blend
    ratio. A model asked for it must find where two images meet, not what the inside looks like."""
    peak = float(mask.max())
    if peak <= 0.0:
        return np.zeros_like(mask, dtype=np.float32)
    m = mask.astype(np.float32) / peak
    return np.clip(4.0 * m * (1.0 - m), 0.0, 1.0)


def colour_jitter(img: np.ndarray, rng: np.random.Generator, force: bool = False, strength: float = 1.0) -> np.ndarray:
    """RGB shift, hue/saturation/value shift and brightness-contrast, each applied with probability 0.5.

    ``force`` guarantees at least one of them, so a self-blend never pastes back an unaltered copy (a "fake"
    identical to its real would be label noise).
    """
    ops = rng.random(3) < 0.5
    if force and not ops.any():
        ops[rng.integers(3)] = True
    out = img.astype(np.float32)
    if ops[0]:
        out += rng.uniform(-20, 20, 3).astype(np.float32) * strength
    if ops[1]:
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-5, 5) * strength) % 180
        hsv[..., 1] += rng.uniform(-30, 30) * strength
        hsv[..., 2] += rng.uniform(-20, 20) * strength
        out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if ops[2]:
        alpha, beta = 1.0 + rng.uniform(-0.1, 0.1) * strength, rng.uniform(-25, 25) * strength
        out = out * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def unsharp(img: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """Unsharp mask: ``img`` plus ``amount`` times its difference from a Gaussian blur of ``sigma``."""
    return cv2.addWeighted(img, 1 + amount, cv2.GaussianBlur(img, (0, 0), sigmaX=sigma), -amount, 0)


def random_sharpen(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unsharp mask of a random radius (sigma 0.8-1.6) and amount (0.3-1.0): a self-blend source's sharpening."""
    return unsharp(img, rng.uniform(0.8, 1.6), rng.uniform(0.3, 1.0))


def blend_into(img: np.ndarray, source: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``source`` over ``img`` by the per-pixel ``weight`` (HxW in [0, 1]), rounded to uint8: pixels of weight
    0 keep ``img``'s values exactly."""
    w = weight[..., None]
    out = source.astype(np.float32) * w + img.astype(np.float32) * (1.0 - w)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _frequency(img: np.ndarray, rng: np.random.Generator, p_sharpen: float | None = None,
               p_smooth: float = 0.0) -> np.ndarray:
    """Change the source's frequency content: sharpen, blur, down-up resample, or JPEG round trip.

    ``p_sharpen=None`` picks the four uniformly (the recipe of the shipped weights), so three of four blended
    faces are softer than their surroundings; a larger share of sharpening makes a soft face no sign of a fake.
    ``p_smooth`` of the changes are instead an edge-preserving smoothing (bilateral filter): the skin's fine
    texture gone while the eyes, brows and lips keep their edges, as faces look after a face restorer or a
    generator. A Gaussian blur softens those edges too; this leaves texture as the only difference. At 0 it
    draws nothing, so recipes without it replay their random streams unchanged.
    """
    if p_smooth and rng.random() < p_smooth:
        return cv2.bilateralFilter(img, 0, sigmaColor=rng.uniform(15, 45), sigmaSpace=rng.uniform(1.5, 4.0))
    choice = rng.integers(4) if p_sharpen is None else (0 if rng.random() < p_sharpen else 1 + rng.integers(3))
    if choice == 0:
        return random_sharpen(img, rng)
    if choice == 1:
        return cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(0.5, 1.5))
    if choice == 2:
        h, w = img.shape[:2]
        f = rng.uniform(0.5, 0.9)
        small = cv2.resize(img, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 90))])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy() if ok else img


def _warp(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small scale and translation of the source about the face centre (SBI: ±3 % shift, 0.95-1.05 scale)."""
    h, w = img.shape[:2]
    eyes, _, down, _, emd = face_axes(landmarks)
    centre = eyes + down * 0.5 * emd
    face = 2.5 * emd
    scale = rng.uniform(0.95, 1.05)
    tx, ty = rng.uniform(-0.03, 0.03, 2) * face
    m = np.array([[scale, 0, (1 - scale) * centre[0] + tx], [0, scale, (1 - scale) * centre[1] + ty]], np.float32)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _flow(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bend the source's features by a smooth non-rigid displacement (2-6 % of the face's size, on a 4x4 to
    8x8 grid of control points over the crop): an eye, a lip line or a jaw a little out of shape, as a face
    reenactment or talking-head generator leaves when it moves a face by a dense motion field. ``_warp``'s
    change is rigid, so it only shows at the blend's edge; this one shows inside the face too."""
    _, _, _, iod, emd = face_axes(landmarks)
    amplitude = rng.uniform(0.02, 0.06) * max(iod, emd)
    map_x, map_y = _smooth_displacement(img.shape, rng, amplitude, grid=int(rng.integers(4, 9)))
    return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def self_blend(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               p_sharpen: float | None = None, dense: np.ndarray | None = None,
               p_smooth: float = 0.0, p_flow: float = 0.0, p_box: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Blend a perturbed copy of ``img`` back into it through a random face mask (shaped by the 68 points of
    ``dense`` when given, or ``p_box`` of the time a pasted-back rectangle); ``p_flow`` of the copies are also
    bent non-rigidly (:func:`_flow`).

    Returns the blended uint8 image and the effective per-pixel blend weight (float32 HxW in [0, 1]): pixels
    with weight 0 are exactly those of ``img``, so the weight map is the ground-truth manipulation mask.
    """
    img = np.ascontiguousarray(img)
    # Only the source copy is perturbed, so pixels outside the mask stay exactly those of the input. SBI also
    # swaps the roles; the perturbations here are sign-symmetric (lighter/darker, sharper/blurrier), which
    # covers both directions of mismatch without changing the background.
    source = colour_jitter(img, rng, force=True)
    if rng.random() < 0.8:
        source = _frequency(source, rng, p_sharpen, p_smooth)
    source = _warp(source, landmarks, rng)
    # At 0 it draws nothing, so recipes without it replay their random streams unchanged.
    if p_flow and rng.random() < p_flow:
        source = _flow(source, landmarks, rng)
    mask = random_mask(img.shape, landmarks, rng, dense, p_box) * float(rng.choice(BLEND_RATIOS))
    return blend_into(img, source, mask), mask.astype(np.float32)


def landmark_misfit(target_lms: np.ndarray, donor_lms: np.ndarray) -> float:
    """How far the donor's five points stay from the target's after the best similarity transform, in target
    inter-ocular distances: a head turned another way leaves a large residual, one posed alike a small one."""
    src, dst = donor_lms.astype(np.float32), target_lms.astype(np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if matrix is None:
        return float("inf")
    moved = src @ matrix[:, :2].T + matrix[:, 2]
    _, _, _, iod, _ = face_axes(target_lms)
    return float(np.linalg.norm(moved - dst, axis=1).mean() / max(iod, 1e-6))


def cross_blend(img: np.ndarray, landmarks: np.ndarray, donor: np.ndarray, donor_landmarks: np.ndarray,
                rng: np.random.Generator, p_sharpen: float | None = None,
                p_smooth: float = 0.0, p_box: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Blend another person's face into ``img`` (Face X-ray's blended images, Li et al. CVPR 2020): the donor
    aligned by a landmark similarity transform, colour-matched to the target inside the mask 7 times in 10
    (else left as it is, a colour mismatch), its frequency content changed 8 in 10, pasted through the same
    random mask and blend ratios as :func:`self_blend`. Where a self-blend has only its own face's traces, this
    one also has an identity and a pose that do not quite fit, as a face swap has.

    Returns the blended uint8 image and the per-pixel blend weight: pixels with weight 0 are exactly ``img``'s.
    """
    from .faceswap import match_colour

    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    matrix, _ = cv2.estimateAffinePartial2D(donor_landmarks.astype(np.float32), landmarks.astype(np.float32),
                                            method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks: no alignment, fall back to the face itself
        return self_blend(img, landmarks, rng, p_sharpen, p_smooth=p_smooth, p_box=p_box)
    source = cv2.warpAffine(np.ascontiguousarray(donor), matrix, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT101)
    mask = random_mask(img.shape, landmarks, rng, p_box=p_box)
    if rng.random() < 0.7 and (mask > 0.5).any():
        source = match_colour(source, img, mask)
    if rng.random() < 0.8:
        source = _frequency(source, rng, p_sharpen, p_smooth)
    mask = mask * float(rng.choice(BLEND_RATIOS))
    return blend_into(img, source, mask), mask.astype(np.float32)
