"""`scan --dedupe` end to end: a verified copy takes its source's result (marked), everything else is screened."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import SAMPLE_CLIPS, ffmpeg

from deepscan import Scanner
from deepscan.campaign import available_backend
from deepscan.cli import main
from deepscan.html import line_problem

pytestmark = pytest.mark.skipif(available_backend() != "pdq", reason="pdqhash is not installed")


def test_dedupe_scan_inherits_only_verified_copies(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "a_original.mp4")
    shutil.copy(SAMPLE_CLIPS / "carphone_faceswap_fake.mp4", src / "c_faceswap.mp4")
    ffmpeg("-i", str(src / "a_original.mp4"), "-c:v", "libx264", "-crf", "30", "-an", str(src / "b_reupload.mp4"))
    out = tmp_path / "out"
    code = main(["scan", str(src), "--frames", "4", "--threads", "1", "--out", str(out), "--dedupe"])
    assert code in (0, 1)
    lines = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line)
             for line in (out / "results.jsonl").read_text().splitlines()}
    original, copy, fake = lines["a_original.mp4"], lines["b_reupload.mp4"], lines["c_faceswap.mp4"]
    assert all(line_problem(d) is None for d in lines.values())  # the report shows campaign lines
    assert original["extra"]["campaign"]["is_representative"] is True
    assert copy["extra"]["campaign"]["inherited"] is True
    assert copy["extra"]["campaign"]["screened_as"].endswith("a_original.mp4")
    assert (copy["verdict"], copy["score"]) == (original["verdict"], original["score"])
    assert copy["frames"] == [] and copy["sha256"] != original["sha256"]
    # The face-swapped copy has the same footage: it is screened on its own pixels, never inherited.
    assert not (fake.get("extra", {}).get("campaign") or {}).get("inherited")
    assert fake["n_frames"] == 4
    assert "provenance" in original["extra"]


def test_dedupe_decodes_each_file_once_and_resumes_from_the_hash_cache(tmp_path, monkeypatch):
    """--dedupe hashes the frames it decodes for screening: one decode per file, none to group; a resumed
    scan takes finished files' hashes from its output folder instead of decoding them again."""
    import deepscan.campaign
    import deepscan.scanner

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "a_original.mp4")
    ffmpeg("-i", str(src / "a_original.mp4"), "-c:v", "libx264", "-crf", "28", "-an", str(src / "b_reupload.mp4"))
    shutil.copy(SAMPLE_CLIPS / "astronaut_real.mp4", src / "c_other.mp4")
    decodes = []
    real_iter_frames = deepscan.scanner.iter_frames

    def counting(path, *args, **kwargs):
        decodes.append((str(path).rsplit("/", 1)[-1], kwargs.get("hash_fps")))
        return real_iter_frames(path, *args, **kwargs)

    def no_second_decode(*args, **kwargs):
        raise AssertionError("a file was decoded a second time to hash it")

    monkeypatch.setattr(deepscan.scanner, "iter_frames", counting)
    monkeypatch.setattr(deepscan.campaign, "video_hash", no_second_decode)
    out = tmp_path / "out"
    args = ["scan", str(src), "--frames", "4", "--threads", "1", "--out", str(out), "--dedupe"]
    assert main(args) in (0, 1)
    assert sorted(decodes) == [("a_original.mp4", 1.0), ("b_reupload.mp4", 1.0), ("c_other.mp4", 1.0)]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_name = {d["path"].rsplit("/", 1)[-1]: d for d in lines}
    assert by_name["b_reupload.mp4"]["extra"]["campaign"]["inherited"] is True
    assert by_name["b_reupload.mp4"]["video"]["width"] > 0  # its own probe, not the representative's
    assert "provenance" in by_name["b_reupload.mp4"]["extra"]
    assert by_name["c_other.mp4"]["extra"]["campaign"]["group"] != by_name["a_original.mp4"]["extra"]["campaign"]["group"]
    assert len(list((out / "hashes").glob("*.json"))) == 3

    decodes.clear()
    shutil.copy(SAMPLE_CLIPS / "carphone_faceswap_fake.mp4", src / "d_faceswap.mp4")
    assert main(args) in (0, 1)
    assert decodes == [("d_faceswap.mp4", 1.0)]  # the three finished files: resumed, hashes from the cache
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    swap = lines[-1]
    assert not swap["extra"]["campaign"]["inherited"] and swap["n_frames"] == 4


