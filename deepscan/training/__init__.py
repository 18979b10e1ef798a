"""Training of deepscan's own detector: Self-Blended Images from the crop cache, with a blending-mask head.

``train(config_path)`` (see :mod:`deepscan.training.train`) is what ``deepscan train CONFIG`` runs.
"""

from __future__ import annotations


def train(config_path, resume: bool = True, overrides: dict | None = None, progress: bool = True):
    from .train import train as _train  # torch and timm load only when training is asked for

    return _train(config_path, resume=resume, overrides=overrides, progress=progress)


__all__ = ["train"]
