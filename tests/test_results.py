from __future__ import annotations

import json

from deepscan.results import FaceResult, FrameResult, TrackResult, VideoResult
from deepscan.scanner import ResultsWriter, ScanOptions


def result(path="a.mp4", sha="s" * 64, status="ok", score=0.7, cfg="c1") -> VideoResult:
    if status == "error":
        return VideoResult(path=path, sha256=sha, status="error", verdict="error", error="broken",
                           model={"name": "m", "sha256": "m" * 64}, config_hash=cfg)
    return VideoResult(path=path, sha256=sha, size_bytes=10, status=status, score=score,
                       verdict="fake" if status == "ok" else status, model={"name": "m", "sha256": "m" * 64},
                       frames=[FrameResult(index=3, time_s=0.12, faces=[
                           FaceResult(box=[1, 2, 30, 40], prob=0.99, track=0, score=score)])],
                       tracks=[TrackResult(id=0, n_faces=1, score=score, verdict="fake", first_time_s=0.12,
                                           last_time_s=0.12, counted=True)],
                       config_hash=cfg)


def test_json_round_trip_is_stable():
    r = result()
    d = json.loads(r.to_json())
    assert VideoResult.from_dict(d).to_dict() == d
    assert d["n_faces"] == 1 and d["n_tracks"] == 1 and d["frames"][0]["faces"][0]["box"] == [1, 2, 30, 40]


def test_a_result_read_back_has_its_tracks_face_scores():
    """A resumed result (read from its line) gives the API the same per-track face scores as a fresh one, and
    so the same score interval (they used to come back empty)."""
    import numpy as np

    from deepscan.scoring import aggregate, score_interval

    rng = np.random.default_rng(0)
    frames = [FrameResult(index=i, time_s=i / 5, faces=[
        FaceResult(box=[1, 2, 30, 40], prob=0.99, track=t, score=float(rng.random())) for t in (0, 1)])
        for i in range(12)]
    score, verdict, tracks = aggregate(frames, threshold=0.5, band=0.1)
    fresh = VideoResult(path="a.mp4", status="ok", score=score, verdict=verdict, frames=frames, tracks=tracks)
    back = VideoResult.from_dict(json.loads(fresh.to_json()))
    assert [t.scores for t in back.tracks] == [[round(s, 6) for s in t.scores] for t in tracks]
    assert np.allclose(score_interval(back.tracks), score_interval(tracks), atol=1e-5)


def test_writer_appends_lines_and_indexes_finished_results(tmp_path):
    w = ResultsWriter(tmp_path)
    w.write(result("a.mp4", sha="a" * 64))
    w.write(result("b.mp4", sha="b" * 64, status="error", score=None))
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x) for x in lines)
    again = ResultsWriter(tmp_path)
    assert again.done("a" * 64, "m" * 64, "c1").path == "a.mp4"
    assert again.done("a" * 64, "m" * 64, "other-config") is None  # another configuration is re-done
    assert again.done("b" * 64, "m" * 64, "c1") is None  # failures are retried


def test_writer_cuts_a_partial_trailing_line(tmp_path):
    w = ResultsWriter(tmp_path)
    w.write(result("a.mp4", sha="a" * 64))
    with open(tmp_path / "results.jsonl", "ab") as fh:
        fh.write(b'{"path": "half-writ')  # what a crash mid-write could leave
    w2 = ResultsWriter(tmp_path)
    w2.write(result("c.mp4", sha="c" * 64))
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["path"] for x in lines] == ["a.mp4", "c.mp4"]


def test_config_hash_tracks_only_score_changing_options():
    base = ScanOptions()
    assert base.config_hash() == ScanOptions(threads=1, device="cpu", keep_heatmaps=False).config_hash()
    assert base.config_hash() != ScanOptions(frames=16).config_hash()
    assert base.config_hash() != ScanOptions(threshold=0.3).config_hash()


