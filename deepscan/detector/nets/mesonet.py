"""MesoNet (Afchar et al., WIFS 2018) in PyTorch, loading the authors' Keras 2.1.5 ``.h5`` weight files.

The original models are Keras graphs (github.com/DariusAf/MesoNet, Apache-2.0). This port reproduces them
layer for layer and reads the HDF5 weight files with h5py, so TensorFlow is never needed. Keras conventions
that the port has to honour:

* every Conv2D has ``activation='relu'`` and ``padding='same'``; all kernels are odd, so 'same' is the
  symmetric padding ``dilation * (k - 1) / 2``; the order inside a block is conv → ReLU → BatchNorm → max-pool;
* BatchNormalization uses epsilon 1e-3 (PyTorch's default is 1e-5);
* Flatten runs over channels-last (H, W, C) activations; the first dense kernel's rows are permuted once at
  load time so that PyTorch's channels-first flatten feeds it the same numbers;
* the sigmoid output is P(real), so the fake logit this module returns is the negated pre-sigmoid output.

Weights are assigned the way Keras' ``load_weights`` does it (by topology): the file's weighted layers, in
its ``layer_names`` order, are matched one to one with this module's layers in the same order, every
layer's kind and every array's shape are checked, and any leftover or missing layer is an error. Layer
names are not used for matching because they differ between files (Keras numbers layers per session).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_SIZE = 256
BN_EPS = 1e-3
LEAKY_SLOPE = 0.1


class ConvBlock(nn.Module):
    """Keras Conv2D(relu, 'same') → BatchNormalization → MaxPooling2D(pool, 'same')."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, pool: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        # Keras 'same' pooling pads only when the size is not a multiple of the pool; at 256² input every
        # pooled size (256, 128, 64, 32) is, so plain floor pooling is exact.
        self.pool = nn.MaxPool2d(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.relu(self.conv(x))))


def _conv_relu(in_ch: int, out_ch: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=dilation * (kernel // 2), dilation=dilation), nn.ReLU()
    )


class InceptionLayer(nn.Module):
    """MesoInception's block: four branches concatenated on channels in the order 1×1, 3×3, 3×3 dil 2, dil 3."""

    def __init__(self, in_ch: int, a: int, b: int, c: int, d: int):
        super().__init__()
        self.branch1 = _conv_relu(in_ch, a, 1)
        self.branch2_reduce, self.branch2 = _conv_relu(in_ch, b, 1), _conv_relu(b, b, 3)
        self.branch3_reduce, self.branch3 = _conv_relu(in_ch, c, 1), _conv_relu(c, c, 3, dilation=2)
        self.branch4_reduce, self.branch4 = _conv_relu(in_ch, d, 1), _conv_relu(d, d, 3, dilation=3)
        self.out_channels = a + b + c + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1(x),
                self.branch2(self.branch2_reduce(x)),
                self.branch3(self.branch3_reduce(x)),
                self.branch4(self.branch4_reduce(x)),
            ],
            dim=1,
        )

    def keras_order(self) -> list[nn.Conv2d]:
        """Convolutions in the order Keras lists them: the three 1×1 reductions (depth 1), then the rest."""
        seqs = [
            self.branch2_reduce,
            self.branch3_reduce,
            self.branch4_reduce,
            self.branch1,
            self.branch2,
            self.branch3,
            self.branch4,
        ]
        return [s[0] for s in seqs]


class InceptionBlock(nn.Module):
    """Inception layer → BatchNormalization → MaxPooling2D(2)."""

    def __init__(self, in_ch: int, a: int, b: int, c: int, d: int):
        super().__init__()
        self.inception = InceptionLayer(in_ch, a, b, c, d)
        self.bn = nn.BatchNorm2d(self.inception.out_channels, eps=BN_EPS)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.inception(x)))


class MesoHead(nn.Module):
    """Flatten → Dropout(0.5) → Dense(16) → LeakyReLU(0.1) → Dropout(0.5) → Dense(1); returns the fake logit."""

    def __init__(self, in_features: int = 16 * 8 * 8):
        super().__init__()
        self.drop1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(in_features, 16)
        # As in the published classifiers.py. The Meso4 .h5 files list no LeakyReLU layer (MesoInception's do),
        # so their training graph may have differed here; docs/mesonet_port.md measures the effect.
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # channels-first order; fc1's columns were permuted to match at load time
        real_logit = self.fc2(self.drop2(self.act(self.fc1(self.drop1(x)))))
        return -real_logit[:, 0]


def _check_input(x: torch.Tensor) -> None:
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"MesoNet takes {INPUT_SIZE}×{INPUT_SIZE} crops, got {tuple(x.shape[-2:])}")


class _MesoNet(nn.Module):
    """What both MesoNets share: four blocks, the head, input checks and the Grad-CAM layer."""

    block4: nn.Module
    head: nn.Module

    @property
    def cam_layer(self) -> nn.Module:
        # Last conv block's ReLU output: 32×32 non-negative maps, the finest grid Grad-CAM can get from this
        # block (after the 4×4 pool only 8×8 is left).
        return self.block4.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        return self.head(self.block4(self.block3(self.block2(self.block1(x)))))


class Meso4(_MesoNet):
    """Four conv blocks (8, 8, 16, 16 filters; kernels 3, 5, 5, 5; pools 2, 2, 2, 4) and the MesoNet head."""

    def __init__(self):
        super().__init__()
        self.block1 = ConvBlock(3, 8, 3, 2)
        self.block2 = ConvBlock(8, 8, 5, 2)
        self.block3 = ConvBlock(8, 16, 5, 2)
        self.block4 = ConvBlock(16, 16, 5, 4)
        self.head = MesoHead()

    def keras_layers(self) -> list[nn.Module]:
        """Weighted layers in the order Keras 2.1.5 stores them."""
        layers: list[nn.Module] = []
        for block in (self.block1, self.block2, self.block3, self.block4):
            layers += [block.conv, block.bn]
        return layers + [self.head.fc1, self.head.fc2]


