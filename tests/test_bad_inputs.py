"""Hostile and broken inputs: never crash, never lose a result, never read outside the input.

The corpus comes from ``tests/badinputs.py`` (generated with ffmpeg, about 75 inputs). The video stage runs
alone on every kind, then the real ``deepscan scan`` runs once over the whole corpus (about 25 s on two busy
cores). The ``slow`` test kills scans with SIGKILL to check ``results.jsonl`` survives.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest
from badinputs import Expect, child_processes, face_clip, make_corpus
from conftest import SAMPLE_CLIPS, make_test_video, shared_dir

from deepscan import video
from deepscan.video import VideoError, VideoInfo, check_input, discover, iter_frames, probe

MUST_WORK = ("ok", "no_face", "works")


# ------------------------------------------------------------------------------------------- fixtures
class Corpus:
    def __init__(self, base: Path):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        port = self.listener.getsockname()[1]
        self.token = f"SECRET-{uuid.uuid4()}"
        self.secret = base / "secret.txt"
        self.secret.write_text(self.token + "\n")
        self.root = base / "corpus"
        self.expect = make_corpus(self.root, secret_path=self.secret, leak_url=f"http://127.0.0.1:{port}/v.mp4")

    def connections(self, wait_s: float = 0.5) -> int:
        """How many connections reached the loopback listener (a leak if any)."""
        n = 0
        while select.select([self.listener], [], [], wait_s)[0]:
            conn, _ = self.listener.accept()
            conn.close()
            n += 1
            wait_s = 0.05
        return n

    def inputs(self) -> dict[str, Expect]:
        return {k: v for k, v in self.expect.items() if v.outcome != "skipped"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    c = Corpus(tmp_path_factory.mktemp("bad"))
    yield c
    c.listener.close()
    (c.root / "unreadable.mp4").chmod(0o644)


def one_line_message(msg) -> bool:
    return isinstance(msg, str) and 0 < len(msg) <= 300 and "\n" not in msg and "Traceback" not in msg


def detector_args() -> list[str]:
    """The default detector when its weights are here, else MesoNet from ../shared, else skip."""
    from deepscan.detector import find_weights, resolve_card

    try:
        find_weights(resolve_card(None))
        return []
    except (KeyError, FileNotFoundError, ValueError):
        pass
    weights = shared_dir() / "weights" / "mesonet" / "Meso4_DF.h5"
    if not weights.is_file():
        pytest.skip("neither the default detector's weights nor MesoNet weights in ../shared")
    return ["--detector", "mesonet4-df", "--weights", str(weights)]


def shown(name: str) -> str:
    """How results.jsonl writes a path (bytes that are not UTF-8 as \\xNN)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------- the video stage, each kind
def test_corpus_has_the_kinds_asked_for(corpus):
    kinds = corpus.inputs()
    assert len(kinds) >= 30
    for name in ("empty.mp4", "random_bytes.mp4", "text.mp4", "audio_only_aac.mp4", "png_named.mp4",
                 "jpeg_named.mp4", "one_frame.mp4", "tenth_of_a_second.mp4", "long_10min_1fps.mp4",
                 "declared_16000x16000.mov", "odd_size_161x97.mp4", "face_rotated_90.mp4",
                 "face_rotated_180.mp4", "face_rotated_270.mp4", "variable_frame_rate.mp4",
                 "playlist_secret.m3u8", "concat_secret.ffconcat", "loop_a.mp4", "unreadable.mp4",
                 "name with spaces.mp4", "new\nline.mp4", "-i evil.mp4"):
        assert name in kinds, name
    assert sum(n.startswith("cut_in_") for n in kinds) >= 8
    assert sum(n.startswith("bitflips") for n in kinds) >= 4


def test_discover_finds_every_input_once_and_walks_no_loop(corpus):
    found = [str(p.relative_to(corpus.root)) for p in discover([corpus.root])]
    assert sorted(found) == sorted(corpus.inputs())


