"""Grad-CAM (Selvaraju et al., 2017) for any convolutional detector without a mask head of its own.

The network names the convolutional layer to explain as ``net.cam_layer``. The map is the ReLU of the
activation channels weighted by the spatially averaged gradient of the *fake* logit, so it shows the regions
that push the score towards "fake", upsampled to the input size and scaled to [0, 1] per face.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gradcam(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (fake logits (N,), heatmaps (N, H, W) in [0, 1]) for a batch."""
    layer = getattr(net, "cam_layer", None)
    if layer is None:
        raise TypeError(f"{type(net).__name__} has no cam_layer for Grad-CAM")
    store: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        store["act"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # lets grads flow even when every weight is frozen
            logits = net(x)
            if isinstance(logits, tuple):
                logits = logits[0]
            logits = logits.reshape(-1)
            # Samples are independent in eval mode, so one backward of the sum gives each sample its own gradient.
            logits.float().sum().backward()
        act, grad = store["act"].detach().float(), store["act"].grad.detach().float()
    finally:
        handle.remove()
        net.zero_grad(set_to_none=True)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1)
    return logits.detach(), cam / peak
