"""Model cards: the preprocessing contract and provenance that travel with a detector's weights.

A card is a JSON file beside the weights (``models/<name>.json`` next to ``models/<name>.safetensors``).
Inference and training both read crop size, margin, mean/std and face-detector settings from it, never
from constants in code, so a model is always fed the way it was trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


class WeightsMismatch(RuntimeError):
    """The weights file's sha256 differs from the one its model card names."""


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FaceDetectorSettings:
    """MTCNN settings a model was trained with (crops from other settings shift the input distribution)."""

    min_prob: float = 0.95
    min_face_px: int = 40
    detect_max_side: int = 640
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)


@dataclass
class ModelCard:
    name: str
    architecture: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_margin: float
    weights: str  # file name, relative to the card
    sha256: str | None
    licence: str
    output: str = "fake_probability"  # sigmoid probability that the face is manipulated
    threshold: float = 0.5  # video score at or above which the verdict is "fake"
    # Thresholds for scores computed at another precision, where those scores differ from fp32's enough to
    # move the operating point (bf16 keeps 8 mantissa bits): fitted by ``deepscan calibrate --precision``.
    precision_thresholds: dict = field(default_factory=dict)
    uncertain_band: float = 0.1  # scores within [threshold - band, threshold) are "uncertain"
    temperature: float = 1.0  # logit / T before the sigmoid (calibration)
    heatmap: str = "gradcam"  # "mask_head" when the model predicts its own manipulation mask
    face_detector: FaceDetectorSettings = field(default_factory=FaceDetectorSettings)
    description: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)

    def threshold_for(self, precision: str) -> float:
        """The decision threshold for scores computed at ``precision`` (fp32's unless fitted for it)."""
        return float(self.precision_thresholds.get(precision, self.threshold))

    @property
    def weights_path(self) -> Path:
        base = self.path.parent if self.path else Path.cwd()
        return (base / self.weights).resolve()

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("path")
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["face_detector"]["thresholds"] = list(self.face_detector.thresholds)
        return data

    @classmethod
    def from_dict(cls, data: dict, path: Path | None = None) -> ModelCard:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and k != "path"}
        fd = dict(kwargs.get("face_detector") or {})
        if "thresholds" in fd:
            fd["thresholds"] = tuple(fd["thresholds"])
        kwargs["face_detector"] = FaceDetectorSettings(**fd)
        kwargs["mean"] = tuple(kwargs["mean"])
        kwargs["std"] = tuple(kwargs["std"])
        return cls(**kwargs, path=path)

    @classmethod
    def load(cls, path) -> ModelCard:
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text()), path=path.resolve())

    def save(self, path) -> None:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.path = path.resolve()

    def verify_weights(self, weights_path=None) -> str:
        """Hash the weights and refuse them when the card names a different sha256. Returns the hash."""
        target = Path(weights_path) if weights_path else self.weights_path
        if not target.is_file():
            raise FileNotFoundError(f"weights not found: {target}")
        actual = sha256_file(target)
        if self.sha256 and actual != self.sha256:
            raise WeightsMismatch(
                f"{target.name}: sha256 {actual[:16]}… does not match the model card's {self.sha256[:16]}…; "
                "refusing to load weights that are not the ones the card describes"
            )
        return actual
