"""Faces rendered by a small face autoencoder, as a self-blend's source (``train.sbi_p_recon``).

DeepFaceLab and DeepFaceLive (the labelled swaps' tool) replace a face with the output of an autoencoder's
decoder: a convolutional encoder, a dense bottleneck, and a decoder that upsamples by pixel shuffle, trained per
identity at 128-224 pixels and pasted back into the frame; talking-head renderers (SadTalker's face-vid2vid)
likewise draw the face with a learnt decoder at 256 pixels. A self-blend's source is the face itself with its
colour or frequency content changed, so nothing in training shows the texture a decoder leaves. Here a miniature
of that autoencoder (:func:`build_autoencoder`) is trained on the training split's real faces only, and each
training real's face is replaced, inside its blend mask, by its reconstruction: a pseudo-fake with a decoder's
rendering of the same person in the same frame, from real footage alone (as DRCT, Chen et al. ICML 2024, trains
on generator reconstructions of real images).

``deepscan recon CONFIG`` trains the autoencoder, seeded by the split seed, on the config's training reals and writes
one ``<id>.npz`` per training real into ``<cache_dir>/recon/<key>/`` (``key`` names the clips and settings, so
another split or seed gets its own) with the reconstructed face patches and where they sit in the context crop.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .sbi import BLEND_RATIOS, _warp, blend_into, colour_jitter, random_mask, random_sharpen

# The decoder renders this many pixels a side, as DeepFaceLab's default resolution does; the face it replaces is
# larger in the cached context crops, so the render is upsampled as a swap tool's is when pasted back.
RECON_SIZE = 128
# The patch is a square about the face box, this many box sides wide: it holds every blend mask (the face's
# outline sits inside the box), and its feathered edge falls outside them.
REGION_SCALE = 1.3
FEATHER = 0.08  # of the patch side: the ramp of the patch's own paste weight


@dataclass(frozen=True)
class AutoencoderSettings:
    width: int = 32  # channels of the first encoder stage; doubled at each of the four
    latent: int = 256  # the dense bottleneck (DeepFaceLab's ae_dims)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    num_threads: int = 2


def recon_key(train_files: list[str], seed: int, settings: AutoencoderSettings) -> str:
    """Names the reconstructions of these training reals by this seed and settings (their directory)."""
    learnt = {k: v for k, v in asdict(settings).items() if k != "num_threads"}
    text = json.dumps({"files": sorted(train_files), "seed": seed, "settings": learnt,
                       "size": RECON_SIZE, "region": REGION_SCALE})
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def face_region(box: np.ndarray) -> np.ndarray:
    """(x0, y0, side) of the square patch about ``box`` in context-crop pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = REGION_SCALE * max(x2 - x1, y2 - y1)
    return np.array([(x1 + x2 - side) / 2, (y1 + y2 - side) / 2, side], np.float32)


def _patch_to_crop(region: np.ndarray) -> np.ndarray:
    x0, y0, side = (float(v) for v in region)
    k = side / RECON_SIZE
    return np.array([[k, 0, x0], [0, k, y0]], np.float32)


