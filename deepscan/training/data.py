"""Training data from the crop cache: splits, the SBI training set and validation crops.

The cache (``cache/crops/``) holds per clip an ``.npz`` of 320² *context* crops (face plus a wide margin, so
blending boundaries and the model's own crop margin both fit), the face box and five landmarks in context
coordinates. Model inputs are cut from a context crop with :func:`deepscan.crops.crop_face` at the card's
margin and size — the same call inference makes on full frames, so train and test crops share one geometry.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..crops import crop_face, normalise
from .cache import identity_group
from .faceswap import swap_face
from .landmarks68 import sidecar_path
from .recon import recon_blend
from .sbi import (
    blend_boundary,
    colour_jitter,
    cross_blend,
    face_axes,
    face_outline,
    landmark_mask,
    landmark_misfit,
    self_blend,
    unsharp,
)

REAL_LABELS = ("real", "unknown")


def load_index(cache_dir) -> dict:
    """A crop cache's index.json; refused while its build has not finished (``complete: false``: an
    interrupted ``deepscan cache``, whose clips are cut in part one way and in part another)."""
    index = json.loads((Path(cache_dir) / "index.json").read_text())
    if index.get("complete") is False:
        raise ValueError(f"{cache_dir}: the crop cache's build did not finish; run deepscan cache again (it goes on "
                         f"where it stopped)")
    return index


def _group_hash(group: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# Two clips whose cached crops match this well (the median over one clip's crops of the best correlation with
# any crop of the other, 24x24 grey, the larger of the two ways round) show the same recording. Measured on the
# shared clips (session 48): the panels of DeepFaceLive demos cut from one reused source recording score
# 0.950-0.999 (swapped panels too: same background and body; the lowest, two swapped panels), every other pair
# of groups at most 0.876 (Ava_de_Addario_1 ~ Matilda_Bobbie_2), then 0.823.
SAME_FOOTAGE_MIN_MATCH = 0.93
_FOOTAGE_THUMB = 24
_FOOTAGE_CROPS = 16


def footage_signature(crops: np.ndarray, n: int = _FOOTAGE_CROPS) -> np.ndarray:
    """(m, 576) zero-mean, unit-variance 24x24 grey thumbnails of up to ``n`` evenly spaced context crops."""
    if not len(crops):
        return np.zeros((0, _FOOTAGE_THUMB * _FOOTAGE_THUMB), np.float32)
    picks = np.unique(np.linspace(0, len(crops) - 1, min(n, len(crops))).round().astype(int))
    thumbs = np.stack([cv2.resize(cv2.cvtColor(crops[k], cv2.COLOR_RGB2GRAY), (_FOOTAGE_THUMB, _FOOTAGE_THUMB),
                                  interpolation=cv2.INTER_AREA).astype(np.float32).ravel() for k in picks])
    thumbs -= thumbs.mean(axis=1, keepdims=True)
    return thumbs / (thumbs.std(axis=1, keepdims=True) + 1e-6)


def footage_match(a: np.ndarray, b: np.ndarray) -> float:
    """How surely two clips' signatures show the same recording (:data:`SAME_FOOTAGE_MIN_MATCH`)."""
    if not len(a) or not len(b):
        return 0.0
    corr = (a @ b.T) / a.shape[1]
    return float(max(np.median(corr.max(axis=1)), np.median(corr.max(axis=0))))


def same_footage_pairs(cache_dir, clips: list[dict], min_match: float = SAME_FOOTAGE_MIN_MATCH
                       ) -> list[tuple[str, str, float]]:
    """(file, file, match) for clips of different groups that show the same recording.

    Naming cannot tell: DeepFaceLive demos are named for the face model swapped in, and several demos were cut
    from one source recording (the same streamer, room and moments), so a split by name can put a recording's
    real panel in training and its copy in validation."""
    signatures = []
    for c in clips:
        with np.load(Path(cache_dir) / c["npz"]) as z:
            signatures.append(footage_signature(z["crops"]))
    pairs = []
    for i, a in enumerate(clips):
        for j in range(i + 1, len(clips)):
            b = clips[j]
            if a["group"] != b["group"]:
                match = footage_match(signatures[i], signatures[j])
                if match >= min_match:
                    pairs.append((a["file"], b["file"], round(match, 4)))
    return pairs


def footage_groups(clips: list[dict], pairs: list[tuple[str, str, float]]) -> dict[str, str]:
    """group -> the group it is split with: groups joined by a same-footage pair (transitively) go together,
    under the first of their names (sorted), so groups that share nothing keep their name and their side."""
    from ..campaign import UnionFind

    group_of = {c["file"]: c["group"] for c in clips}
    names = sorted(set(group_of.values()))
    number = {g: i for i, g in enumerate(names)}
    sets = UnionFind(len(names))  # a set's root is its smallest number: its first name
    for a, b, _ in pairs:
        sets.union(number[group_of[a]], number[group_of[b]])
    return {g: names[sets.find(i)] for i, g in enumerate(names) if sets.find(i) != i}


