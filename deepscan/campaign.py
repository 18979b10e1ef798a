"""Campaign view: find re-uploads of the same video (re-encoded, rescaled, cropped, captioned, trimmed,
mirrored) so a folder of downloads is screened once per distinct video, and show the groups.

Videos are compared with Meta's vPDQ (ThreatExchange): a video hash is the PDQ hash of one frame per second,
and two videos match by vPDQ's rule: a frame of one *matches* when some frame of the other is within
:data:`PDQ_DISTANCE` bits, frames below :data:`MIN_QUALITY` (featureless: black, flat) are left out, and the
match percentages are the shares of each video's distinct frame hashes that match. Grouping puts two videos
together when both percentages reach :attr:`Thresholds.min_pct` (measured by benchmarks/campaign_robustness.py;
see docs/campaign.md), and takes the transitive closure (union-find).

Frames come from deepscan's own decoder (:func:`deepscan.video.iter_frames`: confined to one local file of an
allowed container, rotation applied) and are hashed with ``pdqhash``, the hashes bit-for-bit those of vPDQ's
``computeHash`` on the same frame. Each frame is hashed mirrored as well, so a horizontally flipped re-upload
still matches. When only the ``vpdq`` package is installed, its ``computeHash(path)`` is used instead: it
decodes the file itself with the system's FFmpeg libraries (without deepscan's protocol and format
whitelists, and without the mirror), so it is only ever given a file :func:`deepscan.video.probe` accepted,
by absolute path.

A perceptual hash cannot tell a face-swapped or re-animated copy from its source: PDQ sees the whole frame
at 64x64, and every DeepFaceLive left/right pair of the shared clips matches at 100%/100%. So each match is
checked on pixels where it can be: a 32x32 grey thumbnail is kept of each hashed frame, and two videos whose
frames line up (same aspect ratio, frames at the same times once the trim offset is known) are compared
block by block. A local difference (over :attr:`Thresholds.pixel_diff`, and standing out from the rest of
the frame by :attr:`Thresholds.min_locality`) means "same footage, locally altered": the two are kept apart (and listed as ``altered`` relations), never grouped. A member whose pixels are shown
to be the representative's over its whole length (a verified copy: :func:`is_verified_copy`; with frame
tracks every decoded frame is compared, without them the hash frames) takes the representative's verdict,
marked as inherited;
every other member (cropped, captioned, not aligned in time, hashed by the vpdq backend without
thumbnails) is screened itself (:attr:`Group.screen_too`).
"""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PDQ_DISTANCE = 31  # vPDQ's per-frame match distance (bits out of 256)
MIN_QUALITY = 50  # vPDQ's quality filter: frames below it are not compared
SECONDS_PER_HASH = 1.0  # vPDQ's default: one frame hashed per second
HASH_MAX_SIDE = 1920  # frames larger than this are downscaled before hashing (PDQ works on 64x64 anyway)
MAX_OFFSETS = 5  # trim offsets the pixel check tries where the hashes cannot tell them apart
MEDIAN_FLOOR = 0.01  # a pair's median block difference floor in the locality ratio (a near-identical pair)
THUMB = 32  # side of the grey thumbnail kept per hashed frame for the pixel check (1 KiB a frame)


@dataclass(frozen=True)
class Thresholds:
    """When two videos are one. Defaults measured on the shared clips (docs/campaign.md)."""

    distance: int = PDQ_DISTANCE
    quality: int = MIN_QUALITY
    min_pct: float = 60.0  # both videos' share of matched frame hashes, in percent
    # Largest normalised block difference between time-aligned thumbnails that still counts as the same
    # pixels: re-encodes, rescales and frame-rate changes stay under 0.07, DeepFaceLive face swaps and the
    # sample mouth warp reach 0.12 or more (benchmarks/campaign_robustness.py).
    pixel_diff: float = 0.085
    # Largest difference for a member to take its representative's verdict without being screened: stricter,
    # because over a few seconds a face swap can differ less than over a whole clip (4 s excerpts of two
    # DeepFaceLive swaps measured 0.068-0.079 against their originals; every whole clip >= 0.095).
    verify_diff: float = 0.06
    # Frames compared must show the same instant: at most this share of a frame period apart (after the trim
    # offset). One frame apart, a talking head's mouth has moved as much as a re-animated one would.
    time_tolerance_frames: float = 0.3
    # How far a difference must stand out from the rest of its frame to be a local edit: a pair's worst block
    # over its median block. Face swaps (whole clips, 4-8 s excerpts, and 150 kb/s re-encodes of them against
    # their originals) measure >= 5.7; 150 kb/s re-encodes of the originals <= 3.4, even where their
    # largest block passes pixel_diff (benchmarks/campaign_robustness.py).
    min_locality: float = 4.5
    # Taking a verdict without screening also asks that this share of the member's frames (its track's, else
    # its hash frames) was compared and showed the same instant, and that its span (after the trim offset) lies
    # inside the screened file's, give or take this many frames: a file with footage the screened one lacks is
    # screened itself.
    verify_coverage: float = 0.9
    span_slack_frames: float = 1.5
    # On frame tracks (every frame compared), a difference counts only where it holds over this many
    # consecutive judged frames: each run's smallest difference (and locality) is what is judged. One frame
    # alone is mostly a re-encode's worst frame (two: 150 kb/s re-encodes verified 8 -> 10 of 22, recall
    # 97.3% -> 98.2%, every swap and altered recording still kept apart; three let one altered recording
    # join: benchmarks/campaign_robustness.py --run-frames, docs/campaign.md). A one-frame edit is below
    # what screening samples anyway (32 frames a video by default).
    run_frames: int = 2


DEFAULT_THRESHOLDS = Thresholds()


def available_backend() -> str | None:
    """``"pdq"`` (deepscan decodes, pdqhash hashes, mirrored too), else ``"vpdq"``, else None."""
    try:
        import pdqhash  # noqa: F401

        return "pdq"
    except ImportError:
        pass
    try:
        import vpdq  # noqa: F401

        return "vpdq"
    except ImportError:
        return None


@dataclass
class VideoHash:
    """vPDQ features of one video: one PDQ hash per sampled frame (packed 32 bytes), its quality and time."""

    hashes: np.ndarray  # (N, 32) uint8, PDQ bits in vPDQ's hex order
    quality: np.ndarray  # (N,) int, 0-100
    times: np.ndarray  # (N,) float seconds
    mirrored: np.ndarray | None = None  # (N, 32) hashes of the horizontally mirrored frames
    thumbs: np.ndarray | None = None  # (N, 32, 32) uint8 grey thumbnails of the same frames (pixel check)
    # (N, 2, 32, 32) thumbnails of the decoded frames just before and after each (the frame's own where none
    # was decoded next to it): a copy whose frames fall one frame apart from its source's is still lined up.
    neighbours: np.ndarray | None = None
    # (M, 32, 32) grey thumbnails of every decoded frame from the first (ffmpeg's luma, area-scaled; at most
    # deepscan.video.MAX_TRACK_FRAMES): lines a copy cut or re-timed anywhere up with its source frame by frame.
    track: np.ndarray | None = None
    # (N, len(VARIANTS), 32) hashes of parts of each frame (:data:`VARIANTS`), and of their mirror images:
    # what a cropped or captioned re-upload still shares with its source.
    variants: np.ndarray | None = None
    variants_mirrored: np.ndarray | None = None
    region: tuple[float, float, float, float] | None = None  # the content region (x0, y0, x1, y1), fractions
    width: int = 0
    height: int = 0
    duration_s: float = 0.0
    fps: float = 0.0
    backend: str = "pdq"
    # What comparisons derive from the track, worked out once per hash (not serialised, not compared).
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def hex(self) -> list[str]:
        return [h.tobytes().hex() for h in self.hashes]

    def to_dict(self) -> dict:
        d = {"hashes": self.hex, "quality": [int(q) for q in self.quality],
             "times": [round(float(t), 6) for t in self.times], "width": self.width, "height": self.height,
             "duration_s": self.duration_s, "fps": self.fps, "backend": self.backend}
        if self.mirrored is not None:
            d["mirrored"] = [h.tobytes().hex() for h in self.mirrored]
        if self.thumbs is not None:
            d["thumbs"] = [t.tobytes().hex() for t in self.thumbs]
        if self.neighbours is not None:
            d["neighbours"] = [t.tobytes().hex() for t in self.neighbours]
        if self.track is not None:  # ~1 KiB a frame before compression: base64 of zlib, not hex
            d["track"] = base64.b64encode(zlib.compress(np.ascontiguousarray(self.track).tobytes(), 6)).decode()
        for key in ("variants", "variants_mirrored"):
            v = getattr(self, key)
            if v is not None:
                d[key] = [[h.tobytes().hex() for h in frame] for frame in v]
        if self.region is not None:
            d["region"] = [round(float(x), 4) for x in self.region]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VideoHash:
        def unhex(items):
            return (np.array([np.frombuffer(bytes.fromhex(h), np.uint8) for h in items], np.uint8)
                    .reshape(-1, 32))

        def unhex_variants(items):
            if items is None:
                return None
            return unhex([h for frame in items for h in frame]).reshape(len(items), len(VARIANTS), 32)

        return cls(hashes=unhex(d["hashes"]), quality=np.asarray(d["quality"], np.int16),
                   variants=unhex_variants(d.get("variants")),
                   variants_mirrored=unhex_variants(d.get("variants_mirrored")),
                   region=tuple(d["region"]) if d.get("region") else None,
                   times=np.asarray(d["times"], float),
                   mirrored=unhex(d["mirrored"]) if d.get("mirrored") is not None else None,
                   thumbs=(np.array([np.frombuffer(bytes.fromhex(t), np.uint8) for t in d["thumbs"]], np.uint8)
                           .reshape(-1, THUMB, THUMB) if d.get("thumbs") is not None else None),
                   neighbours=(np.array([np.frombuffer(bytes.fromhex(t), np.uint8) for t in d["neighbours"]],
                                        np.uint8).reshape(-1, 2, THUMB, THUMB)
                               if d.get("neighbours") is not None else None),
                   track=(np.frombuffer(zlib.decompress(base64.b64decode(d["track"])), np.uint8)
                          .reshape(-1, THUMB, THUMB) if d.get("track") is not None else None),
                   width=int(d.get("width", 0)), height=int(d.get("height", 0)),
                   duration_s=float(d.get("duration_s", 0.0)), fps=float(d.get("fps", 0.0)),
                   backend=d.get("backend", "pdq"))


