"""Detector stage: face crops in, fake probability and a manipulation heatmap per face out.

Every model sits behind :class:`Detector`. A network module returns either the fake logit ``(N,)`` or a pair
``(fake_logit (N,), mask_logits (N, 1, h, w))``; a model without a mask head gets a Grad-CAM heatmap from the
layer it names as ``cam_layer``. Models are found by name in the registry (``deepscan models``) or by the path
of a model card JSON.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..crops import normalise
from .card import ModelCard, WeightsMismatch, checked_precision, sha256_file

__all__ = [
    "Detector",
    "DetectorOutput",
    "ModelCard",
    "WeightsMismatch",
    "available_models",
    "default_model_name",
    "load_detector",
    "resolve_card",
    "select_device",
    "find_cards",
    "CardWarning",
    "PrecisionWarning",
    "sha256_file",
]

PACKAGE_CARDS = Path(__file__).parent / "cards"
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def models_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("DEEPSCAN_MODELS"):
        dirs.append(Path(os.environ["DEEPSCAN_MODELS"]))
    dirs += [REPO_MODELS, PACKAGE_CARDS]
    return dirs


def shared_dir() -> Path:
    return Path(os.environ.get("DEEPSCAN_SHARED", "../shared"))


class PrecisionWarning(UserWarning):
    """A precision that works but costs far more than another would on this device."""


class CardWarning(UserWarning):
    """A file in a models folder that is meant as a model card but is passed over (it cannot be read)."""


def available_models() -> dict[str, Path]:
    """Model name → card path, for every card found (first directory wins on a name clash)."""
    return find_cards()[0]


def find_cards() -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """(name → card path, name → every card of the winning directory that claims it, where more than one do).

    A JSON file that is no card (no ``architecture`` and ``weights``) is passed over in silence; one that is
    meant as a card but does not load, or cannot be read as JSON at all (a card with a typo cannot say what it
    was meant as), is passed over with a warning, since a name it claims would otherwise quietly resolve to
    another directory's card."""
    found: dict[str, Path] = {}
    claims: dict[str, list[Path]] = {}
    for d in models_dirs():
        if not d.is_dir():
            continue
        here: dict[str, list[Path]] = {}
        for p in sorted(d.glob("*.json")):
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                warnings.warn(CardWarning(f"{p}: not read as a model card ({type(exc).__name__}: {exc})"), stacklevel=3)
                continue
            if not (isinstance(data, dict) and "architecture" in data and "weights" in data):
                continue
            try:
                name = ModelCard.from_dict(data, path=p.resolve()).name
            except (TypeError, ValueError, KeyError) as exc:
                warnings.warn(CardWarning(f"{p}: model card not loaded ({type(exc).__name__}: {exc})"), stacklevel=3)
                continue
            here.setdefault(name, []).append(p)
        for name, paths in here.items():
            if name not in found:
                found[name] = paths[0]
                if len(paths) > 1:
                    claims[name] = paths
    return found, claims


DEFAULT_MODEL = "deepscan-sbi-lite0"


def default_model_name() -> str:
    return os.environ.get("DEEPSCAN_DEFAULT_MODEL", DEFAULT_MODEL)


def resolve_card(name_or_path: str | None) -> ModelCard:
    name_or_path = name_or_path or default_model_name()
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        return ModelCard.load(p)
    models, ambiguous = find_cards()
    if name_or_path not in models:
        known = ", ".join(sorted(models)) or "none"
        raise KeyError(f"unknown detector {name_or_path!r} (known: {known})")
    if name_or_path in ambiguous:  # the first by file name used to win, silently (an older copy, say)
        raise KeyError(f"detector {name_or_path!r} is named by {len(ambiguous[name_or_path])} cards in "
                       f"{ambiguous[name_or_path][0].parent}: " + ", ".join(p.name for p in ambiguous[name_or_path])
                       + "; pass the card's path instead of its name")
    return ModelCard.load(models[name_or_path])


def find_weights(card: ModelCard, weights: str | os.PathLike | None = None) -> Path:
    """The weights file to load: an explicit path, else beside the card, else the shared weights folder."""
    if weights:
        return Path(weights)
    beside = card.weights_path
    if beside.is_file():
        return beside
    for sub in ("weights/mesonet", "weights"):
        cand = shared_dir() / sub / card.weights
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"weights for {card.name} not found ({card.weights}); pass --weights PATH "
        f"(looked beside the card and under {shared_dir()}/weights)"
    )


