"""Resume, results.jsonl and CLI robustness: what a rerun, a bad line, a failed write or a bad option leaves."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO, SAMPLE_CLIPS, ffmpeg
from test_results import result

from deepscan import runtime
from deepscan.cli import main as cli_main
from deepscan.html import read_results
from deepscan.results import VideoResult
from deepscan.scanner import ResultsWriter, Scanner, ScanOptions

CLIP = SAMPLE_CLIPS / "astronaut_real.mp4"
FAST = {"frames": 4, "keep_heatmaps": False, "precision": "fp32", "provenance": False}


def strict_json(line: str):
    """json.loads that refuses NaN and Infinity, as JSON readers other than Python's do."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def lines_of(out) -> list[str]:
    return (out / "results.jsonl").read_text().splitlines()


# ------------------------------------------------------------------ 1: a resumed result is the last line again
def test_keep_last_appends_a_resumed_line_only_when_another_run_wrote_after_it(tmp_path):
    w = ResultsWriter(tmp_path)
    w.write(result("a.mp4", cfg="default"))
    w.write(result("a.mp4", cfg="threshold-0.3"))
    w.write(result("b.mp4", sha="b" * 64, cfg="default"))
    again = ResultsWriter(tmp_path)
    resumed = again.done("s" * 64, "m" * 64, "default", "a.mp4")
    again.keep_last(resumed)
    lines = lines_of(tmp_path)
    assert len(lines) == 4 and lines[3] == lines[0]  # the stored line, byte for byte
    again.keep_last(resumed)
    again.keep_last(again.done("b" * 64, "m" * 64, "default", "b.mp4"))  # already b's last line
    assert len(lines_of(tmp_path)) == 4
    last = {d["path"]: d for d in read_results(tmp_path / "results.jsonl")[0]}
    assert last["a.mp4"]["config_hash"] == "default"


def test_report_shows_the_resumed_result_not_an_earlier_runs(tmp_path):
    """scan (default) -> scan at threshold 0.3 -> scan (default, resumed): the last line for the file, which
    the HTML report and videos.csv show, is the third run's result, as printed."""
    out = tmp_path / "out"
    (first,) = Scanner(**FAST).scan([CLIP], out_dir=out)
    (low,) = Scanner(**FAST, threshold=0.3).scan([CLIP], out_dir=out)
    assert low.verdict == "fake" != first.verdict
    (third,) = Scanner(**FAST).scan([CLIP], out_dir=out)
    assert third.resumed and third.verdict == first.verdict
    lines = lines_of(out)
    assert len(lines) == 3 and lines[2] == lines[0]
    (shown,), _ = read_results(out / "results.jsonl")
    assert shown["verdict"] == third.verdict and shown["model"]["threshold"] == third.model["threshold"]
    (fourth,) = Scanner(**FAST).scan([CLIP], out_dir=out)
    assert fourth.resumed and len(lines_of(out)) == 3  # already the last line: nothing appended


def test_campaign_resume_appends_resumed_lines_again(tmp_path):
    from deepscan.campaign import available_backend

    if available_backend() != "pdq":
        pytest.skip("pdqhash is not installed")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "a_original.mp4")
    ffmpeg("-i", str(src / "a_original.mp4"), "-c:v", "libx264", "-crf", "28", "-an", str(src / "b_reupload.mp4"))
    out = tmp_path / "out"
    first = list(Scanner(**FAST, threads=1).scan([src], out_dir=out, dedupe=True))
    list(Scanner(**FAST, threads=1, threshold=0.01).scan([src], out_dir=out, dedupe=True))
    third = list(Scanner(**FAST, threads=1).scan([src], out_dir=out, dedupe=True))
    assert all(r.resumed for r in third)
    assert (third[1].extra.get("campaign") or {}).get("inherited")  # the copy: the campaign's own resume key
    lines = lines_of(out)
    assert len(lines) == 6 and lines[4:] == lines[:2]
    shown = {d["path"]: d for d in read_results(out / "results.jsonl")[0]}
    assert [shown[r.path]["verdict"] for r in first] == [r.verdict for r in third]


# ------------------------------------------------------------------ 2: thresholds and NaN
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "-1", "1.5", "half"])
def test_cli_refuses_a_threshold_outside_0_to_1(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["scan", str(CLIP), "--threshold", bad])
    assert exc.value.code == 2
    assert "--threshold" in capsys.readouterr().err


def test_api_refuses_a_threshold_outside_0_to_1():
    for bad in (float("nan"), float("inf"), -1.0, 1.5, "0.5"):
        with pytest.raises(ValueError, match="threshold"):
            ScanOptions(threshold=bad)
        with pytest.raises(ValueError, match="threshold"):
            Scanner(threshold=bad)
    with pytest.raises(ValueError, match="min_face_prob"):
        ScanOptions(min_face_prob=float("nan"))
    assert ScanOptions(threshold=0.0).threshold == 0.0 and ScanOptions(threshold=1).threshold == 1


