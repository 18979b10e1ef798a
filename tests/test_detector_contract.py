"""What a detector, its model card and the scan options accept: values that would silently judge with another
threshold, precision or sampling are refused where they are given, once."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SAMPLE_CLIPS

from deepscan import Scanner, scan
from deepscan.detector import (
    DEFAULT_MODEL,
    CardWarning,
    ModelCard,
    WeightsMismatch,
    load_detector,
    resolve_card,
)
from deepscan.scanner import ScanOptions


@pytest.mark.parametrize("options", [
    {"precision": "FP32"}, {"precision": "fp64"}, {"frames": 0}, {"frames": -3}, {"fps": 0.0}, {"fps": -1.0},
    {"fps": float("nan")}, {"full_detect_every": -2}, {"frames": 2.5},
    # batch_faces=-1 made every video an internal error; 20,000 threads exited 1 ("a fake found").
    {"batch_faces": -1}, {"batch_faces": 2.5}, {"batch_frames": -2}, {"threads": -1}, {"threads": 20000},
    {"threads": 1.5},
    # The video stage's limits: -5 failed every video; 0 lifted the limit unasked.
    {"max_side": -5}, {"max_side": 0}, {"max_side": 100.5}, {"timeout_s": -1}, {"timeout_s": 0},
    {"max_pixels": -1}, {"max_duration_s": 0}, {"heatmaps_per_person": True}])
def test_options_that_would_be_taken_as_something_else_are_refused(options):
    # precision "FP32" ran bf16 judged at fp32's threshold; frames=0 sampled 32; fps=-1 every frame.
    with pytest.raises(ValueError, match=next(iter(options))):
        ScanOptions(**options)


def test_numbers_from_numpy_are_numbers():
    options = ScanOptions(threshold=np.float32(0.5), frames=np.int64(8), fps=np.float64(2), precision=None)
    assert (options.threshold, options.frames, options.fps, options.precision) == (0.5, 8, 2.0, "auto")
    assert type(options.threshold) is float and type(options.frames) is int
    assert ScanOptions(threshold=np.int64(1)).threshold == 1.0
    assert type(ScanOptions(batch_faces=np.int64(4)).batch_faces) is int
    assert type(ScanOptions(threads=np.int64(2)).threads) is int
    assert ScanOptions(batch_faces=0, batch_frames=0).batch_faces is None  # 0 meant the default before the check
    assert ScanOptions(timeout_s=None, max_duration_s=None, max_side=np.int64(640)).max_side == 640


def test_a_thread_count_beyond_what_helps_is_refused_and_fp16_on_a_cpu_is_warned_of(monkeypatch, capsys):
    import os

    from deepscan.cli import main as cli_main
    from deepscan.detector import PrecisionWarning

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert ScanOptions(threads=8).threads == 8 and ScanOptions(threads=0).threads == 0
    with pytest.raises(SystemExit):
        cli_main(["scan", "x.mp4", "--threads", "9"])
    assert "from 1 to 8" in capsys.readouterr().err
    monkeypatch.setenv("DEEPSCAN_THREADS", "100")
    with pytest.raises(ValueError, match="DEEPSCAN_THREADS"):
        Scanner(frames=1).scan_video(SAMPLE_CLIPS / "carphone_real.mp4")
    monkeypatch.delenv("DEEPSCAN_THREADS")
    with pytest.warns(PrecisionWarning, match="emulated"):
        load_detector(None, device="cpu", precision="fp16")


def _card_dict() -> dict:
    return json.loads(resolve_card(DEFAULT_MODEL).path.read_text())


@pytest.mark.parametrize("change, match", [
    ({"threshold": float("nan")}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"threshold": -0.2}, "threshold"),
    ({"precision_thresholds": {"bf16": 2.0}}, "precision_thresholds.bf16"),
    ({"precision_thresholds": {"int8": 0.5}}, "unknown precisions"),
    ({"temperature": -2.1}, "temperature"), ({"temperature": 0}, "temperature"),
    ({"uncertain_band": -0.1}, "uncertain_band"), ({"output": "real_probability"}, "output"),
    ({"heatmap": "saliency"}, "heatmap"), ({"sha256": "ABC"}, "sha256")])
def test_a_card_that_would_judge_wrongly_is_refused_on_loading(tmp_path, change, match):
    path = tmp_path / "card.json"
    path.write_text(json.dumps({**_card_dict(), **change}))
    with pytest.raises(ValueError, match=match):
        ModelCard.load(path)


def test_a_card_without_a_weights_digest_loads_no_weights(tmp_path):
    card = resolve_card(DEFAULT_MODEL)
    shutil.copy(card.weights_path, tmp_path / card.weights)
    (tmp_path / "card.json").write_text(json.dumps({**_card_dict(), "sha256": None}))
    with pytest.raises(WeightsMismatch, match="names no sha256"):
        load_detector(str(tmp_path / "card.json"), device="cpu")


def test_one_crop_is_scored_as_one_crop():
    detector = load_detector(None, device="cpu", precision="fp32", batch_size=16)
    s = detector.card.input_size
    crop = np.random.default_rng(0).integers(0, 256, (s, s, 3), dtype=np.uint8)
    one, batch = detector.predict(crop), detector.predict(crop[None])
    assert one.probs.shape == (1,) and one.heatmaps.shape == (1, s, s)  # it gave 14 scores of image rows
    assert np.array_equal(one.probs, batch.probs)
    with pytest.raises(ValueError, match="shape"):
        detector.predict(crop[:100])


def test_a_bad_detector_or_device_is_raised_once_not_recorded_per_video(tmp_path):
    clip = SAMPLE_CLIPS / "carphone_real.mp4"
    if not clip.is_file():
        pytest.skip("sample clips missing")
    # One file used to give an "internal error" result line blaming the video; a folder raised.
    for bad in ({"detector": "no-such-model"}, {"weights": str(tmp_path / "missing.safetensors")}):
        with pytest.raises((KeyError, FileNotFoundError)):
            list(scan([clip], out_dir=tmp_path / "out", **bad))
        with pytest.raises((KeyError, FileNotFoundError)):
            Scanner(**bad).scan_video(clip)
    assert not (tmp_path / "out" / "results.jsonl").exists() or not (tmp_path / "out" / "results.jsonl").read_text()


@pytest.mark.parametrize("device", ["meta", "mps", "bogus", "cuda", "cuda:2"])
def test_a_device_deepscan_cannot_run_on_is_refused_by_name(tmp_path, monkeypatch, device):
    import torch

    from deepscan.detector import select_device

    # As on a machine with one GPU: cuda:2 is not there. "meta" used to load and fail every video with an
    # internal error; the CUDA ones with torch's driver message at the first tensor moved.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if device == "cuda:2" else 0)
    with pytest.raises(ValueError, match=f"device '{device}'"):
        select_device(device)
    clip = SAMPLE_CLIPS / "carphone_real.mp4"
    if clip.is_file():
        with pytest.raises(ValueError, match="device"):
            list(scan([clip], out_dir=tmp_path / "out", device=device))
        assert not (tmp_path / "out" / "results.jsonl").exists() or not (tmp_path / "out" / "results.jsonl").read_text()
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if device == "cuda:2" else "cpu")
    if device == "cuda:2":
        assert select_device("cuda:0") == torch.device("cuda:0")


def test_a_name_two_cards_claim_or_a_broken_card_is_not_resolved_silently(tmp_path, monkeypatch):
    card = _card_dict()
    monkeypatch.setenv("DEEPSCAN_MODELS", str(tmp_path))
    (tmp_path / "notes.json").write_text('{"not": "a card"}')  # passed over in silence
    (tmp_path / f"{DEFAULT_MODEL}-old.json").write_text(json.dumps({**card, "threshold": 0.5}))
    (tmp_path / f"{DEFAULT_MODEL}.json").write_text(json.dumps(card))
    with pytest.raises(KeyError, match="named by 2 cards"):  # the older copy won, by file name
        resolve_card(DEFAULT_MODEL)
    (tmp_path / f"{DEFAULT_MODEL}-old.json").unlink()
    (tmp_path / f"{DEFAULT_MODEL}.json").write_text(json.dumps({**card, "face_detector": {"stray": 1}}))
    with pytest.warns(UserWarning, match="model card not loaded"):
        fallback = resolve_card(DEFAULT_MODEL)  # the repository's card, but no longer without a word
    assert fallback.path.parent != tmp_path
    # Fields read with .items()/.get(): of another type they made every lookup by name fail (AttributeError).
    # A name or weights of another type broke `deepscan models` (sorting names, joining paths).
    for odd in ({"precision_thresholds": None}, {"training": []}, {"input_size": "224"}, {"std": [0, 1, 1]},
                {"name": 123}, {"weights": 5}, {"name": " "}):
        (tmp_path / f"{DEFAULT_MODEL}.json").write_text(json.dumps({**card, **odd}))
        with pytest.warns(CardWarning, match="model card not loaded"):
            assert resolve_card(DEFAULT_MODEL).path.parent != tmp_path
    # A recalibrated card with a typo (a trailing comma) was passed over in silence for the repository's.
    (tmp_path / f"{DEFAULT_MODEL}.json").write_text(json.dumps({**card, "threshold": 0.5})[:-1] + ",}")
    with pytest.warns(CardWarning, match="not read as a model card"):
        assert resolve_card(DEFAULT_MODEL).path.parent != tmp_path


def test_models_lists_every_card_as_text_and_says_which_names_are_ambiguous(tmp_path, monkeypatch, capsys):
    from deepscan.cli import main as cli_main

    card = _card_dict()
    monkeypatch.setenv("DEEPSCAN_MODELS", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")
    (tmp_path / "a.json").write_text(json.dumps(card))
    (tmp_path / "b.json").write_text(json.dumps({**card, "threshold": 0.99}))
    (tmp_path / "c.json").write_text(json.dumps({**card, "name": "lite0[bold]v2"}))
    (tmp_path / "d.json").write_text(json.dumps({**card, "name": 123}))
    assert cli_main(["models"]) == 0
    out, err = capsys.readouterr()
    assert "deepscan: warning:" in err and "d.json: model card not loaded" in err
    # The name column of each row, its folded lines joined (160 columns off a terminal; a row's first line is
    # the one with an architecture).
    names = []
    for cells in (line.split("│") for line in out.splitlines() if line.startswith("│")):
        if cells[2].strip():
            names.append(cells[1].strip())
        else:
            names[-1] = (names[-1] + " " + cells[1].strip()).strip()
    assert f"{DEFAULT_MODEL} (default) (ambiguous: a.json, b.json; pass a card's path)" in names
    assert "lite0[bold]v2" in names  # was read as rich markup: "lite0v2", a name no --detector finds


def test_a_persons_most_suspicious_faces_keep_their_pixels_and_no_more():
    """Every face kept its 224-px crop and heatmap (~240 KB): a long video sampled by fps grew without bound.
    Now each person keeps their `heatmaps_per_person` most suspicious faces' pixels, copies not batch views."""
    clip = SAMPLE_CLIPS / "carphone_real.mp4"
    if not clip.is_file():
        pytest.skip("sample clips missing")
    everything = Scanner(fps=6, heatmaps_per_person=None, threads=1).scan_video(clip)
    bounded = Scanner(fps=6, heatmaps_per_person=5, threads=1).scan_video(clip)
    faces = [f for fr in everything.frames for f in fr.faces]
    kept = [f for fr in bounded.frames for f in fr.faces]
    assert len(faces) == len(kept) > 10 and all(f.crop is not None for f in faces)
    assert [f.score for f in faces] == [f.score for f in kept]  # pixels kept or not, the same scores
    with_pixels = [f for f in kept if f.crop is not None]
    assert len({f.track for f in kept}) == 1 and len(with_pixels) == 5
    assert sorted(f.score for f in with_pixels) == sorted(f.score for f in kept)[-5:]
    assert all(f.heatmap is not None and f.crop.base is None for f in with_pixels)
    assert all(f.heatmap is None for f in kept if f.crop is None)
    assert Scanner(heatmaps_per_person=0, frames=4).scan_video(clip).frames[0].faces[0].crop is None
