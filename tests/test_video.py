from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import (
    SAMPLE_CLIPS,
    all_frames,
    decoded_index,
    ffmpeg,
    index_video,
    make_test_video,
    write_frames_video,
)

from deepscan.video import VideoError, discover, iter_frames, parse_ffmpeg_banner, probe

BANNER = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:/x/phone.mp4':
  Metadata:
    major_brand     : isom
  Duration: 00:00:10.03, start: 0.021000, bitrate: 5210 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), 1920x1080, 5000 kb/s, 29.97 fps, 29.97 tbr, 90k tbn (default)
      Side data:
        Display Matrix: rotation of -90.00 degrees
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp, 128 kb/s (default)
"""


def test_parse_banner_reads_rotation_and_swaps_size():
    info = parse_ffmpeg_banner(BANNER, "phone.mp4")
    assert (info.width, info.height) == (1080, 1920)
    assert info.rotation == 90
    assert info.codec == "h264" and info.container.startswith("mov,mp4")
    assert info.fps == pytest.approx(29.97)
    assert info.duration_s == pytest.approx(10.03)
    assert info.start_time_s == pytest.approx(0.021)
    assert info.n_frames == round(10.03 * 29.97)


def test_parse_banner_audio_only_is_a_clear_error():
    text = BANNER.split("  Stream #0:0")[0] + "  Stream #0:0: Audio: aac, 48000 Hz, stereo\n"
    with pytest.raises(VideoError, match="no video stream"):
        parse_ffmpeg_banner(text)


def test_probe_synthetic_clip(test_video):
    info = probe(test_video)
    assert (info.width, info.height) == (320, 240)
    assert info.fps == pytest.approx(25)
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert info.n_frames == 50
    assert info.rotation == 0


def test_even_sampling_hits_the_frames_it_reports(tmp_path):
    path = index_video(tmp_path / "idx.mp4", n=50)
    frames = all_frames(path, n_frames=10)
    assert len(frames) == 10
    # Targets are the middle of ten 0.2 s slices: 0.1, 0.3, ... → frames 3, 8, 13, ...
    assert [f.index for f in frames] == [3, 8, 13, 18, 23, 28, 33, 38, 43, 48]
    assert [decoded_index(f) for f in frames] == [f.index for f in frames]  # no off-by-one
    assert all(f.time_s == pytest.approx(f.index / 25) for f in frames)


def test_rate_sampling(tmp_path):
    path = index_video(tmp_path / "idx.mp4", n=50)
    frames = all_frames(path, fps=5)
    assert [f.index for f in frames] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert [decoded_index(f) for f in frames] == [f.index for f in frames]


def test_batches_stream_and_respect_batch_size(test_video):
    sizes = [len(b) for b in iter_frames(test_video, n_frames=20, batch_size=6)]
    assert sizes == [6, 6, 6, 2]


def test_more_samples_than_frames_returns_each_frame_once(tmp_path):
    path = index_video(tmp_path / "short.mp4", n=5)
    frames = all_frames(path, n_frames=32)
    assert [decoded_index(f) for f in frames] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_gives_upright_frames(tmp_path, rotation):
    # Left half dark, right half bright: after a 90° turn the bright half is at the top or bottom.
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, 32:] = 230
    src = write_frames_video(tmp_path / "src.mp4", [img] * 10)
    rotated = tmp_path / f"rot{rotation}.mp4"
    ffmpeg("-display_rotation", str(rotation), "-i", str(src), "-c", "copy", str(rotated))
    info = probe(rotated)
    frame = all_frames(rotated, info=info, n_frames=2)[0].image
    if rotation in (90, 270):
        assert (info.width, info.height) == (48, 64) and frame.shape == (64, 48, 3)
        top, bottom = frame[:32].mean(), frame[32:].mean()
        assert abs(top - bottom) > 150  # the split turned horizontal
    else:
        assert frame.shape == (48, 64, 3)
        assert frame[:, :32].mean() > frame[:, 32:].mean() + 150  # 180°: bright half now on the left


def vfr_clip(path):
    """25 frames at 25 fps, then a 2 s gap, then 25 more: a burst of duplicates would show as repeated times."""
    ffmpeg("-t", "2", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-vf",
           "setpts='(N/25+if(gte(N,25),2,0))/TB'", "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", str(path))
    return path


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    path = vfr_clip(tmp_path / "vfr.mp4")
    info = probe(path)
    frames = all_frames(path, info=info, n_frames=8)
    times = [f.time_s for f in frames]
    assert len(frames) <= 8 and len(frames) >= 5
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[-1] > 2.0  # reached the part after the gap


@pytest.mark.parametrize("rate,n_frames", [(25, 32), (30000 / 1001, 7), (12, 100)])
def test_hash_schedule_in_the_same_decode_is_both_schedules_exactly(tmp_path, rate, n_frames):
    """``hash_fps`` takes a second schedule's frames in the same decode: the screening samples are exactly the
    frames a plain decode samples, the hash frames exactly those of a decode at that rate, by content."""
    path = index_video(tmp_path / "idx.mp4", n=58, rate=rate)
    info = probe(path)
    union = all_frames(path, info=info, n_frames=n_frames, hash_fps=3.0)
    plain = all_frames(path, info=info, n_frames=n_frames)
    hashed = all_frames(path, info=info, n_frames=None, fps=3.0)
    samples, hash_frames = [f for f in union if f.sample], [f for f in union if f.hashed]
    assert [decoded_index(f) for f in samples] == [decoded_index(f) for f in plain]
    assert [f.index for f in samples] == [f.index for f in plain]
    assert [decoded_index(f) for f in hash_frames] == [decoded_index(f) for f in hashed]
    assert len(union) == len({decoded_index(f) for f in union})  # a frame serving both comes once
    # The other frames that come out are the hash targets' neighbours (within 1.5 frame periods of one), and
    # each hash frame's predecessor comes out.
    others = [f for f in union if not (f.sample or f.hashed)]
    assert all(min(abs(f.time_s - k / 3.0) for k in range(12)) <= 1.5 / rate + 1e-6 for f in others)
    assert {decoded_index(f) - 1 for f in hash_frames[1:]} <= {decoded_index(f) for f in union}


def test_hash_schedule_on_variable_frame_rate(tmp_path):
    path = vfr_clip(tmp_path / "vfr.mp4")
    info = probe(path)
    union = all_frames(path, info=info, n_frames=8, hash_fps=1.0)
    assert [f.time_s for f in union if f.sample] == [f.time_s for f in all_frames(path, info=info, n_frames=8)]
    assert ([f.time_s for f in union if f.hashed]
            == [f.time_s for f in all_frames(path, info=info, n_frames=None, fps=1.0)])


def test_sparse_sampling_takes_the_first_keyframe_at_or_after_each_target(tmp_path):
    """Samples 5 s apart decode only keyframes: each is the first keyframe (every 10th frame here) at or after
    its target time, with its true index and time, and the same pixels as in a full decode."""
    path = tmp_path / "gop10.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "30", "-c:v", "libx264", "-g", "10",
           "-keyint_min", "10", "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(path))
    info = probe(path)
    sparse = all_frames(path, info=info, n_frames=6, keyframes=True)  # a sample every 5 s, keyframes only
    every = {f.index: f for f in all_frames(path, info=info, n_frames=750, keyframes=False)}
    targets = [2.5 + 5 * k for k in range(6)]
    assert [f.index for f in sparse] == [int(np.ceil(t * 25 / 10 - 1e-9)) * 10 for t in targets]
    for f in sparse:
        assert f.time_s == pytest.approx(f.index / 25, abs=1e-3)
        assert np.array_equal(f.image, every[f.index].image)
    exact = all_frames(path, info=info, n_frames=6)  # under a minute: the exact frame at each target
    assert [f.index for f in exact] == [int(np.ceil(t * 25 - 1e-9)) for t in targets]
    # One keyframe at the start and none after the target: decoded in full instead of yielding nothing.
    one_gop = tmp_path / "one_gop.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "6", "-c:v", "libx264", "-g", "1000",
           "-pix_fmt", "yuv420p", str(one_gop))
    assert [f.index for f in all_frames(one_gop, n_frames=1, keyframes=True)] == [75]


def test_rate_sampling_counts_from_the_first_frame(tmp_path):
    """A video that starts 0.85 s after its audio is sampled at whole seconds of its own content (as a copy
    whose video starts at 0 would be), in the union decode and in a plain rate decode alike."""
    path = tmp_path / "late.mp4"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-itsoffset", "0.85", "-f", "lavfi", "-i",
           "testsrc=size=160x120:rate=25", "-t", "5", "-map", "0:a", "-map", "1:v", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path))
    info = probe(path)
    plain = all_frames(path, info=info, n_frames=None, fps=1.0)
    union = [f for f in all_frames(path, info=info, n_frames=8, hash_fps=1.0) if f.hashed]
    assert plain[0].time_s == pytest.approx(0.85, abs=0.02)
    assert [round(f.time_s - plain[0].time_s, 2) for f in plain] == [float(k) for k in range(len(plain))]
    assert [f.time_s for f in union] == [f.time_s for f in plain]


def test_name_starting_with_dash_is_a_file_not_an_option(tmp_path, test_video):
    tricky = tmp_path / "-i evil name é.mp4"
    shutil.copy(test_video, tricky)
    os.chdir(tmp_path)
    info = probe("-i evil name é.mp4")
    assert info.width == 320
    assert len(all_frames("-i evil name é.mp4", info=info, n_frames=3)) == 3


def test_downscale_limits_frame_size(tmp_path):
    path = make_test_video(tmp_path / "big.mp4", seconds=0.5, size="1280x720")
    frame = all_frames(path, n_frames=1, max_side=640)[0]
    assert frame.image.shape == (360, 640, 3)


def test_errors_are_human_messages(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("hello, this is not a video\n" * 20)
    with pytest.raises(VideoError, match="empty"):
        probe(empty)
    with pytest.raises(VideoError) as err:
        probe(text)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_discover_by_extension_and_content(tmp_path, test_video):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(test_video, root / "a.mp4")
    shutil.copy(test_video, root / "sub" / "payload.bin")  # video content, no video extension
    (root / "notes.txt").write_text("not a video")
    (root / "fake.mp4").write_text("text in a .mp4")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # must not trap the walk
    # A hidden clip among the clips was skipped without a word; a resource fork and a hidden folder still are.
    shutil.copy(test_video, root / ".hidden.mp4")
    (root / "._a.mp4").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))  # sniffed, it read as H.264
    (root / ".cache").mkdir()
    shutil.copy(test_video, root / ".cache" / "thumb.mp4")
    found = sorted(p.relative_to(root).as_posix() for p in discover([root]))
    assert found == [".hidden.mp4", "a.mp4", "fake.mp4", "sub/payload.bin"]


def test_discover_gives_a_file_reached_by_two_names_once(tmp_path, test_video, monkeypatch):
    """A folder given twice (absolute and relative, or beside a symlink to it) and a link beside its target:
    each file once, under the first name (a scan screened it twice, or resumed it under another name)."""
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(test_video, root / "a.mp4")
    shutil.copy(test_video, root / "b.mp4")  # a copy is another file
    (root / "c_link.mp4").symlink_to(root / "a.mp4")
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    found = [p.as_posix() for p in discover([root, "in", "link", "in/a.mp4"])]
    assert found == [f"{root.as_posix()}/a.mp4", f"{root.as_posix()}/b.mp4"]
    # A filesystem without inode numbers (0 for every file: some network and FAT mounts) must not make every
    # file look like the first: names are all there is to go by.
    import os

    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: os.stat_result((*real_stat(path, *a, **k)[:1], 0,
                                                                          *real_stat(path, *a, **k)[2:10])))
    assert len(list(discover([root]))) == 3


def test_hardware_decoding_gives_the_same_frames_or_falls_back_to_the_cpu(tmp_path, monkeypatch):
    """``hwaccel`` decodes on the GPU where there is one (the same frames: H.264 decoding is bit-exact) and on
    the CPU where it fails before a frame comes out (no GPU here in CI; an unknown accelerator), remembered
    per codec so a scan does not retry it for every file."""
    import deepscan.video as video

    monkeypatch.setattr(video, "_HWACCEL_FAILED", set())
    path = index_video(tmp_path / "idx.mp4", n=40)
    cpu = all_frames(path, n_frames=8)
    for accel in ("cuda", "no-such-accelerator"):
        frames = all_frames(path, n_frames=8, hwaccel=accel)
        assert [f.index for f in frames] == [f.index for f in cpu]
        assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, cpu, strict=True))
    assert ("no-such-accelerator", "h264") in video._HWACCEL_FAILED


@pytest.mark.parametrize("rate", [25, 30000 / 1001])
def test_frame_track_is_every_decoded_frame_in_order(tmp_path, rate):
    """``track`` gets every decoded frame (not only the samples) as a 32x32 grey thumbnail, in order, from the
    same ffmpeg process: frame k of the index video is the flat grey that encodes k."""
    path = index_video(tmp_path / "idx.mp4", n=58, rate=rate)
    got = []
    frames = all_frames(path, n_frames=4, hash_fps=1.0, track=got.append)
    assert len(got) == 1 and got[0].shape == (58, 32, 32) and got[0].dtype == np.uint8
    levels = got[0].reshape(58, -1).mean(1)
    assert np.abs(levels - (4 * np.arange(58) + 20)).max() <= 1.5  # frame k, in order, none missing
    assert all(f.index < 58 and abs(levels[f.index] - f.image.mean()) <= 1.5 for f in frames)


def test_parse_banner_frame_size_and_the_streams_own_aspect():
    """MPEG-2 in a transport stream: its codec tag "0x0002" read as a 0x2 frame ("no frame size"). A SAR set
    in the container (MP4 pasp, Matroska) is printed unbracketed and was ignored: frames came out squeezed."""
    head = "Input #0, mpegts, from 'file:/x/a.ts':\n  Duration: 00:00:04.00, start: 1.440000, bitrate: 2835 kb/s\n"
    ts = parse_ffmpeg_banner(head + "  Stream #0:0[0x100]: Video: mpeg2video (Main) ([2][0][0][0] / 0x0002), "
                             "yuv420p(tv, progressive), 480x480 [SAR 1:1 DAR 1:1], 25 fps, 25 tbr, 90k tbn\n")
    assert (ts.width, ts.height, ts.codec) == (480, 480, "mpeg2video")
    container = parse_ffmpeg_banner(head + "  Stream #0:0: Video: h264 (High), yuv420p(progressive), 360x480 "
                                    "[SAR 1:1 DAR 3:4], SAR 4:3 DAR 1:1, 25 fps, 25 tbr, 1k tbn (default)\n")
    assert container.sample_aspect == pytest.approx(4 / 3) and (container.width, container.height) == (480, 480)


def test_a_transport_stream_joined_from_segments_is_sampled_over_all_of_it(tmp_path):
    """Two segments joined byte-wise, the second's clock restarting (as a segment downloader writes them): the
    container said 2 s, so every sample fell in the first segment and a fake second half went unseen. Such
    files (transport streams, Matroska, any file not starting at 0) have their video stream measured."""

    parts = []
    for name in ("astronaut_real.mp4", "astronaut_mouthwarp_fake.mp4"):
        part = tmp_path / f"{name}.ts"
        ffmpeg("-i", str(SAMPLE_CLIPS / name), "-t", "2", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
               "-f", "mpegts", str(part))
        parts.append(part.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    info = probe(joined)
    assert info.duration_s == pytest.approx(4.0, abs=0.1)
    times = [f.time_s for f in all_frames(joined, n_frames=8)]
    assert len(times) == 8 and max(times) > 3.0
    late = tmp_path / "late.mkv"  # Matroska's Duration is its end time: 1,004 s for 4 s of video
    ffmpeg("-i", str(SAMPLE_CLIPS / "astronaut_real.mp4"), "-an", "-c", "copy", "-output_ts_offset", "1000",
           str(late))
    assert probe(late).duration_s == pytest.approx(probe(SAMPLE_CLIPS / "astronaut_real.mp4").duration_s, abs=0.1)


def test_frame_indices_count_from_the_video_streams_first_frame(tmp_path):
    """Audio 3 s before the video: the samples were numbered from the file's start (88 of 100 frames for the
    14th), not as frames of the video."""
    from conftest import SAMPLE_CLIPS

    late = tmp_path / "video_late.mp4"
    ffmpeg("-itsoffset", "3", "-i", str(SAMPLE_CLIPS / "astronaut_real.mp4"), "-f", "lavfi", "-i", "sine=d=10",
           "-map", "0:v", "-map", "1", "-c:v", "copy", "-c:a", "aac", str(late))
    plain = [(f.index, f.time_s) for f in all_frames(SAMPLE_CLIPS / "astronaut_real.mp4", n_frames=4)]
    shifted = [(f.index, f.time_s) for f in all_frames(late, n_frames=4)]
    assert [i for i, _ in shifted] == [i for i, _ in plain]
    assert [t for _, t in shifted] == pytest.approx([t + 3.0 for _, t in plain], abs=0.05)


def test_the_video_stream_players_show_is_the_one_screened(tmp_path):
    """A disabled real stream 0 beside a default fake stream 1: players and ffmpeg show the fake, deepscan
    screened stream 0 ("real 0.372", no word of the other stream). Now the default-marked stream (ffmpeg's
    rule: pixels plus a bonus for the mark), with a warning naming the stream not screened."""
    from deepscan import Scanner
    from deepscan.video import parse_ffprobe_json

    real, fake = SAMPLE_CLIPS / "astronaut_real.mp4", SAMPLE_CLIPS / "astronaut_mouthwarp_fake.mp4"
    if not (real.is_file() and fake.is_file()):
        pytest.skip("sample clips missing")
    decoy = tmp_path / "decoy.mp4"
    ffmpeg("-i", str(real), "-i", str(fake), "-map", "0:v", "-map", "1:v", "-c", "copy",
           "-disposition:v:0", "0", "-disposition:v:1", "default", str(decoy))
    info = probe(decoy)
    assert info.stream_index == 1 and info.warnings == [
        "2 video streams: screened stream #1 (the one players show, marked default); not screened: #0"]
    result = Scanner(frames=8, keep_heatmaps=False).scan_video(decoy)
    # The decoy's hash passed for the fake alone: its samples are placed alike (they follow the file's hash).
    alone = Scanner(frames=8, keep_heatmaps=False).scan_video(fake, sha256=(result.sha256, result.size_bytes))
    assert result.video["stream_index"] == 1 and result.score == pytest.approx(alone.score, abs=1e-6)

    def stream(index, size, default):
        return {"index": index, "codec_type": "video", "width": size, "height": size, "avg_frame_rate": "25/1",
                "disposition": {"default": int(default), "attached_pic": 0}}

    fmt = {"format_name": "mov", "duration": "4"}
    # No mark on either: the larger; one stream: no warning.
    unmarked = parse_ffprobe_json({"format": fmt, "streams": [stream(0, 240, False), stream(1, 480, False)]})
    assert unmarked.stream_index == 1 and "the largest" in unmarked.warnings[0]
    marked = parse_ffprobe_json({"format": fmt, "streams": [stream(0, 480, False), stream(1, 240, True)]})
    assert marked.stream_index == 1 and "marked default" in marked.warnings[0]
    # A disabled 4K stream beside a default 480-px one: ffmpeg's command line maps the 4K (it adds only 5 M
    # pixels for the mark), a player shows the marked one, and so does deepscan.
    huge = parse_ffprobe_json({"format": fmt, "streams": [stream(0, 3840, False), stream(1, 480, True)]})
    assert huge.stream_index == 1
    assert parse_ffprobe_json({"format": fmt, "streams": [stream(0, 240, True)]}).warnings == []


def test_a_raw_h264_stream_is_counted_at_its_own_frame_rate(tmp_path):
    """ffmpeg's header gives a raw .h264 its default 25 fps: a 29.97 fps stream's frame numbers came out 17%
    low (frame 13 for the 15th). The stream's measured rate wins where the two disagree by over 1%."""
    clip = SAMPLE_CLIPS / "carphone_real.mp4"
    if not clip.is_file():
        pytest.skip("sample clips missing")
    raw = tmp_path / "raw.h264"
    ffmpeg("-i", str(clip), "-c:v", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(raw))
    wrapped, bare = probe(clip), probe(raw)
    assert bare.fps == pytest.approx(wrapped.fps, rel=0.005) and bare.n_frames == wrapped.n_frames
    frames = [(f.index, round(f.time_s, 3)) for batch in iter_frames(raw, n_frames=4) for f in batch]
    assert frames == [(f.index, round(f.time_s, 3)) for batch in iter_frames(clip, n_frames=4) for f in batch]


