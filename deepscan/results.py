"""Typed results with a stable JSON form (one ``VideoResult`` per input, one line of ``results.jsonl``)."""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = "1.0"


def results_schema() -> dict:
    """The JSON schema of one ``results.jsonl`` line (shipped in the package, versioned with SCHEMA_VERSION)."""
    from importlib.resources import files

    return json.loads(files("deepscan").joinpath(f"schema/results-{SCHEMA_VERSION}.json").read_text())


def printable(text: str) -> str:
    """A file name that was not valid UTF-8 arrives with surrogate escapes, which JSON cannot encode: show
    those bytes as \\xNN instead of failing the write."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Characters that make a name read as another (U+202E turns "invoice\u202egpj.mp4" into "invoice4pm.jpg"),
# hide in it (zero-width) or break the line it is shown on. Joiners, which scripts need, are left alone.
_DECEPTIVE = {0x061C, 0x200B, 0x200E, 0x200F, 0x2060, 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def shown(text: str) -> str:
    """``text`` as shown to a person (terminal, report): control, line-breaking and direction-changing
    characters as escapes (``\\n``, ``\\u202e``), so the name shown is the name on disk. Stored results keep
    the name as it is."""
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if ord(ch) in _DECEPTIVE or unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
                   for ch in printable(str(text)))


def is_number(value) -> bool:
    """An int or float, not a bool (which Python counts as an int): what a number read from JSON or TOML must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verdict_cuts(threshold, band) -> tuple:
    """Where a verdict changes: the threshold and, with a band, the start of the uncertain band below it."""
    return (threshold, threshold - band) if is_number(threshold) and is_number(band) else (threshold,)


def decimals_to_compare(scores_and_cuts, least: int = 3, most: int = 6) -> int:
    """The fewest decimals (``least`` to ``most``) at which every score, as printed, sits on the same side of each
    of its cuts (threshold, start of the uncertain band), as printed, as it does unprinted: an ``uncertain`` 0.8953
    beside a threshold of 0.8954 must not read as 0.895 against 0.895. Scores and cuts are then printed alike."""
    def same_side(score: float, cut: float, digits: int) -> bool:
        return (float(f"{score:.{digits}f}") >= float(f"{cut:.{digits}f}")) == (score >= cut)

    pairs = [(s, c) for s, cuts in scores_and_cuts if is_number(s) for c in cuts if is_number(c)]
    for digits in range(least, most):
        if all(same_side(s, c, digits) for s, c in pairs):
            return digits
    return most


def result_line(line: str | bytes) -> dict | None:
    """One ``results.jsonl`` line as its object, or None for a line that is not a result: cut short by a crash,
    not JSON, or JSON without a string ``path`` (hand-edited, another tool's). Every reader skips the same lines."""
    try:
        d = json.loads(line)
    except ValueError:
        return None
    return d if isinstance(d, dict) and isinstance(d.get("path"), str) else None


def read_result_lines(path) -> tuple[list[dict], int]:
    """Every result object of a ``results.jsonl`` in file order, and the number of other non-blank lines."""
    lines, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for text in fh:
            if not text.strip():
                continue
            d = result_line(text)
            if d is None:
                bad += 1
            else:
                lines.append(d)
    return lines, bad


def scores_by_track(frames) -> dict[int, list[tuple[float, float]]]:
    """Each person's (track's) faces as (time_s, score), in frame order: what scoring, the timeline plot and a
    result read back from its line group the same way."""
    per_track: dict[int, list[tuple[float, float]]] = {}
    for frame in frames:
        for face in frame.faces:
            per_track.setdefault(face.track, []).append((frame.time_s, face.score))
    return per_track


