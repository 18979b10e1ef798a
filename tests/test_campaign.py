"""Campaign grouping: re-uploads group with their source, distinct videos do not, and a manipulated copy of a
video is never given its source's verdict."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from conftest import SAMPLE_CLIPS, ffmpeg
from rich.console import Console

from deepscan.campaign import (
    DEFAULT_THRESHOLDS,
    VARIANTS,
    Group,
    StreamingGroups,
    VideoHash,
    apply_group_result,
    available_backend,
    campaign_info,
    campaign_table,
    can_inherit,
    candidate_pairs,
    content_region,
    group,
    is_match,
    is_verified_copy,
    mark_screened,
    match,
    pixel_check,
    pixel_difference,
    plan,
    screening_order,
    track_alignment,
    track_codes,
    video_hash,
)
from deepscan.results import FaceResult, FrameResult, TrackResult, VideoResult

REAL = SAMPLE_CLIPS / "astronaut_real.mp4"
FAKE = SAMPLE_CLIPS / "astronaut_mouthwarp_fake.mp4"
OTHER = SAMPLE_CLIPS / "carphone_real.mp4"

needs_backend = pytest.mark.skipif(available_backend() is None, reason="neither pdqhash nor vpdq is installed")
needs_pdq = pytest.mark.skipif(available_backend() != "pdq", reason="pdqhash is not installed")


def _hash(bits: list[int], quality: list[int] | None = None) -> VideoHash:
    """A VideoHash whose frame i has the first bits[i] bits set (so distances are differences of counts)."""
    rows = []
    for n in bits:
        v = np.zeros(256, np.uint8)
        v[:n] = 1
        rows.append(np.packbits(v))
    return VideoHash(hashes=np.array(rows, np.uint8), quality=np.array(quality or [100] * len(bits)),
                     times=np.arange(len(bits), dtype=float), width=64, height=64, duration_s=float(len(bits)))


def test_vpdq_matching_rule():
    a = _hash([0, 100, 200, 200])  # the duplicate frame counts once
    b = _hash([10, 120, 250])
    # a: 0~10 and 100~120 match (<= 31 bits), 200 does not reach 250 -> 2 of 3 distinct; b: 2 of 3
    assert match(a, b) == pytest.approx((200 / 3, 200 / 3))
    assert match(a, b, replace(DEFAULT_THRESHOLDS, distance=10)) == pytest.approx((100 / 3, 100 / 3))
    low = _hash([0, 100, 200], quality=[100, 100, 10])  # vPDQ's quality filter leaves frame 3 out
    assert match(low, b) == pytest.approx((100.0, 200 / 3))
    assert match(_hash([0], quality=[0]), b) == (0.0, 0.0)  # featureless video: never matched


def test_grouping_is_transitive_and_keeps_unmatched_alone():
    hashes = {"a": _hash([0, 100]), "b": _hash([20, 120]), "c": _hash([45, 145]), "d": _hash([240]), "e": None}
    groups = group(hashes)
    assert [g.members for g in groups] == [["a", "b", "c"], ["d"], ["e"]]  # a~b, b~c (a and c are 45 apart)
    assert [g.id for g in groups] == [1, 2, 3]
    assert groups[2].hashed is False
    assert screening_order(groups) == ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def reupload(tmp_path_factory):
    """The real astronaut clip as a re-upload: first second cut, rescaled to 320 px, re-encoded at 200 kb/s."""
    out = tmp_path_factory.mktemp("campaign") / "reupload.mp4"
    ffmpeg("-ss", "1", "-i", str(REAL), "-vf", "scale=320:320", "-c:v", "libx264", "-b:v", "200k",
           "-pix_fmt", "yuv420p", "-an", str(out))
    return out


@needs_backend
def test_reupload_groups_with_its_source(reupload):
    groups = plan([REAL, reupload, OTHER])
    assert len(groups) == 2
    together = groups[0]
    assert together.members == [str(REAL), str(reupload)]
    assert together.representative == str(REAL)  # 480 px beats 320 px
    assert groups[1].members == [str(OTHER)]


@needs_pdq
def test_reupload_is_a_verified_copy(reupload):
    real, copy = video_hash(REAL), video_hash(reupload)
    assert len(real) == 4 and len(copy) == 3  # one hash per second
    copy_pct, real_pct = match(copy, real)
    assert copy_pct == 100.0 and real_pct == 75.0
    assert pixel_difference(real, copy) < DEFAULT_THRESHOLDS.pixel_diff
    assert is_verified_copy(copy, real)


@needs_pdq
def test_mirrored_reupload_matches(tmp_path):
    flipped = tmp_path / "flipped.mp4"
    ffmpeg("-i", str(REAL), "-vf", "hflip", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(flipped))
    real, copy = video_hash(REAL), video_hash(flipped)
    (pcts, mirrored) = match(copy, real, return_mirrored=True)
    assert mirrored and min(pcts) == 100.0
    assert is_verified_copy(copy, real)


@needs_backend
def test_different_videos_stay_apart():
    groups = plan([REAL, OTHER])
    assert [g.members for g in groups] == [[str(REAL)], [str(OTHER)]]


@needs_backend
def test_manipulated_copy_is_screened_itself():
    """The mouth-warped fake is the real clip's frames with the face edited: PDQ sees the same video (100% of
    frames match both ways), so only the pixel check keeps the fake from inheriting the real verdict."""
    real, fake = video_hash(REAL), video_hash(FAKE)
    assert min(match(real, fake)) == 100.0
    groups = plan([REAL, FAKE])
    for g in groups:
        if str(FAKE) in g.members:
            assert not g.inherits(FAKE)
            assert g.representative == str(FAKE) or str(FAKE) in g.screen_too
    if available_backend() == "pdq":  # with thumbnails: the pair is kept apart and flagged as altered
        assert pixel_difference(real, fake) >= DEFAULT_THRESHOLDS.pixel_diff
        assert [g.members for g in groups] == [[str(REAL)], [str(FAKE)]]
        assert groups[0].altered == [2] and groups[1].altered == [1]


@needs_pdq
def test_copy_cut_off_the_hash_grid_is_lined_up_by_neighbouring_frames(tmp_path):
    """Cutting 1.04 s (26 frames at 25 fps) leaves each hash frame of the copy one frame off its source's:
    frame to frame the pixels differ (the head moved); with the frames decoded beside each hash frame they
    line up (hashes without frame tracks: from the vpdq backend or an older cache). The mouth-warped fake cut
    the same way still differs where its mouth was edited."""
    copy, fake_copy = tmp_path / "cut.mp4", tmp_path / "fake_cut.mp4"
    for src, out in ((REAL, copy), (FAKE, fake_copy)):
        ffmpeg("-ss", "1.04", "-i", str(src), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(out))
    real, cut, fake_cut = (replace(video_hash(p), track=None) for p in (REAL, copy, fake_copy))
    assert real.neighbours.shape == (len(real), 2, 32, 32)
    assert not np.array_equal(real.neighbours[1, 0], real.thumbs[1])  # a real neighbour, not a stand-in
    assert VideoHash.from_dict(real.to_dict()).neighbours.tobytes() == real.neighbours.tobytes()
    frame_to_frame = pixel_difference(replace(real, neighbours=None), replace(cut, neighbours=None))
    assert frame_to_frame >= DEFAULT_THRESHOLDS.pixel_diff
    assert pixel_difference(real, cut) < DEFAULT_THRESHOLDS.pixel_diff
    assert is_verified_copy(cut, real)
    assert pixel_difference(real, fake_cut) >= DEFAULT_THRESHOLDS.pixel_diff
    assert not is_verified_copy(fake_cut, real)


@needs_pdq
def test_copy_cut_anywhere_is_lined_up_on_the_frame_tracks(tmp_path):
    """Cut 1.3 s in, every hash frame of the copy falls 0.3 s (7-8 frames) from its source's: too far for
    the neighbouring frames. The frame tracks (every decoded frame, 32x32) line the two up to a frame; the
    copy is then a verified copy, the fake cut the same way is kept apart, and the pair is a grouping
    candidate from the tracks' codes alone."""
    copy, fake_copy = tmp_path / "cut.mp4", tmp_path / "fake_cut.mp4"
    for src, out in ((REAL, copy), (FAKE, fake_copy)):
        ffmpeg("-ss", "1.3", "-i", str(src), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(out))
    real, cut, fake_cut = video_hash(REAL), video_hash(copy), video_hash(fake_copy)
    assert real.track.shape == (100, 32, 32) and real.fps == 25.0  # 4 s at 25 fps: every frame
    assert abs(cut.track.shape[0] - (100 - 1.3 * 25)) <= 1
    back = VideoHash.from_dict(real.to_dict())
    assert back.track.tobytes() == real.track.tobytes()
    assert not is_verified_copy(replace(cut, track=None), replace(real, track=None))
    alignment = track_alignment(real, cut)
    assert alignment is not None and alignment.offset == pytest.approx(1.3, abs=0.021) and alignment.same_share == 1.0
    assert is_match(cut, real) and is_verified_copy(cut, real)
    check = pixel_check(real, fake_cut)
    assert check is not None and check.altered()
    assert not is_verified_copy(fake_cut, real)
    # Candidates from the track codes alone, with the PDQ hashes made useless:
    far = replace(cut, hashes=~cut.hashes, mirrored=~cut.mirrored, variants=None, variants_mirrored=None)
    assert (0, 1) in candidate_pairs([real, far])