def test_no_nan_reaches_results_jsonl(tmp_path):
    """NaN can legitimately come from outside the scores (a probe or container tag): JSON has no NaN, so it
    is written as null. Everything written parses with a strict JSON reader."""
    r = result("a.mp4")
    r.video = {"fps": float("nan"), "duration_s": float("inf"), "width": 320}
    r.score_ci95 = (float("nan"), 0.9)
    r.timing = {"total_s": float("nan")}
    d = strict_json(r.to_json())
    assert d["video"] == {"fps": None, "duration_s": None, "width": 320}
    assert d["score_ci95"] == [None, 0.9] and d["timing"] == {"total_s": None}
    ResultsWriter(tmp_path).write(r)
    assert strict_json(lines_of(tmp_path)[0]) == d
    ResultsWriter(tmp_path).keep_last(r)  # its stored line is the last already
    assert len(lines_of(tmp_path)) == 1


def test_a_nan_face_score_is_an_error_not_a_real_verdict(monkeypatch):
    """NaN compares false with every threshold, so the video would pass as real: it becomes an error result."""
    scanner = Scanner(**FAST)
    real_predict = scanner.detector.predict

    def nan_predict(crops):
        out = real_predict(crops)
        out.probs[:] = np.nan
        return out

    monkeypatch.setattr(scanner.detector, "predict", nan_predict)
    r = scanner.scan_video(CLIP)
    assert (r.status, r.verdict) == ("error", "error") and "non-finite" in r.error
    strict_json(r.to_json())


