"""MaskCLIP per-patch features of an open_clip ViT (Zhou et al., ECCV 2022), the dense map that the FOLK
teacher mask-pools (paper Eq. 6): the last transformer block keeps only its value path, so each patch token
is projected into the joint space on its own instead of being mixed by attention. Pure functions of the
image tower's modules; :meth:`folk_ros.core.clip.ClipModel.dense_features` is the entry point.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def resize_positional_embedding(
    pos: torch.Tensor, grid: Tuple[int, int], new_grid: Tuple[int, int]
) -> torch.Tensor:
    """Bicubic resize of a ViT positional embedding to another patch grid.

    pos: (1 + gh*gw, C), class token first, patches in row-major order. Returns
    (1 + nh*nw, C); the same tensor object when `new_grid == grid` (identity).
    """
    grid, new_grid = tuple(int(g) for g in grid), tuple(int(g) for g in new_grid)
    if new_grid == grid:
        return pos
    gh, gw = grid
    if pos.ndim != 2 or pos.shape[0] != 1 + gh * gw:
        raise ValueError(f"positional embedding {tuple(pos.shape)} does not match grid {grid} + class token")
    patches = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], patches], dim=0)


def _value_projection(attn: torch.nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Value weights (C_out, C_in) and bias of nn.MultiheadAttention or open_clip's Attention."""
    if getattr(attn, "in_proj_weight", None) is not None:
        w = attn.in_proj_weight
        w_v = w[2 * w.shape[0] // 3:]
    elif getattr(attn, "v_proj_weight", None) is not None:  # nn.MultiheadAttention with vdim != embed_dim
        w_v = attn.v_proj_weight
    else:
        raise ValueError(f"cannot find the value projection of {type(attn).__name__}")
    b = getattr(attn, "in_proj_bias", None)
    b_v = None if b is None else b[2 * b.shape[0] // 3:]
    return w_v, b_v


def value_path(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: the attention branch with the attention matrix set to identity.

    x: (B, L, C) tokens entering `block` (open_clip ResidualAttentionBlock or
    CustomResidualAttentionBlock). Returns (B, L, C): ls_1(out_proj(W_v ln_1(x) + b_v)),
    with the custom block's head scale and inner norms; no residual, no MLP.
    """
    attn = block.attn
    w_v, b_v = _value_projection(attn)
    v = F.linear(block.ln_1(x), w_v, b_v)
    if getattr(attn, "head_scale", None) is not None:  # open_clip Attention(scale_heads=True)
        b, n, c = v.shape
        v = (v.reshape(b, n, attn.num_heads, -1) * attn.head_scale.view(1, 1, attn.num_heads, 1)).reshape(b, n, c)
    v = getattr(attn, "ln_inner", torch.nn.Identity())(v)
    v = attn.out_proj(v)
    v = getattr(block, "ln_attn", torch.nn.Identity())(v)
    return block.ls_1(v)


def _pooler_value_path(pooler: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Value path of an open_clip AttentionalPooler: (B, L, C) -> (B, L, output_dim)."""
    w_v, b_v = _value_projection(pooler.attn)
    return pooler.attn.out_proj(F.linear(pooler.ln_k(x), w_v, b_v))


def check_dense_support(visual: torch.nn.Module) -> None:
    """Raise ValueError unless `visual` is an open_clip VisionTransformer that dense features support."""
    from open_clip.transformer import VisionTransformer
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"dense_features needs an open_clip VisionTransformer image tower; this model has "
            f"{type(visual).__name__} (ResNet and timm towers are not supported)")
    if visual.attn_pool is not None and visual.attn_pool_contrastive is not None:
        raise ValueError(f"dense_features does not support attentional_pool={visual.attn_pool_type!r} towers")
    if visual.proj is None:
        raise ValueError("dense_features needs the image projection (visual.proj is None)")


def maskclip_dense_features(visual: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-patch CLIP features, MaskCLIP style, for any input size divisible by the patch.

    x: (B, 3, H, W) normalised images (model mean/std, not cropped). Returns
    (B, D, H/p, W/p) float32, L2-normalised along D. Standard towers: all but the last
    residual block, then the last block's value path (:func:`value_path`), ln_post and
    proj on the patch tokens. Attention-pooled towers (CoCa style): all blocks, then the
    pooler's value path, ln_post and proj. The positional embedding is resized
    bicubically to the input's patch grid.
    """
    check_dense_support(visual)
    b, _, h, w = x.shape
    ph, pw = visual.patch_size
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}")
    gh, gw = h // ph, w // pw
    x = visual.conv1(x.to(visual.conv1.weight.dtype))       # (B, C, gh, gw)
    x = x.flatten(2).transpose(1, 2)                         # (B, gh*gw, C)
    cls = visual.class_embedding.view(1, 1, -1).expand(b, -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)                           # (B, 1 + gh*gw, C)
    x = x + resize_positional_embedding(visual.positional_embedding, visual.grid_size, (gh, gw)).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    pooled = visual.attn_pool is not None
    for block in (blocks if pooled else blocks[:-1]):
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    x = _pooler_value_path(visual.attn_pool, x) if pooled else value_path(blocks[-1], x)
    x = visual.ln_post(x[:, 1:]) @ visual.proj               # (B, gh*gw, D)
    x = F.normalize(x.float(), dim=-1)
    return x.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous()