@needs_pdq
def test_streaming_groups_spill_frame_tracks_to_disk_and_group_the_same(tmp_path):
    """A scan keeps placed files' frame tracks on disk (``spill_dir``), not in memory: the groups are the
    same as with the tracks in memory, and the caller's hash keeps its track (it is saved to the cache)."""
    from deepscan.campaign import StreamingGroups

    cut = tmp_path / "cut.mp4"
    ffmpeg("-ss", "1.3", "-i", str(REAL), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(cut))
    hashes = {"real": video_hash(REAL), "fake": video_hash(FAKE), "cut": video_hash(cut), "other": video_hash(OTHER)}
    in_memory, spilled = StreamingGroups(), StreamingGroups(spill_dir=tmp_path / "tracks")
    for name, h in hashes.items():
        a, b = in_memory.place(name, h), spilled.place(name, h)
        assert (a.id, a.members, a.screen_too, a.altered) == (b.id, b.members, b.screen_too, b.altered)
        assert h.track is not None and spilled.hashes[name].track is None
    assert [g.members for g in spilled.groups] == [["real", "cut"], ["fake"], ["other"]]
    assert spilled.groups[0].inherits("cut")
    assert len(list((tmp_path / "tracks").glob("track-*.npy"))) == 4


def test_track_codes_are_phash_of_each_thumbnail():
    """The track codes are the classic pHash (DCT of the 32x32 thumbnail, 8x8 low frequencies against their
    median, DC left out of the median): a mirrored frame has the mirrored frame's code."""
    import cv2

    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 256, (4, 32, 32)).astype(np.uint8)
    codes, ok = track_codes(thumbs)
    for code, thumb in zip(codes, thumbs, strict=True):
        c = cv2.dct(thumb.astype(np.float32))[:8, :8].ravel()
        assert int(code) == int(np.packbits(c > np.median(c[1:])).view(">u8")[0])
    assert ok.all() and not track_codes(np.full((1, 32, 32), 7, np.uint8))[1].any()  # flat: not compared
    mirrored, _ = track_codes(thumbs, mirrored=True)
    assert (mirrored == track_codes(np.ascontiguousarray(thumbs[..., ::-1]))[0]).all()


def _thumb_video(n: int = 10, seed: int = 0) -> VideoHash:
    """A still scene with a moving "mouth": every frame hashes the same (PDQ cannot tell the frames apart), the
    thumbnails differ only where the patch moves."""
    rng = np.random.default_rng(seed)
    scene = rng.integers(40, 200, (32, 32)).astype(np.float32)
    thumbs = []
    for i in range(n):
        t = scene.copy()
        t[20:26, 8 + i:14 + i] = 255 if i % 2 else 0
        thumbs.append(t.astype(np.uint8))
    h = _hash([0] * n)
    return replace(h, thumbs=np.array(thumbs), fps=25.0)


def _excerpt(h: VideoHash, start: int) -> VideoHash:
    return replace(h, hashes=h.hashes[start:], quality=h.quality[start:], times=h.times[:len(h) - start].copy(),
                   thumbs=h.thumbs[start:], duration_s=float(len(h) - start))


