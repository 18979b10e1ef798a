"""Video stage: find ffmpeg, probe a file, and stream sampled frames as RGB arrays.

Frames are chosen inside ffmpeg by a ``select`` filter on presentation time, so only sampled frames cross the
pipe and variable-frame-rate files are sampled by time rather than by a frame count that may not exist.
ffmpeg's default autorotation applies the display-matrix rotation, so frames arrive upright.

Inputs are hostile until proven otherwise (docs/bad_inputs.md lists what was tried):

- a file is passed as ``file:<absolute path>`` with a file-only protocol whitelist, so a name starting with
  ``-`` is never an option and nothing can make ffmpeg open a URL;
- ffmpeg may only use the demuxers in :data:`ALLOWED_DEMUXERS` (``-format_whitelist``), enforced by ffmpeg
  itself right after format detection and before the demuxer parses anything: playlists (HLS, DASH),
  concat lists, image sequences and virtual devices can never run, so a file cannot point ffmpeg at other
  files. Decoding then forces the demuxer the probe found (``-f``);
- the frame size is limited twice: by the probe (refused before decoding) and by the decoder itself
  (``-max_pixels``), so a header that lies cannot make ffmpeg allocate a giant frame;
- durations over a limit are refused, probing has a wall-clock limit and decoding a limit on the time spent
  waiting for ffmpeg, and the process is always killed and reaped (no zombies; nothing is written to disk);
- every failure is a :class:`VideoError` whose message is one line for a person.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

# Containers a clip from a social platform comes in; anything else (playlists, concat lists, images,
# raw devices, network formats) is refused by ffmpeg before its demuxer reads the file. ffmpeg matches a
# demuxer whose name is a list ("mov,mp4,...") when any of its names is in the whitelist.
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
)
FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)
# Demuxers named in refusals, so the message says what the file is instead of "format not allowed".
PLAYLIST_DEMUXERS = {"hls", "applehttp", "concat", "dash", "imf", "ffmetadata"}
AUDIO_DEMUXERS = {"mp3", "wav", "aac", "flac", "aiff", "w64", "amr", "ac3", "eac3", "dts", "truehd", "ape",
                  "wv", "tta", "au", "caf", "wsaud", "loas", "mpc", "mpc8", "s337m", "spdif", "xwma"}
IMAGE_DEMUXERS = {"image2", "gif", "apng", "webp", "ico", "tiff", "bmp"}

VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
    ".3gp", ".3g2", ".ogv", ".wmv", ".asf", ".h264", ".264", ".hevc", ".h265", ".ivf", ".obu",
}
# Found while walking a folder so they are reported as refused instead of silently skipped.
PLAYLIST_EXTENSIONS = {".m3u8", ".ffconcat", ".mpd"}

# Limits; each is a keyword argument of probe()/iter_frames() (and a scan option) so a caller can raise it.
MAX_PIXELS = 8192 * 8192  # per frame, upright; an 8K UHD frame (7680×4320) is about half of this
MAX_DURATION_S = 4 * 3600.0
PROBE_TIMEOUT_S = 60.0
DECODE_TIMEOUT_S = 600.0  # seconds one video's frame stream may keep its reader waiting on ffmpeg
# Sampling sparser than this takes each sample from the first keyframe at or after its time, and decodes only
# keyframes: time then grows with the number of samples, not with the video's length.
KEYFRAME_STEP_S = 4.0
_FFMPEG_INT_MAX = 2**31 - 1


class VideoError(RuntimeError):
    """A file that cannot be screened as a video; the message is meant for a person."""

    def __init__(self, message: str):
        # One line, bounded: messages quote ffmpeg, and a file name may hold a newline.
        text = " ".join(str(message).split())
        super().__init__(text[:300] if text else "unreadable video")


class FinalVideoError(VideoError):
    """A failure no other attempt can change (a time limit reached, a refusal): never retried on another
    decoder or in another decoding mode, so a limit is not spent twice and a hardware decoder is not blamed."""


@dataclass
class VideoInfo:
    path: str
    container: str
    codec: str
    width: int  # upright (after rotation), at the display aspect (see sample_aspect)
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
    stream_index: int = 0  # the video stream decoded (cover art and thumbnails are skipped)
    warnings: list[str] = field(default_factory=list)  # e.g. a truncated file screened on what is there
    # Width / height of one coded pixel (SAR). width and height above already include it (a 1440x1080 HDV
    # stream with SAR 4:3 is 1920x1080), so frames come out at the shape the video is shown at.
    sample_aspect: float = 1.0
    # When the video stream's first frame comes after the file's start (audio first), by how much, in the
    # decoder's time (the file's start at 0); measured by measure_video_stream, else 0. Frame indices count
    # from it.
    video_start_s: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        # A name that is not UTF-8 holds surrogate escapes, which JSON cannot encode: show those as \xNN.
        d["path"] = os.fsencode(self.path).decode("utf-8", "backslashreplace")
        return d


@dataclass
class Frame:
    index: int  # frame number in the stream (exact for constant frame rate, nearest for variable)
    time_s: float  # presentation time from the start of the stream
    image: np.ndarray  # H×W×3 uint8 RGB, upright
    sample: bool = True  # one of the frames sampled for screening
    hashed: bool = False  # one of the frames of the video hash's schedule (``iter_frames(hash_fps=...)``)
    # Neither: decoded next to a hash frame, so the pixel check can line up a copy whose frames fall a frame
    # apart from its source's (a trim or frame-rate change that is not a whole number of hash intervals).


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


def input_options(max_pixels: int = MAX_PIXELS, demuxer: str | None = None) -> list[str]:
    """ffmpeg input options that confine it to reading one local file as one of the allowed containers."""
    opts = ["-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST,
            "-max_pixels", str(max(1, min(int(max_pixels), _FFMPEG_INT_MAX)))]
    return opts + (["-f", demuxer.split(",")[0]] if demuxer else [])


# --------------------------------------------------------------------------------------------- checks
_PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat version", b"<MPD")


def _looks_like_playlist(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return text.startswith(_PLAYLIST_MAGIC) or (text.startswith(b"<?xml") and b"<MPD" in text)


def check_input(path) -> Path:
    """Refuse what is not a readable, non-empty regular file (or is a playlist) before ffmpeg sees it.

    A FIFO or device would make ffmpeg block or read forever, so only regular files go on.
    """
    return _check_input(path)[0]


def _check_input(path) -> tuple[Path, bytes]:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise VideoError("broken symbolic link (its target does not exist)" if p.is_symlink()
                         else "file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VideoError("symbolic link loop") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise VideoError("permission denied") from None
        raise VideoError(f"cannot read the file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError("a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise VideoError("not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        # Non-blocking, and checked again once open: a file swapped for a FIFO since stat() cannot block us.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise VideoError("not a regular file (a device, pipe or socket)")
            head = os.read(fd, 512)
        finally:
            os.close(fd)
    except PermissionError:
        raise VideoError("permission denied") from None
    except OSError as exc:
        raise VideoError(f"cannot read the file: {exc.strerror or exc}") from None
    if _looks_like_playlist(head):
        raise VideoError("refused: playlist/concat files are not screened (they point at other files)")
    return p, head


def _content_hint(head: bytes) -> str | None:
    """What a file ffmpeg could not read holds, when its first bytes say it plainly."""
    if b"\0" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:  # a multi-byte character cut at the 512-byte boundary is still text
            text = head[:exc.start].decode("utf-8") if exc.start > len(head) - 4 else ""
        if text and sum(c.isprintable() or c in "\r\n\t" for c in text) > 0.95 * len(text):
            if "<html" in text.lower() or "<!doctype html" in text.lower():
                return "not a video file: it holds an HTML page (a failed download?)"
            return "not a video file: it holds text"
    return None


_TRUNCATED_MP4 = "truncated MP4: the file ends inside a box (an interrupted download or copy?)"


def _iso_truncated(path: Path) -> bool:
    """Whether an ISO-BMFF file's top-level boxes run past its end (read from box headers only)."""
    pos = 0
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            while pos + 8 <= size:
                fh.seek(pos)
                header = fh.read(16)
                box = int.from_bytes(header[:4], "big")
                if box == 1 and len(header) == 16:
                    box = int.from_bytes(header[8:16], "big")
                elif box == 0:  # "to the end of the file"
                    return False
                if box < 8:
                    return False
                pos += box
    except OSError:
        return False
    return pos > size


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def check_limits(info: VideoInfo, max_pixels: int | None = MAX_PIXELS,
                 max_duration_s: float | None = MAX_DURATION_S) -> None:
    """Refuse, before any decoding, frames over ``max_pixels`` and durations over ``max_duration_s``."""
    if max_pixels and info.width * info.height > max_pixels:
        raise FinalVideoError(f"refused: frame size {info.width}x{info.height} is over the limit of "
                              f"{max_pixels} pixels per frame (--max-pixels)")
    if max_duration_s and info.duration_s > max_duration_s:
        raise FinalVideoError(f"refused: duration {_hms(info.duration_s)} is over the limit of "
                              f"{_hms(max_duration_s)} (--max-duration)")