def test_video_stage_on_every_kind(corpus):
    """probe + iter_frames: errors are one-line VideoErrors, must-work kinds give frames, nothing leaks."""
    seen = {}
    for name in corpus.inputs():
        path = corpus.root / name
        try:
            info = probe(path)
            frames = [f for batch in iter_frames(path, info, n_frames=4, timeout_s=60) for f in batch]
            seen[name] = ("frames", len(frames), info)
        except VideoError as exc:
            seen[name] = ("error", str(exc), None)
    for name, expect in corpus.inputs().items():
        kind, value, info = seen[name]
        if expect.outcome == "error":
            assert kind == "error", f"{name}: expected an error, got {value} frames"
        elif expect.outcome in MUST_WORK:
            assert kind == "frames" and value >= 1, f"{name}: {value}"
        if kind == "error":
            assert one_line_message(value), (name, value)
            if expect.message:
                assert re.search(expect.message, value), (name, value)
    assert corpus.connections() == 0, "something connected to the loopback listener"
    assert child_processes() == []
    # Spot checks on what was read
    assert seen["face_metadata_injection.mkv"][2].width == 240  # tags posing as a 30000x30000 stream
    assert seen["face_metadata_injection.mkv"][2].duration_s == pytest.approx(1.0, abs=0.1)
    assert seen["face_with_cover_art.mp4"][2].codec == "h264"  # the clip, not the cover picture
    assert seen["odd_size_161x97.mp4"][2].width == 161 and seen["odd_size_161x97.mp4"][2].height == 97
    assert seen["face_in_mpegts.ts"][1] == 4  # MPEG-TS starts at 1.4 s; sampling must still hit 4 frames
    # A cut-off download is screened on what is there, and says so.
    assert seen["cut_in_mdat_50pct_faststart.mp4"][2].warnings[0].startswith("truncated MP4")
    assert seen["face_h264.mp4"][2].warnings == []


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_clips_decode_upright(corpus, degrees):
    def frames(name):
        return [f.image.astype(np.float32) for b in iter_frames(corpus.root / name, n_frames=4) for f in b]

    upright = frames("face_h264.mp4")
    turned = frames(f"face_rotated_{degrees}.mp4")
    assert [f.shape for f in turned] == [f.shape for f in upright]
    same = np.mean([np.abs(a - b).mean() for a, b in zip(turned, upright, strict=True)])
    not_turned = np.mean([np.abs(np.rot90(a) - b).mean() for a, b in zip(turned, upright, strict=True)])
    assert same < 8.0 and not_turned > 3 * same, (same, not_turned)


def test_playlists_are_refused_by_ffmpeg_too(corpus, monkeypatch):
    """Without the Python sniffing, ffmpeg's own demuxer whitelist still refuses them before parsing."""
    monkeypatch.setattr(video, "_looks_like_playlist", lambda head: False)
    for name in ("playlist_secret.m3u8", "playlist_url.m3u8", "concat_secret.ffconcat", "concat_url.ffconcat",
                 "concat_video_named.mp4"):
        with pytest.raises(VideoError, match="refused: playlist/concat") as err:
            probe(corpus.root / name)
        assert corpus.token not in str(err.value)
    assert corpus.connections() == 0


def test_forged_probe_results_cannot_open_other_demuxers(corpus):
    forged = VideoInfo(path="x", container="hls", codec="h264", width=64, height=48, fps=25.0, duration_s=1.0,
                       n_frames=25, rotation=0)
    with pytest.raises(VideoError, match="refused: playlist"):
        next(iter_frames(corpus.root / "playlist_url.m3u8", forged))
    # Claiming MP4 for a playlist only makes ffmpeg read it as MP4 (and fail).
    forged.container = "mov,mp4,m4a,3gp,3g2,mj2"
    with pytest.raises(VideoError):
        next(iter_frames(corpus.root / "concat_video_named.mp4", forged))
    assert corpus.connections() == 0 and child_processes() == []


def test_check_input_names_the_problem(corpus):
    for name, message in (("loop_a.mp4", "symbolic link loop"), ("dangling.mp4", "broken symbolic link"),
                          ("fifo.mp4", "not a regular file"), ("empty.mp4", "empty"),
                          ("playlist_named.mp4", "refused: playlist")):
        with pytest.raises(VideoError, match=message):
            check_input(corpus.root / name)
    with pytest.raises(VideoError, match="directory"):
        check_input(corpus.root / "sub")