class MesoInception4(_MesoNet):
    """Inception blocks (1, 4, 4, 2) and (2, 4, 4, 2), two 5×5 conv blocks of 16, and the MesoNet head."""

    def __init__(self):
        super().__init__()
        self.block1 = InceptionBlock(3, 1, 4, 4, 2)
        self.block2 = InceptionBlock(self.block1.inception.out_channels, 2, 4, 4, 2)
        self.block3 = ConvBlock(self.block2.inception.out_channels, 16, 5, 2)
        self.block4 = ConvBlock(16, 16, 5, 4)
        self.head = MesoHead()

    def keras_layers(self) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for block in (self.block1, self.block2):
            layers += block.inception.keras_order() + [block.bn]
        for block in (self.block3, self.block4):
            layers += [block.conv, block.bn]
        return layers + [self.head.fc1, self.head.fc2]


ARCHITECTURES = {"meso4": Meso4, "mesoinception4": MesoInception4}
_KERAS_KIND = {nn.Conv2d: "conv2d", nn.BatchNorm2d: "batch_normalization", nn.Linear: "dense"}


class KerasWeightsError(ValueError):
    """The .h5 file does not hold the layers this architecture expects."""


def read_keras_h5(path: str | os.PathLike) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Weighted layers of a Keras HDF5 weights (or full model) file, in file order: (layer name, {weight: array})."""
    import h5py

    with h5py.File(path, "r") as fh:
        root = fh["model_weights"] if "model_weights" in fh else fh  # full-model saves nest the weights
        if "layer_names" not in root.attrs:
            raise KerasWeightsError(f"{path}: not a Keras weights file (no layer_names attribute)")
        layers = []
        for raw_name in root.attrs["layer_names"]:
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            group = root[name]
            weight_names = [
                w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs["weight_names"]
            ]
            if not weight_names:
                continue
            # 'conv2d_5/kernel:0' → 'kernel'
            arrays = {
                w.split("/")[-1].split(":")[0]: np.asarray(group[w], dtype=np.float32) for w in weight_names
            }
            layers.append((name, arrays))
        return layers


def _take(layer: str, arrays: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in arrays:
        raise KerasWeightsError(f"layer {layer}: no {key!r} weight (has {sorted(arrays)})")
    arr = arrays[key]
    if arr.shape != shape:
        raise KerasWeightsError(f"layer {layer}: {key} has shape {arr.shape}, expected {shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _assign(module: nn.Module, layer: str, arrays: dict[str, np.ndarray], flatten_hwc: tuple | None) -> None:
    used: set[str]
    with torch.no_grad():
        if isinstance(module, nn.Conv2d):
            out_ch, in_ch, kh, kw = module.weight.shape
            kernel = _take(layer, arrays, "kernel", (kh, kw, in_ch, out_ch))
            module.weight.copy_(kernel.permute(3, 2, 0, 1))  # (kh, kw, in, out) → (out, in, kh, kw)
            module.bias.copy_(_take(layer, arrays, "bias", (out_ch,)))
            used = {"kernel", "bias"}
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(_take(layer, arrays, "gamma", (c,)))
            module.bias.copy_(_take(layer, arrays, "beta", (c,)))
            module.running_mean.copy_(_take(layer, arrays, "moving_mean", (c,)))
            module.running_var.copy_(_take(layer, arrays, "moving_variance", (c,)))
            used = {"gamma", "beta", "moving_mean", "moving_variance"}
        elif isinstance(module, nn.Linear):
            kernel = _take(layer, arrays, "kernel", (module.in_features, module.out_features))
            if flatten_hwc is not None:
                # Keras rows run over (h, w, c); reorder them to the (c, h, w) order of torch.flatten on NCHW.
                h, w, c = flatten_hwc
                kernel = kernel.reshape(h, w, c, -1).permute(2, 0, 1, 3).reshape(h * w * c, -1)
            module.weight.copy_(kernel.T)
            module.bias.copy_(_take(layer, arrays, "bias", (module.out_features,)))
            used = {"kernel", "bias"}
        else:  # pragma: no cover - keras_layers() only lists the three kinds above
            raise TypeError(type(module).__name__)
    extra = set(arrays) - used
    if extra:
        raise KerasWeightsError(f"layer {layer}: unexpected weights {sorted(extra)}")


def load_mesonet(arch: str, weights_path: str | os.PathLike) -> nn.Module:
    """Build ``arch`` ("meso4" or "mesoinception4") and fill it from a Keras ``.h5`` file; returns it in eval mode."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown MesoNet architecture {arch!r} (expected one of {sorted(ARCHITECTURES)})")
    net = ARCHITECTURES[arch]()
    targets = net.keras_layers()
    stored = read_keras_h5(weights_path)
    name = Path(weights_path).name
    if len(stored) != len(targets):
        found = ", ".join(n for n, _ in stored)
        raise KerasWeightsError(
            f"{name}: {len(stored)} weighted layers ({found}), but {arch} has {len(targets)}; wrong architecture?"
        )
    for (layer, arrays), module in zip(stored, targets, strict=True):
        kind = _KERAS_KIND[type(module)]
        if not layer.startswith(kind):
            raise KerasWeightsError(f"{name}: layer {layer} found where {arch} expects a {kind} layer")
        flatten_hwc = (8, 8, 16) if module is net.head.fc1 else None
        try:
            _assign(module, layer, arrays, flatten_hwc)
        except KerasWeightsError as exc:
            raise KerasWeightsError(f"{name}: {exc}") from None
    return net.eval()