def test_a_file_name_that_is_not_utf8_is_written_not_fatal(tmp_path):
    import os

    name = os.fsdecode(b"bad\xff name.mp4")  # what os.listdir gives for such a name
    ResultsWriter(tmp_path).write(result(name))
    line = json.loads((tmp_path / "results.jsonl").read_text())
    assert line["path"] == "bad\\xff name.mp4"


def test_decimals_to_compare_prints_a_score_on_its_own_side_of_each_cut():
    from deepscan.results import decimals_to_compare

    assert decimals_to_compare([(0.2, (0.8954,)), (0.95, (0.8954, 0.7954))]) == 3
    assert decimals_to_compare([(0.8954, (0.8954,))]) == 3  # at the threshold is fake, printed alike: fine
    assert decimals_to_compare([(0.8953, (0.8954,))]) == 4  # uncertain; at 3 decimals both read 0.895
    assert decimals_to_compare([(0.79531, (0.8954, 0.7954))]) == 4  # just below the uncertain band's start
    assert decimals_to_compare([(0.8953, (0.8954,))], least=2) == 4
    assert decimals_to_compare([(0.49999999, (0.5,))]) == 6  # capped: no printing tells them apart
    assert decimals_to_compare([(None, (0.5,)), (0.3, (None,)), (True, (0.5,))]) == 3  # not numbers: no say
    assert decimals_to_compare([]) == 3


def test_a_relative_path_is_found_from_the_directory_it_was_scanned_in(tmp_path, monkeypatch):
    """A line for ``in/a.mp4`` scanned from /data: a scan from elsewhere that names the file /data/in/a.mp4 could
    not stat the stored relative path, screened the file again and listed it twice."""
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    (data / "in" / "a.mp4").write_bytes(b"x")
    (data / "in" / "b.mp4").write_bytes(b"y")
    out = tmp_path / "out"
    lines = [{**result(path="in/a.mp4").to_dict(), "environment": {"cwd": str(data)}},
             {**result(path="in/b.mp4").to_dict(), "environment": {}}]  # from before the cwd was recorded
    out.mkdir()
    (out / "results.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    monkeypatch.chdir(tmp_path)
    writer = ResultsWriter(out)
    assert writer.first_name(str(data / "in" / "a.mp4")) == "in/a.mp4"
    assert writer.first_name(str(data / "in" / "b.mp4")) == str(data / "in" / "b.mp4")  # nothing to go on
    assert writer.first_name("data/in/a.mp4") == "in/a.mp4"
    # Screened again from here under its first name, the line says where that name is relative to: a third
    # scan from yet another directory still finds it (the line had this directory's cwd and lost it).
    again = result(path=str(data / "in" / "a.mp4"), sha="t" * 64)
    again.environment = {"cwd": str(tmp_path)}
    writer.write(again)
    assert again.path == "in/a.mp4" and again.environment["cwd"] == str(data)
    (tmp_path / "third").mkdir()
    monkeypatch.chdir(tmp_path / "third")
    assert ResultsWriter(out).first_name(str(data / "in" / "a.mp4")) == "in/a.mp4"
    # A recorded directory that is gone (the folder moved, another machine's results): the path as it is.
    moved = {**result(path="in/c.mp4").to_dict(), "environment": {"cwd": "/no/longer/there"}}
    (data / "in" / "c.mp4").write_bytes(b"z")
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(moved) + "\n")
    monkeypatch.chdir(data)
    assert ResultsWriter(out).first_name(str(data / "in" / "c.mp4")) == "in/c.mp4"