def test_dedupe_screens_a_file_that_goes_on_past_the_screened_one(tmp_path):
    """The screened file's 4 s followed by its face swap: grouped with it (the same campaign) but screened on
    its own pixels, never reported as an inherited copy of the shorter file."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "a_real.mp4")
    ffmpeg("-i", str(SAMPLE_CLIPS / "carphone_real.mp4"), "-i", str(SAMPLE_CLIPS / "carphone_faceswap_fake.mp4"),
           "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an",
           str(src / "b_real_then_swap.mp4"))
    out = tmp_path / "out"
    assert main(["scan", str(src), "--frames", "4", "--threads", "1", "--out", str(out), "--dedupe"]) in (0, 1)
    lines = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line)
             for line in (out / "results.jsonl").read_text().splitlines()}
    longer = lines["b_real_then_swap.mp4"]
    assert longer["extra"]["campaign"]["group"] == lines["a_real.mp4"]["extra"]["campaign"]["group"]
    assert longer["extra"]["campaign"]["inherited"] is False and longer["n_frames"] == 4


def test_a_dedupe_scan_in_progress_keeps_its_groups_to_itself(tmp_path):
    """Its groups were the Scanner's while it ran: a scan_video of a copy in between took a verdict unscreened,
    a plain scan joined its groups, and a later file of the dedupe scan inherited from that plain scan's file."""
    src = tmp_path / "dd"
    src.mkdir()
    shutil.copy(SAMPLE_CLIPS / "astronaut_mouthwarp_fake.mp4", src / "a.mp4")
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "b.mp4")
    shutil.copy(SAMPLE_CLIPS / "astronaut_mouthwarp_fake.mp4", tmp_path / "other_copy.mp4")
    scanner = Scanner(frames=4, threads=1, keep_heatmaps=False)
    dedupe = scanner.scan([src], dedupe=True)
    assert next(dedupe).path.endswith("a.mp4")
    alone = scanner.scan_video(tmp_path / "other_copy.mp4")
    plain = next(scanner.scan([SAMPLE_CLIPS / "carphone_real.mp4"]))
    assert alone.n_frames == 4 and "campaign" not in alone.extra and "campaign" not in plain.extra
    (rest,) = list(dedupe)
    assert rest.path.endswith("b.mp4") and rest.n_frames == 4 and not rest.extra["campaign"].get("inherited")
    assert sorted(m for g in scanner.campaign_groups for m in g.members) == sorted(str(p) for p in src.iterdir())


def test_a_resumed_file_takes_this_runs_group_number(tmp_path):
    """Group numbers are per run: a file resumed from an earlier run's line kept that run's number, so after
    two unrelated files sorting first were added, all four lines said group 1 and the report merged them.
    The resumed lines are written again with this run's groups (a copy's verdict still inherited)."""
    from deepscan.html import read_results

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "m.mp4")
    ffmpeg("-i", str(src / "m.mp4"), "-c:v", "libx264", "-crf", "20", "-an", str(src / "m_copy.mp4"))
    out = tmp_path / "out"
    args = ["scan", str(src), "--frames", "4", "--threads", "1", "--out", str(out), "--dedupe"]
    assert main(args) in (0, 1)
    shutil.copy(SAMPLE_CLIPS / "astronaut_real.mp4", src / "a.mp4")
    ffmpeg("-i", str(src / "a.mp4"), "-c:v", "libx264", "-crf", "20", "-an", str(src / "a_copy.mp4"))
    assert main(args) in (0, 1)
    last = {d["path"].rsplit("/", 1)[-1]: d["extra"]["campaign"]
            for d in (json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())}
    assert last["a.mp4"]["group"] == last["a_copy.mp4"]["group"] == 1
    assert last["m.mp4"]["group"] == last["m_copy.mp4"]["group"] == 2
    assert last["m.mp4"]["is_representative"] and not last["m.mp4"]["inherited"]
    assert last["m_copy.mp4"]["inherited"] and last["m_copy.mp4"]["screened_as"].endswith("/m.mp4")
    shown, bad = read_results(out / "results.jsonl")  # what the HTML report counts group sizes from
    assert bad == 0 and sorted(d["extra"]["campaign"]["group"] for d in shown) == [1, 1, 2, 2]
    lines = len((out / "results.jsonl").read_text().splitlines())
    assert main(args) in (0, 1)  # the same groups again: nothing to write
    assert len((out / "results.jsonl").read_text().splitlines()) == lines