# ------------------------------------------------------------------ 3: exit status of unexpected failures
def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("not a directory")
    assert cli_main(["scan", str(CLIP), "--frames", "2", "--out", str(target)]) == 2
    captured = capsys.readouterr()
    # On stderr, as every error: stdout may carry --json result lines.
    assert captured.err.startswith("deepscan: error: ") and "not a directory" in captured.err and not captured.out
    assert target.read_text() == "not a directory"
    # Under a file: caught by main's handler, not a traceback with exit status 1.
    assert cli_main(["scan", str(CLIP), "--frames", "2", "--out", str(target / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepscan: error: ") and "Traceback" not in err


def test_an_unexpected_exception_exits_2_with_one_line(monkeypatch, capsys):
    import deepscan.cli

    def boom(args):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setitem(deepscan.cli.COMMANDS, "models", boom)
    monkeypatch.delenv("DEEPSCAN_DEBUG", raising=False)
    assert cli_main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deepscan: error: RuntimeError: something broke")
    # DEEPSCAN_DEBUG=1: the traceback, still exit 2 (re-raised, Python exited 1: "a video judged fake").
    monkeypatch.setenv("DEEPSCAN_DEBUG", "1")
    assert cli_main(["models"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: something broke" in err


# ------------------------------------------------------------------ 4: lines that are JSON but not results
def test_lines_that_are_not_results_are_skipped(tmp_path):
    good = result("a.mp4").to_dict()
    malformed = {**result("c.mp4", sha="c" * 64).to_dict(), "frames": "not a list"}
    lines = ["[]", "3", '"text"', "null", '{"no": "path"}', '{"path": 3}',
             json.dumps({"path": "x.mp4", "status": "ok", "sha256": ["unhashable"], "model": {}}),
             json.dumps({"path": "y.mp4", "status": "ok", "sha256": "y" * 64, "model": "not a dict"}),
             json.dumps(good), json.dumps(malformed)]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    w = ResultsWriter(tmp_path)
    assert w.done("s" * 64, "m" * 64, "c1", "a.mp4").path == "a.mp4"
    assert w.done("c" * 64, "m" * 64, "c1", "c.mp4") is None  # unreadable as a result: screened again
    w.write(result("b.mp4", sha="b" * 64))
    assert ResultsWriter(tmp_path).done("b" * 64, "m" * 64, "c1", "b.mp4").path == "b.mp4"


# ------------------------------------------------------------------ 5: short and failed writes
def test_short_writes_still_write_the_whole_line(tmp_path, monkeypatch):
    real_write, calls = os.write, []

    def half(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(data[: max(1, len(data) // 2)]))

    monkeypatch.setattr(os, "write", half)
    w = ResultsWriter(tmp_path)
    w.write(result("a.mp4"))
    monkeypatch.undo()
    assert len(calls) > 5
    (line,) = lines_of(tmp_path)
    assert VideoResult.from_dict(json.loads(line)).to_dict() == result("a.mp4").to_dict()


def test_a_failed_write_leaves_no_partial_line_and_is_not_remembered(tmp_path, monkeypatch):
    w = ResultsWriter(tmp_path)
    w.write(result("a.mp4"))
    size = (tmp_path / "results.jsonl").stat().st_size
    real_write, calls = os.write, []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        w.write(result("b.mp4", sha="b" * 64))
    monkeypatch.undo()
    assert (tmp_path / "results.jsonl").stat().st_size == size
    assert w.done("b" * 64, "m" * 64, "c1", "b.mp4") is None
    w.write(result("c.mp4", sha="c" * 64))
    assert [json.loads(x)["path"] for x in lines_of(tmp_path)] == ["a.mp4", "c.mp4"]


def test_a_file_size_limit_mid_line_leaves_no_partial_line(tmp_path):
    """RLIMIT_FSIZE (in a child process): the kernel writes up to the limit, then refuses (EFBIG)."""
    pytest.importorskip("resource")
    code = textwrap.dedent(f"""
        import errno, os, resource, sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_results import result
        from deepscan.scanner import ResultsWriter
        w = ResultsWriter({str(tmp_path)!r})
        w.write(result("a.mp4"))
        size = w.path.stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, resource.RLIM_INFINITY))
        try:
            w.write(result("b.mp4", sha="b" * 64))
        except OSError as exc:
            assert exc.errno == errno.EFBIG, exc
        else:
            raise AssertionError("the write went through")
        assert w.path.stat().st_size == size, w.path.stat().st_size
        assert w.done("b" * 64, "m" * 64, "c1", "b.mp4") is None
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert [json.loads(x)["path"] for x in lines_of(tmp_path)] == ["a.mp4"]


# ------------------------------------------------------------------ 6: one thread means one thread
def test_one_thread_does_not_overlap_the_stages(monkeypatch):
    monkeypatch.delenv("DEEPSCAN_THREADS", raising=False)
    assert not runtime.can_overlap(1) and runtime.can_overlap(2)
    assert sum(runtime.split_threads(2)) == 2 and sum(runtime.split_threads(5)) == 5
    assert not Scanner(threads=1).overlapping
    assert Scanner(threads=2).overlapping and not Scanner(threads=2, overlap=False).overlapping
    monkeypatch.setenv("DEEPSCAN_THREADS", "1")
    assert not Scanner().overlapping
    for bad in ("abc", "-2", "1.5"):  # named, not int()'s "invalid literal for int() with base 10"
        monkeypatch.setenv("DEEPSCAN_THREADS", bad)
        with pytest.raises(ValueError, match="DEEPSCAN_THREADS must be a whole number"):
            runtime.total_threads()
    for unset in (" ", "0"):  # 0 has always meant every core
        monkeypatch.setenv("DEEPSCAN_THREADS", unset)
        assert runtime.total_threads() == (os.cpu_count() or 1)


def test_a_one_thread_scan_classifies_on_the_calling_thread(monkeypatch):
    import threading

    scanner = Scanner(**FAST, threads=1)
    seen = []
    real_predict = scanner.detector.predict
    monkeypatch.setattr(scanner.detector, "predict",
                        lambda crops: seen.append(threading.current_thread().name) or real_predict(crops))
    monkeypatch.setattr(scanner, "_classifier", lambda: pytest.fail("a classifier thread with --threads 1"))
    r = scanner.scan_video(CLIP)
    assert r.status == "ok" and seen and set(seen) == {threading.current_thread().name}
    assert r.environment["threads"] == 1
    assert r.environment["cwd"] == os.getcwd()  # a relative path in the results names a file from there


# ------------------------------------------------------------------ 7: model card fields in the resume key
def test_card_hash_covers_fields_that_change_scores_only():
    from deepscan.detector import DEFAULT_MODEL, available_models
    from deepscan.detector.card import ModelCard
    from deepscan.scanner import card_hash

    card = ModelCard.load(available_models()[DEFAULT_MODEL])
    base = card_hash(card)

    def edited(**changes):
        d = card.to_dict()
        for key, value in changes.items():
            if key == "min_prob":
                d["face_detector"] = {**d["face_detector"], "min_prob": value}
            else:
                d[key] = value
        return card_hash(ModelCard.from_dict(d))

    for changes in ({"temperature": 1.0}, {"crop_margin": 0.3}, {"input_size": 192}, {"mean": [0.4] * 3},
                    {"std": [0.4] * 3}, {"min_prob": 0.9}, {"extra": {**card.extra, "net": {}}}):
        assert edited(**changes) != base, changes
    for changes in ({"metrics": {"x": 1}}, {"description": "new"}, {"threshold": 0.3}, {"uncertain_band": 0.2},
                    {"precision_thresholds": {}}, {"training": {}}, {"name": "other"}):
        assert edited(**changes) == base, changes


def test_a_card_edited_in_what_changes_scores_is_not_resumed(tmp_path):
    from deepscan.detector import DEFAULT_MODEL, available_models

    shipped = available_models()[DEFAULT_MODEL]
    card = json.loads(shipped.read_text())
    card["weights"] = str(shipped.parent / card["weights"])  # absolute: no copy of the weights needed
    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps(card))
    out = tmp_path / "out"
    options = {**FAST, "detector": str(card_path)}
    (first,) = Scanner(**options).scan([CLIP], out_dir=out)

    card["metrics"] = {**card.get("metrics", {}), "note": "re-measured"}
    card_path.write_text(json.dumps(card))
    (same,) = Scanner(**options).scan([CLIP], out_dir=out)
    assert same.resumed

    card["temperature"] = card["temperature"] * 2
    card_path.write_text(json.dumps(card))
    (hotter,) = Scanner(**options).scan([CLIP], out_dir=out)
    assert not hotter.resumed  # before the card hash: the result at the old temperature was handed back
    assert hotter.score != pytest.approx(first.score, abs=1e-4)
    assert hotter.model["card_hash"] != first.model["card_hash"]
