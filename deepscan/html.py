"""A self-contained HTML report (plus CSV exports) built from a scan's ``results.jsonl``.

The report works offline and from anywhere: no CDN, fonts or remote scripts, images referenced by relative
paths into ``assets/`` (see :mod:`deepscan.evidence`), so the output folder can be zipped and opened on
another machine. File names and error messages are hostile input: the template autoescapes everything, image
paths from the JSON are accepted only when they point inside ``assets/``, and a Content-Security-Policy
allows only the report's own inline style and script (by hash) and local images.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from . import __version__
from .campaign import altered_relations, group_key
from .evidence import image_paths, write_atomic
from .report import VERDICT_MEANING, distinct_names
from .results import VERDICTS, decimals_to_compare, is_number, read_result_lines, shown, verdict_cuts

TEMPLATE = "report.html.j2"
VIDEO_COLUMNS = ["path", "sha256", "status", "verdict", "score", "score_ci95_low", "score_ci95_high", "n_frames",
                 "n_faces", "n_tracks", "model", "model_sha256", "threshold", "config_hash", "error"]
FRAME_COLUMNS = ["path", "frame", "time_s", "track", "score", "prob", "x1", "y1", "x2", "y2", "heat_peak"]


def read_results(path: Path) -> tuple[list[dict], int]:
    """The last line for each video path, in order of first appearance, and the number of unreadable lines:
    cut short by a crash, or not of a result's shape (:func:`line_problem`). They are skipped and counted
    rather than failing the whole report."""
    lines, bad = read_result_lines(path)
    latest: dict[str, dict] = {}
    for d in lines:
        if line_problem(d) is None:
            latest[d["path"]] = d
        else:
            bad += 1
    return list(latest.values()), bad


# What the report reads of a line, and of what type: the results schema's types, checked by hand because
# validating a 32-frame line against the schema with jsonschema takes ~7 ms (0.17 ms here; 35 s against 0.9 s
# for 5,000 videos).
# A key may be missing (an older line); a key present must hold its type. None: JSON null.
_NUMBER, _INT, _STR, _BOOL, _DICT, _LIST = "number", "int", "str", "bool", "dict", "list"
_TOP = {"sha256": (_STR, None), "size_bytes": (_INT, None), "score": (_NUMBER, None), "verdict": (_STR,),
        "error": (_STR, None), "model": (_DICT, None), "n_frames": (_INT, None), "n_faces": (_INT, None),
        "n_tracks": (_INT, None), "tracks": (_LIST, None), "frames": (_LIST, None), "video": (_DICT, None),
        "timing": (_DICT, None), "config": (_DICT, None), "config_hash": (_STR, None),
        "environment": (_DICT, None), "deepscan_version": (_STR, None), "started_at": (_STR, None),
        "finished_at": (_STR, None), "extra": (_DICT, None)}
_TRACK = {"id": (_INT,), "n_faces": (_INT,), "score": (_NUMBER,), "verdict": (_STR,), "first_time_s": (_NUMBER,),
          "last_time_s": (_NUMBER,), "counted": (_BOOL,)}
_FRAME = {"index": (_INT,), "time_s": (_NUMBER,), "faces": (_LIST,)}
_FACE_REQUIRED = {"box": (_LIST,), "track": (_INT,), "score": (_NUMBER,)}
_FACE_OPTIONAL = {"prob": (_NUMBER, None), "heat_peak": (_NUMBER, None)}
_EVIDENCE = {"timeline": (_STR, None), "colormap": (_STR, None), "faces": (_LIST, None), "tracks": (_LIST, None)}
_EVIDENCE_FACE_REQUIRED = {"score": (_NUMBER,), "time_s": (_NUMBER,), "frame": (_INT,), "track": (_INT,)}
_EVIDENCE_FACE_OPTIONAL = {"crop": (_STR, None), "overlay": (_STR, None)}
_EVIDENCE_TRACK = {"track": (_INT,), "thumb": (_STR, None)}
_CAMPAIGN = {"group": (_INT, _STR, None), "representative": (_STR,), "size": (_INT,), "inherited": (_BOOL,),
             "screened_as": (_STR,), "altered_groups": (_LIST,), "altered_representatives": (_LIST,),
             "is_representative": (_BOOL,)}
_EXTRA = {"evidence_error": (_STR, None)}
_PROVENANCE = {"notes": (_LIST,), "errors": (_LIST,), "device": (_DICT,), "c2pa": (_DICT, None),
               "container": (_DICT, None), "streams": (_LIST,)}
_C2PA = {"status": (_STR, None), "signer": (_DICT, None)}
_ENVIRONMENT = {"git_commit": (_STR, None), "host": (_STR, None), "device": (_STR, None),
                "precision": (_STR, None)}


_CHECKS = {_NUMBER: is_number, _INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
           _STR: lambda v: isinstance(v, str), _BOOL: lambda v: isinstance(v, bool),
           _DICT: lambda v: isinstance(v, dict), _LIST: lambda v: isinstance(v, list), None: lambda v: v is None}


def _of_type(value, kinds) -> bool:
    for kind in kinds:
        if _CHECKS[kind](value):
            return True
    return False


def _fields_problem(d, fields: dict, what: str, required: bool = False) -> str | None:
    if not isinstance(d, dict):
        return f"{what} is not an object"
    for key, kinds in fields.items():
        if key not in d:
            if required:
                return f"{what} has no {key}"
        elif not _of_type(d[key], kinds):
            return f"{what}.{key} is not {' or '.join(str(k or 'null') for k in kinds)}"
    return None


def line_problem(d: dict) -> str | None:
    """Why a ``results.jsonl`` object cannot be shown as a result (a hand-edited or another tool's line), or
    None: the types of every field the report, its timeline and the CSV exports read."""
    problem = _fields_problem(d, _TOP, "line")
    if problem:
        return problem
    if d.get("status") not in ("ok", "no_face", "error"):
        return "status is not ok, no_face or error"
    ci = d.get("score_ci95")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(is_number(v) for v in ci)):
        return "score_ci95 is not two numbers"
    for t in d.get("tracks") or []:
        problem = _fields_problem(t, _TRACK, "track", required=True)
        if problem:
            return problem
    for frame in d.get("frames") or []:
        problem = _fields_problem(frame, _FRAME, "frame", required=True)
        if problem:
            return problem
        for face in frame["faces"]:
            problem = _fields_problem(face, _FACE_REQUIRED, "face", required=True) or _fields_problem(
                face, _FACE_OPTIONAL, "face")
            if problem:
                return problem
            box = face["box"]
            if len(box) != 4 or not all(is_number(v) for v in box):
                return "face.box is not four numbers"
    if not _of_type((d.get("video") or {}).get("duration_s"), (_NUMBER, None)):
        return "video.duration_s is not a number"
    if not all(is_number(v) for v in (d.get("timing") or {}).values()):
        return "timing holds something other than numbers"
    config = d.get("config") or {}
    if not (_of_type(config.get("fps"), (_NUMBER, None)) and _of_type(config.get("frames"), (_INT, None))):
        return "config.fps or config.frames is not a number"
    if d.get("environment") is not None:
        problem = _fields_problem(d["environment"], _ENVIRONMENT, "environment")
        if problem:
            return problem
    extra = d.get("extra") or {}
    ev, campaign, prov = extra.get("evidence"), extra.get("campaign"), extra.get("provenance")
    problem = (_fields_problem(extra, _EXTRA, "extra")
               or (ev is not None and _fields_problem(ev, _EVIDENCE, "evidence"))
               or (campaign is not None and _fields_problem(campaign, _CAMPAIGN, "campaign"))
               or (prov is not None and _fields_problem(prov, _PROVENANCE, "provenance")))
    if problem:
        return problem
    for f in (ev or {}).get("faces") or []:
        problem = (_fields_problem(f, _EVIDENCE_FACE_REQUIRED, "evidence face", required=True)
                   or _fields_problem(f, _EVIDENCE_FACE_OPTIONAL, "evidence face"))
        if problem:
            return problem
    for t in (ev or {}).get("tracks") or []:
        problem = _fields_problem(t, _EVIDENCE_TRACK, "evidence track", required=True)
        if problem:
            return problem
    if not all(isinstance(g, (int, str)) for g in (campaign or {}).get("altered_groups") or []):
        return "campaign.altered_groups holds something other than group numbers"
    if not all(isinstance(g, str) for g in (campaign or {}).get("altered_representatives") or []):
        return "campaign.altered_representatives holds something other than paths"
    prov = prov or {}
    if not all(isinstance(n, str) for n in [*(prov.get("notes") or []), *(prov.get("errors") or [])]):
        return "provenance notes or errors are not text"
    if prov.get("c2pa") is not None:
        problem = _fields_problem(prov["c2pa"], _C2PA, "provenance c2pa")
        if problem:
            return problem
    if not all(isinstance(s, dict) for s in prov.get("streams") or []):
        return "provenance streams hold something other than objects"
    if not all(isinstance(v, (str, type(None))) for v in (prov.get("device") or {}).values()):
        return "provenance device holds something other than text"
    return None


def _asset(out_dir: Path, rel) -> str | None:
    """A URL for an image path from the JSON, or None unless it is a relative path inside assets/ that exists
    (a moved or tampered results file then loses an image rather than pointing the report elsewhere)."""
    if not isinstance(rel, str) or "\\" in rel or ":" in rel:
        return None
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or p.parts[0] != "assets" or ".." in p.parts:
        return None
    if not (out_dir / p).is_file():
        return None
    return quote(p.as_posix())


def _fmt(value, digits: int = 3, unit: str = "") -> str:
    if value is None or value == "" or value == {} or value == []:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _timestamp(value) -> str:
    """ISO-8601 → "YYYY-MM-DD HH:MM:SS UTC" (as written by the scanner), anything else as it is."""
    if not value:
        return "—"
    try:
        return datetime.fromisoformat(str(value)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(value)


def _size(n) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _sort_key(value) -> str:
    """The ``data-sort`` value of a numeric cell: missing values sort below every number."""
    return "-1e300" if value is None else repr(float(value))


def _spreadsheet_safe(text) -> str:
    # A cell starting with = + - @ is run as a formula by spreadsheets (CSV injection); file names are hostile.
    text = "" if text is None else str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_cell(value):
    # Numbers stay numbers (a negative score is no formula); any other value from results.jsonl is text a
    # spreadsheet could run, whichever column it sits in.
    if value is None or is_number(value):
        return value
    return _spreadsheet_safe(value)


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def _model_view(model) -> dict:
    """A result's model block with a threshold and band that are numbers or None (shown as unknown): the
    template computes with them, and results.jsonl is hostile input."""
    model = dict(model) if isinstance(model, dict) else {}
    for key in ("threshold", "uncertain_band"):
        if key in model:
            model[key] = model[key] if is_number(model[key]) else None
    return model


def video_rows(results: list[dict]) -> list[dict]:
    rows = []
    for d in results:
        model = _model_view(d.get("model"))
        ci = d.get("score_ci95") or (None, None)
        rows.append({"path": _spreadsheet_safe(d["path"]), "sha256": d.get("sha256") or "",
                     "status": d.get("status"), "verdict": d.get("verdict"), "score": d.get("score"),
                     "score_ci95_low": ci[0], "score_ci95_high": ci[1], "config_hash": d.get("config_hash") or "",
                     "n_frames": d.get("n_frames"), "n_faces": d.get("n_faces"), "n_tracks": d.get("n_tracks"),
                     "model": _spreadsheet_safe(model.get("name")), "model_sha256": model.get("sha256") or "",
                     "threshold": model.get("threshold"), "error": _spreadsheet_safe(d.get("error"))})
    return rows


def frame_rows(results: list[dict]) -> list[dict]:
    rows = []
    for d in results:
        for frame in d.get("frames") or []:
            for face in frame.get("faces") or []:
                x1, y1, x2, y2 = face["box"]
                rows.append({"path": _spreadsheet_safe(d["path"]), "frame": frame["index"],
                             "time_s": frame["time_s"], "track": face["track"], "score": face["score"],
                             "prob": face.get("prob"), "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                             "heat_peak": face.get("heat_peak")})
    return rows


class MissingEvidenceWarning(UserWarning):
    """Evidence images that results.jsonl names are not in the report folder's assets/ (moved or deleted):
    the report is built without them, each video saying how many it lacks."""


def _missing_images(d: dict, out_dir: Path) -> int:
    """How many of the evidence images a result names the report cannot show (absent, or outside assets/)."""
    return sum(_asset(out_dir, n) is None for n in image_paths((d.get("extra") or {}).get("evidence") or {}))


def anchor_of(path: str) -> str:
    """A video section's id, from its path: stable across rebuilds, so a link noted in a case file
    (``report.html#v…``) keeps opening the same video when later results change the order."""
    return "v" + hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _video_view(d: dict, out_dir: Path, name: str) -> dict:
    extra = d.get("extra") or {}
    ev = extra.get("evidence") or {}
    faces = []
    for f in ev.get("faces") or []:
        crop, overlay = _asset(out_dir, f.get("crop")), _asset(out_dir, f.get("overlay"))
        if crop or overlay:
            faces.append({**f, "crop_url": crop, "overlay_url": overlay})
    tracks_by_id = {t["id"]: t for t in d.get("tracks") or []}
    thumbs = {t["track"]: _asset(out_dir, t.get("thumb")) for t in ev.get("tracks") or []}
    tracks = [{**t, "thumb_url": thumbs.get(t["id"])} for t in tracks_by_id.values()]
    video = d.get("video") or {}
    timing = d.get("timing") or {}
    path = d["path"]
    campaign = extra.get("campaign") or {}
    # A verified copy was not decoded for faces: its counts are the screened file's business, not zeros.
    counted = not campaign.get("inherited")
    return {
        "anchor": anchor_of(path), "path": path, "name": name,
        "sha256": d.get("sha256"), "size_bytes": d.get("size_bytes"), "status": d.get("status"),
        "verdict": d.get("verdict") if d.get("verdict") in VERDICTS else "error",
        "score": d.get("score"), "score_ci95": d.get("score_ci95"), "error": d.get("error"),
        "model": _model_view(d.get("model")), "environment": d.get("environment") or {},
        "config": d.get("config") or {}, "config_hash": d.get("config_hash"),
        "n_frames": d.get("n_frames", len(d.get("frames") or [])) if counted else None,
        "n_faces": d.get("n_faces", sum(len(f.get("faces") or []) for f in d.get("frames") or [])) if counted
        else None,
        "n_tracks": d.get("n_tracks", len(tracks)), "tracks": tracks,
        "duration_s": video.get("duration_s"), "total_s": timing.get("total_s"), "video": video,
        "timing": timing, "started_at": d.get("started_at"), "finished_at": d.get("finished_at"),
        "timeline_url": _asset(out_dir, ev.get("timeline")), "faces": faces,
        "colormap": ev.get("colormap"), "has_evidence": bool(ev), "evidence_error": extra.get("evidence_error"),
        "missing_images": _missing_images(d, out_dir),
        "provenance": _provenance_view(extra.get("provenance")), "campaign": campaign, "screened_anchor": None,
    }


def _provenance_view(prov) -> dict | None:
    """The provenance block of one video: a one-line summary, the notes and the key facts (all escaped)."""
    from .provenance import provenance_summary

    if not isinstance(prov, dict):
        return None
    c2 = prov.get("c2pa") or {}
    container = prov.get("container") or {}
    facts = {"C2PA": (c2.get("status") or "—").replace("_", " "),
             "C2PA signer": (c2.get("signer") or {}).get("common_name"),
             "C2PA issuer": (c2.get("signer") or {}).get("issuer"),
             "made with (claim generator)": c2.get("claim_generator"),
             "generative AI (C2PA)": c2.get("generative_ai"),
             "container": container.get("format"), "brands": " / ".join(
                 str(x) for x in (container.get("major_brand"), container.get("compatible_brands")) if x),
             "creation time": container.get("creation_time"), "encoder / muxer": container.get("encoder"),
             **{f"device {k}": v for k, v in (prov.get("device") or {}).items()}}
    for s in prov.get("streams") or []:
        if s.get("type") == "video":
            facts["video handler"] = s.get("handler_name")
            facts["video encoder"] = s.get("encoder")
            break
    return {"summary": provenance_summary(prov), "notes": list(prov.get("notes") or []),
            "errors": list(prov.get("errors") or []), "facts": {k: v for k, v in facts.items() if v}}


def _sampling(config: dict) -> str:
    if config.get("fps"):
        return f"{config['fps']:g} frames per second"
    return f"{config.get('frames', '?')} frames per video"


def _where(env: dict) -> str:
    parts = [env.get("host") or "?", f"{env.get('device', '?')} {env.get('precision') or ''}".strip()]
    if env.get("git_commit"):
        parts.append(f"deepscan commit {env['git_commit'][:12]}")
    return " · ".join(parts)


def _summary(results: list[dict], bad_lines: int) -> dict:
    counts = {v: sum(d.get("verdict") == v for d in results) for v in VERDICTS}
    models: dict[tuple, dict] = {}
    for d in results:
        m = _model_view(d.get("model"))
        if m.get("name"):
            models.setdefault(tuple(repr(m.get(k)) for k in ("name", "sha256", "threshold")), m)
    sampling = sorted({_sampling(d.get("config") or {}) for d in results if d.get("config")})
    environments = sorted({_where(d.get("environment") or {}) for d in results if d.get("environment")})
    started = [d["started_at"] for d in results if d.get("started_at")]
    finished = [d["finished_at"] for d in results if d.get("finished_at")]
    return {"n_videos": len(results), "counts": counts, "models": list(models.values()),
            "started_at": min(started, default=None), "finished_at": max(finished, default=None),
            "scan_versions": sorted({d.get("deepscan_version") for d in results if d.get("deepscan_version")}),
            "sampling": sampling, "environments": environments, "bad_lines": bad_lines, "total_s": sum((d.get("timing") or {}).get("total_s") or 0.0 for d in results)}


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(str(text).encode("utf-8")).digest()).decode() + "'"


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    # autoescape=True, not select_autoescape(): the template's name ends in .j2, which the latter would not escape.
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["sort_key"] = _sort_key
    env.filters["timestamp"] = _timestamp
    env.filters["size"] = _size
    env.filters["csp_hash"] = _csp_hash
    env.filters["shown"] = shown
    return env


def _score_digits(results: list[dict]) -> int:
    """One precision for every threshold and video or person score in the report (see decimals_to_compare)."""
    pairs = []
    for d in results:
        model = _model_view(d.get("model"))
        cuts = verdict_cuts(model.get("threshold"), model.get("uncertain_band"))
        pairs += [(d.get("score"), cuts)] + [(t.get("score"), cuts) for t in d.get("tracks") or []]
    return decimals_to_compare(pairs)


def render_report(results: list[dict], out_dir: Path, bad_lines: int = 0) -> tuple[str, list[int]]:
    """The report's HTML, and for each video that lacks evidence images it names, how many."""
    order = sorted(range(len(results)),
                   key=lambda i: (-(results[i].get("score") if results[i].get("score") is not None else -1.0),
                                  results[i]["path"]))
    # Two files of one name in different folders are told apart by as much of the path as it takes.
    shown_names = distinct_names(d["path"] for d in results)
    videos = [_video_view(results[i], out_dir, shown_names[results[i]["path"]] or results[i]["path"]) for i in order]
    # A streaming --dedupe scan writes each line before later copies join its group: count members here.
    sizes = Counter(group_key(v["campaign"]) for v in videos)
    anchors = {v["path"]: v["anchor"] for v in videos}
    related = altered_relations(v["campaign"] for v in videos)
    names = distinct_names({a for reps in related.values() for a in reps})
    for v in videos:
        # Named and linked by representative: group numbers restart with each run into one --out.
        v["altered_links"] = [(names[a], anchors.get(a)) for a in related.get(v["campaign"].get("representative"), [])]
        if v["campaign"].get("group") is not None:
            v["campaign"] = {**v["campaign"], "size": sizes[group_key(v["campaign"])]}
        if v["campaign"].get("inherited"):  # its evidence is the screened file's section
            v["screened_anchor"] = anchors.get(v["campaign"].get("screened_as"))
    html = _environment().get_template(TEMPLATE).render(
        summary=_summary(results, bad_lines), videos=videos, digits=_score_digits(results), version=__version__,
        meanings=VERDICT_MEANING,
        # Higher rank = more suspicious, so the first click on "Verdict" (numeric: descending) puts fakes on top.
        verdict_rank={v: len(VERDICTS) - i for i, v in enumerate(VERDICTS)},
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return html, [v["missing_images"] for v in videos if v["missing_images"]]


def build_report(out_dir: Path) -> Path:
    """Render ``out_dir/report.html``, ``videos.csv`` and ``frames.csv`` from ``out_dir/results.jsonl``."""
    out_dir = Path(out_dir)
    results, bad_lines = read_results(out_dir / "results.jsonl")
    # All three rendered before any is written: a failure leaves the earlier three as they were, not a mix.
    html, missing = render_report(results, out_dir, bad_lines)
    outputs = {"videos.csv": _csv_text(VIDEO_COLUMNS, video_rows(results)),
               "frames.csv": _csv_text(FRAME_COLUMNS, frame_rows(results)), "report.html": html}
    for name, text in outputs.items():
        write_atomic(out_dir / name, text.encode("utf-8"))
    if missing:
        warnings.warn(MissingEvidenceWarning(
            f"{sum(missing)} evidence images of {len(missing)} videos named in results.jsonl are not in "
            f"{out_dir / 'assets'}: the report shows those videos without them"), stacklevel=2)
    return out_dir / "report.html"