def test_a_still_video_cut_is_lined_up_by_its_pixels():
    """In a still video every hash frame matches every other, so the hashes leave the trim open: the pixel
    check tries the offsets they allow and lines the copy up where its frames are the source's."""
    source = _thumb_video()
    cut = _excerpt(source, 2)
    check = pixel_check(source, cut)
    assert check is not None and check.offset == pytest.approx(2.0)
    assert check.difference == 0.0 and not check.altered()
    assert is_verified_copy(cut, source)
    assert pixel_check(cut, source).offset == pytest.approx(-2.0)  # either way round


def test_a_file_is_judged_against_the_groups_representative_not_another_copy():
    """Two copies of one source can each be a little off it in opposite ways, and so look altered to each
    other: a third file is judged against the group's representative, which both match."""
    from deepscan.campaign import StreamingGroups

    source = _thumb_video()

    def nudged(delta):
        thumbs = source.thumbs.astype(np.int16)
        thumbs[:, 4:8, 4:8] += delta  # one block, a few grey levels
        return replace(source, thumbs=np.clip(thumbs, 0, 255).astype(np.uint8))

    brighter, darker = nudged(3), nudged(-3)
    assert not pixel_check(source, brighter).altered() and not pixel_check(source, darker).altered()
    assert pixel_check(brighter, darker).altered()
    groups = StreamingGroups()
    first = groups.place("source", source)
    assert groups.place("brighter", brighter) is first
    assert groups.place("darker", darker) is first


def test_damage_spread_over_the_frame_is_not_a_local_edit():
    """A low-bitrate re-encode can differ from its source more than a face swap does, but all over the frame;
    a swap's difference stands out from the rest of the frame. The first is grouped (and screened itself,
    being over the verify threshold), the second kept apart."""
    source = _thumb_video()
    rng = np.random.default_rng(1)
    damaged = np.clip(source.thumbs + rng.normal(0, 4, source.thumbs.shape), 0, 255).astype(np.uint8)
    reencoded = replace(source, thumbs=damaged, width=32, height=32)
    swapped_thumbs = source.thumbs.copy()
    swapped_thumbs[:, 4:12, 12:20] = 255 - swapped_thumbs[:, 4:12, 12:20]  # one face-sized patch, every frame
    swapped = replace(source, thumbs=swapped_thumbs)
    spread, local = pixel_check(source, reencoded), pixel_check(source, swapped)
    assert spread.difference >= DEFAULT_THRESHOLDS.pixel_diff and local.difference >= DEFAULT_THRESHOLDS.pixel_diff
    assert spread.locality < DEFAULT_THRESHOLDS.min_locality <= local.locality
    assert not spread.altered() and local.altered()
    groups = group({"source": source, "reencoded": reencoded, "swapped": swapped})
    assert [g.members for g in groups] == [["source", "reencoded"], ["swapped"]]
    assert groups[0].screen_too == ["reencoded"]  # grouped, but not a verified copy: screened itself
    assert groups[0].altered == [2] and groups[0].altered_with == ["swapped"]
    # Named by representative too: group numbers restart with each run into one --out.
    assert campaign_info(groups[1], "swapped")["altered_representatives"] == ["source"]
    streaming = StreamingGroups()
    for name, h in (("source", source), ("reencoded", reencoded), ("swapped", swapped)):
        streaming.place(name, h)
    assert streaming.info("swapped")["altered_representatives"] == ["source"]
    assert streaming.info("source")["altered_representatives"] == ["swapped"]


def _rep_result(path: str, face_height: float, frame_height: int = 480) -> VideoResult:
    face = FaceResult(box=[100.0, 100.0, 100.0 + face_height, 100.0 + face_height], prob=0.99, track=0, score=0.1)
    return VideoResult(path=path, sha256="0" * 64, size_bytes=1, status="ok", score=0.1, score_ci95=(0.05, 0.2),
                       verdict="real", model={"name": "m"}, video={"width": 480, "height": frame_height},
                       frames=[FrameResult(index=0, time_s=0.0, faces=[face])],
                       tracks=[TrackResult(id=0, n_faces=1, score=0.1, verdict="real", first_time_s=0.0,
                                           last_time_s=0.0, counted=True)],
                       config={"frames": 32}, config_hash="abc", timing={"total_s": 3.0})


def test_inherited_result_is_marked(tmp_path):
    member = tmp_path / "copy.mp4"
    member.write_bytes(b"copy bytes")
    g = Group(id=7, members=["rep.mp4", str(member), "cropped.mp4"], representative="rep.mp4",
              screen_too=["cropped.mp4"])
    rep = mark_screened(_rep_result("rep.mp4", face_height=200), g)
    assert rep.extra["campaign"] == {"group": 7, "representative": "rep.mp4", "size": 3, "is_representative": True,
                                     "inherited": False}
    r = apply_group_result(rep, member, g)
    assert r.path == str(member) and r.sha256 != rep.sha256 and r.size_bytes == len(b"copy bytes")
    assert (r.status, r.verdict, r.score, r.score_ci95) == ("ok", "real", 0.1, (0.05, 0.2))
    assert r.frames == [] and len(r.tracks) == 1
    assert r.extra["campaign"]["inherited"] is True and r.extra["campaign"]["screened_as"] == "rep.mp4"
    assert r.config_hash == "abc+campaign"  # never taken for a screened result when resuming
    assert r.to_dict()["extra"]["campaign"]["group"] == 7
    # Not verified as a pixel copy, faces too small for the pixel check, or a failed representative: screen it.
    assert apply_group_result(rep, "cropped.mp4", g) is None
    assert not can_inherit(_rep_result("rep.mp4", face_height=60), member, g)
    assert not can_inherit(replace(rep, status="error", verdict="error"), member, g)


def test_campaign_table_lists_groups_and_inherited_verdicts(tmp_path):
    member = tmp_path / "copy.mp4"
    member.write_bytes(b"x")
    g = Group(id=1, members=["rep.mp4", str(member)], representative="rep.mp4")
    rep = mark_screened(_rep_result("rep.mp4", face_height=200), g)
    results = [rep, apply_group_result(rep, member, g), _rep_result("alone.mp4", 200)]
    console = Console(file=io.StringIO(), width=160, no_color=True)
    console.print(campaign_table(results))
    text = console.file.getvalue()
    assert "rep.mp4 (screened): real" in text and "copy.mp4: real*" in text
    assert "alone.mp4" not in text


