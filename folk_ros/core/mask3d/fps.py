"""Furthest point sampling as pointnet2's CUDA kernel does it (Mask3D's query positions), on the CPU."""

from __future__ import annotations

import math

import numpy as np
import torch


def furthest_point_sample(coords: torch.Tensor | np.ndarray, num_samples: int) -> torch.Tensor:
    """Deterministic furthest point sampling equal to pointnet2's CUDA kernel.

    coords: (N, 3) float (Mask3D passes integer voxel coordinates as float32).
    Returns (num_samples,) int64 indices.  Emulates the kernel exactly: start at
    index 0; running distance initialised to 1e10; points with
    ``x^2 + y^2 + z^2 <= 1e-3`` are never picked; float32 squared distances
    ``(dx*dx + dy*dy) + dz*dz``; ties broken as the kernel does: thread ``t`` of
    ``b = min(512, 2**floor(log2 N))`` scans ``k = t, t + b, ...`` keeping the
    first strict maximum, then a tree reduction with offsets ``b/2 .. 1`` keeps
    the lower slot unless the upper is strictly greater.  In that reduction a tie
    between threads goes to the one with a 0 at their lowest differing bit, so
    the pick is the point of maximum distance with the smallest
    ``(bit_reverse(k mod b), k div b)``.

    Runs in numpy (one core, no per-step thread synchronisation): ~7 array
    passes per sample.
    """
    pts = torch.as_tensor(coords).detach().to("cpu", torch.float32).numpy()
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"coords must be (N, 3), got {tuple(pts.shape)}")
    n = pts.shape[0]
    if n == 0 or num_samples <= 0:
        raise ValueError(f"need N > 0 points and num_samples > 0, got N={n}, num_samples={num_samples}")
    bits = min(9, int(math.floor(math.log2(n))))
    b = 1 << bits
    thread = np.arange(b)
    rev = np.zeros(b, dtype=np.int64)                 # bit-reversed thread index: the tie order
    for i in range(bits):
        rev |= ((thread >> i) & 1) << (bits - 1 - i)
    rows = -(-n // b)
    x, y, z = (np.ascontiguousarray(pts[:, a]) for a in range(3))
    valid = (x * x + y * y + z * z) > np.float32(1e-3)
    # running distance; never-picked points pinned at -1 (distances are >= 0, so they stay below)
    temp = np.where(valid, np.float32(1e10), np.float32(-1.0)).astype(np.float32)
    idxs = np.zeros(num_samples, dtype=np.int64)
    d = np.empty(n, dtype=np.float32)
    tmp = np.empty(n, dtype=np.float32)
    old = 0
    for j in range(1, num_samples):
        np.subtract(x, x[old], out=d)
        np.multiply(d, d, out=d)
        np.subtract(y, y[old], out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        np.add(d, tmp, out=d)
        np.subtract(z, z[old], out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        np.add(d, tmp, out=d)
        np.minimum(temp, d, out=temp)
        best = temp.max()
        if best < 0:                                   # no valid point: every thread reports index 0
            old = 0
        else:
            cand = np.flatnonzero(temp == best)
            old = int(cand[0]) if cand.size == 1 else int(cand[np.argmin(rev[cand % b] * rows + cand // b)])
        idxs[j] = old
    return torch.from_numpy(idxs)