def check_container(info: VideoInfo) -> None:
    if info.container not in ALLOWED_DEMUXERS:
        raise FinalVideoError(_refusal(info.container))


def _refusal(demuxer: str | None) -> str:
    names = set((demuxer or "").split(","))
    if names & PLAYLIST_DEMUXERS:
        return f"refused: playlist/concat files are not screened ({demuxer})"
    if names & AUDIO_DEMUXERS:
        return f"no video stream (an audio file: {demuxer})"
    if names & IMAGE_DEMUXERS or any(n.endswith("_pipe") for n in names):
        return f"refused: an image file ({demuxer}), not a video"
    if demuxer:
        return f"refused: container format {demuxer!r} is not screened"
    return "refused: not a container format deepscan screens"


_PROBED_AS = re.compile(r"Format (\S+) (?:probed with size=|detected only with low score)")


def _detected_demuxer(url: str, timeout_s: float) -> str | None:
    """Which demuxer ffmpeg detected for a file it refused (only debug logging names it).

    The whitelist still applies, so this detection-only run never lets the demuxer parse the file.
    """
    try:
        proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "debug", *input_options(),
                               "-i", url], capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    m = _PROBED_AS.search(proc.stderr.decode("utf-8", "replace"))
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------- probing
# Anchored to line starts and (for stream details) to the chosen stream's block: metadata values are
# printed after "key : " on their own lines, so a tag cannot pose as a stream, a duration or a rotation.
_INPUT = re.compile(r"^Input #0, (.+?), from '", re.M)
_DURATION = re.compile(r"^  Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)(?:,\s*start:\s*(-?[\d.]+))?"
                       r"(?:,\s*bitrate:\s*(\d+))?", re.M)
_ANY_STREAM = re.compile(r"^  Stream #0:(\d+)[^:\n]*: (\w+): (.*)$", re.M)
# A frame size is a field of its own (", 480x480 [SAR ..."): a codec tag of hex digits ("[2][0][0][0] / 0x0002",
# MPEG-2 in a transport stream) must not read as one.
_DIMS = re.compile(r"(?:^|, )(\d{1,6})x(\d{1,6})(?=[ ,]|$)")
_FPS = re.compile(r"([\d.]+)(k?) fps")
_SAR = re.compile(r"\[SAR (\d+):(\d+) DAR \d+:\d+\]")
# The stream's own SAR (an MP4 pasp box, Matroska's display size), printed unbracketed after the codec's: where
# it is given, ffmpeg's decode (and every player) uses it instead of the bitstream's.
_STREAM_SAR = re.compile(r", SAR (\d+):(\d+) DAR \d+:\d+")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
_ROTATE = re.compile(r"^\s+Display ?matrix:? rotation of (-?[\d.]+) degrees", re.I | re.M)
_ROTATE_TAG = re.compile(r"^\s+rotate\s*:\s*(-?\d+)\s*$", re.M)
_TOO_BIG = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count (\d+)")
_INVALID_SIZE = re.compile(r"Picture size (\d+)x(\d+) is invalid")


def _rate(match) -> float:
    value = float(match.group(1))
    return value * 1000 if match.group(2) == "k" else value


def normalise_rotation(degrees: float) -> int:
    """Display-matrix angle (counter-clockwise, ffmpeg's convention) → clockwise turn in {0, 90, 180, 270}.

    Other angles give 0: ffmpeg's autorotation leaves them alone, and the frame size must match what it does.
    """
    quarter = -degrees / 90.0
    if abs(quarter - round(quarter)) > 0.02:
        return 0
    return int(round(quarter)) * 90 % 360


def _scrub(text: str, url: str) -> str:
    """ffmpeg's log with the input's name cut out: the name is the one part a stranger chose freely."""
    return text.replace(os.fsencode(url).decode("utf-8", "replace"), "<input>")


def _chosen_stream(candidates: list[tuple[int, int, bool]]) -> tuple[int, str | None]:
    """Which of several video streams to screen, as (position in ``candidates``, warning or None), from each
    stream's (index, coded pixels, default disposition): the one players show, the default-marked (an MP4
    track's enabled flag reads as that mark), else the largest; the first on a tie. Stream 0 was taken before:
    a file with a disabled real stream 0 and a default fake stream 1 played the fake and was screened on the
    real. (ffmpeg's command line adds only 5,000,000 pixels for the mark, so a disabled 4K real stream beat a
    default 480-px fake: not what a player shows.)"""
    best = max(range(len(candidates)), key=lambda i: (candidates[i][2], candidates[i][1], -i))
    if len(candidates) < 2:
        return best, None
    others = ", ".join(f"#{c[0]}" for i, c in enumerate(candidates) if i != best)
    why = "marked default" if candidates[best][2] else "none marked default: the largest"
    return best, (f"{len(candidates)} video streams: screened stream #{candidates[best][0]} (the one players show, "
                  f"{why}); not screened: {others}")


def parse_ffmpeg_banner(text: str, path: str = "", url: str | None = None) -> VideoInfo:
    """Read what ``ffmpeg -i`` prints about its input (used when ffprobe is absent).

    ``url`` is the input as ffmpeg was given it; it is cut out first, so a file name holding a newline
    cannot add lines to the banner.
    """
    if url:
        text = _scrub(text, url)
    container_m = _INPUT.search(text)
    if not container_m:
        raise VideoError(_explain_ffmpeg_failure(text))
    streams = list(_ANY_STREAM.finditer(text, container_m.end()))
    videos = [m for m in streams if m.group(2) == "Video" and "(attached pic)" not in m.group(3)
              and "(thumbnail)" not in m.group(3)]
    if not videos:
        raise VideoError("no video stream (audio-only or not a video)")

    def pixels(m) -> int:
        d = _DIMS.search(m.group(3))
        return int(d.group(1)) * int(d.group(2)) if d else 0

    chosen, several = _chosen_stream([(int(m.group(1)), pixels(m), "(default)" in m.group(3)) for m in videos])
    stream_m = videos[chosen]
    nxt = next((m.start() for m in streams if m.start() > stream_m.start()), len(text))
    block = text[stream_m.end():nxt]  # side data and metadata of the chosen stream only
    rest = stream_m.group(3)
    codec = rest.split(",")[0].split()[0].strip() if rest.strip() else "unknown"
    dims = _DIMS.search(rest)
    if not dims:
        raise VideoError(_size_failure(text) or "video stream has no frame size")
    width, height = int(dims.group(1)), int(dims.group(2))
    pix_fmt = None
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) > 1:
        pix_fmt = parts[1].split("(")[0].strip() or None
    fps_m = _FPS.search(rest) or _TBR.search(rest)
    fps = _rate(fps_m) if fps_m else 0.0
    if not 0.0 < fps < 10000.0:  # "90k tbr"-style time bases are not frame rates
        fps = 0.0
    dur_m = _DURATION.search(text)
    duration = start = 0.0
    bitrate = None
    if dur_m:
        h, m, s = dur_m.group(1, 2, 3)
        duration = int(h) * 3600 + int(m) * 60 + float(s)
        start = float(dur_m.group(4) or 0.0)
        bitrate = int(dur_m.group(5)) * 1000 if dur_m.group(5) else None
    rot_m = _ROTATE.search(block)
    rotation = normalise_rotation(float(rot_m.group(1))) if rot_m else 0
    if not rot_m and (tag := _ROTATE_TAG.search(block)):
        rotation = int(tag.group(1)) % 360 if int(tag.group(1)) % 90 == 0 else 0
    if rotation in (90, 270):
        width, height = height, width
    sar_m = _STREAM_SAR.search(rest) or _SAR.search(rest)
    sar = _sample_aspect(int(sar_m.group(1)), int(sar_m.group(2))) if sar_m else 1.0
    width, height = _display_size(width, height, rotation, sar)
    n_frames = int(round(duration * fps)) if duration and fps else None
    return VideoInfo(path=path, container=container_m.group(1), codec=codec, width=width, height=height,
                     fps=fps, duration_s=duration, n_frames=n_frames, rotation=rotation, start_time_s=start,
                     bit_rate=bitrate, pix_fmt=pix_fmt, probed_with="ffmpeg",
                     stream_index=int(stream_m.group(1)), sample_aspect=sar, warnings=[several] if several else [])


