"""Model cards: the preprocessing contract and provenance that travel with a detector's weights.

A card is a JSON file beside the weights (``models/<name>.json`` next to ``models/<name>.safetensors``).
Inference and training both read crop size, margin, mean/std and face-detector settings from it, never
from constants in code, so a model is always fed the way it was trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..results import is_number, json_safe

PRECISIONS = ("fp32", "bf16", "fp16")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def checked_precision(precision: str | None) -> str:
    """``precision`` as a scan takes it (None: "auto"); any other name ran bf16 and was judged at fp32's
    threshold, and was recorded as given, so it is refused."""
    if precision is None:
        return "auto"
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    return precision


def _finite(value) -> bool:
    return is_number(value) and math.isfinite(value)


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

    def __post_init__(self):
        # A card decides verdicts: a NaN threshold makes every fake "real", a negative temperature inverts every
        # score, and a card declaring another output would be read as a fake probability. Refused on loading.
        problems = []
        for key in ("name", "architecture", "weights"):  # a card named 123 broke `deepscan models`' sorting
            if not (isinstance(getattr(self, key), str) and getattr(self, key).strip()):
                problems.append(f"{key} must be non-empty text, not {getattr(self, key)!r}")
        # Read with .get/.items everywhere: one card of another shape in a models folder made every lookup by
        # name fail (AttributeError) instead of being passed over with a warning.
        for key in ("precision_thresholds", "training", "metrics", "extra"):
            if not isinstance(getattr(self, key), dict):
                problems.append(f"{key} must be an object, not {getattr(self, key)!r}")
                setattr(self, key, {})
        if not (isinstance(self.input_size, int) and not isinstance(self.input_size, bool) and self.input_size > 0):
            problems.append(f"input_size must be a positive whole number, not {self.input_size!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not (len(value) == 3 and all(_finite(v) for v in value)) or (key == "std" and min(value) <= 0):
                problems.append(f"{key} must be three (positive, for std) numbers, not {list(value)!r}")
        if not (_finite(self.crop_margin) and self.crop_margin >= 0):
            problems.append(f"crop_margin must be a number of at least 0, not {self.crop_margin!r}")
        for key, value in [("threshold", self.threshold),
                           *((f"precision_thresholds.{k}", v) for k, v in self.precision_thresholds.items())]:
            if not (_finite(value) and 0.0 <= value <= 1.0):
                problems.append(f"{key} must be a number from 0 to 1, not {value!r}")
        unknown = set(self.precision_thresholds) - set(PRECISIONS)
        if unknown:
            problems.append(f"precision_thresholds for unknown precisions {sorted(unknown)} (known: fp32, bf16, fp16)")
        if not (_finite(self.temperature) and self.temperature > 0):
            problems.append(f"temperature must be a positive number, not {self.temperature!r}")
        if not (_finite(self.uncertain_band) and 0.0 <= self.uncertain_band <= 1.0):
            problems.append(f"uncertain_band must be a number from 0 to 1, not {self.uncertain_band!r}")
        if self.output != "fake_probability":
            problems.append(f"output {self.output!r}: deepscan reads only fake_probability cards")
        if self.heatmap not in ("gradcam", "mask_head"):
            problems.append(f"heatmap must be gradcam or mask_head, not {self.heatmap!r}")
        if self.sha256 is not None and not (isinstance(self.sha256, str) and _SHA256.fullmatch(self.sha256)):
            problems.append(f"sha256 must be 64 lower-case hex digits, not {self.sha256!r}")
        if problems:
            raise ValueError("model card " + (self.name if isinstance(self.name, str) else "?") + ": "
                             + "; ".join(problems))

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
        # JSON has no NaN (a rate with no clips of a class): null, which every reader takes.
        path.write_text(json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n")
        self.path = path.resolve()

    def verify_weights(self, weights_path=None) -> str:
        """Hash the weights and refuse them when the card names a different sha256. Returns the hash."""
        target = Path(weights_path) if weights_path else self.weights_path
        if not target.is_file():
            raise FileNotFoundError(f"weights not found: {target}")
        if not self.sha256:
            # A card without a digest would load any file under its weights' name unchecked.
            raise WeightsMismatch(f"model card {self.name} names no sha256 for {target.name}; refusing to load "
                                  "weights it cannot vouch for")
        actual = sha256_file(target)
        if actual != self.sha256:
            raise WeightsMismatch(
                f"{target.name}: sha256 {actual[:16]}… does not match the model card's {self.sha256[:16]}…; "
                "refusing to load weights that are not the ones the card describes"
            )
        return actual