def select_device(device=None):
    """The torch device to run on: "auto" (or None) = CUDA when available, else the CPU; "cpu"; "cuda" or
    "cuda:N". Anything else, or a CUDA device this machine does not have, is refused here with what there is:
    torch's own errors surface only at the first tensor moved (and the "meta" device ran the detector on
    shapes alone, failing every video with an internal error)."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r}: deepscan runs on 'cpu', 'cuda' or 'cuda:N' (or 'auto')")
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: torch sees no CUDA device here (use 'cpu' or 'auto')")
        if chosen.index is not None and chosen.index >= count:
            raise ValueError(f"device {str(device)!r}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return chosen


@dataclass
class DetectorOutput:
    probs: np.ndarray  # (N,) float32 fake probability
    heatmaps: np.ndarray  # (N, h, w) float32 in [0, 1]


class Detector:
    """Batched inference around a network, its card, and a heatmap source."""

    def __init__(self, card: ModelCard, net, weights_sha256: str, device=None, precision: str = "auto",
                 batch_size: int = 64):
        import torch

        self.card = card
        self.weights_sha256 = weights_sha256
        self.device = select_device(device) if not isinstance(device, torch.device) else device
        self.net = net.to(self.device).eval()
        self.batch_size = batch_size
        self.precision = self._choose_precision(precision)
        if self.precision == "fp16" and self.device.type == "cpu":
            warnings.warn(PrecisionWarning(
                "fp16 on a CPU is emulated: 10-37x slower than fp32 (measured on 32 faces here), scores within "
                "0.006 of fp32's; on a CPU use bf16 (where it has bf16 instructions) or fp32"), stacklevel=3)
        # Channels-last convolutions: faster on CPUs and on GPU tensor cores alike (inputs are made to match).
        self.net = self.net.to(memory_format=torch.channels_last)

    def _choose_precision(self, precision: str | None) -> str:
        precision = checked_precision(precision)
        if precision != "auto":
            return precision
        # Half precision pays on GPUs; on CPUs with bf16 instructions bf16 autocast nearly halves the cost of
        # a forward pass (the card carries a threshold fitted on bf16 scores); elsewhere bf16 is emulated and
        # slower than fp32.
        if self.device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() and "bf16" in self.card.precision_thresholds else "fp32"

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def name(self) -> str:
        return self.card.name

    def preprocess(self, crops: np.ndarray):
        x = normalise(crops, self.card.mean, self.card.std)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.contiguous(memory_format=__import__("torch").channels_last)

    def predict(self, crops: np.ndarray) -> DetectorOutput:
        """Score uint8 RGB crops (N, S, S, 3) made by :func:`deepscan.crops.crop_face` at the card's size."""
        crops = np.asarray(crops)
        s = self.card.input_size
        if len(crops) == 0:
            return DetectorOutput(np.zeros((0,), np.float32), np.zeros((0, s, s), np.float32))
        if crops.ndim == 3:  # one crop: its rows were taken for a batch
            crops = crops[None]
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3):
            raise ValueError(f"{self.name} takes RGB crops of shape (N, {s}, {s}, 3), not {crops.shape}")
        n = len(crops)
        probs, maps = [], []
        for i in range(0, n, self.batch_size):
            p, m = self._predict_batch(crops[i : i + self.batch_size])
            probs.append(p)
            maps.append(m)
        return DetectorOutput(np.concatenate(probs), np.concatenate(maps))

    def _predict_batch(self, crops: np.ndarray):
        import torch

        x = self.preprocess(crops)
        if self.card.heatmap == "gradcam":
            from .gradcam import gradcam

            with self._autocast():
                logits, cam = gradcam(self.net, x)
            heat = cam
        else:
            with torch.inference_mode(), self._autocast():
                out = self.net(x)
            logits, mask_logits = out
            heat = torch.sigmoid(mask_logits.float())[:, 0]
            if heat.shape[-1] != x.shape[-1]:
                heat = torch.nn.functional.interpolate(
                    heat[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
        probs = torch.sigmoid(logits.float().reshape(-1) / self.card.temperature)
        return probs.cpu().numpy().astype(np.float32), heat.float().clamp_(0, 1).cpu().numpy().astype(np.float32)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), read from Linux's /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return not {"avx512_bf16", "amx_bf16"}.isdisjoint(flags.split())


def load_detector(name_or_path: str | None = None, weights=None, device=None, precision: str = "auto",
                  batch_size: int = 64) -> Detector:
    """Build a :class:`Detector` from a registry name or a card path; the weights' sha256 is checked first."""
    from .nets import build_net

    card = resolve_card(name_or_path)
    wpath = find_weights(card, weights)
    # A user-supplied file is checked against the card only when it is the same file name: --weights exists to
    # load other weights of the same architecture (for example another MesoNet training run). An empty weights
    # argument (`--weights ""`) means none: find_weights then loads the card's own file, which must be verified.
    if not weights or Path(weights).name == card.weights:
        digest = card.verify_weights(wpath)
    else:
        digest = sha256_file(wpath)
    try:
        net = build_net(card, wpath)
    except (FileNotFoundError, ImportError, MemoryError):  # the machine's trouble, not the file's
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' and h5py's own errors on a file of another kind
        raise ValueError(f"{wpath}: not weights of {card.name}'s architecture ({card.architecture}): "
                         f"{type(exc).__name__}: {exc}") from exc
    return Detector(card, net, digest, device=device, precision=precision, batch_size=batch_size)
