"""`deepscan eval` plumbing without a model: labels files, matching earlier results to labelled clips,
detectors that share a card name, and the terminal tables (file names and intervals are text, not markup)."""

from __future__ import annotations

import hashlib
import io
import json
import types

import pytest
from rich.console import Console

from deepscan.evaluate import LabelWarning, evaluate, metrics_from_results, read_labels
from deepscan.results import VideoResult


@pytest.fixture(autouse=True)
def no_bootstrap(monkeypatch):
    """No resampling (2,000 AUCs take seconds): intervals come out nan, the point estimates are unchanged."""
    monkeypatch.setattr("deepscan.evaluate._resamples", lambda *args, **kwargs: iter(()))


def test_labels_with_a_byte_order_mark_a_source_column_and_unknown_labels(tmp_path):
    labels = tmp_path / "labels.csv"
    # A spreadsheet's "CSV UTF-8" export starts with a BOM, which used to hide the `path` column.
    labels.write_text("\ufeffpath,label,source\n/abs/x/a.mp4,fake,srcA\nvids/b.mp4, Real ,\nc.mp4,real,\n"
                      "d.mp4,1,srcD\ne.mp4,unknown,\n", encoding="utf-8")
    with pytest.warns(LabelWarning, match="2 row"):
        clips = read_labels(labels)
    assert [(str(c.path), c.label, c.source) for c in clips] == [
        ("/abs/x/a.mp4", 1, "srcA"),  # the source column wins, also for a path with folders
        (str(tmp_path / "vids/b.mp4"), 0, "vids"),  # else a relative path's first folder
        (str(tmp_path / "c.mp4"), 0, "-")]


def test_bootstrap_groups_come_from_a_group_column_or_the_manifests_identities(tmp_path):
    from deepscan.evaluate import clip_groups

    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,group\na.mp4,real,speech1\nb.mp4,fake,speech1\nc.mp4,fake,\n")
    assert clip_groups(read_labels(labels)) == ["speech1", "speech1", f"clip:{tmp_path / 'c.mp4'}"]
    # The MANIFEST format: a DeepFaceLive demo's two panels and one person's clips are not independent.
    manifest = tmp_path / "MANIFEST.tsv"
    manifest.write_text("file\tlabel\n"
                        "deepfacelive_split/Kim_Jarrey_1__left_original.mp4\treal\n"
                        "deepfacelive_split/Kim_Jarrey_1__right_swapped.mp4\tfake\n"
                        "hdtf_via_sadtalker/WDA_KatieHill_000.mp4\treal\n"
                        "hdtf_via_sadtalker/RD_KatieHill1_000.mp4\treal\n"
                        "other/x.mp4\tfake\n")
    groups = clip_groups(read_labels(manifest))
    assert groups[0] == groups[1] and groups[2] == groups[3] and len(set(groups)) == 3


def test_results_are_scored_with_the_clips_groups(tmp_path):
    clips, lines = _clips_and_results(tmp_path)
    for i, clip in enumerate(clips):
        clip.group = f"source{i // 4}"
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(d) + "\n" for d in lines))
    m = metrics_from_results(clips, results)
    assert m["resampled"] == {"unit": "group", "n": 3}
    assert m["video_scores"]["groups"] == [f"source{i // 4}" for i in range(12)]  # the paired bootstrap's too


def _clips_and_results(tmp_path, n=12):
    """``n`` labelled clips (small files with distinct bytes) and a results.jsonl naming them by paths
    relative to another working directory, as a scan run elsewhere writes them."""
    (tmp_path / "src").mkdir()
    labels = tmp_path / "labels.tsv"
    labels.write_text("file\tlabel\n" + "".join(f"src/c{i}.mp4\t{'fake' if i % 2 else 'real'}\n" for i in range(n)))
    lines = []
    for i in range(n):
        data = f"clip {i}".encode()
        (tmp_path / "src" / f"c{i}.mp4").write_bytes(data)
        lines.append({"path": f"../somewhere/else/c{i}.mp4", "sha256": hashlib.sha256(data).hexdigest(),
                      "status": "ok", "score": 0.2 + 0.5 * (i % 2) + 0.01 * i,
                      "model": {"name": "m", "threshold": 0.5}})
    return read_labels(labels), lines


def test_results_from_another_directory_are_matched_by_content(tmp_path):
    clips, lines = _clips_and_results(tmp_path)
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(d) + "\n" for d in lines))
    m = metrics_from_results(clips, results)  # used to match nothing: "zero-size array to reduction operation"
    assert (m["n_clips"], m["n_fake"], m["missing"], m["auc"]) == (12, 6, [], 1.0)
    assert m["video_scores"]["ids"] == [str(c.path) for c in clips]