def _sample_aspect(num: int, den: int) -> float:
    """A stream's SAR, or 1 when unset (0:1) or beyond what any real format uses (a header that lies)."""
    sar = num / den if num > 0 and den > 0 else 1.0
    return sar if 0.25 <= sar <= 4.0 else 1.0


def _display_size(width: int, height: int, rotation: int, sar: float) -> tuple[int, int]:
    """Upright coded size → upright display size: the coded x axis is stretched by the SAR (after a quarter
    turn, that axis is the upright height)."""
    if sar == 1.0:
        return width, height
    if rotation in (90, 270):
        return width, max(1, int(round(height * sar)))
    return max(1, int(round(width * sar))), height


def parse_ffprobe_json(data: dict, path: str = "") -> VideoInfo:
    fmt = data.get("format") or {}
    videos = [s for s in data.get("streams", []) if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    if not fmt:
        raise VideoError("not a recognisable media file")
    if not videos:
        raise VideoError("no video stream (audio-only or not a video)")

    def whole(value) -> int:
        return int(value) if isinstance(value, int) or str(value).isdigit() else 0

    chosen, several = _chosen_stream([(whole(v.get("index")), whole(v.get("width")) * whole(v.get("height")),
                                       bool((v.get("disposition") or {}).get("default"))) for v in videos])
    s = videos[chosen]

    def ratio(txt):
        try:
            num, den = (float(v) for v in str(txt).split("/"))
            return num / den if den else 0.0
        except ValueError:
            return 0.0

    def number(value) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return 0.0
        return v if v == v and abs(v) != float("inf") else 0.0

    fps = ratio(s.get("avg_frame_rate")) or ratio(s.get("r_frame_rate"))
    duration = number(s.get("duration")) or number(fmt.get("duration"))
    rotation = 0
    for side in s.get("side_data_list", []) or []:
        if "rotation" in side:
            rotation = normalise_rotation(number(side["rotation"]))
    if not rotation and (tag := (s.get("tags") or {}).get("rotate")):
        rotation = int(number(tag)) % 360 if int(number(tag)) % 90 == 0 else 0
    width, height = int(number(s.get("width"))), int(number(s.get("height")))
    if not width or not height:
        raise VideoError("video stream has no frame size")
    if rotation in (90, 270):
        width, height = height, width
    sar_num, _, sar_den = str(s.get("sample_aspect_ratio") or "").partition(":")
    sar = _sample_aspect(int(number(sar_num)), int(number(sar_den)))
    width, height = _display_size(width, height, rotation, sar)
    nb = s.get("nb_frames")
    n_frames = (int(nb) if nb and str(nb).isdigit()
                else int(round(duration * fps)) if duration and fps else None)
    return VideoInfo(path=path, container=fmt.get("format_name", ""), codec=s.get("codec_name", ""),
                     width=width, height=height, fps=fps, duration_s=duration, n_frames=n_frames,
                     rotation=rotation,
                     start_time_s=number(s.get("start_time")) or number(fmt.get("start_time")),
                     bit_rate=int(fmt["bit_rate"]) if str(fmt.get("bit_rate", "")).isdigit() else None,
                     pix_fmt=s.get("pix_fmt"), tags=dict(fmt.get("tags") or {}), probed_with="ffprobe",
                     stream_index=int(s.get("index") or 0), sample_aspect=sar, warnings=[several] if several else [])


def _size_failure(stderr: str) -> str | None:
    if m := _TOO_BIG.search(stderr):
        return (f"refused: frame size {m.group(1)}x{m.group(2)} is over the limit of {m.group(3)} pixels per "
                f"frame (--max-pixels)")
    if m := _INVALID_SIZE.search(stderr):
        return f"invalid frame size {m.group(1)}x{m.group(2)}"
    return None


def _explain_ffmpeg_failure(stderr: str) -> str:
    text = stderr.lower()
    if size := _size_failure(stderr):
        return size
    if "format not on whitelist" in text:
        return _refusal(None)
    if "protocol not on whitelist" in text or "not in whitelist" in text:
        return "refused: the file points at other files or network resources"
    if "moov atom not found" in text:
        return "truncated or incomplete MP4 (moov atom missing)"
    if "invalid data found" in text:
        return "not a video file ffmpeg can read (invalid data)"
    if "permission denied" in text:
        return "permission denied"
    if "no such file" in text:
        return "file not found"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith(" ")]
    if not lines:
        return "ffmpeg could not read it"
    reason = lines[-1].rsplit(": ", 1)[-1]  # "Error opening input files: End of file" → "End of file"
    if reason in ("End of file", "Input/output error"):
        return f"damaged or cut-off file: ffmpeg could not parse its structure ({reason})"
    return "ffmpeg could not read it: " + lines[-1][:200]


def probe(path, timeout_s: float = PROBE_TIMEOUT_S, max_pixels: int | None = MAX_PIXELS,
          max_duration_s: float | None = MAX_DURATION_S) -> VideoInfo:
    """What the video stage sees: container, codec, upright size, fps, duration, frame count, rotation.

    Raises :class:`VideoError` for anything that will not be screened, including inputs over the limits.
    """
    p, head = _check_input(path)
    try:
        return _probe(p, head, timeout_s, max_pixels, max_duration_s)
    except VideoError as exc:
        # ffmpeg's guess ("no video stream", "invalid data") hides the plainer cause of a cut-off MP4.
        msg = str(exc)
        if (not msg.startswith("refused") and "took longer" not in msg and head[4:8] in _ISO_BOX_TYPES
                and _iso_truncated(p)):
            raise VideoError(_TRUNCATED_MP4) from None
        raise