def test_files_of_one_name_in_two_folders_are_told_apart(tmp_path):
    """Two folders each with a clip.mp4: the copy's "copy of" note and the campaign table named the screened
    one "clip.mp4", either of them. Where names collide, enough of the path is shown; elsewhere the name."""
    from deepscan.report import summary_table

    new, old = tmp_path / "new" / "clip.mp4", tmp_path / "old" / "clip.mp4"
    for p in (new, old):
        p.parent.mkdir()
        p.write_bytes(b"x")
    g = Group(id=1, members=[str(new), str(old)], representative=str(new))
    rep = mark_screened(_rep_result(str(new), face_height=200), g)
    results = [rep, apply_group_result(rep, old, g), _rep_result(str(tmp_path / "alone.mp4"), 200)]
    console = Console(file=io.StringIO(), width=200, no_color=True)
    console.print(campaign_table(results, [g]))
    console.print(summary_table(results))
    text = console.file.getvalue()
    assert "new/clip.mp4 (screened): real" in text and "old/clip.mp4: real*" in text
    assert "(copy of new/clip.mp4)" in text
    assert campaign_table(results).row_count == 1  # the groups read back from the results name them alike


@needs_pdq
def test_vpdq_hashes_interoperate():
    """vpdq's computeHash picks every round(fps)-th frame, deepscan the first frame at each whole second: the
    frames differ slightly at 29.97 fps (and vpdq adds one at 3.87 s), the PDQ hashes of the same frame (the
    first) are bit-identical, and the two hashes of the video match."""
    vpdq = pytest.importorskip("vpdq")
    ours = video_hash(OTHER)
    features = vpdq.computeHash(str(OTHER.absolute()), seconds_per_hash=1.0, thread_count=1)
    theirs = VideoHash(hashes=np.array([np.frombuffer(bytes.fromhex(f.hex), np.uint8) for f in features]),
                       quality=np.array([f.quality for f in features]),
                       times=np.array([f.timestamp for f in features]), backend="vpdq")
    assert features[0].frame_number == 0 and ours.hex[0] == features[0].hex
    ours_pct, theirs_pct = match(ours, theirs)
    assert ours_pct == 100.0 and theirs_pct == 80.0


CAPTION = ("pad=iw:trunc(ih*1.2/2)*2:0:trunc(ih*0.2/2)*2:white,"
           "drawbox=x=iw*0.1:y=ih*0.05:w=iw*0.3:h=ih*0.06:color=black:t=fill,"
           "drawbox=x=iw*0.5:y=ih*0.05:w=iw*0.35:h=ih*0.06:color=black:t=fill")


def _whole_frame_only(h: VideoHash) -> VideoHash:
    return replace(h, variants=None, variants_mirrored=None)


@needs_pdq
@pytest.mark.parametrize("vf", ["crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2", CAPTION, "crop=ih:ih",
                                "crop=trunc(ih*9/16/2)*2:ih"], ids=["crop_10pct", "caption", "square", "vertical"])
def test_cropped_and_captioned_copies_match_their_source(tmp_path, vf):
    """A 10% crop, a caption band, or a platform's square or 9:16 re-framing moves PDQ's whole-frame hash past
    the distance; the hashes of the frame's centre, of its content region (bands cut off) and of its centred
    square and 9:16 crops still line up with the source's."""
    copy = tmp_path / "copy.mp4"
    ffmpeg("-i", str(OTHER), "-vf", vf, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(copy))
    source, c = video_hash(OTHER), video_hash(copy)
    assert min(match(c, source)) >= DEFAULT_THRESHOLDS.min_pct
    assert min(match(_whole_frame_only(c), _whole_frame_only(source))) < DEFAULT_THRESHOLDS.min_pct
    assert not is_verified_copy(c, source)  # other framing: not shown to be the same pixels, so screened itself
    assert min(match(c, video_hash(REAL))) < DEFAULT_THRESHOLDS.min_pct
    groups = plan([OTHER, copy, REAL])
    assert [g.members for g in groups] == [[str(OTHER), str(copy)], [str(REAL)]]
    g = groups[0]
    assert g.screen_too == [m for m in g.members if m != g.representative]  # whichever is screened first


def test_content_region_cuts_still_bands_only():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(10):
        f = np.full((100, 80), 255, np.uint8)  # a white caption band (rows 0-19) with fixed black "words"
        f[5:10, 10:40] = 0
        f[20:90] = rng.integers(0, 256, (70, 80))  # the moving video
        f[90:] = 0  # a black letterbox border
        frames.append(f)
    x0, y0, x1, y1 = content_region(frames)
    assert (x0, x1) == (0.0, 1.0)
    assert (y0, y1) == pytest.approx((0.20, 0.90))
    # One frame: only flat rows can be told apart (the band's rows above its words, and the border).
    assert content_region(frames[:1]) == pytest.approx((0.0, 0.05, 1.0, 0.9))
    still = [np.full((50, 50), 128, np.uint8)] * 5
    assert content_region(still) == (0.0, 0.0, 1.0, 1.0)  # nothing moves: the whole frame


def test_hash_round_trips_with_variants():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(4)] if available_backend() == "pdq" else []
    if not frames:
        pytest.skip("pdqhash is not installed")
    h = video_hash(frames)
    assert h.variants.shape == (4, len(VARIANTS), 32) and h.variants_mirrored.shape == (4, len(VARIANTS), 32)
    back = VideoHash.from_dict(h.to_dict())
    assert np.array_equal(back.variants, h.variants) and np.array_equal(back.variants_mirrored, h.variants_mirrored)
    assert back.region == pytest.approx(h.region)
    assert match(back, h) == (100.0, 100.0)


