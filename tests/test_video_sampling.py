"""Where samples fall: the video stream's own timing (not the container's), variable frame rates, the last
slice, retries after a failure, and a frame size that changes mid-stream. Small synthetic clips only."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import SAMPLE_CLIPS, all_frames, decoded_index, ffmpeg, index_video, make_test_video

import deepscan.video as video
from deepscan.video import (
    FinalVideoError,
    VideoError,
    measure_video_stream,
    probe,
    sample_schedule,
)


# ------------------------------------------------------------------ 1. unknown duration (elementary streams)
def test_raw_elementary_stream_is_measured_sampled_over_its_length_and_limited(tmp_path):
    raw = tmp_path / "clip.h264"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "4", "-c:v", "libx264", "-f", "h264",
           str(raw))
    info = probe(raw)
    assert info.duration_s == pytest.approx(4.0, abs=0.01) and info.n_frames == 100
    times = [f.time_s for f in all_frames(raw, info=info, n_frames=8)]
    # Targets 0.25 + 0.5·k s: the first frame at or after each, over the 4 s (not the first 0.3 s).
    assert times == pytest.approx([np.ceil((0.25 + 0.5 * k) * 25) / 25 for k in range(8)], abs=1e-3)
    with pytest.raises(FinalVideoError, match="--max-duration"):
        probe(raw, max_duration_s=2.0)


# ------------------------------------------------------------------ 2. the video's own span, not the container's
def test_samples_spread_over_the_video_not_a_longer_audio_track(tmp_path):
    long = tmp_path / "long_audio.mp4"  # 2 s of video, 5 s of audio
    ffmpeg("-f", "lavfi", "-t", "2", "-i", "testsrc=size=64x48:rate=25", "-f", "lavfi", "-t", "5", "-i",
           "anullsrc=r=8000:cl=mono", "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-c:a", "aac", str(long))
    info = probe(long)
    assert info.duration_s == pytest.approx(2.0, abs=0.01) and info.n_frames == 50 and info.warnings == []
    frames = all_frames(long, info=info, n_frames=8)
    assert [f.index for f in frames] == [int(np.ceil((0.125 + 0.25 * k) * 25)) for k in range(8)]


def test_samples_count_from_a_video_that_starts_after_its_audio(tmp_path):
    path = tmp_path / "late.mp4"
    ffmpeg("-f", "lavfi", "-t", "4", "-i", "anullsrc=r=8000:cl=mono", "-itsoffset", "2", "-f", "lavfi", "-t", "2",
           "-i", "testsrc=size=64x48:rate=25", "-map", "0:a", "-map", "1:v", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", "-c:a", "aac", str(path))
    info = probe(path)
    assert info.duration_s == pytest.approx(2.0, abs=0.01)
    times = [f.time_s for f in all_frames(path, info=info, n_frames=4)]
    first = all_frames(path, info=info, n_frames=None, fps=1.0)[0].time_s
    assert first == pytest.approx(2.0, abs=0.05)
    assert [round(t - first, 2) for t in times] == [0.28, 0.76, 1.28, 1.76]  # 0.25 + 0.5·k, on the 25 fps grid


def test_failed_measurement_keeps_the_container_values_and_says_so(tmp_path):
    path = make_test_video(tmp_path / "a.mp4", 1, "64x48")
    info = probe(path)
    before = (info.duration_s, info.n_frames)
    measure_video_stream(path, info, timeout_s=0.0)  # killed before it can list a packet
    assert (info.duration_s, info.n_frames) == before
    assert info.warnings and "could not measure the video stream" in info.warnings[0]


# ------------------------------------------------------------------ 3. variable frame rate at a fixed rate
def test_rate_sampling_of_a_clip_with_a_hole_takes_every_frame_at_its_rate(tmp_path):
    path = tmp_path / "hole.mp4"  # 25 frames at 25 fps, a 3 s hole, 75 more: 100 frames, 14.3 fps on average
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-frames:v", "100", "-vf",
           "setpts='N+if(gte(N\\,25)\\,75\\,0)'", "-fps_mode", "passthrough", "-c:v", "libx264", "-bf", "0",
           "-pix_fmt", "yuv420p", str(path))
    info = probe(path)
    assert info.fps == pytest.approx(100 / 7, abs=0.01)
    assert [f.time_s for f in all_frames(path, info=info, n_frames=None, fps=25)] == pytest.approx(
        [k / 25 for k in range(25)] + [4 + k / 25 for k in range(75)])
    assert len(all_frames(path, info=info, n_frames=None, fps=12.5)) == 13 + 38
    assert len(all_frames(path, info=info, n_frames=100)) == 100


# ------------------------------------------------------------------ 4. the last slice
@pytest.mark.parametrize("n,n_samples", [(40, 32), (40, 39), (58, 30), (58, 57)])
def test_n_samples_are_n_distinct_frames(tmp_path, n, n_samples):
    path = index_video(tmp_path / "idx.mp4", n=n)
    frames = all_frames(path, n_frames=n_samples)
    got = [decoded_index(f) for f in frames]
    assert len(got) == n_samples and len(set(got)) == n_samples and got == [f.index for f in frames]
    # The same frames in the union decode with a hash schedule (Schedule replays the expression exactly).
    union = [f for f in all_frames(path, n_frames=n_samples, hash_fps=2.0) if f.sample]
    assert [decoded_index(f) for f in union] == got


def test_sample_schedule_keeps_the_last_target_on_a_frame_and_targets_a_frame_apart():
    for n_frames in (2, 20, 31, 63, 64, 101, 199, 1000):
        for n in (1, 8, 32, 101, 150, 198):
            if n >= n_frames:
                continue
            info = video.VideoInfo(path="x", container="mov", codec="h264", width=64, height=48, fps=25.0,
                                   duration_s=n_frames / 25.0, n_frames=n_frames, rotation=0)
            step, offset = sample_schedule(info, n)
            assert offset + (n - 1) * step <= (n_frames - 1) / 25.0 + 1e-9
            assert step > 1 / 25.0 and offset >= 0
    info = video.VideoInfo(path="x", container="mov", codec="h264", width=64, height=48, fps=25.0,
                           duration_s=2.0, n_frames=50, rotation=0)
    assert sample_schedule(info, 32) == pytest.approx((0.0625, 0.0225))
    assert sample_schedule(info, 10) == pytest.approx((0.2, 0.1))  # long slices: their middles, as before
    assert sample_schedule(info, None, fps=100) == pytest.approx((0.01, 0.0))  # a rate is kept as asked


def test_ordinary_mp4_sample_times_are_unchanged():
    frames = all_frames(SAMPLE_CLIPS / "carphone_real.mp4", n_frames=32)
    assert [f.index for f in frames] == [2, 6, 10, 14, 17, 21, 25, 29, 32, 36, 40, 44, 47, 51, 55, 59, 62, 66, 70,
                                         74, 77, 81, 85, 89, 92, 96, 100, 104, 107, 111, 115, 119]
    assert frames[0].time_s == pytest.approx(0.066733) and frames[-1].time_s == pytest.approx(3.970633)



# ------------------------------------------------------------------ 4b. seeded places (a scan's schedule)
def test_seeded_samples_take_one_frame_of_each_slice_where_the_seed_says(tmp_path):
    """A scan seeds each sample's place in its slice with the file's sha256: on the fixed schedule its author
    could leave exactly the sampled frames real. The same seed gives the same frames; the twin in Python
    (used when a hash schedule shares the decode) agrees with ffmpeg's select."""
    path = index_video(tmp_path / "idx.mp4", n=58)
    info = probe(path)
    for n in (8, 32):
        step, _ = sample_schedule(info, n)
        fixed = [decoded_index(f) for f in all_frames(path, info=info, n_frames=n)]
        shared_with_fixed = 0
        for seed in ("a" * 64, "b" * 64, "c" * 64):
            got = [decoded_index(f) for f in all_frames(path, info=info, n_frames=n, sample_seed=seed)]
            assert [int(i / 25 // step) for i in got] == list(range(n))  # one frame in each slice
            assert got == [decoded_index(f) for f in all_frames(path, info=info, n_frames=n, sample_seed=seed)]
            union = all_frames(path, info=info, n_frames=n, sample_seed=seed, hash_fps=2.0)
            assert [decoded_index(f) for f in union if f.sample] == got
            shared_with_fixed += len(set(got) & set(fixed))
        if n == 8:  # 7-frame slices: a seeded place is the fixed one about 1 time in 6
            assert shared_with_fixed <= 3 * n // 2
        assert [decoded_index(f) for f in all_frames(path, info=info, n_frames=n, sample_seed="d" * 64)] != fixed


def test_seeded_rate_sampling_takes_one_frame_per_interval_across_a_hole(tmp_path):
    path = tmp_path / "hole.mp4"  # 25 frames at 25 fps, a 3 s hole, 75 more
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-frames:v", "100", "-vf",
           "setpts='N+if(gte(N\\,25)\\,75\\,0)'", "-fps_mode", "passthrough", "-c:v", "libx264", "-bf", "0",
           "-pix_fmt", "yuv420p", str(path))
    info = probe(path)
    frame_times = [k / 25 for k in range(25)] + [4 + k / 25 for k in range(75)]
    for seed in ("a" * 64, "e" * 64):
        times = [f.time_s for f in all_frames(path, info=info, n_frames=None, fps=5, sample_seed=seed)]
        union = all_frames(path, info=info, n_frames=None, fps=5, sample_seed=seed, hash_fps=1.0)
        assert [f.time_s for f in union if f.sample] == times
        # The first frame at or after each target (interval j's at 0.2·j + its shift), each frame once: after
        # the hole, 4.0 s stands for every target in the hole and the next frame past 4.0 + shift for its own.
        shifts, last = video.sample_shifts(info, None, fps=5, seed=seed), video.last_target(info)
        targets = [0.2 * j + min(shifts[j], last - 0.2 * j) for j in range(35)]
        expected = sorted({min(t for t in frame_times if t >= target - 1e-4) for target in targets
                           if target - 1e-4 <= frame_times[-1]})
        assert times == pytest.approx(expected)


def test_seeded_targets_never_fall_after_the_last_frame(tmp_path):
    """A rate's last interval is partial, and a clip may be shorter than one interval; a header may overstate
    the length a little: a target past the last frame took nothing (a 0.4-s clip at --fps 1 had no sample, an
    error "no frames could be decoded", where the fixed schedule took its first frame)."""
    path = index_video(tmp_path / "short.mp4", n=10)  # 0.4 s
    info = probe(path)
    two = index_video(tmp_path / "two.mp4", n=58)  # 2.32 s: intervals [0, 1), [1, 2), [2, 2.32)
    two_info = probe(two)
    for k in range(12):
        seed = f"{k:064x}"
        assert len(all_frames(path, info=info, n_frames=None, fps=1, sample_seed=seed)) == 1
        assert len(all_frames(path, info=info, n_frames=None, fps=0.2, sample_seed=seed)) == 1
        got = [decoded_index(f) for f in all_frames(two, info=two_info, n_frames=None, fps=1, sample_seed=seed)]
        assert [i // 25 for i in got] == [0, 1, 2]
        union = all_frames(two, info=two_info, n_frames=None, fps=1, sample_seed=seed, hash_fps=2.0)
        assert [decoded_index(f) for f in union if f.sample] == got
    # A header 0.03 s too long (under a frame period): the last slice still has its sample.
    overstated = video.replace(two_info, duration_s=two_info.duration_s + 0.03)
    for k in range(12):
        assert len(all_frames(two, info=overstated, n_frames=8, sample_seed=f"{k:064x}")) == 8


def test_seeded_shifts_stay_in_their_slice_and_the_expression_fits_one_argument():
    info = video.VideoInfo(path="x", container="mov", codec="h264", width=64, height=48, fps=25.0,
                           duration_s=3600.0, n_frames=90000, rotation=0)
    shifts = video.sample_shifts(info, None, fps=10.0, seed="f" * 64)
    assert len(shifts) == video.SEEDED_SHIFT_PERIOD and min(shifts) >= 0.0 and max(shifts) <= 0.1 - 0.04
    assert len(set(shifts)) > 0.9 * len(shifts)
    assert len(video.seeded_select_expression(0.1, shifts)) < 64 * 1024  # Linux: 128 KB an argument
    assert video.sample_shifts(info, 32, seed="f" * 64) != video.sample_shifts(info, 32, seed="0" * 64)
    assert video.sample_shifts(info, 32) is None  # no seed: the fixed schedule
    assert video.sample_shifts(info, 100000, seed="f" * 64) is None  # every frame: nothing to place

# ------------------------------------------------------------------ 5. what is retried
@pytest.fixture
def launches(monkeypatch):
    """Every decoder ffmpeg started: (with -hwaccel, keyframes only)."""
    started = []
    real = subprocess.Popen

    def spy(args, *a, **kw):
        if "rawvideo" in args:
            started.append(("-hwaccel" in args, "-skip_frame" in args))
        return real(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", spy)
    monkeypatch.setattr(video, "_HWACCEL_FAILED", set())
    return started


def test_a_file_nothing_decodes_does_not_turn_hardware_decoding_off(tmp_path, launches):
    good = make_test_video(tmp_path / "good.mp4", 1, "64x48",
                           codec=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart"))
    data = bytearray(good.read_bytes())
    at = data.find(b"mdat") + 4
    data[at:] = bytes(len(data) - at)  # the header (moov first) intact, every frame zeros
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    info = probe(broken)
    with pytest.raises(VideoError):
        all_frames(broken, info=info, n_frames=4, hwaccel="no-such-accelerator")
    assert len(launches) == 2  # tried on the CPU too: it fails there as well
    assert video._HWACCEL_FAILED == set()
    assert len(all_frames(good, n_frames=4, hwaccel="no-such-accelerator")) == 4  # the CPU decodes it: blamed
    assert ("no-such-accelerator", "h264") in video._HWACCEL_FAILED


@pytest.mark.parametrize("kw", [dict(keyframes=False), dict(keyframes=True), dict(hwaccel="no-such", keyframes=True)])
def test_a_timeout_is_not_retried(tmp_path, launches, kw):
    path = make_test_video(tmp_path / "a.mp4", 2, "64x48")
    info = probe(path)
    with pytest.raises(FinalVideoError, match="decoding took longer than the 1e-06 s limit"):
        all_frames(path, info=info, n_frames=2, timeout_s=1e-6, **kw)
    assert len(launches) == 1


# ------------------------------------------------------------------ 6. a frame size that changes mid-stream
def resolution_change(tmp_path):
    """2 s at 160x120, then 2 s at 320x180, in one MPEG-TS; and the second part alone."""
    for name, size in (("a.ts", "160x120"), ("b.ts", "320x180")):
        ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate=25", "-t", "2", "-c:v", "libx264", "-pix_fmt",
               "yuv420p", str(tmp_path / name))
    (tmp_path / "list.txt").write_text("file 'a.ts'\nfile 'b.ts'\n")
    joined = tmp_path / "joined.ts"
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(tmp_path / "list.txt"), "-c", "copy", str(joined))
    return joined, tmp_path / "b.ts"


def test_resolution_change_keeps_the_schedule_and_scales_later_frames(tmp_path):
    joined, second = resolution_change(tmp_path)
    info = probe(joined)
    assert (info.width, info.height) == (160, 120)
    assert [f.time_s for f in all_frames(joined, info=info, n_frames=None, fps=1.0)] == [0.0, 1.0, 2.0, 3.0]
    frames = all_frames(joined, info=info, n_frames=4)
    assert [f.time_s for f in frames] == [0.52, 1.52, 2.52, 3.52]
    # After the change: the source's frame scaled to the probed size, not garbage or a mis-strided copy.
    ref = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-i", str(second), "-vf", "scale=160:120:flags=area",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    ref = np.frombuffer(ref, np.uint8).reshape(-1, 120, 160, 3).astype(int)
    for f in frames[2:]:
        assert f.image.shape == (120, 160, 3)
        assert np.abs(f.image.astype(int) - ref[f.index - 50]).mean() < 1.0


# ------------------------------------------------------------------ 7. non-square pixels
@pytest.mark.parametrize("rotation", [0, 90])
def test_non_square_pixels_come_out_at_the_display_aspect(tmp_path, rotation):
    """96x72 coded with SAR 4:3 is shown 128x72: a 36x36 coded square is 48 wide on screen, and in the frames."""
    path = tmp_path / "sar.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=black:size=96x72:rate=25,drawbox=x=0:y=0:w=36:h=36:color=white:t=fill,"
           "setsar=4/3", "-t", "0.4", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    if rotation:
        turned = tmp_path / "turned.mp4"
        ffmpeg("-display_rotation", str(rotation), "-i", str(path), "-c", "copy", str(turned))
        path = turned
    info = probe(path)
    assert info.sample_aspect == pytest.approx(4 / 3)
    assert (info.width, info.height) == ((128, 72) if not rotation else (72, 128))
    image = all_frames(path, info=info, n_frames=1)[0].image
    assert image.shape == (info.height, info.width, 3)
    ys, xs = np.nonzero(image.mean(2) > 128)
    extent = (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert extent == ((48, 36) if not rotation else (36, 48))


def test_sample_aspect_from_ffprobe_and_lying_headers():
    def parsed(sar):
        return video.parse_ffprobe_json({"format": {"format_name": "mpegts"}, "streams": [
            {"index": 0, "codec_type": "video", "codec_name": "mpeg2video", "width": 1440, "height": 1080,
             "avg_frame_rate": "25/1", "sample_aspect_ratio": sar}]})
    assert (parsed("4:3").width, parsed("4:3").height) == (1920, 1080)
    assert parsed("0:1").width == parsed("1000:1").width == parsed("N/A").width == 1440  # unset or absurd


def test_resolution_change_in_a_rotated_video_gives_whole_frames(tmp_path):
    """The graph is rebuilt at the change when ffmpeg rotates (its transpose would crop the larger frames)."""
    joined, second = resolution_change(tmp_path)
    turned, turned_second = tmp_path / "turned.mp4", tmp_path / "turned_b.mp4"
    for src, dst in ((joined, turned), (second, turned_second)):
        ffmpeg("-display_rotation", "90", "-i", str(src), "-c", "copy", str(dst))
    info = probe(turned)
    assert (info.width, info.height) == (120, 160)
    frames = all_frames(turned, info=info, n_frames=None, fps=1.0)
    ref = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-i", str(turned_second), "-vf",
                          "scale=120:160:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    ref = np.frombuffer(ref, np.uint8).reshape(-1, 160, 120, 3).astype(int)
    later = [f for f in frames if f.time_s >= 2.5]
    # Within rounding of the part decoded alone (a cropped frame differs by ~100 levels on average).
    assert later and all(np.abs(f.image.astype(int) - ref[f.index - 50]).mean() < 3.0 for f in later)
