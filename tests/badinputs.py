"""A corpus of hostile and broken inputs, generated with ffmpeg (never downloaded).

``make_corpus(root)`` writes every kind it can into ``root`` and returns ``{relative name: Expect}``. Kinds
that need an encoder this ffmpeg lacks are left out. What each kind must give:

- ``error``: an error result with a one-line message (``message``, when set, is a regex it must match);
- ``ok``: screened with faces found (the face kinds are made from ``sample_clips/astronaut_real.mp4``);
- ``no_face``: screened, no face (synthetic test pattern);
- ``works``: ``ok`` or ``no_face`` (damaged but decodable);
- ``any``: whatever it gives, never a crash (random damage);
- ``skipped``: must produce no result line (e.g. a directory symlink loop that must not be walked).

Run ``python tests/badinputs.py DIR`` to write a corpus to look at.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACE_CLIP = REPO / "sample_clips" / "astronaut_real.mp4"


@dataclass(frozen=True)
class Expect:
    outcome: str  # error | ok | no_face | works | any | skipped
    what: str  # one line for the docs table
    message: str | None = None  # regex the error message must match


def ffmpeg_exe() -> str:
    from deepscan.video import ffmpeg_exe as exe

    return exe()


def ffmpeg(*args: str) -> None:
    # SVT_LOG=1: SVT-AV1 logs on its own, past ffmpeg's -loglevel.
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True,
                   stdin=subprocess.DEVNULL, timeout=300, env={**os.environ, "SVT_LOG": "1"})


@lru_cache(maxsize=1)
def encoders() -> frozenset[str]:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True,
                         timeout=60).stdout
    # Lines look like " V....D libx264   description": six flag characters, then the name.
    rows = (line.split() for line in out.splitlines() if line.startswith(" "))
    return frozenset(row[1] for row in rows if len(row) > 1 and len(row[0]) == 6)


def pattern_clip(path: Path, seconds: float = 2.0, size: str = "160x120", rate: str = "25",
                 *extra: str) -> Path:
    """Synthetic H.264 clip (ffmpeg's test pattern: every frame differs, no faces)."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}", "-t", str(seconds), "-c:v", "libx264",
           "-pix_fmt", "yuv420p", *extra, str(path))
    return path


def face_clip(path: Path, *out_args: str, vf: str = "", seconds: float = 1.0, size: int = 240) -> Path:
    """One second of the project's real astronaut clip, scaled, through any filter and encoder."""
    chain = f"scale={size}:{size}" + (f",{vf}" if vf else "")
    ffmpeg("-i", str(FACE_CLIP), "-t", str(seconds), "-an", "-vf", chain,
           *(out_args or ("-c:v", "libx264", "-pix_fmt", "yuv420p")), str(path))
    return path


def distinct_copy(src: Path, dst: Path) -> Path:
    """``src`` remuxed with the destination's name as a tag: same pictures, different bytes (so a cache
    keyed on content cannot stand in for actually opening this name)."""
    ffmpeg("-i", str(src), "-c", "copy", "-metadata", f"comment={dst.name!r}", "-f", "mp4", str(dst))
    return dst


def mp4_boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """Top-level ISO-BMFF boxes: type → (offset, size)."""
    boxes, pos = {}, 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            break
        boxes.setdefault(kind.decode("latin-1"), (pos, size))
        pos += size
    return boxes


