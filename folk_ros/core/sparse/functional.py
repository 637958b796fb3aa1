"""Sparse convolution and pooling as gather -> matmul -> index_add over kernel maps.

``out[o] = sum_k in[i] @ W[k]`` for every pair ``(i, o)`` of kernel offset ``k``
(MinkowskiEngine's definition, no kernel flip).  :class:`SparseConvFunction`
has a hand-written backward (plain autograd through the gathers stores every
gathered block and is several times slower).
"""

from __future__ import annotations

import torch

from .coords import KernelMap


def _conv_forward(feats: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """(n_in, Cin) x (K, Cin, Cout) -> (n_out, Cout)."""
    out_dtype = torch.promote_types(feats.dtype, kernel.dtype)
    if kmap.identity_k >= 0:
        out = feats @ kernel[kmap.identity_k]
    else:
        out = torch.zeros((kmap.n_out, kernel.shape[-1]), dtype=out_dtype, device=feats.device)
    for k in range(kmap.kernel_volume):
        if k == kmap.identity_k or kmap.ptr[k] == kmap.ptr[k + 1]:
            continue
        i, o = kmap.pairs(k)
        out.index_add_(0, o, feats.index_select(0, i) @ kernel[k])
    return out


class SparseConvFunction(torch.autograd.Function):
    """Autograd function of the sparse convolution (forward and backward by kernel offset)."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        ctx.kmap = kmap
        ctx.save_for_backward(feats, kernel)
        return _conv_forward(feats, kernel, kmap)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        feats, kernel = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_feats = grad_kernel = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            grad_feats = _conv_forward(grad_out, kernel.transpose(1, 2), kmap.transposed())
        if ctx.needs_input_grad[1]:
            grad_kernel = torch.zeros_like(kernel)
            for k in range(kmap.kernel_volume):
                if kmap.ptr[k] == kmap.ptr[k + 1]:
                    continue
                if k == kmap.identity_k:
                    grad_kernel[k] = feats.T @ grad_out
                    continue
                i, o = kmap.pairs(k)
                grad_kernel[k] = feats.index_select(0, i).T @ grad_out.index_select(0, o)
        return grad_feats, grad_kernel, None


def sparse_conv(feats: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Sparse convolution of ``(n_in, Cin)`` features with a ``(K, Cin, Cout)`` kernel -> ``(n_out, Cout)``."""
    if kernel.ndim != 3 or kernel.shape[0] != kmap.kernel_volume:
        raise ValueError(f"kernel must be (K={kmap.kernel_volume}, Cin, Cout), got {tuple(kernel.shape)}")
    if feats.shape != (kmap.n_in, kernel.shape[1]):
        raise ValueError(f"features must be ({kmap.n_in}, {kernel.shape[1]}), got {tuple(feats.shape)}")
    return SparseConvFunction.apply(feats, kernel, kmap)


def sparse_avg_pool(feats: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Mean over the existing inputs of each output row (MinkowskiAvgPooling): (n_in, C) -> (n_out, C)."""
    out = torch.zeros((kmap.n_out, feats.shape[1]), dtype=feats.dtype, device=feats.device)
    out.index_add_(0, kmap.out_idx, feats.index_select(0, kmap.in_idx))
    count = torch.bincount(kmap.out_idx, minlength=kmap.n_out).clamp_(min=1)
    return out / count.to(feats.dtype)[:, None]
