"""Res16UNet34C (MinkUNet) backbone on the pure-PyTorch sparse tensor.

Module and parameter names equal the official ``models/res16unet.py`` so that
``backbone.*`` keys of an official checkpoint load unchanged
(``backbone.conv0p1s1.kernel``, ``backbone.bn0.bn.weight``,
``backbone.block1.0.conv1.kernel``, ``backbone.block2.0.downsample.0.kernel``...).

The forward pass is written once (:meth:`BasicBlock.run`, :meth:`Res16UNet34C.run`) over a backend's sparse
operations: :class:`TorchSparseOps` here (the default), ``MinkowskiSparseOps`` in
:mod:`folk_ros.core.sparse.minkowski` (the same parameters through MinkowskiEngine).
"""

from __future__ import annotations

import torch
from torch import nn

from ..sparse import SparseBatchNorm, SparseConv3d, SparseTensor, cat
from .config import BackboneConfig


class TorchSparseOps:
    """The backbone's sparse operations on our pure-PyTorch :class:`SparseTensor` (the default backend).

    A backend provides ``enter`` (our stride-1 input -> its tensor), ``conv`` / ``norm`` (apply one of our
    layers), ``relu``, ``replace`` (same coordinates, new features), ``cat`` (features side by side) and
    ``leave`` (its feature maps -> ours, on our coordinate rows)."""

    name = "torch"

    def enter(self, x: SparseTensor) -> SparseTensor:
        return x

    def leave(self, maps: list[SparseTensor], x: SparseTensor) -> list[SparseTensor]:
        return maps

    def conv(self, layer: SparseConv3d, x: SparseTensor) -> SparseTensor:
        return layer(x)

    def norm(self, layer: SparseBatchNorm, x: SparseTensor) -> SparseTensor:
        return layer(x)

    def relu(self, x: SparseTensor) -> SparseTensor:
        return x.replace(torch.relu(x.F))

    def replace(self, x: SparseTensor, feats: torch.Tensor) -> SparseTensor:
        return x.replace(feats)

    def cat(self, a: SparseTensor, b: SparseTensor) -> SparseTensor:
        return cat(a, b)


TORCH_OPS = TorchSparseOps()


class BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN + (1x1 conv-BN projected) residual, ReLU."""

    def __init__(self, inplanes: int, planes: int, bn_momentum: float, downsample_bn_momentum: float):
        super().__init__()
        self.conv1 = SparseConv3d(inplanes, planes, kernel_size=3)
        self.norm1 = SparseBatchNorm(planes, momentum=bn_momentum)
        self.conv2 = SparseConv3d(planes, planes, kernel_size=3)
        self.norm2 = SparseBatchNorm(planes, momentum=bn_momentum)
        self.downsample = None
        if inplanes != planes:
            self.downsample = nn.Sequential(SparseConv3d(inplanes, planes, kernel_size=1),
                                            SparseBatchNorm(planes, momentum=downsample_bn_momentum))

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.run(x, TORCH_OPS)

    def run(self, x, ops):
        """The block on ``ops``'s tensors (the same parameters on every backend)."""
        out = ops.relu(ops.norm(self.norm1, ops.conv(self.conv1, x)))
        out = ops.norm(self.norm2, ops.conv(self.conv2, out))
        if self.downsample is None:
            residual = x
        else:
            conv, bn = self.downsample
            residual = ops.norm(bn, ops.conv(conv, x))
        return ops.relu(ops.replace(out, out.F + residual.F))


