"""The FOLK student (VL-adapter, paper Eq. 7): masked mean pooling, MLP, checkpoints."""

import pytest
import torch

from folk_ros.core.student import Student, StudentConfig, masked_mean, voxel_masked_mean
from folk_ros.core.voxel_masks import VoxelMasks


def _loop_mean(features, masks):
    """Slow reference: one instance at a time."""
    return torch.stack([features[m].mean(dim=0) for m in masks])


def test_pool_equals_hand_computation():
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [-1.0, 8.0]])
    masks = torch.tensor([[True, True, False, False],    # mean of rows 0, 1 = (2, 1)
                          [False, True, True, True],     # (3+5-1, 2+4+8) / 3 = (7/3, 14/3)
                          [False, False, False, True]])  # row 3 = (-1, 8)
    want = torch.tensor([[2.0, 1.0], [7 / 3, 14 / 3], [-1.0, 8.0]])
    torch.testing.assert_close(masked_mean(feats, masks), want)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("form", ["dense", "index_lists", "coo", "csr"])
def test_pool_matches_loop_reference(form):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 96, generator=g, dtype=torch.float64)
    masks = torch.rand(17, 500, generator=g) < 0.1
    masks[:, 0] = True  # no empty mask
    given = {"dense": lambda: masks,
             "index_lists": lambda: [torch.nonzero(m).flatten() for m in masks],
             "coo": lambda: masks.to_sparse(),
             "csr": lambda: masks.double().to_sparse_csr()}[form]()
    got = masked_mean(feats, given)
    assert got.shape == (17, 96) and got.dtype == torch.float64
    torch.testing.assert_close(got, _loop_mean(feats, masks))


def test_pool_large_case_is_one_product():
    """M=100, N=200k, D=96 runs through the vectorised path and agrees with the loop on a few masks."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(200_000, 96, generator=g)
    masks = torch.rand(100, 200_000, generator=g) < 0.02
    got = masked_mean(feats, masks)
    assert got.shape == (100, 96)
    torch.testing.assert_close(got[[0, 57, 99]], _loop_mean(feats, masks[[0, 57, 99]]), rtol=1e-4, atol=1e-5)


def test_pool_chunks_agree(monkeypatch):
    """Row chunking of the dense product (bounded memory) gives the same result."""
    import folk_ros.core.student as student_mod
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(300, 8, generator=g, dtype=torch.float64)
    masks = torch.rand(10, 300, generator=g) < 0.3
    whole = masked_mean(feats, masks)
    monkeypatch.setattr(student_mod, "_DENSE_CHUNK_ELEMENTS", 3 * 300)  # chunks of 3 rows
    torch.testing.assert_close(masked_mean(feats, masks), whole)


@pytest.mark.parametrize("form", ["dense", "index_lists"])
def test_empty_mask_raises(form):
    feats = torch.randn(5, 4)
    masks = torch.tensor([[True, False, False, False, False], [False] * 5])
    given = masks if form == "dense" else [torch.tensor([0]), torch.tensor([], dtype=torch.long)]
    with pytest.raises(ValueError, match="no points"):
        masked_mean(feats, given)


def test_no_masks_gives_empty_output():
    model = Student(StudentConfig(in_dim=4, hidden_dim=8, out_dim=6)).eval()
    assert model(torch.randn(5, 4), torch.zeros(0, 5, dtype=torch.bool)).shape == (0, 6)
    assert model(torch.randn(5, 4), []).shape == (0, 6)


def test_bad_inputs_raise():
    feats = torch.randn(5, 4)
    with pytest.raises(ValueError, match="bool"):
        masked_mean(feats, torch.ones(2, 5))
    with pytest.raises(ValueError, match="N=5"):
        masked_mean(feats, torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        masked_mean(feats, [torch.tensor([0, 5])])
    with pytest.raises(ValueError, match="in_dim|\\(M, 4\\)"):
        Student(StudentConfig(in_dim=4)).project(torch.randn(3, 5))


def test_forward_is_unit_norm_and_uses_pool_then_mlp():
    torch.manual_seed(0)
    cfg = StudentConfig(in_dim=96, hidden_dim=32, out_dim=16, dropout=0.0)
    model = Student(cfg).eval()
    feats = torch.randn(200, 96)
    masks = torch.rand(7, 200) < 0.2
    masks[:, 0] = True
    out = model(feats, masks)
    assert out.shape == (7, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(7))
    x = model.norm(_loop_mean(feats, masks))
    ref = model.mlp[3](torch.nn.functional.gelu(model.mlp[0](x)))
    torch.testing.assert_close(out, ref / ref.norm(dim=1, keepdim=True), rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip():
    torch.manual_seed(0)
    cfg = StudentConfig(in_dim=128, hidden_dim=24, out_dim=12, dropout=0.2, input_norm=False)
    model = Student(cfg).eval()
    ckpt = model.to_checkpoint(temperature=0.07)
    assert ckpt["config"]["in_dim"] == 128 and ckpt["temperature"] == 0.07
    again = Student.from_checkpoint(ckpt)
    assert again.cfg == cfg and not again.training
    feats, masks = torch.randn(50, 128), torch.rand(4, 50) < 0.5
    masks[:, 0] = True
    torch.testing.assert_close(again(feats, masks), model(feats, masks))


def test_checkpoint_errors():
    model = Student(StudentConfig(in_dim=4, hidden_dim=8, out_dim=6))
    with pytest.raises(ValueError, match="format"):
        Student.from_checkpoint({"state_dict": {}})
    ckpt = model.to_checkpoint()
    ckpt["config"] = dict(ckpt["config"], hidden_dim=9)
    with pytest.raises(ValueError, match="do not match"):
        Student.from_checkpoint(ckpt)
    with pytest.raises(ValueError, match="unknown"):
        StudentConfig.from_dict({"in_dim": 4, "depth": 3})
    with pytest.raises(ValueError, match="reserved"):
        model.to_checkpoint(config={})


def test_voxel_masked_mean_equals_the_mean_over_the_points():
    """Pooling per voxel, weighted by the voxel's points, is Eq. 7's mean over the points of each mask."""
    gen = torch.Generator().manual_seed(0)
    v, n, m, d = 50, 400, 6, 8
    voxel_features = torch.randn(v, d, generator=gen)
    inverse = torch.randint(0, v, (n,), generator=gen)
    voxel_masks = torch.rand(m, v, generator=gen) < 0.3
    voxel_masks[:, inverse[0]] = True                          # every mask holds at least one point
    voxel_points = torch.bincount(inverse, minlength=v)
    got = voxel_masked_mean(voxel_features, VoxelMasks.from_dense(voxel_masks), voxel_points)
    want = masked_mean(voxel_features[inverse], voxel_masks[:, inverse])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    student = Student(StudentConfig(in_dim=d, hidden_dim=16, out_dim=4)).eval()
    torch.testing.assert_close(student.embed_voxels(voxel_features, VoxelMasks.from_dense(voxel_masks), voxel_points),
                               student(voxel_features[inverse], voxel_masks[:, inverse]), rtol=1e-5, atol=1e-6)
    empty = VoxelMasks.from_dense(torch.zeros(1, v, dtype=torch.bool))
    with pytest.raises(ValueError, match="no points"):
        voxel_masked_mean(voxel_features, empty, voxel_points)
    with pytest.raises(ValueError, match="voxel_masks"):
        voxel_masked_mean(voxel_features, VoxelMasks.from_dense(voxel_masks[:, :-1]), voxel_points)