def test_results_covering_part_of_the_clips_say_so(tmp_path):
    clips, lines = _clips_and_results(tmp_path)
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(d) + "\n" for d in lines[:8]))
    with pytest.warns(LabelWarning, match="4 of 12 labelled clips have no result"):
        m = metrics_from_results(clips, results)
    assert m["n_clips"] == 8 and len(m["missing"]) == 4
    assert m["video_scores"]["ids"] == [str(c.path) for c in clips[:8]]
    # Reals only: a clear error, not numpy's traceback.
    results.write_text("".join(json.dumps(d) + "\n" for d in lines[::2]))
    with pytest.warns(LabelWarning), pytest.raises(ValueError, match="6 of 12 .* not both real and fake"):
        metrics_from_results(clips, results)


def _fake_scanners(monkeypatch):
    """Scanners named like the default card whose scores depend on their weights (no model is loaded)."""
    import deepscan.scanner
    from deepscan.detector import resolve_card

    name = resolve_card(None).name

    class FakeScanner:
        def __init__(self, options):
            self.weights = options.weights
            digest = hashlib.sha256(str(options.weights).encode()).hexdigest()
            self.detector = types.SimpleNamespace(name=name, weights_sha256=digest, precision="fp32")
            self.threshold = 0.5

        def scan_video(self, path, sha256=None):
            fake = "fake" in path.name
            score = (0.9 if fake else 0.1) if self.weights == "good" else (0.4 if fake else 0.6)
            return VideoResult(path=str(path), status="ok", score=score, verdict="real")

    monkeypatch.setattr(deepscan.scanner, "Scanner", FakeScanner)
    return name


def test_detectors_sharing_a_card_name_keep_their_results_and_curves_apart(tmp_path, monkeypatch):
    from deepscan.evaluate import LabelledClip

    name = _fake_scanners(monkeypatch)
    clips = [LabelledClip(tmp_path / f"{'fake' if i % 2 else 'real'}{i}.mp4", i % 2, "s") for i in range(6)]
    out = tmp_path / "out"
    report = evaluate(clips, [{"weights": "good"}, {"weights": "bad"}], out_dir=out)
    good, bad = report["detectors"]
    assert good["detector"] != bad["detector"] and good["card"] == bad["card"] == name
    assert good["detector"] == f"{name}-{good['weights_sha256'][:8]}"
    assert (good["auc"], bad["auc"]) == (1.0, 0.0)
    for entry in (good, bad):  # each its own results.jsonl, each clip once
        lines = (out / entry["detector"] / "results.jsonl").read_text().splitlines()
        assert len(lines) == 6
    assert not (out / name).exists() and (out / "roc.png").is_file()
    # One detector of that name keeps out/name, where earlier runs (and their resumption) put it.
    alone = evaluate(clips, [{"weights": "good"}], out_dir=tmp_path / "one")
    assert alone["detectors"][0]["detector"] == name and (tmp_path / "one" / name / "results.jsonl").is_file()


def _render(renderable) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, force_terminal=False, no_color=True).print(renderable)
    return buf.getvalue()


def test_scan_summary_prints_scores_near_the_threshold_so_they_compare_as_their_verdicts():
    from deepscan.report import summary_table
    from deepscan.results import TrackResult

    model = {"threshold": 0.8954, "uncertain_band": 0.1}
    below = VideoResult(path="below.mp4", status="ok", score=0.8953, verdict="uncertain", model=model, tracks=[
        TrackResult(id=0, n_faces=5, score=0.8953, verdict="uncertain", first_time_s=0, last_time_s=1, counted=True),
        TrackResult(id=1, n_faces=5, score=0.2, verdict="real", first_time_s=0, last_time_s=1, counted=True)])
    far = VideoResult(path="far.mp4", status="ok", score=0.1, verdict="real", model=model)
    text = _render(summary_table([below, far], 0.8954))
    assert "threshold 0.8954" in text and "0.8953" in text and "#0 0.8953, #1 0.2000" in text
    text = _render(summary_table([far], 0.8954))
    assert "threshold 0.895)" in text and "0.100" in text  # three decimals where they suffice