def _pdq(image: np.ndarray) -> tuple[np.ndarray, int]:
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(image, np.uint8))
    return np.packbits(bits.astype(np.uint8)), int(quality)


def _thumb(image: np.ndarray) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image, np.uint8), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def content_region(greys: Sequence[np.ndarray], rel_activity: float = 0.15, min_activity: float = 1.0,
                   min_side: float = 0.3) -> tuple[float, float, float, float]:
    """The part of the frame where the video happens, as fractions ``(x0, y0, x1, y1)``: rows at the top and
    bottom that stay still over time (caption and subtitle bands, logo bars, letterbox borders) are cut off.
    With fewer than three frames, rows that are flat in space are cut instead.

    Still edges of the footage itself (a static background above a speaker) are cut too, the same way in
    the source and in its copies, so the regions of the two still show the same content.
    """
    if not len(greys):
        return (0.0, 0.0, 1.0, 1.0)
    stack = np.stack([g.astype(np.float32) for g in greys])
    rows = stack.std(0).mean(1) if len(stack) >= 3 else stack.mean(0).std(1)
    h = stack.shape[1]

    def span(profile: np.ndarray) -> tuple[int, int]:
        tau = max(min_activity, rel_activity * float(np.percentile(profile, 90)))
        live = np.nonzero(profile >= tau)[0]
        if not len(live) or (live[-1] + 1 - live[0]) < min_side * len(profile):
            return 0, len(profile)
        return int(live[0]), int(live[-1]) + 1

    y0, y1 = span(rows)
    # Columns are kept whole: side borders are rarer than bands, and a still background beside a speaker
    # gives column edges that move with the motion threshold, where PDQ needs the parts to line up to ~1%.
    return (0.0, y0 / h, 1.0, y1 / h)


def _crop_fraction(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0 = int(round(box[0] * w)), int(round(box[1] * h))
    x1, y1 = max(x0 + 1, int(round(box[2] * w))), max(y0 + 1, int(round(box[3] * h)))
    return image[y0:y1, x0:x1]


# Parts of each frame hashed besides the whole (each also mirrored), all from the frame at VARIANT_SIDE px:
# "region" is the content region (:func:`content_region`), without bands and borders: a captioned or
# letterboxed copy's region is its source's; "centre" is the middle 90% of the frame (in width and height):
# what a copy cropped by 10% shows in whole; "square" and "vertical" are the centred 1:1 and 9:16 crops a
# platform makes of a landscape clip (:data:`ASPECT_CROPS`). PDQ needs parts to line up within about 2% of
# the frame.
VARIANTS = ("region", "centre", "square", "vertical")
VARIANT_SIDE = 256
CENTRE_KEEP = 0.9
_CENTRE_BOX = ((1 - CENTRE_KEEP) / 2, (1 - CENTRE_KEEP) / 2, (1 + CENTRE_KEEP) / 2, (1 + CENTRE_KEEP) / 2)
# Platform re-framings: the centred square and 9:16 (vertical) crops of each frame, width over height.
ASPECT_CROPS = (1.0, 9 / 16)
REGION_FRAMES = 30  # the content region is found on the first hashed frames (30 s at vPDQ's rate)


def _aspect_box(height: int, width: int, aspect: float) -> tuple[float, float, float, float]:
    """The centred box of the frame with this width/height ratio, as fractions (the whole frame when it has
    that ratio already)."""
    frame = width / height
    if aspect < frame:
        keep = aspect / frame
        return ((1 - keep) / 2, 0.0, (1 + keep) / 2, 1.0)
    keep = frame / aspect
    return (0.0, (1 - keep) / 2, 1.0, (1 + keep) / 2)


def _variant_hashes(grey: np.ndarray, region: tuple[float, float, float, float], mirror: bool):
    parts = [_crop_fraction(grey, region), _crop_fraction(grey, _CENTRE_BOX)]
    parts += [_crop_fraction(grey, _aspect_box(*grey.shape[:2], aspect)) for aspect in ASPECT_CROPS]
    rgb = [np.repeat(p[:, :, None], 3, axis=2) for p in parts]
    plain = [_pdq(p)[0] for p in rgb]
    mirrored = [_pdq(p[:, ::-1])[0] for p in rgb] if mirror else None
    return plain, mirrored


def _small_grey(image: np.ndarray) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image, np.uint8), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = VARIANT_SIDE / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return grey


def hash_frames(frames: Iterable, mirror: bool = True) -> VideoHash:
    """vPDQ features of frames already decoded: :class:`deepscan.video.Frame` objects (or batches of them,
    as :func:`~deepscan.video.iter_frames` yields) or bare RGB arrays (timed 0, 1, 2, ... s).

    Besides vPDQ's whole-frame hash, each frame gets the hashes of :data:`VARIANTS`; memory stays flat in the
    video's length (only the first :data:`REGION_FRAMES` small grey frames are held, to find the region).
    """
    hasher = FrameHasher(mirror=mirror)
    for item in frames:
        for frame in (item if isinstance(item, list) else [item]):
            hasher.add(getattr(frame, "image", frame), getattr(frame, "time_s", None))
    return hasher.result()


class FrameHasher:
    """Hashes frames one at a time as a decoder produces them (so a scan can hash the frames it decodes for
    screening anyway), then :meth:`result` gives the :class:`VideoHash`.

    Frames that are not hash frames (``hashed=False``) may be given too, in decoding order: one decoded
    within ``1.5 / fps`` seconds before or after a hash frame becomes that frame's neighbour thumbnail."""

    def __init__(self, mirror: bool = True, fps: float | None = None):
        self.mirror = mirror
        self.max_gap = 1.5 / fps if fps else 0.07
        self.hashes, self.mirrored, self.quality, self.times, self.thumbs = [], [], [], [], []
        self.neighbours: list[list[np.ndarray]] = []
        self.variants, self.variants_mirrored = [], []
        self.pending: list[np.ndarray] = []  # small greys awaiting the content region
        self.region: tuple[float, float, float, float] | None = None
        self.height = self.width = 0
        self.last: tuple[float, np.ndarray] | None = None  # the frame seen last (time, image), if not hashed
        self.awaiting_after = False  # the last hash frame has no following neighbour yet
        self.track: np.ndarray | None = None

    def set_track(self, track: np.ndarray) -> None:
        """Every decoded frame's thumbnail (``iter_frames(track=...)``)."""
        self.track = track

    def add(self, image: np.ndarray, time_s: float | None = None, hashed: bool = True) -> None:
        if not hashed:
            if self.awaiting_after and time_s is not None and 0 < time_s - self.times[-1] <= self.max_gap:
                self.neighbours[-1][1] = _thumb(image)
            self.awaiting_after = False
            self.last = (time_s, image) if time_s is not None else None
            return
        h, q = _pdq(image)
        self.hashes.append(h)
        self.quality.append(q)
        self.times.append(float(len(self.times)) if time_s is None else time_s)
        thumb = _thumb(image)
        self.thumbs.append(thumb)
        before = thumb
        if self.last is not None and time_s is not None and 0 < time_s - self.last[0] <= self.max_gap:
            before = _thumb(self.last[1])
        self.neighbours.append([before, thumb])
        self.last, self.awaiting_after = None, time_s is not None
        if self.mirror:
            self.mirrored.append(_pdq(image[:, ::-1])[0])
        self.height, self.width = image.shape[:2]
        grey = _small_grey(image)
        if self.region is None:
            self.pending.append(grey)
            if len(self.pending) >= REGION_FRAMES:
                self._settle_region()
        else:
            self._add_variants(grey)

    def _settle_region(self) -> None:
        self.region = content_region(self.pending)
        pending, self.pending = self.pending, []
        for grey in pending:
            self._add_variants(grey)

    def _add_variants(self, grey: np.ndarray) -> None:
        plain, mirrored = _variant_hashes(grey, self.region, self.mirror)
        self.variants.append(plain)
        if mirrored is not None:
            self.variants_mirrored.append(mirrored)

    def result(self) -> VideoHash:
        if self.region is None:
            self._settle_region()
        k = len(VARIANTS)

        def packed(rows, shape):
            return np.array(rows, np.uint8).reshape(shape) if rows else np.zeros((0, *shape[1:]), np.uint8)

        return VideoHash(
            hashes=packed(self.hashes, (-1, 32)),
            quality=np.asarray(self.quality, np.int16), times=np.asarray(self.times, float),
            mirrored=packed(self.mirrored, (-1, 32)) if self.mirror else None,
            thumbs=packed(self.thumbs, (-1, THUMB, THUMB)),
            neighbours=packed(self.neighbours, (-1, 2, THUMB, THUMB)), track=self.track,
            variants=packed(self.variants, (-1, k, 32)),
            variants_mirrored=packed(self.variants_mirrored, (-1, k, 32)) if self.mirror else None,
            region=self.region, width=self.width, height=self.height,
            duration_s=float(self.times[-1]) if self.times else 0.0)


def video_hash(source, info=None, backend: str | None = None, seconds_per_hash: float = SECONDS_PER_HASH,
               mirror: bool = True, timeout_s: float | None = 600.0, max_pixels: int | None = None,
               max_duration_s: float | None = None) -> VideoHash:
    """The vPDQ hash of a video file, or of decoded frames (anything :func:`hash_frames` takes).

    For a file, ``info`` is its :class:`deepscan.video.VideoInfo` (probed here when not given: a file
    deepscan refuses raises :class:`deepscan.video.VideoError` before any hashing library sees it).
    ``backend`` is ``"pdq"`` or ``"vpdq"``; default: :func:`available_backend`.
    """
    from .video import MAX_DURATION_S, MAX_PIXELS, iter_frames, probe

    if not isinstance(source, (str, os.PathLike)):
        return hash_frames(source, mirror=mirror)
    backend = backend or available_backend()
    if backend is None:
        raise ImportError("video hashing needs the pdqhash or vpdq package (pip install 'deepscan[campaign]')")
    if info is None:
        info = probe(source, max_pixels=max_pixels or MAX_PIXELS, max_duration_s=max_duration_s or MAX_DURATION_S)
    if backend == "vpdq":
        result = _vpdq_hash(source, seconds_per_hash)
    elif backend == "pdq":
        # The decode a scan makes (one screening sample, ignored), so a hash made here equals the scan's.
        hasher = FrameHasher(mirror=mirror, fps=info.fps)
        for batch in iter_frames(source, info, n_frames=1, hash_fps=1.0 / seconds_per_hash, track=hasher.set_track,
                                 max_side=HASH_MAX_SIDE, timeout_s=timeout_s, max_pixels=max_pixels):
            for frame in batch:
                hasher.add(frame.image, frame.time_s, hashed=frame.hashed)
        result = hasher.result()
        result.backend = "pdq"
    else:
        raise ValueError(f"unknown video hash backend {backend!r} (pdq or vpdq)")
    result.width, result.height, result.duration_s = info.width, info.height, float(info.duration_s)
    result.fps = float(info.fps or 0.0)
    return result


