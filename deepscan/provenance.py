"""Provenance before pixels: what a file says about where it came from, read before any frame is judged.

:func:`read_provenance` gathers, for an analyst, the container's own statements (muxer and encoder strings,
brands, creation time, camera make/model and location tags, rotation), edit-list oddities of MP4/MOV files
(frames stored but hidden from playback, splices), and C2PA Content Credentials (through ``c2pa-python``:
present or absent, who signed, which tool made it, whether it declares generative AI, and whether the
signature and content hashes still hold). All of it is what the file *claims*: container tags are trivially
edited, and an absent manifest proves nothing. It is shown next to the verdict and never changes the score.

Everything read here is hostile input: ffmpeg runs with deepscan's file-only protocol and container whitelists
(:func:`deepscan.video.input_options`), the MP4 box walk is bounded, C2PA reading never fetches remote
manifests or OCSP responses, and every string is cut to a bounded, single-line length.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path

from .video import (
    PROBE_TIMEOUT_S,
    VideoError,
    _scrub,
    check_input,
    ffmpeg_exe,
    ffmpeg_input,
    ffprobe_exe,
    input_options,
    normalise_rotation,
)

MAX_TEXT = 200  # characters kept of any string from the file
MAX_TAGS = 64  # tags kept per block
# Tags an analyst looks at first; everything else stays under "tags".
DEVICE_TAGS = {
    "make": ("com.apple.quicktime.make", "com.android.manufacturer", "make"),
    "model": ("com.apple.quicktime.model", "com.android.model", "model"),
    "software": ("com.apple.quicktime.software", "com.android.version", "software"),
    "location": ("com.apple.quicktime.location.ISO6709", "location", "location-eng"),
    "capture_fps": ("com.android.capture.fps",),
}
# IPTC digital source types that say a generative model made (or edited) the content.
AI_SOURCE_TYPES = {
    "trainedAlgorithmicMedia": "created",  # "created by a generative AI tool"
    "compositeWithTrainedAlgorithmicMedia": "edited",  # "edited using generative AI"
    "compositeSynthetic": "edited",
}
C2PA_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2": "video/mp4", "avi": "video/x-msvideo"}
TRUST_ANCHORS_ENV = "DEEPSCAN_C2PA_TRUST_ANCHORS"  # PEM file of C2PA trust anchors (e.g. the C2PA trust list)


# Control characters left once whitespace is collapsed (ESC, NUL, C1) and bidi overrides: shown as "?", as
# ffmpeg's log does, so a string from the file cannot drive a terminal or reorder what is shown around it.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _text(value, limit: int = MAX_TEXT) -> str:
    text = _UNPRINTABLE.sub("?", " ".join(str(value).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -------------------------------------------------------------------------------------------- container
_INPUT = re.compile(r"^Input #0, (.+?), from '")
_STREAM = re.compile(r"^  Stream #0:(\d+)[^:]*: (\w+): (.*)$")
_TAG = re.compile(r"^(\s*)(.*?)\s*: (.*)$")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees", re.I)


def parse_ffmpeg_metadata(text: str) -> dict:
    """Container and per-stream tags and rotation from ``ffmpeg -i``'s banner (no ffprobe in the wheel).

    ffmpeg prints a value's line breaks as continuation lines with an empty key at the same indent, so a tag
    value can neither end its block nor pose as a stream. Lines are split on "\n" only, as ffmpeg breaks
    them: ``splitlines`` would also break on U+2028/U+2029/U+0085 inside a value, letting a tag forge a stream
    (a rotation note) or an ``Input #`` line that cuts the rest off.
    """
    out: dict = {"format": "", "tags": {}, "streams": []}
    block: dict | None = None
    block_indent = 0
    last_key = None
    stream: dict | None = None
    started = False
    for line in text.split("\n"):
        line = line.removesuffix("\r")  # a "\r\n" line end (Windows' text-mode stderr)
        if not started:
            if m := _INPUT.match(line):
                out["format"], started = m.group(1), True
            continue
        if line.startswith(("Input #", "Output #")):
            break
        indent = len(line) - len(line.lstrip(" "))
        if block is not None and last_key is not None and indent > block_indent and line.lstrip().startswith(": "):
            block[last_key] = _text(f"{block[last_key]} {line.lstrip()[2:]}")  # a value's next line
            continue
        if block is not None and indent == block_indent and (m := _TAG.match(line)):
            key, value = m.group(2), m.group(3)
            if key and len(block) < MAX_TAGS:
                last_key = _text(key, 80)
                block[last_key] = _text(value)
            continue
        block, last_key = None, None
        if line == "  Metadata:":
            block, block_indent = out["tags"], 4
        elif m := _STREAM.match(line):
            stream = {"index": int(m.group(1)), "type": m.group(2).lower(),
                      "codec": (m.group(3).split(",")[0].split() or ["unknown"])[0], "tags": {}}
            out["streams"].append(stream)
        elif stream is not None and line == "    Metadata:":
            block, block_indent = stream["tags"], 6
        elif stream is not None and indent >= 6 and (m := _ROTATION.search(line)):
            stream["rotation"] = normalise_rotation(float(m.group(1)))
        elif indent <= 2 and not line.startswith("  Stream"):
            stream = None
    return out


def parse_ffprobe_metadata(data: dict) -> dict:
    fmt = data.get("format") or {}
    out = {"format": fmt.get("format_name", ""), "tags": _bounded_tags(fmt.get("tags")), "streams": []}
    for s in data.get("streams") or []:
        stream = {"index": int(s.get("index") or 0), "type": str(s.get("codec_type") or "unknown"),
                  "codec": str(s.get("codec_name") or "unknown"), "tags": _bounded_tags(s.get("tags"))}
        for side in s.get("side_data_list") or []:
            if "rotation" in side:
                try:
                    stream["rotation"] = normalise_rotation(float(side["rotation"]))
                except (TypeError, ValueError):
                    pass
        out["streams"].append(stream)
    return out


def _bounded_tags(tags) -> dict:
    if not isinstance(tags, dict):
        return {}
    return {_text(k, 80): _text(v) for k, v in list(tags.items())[:MAX_TAGS]}


def read_container(path, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Container metadata via ffprobe when installed, else ffmpeg's banner; confined like the video stage."""
    url = ffmpeg_input(path)
    confine = input_options()
    probe_bin = ffprobe_exe()
    try:
        if probe_bin:
            proc = subprocess.run([probe_bin, "-v", "error", *confine, "-print_format", "json", "-show_format",
                                   "-show_streams", url], capture_output=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
            try:
                meta = parse_ffprobe_metadata(json.loads(proc.stdout or b"{}"))
            except ValueError:
                raise VideoError("ffprobe gave unreadable output") from None
            meta["read_with"] = "ffprobe"
        else:
            proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *confine, "-i", url],
                                  capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
            meta = parse_ffmpeg_metadata(_scrub(proc.stderr.decode("utf-8", "replace"), url))
            meta["read_with"] = "ffmpeg"
    except subprocess.TimeoutExpired:
        raise VideoError(f"reading metadata took longer than {timeout_s:.0f} s") from None
    except OSError as exc:
        raise VideoError(f"could not run ffmpeg: {exc.strerror or exc}") from None
    if not meta["format"]:
        raise VideoError("ffmpeg could not read the container")
    return meta


