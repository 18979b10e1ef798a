"""The evidence images and the self-contained HTML report: hostile file names, offline assets, CSV exports."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_CLIPS, shared_dir
from PIL import Image

from deepscan import FaceResult, FrameResult, Scanner, TrackResult, VideoResult
from deepscan.evidence import pick_faces, save_evidence
from deepscan.html import build_report, line_problem
from deepscan.scanner import ResultsWriter

# Legal in a file name on every POSIX system, and each would break out of HTML if written unescaped.
HOSTILE_CLIP = 'a<b>&"c\'.mp4'
HOSTILE_ERROR = "<img src=x onerror=alert(1)>.mp4"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ParsedPage(HTMLParser):
    """Every tag with its attributes, and the document's text (entities decoded)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.raw: dict[str, list[str]] = {"style": [], "script": []}
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in self.raw else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in:
            self.raw[self._in].append(data)

    def find(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


def parse(html_text: str) -> ParsedPage:
    page = ParsedPage()
    page.feed(html_text)
    page.close()
    return page


def make_scanner() -> Scanner:
    """The default (embedded) detector when it is installed, else MesoNet from ../shared, else skip."""
    from deepscan.detector import available_models, default_model_name

    if default_model_name() in available_models():
        scanner = Scanner(frames=6, keep_heatmaps=True)
        try:
            scanner.detector  # noqa: B018 - a card whose weights are missing falls through to MesoNet
            return scanner
        except FileNotFoundError:
            pass
    weights = shared_dir() / "weights" / "mesonet" / "Meso4_DF.h5"
    if not weights.is_file():
        pytest.skip("neither the default detector nor the MesoNet weights in ../shared are available")
    return Scanner(frames=6, keep_heatmaps=True, detector="mesonet4-df", weights=str(weights))


@pytest.fixture(scope="session")
def scanned_report(tmp_path_factory) -> dict:
    """Two clips (one under a hostile name) and one non-video, scanned, evidenced and reported."""
    clips = {p.name: p for p in SAMPLE_CLIPS.glob("*.mp4")}
    if not {"carphone_faceswap_fake.mp4", "astronaut_real.mp4"} <= clips.keys():
        pytest.skip("sample clips missing")
    scanner = make_scanner()
    src = tmp_path_factory.mktemp("inputs")
    shutil.copy(clips["carphone_faceswap_fake.mp4"], src / HOSTILE_CLIP)
    shutil.copy(clips["astronaut_real.mp4"], src / "astronaut_real.mp4")
    (src / HOSTILE_ERROR).write_text("not a video at all")
    out = tmp_path_factory.mktemp("report")
    writer = ResultsWriter(out)
    results = []
    for path in sorted(src.iterdir()):
        result = scanner.scan_video(path)
        result.extra["evidence"] = save_evidence(result, out)
        writer.write(result)
        results.append(result)
    report = build_report(out)
    return {"out": out, "report": report, "results": results, "html": report.read_text(encoding="utf-8")}


def test_report_escapes_hostile_names_and_is_self_contained(scanned_report):
    out, results, html_text = scanned_report["out"], scanned_report["results"], scanned_report["html"]
    page = parse(html_text)
    text = "".join(page.text)
    for r in results:
        assert Path(r.path).name in text  # shown, as text...
    for raw in (HOSTILE_CLIP, HOSTILE_ERROR, "a<b>", "<img src=x"):
        assert raw not in html_text  # ...never as markup
    assert not [a for _, attrs in page.tags for a in attrs if a.startswith("on")]  # no injected handlers
    assert len(page.find("tr")) == 1 + len(results)
    assert len([a for a in page.find("section") if "video" in (a.get("class") or "")]) == len(results)

    links = [a["src"] for a in page.find("img")] + [a["href"] for a in page.find("a")]
    assert not [u for u in links if re.match(r"(?i)(https?:)?//", u) or ":" in u]
    assert not page.find("link") and all("src" not in a for a in page.find("script"))
    images = [a["src"] for a in page.find("img")]
    assert images and all((out / src).is_file() for src in images)
    assert all(href[1:] in {a.get("id") for _, a in page.tags} for href in links if href.startswith("#"))

    # The Content-Security-Policy allows exactly the page's own style and script, by hash.
    csp = next(m["content"] for m in page.find("meta") if m.get("http-equiv") == "Content-Security-Policy")
    for kind in ("style", "script"):
        body = "".join(page.raw[kind]).encode("utf-8")
        assert f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" in csp
    assert "default-src 'none'" in csp

    error = next(r for r in results if r.status == "error")
    assert error.error in text
    for r in results:
        if r.status == "ok":
            assert f"{r.score:.3f}" in text


def test_evidence_images(scanned_report):
    out = scanned_report["out"]
    for r in scanned_report["results"]:
        ev = r.extra["evidence"]
        if r.status != "ok":
            assert ev["faces"] == [] and ev["timeline"] is None
            continue
        assert (out / ev["timeline"]).read_bytes().startswith(PNG_MAGIC)
        assert len(ev["faces"]) == min(4, r.n_faces)
        scores = [f["score"] for f in ev["faces"]]
        assert scores == sorted(scores, reverse=True)
        assert scores[0] == pytest.approx(max(f.score for fr in r.frames for f in fr.faces), abs=1e-6)
        assert len({(f["frame"], f["track"]) for f in ev["faces"]}) == len(ev["faces"])  # no face twice
        for f in ev["faces"]:
            crop = np.asarray(Image.open(out / f["crop"]))
            overlay = np.asarray(Image.open(out / f["overlay"]))
            face = next(x for fr in r.frames if fr.index == f["frame"] for x in fr.faces if x.track == f["track"])
            assert crop.shape == overlay.shape == face.crop.shape
            assert np.array_equal(crop, face.crop)
            assert np.abs(crop.astype(int) - overlay.astype(int)).mean() > 5  # the heatmap is really drawn
        assert sorted(t["track"] for t in ev["tracks"]) == sorted(t.id for t in r.tracks)
        assert all((out / t["thumb"]).is_file() for t in ev["tracks"])
        assert not list((out / ev["dir"]).glob(".*"))  # atomic writes leave no temporary files
    lines = [json.loads(text) for text in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3 and all(line_problem(d) is None for d in lines)  # none skipped as malformed


def test_csv_exports(scanned_report):
    out, results = scanned_report["out"], scanned_report["results"]
    with open(out / "videos.csv", newline="", encoding="utf-8") as fh:
        videos = list(csv.DictReader(fh))
    assert [v["path"] for v in videos] == [r.path for r in results]
    for v, r in zip(videos, results, strict=True):
        assert v["verdict"] == r.verdict and v["sha256"] == (r.sha256 or "")
        assert int(v["n_faces"]) == r.n_faces and v["model"] == r.model["name"]
        assert (v["score"] == "") if r.score is None else float(v["score"]) == pytest.approx(r.score, abs=1e-6)
    assert next(v for v in videos if v["status"] == "error")["error"]
    with open(out / "frames.csv", newline="", encoding="utf-8") as fh:
        frames = list(csv.DictReader(fh))
    expected = [(r.path, fr.index, face.track, face.score) for r in results for fr in r.frames for face in fr.faces]
    assert len(frames) == len(expected) > 0
    for row, (path, index, track, score) in zip(frames, expected, strict=True):
        assert (row["path"], int(row["frame"]), int(row["track"])) == (path, index, track)
        assert float(row["score"]) == pytest.approx(score, abs=1e-6)
        assert float(row["x1"]) < float(row["x2"]) and float(row["y1"]) < float(row["y2"])


# ------------------------------------------------------------------------------ without a model: synthetic

def synthetic_result(path: str, scores_by_track: dict[int, list[float]], size: int = 48) -> VideoResult:
    """A scanned-looking result whose faces carry random crops and ramp heatmaps (no detector needed)."""
    rng = np.random.default_rng(0)
    n = max(len(s) for s in scores_by_track.values())
    frames = []
    for i in range(n):
        fr = FrameResult(index=i * 10, time_s=i * 0.4)
        for track, scores in scores_by_track.items():
            if i < len(scores):
                fr.faces.append(FaceResult(
                    box=[10.0 + track * 60, 10.0, 50.0 + track * 60, 60.0], prob=0.99, track=track,
                    score=scores[i], heat_peak=1.0,
                    crop=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                    heatmap=np.tile(np.linspace(0, 1, size // 2, dtype=np.float16), (size // 2, 1))))
        frames.append(fr)
    tracks = [TrackResult(id=t, n_faces=len(s), score=float(np.mean(s)), verdict="fake" if np.mean(s) >= 0.5
                          else "real", first_time_s=0.0, last_time_s=(len(s) - 1) * 0.4, counted=True)
              for t, s in scores_by_track.items()]
    top = max(t.score for t in tracks)
    return VideoResult(path=path, sha256=hashlib.sha256(path.encode()).hexdigest(), size_bytes=1000, status="ok",
                       score=top, verdict="fake" if top >= 0.5 else "real", frames=frames, tracks=tracks,
                       model={"name": "synthetic", "sha256": "0" * 64, "threshold": 0.5, "uncertain_band": 0.1},
                       video={"width": 320, "height": 240, "duration_s": n * 0.4, "codec": "h264", "tags": {}},
                       timing={"total_s": 0.5}, deepscan_version="0.1.0",
                       started_at="2025-01-01T00:00:00.000+00:00", finished_at="2025-01-01T00:00:01.000+00:00")


def test_most_suspicious_faces_cover_every_person_first():
    r = synthetic_result("x.mp4", {0: [0.9, 0.95, 0.97, 0.99, 0.96], 1: [0.3, 0.6, 0.2]})
    picked = pick_faces([(fr, f) for fr in r.frames for f in fr.faces], top_k=3)
    assert [(fr.index, f.track) for fr, f in picked] == [(30, 0), (20, 0), (10, 1)]
    assert len(pick_faces([(fr, f) for fr in r.frames for f in fr.faces], top_k=20)) == 8


def test_report_without_evidence_keeps_last_line_and_rejects_foreign_paths(tmp_path):
    plain = synthetic_result("=HYPERLINK(1).mp4", {0: [0.1, 0.2, 0.1]})
    plain.extra["evidence"] = {"timeline": "https://example.com/x.png", "faces": [
        {"crop": "../outside.png", "overlay": "/etc/passwd", "score": 0.2, "time_s": 0.4, "frame": 10, "track": 0}]}
    (tmp_path / "outside.png").write_bytes(PNG_MAGIC)
    evidenced = synthetic_result("clips/two people.mp4", {0: [0.9, 0.95, 0.97], 1: [0.1, 0.2]})
    stale = VideoResult.from_dict(evidenced.to_dict())
    stale.verdict, stale.score = "uncertain", 0.45
    writer = ResultsWriter(tmp_path)
    writer.write(stale)  # superseded by the later line for the same path
    writer.write(plain)
    evidenced.extra["evidence"] = save_evidence(evidenced, tmp_path, top_k=3)
    writer.write(evidenced)
    with open(tmp_path / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"path": "cut short by a cra')  # a crash mid-line must not break the report

    page = parse(build_report(tmp_path).read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert "1 unreadable line" in text and "two people.mp4" in text
    assert sorted(a.get("data-verdict") for a in page.find("tr") if a.get("data-verdict")) == ["fake", "real"]
    images = [a["src"] for a in page.find("img")]
    assert images and all(src.startswith("assets/") and (tmp_path / src).is_file() for src in images)
    ev = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[2])["extra"]["evidence"]
    assert {f["track"] for f in ev["faces"]} == {0, 1}
    assert len([s for s in images if "/track" in s]) == 2

    with open(tmp_path / "videos.csv", newline="", encoding="utf-8") as fh:
        videos = list(csv.DictReader(fh))
    assert [(v["path"], v["verdict"]) for v in videos] == [("clips/two people.mp4", "fake"),
                                                          ("'=HYPERLINK(1).mp4", "real")]
    with open(tmp_path / "frames.csv", newline="", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == plain.n_faces + evidenced.n_faces


def test_report_tolerates_a_threshold_that_is_no_number_and_defuses_every_csv_text_cell(tmp_path):
    hostile = {"path": "clip.mp4", "sha256": "=1+1", "status": "ok", "verdict": "-2+3", "score": 0.3,
               "config_hash": "+cmd", "error": "@SUM(A1)",
               "model": {"name": "m", "sha256": "=HYPERLINK(\"x\")", "threshold": "=0.5", "uncertain_band": 0.1},
               "frames": [{"index": 0, "time_s": 0.0, "faces": [
                   {"box": [1, 2, 3, 4], "track": 0, "score": 0.1, "prob": None, "heat_peak": None}]}]}
    odd = {"path": "other.mp4", "status": "ok", "score": 0.2, "model": {"name": "m", "threshold": [0.5]}}
    (tmp_path / "results.jsonl").write_text(json.dumps(hostile) + "\n" + json.dumps(odd) + "\n")
    text = "".join(parse(build_report(tmp_path).read_text(encoding="utf-8")).text)
    assert "threshold" in text and "=0.5" not in text  # shown as unknown, not computed with
    for name in ("videos.csv", "frames.csv"):
        with open(tmp_path / name, newline="", encoding="utf-8") as fh:
            cells = [c for row in csv.reader(fh) for c in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], name
    with open(tmp_path / "videos.csv", newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    assert (row["sha256"], row["error"], row["score"], row["threshold"]) == ("'=1+1", "'@SUM(A1)", "0.3", "")


def test_scores_near_the_threshold_are_printed_so_they_compare_as_their_verdicts(tmp_path):
    """An uncertain 0.8953 beside a threshold of 0.8954 read 0.895 against 0.895, as if it were fake."""
    near = synthetic_result("near.mp4", {0: [0.8953, 0.8953]})
    near.model["threshold"], near.verdict, near.tracks[0].verdict = 0.8954, "uncertain", "uncertain"
    (tmp_path / "results.jsonl").write_text(json.dumps(near.to_dict()) + "\n")
    text = "".join(parse(build_report(tmp_path).read_text(encoding="utf-8")).text)
    assert "0.8953" in text and "0.8954" in text and "0.7954" in text and "0.895 " not in text
    far = synthetic_result("far.mp4", {0: [0.2, 0.3]})
    (tmp_path / "results.jsonl").write_text(json.dumps(far.to_dict()) + "\n")
    text = "".join(parse(build_report(tmp_path).read_text(encoding="utf-8")).text)
    assert "0.500" in text and "0.5000" not in text


def test_lines_not_of_a_results_shape_are_skipped_and_counted(tmp_path):
    """A hand-edited or another tool's line (any JSON object with a path) used to crash the report halfway: the
    CSVs rewritten, report.html not. Each such line is now skipped and counted; the rest is reported."""
    good = synthetic_result("good.mp4", {0: [0.9, 0.95]}).to_dict()
    broken = [{"path": "a.mp4", "status": "ok", "verdict": "fake", "score": "0.97"},
              {"path": "b.mp4", "extra": "see ticket 12"},
              {**good, "path": "c.mp4", "score_ci95": [0.1]},
              {**good, "path": "d.mp4", "tracks": [{"n_faces": 1}]},
              {**good, "path": "e.mp4", "frames": [{"index": 0, "time_s": 0, "faces": [{"track": 0, "score": 0.5}]}]},
              {**good, "path": "f.mp4", "timing": {"total_s": "1"}},
              {**good, "path": "g.mp4", "started_at": 5},
              {**good, "path": "h.mp4", "extra": {"campaign": {"group": [1]}}},
              {**good, "path": "i.mp4", "extra": {"provenance": {"notes": "abc"}}},
              {**good, "path": "j.mp4", "config": {"fps": "2"}},
              {**good, "path": "k.mp4", "environment": {"git_commit": 1234}},
              # Shapes the template and the provenance facts read, which crashed the report or a scan's --html:
              {**good, "path": "l.mp4", "extra": {"evidence": {"faces": [{"score": 0.9, "time_s": 0.0, "track": 0}]}}},
              {**good, "path": "m.mp4", "extra": {"provenance": {"c2pa": {"status": "valid", "signer": "Adobe"}}}},
              {**good, "path": "n.mp4", "extra": {"provenance": {"c2pa": {"status": 3}}}},
              {**good, "path": "o.mp4", "extra": {"provenance": {"streams": ["video"]}}},
              {**good, "path": "p.mp4", "extra": {"provenance": {"device": {"make": 5}}}},
              {**good, "path": "q.mp4", "environment": {"host": 5}},
              {**good, "path": "r.mp4", "extra": {"evidence_error": ["disk full"]}}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [good, *broken]))
    page = parse(build_report(tmp_path).read_text(encoding="utf-8"))
    assert f"{len(broken)} unreadable lines" in "".join(page.text)
    with open(tmp_path / "videos.csv", newline="", encoding="utf-8") as fh:
        assert [row["path"] for row in csv.DictReader(fh)] == ["good.mp4"]


def test_rescans_with_other_settings_keep_each_results_own_images(tmp_path):
    """Evidence images were kept per file content only: a rescan with other settings replaced the images an
    earlier line points to (a resumed 8-frame result showed a 16-frame run's crops and timeline). Each way of
    judging a file now has its own folder; a line whose images are gone is screened again, not resumed."""
    clip = SAMPLE_CLIPS / "carphone_real.mp4"
    if not clip.is_file():
        pytest.skip("sample clips missing")
    out = tmp_path / "out"

    def run(frames, threshold=None):
        (r,) = Scanner(frames=frames, keep_heatmaps=True, threshold=threshold).scan([clip], out_dir=out,
                                                                                    evidence=True)
        return r

    first = run(4)
    ev = first.extra["evidence"]
    images = {name: (out / name).read_bytes() for name in [ev["timeline"], *(f["crop"] for f in ev["faces"])]}
    second, third = run(6), run(4, threshold=0.5)
    dirs = {r.extra["evidence"]["dir"] for r in (first, second, third)}
    assert len(dirs) == 3 and all(d.startswith(f"assets/{first.sha256[:16]}-") for d in dirs)
    again = run(4)
    assert again.resumed and again.extra["evidence"] == ev
    assert {name: (out / name).read_bytes() for name in images} == images  # untouched by the other runs

    moved = tmp_path / "moved"  # the results file without its assets/
    moved.mkdir()
    shutil.copy(out / "results.jsonl", moved / "results.jsonl")
    (r,) = Scanner(frames=4, keep_heatmaps=True).scan([clip], out_dir=moved, evidence=True)
    assert not r.resumed and (moved / r.extra["evidence"]["timeline"]).is_file()


def test_an_inherited_copy_links_to_the_screened_files_evidence(tmp_path):
    """A verified copy (scan --dedupe) was said to have been "scanned without HTML evidence" and counted
    "0 faces, 0 frames" beside a score; it now links to the section of the file whose pixels were judged."""
    from deepscan.campaign import take_verdict

    screened = synthetic_result("clips/original.mp4", {0: [0.9, 0.95]})
    screened.extra["evidence"] = save_evidence(screened, tmp_path)
    copy = take_verdict(VideoResult(path="clips/reupload.mp4", sha256="1" * 64, model=dict(screened.model)),
                        screened, {"group": 1, "size": 2})
    writer = ResultsWriter(tmp_path)
    writer.write(screened)
    writer.write(copy)
    page = parse(build_report(tmp_path).read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert "scanned without HTML evidence" not in text and "0 faces in 0 frames" not in text
    anchor = next(a["id"] for a in page.find("section") if a.get("aria-label") == "original.mp4")
    assert any(a.get("href") == f"#{anchor}" and a.get("class") == "mono" for a in page.find("a"))


def test_a_crowds_timeline_keeps_its_legend_on_the_image():
    """40 people: the legend (one entry each) ran off the image with the threshold's entry, and matplotlib
    warned that the layout could not be applied; the most suspicious are named, the rest drawn in grey."""
    import warnings

    from deepscan.evidence import LEGEND_PEOPLE, _timeline_png

    rng = np.random.default_rng(0)
    crowd = synthetic_result("crowd.mp4", {t: list(rng.random(6)) for t in range(40)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = _timeline_png(crowd, 0.8954, 0.1)
    assert png.startswith(PNG_MAGIC) and Image.open(io.BytesIO(png)).size == (720, 240)
    assert LEGEND_PEOPLE < 40


def test_groups_of_two_dedupe_runs_into_one_folder_stay_apart(tmp_path):
    """Group numbers belong to a run: two --dedupe runs into one --out each number theirs from 1, and the report
    counted members by number alone, calling four unrelated files "one of 2 copies of the same video"."""
    lines = []
    for run in ("a", "b"):
        for n in (1, 2):
            r = synthetic_result(f"{run}/clip{n}.mp4", {0: [0.1, 0.2]})
            r.extra["campaign"] = {"group": n, "representative": r.path, "is_representative": True,
                                   "inherited": False}
            lines.append(r)
    copy = synthetic_result("a/clip1-copy.mp4", {0: [0.1, 0.2]})
    copy.extra["campaign"] = {"group": 1, "representative": "a/clip1.mp4", "is_representative": False,
                              "inherited": False}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in [*lines, copy]))
    text = " ".join("".join(parse(build_report(tmp_path).read_text(encoding="utf-8")).text).split())
    assert re.findall(r"Group \d+: one of \d+ copies", text) == ["Group 1: one of 2 copies"] * 2


def test_altered_groups_of_two_dedupe_runs_are_named_by_the_file_screened_for_them(tmp_path):
    """Run a: group 1 (orig) and group 2 (its face swap), altered; run b: group 1 (unrelated) and group 2
    (unrelated). "Same footage as group 1" pointed at two groups 1; and only the later of an altered pair
    named the other (a streaming scan writes each line as its file finishes)."""
    from deepscan.campaign import campaign_table
    from deepscan.results import VideoResult as Result

    def member(path, group, altered=()):
        r = synthetic_result(path, {0: [0.1, 0.2]})
        r.extra["campaign"] = {"group": group, "representative": path, "is_representative": True, "size": 1,
                               "inherited": False}
        if altered:
            r.extra["campaign"].update(altered_groups=[g for g, _ in altered],
                                       altered_representatives=[p for _, p in altered])
        return r

    results = [member("a/orig.mp4", 1), member("a/swap.mp4", 2, [(1, "a/orig.mp4")]),
               member("b/other.mp4", 1), member("b/else.mp4", 2)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in results))
    page = parse(build_report(tmp_path).read_text(encoding="utf-8"))
    anchors = {a.get("aria-label"): a["id"] for a in page.find("section") if a.get("aria-label")}
    text = " ".join("".join(page.text).split())
    assert "as group" not in text and text.count("Same footage, with locally different pixels") == 2
    links = {a.get("href") for a in page.find("a") if a.get("class") == "mono"}
    assert {f"#{anchors['orig.mp4']}", f"#{anchors['swap.mp4']}"} <= links
    assert f"#{anchors['other.mp4']}" not in links

    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(campaign_table([Result.from_dict(r.to_dict()) for r in results]))
    rows = {line.split("│")[3].strip(): line.split("│")[5].strip() for line in console.export_text().splitlines()
            if line.count("│") >= 6 and ".mp4" in line}
    assert rows == {"orig.mp4 (screened): real": "swap.mp4", "swap.mp4 (screened): real": "orig.mp4"}


def test_links_names_and_missing_images_a_case_file_can_rely_on(tmp_path, capsys):
    """Section ids came from the score order (``#v1`` opened another video once a higher score was added);
    two files of one name in different folders read alike in the table; and a results.jsonl copied without
    its assets/ gave a report without a single image and no word said (exit 0)."""
    from deepscan.cli import main as cli_main
    from deepscan.html import MissingEvidenceWarning, anchor_of

    writer = ResultsWriter(tmp_path)
    phones = [synthetic_result(f"case/phone_{p}/IMG_0001.MP4", {0: [s, s]}) for p, s in (("A", 0.9), ("B", 0.2))]
    for r in phones:
        r.extra["evidence"] = save_evidence(r, tmp_path, top_k=2)
        writer.write(r)
    ids = {a["aria-label"]: a["id"] for a in parse(build_report(tmp_path).read_text(encoding="utf-8")).find("section")
           if a.get("aria-label")}
    assert ids == {"phone_A/IMG_0001.MP4": anchor_of(phones[0].path), "phone_B/IMG_0001.MP4": anchor_of(phones[1].path)}
    writer.write(synthetic_result("case/higher.mp4", {0: [0.99, 0.99]}))  # now first in score order
    page = parse(build_report(tmp_path).read_text(encoding="utf-8"))
    assert {a["aria-label"]: a["id"] for a in page.find("section") if a.get("aria-label")} == {
        **ids, "higher.mp4": anchor_of("case/higher.mp4")}
    assert [a.get("title") for a in page.find("a") if a.get("title")][1:] == [r.path for r in phones]

    assert cli_main(["report", str(tmp_path)]) == 0
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(tmp_path / "results.jsonl", moved / "results.jsonl")
    with pytest.warns(MissingEvidenceWarning, match="of 2 videos"):
        text = " ".join("".join(parse(build_report(moved).read_text(encoding="utf-8")).text).split())
    assert len(re.findall(r"\d+ evidence images named in results.jsonl are not in this folder's assets/", text)) == 2
    capsys.readouterr()
    assert cli_main(["report", str(moved)]) == 2
    assert "are not in" in capsys.readouterr().err


def test_an_evidence_write_that_failed_is_said_so(tmp_path):
    """A full disk during --html left extra.evidence_error in the line, and the report said the video was
    "scanned without HTML evidence"."""
    r = synthetic_result("clip.mp4", {0: [0.1, 0.2]})
    r.extra["evidence_error"] = "[Errno 28] No space left on device"
    (tmp_path / "results.jsonl").write_text(json.dumps(r.to_dict()) + "\n")
    text = " ".join("".join(parse(build_report(tmp_path).read_text(encoding="utf-8")).text).split())
    assert "could not be written: [Errno 28] No space left on device" in text
    assert "scanned without HTML evidence" not in text


def test_names_that_change_direction_or_break_lines_are_shown_escaped(tmp_path):
    """U+202E made "invoice\\u202egpj.mp4" read as "invoice4pm.jpg" in the report and the terminal, and a
    newline in a name split it over two lines; the stored results keep the name as it is."""
    from deepscan.report import make_console, summary_table

    names = ["clips/invoice\u202egpj.mp4", "clips/two\nlines.mp4"]
    results = [synthetic_result(n, {0: [0.1, 0.2]}) for n in names]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in results))
    html_text = build_report(tmp_path).read_text(encoding="utf-8")
    page_text = "".join(parse(html_text).text)
    assert "invoice\\u202egpj.mp4" in page_text and "two\\nlines.mp4" in page_text
    assert "\u202e" not in html_text and "two\nlines" not in html_text
    assert [json.loads(line)["path"] for line in (tmp_path / "results.jsonl").read_text().splitlines()] == names
    console = make_console(io.StringIO())
    console.print(summary_table(results, 0.5))
    terminal = console.file.getvalue()
    assert "invoice\\u202egpj.mp4" in terminal and "two\\nlines.mp4" in terminal and "\u202e" not in terminal


def test_the_timeline_labels_score_and_threshold_so_they_compare_as_their_verdicts(monkeypatch):
    """The timeline image printed an uncertain 0.8953 and its threshold 0.8954 both as 0.895."""
    from matplotlib.axes import Axes

    from deepscan.evidence import _timeline_png

    labels = []
    legend = Axes.legend

    def spy(self, *args, **kwargs):
        labels.extend(self.get_legend_handles_labels()[1])
        return legend(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "legend", spy)
    near = synthetic_result("near.mp4", {0: [0.8953, 0.8953]})
    _timeline_png(near, 0.8954, 0.1)
    assert labels == ["person #0 (0.8953)", "threshold 0.8954"]
    labels.clear()
    _timeline_png(synthetic_result("far.mp4", {0: [0.2, 0.3]}), 0.5, 0.1)
    assert labels == ["person #0 (0.250)", "threshold 0.500"]