@needs_pdq
def test_streaming_groups_join_a_match_and_never_pass_a_verdict_upwards():
    import cv2

    from deepscan.campaign import StreamingGroups

    rng = np.random.default_rng(3)

    def clip(seed_frames, size=(320, 180)):
        h = video_hash([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in seed_frames])
        h.width, h.height = size
        return h

    def frames(n):
        return [cv2.resize(rng.integers(0, 256, (18, 32, 3), dtype=np.uint8), (640, 360), interpolation=cv2.INTER_CUBIC)
                for _ in range(n)]  # smooth, detailed scenes: no two alike

    source = frames(6)
    groups = StreamingGroups()
    first = groups.place("a.mp4", clip(source))
    assert first.representative == "a.mp4" and first.members == ["a.mp4"]
    assert groups.place("b_same_size.mp4", clip(source)) is first  # a pixel copy: may take a's verdict
    assert groups.place("c_larger.mp4", clip(source, (640, 360))) is first  # more pixels than the screened one
    assert groups.place("d_other.mp4", clip(frames(6))) is not first
    assert first.members == ["a.mp4", "b_same_size.mp4", "c_larger.mp4"]
    assert first.screen_too == ["c_larger.mp4"]
    assert first.inherits("b_same_size.mp4") and not first.inherits("c_larger.mp4")
    assert groups.info("b_same_size.mp4") == {"group": 1, "representative": "a.mp4", "is_representative": False,
                                              "inherited": False}
    assert [g.id for g in groups.groups] == [1, 2]


def test_an_excerpt_matches_its_source_but_a_partial_overlap_does_not():
    from deepscan.campaign import is_match

    source = _hash([0, 64, 128, 192, 256])  # 5 distinct frames, 64 bits apart (32 apart never matches)
    excerpt = _hash([0, 64])  # its first two seconds: 100% of the excerpt, 40% of the source
    assert match(excerpt, source) == (100.0, 40.0)
    assert is_match(excerpt, source) and is_match(source, excerpt)  # 40% >= 60% x 2/5
    overlap = _hash([0, 64, 96, 160, 224])  # as long as the source, 2 of 5 frames shared
    assert match(overlap, source) == (40.0, 40.0)
    assert not is_match(overlap, source)


def test_streaming_groups_index_grows_past_its_first_buffer():
    """Hundreds of files (more frame hashes than the first index buffer holds): each later copy still finds the
    earlier file it copies, and unrelated files stay alone."""
    from deepscan.campaign import StreamingGroups

    rng = np.random.default_rng(5)
    groups = StreamingGroups()
    originals = []
    for i in range(300):
        rows = rng.integers(0, 256, (4, 32), dtype=np.uint8)  # random 256-bit hashes: ~128 bits apart
        h = VideoHash(hashes=rows, quality=np.full(4, 100), times=np.arange(4.0), width=64, height=64,
                      duration_s=4.0)
        originals.append(h)
        assert groups.place(f"orig{i}.mp4", h).members == [f"orig{i}.mp4"]
    assert len(groups._pdq.rows) == 1200 and len(groups._pdq._rows) >= 1200
    for i in (0, 150, 299):
        g = groups.place(f"copy{i}.mp4", replace(originals[i]))
        assert g.members == [f"orig{i}.mp4", f"copy{i}.mp4"]


@needs_pdq
def test_a_verdict_is_taken_only_under_the_stricter_verify_threshold(reupload):
    """Grouping keeps pairs under ``pixel_diff`` together; taking a verdict without screening asks for less
    difference (``verify_diff``): a copy whose difference lies between the two is grouped but screened."""
    real, copy = video_hash(REAL), video_hash(reupload)
    diff = pixel_difference(real, copy)
    assert diff < DEFAULT_THRESHOLDS.verify_diff < DEFAULT_THRESHOLDS.pixel_diff
    between = replace(DEFAULT_THRESHOLDS, verify_diff=diff / 2)
    assert is_verified_copy(copy, real) and not is_verified_copy(copy, real, between)
    groups = group({"real": real, "copy": copy}, between)
    assert groups[0].members == ["real", "copy"] and groups[0].screen_too == ["copy"]


@needs_pdq
@pytest.mark.slow
def test_a_short_excerpt_of_a_face_swap_never_takes_its_originals_verdict(shared, tmp_path):
    """Over 4 s, Ava_de_Addario_0's DeepFaceLive swap differs from its original by only 0.07-0.09 on 32x32
    thumbnails (the whole clips: 0.14): near the grouping threshold, so the excerpt must not be taken for a
    verified copy of the original; an excerpt of the original is one. Placed one by one after the swap and
    the original, the original's excerpt joins the original's group, the closest, not the swap's."""
    from deepscan.campaign import StreamingGroups

    clips = shared / "data" / "clips" / "deepfacelive_split"
    original, swap = clips / "Ava_de_Addario_0__left_original.mp4", clips / "Ava_de_Addario_0__right_swapped.mp4"
    if not original.is_file():
        pytest.skip("Ava_de_Addario_0 not in the shared clips")
    excerpts = {}
    for name, src in (("swap", swap), ("original", original)):
        excerpts[name] = tmp_path / f"{name}_excerpt.mp4"
        ffmpeg("-ss", "1", "-i", str(src), "-t", "4", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an",
               str(excerpts[name]))
    h_original, h_swap = video_hash(original), video_hash(swap)
    h_swap_excerpt, h_original_excerpt = video_hash(excerpts["swap"]), video_hash(excerpts["original"])
    assert pixel_difference(h_original, h_swap) >= DEFAULT_THRESHOLDS.pixel_diff
    # The thin margin: 0.071 on the hash-time frames alone; over every frame of the excerpt, 0.087.
    assert DEFAULT_THRESHOLDS.verify_diff < pixel_difference(h_original, h_swap_excerpt) < 0.1
    assert not is_verified_copy(h_swap_excerpt, h_original)
    assert is_verified_copy(h_original_excerpt, h_original)
    groups = StreamingGroups()
    groups.place("swap", h_swap)
    groups.place("original", h_original)
    joined = groups.place("original_excerpt", h_original_excerpt)
    assert joined.representative == "original" and joined.inherits("original_excerpt")


