"""Pure-PyTorch sparse backend == MinkowskiEngine backend (outputs and gradients).

The same ``SparseConv3d`` parameter tensors run through both backends
(folk_ros/core/sparse/minkowski.py); results are compared on our coordinate
rows with a relative tolerance of 1e-5 (``max|a - b| <= 1e-5 * max|b|`` plus
an element-wise ``assert_close`` at that scale).  MinkowskiEngine is optional:
the tests that need it skip when it does not import, unless
``FOLK_REQUIRE_MINKOWSKI=1`` (CI after ``scripts/build_minkowski.sh``), where
they fail.  The backbone test runs the full-size Res16UNet34C on the golden
scene (../shared/data/mask3d_golden.npz; skipped when absent unless ``CI``).
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from folk_ros.core.mask3d import BackboneConfig, Mask3D, Mask3DConfig
from folk_ros.core.mask3d.backbone import Res16UNet34C
from folk_ros.core.sparse import SparseConv3d, SparseTensor
from folk_ros.core.sparse import minkowski as mk

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("FOLK_SHARED_DATA", REPO.parent / "shared" / "data")) / "mask3d_golden.npz"
RTOL = 1e-5
# MinkowskiEngine 0.5.4's own warnings (CPU-only build, autograd Functions instantiated): not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:The MinkowskiEngine was compiled with CPU_ONLY"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]   # deterministic reductions


@pytest.fixture(scope="module")
def me():
    """The MinkowskiEngine module; skip (or fail under FOLK_REQUIRE_MINKOWSKI=1) when it does not import."""
    if not mk.minkowski_available():
        try:
            mk.require_minkowski()
        except ImportError as err:
            if os.environ.get("FOLK_REQUIRE_MINKOWSKI") == "1":
                pytest.fail(f"FOLK_REQUIRE_MINKOWSKI=1 but {err}", pytrace=False)
            pytest.skip(str(err))
    return mk.require_minkowski()


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    """``max|a - b| <= rtol * max|b|`` and element-wise closeness at that scale."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert scale > 0, f"{what}: reference is all zeros (a degenerate test)"
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol} x max |ref| {scale:.3g}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


def random_tensor(n: int, channels: int, seed: int, batch: int = 2, extent: int = 10) -> SparseTensor:
    """A random batched sparse tensor: n unique voxels per item in [-extent, extent)^3 (negative coordinates too)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        side = 2 * extent
        flat = torch.randperm(side ** 3, generator=g)[:n]
        xyz = torch.stack([flat % side, flat // side % side, flat // side ** 2], dim=1) - extent
        rows.append(torch.cat([torch.full((n, 1), b), xyz], dim=1))
    coords = torch.cat(rows)
    return SparseTensor.from_coords(coords, torch.randn(coords.shape[0], channels, generator=g))


def at_stride(x: SparseTensor, stride: int, channels: int, seed: int) -> SparseTensor:
    """Random features on ``x``'s coordinate set at ``stride`` (same manager)."""
    n = x.manager.coords(stride).shape[0]
    return SparseTensor(torch.randn(n, channels, generator=torch.Generator().manual_seed(seed)), stride, x.manager)


def run_both(layer: SparseConv3d, x: SparseTensor, seed: int):
    """Output features and gradients (input, kernel, bias) of ``layer`` on both backends, on our rows."""
    results = []
    for backend in ("torch", "minkowski"):
        layer.zero_grad()
        feats = x.F.detach().clone().requires_grad_(True)
        xin = SparseTensor(feats, x.stride, x.manager)
        if backend == "torch":
            out = layer(xin)
        else:
            out = mk.from_minkowski(mk.minkowski_conv(layer, mk.to_minkowski(xin)), x.manager)
        weight = torch.randn(out.F.shape, generator=torch.Generator().manual_seed(seed))
        (out.F * weight).sum().backward()
        grads = [feats.grad, layer.kernel.grad] + ([layer.bias.grad] if layer.bias is not None else [])
        results.append((out, [g.clone() for g in grads]))
    return results


