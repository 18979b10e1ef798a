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
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from . import __version__
from .evidence import write_atomic
from .report import VERDICT_MEANING
from .results import VERDICTS, is_number, read_result_lines

TEMPLATE = "report.html.j2"
VIDEO_COLUMNS = ["path", "sha256", "status", "verdict", "score", "score_ci95_low", "score_ci95_high", "n_frames",
                 "n_faces", "n_tracks", "model", "model_sha256", "threshold", "config_hash", "error"]
FRAME_COLUMNS = ["path", "frame", "time_s", "track", "score", "prob", "x1", "y1", "x2", "y2", "heat_peak"]


def read_results(path: Path) -> tuple[list[dict], int]:
    """The last line for each video path, in order of first appearance, and the number of unreadable lines
    (a line cut short by a crash is skipped rather than failing the whole report)."""
    lines, bad = read_result_lines(path)
    latest: dict[str, dict] = {}
    for d in lines:
        latest[d["path"]] = d
    return list(latest.values()), bad


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


def _video_view(i: int, d: dict, out_dir: Path) -> dict:
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
    return {
        "anchor": f"v{i}", "path": path, "name": Path(path).name or path,
        "sha256": d.get("sha256"), "size_bytes": d.get("size_bytes"), "status": d.get("status"),
        "verdict": d.get("verdict") if d.get("verdict") in VERDICTS else "error",
        "score": d.get("score"), "score_ci95": d.get("score_ci95"), "error": d.get("error"),
        "model": _model_view(d.get("model")), "environment": d.get("environment") or {},
        "config": d.get("config") or {}, "config_hash": d.get("config_hash"),
        "n_frames": d.get("n_frames", len(d.get("frames") or [])),
        "n_faces": d.get("n_faces", sum(len(f.get("faces") or []) for f in d.get("frames") or [])),
        "n_tracks": d.get("n_tracks", len(tracks)), "tracks": tracks,
        "duration_s": video.get("duration_s"), "total_s": timing.get("total_s"), "video": video,
        "timing": timing, "started_at": d.get("started_at"), "finished_at": d.get("finished_at"),
        "timeline_url": _asset(out_dir, ev.get("timeline")), "faces": faces,
        "colormap": ev.get("colormap"), "has_evidence": bool(ev),
        "provenance": _provenance_view(extra.get("provenance")), "campaign": extra.get("campaign") or {},
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
    return env


def render_report(results: list[dict], out_dir: Path, bad_lines: int = 0) -> str:
    order = sorted(range(len(results)),
                   key=lambda i: (-(results[i].get("score") if results[i].get("score") is not None else -1.0),
                                  results[i]["path"]))
    videos = [_video_view(n, results[i], out_dir) for n, i in enumerate(order)]
    # A streaming --dedupe scan writes each line before later copies join its group: count members here.
    sizes = Counter(((d.get("extra") or {}).get("campaign") or {}).get("group") for d in results)
    for v in videos:
        if v["campaign"].get("group") is not None:
            v["campaign"] = {**v["campaign"], "size": sizes[v["campaign"]["group"]]}
    return _environment().get_template(TEMPLATE).render(
        summary=_summary(results, bad_lines), videos=videos, version=__version__, meanings=VERDICT_MEANING,
        # Higher rank = more suspicious, so the first click on "Verdict" (numeric: descending) puts fakes on top.
        verdict_rank={v: len(VERDICTS) - i for i, v in enumerate(VERDICTS)},
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def build_report(out_dir: Path) -> Path:
    """Render ``out_dir/report.html``, ``videos.csv`` and ``frames.csv`` from ``out_dir/results.jsonl``."""
    out_dir = Path(out_dir)
    results, bad_lines = read_results(out_dir / "results.jsonl")
    write_atomic(out_dir / "videos.csv", _csv_text(VIDEO_COLUMNS, video_rows(results)).encode("utf-8"))
    write_atomic(out_dir / "frames.csv", _csv_text(FRAME_COLUMNS, frame_rows(results)).encode("utf-8"))
    report = out_dir / "report.html"
    write_atomic(report, render_report(results, out_dir, bad_lines).encode("utf-8"))
    return report