def split_clips(index: dict, val_fraction: float, seed: int = 0,
                joined: dict[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """Split clips into (train, val) by group, so one identity/source video never sits on both sides.

    A group goes to validation when the hash of (seed, group) falls below ``val_fraction``. Each source (top
    folder) with at least two groups and none in validation then gives its lowest-hash group to validation,
    so every source — and with it every fake method — is measured. ``joined`` (:func:`footage_groups`) maps
    groups that show the same recording onto one, which then goes to one side whole.
    """
    joined = joined or {}
    clips = [dict(c, group=joined.get(c["group"], c["group"])) for c in index["clips"]]
    groups_by_source: dict[str, set[str]] = {}
    for c in clips:
        groups_by_source.setdefault(c["source"], set()).add(c["group"])
    val_groups = {g for gs in groups_by_source.values() for g in gs if _group_hash(g, seed) < val_fraction}
    for groups in groups_by_source.values():
        if len(groups) >= 2 and not groups & val_groups:
            val_groups.add(min(groups, key=lambda g: _group_hash(g, seed)))
    # A group shared between sources can reach validation through either; never leave a source without training.
    # The group sent back is one no other source needs for its only validation group, where there is one (else
    # that source went unmeasured: 11 of 800 seed and fraction draws on the shared clips).
    for source, groups in groups_by_source.items():
        if groups and groups <= val_groups and len(groups) >= 2:
            needed = {next(iter(gs & val_groups)) for s, gs in groups_by_source.items()
                      if s != source and len(gs) >= 2 and len(gs & val_groups) == 1}
            spare = (groups - needed) or groups
            val_groups.discard(max(spare, key=lambda g: _group_hash(g, seed)))
    # The clips themselves go back (their own group names: subsample_groups and the card read those).
    train = [c for c, j in zip(index["clips"], clips, strict=True) if j["group"] not in val_groups]
    val = [c for c, j in zip(index["clips"], clips, strict=True) if j["group"] in val_groups]
    return train, val


def subsample_groups(train_meta: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Keep ``fraction`` of the training groups (identities/source videos) of every source, at least one each.

    For learning curves: fewer identities of the same sources, so a run on the subset differs from the full run
    in how many people it saw, not in which sources or methods. Within a source, the groups with the lowest hash
    of (seed, group) stay; a larger fraction keeps a superset of a smaller one's groups.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the share of training groups kept must be in (0, 1], not {fraction!r}")
    if fraction == 1.0:
        return list(train_meta)
    groups_by_source: dict[str, set[str]] = {}
    for c in train_meta:
        groups_by_source.setdefault(c["source"], set()).add(c["group"])
    kept: set[str] = set()
    for groups in groups_by_source.values():
        ranked = sorted(groups, key=lambda g: _group_hash(f"subsample:{g}", seed))
        kept.update(ranked[:max(1, round(fraction * len(ranked)))])
    return [c for c in train_meta if c["group"] in kept]


@dataclass
class ClipCrops:
    """One clip's cached context crops."""

    id: str
    label: str
    source: str
    method: str
    crops: np.ndarray  # (K, C, C, 3) uint8 context crops
    boxes: np.ndarray  # (K, 4) face boxes in context coordinates
    landmarks: np.ndarray  # (K, 5, 2)
    file: str = ""  # the clip's path in the manifest
    frame_index: np.ndarray | None = None  # (K,) the video frame each crop was cut from
    dense_landmarks: np.ndarray | None = None  # (K, 68, 2) dlib's points, NaN where none fitted (landmarks68)
    # (K, S, S, 3) uint8 face-autoencoder renderings and (K, 3) their squares (recon.attach_reconstructions)
    recon: np.ndarray | None = None
    recon_region: np.ndarray | None = None

    @classmethod
    def load(cls, cache_dir, clip: dict) -> ClipCrops:
        dense_path = sidecar_path(cache_dir, clip)
        dense = np.load(dense_path) if dense_path.exists() else None
        with np.load(Path(cache_dir) / clip["npz"]) as z:
            frames = z["frame_index"].astype(np.int64) if "frame_index" in z.files else None
            if dense is not None and len(dense) != len(z["crops"]):
                # Points of another caching would land on other frames; runs without them must still train.
                warnings.warn(f"{dense_path}: {len(dense)} faces' 68 points for {len(z['crops'])} cached faces (the "
                              f"clip was re-cached), not used: run `deepscan landmarks {cache_dir}` to refit them",
                              stacklevel=2)
                dense = None
            return cls(clip["id"], clip["label"], clip.get("source", ""), clip.get("method", ""),
                       z["crops"], z["boxes"].astype(np.float32), z["landmarks"].astype(np.float32),
                       clip.get("file", ""), frames, dense)

    def dense_at(self, k: int) -> np.ndarray | None:
        """Frame ``k``'s 68 points, or None when the cache has none for it."""
        if self.dense_landmarks is None or not np.isfinite(self.dense_landmarks[k]).all():
            return None
        return self.dense_landmarks[k]


def original_of(fake_file: str) -> str | None:
    """The real panel a DeepFaceLive demo's swapped panel was cut beside (same footage, same moments)."""
    return fake_file.replace("__right_swapped", "__left_original") if "__right_swapped" in fake_file else None


def load_clips(cache_dir, clips: list[dict]) -> list[ClipCrops]:
    loaded = [ClipCrops.load(cache_dir, c) for c in clips]
    return [c for c in loaded if len(c.crops)]


@dataclass
class Augment:
    """Probabilities and ranges of the degradations applied to real and fake samples alike, so image quality
    carries no label information and the model meets the compression and resampling of real uploads."""

    p_colour: float = 0.3
    colour_strength: float = 0.5  # of sbi.colour_jitter, on the whole frame before any blend
    # Global tone changes of the finished crop, real and fake alike: other cameras, grading and skin tones than
    # the training clips'. 0 draws nothing, so configs without them replay their random streams unchanged.
    p_gamma: float = 0.0
    gamma: tuple[float, float] = (0.6, 1.6)
    p_grey: float = 0.0
    # Exposure (a gain, log-uniform, highlights clipped) and contrast (about the crop's mean level) of the whole
    # crop, real and fake alike: washed-out, flat or under-exposed footage (old music videos, film transfers)
    # scores as more fake (session 44: contrast x0.6 or exposure x0.6 raise the shipped model's mean real
    # score on the validation crops by 0.12). 0 draws nothing (older configs replay unchanged).
    p_exposure: float = 0.0
    exposure: tuple[float, float] = (0.6, 1.8)
    p_contrast: float = 0.0
    contrast: tuple[float, float] = (0.5, 1.3)
    # Whole-crop sharpening (unsharp mask) or edge-preserving smoothing (bilateral filter, a beauty filter's
    # skin), real and fake alike: cameras, apps and platforms apply both, and the self-blends' sources are
    # sharpened or softened inside the blend only, so without these a model can read the crop's overall
    # sharpness as the label (session 35: the shipped model's validation crops all sharpened score lower, all
    # smoothed higher). 0 draws nothing (older configs replay unchanged).
    p_sharpen: float = 0.0
    sharpen_amount: tuple[float, float] = (0.3, 1.2)
    p_smooth: float = 0.0
    smooth_sigma_colour: tuple[float, float] = (15.0, 45.0)
    p_downscale: float = 0.3
    downscale: tuple[float, float] = (0.35, 1.0)
    p_blur: float = 0.15
    blur_sigma: tuple[float, float] = (0.4, 1.2)
    p_noise: float = 0.15
    noise_sigma: tuple[float, float] = (2.0, 8.0)
    p_jpeg: float = 0.7
    jpeg_quality: tuple[int, int] = (30, 95)
    p_blocky: float = 0.1  # H.264-like 8x8 blockiness of low-bitrate video, via very low JPEG quality
    blocky_quality: tuple[int, int] = (8, 25)
    # Video coding of the crop (H.264 by libx264 through PyAV, the `train` extra) at a random size and CRF, as a
    # P-frame after a slightly shifted copy of itself, in place of the JPEG: the codec platforms re-encode
    # uploads with, applied at the face's own resolution before it is resized to the input. 0 draws nothing.
    p_video: float = 0.0
    video_crf: tuple[int, int] = (23, 40)
    video_scale: tuple[float, float] = (0.35, 1.0)
    p_flip: float = 0.5
    box_jitter: float = 0.04  # face-box shift/scale jitter (fraction of box size): MTCNN boxes jitter too
    # Face-part cutout (Seferbekov, DFDC 1st place): blank the eyes, nose, mouth or one half of the face, real
    # and fake alike, so no single region decides the score. 0 draws nothing (older configs replay unchanged).
    p_cutout: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict | None) -> Augment:
        # Unknown keys are refused by train.load_config; here they would be a TypeError.
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in (cfg or {}).items()})


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else img


