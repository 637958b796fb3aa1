"""Pure-PyTorch sparse convolution vs a brute-force reference (MinkowskiEngine semantics)."""

import pytest
import torch

from folk_ros.core.sparse import (SparseAvgPool, SparseBatchNorm, SparseConv3d, SparseTensor, cat,
                                  kernel_offsets, pack_keys, sparse_conv)
from folk_ros.core.sparse.coords import CoordinateManager


def random_coords(n: int, extent: int, batch: int = 2, seed: int = 0, stride: int = 1) -> torch.Tensor:
    """(V, 4) unique [b, x, y, z] with x, y, z in [-extent, extent) * stride, grouped by batch."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        c = torch.randint(-extent, extent, (n, 3), generator=g) * stride
        c = torch.unique(c, dim=0)
        c = c[torch.randperm(c.shape[0], generator=g)]
        rows.append(torch.cat([torch.full((c.shape[0], 1), b), c], 1))
    return torch.cat(rows)


def offsets_ref(ks: int, stride: int) -> list[tuple[int, int, int]]:
    """MinkowskiEngine order written out: k = i + ks*j + ks^2*l, x fastest."""
    half = ks // 2 if ks % 2 else 0
    return [((i - half) * stride, (j - half) * stride, (k3 - half) * stride)
            for k3 in range(ks) for j in range(ks) for i in range(ks)]


def as_dict(coords: torch.Tensor) -> dict:
    return {tuple(r): i for i, r in enumerate(coords.tolist())}


def ref_submanifold(coords, feats, kernel, ks, stride):
    index = as_dict(coords)
    out = torch.zeros(coords.shape[0], kernel.shape[-1], dtype=feats.dtype)
    for r, (b, x, y, z) in enumerate(coords.tolist()):
        for k, (dx, dy, dz) in enumerate(offsets_ref(ks, stride)):
            j = index.get((b, x + dx, y + dy, z + dz))
            if j is not None:
                out[r] += feats[j] @ kernel[k]
    return out


def ref_strided(coords, feats, kernel, stride):
    """Output coords floor(c / 2s) * 2s (sorted), out[p] = sum_k in[p + bits(k) * s] @ W[k]."""
    index = as_dict(coords)
    parents = sorted({(b, x // (2 * stride) * 2 * stride, y // (2 * stride) * 2 * stride,
                       z // (2 * stride) * 2 * stride) for b, x, y, z in coords.tolist()})
    out = torch.zeros(len(parents), kernel.shape[-1], dtype=feats.dtype)
    for r, (b, x, y, z) in enumerate(parents):
        for k, (dx, dy, dz) in enumerate(offsets_ref(2, stride)):
            j = index.get((b, x + dx, y + dy, z + dz))
            if j is not None:
                out[r] += feats[j] @ kernel[k]
    return torch.tensor(parents), out


def test_kernel_offsets_order():
    for ks, s in ((3, 1), (3, 4), (5, 2), (2, 2)):
        assert kernel_offsets(ks, s).tolist() == [list(o) for o in offsets_ref(ks, s)]
    assert kernel_offsets(3, 1)[13].tolist() == [0, 0, 0]


@pytest.mark.parametrize("ks", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("lookup", ["grid", "keys"])
def test_submanifold_matches_reference(ks, stride, lookup, monkeypatch):
    if lookup == "keys":   # no dense table: every neighbour found by a sorted-key search
        monkeypatch.setattr("folk_ros.core.sparse.coords.GRID_LOOKUP_CELLS", 0)
    torch.manual_seed(0)
    coords = random_coords(60, 4, stride=stride)
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64)
    m = CoordinateManager()
    m.add(coords, stride)
    x = SparseTensor(feats, stride, m)
    conv = SparseConv3d(3, 5, kernel_size=ks).double()
    out = conv(x)
    assert out.stride == stride and torch.equal(out.C, coords)
    ref = ref_submanifold(coords, feats, conv.kernel.detach(), ks, stride)
    torch.testing.assert_close(out.F, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_strided_and_transposed_match_reference(stride):
    torch.manual_seed(1)
    coords = random_coords(80, 5, stride=stride)
    feats = torch.randn(coords.shape[0], 4, dtype=torch.float64)
    m = CoordinateManager()
    m.add(coords, stride)
    x = SparseTensor(feats, stride, m)
    down = SparseConv3d(4, 6, kernel_size=2, stride=2).double()
    y = down(x)
    ref_c, ref_f = ref_strided(coords, feats, down.kernel.detach(), stride)
    order = torch.argsort(pack_keys(y.C))
    assert y.stride == 2 * stride
    assert torch.equal(y.C[order], ref_c)
    torch.testing.assert_close(y.F[order], ref_f, rtol=1e-10, atol=1e-10)
    # transposed: every fine voxel reads its parent with the kernel of its child slot
    up = SparseConv3d(6, 3, kernel_size=2, stride=2, transposed=True).double()
    z = up(y)
    assert z.stride == stride and torch.equal(z.C, coords)
    parent_row = as_dict(y.C)
    w = up.kernel.detach()
    for r, (b, cx, cy, cz) in enumerate(coords.tolist()):
        p = [v // (2 * stride) * 2 * stride for v in (cx, cy, cz)]
        bits = [(v - q) // stride for v, q in zip((cx, cy, cz), p)]
        k = bits[0] + 2 * bits[1] + 4 * bits[2]
        torch.testing.assert_close(z.F[r], y.F[parent_row[(b, *p)]] @ w[k], rtol=1e-10, atol=1e-10)


def test_negative_coordinates_use_floor():
    coords = torch.tensor([[0, -1, -3, 2], [0, 1, 0, -1]])
    x = SparseTensor.from_coords(coords, torch.ones(2, 1))
    y = SparseConv3d(1, 1, kernel_size=2, stride=2)(x)
    assert sorted(y.C.tolist()) == [[0, -2, -4, 2], [0, 0, 0, -2]]


def test_one_hot_kernel_moves_features_by_offset():
    """W[k] = 1 only at k = 14 (i=2, j=1, l=1 -> offset (+1, 0, 0)): out[c] = in[c + x]."""
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 2, 0, 0]])
    feats = torch.arange(1.0, 6.0)[:, None]
    conv = SparseConv3d(1, 1, kernel_size=3)
    with torch.no_grad():
        conv.kernel.zero_()
        conv.kernel[14] = 1.0
    out = conv(SparseTensor.from_coords(coords, feats)).F[:, 0]
    assert out.tolist() == [2.0, 5.0, 0.0, 0.0, 0.0]
    with torch.no_grad():   # k = 22 -> (i, j, l) = (1, 1, 2): offset (0, 0, +1)
        conv.kernel.zero_()
        conv.kernel[22] = 1.0
    out = conv(SparseTensor.from_coords(coords, feats)).F[:, 0]
    assert out.tolist() == [4.0, 0.0, 0.0, 0.0, 0.0]
    # stride-2 conv: k = 1 reads the child at +x (bits (1, 0, 0))
    down = SparseConv3d(1, 1, kernel_size=2, stride=2)
    with torch.no_grad():
        down.kernel.zero_()
        down.kernel[1] = 1.0
    y = down(SparseTensor.from_coords(coords, feats))
    got = {tuple(c): v for c, v in zip(y.C.tolist(), y.F[:, 0].tolist())}
    assert got == {(0, 0, 0, 0): 2.0, (0, 2, 0, 0): 0.0}


@pytest.mark.parametrize("kind", ["sub3", "sub5", "down", "up"])
def test_gradcheck(kind):
    torch.manual_seed(2)
    coords = random_coords(25, 3, batch=1)
    m = CoordinateManager()
    m.add(coords, 1)
    if kind.startswith("sub"):
        ks = int(kind[3])
        kmap, n_in, k_vol = m.submanifold_map(1, ks), coords.shape[0], ks ** 3
    elif kind == "down":
        kmap, n_in, k_vol = m.down_map(1), coords.shape[0], 8
    else:
        kmap = m.down_map(1).transposed()
        n_in, k_vol = kmap.n_in, 8
    feats = torch.randn(n_in, 2, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(k_vol, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: sparse_conv(f, w, kmap), (feats, kernel))


def test_kernel_maps_are_cached_and_shared():
    coords = random_coords(50, 4, batch=1)
    x = SparseTensor.from_coords(coords[:, 1:], torch.randn(coords.shape[0], 3))
    a, b = SparseConv3d(3, 4), SparseConv3d(4, 4)
    y = b(a(x))
    assert set(x.manager.maps) == {(1, "sub", 3, 1)}
    kmap = x.manager.maps[(1, "sub", 3, 1)]
    b(y)
    assert x.manager.maps[(1, "sub", 3, 1)] is kmap
    d = SparseConv3d(4, 4, kernel_size=2, stride=2)(y)
    SparseAvgPool()(y)
    SparseConv3d(4, 2, kernel_size=2, stride=2, transposed=True)(d)
    assert set(x.manager.maps) == {(1, "sub", 3, 1), (1, "down")}
    assert y.manager is x.manager and d.manager is x.manager


def test_avg_pool_and_cat_and_batchnorm():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1], [0, 2, 0, 0], [1, 0, 0, 0]])
    feats = torch.tensor([[1.0], [3.0], [5.0], [7.0], [11.0]])
    x = SparseTensor.from_coords(coords, feats)
    y = SparseAvgPool()(x)
    got = {tuple(c): v for c, v in zip(y.C.tolist(), y.F[:, 0].tolist())}
    assert got == {(0, 0, 0, 0): 3.0, (0, 2, 0, 0): 7.0, (1, 0, 0, 0): 11.0}
    assert cat(x, x).F.shape == (5, 2)
    bn = SparseBatchNorm(1).eval()
    torch.testing.assert_close(bn(x).F, feats / (1 + 1e-5) ** 0.5)
    assert y.batch_slices() == [slice(0, 2), slice(2, 3)]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="duplicate"):
        SparseTensor.from_coords(torch.tensor([[0, 0, 0], [0, 0, 0]]), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="integer"):
        SparseTensor.from_coords(torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="grouped"):
        SparseTensor.from_coords(torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]), torch.zeros(2, 1))
    with pytest.raises(ValueError):
        SparseConv3d(1, 1, kernel_size=4)
    with pytest.raises(ValueError, match="coordinates must lie"):
        pack_keys(torch.tensor([[0, 1 << 20, 0, 0]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(3)
    coords = random_coords(300, 6)
    feats = torch.randn(coords.shape[0], 8)
    conv, down, up = SparseConv3d(8, 8), SparseConv3d(8, 8, 2, 2), SparseConv3d(8, 8, 2, 2, transposed=True)

    def run(dev):
        x = SparseTensor.from_coords(coords.to(dev), feats.to(dev).requires_grad_())
        out = up.to(dev)(down.to(dev)(conv.to(dev)(x)))
        out.F.square().sum().backward()
        return out.F.detach().cpu(), conv.kernel.grad.detach().cpu().clone()

    cpu_out, cpu_grad = run("cpu")
    conv.kernel.grad = None
    gpu_out, gpu_grad = run("cuda")
    torch.testing.assert_close(gpu_out, cpu_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------ gather vs pair form --

def _maps(m: CoordinateManager):
    """Every map kind at stride 1: submanifold k3 / k5, strided k2s2 and its transpose."""
    return {"sub3": m.submanifold_map(1, 3), "sub5": m.submanifold_map(1, 5),
            "down": m.down_map(1), "up": m.down_map(1).transposed()}


@pytest.mark.parametrize("kind", ["sub3", "sub5", "down", "up"])
def test_gather_form_equals_pair_form_and_reference(kind):
    """Forward, input and kernel gradients: gather form == pair form (float64), and the forward
    equals the brute-force dense reference."""
    torch.manual_seed(4)
    coords = random_coords(120, 4)
    m = CoordinateManager()
    m.add(coords, 1)
    kmap = _maps(m)[kind]
    k_vol = kmap.kernel_volume
    feats = torch.randn(kmap.n_in, 3, dtype=torch.float64)
    kernel = torch.randn(k_vol, 3, 4, dtype=torch.float64)
    grad = torch.randn(kmap.n_out, 4, dtype=torch.float64)
    res = {}
    for method in ("pairs", "gather"):
        f, w = feats.clone().requires_grad_(), kernel.clone().requires_grad_()
        out = sparse_conv(f, w, kmap, method=method)
        out.backward(grad)
        res[method] = (out.detach(), f.grad, w.grad)
    for a, b in zip(res["pairs"], res["gather"]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    if kind.startswith("sub"):
        ref = ref_submanifold(coords, feats, kernel, int(kind[3]), 1)
        torch.testing.assert_close(res["gather"][0], ref, rtol=1e-10, atol=1e-10)
    elif kind == "down":
        ref_c, ref_f = ref_strided(coords, feats, kernel, 1)
        order = torch.argsort(pack_keys(m.coords(2)))
        assert torch.equal(m.coords(2)[order], ref_c)
        torch.testing.assert_close(res["gather"][0][order], ref_f, rtol=1e-10, atol=1e-10)


def test_gather_form_float32_equals_pair_form():
    """Same summation order (centre first, then offsets ascending): equal float32 results up to the
    matmul kernel's blocking, which differs by CPU (bitwise equal on some, not on AMD EPYC)."""
    torch.manual_seed(5)
    coords = random_coords(400, 6)
    m = CoordinateManager()
    m.add(coords, 1)
    feats = torch.randn(coords.shape[0], 8)
    for kmap in _maps(m).values():
        kernel = torch.randn(kmap.kernel_volume, 8, 5)
        f = feats if kmap.n_in == coords.shape[0] else torch.randn(kmap.n_in, 8)
        torch.testing.assert_close(sparse_conv(f, kernel, kmap, method="gather"),
                                   sparse_conv(f, kernel, kmap, method="pairs"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["sub3", "down", "up"])
def test_gather_form_gradcheck(kind):
    torch.manual_seed(6)
    coords = random_coords(30, 3, batch=1)
    m = CoordinateManager()
    m.add(coords, 1)
    kmap = _maps(m)[kind]
    feats = torch.randn(kmap.n_in, 2, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(kmap.kernel_volume, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: sparse_conv(f, w, kmap, method="gather"), (feats, kernel))


def test_gather_plan_layout():
    """Groups cover every pair once, padding slots read row 0 and are listed, bags are complete."""
    from folk_ros.core.sparse.plan import GROUP_RATIO

    coords = random_coords(200, 5)
    m = CoordinateManager()
    m.add(coords, 1)
    kmap = m.submanifold_map(1, 3)
    plan = kmap.plan()
    assert kmap.plan() is plan and kmap.transposed() is kmap.transposed()
    assert kmap.transposed().plan().out_bag is plan.in_bag          # derived, not rebuilt
    counts = [kmap.ptr[k + 1] - kmap.ptr[k] for k in range(27)]
    used = sorted(plan.offsets.tolist())
    assert used == [k for k in range(27) if counts[k] > 0]
    for first, g, rows, start in plan.groups:
        ks = plan.offsets[first:first + g].tolist()
        assert rows == max(counts[k] for k in ks) and min(counts[k] for k in ks) >= GROUP_RATIO * rows
        for j, k in enumerate(ks):
            s = start + j * rows
            i, o = kmap.pairs(k)
            assert torch.equal(plan.in_slots[s:s + counts[k]], i) and torch.equal(plan.out_slots[s:s + counts[k]], o)
    assert plan.out_bag.numel() == plan.in_bag.numel() == kmap.in_idx.numel()
    assert plan.pad_slots.numel() == plan.num_slots - kmap.in_idx.numel()
    assert torch.equal(plan.in_slots[plan.pad_slots], torch.zeros_like(plan.pad_slots))
    # bag of output row r: centre slot first, then kernel offsets ascending
    r = int(torch.argmax(torch.bincount(kmap.out_idx, minlength=kmap.n_out)))
    start = int(plan.out_bag_offsets[r])
    stop = int(plan.out_bag_offsets[r + 1]) if r + 1 < kmap.n_out else plan.out_bag.numel()
    k_of_slot = torch.full((plan.num_slots,), -1)
    for first, g, rows, st in plan.groups:
        for j, k in enumerate(plan.offsets[first:first + g].tolist()):
            k_of_slot[st + j * rows: st + j * rows + counts[k]] = k
    ks = k_of_slot[plan.out_bag[start:stop]].tolist()
    assert ks[0] == 13 and ks[1:] == sorted(ks[1:]) and 13 not in ks[1:]
    assert all(int(plan.out_slots[s]) == r for s in plan.out_bag[start:stop].tolist())
    with pytest.raises(ValueError, match="method"):
        sparse_conv(torch.zeros(kmap.n_in, 1), torch.zeros(27, 1, 1), kmap, method="dense")


# ---------------------------------------------------------- FPS tie order --

def _fps_tree_reference(pts: torch.Tensor, num: int) -> list[int]:
    """pointnet2's CUDA kernel step by step: per-thread first maximum, then the tree reduction."""
    n = pts.shape[0]
    b = min(512, 1 << (n.bit_length() - 1))
    valid = (pts * pts).sum(1) > 1e-3
    temp = [1e10] * n
    idx, old = [0], 0
    for _ in range(1, num):
        best, best_i = [-1.0] * b, [0] * b
        for t in range(b):
            for k in range(t, n, b):
                if not valid[k]:
                    continue
                d = pts[k] - pts[old]
                temp[k] = min(temp[k], float((d[0] * d[0] + d[1] * d[1]) + d[2] * d[2]))
                if temp[k] > best[t]:
                    best[t], best_i[t] = temp[k], k
        off = b // 2
        while off >= 1:
            for s in range(off):
                if best[s + off] > best[s]:
                    best[s], best_i[s] = best[s + off], best_i[s + off]
            off //= 2
        old = best_i[0]
        idx.append(old)
    return idx


@pytest.mark.parametrize("n", [1, 5, 37, 300])
def test_fps_tie_order_equals_kernel(n):
    from folk_ros.core.mask3d.fps import furthest_point_sample
    g = torch.Generator().manual_seed(n)
    pts = torch.randint(-3, 4, (n, 3), generator=g).float()          # many equal distances, some zeros
    assert furthest_point_sample(pts, 12).tolist() == _fps_tree_reference(pts, 12)


def test_auto_method_follows_device():
    from folk_ros.core.sparse.functional import resolve_method
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert resolve_method("auto", torch.device("cpu")) == "pairs"
    finally:
        torch.set_num_threads(threads)
    assert resolve_method("auto", torch.device("cuda")) == "gather"
    assert resolve_method("gather", torch.device("cpu")) == "gather"
    with pytest.raises(ValueError, match="method"):
        resolve_method("fast", torch.device("cpu"))