def test_a_file_holding_more_than_the_screened_one_never_takes_its_verdict():
    """Inheritance asks for the member's whole span: a file whose first frames are the screened file's but
    which goes on with footage never screened is related (grouped), yet screened itself. Frame pairs that do
    not show the same instant count against it too, instead of being left out of the check."""
    from deepscan.campaign import StreamingGroups

    source, longer = _thumb_video(6), _thumb_video(10)  # longer: the same 6 frames, then 4 more
    assert pixel_check(source, longer).difference == 0.0  # every frame the two share is identical
    assert not is_verified_copy(longer, source)
    assert is_verified_copy(source, longer)  # the other way round it is an excerpt: it may inherit
    groups = StreamingGroups()
    first = groups.place("source", source)
    assert groups.place("longer", longer) is first and not first.inherits("longer")
    # As long as the source, its last 4 frames another scene: those pairs are not the same instant.
    source = _thumb_video(10)
    spliced = replace(source, thumbs=np.concatenate([source.thumbs[:6], _thumb_video(10, seed=9).thumbs[6:]]))
    check = pixel_check(source, spliced)
    assert check.difference == 0.0 and check.dropped == 4 and check.coverage == pytest.approx(0.6)
    assert not is_verified_copy(spliced, source)
    g = group({"source": source, "spliced": spliced})[0]
    assert g.members == ["source", "spliced"] and g.screen_too == ["spliced"]


@needs_pdq
def test_a_longer_file_or_a_shared_intro_is_screened_not_inherited(tmp_path):
    """carphone_real, then the same 4 s followed by its face swap: the 8 s file matches (its first half is the
    screened file) but must be screened, its swap never having been. Two videos sharing a 4 s intro are not
    copies of each other either way round."""
    from deepscan.campaign import StreamingGroups

    def joined(out, first, second, vf="null"):
        ffmpeg("-i", str(first), "-i", str(second), "-filter_complex",
               f"[0:v]fps=25,setsar=1[a];[1:v]fps=25,scale=352:288,setsar=1,{vf}[b];[a][b]concat=n=2:v=1:a=0",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(out))
        return video_hash(out)

    carphone = SAMPLE_CLIPS / "carphone_real.mp4"
    real = video_hash(carphone)
    longer = joined(tmp_path / "longer.mp4", carphone, SAMPLE_CLIPS / "carphone_faceswap_fake.mp4")
    assert is_match(longer, real)
    assert not is_verified_copy(longer, real)
    # The first half at 29.97 fps against the longer file's 25: frames between the longer file's were never
    # compared (a 100-fps copy three quarters fake took a real verdict), so it is screened, not inherited.
    assert not is_verified_copy(real, longer)
    groups = StreamingGroups()
    first = groups.place("real", real)
    assert groups.place("longer", longer) is first and first.screen_too == ["longer"]
    intro_a = joined(tmp_path / "intro_a.mp4", carphone, REAL)
    intro_b = joined(tmp_path / "intro_b.mp4", carphone, OTHER, vf="vflip")
    assert not is_verified_copy(intro_a, intro_b) and not is_verified_copy(intro_b, intro_a)
    for g in group({"a": intro_a, "b": intro_b}):
        assert not any(g.inherits(m) for m in g.members)


def _random_hash(rng, n: int) -> VideoHash:
    k = len(VARIANTS)
    return VideoHash(hashes=rng.integers(0, 256, (n, 32), dtype=np.uint8), quality=np.full(n, 100),
                     times=np.arange(n, dtype=float), mirrored=rng.integers(0, 256, (n, 32), dtype=np.uint8),
                     variants=rng.integers(0, 256, (n, k, 32), dtype=np.uint8),
                     variants_mirrored=rng.integers(0, 256, (n, k, 32), dtype=np.uint8), width=64, height=64,
                     duration_s=float(n))


def test_candidate_search_memory_is_bounded_by_blocks_not_folder_size():
    """20 half-minute files, then a 5-minute one: finding candidates compares every frame hash (and part hash,
    mirrored too) with every earlier one in blocks, never the whole queries x index matrix (150-330 MB here
    before, 2-3 GB for 100 one-minute files and a 10-minute one)."""
    import tracemalloc

    from deepscan.campaign import StreamingGroups

    rng = np.random.default_rng(0)
    files = [_random_hash(rng, 30) for _ in range(20)]
    big, copy = _random_hash(rng, 300), replace(files[7])
    groups = StreamingGroups()
    for i, h in enumerate(files):
        groups.place(f"f{i}", h)
    tracemalloc.start()
    try:
        groups.place("big", big)
        assert groups.place("copy", copy).members == ["f7", "copy"]
        pairs = candidate_pairs([*files, big, copy])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pairs == {(7, 21)}
    assert peak < 48 * 2**20


def test_blocked_comparisons_give_the_same_candidates(monkeypatch):
    import deepscan.campaign as campaign

    rng = np.random.default_rng(2)
    files = [_random_hash(rng, 9) for _ in range(6)]
    files.append(replace(files[2], hashes=files[2].hashes.copy()))
    files[-1].hashes[:, 0] ^= 1  # one bit off: still within the distance
    expected = candidate_pairs(files)
    assert expected == {(2, 6)}
    monkeypatch.setattr(campaign, "BLOCK_A", 7)
    monkeypatch.setattr(campaign, "BLOCK_B", 13)
    assert candidate_pairs(files) == expected
    groups = campaign.StreamingGroups()
    assert [groups.place(str(i), h).id for i, h in enumerate(files)] == [1, 2, 3, 4, 5, 6, 3]
    a, b = files[2].hashes, files[6].hashes
    full = campaign._popcount(a.view(np.uint64)[:, None] ^ b.view(np.uint64)[None]).sum(-1)
    blocked = np.full(full.shape, -1, np.int64)
    for lo, blo, d in campaign._blocked_distances(a, b):
        blocked[lo:lo + d.shape[0], blo:blo + d.shape[1]] = d
    assert (blocked == full).all()


def test_a_corrupt_hash_cache_is_no_cache(tmp_path):
    """A resumed scan reads hashes saved by the last one: a damaged file (here a frame track that is not zlib
    data) is treated as missing, not a crash."""
    import base64
    import json

    from deepscan.campaign import HASH_CACHE_VERSION, load_cached_hash, save_cached_hash

    h = replace(_thumb_video(4), track=np.zeros((3, 32, 32), np.uint8))
    save_cached_hash(tmp_path, "abc", h)
    assert load_cached_hash(tmp_path, "abc").track.shape == (3, 32, 32)
    f = tmp_path / f"abc-{HASH_CACHE_VERSION}.json"
    d = json.loads(f.read_text())
    d["track"] = base64.b64encode(b"not zlib at all").decode()
    f.write_text(json.dumps(d))
    assert load_cached_hash(tmp_path, "abc") is None


