"""Video stage: find ffmpeg, probe a file, and stream sampled frames as RGB arrays.

Frames are chosen inside ffmpeg by a ``select`` filter on presentation time, so only sampled frames cross the
pipe and variable-frame-rate files are sampled by time rather than by a frame count that may not exist.
ffmpeg's default autorotation applies the display-matrix rotation, so frames arrive upright. Inputs are
always passed as ``file:<absolute path>`` with a file-only protocol whitelist: a name starting with ``-`` can
never be read as an option, and a playlist cannot make ffmpeg fetch anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

# Containers a clip from a social platform comes in; anything else (playlists, concat lists, images,
# raw devices, network formats) is refused before ffmpeg reads a byte of it.
ALLOWED_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "flv",
    "mpegts",
    "mpeg",
    "ogg",
    "asf",
    "h264",
    "hevc",
    "m4v",
    "mpegvideo",
    "ivf",
    "obu",
    "rawvideo_never",
)
VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
    ".3gp", ".3g2", ".ogv", ".wmv", ".asf", ".h264", ".264", ".hevc", ".h265", ".ivf", ".obu",
}


class VideoError(RuntimeError):
    """A file that cannot be screened as a video; the message is meant for a person."""


@dataclass
class VideoInfo:
    path: str
    container: str
    codec: str
    width: int  # upright (after rotation)
    height: int
    fps: float
    duration_s: float
    n_frames: int | None  # from the container when it says; else an estimate from duration × fps
    rotation: int  # degrees clockwise the decoder turns frames to make them upright
    start_time_s: float = 0.0
    bit_rate: int | None = None
    pix_fmt: str | None = None
    tags: dict = field(default_factory=dict)
    probed_with: str = "ffmpeg"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Frame:
    index: int  # frame number in the stream (exact for constant frame rate, nearest for variable)
    time_s: float  # presentation time from the start of the stream
    image: np.ndarray  # H×W×3 uint8 RGB, upright


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """$DEEPSCAN_FFMPEG, else the system ffmpeg, else the binary shipped in the imageio-ffmpeg wheel."""
    env = os.environ.get("DEEPSCAN_FFMPEG")
    if env:
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001
        raise VideoError("no ffmpeg found: install ffmpeg or the imageio-ffmpeg package") from exc


@lru_cache(maxsize=1)
def ffprobe_exe() -> str | None:
    beside = Path(ffmpeg_exe()).with_name("ffprobe")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ffprobe")


@lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    try:
        out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True,
                             timeout=20).stdout
        return out.splitlines()[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ffmpeg_input(path) -> str:
    """The input URL for ffmpeg: absolute and behind the file protocol (never an option, never a URL)."""
    return "file:" + str(Path(path).absolute())


# --------------------------------------------------------------------------------------------- probing
_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)(?:,\s*start:\s*(-?[\d.]+))?(?:,\s*bitrate:\s*(\d+))?")
_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<rest>.*)")
_DIMS = re.compile(r"(?<![\w.])(\d{1,6})x(\d{1,6})(?![\w.])")
_FPS = re.compile(r"([\d.]+)(k?) fps")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
_ROTATE = re.compile(r"display ?matrix:? rotation of (-?[\d.]+) degrees", re.I)
_ROTATE_TAG = re.compile(r"^\s*rotate\s*:\s*(-?\d+)", re.M)
_INPUT = re.compile(r"Input #0, (.+?), from ")


def _rate(match) -> float:
    value = float(match.group(1))
    return value * 1000 if match.group(2) == "k" else value


def normalise_rotation(degrees: float) -> int:
    """Display-matrix angle (counter-clockwise, ffmpeg's convention) → clockwise turn in {0, 90, 180, 270}."""
    return int(round(-degrees / 90.0)) * 90 % 360


def parse_ffmpeg_banner(text: str, path: str = "") -> VideoInfo:
    """Read what ``ffmpeg -i`` prints about its input (used when ffprobe is absent)."""
    container_m = _INPUT.search(text)
    stream_m = _STREAM.search(text)
    if not container_m:
        raise VideoError(_explain_ffmpeg_failure(text))
    if not stream_m:
        raise VideoError("no video stream (audio-only or not a video)")
    rest = stream_m.group("rest")
    codec = rest.split(",")[0].split()[0].strip()
    dims = _DIMS.search(rest)
    if not dims:
        raise VideoError("video stream has no frame size")
    width, height = int(dims.group(1)), int(dims.group(2))
    pix_fmt = None
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) > 1:
        pix_fmt = parts[1].split("(")[0].strip() or None
    fps_m = _FPS.search(rest) or _TBR.search(rest)
    fps = _rate(fps_m) if fps_m else 0.0
    dur_m = _DURATION.search(text)
    duration = start = 0.0
    bitrate = None
    if dur_m:
        h, m, s = dur_m.group(1, 2, 3)
        duration = int(h) * 3600 + int(m) * 60 + float(s)
        start = float(dur_m.group(4) or 0.0)
        bitrate = int(dur_m.group(5)) * 1000 if dur_m.group(5) else None
    rot_m = _ROTATE.search(text)
    rotation = normalise_rotation(float(rot_m.group(1))) if rot_m else 0
    if not rot_m and (tag := _ROTATE_TAG.search(text)):
        rotation = int(tag.group(1)) % 360
    if rotation in (90, 270):
        width, height = height, width
    n_frames = int(round(duration * fps)) if duration and fps else None
    return VideoInfo(path=path, container=container_m.group(1), codec=codec, width=width, height=height,
                     fps=fps, duration_s=duration, n_frames=n_frames, rotation=rotation, start_time_s=start,
                     bit_rate=bitrate, pix_fmt=pix_fmt, probed_with="ffmpeg")


