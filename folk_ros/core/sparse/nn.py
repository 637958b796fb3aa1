"""Sparse layers with MinkowskiEngine's parameter layout (official checkpoints load unchanged).

* :class:`SparseConv3d`: ``kernel`` ``[K, Cin, Cout]`` (``[Cin, Cout]`` when K == 1),
  optional ``bias`` ``[1, Cout]``.  Stride 1 is submanifold (output coordinates =
  input coordinates); kernel 2 / stride 2 halves the resolution
  (output coordinate ``floor(c / 2s) * 2s``); ``transposed=True`` with kernel 2 /
  stride 2 maps back onto the existing finer coordinate set.
* :class:`SparseBatchNorm` (``.bn`` = ``nn.BatchNorm1d``, MinkowskiBatchNorm's keys),
  :class:`SparseAvgPool` (kernel 2, stride 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .functional import sparse_avg_pool, sparse_conv
from .tensor import SparseTensor


class SparseConv3d(nn.Module):
    """3-D sparse convolution (submanifold, strided k2s2, or transposed k2s2).

    Args:
        in_channels, out_channels: Cin, Cout.
        kernel_size: 1, any odd size (stride 1), or 2 (stride 2).
        stride: 1 or 2.
        transposed: upsampling convolution (kernel 2, stride 2 only).
        bias: add a ``[1, Cout]`` bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, transposed: bool = False, bias: bool = False):
        super().__init__()
        if stride == 1 and kernel_size % 2 == 0:
            raise ValueError(f"stride-1 convolutions need an odd kernel, got {kernel_size}")
        if stride != 1 and (stride, kernel_size) != (2, 2):
            raise ValueError(f"only kernel 2 / stride 2 is supported when strided, got k{kernel_size} s{stride}")
        if transposed and stride != 2:
            raise ValueError("transposed convolution supports kernel 2 / stride 2 only")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation, self.transposed = kernel_size, stride, dilation, transposed
        volume = kernel_size ** 3
        shape = (in_channels, out_channels) if volume == 1 else (volume, in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(1, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size ** 3
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.kernel, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, transposed={self.transposed}, bias={self.bias is not None}")

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.kernel_size == 1 and self.stride == 1:
            out = x.F @ self.kernel
            stride = x.stride
        elif self.stride == 1:
            kmap = x.manager.submanifold_map(x.stride, self.kernel_size, self.dilation)
            out = sparse_conv(x.F, self.kernel, kmap)
            stride = x.stride
        elif self.transposed:
            if x.stride < 2 or x.stride % 2:
                raise ValueError(f"transposed convolution needs an even tensor stride, got {x.stride}")
            stride = x.stride // 2
            out = sparse_conv(x.F, self.kernel, x.manager.down_map(stride).transposed())
        else:
            out = sparse_conv(x.F, self.kernel, x.manager.down_map(x.stride))
            stride = 2 * x.stride
        if self.bias is not None:
            out = out + self.bias
        return SparseTensor(out, stride, x.manager)


class SparseBatchNorm(nn.Module):
    """BatchNorm over the feature rows; state-dict keys ``bn.*`` as MinkowskiBatchNorm."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.bn(x.F))


class SparseAvgPool(nn.Module):
    """Kernel-2 stride-2 average pooling: mean over the existing children of each coarse voxel."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return SparseTensor(sparse_avg_pool(x.F, x.manager.down_map(x.stride)), 2 * x.stride, x.manager)
