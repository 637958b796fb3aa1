"""SparseTensor: features on integer voxel coordinates at one tensor stride."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .coords import CoordinateManager


@dataclass(frozen=True, eq=False)
class SparseTensor:
    """Features ``F (V, C)`` on the coordinate set of ``stride`` in ``manager``.

    Coordinates are ``(V, 4)`` int64 rows ``[batch, x, y, z]`` (multiples of
    ``stride``), row ``r`` of ``F`` belongs to row ``r`` of :attr:`C`.  For one
    cloud the batch column is 0 (:meth:`from_coords` adds it to ``(V, 3)``
    input).  Tensors derived from one input share its manager, so coordinate
    sets and kernel maps are computed once per stride (as MinkowskiEngine's
    coordinate manager).  The device is the device of the input tensors.
    """

    F: torch.Tensor
    stride: int
    manager: CoordinateManager

    @staticmethod
    def from_coords(coords: torch.Tensor, feats: torch.Tensor) -> "SparseTensor":
        """New tensor at stride 1 from unique voxel coordinates.

        coords: (V, 3) int ``[x, y, z]`` (one cloud) or (V, 4) int ``[b, x, y, z]``
        with rows grouped by ascending batch index; feats: (V, C) float.
        """
        if coords.ndim != 2 or coords.shape[1] not in (3, 4):
            raise ValueError(f"coords must be (V, 3) or (V, 4), got {tuple(coords.shape)}")
        if coords.dtype.is_floating_point:
            raise ValueError(f"coords must be an integer tensor, got {coords.dtype}")
        if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats must be (V, C) with V={coords.shape[0]}, got {tuple(feats.shape)}")
        if coords.device != feats.device:
            raise ValueError(f"coords on {coords.device} but feats on {feats.device}")
        c = coords.to(torch.int64)
        if c.shape[1] == 3:
            c = torch.cat([c.new_zeros((c.shape[0], 1)), c], dim=1)
        elif c.shape[0] > 1 and bool((c[1:, 0] < c[:-1, 0]).any()):
            raise ValueError("rows of a batched (V, 4) tensor must be grouped by ascending batch index")
        manager = CoordinateManager()
        manager.add(c, 1)
        return SparseTensor(feats, 1, manager)

    @property
    def C(self) -> torch.Tensor:
        """(V, 4) int64 coordinates ``[batch, x, y, z]``."""
        return self.manager.coords(self.stride)

    @property
    def device(self) -> torch.device:
        return self.F.device

    @property
    def batch_size(self) -> int:
        c = self.C
        return int(c[-1, 0]) + 1 if c.shape[0] else 0

    def replace(self, feats: torch.Tensor) -> "SparseTensor":
        """Same coordinates, new ``(V, C')`` features."""
        if feats.shape[0] != self.F.shape[0]:
            raise ValueError(f"expected {self.F.shape[0]} feature rows, got {feats.shape[0]}")
        return SparseTensor(feats, self.stride, self.manager)

    def batch_slices(self) -> list[slice]:
        """Row range of each batch item (rows are grouped by batch at every stride)."""
        b = self.C[:, 0]
        counts = torch.bincount(b, minlength=self.batch_size).tolist()
        out, start = [], 0
        for n in counts:
            out.append(slice(start, start + n))
            start += n
        return out


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate features of tensors on the same coordinates: ``(V, C1 + C2 + ...)``."""
    first = tensors[0]
    for t in tensors[1:]:
        if t.manager is not first.manager or t.stride != first.stride:
            raise ValueError("cat needs tensors on the same coordinate set (manager and stride)")
    return first.replace(torch.cat([t.F for t in tensors], dim=1))