@needs_pdq
def test_frames_faked_between_hash_instants_are_seen_on_the_frame_tracks(tmp_path):
    """The real clip with the mouth-warped fake's frames spliced in from 1.2 to 1.8 s: every hash frame (whole
    seconds) is the real clip's, so a check of the hash-time frames alone verified it as a copy and it took the
    real verdict unscreened. Every frame of the tracks is compared: the splice is seen, the pair kept apart.
    A plain re-encode of the same clip still verifies."""
    spliced, reencoded = tmp_path / "spliced.mp4", tmp_path / "reencoded.mp4"
    ffmpeg("-i", str(REAL), "-i", str(FAKE), "-filter_complex", "[0:v][1:v]overlay=enable='between(t,1.2,1.8)'",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(spliced))
    ffmpeg("-i", str(REAL), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(reencoded))
    real, fake, copy = video_hash(REAL), video_hash(spliced), video_hash(reencoded)
    # Without tracks (hash frames and their neighbours only) the splice is invisible: the limit of that path.
    assert pixel_difference(replace(real, track=None), replace(fake, track=None)) < DEFAULT_THRESHOLDS.verify_diff
    assert not is_verified_copy(fake, real)
    check = pixel_check(real, fake)
    assert check.altered() and check.pairs == len(real.track)  # every frame judged
    assert is_verified_copy(copy, real)
    groups = group({"real": real, "spliced": fake, "copy": copy})
    assert [g.members for g in groups] == [["real", "copy"], ["spliced"]] and groups[0].altered == [2]


def _still_hash(n: int, with_thumbs: bool = True) -> VideoHash:
    """An n-second still video: every hash frame matches every other (n² matching pairs)."""
    rng = np.random.default_rng(0)
    h0, thumb = rng.integers(0, 256, 32, dtype=np.uint8), rng.integers(0, 256, (32, 32), dtype=np.uint8)
    return VideoHash(hashes=np.tile(h0, (n, 1)), quality=np.full(n, 100, np.int16), times=np.arange(n, dtype=float),
                     mirrored=np.tile(h0[::-1], (n, 1)), thumbs=np.tile(thumb, (n, 1, 1)) if with_thumbs else None,
                     neighbours=np.tile(thumb, (n, 2, 1, 1)) if with_thumbs else None, width=1280, height=720,
                     duration_s=float(n), fps=25.0)