def _probe(path: Path, head: bytes, timeout_s: float, max_pixels: int | None,
           max_duration_s: float | None) -> VideoInfo:
    url = ffmpeg_input(path)
    confine = input_options(max_pixels or _FFMPEG_INT_MAX)
    probe_bin = ffprobe_exe()
    deadline = time.monotonic() + timeout_s
    try:
        if probe_bin:
            proc = subprocess.run(
                [probe_bin, "-v", "error", *confine, "-print_format", "json", "-show_format", "-show_streams",
                 url],
                capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
            stderr = _scrub(proc.stderr.decode("utf-8", "replace"), url)
            if proc.returncode != 0 or _size_failure(stderr):
                raise VideoError(_explain_failure(stderr, url, timeout_s, head))
            try:
                data = json.loads(proc.stdout or b"{}")
            except ValueError:
                raise VideoError("ffprobe gave unreadable output") from None
            info = parse_ffprobe_json(data, str(path))
            n_streams = len(data.get("streams") or [])
        else:
            proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *confine, "-i", url],
                                  capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
            stderr = _scrub(proc.stderr.decode("utf-8", "replace"), url)
            if not _INPUT.search(stderr) or _size_failure(stderr):
                raise VideoError(_explain_failure(stderr, url, timeout_s, head))
            info = parse_ffmpeg_banner(stderr, str(path))
            n_streams = len(_ANY_STREAM.findall(stderr, _INPUT.search(stderr).end()))
    except subprocess.TimeoutExpired:
        raise FinalVideoError(f"probing took longer than {timeout_s:.0f} s") from None
    except OSError as exc:
        raise VideoError(f"could not run ffmpeg: {exc.strerror or exc}") from None
    check_container(info)
    check_limits(info, max_pixels, None)
    if head[4:8] in _ISO_BOX_TYPES and _iso_truncated(path):
        info.warnings.append(_TRUNCATED_MP4 + "; screened on the frames that are there")
    # The container's duration and start are those of its longest / earliest stream (or unknown, for an
    # elementary stream): samples spread over them can miss the video. Then the video is measured itself. So
    # too where the container's duration is not the stream's length even with one stream: a transport stream
    # (segments joined byte-wise, whose clock restarts: ffmpeg re-times them on reading) and Matroska/WebM
    # (its Duration is the end time, a cut made with -copyts starts late), or any file not starting at 0.
    if (info.duration_s <= 0 or n_streams > 1 or info.start_time_s
            or info.container.split(",")[0] in ("mpegts", "matroska")):
        measure_video_stream(path, info, max(0.0, deadline - time.monotonic()), max_pixels, max_duration_s)
    else:
        _check_declared_length(path, info, max(0.0, deadline - time.monotonic()), max_pixels, max_duration_s)
    check_limits(info, max_pixels, max_duration_s)
    return info


def _check_declared_length(path, info: VideoInfo, timeout_s: float, max_pixels, max_duration_s) -> None:
    """A single-stream file's declared length, checked against its stream: an MP4 whose headers said 1 s for a
    20-s video was sampled in its first 1.3 s (32 frames of a real intro; the fake 19 s unseen). The measured
    span and count are taken only where the spans disagree by more than 1.5 typical gaps between frames and 1%:
    an honest file samples exactly as it did (its header's rounding, 8.03 s for 8.033, would move a few frames)."""
    measured = replace(info, warnings=[])
    step = measure_video_stream(path, measured, timeout_s, max_pixels, max_duration_s, typical_last_frame=True)
    if measured.warnings:  # not measured: the header's values stay, as before this check
        return
    if max_duration_s and measured.duration_s > max_duration_s and info.duration_s > max_duration_s:
        return  # refused either way; the measure stopped at the limit, the header says how far it goes
    # The span's end is known to a frame's length (the last frame's own is not stored: a slideshow's last
    # image may show 0.04 s after 2-s steps). Only the span decides: a header's frame count may include
    # frames an edit list hides (a stream-copy cut), which the measure leaves out.
    # (The step as measured between frames: the header's frame rate is the file's say, as its lengths are.)
    frame_s = step or 1.0 / (info.fps or measured.fps or 25.0)
    tolerance = max(1.5 * frame_s, 0.01 * max(info.duration_s, measured.duration_s))
    if abs(measured.duration_s - info.duration_s) <= tolerance:
        return
    info.warnings.append(f"the container declares {info.duration_s:.2f} s and {info.n_frames or '?'} frames; the "
                         f"video stream runs {measured.duration_s:.2f} s, {measured.n_frames} frames: sampled over "
                         f"the stream")
    info.duration_s, info.n_frames, info.video_start_s = measured.duration_s, measured.n_frames, measured.video_start_s
    # A header that lies about the length lies about the rate too (0.05 fps from 20-s steps collapsed the
    # schedule onto the first 0.3 s): the stream's own average.
    if measured.duration_s > 0 and measured.n_frames:
        info.fps = round(measured.n_frames / measured.duration_s, 3)


_NOPTS = -(2**63)  # AV_NOPTS_VALUE, as framecrc prints it
# Demuxers of bare coded streams, whose frame rate ffmpeg's header guesses (25) unless the stream says it.
_ELEMENTARY_STREAMS = ("h264", "hevc", "vvc", "mpegvideo", "m4v", "cavsvideo", "avs2", "avs3")
_PKT_FLAG_DISCARD = 0x4  # a packet the demuxer reads only to decode others (outside an MP4 edit list)


