"""`deepscan calibrate`: the threshold is refitted on the scanner's own video scores of the card's held-out
clips, and only the card's threshold and metrics change."""

from __future__ import annotations

import json
import shutil

import pytest

from deepscan.cli import main
from deepscan.detector import ModelCard, resolve_card
from deepscan.scanner import ScanOptions, card_hash

DEFAULT_CARD = resolve_card(None).path
# A default scan's settings as a results line holds them: what calibrate fits for (other settings score otherwise).
SCANNED_AS = json.loads(json.dumps(ScanOptions().scoring_config(), default=str))


def _card_with_split(tmp_path, validation_files, labelled=None, **fields):
    """A copy of the shipped card (and its weights) in ``tmp_path`` naming ``validation_files`` as its held-out
    split, with ``fields`` set on it, and a MANIFEST.tsv labelling ``labelled`` (default: the split) by name."""
    card_path = tmp_path / "model.json"
    shutil.copy(DEFAULT_CARD, card_path)
    shutil.copy(DEFAULT_CARD.with_suffix(".safetensors"), tmp_path / "model.safetensors")
    card = ModelCard.load(card_path)
    for name, value in fields.items():
        setattr(card, name, value)
    card.training["validation_files"] = list(validation_files)
    card.weights = "model.safetensors"
    card.save(card_path)
    labels = tmp_path / "MANIFEST.tsv"
    labels.write_text("file\tlabel\n" + "".join(f"{f}\t{'fake' if 'fake' in f else 'real'}\n"
                                                for f in (validation_files if labelled is None else labelled)))
    return card_path, card, labels


def test_calibrate_refits_the_threshold_on_scan_scores(tmp_path):
    files = [f"src/real{i}.mp4" for i in range(20)] + ["src/fake0.mp4", "src/fake1.mp4", "other/skip.mp4"]
    card_path, card, labels = _card_with_split(tmp_path, files[:-1], labelled=files)
    real_scores = [0.05 * i for i in range(20)]  # 0.00 ... 0.95: one real (5% of 20) may score above
    results = tmp_path / "results.jsonl"
    lines = [{"path": str(tmp_path / f), "score": s, "model": {"sha256": card.sha256, "card_hash": card_hash(card)},
              "config": SCANNED_AS} for f, s in zip(files, real_scores + [0.97, 0.5, 0.99], strict=True)]
    lines.append({"path": str(tmp_path / files[0]), "score": 0.99, "model": {"sha256": "another model"}})
    # The same weights at another sampling: the fit is for 32 frames a video.
    lines += [{"path": str(tmp_path / files[1]), "score": 0.99, "model": {"sha256": card.sha256, "card_hash": card_hash(card)},
               "config": {"frames": 8, "fps": None}},
              {"path": str(tmp_path / files[2]), "score": 0.99, "model": {"sha256": card.sha256, "card_hash": card_hash(card)},
               "config": {"frames": 32, "fps": 2.0}}]
    results.write_text("".join(json.dumps(d) + "\n" for d in lines[:-4] + lines[-3:]))
    before = card_path.read_text()
    assert main(["calibrate", str(card_path), str(labels), "--results", str(results)]) == 0
    after = ModelCard.load(card_path)
    assert after.threshold == pytest.approx(0.90 + 1e-3)  # just above the second-highest real: 1 of 20 flagged
    m = after.metrics["scanner"]
    assert m["fpr_at_threshold"] == pytest.approx(0.05) and m["tpr_at_threshold"] == pytest.approx(0.5)
    assert (m["videos"], m["real_videos"], m["fake_videos"], m["missing"]) == (22, 20, 2, 0)
    assert after.sha256 == card.sha256 and json.loads(before)["weights"] == after.weights
    after.verify_weights()  # the weights are untouched: the card still vouches for them