# ------------------------------------------------------------------------------------- MP4 edit lists
_CONTAINERS = {b"moov", b"trak", b"mdia", b"edts", b"minf"}
_MAX_BOXES = 4096
_MAX_BOX_READ = 1 << 20  # bytes read of one leaf box (ftyp, mvhd, mdhd, hdlr)
# Kept at parse time, so a file of thousands of tracks or edits costs no memory and no bulk in every results
# line (the record says when a list was cut): edits per edit list, tracks per file, and edit-list notes.
MAX_EDITS = 20
MAX_TRACKS = 32
MAX_EDIT_NOTES = 12
# Encoders delay video by a few frames (B-frames) and audio by its priming samples through an edit list;
# hidden or delayed spans longer than this are worth a look.
EDIT_NOTE_S = 0.5


def _boxes(fh, start: int, end: int, budget: list[int]):
    pos = start
    while pos + 8 <= end and budget[0] > 0:
        budget[0] -= 1
        fh.seek(pos)
        header = fh.read(16)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header[:8])
        head = 8
        if size == 1 and len(header) == 16:
            size, head = struct.unpack(">Q", header[8:16])[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield kind, pos + head, pos + size
        pos += size


def read_mp4_structure(path) -> dict | None:
    """Brands from ``ftyp`` and each track's edit list (``moov/trak/edts/elst``) of an ISO-BMFF file.

    Returns None for other files. Bounded: at most :data:`_MAX_BOXES` boxes, small leaf boxes only.
    """
    budget = [_MAX_BOXES]
    try:
        with open(path, "rb") as fh:
            end = os.fstat(fh.fileno()).st_size
            first = fh.read(8)
            if len(first) < 8 or first[4:8] not in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
                return None
            out: dict = {"tracks": []}
            movie_timescale = 0
            for kind, a, b in _boxes(fh, 0, end, budget):
                if kind == b"ftyp":
                    fh.seek(a)
                    raw = fh.read(min(b - a, 256))
                    if len(raw) >= 8:  # raw bytes from the file: cleaned like every other string
                        out["major_brand"] = _text(raw[:4].decode("latin-1"), 4)
                        out["minor_version"] = struct.unpack(">I", raw[4:8])[0]
                        out["compatible_brands"] = [_text(raw[i:i + 4].decode("latin-1"), 4)
                                                    for i in range(8, len(raw) - 3, 4)]
                elif kind == b"moov":
                    for k2, a2, b2 in _boxes(fh, a, b, budget):
                        if k2 == b"mvhd":
                            movie_timescale = _time_header(fh, a2, b2)[0]
                        elif k2 == b"mvex":  # fragmented: mdhd counts only the samples in moov
                            out["fragmented"] = True
                        elif k2 == b"trak":
                            out["n_tracks"] = out.get("n_tracks", 0) + 1
                            if len(out["tracks"]) < MAX_TRACKS:
                                out["tracks"].append(_track(fh, a2, b2, budget))
                            else:
                                out["tracks_cut"] = True
            for t in out["tracks"]:
                _edit_times(t, movie_timescale)
            return out
    except (OSError, struct.error):
        return None


def _time_header(fh, a: int, b: int) -> tuple[int, int]:
    """(timescale, duration) of an ``mvhd`` or ``mdhd`` box (one layout up to there); 0 for a field that is
    unreadable, and for a duration left unset (all ones: a fragmented file's)."""
    fh.seek(a)
    raw = fh.read(min(b - a, 32))
    if len(raw) < 24:
        return 0, 0
    version = raw[0]
    offset, fmt = (20, ">IQ") if version == 1 else (12, ">II")
    if len(raw) < offset + struct.calcsize(fmt):
        return (struct.unpack(">I", raw[offset:offset + 4])[0] if len(raw) >= offset + 4 else 0), 0
    timescale, duration = struct.unpack(fmt, raw[offset:offset + struct.calcsize(fmt)])
    return timescale, 0 if duration in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF) else duration