def test_an_mp4_whose_headers_understate_its_length_is_sampled_over_its_stream(tmp_path):
    """mvhd/tkhd/mdhd rewritten to say 1 s of a 4-s clip (every frame still there, a player plays 4 s): the
    samples all fell in the first 1.3 s. An honest header is kept exactly (its rounding would move frames)."""
    import struct

    src = tmp_path / "honest.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4", "-c:v", "libx264", "-bf", "0",
           "-pix_fmt", "yuv420p", str(src))
    data = bytearray(src.read_bytes())
    movie_timescale = None
    for box, offset in ((b"mvhd", 16), (b"tkhd", 20), (b"mdhd", 16)):  # version-0 boxes: duration's offset
        pos = data.find(box)
        assert pos > 0 and data[pos + 4] == 0
        at = pos + 4 + offset
        timescale = movie_timescale if box == b"tkhd" else struct.unpack(">I", data[at - 4:at])[0]
        movie_timescale = movie_timescale or timescale
        struct.pack_into(">I", data, at, timescale)  # 1 s
    lying = tmp_path / "lying.mp4"
    lying.write_bytes(bytes(data))
    honest, info = probe(src), probe(lying)
    assert honest.warnings == [] and honest.n_frames == 100
    assert info.duration_s == pytest.approx(4.0, abs=0.05) and info.n_frames == 100
    assert "declares 1.00 s" in info.warnings[0]
    times = [f.time_s for batch in iter_frames(lying, info, n_frames=8) for f in batch]
    assert len(times) == 8 and times[-1] > 3.0
    # With B-frames a gap's long decode-order step can land on a later frame: an honest 4-s clip with a 2-s
    # gap measured 5.04 s, which would have overruled its (right) header. The span ends a typical step after
    # the last frame's start.
    gap = vfr_clip(tmp_path / "gap.mp4")
    assert probe(gap).warnings == [] and probe(gap).duration_s == pytest.approx(4.0, abs=0.05)
    # ffprobe's frame count includes frames an edit list hides (a stream-copy cut), the measure does not: the
    # count alone gave a false warning. Only the span decides.
    from dataclasses import replace

    from deepscan.video import _check_declared_length

    cut = tmp_path / "cut.mp4"
    ffmpeg("-ss", "1.5", "-i", str(src), "-t", "2", "-c", "copy", str(cut))
    as_ffprobe_says = replace(probe(cut), warnings=[])
    as_ffprobe_says.n_frames += 40
    _check_declared_length(cut, as_ffprobe_says, 30.0, None, None)
    assert as_ffprobe_says.warnings == []