def test_calibrate_scanning_itself_uses_the_scores_it_scans(tmp_path, monkeypatch):
    """Without --results (and without --out) the scores come from the scan just made."""
    import deepscan.scanner
    from deepscan.evaluate import calibrate
    from deepscan.results import VideoResult

    files = [f"src/real{i}.mp4" for i in range(20)] + ["src/fake0.mp4", "src/fake1.mp4"]
    card_path, card, labels = _card_with_split(tmp_path, files)
    score_of = {str(tmp_path / f): s for f, s in zip(files, [0.05 * i for i in range(20)] + [0.97, 0.5], strict=True)}

    def fake_scan(self, path, progress=None, sha256=None):
        return VideoResult(path=str(path), status="ok", verdict="real", score=score_of[str(path)],
                           config={"frames": 32})

    monkeypatch.setattr(deepscan.scanner.Scanner, "scan_video", fake_scan)
    m = calibrate(card_path, labels)
    assert m["threshold"] == pytest.approx(0.90 + 1e-3) and m["missing"] == 0
    assert m["tpr_at_threshold"] == pytest.approx(0.5) and m["scan_config"] == {"frames": 32}


def test_a_bf16_threshold_is_fitted_beside_fp32s_and_used_at_bf16(tmp_path, monkeypatch):
    """``--precision bf16`` fits the threshold for bf16 scores only (fp32 lines of the same results are
    ignored, fp32's threshold is kept); ``auto`` then picks bf16 on a CPU with bf16 instructions, and the
    scanner judges with the bf16 threshold."""
    import deepscan.detector as detector_module
    from deepscan import Scanner

    files = [f"src/real{i}.mp4" for i in range(20)] + ["src/fake0.mp4"]
    card_path, card, labels = _card_with_split(tmp_path, files, precision_thresholds={})
    lines = []
    for precision, shift in (("fp32", 0.0), ("bf16", 0.02)):
        lines += [{"path": str(tmp_path / f), "score": s + shift, "model": {"sha256": card.sha256, "precision": precision,
                                                                            "card_hash": card_hash(card)},
                   "config": SCANNED_AS} for f, s in zip(files, [0.04 * i for i in range(20)] + [0.95], strict=True)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(d) + "\n" for d in lines))
    assert main(["calibrate", str(card_path), str(labels), "--results", str(results), "--precision", "bf16"]) == 0
    after = ModelCard.load(card_path)
    assert after.threshold == card.threshold  # fp32's is untouched
    assert after.precision_thresholds["bf16"] == pytest.approx(0.74 + 1e-3)  # second-highest bf16 real: 0.72 + 0.02
    assert after.metrics["scanner_bf16"]["precision"] == "bf16"
    assert after.threshold_for("bf16") == after.precision_thresholds["bf16"]
    assert after.threshold_for("fp16") == after.threshold

    monkeypatch.setattr(detector_module, "cpu_has_native_bf16", lambda: True)
    scanner = Scanner(detector=str(card_path), device="cpu")
    assert scanner.detector.precision == "bf16" and scanner.threshold == after.precision_thresholds["bf16"]
    monkeypatch.setattr(detector_module, "cpu_has_native_bf16", lambda: False)
    scanner = Scanner(detector=str(card_path), device="cpu")
    assert scanner.detector.precision == "fp32" and scanner.threshold == after.threshold
    # A card without a bf16 threshold stays fp32 even where bf16 is fast.
    monkeypatch.setattr(detector_module, "cpu_has_native_bf16", lambda: True)
    plain = tmp_path / "plain.json"
    after.precision_thresholds = {}
    after.save(plain)
    assert Scanner(detector=str(plain), device="cpu").detector.precision == "fp32"


