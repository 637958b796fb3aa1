"""open_clip's image preprocessing, vectorised over a batch of equal-sized images on any device: uint8 to
float, antialiased resize (as PIL), the resize modes ``shortest`` / ``longest`` / ``squash``, centre crop,
mean/std normalisation.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F


def images_to_float(images: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy or torch images -> (B, 3, H, W) float32 in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        shape = tuple(getattr(images, "shape", ()))
        raise ValueError(f"expected uint8 RGB images of shape (B, H, W, 3), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {shape}")
    if images.shape[0] == 0:
        raise ValueError("empty image batch")
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def resize_images(x: torch.Tensor, size: Tuple[int, int], interpolation: str, clamp: bool = True) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size); antialiased like PIL; clamp to [0, 1] for raw images."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"
    if mode == "nearest":
        return F.interpolate(x, size=size, mode=mode)
    x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return x.clamp_(0, 1) if clamp else x


def preprocess_images(x: torch.Tensor, cfg: Dict[str, Any]) -> torch.Tensor:
    """open_clip's eval transform, vectorised over a batch of equally sized images.

    x: (B, 3, H, W) float in [0, 1]. cfg: the model's preprocess config (size, mean, std,
    interpolation, resize_mode in {'shortest', 'longest', 'squash'}, fill_color).
    Returns (B, 3, S_h, S_w) normalised images.
    """
    size = cfg.get("size", 224)
    sh, sw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = x.shape[-2:]
    mode = cfg.get("resize_mode", "shortest")
    interp = cfg.get("interpolation", "bicubic")
    if mode == "squash":
        x = resize_images(x, (sh, sw), interp)
    elif mode in ("shortest", "longest"):
        scale = max(sh / h, sw / w) if mode == "shortest" else min(sh / h, sw / w)
        if mode == "shortest" and sh == sw:  # torchvision Resize(int): short side = size, long side truncated
            nh, nw = (sh, int(sh * w / h)) if h <= w else (int(sh * h / w), sh)
        else:
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = resize_images(x, (nh, nw), interp)
        if nh < sh or nw < sw:  # 'longest': pad to the target, image centred
            pt, pl = (sh - nh) // 2, (sw - nw) // 2
            fill = float(cfg.get("fill_color", 0)) / 255.0
            x = F.pad(x, (pl, sw - nw - pl, pt, sh - nh - pt), value=fill)
            nh, nw = sh, sw
        top, left = int(round((nh - sh) / 2.0)), int(round((nw - sw) / 2.0))
        x = x[..., top:top + sh, left:left + sw]
    else:
        raise ValueError(f"unknown resize_mode {mode!r}")
    mean = torch.as_tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(cfg["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