def measure_video_stream(path, info: VideoInfo, timeout_s: float = PROBE_TIMEOUT_S,
                         max_pixels: int | None = MAX_PIXELS, max_duration_s: float | None = None,
                         typical_last_frame: bool = False) -> float | None:
    """Set ``info``'s duration and frame count to the video stream's own, from one demux-only pass.

    ``ffmpeg -c copy -f framecrc`` lists every packet of the stream (time base, pts, dts, duration) without
    decoding: the span from the first frame to the end of the last, and the frame count. The pass reads the
    file as the decoder will (same input options), stops once the span is over ``max_duration_s`` (the
    refusal follows in :func:`check_limits`) and is killed after ``timeout_s``. When it fails, the container's
    values stay and ``info.warnings`` says so.

    ``typical_last_frame``: the span ends one typical (median) gap between frame starts after the last one,
    not at the largest start plus duration: with B-frames a packet's duration is its decode-order step, so a
    gap's long step can land on a later frame (a 4-s VFR clip with a 2-s gap measured 5.04 s). It then returns
    that typical step in seconds (None otherwise), the uncertainty of the span's end.
    """
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
            *input_options(max_pixels or _FFMPEG_INT_MAX, info.container), "-i", ffmpeg_input(path),
            "-map", f"0:{info.stream_index}", "-c", "copy", "-f", "framecrc", "-"]
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except OSError as exc:
        info.warnings.append(f"could not measure the video stream ({exc.strerror or exc}): sampled over the "
                             f"container's duration")
        return
    killed = threading.Event()

    def kill():
        killed.set()
        proc.kill()

    timer = threading.Timer(max(timeout_s, 0.001), kill)
    timer.start()
    time_base = 0.0
    first = end = last_start = None
    starts: list[int] = []
    count = 0
    over = False
    try:
        for line in proc.stdout:
            if line.startswith(b"#"):
                if line.startswith(b"#tb 0:"):
                    num, _, den = line[6:].strip().partition(b"/")
                    time_base = int(num) / int(den) if int(den) else 0.0
                continue
            fields = line.split(b",", 6)
            if len(fields) < 6:
                continue
            try:
                dts, pts, duration = int(fields[1]), int(fields[2]), int(fields[3])
            except ValueError:
                continue
            flags = 1
            if len(fields) > 6 and (m := re.search(rb"F=0x([0-9a-fA-F]+)", fields[6])):
                flags = int(m.group(1), 16)
            if flags & _PKT_FLAG_DISCARD:
                continue
            count += 1
            ts = pts if pts != _NOPTS else dts  # an elementary stream's packets carry dts only
            if ts == _NOPTS:
                continue
            if duration <= 0 and info.fps and time_base:
                duration = int(round(1.0 / info.fps / time_base))
            first = ts if first is None else min(first, ts)
            end = ts + max(duration, 0) if end is None else max(end, ts + max(duration, 0))
            last_start = ts if last_start is None else max(last_start, ts)
            if typical_last_frame:
                starts.append(ts)
            # (The last start, in that mode: a gap's step on a later frame must not refuse an honest clip.)
            if max_duration_s and ((last_start if typical_last_frame else end) - first) * time_base > max_duration_s:
                over = True  # long enough to refuse: the rest need not be read
                break
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    why = None
    if killed.is_set():
        why = f"it took longer than {timeout_s:.0f} s"
    elif first is None or not time_base or end <= first:
        why = "ffmpeg listed no timed video packet"
    if why:
        info.warnings.append(f"could not measure the video stream ({why}): sampled over the container's "
                             f"duration")
        return None
    typical_step = None
    # The typical gap between presentation times, not the packets' stored durations: those are decode-order
    # steps the file sets (20-s steps with ctts putting the frames back 0.04 s apart hid a 1-s header lie).
    ordered = sorted(starts)
    gaps = sorted(b - a for a, b in zip(ordered, ordered[1:], strict=False) if b > a)
    if gaps:
        typical_step = gaps[len(gaps) // 2]
        if not over:
            end = last_start + typical_step
    info.duration_s = round((end - first) * time_base, 6)
    info.video_start_s = max(0.0, round(first * time_base, 6))
    if not over:
        info.n_frames = count
        measured = round(count / info.duration_s, 3)
        # A raw elementary stream's header says ffmpeg's default 25 fps (a 29.97 fps .h264 read 25): frame
        # numbers computed from it were 17% low. There the stream's own rate wins where the two disagree by
        # over 1%; elsewhere the header's (a stream with a gap in time averages far fewer frames a second).
        elementary = info.container.split(",")[0] in _ELEMENTARY_STREAMS
        if not info.fps or (elementary and count >= 10 and abs(measured / info.fps - 1.0) > 0.01):
            info.fps = measured
    return None if typical_step is None else typical_step * time_base


def _explain_failure(stderr: str, url: str, timeout_s: float, head: bytes = b"") -> str:
    if "format not on whitelist" in stderr.lower():
        return _refusal(_detected_demuxer(url, timeout_s))
    message = _explain_ffmpeg_failure(stderr)
    if "moov atom" in message and head[4:8] not in _ISO_BOX_TYPES:
        # ffmpeg tried MP4 only because of the name: the file is not a cut-off MP4.
        message = "not a video file ffmpeg can read (unknown content)"
    return _content_hint(head) or message


# -------------------------------------------------------------------------------------------- sampling
def sample_interval(info: VideoInfo, n_frames: int | None = 32, fps: float | None = None) -> float:
    """Seconds between sampled frames: ``1/fps`` when a rate is asked for, else duration spread over N."""
    if fps:
        return 1.0 / fps
    n = max(1, int(n_frames or 32))
    if info.duration_s > 0:
        return info.duration_s / n
    return 1.0 / (info.fps or 25.0)


# A step shorter than any frame period: the select takes every frame once, whatever the timing.
EVERY_FRAME_S = 0.0001


def sample_schedule(info: VideoInfo, n_frames: int | None = 32, fps: float | None = None) -> tuple[float, float]:
    """(step, offset) of the sample targets ``offset + k·step`` from the first frame.

    A rate keeps its own step (never the average frame rate: a variable-frame-rate clip with a hole averages
    fewer frames per second than it has where it has frames). N samples sit at the middle of N equal slices,
    moved earlier when the slices are under two frames long, so the last target is at or before the last
    frame's start (else the select would find no frame for it); N at least the frame count takes every frame.
    """
    step = sample_interval(info, n_frames, fps)
    if fps:
        return step, 0.0
    n = max(1, int(n_frames or 32))
    if (info.n_frames and n >= info.n_frames) or (info.fps and step <= 1.0 / info.fps):
        return EVERY_FRAME_S, 0.0
    if info.fps:
        return step, min(step / 2.0, max(0.0, step - 1.0 / info.fps))
    return step, step / 2.0


# A seeded schedule's shifts repeat after this many slices: the select expression holds them as a lookup
# tree, about 30 characters a shift, which must fit one command-line argument (Linux: 128 KB). Repeating does
# not help an author: without the scan's key (deepscan.samplekey) no shift can be computed.
SEEDED_SHIFT_PERIOD = 512
# The scheme a scan records in its configuration (``ScanOptions.scoring_config``): each sample's place in its
# slice drawn from the file's sha256 under a secret key (:func:`sample_shifts`, :mod:`deepscan.samplekey`).
SAMPLING = "seeded-by-sha256-and-key"


def seeded_shifts(seed: str, count: int, span_s: float) -> list[float]:
    """``count`` shifts in [0, ``span_s``], each from its own hash of ``seed`` and its slice number, rounded to
    the 6 decimals a select expression carries."""
    shifts = []
    for k in range(count):
        draw = hashlib.blake2b(f"{seed}|{k}".encode(), digest_size=8).digest()
        shifts.append(float(f"{int.from_bytes(draw, 'big') / 2.0**64 * span_s:.6f}"))
    return shifts


def sample_shifts(info: VideoInfo, n_frames: int | None = 32, fps: float | None = None,
                  seed: str | None = None) -> list[float] | None:
    """Where inside its slice each sample falls when the schedule is seeded (``seed``: a scan's is the file's
    sha256 under its secret key, :func:`deepscan.samplekey.file_seed`), so that a file's author cannot know
    which frames are screened: slice k's target is ``k·step + shifts[k mod len(shifts)]``, anywhere from the
    slice's start to one frame period before its end (so a frame starts inside it), but never after
    :func:`last_target`. None (the fixed schedule of :func:`sample_schedule`) without a seed, or when every
    frame is taken."""
    step, _ = sample_schedule(info, n_frames, fps)
    if not seed or step == EVERY_FRAME_S:
        return None
    span = max(0.0, step - 1.0 / info.fps) if info.fps else step / 2.0
    if fps:
        count = math.ceil(info.duration_s * fps) + 1 if info.duration_s > 0 else SEEDED_SHIFT_PERIOD
    else:
        count = max(1, int(n_frames or 32))
    return seeded_shifts(seed, min(count, SEEDED_SHIFT_PERIOD), span)


def last_target(info: VideoInfo) -> float | None:
    """The latest a seeded target may fall (from the first frame): a frame period before the last frame's
    start, so a length overstated by less than that still leaves it a frame, and so does the last, partial
    interval of a rate (the fixed schedule's rate targets sat at each interval's start). None when unknown."""
    if not (info.fps and info.duration_s > 0):
        return None
    return float(f"{max(0.0, info.duration_s - 2.0 / info.fps):.6f}")


# Frame periods around each hash target within which decoded frames also come out (its neighbours).
HASH_NEIGHBOUR_FRAMES = 1.5
TRACK_SIDE = 32  # side of the grey thumbnail of every decoded frame (``iter_frames(track=...)``)
MAX_TRACK_FRAMES = 7200  # at most this many (4 min at 30 fps, 7 MB): later frames are not kept


def select_expression(step_s: float, offset_s: float, start_s: float, register: int = 0,
                      from_first_frame: bool = False) -> str:
    """ffmpeg ``select`` expression taking the first frame at or after each target time.

    Targets are ``offset + k·step`` from the stream start, or with ``from_first_frame`` from the first
    frame's time (kept in register ``register + 5``): a video that starts after its audio is then sampled
    at the same instants of its content as a copy whose video starts at 0. A register (0 unless told) holds
    the next target; after a hit it jumps past the current time, so a gap in a variable-frame-rate stream
    never yields a burst. :class:`Schedule` is its exact twin in Python.
    """
    # A 0.1 ms tolerance absorbs timestamps like 0.59999 for a 0.6 s target (time bases are rarely decimal).
    first = ""
    if from_first_frame:
        first = f"st({register + 5}\\,if(eq(n\\,0)\\,t\\,ld({register + 5})))*0+"
        rel = _time_from_first_frame(register)
    else:
        rel = f"(t-{start_s:.6f}+0.0001)"
    return (f"{first}if(gte({rel}\\,ld({register})+{offset_s:.6f})\\,"
            f"st({register}\\,(floor(({rel}-{offset_s:.6f})/{step_s:.6f})+1)*{step_s:.6f})*0+1\\,0)")


def _time_from_first_frame(register: int) -> str:
    """A frame's time from the first frame, in a schedule's expression (``register + 5`` keeps that time)."""
    return f"(t-ld({register + 5})+0.0001)"


class Schedule:
    """:func:`select_expression`'s decision, replayed in Python on a frame's exact time (its pts times the
    time base, as ffmpeg computes ``t``) with the same constants, so when one ``select`` takes the union of
    two schedules, each frame that comes out can be told apart: which schedule (or both) it was taken for.

    Replaying only the frames that came out is exact: a schedule's register changes only on its own hits,
    and every hit comes out."""

    def __init__(self, step_s: float, offset_s: float, start_s: float = 0.0, from_first_frame: bool = False):
        # The expression carries the numbers printed with 6 decimals; ffmpeg parses those strings back.
        self.step, self.offset, self.start = (float(f"{v:.6f}") for v in (step_s, offset_s, start_s))
        self.from_first_frame = from_first_frame
        self.first: float | None = None  # such a schedule always takes the first frame: it is the first seen
        self.next = 0.0  # ffmpeg's registers start at 0

    def hit(self, t: float) -> bool:
        if self.from_first_frame:
            if self.first is None:
                self.first = t
            rel = (t - self.first) + 0.0001
        else:
            rel = (t - self.start) + 0.0001
        if rel >= self.next + self.offset:
            self.next = (math.floor((rel - self.offset) / self.step) + 1) * self.step
            return True
        return False


def seeded_select_expression(step_s: float, shifts: list[float], last_s: float | None = None) -> str:
    """ffmpeg ``select`` expression of a seeded schedule (:func:`sample_shifts`), counted from the first frame.

    Register 0 holds how many targets a taken frame had passed; a frame is taken when more targets lie at or
    before it (``rel``: register 3) than that: the targets of the slices before its own (register 2) and its
    own slice's when passed. The shift of slice k is looked up by ``k mod len(shifts)`` (register 7) in a
    balanced tree of comparisons, and kept from reaching past ``last_s`` (:func:`last_target`). Registers 1
    and 6 stay free for a hash schedule. :class:`SeededSchedule` is its exact twin in Python.
    """
    def lookup(lo: int, hi: int) -> str:
        if hi - lo == 1:
            return f"{shifts[lo]:.6f}"
        mid = (lo + hi) // 2
        return f"if(lt(ld(7)\\,{mid})\\,{lookup(lo, mid)}\\,{lookup(mid, hi)})"

    step = f"{step_s:.6f}"
    shift = lookup(0, len(shifts))
    if last_s is not None:
        shift = f"min({shift}\\,{last_s:.6f}-ld(2)*{step})"
    return (f"st(5\\,if(eq(n\\,0)\\,t\\,ld(5)))*0+st(3\\,{_time_from_first_frame(0)})*0"
            f"+st(2\\,floor(ld(3)/{step}))*0+st(7\\,mod(ld(2)\\,{len(shifts)}))*0"
            f"+st(4\\,ld(2)+gte(ld(3)\\,ld(2)*{step}+{shift}))*0"
            f"+if(gt(ld(4)\\,ld(0))\\,st(0\\,ld(4))*0+1\\,0)")


class SeededSchedule:
    """:func:`seeded_select_expression`'s decision replayed in Python (as :class:`Schedule` for the fixed one)."""

    def __init__(self, step_s: float, shifts: list[float], last_s: float | None = None):
        self.step = float(f"{step_s:.6f}")
        self.shifts = [float(f"{v:.6f}") for v in shifts]
        self.last = None if last_s is None else float(f"{last_s:.6f}")
        self.first: float | None = None
        self.passed = 0.0  # register 0

    def target(self, k: int) -> float:
        shift = self.shifts[k % len(self.shifts)]
        return k * self.step + (shift if self.last is None else min(shift, self.last - k * self.step))

    def hit(self, t: float) -> bool:
        if self.first is None:
            self.first = t
        rel = (t - self.first) + 0.0001
        k = math.floor(rel / self.step)
        passed = k + (rel >= self.target(k))
        if passed > self.passed:
            self.passed = passed
            return True
        return False


def decode_size(info: VideoInfo, max_side: int | None) -> tuple[int, int]:
    w, h = info.width, info.height
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
        w, h = max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)
    return w, h


