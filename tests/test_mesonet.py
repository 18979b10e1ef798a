"""MesoNet port: numerical agreement with an independent NumPy reading of the Keras graph, detector plumbing,
and behaviour of the four original weight files on real and face-swapped clips."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from deepscan.detector import load_detector
from deepscan.detector.nets.mesonet import KerasWeightsError, load_mesonet

SHARED = Path(os.environ.get("DEEPSCAN_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
WEIGHTS = SHARED / "weights" / "mesonet"
CLIPS = SHARED / "data" / "clips"

# card name → (architecture, original weight file)
MODELS = {
    "mesonet4-df": ("meso4", "Meso4_DF.h5"),
    "mesonet4-f2f": ("meso4", "Meso4_F2F.h5"),
    "mesoinception4-df": ("mesoinception4", "MesoInception_DF.h5"),
    "mesoinception4-f2f": ("mesoinception4", "MesoInception_F2F.h5"),
}

torch.set_num_threads(2)


def needs_weights(file_name: str) -> Path:
    path = WEIGHTS / file_name
    if not path.is_file():
        pytest.skip(f"shared MesoNet weights not available ({path})")
    return path


# --- Independent NumPy reference of the Keras graph ------------------------------------------------------
# Written from the Keras layer semantics (channels-last tensors, TF 'same' padding, BN inference formula,
# channels-last Flatten), reading weights by Keras layer *creation number* rather than file order, so that it
# shares neither code nor the layer-matching rule with the port.


def read_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with h5py.File(path, "r") as fh:
        out = {}
        for name, group in fh.items():
            names = [w.decode() for w in group.attrs["weight_names"]]
            if names:
                out[name] = {re.sub(r".*/|:0$", "", w): group[w][()].astype(np.float64) for w in names}
        return out


def by_number(layers: dict, prefix: str) -> list[dict[str, np.ndarray]]:
    names = [n for n in layers if re.fullmatch(rf"{prefix}_\d+", n)]
    return [layers[n] for n in sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))]


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same': output ceil(size / stride); the odd padding pixel goes after, not before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def np_conv_relu(x: np.ndarray, w: dict, dilation: int = 1) -> np.ndarray:
    kernel, bias = w["kernel"], w["bias"]  # (kh, kw, in, out)
    kh, kw = kernel.shape[:2]
    n, h, wd, _ = x.shape
    pt, pb = same_pads(h, (kh - 1) * dilation + 1, 1)
    pl, pr = same_pads(wd, (kw - 1) * dilation + 1, 1)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.broadcast_to(bias, (n, h, wd, kernel.shape[3])).copy()
    for i, j in itertools.product(range(kh), range(kw)):
        out += xp[:, i * dilation : i * dilation + h, j * dilation : j * dilation + wd, :] @ kernel[i, j]
    return np.maximum(out, 0.0)


def np_batchnorm(x: np.ndarray, w: dict, eps: float = 1e-3) -> np.ndarray:
    return w["gamma"] * (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + eps) + w["beta"]


def np_maxpool(x: np.ndarray, pool: int) -> np.ndarray:
    n, h, wd, c = x.shape
    pt, pb = same_pads(h, pool, pool)
    pl, pr = same_pads(wd, pool, pool)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
    hp, wp = xp.shape[1] // pool, xp.shape[2] // pool
    return xp.reshape(n, hp, pool, wp, pool, c).max(axis=(2, 4))


def np_inception(x: np.ndarray, convs: list[dict]) -> np.ndarray:
    # creation order in MesoNet's InceptionLayer: x1 1×1; x2 1×1, 3×3; x3 1×1, 3×3 d2; x4 1×1, 3×3 d3
    b1 = np_conv_relu(x, convs[0])
    b2 = np_conv_relu(np_conv_relu(x, convs[1]), convs[2])
    b3 = np_conv_relu(np_conv_relu(x, convs[3]), convs[4], dilation=2)
    b4 = np_conv_relu(np_conv_relu(x, convs[5]), convs[6], dilation=3)
    return np.concatenate([b1, b2, b3, b4], axis=-1)


def keras_reference(arch: str, path: Path, x_nhwc: np.ndarray) -> np.ndarray:
    """Pre-sigmoid Keras output (the real logit) for NHWC inputs in [0, 1]."""
    layers = read_layers(path)
    convs = by_number(layers, "conv2d")
    bns = by_number(layers, "batch_normalization")
    dense = by_number(layers, "dense")
    x = x_nhwc.astype(np.float64)
    if arch == "meso4":
        for conv, bn, pool in zip(convs, bns, (2, 2, 2, 4), strict=True):
            x = np_maxpool(np_batchnorm(np_conv_relu(x, conv), bn), pool)
    else:
        x = np_maxpool(np_batchnorm(np_inception(x, convs[0:7]), bns[0]), 2)
        x = np_maxpool(np_batchnorm(np_inception(x, convs[7:14]), bns[1]), 2)
        x = np_maxpool(np_batchnorm(np_conv_relu(x, convs[14]), bns[2]), 2)
        x = np_maxpool(np_batchnorm(np_conv_relu(x, convs[15]), bns[3]), 4)
    x = x.reshape(len(x), -1)  # Keras Flatten on channels-last
    x = x @ dense[0]["kernel"] + dense[0]["bias"]
    x = np.where(x > 0, x, 0.1 * x)
    return (x @ dense[1]["kernel"] + dense[1]["bias"])[:, 0]


def port_logits(net: torch.nn.Module, x_nhwc: np.ndarray, dtype=torch.float32) -> np.ndarray:
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).to(dtype)
    with torch.no_grad():
        return net.to(dtype)(x).numpy().astype(np.float64)


def random_inputs(seed: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 256, 256, 3), dtype=np.float32)


# --- Synthetic Keras 2.1.5 weight files (no shared data needed) -----------------------------------------


def keras_layout(arch: str, first: int = 5) -> list[tuple[str, tuple | None]]:
    """(layer name, kernel shape or None) in the file order Keras 2.1.5 writes; names numbered from ``first``."""
    layers: list[tuple[str, tuple | None]] = [("input_2", None)]
    if arch == "meso4":
        for k, (kernel, cin, cout) in enumerate([(3, 3, 8), (5, 8, 8), (5, 8, 16), (5, 16, 16)]):
            layers += [
                (f"conv2d_{first + k}", (kernel, kernel, cin, cout)),
                (f"batch_normalization_{first + k}", (cout,)),
                (f"max_pooling2d_{first + k}", None),
            ]
    else:
        conv, cin = first, 3
        for bn, (a, b, c, d) in enumerate([(1, 4, 4, 2), (2, 4, 4, 2)]):
            shapes = [
                (1, 1, cin, a),
                (1, 1, cin, b),
                (3, 3, b, b),
                (1, 1, cin, c),
                (3, 3, c, c),
                (1, 1, cin, d),
                (3, 3, d, d),
            ]  # creation order
            for i in (1, 3, 5, 0, 2, 4, 6):  # Keras lists the depth-1 reductions first
                layers.append((f"conv2d_{conv + i}", shapes[i]))
            conv, cin = conv + 7, a + b + c + d
            layers += [
                (f"concatenate_{first + bn}", None),
                (f"batch_normalization_{first + bn}", (cin,)),
                (f"max_pooling2d_{first + bn}", None),
            ]
        for k, cin_k in enumerate((cin, 16)):
            layers += [
                (f"conv2d_{conv + k}", (5, 5, cin_k, 16)),
                (f"batch_normalization_{first + 2 + k}", (16,)),
                (f"max_pooling2d_{first + 2 + k}", None),
            ]
    return layers + [
        (f"flatten_{first}", None),
        (f"dropout_{first}", None),
        (f"dense_{first}", (1024, 16)),
        (f"dropout_{first + 1}", None),
        (f"dense_{first + 1}", (16, 1)),
    ]


def write_synthetic_h5(path: Path, arch: str, seed: int = 0, first: int = 5, break_layer: str | None = None):
    rng = np.random.default_rng(seed)
    layout = keras_layout(arch, first)
    with h5py.File(path, "w") as fh:
        fh.attrs["layer_names"] = np.array([n.encode() for n, _ in layout])
        fh.attrs["backend"], fh.attrs["keras_version"] = b"tensorflow", b"2.1.5"
        for name, shape in layout:
            group = fh.create_group(name)
            if shape is None:
                group.attrs["weight_names"] = np.array([], dtype=np.float64)
                continue
            if name.startswith("batch_normalization"):
                c = shape[0]
                weights = {
                    "gamma": rng.uniform(0.5, 1.5, c),
                    "beta": rng.normal(0, 0.2, c),
                    "moving_mean": rng.normal(0.3, 0.2, c),
                    "moving_variance": rng.uniform(0.2, 2.0, c),
                }
            else:
                fan_in = int(np.prod(shape[:-1]))
                weights = {
                    "kernel": rng.normal(0, np.sqrt(2 / fan_in), shape),
                    "bias": rng.normal(0, 0.1, shape[-1]),
                }
            if name == break_layer:
                weights["kernel"] = weights["kernel"][..., :-1]
            group.attrs["weight_names"] = np.array([f"{name}/{k}:0".encode() for k in weights])
            for key, value in weights.items():
                group.create_dataset(f"{name}/{key}:0", data=value.astype(np.float32))
    return path


# --- (a) numerical verification ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["meso4", "mesoinception4"])
def test_port_matches_numpy_reference_on_synthetic_weights(tmp_path, arch):
    # Name numbering starting at 3 (not 1 or 5) checks that matching does not depend on layer names.
    path = write_synthetic_h5(tmp_path / f"{arch}.h5", arch, seed=1, first=3)
    x = random_inputs(seed=2)
    ref = keras_reference(arch, path, x)
    net = load_mesonet(arch, path)
    np.testing.assert_allclose(port_logits(net, x, torch.float64), -ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(port_logits(net, x), -ref, atol=1e-4, rtol=0)
    assert np.abs(ref[0] - ref[1]) > 1e-3  # the check would be vacuous if inputs collapsed to one output


@pytest.mark.parametrize("name", sorted(MODELS))
def test_port_matches_numpy_reference_on_original_weights(name):
    arch, file_name = MODELS[name]
    path = needs_weights(file_name)
    x = random_inputs(seed=3)
    ref = keras_reference(arch, path, x)
    net = load_mesonet(arch, path)
    np.testing.assert_allclose(port_logits(net, x, torch.float64), -ref, atol=1e-8, rtol=0)
    np.testing.assert_allclose(port_logits(net, x), -ref, atol=1e-4, rtol=0)


def test_loader_rejects_wrong_architecture_and_shapes(tmp_path):
    inception = write_synthetic_h5(tmp_path / "inception.h5", "mesoinception4")
    with pytest.raises(KerasWeightsError, match="22 weighted layers"):
        load_mesonet("meso4", inception)
    broken = write_synthetic_h5(tmp_path / "broken.h5", "meso4", break_layer="conv2d_7")
    with pytest.raises(KerasWeightsError, match=r"conv2d_7: kernel has shape \(5, 5, 8, 15\)"):
        load_mesonet("meso4", broken)
    with pytest.raises(ValueError, match="unknown MesoNet architecture"):
        load_mesonet("meso5", inception)


def test_forward_shape_and_input_size_check(tmp_path):
    net = load_mesonet("meso4", write_synthetic_h5(tmp_path / "m.h5", "meso4"))
    assert net(torch.rand(3, 3, 256, 256)).shape == (3,)
    with pytest.raises(ValueError, match="256"):
        net(torch.rand(1, 3, 224, 224))


# --- (b) detector plumbing ------------------------------------------------------------------------------------


def check_detector_output(det, crops: np.ndarray) -> None:
    out = det.predict(crops)
    assert out.probs.shape == (len(crops),) and out.probs.dtype == np.float32
    assert np.all((out.probs >= 0) & (out.probs <= 1))
    assert out.heatmaps.shape == (len(crops), 256, 256)
    assert np.all((out.heatmaps >= 0) & (out.heatmaps <= 1)) and np.isfinite(out.heatmaps).all()
    # Grad-CAM maps are scaled to a peak of 1 per face unless nothing pushes towards "fake" at all
    assert all(h.max() == pytest.approx(1.0) or h.max() == 0 for h in out.heatmaps)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = torch.sigmoid(det.net.float()(x.contiguous())).numpy()
    np.testing.assert_allclose(out.probs, expected, atol=1e-5)


def test_detector_with_synthetic_weights(tmp_path):
    # A file name other than the card's skips the sha256 check, so the whole path runs without ../shared.
    weights = write_synthetic_h5(tmp_path / "synthetic_meso4.h5", "meso4", seed=4)
    det = load_detector("mesonet4-df", weights=weights, device="cpu")
    assert det.card.heatmap == "gradcam" and det.card.input_size == 256
    crops = np.random.default_rng(5).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    check_detector_output(det, crops)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_detector_with_original_weights(name):
    path = needs_weights(MODELS[name][1])
    det = load_detector(name, weights=path, device="cpu")  # same file name as the card: sha256 is verified
    assert det.weights_sha256 == det.card.sha256
    crops = np.random.default_rng(6).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    check_detector_output(det, crops)


# --- (c) behaviour on real and swapped faces ----------------------------------------------------------------

PAIRS = ["Albica_Johns_0", "Ava_de_Addario_1", "Bryan_Greynolds_0"]


def decode_frames(path: Path, n_frames: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = []
        for index in np.linspace(0, total - 1, n_frames).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, bgr = cap.read()
            if ok:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return frames
    finally:
        cap.release()


def face_crops(paths: list[Path], margin: float, n_frames: int) -> np.ndarray:
    """Largest MTCNN face per frame, cut with the project's crop_face at MesoNet's 256² input."""
    from facenet_pytorch import MTCNN

    from deepscan.crops import crop_face

    mtcnn = MTCNN(keep_all=True, device="cpu")
    crops = []
    for path in paths:
        for frame in decode_frames(path, n_frames):
            boxes, probs = mtcnn.detect(frame)
            if boxes is None:
                continue
            keep = probs >= 0.95
            if not keep.any():
                continue
            boxes = boxes[keep]
            largest = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
            crops.append(crop_face(frame, largest, margin, 256))
    return np.stack(crops)


def score_real_and_fake(pairs: list[str], n_frames: int) -> dict[str, dict]:
    """Fake probability of every model on the original and swapped panel of each DeepFaceLive demo clip."""
    folder = CLIPS / "deepfacelive_split"
    dets = {name: load_detector(name, weights=WEIGHTS / MODELS[name][1], device="cpu") for name in MODELS}
    margins = {d.card.crop_margin for d in dets.values()}
    assert len(margins) == 1, "the four MesoNet cards should share one crop margin"
    margin = margins.pop()
    reals = face_crops([folder / f"{p}__left_original.mp4" for p in pairs], margin, n_frames)
    fakes = face_crops([folder / f"{p}__right_swapped.mp4" for p in pairs], margin, n_frames)
    results = {}
    for name, det in dets.items():
        real_scores, fake_scores = det.predict(reals).probs, det.predict(fakes).probs
        results[name] = {"real": real_scores, "fake": fake_scores}
    return results


@pytest.mark.slow
def test_original_weights_on_real_and_swapped_faces():
    for name in MODELS:
        needs_weights(MODELS[name][1])
    if not (CLIPS / "deepfacelive_split").is_dir():
        pytest.skip("shared clips not available")
    results = score_real_and_fake(PAIRS, n_frames=4)
    n_real, n_fake = len(results["mesonet4-df"]["real"]), len(results["mesonet4-df"]["fake"])
    assert n_real >= 8 and n_fake >= 8, "MTCNN should find a face in most of the sampled frames"
    vectors = {}
    for name, res in results.items():
        scores = np.concatenate([res["real"], res["fake"]])
        assert scores.std() > 1e-3, f"{name} gives (nearly) the same score to every face"
        vectors[name] = scores
        print(
            f"{name}: mean fake score real={res['real'].mean():.3f} (n={n_real}) "
            f"fake={res['fake'].mean():.3f} (n={n_fake})"
        )
    for a, b in itertools.combinations(vectors, 2):
        assert np.abs(vectors[a] - vectors[b]).max() > 1e-2, f"{a} and {b} score faces identically"


def test_empty_weights_argument_still_verifies_the_cards_own_weights(tmp_path):
    """`--weights ""` loads the weights beside the card, so their sha256 is checked as without --weights."""
    import shutil

    from deepscan.detector import WeightsMismatch, resolve_card

    card = resolve_card("mesonet4-df")
    shutil.copy(card.path, tmp_path / card.path.name)
    (tmp_path / card.weights).write_bytes(b"not the weights the card names")
    for weights in (None, ""):
        with pytest.raises(WeightsMismatch):
            load_detector(str(tmp_path / card.path.name), weights=weights, device="cpu")


def test_a_grad_cam_detector_records_no_heatmap_peak(tmp_path):
    """Grad-CAM maps are scaled to their own peak, so every face's heat_peak read 1.0 whatever its score."""
    from conftest import SAMPLE_CLIPS

    from deepscan import Scanner

    clip = SAMPLE_CLIPS / "astronaut_mouthwarp_fake.mp4"
    if not clip.is_file():
        pytest.skip("sample clips missing")
    weights = write_synthetic_h5(tmp_path / "synthetic_meso4.h5", "meso4", seed=4)
    result = Scanner(detector="mesonet4-df", weights=str(weights), frames=4, device="cpu").scan_video(clip)
    faces = [f for fr in result.frames for f in fr.faces]
    assert faces and all(f.heat_peak is None and f.heatmap.max() == pytest.approx(1.0, abs=1e-3) for f in faces)
    assert all("heat_peak" not in f for fr in result.to_dict()["frames"] for f in fr["faces"])