def parse_ffprobe_json(data: dict, path: str = "") -> VideoInfo:
    fmt = data.get("format") or {}
    videos = [s for s in data.get("streams", []) if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    if not fmt:
        raise VideoError("not a recognisable media file")
    if not videos:
        raise VideoError("no video stream (audio-only or not a video)")
    s = videos[0]

    def ratio(txt):
        try:
            num, den = (float(v) for v in str(txt).split("/"))
            return num / den if den else 0.0
        except ValueError:
            return 0.0

    fps = ratio(s.get("avg_frame_rate")) or ratio(s.get("r_frame_rate"))
    duration = float(s.get("duration") or fmt.get("duration") or 0.0)
    rotation = 0
    for side in s.get("side_data_list", []) or []:
        if "rotation" in side:
            rotation = normalise_rotation(float(side["rotation"]))
    if not rotation and (tag := (s.get("tags") or {}).get("rotate")):
        rotation = int(tag) % 360
    width, height = int(s.get("width") or 0), int(s.get("height") or 0)
    if not width or not height:
        raise VideoError("video stream has no frame size")
    if rotation in (90, 270):
        width, height = height, width
    nb = s.get("nb_frames")
    n_frames = int(nb) if nb and str(nb).isdigit() else (int(round(duration * fps)) if duration and fps else None)
    return VideoInfo(path=path, container=fmt.get("format_name", ""), codec=s.get("codec_name", ""), width=width,
                     height=height, fps=fps, duration_s=duration, n_frames=n_frames, rotation=rotation,
                     start_time_s=float(s.get("start_time") or fmt.get("start_time") or 0.0),
                     bit_rate=int(fmt["bit_rate"]) if str(fmt.get("bit_rate", "")).isdigit() else None,
                     pix_fmt=s.get("pix_fmt"), tags=dict(fmt.get("tags") or {}), probed_with="ffprobe")


def _explain_ffmpeg_failure(stderr: str) -> str:
    text = stderr.lower()
    if "invalid data found" in text:
        return "not a video file ffmpeg can read (invalid data)"
    if "moov atom not found" in text:
        return "truncated or incomplete MP4 (moov atom missing)"
    if "permission denied" in text:
        return "permission denied"
    if "no such file" in text:
        return "file not found"
    if "protocol not on whitelist" in text or "not in whitelist" in text:
        return "refused: the file points at other files or network resources"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith(" ")]
    return ("ffmpeg could not read it: " + lines[-1][:200]) if lines else "ffmpeg could not read it"


def check_container(info: VideoInfo) -> None:
    if info.container not in ALLOWED_DEMUXERS:
        raise VideoError(f"refused container format {info.container!r} (not a video container)")