_SHOWINFO = re.compile(r"\bn:\s*(\d+)\b.*?\bpts:\s*(-?\d+|NOPTS)\s.*?\bpts_time:\s*(-?[\d.]+|nan)")
_SHOWINFO_TIMEBASE = re.compile(r"config in time_base:\s*(\d+)/(\d+)")


def iter_frames(
    path,
    info: VideoInfo | None = None,
    n_frames: int | None = 32,
    fps: float | None = None,
    batch_size: int = 16,
    max_side: int | None = 1920,
    timeout_s: float | None = DECODE_TIMEOUT_S,
    max_pixels: int | None = None,
    max_duration_s: float | None = MAX_DURATION_S,
    hash_fps: float | None = None,
    keyframes: bool | None = None,
    hwaccel: str | None = None,
    track=None,
    sample_seed: str | None = None,
) -> Iterator[list[Frame]]:
    """Yield batches of sampled frames, upright RGB, streaming so memory stays flat in the video's length.

    ``n_frames`` spreads N samples evenly over the video stream's duration from its first frame (each at the
    middle of its slice, or earlier in slices under two frames long: :func:`sample_schedule`); ``fps``
    samples at a fixed rate from the first frame instead. With ``sample_seed`` (a scan passes the file's
    sha256) each sample falls anywhere in its slice (or rate interval), at a place drawn from the seed
    (:func:`sample_shifts`): the same file is sampled alike on every run, but its author cannot choose which
    frames are screened (on the fixed schedule a fake whose frames at those times were left real read as
    real). Frames larger than ``max_side`` are downscaled inside ffmpeg.
    ``timeout_s`` bounds the time the stream spends waiting on ffmpeg (not the time its consumer holds a
    batch: detecting faces in a long video sampled densely can take longer than decoding it); past it
    ffmpeg is killed and reaped and :class:`VideoError` is raised. ``max_pixels`` (default: :data:`MAX_PIXELS`, or the size ``info`` was
    probed with when larger) also binds the decoder, so a bitstream larger than its header is refused.

    ``hash_fps`` also takes, in the same decode, the frames of a second schedule at that rate (a video
    hash's: :mod:`deepscan.campaign`), so a video is never decoded twice: every frame says whether it is a
    screening sample (``sample``), a hash frame (``hashed``) or both; frames that are neither are the
    decoded frames right before and after a hash frame (:data:`HASH_NEIGHBOUR_FRAMES` frame periods around
    its target time).

    ``keyframes`` (default: for videos of a minute or more sampled at least :data:`KEYFRAME_STEP_S` apart,
    without ``hash_fps``) has the decoder skip every frame that is not a keyframe, so each sample is the first
    keyframe at or after its time. Two samples whose times fall in one keyframe interval get that keyframe
    once, so a video whose keyframes are further apart than the sampling step yields fewer frames; one with no
    keyframe after the first target is decoded in full instead.

    ``track``, a callable, is given at the end of the decode every decoded frame (not only the samples) as a
    :data:`TRACK_SIDE`² grey thumbnail, in decoding order (an array, the first :data:`MAX_TRACK_FRAMES`).

    ``hwaccel`` (e.g. ``"cuda"``: NVDEC) decodes on that hardware, frames coming back to memory for the same
    filters, so they are the same frames; when it fails before a frame comes out (no GPU, driver or codec
    support), the video is decoded on the CPU instead and, once the CPU has decoded a frame of it, that hardware
    is not tried again for the codec. A :class:`FinalVideoError` (a time limit, a refusal) is never retried:
    the ``timeout_s`` budget is shared by every attempt at the video.
    """
    if info is None:
        info = probe(path, max_pixels=max_pixels or MAX_PIXELS, max_duration_s=max_duration_s)
    options = dict(n_frames=n_frames, fps=fps, batch_size=batch_size, max_side=max_side, timeout_s=timeout_s,
                   max_pixels=max_pixels, hash_fps=hash_fps, track=track, sample_seed=sample_seed)
    if keyframes is None:
        keyframes = (not hash_fps and info.duration_s >= 60.0
                     and sample_interval(info, n_frames, fps) >= KEYFRAME_STEP_S)
    if not hwaccel or (hwaccel, info.codec) in _HWACCEL_FAILED:
        yield from _keyframes_or_all(path, info, keyframes, dict(options, hwaccel=None))
        return

    def on_cpu(spent: float):
        # The hardware is blamed only once the CPU decodes what it could not: a file nothing can decode
        # says nothing about the hardware, and must not turn it off for every later file.
        blamed = False
        for batch in _keyframes_or_all(path, info, keyframes, _after(dict(options, hwaccel=None), spent)):
            if not blamed:
                _HWACCEL_FAILED.add((hwaccel, info.codec))
                blamed = True
            yield batch

    yield from _or_else(_keyframes_or_all(path, info, keyframes, dict(options, hwaccel=hwaccel)), on_cpu)