def test_the_declared_length_check_trusts_the_stream_not_the_headers_rate(monkeypatch):
    """20-s decode steps in stts (a ctts putting the frames back 0.04 s apart) made the header's rate 0.05 fps:
    its 20-s "frame" was the tolerance, and a 1-s header over an 8-s stream passed unwarned, sampled in 0.3 s."""
    from dataclasses import replace

    import deepscan.video as video

    def measured(path, info, *args, **kwargs):
        info.duration_s, info.n_frames, info.video_start_s = 8.0, 200, 0.0
        return 0.04  # the typical gap between frame starts

    monkeypatch.setattr(video, "measure_video_stream", measured)
    header = video.VideoInfo(path="x.mp4", container="mov,mp4", codec="h264", width=64, height=64, fps=0.05,
                             duration_s=1.0, n_frames=0, rotation=0)
    lying = replace(header, warnings=[])
    video._check_declared_length("x.mp4", lying, 30.0, None, None)
    assert (lying.duration_s, lying.n_frames, lying.fps) == (8.0, 200, 25.0) and lying.warnings
    honest = replace(header, fps=25.0, duration_s=7.98, n_frames=200, warnings=[])  # half a frame off: kept
    video._check_declared_length("x.mp4", honest, 30.0, None, None)
    assert (honest.duration_s, honest.fps, honest.warnings) == (7.98, 25.0, [])