def test_one_relative_name_from_two_directories_is_two_files(tmp_path, monkeypatch):
    """`deepscan scan in` from /data, then from /backup, into one --out: two different files called in/a.mp4.
    The second took the first's name, and the report showed only one of them."""
    for root, content in (("data", b"x"), ("backup", b"y")):
        (tmp_path / root / "in").mkdir(parents=True)
        (tmp_path / root / "in" / "a.mp4").write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    line = {**result(path="in/a.mp4").to_dict(), "environment": {"cwd": str(tmp_path / "data")}}
    (out / "results.jsonl").write_text(json.dumps(line) + "\n")
    monkeypatch.chdir(tmp_path / "backup")
    writer = ResultsWriter(out)
    assert writer.first_name("in/a.mp4") == str(tmp_path / "backup" / "in" / "a.mp4")
    other = result(path="in/a.mp4", sha="b" * 64)
    writer.write(other)
    assert other.path == str(tmp_path / "backup" / "in" / "a.mp4")
    assert [json.loads(t)["path"] for t in (out / "results.jsonl").read_text().splitlines()] == ["in/a.mp4", other.path]
    monkeypatch.chdir(tmp_path / "data")
    assert ResultsWriter(out).first_name("in/a.mp4") == "in/a.mp4"
    (tmp_path / "data" / "in" / "a.mp4").unlink()  # replaced in place: the same name
    (tmp_path / "data" / "in" / "a.mp4").write_bytes(b"z")
    assert ResultsWriter(out).first_name("in/a.mp4") == "in/a.mp4"



def test_a_writer_opening_the_folder_keeps_a_line_another_process_is_writing(tmp_path):
    """A scan opening --out cut a trailing partial line as a crash's leftover; with another process half-way
    through writing a large line, that line was lost once its write completed. The cut and every append hold
    the file's lock, so the opening writer waits for the line instead."""
    import fcntl
    import threading

    ResultsWriter(tmp_path).write(result("a.mp4", sha="a" * 64))
    line = (result("b.mp4", sha="b" * 64).to_json() + "\n").encode()
    with open(tmp_path / "results.jsonl", "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        other.write(line[:50])
        other.flush()
        opened = []
        opener = threading.Thread(target=lambda: opened.append(ResultsWriter(tmp_path)))
        opener.start()
        opener.join(0.3)
        assert opener.is_alive()  # waiting on the lock, not cutting
        other.write(line[50:])
        other.flush()
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    opener.join(5)
    paths = [json.loads(x)["path"] for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert paths == ["a.mp4", "b.mp4"] and opened[0].done("b" * 64, "m" * 64, "c1").path == "b.mp4"


def test_lookups_from_the_preparing_thread_and_writes_do_not_race(tmp_path):
    """The scan looks up the next file's earlier result (building the by-file index over every stored line)
    while it writes this file's: "dictionary changed size during iteration" made a good video an error."""
    import threading

    (tmp_path / "results.jsonl").write_text("".join(
        json.dumps({"path": f"old/{i}.mp4", "status": "ok", "sha256": f"{i:064x}"}) + "\n" for i in range(20000)))
    (tmp_path / "new.mp4").write_bytes(b"x")
    writer = ResultsWriter(tmp_path)
    errors = []

    def look_up():
        try:
            writer.first_name(str(tmp_path / "new.mp4"))
        except RuntimeError as exc:
            errors.append(exc)

    lookup = threading.Thread(target=look_up)
    lookup.start()
    for i in range(200):
        writer.write(result(f"fresh/{i}.mp4", sha=f"{i:064x}"[::-1]))
    lookup.join()
    assert errors == []


def test_a_results_folder_one_may_read_but_not_write_still_resumes(tmp_path, monkeypatch):
    """Opening the file for writing to take its lock refused a folder shared read-only (PermissionError), where
    every result would have resumed with nothing to write."""
    import builtins

    ResultsWriter(tmp_path).write(result("a.mp4", sha="a" * 64))
    real_open = builtins.open

    def read_only(file, mode="r", *args, **kwargs):
        if str(file).endswith("results.jsonl") and any(c in mode for c in "wa+"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    assert ResultsWriter(tmp_path).done("a" * 64, "m" * 64, "c1").path == "a.mp4"


def test_a_filesystem_without_locks_still_takes_results(tmp_path, monkeypatch):
    """Some network mounts refuse flock (ENOLCK, EOPNOTSUPP): the append failed there, losing the result."""
    import errno
    import fcntl

    def refused(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    ResultsWriter(tmp_path).write(result("a.mp4", sha="a" * 64))
    assert ResultsWriter(tmp_path).done("a" * 64, "m" * 64, "c1").path == "a.mp4"