def test_eval_tables_print_names_and_intervals_as_text():
    from deepscan.report import eval_tables

    rates = {"threshold": 0.5, "accuracy": 0.5, "tpr": 1.0, "fpr": float("nan")}
    entry = {"detector": "model[/]x", "auc": 1.0, "auc_ci95": [float("nan"), float("nan")], "unscored": [],
             "at_threshold": rates,
             "per_source": [{"source": "[bold]src", "n": 2, "n_fake": 2, "mean_score": 0.9, "auc": None, **rates}]}
    report = {"n_clips": 2, "n_fake": 2, "detectors": [entry, {**entry, "paired_with_first": {
        "auc_difference": 0.0, "ci95": [float("nan"), float("nan")]}}]}
    text = "".join(_render(t) for t in eval_tables(report, "scored from results.jsonl"))
    assert "[nan, nan]" in text and "+nan" in text  # "[nan, nan]" read as markup printed nothing at all
    assert "model[/]x" in text and "model[/]x per source" in text and "[bold]src" in text


def test_scan_summary_and_progress_print_file_names_as_text():
    from deepscan.report import ScanProgress, summary_table

    hostile = ["clips/interview [final].mp4", "clips/intro[/].mp4", "clips/[red]x[/red] [link=https://e.x]y[/link]"]
    results = [VideoResult(path=p, status="ok", score=0.1 * i, verdict="real") for i, p in enumerate(hostile)]
    results[0].extra["provenance"] = {"container": {"encoder": "Lavf[/]61 [bold]x"}}
    text = _render(summary_table(results, 0.5))
    for p in hostile:
        assert p in text
    assert "Lavf[/]61 [bold]x" in text
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=True, no_color=True)
    with ScanProgress(console, total=1) as progress:
        progress.start("clips/[bold]interview [final].mp4")  # the bar shows the file's name
        progress.progress.refresh()
        shown = buf.getvalue()
    assert "[bold]interview [final].mp4" in shown