def face_patch(img: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The square ``region`` of ``img`` resampled to the decoder's size (reflected where it leaves the crop)."""
    x0, y0, side = (float(v) for v in region)
    n = max(1, int(round(side)))
    shift = np.array([[n / side, 0, -x0 * n / side], [0, n / side, -y0 * n / side]], np.float32)
    square = cv2.warpAffine(np.ascontiguousarray(img), shift, (n, n), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT101)
    # Area averaging: the decoder should see the face as a low-resolution swap's encoder does, not aliased.
    return cv2.resize(square, (RECON_SIZE, RECON_SIZE), interpolation=cv2.INTER_AREA)


def paste_patch(img: np.ndarray, patch: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``patch`` upsampled back into ``region`` of ``img`` through a feathered square: (the image, the paste
    weight in [0, 1], float32 HxW). Pixels of weight 0 are exactly ``img``'s."""
    h, w = img.shape[:2]
    matrix = _patch_to_crop(region)
    up = cv2.warpAffine(np.ascontiguousarray(patch), matrix, (w, h), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT)
    ramp = np.minimum(np.arange(RECON_SIZE) + 0.5, RECON_SIZE - 0.5 - np.arange(RECON_SIZE))
    ramp = np.clip(ramp / (FEATHER * RECON_SIZE), 0.0, 1.0).astype(np.float32)
    weight = cv2.warpAffine(np.outer(ramp, ramp), matrix, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT)
    weight[weight < 1 / 512] = 0.0
    return blend_into(img, up, weight), weight


def recon_blend(img: np.ndarray, landmarks: np.ndarray, recon: np.ndarray, region: np.ndarray,
                rng: np.random.Generator, dense: np.ndarray | None = None,
                p_box: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A self-blend whose source is the autoencoder's rendering of this face (``recon`` in ``region``), its colour
    changed half the time and sharpened half the time, shifted as :func:`sbi.self_blend`'s source is, through the
    same random masks and blend ratios. Returns the blended uint8 image and the blend weight: pixels of weight 0
    are exactly ``img``'s."""
    img = np.ascontiguousarray(img)
    source, pasted = paste_patch(img, recon, region)
    if rng.random() < 0.5:
        source = colour_jitter(source, rng)
    # A 2,000-step decoder renders softer than the face; sharpened half the time (SBI's own sharpening, as a swap
    # tool's merger offers), so softness alone does not mark these fakes.
    if rng.random() < 0.5:
        source = random_sharpen(source, rng)
    source = _warp(source, landmarks, rng)
    # Kept to the pasted patch (softly, by its feathered weight), so what the mask lets through is the rendering.
    mask = random_mask(img.shape, landmarks, rng, dense, p_box) * pasted * float(rng.choice(BLEND_RATIOS))
    return blend_into(img, source, mask), mask.astype(np.float32)


def _torch_modules():
    import torch
    from torch import nn

    return torch, nn


def build_autoencoder(settings: AutoencoderSettings):
    """DeepFaceLab's SAE layout in miniature: four stride-2 5x5 convolutions, a dense bottleneck, and four
    pixel-shuffle upsamplings to a sigmoid RGB image of ``RECON_SIZE`` pixels."""
    torch, nn = _torch_modules()
    w, side = settings.width, RECON_SIZE // 16

    def down(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 5, 2, 2), nn.LeakyReLU(0.1))

    def up(i, o):
        return nn.Sequential(nn.Conv2d(i, o * 4, 3, 1, 1), nn.LeakyReLU(0.1), nn.PixelShuffle(2))

    class FaceAutoencoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(down(3, w), down(w, 2 * w), down(2 * w, 4 * w), down(4 * w, 8 * w),
                                         nn.Flatten(), nn.Linear(8 * w * side * side, settings.latent))
            self.expand = nn.Linear(settings.latent, 8 * w * side * side)
            self.decoder = nn.Sequential(up(8 * w, 4 * w), up(4 * w, 2 * w), up(2 * w, w), up(w, w),
                                         nn.Conv2d(w, 3, 3, 1, 1), nn.Sigmoid())

        def forward(self, x):
            return self.decoder(self.expand(self.encoder(x)).view(-1, 8 * w, side, side))

    return FaceAutoencoder()


def _to_tensor(patches: np.ndarray):
    torch, _ = _torch_modules()
    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255.0)


def train_autoencoder(patches: np.ndarray, settings: AutoencoderSettings, seed: int, progress: bool = True):
    """The autoencoder fitted to ``patches`` (N, S, S, 3) uint8 by L1, with horizontal flips; (net, loss history
    of every 50 steps)."""
    torch, _ = _torch_modules()
    from rich.progress import Progress

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_autoencoder(settings)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    history, running = [], []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("training the face autoencoder", total=settings.steps)
        for step in range(settings.steps):
            pick = rng.integers(len(patches), size=settings.batch_size)
            batch = patches[pick]
            flip = rng.random(settings.batch_size) < 0.5
            batch[flip] = batch[flip, :, ::-1]
            x = _to_tensor(batch)
            with autocast:
                y = net(x)
            loss = (y.float() - x).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.append(loss.item())
            if (step + 1) % 50 == 0:
                history.append(round(float(np.mean(running)), 5))
                running = []
            bar.advance(task)
    return net.eval(), history


def reconstruct(net, patches: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The autoencoder's renderings of ``patches`` (N, S, S, 3) uint8, in fp32."""
    torch, _ = _torch_modules()
    out = []
    with torch.inference_mode():
        for i in range(0, len(patches), batch_size):
            y = net(_to_tensor(patches[i:i + batch_size]))
            out.append(np.rint(y.permute(0, 2, 3, 1).numpy() * 255.0).clip(0, 255).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, RECON_SIZE, RECON_SIZE, 3), np.uint8)


def recon_dir(cache_dir, key: str) -> Path:
    return Path(cache_dir) / "recon" / key


def write_reconstructions(cache_dir, clips, seed: int, settings: AutoencoderSettings,
                          progress: bool = True) -> dict:
    """Train the autoencoder on the face patches of ``clips`` (the training reals, :class:`data.ClipCrops`) and
    write each clip's reconstructions; returns the summary also written as ``recon.json`` beside them."""
    torch, _ = _torch_modules()
    torch.set_num_threads(int(settings.num_threads))
    t0 = time.time()
    regions = {c.id: np.stack([face_region(b) for b in c.boxes]) for c in clips}
    patches = {c.id: np.stack([face_patch(img, r) for img, r in zip(c.crops, regions[c.id], strict=True)])
               for c in clips}
    net, history = train_autoencoder(np.concatenate(list(patches.values())), settings, seed, progress)
    key = recon_key([c.file for c in clips], seed, settings)
    out = recon_dir(cache_dir, key)
    out.mkdir(parents=True, exist_ok=True)
    errors = []
    for c in clips:
        recon = reconstruct(net, patches[c.id])
        errors.append(np.abs(recon.astype(np.float32) - patches[c.id]).mean(axis=(1, 2, 3)))
        tmp = out / f"{c.id}.tmp.npz"
        np.savez(tmp, recon=recon, region=regions[c.id])
        tmp.replace(out / f"{c.id}.npz")
    summary = {"key": key, "seed": seed, "settings": asdict(settings), "size": RECON_SIZE,
               "region_scale": REGION_SCALE, "clips": sorted(c.file for c in clips),
               "faces": int(sum(len(p) for p in patches.values())), "loss_every_50_steps": history,
               "mean_abs_error": round(float(np.concatenate(errors).mean()), 3),
               "seconds": round(time.time() - t0, 1)}
    tmp = out / "recon.tmp.json"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out / "recon.json")
    return summary


def attach_reconstructions(cache_dir, clips, seed: int, settings: AutoencoderSettings) -> dict:
    """Load each clip's reconstructions into ``clip.recon`` / ``clip.recon_region``; their ``recon.json``
    summary. Renderings are looked up by the clips, seed and settings, so those of another split (an autoencoder
    that saw held-out faces) are never used."""
    key = recon_key([c.file for c in clips], seed, settings)
    out = recon_dir(cache_dir, key)
    if not (out / "recon.json").is_file():
        raise ValueError(f"train.sbi_p_recon: no face-autoencoder reconstructions for this split and seed in "
                         f"{out}; run `deepscan recon CONFIG` first")
    for c in clips:
        with np.load(out / f"{c.id}.npz") as z:
            if len(z["recon"]) != len(c.crops):
                raise ValueError(f"{out / (c.id + '.npz')}: {len(z['recon'])} reconstructions for "
                                 f"{len(c.crops)} cached faces (the clip was re-cached); run `deepscan recon` again")
            c.recon, c.recon_region = z["recon"], z["region"].astype(np.float32)
    return json.loads((out / "recon.json").read_text())