def video_code(img: np.ndarray, crf: int, scale: float = 1.0, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``img`` resized by ``scale`` (to even sides), coded by libx264 at ``crf`` as the P-frame that follows a copy
    of itself moved by ``shift`` pixels (so the coder spends its bits on a motion-compensated residual, as in most
    frames of a video), decoded, and resized back."""
    import io

    import av

    h, w = img.shape[:2]
    sh, sw = max(16, int(round(h * scale / 2)) * 2), max(16, int(round(w * scale / 2)) * 2)
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA) if (sh, sw) != (h, w) else img
    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = sw, sh, "yuv420p"
        # One thread and no lookahead: the same bytes on every run, and no second core taken from training.
        stream.options = {"crf": str(int(crf)), "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        for frame in (np.roll(small, shift, axis=(0, 1)), small):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buf.seek(0)
    with av.open(buf, "r", format="h264") as coded:
        decoded = [f.to_ndarray(format="rgb24") for f in coded.decode(video=0)][-1]
    return cv2.resize(decoded, (w, h), interpolation=cv2.INTER_LINEAR) if (sh, sw) != (h, w) else decoded


def _down_up(img: np.ndarray, factor: float, up_interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resample a square crop down to ``factor`` of its size and back: the detail a small face lacks."""
    s = img.shape[0]
    small = max(8, int(round(s * factor)))
    return cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (s, s),
                      interpolation=up_interpolation)