def flip_bits(data: bytes, start: int, end: int, n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(n):
        i = rng.randrange(start, end)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def declared_size_mjpeg(path: Path, work: Path, width: int, height: int) -> Path:
    """A 2 KB QuickTime file whose headers (track, sample entry, JPEG SOF) declare ``width``×``height``.

    The payload is a 64×48 JPEG, so nothing that large exists: only a decoder that trusts the header would
    allocate it.
    """
    src = work / "small_mjpeg.mov"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=1", "-frames:v", "1", "-c:v", "mjpeg", "-pix_fmt",
           "yuvj420p", str(src))
    b = bytearray(src.read_bytes())
    sof = b.find(b"\xff\xc0")
    b[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    entry = b.find(b"jpeg", b.find(b"stsd"))
    wh = entry + 4 + 6 + 2 + 2 + 2 + 4 + 4 + 4  # VisualSampleEntry: width, height after these fields
    b[wh:wh + 4] = struct.pack(">HH", width, height)
    tkhd = b.find(b"tkhd")
    dims = tkhd + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 8 + 2 + 2 + 2 + 2 + 36  # version 0 tkhd: 16.16 width, height
    b[dims:dims + 8] = struct.pack(">II", width << 16, height << 16)
    path.write_bytes(bytes(b))
    return path


def child_processes() -> list[str]:
    """Live or zombie children of this process (ffmpeg must always be reaped); empty where /proc is absent."""
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me:  # fields after the command name: state, ppid, ...
            found.append(f"{stat.parent.name} ({fields[0]})")
    return found


def make_corpus(root, secret_path: Path | None = None, leak_url: str | None = None) -> dict[str, Expect]:
    """Write the corpus into ``root`` (created) and return what each input must give.

    ``secret_path`` is a file outside ``root`` that playlists point at (made with a SECRET-<uuid> token
    when not given); ``leak_url`` is where they point over the network (give a loopback listener's URL).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    work = root.parent / f".{root.name}-work"
    work.mkdir(exist_ok=True)
    if secret_path is None:
        secret_path = root.parent / f"{root.name}-secret.txt"
        secret_path.write_text(f"SECRET-{uuid.uuid4()}\n")
    leak_url = leak_url or "http://127.0.0.1:9/leak.mp4"
    secret_video = root.parent / f"{root.name}-secret-video.mp4"  # a real video outside root, named by a list
    pattern_clip(secret_video, seconds=1)
    enc = encoders()
    corpus: dict[str, Expect] = {}
    lavfi = ("-f", "lavfi", "-i")
    h264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p")
    playlist = r"refused: playlist"

    def add(name: str, outcome: str, what: str, message: str | None = None, data: bytes | None = None) -> str:
        """Record what ``name`` must give (and write ``data`` to it); returns its path for ffmpeg."""
        path = root / name
        if data is not None:
            path.write_bytes(data)
        corpus[name] = Expect(outcome, what, message)
        return str(path)

    # ---- not media at all
    add("empty.mp4", "error", "zero-byte file", r"empty", b"")
    add("random_bytes.mp4", "error", "64 KiB of random bytes named .mp4", None,
        random.Random(1).randbytes(65536))
    add("text.mp4", "error", "plain text named .mp4", r"text", b"this is not a video, just some text\n" * 50)
    add("html_error_page.mp4", "error", "an HTML error page saved as .mp4 (failed download)", r"HTML",
        b"<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body>Forbidden</body></html>\n")
    add("ftyp_then_garbage.mp4", "error", "a valid ftyp box followed by random bytes", None,
        struct.pack(">I4s4sI", 24, b"ftyp", b"isom", 512) + b"isomiso2" + random.Random(2).randbytes(4096))
    add("mpegts_noise.ts", "error", "MPEG-TS sync bytes every 188 bytes, random payload", None,
        b"".join(b"\x47" + random.Random(i).randbytes(187) for i in range(200)))

    # ---- other media types
    sine = (*lavfi, "sine=frequency=440:duration=1")
    ffmpeg(*sine, "-c:a", "aac", "-f", "mp4",
           add("audio_only_aac.mp4", "error", "AAC audio in MP4, no video track", r"no video stream"))
    if "libmp3lame" in enc:
        ffmpeg(*sine, "-c:a", "libmp3lame", "-f", "mp3",
               add("audio_mp3_named.mp4", "error", "an MP3 named .mp4", r"no video stream"))
    cover = work / "cover.png"
    ffmpeg(*lavfi, "color=c=red:size=64x64", "-frames:v", "1", str(cover))
    ffmpeg(*sine, "-i", str(cover), "-map", "0:a", "-map", "1:v", "-c:a", "aac", "-c:v", "png",
           "-disposition:v:0", "attached_pic", "-f", "mp4",
           add("audio_with_cover_art.mp4", "error", "audio with an embedded cover picture",
               r"no video stream"))
    add("png_named.mp4", "error", "a PNG image named .mp4", r"image", cover.read_bytes())
    still = work / "still.jpg"
    ffmpeg(*lavfi, "testsrc=size=64x48", "-frames:v", "1", "-f", "image2", "-c:v", "mjpeg", str(still))
    add("jpeg_named.mp4", "error", "a JPEG image named .mp4", r"image", still.read_bytes())
    ffmpeg(*lavfi, "testsrc=size=64x48:rate=5", "-t", "1", "-f", "gif",
           add("animated_gif_named.mp4", "error", "an animated GIF named .mp4", r"image"))

    # ---- damaged MP4s (test pattern, no face)
    plain = pattern_clip(work / "plain.mp4", seconds=2)
    fast = pattern_clip(work / "fast.mp4", 2, "160x120", "25", "-movflags", "+faststart")
    for label, src in (("faststart", fast), ("moov_at_end", plain)):
        data = src.read_bytes()
        boxes = mp4_boxes(data)
        (mo, ms), (do, ds) = boxes["moov"], boxes["mdat"]
        assert (mo < do) == (label == "faststart"), f"{label}: unexpected box order"
        for pct in (10, 50, 90):
            add(f"cut_in_moov_{pct}pct_{label}.mp4", "error",
                f"{label} MP4 cut {pct}% into the moov box (index incomplete)", r"^truncated MP4",
                data[:mo + ms * pct // 100])
            cut = data[:do + ds * pct // 100]
            if label == "faststart":  # the index survives: what was downloaded decodes
                add(f"cut_in_mdat_{pct}pct_{label}.mp4", "any" if pct == 10 else "works",
                    f"{label} MP4 cut {pct}% into the media data (index intact, frames missing)", None, cut)
            else:  # the index never arrived
                add(f"cut_in_mdat_{pct}pct_{label}.mp4", "error",
                    f"{label} MP4 cut {pct}% into the media data (index never written)", r"^truncated MP4",
                    cut)
    data = fast.read_bytes()
    boxes = mp4_boxes(data)
    (mo, ms), (do, ds) = boxes["moov"], boxes["mdat"]
    for seed in (1, 2, 3):
        add(f"bitflips_moov_{seed}.mp4", "any", "20 random bit flips inside the moov box", None,
            flip_bits(data, mo + 8, mo + ms, 20, seed))
        add(f"bitflips_mdat_{seed}.mp4", "any", "200 random bit flips inside the media data", None,
            flip_bits(data, do + 8, do + ds, 200, seed))
    add("mdat_size_huge.mp4", "works", "mdat box declaring a size far past the end of the file", None,
        data[:do] + struct.pack(">I", 0x7FFFFFF0) + data[do + 4:])

    # ---- limits
    for side, message in ((16000, r"16000x16000 is over the limit"), (20000, r"20000x20000")):
        declared_size_mjpeg(Path(add(f"declared_{side}x{side}.mov", "error",
                                     f"2 KB file whose headers declare a {side}x{side} frame", message)),
                            work, side, side)
    pattern_clip(Path(add("duration_5h.mp4", "error", "a real 5-hour video (one frame a minute, 64x48)",
                          r"duration 5:00:00 is over")), 5 * 3600, "64x48", "1/60")
    pattern_clip(Path(add("long_10min_1fps.mp4", "no_face",
                          "10 minutes at 1 fps, 64x48 (memory must stay flat)")), 600, "64x48", "1")

    # ---- unusual but valid
    pattern_clip(Path(add("one_frame.mp4", "no_face", "a single frame")), 0.04, "160x120", "25")
    pattern_clip(Path(add("tenth_of_a_second.mp4", "no_face", "0.1 s (3 frames at 30 fps)")), 0.1, "160x120",
                 "30")
    ffmpeg(*lavfi, "testsrc=size=161x97:rate=25", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv444p",
           add("odd_size_161x97.mp4", "no_face", "odd frame size 161x97 (4:4:4, as 4:2:0 needs even)"))
    # -frames:v, not -t: an output duration of 2 s dropped the second second's frames, moved past it.
    ffmpeg(*lavfi, "testsrc=size=160x120:rate=25", "-frames:v", "50", "-vf",
           "setpts='(N/25+if(gte(N,25),2,0))/TB'", "-fps_mode", "vfr", *h264,
           add("variable_frame_rate.mp4", "no_face", "variable frame rate: 1 s, a 2 s gap, 1 s"))
    pattern_clip(work / "payload.mp4", 1.2)
    shutil.copy(work / "payload.mp4",
                add("payload.bin", "no_face", "H.264 MP4 named .bin (found by content)"))
    ffmpeg(*lavfi, "testsrc=size=160x120:rate=25", "-t", "1", "-c:v", "libx264", "-f", "h264",
           add("raw_annexb.h264", "no_face", "raw H.264 elementary stream (no container)"))

    # ---- faces: rotation, codecs, containers (must be screened with faces found)
    upright = face_clip(work / "face_upright.mp4")
    shutil.copy(upright, add("face_h264.mp4", "ok", "reference: the face clip, H.264 in MP4"))
    # Stored turned clockwise by R, with a display matrix saying "turn R counter-clockwise": upright.
    for deg, turn in ((90, "transpose=clock"), (180, "hflip,vflip"), (270, "transpose=cclock")):
        stored = face_clip(work / f"stored_{deg}.mp4", vf=turn)
        ffmpeg("-display_rotation", str(deg), "-i", str(stored), "-c", "copy",
               add(f"face_rotated_{deg}.mp4", "ok", f"stored turned, display matrix rotates {deg}°"))
    ffmpeg("-display_rotation", "45", "-i", str(upright), "-c", "copy",
           add("face_rotated_45.mp4", "ok", "display matrix with an odd 45° angle (ffmpeg ignores it)"))
    ffmpeg("-i", str(upright), "-c", "copy", "-f", "mpegts",
           add("face_in_mpegts.ts", "ok", "H.264 in MPEG-TS"))
    if "libx265" in enc:
        face_clip(Path(add("face_hevc.mkv", "ok", "HEVC (x265) in Matroska")), "-c:v", "libx265", "-preset",
                  "ultrafast", "-x265-params", "log-level=error", "-pix_fmt", "yuv420p")
    if "libvpx-vp9" in enc:
        face_clip(Path(add("face_vp9.webm", "ok", "VP9 in WebM")), "-c:v", "libvpx-vp9", "-deadline",
                  "realtime", "-cpu-used", "8", "-b:v", "300k")
    av1 = next((e for e in ("libsvtav1", "libaom-av1", "librav1e") if e in enc), None)
    if av1:
        speed = {"libsvtav1": ("-preset", "12"), "libaom-av1": ("-cpu-used", "8", "-usage", "realtime"),
                 "librav1e": ("-speed", "10")}[av1]
        for ext, box in (("mkv", "Matroska"), ("webm", "WebM")):
            face_clip(Path(add(f"face_av1.{ext}", "ok", f"AV1 ({av1}) in {box}")), "-c:v", av1, *speed,
                      "-pix_fmt", "yuv420p")
    ffmpeg("-i", str(cover), "-i", str(upright), "-map", "0:v", "-map", "1:v", "-c:v:0", "png",
           "-c:v:1", "copy", "-disposition:v:0", "attached_pic", "-disposition:v:1", "default",
           add("face_with_cover_art.mp4", "ok", "the clip plus a cover picture (a second video stream)"))
    fake_lines = ("x\n  Stream #0:0: Video: rawvideo, rgb24, 30000x30000, 25 fps\n"
                  "        Display Matrix: rotation of -90.00 degrees")
    ffmpeg("-i", str(upright), "-c", "copy", "-metadata", f"title={fake_lines}", "-metadata:s:v:0",
           "comment=a\n  Duration: 09:00:00.00, start: 0.000000, bitrate: 1 kb/s",
           add("face_metadata_injection.mkv", "ok",
               "tags that print as fake stream, rotation and duration lines in ffmpeg's log"))

    # ---- playlists and lists that point elsewhere (must be refused without being followed)
    secret = secret_path.resolve()
    m3u8 = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{}\n#EXT-X-ENDLIST\n"
    concat = "ffconcat version 1.0\nfile '{}'\n"
    for name, what, text in (
        ("playlist_secret.m3u8", "HLS playlist naming a local secret file", m3u8.format(secret)),
        ("playlist_url.m3u8", "HLS playlist naming an http://127.0.0.1 URL", m3u8.format(leak_url)),
        ("playlist_named.mp4", "HLS playlist named .mp4", m3u8.format(secret)),
        ("concat_secret.ffconcat", "ffconcat list naming a local secret file", concat.format(secret)),
        ("concat_video_named.mp4", "ffconcat list named .mp4 naming a real video outside the folder",
         concat.format(secret_video)),
        ("concat_url.ffconcat", "ffconcat list naming an http://127.0.0.1 URL", concat.format(leak_url)),
        ("dash_manifest.mpd", "DASH manifest naming a URL",
         '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011">'
         f"<BaseURL>{leak_url}</BaseURL></MPD>\n"),
    ):
        add(name, "error", what, playlist, text.encode())

    # ---- file-system oddities
    noface = pattern_clip(work / "noface.mp4", seconds=1)
    (root / "loop_a.mp4").symlink_to("loop_b.mp4")
    (root / "loop_b.mp4").symlink_to("loop_a.mp4")
    add("loop_a.mp4", "error", "symlink loop between two .mp4 names")
    add("loop_b.mp4", "error", "symlink loop between two .mp4 names")
    (root / "dangling.mp4").symlink_to(work / "does_not_exist.mp4")
    add("dangling.mp4", "error", "symlink to a missing file", r"not found|broken")
    (root / "sub").mkdir()
    (root / "sub" / "back_to_root").symlink_to("..", target_is_directory=True)
    add("sub/back_to_root", "skipped", "directory symlink back to the scanned folder (not walked)")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.mp4")
        add("fifo.mp4", "error", "a named pipe called .mp4 (opening it would block)", r"regular file")
    if Path("/dev/zero").exists():
        (root / "dev_zero.mp4").symlink_to("/dev/zero")
        add("dev_zero.mp4", "error", "symlink to /dev/zero (endless device)", r"regular file")
    unreadable = Path(add("unreadable.mp4", "no_face" if os.geteuid() == 0 else "error",
                          "file without read permission (root reads it anyway)"))
    distinct_copy(noface, unreadable)
    unreadable.chmod(0)
    for name, what in (("name with spaces.mp4", "spaces in the name"),
                       ("vidéo_日本語_🎥.mp4", "non-ASCII name"),
                       ("new\nline.mp4", "a newline in the name"),
                       ("-i evil.mp4", "name starting with '-' (must not become an option)"),
                       ("--help.mp4", "name that looks like a long option"),
                       (os.fsdecode(b"latin1_caf\xe9.mp4"), "name that is not valid UTF-8 (byte 0xE9)")):
        distinct_copy(noface, Path(add(name, "no_face", what)))
    # Byte-identical copies must still get a line each, under their own names.
    shutil.copy(root / "one_frame.mp4",
                add("one_frame_duplicate.mp4", "no_face", "byte-identical copy of another input"))
    shutil.rmtree(work)
    return corpus


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs_corpus")
    for name, e in sorted(make_corpus(out).items()):
        print(f"{e.outcome:8} {name!r}: {e.what}")
