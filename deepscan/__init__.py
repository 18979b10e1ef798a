"""deepscan: deepfake video screening — decode, find faces, score manipulation, report."""

from __future__ import annotations

import os

# Must precede the first torch import: busy-waiting OpenMP threads stall badly on a loaded 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .results import FaceResult, FrameResult, TrackResult, VideoResult  # noqa: E402
from .scanner import Scanner, ScanOptions, scan  # noqa: E402

__all__ = ["FaceResult", "FrameResult", "ScanOptions", "Scanner", "TrackResult", "VideoResult", "__version__",
           "scan"]