def test_limits_refuse_before_decoding_and_can_be_raised(corpus):
    with pytest.raises(VideoError, match=r"16000x16000 is over the limit of 67108864 pixels"):
        probe(corpus.root / "declared_16000x16000.mov")
    assert probe(corpus.root / "declared_16000x16000.mov", max_pixels=16000 * 16000).width == 16000
    with pytest.raises(VideoError, match=r"duration 5:00:00 is over the limit of 4:00:00"):
        probe(corpus.root / "duration_5h.mp4")
    long_ok = probe(corpus.root / "duration_5h.mp4", max_duration_s=None)
    assert long_ok.duration_s == pytest.approx(5 * 3600, rel=0.01)
    with pytest.raises(VideoError, match="160x120 is over the limit of 10000 pixels"):
        probe(corpus.root / "one_frame.mp4", max_pixels=100 * 100)
    info = probe(corpus.root / "one_frame.mp4")
    with pytest.raises(VideoError, match="over the limit"):
        next(iter_frames(corpus.root / "one_frame.mp4", info, max_pixels=100 * 100))


def test_decoder_refuses_frames_larger_than_the_header_says(corpus):
    """A header that understates the size must not get past the decoder's own pixel limit."""
    path = corpus.root / "odd_size_161x97.mp4"
    info = probe(path)
    lying = VideoInfo(**{**info.to_dict(), "width": 8, "height": 8})
    with pytest.raises(VideoError, match="over the limit"):
        next(iter_frames(path, lying, max_pixels=64 * 64))
    assert child_processes() == []


