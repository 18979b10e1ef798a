"""68-point landmarks in the crop cache and self-blends shaped by them (train.sbi_dense_landmarks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from test_training import CONTEXT, _write_config, make_cache, synthetic_face  # noqa: E402

from deepscan.detector.card import ModelCard  # noqa: E402
from deepscan.training.data import load_clips, load_index  # noqa: E402
from deepscan.training.landmarks68 import DEFAULT_PREDICTOR, disagreement, five_of_68, sidecar_path  # noqa: E402
from deepscan.training.sbi import landmark_mask, random_mask, self_blend  # noqa: E402
from deepscan.training.train import load_config, train  # noqa: E402


def layout68(five: np.ndarray, half: float = CONTEXT / 4) -> np.ndarray:
    """dlib's 68-point layout drawn around five MTCNN-style points (those of ``synthetic_face``): jaw, brows, nose,
    eyes and mouth, placed so that :func:`five_of_68` reads the five points back exactly."""
    left_eye, right_eye, nose, mouth_l, mouth_r = (np.asarray(p, np.float64) for p in five)
    cx, cy = (left_eye[0] + right_eye[0]) / 2, nose[1] - 0.15 * half
    t = np.pi - np.pi * np.arange(17) / 16  # from the left ear down round the chin to the right ear
    jaw = np.stack([cx + 0.8 * half * np.cos(t), cy - 0.1 * half + 0.95 * half * np.sin(t)], 1)
    brows = np.stack([np.r_[np.linspace(-0.55, -0.15, 5), np.linspace(0.15, 0.55, 5)] * half + cx,
                      np.full(10, cy - 0.4 * half)], 1)
    bridge = np.stack([np.full(4, nose[0]), np.linspace(cy - 0.2 * half, nose[1], 4)], 1)
    nostrils = np.stack([nose[0] + np.linspace(-0.12, 0.12, 5) * half, np.full(5, nose[1] + 0.07 * half)], 1)
    ring = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    eyes = [c + 0.1 * half * np.stack([np.cos(ring), np.sin(ring)], 1) for c in (left_eye, right_eye)]
    mouth_c, mouth_w = (mouth_l + mouth_r) / 2, np.linalg.norm(mouth_r - mouth_l) / 2
    outer_t, inner_t = np.pi - 2 * np.pi * np.arange(12) / 12, np.pi - 2 * np.pi * np.arange(8) / 8
    outer = mouth_c + np.stack([mouth_w * np.cos(outer_t), 0.1 * half * np.sin(outer_t)], 1)
    inner = mouth_c + np.stack([0.7 * mouth_w * np.cos(inner_t), 0.05 * half * np.sin(inner_t)], 1)
    return np.concatenate([jaw, brows, bridge, nostrils, *eyes, outer, inner]).astype(np.float32)


def test_five_of_68_reads_mtcnns_points_back_and_disagreement_is_in_eye_distances():
    _, _, five = synthetic_face(np.random.default_rng(0))
    points = layout68(five)
    assert points.shape == (68, 2)
    assert np.allclose(five_of_68(points), five, atol=1e-3)
    assert disagreement(points, five) < 1e-4
    iod = np.linalg.norm(five[1] - five[0])
    assert disagreement(points + [0.1 * iod, 0.0], five) == pytest.approx(0.1, abs=1e-4)


def test_dense_masks_follow_the_68_points_and_their_regions():
    img, _, five = synthetic_face(np.random.default_rng(1))
    points = layout68(five)
    face = landmark_mask(img.shape, five, "face", dense=points)
    inner = landmark_mask(img.shape, five, "inner", dense=points)
    lower = landmark_mask(img.shape, five, "lower", dense=points)

    def inside(mask, p):
        return mask[int(round(p[1])), int(round(p[0]))] > 0

    assert all(inside(face, p) for p in points[[0, 8, 16, 19, 24, 30]])  # jaw, chin, brows, nose
    forehead = (points[19] + points[24]) / 2 - [0, 0.3 * (points[8][1] - points[27][1])]
    assert inside(face, forehead)
    assert inside(inner, points[19]) and not inside(inner, points[8])  # brows to mouth, not the chin
    assert inside(lower, points[8]) and not inside(lower, points[38])  # chin, not the eyes
    # A jaw that is not where the five points suggest (a turned head) moves the mask with it.
    turned = points.copy()
    turned[:17, 0] += 0.3 * (points[16, 0] - points[0, 0])
    moved = landmark_mask(img.shape, five, "face", dense=turned)
    assert not np.array_equal(moved, face)
    assert inside(moved, turned[16]) and not inside(moved, points[0] + [2.0, 0.0])


def test_self_blend_with_68_points_marks_the_changed_pixels_and_draws_the_same_randomness():
    for seed in range(8):
        img, _, five = synthetic_face(np.random.default_rng(seed))
        points = layout68(five)
        rng_dense, rng_five = np.random.default_rng(seed), np.random.default_rng(seed)
        blended, mask = self_blend(img, five, rng_dense, dense=points)
        self_blend(img, five, rng_five)
        assert rng_dense.random() == rng_five.random()  # an option that changes shapes, not the random stream
        changed = np.any(blended != img, axis=2)
        assert changed.any() and not (changed & (mask == 0)).any()
        plain = random_mask(img.shape, five, np.random.default_rng(seed))
        dense = random_mask(img.shape, five, np.random.default_rng(seed), dense=points)
        assert not np.array_equal(plain, dense)


def _add_sidecars(cache: Path, fitted_every: int = 2) -> None:
    """68 points for every cached frame, NaN on all but every ``fitted_every``-th."""
    for clip in load_index(cache)["clips"]:
        with np.load(cache / clip["npz"]) as z:
            fives = z["landmarks"]
        points = np.stack([layout68(f) for f in fives])
        points[np.arange(len(points)) % fitted_every != 0] = np.nan
        np.save(sidecar_path(cache, clip), points)


def test_the_cache_loads_68_points_and_a_frame_without_them_falls_back(tmp_path):
    cache = make_cache(tmp_path, frames=4)
    clip_meta = load_index(cache)["clips"][0]
    assert load_clips(cache, [clip_meta])[0].dense_landmarks is None
    _add_sidecars(cache)
    clip = load_clips(cache, [clip_meta])[0]
    assert clip.dense_landmarks.shape == (4, 68, 2)
    assert clip.dense_at(0) is not None and clip.dense_at(1) is None


def test_a_run_with_dense_landmarks_needs_them_and_its_card_counts_them(tmp_path):
    cache = make_cache(tmp_path / "c", frames=4)
    config = _write_config(tmp_path / "run", cache, max_steps=4, sbi_dense_landmarks=True)
    with pytest.raises(ValueError, match="deepscan landmarks"):
        train(config, progress=False)
    _add_sidecars(cache, fitted_every=2)
    card = ModelCard.load(train(config, progress=False))
    assert card.training["config"]["train"]["sbi_dense_landmarks"] is True
    train_reals = card.training["crops"]["train_real"]
    assert train_reals and card.training["crops"]["train_real_dense_landmarks"] == train_reals // 2
    assert card.training["dense_landmarks"] is None  # the synthetic cache's index names no predictor


def test_the_option_must_be_a_boolean(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[train]\nmax_steps = 5\nsbi_dense_landmarks = 1\n')
    with pytest.raises(ValueError, match="sbi_dense_landmarks is true or false"):
        load_config(path)


def test_rebuilding_the_cache_keeps_the_landmark_summary_only_while_every_sidecar_matches(tmp_path):
    from deepscan.training.cache import build_cache

    clips = Path(__file__).resolve().parents[1] / "sample_clips"
    manifest = tmp_path / "MANIFEST.tsv"
    manifest.write_text("file\tlabel\n" + "".join(f"sample/{n}\treal\n" for n in ("astronaut_real.mp4",
                                                                                   "carphone_real.mp4")))
    (tmp_path / "sample").symlink_to(clips)
    cache = tmp_path / "crops"
    index = build_cache(manifest, cache, frames_per_clip=2, progress=False)
    assert "dense_landmarks" not in index and all(c["n_crops"] for c in index["clips"])
    for clip in index["clips"]:
        np.save(sidecar_path(cache, clip), np.full((clip["n_crops"], 68, 2), np.nan, np.float32))
    summary = {"predictor": "p.dat", "frames": sum(c["n_crops"] for c in index["clips"]), "fitted": 0}
    (cache / "index.json").write_text(json.dumps({**index, "dense_landmarks": summary}))

    assert build_cache(manifest, cache, frames_per_clip=2, progress=False)["dense_landmarks"] == summary
    assert json.loads((cache / "index.json").read_text())["dense_landmarks"] == summary
    assert build_cache(manifest, cache, frames_per_clip=2, limit=1, progress=False).get("dense_landmarks") is None
    (cache / "index.json").write_text(json.dumps({**index, "dense_landmarks": summary}))
    sidecar_path(cache, index["clips"][1]).unlink()
    assert "dense_landmarks" not in build_cache(manifest, cache, frames_per_clip=2, progress=False)
    # A clip cut again (here: its index predates frame_sampling) loses its sidecar, though it has as many faces
    # as before: its points belong to the frames cut before.
    np.save(sidecar_path(cache, index["clips"][1]), np.full((index["clips"][1]["n_crops"], 68, 2), np.nan, np.float32))
    legacy = {k: v for k, v in index.items() if k != "frame_sampling"}
    legacy["clips"] = [{k: v for k, v in c.items() if k != "cached_with"} for c in index["clips"]]
    (cache / "index.json").write_text(json.dumps({**legacy, "dense_landmarks": summary}))
    recut = build_cache(manifest, cache, frames_per_clip=2, progress=False)
    assert [c["n_crops"] for c in recut["clips"]] == [c["n_crops"] for c in index["clips"]]
    assert not any(sidecar_path(cache, c).exists() for c in recut["clips"]) and "dense_landmarks" not in recut


def test_a_stale_sidecar_is_not_used_and_is_refitted_while_fitting_ones_are_kept(tmp_path, monkeypatch):
    from deepscan.training import landmarks68

    cache = make_cache(tmp_path, frames=4)
    _add_sidecars(cache, fitted_every=1)
    clips = load_index(cache)["clips"]
    stale, kept = clips[0], clips[1]
    np.save(sidecar_path(cache, stale), np.load(sidecar_path(cache, stale))[:3])  # as if re-cached with 4 faces
    with pytest.warns(UserWarning, match="re-cached"):
        assert load_clips(cache, [stale])[0].dense_landmarks is None
    assert not landmarks68.sidecar_fits(cache, stale) and landmarks68.sidecar_fits(cache, kept)
    assert landmarks68.sidecar_fits(cache, {**kept, "n_crops": 4}) and not landmarks68.sidecar_fits(
        cache, {**kept, "n_crops": 5})

    fitted_boxes = []
    predictor = tmp_path / "predictor.dat"
    predictor.write_bytes(b"stand-in")

    class StandIn:  # dlib's fit replaced by the synthetic layout, so the refit runs without dlib
        def __init__(self, path):
            self.predictor_path = Path(path)

        def __call__(self, image, box, five):
            fitted_boxes.append(tuple(box))
            return layout68(five)

    monkeypatch.setattr(landmarks68, "DenseLandmarker", StandIn)
    kept_before = sidecar_path(cache, kept).stat().st_mtime_ns
    done = landmarks68.add_dense_landmarks(cache, predictor, progress=False)
    assert len(fitted_boxes) == 4  # only the stale clip's four faces were fitted again
    assert sidecar_path(cache, kept).stat().st_mtime_ns == kept_before
    refitted = load_clips(cache, [stale])[0]
    assert refitted.dense_landmarks.shape == (4, 68, 2) and all(refitted.dense_at(k) is not None for k in range(4))
    assert done["frames"] == done["fitted"] == 4 * len(clips)


@pytest.mark.skipif(not DEFAULT_PREDICTOR.is_file(), reason="dlib's shape predictor (Debian libdlib-data) absent")
def test_dlib_fits_68_points_that_agree_with_mtcnn_on_a_real_face(tmp_path):
    pytest.importorskip("dlib")
    from deepscan.training.cache import build_cache
    from deepscan.training.landmarks68 import add_dense_landmarks

    shared = Path(os.environ.get("DEEPSCAN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    manifest = shared / "data/clips/MANIFEST.tsv"
    if not manifest.is_file():
        pytest.skip("../shared clips absent")
    lines = manifest.read_text().splitlines()
    one = tmp_path / "MANIFEST.tsv"
    katie = [line for line in lines if line.startswith("hdtf_via_sadtalker/WDA_KatieHill")]
    one.write_text("\n".join([lines[0], *katie]))
    (tmp_path / "hdtf_via_sadtalker").symlink_to(manifest.parent / "hdtf_via_sadtalker")
    build_cache(one, tmp_path / "crops", frames_per_clip=4, progress=False)
    done = add_dense_landmarks(tmp_path / "crops", progress=False)
    assert done["frames"] == 4 and done["fitted"] >= 3
    index = json.loads((tmp_path / "crops/index.json").read_text())
    assert index["dense_landmarks"]["fitted"] == done["fitted"]
    clip = load_clips(tmp_path / "crops", index["clips"])[0]
    for k in range(len(clip.crops)):
        points = clip.dense_at(k)
        if points is None:
            continue
        assert disagreement(points, clip.landmarks[k]) < 0.15
        mouth = (clip.landmarks[k][3] + clip.landmarks[k][4]) / 2
        assert points[8][1] > mouth[1]  # the chin sits below the mouth


def test_rebuilding_the_cache_recuts_only_clips_cut_another_way(tmp_path, monkeypatch):
    import deepscan.video
    from deepscan.training.cache import FRAME_SAMPLING, build_cache

    clips = Path(__file__).resolve().parents[1] / "sample_clips"
    (tmp_path / "sample").symlink_to(clips)
    manifest = tmp_path / "MANIFEST.tsv"
    names = ("astronaut_real.mp4", "carphone_real.mp4")

    def write_manifest(labels):
        manifest.write_text("file\tlabel\n" + "".join(f"sample/{n}\t{lab}\n" for n, lab in zip(names, labels, strict=True)))

    decoded = []
    real_iter_frames = deepscan.video.iter_frames

    def counting_iter_frames(path, *args, **kwargs):
        decoded.append(Path(path).name)
        return real_iter_frames(path, *args, **kwargs)

    monkeypatch.setattr(deepscan.video, "iter_frames", counting_iter_frames)
    cache = tmp_path / "crops"
    write_manifest(("real", "real"))
    index = build_cache(manifest, cache, frames_per_clip=2, progress=False)
    assert sorted(decoded) == sorted(names) and index["frame_sampling"] == FRAME_SAMPLING
    decoded.clear()
    build_cache(manifest, cache, frames_per_clip=2, progress=False)
    assert decoded == []  # nothing changed: every clip kept
    # A relabelled clip is cut again (a fake keeps only its largest face per frame); the other is kept.
    write_manifest(("real", "fake"))
    build_cache(manifest, cache, frames_per_clip=2, progress=False)
    assert decoded == ["carphone_real.mp4"]
    decoded.clear()
    # An index from before clips recorded how they were cut: its own settings decide. The same settings keep the
    # crops; a cache sampled the older way (no frame_sampling recorded) is cut again.
    old = json.loads((cache / "index.json").read_text())
    for clip in old["clips"]:
        del clip["cached_with"]
    (cache / "index.json").write_text(json.dumps(old))
    build_cache(manifest, cache, frames_per_clip=2, progress=False)
    assert decoded == []
    del old["frame_sampling"]
    (cache / "index.json").write_text(json.dumps(old))
    build_cache(manifest, cache, frames_per_clip=2, progress=False)
    assert sorted(decoded) == sorted(names)
    decoded.clear()
    # Another frame count re-cuts everything.
    build_cache(manifest, cache, frames_per_clip=3, progress=False)
    assert sorted(decoded) == sorted(names)