CASES = [
    # name, conv kwargs, input stride, Cin, Cout, expected output stride
    ("submanifold k3", dict(kernel_size=3, bias=True), 1, 8, 16, 1),
    ("submanifold k3 at stride 4", dict(kernel_size=3), 4, 16, 8, 4),
    ("submanifold k5 (stem)", dict(kernel_size=5), 1, 3, 32, 1),
    ("pointwise k1", dict(kernel_size=1, bias=True), 2, 16, 24, 2),
    ("strided k2s2", dict(kernel_size=2, stride=2), 1, 16, 16, 2),
    ("strided k2s2 at stride 2", dict(kernel_size=2, stride=2), 2, 16, 32, 4),
    ("transposed k2s2", dict(kernel_size=2, stride=2, transposed=True), 2, 32, 16, 1),
    ("transposed k2s2 at stride 8", dict(kernel_size=2, stride=2, transposed=True, bias=True), 8, 16, 8, 4),
]


@pytest.mark.parametrize("name,kwargs,stride,cin,cout,out_stride", CASES, ids=[c[0] for c in CASES])
def test_conv_outputs_and_gradients_equal(me, name, kwargs, stride, cin, cout, out_stride):
    torch.manual_seed(7)
    layer = SparseConv3d(cin, cout, **kwargs)
    if layer.bias is not None:
        torch.nn.init.normal_(layer.bias)
    x = random_tensor(400, cin, seed=11)
    if stride > 1:
        x = at_stride(x, stride, cin, seed=12)
    (out_t, grads_t), (out_m, grads_m) = run_both(layer, x, seed=13)
    assert out_t.stride == out_m.stride == out_stride
    assert out_m.manager is x.manager
    assert_rel_close(out_m.F, out_t.F, f"{name}: output")
    for label, gm, gt in zip(("d input", "d kernel", "d bias"), grads_m, grads_t):
        assert_rel_close(gm, gt, f"{name}: {label}")


def test_twin_shares_our_parameters(me):
    layer = SparseConv3d(4, 6, kernel_size=3, bias=True)
    twin = mk.minkowski_twin(layer)
    assert twin.kernel is layer.kernel and twin.bias is layer.bias
    with torch.no_grad():
        layer.kernel.mul_(2)                       # in-place update seen by both
    assert twin.kernel is layer.kernel
    assert set(dict(layer.named_parameters())) == {"kernel", "bias"}   # no twin in our module tree


def test_round_trip_keeps_rows(me):
    x = random_tensor(300, 5, seed=3)
    for stride in (1, 2, 8):
        xs = at_stride(x, stride, 5, seed=stride)
        back = mk.from_minkowski(mk.to_minkowski(xs), x.manager)
        assert back.stride == stride
        assert torch.equal(back.F, xs.F)