def probe(path, timeout_s: float = 60.0) -> VideoInfo:
    """What the video stage sees: container, codec, upright size, fps, duration, frame count, rotation."""
    p = Path(path)
    if not p.exists():
        raise VideoError("file not found")
    if not os.access(p, os.R_OK):
        raise VideoError("permission denied")
    if p.is_file() and p.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    url = ffmpeg_input(p)
    probe_bin = ffprobe_exe()
    try:
        if probe_bin:
            proc = subprocess.run(
                [probe_bin, "-v", "error", "-protocol_whitelist", "file", "-print_format", "json",
                 "-show_format", "-show_streams", url],
                capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise VideoError(_explain_ffmpeg_failure(proc.stderr.decode("utf-8", "replace")))
            info = parse_ffprobe_json(json.loads(proc.stdout or b"{}"), str(path))
        else:
            proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-protocol_whitelist", "file", "-i", url],
                                  capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
            info = parse_ffmpeg_banner(proc.stderr.decode("utf-8", "replace"), str(path))
    except subprocess.TimeoutExpired as exc:
        raise VideoError(f"probing took longer than {timeout_s:.0f} s") from exc
    check_container(info)
    return info


# -------------------------------------------------------------------------------------------- sampling
def sample_interval(info: VideoInfo, n_frames: int | None = 32, fps: float | None = None) -> float:
    """Seconds between sampled frames: ``1/fps`` when a rate is asked for, else duration spread over N."""
    if fps:
        return 1.0 / fps
    n = max(1, int(n_frames or 32))
    if info.duration_s > 0:
        return info.duration_s / n
    return 1.0 / (info.fps or 25.0)


def select_expression(step_s: float, offset_s: float, start_s: float) -> str:
    """ffmpeg ``select`` expression taking the first frame at or after each target time.

    Targets are ``offset + k·step`` (relative to the stream start). Register 0 holds the next target; after a
    hit it jumps past the current time, so a gap in a variable-frame-rate stream never yields a burst of frames.
    """
    # A 0.1 ms tolerance absorbs timestamps like 0.59999 for a 0.6 s target (time bases are rarely decimal).
    rel = f"(t-{start_s:.6f}+0.0001)"
    return (f"if(gte({rel}\\,ld(0)+{offset_s:.6f})\\,"
            f"st(0\\,(floor(({rel}-{offset_s:.6f})/{step_s:.6f})+1)*{step_s:.6f})*0+1\\,0)")


def decode_size(info: VideoInfo, max_side: int | None) -> tuple[int, int]:
    w, h = info.width, info.height
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
        w, h = max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)
    return w, h


_SHOWINFO = re.compile(r"\bn:\s*(\d+)\b.*?\bpts_time:\s*(-?[\d.]+|nan)")