def test_long_video_streams_in_flat_memory(corpus):
    path = corpus.root / "long_10min_1fps.mp4"
    info = probe(path)
    assert info.duration_s == pytest.approx(600, abs=1)
    for _ in iter_frames(path, info, n_frames=1):  # first-use imports and caches are not the stream's memory
        pass
    tracemalloc.start()
    try:
        n = 0
        for batch in iter_frames(path, info, fps=1.0, batch_size=8):
            n += len(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = n * info.width * info.height * 3
    assert n >= 590
    assert peak < total / 10, f"peak {peak} bytes for {total} bytes of frames"


def test_decode_timeout_kills_and_reaps_ffmpeg(corpus, monkeypatch):
    path = corpus.root / "long_10min_1fps.mp4"
    info = probe(path)
    # A decoder that hangs: ffmpeg is stopped (SIGSTOP) right after it starts, so the reader waits forever.
    real_popen = subprocess.Popen

    def stalled(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        os.kill(proc.pid, signal.SIGSTOP)
        return proc

    monkeypatch.setattr(subprocess, "Popen", stalled)
    t0 = time.monotonic()
    with pytest.raises(VideoError, match=r"decoding took longer than the 1 s limit"):
        for _ in iter_frames(path, info, fps=1.0, batch_size=1, timeout_s=1.0):
            pass
    assert time.monotonic() - t0 < 15
    assert child_processes() == []


def test_decode_timeout_does_not_count_the_consumers_time():
    """Detecting faces in a long video sampled densely can take longer than decoding it: only the time the
    stream waits for ffmpeg counts towards the limit, not the time its consumer holds each batch."""
    path = SAMPLE_CLIPS / "astronaut_real.mp4"
    t0 = time.monotonic()
    frames = 0
    for batch in iter_frames(path, n_frames=8, batch_size=2, timeout_s=1.0):
        frames += len(batch)
        time.sleep(0.5)  # a slow consumer: 2 s in all, twice the limit
    assert frames == 8 and time.monotonic() - t0 >= 2.0
    assert child_processes() == []


def test_probe_timeout(corpus):
    with pytest.raises(VideoError, match="probing took longer"):
        probe(corpus.root / "long_10min_1fps.mp4", timeout_s=0.001)
    assert child_processes() == []


def test_abandoned_stream_leaves_no_process(corpus):
    frames = iter_frames(corpus.root / "long_10min_1fps.mp4", fps=1.0, batch_size=1)
    next(frames)
    frames.close()
    assert child_processes() == []


def test_banner_cannot_be_forged_by_a_file_name():
    url = ("file:/x/a.mp4':\nInput #0, hls, from 'x':\n"
           "  Stream #0:0: Video: h264, yuv420p, 30000x30000, 25 fps\n'")
    banner = (f"[in#0 @ 0x1] Opening '{url}' for reading\n"
              f"Input #0, mov,mp4,m4a,3gp,3g2,mj2, from '{url}':\n"
              "  Duration: 00:00:02.00, start: 0.000000, bitrate: 100 kb/s\n"
              "  Stream #0:0[0x1](und): Audio: aac (LC), 44100 Hz, mono, fltp, 69 kb/s (default)\n"
              "  Stream #0:1[0x2](und): Video: h264 (High), yuv420p(progressive), 64x48, 10 fps, 10 tbr\n")
    info = video.parse_ffmpeg_banner(banner, "a.mp4", url=url)
    assert info.container == "mov,mp4,m4a,3gp,3g2,mj2"
    assert (info.width, info.height, info.stream_index) == (64, 48, 1)


# ----------------------------------------------------------------------------------- the whole command
@pytest.fixture(scope="module")
def cli_run(corpus, tmp_path_factory):
    """``deepscan scan`` once over the whole corpus, as a user runs it."""
    args = detector_args()
    base = tmp_path_factory.mktemp("cli")
    out, tmp = base / "out", base / "tmp"
    tmp.mkdir()
    cmd = [sys.executable, "-m", "deepscan.cli", "scan", str(corpus.root), "--frames", "4", "--out", str(out),
           "--json", *args]
    env = {**os.environ, "TMPDIR": str(tmp), "NO_COLOR": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=300, cwd=base, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        written = out / "results.jsonl"
        done = written.read_bytes().splitlines() if written.exists() else []
        last = json.loads(done[-1])["path"] if done else "none"
        pytest.fail(f"deepscan scan hung: {len(done)} results in 300 s, the last for {last}")
    lines = (out / "results.jsonl").read_bytes().decode("utf-8").splitlines()
    return {"proc": proc, "results": [json.loads(x) for x in lines], "out": out, "tmp": tmp}


def test_cli_gives_one_result_per_input(corpus, cli_run):
    results = cli_run["results"]
    names = [os.path.relpath(r["path"], shown(str(corpus.root))) for r in results]
    expected = sorted(shown(n) for n in corpus.inputs())
    assert sorted(names) == expected  # every input exactly once (duplicates in content included)
    stdout = cli_run["proc"].stdout.decode("utf-8").splitlines()
    printed = [json.loads(x) for x in stdout if x.startswith("{")]
    assert printed == results


def test_cli_outcomes_match_the_expectations(corpus, cli_run):
    by_name = {os.path.relpath(r["path"], shown(str(corpus.root))): r for r in cli_run["results"]}
    for name, expect in corpus.inputs().items():
        r = by_name[shown(name)]
        status, error = r["status"], r["error"]
        assert status in ("ok", "no_face", "error"), (name, status)
        if status == "error":
            assert one_line_message(error), (name, error)
            assert not error.startswith("internal error"), (name, error, r.get("extra"))
        if expect.outcome == "error":
            assert status == "error", (name, status)
            if expect.message:
                assert re.search(expect.message, error), (name, error)
        elif expect.outcome == "ok":
            assert status == "ok" and r["n_faces"] >= 2, (name, status, r["n_faces"], error)
        elif expect.outcome == "no_face":
            assert status == "no_face", (name, status, error)
        elif expect.outcome == "works":
            assert status in ("ok", "no_face"), (name, status, error)


def test_cli_exit_status_and_no_crash(cli_run):
    proc = cli_run["proc"]
    assert proc.returncode in (1, 2), proc.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in proc.stderr and b"Traceback" not in proc.stdout


def test_cli_reads_nothing_outside_the_input(corpus, cli_run):
    token = corpus.token.encode()
    assert token not in cli_run["proc"].stdout and token not in cli_run["proc"].stderr
    for f in cli_run["out"].rglob("*"):
        if f.is_file():
            assert token not in f.read_bytes(), f
    assert corpus.connections() == 0, "a playlist made deepscan connect to the loopback listener"
    # torch makes an empty inductor cache folder in TMPDIR; anything else would be deepscan's leak.
    left = [p.name for p in cli_run["tmp"].iterdir()
            if not (p.name.startswith("torchinductor_") and p.is_dir() and not any(p.iterdir()))]
    assert left == [], "temporary files left behind"


# ------------------------------------------------------------------------------------------ determinism
def test_same_input_twice_gives_identical_scores(corpus):
    from deepscan import Scanner

    args = detector_args()
    kw = {"detector": args[1], "weights": args[3]} if args else {}
    path = corpus.root / "face_rotated_90.mp4"

    def scores(r):
        return r.score, [(f.box, f.score) for fr in r.frames for f in fr.faces]

    scanner = Scanner(frames=4, keep_heatmaps=False, **kw)
    first = scanner.scan_video(path)
    assert first.status == "ok", first.error
    assert scores(scanner.scan_video(path)) == scores(first)
    assert scores(Scanner(frames=4, keep_heatmaps=False, **kw).scan_video(path)) == scores(first)


# ----------------------------------------------------------------------------------------- crash safety
def _stray_ffmpeg(under: Path) -> list[str]:
    stray = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if "ffmpeg" in text and str(under) in text:
            stray.append(cmdline.parent.name)
    return stray


@pytest.mark.slow
def test_sigkill_never_leaves_a_partial_or_invalid_line(tmp_path):
    from deepscan.scanner import ResultsWriter

    args = detector_args()
    clips = tmp_path / "clips"
    clips.mkdir()
    # Distinct contents, each with a face searched for in 64 frames: a video takes ~1 s to screen even on a fast
    # CPU (with 4 frames, ~0.1 s: the rest of the folder finished inside the 0-0.6 s before the kill).
    for i in range(6):
        face_clip(clips / f"clip{i}.mp4", vf=f"crop={200 - 8 * i}:{200 - 8 * i}", seconds=3.0 + i / 10)
    out = tmp_path / "out"
    results = out / "results.jsonl"
    cmd = [sys.executable, "-m", "deepscan.cli", "scan", str(clips), "--frames", "64", "--full-detect-every", "1",
           "--out", str(out), "--json", *args]
    rng = random.Random(1234)

    def finished_lines() -> list[bytes]:
        raw = results.read_bytes() if results.exists() else b""
        complete = raw[:raw.rfind(b"\n") + 1]
        for line in complete.splitlines():
            json.loads(line)  # every finished line is a whole JSON object
        return complete.splitlines()

    killed_mid_scan = 0
    for _ in range(3):  # each run: killed a random moment (0-0.6 s) after it finishes one more video
        before = len(finished_lines())
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while len(finished_lines()) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        killed_mid_scan += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished_lines()
        time.sleep(1.0)  # ffmpeg, orphaned, dies on its broken pipe
        assert _stray_ffmpeg(clips) == []
    assert killed_mid_scan >= 2, "the scans finished before they could be killed"
    # A kill inside the write itself is too rare to hit by chance: leave the torn line such a kill would.
    with open(results, "ab") as fh:
        fh.write(b'{"schema_version":"1.0","path":"' + str(clips / "clip9.mp4").encode() + b'","sta')
    final = subprocess.run(cmd, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    assert final.returncode in (0, 1), final.stderr.decode(errors="replace")[-2000:]
    raw = results.read_bytes()
    assert raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.splitlines()]
    paths = [r["path"] for r in records]
    wanted = {str(p) for p in clips.glob("*.mp4")}
    assert set(paths) == wanted, "every video appears"
    assert all(r["status"] in ("ok", "no_face") for r in records)
    if hasattr(ResultsWriter, "done"):  # resume: a re-run skips videos already in results.jsonl
        assert sorted(paths) == sorted(wanted), "each video exactly once"


@pytest.mark.parametrize("size", ["16x16", "480x16", "16x480"])
def test_a_frame_too_small_for_any_face_reads_no_face_not_an_internal_error(tmp_path, size):
    """MTCNN builds no image pyramid for a frame smaller than its least face, and raised (torch.cat of nothing)."""
    from deepscan import Scanner

    path = make_test_video(tmp_path / "small.mp4", 1, size)
    result = Scanner(frames=4, keep_heatmaps=False).scan_video(path)
    assert (result.status, result.verdict, result.error) == ("no_face", "no_face", None)