_HWACCEL_FAILED: set[tuple[str, str]] = set()  # (hwaccel, codec) that failed to decode in this process


def _or_else(batches: Iterator[list[Frame]], fallback) -> Iterator[list[Frame]]:
    """``batches``, or ``fallback(seconds spent on batches)``'s when the first produced no frame (ended empty
    or failed before one); a failure after frames came out, or a :class:`FinalVideoError`, is raised."""
    produced = False
    started = time.monotonic()  # no frame came out before a fallback, so all this time was spent decoding
    try:
        for batch in batches:
            produced = True
            yield batch
    except FinalVideoError:
        raise
    except VideoError:
        if produced:
            raise
    if not produced:
        yield from fallback(time.monotonic() - started)


def _after(options: dict, spent: float) -> dict:
    """``options`` for another attempt, which has what is left of the time limit."""
    return dict(options, spent_s=options.get("spent_s", 0.0) + spent)


def _keyframes_or_all(path, info: VideoInfo, keyframes: bool, options: dict) -> Iterator[list[Frame]]:
    if not keyframes:
        yield from _decode_frames(path, info, keyframes=False, **options)
        return
    # No keyframe at or after the first target (or a decoder that keeps none): every frame.
    yield from _or_else(_decode_frames(path, info, keyframes=True, **options),
                        lambda spent: _decode_frames(path, info, keyframes=False, **_after(options, spent)))


class _Stopwatch:
    """Seconds spent between start() and stop() calls, running from creation; read from another thread."""

    def __init__(self, spent: float = 0.0):
        self._lock = threading.Lock()
        self._spent, self._since = spent, time.monotonic()

    def stop(self) -> None:
        with self._lock:
            if self._since is not None:
                self._spent, self._since = self._spent + time.monotonic() - self._since, None

    def start(self) -> None:
        with self._lock:
            self._since = time.monotonic()

    def seconds(self) -> float:
        with self._lock:
            return self._spent + (time.monotonic() - self._since if self._since is not None else 0.0)