def iter_frames(
    path,
    info: VideoInfo | None = None,
    n_frames: int | None = 32,
    fps: float | None = None,
    batch_size: int = 16,
    max_side: int | None = 1920,
    timeout_s: float | None = None,
) -> Iterator[list[Frame]]:
    """Yield batches of sampled frames, upright RGB, streaming so memory stays flat in the video's length.

    ``n_frames`` spreads N samples evenly over the duration (each at the middle of its slice); ``fps``
    samples at a fixed rate instead. Frames larger than ``max_side`` are downscaled inside ffmpeg.
    """
    import ffmpeg  # ffmpeg-python: builds the argument list; we run and reap the process ourselves

    info = info or probe(path)
    step = sample_interval(info, n_frames, fps)
    offset = 0.0 if fps else step / 2.0
    if info.fps and step <= 1.0 / info.fps:  # more samples asked for than the clip has frames: take each once
        step, offset = 1.0 / info.fps, 0.0
    limit = None if fps else max(1, int(n_frames or 32))
    out_w, out_h = decode_size(info, max_side)
    stream = ffmpeg.input(ffmpeg_input(path), protocol_whitelist="file")
    stream = stream.video.filter("select", select_expression(step, offset, info.start_time_s).replace("\\,", ","))
    # Always scale to the size the pipe reader expects: should the probe misjudge rotation or size, frames
    # come out distorted instead of as garbage.
    stream = stream.filter("scale", out_w, out_h, flags="area")
    stream = stream.filter("showinfo")
    args = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough",
                         **({"frames:v": limit} if limit else {})).global_args(
        "-hide_banner", "-nostdin", "-loglevel", "info").compile(cmd=ffmpeg_exe())
    frame_bytes = out_w * out_h * 3
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stamps: list[tuple[int, float]] = []
    tail: list[str] = []
    stamp_ready = threading.Condition()

    def read_stderr():
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            m = _SHOWINFO.search(line) if "showinfo" in line else None
            with stamp_ready:
                if m:
                    t = float(m.group(2)) if m.group(2) != "nan" else float("nan")
                    stamps.append((int(m.group(1)), t))
                else:
                    tail.append(line)
                    del tail[:-30]
                stamp_ready.notify_all()
        with stamp_ready:
            stamps.append((-1, float("nan")))  # end marker
            stamp_ready.notify_all()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    watchdog = None
    if deadline:
        watchdog = threading.Timer(timeout_s, proc.kill)
        watchdog.daemon = True
        watchdog.start()
    produced = 0
    batch: list[Frame] = []
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if not buf or len(buf) < frame_bytes:
                break
            with stamp_ready:
                # showinfo logs a frame before it reaches the pipe, so its stamp is there or about to be.
                stamp_ready.wait_for(lambda n=produced: len(stamps) > n, timeout=5.0)
                t = stamps[produced][1] if len(stamps) > produced and stamps[produced][0] >= 0 else float("nan")
            rel = (t - info.start_time_s) if t == t else offset + produced * step
            index = int(round(rel * info.fps)) if info.fps else produced
            image = np.frombuffer(buf, np.uint8).reshape(out_h, out_w, 3)
            batch.append(Frame(index=index, time_s=round(rel, 6), image=image))
            produced += 1
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        proc.wait(timeout=30)
        if deadline and time.monotonic() > deadline:
            raise VideoError(f"decoding took longer than the {timeout_s:.0f} s limit")
        if proc.returncode not in (0, None) and produced == 0:
            reader.join(timeout=5)
            raise VideoError(_explain_ffmpeg_failure("".join(tail)))
        if produced == 0:
            raise VideoError("no frames could be decoded")
    finally:
        if watchdog:
            watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        reader.join(timeout=5)


# ------------------------------------------------------------------------------------------ discovery
_MAGIC_CHECKS = (
    lambda b: b[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"),  # ISO-BMFF / QuickTime
    lambda b: b[:4] == b"\x1a\x45\xdf\xa3",  # Matroska / WebM
    lambda b: b[:4] == b"RIFF" and b[8:12] == b"AVI ",
    lambda b: b[:3] == b"FLV",
    lambda b: b[:4] == b"OggS",
    lambda b: b[:4] == b"\x00\x00\x01\xba",  # MPEG program stream
    lambda b: b[:4] == b"\x30\x26\xb2\x75",  # ASF / WMV
    lambda b: b[:4] == b"DKIF",  # IVF (VP8/VP9/AV1)
    lambda b: len(b) > 376 and b[0] == 0x47 and b[188] == 0x47 and b[376] == 0x47,  # MPEG-TS
    lambda b: b[:4] == b"\x00\x00\x00\x01" or b[:3] == b"\x00\x00\x01",  # Annex-B H.264/H.265 elementary
)


def looks_like_video(path) -> bool:
    """Content sniffing for files without a video extension (e.g. a ``.bin`` holding H.264)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return any(check(head) for check in _MAGIC_CHECKS)


def discover(paths, recursive: bool = True) -> Iterator[Path]:
    """Every candidate video under ``paths``: video extensions, plus other files whose content looks like video.

    Files named as videos are always returned (a ``.mp4`` holding text must be reported, not skipped).
    Symlinked directories are not followed, so a symlink loop cannot trap the walk.
    """
    seen: set[str] = set()
    for root in paths:
        root = Path(root)
        if root.is_dir():
            candidates = sorted(_walk(root) if recursive else (p for p in root.iterdir()))
        else:
            candidates = [root]
        for p in candidates:
            key = str(p.absolute())
            if key in seen:
                continue
            if p is root or p.suffix.lower() in VIDEO_EXTENSIONS or (p.is_file() and looks_like_video(p)):
                seen.add(key)
                yield p


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name