def json_safe(value):
    """``value`` with every NaN or infinite float replaced by None: JSON has no such numbers (Python would write
    ``NaN``, which other readers reject), and a probe or container tag may hold one. Scores never do: the
    scanner makes a non-finite face score an error result. Every text is :func:`printable`: a file name that
    is not UTF-8 reaches more fields than ``path`` (a campaign group's representative), and one such name
    stopped the whole scan when its line could not be encoded."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps_line(d: dict) -> str:
    """The one JSON form of a result (``results.jsonl`` and ``--json``); refuses NaN rather than write it."""
    return json.dumps(json_safe(d), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

VERDICTS = ("fake", "uncertain", "real", "no_face", "error")


@dataclass
class FaceResult:
    box: list[float]  # x1, y1, x2, y2 in upright full-resolution pixels
    prob: float  # face-detector confidence
    track: int
    score: float  # fake probability from the detector
    landmarks: list[list[float]] | None = None
    heat_peak: float | None = None  # maximum of the manipulation heatmap
    heatmap: np.ndarray | None = field(default=None, repr=False)  # crop-space map in [0,1]; API only, not JSON
    crop: np.ndarray | None = field(default=None, repr=False)  # the detector's input crop; API only

    def to_dict(self) -> dict:
        d = {"box": [round(float(v), 2) for v in self.box], "prob": round(float(self.prob), 5),
             "track": self.track, "score": round(float(self.score), 6)}
        if self.landmarks is not None:
            d["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]
        if self.heat_peak is not None:
            d["heat_peak"] = round(float(self.heat_peak), 4)
        return d


@dataclass
class FrameResult:
    index: int
    time_s: float
    faces: list[FaceResult] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        return max((f.score for f in self.faces), default=None)

    def to_dict(self) -> dict:
        return {"index": self.index, "time_s": round(float(self.time_s), 4),
                "faces": [f.to_dict() for f in self.faces]}


@dataclass
class TrackResult:
    id: int
    n_faces: int
    score: float
    verdict: str
    first_time_s: float
    last_time_s: float
    counted: bool  # False when too few sightings to take part in the video verdict
    scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.id, "n_faces": self.n_faces, "score": round(float(self.score), 6),
                "verdict": self.verdict, "first_time_s": round(self.first_time_s, 4),
                "last_time_s": round(self.last_time_s, 4), "counted": self.counted}


@dataclass
class VideoResult:
    path: str
    sha256: str | None = None
    size_bytes: int | None = None
    status: str = "error"  # ok | no_face | error
    score: float | None = None
    score_ci95: tuple[float, float] | None = None  # bootstrap over faces (see scoring.score_interval)
    verdict: str = "error"
    error: str | None = None
    model: dict = field(default_factory=dict)  # name, sha256
    video: dict | None = None  # what probe saw
    frames: list[FrameResult] = field(default_factory=list)
    tracks: list[TrackResult] = field(default_factory=list)
    timing: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    config_hash: str | None = None  # hash of the options that change scores (resume key with the two sha256s)
    environment: dict = field(default_factory=dict)  # host, device, versions: where and how it was run
    deepscan_version: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    extra: dict = field(default_factory=dict)
    resumed: bool = field(default=False, repr=False)  # taken from an earlier run's results.jsonl; not in JSON

    @property
    def n_faces(self) -> int:
        return sum(len(f.faces) for f in self.frames)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def flagged(self) -> bool:
        return self.verdict == "fake"

    def to_dict(self) -> dict:
        return json_safe({
            "schema_version": SCHEMA_VERSION,
            "path": printable(self.path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "status": self.status,
            "score": None if self.score is None else round(float(self.score), 6),
            "score_ci95": None if self.score_ci95 is None else [round(float(v), 4) for v in self.score_ci95],
            "verdict": self.verdict,
            "error": self.error,
            "model": self.model,
            "n_frames": self.n_frames,
            "n_faces": self.n_faces,
            "n_tracks": len(self.tracks),
            "tracks": [t.to_dict() for t in self.tracks],
            "frames": [f.to_dict() for f in self.frames],
            "video": self.video,
            "timing": {k: round(v, 4) for k, v in self.timing.items()},
            "config": self.config,
            "config_hash": self.config_hash,
            "environment": self.environment,
            "deepscan_version": self.deepscan_version,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            **({"extra": self.extra} if self.extra else {}),
        })

    def to_json(self) -> str:
        return dumps_line(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> VideoResult:
        frames = [FrameResult(index=f["index"], time_s=f["time_s"],
                              faces=[FaceResult(box=x["box"], prob=x["prob"], track=x["track"], score=x["score"],
                                                landmarks=x.get("landmarks"), heat_peak=x.get("heat_peak"))
                                     for x in f["faces"]]) for f in d.get("frames", [])]
        # A track's face scores are not stored twice: they are its faces' scores in frame order, as aggregated.
        seen = scores_by_track(frames)
        tracks = [TrackResult(id=t["id"], n_faces=t["n_faces"], score=t["score"], verdict=t["verdict"],
                              first_time_s=t["first_time_s"], last_time_s=t["last_time_s"], counted=t["counted"],
                              scores=[s for _, s in seen.get(t["id"], [])])
                  for t in d.get("tracks", [])]
        return cls(path=d["path"], sha256=d.get("sha256"), size_bytes=d.get("size_bytes"), status=d["status"],
                   score=d.get("score"), score_ci95=tuple(d["score_ci95"]) if d.get("score_ci95") else None,
                   verdict=d["verdict"], error=d.get("error"), model=d.get("model") or {},
                   video=d.get("video"), frames=frames, tracks=tracks, timing=d.get("timing") or {},
                   config=d.get("config") or {}, config_hash=d.get("config_hash"),
                   environment=d.get("environment") or {}, deepscan_version=d.get("deepscan_version", ""),
                   started_at=d.get("started_at"), finished_at=d.get("finished_at"), extra=d.get("extra") or {})