def _decode_frames(path, info: VideoInfo, *, n_frames, fps, batch_size, max_side, timeout_s, max_pixels,
                   hash_fps, keyframes: bool, hwaccel: str | None = None,
                   track=None, sample_seed: str | None = None, spent_s: float = 0.0) -> Iterator[list[Frame]]:
    """:func:`iter_frames` (same arguments, all given) with the video probed and the keyframe choice made.

    ``spent_s``: seconds of ``timeout_s`` already spent by earlier attempts at this video."""
    import ffmpeg  # ffmpeg-python: builds the argument list; we run and reap the process ourselves

    if timeout_s and spent_s >= timeout_s:
        raise FinalVideoError(f"decoding took longer than the {timeout_s:g} s limit (--timeout)")
    check_container(info)
    if max_pixels:
        check_limits(info, max_pixels, None)
    if info.width <= 0 or info.height <= 0:
        raise VideoError("video stream has no frame size")
    # The decoder checks its padded (macroblock-aligned) size, hence the slack over the probe's exact check.
    # (Coded frames are narrower than the display size by the SAR: 1/SAR as many pixels.)
    decoder_limit = int(max(max_pixels or MAX_PIXELS, info.width * info.height,
                            info.width * info.height / (info.sample_aspect or 1.0)) * 1.05)
    step, offset = sample_schedule(info, n_frames, fps)
    shifts = sample_shifts(info, n_frames, fps, sample_seed)
    limit = None if fps else max(1, int(n_frames or 32))
    out_w, out_h = decode_size(info, max_side)
    # ffmpeg-python hashes its arguments as UTF-8, which a file name need not be: it builds the command
    # around a placeholder, and the real input goes in below.
    stream = ffmpeg.input("placeholder")[str(info.stream_index)]
    # The ffmpeg CLI shifts input timestamps so the file starts at 0 (without -copyts), so ``t`` in the
    # filter and showinfo's pts_time are already relative to the start (an MPEG-TS often starts at 1.4 s).
    # Targets count from the first video frame: the file's start may be another stream's (audio before the
    # video), and the duration N samples spread over is the video's own (see measure_video_stream).
    if shifts is None:
        expression = select_expression(step, offset, 0.0, from_first_frame=True)
        twin = Schedule(step, offset, from_first_frame=True)
    else:
        last = last_target(info)
        expression, twin = seeded_select_expression(step, shifts, last), SeededSchedule(step, shifts, last)
    samples = hashes = None
    if hash_fps:
        samples = twin
        hashes = Schedule(1.0 / hash_fps, 0.0, from_first_frame=True)
        expression += "+" + select_expression(1.0 / hash_fps, 0.0, 0.0, register=1, from_first_frame=True)
        # Register 1 now holds the next hash target: also take the frames just before it and, once it is hit
        # (the register has moved on one interval), just after the target that was hit.
        near, interval = HASH_NEIGHBOUR_FRAMES / (info.fps or 30.0), 1.0 / hash_fps
        rel = _time_from_first_frame(1)
        expression += (f"+gte({rel}\\,ld(1)-{near:.6f})"
                       f"+gt({rel}\\,ld(1)-{interval:.6f})*lte({rel}\\,ld(1)-{interval:.6f}+{near:.6f})")
        limit_output = None  # the sample count is kept in Python; hash frames go on to the end
    else:
        limit_output = limit
    track_read = track_write = None
    if track is not None:
        # Every decoded frame, shrunk in ffmpeg to a TRACK_SIDE² grey thumbnail, on a second pipe: what lines
        # up a copy's frames with its source's at any offset (the samples are chosen frames only).
        track_read, track_write = os.pipe()
        branches = stream.split()
        stream, thumbs = branches[0], branches[1]
    stream = stream.filter("select", expression.replace("\\,", ","))
    if hwaccel and info.pix_fmt and re.fullmatch(r"[a-z0-9]+", info.pix_fmt):
        # NVDEC hands frames back as nv12 (p010 for 10-bit): the same samples as the software decoder's planar
        # format, but converted to RGB along another path (mean |difference| 0.77 of 255 measured on an H100).
        # Repacked to the stream's own format first, the frames are the CPU decoder's, pixel for pixel.
        stream = stream.filter("format", info.pix_fmt)
    # Always scale to the size the pipe reader expects: should the probe misjudge rotation or size, frames
    # come out distorted instead of as garbage.
    stream = stream.filter("scale", out_w, out_h, flags="area")
    stream = stream.filter("showinfo")
    output = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough",
                           **({"frames:v": limit_output} if limit_output else {}))
    if track is not None:
        output = ffmpeg.merge_outputs(output, thumbs.filter("scale", TRACK_SIDE, TRACK_SIDE, flags="area")
                                      .filter("format", "gray").output(f"pipe:{track_write}", format="rawvideo",
                                                                       pix_fmt="gray", fps_mode="passthrough"))
    args = output.global_args("-hide_banner", "-nostdin", "-loglevel", "info").compile(cmd=ffmpeg_exe())
    at = args.index("-i")
    args[at + 1] = ffmpeg_input(path)
    # -reinit_filter 0: a frame-size change mid-stream must not rebuild the filter graph, which would reset
    # the select's registers (an extra sample at the change, a lost one at the end); the scale filter takes
    # the new size on the fly, so frames still come out at the output size. Not for a rotated video: the
    # transpose ffmpeg puts first keeps its configured size and would crop (or overread) a changed frame.
    keep_graph = ["-reinit_filter", "0"] if info.rotation == 0 else []
    args[at:at] = (input_options(decoder_limit, info.container) + keep_graph
                   + (["-hwaccel", hwaccel] if hwaccel else [])
                   + (["-skip_frame", "nokey"] if keyframes else []))
    frame_bytes = out_w * out_h * 3
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(track_write,) if track is not None else ())
    except OSError as exc:
        if track is not None:
            os.close(track_read)
        raise VideoError(f"could not run ffmpeg: {exc.strerror or exc}") from None
    finally:
        if track_write is not None:
            os.close(track_write)  # the child holds its own copy: EOF comes when ffmpeg is gone
    track_bytes = bytearray()
    track_reader = None
    if track is not None:
        def read_track():
            with os.fdopen(track_read, "rb") as pipe:
                while chunk := pipe.read(1 << 16):
                    if len(track_bytes) < MAX_TRACK_FRAMES * TRACK_SIDE * TRACK_SIDE:
                        track_bytes.extend(chunk)  # beyond the cap the pipe is still drained

        track_reader = threading.Thread(target=read_track, daemon=True)
        track_reader.start()
    stamps: list[tuple[int, float, int | None]] = []  # (n, pts_time, pts)
    time_base: list[float] = []
    tail: list[str] = []
    stamp_ready = threading.Condition()

    def read_stderr():
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            m = _SHOWINFO.search(line) if "showinfo" in line else None
            tb = _SHOWINFO_TIMEBASE.search(line) if m is None and "showinfo" in line else None
            with stamp_ready:
                if tb and int(tb.group(2)):
                    time_base.append(int(tb.group(1)) / int(tb.group(2)))  # av_q2d: num / (double) den
                if m:
                    t = float(m.group(3)) if m.group(3) != "nan" else float("nan")
                    stamps.append((int(m.group(1)), t, int(m.group(2)) if m.group(2) != "NOPTS" else None))
                else:
                    tail.append(line)
                    del tail[:-30]
                stamp_ready.notify_all()
        with stamp_ready:
            stamps.append((-1, float("nan"), None))  # end marker
            stamp_ready.notify_all()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    timed_out, finished = threading.Event(), threading.Event()
    decoding = _Stopwatch(spent_s)  # runs while this generator runs, stops while it waits at a ``yield``
    watchdog = None
    if timeout_s:
        def watch():
            while not finished.wait(min(0.25, timeout_s / 4)):
                if decoding.seconds() > timeout_s:
                    timed_out.set()
                    proc.kill()  # unblocks the pipe read below; the process is reaped in ``finally``
                    return

        watchdog = threading.Thread(target=watch, daemon=True)
        watchdog.start()
    produced = sampled = 0
    batch: list[Frame] = []
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if not buf or len(buf) < frame_bytes:
                break
            with stamp_ready:
                # showinfo logs a frame before it reaches the pipe, so its stamp is there or about to be.
                stamp_ready.wait_for(lambda n=produced: len(stamps) > n, timeout=5.0)
                ready = len(stamps) > produced and stamps[produced][0] >= 0
                t = stamps[produced][1] if ready else float("nan")
                pts = stamps[produced][2] if ready else None
            rel = t if t == t else (offset + produced * step if shifts is None else twin.target(produced))
            index = int(round(max(0.0, rel - info.video_start_s) * info.fps)) if info.fps else produced
            image = np.frombuffer(buf, np.uint8).reshape(out_h, out_w, 3)
            produced += 1
            is_sample, is_hash = True, False
            if samples is not None:
                if pts is None or not time_base:  # cannot be told apart: serve both, never skip a sample
                    is_hash = True
                else:
                    exact = float(pts) * time_base[0]
                    is_sample, is_hash = samples.hit(exact), hashes.hit(exact)
                is_sample = is_sample and sampled < limit if limit else is_sample
                sampled += is_sample
            batch.append(Frame(index=index, time_s=round(rel, 6), image=image, sample=is_sample, hashed=is_hash))
            if len(batch) >= batch_size:
                decoding.stop()
                yield batch
                decoding.start()
                batch = []
        if timed_out.is_set():
            raise FinalVideoError(f"decoding took longer than the {timeout_s:g} s limit (--timeout)")
        if batch:
            decoding.stop()
            yield batch
            decoding.start()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise VideoError("ffmpeg did not finish after its output ended") from None
        if timed_out.is_set():
            raise FinalVideoError(f"decoding took longer than the {timeout_s:g} s limit (--timeout)")
        if track_reader is not None:
            track_reader.join(timeout=30)
            n = min(len(track_bytes) // (TRACK_SIDE * TRACK_SIDE), MAX_TRACK_FRAMES)
            track(np.frombuffer(track_bytes, np.uint8, count=n * TRACK_SIDE * TRACK_SIDE)
                  .reshape(n, TRACK_SIDE, TRACK_SIDE).copy())  # a copy: the reader may still hold the buffer
        # With a hash schedule, hash frames alone (a cut-off file decoding only its first instants) are no
        # screening: the file would read as "no face" where no sampled frame was ever seen.
        if produced == 0 or (samples is not None and sampled == 0):
            if any(w.startswith(_TRUNCATED_MP4) for w in info.warnings):
                raise VideoError(_TRUNCATED_MP4 + "; no frame in what is there could be decoded")
            if proc.returncode not in (0, None):
                reader.join(timeout=5)
                reason = _explain_ffmpeg_failure(_scrub("".join(tail), ffmpeg_input(path)))
                raise (FinalVideoError if reason.startswith("refused") else VideoError)(reason)
            raise VideoError("no frames could be decoded")
    finally:
        finished.set()
        if watchdog:
            watchdog.join()
        if proc.poll() is None:
            proc.kill()
        proc.wait()  # reaped: no zombie whatever happened above
        if proc.stdout:
            proc.stdout.close()
        # The stderr reader sees EOF once ffmpeg is gone; closing the pipe under it would raise in its thread.
        reader.join(timeout=5)
        if track_reader is not None:
            track_reader.join(timeout=5)
        if proc.stderr and not reader.is_alive():
            proc.stderr.close()


# ------------------------------------------------------------------------------------------ discovery
_ISO_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
_MAGIC_CHECKS = (
    lambda b: b[4:8] in _ISO_BOX_TYPES,  # ISO-BMFF / QuickTime
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
    """Content sniffing for files without a video extension (e.g. a ``.bin`` holding H.264).

    Playlists count too: they are reported as refused rather than skipped without a word.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return any(check(head) for check in _MAGIC_CHECKS) or _looks_like_playlist(head)


def discover(paths, recursive: bool = True) -> Iterator[Path]:
    """Every candidate video under ``paths``: video extensions, and other files whose content looks like one.

    Files named as videos or playlists are always returned (a ``.mp4`` holding text must be reported, not
    skipped), whatever they are: a broken link, a link loop or a FIFO named ``.mp4`` gets an error result.
    Content is sniffed only in regular files (opening a FIFO would block). Symlinked directories are not
    followed, so a symlink loop cannot trap the walk; symlinked files are followed (the folder's owner put
    them there). Hidden folders (``.git``, ``.cache``) and macOS ``._clip.mp4`` resource forks are skipped; a
    hidden file named as a video is not (a ``.clip.mp4`` among the clips, a fake, went unmentioned), one named
    otherwise is never sniffed (a ``.DS_Store`` reads as H.264).
    """
    seen: set = set()
    for root in paths:
        root = Path(root)
        if root.is_dir():
            candidates = sorted(_walk(root) if recursive else (p for p in root.iterdir()))
        else:
            candidates = [root]
        for p in candidates:
            suffix = p.suffix.lower()
            # A hidden file only by its name: sniffed, a Mac's .DS_Store reads as an H.264 stream.
            if not (p is root or suffix in VIDEO_EXTENSIONS or suffix in PLAYLIST_EXTENSIONS
                    or (not p.name.startswith(".") and p.is_file() and looks_like_video(p))):
                continue
            # One file reached by two names (an absolute and a relative path, a symlinked folder given too, a
            # link beside its target) is screened once, under the first.
            key = file_identity(p) or str(p.absolute())
            if key not in seen:
                seen.add(key)
                yield p


def file_identity(path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names, following links; None when it cannot be stat'ed or the
    filesystem gives no inode numbers (0: some network and FAT mounts), where every file would look alike."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # gone, or a name the OS cannot take (a stored line's escaped bytes)
        return None
    return (st.st_dev, st.st_ino) if st.st_ino else None


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("._"):
                yield Path(dirpath) / name
