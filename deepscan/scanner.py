"""The one facade behind the CLI and the Python API: video → faces → detector → scoring, per video.

``Scanner(options).scan_video(path)`` returns a :class:`VideoResult` and never raises for a bad input: the
failure becomes an ``error`` result with a one-line message. ``Scanner.scan(paths)`` yields results as each
video finishes, and appends each to ``results.jsonl`` when an output directory is given.
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import json
import math
import numbers
import os
import platform
import queue
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .crops import crop_face
from .detector.card import checked_precision
from .results import (
    FaceResult,
    FrameResult,
    VideoResult,
    dumps_line,
    is_number,
    json_safe,
    printable,
    result_line,
)
from .samplekey import file_seed
from .scoring import Aggregation, aggregate, score_interval
from .video import (
    MAX_DURATION_S,
    MAX_PIXELS,
    SAMPLING,
    VideoError,
    check_input,
    decode_size,
    discover,
    file_identity,
    iter_frames,
    probe,
)


class _CallersError(Exception):
    """Carries an exception raised by the caller's progress callback past the per-video error handling:
    recorded as the video's "internal error", a pipeline could not cancel a scan from its callback."""


@dataclass
class ScanOptions:
    detector: str | None = None  # registry name or model-card path; None = the embedded default
    weights: str | None = None  # another weights file for the detector's architecture
    frames: int = 32  # frames sampled, one in each of N equal slices, placed by the file's sha256
    fps: float | None = None  # sample at this rate instead (overrides ``frames``)
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None = CUDA when available
    # Detector precision: auto (fp16 on CUDA; bf16 on CPUs with native bf16, fp32 on others), fp32, bf16, fp16.
    precision: str = "auto"
    threads: int | None = None  # torch CPU threads; None = all cores
    # Frames decoded and face-detected together, and faces per classifier pass; None: 8 and 16 on CPU, where
    # small batches pipeline better and bound memory (EfficientNet's 112-px stage holds ~5 MB of activations
    # per face; a 1080p clip with 145 faces: peak RSS 2.08 GB at 16/64, 1.52 GB at 8/16; 720p clip 3.2-3.4 s ->
    # 2.7-3.0 s), 32 and 64 on CUDA, where a kernel launch costs more than a few more faces (not measured here).
    batch_frames: int | None = None
    # Full face detection on every Nth sampled frame; 1 = all full. The frames between follow the faces of
    # the frame before (MTCNN's R-net and O-net on boxes around them, no image pyramid) when ``follow_faces``,
    # else look only for faces at least half as large as the smallest one found (a shorter pyramid).
    full_detect_every: int = 4
    follow_faces: bool = True
    # Classify one batch of faces on a worker thread while the next is face-detected, each stage on half the
    # threads (same results, less wall time). Never with one thread in all (Scanner.overlapping).
    overlap: bool = True
    batch_faces: int | None = None
    max_side: int = 1920  # larger frames are downscaled inside ffmpeg before anything else
    # Decode only keyframes of a video of a minute or more sampled at least 4 s apart, each sample the first
    # keyframe at or after its time: time flat in the video's length (a 10-min clip 1.4-2.1 s against 7-8 s),
    # but the file's author chooses the keyframes: a 130-s clip 96% fake with every keyframe real read "real
    # 0.303" this way and "fake 0.909" decoded in full. Off by default since session 52 (a --dedupe scan,
    # which hashes every frame, always decoded in full: the two now agree).
    keyframes_only: bool = False
    # Hardware video decoding: "none" or an ffmpeg -hwaccel name ("cuda": NVDEC). Same frames, pixel for pixel;
    # falls back to CPU decoding where it fails. Off by default: on an H100 with 16 cores NVDEC made 10-s clips
    # slower (0.7 s to decode 16 frames against 0.1 s; a folder of 40 clips 28.9 s against 21.4 s).
    hwaccel: str = "none"
    timeout_s: float | None = 600.0  # limit on the time one video's scan waits for its decoder (ffmpeg)
    max_pixels: int = MAX_PIXELS  # larger frames are refused before decoding (header and decoder both)
    max_duration_s: float | None = MAX_DURATION_S  # longer videos are refused
    keep_heatmaps: bool = True  # keep per-face heatmaps and crops on results (API); never in JSON
    # With keep_heatmaps, the faces of one person that keep them: the most suspicious this many (~240 KB a
    # face). The others' crop and heatmap are None, so memory stays flat however long a video sampled by
    # --fps is; None keeps every face's. 32 keeps all of the default 32 samples.
    heatmaps_per_person: int | None = 32
    threshold: float | None = None  # override the model card's decision threshold
    min_face_prob: float | None = None  # override the card's face-detector probability threshold
    provenance: bool = True  # read container tags, edit lists and C2PA into extra["provenance"] (no score change)
    # Scanning many videos: hash, probe and read the provenance of the next one on a worker thread while this
    # one is screened (a 300 MB file's sha256: 0.2 s here, from the page cache). Its decoder is not started
    # early: that gained nothing measurable on 2 cores.
    prepare_ahead: bool = True
    c2pa_trust_anchors: str | None = None  # PEM file of C2PA trust anchors (default: $DEEPSCAN_C2PA_TRUST_ANCHORS)
    campaign_buffer_mb: int = 512  # --dedupe: a file's screening frames held while it is hashed, at most
    aggregation: Aggregation = field(default_factory=Aggregation)

    def __post_init__(self):
        # Numbers from numpy (a calibrated threshold, a count from an array) are numbers: taken as Python's.
        for name in ("threshold", "min_face_prob", "fps"):
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                setattr(self, name, float(value))
        for name in ("frames", "full_detect_every", "heatmaps_per_person", "threads"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, name, int(value))
        # A NaN threshold compares false with every score (every fake "real"); -1 or 2 decide nothing.
        for name in ("threshold", "min_face_prob"):
            if not _is_probability(getattr(self, name)):
                raise ValueError(f"{name} must be a number from 0 to 1, not {getattr(self, name)!r}")
        # Each of these was taken as something else: frames=0 as 32, fps=0 as none, fps=-1 as every frame.
        for name in ("frames", "full_detect_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        if self.heatmaps_per_person is not None and not (
                isinstance(self.heatmaps_per_person, int) and not isinstance(self.heatmaps_per_person, bool)
                and self.heatmaps_per_person >= 0):
            raise ValueError(f"heatmaps_per_person must be a whole number (or None), not {self.heatmaps_per_person!r}")
        if self.fps is not None and not (is_number(self.fps) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number (or None), not {self.fps!r}")
        # Unchecked, batch_faces=-1 made every video an "internal error" (the CLI checked; the API did not).
        # 0 meant the default, as None does, and still does.
        for name in ("batch_frames", "batch_faces"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, name, value := int(value) or None)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be a whole number of at least 1 (or None), not {value!r}")
        # The video stage's limits: -5 failed every video, 0 lifted the limit unasked (the CLI refused both).
        for name, whole, optional in (("max_side", True, False), ("max_pixels", True, False),
                                      ("timeout_s", False, True), ("max_duration_s", False, True)):
            value = getattr(self, name)
            if optional and is_number(value) and value == math.inf:  # `--timeout inf`: how the CLI says "none"
                setattr(self, name, value := None)
            if optional and value is None:
                continue
            if whole and isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, name, value := int(value))
            elif not whole and isinstance(value, numbers.Real) and not isinstance(value, bool):
                setattr(self, name, value := float(value))
            kind = int if whole else (int, float)
            if not (isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive {'whole ' if whole else ''}number"
                                 f"{' (or None)' if optional else ''}, not {value!r}")
        from . import runtime

        runtime.check_threads(self.threads)
        self.precision = checked_precision(self.precision)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aggregation"] = asdict(self.aggregation)
        return d

    def config_hash(self) -> str:
        text = json.dumps(self.scoring_config(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def scoring_config(self) -> dict:
        """The options that change scores (the configuration hash for provenance and resume)."""
        keys = ("detector", "weights", "frames", "fps", "max_side", "threshold", "min_face_prob", "precision",
                "full_detect_every", "follow_faces", "keyframes_only")
        d = {k: getattr(self, k) for k in keys}
        d["aggregation"] = asdict(self.aggregation)
        # Where samples fall: results stored on the fixed schedule (before session 53), which a file's author
        # could steer, have none of this and so never resume: such a file is screened again.
        d["sampling"] = SAMPLING
        return d


def _is_probability(value) -> bool:
    if value is None:
        return True
    return is_number(value) and 0.0 <= value <= 1.0  # not NaN


# Model card fields that change face boxes, crops or scores without changing the weights' hash: results made
# under other values must not be resumed. Not the threshold, band and precision thresholds (`deepscan calibrate`
# rewrites those; Scanner._judged_alike compares the threshold itself), nor name, metrics and other notes.
# ``extra`` holds ``net`` (the network is built from it) beside notes that change only with the weights.
_SCORING_CARD_FIELDS = ("architecture", "input_size", "mean", "std", "crop_margin", "output", "temperature",
                        "heatmap", "face_detector", "extra")


def card_hash(card) -> str:
    """Digest of the card's fields that change results (``_SCORING_CARD_FIELDS``); ``model.card_hash``."""
    d = card.to_dict()
    text = json.dumps({k: d.get(k) for k in _SCORING_CARD_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def file_sha256(path, chunk: int = 1 << 20) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


_GIT_COMMIT: list = []


def git_commit() -> str | None:
    """The commit of the deepscan checkout this runs from, if it runs from one."""
    if not _GIT_COMMIT:
        import subprocess

        repo = Path(__file__).resolve().parents[1]
        commit = None
        if (repo / ".git").exists():
            try:
                out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                     timeout=10, stdin=subprocess.DEVNULL)
                commit = out.stdout.strip() or None
            except (OSError, subprocess.SubprocessError):
                commit = None
        _GIT_COMMIT.append(commit)
    return _GIT_COMMIT[0]


def _with_provenance(result: VideoResult, provenance: dict | None) -> bool:
    """Put ``provenance`` (read now) into a resumed ``result`` where it differs from the stored one (as JSON
    holds it); True when it did. None (not asked for, unreadable) keeps what is stored."""
    if provenance is None:
        return False
    fresh, stored = json.loads(dumps_line(provenance)), result.extra.get("provenance")
    if fresh == stored:
        return False
    if isinstance(stored, dict) and _read_less(fresh, stored):
        return False
    result.extra = {**result.extra, "provenance": fresh}  # a new dict: the writer's index holds the old one
    return True


def _read_less(fresh: dict, stored: dict) -> bool:
    """Whether ``fresh`` (provenance read now) saw less than ``stored``: C2PA not checked now (the extra missing,
    a failure) where it was, or errors now where there were none. Such a read never replaces the stored one
    (a signer and a generative-AI declaration would vanish from the report)."""
    unchecked = ("unavailable", "error")
    fresh_c2pa, stored_c2pa = fresh.get("c2pa") or {}, stored.get("c2pa") or {}
    if fresh_c2pa.get("status") in unchecked and stored_c2pa.get("status") not in (None, *unchecked):
        return True
    return bool(fresh.get("errors")) and not stored.get("errors")


def _without_pixels(result: VideoResult) -> VideoResult:
    """A copy of ``result`` whose faces hold no crop or heatmap: what a campaign keeps of each group's screened
    file for the copies after it (the caller's result keeps its pixels; a kept one would hold ~8 MB a video
    for the whole scan)."""
    frames = [replace(fr, faces=[replace(f, crop=None, heatmap=None) for f in fr.faces]) for fr in result.frames]
    return replace(result, frames=frames)


class EvidenceWarning(UserWarning):
    """A result's evidence images (HTML report) could not be written; the result itself was."""


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg[:300]


class _Prefetch:
    """Runs a generator in a thread behind a bounded queue, so decoding overlaps detection."""

    _END = object()

    def __init__(self, gen: Iterator, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._gen = gen
        self._thread = threading.Thread(target=self._run, daemon=True, name="deepscan-decode")
        self._thread.start()

    def _run(self):
        try:
            for item in self._gen:
                if self._stop.is_set():
                    break
                self._q.put(item)
            self._q.put(self._END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._q.put(exc)
        finally:
            if self._stop.is_set():
                self._gen.close()

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()


@dataclass
class _Prepared:
    """What a video's screening needs before its first face is detected (:meth:`Scanner._prepare`)."""

    path: Path
    digest: tuple[str, int] | None = None  # (sha256, size in bytes)
    info: object = None  # VideoInfo from the probe; None when it failed or was not needed
    provenance: dict | None = None
    error: Exception | None = None  # raised when the video's turn comes, so it becomes that file's error record
    seconds: float = 0.0
    previous: VideoResult | None = None  # an earlier run's result that stands for this file (then no probe)


class Scanner:
    def __init__(self, options: ScanOptions | None = None, **overrides):
        self.options = replace(options or ScanOptions(), **overrides)
        self._detector = None
        self._faces = None
        self._device = None
        self._environment = None

    # Heavy objects are built on first use so `Scanner()` is cheap and `deepscan probe` needs no torch.

    @property
    def campaign_groups(self):
        """The groups of the last (or running) ``scan(dedupe=True)``: :class:`deepscan.campaign.Group`."""
        return list(self._last_campaign.groups) if getattr(self, "_last_campaign", None) else []

    @property
    def detector(self):
        if self._detector is None:
            from . import runtime
            from .detector import load_detector

            runtime.configure_threads(self.options.threads)
            self._detector = load_detector(self.options.detector, weights=self.options.weights,
                                           device=self.device, precision=self.options.precision,
                                           batch_size=self.options.batch_faces or (64 if self._on_cuda() else 16))
        return self._detector

    @property
    def device(self):
        """The torch device every model-side stage runs on, chosen once (``options.device``, "auto" = CUDA
        when present), so batch sizes and models never disagree about it."""
        if self._device is None:
            from .detector import select_device

            self._device = select_device(self.options.device)
        return self._device

    def _on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def batch_frames(self) -> int:
        # 16 on CUDA: small enough that face detection starts while the rest of a clip decodes (10-s 720p clip on
        # an H100: 0.555 s against 0.624 s with 32 and 0.611 s with 8).
        return self.options.batch_frames or (16 if self._on_cuda() else 8)

    @property
    def face_finder(self):
        if self._faces is None:
            from .faces import FaceFinder

            settings = self.detector.card.face_detector
            if self.options.min_face_prob is not None:
                settings = replace(settings, min_prob=self.options.min_face_prob)
            self._faces = FaceFinder(settings, device=self.detector.device)
        return self._faces

    @property
    def hwaccel(self) -> str | None:
        choice = self.options.hwaccel
        return None if choice in ("none", "", None) else choice

    @property
    def threshold(self) -> float:
        t = self.options.threshold
        return self.detector.card.threshold_for(self.detector.precision) if t is None else t

    def model_info(self) -> dict:
        if getattr(self, "_card_hash", None) is None:
            self._card_hash = card_hash(self.detector.card)
        return {"name": self.detector.name, "sha256": self.detector.weights_sha256,
                "architecture": self.detector.card.architecture, "precision": self.detector.precision,
                "threshold": self.threshold, "uncertain_band": self.detector.card.uncertain_band,
                "card_hash": self._card_hash}

    @property
    def overlapping(self) -> bool:
        """Whether a batch's classification runs on a worker thread while the next is face-detected: only with
        two threads or more (given one, the two stages side by side would use two)."""
        from . import runtime

        return self.options.overlap and runtime.can_overlap(self.options.threads)

    def environment(self) -> dict:
        if self._environment is None:
            import torch

            from . import runtime
            from .samplekey import key_id, load_sample_key
            from .video import ffmpeg_version

            self._sample_key = load_sample_key()
            self._environment = {
                "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
                "torch": str(torch.__version__), "ffmpeg": ffmpeg_version(), "device": str(self.detector.device),
                "precision": self.detector.precision,
                # Overlapped, the two stages share them (runtime.split_threads); else both use them all.
                "threads": runtime.total_threads(self.options.threads),
                "git_commit": git_commit(),
                # Which key placed the samples (video.sample_shifts): the same key samples a file alike.
                "sample_key": key_id(self._sample_key)}
        return self._environment

    # ------------------------------------------------------------------------------------------ per video
    def scan_video(self, path, progress=None, sha256: tuple[str, int] | None = None) -> VideoResult:
        """Screen one video. ``progress(done_frames, total_frames)`` is called after each decoded batch;
        ``sha256`` passes an already computed (digest, size) of the file."""
        from . import runtime

        path = Path(path)
        callers = runtime.CallersThreads()
        try:
            self._load()
            return self._scan_video(path, lambda: self._prepare(path, digest=sha256), progress)
        finally:
            callers.restore()

    def _load(self) -> None:
        """Load the detector (and with it the device) before any video: a bad detector name, weights file or
        device is the caller's error, raised once, not a failure recorded against every video."""
        self.model_info()
        self.environment()

    def _scan_video(self, path: Path, prepare, progress=None, run: _CampaignRun | None = None) -> VideoResult:
        """``prepare()`` gives the file's :class:`_Prepared`; a failure in it or after becomes the result.
        ``run``: the ``scan(dedupe=True)`` this file belongs to (its groups), else None."""
        result = VideoResult(path=str(path), deepscan_version=__version__, started_at=_utc_now(),
                             config=self.options.scoring_config(), config_hash=self.options.config_hash())
        t0 = time.perf_counter()
        try:
            result.model = self.model_info()
            # The working directory too: a relative path in the results names a file only from there.
            result.environment = {**self.environment(), "cwd": _working_directory()}
            self._scan_into(result, prepare(), progress, run)
        except _CallersError as caller:  # the caller's own (a cancel, a bug), not this video's: theirs to see
            raise caller.__cause__ from None
        except (VideoError, OSError) as exc:
            result.status, result.verdict, result.error = "error", "error", _one_line(exc)
        except Exception as exc:  # noqa: BLE001 - one video's failure must never stop a scan
            result.status, result.verdict = "error", "error"
            result.error = f"internal error ({type(exc).__name__}: {_one_line(exc)})"
            result.extra["traceback"] = traceback.format_exc(limit=8)
        result.timing["total_s"] = time.perf_counter() - t0
        result.finished_at = _utc_now()
        from . import runtime

        runtime.release_memory()
        return result

    def _prepare(self, path: Path, digest: tuple[str, int] | None = None, previous=None) -> _Prepared:
        """Check, hash and probe a file and read its provenance. Never raises: a failure is kept for the
        file's turn. With ``previous`` (path, digest -> an earlier run's result or None), a file that has one
        stops at its hash (``previous`` holds it). Runs on the preparing thread under ``prepare_ahead``, so it
        reads the options and nothing else of the scanner's."""
        opts = self.options
        prepared = _Prepared(path, digest=digest)
        t = time.perf_counter()
        try:
            check_input(path)
            if prepared.digest is None:
                prepared.digest = file_sha256(path)
            if previous is not None:
                prepared.previous = previous(path, prepared.digest)
                if prepared.previous is not None:
                    # Provenance never changes the score, so a result resumes whatever it was read with; but
                    # it is read again (no decode), so other trust anchors or a run that had it off show now.
                    with suppress(Exception):  # unreadable: the result keeps the provenance it was stored with
                        prepared.provenance = self._provenance(path)
                    return prepared
            prepared.info = probe(path, max_pixels=opts.max_pixels, max_duration_s=opts.max_duration_s)
            prepared.provenance = self._provenance(path)
        except Exception as exc:  # noqa: BLE001 - raised again in the file's turn, where it becomes its record
            prepared.error = exc
        finally:
            prepared.seconds = time.perf_counter() - t
        return prepared

    def _provenance(self, path: Path) -> dict | None:
        """What the file claims about its origin (never changes the score); None when the options say not to
        read it."""
        if not self.options.provenance:
            return None
        from .provenance import read_provenance

        return read_provenance(path, trust_anchors=self.options.c2pa_trust_anchors)

    def _scan_into(self, result: VideoResult, prepared: _Prepared, progress=None,
                   run: _CampaignRun | None = None) -> None:
        from .faces import Tracker

        opts = self.options
        path = prepared.path
        if prepared.digest is not None:
            result.sha256, result.size_bytes = prepared.digest
        result.timing["prepare_s"] = prepared.seconds
        if prepared.error is not None:
            raise prepared.error
        info = prepared.info
        result.video = info.to_dict()
        if opts.provenance:
            result.extra["provenance"] = prepared.provenance
        card = self.detector.card
        overlap = self.overlapping
        from . import runtime

        # Overlapped: detection on this thread, classification on the worker, half the threads each. Else both
        # here, on all of them (set again: an overlapping scanner in this process may have halved them).
        runtime.configure_threads(runtime.split_threads(opts.threads)[0] if overlap else opts.threads)
        tracker = Tracker()
        expected = (max(1, int(info.duration_s * opts.fps)) if opts.fps else opts.frames)
        if info.n_frames:  # a short clip gives fewer: a caller's bar stopped at 30-40% (frames=300, 120 there)
            expected = min(expected, info.n_frames)
        timing = {"decode_s": 0.0, "detect_s": 0.0, "classify_s": 0.0}
        frames_out: list[FrameResult] = []
        decode = dict(n_frames=opts.frames, fps=opts.fps, batch_size=self.batch_frames, max_side=opts.max_side,
                      timeout_s=opts.timeout_s, max_pixels=opts.max_pixels, hwaccel=self.hwaccel,
                      sample_seed=file_seed(result.sha256, self._sample_key) if result.sha256 else None)
        hasher = None
        if run is not None:
            from .campaign import SECONDS_PER_HASH, FrameHasher

            hasher = FrameHasher(fps=info.fps)
            source = iter_frames(path, info, hash_fps=1.0 / SECONDS_PER_HASH, track=hasher.set_track, **decode)
            w, h = decode_size(info, opts.max_side)
            if expected * w * h * 3 <= opts.campaign_buffer_mb * 2**20:
                # Decode (and hash) the whole file first, holding its screening frames: a verified copy of a
                # file already screened is then never face-detected, and no file is decoded twice.
                t = time.perf_counter()
                held = [f for f in _hashed(source, hasher) if f.sample]
                timing["decode_s"] += time.perf_counter() - t
                if self._place(run, path, result, info, hasher):
                    result.timing.update(timing)
                    return
                source = _batched(held, self.batch_frames)
            else:  # too many frames to hold: screen while decoding, group afterwards (it is screened anyway)
                source = _batched(_hashed(source, hasher), self.batch_frames)
        else:
            source = iter_frames(path, info, keyframes=None if opts.keyframes_only else False, **decode)
        batches = _Prefetch(source)
        pending = None  # the previous batch's classification, running while this batch is face-detected
        detect_state: dict = {}

        pixels = _KeptPixels(opts.heatmaps_per_person) if opts.keep_heatmaps else None

        def classify(crops):
            t = time.perf_counter()
            out = self.detector.predict(crops)
            return out, time.perf_counter() - t

        def finish(job):
            future, owners, crops = job
            out, seconds = future.result()
            timing["classify_s"] += seconds
            bad = int((~np.isfinite(out.probs)).sum())
            if bad:  # NaN compares false with any threshold: the video would silently pass as "real"
                raise FloatingPointError(f"the detector gave a non-finite score (NaN or inf) for {bad} faces")
            # A Grad-CAM map is scaled to its own peak (1.0 always): only a mask head's peak means something.
            peaks = out.heatmaps.reshape(len(owners), -1).max(axis=1) if self.detector.card.heatmap == "mask_head" \
                else [None] * len(owners)
            for i, (fr, face) in enumerate(owners):
                kept = FaceResult(
                    box=[v / scale for v in face.box], prob=face.prob, track=face.track,
                    score=float(out.probs[i]), landmarks=(face.landmarks / scale).tolist(),
                    heat_peak=None if peaks[i] is None else float(peaks[i]))
                fr.faces.append(kept)
                if pixels is not None:
                    pixels.offer(kept, crops[i], out.heatmaps[i])

        try:
            t_wait = time.perf_counter()
            for batch in batches:
                timing["decode_s"] += time.perf_counter() - t_wait
                scale = batch[0].image.shape[1] / info.width  # decode may have downscaled huge frames
                t = time.perf_counter()
                found = self._find_faces(batch, len(frames_out), detect_state)
                timing["detect_s"] += time.perf_counter() - t
                crops, owners = [], []
                for frame, faces in zip(batch, found, strict=True):
                    tracker.update(faces)
                    fr = FrameResult(index=frame.index, time_s=frame.time_s)
                    for face in faces:
                        crops.append(crop_face(frame.image, face.box, card.crop_margin, card.input_size))
                        owners.append((fr, face))
                    frames_out.append(fr)
                if pending is not None:
                    finish(pending)
                    pending = None
                if crops:
                    stacked = np.stack(crops)
                    pending = ((self._classifier().submit(classify, stacked) if overlap
                                else _finished(classify(stacked))), owners, crops)
                if progress:
                    try:
                        progress(len(frames_out), expected)
                    except Exception as exc:
                        raise _CallersError from exc
                t_wait = time.perf_counter()
            if pending is not None:
                finish(pending)
                pending = None
        finally:
            if pending is not None:
                pending[0].cancel() or pending[0].result()  # never leave a forward pass running behind us
            batches.close()
        result.frames = frames_out
        result.timing.update(timing)
        if len(frames_out) < expected / 2:
            # The samples are times over the stream's span: 100 frames in 4 s and one more an hour later gave
            # one sample ("no_face") from a 101-frame stream, with no word said.
            result.video.setdefault("warnings", []).append(
                f"only {len(frames_out)} of {expected} sampled frames could be taken (the stream's frames are "
                f"unevenly spread in time, or its keyframes far apart): much of the video was not screened")
        score, verdict, tracks = aggregate(frames_out, self.threshold, card.uncertain_band, opts.aggregation)
        result.score, result.verdict, result.tracks = score, verdict, tracks
        result.score_ci95 = score_interval(tracks, opts.aggregation)
        result.status = "no_face" if verdict == "no_face" else "ok"
        if hasher is not None:
            self._place(run, path, result, info, hasher, screened=True)

    def _classifier(self):
        """One worker thread for the detector's forward passes, so classifying one batch of faces overlaps
        face detection on the next (MTCNN leaves a core idle in its Python stages)."""
        if getattr(self, "_classify_pool", None) is None:
            from concurrent.futures import ThreadPoolExecutor

            import torch

            from . import runtime

            self._classify_pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="deepscan-classify",
                initializer=torch.set_num_threads, initargs=(runtime.split_threads(self.options.threads)[1],))
        return self._classify_pool

    def _find_faces(self, batch, first_number: int, state: dict) -> list:
        """Faces of a batch of sampled frames (``first_number``: how many came before it in the video): a full
        search on every ``full_detect_every``-th frame; each frame after it, up to the next, follows the faces
        of the frame before (:meth:`FaceFinder.follow`). When a face is lost, that frame is searched for faces
        at least half the size of the smallest one the last full search found (a full search when it found
        none). ``state`` carries the last faces and that size across batches, so results do not depend on
        batching."""
        every = max(1, self.options.full_detect_every)
        images = [f.image for f in batch]
        if every == 1:
            return self.face_finder.detect(images)
        full = [k for k in range(len(batch)) if (first_number + k) % every == 0]
        found: list = [None] * len(batch)
        for k, faces in zip(full, self.face_finder.detect([images[k] for k in full]), strict=True):
            found[k] = faces
        hint, previous = state.get("hint"), state.get("previous", [])
        for k in range(len(batch)):
            if k in full:
                sizes = [face.size for face in found[k]]
                hint = round(0.5 * min(sizes)) if sizes else None
            else:
                faces = None
                if previous and self.options.follow_faces:
                    faces = self.face_finder.follow(images[k], previous)
                if faces is None or len(faces) < len(previous):  # not followed, or a face lost
                    faces = self.face_finder.detect([images[k]], min_face=hint)[0]
                found[k] = faces
            previous = found[k]
        state["hint"], state["previous"] = hint, previous
        return found

    def _place(self, run: _CampaignRun, path: Path, result: VideoResult, info, hasher,
               screened: bool = False) -> bool:
        """Group a file by the hash made while decoding it. Before screening: fill ``result`` from the
        group representative's and return True when the file is a verified copy that may take its verdict.
        After screening: record the result (a representative's is what later copies inherit)."""
        campaign = run.groups
        placed_before = str(path) in campaign.group_of  # grouped before screening (its frames were held)
        h = campaign.hashes[str(path)] if placed_before else hasher.result()
        h.width, h.height, h.duration_s, h.fps = info.width, info.height, float(info.duration_s), float(info.fps or 0)
        group = campaign.place(path, h)
        if run.hash_cache and result.sha256 and not placed_before:
            from .campaign import save_cached_hash

            try:
                save_cached_hash(run.hash_cache, result.sha256, h)
            except OSError:
                pass  # only a cache: the scan goes on
        if screened:
            if str(path) == group.representative:
                campaign.results[str(path)] = _without_pixels(result)
            result.extra["campaign"] = campaign.info(path)
            return False
        rep = campaign.inheritable(path)
        if rep is None:
            return False
        from .campaign import take_verdict

        take_verdict(result, rep, campaign.info(path))
        return True

    # ----------------------------------------------------------------------------------------- many videos
    def scan(self, paths: Iterable, out_dir=None, progress=None, force: bool = False,
             evidence: bool = False, dedupe: bool = False, groups=None) -> Iterator[VideoResult]:
        """Screen every video found under ``paths``; yield each result as it finishes.

        With ``out_dir``, each result is appended to ``out_dir/results.jsonl`` as it finishes, and a video
        that already has a result there for the same file hash, model hash and configuration hash is not
        screened again (its stored result is yielded, with ``resumed`` set) unless ``force``.
        ``progress`` (optional) is an object with ``start(path)`` and ``update(done, total)``. With
        ``evidence`` (needs ``out_dir`` and ``keep_heatmaps``) each video's face crops, heatmap overlays and
        score timeline go to ``out_dir/assets/`` for :func:`deepscan.html.build_report`.
        With ``dedupe``, copies of the same video are grouped as the scan goes (each file's hash is made from
        the same decode as its screening frames; :class:`deepscan.campaign.StreamingGroups`): a file shown
        pixel by pixel to be a copy of an earlier group's representative takes that result, marked
        ``extra["campaign"]["inherited"]``, and every other file is screened; :attr:`campaign_groups` holds
        the groups afterwards. With precomputed ``groups`` from :func:`deepscan.campaign.plan` (which hashes
        every file first), the same holds for those groups. torch's thread count is the caller's again at
        each result yielded and after the scan (the scan sets its own while it works).
        """
        from . import runtime

        callers = runtime.CallersThreads()
        results = self._scan(paths, out_dir, progress, force, evidence, dedupe, groups)
        try:
            for result in results:
                callers.restore()
                yield result
                callers = runtime.CallersThreads()  # the caller may have set its own while it held the result
        finally:
            results.close()
            callers.restore()

    def _scan(self, paths, out_dir, progress, force: bool, evidence: bool, dedupe: bool, groups):
        if (dedupe or groups) and self.options.keyframes_only:
            raise ValueError("keyframes_only and dedupe exclude each other: grouping decodes every frame")
        self._load()
        writer = ResultsWriter(out_dir) if out_dir else None
        found = list(discover([paths] if isinstance(paths, (str, os.PathLike)) else paths))
        if dedupe and groups is None and len(found) > 1:
            yield from self._scan_streaming(found, writer, progress, force, evidence)
            return
        group_of = {m: g for g in groups or [] for m in g.members}
        if groups:
            from .campaign import screening_order

            found = [Path(p) for p in screening_order(groups)]
        screened: dict[str, VideoResult] = {}
        with closing(self._preparations(found, writer, force, evidence)) as preparations:
            for path, prepare in preparations:
                g = group_of.get(str(path))
                if g is not None and str(path) != g.representative:
                    from .campaign import apply_group_result

                    inherited = apply_group_result(screened.get(g.representative), path, g)
                    if inherited is not None:
                        if progress:
                            progress.start(path)
                        previous = None
                        if writer and not force and inherited.sha256:
                            # An earlier, interrupted run may have written this copy's line already.
                            previous = self._judged_alike(writer.done(inherited.sha256, inherited.model.get("sha256"),
                                                                      inherited.config_hash, path))
                        if previous is not None:
                            previous.resumed = True
                            writer.keep_last(previous)
                            yield previous
                            continue
                        if writer:
                            writer.write(inherited)
                        yield inherited
                        continue
                result = self._screen_one(prepare(), writer, progress, evidence, g)
                if g is not None:
                    screened[str(path)] = _without_pixels(result)
                yield result

    def _scan_streaming(self, found: list[Path], writer, progress, force: bool, evidence: bool):
        """``scan(dedupe=True)``: each file decoded once for its hash and its screening frames, grouped with
        the files before it (:class:`deepscan.campaign.StreamingGroups`), screened unless it is a verified
        copy of a group's screened representative."""
        from .campaign import StreamingGroups

        # Each placed file's frame track (~1 KiB a decoded frame) waits on disk, not in memory, for later files.
        tracks = tempfile.TemporaryDirectory(prefix="deepscan-tracks-")
        # This scan's own groups, handed down its calls: another scan on this Scanner meanwhile (scan_video, a
        # plain scan) neither takes a verdict from them nor joins them.
        run = _CampaignRun(StreamingGroups(spill_dir=tracks.name), writer.dir / "hashes" if writer else None)
        self._last_campaign = run.groups
        try:
            with closing(self._preparations(found, writer, force, evidence, run)) as preparations:
                for _, prepare in preparations:
                    yield self._screen_one(prepare(), writer, progress, evidence, run=run)
        finally:
            tracks.cleanup()

    def _resumed_into_campaign(self, run: _CampaignRun, path: Path, previous: VideoResult,
                               writer, reread: bool = False) -> VideoResult | None:
        """A file finished by an earlier run still has to be grouped for the files after it: its hash comes
        from that run's cache, or (a run without it) from a decode at the hash rate only.

        Group numbers belong to a run: the line it was resumed from names the earlier run's group, which here
        may be another video's. Its ``extra["campaign"]`` is rewritten from this run's groups (an inherited
        verdict stays inherited, from the same file) and that line appended, so results.jsonl and the report
        group it with this run's files. None when an inherited verdict would head a group of this run (the file
        it was taken from not met yet, or no longer a match): no screened file stands behind it here, so the
        file is screened itself."""
        from .campaign import load_cached_hash, video_hash

        campaign = run.groups
        was = previous.extra.get("campaign") or {}
        h = load_cached_hash(run.hash_cache, previous.sha256) if run.hash_cache else None
        if h is None:
            try:
                h = video_hash(path, max_pixels=self.options.max_pixels,
                               max_duration_s=self.options.max_duration_s)
            except (VideoError, OSError):
                h = None
        if h is not None:
            campaign.place(path, h)
            now = campaign.info(path)
            if was.get("inherited") and now["is_representative"]:
                return None
            if was.get("inherited"):
                now = {**now, "inherited": True, "screened_as": was.get("screened_as")}
            elif now["is_representative"]:
                campaign.results[str(path)] = previous
        elif was.get("inherited"):  # in no group of this run, but still another file's verdict
            now = {"group": None, "inherited": True, "screened_as": was.get("screened_as")}
        else:
            now = None
        previous.extra = {k: v for k, v in previous.extra.items() if k != "campaign"}  # not the writer's dict
        if now is not None:
            previous.extra["campaign"] = now
        # Compared as stored: a name that is not UTF-8 is kept escaped (json_safe), and compared raw it
        # differed on every rerun, appending its line each time.
        if json_safe(now) == (was or None) and not reread:
            writer.keep_last(previous)  # the stored line, appended again where another run wrote a later one
        else:
            writer.write(previous)
        return previous

    def _previous(self, path: Path, digest: tuple[str, int], writer, evidence: bool,
                  run: _CampaignRun | None = None) -> VideoResult | None:
        """An earlier run's result that stands for this file: same content, model and configuration (and its
        evidence, when evidence is asked for). Called from the preparing thread too: the detector is loaded
        and the campaign set before a scan starts one."""
        config = self.options.config_hash()
        previous = self.stored_result(writer, path, digest)
        if previous is None and run is not None:
            previous = self._judged_alike(writer.done(digest[0], self.detector.weights_sha256, config + "+campaign",
                                                      path))
        if previous is not None and (not evidence or _evidence_on_disk(previous, writer.dir)
                                     or (previous.extra.get("campaign") or {}).get("inherited")):
            return previous
        return None

    def stored_result(self, writer, path, digest: tuple[str, int]) -> VideoResult | None:
        """``writer``'s finished result for this file (``digest``: its sha256 and size) if it stands for a scan
        now: same content, weights and scoring options, judged at the same threshold, band and precision."""
        return self._judged_alike(writer.done(digest[0], self.detector.weights_sha256, self.options.config_hash(),
                                              path))

    def _judged_alike(self, previous: VideoResult | None) -> VideoResult | None:
        # `deepscan calibrate` moves a card's threshold without touching its weights (so their hash, in the
        # resume key, stays): a result judged at the old threshold must not be handed back as if judged now.
        if previous is None:
            return None
        then, now = previous.model or {}, self.model_info()
        # The card hash: a card edited in what changes scores (temperature, crops, face detector) but not in
        # its weights. A line from before it was recorded has none, so it is screened again.
        same = (then.get("card_hash") == now["card_hash"]
                and then.get("precision") == now["precision"] and then.get("uncertain_band") == now["uncertain_band"]
                and isinstance(then.get("threshold"), (int, float))
                and abs(then["threshold"] - now["threshold"]) <= 1e-6)
        # Sampled under another key (a shared key is how an examiner repeats a scan): other frames, so screened
        # again (a rerun into the folder kept the other key's results).
        same = same and (previous.environment or {}).get("sample_key") == self.environment()["sample_key"]
        return previous if same else None

    def _preparations(self, found: list[Path], writer, force: bool, evidence: bool,
                      run: _CampaignRun | None = None) -> Iterator[tuple]:
        """Each file of ``found`` in order with a call that returns its :class:`_Prepared` (:meth:`_prepare`;
        a file an earlier run finished stops at its hash). With ``prepare_ahead`` the next file is prepared on
        a worker thread while the caller screens this one; else each call prepares its file then."""
        previous = None
        if writer and not force:
            def previous(path, digest):
                return self._previous(path, digest, writer, evidence, run)
        if not self.options.prepare_ahead or len(found) < 2:
            for path in found:
                yield path, lambda path=path: self._prepare(path, previous=previous)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepscan-prepare") as pool:
            upcoming = pool.submit(self._prepare, found[0], previous=previous)
            for path, after in zip(found, [*found[1:], None], strict=True):
                current = upcoming
                if after is not None:
                    upcoming = pool.submit(self._prepare, after, previous=previous)
                yield path, current.result

    def _screen_one(self, prepared: _Prepared, writer, progress, evidence: bool, group=None,
                    run: _CampaignRun | None = None) -> VideoResult:
        path = prepared.path
        if progress:
            progress.start(path)
        previous = prepared.previous
        if previous is not None:
            previous.resumed = True
            reread = _with_provenance(previous, prepared.provenance)
            if run is None:
                if reread:
                    writer.write(previous)  # the same result, with what the file claims as read now
                else:
                    writer.keep_last(previous)  # a resumed result is only ever found through a writer
                return _campaign_marked(previous, group)
            resumed = self._resumed_into_campaign(run, path, previous, writer, reread)  # with this run's group
            if resumed is not None:
                return resumed
            prepared = self._prepare(path, digest=prepared.digest)  # it stopped at the hash: probe it now
        result = self._scan_video(path, lambda: prepared, progress.update if progress else None, run)
        inherited = (result.extra.get("campaign") or {}).get("inherited")
        if writer and evidence and not inherited:
            from .evidence import save_evidence

            try:
                result.extra["evidence"] = save_evidence(result, writer.dir)
            except OSError as exc:  # a full disk must not lose the result itself
                result.extra["evidence_error"] = _one_line(exc)
                warnings.warn(f"{path}: evidence images not written ({result.extra['evidence_error']}); the "
                              "result is kept and the file is screened again by the next --html run",
                              EvidenceWarning, stacklevel=2)
        _campaign_marked(result, group)
        if writer:
            writer.write(result)
        return result


@dataclass
class _CampaignRun:
    """One ``scan(dedupe=True)``'s grouping state: its groups, and where it caches each file's hash (so a
    resumed scan need not decode finished files again)."""

    groups: object  # deepscan.campaign.StreamingGroups
    hash_cache: Path | None


class _KeptPixels:
    """Gives each person's ``limit`` most suspicious faces their crop and heatmap (``limit`` None: every face),
    taking them back from a face that drops out of that set: a person's pixels stay bounded however many of
    their faces a long video has. Copies are kept, not views, which would hold a whole batch's array."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.kept: dict[int, list] = {}  # track -> heap of (score, n, FaceResult)
        self.n = 0

    def offer(self, face: FaceResult, crop: np.ndarray, heatmap: np.ndarray) -> None:
        if self.limit is not None:
            heap = self.kept.setdefault(face.track, [])
            self.n += 1
            if len(heap) >= self.limit:
                if not heap or face.score <= heap[0][0]:
                    return
                dropped = heapq.heappop(heap)[2]
                dropped.crop = dropped.heatmap = None
            heapq.heappush(heap, (face.score, self.n, face))
        face.crop, face.heatmap = np.array(crop), heatmap.astype(np.float16)


def _finished(value) -> Future:
    future = Future()
    future.set_result(value)
    return future


def _hashed(batches, hasher) -> Iterator:
    """The frames of ``iter_frames(hash_fps=...)`` batches, each fed to ``hasher`` on the way (hash frames
    and their neighbours)."""
    for batch in batches:
        for frame in batch:
            hasher.add(frame.image, frame.time_s, hashed=frame.hashed)
            yield frame


def _batched(frames, size: int) -> Iterator[list]:
    """The screening samples among ``frames``, in batches of ``size``."""
    batch = []
    for frame in frames:
        if frame.sample:
            batch.append(frame)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def _campaign_marked(result: VideoResult, group) -> VideoResult:
    if group is not None:
        from .campaign import mark_screened

        mark_screened(result, group)
    return result


def _working_directory() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # removed while the scan runs
        return None


def _stored_cwd(d: dict) -> str | None:
    cwd = (d.get("environment") if isinstance(d.get("environment"), dict) else {}).get("cwd")
    return cwd if isinstance(cwd, str) else None


def _where_stored(d: dict) -> list[str]:
    """Where a results line's file may be: a relative path taken from the working directory the line was
    scanned in (a scan from another directory would miss it), then as it is (a line from before the directory
    was recorded, or a folder since moved or mounted elsewhere)."""
    path, cwd = d["path"], _stored_cwd(d)
    return [os.path.join(cwd, path), path] if cwd and not os.path.isabs(path) else [path]


def _identity_of_stored(d: dict) -> tuple[int, int] | None:
    return next((key for key in map(file_identity, _where_stored(d)) if key is not None), None)


def _another_file_so_named(path, d: dict) -> bool:
    """Whether ``path`` is another file than the one a results line of the same (relative) name was scanned
    as: both can be stat'ed, they are different files, in different places (a file replaced in place keeps its
    name)."""
    stored, here = _identity_of_stored(d), file_identity(path)
    return (stored is not None and here is not None and stored != here
            and os.path.abspath(_where_stored(d)[0]) != os.path.abspath(path))


class ResultsWriter:
    """Appends one JSON line per video; each line is written whole and fsynced, or not at all.

    On opening an existing file it keeps the finished results (the resume index) and cuts off a trailing
    partial line, which only a crash in the middle of a write could leave: appends and that cut hold an
    exclusive lock on the file (``flock``), so a scan opening the folder never takes another process's line
    being written for a leftover. Readers take the last line for each path
    (:func:`deepscan.html.read_results`), so :meth:`keep_last` appends a resumed result again when another run
    wrote a later line for its path. Its lookups and writes may come from two threads (a scan prepares the
    next file while it writes this one's result): one lock orders them.
    """

    def __init__(self, out_dir):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "results.jsonl"
        self._done: dict[tuple, dict] = {}
        self._last: dict[str, dict] = {}  # path -> the dict of its last line
        self._by_file: dict[tuple, str] | None = None  # (device, inode) -> the first name a file has here
        self._lock = threading.RLock()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        # Read-only to lock and read (a folder one may read but not write still resumes); opened for writing
        # only to cut a crash's leftover, still under the lock.
        with open(self.path, "rb") as fh, _file_lock(fh.fileno()):
            raw = fh.read()
            if raw and not raw.endswith(b"\n"):
                keep = raw.rfind(b"\n") + 1
                with open(self.path, "r+b") as writable:
                    writable.truncate(keep)
                raw = raw[:keep]
        for line in raw.splitlines():
            d = result_line(line)  # a line that is not a result (hand-edited, another tool's) is skipped
            if d is not None:
                self._remember(d)

    def _remember(self, d: dict) -> None:
        if self._by_file is not None and d["path"] not in self._last:
            self._index_by_file(d)
        self._last[d["path"]] = d
        model = d.get("model")
        key = (d.get("sha256"), model.get("sha256") if isinstance(model, dict) else None, d.get("config_hash"))
        if d.get("status") in ("ok", "no_face") and d.get("sha256") and all(
                k is None or isinstance(k, str) for k in key):
            self._done.setdefault(key, {})[d["path"]] = d

    def _stored(self, sha256, model_sha256, config_hash, path=None) -> dict | None:
        by_path = self._done.get((sha256, model_sha256, config_hash)) or {}
        if path is None:
            return next(iter(by_path.values()), None)
        return by_path.get(self.first_name(str(path)))

    def first_name(self, path: str) -> str:
        """The name this file has in the results: ``path``, unless the same file (absolute then, relative or
        through a link now) has lines under another name. Resumed or screened again, it is then kept under
        that first name, so the report lists it once. A copy elsewhere is another file."""
        with self._lock:
            return self._first_name(path)

    def _first_name(self, path: str) -> str:
        name = printable(path)
        if name in self._last:
            if not _another_file_so_named(path, self._last[name]):
                return name
            name = printable(os.path.abspath(path))  # in/a.mp4 from /backup is not in/a.mp4 from /data
            if name in self._last:
                return name
        key = file_identity(path)
        if key is None:
            return name
        if self._by_file is None:  # built on the first name not found as it is: one stat per stored path
            self._by_file = {}
            for d in self._last.values():
                self._index_by_file(d)
        return self._by_file.get(key, name)

    def _index_by_file(self, d: dict) -> None:
        key = _identity_of_stored(d)
        if key is not None:
            self._by_file.setdefault(key, d["path"])

    def done(self, sha256: str, model_sha256: str, config_hash: str, path=None) -> VideoResult | None:
        """The finished result for this content, model and configuration: under ``path`` when given (a
        byte-identical copy under another name needs a line of its own), else under any name."""
        with self._lock:
            d = self._stored(sha256, model_sha256, config_hash, path)
        if not d:
            return None
        try:
            return VideoResult.from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError):  # a malformed line: screen the file again
            return None

    def keep_last(self, result: VideoResult) -> None:
        """Make a resumed ``result`` (from :meth:`done`) the last line for its path again: a run with other
        settings may have written a later one, which the report would show instead. Its stored line is
        appended unchanged."""
        with self._lock:
            d = self._stored(result.sha256, (result.model or {}).get("sha256"), result.config_hash, result.path)
            if d is not None and self._last.get(d["path"]) is not d:
                self._append(d)

    def write(self, result: VideoResult) -> None:
        with self._lock:
            first = self._first_name(result.path)
            if first != printable(result.path):
                result.path = first
                if first in self._last:  # relative to the directory its lines were scanned in, not this one
                    result.environment = {**result.environment, "cwd": _stored_cwd(self._last[first])}
            self._append(result.to_dict())

    def _append(self, d: dict) -> None:
        line = (dumps_line(d) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with _file_lock(fd):
                self._append_locked(fd, line)
        finally:
            os.close(fd)
        self._remember(d)  # only once the whole line is on disk

    def _append_locked(self, fd: int, line: bytes) -> None:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:  # a write may take fewer bytes than given (a signal, a file size limit)
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, f"could not write {self.path}")
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            # No partial line may stay: the next line would be glued to it and both lost to readers.
            with suppress(OSError):
                os.ftruncate(fd, start)
            raise


@contextmanager
def _file_lock(fd: int):
    """An exclusive advisory lock on an open file for the block (flock: every deepscan process writing one
    results.jsonl takes it; where there is no flock, or a filesystem refuses it, nothing: the writes go on
    unlocked, as they did before there was a lock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        yield  # some network mounts have no locks
        return
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _evidence_on_disk(result: VideoResult, out_dir: Path) -> bool:
    """Whether ``result`` has evidence images and every one it names is still in ``out_dir`` (a results file
    copied without its assets/, or images deleted, is screened again for a report that shows them)."""
    from .evidence import image_paths

    ev = result.extra.get("evidence")
    return isinstance(ev, dict) and all((out_dir / name).is_file() for name in image_paths(ev))


def scan(paths, out_dir=None, dedupe: bool = False, **options) -> Iterator[VideoResult]:
    """Python API: ``for result in deepscan.scan("clips/", frames=16): ...``."""
    return Scanner(ScanOptions(**options)).scan(paths, out_dir=out_dir, dedupe=dedupe)