def test_a_resumed_copy_met_before_its_screened_file_is_screened_itself(tmp_path):
    """Resumed in another order, the copy whose verdict was inherited came first, headed this run's group and
    stayed marked inherited, while the file actually screened became an ordinary member ("m_copy (screened)")."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "m.mp4")
    ffmpeg("-i", str(src / "m.mp4"), "-c:v", "libx264", "-crf", "20", "-an", str(src / "m_copy.mp4"))
    out = tmp_path / "out"
    options = ["--frames", "4", "--threads", "1", "--out", str(out), "--dedupe"]
    assert main(["scan", str(src), *options]) in (0, 1)
    assert main(["scan", str(src / "m_copy.mp4"), str(src / "m.mp4"), *options]) in (0, 1)
    last = {d["path"].rsplit("/", 1)[-1]: d for d in
            (json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())}
    copy, screened = last["m_copy.mp4"], last["m.mp4"]
    assert copy["status"] == "ok" and copy["extra"]["campaign"]["is_representative"]
    assert not copy["extra"]["campaign"]["inherited"]  # screened on its own pixels this time
    assert screened["extra"]["campaign"]["group"] == copy["extra"]["campaign"]["group"]
    assert not screened["extra"]["campaign"]["is_representative"] and not screened["extra"]["campaign"]["inherited"]


def test_a_cut_off_file_is_screened_alike_with_dedupe_and_alone(tmp_path):
    """Its first instants decode (hash frames) but, sampled over the 4 s its header declares, no sampled frame
    did: with --dedupe it read "no_face" (exit 0), as if its frames had been searched; alone an error. Since
    session 52 its stream is measured (0.52 s there) and both screen the frames that are there, saying so."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "cut.mp4").write_bytes((SAMPLE_CLIPS / "astronaut_real.mp4").read_bytes()[:50_000])
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", src / "whole.mp4")
    results = {r.path.rsplit("/", 1)[-1]: r for r in Scanner(frames=4, threads=1).scan([src], dedupe=True)}
    cut, alone = results["cut.mp4"], Scanner(frames=4, threads=1).scan_video(src / "cut.mp4")
    assert (cut.status, cut.n_frames) == (alone.status, alone.n_frames) and cut.status == "ok" and cut.n_frames >= 2
    assert [f.time_s for f in cut.frames] == [f.time_s for f in alone.frames]
    assert any(w.startswith("truncated MP4") for w in cut.video["warnings"])
    assert results["whole.mp4"].status == "ok"


def test_a_campaign_keeps_its_screened_results_without_their_pixels(tmp_path):
    """Each group's screened result is kept for the copies after it: with its crops and heatmaps that was about
    8 MB a video for the whole scan, whatever the caller dropped."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("carphone_real.mp4", "astronaut_real.mp4"):
        shutil.copy(SAMPLE_CLIPS / name, src / name)
    scanner = Scanner(frames=4, threads=1)
    results = list(scanner.scan([src], dedupe=True))
    assert all(f.crop is not None for r in results for fr in r.frames for f in fr.faces)  # the caller's
    kept = scanner._last_campaign.results
    assert len(kept) == 2 and all(fr.faces for r in kept.values() for fr in r.frames[:1])
    assert all(f.crop is None and f.heatmap is None for r in kept.values() for fr in r.frames for f in fr.faces)


def test_a_name_that_is_not_utf8_neither_stops_a_dedupe_scan_nor_grows_its_results(tmp_path, capsys):
    """Its surrogate escapes reached extra.campaign.representative, which could not be encoded: the whole
    scan stopped at that file (no later video screened). Once written escaped, a rerun compared the stored
    (escaped) group with the raw one and appended the line again, every time."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE_CLIPS / "astronaut_real.mp4", folder / "a_real.mp4")
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", os.fsdecode(os.fsencode(folder) + b"/clip\xff.mp4"))
    shutil.copy(SAMPLE_CLIPS / "astronaut_mouthwarp_fake.mp4", folder / "z_fake.mp4")
    shutil.copy(SAMPLE_CLIPS / "carphone_real.mp4", folder / "zz_copy.mp4")  # the odd name heads a group
    out = tmp_path / "out"
    assert main(["scan", str(folder), "--out", str(out), "--frames", "4", "--dedupe"]) == 1
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(line["path"].rsplit("/", 1)[1] for line in lines) == [
        "a_real.mp4", "clip\\xff.mp4", "z_fake.mp4", "zz_copy.mp4"]
    assert all(line_problem(line) is None for line in lines)
    capsys.readouterr()
    assert main(["scan", str(folder), "--out", str(out), "--frames", "4", "--dedupe"]) == 1
    assert len((out / "results.jsonl").read_text(encoding="utf-8").splitlines()) == 4
    # Resumed, its stored (escaped) name was not found among the live group's: "(screened): not screened".
    assert "clip\\xff.mp4 (screened): real" in capsys.readouterr().out