def _track(fh, a: int, b: int, budget) -> dict:
    track: dict = {"handler": None, "media_timescale": 0, "edits": None}
    stack = [(a, b)]
    while stack:
        sa, sb = stack.pop()
        for kind, ka, kb in _boxes(fh, sa, sb, budget):
            if kind in _CONTAINERS:
                stack.append((ka, kb))
            elif kind == b"hdlr" and track["handler"] is None:
                fh.seek(ka)
                raw = fh.read(12)
                # QuickTime puts a second hdlr in minf, the data handler ("dhlr", subtype "url "/"alis"): the
                # media's handler ("vide", "soun") is the first, in mdia.
                if len(raw) == 12 and raw[4:8] != b"dhlr":
                    track["handler"] = _text(raw[8:12].decode("latin-1"), 4)
            elif kind == b"mdhd":
                track["media_timescale"], track["media_duration"] = _time_header(fh, ka, kb)
            elif kind == b"elst":
                fh.seek(ka)
                raw = fh.read(min(kb - ka, 8 + MAX_EDITS * 20))  # only the entries kept are read
                track["edits"], track["edit_count"] = _elst(raw, kb - ka)
    return track


def _elst(raw: bytes, size: int | None = None) -> tuple[list[tuple[int, int, float]], int]:
    """The first :data:`MAX_EDITS` entries of an ``elst`` box (``raw``: its start; ``size``: its whole
    payload), and how many entries it holds (its count, as far as the box is large enough for them)."""
    if len(raw) < 8:
        return [], 0
    version, count = raw[0], struct.unpack(">I", raw[4:8])[0]
    fmt, step = (">QqhH", 20) if version == 1 else (">IihH", 12)
    count = min(count, ((len(raw) if size is None else size) - 8) // step)
    entries = []
    for i in range(min(count, (len(raw) - 8) // step, MAX_EDITS)):
        duration, media_time, rate, fraction = struct.unpack(fmt, raw[8 + i * step: 8 + (i + 1) * step])
        entries.append((duration, media_time, rate + fraction / 65536))
    return entries, count


def _edit_times(track: dict, movie_timescale: int) -> None:
    """Edit entries in seconds: (duration on the timeline, media time or None for an empty edit, rate)."""
    raw = track.pop("edits")
    mts = track.pop("media_timescale") or 0
    media_duration = track.pop("media_duration", 0)
    if mts and media_duration:
        track["media_duration_s"] = round(media_duration / mts, 4)
    count = track.pop("edit_count", 0)
    if raw is None:
        track["edits"] = None
        return
    if count > len(raw):
        track["edits_cut"], track["edit_count"] = True, count
    track["edits"] = [{"duration_s": round(d / movie_timescale, 4) if movie_timescale else None,
                       "media_time_s": None if t < 0 else (round(t / mts, 4) if mts else None),
                       "rate": round(r, 4)} for d, t, r in raw]


def edit_list_notes(structure: dict | None) -> list[str]:
    """Plain-language notes on edit lists that hide, delay, splice or re-time stored media (at most
    :data:`MAX_EDIT_NOTES`; lists cut at parse time say so)."""
    notes = []
    structure = structure or {}
    for i, t in enumerate(structure.get("tracks") or []):
        edits = t.get("edits") or []
        kind = {"vide": "video", "soun": "audio"}.get(t.get("handler") or "", f"track {i + 1}")
        media = [e for e in edits if e["media_time_s"] is not None]
        # Empty edits before the first media edit delay the track; later ones are gaps in it.
        leading = next((n for n, e in enumerate(edits) if e["media_time_s"] is not None), len(edits))
        empty = sum((e["duration_s"] or 0.0) for e in edits[:leading])
        if t.get("edits_cut"):
            notes.append(f"{kind} edit list has {t['edit_count']} entries (only the first {len(edits)} read)")
        if len(media) > 1:
            notes.append(f"{kind} edit list splices {len(media)}{'+' if t.get('edits_cut') else ''} segments "
                         f"of the stored media")
        if media and (media[0]["media_time_s"] or 0.0) > EDIT_NOTE_S:
            notes.append(f"{kind}: the first {media[0]['media_time_s']:.2f} s of the stored media are hidden "
                         f"from playback by the edit list")
        if empty > EDIT_NOTE_S:
            notes.append(f"{kind} starts {empty:.2f} s late (empty edit)")
        at = 0.0  # where each later edit begins on the timeline
        for n, e in enumerate(edits):
            length = e["duration_s"] or 0.0
            if n >= leading and e["media_time_s"] is None and length > EDIT_NOTE_S:
                notes.append(f"{kind}: a {length:.2f} s gap at {at:.2f} s (empty edit)")
            elif e["media_time_s"] is not None and e["rate"] == 0.0 and length > EDIT_NOTE_S:
                notes.append(f"{kind}: the frame at {e['media_time_s']:.2f} s of the stored media is held for "
                             f"{length:.2f} s (dwell)")
            at += length
        if any(e["rate"] not in (1.0, 0.0) for e in edits):
            notes.append(f"{kind} edit list plays media at a rate other than 1")
        stored = t.get("media_duration_s")
        played = [(e["media_time_s"], e["media_time_s"] + (e["duration_s"] or 0.0) * e["rate"])
                  for e in media if e["duration_s"] is not None and e["rate"] > 0]
        # Not for a fragmented file (its stored length is not mdhd's), nor where an edit runs to the end of
        # the media (duration 0, as fragmented files write them).
        to_the_end = any(e["duration_s"] == 0 for e in media)
        if stored and played and not (t.get("edits_cut") or structure.get("fragmented") or to_the_end):
            tail = stored - max(end for _, end in played)
            if tail > EDIT_NOTE_S:
                notes.append(f"{kind}: the last {tail:.2f} s of the stored media are hidden from playback by the "
                             f"edit list")
    if structure.get("tracks_cut"):
        notes.insert(0, f"the file has {structure['n_tracks']} tracks (only the first {MAX_TRACKS} read)")
    if len(notes) > MAX_EDIT_NOTES:
        notes = notes[:MAX_EDIT_NOTES - 1] + [f"… and {len(notes) - MAX_EDIT_NOTES + 1} more edit-list notes"]
    return notes


# ----------------------------------------------------------------------------------------------- C2PA
def c2pa_available() -> bool:
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def read_c2pa(path, container: str | None = None, trust_anchors: str | None = None) -> dict:
    """C2PA Content Credentials of a file, validated offline.

    ``status``: ``absent`` (no manifest), ``valid`` (signature and content hashes hold and the signer
    chains to a trust anchor), ``untrusted_signer`` (they hold, but the signer is not on the trust
    anchors: without ``trust_anchors``/``$DEEPSCAN_C2PA_TRUST_ANCHORS`` every signer is), ``tampered``
    (the content or the manifest changed after signing), ``invalid`` (other validation failures),
    ``unsupported`` (a container C2PA does not cover here), ``unavailable`` (c2pa-python not installed) or
    ``error``.
    """
    if not c2pa_available():
        return {"present": None, "status": "unavailable"}
    import c2pa

    mime = C2PA_FORMATS.get(container or "", None) if container is not None else "video/mp4"
    if mime is None:
        return {"present": None, "status": "unsupported",
                "note": f"C2PA is not read from {container} files" if container else "unknown container"}
    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True}}
    anchors_path = trust_anchors or os.environ.get(TRUST_ANCHORS_ENV)
    if anchors_path:
        try:
            settings["trust"] = {"user_anchors": Path(anchors_path).read_text()}
        except (OSError, UnicodeDecodeError) as exc:
            return {"present": None, "status": "error", "error": _text(f"C2PA trust anchors unreadable: {exc}")}
    try:
        context = c2pa.Context(settings=c2pa.Settings.from_dict(settings))
        with open(path, "rb") as fh:
            reader = c2pa.Reader.try_create(mime, fh, None, context)
            if reader is None:
                return {"present": False, "status": "absent"}
            with reader:
                store = json.loads(reader.json())
                embedded = reader.is_embedded()
    except c2pa.C2paError as exc:
        return {"present": None, "status": "error", "error": _text(f"{type(exc).__name__.lstrip('_')}: {exc}")}
    except OSError as exc:  # the file went away or became unreadable since it was checked
        return {"present": None, "status": "error", "error": _text(f"could not read the file: {exc.strerror or exc}")}
    info = summarise_manifest_store(store)
    info["embedded"] = embedded
    return info


def summarise_manifest_store(store: dict) -> dict:
    """The parts of a C2PA manifest store (Reader.json()) an analyst needs, bounded in size."""
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest")) or {}
    failures = [s.get("code") for s in (store.get("validation_status") or []) if isinstance(s, dict)]
    state = store.get("validation_state")
    tampered = any(str(c).endswith(".mismatch") or "mismatch" in str(c) for c in failures)
    if state == "Invalid" or (failures and not state):
        status = "tampered" if tampered else "invalid"
    elif state == "Trusted":
        status = "valid"
    elif "signingCredential.untrusted" in failures:
        status = "untrusted_signer"
    else:
        status = "valid" if not failures else "invalid"
    sig = active.get("signature_info") or {}
    ai: list[dict] = []
    for label, m in list(manifests.items())[:32]:
        for source_type in _digital_source_types(m):
            term = source_type.rsplit("/", 1)[-1]
            if term in AI_SOURCE_TYPES:
                ai.append({"manifest": _text(label, 100), "active": m is active, "digital_source_type": term,
                           "meaning": AI_SOURCE_TYPES[term]})
    actions = [{"action": _text(a.get("action", "")), "digital_source_type":
                _text(str(a.get("digitalSourceType", "")).rsplit("/", 1)[-1]) or None,
                "software_agent": _agent(a.get("softwareAgent"))} for a in _actions(active)][:20]
    active_ai = next((x["meaning"] for x in ai if x["active"]), None)
    return {
        "present": True,
        "status": status,
        "validation_state": state,
        "failures": [_text(c, 80) for c in failures][:20],
        "claim_generator": _claim_generator(active),
        "title": _text(active["title"]) if active.get("title") else None,
        "signer": {"common_name": _text(sig.get("common_name", "")) or None,
                   "issuer": _text(sig.get("issuer", "")) or None, "alg": sig.get("alg"),
                   "time": sig.get("time")},
        "actions": actions,
        "generative_ai": active_ai or ("in an ingredient" if ai else None),
        "ai_assertions": ai[:10],
        "n_manifests": len(manifests),
    }


def _actions(manifest: dict) -> list[dict]:
    found = []
    for a in manifest.get("assertions") or []:
        if isinstance(a, dict) and str(a.get("label", "")).startswith("c2pa.actions"):
            found += [x for x in (a.get("data") or {}).get("actions") or [] if isinstance(x, dict)]
    return found


def _digital_source_types(manifest: dict) -> list[str]:
    return [str(a["digitalSourceType"]) for a in _actions(manifest) if a.get("digitalSourceType")]


def _agent(agent) -> str | None:
    if isinstance(agent, dict):
        return _text(" ".join(str(agent.get(k, "")) for k in ("name", "version")).strip()) or None
    return _text(agent) if agent else None


def _claim_generator(manifest: dict) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        return _text(" ".join(str(info[0].get(k, "")) for k in ("name", "version")).strip()) or None
    return _text(manifest["claim_generator"]) if manifest.get("claim_generator") else None


# ---------------------------------------------------------------------------------------------- facade
def _by_lower_name(tags: dict) -> dict:
    """``tags`` keyed by lower-case name (the first of names that differ only in case)."""
    named: dict = {}
    for k, v in tags.items():
        named.setdefault(str(k).lower(), v)
    return named


def read_provenance(path, timeout_s: float = PROBE_TIMEOUT_S, trust_anchors: str | None = None) -> dict:
    """What the file says about its origin (see the module docstring). Never raises for a bad file: a part
    that cannot be read says so under ``errors``."""
    out: dict = {"container": None, "device": {}, "streams": [], "edit_lists": None, "c2pa": None, "notes": [],
                 "errors": []}
    try:
        check_input(path)
    except VideoError as exc:
        out["errors"].append(str(exc))
        return out
    meta = None
    try:
        meta = read_container(path, timeout_s)
    except VideoError as exc:
        out["errors"].append(f"container: {exc}")
    structure = read_mp4_structure(path)
    if meta:
        tags = meta["tags"]
        # Looked up without regard to case: Matroska/WebM tags come out of ffmpeg upper case (ENCODER,
        # HANDLER_NAME), MP4's lower case; the stored tags stay as the file has them.
        named = _by_lower_name(tags)
        out["container"] = {"format": meta["format"], "read_with": meta["read_with"],
                            **{k: named.get(k) for k in ("major_brand", "minor_version", "compatible_brands",
                                                         "creation_time", "encoder")},
                            "tags": tags}
        for s in meta["streams"]:
            stream_named = _by_lower_name(s["tags"])
            out["streams"].append({"index": s["index"], "type": s["type"], "codec": s["codec"],
                                   "handler_name": stream_named.get("handler_name"),
                                   "encoder": stream_named.get("encoder"),
                                   "creation_time": stream_named.get("creation_time"),
                                   "rotation": s.get("rotation", 0), "tags": s["tags"]})
        all_tags = [named] + [_by_lower_name(s["tags"]) for s in meta["streams"]]
        for field, keys in DEVICE_TAGS.items():
            value = next((t[k.lower()] for k in keys for t in all_tags if t.get(k.lower())), None)
            if value:
                out["device"][field] = value
    if structure is not None:
        out["edit_lists"] = [{"handler": t["handler"], "edits": t["edits"] or [],
                              **({"edit_count": t["edit_count"]} if t.get("edits_cut") else {})}
                             for t in structure["tracks"]]
        if structure.get("tracks_cut"):
            out["edit_lists_cut"] = {"tracks": structure["n_tracks"], "read": MAX_TRACKS}
        if out["container"] is not None and not out["container"].get("major_brand") and structure.get("major_brand"):
            out["container"]["major_brand"] = structure["major_brand"]
    out["c2pa"] = read_c2pa(path, meta["format"] if meta else "", trust_anchors)
    out["notes"] = provenance_notes(out, structure)
    return out


_FFMPEG_MUXER = re.compile(r"^Lavf\d")


def provenance_notes(prov: dict, structure: dict | None = None) -> list[str]:
    """Neutral, one-line observations (what the file claims, not a judgement)."""
    notes = []
    c2 = prov.get("c2pa") or {}
    if c2.get("present"):
        who = (c2.get("signer") or {}).get("common_name") or (c2.get("signer") or {}).get("issuer") or "unknown signer"
        notes.append(f"C2PA content credentials: {c2['status'].replace('_', ' ')}, signed by {who}"
                     + (f", made with {c2['claim_generator']}" if c2.get("claim_generator") else ""))
        if c2.get("generative_ai") == "created":
            notes.append("C2PA declares the content created by a generative AI tool (trainedAlgorithmicMedia)")
        elif c2.get("generative_ai"):
            notes.append(f"C2PA declares generative AI use ({c2['generative_ai']})")
    container = prov.get("container") or {}
    encoder = container.get("encoder") or ""
    if _FFMPEG_MUXER.match(encoder):
        notes.append(f"written by FFmpeg's muxer ({encoder}): processed or re-encoded, not straight from a camera")
    elif encoder:
        notes.append(f"container encoder tag: {encoder}")
    device = prov.get("device") or {}
    if device.get("make") or device.get("model"):
        notes.append("device tags: " + " ".join(x for x in (device.get("make"), device.get("model")) if x))
    rotations = [s["rotation"] for s in prov.get("streams") or [] if s.get("type") == "video" and s.get("rotation")]
    if rotations:
        notes.append(f"rotation metadata: players turn the video {rotations[0]}° clockwise")
    notes += edit_list_notes(structure)
    return notes


def provenance_summary(prov: dict | None) -> str:
    """A short cell for tables: C2PA state first, then device or muxer."""
    if not prov:
        return "—"
    parts = []
    c2 = prov.get("c2pa") or {}
    if c2.get("present"):
        label = {"valid": "C2PA ✓", "untrusted_signer": "C2PA (untrusted signer)", "tampered": "C2PA TAMPERED",
                 "invalid": "C2PA invalid"}.get(c2.get("status"), "C2PA")
        if c2.get("generative_ai") == "created":
            label += " · AI-generated"
        elif c2.get("generative_ai"):
            label += " · AI-edited"
        parts.append(label)
    device = prov.get("device") or {}
    if device.get("make") or device.get("model"):
        parts.append(" ".join(x for x in (device.get("make"), device.get("model")) if x))
    encoder = (prov.get("container") or {}).get("encoder") or ""
    if encoder and not parts:
        parts.append(encoder)
    if any("edit list" in n or "hidden" in n for n in prov.get("notes") or []):
        parts.append("edit list")
    return " · ".join(parts) or "—"