@pytest.mark.skipif(not GOLDEN.is_file() and not os.environ.get("CI"), reason=f"golden scene not found at {GOLDEN}")
def test_backbone_equal_on_golden_scene(me):
    """Full-size Res16UNet34C (ScanNet200 config): all 5 feature maps and all parameter gradients."""
    g = np.load(GOLDEN)
    torch.manual_seed(0)
    backbone = Res16UNet34C(BackboneConfig())
    with torch.no_grad():                          # non-trivial BatchNorm statistics and affine parameters
        for name, t in backbone.named_buffers():
            if name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
        for name, p in backbone.named_parameters():
            if name.endswith("bn.weight") or name.endswith("bn.bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    backbone.eval()
    coords = torch.from_numpy(g["voxel_coords"]).long()
    feats = torch.from_numpy(g["input_features"])
    results = {}
    for backend in ("torch", "minkowski"):
        backbone.zero_grad()
        x = SparseTensor.from_coords(coords, feats)
        pcd, maps = mk.backbone_forward(backbone, x, backend)
        assert pcd is maps[-1]
        loss = sum((m.F * torch.randn(m.F.shape, generator=torch.Generator().manual_seed(i))).sum()
                   for i, m in enumerate(maps))
        loss.backward()
        results[backend] = ([m.F.detach() for m in maps], [m.stride for m in maps],
                            {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None})
    maps_t, strides_t, grads_t = results["torch"]
    maps_m, strides_m, grads_m = results["minkowski"]
    assert strides_t == strides_m == [16, 8, 4, 2, 1]
    assert maps_t[-1].shape == (coords.shape[0], 96)
    for s, ft, fm in zip(strides_t, maps_t, maps_m):
        assert_rel_close(fm, ft, f"backbone map at stride {s}")
    assert grads_t.keys() == grads_m.keys() and len(grads_t) > 100
    for name in grads_t:
        assert_rel_close(grads_m[name], grads_t[name], f"d {name}")


@pytest.mark.skipif(not GOLDEN.is_file() and not os.environ.get("CI"), reason=f"golden scene not found at {GOLDEN}")
def test_mask3d_forward_equal_with_switched_backend(me):
    """The whole Mask3D (backbone + decoder) after set_sparse_backend: same logits and masks."""
    g = np.load(GOLDEN)
    torch.manual_seed(1)
    model = Mask3D(Mask3DConfig()).eval()
    inputs = [torch.from_numpy(g[k]) for k in ("voxel_coords", "input_features", "raw_coordinates")]
    outs = {}
    with torch.inference_mode():
        for backend in ("torch", "minkowski", "torch"):
            mk.set_sparse_backend(model, backend)
            outs.setdefault(backend, []).append(model(*inputs))
    assert mk.sparse_backend_of(model) == "torch"
    ref, got = outs["torch"][0], outs["minkowski"][0]
    for key in ("pred_logits", "mask_features", "backbone_features"):
        assert_rel_close(got[key][0] if key == "pred_logits" else got[key],
                         ref[key][0] if key == "pred_logits" else ref[key], f"Mask3D {key}")
    assert_rel_close(got["pred_masks"][0], ref["pred_masks"][0], "Mask3D pred_masks")
    assert torch.equal(outs["torch"][1]["pred_masks"][0], ref["pred_masks"][0])   # switched back: torch again


def test_set_sparse_backend_switches_and_keeps_state_dict(me):
    backbone = Res16UNet34C(BackboneConfig(planes=(8, 8, 8, 8, 8, 8, 8, 8), layers=(1,) * 8, init_dim=8,
                                           conv1_kernel_size=3, out_channels=2)).eval()
    keys = list(backbone.state_dict())
    x = random_tensor(300, 3, seed=5, batch=1)
    with torch.no_grad():
        ref = backbone(x)[0].F
        assert mk.set_sparse_backend(backbone, "minkowski") == "minkowski"
        assert mk.sparse_backend_of(backbone) == "minkowski"
        got = backbone(x)[0].F
        assert mk.set_sparse_backend(backbone, "torch") == "torch"
        assert mk.sparse_backend_of(backbone) == "torch"
    assert list(backbone.state_dict()) == keys
    assert_rel_close(got, ref, "switched backbone")


# ------------------------------------------------------- no MinkowskiEngine needed --

def test_resolve_backend():
    assert mk.resolve_backend("torch") == "torch"
    assert mk.resolve_backend("auto") == ("minkowski" if mk.minkowski_available() else "torch")
    with pytest.raises(ValueError, match="sparse backend must be one of"):
        mk.resolve_backend("spconv")
    if not mk.minkowski_available():
        with pytest.raises(ImportError, match="build_minkowski.sh"):
            mk.resolve_backend("minkowski")


def test_row_permutation():
    c = torch.tensor([[0, 0, 0, 0], [0, 2, -2, 4], [1, 0, 0, 0], [0, -6, 2, 2]])
    perm = torch.tensor([2, 0, 3, 1])
    idx = mk.row_permutation(c, c[perm])
    assert torch.equal(c[idx], c[perm])
    other = c.clone()
    other[1, 1] = 8
    with pytest.raises(ValueError, match="coordinate sets differ"):
        mk.row_permutation(c, other)
    with pytest.raises(ValueError, match="differ in size"):
        mk.row_permutation(c, c[:3])