def test_bootstrap_auc_resamples_whole_groups_when_given():
    import numpy as np

    from deepscan.evaluate import bootstrap_auc

    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 20)
    s = rng.random(40) + 0.3 * y
    auc, lo, hi = bootstrap_auc(y, s)
    assert lo <= auc <= hi
    # Each group is one real and its fake: a resample always holds both classes in equal numbers.
    g_auc, g_lo, g_hi = bootstrap_auc(y, s, groups=np.arange(40) // 2)
    assert g_auc == auc and g_lo <= auc <= g_hi and (g_lo, g_hi) != (lo, hi)
    # Groups of one are the ungrouped bootstrap, draw for draw (figures quoted before groups stay reproducible).
    assert bootstrap_auc(y, s, groups=np.arange(40)) == (auc, lo, hi)
    # A perfectly separated pair structure has no spread at all.
    assert bootstrap_auc(y, y.astype(float), groups=np.arange(40) // 2) == (1.0, 1.0, 1.0)


def test_auc_intervals_resample_clips_of_one_source_together():
    import numpy as np

    from deepscan.evaluate import auc_with_intervals

    # Eight sources, each a real clip and three near-copies of its fake (one source rendered three ways): the
    # copies are one piece of evidence, so resampled one by one they would narrow the interval.
    rng = np.random.default_rng(2)
    y, s, groups = [], [], []
    for source in range(8):
        fake = rng.random() + 0.2
        y += [0, 1, 1, 1]
        s += [rng.random(), fake, fake + 0.01, fake - 0.01]
        groups += [f"src{source}"] * 4
    m = auc_with_intervals(y, s, groups)
    assert m["resampled"] == {"unit": "group", "n": 8}
    (lo, hi), (clip_lo, clip_hi) = m["auc_ci95"], m["auc_ci95_clips"]
    assert lo <= m["auc"] <= hi and hi - lo > clip_hi - clip_lo
    alone = auc_with_intervals(y, s, [f"clip{i}" for i in range(32)])
    assert alone["resampled"] == {"unit": "clip", "n": 32} and alone["auc_ci95"] == m["auc_ci95_clips"]


def test_paired_auc_difference_cancels_what_the_clips_share():
    import numpy as np

    from deepscan.evaluate import bootstrap_auc, bootstrap_auc_difference

    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 30)
    hardness = rng.normal(0, 1, 60)  # what both models see alike in a clip
    a = hardness + 0.8 * y
    b = a + 0.4 * y + rng.normal(0, 0.1, 60)  # the same clips, separated better
    assert bootstrap_auc_difference(y, a, a) == (0.0, 0.0, 0.0)
    diff, lo, hi = bootstrap_auc_difference(y, a, b)
    (auc_a, lo_a, hi_a), (auc_b, lo_b, _) = bootstrap_auc(y, a), bootstrap_auc(y, b)
    assert diff == pytest.approx(auc_b - auc_a) and 0 < lo <= diff <= hi
    # Paired, the interval is far narrower than the two models' own intervals, which overlap.
    assert hi - lo < 0.5 * (hi_a - lo_a) and lo_b < hi_a
    # Swapping the models mirrors the difference.
    assert bootstrap_auc_difference(y, b, a) == pytest.approx((-diff, -hi, -lo))


def test_eval_scores_labelled_clips_with_a_roc_and_per_source_table(tmp_path, capsys, monkeypatch):
    """`deepscan eval LABELS`: the sample clips (two fakes, two reals) scanned with the embedded model; AUC and
    interval, rates at the card's threshold, a row per source, the ROC plot, each clip's score. Rerun into
    the same --out, it scans nothing again."""
    from conftest import SAMPLE_CLIPS

    from deepscan.scanner import Scanner

    labels = tmp_path / "labels.csv"
    rows = [f"{p},{'fake' if 'fake' in p.name else 'real'}" for p in sorted(SAMPLE_CLIPS.glob("*.mp4"))]
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "eval"
    assert main(["eval", str(labels), "--frames", "4", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert (report["n_clips"], report["n_fake"]) == (4, 2)
    # How the scores were made, defaults included (only the flags given reached it for a while).
    assert report["scan_options"] == {"precision": "auto", "full_detect_every": 4, "follow_faces": True}
    (entry,) = report["detectors"]
    lo, hi = entry["auc_ci95"]
    assert 0 <= lo <= entry["auc"] <= hi <= 1 and "paired_with_first" not in entry
    scores = entry["video_scores"]
    assert scores["labels"] == [1, 0, 1, 0] and all(0 <= s <= 1 for s in scores["scores"])
    assert entry["at_threshold"]["tpr"] in (0.0, 0.5, 1.0) and sum(r["n"] for r in entry["per_source"]) == 4
    assert (out / "roc.png").stat().st_size > 1000
    assert (out / entry["detector"] / "results.jsonl").is_file()
    assert "AUC" in capsys.readouterr().out

    # Run again into the same directory (as after an interruption): every clip is taken from its results.jsonl.
    def no_scanning(*args, **kwargs):
        raise AssertionError("a clip was scanned again")

    monkeypatch.setattr(Scanner, "scan_video", no_scanning)
    assert main(["eval", str(labels), "--frames", "4", "--out", str(out)]) == 0
    (again,) = json.loads((out / "metrics.json").read_text())["detectors"]
    assert again["resumed"] == 4 and again["auc"] == entry["auc"]
    assert again["video_scores"]["ids"] == scores["ids"]
    assert again["video_scores"]["scores"] == pytest.approx(scores["scores"], abs=1e-6)  # results.jsonl's rounding
    assert len((out / entry["detector"] / "results.jsonl").read_text().splitlines()) == 4
    assert "4 of 4 clips taken from" in capsys.readouterr().out


def test_eval_of_earlier_results_pairs_each_detector_with_the_first(tmp_path, capsys):
    """`deepscan eval LABELS --results A --results B`: no scanning; B is compared with A clip for clip."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 30
    labels = tmp_path / "labels.tsv"
    labels.write_text("file\tlabel\n" + "".join(f"src/c{i}.mp4\t{'fake' if i % 2 else 'real'}\n" for i in range(n)))
    y = np.arange(n) % 2
    hardness = rng.normal(0, 1, n)
    for name, separation in (("a", 0.6), ("b", 1.5)):
        score = 1 / (1 + np.exp(-(hardness + separation * y)))
        lines = [json.dumps({"path": str(tmp_path / f"src/c{i}.mp4"), "score": float(score[i]), "status": "ok",
                             "model": {"name": name, "threshold": 0.5}}) for i in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["eval", str(labels), "--results", str(tmp_path / "a.jsonl"), "--results", str(tmp_path / "b.jsonl"),
                 "--out", str(out)]) == 0
    first, second = json.loads((out / "metrics.json").read_text())["detectors"]
    pair = second["paired_with_first"]
    assert pair["against"] == "a" and pair["auc_difference"] == pytest.approx(second["auc"] - first["auc"])
    assert 0 < pair["ci95"][0] <= pair["auc_difference"] <= pair["ci95"][1]
    assert f"{pair['auc_difference']:+.3f}" in capsys.readouterr().out


def test_calibrate_refuses_results_that_miss_validation_clips(tmp_path):
    """A clip without a score used to enter the fit as 0 (half the split moved 0.891 to 0.202); now nothing is
    fitted and the card is left as it was."""
    from deepscan.evaluate import calibrate

    files = [f"src/real{i}.mp4" for i in range(20)] + ["src/fake0.mp4", "src/fake1.mp4"]
    card_path, card, labels = _card_with_split(tmp_path, files)
    results = tmp_path / "results.jsonl"
    model = {"sha256": card.sha256, "card_hash": card_hash(card)}
    results.write_text("".join(json.dumps({"path": str(tmp_path / f), "score": 0.9, "model": model,
                                           "config": SCANNED_AS}) + "\n" for f in files[:15]))
    before = card_path.read_text()
    with pytest.raises(ValueError, match=r"7 of 22 validation clips have no score .*src/real15\.mp4"):
        calibrate(card_path, labels, results_path=results)
    assert card_path.read_text() == before
    assert main(["calibrate", str(card_path), str(labels), "--results", str(results)]) != 0
    assert card_path.read_text() == before

    # Scores from a copy of the card with another temperature (same weights) were fitted on as this card's.
    other = ModelCard.load(card_path)
    other.temperature = card.temperature * 2
    for stranger in ({**model, "card_hash": card_hash(other)}, {"sha256": card.sha256}):
        results.write_text("".join(json.dumps({"path": str(tmp_path / f), "score": 0.9, "model": stranger,
                                               "config": SCANNED_AS}) + "\n" for f in files))
        with pytest.raises(ValueError, match=r"22 of 22 validation clips have no score from this card"):
            calibrate(card_path, labels, results_path=results)
        assert card_path.read_text() == before


def test_calibrate_refuses_labels_that_miss_part_of_the_split_and_rates_out_of_range(tmp_path, capsys):
    """A labels file listing 10 of the card's 40 validation clips refitted on those 10 (0.891 -> 0.565) and
    rewrote the card; --max-fpr 5 (meant as 5%) wrote a threshold that flags every real clip."""
    files = [f"src/real{i}.mp4" for i in range(8)] + ["src/fake0.mp4", "src/fake1.mp4"]
    card_path, card, labels = _card_with_split(tmp_path, files, labelled=files[4:])
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps({"path": str(tmp_path / f), "score": 0.1 * i, "model": {
        "sha256": card.sha256, "card_hash": card_hash(card)}, "config": SCANNED_AS}) + "\n"
        for i, f in enumerate(files)))
    before = card_path.read_text()
    assert main(["calibrate", str(card_path), str(labels), "--results", str(results)]) == 2
    assert "does not list 4 of the 10 clips" in capsys.readouterr().err and card_path.read_text() == before
    labels.write_text("file\tlabel\n" + "".join(f"{f}\t{'fake' if 'fake' in f else 'real'}\n" for f in files))
    for rate in ("5", "1", "-0.1", "nan"):
        with pytest.raises(SystemExit):
            main(["calibrate", str(card_path), str(labels), "--results", str(results), "--max-fpr", rate])
    from deepscan.evaluate import calibrate

    with pytest.raises(ValueError, match="max_fpr"):
        calibrate(card_path, labels, results_path=results, max_fpr=5)
    assert card_path.read_text() == before
    assert main(["calibrate", str(card_path), str(labels), "--results", str(results), "--max-fpr", "0"]) == 0


def test_calibrate_refuses_clips_it_could_not_screen_and_scans_made_otherwise(tmp_path):
    """An error record entered the fit as a real clip scoring 0 (a reviewer's rescore: 0.891 -> 0.654 from one
    real clip); lines scanned with other settings (the fixed sample schedule before session 53, another face
    search) were fitted on as if scanned by default. Both are refused now; the card stays as it was."""
    from deepscan.evaluate import calibrate

    files = [f"src/real{i}.mp4" for i in range(20)] + ["src/fake0.mp4", "src/fake1.mp4"]
    card_path, card, labels = _card_with_split(tmp_path, files)
    model = {"sha256": card.sha256, "card_hash": card_hash(card)}
    results = tmp_path / "results.jsonl"

    def write(lines):
        results.write_text("".join(json.dumps(d) + "\n" for d in lines))

    ok = [{"path": str(tmp_path / f), "score": 0.04 * i, "status": "ok", "model": model, "config": SCANNED_AS}
          for i, f in enumerate(files)]
    before = card_path.read_text()
    write(ok[:19] + [{**ok[19], "score": None, "status": "error", "error": "not a video"}] + ok[20:])
    with pytest.raises(ValueError, match=r"1 of 22 validation clips could not be screened .*real19\.mp4 \(not a video"):
        calibrate(card_path, labels, results_path=results)
    fixed_schedule = {k: v for k, v in SCANNED_AS.items() if k != "sampling"}
    for config in (fixed_schedule, {**SCANNED_AS, "full_detect_every": 1}):
        write([{**d, "config": config} for d in ok])
        with pytest.raises(ValueError, match=r"22 of 22 validation clips have no score from this card"):
            calibrate(card_path, labels, results_path=results)
    assert card_path.read_text() == before
    write([{**d, "config": {**SCANNED_AS, "threshold": 0.5}} for d in ok])  # another threshold scores alike
    assert calibrate(card_path, labels, results_path=results)["missing"] == 0


def test_eval_of_results_pairs_on_the_clips_both_judged_and_refuses_two_detectors_in_one_file(tmp_path, capsys):
    """A clip one detector could not screen (an error record) made the paired difference vanish without a
    word; one results.jsonl holding two detectors' scans (`deepscan scan --out` appends) was scored as one,
    judged at the last line's threshold under the first line's name."""
    n = 30
    labels = tmp_path / "labels.tsv"
    labels.write_text("file\tlabel\n" + "".join(f"../clips/src/c{i}.mp4\t{'fake' if i % 2 else 'real'}\n"
                                                for i in range(n)))
    (tmp_path / "lists").mkdir()
    labels = labels.rename(tmp_path / "lists" / "labels.tsv")
    lines = {}
    for name, separation in (("a", 0.3), ("b", 0.6)):
        lines[name] = [{"path": str(tmp_path / f"clips/src/c{i}.mp4"), "score": min(0.99, 0.3 + separation * (i % 2)
                        + 0.01 * (i % 7)), "status": "ok", "model": {"name": name, "threshold": 0.5}}
                       for i in range(n)]
    lines["b"][4] = {**lines["b"][4], "score": None, "status": "error", "error": "not a video"}
    for name in lines:
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines[name]))
    out = tmp_path / "out"
    assert main(["eval", str(labels), "--results", str(tmp_path / "a.jsonl"), "--results", str(tmp_path / "b.jsonl"),
                 "--out", str(out)]) == 0
    first, second = json.loads((out / "metrics.json").read_text())["detectors"]
    pair = second["paired_with_first"]
    assert (pair["n_clips"], pair["left_out"]) == (29, 1) and "on 29 clips" in capsys.readouterr().out
    assert [row["source"] for row in first["per_source"]] == ["clips"]  # not "..", the labels' way up
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(d) + "\n" for d in lines["a"][:15] + lines["b"][15:]))
    assert main(["eval", str(labels), "--results", str(mixed)]) == 2
    assert "2 different detectors or scan settings (15 by a at None, config ; 15 by b" in capsys.readouterr().err
    # One --dedupe scan: its inherited copies carry the representative's config hash + "+campaign".
    one_scan = [{**d, "config_hash": "abc" + ("+campaign" if i % 3 else "")} for i, d in enumerate(lines["a"])]
    mixed.write_text("".join(json.dumps(d) + "\n" for d in one_scan))
    assert main(["eval", str(labels), "--results", str(mixed)]) == 0


def test_eval_says_when_a_threshold_was_chosen_on_the_clips_it_is_rated_on(tmp_path, capsys):
    """Training and calibrate choose a card's threshold on its validation split: the FPR eval printed there was
    quoted as held out."""
    card = resolve_card(None)
    chosen_on = sorted(card.training["validation_files"])[:10]
    others = [f"elsewhere/c{i}.mp4" for i in range(6)]
    labels = tmp_path / "MANIFEST.tsv"
    files = chosen_on + others
    labels.write_text("file\tlabel\n" + "".join(f"{f}\t{'fake' if k % 2 else 'real'}\n" for k, f in enumerate(files)))
    model = {"name": card.name, "sha256": card.sha256, "threshold": card.threshold}
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps({"path": str(tmp_path / f), "score": 0.1 + 0.05 * k, "status": "ok",
                                           "model": model}) + "\n" for k, f in enumerate(files)))
    out = tmp_path / "out"
    assert main(["eval", str(labels), "--results", str(results), "--out", str(out)]) == 0
    entry = json.loads((out / "metrics.json").read_text())["detectors"][0]
    assert entry["at_threshold"]["fitted_on_clips"] == 10
    assert "threshold was chosen on 10 of these 16 clips" in capsys.readouterr().out
    # Another model's lines under the same name: nothing is said of the card's split.
    results.write_text(results.read_text().replace(card.sha256, "0" * 64))
    assert main(["eval", str(labels), "--results", str(results), "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["detectors"][0]["at_threshold"]["fitted_on_clips"] == 0