def test_results_matched_by_path_with_a_threshold_that_is_no_number(tmp_path):
    """A scan run from here matches by path as before; a threshold that is not a number leaves 0.5."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nreal.mp4,real\nfake.mp4,fake\n")
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps({"path": str(tmp_path / n), "score": s, "model": {"threshold": "x"}}) + "\n"
                               for n, s in (("fake.mp4", 1.0), ("real.mp4", 0.0))))
    m = metrics_from_results(read_labels(labels), results)
    assert m["video_scores"]["scores"] == [0.0, 1.0] and m["auc"] == 1.0
    assert m["at_threshold"]["threshold"] == 0.5 and m["at_threshold"]["accuracy"] == 1.0


def test_two_results_files_of_one_model_are_told_apart(tmp_path, capsys):
    from deepscan.cli import main

    _, lines = _clips_and_results(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    out = tmp_path / "metrics"
    assert main(["eval", str(tmp_path / "labels.tsv"), "--results", str(tmp_path / "a" / "results.jsonl"),
                 "--results", str(tmp_path / "b" / "results.jsonl"), "--detector", "x", "--frames", "8",
                 "--no-follow-faces", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    names = [d["detector"] for d in report["detectors"]]
    assert len(set(names)) == 2 and all(n.startswith("m (") for n in names)  # both were "m"
    assert report["detectors"][1]["paired_with_first"]["against"] == names[0]
    assert "--detector, --frames, --no-follow-faces are for scanning" in capsys.readouterr().out


def test_labels_headers_are_matched_loosely_and_the_delimiter_is_the_header_lines(tmp_path):
    """A `Path,Label` header, a comma-separated .txt or a tab-separated .csv dropped every row ("need labelled
    real and fake clips", blaming the data); a file without such columns now says which columns it has."""
    for name, text in [("upper.csv", "Path, Label \na.mp4,fake\nb.mp4,real\n"),
                       ("commas.txt", "path,label\na.mp4,fake\nb.mp4,real\n"),
                       ("tabs.csv", "path\tlabel\na.mp4,x\tfake\nb.mp4\treal\n")]:
        (tmp_path / name).write_text(text)
        clips = read_labels(tmp_path / name)
        assert [c.label for c in clips] == [1, 0], name
    assert read_labels(tmp_path / "tabs.csv")[0].path == tmp_path / "a.mp4,x"
    (tmp_path / "bare.csv").write_text("a.mp4,fake\nb.mp4,real\n")
    with pytest.raises(ValueError, match="needs a 'path' .* its header has 'a.mp4', 'fake'"):
        read_labels(tmp_path / "bare.csv")


def test_a_clip_listed_twice_counts_once_and_two_labels_for_one_clip_are_refused(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.mp4,fake\nb.mp4,real\na.mp4,fake\n./a.mp4,fake\n")
    with pytest.warns(LabelWarning, match="2 row.* listed again"):
        clips = read_labels(labels)
    assert [(c.path.name, c.label) for c in clips] == [("a.mp4", 1), ("b.mp4", 0)]
    labels.write_text("path,label\na.mp4,fake\nb.mp4,real\n./b.mp4,fake\n")
    with pytest.raises(ValueError, match="labelled both real and fake"):
        read_labels(labels)


def test_eval_metrics_json_holds_no_nan(tmp_path):
    """A source of reals only has no TPR: metrics.json held a bare NaN, which JSON readers reject."""
    from deepscan.cli import main

    clips, lines = _clips_and_results(tmp_path)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    lines[0]["score"] = float("nan")  # another tool's line: unscored, not a crash in scikit-learn
    (tmp_path / "nan.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    for results in ("results.jsonl", "nan.jsonl"):
        out = tmp_path / f"out-{results}"
        assert main(["eval", str(tmp_path / "labels.tsv"), "--results", str(tmp_path / results),
                     "--out", str(out)]) == 0
        text = (out / "metrics.json").read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert [u["path"] for u in json.loads(text)["detectors"][0]["unscored"]] == [str(clips[0].path)]


def test_a_manifest_with_path_rows_and_a_path_csv_with_a_file_column_read_as_before(tmp_path):
    """Picking one column for the whole file dropped a MANIFEST's appended `path` rows, and matching names
    loosely read a `path,label,File` CSV's upload names (`File`) instead of its paths."""
    both = tmp_path / "both.tsv"
    both.write_text("file\tpath\tlabel\nsrc/a.mp4\t\tfake\n\tb.mp4\treal\n\tc.mp4\tfake\n")
    assert [c.path.name for c in read_labels(both)] == ["a.mp4", "b.mp4", "c.mp4"]
    upload = tmp_path / "upload.csv"
    upload.write_text("path,label,File\nclips/x.mp4,fake,IMG_0001.MOV\nclips/y.mp4,real,IMG_0002.MOV\n")
    assert [(c.path.name, c.group) for c in read_labels(upload)] == [("x.mp4", ""), ("y.mp4", "")]


def test_eval_leaves_clips_it_could_not_read_out_names_them_and_scores_as_stored(tmp_path, monkeypatch, capsys):
    """Two unreadable real clips counted as correct "real" calls (score 0): AUC 0.750 -> 0.833, FPR 0.250 ->
    0.167, and the console named neither. A resumed evaluation scored the stored 6-decimal scores, a fresh one
    the full ones: two metrics.json for one set of results. And metrics.json recorded precision "auto"."""
    import deepscan.scanner
    from deepscan.cli import main

    _fake_scanners(monkeypatch)
    fake_scanner = deepscan.scanner.Scanner
    scan = fake_scanner.scan_video

    def scan_or_fail(self, path, sha256=None):
        if "broken" in path.name:
            return VideoResult(path=str(path), status="error", verdict="error", error="not a video file")
        r = scan(self, path, sha256)
        r.score += 1e-7 * len(path.name)  # digits past the 6th, which results.jsonl does not keep
        return r

    monkeypatch.setattr(fake_scanner, "scan_video", scan_or_fail)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{n}.mp4,{'fake' if 'fake' in n else 'real'}\n" for n in (
        "real1", "real2", "fake1", "fake2", "broken1", "broken2")))
    assert main(["eval", str(labels), "--weights", "good", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("error, left out (not a video file)") == 2 and "broken1.mp4" in printed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    (entry,) = metrics["detectors"]
    assert entry["n_clips"] == 4 and entry["at_threshold"]["fpr"] == 0.0 and entry["precision"] == "fp32"
    assert [round(s, 6) for s in entry["video_scores"]["scores"]] == entry["video_scores"]["scores"]
    assert [u["path"].rsplit("/", 1)[-1] for u in entry["unscored"]] == ["broken1.mp4", "broken2.mp4"]


def test_a_subset_matches_label_paths_however_they_are_written(tmp_path):
    """`--subset CARD` compared the raw cell: ./a.mp4 or an absolute path under the labels' folder matched none
    of the card's validation files."""
    labels = tmp_path / "labels.tsv"
    labels.write_text(f"path\tlabel\n./src/a.mp4\tfake\n{tmp_path}/src/b.mp4\treal\nsrc/c.mp4\treal\n")
    clips = read_labels(labels, {"src/a.mp4", "src/b.mp4"})
    assert [c.path.name for c in clips] == ["a.mp4", "b.mp4"]