def exposed(img: np.ndarray, gain: float) -> np.ndarray:
    """``img`` times ``gain``, clipped: over 1, the brightest skin loses its texture."""
    return np.clip(img.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def contrasted(img: np.ndarray, factor: float) -> np.ndarray:
    """``img``'s distance from its own mean level scaled by ``factor``, clipped."""
    level = float(img.mean())
    return np.clip((img.astype(np.float32) - level) * factor + level + 0.5, 0, 255).astype(np.uint8)


def retone(img: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """Random exposure, contrast, gamma (each log-uniform within its range) and greyscale of a whole crop."""
    if aug.p_exposure and rng.random() < aug.p_exposure:
        img = exposed(img, np.exp(rng.uniform(np.log(aug.exposure[0]), np.log(aug.exposure[1]))))
    if aug.p_contrast and rng.random() < aug.p_contrast:
        img = contrasted(img, np.exp(rng.uniform(np.log(aug.contrast[0]), np.log(aug.contrast[1]))))
    if aug.p_gamma and rng.random() < aug.p_gamma:
        lo, hi = np.log(aug.gamma[0]), np.log(aug.gamma[1])
        lut = np.clip(255.0 * (np.arange(256) / 255.0) ** np.exp(rng.uniform(lo, hi)) + 0.5, 0, 255)
        img = cv2.LUT(img, lut.astype(np.uint8))
    if aug.p_grey and rng.random() < aug.p_grey:
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return img


def degrade(img: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """Random sharpening or smoothing, resampling, blur, noise and compression (video coding, or JPEG) of a
    model-input crop."""
    if aug.p_sharpen and rng.random() < aug.p_sharpen:
        img = unsharp(img, rng.uniform(0.8, 1.6), rng.uniform(*aug.sharpen_amount))
    elif aug.p_smooth and rng.random() < aug.p_smooth:
        img = cv2.bilateralFilter(img, 0, sigmaColor=rng.uniform(*aug.smooth_sigma_colour),
                                  sigmaSpace=rng.uniform(1.5, 4.0))
    if rng.random() < aug.p_downscale:
        f = rng.uniform(*aug.downscale)
        img = _down_up(img, f, cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC)
    if rng.random() < aug.p_blur:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(*aug.blur_sigma))
    if rng.random() < aug.p_noise:
        noise = rng.normal(0.0, rng.uniform(*aug.noise_sigma), img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if aug.p_video and rng.random() < aug.p_video:
        crf = int(rng.integers(aug.video_crf[0], aug.video_crf[1] + 1))
        img = video_code(img, crf, rng.uniform(*aug.video_scale), tuple(int(v) for v in rng.integers(-3, 4, 2)))
    elif rng.random() < aug.p_blocky:
        img = _jpeg(img, rng.integers(aug.blocky_quality[0], aug.blocky_quality[1] + 1))
    elif rng.random() < aug.p_jpeg:
        img = _jpeg(img, rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1))
    return np.ascontiguousarray(img)


CUTOUT_PARTS = ("eyes", "nose", "mouth", "half")
# Half width and half height of each rectangular part, in inter-ocular distances (each drawn x0.8-1.2).
_CUTOUT_HALF_SIZE = {"eyes": (0.9, 0.3), "nose": (0.35, 0.35), "mouth": (0.6, 0.3)}


def face_part_cutout(img: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                     aug: Augment) -> tuple[np.ndarray, np.ndarray]:
    """With probability ``aug.p_cutout``, black out one face part (``CUTOUT_PARTS``) of a context crop. Blanked
    pixels carry no trace of a blend, so the manipulation mask is zeroed there; the label is kept (a blend
    always reaches beyond any one part)."""
    if not aug.p_cutout or rng.random() >= aug.p_cutout:
        return img, mask
    lm = np.asarray(landmarks, np.float64)
    eyes, right, down, iod, emd = face_axes(lm)
    part = CUTOUT_PARTS[rng.integers(len(CUTOUT_PARTS))]
    if part == "half":
        # The face outline cut along its vertical axis through the nose: one cheek, eye and mouth corner.
        outline = face_outline(lm, "face")
        side = (outline - lm[2]) @ right
        half = outline[side <= 0] if rng.random() < 0.5 else outline[side >= 0]
        axis = np.array([lm[2] - down * 2.0 * emd, lm[2] + down * 2.0 * emd])
        polygon = cv2.convexHull(np.concatenate([half, axis]).astype(np.float32))
    else:
        centre = {"eyes": eyes, "nose": lm[2], "mouth": (lm[3] + lm[4]) / 2}[part]
        w, h = (size * iod * rng.uniform(0.8, 1.2) for size in _CUTOUT_HALF_SIZE[part])
        # The rectangle turned with the face.
        polygon = centre + np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) @ np.stack([right, down])
    keep = np.ones(img.shape[:2], np.uint8)
    cv2.fillConvexPoly(keep, np.round(polygon).astype(np.int32), 0)
    return img * keep[..., None], mask * keep


def jitter_box(box: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    dx, dy = rng.uniform(-amount, amount, 2)
    return moved_box(box, dx, dy, 1.0 + rng.uniform(-amount, amount))


# Fixed moves of the face box (centre shift as a fraction of its width/height, scale) that MTCNN's own boxes
# make between a full search and a followed frame (IoU 0.86-1.0 measured on the demo clips): the box probe
# measures how far a face's score moves with them.
BOX_PROBE_MOVES = {"right_5pct": (0.05, 0.0, 1.0), "left_5pct": (-0.05, 0.0, 1.0), "down_5pct": (0.0, 0.05, 1.0),
                   "up_5pct": (0.0, -0.05, 1.0), "larger_8pct": (0.0, 0.0, 1.08), "smaller_7pct": (0.0, 0.0, 0.93)}


def moved_box(box, dx: float, dy: float, scale: float) -> np.ndarray:
    """``box`` with its centre moved by (dx, dy) of its width and height and its sides scaled by ``scale``."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h
    return np.array([cx - w * scale / 2, cy - h * scale / 2, cx + w * scale / 2, cy + h * scale / 2], np.float32)


def crop_mask(mask: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """Cut a float mask exactly like its image: through :func:`crop_face`, as a 3-channel float image."""
    return crop_face(np.repeat(mask[..., None], 3, axis=2), box, margin, size)[..., 0]


@dataclass
class SampleSpec:
    input_size: int
    crop_margin: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mask_size: int
    p_fake: float = 0.5
    real_fake_fraction: float = 0.0  # share of fakes drawn from labelled fake clips instead of SBI
    real_fake_mask_weight: float = 0.0  # their mask is only a landmark hull guess: ignore it by default
    sbi_p_sharpen: float | None = None  # see sbi._frequency
    sbi_p_smooth: float = 0.0  # share of the self-blends' frequency changes that are edge-preserving (sbi._frequency)
    sbi_p_flow: float = 0.0  # share of the self-blends whose source is also bent non-rigidly (sbi._flow)
    sbi_p_box: float = 0.0  # share of the blends pasted through an upright rectangle (sbi.paste_box_mask)
    # Share of the self-blends whose source is the face autoencoder's rendering of the face (recon.recon_blend;
    # reals without reconstructions fall back to a self-blend). 0 draws nothing, so older configs replay.
    sbi_p_recon: float = 0.0
    augment: Augment = field(default_factory=Augment)
    # SBI's batches (Shiohara & Yamasaki 2022): items 2j and 2j+1 are one real frame and its fake, through the
    # same box jitter, colour, tone, degradation and flip, so nothing but the manipulation tells them apart.
    paired: bool = False
    # Face X-ray's blended images (Li et al. 2020): this share of the self-blends takes its face from another
    # person's training clip instead (sbi.cross_blend), a swap's misfit of identity and pose besides the blend.
    # Not in paired batches. 0 draws nothing, so configs without it replay their random streams unchanged.
    p_cross: float = 0.0
    # How labelled fakes are drawn: a clip of method m with weight n_m ** -fake_method_balance, where n_m counts
    # the training fakes of m. 0 = every clip alike (the method with most clips dominates: 38 DeepFaceLive swaps
    # against 3 SadTalker talking heads); 1 = every method alike. 0 draws as before, so older configs replay.
    fake_method_balance: float = 0.0
    # How the real clips (the self-blends' sources too) are drawn: a clip of source s with weight n_s ** -balance,
    # where n_s counts the training reals of s (the manifest's first path component). 0 = every clip alike (38 of
    # the 57 training reals are DeepFaceLive's original panels, so "real" is mostly one kind of webcam footage);
    # 1 = every source alike. Group reweighting against one source defining the class (as in Sagawa et al.
    # 2020's reweighted baseline). 0 draws as before, so older configs replay.
    real_source_balance: float = 0.0
    # Self-blends shaped by the face's 68 dlib points where the cache holds them (landmarks68), as SBI's masks
    # are, instead of the outline extrapolated from five. The masks' random draws are the same either way.
    dense_landmarks: bool = False
    # What the mask head learns: "region", the blend weight map (the shipped recipe), "boundary", Face X-ray's
    # band where the blend weight crosses from 0 to its peak (sbi.blend_boundary), or "both" as two channels.
    mask_target: str = "region"
    # CORE's views (Ni et al., CVPRW 2022): items 2j and 2j+1 are one sample (clip, frame, label, blend) seen
    # through two independent draws of colour, cutout, box jitter, tone, degradation and flip, so training can
    # ask that the two agree (train.view_consistency). Not with paired batches.
    two_views: bool = False
    # Items also carry the index of their clip's identity group (SBIDataset.group_names), for an adversary that
    # learns to tell the training groups apart from the pooled features (train.group_adversary). Unpaired,
    # single-view items only: the group is read from the same draw as the item.
    with_group: bool = False


def _inverse_count_weights(kinds: list[str], balance: float) -> np.ndarray:
    counts = Counter(kinds)
    w = np.array([counts[k] ** -float(balance) for k in kinds])
    return w / w.sum()


def fake_clip_weights(fakes: list[ClipCrops], balance: float) -> np.ndarray:
    """Probabilities of drawing each labelled fake clip: ``n_m ** -balance`` for a clip of a method with ``n_m``
    clips, normalised. Methods are told apart by the manifest's ``method`` column (its source when empty)."""
    return _inverse_count_weights([c.method or c.source for c in fakes], balance)


def real_clip_weights(reals: list[ClipCrops], balance: float) -> np.ndarray:
    """Probabilities of drawing each real clip: ``n_s ** -balance`` for a clip of a source with ``n_s`` clips,
    normalised."""
    return _inverse_count_weights([c.source for c in reals], balance)


# Donor frames drawn per cross-blend; the one whose landmarks fit the target's pose best is blended in.
CROSS_CANDIDATES = 8


class SBIDataset:
    """Map-style dataset of infinite length: item ``i`` is a pure function of ``(seed, i)``.

    Deterministic per index, so results do not depend on the number of DataLoader workers, and resuming at
    step s replays exactly the samples an uninterrupted run would have seen.
    """

    def __init__(self, reals: list[ClipCrops], fakes: list[ClipCrops], spec: SampleSpec, seed: int = 0,
                 length: int = 10**12):
        if not reals:
            raise ValueError("no real clips to self-blend in the training split")
        self.reals, self.fakes, self.spec, self.seed, self.length = reals, fakes, spec, seed, length
        by_file = {c.file: c for c in reals if c.file}
        self._originals = {f.file: by_file.get(original_of(f.file) or "") for f in fakes if f.file}
        groups = [identity_group(c.file) if c.file else c.id for c in reals]
        self._donors = {g: [j for j, other in enumerate(groups) if other != g] for g in groups}
        self._group_of = {c.id: g for c, g in zip(reals, groups, strict=True)}
        self._group_of.update({c.id: identity_group(c.file) if c.file else c.id for c in fakes})
        # The real clips' groups only: a group of labelled fakes alone would tell the adversary the label.
        self.group_names = sorted(set(groups))
        if spec.with_group and (spec.paired or spec.two_views):
            raise ValueError("items carry their group only when unpaired and single-view")
        self._fake_weights = fake_clip_weights(fakes, spec.fake_method_balance) if fakes else None
        self._real_weights = real_clip_weights(reals, spec.real_source_balance)

    @staticmethod
    def _pick(clips: list[ClipCrops], weights: np.ndarray, balance: float, rng: np.random.Generator) -> ClipCrops:
        """A clip drawn uniformly when ``balance`` is 0 (the draw older configs replay), else by ``weights``."""
        if not balance:
            return clips[rng.integers(len(clips))]
        return clips[rng.choice(len(clips), p=weights)]

    def _labelled_fake(self, rng: np.random.Generator) -> ClipCrops:
        return self._pick(self.fakes, self._fake_weights, self.spec.fake_method_balance, rng)

    def _real_clip(self, rng: np.random.Generator) -> ClipCrops:
        return self._pick(self.reals, self._real_weights, self.spec.real_source_balance, rng)

    def __len__(self) -> int:
        return self.length

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(input crop uint8 SxSx3, mask float32 SxS in [0, 1], label, mask weight) for index ``i``."""
        if self.spec.paired:
            return self._paired_sample(i)
        if self.spec.two_views:
            return self._view_sample(i)
        rng = np.random.default_rng([self.seed, i])
        fake, use_labelled, clip, k, donor = self._draw(rng)
        return self._render(clip, k, rng, fake, use_labelled, blend_rng=rng, donor=donor)

    def item_group(self, i: int) -> int:
        """Index in ``group_names`` of the identity group whose clip item ``i`` shows (its draw repeated); -1 for
        a labelled fake of a group without real clips."""
        _, _, clip, _, _ = self._draw(np.random.default_rng([self.seed, i]))
        group = self._group_of[clip.id]
        return self.group_names.index(group) if group in self.group_names else -1

    def _draw(self, rng: np.random.Generator):
        """What an unpaired item shows: (fake?, a labelled fake?, clip, frame, cross-blend donor or None)."""
        spec = self.spec
        fake = rng.random() < spec.p_fake
        use_labelled = fake and self.fakes and rng.random() < spec.real_fake_fraction
        # Clip first, then frame: long clips do not dominate.
        clip = self._labelled_fake(rng) if use_labelled else self._real_clip(rng)
        k = rng.integers(len(clip.crops))
        donor = None
        if fake and not use_labelled and spec.p_cross and rng.random() < spec.p_cross:
            donor = self._donor(clip, k, rng)
        return fake, use_labelled, clip, k, donor

    def _donor(self, clip: ClipCrops, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """(context crop, landmarks) of another person's frame for a cross-blend into frame ``k`` of ``clip``:
        of ``CROSS_CANDIDATES`` random ones, the best fit to its pose. None when every real clip is this person."""
        others = self._donors.get(self._group_of.get(clip.id, clip.id), [])
        if not others:
            return None
        best, best_misfit = None, float("inf")
        for _ in range(CROSS_CANDIDATES):
            donor = self.reals[others[rng.integers(len(others))]]
            d = int(rng.integers(len(donor.crops)))
            misfit = landmark_misfit(clip.landmarks[k], donor.landmarks[d])
            if misfit < best_misfit:
                best, best_misfit = (donor.crops[d], donor.landmarks[d]), misfit
        return best

    def _render(self, clip: ClipCrops, k: int, rng: np.random.Generator, fake: bool, labelled: bool,
                blend_rng: np.random.Generator, donor: tuple[np.ndarray, np.ndarray] | None = None,
                ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Frame ``k`` of ``clip`` as a training item: colour, then the fake's blend (``blend_rng``; another
        person's face when ``donor`` is given) or labelled mask, face-part cutout, box jitter, crop, tone,
        degradation and flip, all but the blend drawn from ``rng``."""
        spec = self.spec
        img, box, lms = clip.crops[k], clip.boxes[k], clip.landmarks[k]
        if rng.random() < spec.augment.p_colour:
            img = colour_jitter(img, rng, strength=spec.augment.colour_strength)
        weight = 1.0
        if labelled and fake:
            mask = cv2.GaussianBlur(landmark_mask(img.shape, lms, "face"), (0, 0), sigmaX=3.0)
            weight = spec.real_fake_mask_weight
        elif fake and donor is not None:
            img, mask = cross_blend(img, lms, donor[0], donor[1], blend_rng, spec.sbi_p_sharpen,
                                    p_smooth=spec.sbi_p_smooth, p_box=spec.sbi_p_box)
        elif (fake and spec.sbi_p_recon and clip.recon is not None
              and blend_rng.random() < spec.sbi_p_recon):
            img, mask = recon_blend(img, lms, clip.recon[k], clip.recon_region[k], blend_rng,
                                    dense=clip.dense_at(k) if spec.dense_landmarks else None, p_box=spec.sbi_p_box)
        elif fake:
            img, mask = self_blend(img, lms, blend_rng, spec.sbi_p_sharpen,
                                   dense=clip.dense_at(k) if spec.dense_landmarks else None,
                                   p_smooth=spec.sbi_p_smooth, p_flow=spec.sbi_p_flow, p_box=spec.sbi_p_box)
        else:
            mask = np.zeros(img.shape[:2], np.float32)
        img, mask = face_part_cutout(img, mask, lms, rng, spec.augment)
        box = jitter_box(box, rng, spec.augment.box_jitter)
        crop = crop_face(img, box, spec.crop_margin, spec.input_size)
        mask = crop_mask(mask, box, spec.crop_margin, spec.input_size)
        crop = degrade(retone(crop, rng, spec.augment), rng, spec.augment)
        if rng.random() < spec.augment.p_flip:
            crop, mask = crop[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(crop), np.ascontiguousarray(mask), float(fake), weight

    def _paired_sample(self, i: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Item ``2j`` is real, ``2j + 1`` its fake: a self-blend of the same frame, or (a ``real_fake_fraction``
        of pairs) a labelled swap with its own original panel's frame at the same moment when the cache holds
        one (else any real frame). Both draw their shared augmentation from one stream seeded by ``j``; the
        blend draws from its own, so the two stay in step."""
        spec = self.spec
        j, fake = divmod(i, 2)
        rng = np.random.default_rng([self.seed, j])
        labelled = bool(self.fakes) and rng.random() < spec.real_fake_fraction
        if labelled:
            fake_clip = self._labelled_fake(rng)
            k = int(rng.integers(len(fake_clip.crops)))
            clip, k = (fake_clip, k) if fake else self._original_frame(fake_clip, k, j)
        else:
            clip = self._real_clip(rng)
            k = int(rng.integers(len(clip.crops)))
        return self._render(clip, k, rng, bool(fake), labelled, blend_rng=np.random.default_rng([self.seed, j, 1]))

    def _view_sample(self, i: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Item ``2j + v`` is view ``v`` of sample ``j``: what is drawn and how it is blended come from streams
        seeded by ``j`` alone, its augmentation from one seeded by ``j`` and ``v``."""
        j, view = divmod(i, 2)
        fake, use_labelled, clip, k, donor = self._draw(np.random.default_rng([self.seed, j]))
        return self._render(clip, k, np.random.default_rng([self.seed, j, 2, view]), fake, use_labelled,
                            blend_rng=np.random.default_rng([self.seed, j, 1]), donor=donor)

    def _original_frame(self, fake_clip: ClipCrops, k: int, j: int) -> tuple[ClipCrops, int]:
        original = self._originals.get(fake_clip.file)
        if original is not None and original.frame_index is not None and fake_clip.frame_index is not None:
            same = np.flatnonzero(original.frame_index == fake_clip.frame_index[k])
            if len(same):
                return original, int(same[0])
        other = np.random.default_rng([self.seed, j, 2])
        clip = self.reals[other.integers(len(self.reals))]
        return clip, int(other.integers(len(clip.crops)))

    def __getitem__(self, i: int):
        import torch

        crop, mask, label, weight = self.sample(int(i))
        target = self.spec.mask_target
        maps = [mask] if target in ("region", "both") else []
        if target in ("boundary", "both"):  # at the crop's resolution, where the transition is wider than a pixel
            maps.append(blend_boundary(mask))
        x = normalise(crop, self.spec.mean, self.spec.std)[0]
        size = (self.spec.mask_size, self.spec.mask_size)
        m = np.stack([cv2.resize(a, size, interpolation=cv2.INTER_AREA) for a in maps])
        item = (x, torch.tensor(label, dtype=torch.float32), torch.from_numpy(np.clip(m, 0, 1)),
                torch.tensor(weight, dtype=torch.float32))
        if self.spec.with_group:
            item += (torch.tensor(self.item_group(int(i)), dtype=torch.long),)
        return item


@dataclass
class ValClip:
    id: str
    label: int  # 1 = fake
    source: str
    method: str
    crops: np.ndarray  # (K, S, S, 3) model-input crops


def val_frame_indices(n_crops: int, frames_per_clip: int) -> np.ndarray:
    """Indices of up to ``frames_per_clip`` evenly spaced frames of a clip's ``n_crops`` cached ones."""
    return np.unique(np.linspace(0, n_crops - 1, min(frames_per_clip, n_crops)).round().astype(int))


def val_items(clips: list[ClipCrops], input_size: int, crop_margin: float, frames_per_clip: int,
              move: tuple[float, float, float] | None = None) -> list[ValClip]:
    """Validation crops of labelled clips (unknown excluded), frames evenly spaced, cut as at inference; with
    ``move`` (one of ``BOX_PROBE_MOVES``), through every face box moved by it (:func:`moved_box`)."""
    items = []
    for c in clips:
        if c.label not in ("real", "fake"):
            continue
        crops = np.stack([crop_face(c.crops[k], c.boxes[k] if move is None else moved_box(c.boxes[k], *move),
                                    crop_margin, input_size)
                          for k in val_frame_indices(len(c.crops), frames_per_clip)])
        items.append(ValClip(c.id, int(c.label == "fake"), c.source, c.method, crops))
    return items


# Fixed degradations of validation crops. A detector that reads low quality as manipulation scores degraded
# reals higher: the shift of the mean real score measures that bias, the AUC what is left of the signal.
PROBE_DEGRADATIONS = {
    "downscale_0.5": lambda img: _down_up(img, 0.5),
    "downscale_0.25": lambda img: _down_up(img, 0.25),
    "blur_1.5": lambda img: cv2.GaussianBlur(img, (0, 0), sigmaX=1.5),
    "jpeg_30": lambda img: _jpeg(img, 30),
    # Processing rather than loss of detail (session 35): a model that reads overall sharpness as the label
    # scores every sharpened crop as more real and every smoothed one as more fake.
    "sharpen_0.7": lambda img: unsharp(img, 1.2, 0.7),
    "bilateral_30": lambda img: cv2.bilateralFilter(img, 0, sigmaColor=30, sigmaSpace=2.5),
    # Tone (session 44): flat and under-exposed footage, which raise real scores as much as blur does.
    "contrast_0.6": lambda img: contrasted(img, 0.6),
    "exposure_0.6": lambda img: exposed(img, 0.6),
}


def degraded_items(items: list[ValClip], name: str) -> list[ValClip]:
    fn = PROBE_DEGRADATIONS[name]
    return [ValClip(it.id, it.label, it.source, it.method, np.stack([fn(c) for c in it.crops]) if len(it.crops)
                    else it.crops) for it in items]


# JPEG quality both sides of the swap probe are saved at: the swap's resampled, colour-matched face must not be
# told from the decoded video frames around it by coding history alone.
SWAP_PROBE_JPEG = 90


def swapped_frames(clips: list[ClipCrops], frames_per_clip: int, jpeg_quality: int = SWAP_PROBE_JPEG):
    """The swap probe's frames, one real clip at a time: (target clip, donor clip, frame indices, the target's
    context crops, the same with the donor's face swapped in by :func:`faceswap.swap_face`), both JPEG-coded at
    ``jpeg_quality``. Donors are fixed (clips sorted by id; each takes the clip half the list away), frames taken
    as in :func:`val_items`. Nothing with fewer than two real clips."""
    reals = sorted((c for c in clips if c.label == "real" and len(c.crops)), key=lambda c: c.id)
    if len(reals) < 2:
        return
    for i, target in enumerate(reals):
        donor = reals[(i + len(reals) // 2) % len(reals)]
        idx = val_frame_indices(len(target.crops), frames_per_clip)
        donor_idx = np.linspace(0, len(donor.crops) - 1, len(idx)).round().astype(int)
        real = [_jpeg(target.crops[k], jpeg_quality) for k in idx]
        fake = [_jpeg(swap_face(target.crops[k], target.landmarks[k], donor.crops[d], donor.landmarks[d]),
                      jpeg_quality) for k, d in zip(idx, donor_idx, strict=True)]
        yield target, donor, idx, real, fake


def swapped_items(clips: list[ClipCrops], input_size: int, crop_margin: float, frames_per_clip: int,
                  jpeg_quality: int = SWAP_PROBE_JPEG) -> list[ValClip]:
    """The real clips' validation crops and, as fakes, the same frames with another real clip's face swapped
    in (:func:`swapped_frames`, cut as at inference): a manipulation method a model has not trained on, on
    held-out faces."""
    items = []
    for target, donor, idx, real, fake in swapped_frames(clips, frames_per_clip, jpeg_quality):
        real, fake = (np.stack([crop_face(img, box, crop_margin, input_size)
                                for img, box in zip(images, target.boxes[idx], strict=True)]) for images in (real, fake))
        items.append(ValClip(target.id, 0, target.source, target.method, real))
        items.append(ValClip(f"{target.id}~{donor.id}", 1, target.source, "faceswap probe", fake))
    return items