def _vpdq_hash(path, seconds_per_hash: float) -> VideoHash:
    import vpdq

    from .runtime import threads_from_environment
    from .video import VideoError

    # An absolute path starts with "/", so libavformat reads it as a plain file, never as "concat:" & co.
    try:
        features = vpdq.computeHash(str(Path(path).absolute()), seconds_per_hash=seconds_per_hash,
                                    thread_count=threads_from_environment() or 1)
    except Exception as exc:  # noqa: BLE001 - vpdq raises a bare Exception when decoding fails
        raise VideoError(f"vpdq could not hash the video ({exc})") from None
    hashes = np.array([np.frombuffer(bytes.fromhex(f.hex), np.uint8) for f in features], np.uint8)
    return VideoHash(hashes=hashes.reshape(-1, 32), quality=np.array([f.quality for f in features], np.int16),
                     times=np.array([f.timestamp for f in features], float), mirrored=None, backend="vpdq")


# ------------------------------------------------------------------------------------------------ matching
# Rows of each side compared at once: the XOR of two blocks takes 256 x 2048 x 32 bytes (16 MiB), so memory stays
# bounded however many files (and frames) are compared, instead of queries x index x 32 bytes in one go.
BLOCK_A, BLOCK_B = 256, 2048


def _blocked_distances(a: np.ndarray, b: np.ndarray):
    """(a_start, b_start, distances of that block): Hamming distances between packed 256-bit hashes, a block of
    at most BLOCK_A x BLOCK_B at a time."""
    a64 = np.ascontiguousarray(a, np.uint8).view(np.uint64).reshape(-1, 4)
    b64 = np.ascontiguousarray(b, np.uint8).view(np.uint64).reshape(-1, 4)
    for lo in range(0, len(a64), BLOCK_A):
        qa = a64[lo:lo + BLOCK_A, None, :]
        for blo in range(0, len(b64), BLOCK_B):
            yield lo, blo, _popcount(qa ^ b64[None, blo:blo + BLOCK_B, :]).sum(-1, dtype=np.int32)


def _near_any(a: np.ndarray, b: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of ``a`` have a row of ``b`` within ``distance``, and which rows of ``b`` one of ``a``: without
    the (len(a), len(b)) matrix."""
    hit_a, hit_b = np.zeros(len(a), bool), np.zeros(len(b), bool)
    for lo, blo, d in _blocked_distances(a, b):
        near = d <= distance
        hit_a[lo:lo + d.shape[0]] |= near.any(1)
        hit_b[blo:blo + d.shape[1]] |= near.any(0)
    return hit_a, hit_b


if hasattr(np, "bitwise_count"):  # numpy >= 2.0
    _popcount = np.bitwise_count
else:  # pragma: no cover - numpy 1.26
    _BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)

    def _popcount(x: np.ndarray) -> np.ndarray:
        return _BYTE_BITS[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.int32)


def _frames(h: VideoHash | None, min_quality: int, mirrored: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """vPDQ's comparison set as hash rows and their frame numbers: the distinct frames (by whole-frame hash)
    at or above the quality filter, each frame with its whole hash and its variants' (:data:`VARIANTS`)."""
    empty = (np.zeros((0, 32), np.uint8), np.zeros(0, np.int64))
    if h is None or not len(h.hashes):
        return empty
    whole = h.mirrored if mirrored else h.hashes
    variants = h.variants_mirrored if mirrored else h.variants
    if whole is None:
        return empty
    good = np.nonzero(h.quality >= min_quality)[0]
    if not len(good):
        return empty
    _, first = np.unique(h.hashes[good], axis=0, return_index=True)
    keep = good[np.sort(first)]
    parts = [whole[keep][:, None, :]]
    if variants is not None and len(variants) == len(h.hashes):
        parts.append(variants[keep])
    rows = np.concatenate(parts, axis=1)  # (frames, 1 + variants, 32)
    ids = np.repeat(np.arange(len(keep)), rows.shape[1])
    return rows.reshape(-1, 32), ids


def _pcts(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], distance: int) -> tuple[float, float]:
    """Share of each side's frames with some hash (whole or variant) within ``distance`` of the other's."""
    (ra, ia), (rb, ib) = a, b
    if not len(ra) or not len(rb):
        return 0.0, 0.0
    near_a, near_b = _near_any(ra, rb, distance)
    hit_a = np.zeros(ia.max() + 1, bool)
    hit_b = np.zeros(ib.max() + 1, bool)
    np.logical_or.at(hit_a, ia, near_a)
    np.logical_or.at(hit_b, ib, near_b)
    return 100.0 * hit_a.mean(), 100.0 * hit_b.mean()


def _match(a: VideoHash, b: VideoHash, thresholds: Thresholds):
    """:func:`match`'s percentages, whether the mirror won, and each side's number of distinct frames."""
    q, t = thresholds.quality, thresholds.distance
    fa, fb = _frames(a, q), _frames(b, q)
    best, flipped = _pcts(fa, fb, t), False
    mirror_pairs = []
    if a.mirrored is not None:
        mirror_pairs.append((_frames(a, q, mirrored=True), fb))
    elif b.mirrored is not None:
        mirror_pairs.append((fa, _frames(b, q, mirrored=True)))
    for ma, mb in mirror_pairs:
        pcts = _pcts(ma, mb, t)
        if min(pcts) > min(best):
            best, flipped = pcts, True
    counts = tuple(int(ids.max()) + 1 if len(ids) else 0 for _, ids in (fa, fb))
    return best, flipped, counts


def match(a: VideoHash, b: VideoHash, thresholds: Thresholds = DEFAULT_THRESHOLDS,
          return_mirrored: bool = False):
    """vPDQ's match percentages ``(query_pct, compared_pct)``: the share of ``a``'s distinct frames with a
    frame of ``b`` within the distance, and the same for ``b`` against ``a``. Two frames are within the
    distance when any of their hashes are: the whole frame, or a part of it (:data:`VARIANTS`), so a cropped
    or captioned copy still matches.

    When either side carries mirrored hashes, the mirrored orientation is compared too and the better of
    the two (by the smaller percentage) is returned; ``return_mirrored`` adds whether it was the mirror.
    """
    best, flipped, _ = _match(a, b, thresholds)
    return (best, flipped) if return_mirrored else best


