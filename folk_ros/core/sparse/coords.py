"""Integer voxel coordinates: packed keys, neighbour lookup and cached kernel maps.

Coordinates are ``(V, 4)`` int64 rows ``[batch, x, y, z]`` where x, y, z are
multiples of the tensor stride (MinkowskiEngine's convention).  Each row is
packed into one int64 key; lookups sort the keys once and use
``torch.searchsorted``.  Because the packing is linear, the key of
``c + offset`` is ``key(c) + key_delta(offset)``, so a whole kernel offset is
looked up with one addition and one ``searchsorted``.  Submanifold maps over a
bounding box of up to :data:`GRID_LOOKUP_CELLS` cells use a dense table of row
numbers instead (one gather per offset; a room at 4 cm, every level).

Kernel-offset order follows MinkowskiEngine (``[K, Cin, Cout]`` kernels):
index ``k = i + S*j + S*S*l`` (x fastest), offset
``((i, j, l) - S // 2) * tensor_stride`` for odd ``S``; for the kernel-2
stride-2 convolutions offset ``k`` is ``(k & 1, k >> 1 & 1, k >> 2 & 1) * s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .plan import GatherPlan, bags_by_row, build_plan

AXIS_BITS = 18
"""Bits per spatial axis in a packed key: |coordinate| < 2**17 (2.6 km at 2 cm voxels)."""
_AXIS_RANGE = 1 << AXIS_BITS
_AXIS_OFFSET = 1 << (AXIS_BITS - 1)
MAX_BATCH = 1 << (63 - 3 * AXIS_BITS)
"""Largest batch index + 1 that fits in the remaining key bits (512)."""


def pack_keys(coords: torch.Tensor) -> torch.Tensor:
    """Pack ``(V, 4)`` int coordinates ``[b, x, y, z]`` into ``(V,)`` int64 keys.

    Keys sort by batch, then x, then y, then z.  Raises ValueError when a
    coordinate is outside ``[-2**17, 2**17)`` or the batch index outside
    ``[0, 512)``.
    """
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"coordinates must be (V, 4) [batch, x, y, z], got {tuple(coords.shape)}")
    c = coords.to(torch.int64)
    if c.numel():
        xyz = c[:, 1:]
        if int(xyz.min()) < -_AXIS_OFFSET + 4 or int(xyz.max()) >= _AXIS_OFFSET - 4:
            raise ValueError(
                f"voxel coordinates must lie in [-{_AXIS_OFFSET - 4}, {_AXIS_OFFSET - 4}), "
                f"got [{int(xyz.min())}, {int(xyz.max())}]; use a larger voxel size or recentre")
        if int(c[:, 0].min()) < 0 or int(c[:, 0].max()) >= MAX_BATCH:
            raise ValueError(f"batch index must be in [0, {MAX_BATCH}), got "
                             f"[{int(c[:, 0].min())}, {int(c[:, 0].max())}]")
    key = c[:, 0]
    for axis in range(1, 4):
        key = key * _AXIS_RANGE + (c[:, axis] + _AXIS_OFFSET)
    return key


def key_delta(offsets: torch.Tensor) -> torch.Tensor:
    """``(K, 3)`` int spatial offsets -> ``(K,)`` int64 key increments (batch unchanged)."""
    o = offsets.to(torch.int64)
    return (o[:, 0] * _AXIS_RANGE + o[:, 1]) * _AXIS_RANGE + o[:, 2]


def kernel_offsets(kernel_size: int, tensor_stride: int, device=None) -> torch.Tensor:
    """MinkowskiEngine hyper-cube offsets, ``(K, 3)`` int64 with ``K = S**3``, x fastest.

    Odd ``S``: ``(i - S//2, j - S//2, l - S//2) * stride`` at ``k = i + S*j + S*S*l``.
    ``S == 2``: ``(i, j, l) * stride`` (the kernel-2 stride-2 convolution layout).
    """
    if kernel_size < 1 or (kernel_size % 2 == 0 and kernel_size != 2):
        raise ValueError(f"kernel_size must be odd or 2, got {kernel_size}")
    r = torch.arange(kernel_size, device=device, dtype=torch.int64)
    if kernel_size % 2:
        r = r - kernel_size // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), z.reshape(-1)], dim=1) * int(tensor_stride)


@dataclass(frozen=True, eq=False)
class KernelMap:
    """Input/output row pairs of a convolution, grouped by kernel offset.

    ``in_idx[ptr[k]:ptr[k+1]]`` are the input rows read with kernel ``W[k]`` and
    ``out_idx[ptr[k]:ptr[k+1]]`` the output rows they add into:
    ``out[o] = sum_k in[i] @ W[k]`` (paper-free: MinkowskiEngine's definition).
    ``identity_k`` is the offset whose pairs are exactly ``(r, r)`` for every row
    (submanifold centre), or -1.
    """

    in_idx: torch.Tensor   # (E,) int64
    out_idx: torch.Tensor  # (E,) int64
    ptr: tuple[int, ...]   # (K + 1,) python ints
    n_in: int
    n_out: int
    identity_k: int = -1
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # plan, transposed map, pool bags

    @property
    def kernel_volume(self) -> int:
        return len(self.ptr) - 1

    def pairs(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(in_rows, out_rows)`` of kernel offset ``k``."""
        return self.in_idx[self.ptr[k]:self.ptr[k + 1]], self.out_idx[self.ptr[k]:self.ptr[k + 1]]

    def transposed(self) -> "KernelMap":
        """The same pairs read the other way (used by transposed convolution); cached, so its
        gather plan is built once."""
        if "transposed" not in self._cache:
            t = KernelMap(self.out_idx, self.in_idx, self.ptr, self.n_out, self.n_in, self.identity_k)
            t._cache["transposed"] = self
            self._cache["transposed"] = t
        return self._cache["transposed"]

    def plan(self) -> GatherPlan:
        """The :class:`~folk_ros.core.sparse.plan.GatherPlan` of this map (built once, cached)."""
        if "plan" not in self._cache:
            other = self._cache.get("transposed")
            if other is not None and "plan" in other._cache:
                self._cache["plan"] = other._cache["plan"].transposed()
            else:
                # centre first, then offsets ascending: the summation order of the pair form
                self._cache["plan"] = build_plan(self.in_idx, self.out_idx, self.ptr, self.n_in, self.n_out,
                                                 first_k=self.identity_k)
        return self._cache["plan"]

    def pool_bags(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input rows of each output row, offsets ascending: ``(rows (E,), starts (n_out,), counts (n_out,))``."""
        if "pool" not in self._cache:
            k_of = torch.repeat_interleave(
                torch.arange(self.kernel_volume, device=self.in_idx.device),
                torch.tensor([self.ptr[k + 1] - self.ptr[k] for k in range(self.kernel_volume)],
                             device=self.in_idx.device))
            self._cache["pool"] = bags_by_row(self.out_idx, k_of, self.in_idx, self.n_out, self.kernel_volume)
        return self._cache["pool"]


@dataclass
class _CoordSet:
    coords: torch.Tensor       # (V, 4) int64
    sorted_keys: torch.Tensor  # (V,) int64
    order: torch.Tensor        # (V,) int64, coords[order] has sorted keys


def _lookup(cs: _CoordSet, query_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``cs`` holding ``query_keys``: ``(found (Q,) bool, row (Q,) int64)``."""
    n = cs.sorted_keys.numel()
    if n == 0:
        return torch.zeros_like(query_keys, dtype=torch.bool), torch.zeros_like(query_keys)
    pos = torch.searchsorted(cs.sorted_keys, query_keys).clamp_(max=n - 1)
    found = cs.sorted_keys[pos] == query_keys
    return found, cs.order[pos]


@dataclass
class CoordinateManager:
    """Coordinate sets per tensor stride and the kernel maps between them (a cache).

    One manager belongs to one input cloud (or batch); every SparseTensor derived
    from it shares it, as MinkowskiEngine's CoordinateManager.  Exactly one
    coordinate set exists per stride: the input's at stride 1, and
    ``unique(floor(c / 2s) * 2s)`` (sorted by packed key) at stride ``2s``.
    Kernel maps are computed once per ``(stride, kind, kernel size)``.
    """

    sets: dict[int, _CoordSet] = field(default_factory=dict)
    maps: dict[tuple, KernelMap] = field(default_factory=dict)

    def add(self, coords: torch.Tensor, stride: int) -> None:
        """Register ``(V, 4)`` coordinates at ``stride`` (rows must be unique)."""
        keys = pack_keys(coords)
        sorted_keys, order = torch.sort(keys)
        if sorted_keys.numel() > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            raise ValueError("duplicate coordinates: voxelise first (one row per voxel)")
        if coords.numel() and bool(torch.remainder(coords[:, 1:], stride).any()):
            raise ValueError(f"coordinates at tensor stride {stride} must be multiples of it")
        self.sets[stride] = _CoordSet(coords.to(torch.int64), sorted_keys, order)

    def coords(self, stride: int) -> torch.Tensor:
        """``(V, 4)`` int64 coordinates at ``stride``."""
        if stride not in self.sets:
            if stride < 2 or stride % 2:
                raise KeyError(f"no coordinates at tensor stride {stride}")
            self.down_map(stride // 2)  # derives 2s from s, recursively
        return self.sets[stride].coords

    def down_map(self, stride: int) -> KernelMap:
        """Map of the kernel-2 stride-2 convolution from ``stride`` to ``2*stride``.

        Every fine row ``c`` pairs with the coarse row ``p = floor(c / 2s) * 2s``
        at kernel offset ``k`` with ``(c - p) / s = (k & 1, k >> 1 & 1, k >> 2 & 1)``.
        Creates the coarse coordinate set on first use.
        """
        key = (stride, "down")
        if key in self.maps:
            return self.maps[key]
        fine = self.coords(stride)
        coarse_stride = 2 * stride
        parent = fine.clone()
        parent[:, 1:] = torch.div(fine[:, 1:], coarse_stride, rounding_mode="floor") * coarse_stride
        bits = torch.div(fine[:, 1:] - parent[:, 1:], stride, rounding_mode="floor")
        k = bits[:, 0] + 2 * bits[:, 1] + 4 * bits[:, 2]
        if coarse_stride not in self.sets:
            uniq_keys, inverse = torch.unique(pack_keys(parent), sorted=True, return_inverse=True)
            coarse = parent.new_empty((uniq_keys.numel(), 4))
            coarse[inverse] = parent
            self.sets[coarse_stride] = _CoordSet(
                coarse, uniq_keys, torch.arange(uniq_keys.numel(), device=fine.device))
            coarse_row = inverse
        else:
            found, coarse_row = _lookup(self.sets[coarse_stride], pack_keys(parent))
            if not bool(found.all()):
                raise ValueError(f"coordinates at stride {coarse_stride} do not cover stride {stride}")
        self.maps[key] = _grouped_map(
            in_idx=torch.arange(fine.shape[0], device=fine.device), out_idx=coarse_row, k=k,
            kernel_volume=8, n_in=fine.shape[0], n_out=self.sets[coarse_stride].coords.shape[0])
        return self.maps[key]

    def submanifold_map(self, stride: int, kernel_size: int, dilation: int = 1) -> KernelMap:
        """Map of a stride-1 (submanifold) convolution at ``stride``: output rows = input rows."""
        key = (stride, "sub", kernel_size, dilation)
        if key in self.maps:
            return self.maps[key]
        cs = self.sets[stride]
        n = cs.coords.shape[0]
        offsets = kernel_offsets(kernel_size, stride * dilation, device=cs.coords.device)
        rows = torch.arange(n, device=cs.coords.device)
        volume = offsets.shape[0]
        ins: list = [None] * volume
        outs: list = [None] * volume
        identity_k = volume // 2                      # the centre offset (0, 0, 0)
        ins[identity_k] = outs[identity_k] = rows
        # offsets are point-symmetric (offset[K-1-k] = -offset[k]): one lookup serves both
        lookup = _grid_lookup(cs, offsets[: volume // 2], stride)
        if lookup is None:                            # the table would be too large: search the keys
            lookup = _key_lookup(cs, offsets[: volume // 2])
        for k, (found, src) in enumerate(lookup):
            ins[k], outs[k] = src[found], rows[found]
            ins[volume - 1 - k], outs[volume - 1 - k] = outs[k], ins[k]
        ptr = [0]
        for i in ins:
            ptr.append(ptr[-1] + i.numel())
        self.maps[key] = KernelMap(torch.cat(ins), torch.cat(outs), tuple(ptr), n, n, identity_k)
        return self.maps[key]


GRID_LOOKUP_CELLS = 1 << 23
"""Largest dense table (cells, int32: 32 MB) :func:`_grid_lookup` builds; beyond it keys are searched."""


def _key_lookup(cs: _CoordSet, offsets: torch.Tensor):
    """Per offset ``(found (V,) bool, row (V,) int64)`` of ``coords + offset``: a sorted-key search each."""
    keys = pack_keys(cs.coords)
    for delta in key_delta(offsets).tolist():
        yield _lookup(cs, keys + delta)


def _grid_lookup(cs: _CoordSet, offsets: torch.Tensor, stride: int) -> list | None:
    """:func:`_key_lookup` through a dense table of row numbers over the coordinates' bounding box
    (padded by the largest offset), one gather per offset instead of a binary search; None when that
    table would exceed :data:`GRID_LOOKUP_CELLS`."""
    c = cs.coords
    if c.shape[0] == 0:
        return None
    pad = int(offsets.abs().max()) // stride if offsets.numel() else 0
    cell = torch.cat([c[:, :1], torch.div(c[:, 1:], stride, rounding_mode="floor")], dim=1)
    cell = cell - cell.min(0).values + torch.tensor([0, pad, pad, pad], device=c.device)
    dims = (cell.max(0).values + torch.tensor([1, pad + 1, pad + 1, pad + 1], device=c.device)).tolist()
    if dims[0] * dims[1] * dims[2] * dims[3] > GRID_LOOKUP_CELLS:
        return None
    steps = torch.tensor([dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1], device=c.device)
    flat = cell @ steps
    table = torch.full((dims[0] * dims[1] * dims[2] * dims[3],), -1, dtype=torch.int32, device=c.device)
    table[flat] = torch.arange(c.shape[0], dtype=torch.int32, device=c.device)
    out = []
    for delta in (torch.div(offsets, stride, rounding_mode="floor") @ steps[1:]).tolist():
        row = table[flat + delta].to(torch.int64)
        found = row >= 0
        out.append((found, row.clamp_(min=0)))
    return out


def _grouped_map(in_idx, out_idx, k, kernel_volume, n_in, n_out) -> KernelMap:
    """Sort pairs by kernel offset (stable) into a KernelMap."""
    order = torch.argsort(k, stable=True)
    counts = torch.bincount(k, minlength=kernel_volume).tolist()
    ptr = [0]
    for c in counts:
        ptr.append(ptr[-1] + c)
    return KernelMap(in_idx[order], out_idx[order], tuple(ptr), n_in, n_out, -1)