def test_trim_offsets_of_a_long_still_video_take_bounded_memory():
    """40 minutes of a still video: 5.8 million matching frame pairs, which match_offsets held all at once
    (230 MB here, 517 MB and 3 s for an hour) and _aligned_blocks compared as a full matrix of time gaps.
    Counted block by block, memory stays at the blocks' size; the offsets are the same."""
    import tracemalloc

    from deepscan.campaign import match_offsets

    a, b = _still_hash(2400), _still_hash(2400)
    tracemalloc.start()
    try:
        offsets = match_offsets(a, b)
        check = pixel_check(a, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert offsets == [0.0, -1.0, 1.0, -2.0, 2.0]
    assert check.difference == 0.0 and check.offset == 0.0 and check.pairs == 2400
    assert peak < 80 * 2**20


def test_trim_offsets_survive_a_timestamp_jump():
    """Counters were sized from the span of the two videos' timestamps: one frame stamped at 1e9 s (a broken
    pts) asked for 149 GiB. Only the shifts that occur are counted."""
    from deepscan.campaign import VideoHash, match_offsets

    hashes = np.random.default_rng(0).integers(0, 256, (4, 32), dtype=np.uint8)
    jumped = VideoHash(hashes, np.full(4, 90), np.array([0.0, 1.0, 2.0, 1e9]))
    assert match_offsets(jumped, jumped) == [0.0]


def _match_offsets_reference(a, b, thresholds=DEFAULT_THRESHOLDS, mirrored=False, limit=5):
    """match_offsets as it was, with every matching pair held (the results must not change)."""
    from deepscan.campaign import _blocked_distances, _content_times

    bh = b.mirrored if mirrored and b.mirrored is not None else b.hashes
    ok_a, ok_b = a.quality >= thresholds.quality, b.quality >= thresholds.quality
    if not ok_a.any() or not ok_b.any():
        return []
    ia, ib = [], []
    for lo, blo, d in _blocked_distances(a.hashes[ok_a], bh[ok_b]):
        qi, ci = np.nonzero(d <= thresholds.distance)
        ia.append(qi + lo)
        ib.append(ci + blo)
    ia, ib = np.concatenate(ia), np.concatenate(ib)
    if not len(ia):
        return []
    shifts = _content_times(a)[ok_a][ia] - _content_times(b)[ok_b][ib]
    rounded = np.round(shifts, 1)
    rounded[np.abs(rounded) < 0.5] = 0.0
    values, counts = np.unique(rounded, return_counts=True)
    order = sorted(range(len(values)), key=lambda k: (-counts[k], abs(values[k])))
    offsets = []
    for k in order[:limit]:
        if counts[k] * 2 < counts[order[0]]:
            break
        offsets.append(0.0 if values[k] == 0 else float(np.median(shifts[rounded == values[k]])))
    return offsets


def test_blockwise_trim_offsets_and_time_pairs_give_the_same_results(monkeypatch):
    import deepscan.campaign as campaign

    rng = np.random.default_rng(4)
    source = _thumb_video()
    cases = [(source, _excerpt(source, 2)), (_excerpt(source, 3), source),
             (_hash([0, 100, 200, 200]), _hash([10, 120, 250])), (_still_hash(40), _still_hash(25))]
    for _ in range(20):  # random frame hashes drawn from a few, at jittered times: many ties and medians
        a, b = _random_hash(rng, int(rng.integers(1, 60))), _random_hash(rng, int(rng.integers(1, 60)))
        pool = rng.integers(0, 256, (4, 32), dtype=np.uint8)
        for h in (a, b):
            h.hashes = pool[rng.integers(0, 4, len(h))]
            h.times = np.sort(rng.uniform(0, 60, len(h))).round(int(rng.integers(1, 4)))
            h.quality = rng.choice([10, 100], len(h), p=[0.1, 0.9])
        cases.append((a, b))
    for blocks in ((campaign.BLOCK_A, campaign.BLOCK_B), (7, 13)):
        monkeypatch.setattr(campaign, "BLOCK_A", blocks[0])
        monkeypatch.setattr(campaign, "BLOCK_B", blocks[1])
        for a, b in cases:
            for mirrored in (False, True):
                assert (campaign.match_offsets(a, b, mirrored=mirrored)
                        == pytest.approx(_match_offsets_reference(a, b, mirrored=mirrored)))
    for a, b in cases:
        for offset in (0.0, 1.0, -2.35, 0.04):
            for tolerance in (0.0, 0.012, 0.5, 1.0):
                ta, tb = a.times - a.times[0], b.times - b.times[0] + offset
                assert all(np.array_equal(x, y) for x, y in zip(
                    campaign._time_pairs(ta, tb, tolerance), np.nonzero(np.abs(ta[:, None] - tb[None]) <= tolerance),
                    strict=True))


@needs_pdq
def test_a_track_that_cannot_be_spilled_stays_in_memory_and_one_unreadable_is_no_track(tmp_path, monkeypatch):
    """A full temp disk left a partial track file recorded as spilled: the file being placed, and every later
    file compared with it, failed (np.load of the partial file). Now the track stays in memory, and a spilled
    track that cannot be read back is compared as no track."""
    import errno

    import deepscan.campaign as campaign

    cut = tmp_path / "cut.mp4"
    ffmpeg("-ss", "1.3", "-i", str(REAL), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(cut))
    real, fake, copy, other = video_hash(REAL), video_hash(FAKE), video_hash(cut), video_hash(OTHER)
    real_save, calls = np.save, []

    def full_disk(path, arr, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:  # the first spill meets a full disk, leaving a partial file
            with open(path, "wb") as fh:
                fh.write(b"\x93NUMPY")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, arr, *args, **kwargs)

    monkeypatch.setattr(campaign.np, "save", full_disk)
    spill = tmp_path / "tracks"
    groups = campaign.StreamingGroups(spill_dir=spill)
    for name, h in (("real", real), ("fake", fake), ("cut", copy)):
        groups.place(name, h)
    assert "real" not in groups._spilled and groups.hashes["real"].track is not None
    assert not (spill / "track-0.npy").exists() and "fake" in groups._spilled
    assert [g.members for g in groups.groups] == [["real", "cut"], ["fake"]]
    assert groups.groups[0].inherits("cut")  # lined up on the track kept in memory
    groups._spilled["fake"].write_bytes(b"\x93NUMPY broken")  # deleted or damaged under the scan
    assert groups._hash("fake").track is None
    assert groups.place("other", other).members == ["other"]


def test_a_difference_must_hold_over_run_frames_consecutive_frames():
    """Thresholds.run_frames: on frame tracks a lone frame's difference (a re-encode's worst frame) counts at
    the level it holds over that many judged frames in a row; a pair left out (not the same instant) breaks a
    run, and a clip with fewer judged frames in a row than that is judged on its longest run."""
    from deepscan.campaign import _check_of_pairs, _sustained

    values = np.array([0.01, 0.20, 0.01, 0.09, 0.10, 0.11, 0.02])
    judged = np.ones(len(values), bool)
    assert _sustained(values, judged, 1) == pytest.approx(0.20)
    assert _sustained(values, judged, 2) == pytest.approx(0.10)  # frames 4-5 hold 0.10; the spike does not
    assert _sustained(values, judged, 3) == pytest.approx(0.09)
    judged[4] = False  # the run 3-5 is broken: no 3 judged frames in a row above 0.01
    assert _sustained(values, judged, 3) == pytest.approx(0.01)
    assert _sustained(values[:2], np.ones(2, bool), 5) == pytest.approx(0.01)  # longest run: both frames
    worst = np.array([0.02, 0.30, 0.02, 0.02])
    median = np.full(4, 0.01)
    lone = _check_of_pairs(worst, median, 0.0, DEFAULT_THRESHOLDS, lambda same: 1.0)
    assert lone.difference == pytest.approx(0.30) and lone.altered()
    smoothed = _check_of_pairs(worst, median, 0.0, DEFAULT_THRESHOLDS, lambda same: 1.0, run_frames=2)
    assert smoothed.difference == pytest.approx(0.02) and not smoothed.altered()
    assert smoothed.pairs == 4 and smoothed.locality == pytest.approx(2.0)


def test_the_campaign_table_tells_a_raw_name_from_its_escaped_look_alike():
    """Keyed by the escaped form, byte 0xFF in one name and a literal backslash-x-f-f in another were one key:
    a member was shown with the other file's verdict. The escaped form is only a fallback (a resumed line)."""
    import os

    from rich.console import Console

    raw, literal = os.fsdecode(b"camp/x\xff.mp4"), "camp/x\\xff.mp4"
    rep = VideoResult(path="camp/copy.mp4", verdict="fake", status="ok")
    copy = VideoResult(path=literal, verdict="fake", status="ok", extra={"campaign": {"inherited": True}})
    other = VideoResult(path=raw, verdict="uncertain", status="ok")
    groups = [Group(id=1, members=["camp/copy.mp4", literal], representative="camp/copy.mp4"),
              Group(id=2, members=[raw], representative=raw, altered=[1], altered_with=["camp/copy.mp4"])]
    console = Console(width=200, record=True)
    console.print(campaign_table([rep, copy, other], groups))
    text = console.export_text()
    assert "x\\xff.mp4: fake*" in text and "x\\xff.mp4 (screened): uncertain" in text


def test_a_copy_at_a_higher_frame_rate_holds_frames_never_compared_and_is_screened(tmp_path):
    """A 100-fps file whose every 4th frame is the screened 25-fps clip's and the rest a fake's: the pixel check
    steps through the lower rate's frames only, so the copy read as verified ("real 0.34"; alone "fake 0.907")."""
    real = video_hash(SAMPLE_CLIPS / "astronaut_real.mp4")
    faster = tmp_path / "faster.mp4"
    ffmpeg("-i", str(SAMPLE_CLIPS / "astronaut_real.mp4"), "-vf", "fps=100", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-an", str(faster))
    slower = tmp_path / "slower.mp4"
    ffmpeg("-i", str(SAMPLE_CLIPS / "astronaut_real.mp4"), "-vf", "fps=12.5", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", "-an", str(slower))
    assert not is_verified_copy(video_hash(faster), real)
    assert is_verified_copy(video_hash(slower), real)  # fewer frames: every one of them compared