def is_match(a: VideoHash, b: VideoHash, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """vPDQ's rule (both match percentages at least ``min_pct``), extended to excerpts: the longer video's
    share is asked only in proportion to how much of it the shorter one can cover (distinct frames), so a
    copy with its first or last seconds cut still matches; the shorter one must match in full measure. For
    two videos of one length this is vPDQ's rule.

    Hash frames are a second apart, so a copy cut off that grid (1.3 s in) has every hash frame a fraction of
    a second from its source's, too far for PDQ in a moving clip. When both hashes carry frame tracks and
    some hash frames match, the tracks are lined up frame by frame (:func:`track_alignment`): ``min_pct`` of
    the frames they share showing the same instant is a match too."""
    if _hash_match(a, b, thresholds):
        return True
    alignment = track_alignment(a, b, thresholds)
    return alignment is not None and alignment.same_share * 100.0 >= thresholds.min_pct


def _hash_match(a: VideoHash, b: VideoHash, thresholds: Thresholds) -> bool:
    (pa, pb), _, (na, nb) = _match(a, b, thresholds)
    if not na or not nb:
        return False
    if na > nb:
        (pa, na), (pb, nb) = (pb, nb), (pa, na)
    return pa >= thresholds.min_pct and pb >= thresholds.min_pct * na / nb


def _content_times(h: VideoHash) -> np.ndarray:
    """Sample times from the video's first frame: a re-encode often starts its video at 0 where the source
    started it later (after an audio track, or one frame in), which shifts every timestamp."""
    return h.times - h.times[0] if len(h.times) else h.times


def match_offsets(a: VideoHash, b: VideoHash, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                  mirrored: bool = False, limit: int = MAX_OFFSETS) -> list[float]:
    """Content-time shifts (``a`` minus ``b``) on which frame pairs match, most matching pairs first, e.g.
    about 2.0 first when ``b`` is ``a`` with its first 2 s cut; shifts under half a second count as 0 (a frame
    or two of start difference is not a trim). Every shift within half the best one's count is returned (at
    most ``limit``): in a still or slow video every frame matches every other, so the hashes cannot tell
    the trim and the pixel check picks among these. Empty when no frames match.

    The matching pairs are only ever counted block by block (a histogram of shifts to 0.1 s), never held: a
    still video matches itself frame for frame, N² pairs (an hour of it: 13 million, 0.5 GB)."""
    bh = b.mirrored if mirrored and b.mirrored is not None else b.hashes
    ok_a, ok_b = a.quality >= thresholds.quality, b.quality >= thresholds.quality
    if not ok_a.any() or not ok_b.any():
        return []
    ha, hb = a.hashes[ok_a], bh[ok_b]
    ta, tb = _content_times(a)[ok_a], _content_times(b)[ok_b]

    def block_shifts():
        """Each block's matching pairs as (shifts, their 0.1 s bins; bins under half a second are 0)."""
        for lo, blo, d in _blocked_distances(ha, hb):
            qi, ci = np.nonzero(d <= thresholds.distance)
            shifts = ta[lo + qi] - tb[blo + ci]
            bins = np.rint(shifts * 10).astype(np.int64)  # np.round(shifts, 1), in tenths
            bins[np.abs(bins) < 5] = 0
            yield shifts, bins

    # Counted per bin present, not over the whole time range: a timestamp jump (pts of 1e9 s) would otherwise
    # ask for billions of counters.
    counts: dict[int, int] = {}
    for _, bins in block_shifts():
        for k, c in zip(*np.unique(bins, return_counts=True), strict=True):
            counts[int(k)] = counts.get(int(k), 0) + int(c)
    if not counts:
        return []
    order = sorted(counts, key=lambda k: (-counts[k], abs(k), k))  # ties: nearer 0, negative first
    chosen = [k for k in order[:limit] if counts[k] * 2 >= counts[order[0]]]
    # The median shift of each chosen bin, from a second pass keeping only those bins' shifts (about one
    # pair per frame each: hash frames are a second apart).
    kept: dict[int, list[np.ndarray]] = {k: [] for k in chosen if k != 0}
    if kept:
        for shifts, bins in block_shifts():
            for k in kept:
                kept[k].append(shifts[bins == k])
    return [0.0 if k == 0 else float(np.median(np.concatenate(kept[k]))) for k in chosen]


@dataclass(frozen=True)
class PixelCheck:
    """How two matching videos' time-aligned thumbnails differ (:func:`pixel_check`)."""

    difference: float  # largest normalised block difference over the frame pairs compared
    locality: float  # largest ratio of a pair's worst block to its median block: high for a local edit
    offset: float  # the content-time shift the frames were lined up on
    pairs: int  # frame pairs judged (showing the same instant)
    dropped: int = 0  # frame pairs compared but left out as not the same instant
    # Share of ``b``'s frames compared and shown to be the same instant: its hash frames, or on frame tracks every
    # frame (with ``a`` the lower-rate video, ``a``'s frames inside ``b``'s span stand for them). Only taking a
    # verdict uses it.
    coverage: float = 1.0

    def altered(self, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> bool:
        """Same footage with a local edit (a swapped or re-animated face): a large difference that stands out
        from the rest of the frame. A difference spread over the whole frame is re-encoding damage."""
        return self.difference >= thresholds.pixel_diff and self.locality >= thresholds.min_locality


def pixel_check(a: VideoHash, b: VideoHash, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> PixelCheck | None:
    """Compare time-aligned thumbnails of two matching videos; None when their frames cannot be lined up
    (no thumbnails, other aspect ratio, no sampled frames at the same instant).

    Each thumbnail is normalised (zero mean, unit variance: a brightness or contrast change is not a
    difference), and the mean absolute difference is taken over an 8x8 grid of blocks; a swapped face or a
    re-animated mouth shows as a few blocks far above the rest of the frame, a low-bitrate re-encode as
    damage everywhere. With frame tracks on both sides that agree on most frames, the frames are lined up on
    them and every frame is compared (:func:`track_alignment`, :func:`_track_check`). Otherwise: hash frames
    are a second apart, so a trim or frame-rate change can leave a copy's frame one frame off its source's: each pair is also compared with either side's neighbouring frames and
    the closest alignment counts (a swapped face differs at every instant, so this does not hide it). Frame
    pairs whose median block differs too are not the same instant and are left out. Where the hashes allow
    several trim offsets (a still video), the one whose frames differ least is used.
    """
    if a.thumbs is None or b.thumbs is None or not len(a.thumbs) or not len(b.thumbs) or not _same_aspect(a, b):
        return None
    if _has_track(a) and _has_track(b):
        alignment = track_alignment(a, b, thresholds)
        # Tracks that do not agree on most frames show other framings (a crop): judged as before, below.
        if alignment is not None and alignment.same_share * 100.0 >= thresholds.min_pct:
            return _track_check(a, b, alignment, thresholds)
    (_, _), mirrored = match(a, b, thresholds, return_mirrored=True)
    best = None
    for offset in match_offsets(a, b, thresholds, mirrored):
        aligned = _aligned_blocks(a, b, offset, mirrored, thresholds)
        check = None if aligned is None else _judged(aligned[0], offset, thresholds, _hash_frame_count(b),
                                                     frames=aligned[1])
        if check is not None and (best is None or check.difference < best.difference):
            best = check
    return best


def _same_aspect(a: VideoHash, b: VideoHash) -> bool:
    """Frames of one shape (within 2%): only then do thumbnails of the two line up pixel for pixel."""
    return bool(a.height and b.height and abs(a.width / a.height - b.width / b.height) <= 0.02 * a.width / a.height)


def _judged(blocks: np.ndarray | None, offset: float, thresholds: Thresholds, expected: int,
            frames: np.ndarray | None = None) -> PixelCheck | None:
    """The :class:`PixelCheck` of frame pairs' block differences (pairs, 64). A pair that differs all over is
    not the same instant (a fast cut sampled a frame apart, a frame-rate change) and says nothing about a
    local edit: only pairs that agree in most blocks are judged (None when none do). Left-out pairs still
    count against :attr:`PixelCheck.coverage`: the share of the ``expected`` frames judged (``frames``: which
    frame each pair covers, where one frame can be in several pairs)."""
    if blocks is None:
        return None

    def coverage(same: np.ndarray) -> float:
        covered = len(np.unique(frames[same])) if frames is not None else int(same.sum())
        return covered / max(expected, covered, 1)

    return _check_of_pairs(blocks.max(axis=1), np.median(blocks, axis=1), offset, thresholds, coverage)


def _check_of_pairs(worst: np.ndarray, median: np.ndarray, offset: float, thresholds: Thresholds,
                    coverage, run_frames: int = 1) -> PixelCheck | None:
    """The :class:`PixelCheck` of frame pairs given by each pair's largest and median block difference: the
    pairs that agree in most blocks are judged (None when none do); ``coverage(same)`` is the share of the
    frames expected that the judged pairs (mask ``same``) cover. With ``run_frames`` > 1 the pairs are
    consecutive frames and a difference (or locality) counts at the level it holds over that many judged
    pairs in a row; a pair left out breaks a run."""
    same = median < thresholds.pixel_diff
    if not same.any():
        return None
    locality = worst / np.maximum(median, MEDIAN_FLOOR)
    difference, local = _sustained(worst, same, run_frames), _sustained(locality, same, run_frames)
    return PixelCheck(difference=difference, locality=local, offset=offset, pairs=int(same.sum()),
                      dropped=int((~same).sum()), coverage=coverage(same))


def _sustained(values: np.ndarray, judged: np.ndarray, run_frames: int) -> float:
    """The largest level ``values`` hold over ``run_frames`` judged pairs in a row (1: the largest judged
    value). Fewer judged pairs than that in a row anywhere: the largest run's level, so a short clip is still
    judged on all its frames."""
    kept = np.where(judged, values, -np.inf).astype(np.float64)
    longest = _longest_run(judged)
    k = max(1, min(run_frames, longest))
    if k == 1:
        return float(kept.max())
    return float(np.lib.stride_tricks.sliding_window_view(kept, k).min(axis=1).max())


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return int((ends - starts).max()) if len(starts) else 0


def pixel_difference(a: VideoHash, b: VideoHash, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> float | None:
    """:func:`pixel_check`'s largest block difference, or None when the frames cannot be lined up."""
    check = pixel_check(a, b, thresholds)
    return None if check is None else check.difference


def _hash_frame_count(h: VideoHash) -> int:
    return len(np.unique(_content_times(h)))


def _aligned_blocks(a: VideoHash, b: VideoHash, offset: float, mirrored: bool,
                    thresholds: Thresholds) -> tuple[np.ndarray, np.ndarray] | None:
    """(pairs, 64) block differences of the frame pairs at the same time once ``b`` is shifted by ``offset``,
    each pair at its closest alignment with the neighbouring frames, and ``b``'s frame in each pair; None when
    no frames fall together."""
    ia, ib = _time_pairs(_content_times(a), _content_times(b) + offset,
                         thresholds.time_tolerance_frames / (max(a.fps, b.fps) or 30.0))
    if not len(ia):
        return None
    chosen = []
    for lo in range(0, len(ia), ALIGN_CHUNK):  # bounded memory: 5 alignments of ALIGN_CHUNK pairs at a time
        ta, tb = _with_neighbours(a, ia[lo:lo + ALIGN_CHUNK]), _with_neighbours(b, ib[lo:lo + ALIGN_CHUNK])
        if mirrored:
            tb = tb[..., ::-1]
        # Alignments: a's frame with b's frame or one of its neighbours, and a's neighbours with b's frame.
        left = np.concatenate([np.repeat(ta[:, :1], tb.shape[1], axis=1), ta[:, 1:]], axis=1)
        right = np.concatenate([tb, np.repeat(tb[:, :1], ta.shape[1] - 1, axis=1)], axis=1)
        n, m = left.shape[:2]
        blocks = _blocks(left.reshape(n * m, THUMB, THUMB), right.reshape(n * m, THUMB, THUMB)).reshape(n, m, -1)
        chosen.append(blocks[np.arange(n), blocks.max(axis=2).argmin(axis=1)])
    return np.concatenate(chosen), ib


ALIGN_CHUNK = 512  # frame pairs compared at once by _aligned_blocks


def _time_pairs(ta: np.ndarray, tb: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(ia, ib)`` of the pairs with ``|ta[ia] - tb[ib]| <= tolerance``, in row-major order, from
    sorted times (searchsorted) instead of the len(ta) x len(tb) matrix of gaps."""
    order = np.argsort(tb, kind="stable")
    sorted_tb = tb[order]
    slack = 1e-9 * (1.0 + np.abs(ta))  # a little wider; the exact test below decides
    lo = np.searchsorted(sorted_tb, ta - tolerance - slack, side="left")
    hi = np.searchsorted(sorted_tb, ta + tolerance + slack, side="right")
    n = hi - lo
    ia = np.repeat(np.arange(len(ta)), n)
    ib = order[np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))] if len(ia) else ia
    keep = np.abs(ta[ia] - tb[ib]) <= tolerance
    ia, ib = ia[keep], ib[keep]
    rows = np.lexsort((ib, ia))
    return ia[rows], ib[rows]


TRACK_SEARCH_S = 1.0  # how far around a hash-suggested trim offset the tracks are lined up (the hash grid step)
TRACK_MIN_STD = 4.0  # grey levels: flatter track frames (black, a fade) line up with anything and are left out
TRACK_SEARCH_FRAMES = 300  # frames of one track used to line the two up (evenly spread)


@dataclass(frozen=True)
class TrackAlignment:
    """Where two videos' frame tracks line up (:func:`track_alignment`)."""

    offset: float  # content-time shift, ``a`` minus ``b`` (as :func:`match_offsets`), to a frame
    mirrored: bool
    same_share: float  # share of the compared frame pairs that show the same instant (median block < pixel_diff)
    overlap: float  # share of the shorter video that the other covers at this offset


def _has_track(h: VideoHash) -> bool:
    return h.track is not None and len(h.track) >= 2


def _track_std(track: np.ndarray) -> np.ndarray:
    return track.reshape(len(track), -1).std(1)


def _derived(h: VideoHash, key: str, make):
    if key not in h._derived:
        h._derived[key] = make()
    return h._derived[key]


def _block_means(thumbs: np.ndarray) -> np.ndarray:
    """(n, 64) block means of normalised thumbnails: a frame's coarse layout, for lining tracks up."""
    grid = THUMB // 8
    return _normalised(thumbs).reshape(len(thumbs), 8, grid, 8, grid).mean((2, 4)).reshape(len(thumbs), -1)


def _blocks(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 64) mean absolute differences of normalised thumbnails over an 8x8 grid of blocks."""
    grid = THUMB // 8
    d = np.abs(_normalised(x) - _normalised(y))
    return d.reshape(len(d), 8, grid, 8, grid).mean((2, 4)).reshape(len(d), -1)


TRACK_CODE_DISTANCE = 4  # bits (of 64) within which two track frames' codes make their videos a candidate pair


def _dct_rows() -> np.ndarray:
    """The first 8 rows of the orthonormal DCT-II matrix for THUMB samples."""
    n, k = np.arange(THUMB), np.arange(8)[:, None]
    m = np.cos(np.pi * (2 * n + 1) * k / (2 * THUMB)) * np.sqrt(2.0 / THUMB)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


_DCT8 = _dct_rows()


def track_codes(thumbs: np.ndarray, mirrored: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit perceptual code (pHash: the 8x8 lowest DCT frequencies against their median) of each
    thumbnail, and which thumbnails are not flat enough to be compared. These index every frame of a track,
    so a copy whose hash frames fall between its source's (cut off the one-second grid) still finds it."""
    if not len(thumbs):
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    t = thumbs[..., ::-1] if mirrored else thumbs
    c = np.einsum("ky,nyx,lx->nkl", _DCT8, t.astype(np.float32), _DCT8, optimize=True).reshape(len(t), 64)
    bits = c > np.median(c[:, 1:], axis=1, keepdims=True)
    codes = np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)
    return codes, _track_std(thumbs) >= TRACK_MIN_STD


def _hash_time_codes(h: VideoHash) -> np.ndarray:
    """Track codes of the frames at the hash times, as seen and mirrored (the queries for other tracks)."""
    if not _has_track(h):
        return np.zeros(0, np.uint64)
    idx = np.unique(np.rint(_content_times(h) * (h.fps or 30.0)).astype(np.int64))
    frames = h.track[idx[idx < len(h.track)]]
    out = []
    for mirrored in (False, True):
        codes, ok = track_codes(frames, mirrored)
        out.append(codes[ok])
    return np.concatenate(out)


def _track_index_codes(h: VideoHash) -> np.ndarray:
    if not _has_track(h):
        return np.zeros(0, np.uint64)

    def make():
        codes, ok = track_codes(h.track)
        return codes[ok]

    return _derived(h, "codes", make)


def _near_codes(queries: np.ndarray, codes: np.ndarray, block: int = 64, code_block: int = 16384) -> np.ndarray:
    """Which of ``codes`` lie within TRACK_CODE_DISTANCE bits of any query. Both sides in blocks (64 x 16384
    x 8 bytes, 8 MiB at a time): ``codes`` holds every track frame of every earlier file of a scan."""
    hit = np.zeros(len(codes), bool)
    for clo in range(0, len(codes), code_block):
        chunk = codes[None, clo:clo + code_block]
        for lo in range(0, len(queries), block):
            hit[clo:clo + code_block] |= (_popcount(queries[lo:lo + block, None] ^ chunk) <= TRACK_CODE_DISTANCE).any(0)
    return hit


def _dst_frames(src: VideoHash, dst: VideoHash, src_idx: np.ndarray, shift) -> np.ndarray:
    """``dst``'s frame numbers (nearest frame) at ``src`` track frames' times plus ``shift``: below 0 or past
    ``dst``'s track where no frame of it is there."""
    return np.rint((src_idx / (src.fps or 30.0) + shift) * (dst.fps or 30.0)).astype(np.int64)


def _track_pairs(src: VideoHash, dst: VideoHash, src_idx: np.ndarray, shift) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``dst``'s track of the frames at ``src`` track frames' times plus ``shift`` (nearest frame),
    and which of them exist."""
    idx = _dst_frames(src, dst, src_idx, shift)
    ok = (idx >= 0) & (idx < len(dst.track))
    return np.clip(idx, 0, len(dst.track) - 1), ok


def _oriented(a: VideoHash, b: VideoHash, mirrored: bool):
    """The lower-rate video first (its frames are looked up in the other's track, where each has a partner
    within half a frame), then the other, the sign that turns ``a``-minus-``b`` offsets into its shifts, and
    both tracks, ``b``'s mirrored when asked."""
    b_track = b.track[..., ::-1] if mirrored else b.track
    if (b.fps or 30.0) > (a.fps or 30.0):
        return a, b, -1.0, a.track, b_track
    return b, a, 1.0, b_track, a.track


def track_alignment(a: VideoHash, b: VideoHash, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> TrackAlignment | None:
    """Line two videos' frame tracks up, to a frame: around each trim offset the hash frames suggest
    (:func:`match_offsets`, +-:data:`TRACK_SEARCH_S`), the shift whose frame pairs differ least in coarse
    layout (median over :data:`TRACK_SEARCH_FRAMES` frames of the lower-rate track) among those that cover
    ``min_pct`` of the shorter video. Where no whole-frame hash matched (the pair is a candidate by a part
    hash, or by track codes), the whole range is searched coarsely first. None without tracks on both sides,
    with other aspect ratios, or without two comparable frames."""
    if not (_has_track(a) and _has_track(b)) or not _same_aspect(a, b):
        return None
    (_, _), mirrored = match(a, b, thresholds, return_mirrored=True)
    fa, fb = a.fps or 30.0, b.fps or 30.0
    src, dst, sign, src_track, dst_track = _oriented(a, b, mirrored)
    src_idx = np.nonzero(_derived(src, "std", lambda: _track_std(src.track)) >= TRACK_MIN_STD)[0]
    if len(src_idx) < 2:
        return None
    src_idx = src_idx[np.linspace(0, len(src_idx) - 1, min(len(src_idx), TRACK_SEARCH_FRAMES)).round().astype(int)]
    dst_ok = _derived(dst, "std", lambda: _track_std(dst.track)) >= TRACK_MIN_STD
    # Not kept per hash: 256 bytes a frame for every file of a large scan.
    sig_src, sig_dst = _block_means(src_track[src_idx]), _block_means(dst_track)
    dur_a, dur_b = len(a.track) / fa, len(b.track) / fb

    def search(shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The shifts covering min_pct of the shorter video, their coverage and median coarse difference."""
        overlap = (np.minimum(dur_a, shifts + dur_b) - np.maximum(0.0, shifts)) / min(dur_a, dur_b)
        keep = overlap * 100.0 >= thresholds.min_pct
        shifts, overlap = shifts[keep], overlap[keep]
        costs = np.full(len(shifts), np.inf)
        for lo in range(0, len(shifts), 64):  # bounded memory: 64 shifts x frames x 64 blocks at a time
            chunk = shifts[lo:lo + 64]
            idx, ok = _track_pairs(src, dst, src_idx[None, :], sign * chunk[:, None])
            ok &= dst_ok[idx]
            diff = np.abs(sig_src[None] - sig_dst[idx]).mean(-1)
            diff[~ok] = np.nan
            enough = ok.sum(1) >= 2
            if enough.any():
                costs[lo:lo + 64][enough] = np.nanmedian(diff[enough], axis=1)
        return shifts, overlap, costs

    centres = match_offsets(a, b, thresholds, mirrored)
    if not centres:
        # Some hashes matched (a variant, or only the mirror) but gave no whole-frame offset: search the whole
        # range coarsely first.
        coarse, _, costs = search(np.arange(-dur_b, dur_a, TRACK_SEARCH_S / 2))
        centres = [float(coarse[k]) for k in np.argsort(costs)[:3] if np.isfinite(costs[k])]
    step = 1.0 / max(fa, fb)
    shifts, overlap, costs = search(np.unique(np.round(np.concatenate(
        [np.arange(c - TRACK_SEARCH_S, c + TRACK_SEARCH_S + step / 2, step) for c in centres] or [np.zeros(0)]),
        4)))
    if not np.isfinite(costs).any():
        return None
    best = int(np.argmin(costs))
    idx, ok = _track_pairs(src, dst, src_idx, sign * shifts[best])
    ok &= dst_ok[idx]
    blocks = _blocks(src_track[src_idx[ok]], dst_track[idx[ok]])
    return TrackAlignment(offset=float(shifts[best]), mirrored=mirrored, overlap=float(overlap[best]),
                          same_share=float((np.median(blocks, axis=1) < thresholds.pixel_diff).mean()))


TRACK_CHECK_FRAMES = 7200  # track frame pairs judged at most per check (deepscan.video.MAX_TRACK_FRAMES)
TRACK_CHECK_CHUNK = 1024  # frame pairs compared at once: 2 x 4 MB of normalised thumbnails


def _track_check(a: VideoHash, b: VideoHash, alignment: TrackAlignment, thresholds: Thresholds) -> PixelCheck | None:
    """:func:`pixel_check` on frame tracks lined up to a frame: every track frame of the lower-rate video
    against the other's frame at the same instant (one offset for the whole video; no choice beyond the two
    frames around an instant that falls between frames, so a face swap is never lined up with whichever
    instant hides it best). Every frame, not only those at the hash times: a face swapped for half a second
    between two whole seconds must show too. Pairs flat on both sides (black, a fade: nothing a swap could
    hide in) count as the same instant without being judged, since a thumbnail that flat is mostly codec noise
    once normalised.

    Coverage is the share of ``b``'s frames (its track, or its hash frames' span past it) that were compared
    and showed the same instant, in frames of the lower-rate video: a frame of ``b`` with no frame of ``a``
    to compare with (outside ``a``, or past a track: one keeps at most deepscan.video.MAX_TRACK_FRAMES)
    counts against it. Where ``a`` is the lower-rate video, its frames inside ``b``'s span stand for ``b``'s."""
    src, dst, sign, src_track, dst_track = _oriented(a, b, alignment.mirrored)
    src_idx = np.arange(len(src_track))
    if len(src_idx) > TRACK_CHECK_FRAMES:  # evenly spread; each stands for this many frames
        src_idx = np.unique(np.linspace(0, len(src_track) - 1, TRACK_CHECK_FRAMES).round().astype(np.int64))
    weight = len(src_track) / max(len(src_idx), 1)
    # Where each frame's instant falls in dst's frames: between two of them after a frame-rate change, where
    # the converter may have kept either, so both are compared and the closer counts (a swapped face differs
    # from both). On a frame (within 1% of one), only that frame.
    at = (src_idx / (src.fps or 30.0) + sign * alignment.offset) * (dst.fps or 30.0)
    idx = np.rint(at).astype(np.int64)
    ok = (idx >= 0) & (idx < len(dst_track))
    src_idx, idx, at = src_idx[ok], idx[ok], at[ok]
    if not len(src_idx):
        return None
    other = idx + np.where(at > idx, 1, -1)
    between = (np.abs(at - idx) > 0.01) & (other >= 0) & (other < len(dst_track))
    src_flat = _derived(src, "std", lambda: _track_std(src.track))[src_idx] < TRACK_MIN_STD
    flat = src_flat & (_derived(dst, "std", lambda: _track_std(dst.track))[idx] < TRACK_MIN_STD)
    src_idx, idx, other, between = src_idx[~flat], idx[~flat], other[~flat], between[~flat]
    worst, median = np.zeros(len(src_idx), np.float32), np.zeros(len(src_idx), np.float32)
    for lo in range(0, len(src_idx), TRACK_CHECK_CHUNK):  # bounded memory over a 7,200-frame track
        part = slice(lo, lo + TRACK_CHECK_CHUNK)
        blocks = _blocks(src_track[src_idx[part]], dst_track[idx[part]])
        alt = np.nonzero(between[part])[0]
        if len(alt):
            other_blocks = _blocks(src_track[src_idx[part][alt]], dst_track[other[part][alt]])
            closer = other_blocks.max(axis=1) < blocks[alt].max(axis=1)
            blocks[alt[closer]] = other_blocks[closer]
        worst[part], median[part] = blocks.max(axis=1), np.median(blocks, axis=1)
    # b's length in the lower-rate video's frames: its track, or its last hash frame where that is later.
    b_fps = b.fps or 30.0
    b_frames = max(len(b.track), (int(np.rint(_content_times(b)[-1] * b_fps)) + 1) if len(b.times) else 0)
    expected = b_frames * (src.fps or 30.0) / b_fps

    def coverage(same: np.ndarray) -> float:  # flat pairs count as covered; each pair stands for `weight` frames
        return min(1.0, (int(same.sum()) + int(flat.sum())) * weight / max(expected, 1.0))

    return _check_of_pairs(worst, median, alignment.offset, thresholds, coverage, thresholds.run_frames)


def _with_neighbours(h: VideoHash, idx: np.ndarray) -> np.ndarray:
    """(len(idx), k, THUMB, THUMB): each frame's thumbnail, then its neighbours' when the hash has them."""
    own = h.thumbs[idx][:, None]
    if h.neighbours is None or len(h.neighbours) != len(h.thumbs):
        return own
    return np.concatenate([own, h.neighbours[idx]], axis=1)


def _normalised(thumbs: np.ndarray) -> np.ndarray:
    t = thumbs.astype(np.float32)
    mean = t.mean((1, 2), keepdims=True)
    std = t.std((1, 2), keepdims=True)
    return (t - mean) / np.maximum(std, 1.0)


def _span(h: VideoHash) -> float:
    """Seconds of content: the probed duration, or what the decoded frames show when that is more (a container
    can claim less than it holds)."""
    fps = h.fps or 30.0
    ct = _content_times(h)
    return max(h.duration_s, float(ct[-1]) + 1.0 / fps if len(ct) else 0.0,
               len(h.track) / fps if h.track is not None else 0.0)


def _verifies(check: PixelCheck | None, member: VideoHash, representative: VideoHash,
              thresholds: Thresholds) -> bool:
    """Whether ``check`` (``pixel_check(representative, member)``) shows every frame of ``member`` to be the
    representative's: the difference under ``verify_diff`` (on every frame pair judged), ``verify_coverage`` of
    the member's frames compared and the same instant (pairs left out as not the same instant count against
    it), and the member's time span, after the trim offset, inside the representative's. A file holding part
    of the screened one plus footage never screened (another clip appended, or a shared intro) is related,
    never a copy."""
    if check is None or check.difference >= thresholds.verify_diff or check.coverage < thresholds.verify_coverage:
        return False
    rates = [f for f in (member.fps, representative.fps) if f > 0]
    slack = thresholds.span_slack_frames / (min(rates) if rates else 30.0)
    start, length, rep_length = check.offset, _span(member), _span(representative)
    inside = start >= -slack and length <= rep_length + slack and start + length <= rep_length + slack
    # A member at a higher frame rate has frames between the representative's that were never compared (a
    # 100-fps copy three quarters fake took "real 0.34"; alone "fake 0.907").
    same_frames = not (member.fps and representative.fps) or member.fps <= representative.fps * 1.05
    return inside and same_frames


def is_verified_copy(member: VideoHash, representative: VideoHash,
                     thresholds: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """Whether ``member``'s pixels are shown to be ``representative``'s (a re-encode, resize, frame-rate
    change, trim or mirror) over its whole length (:func:`_verifies`): only then may it take the
    representative's verdict without being screened."""
    return (_verifies(pixel_check(representative, member, thresholds), member, representative, thresholds)
            and is_match(member, representative, thresholds))


# ------------------------------------------------------------------------------------------------ grouping
@dataclass
class Group:
    id: int
    members: list[str]  # in input order
    representative: str  # the one screened: highest resolution, then longest, then first by path
    hashed: bool = True  # False when the representative could not be hashed (a singleton by necessity)
    # Members screened themselves too: not shown, pixel by pixel, to be copies of the representative.
    screen_too: list[str] = field(default_factory=list)
    # Ids of groups with the same footage but locally different pixels (e.g. a face swapped in).
    altered: list[int] = field(default_factory=list)
    # Their representatives, in the same order: group numbers belong to a run, and runs into one --out reuse
    # them, so a report names an altered group by its representative.
    altered_with: list[str] = field(default_factory=list)

    def add_altered(self, other: Group) -> None:
        if other.id not in self.altered:
            self.altered.append(other.id)
            self.altered_with.append(other.representative)

    @property
    def size(self) -> int:
        return len(self.members)

    def inherits(self, path) -> bool:
        """Whether ``path`` takes the representative's result instead of being screened itself."""
        p = str(path)
        return p != self.representative and p in self.members and p not in self.screen_too


def _representative_key(path: str, h: VideoHash | None):
    if h is None:
        return (0, 0.0, path)
    return (-(h.width * h.height), -h.duration_s, path)


class UnionFind:
    """Disjoint sets of 0..n-1; each set's root is its smallest member."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def candidate_pairs(hashes: Sequence[VideoHash], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> set[tuple[int, int]]:
    """Pairs of videos (i < j) sharing at least one frame within the distance (either orientation): the
    only pairs vPDQ's rule can match, found with one blocked all-frames comparison instead of N² calls; and,
    for hashes with frame tracks, pairs where a hash-time frame of one is within TRACK_CODE_DISTANCE of any
    frame of the other's track (:func:`track_codes`): the only pairs the track rule of :func:`is_match` can
    match."""
    q, t = thresholds.quality, thresholds.distance
    owners, rows, mirror_owners, mirror_rows = [], [], [], []
    for i, h in enumerate(hashes):
        u, _ = _frames(h, q)
        rows.append(u)
        owners.append(np.full(len(u), i))
        if h.mirrored is not None:
            m, _ = _frames(h, q, mirrored=True)
            mirror_rows.append(m)
            mirror_owners.append(np.full(len(m), i))
    if not rows or not sum(len(r) for r in rows):
        return set()
    allh, allo = np.concatenate(rows), np.concatenate(owners)
    queries = [(allh, allo)]
    if mirror_rows and sum(len(r) for r in mirror_rows):
        queries.append((np.concatenate(mirror_rows), np.concatenate(mirror_owners)))
    pairs: set[tuple[int, int]] = set()
    n = len(hashes)
    for qh, qo in queries:
        # Block by block, each block's matches reduced to distinct file pairs at once: a still video matches
        # itself frame for frame, millions of row pairs that need never be held together.
        for lo, blo, d in _blocked_distances(qh, allh):
            qi, ci = np.nonzero(d <= t)
            a, b = qo[lo + qi], allo[blo + ci]
            keep = a != b
            codes = np.unique(np.minimum(a[keep], b[keep]) * n + np.maximum(a[keep], b[keep]))
            pairs.update((int(c) // n, int(c) % n) for c in codes)
    # Frame tracks: each video's hash-time frames against every frame of the others' tracks.
    track_rows = [_track_index_codes(h) for h in hashes]
    if sum(len(r) for r in track_rows):
        codes = np.concatenate(track_rows)
        code_owners = np.concatenate([np.full(len(r), i) for i, r in enumerate(track_rows)])
        for i, h in enumerate(hashes):
            queries = _hash_time_codes(h)
            if len(queries):
                for j in np.unique(code_owners[_near_codes(queries, codes)]).tolist():
                    if j != i:
                        pairs.add((min(i, j), max(i, j)))
    return pairs


def group(hashes: dict[str, VideoHash | None], thresholds: Thresholds = DEFAULT_THRESHOLDS,
          order: Sequence[str] | None = None) -> list[Group]:
    """Groups of videos that match (:func:`is_match`) and whose pixels do not contradict it
    (:func:`pixel_difference`), transitively; every path is in exactly one group.

    ``hashes`` maps each path to its hash, or to None when it could not be hashed (it stays alone).
    Groups come in the order of their first member in ``order`` (default: the dict's order). Pairs that
    match but differ locally end up in different groups that name each other in ``altered``.
    """
    paths = list(order) if order is not None else list(hashes)
    hashed = [p for p in paths if hashes.get(p) is not None]
    index = {p: i for i, p in enumerate(hashed)}
    uf = UnionFind(len(hashed))
    altered, same_pixels, unverifiable = [], [], []
    for i, j in sorted(candidate_pairs([hashes[p] for p in hashed], thresholds)):
        a, b = hashes[hashed[i]], hashes[hashed[j]]
        if not is_match(a, b, thresholds):
            continue
        check = pixel_check(a, b, thresholds)
        if check is None:
            unverifiable.append((i, j))
        elif check.altered(thresholds):
            altered.append((i, j))
        else:
            same_pixels.append((i, j))

    def kept_apart(ri: int, rj: int) -> bool:
        return any({uf.find(x), uf.find(y)} == {ri, rj} for x, y in altered)

    for i, j in same_pixels:
        uf.union(i, j)
    # A pair the pixel check cannot judge (other framing: a crop, a caption band) never joins two groups that
    # hold a locally altered pair: a cropped copy matches a source and its face swap alike (PDQ cannot see
    # the swap), and would otherwise chain them together.
    for i, j in unverifiable:
        ri, rj = uf.find(i), uf.find(j)
        if ri != rj and not kept_apart(ri, rj):
            uf.union(i, j)
    altered_pairs = [(hashed[i], hashed[j]) for i, j in altered]
    members: dict[object, list[str]] = {}
    for p in paths:
        key = ("hash", uf.find(index[p])) if p in index else ("alone", p)
        members.setdefault(key, []).append(p)
    groups, group_of = [], {}
    for n, ms in enumerate(members.values(), start=1):
        rep = min(ms, key=lambda p: _representative_key(p, hashes.get(p)))
        screen_too = [m for m in ms if m != rep and not is_verified_copy(hashes[m], hashes[rep], thresholds)]
        groups.append(Group(id=n, members=ms, representative=rep, hashed=hashes.get(rep) is not None,
                            screen_too=screen_too))
        group_of.update({m: n for m in ms})
    for a, b in altered_pairs:
        ga, gb = group_of[a], group_of[b]
        if ga != gb:  # linked another way, the pair still shares a group: its members are screened apart
            groups[ga - 1].add_altered(groups[gb - 1])
            groups[gb - 1].add_altered(groups[ga - 1])
    return groups


def plan(paths: Iterable, thresholds: Thresholds = DEFAULT_THRESHOLDS, backend: str | None = None,
         progress: Callable[[str], None] | None = None, cache: dict | None = None, **probe_options) -> list[Group]:
    """Hash every video and group them in one pass (:func:`group`: transitive, unlike a scan's file-by-file
    :class:`StreamingGroups`): one representative per group to screen, plus ``screen_too``. A file that cannot be probed or hashed is a group of its own (the scan
    then reports its error). ``cache`` (optional) maps path → :class:`VideoHash` and is filled in.
    ``probe_options`` go to :func:`deepscan.video.probe` (``max_pixels``, ``max_duration_s``, ``timeout_s``).
    Every hash is held in memory with its frame track (about 1 KiB per decoded frame, at most 7 MB a file);
    a scan (:class:`StreamingGroups` with ``spill_dir``) keeps the tracks on disk instead.
    """
    from .video import VideoError, probe

    decode_timeout = probe_options.pop("decode_timeout_s", 600.0)
    order = [str(p) for p in paths]
    if len(order) < 2:  # nothing to group: no decoding spent on hashing
        return [Group(id=n, members=[p], representative=p, hashed=False) for n, p in enumerate(order, start=1)]
    hashes: dict[str, VideoHash | None] = {}
    for p in order:
        if progress:
            progress(p)
        if cache is not None and p in cache:
            hashes[p] = cache[p]
            continue
        try:
            info = probe(p, **probe_options)
            hashes[p] = video_hash(p, info, backend=backend, timeout_s=decode_timeout,
                                   max_pixels=probe_options.get("max_pixels"))
        except (VideoError, OSError):
            hashes[p] = None
        if cache is not None and hashes[p] is not None:
            cache[p] = hashes[p]
    return group(hashes, thresholds, order)


# ------------------------------------------------------------------------------------------ scan results
def group_key(info: dict) -> tuple:
    """Which group a result's ``extra["campaign"]`` names across runs: group numbers belong to a run (runs into
    one --out each number theirs from 1), so a group is its number and its representative (fixed when the
    group is made)."""
    return info.get("group"), info.get("representative")


def campaign_info(group_: Group, path) -> dict:
    """What ``result.extra["campaign"]`` holds for a member of a group of two or more."""
    p = str(path)
    info = {"group": group_.id, "representative": group_.representative, "size": group_.size,
            "is_representative": p == group_.representative, "inherited": False}
    if group_.altered:
        info["altered_groups"] = list(group_.altered)
        info["altered_representatives"] = list(group_.altered_with)
    return info


def altered_relations(campaigns: Iterable[dict]) -> dict[str, list[str]]:
    """Representative -> the representatives of the groups it is "same footage, altered" with, both ways,
    from results' ``extra["campaign"]``: a --dedupe scan writes each line as its file finishes, so only the
    later of two altered groups names the other."""
    related: dict[str, set[str]] = {}
    for c in campaigns:
        own = c.get("representative")
        for other in c.get("altered_representatives") or []:
            if own and other and other != own:
                related.setdefault(own, set()).add(other)
                related.setdefault(other, set()).add(own)
    return {k: sorted(v) for k, v in related.items()}


# The pixel check looks at 32x32 thumbnails: a face smaller than this share of the frame's height covers
# too few of their pixels for a swap to show, so copies of such a video are screened, never inherited.
MIN_FACE_SHARE = 0.25


def can_inherit(rep_result, member_path, group_: Group) -> bool:
    """Whether ``member_path`` may take ``rep_result`` (the representative's result) instead of being
    screened: it is a verified pixel copy of the representative, the representative was judged (status ok
    or no_face), and every face in it is large enough for the pixel check to have seen a swap."""
    if rep_result is None or not group_.inherits(member_path) or rep_result.status not in ("ok", "no_face"):
        return False
    height = (rep_result.video or {}).get("height") or 0
    boxes = [f.box for fr in rep_result.frames for f in fr.faces]
    if boxes and (not height or min(b[3] - b[1] for b in boxes) < MIN_FACE_SHARE * height):
        return False
    return True


def apply_group_result(rep_result, member_path, group_: Group, sha256: tuple[str, int] | None = None):
    """A member's result: the representative's verdict, score and tracks, marked as inherited; or None when
    the member must be screened itself (see :func:`can_inherit`).

    It has its own path, sha256 and size; no frames (boxes are in the representative's pixels) and no
    evidence. ``extra["campaign"]`` says ``inherited: true`` and names the file whose pixels were judged.
    """
    from .results import VideoResult
    from .scanner import _utc_now, file_sha256

    if not can_inherit(rep_result, member_path, group_):
        return None
    path = str(member_path)
    if sha256 is None:
        try:
            sha256 = file_sha256(path)
        except OSError:
            return None
    now = _utc_now()
    result = VideoResult(path=path, sha256=sha256[0], size_bytes=sha256[1], model=dict(rep_result.model),
                         video=None, timing={"total_s": 0.0}, config=dict(rep_result.config),
                         environment=dict(rep_result.environment), deepscan_version=rep_result.deepscan_version,
                         started_at=now, finished_at=now)
    return take_verdict(result, rep_result, campaign_info(group_, path))


def take_verdict(result, rep_result, campaign: dict):
    """Give ``result`` (a copy's own record) the verdict, score and tracks of ``rep_result``, the file whose
    pixels were judged: no frames (boxes are in that file's pixels), ``extra["campaign"]`` (``campaign``,
    the copy's group info) marked inherited. Returns ``result``."""
    result.status, result.verdict, result.error = rep_result.status, rep_result.verdict, None
    result.score, result.score_ci95 = rep_result.score, rep_result.score_ci95
    result.tracks, result.frames = list(rep_result.tracks), []
    # Its own config hash: a scan without --dedupe never resumes from an inherited line.
    result.config_hash = f"{rep_result.config_hash}+campaign" if rep_result.config_hash else None
    result.extra["campaign"] = {**campaign, "inherited": True, "screened_as": rep_result.path}
    return result


def screening_order(groups: Sequence[Group]) -> list[str]:
    """Every path once, each group's representative before its other members (so they can inherit)."""
    return [p for g in groups for p in [g.representative, *[m for m in g.members if m != g.representative]]]


def mark_screened(result, group_: Group):
    """Add ``extra["campaign"]`` to a result screened itself (the representative, or a ``screen_too``
    member) of a group of two or more; returns the result."""
    if group_.size > 1 or group_.altered:
        result.extra["campaign"] = campaign_info(group_, result.path)
    return result


def campaign_table(results, groups: Sequence[Group] | None = None):
    """A rich table of the groups of two or more (or with an altered copy elsewhere): members with their
    verdicts (``*`` = inherited), first/last file modification time, and related altered groups.

    Groups come from ``groups`` or, without it, from the results' ``extra["campaign"]``.
    """
    from rich.table import Table
    from rich.text import Text

    from .report import VERDICT_STYLE, distinct_names
    from .results import printable, shown

    # A resumed result's name that is not UTF-8 is stored escaped, a live group's member is not: that form
    # only where the raw name finds nothing (a name may hold a literal "\xff" too).
    by_path = {str(r.path): r for r in results}
    by_stored_name = {printable(str(r.path)): r for r in results}
    if groups is None:
        found: dict[tuple, Group] = {}
        campaigns = [c for r in results if (c := (r.extra or {}).get("campaign"))]
        related = altered_relations(campaigns)
        for r in results:
            c = (r.extra or {}).get("campaign")
            if c and c.get("group") is not None:  # None: a resumed copy that could not be grouped this run
                rep = c.get("representative")
                # Lines written before altered_representatives was recorded name run-local numbers only.
                altered = [] if related.get(rep) else list(c.get("altered_groups") or [])
                g = found.setdefault(group_key(c), Group(id=c["group"], members=[], representative=rep,
                                                         altered=altered, altered_with=related.get(rep, [])))
                g.members.append(str(r.path))
        groups = sorted(found.values(), key=lambda g: (g.id, str(g.representative)))
    table = Table(title="campaigns: copies of the same video", header_style="bold")
    for col, justify in (("group", "right"), ("size", "right"), ("members: verdict", "left"),
                         ("first / last modified (UTC)", "left"), ("same footage, altered", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    # Two files of one name in different folders: enough of each path to tell which one was screened.
    shown_groups = [g for g in groups if g.size > 1 or g.altered or g.altered_with]
    names = distinct_names({*(m for g in shown_groups for m in g.members),
                            *(a for g in shown_groups for a in g.altered_with)})
    for g in shown_groups:
        times = []
        for m in g.members:
            try:
                times.append(os.stat(m).st_mtime)
            except OSError:
                pass
        span = " – ".join(datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")
                          for t in sorted({min(times), max(times)})) if times else "—"
        cell = Text()
        for m in g.members:
            r = by_path.get(m) or by_stored_name.get(printable(m))
            verdict = r.verdict if r else "not screened"
            inherited = bool(r and ((r.extra or {}).get("campaign") or {}).get("inherited"))
            if cell:
                cell.append("\n")
            cell.append(shown(names[m]) + (" (screened)" if m == g.representative else "") + ": ")
            cell.append(verdict + ("*" if inherited else ""), style=VERDICT_STYLE.get(verdict, ""))
        # Named by representative: two runs into one --out each have a group 1.
        altered = ([shown(names[a]) for a in g.altered_with] if g.altered_with
                   else [f"group {a}" for a in g.altered])
        table.add_row(str(g.id), str(g.size), cell, span, "\n".join(altered) or "—")
    table.caption = ("* inherited from the group's screened file (a verified pixel copy of it); "
                     "'altered': the same footage with locally different pixels, e.g. a swapped face")
    return table


# --------------------------------------------------------------------------------------- streaming groups
HASH_CACHE_VERSION = "pdq6"  # bump when hashing changes: cached hashes of other versions are not used


class _GrowingIndex:
    """Rows and the file each came from, in buffers grown by doubling: one copy per doubling instead of a
    concatenation of everything per file (quadratic over a large folder)."""

    def __init__(self, row_shape: tuple[int, ...], dtype):
        self._rows = np.zeros((0, *row_shape), dtype)
        self._owners = np.zeros(0, np.int64)
        self._size = 0

    @property
    def rows(self) -> np.ndarray:
        return self._rows[: self._size]

    @property
    def owners(self) -> np.ndarray:
        return self._owners[: self._size]

    def add(self, rows: np.ndarray, owner: int) -> None:
        end = self._size + len(rows)
        if end > len(self._rows):
            capacity = max(2 * len(self._rows), end, 1024)
            grown = np.zeros((capacity, *self._rows.shape[1:]), self._rows.dtype)
            owners = np.zeros(capacity, np.int64)
            grown[: self._size], owners[: self._size] = self.rows, self.owners
            self._rows, self._owners = grown, owners
        self._rows[self._size:end] = rows
        self._owners[self._size:end] = owner
        self._size = end


class StreamingGroups:
    """Groups built one file at a time, as a scan decodes each file once for both its hash and its screening
    frames (``iter_frames(hash_fps=...)``): what ``deepscan scan --dedupe`` uses.

    A file joins the closest of the groups of the earlier files it matches (:func:`is_match`): the one whose
    representative's pixels differ least from it (:func:`pixel_check`; groups it cannot be compared with on
    pixels come after, the lowest number first). A group whose representative's pixels differ locally from
    the file's is never joined (the two groups are ``altered`` relations). Matching none, it starts a group of
    its own, as its representative. It takes the representative's verdict only when it is a
    verified pixel copy of it (:func:`is_verified_copy`) with no more pixels than it (a verdict is never
    passed from a smaller copy to a larger one); every other member is screened itself (``screen_too``).
    """

    def __init__(self, thresholds: Thresholds = DEFAULT_THRESHOLDS, spill_dir=None):
        self.thresholds = thresholds
        # Frame tracks (~1 KiB a frame) of placed files go to disk here and are read back when a later file is
        # compared with them, so a scan of thousands of files does not hold them all in memory.
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._spilled: dict[str, Path] = {}
        self.groups: list[Group] = []
        self.hashes: dict[str, VideoHash] = {}
        self.group_of: dict[str, Group] = {}
        self.results: dict[str, object] = {}  # representative path -> its screened result
        # Every earlier file's frame hashes and their owners, in buffers grown by doubling: one copy per
        # doubling instead of a concatenation of everything per file (quadratic over a large folder).
        self._pdq = _GrowingIndex((32,), np.uint8)
        self._track = _GrowingIndex((), np.uint64)  # every track frame's code
        self._track_queries = _GrowingIndex((), np.uint64)  # hash-time frames' codes, as seen and mirrored
        self._order: list[str] = []

    def _candidates(self, h: VideoHash) -> list[str]:
        """Earlier files sharing at least one frame hash within the distance, or a hash-time frame with a
        frame of the other's track (:func:`candidate_pairs`), in the order they came."""
        q = self.thresholds.quality
        index, owners = self._pdq.rows, self._pdq.owners
        found: set[int] = set()
        for mirrored in (False, True):
            rows, _ = _frames(h, q, mirrored=mirrored)
            if len(rows) and len(index):
                found.update(owners[_near_any(rows, index, self.thresholds.distance)[1]].tolist())
        queries, track = _hash_time_codes(h), _track_index_codes(h)
        if len(queries) and len(self._track.rows):
            found.update(self._track.owners[_near_codes(queries, self._track.rows)].tolist())
        if len(track) and len(self._track_queries.rows):
            found.update(self._track_queries.owners[_near_codes(track, self._track_queries.rows)].tolist())
        return [self._order[i] for i in sorted(found)]

    def place(self, path, h: VideoHash) -> Group:
        """Put ``path`` (hashed as ``h``) into a group and return the group."""
        p = str(path)
        if p in self.group_of:
            return self.group_of[p]
        th = self.thresholds
        joined, altered, options = None, [], []
        rep_checks: dict[int, PixelCheck | None] = {}
        for other in self._candidates(h):
            g = self.group_of[other]
            if g.id in altered or not is_match(h, self._hash(other), th):
                continue
            # The representative judges; the matched member only where the representative cannot (other framing).
            # Two copies of one source can look altered to each other (each a frame off it in its own way).
            if g.id not in rep_checks:
                rep_checks[g.id] = pixel_check(self._hash(g.representative), h, th)
            check = rep_checks[g.id]
            if check is None and other != g.representative:
                check = pixel_check(self._hash(other), h, th)
            if check is not None and check.altered(th):
                altered.append(g.id)
            else:
                rep_check = rep_checks[g.id]
                options.append((None if rep_check is None else rep_check.difference, g, other == g.representative))
        # The closest group, not the first: a short copy of an original can be within the threshold of its face
        # swap's group too. A group the file differs from locally is never joined.
        options = [o for o in options if o[1].id not in altered]
        if options:
            _, joined, matched_rep = min(options, key=lambda o: (o[0] is None, o[0] or 0.0, o[1].id))
        if joined is None:
            joined = Group(id=len(self.groups) + 1, members=[p], representative=p)
            self.groups.append(joined)
        else:
            joined.members.append(p)
            rep = self._hash(joined.representative)
            # is_verified_copy, from the check already made against the representative
            verified = (_verifies(rep_checks[joined.id], h, rep, th)
                        and (matched_rep or is_match(h, rep, th)))
            if not (verified and h.width * h.height <= rep.width * rep.height):
                joined.screen_too.append(p)
        for gid in altered:
            joined.add_altered(self.groups[gid - 1])
            self.groups[gid - 1].add_altered(joined)
        self.hashes[p] = h
        self.group_of[p] = joined
        self._order.append(p)
        owner = len(self._order) - 1
        self._pdq.add(_frames(h, th.quality)[0], owner)
        self._track.add(_track_index_codes(h), owner)
        self._track_queries.add(_hash_time_codes(h), owner)
        if self.spill_dir is not None and _has_track(h):
            self._spill(p, h, self.spill_dir / f"track-{owner}.npy")
        return joined

    def _spill(self, p: str, h: VideoHash, target: Path) -> None:
        """Move ``p``'s frame track to ``target``; recorded as spilled only once it is wholly written. A temp
        disk that fails (full, read-only) leaves the track in memory: the scan goes on, and later files are
        still checked against every frame of it."""
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            np.save(target, np.ascontiguousarray(h.track))
        except OSError:
            try:
                target.unlink(missing_ok=True)  # a partial file
            except OSError:
                pass
            return
        self._spilled[p] = target
        self.hashes[p] = replace(h, track=None)  # the caller's hash keeps its track

    def _hash(self, path: str) -> VideoHash:
        """A placed file's hash, with its frame track read back from disk where it was spilled. A track that
        cannot be read back (deleted, damaged) is no track: that file is compared on its hash frames."""
        h = self.hashes[path]
        spilled = self._spilled.get(path)
        if spilled is None:
            return h
        try:
            track = np.load(spilled, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return h
        if track.ndim != 3 or track.shape[1:] != (THUMB, THUMB) or track.dtype != np.uint8:
            return h
        return replace(h, track=track)

    def info(self, path) -> dict:
        """``result.extra["campaign"]`` of a file screened itself: its group, the group's representative, and
        related altered groups. (Sizes grow as later files join: the final groups are :attr:`groups`.)"""
        g = self.group_of[str(path)]
        d = {"group": g.id, "representative": g.representative, "is_representative": str(path) == g.representative,
             "inherited": False}
        if g.altered:
            d["altered_groups"] = list(g.altered)
            d["altered_representatives"] = list(g.altered_with)
        return d

    def inheritable(self, path) -> object | None:
        """The representative's result that ``path`` may take instead of being screened, or None."""
        g = self.group_of.get(str(path))
        if g is None:
            return None
        rep_result = self.results.get(g.representative)
        return rep_result if can_inherit(rep_result, path, g) else None


def load_cached_hash(cache_dir, sha256: str) -> VideoHash | None:
    """A file's hash saved by an earlier scan into the same output folder (``hashes/``), if any."""
    import json

    f = Path(cache_dir) / f"{sha256}-{HASH_CACHE_VERSION}.json"
    try:
        return VideoHash.from_dict(json.loads(f.read_text()))
    except (OSError, ValueError, KeyError, TypeError, zlib.error):  # a corrupt frame track is zlib.error
        return None


def save_cached_hash(cache_dir, sha256: str, h: VideoHash) -> None:
    """Save a file's hash (atomically) so a resumed scan need not decode a finished file to group the rest."""
    import json

    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{sha256}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(h.to_dict()))
    os.replace(tmp, d / f"{sha256}-{HASH_CACHE_VERSION}.json")
