"""Network architectures behind the detector interface, built from a model card and a weights file."""

from __future__ import annotations

from pathlib import Path

from ..card import ModelCard


def build_net(card: ModelCard, weights: Path):
    arch = card.architecture
    if arch in ("meso4", "mesoinception4"):
        from .mesonet import load_mesonet

        return load_mesonet(arch, weights)
    if arch.startswith("sbi-"):
        from .sbinet import load_sbinet  # EfficientNet-Lite and CLIP ViT alike

        return load_sbinet(card, weights)
    raise ValueError(f"unknown architecture {arch!r} in model card {card.name}")
