"""Pure-PyTorch sparse convolution with MinkowskiEngine's parameter layout.

Coordinates are ``(V, 4)`` int64 ``[batch, x, y, z]`` (``(V, 3)`` accepted for one
cloud), features ``(V, C)``; runs on CPU and CUDA (device of the inputs).
"""

from .coords import CoordinateManager, KernelMap, kernel_offsets, pack_keys
from .functional import SparseConvFunction, sparse_avg_pool, sparse_conv
from .nn import SparseAvgPool, SparseBatchNorm, SparseConv3d
from .tensor import SparseTensor, cat

__all__ = [
    "CoordinateManager", "KernelMap", "kernel_offsets", "pack_keys",
    "SparseConvFunction", "sparse_avg_pool", "sparse_conv",
    "SparseAvgPool", "SparseBatchNorm", "SparseConv3d",
    "SparseTensor", "cat",
]