class Res16UNet34C(nn.Module):
    """Sparse U-Net; ``forward`` returns (block8 output (stride 1), 5 feature maps).

    Feature maps: [block4 (stride 16, planes[3]), block5 (stride 8, planes[4]),
    block6 (stride 4, planes[5]), block7 (stride 2, planes[6]), block8 (stride 1, planes[7])].
    ``final`` (1x1 conv to ``out_channels``) exists for checkpoint compatibility and
    is not called, as in the official model (``out_fpn=True``). ``sparse_ops``: the backend ``forward``
    runs on (:func:`folk_ros.core.sparse.minkowski.set_sparse_backend` sets it; the state dict is the same).
    """

    sparse_ops = TORCH_OPS

    def __init__(self, cfg: BackboneConfig = BackboneConfig()):
        super().__init__()
        if len(cfg.planes) != 8 or len(cfg.layers) != 8:
            raise ValueError("planes and layers must have 8 entries")
        p, m = cfg.planes, cfg.bn_momentum
        self.cfg = cfg
        self.inplanes = cfg.init_dim

        def down(name: str, bn: str) -> None:
            setattr(self, name, SparseConv3d(self.inplanes, self.inplanes, kernel_size=2, stride=2))
            setattr(self, bn, SparseBatchNorm(self.inplanes, momentum=m))

        def up(name: str, bn: str, planes: int) -> None:
            setattr(self, name, SparseConv3d(self.inplanes, planes, kernel_size=2, stride=2, transposed=True))
            setattr(self, bn, SparseBatchNorm(planes, momentum=m))

        self.conv0p1s1 = SparseConv3d(cfg.in_channels, cfg.init_dim, kernel_size=cfg.conv1_kernel_size)
        self.bn0 = SparseBatchNorm(cfg.init_dim, momentum=m)
        down("conv1p1s2", "bn1")
        self.block1 = self._make_layer(p[0], cfg.layers[0])
        down("conv2p2s2", "bn2")
        self.block2 = self._make_layer(p[1], cfg.layers[1])
        down("conv3p4s2", "bn3")
        self.block3 = self._make_layer(p[2], cfg.layers[2])
        down("conv4p8s2", "bn4")
        self.block4 = self._make_layer(p[3], cfg.layers[3])
        up("convtr4p16s2", "bntr4", p[4])
        self.inplanes = p[4] + p[2]
        self.block5 = self._make_layer(p[4], cfg.layers[4])
        up("convtr5p8s2", "bntr5", p[5])
        self.inplanes = p[5] + p[1]
        self.block6 = self._make_layer(p[5], cfg.layers[5])
        up("convtr6p4s2", "bntr6", p[6])
        self.inplanes = p[6] + p[0]
        self.block7 = self._make_layer(p[6], cfg.layers[6])
        up("convtr7p2s2", "bntr7", p[7])
        self.inplanes = p[7] + cfg.init_dim
        self.block8 = self._make_layer(p[7], cfg.layers[7])
        self.final = SparseConv3d(p[7], cfg.out_channels, kernel_size=1, bias=True)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        layers = []
        for _ in range(blocks):
            layers.append(BasicBlock(self.inplanes, planes, self.cfg.block_bn_momentum, self.cfg.bn_momentum))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x: SparseTensor) -> tuple[SparseTensor, list[SparseTensor]]:
        return self.run(x, self.sparse_ops)

    def run(self, x: SparseTensor, ops) -> tuple[SparseTensor, list[SparseTensor]]:
        """The U-Net on ``ops``'s tensors; ``x``: our stride-1 input, the result on our coordinate rows."""
        def stem(conv, bn, t):
            return ops.relu(ops.norm(bn, ops.conv(conv, t)))

        def layer(blocks, t):
            for block in blocks:
                t = block.run(t, ops)
            return t

        out_p1 = stem(self.conv0p1s1, self.bn0, ops.enter(x))
        out_b1p2 = layer(self.block1, stem(self.conv1p1s2, self.bn1, out_p1))
        out_b2p4 = layer(self.block2, stem(self.conv2p2s2, self.bn2, out_b1p2))
        out_b3p8 = layer(self.block3, stem(self.conv3p4s2, self.bn3, out_b2p4))
        out = layer(self.block4, stem(self.conv4p8s2, self.bn4, out_b3p8))
        maps = [out]
        for convtr, bn, skip, blocks in (
                (self.convtr4p16s2, self.bntr4, out_b3p8, self.block5),
                (self.convtr5p8s2, self.bntr5, out_b2p4, self.block6),
                (self.convtr6p4s2, self.bntr6, out_b1p2, self.block7),
                (self.convtr7p2s2, self.bntr7, out_p1, self.block8)):
            out = layer(blocks, ops.cat(stem(convtr, bn, out), skip))
            maps.append(out)
        maps = ops.leave(maps, x)
        return maps[-1], maps
