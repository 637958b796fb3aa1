"""training.mask3d.evaluate: recall by hand, one network pass serving several post-processings, the
DBSCAN split of a mask that covers two separate objects, the mask threshold, and the CLI's grid report."""

import json

import numpy as np
import pytest
import torch

from folk_ros.core.mask3d.config import PostprocessConfig, preset
from folk_ros.core.mask3d.checkpoint import save_checkpoint
from folk_ros.core.mask3d.model import Mask3D
from folk_ros.core.mask3d.postprocess import class_agnostic_proposals
from folk_ros.core.segmenter_config import SegmenterConfig
from training.mask3d.data import load_scene
from training.mask3d.evaluate import class_agnostic_results, main, recall_at
from training.mask3d.train import class_agnostic_ap
from test.fixtures import box_room_scene


def test_recall_at_by_hand():
    gt = np.array([1] * 100 + [2] * 100 + [3] * 50 + [0] * 10)        # object 3 is under 100 points: ignored
    hit1 = np.zeros(260, bool)
    hit1[:60] = True                                                    # IoU 0.6 with object 1
    miss2 = np.zeros(260, bool)
    miss2[100:140] = True                                               # IoU 0.4 with object 2
    assert recall_at(gt, np.stack([hit1, miss2])) == (1, 2)
    assert recall_at(gt, np.zeros((0, 260), bool)) == (0, 2)


def test_postprocess_settings_are_checked():
    assert PostprocessConfig.class_agnostic(0.0).use_dbscan is False
    post = PostprocessConfig.class_agnostic(0.1, 0.7)
    assert post.use_dbscan and (post.dbscan_eps, post.nms_iou) == (0.1, 0.7)
    with pytest.raises(ValueError, match="dbscan_eps"):
        PostprocessConfig.class_agnostic(-0.1)
    with pytest.raises(ValueError, match="dbscan_eps"):
        SegmenterConfig(dbscan_eps=-1.0)
    with pytest.raises(ValueError, match="nms_iou"):
        SegmenterConfig(nms_iou=1.5)
    assert PostprocessConfig().mask_logit_threshold == 0.0                     # Mask3D's logit > 0
    assert PostprocessConfig(mask_threshold=0.1).mask_logit_threshold == pytest.approx(np.log(0.1 / 0.9))
    for bad in (0.0, 1.0, -1.0):
        with pytest.raises(ValueError, match="mask_threshold"):
            PostprocessConfig.class_agnostic(0.1, mask_threshold=bad)
        with pytest.raises(ValueError, match="mask_threshold"):
            SegmenterConfig(mask_threshold=bad)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mask_threshold_takes_the_unsure_edge_of_an_object(eps):
    """An object whose edge voxels have mask probability 0.2: at Mask3D's 0.5 the proposal is the core
    only; at 0.1 it is the whole object, still not the background (probability 0.01), with or without
    the split, and its score is the mean probability over the larger mask."""
    xyz = torch.tensor([[0.0, 0, 0], [0.02, 0, 0], [0.04, 0, 0], [0.06, 0, 0], [1.0, 0, 0]])
    p = torch.tensor([[0.9], [0.9], [0.2], [0.2], [0.01]])                   # core, edge, background
    logits, pred_logits, inverse = torch.logit(p), torch.tensor([[5.0, -5.0]]), torch.arange(5)
    core, s_core = class_agnostic_proposals(pred_logits, logits, inverse, xyz, PostprocessConfig.class_agnostic(eps))
    whole, s_whole = class_agnostic_proposals(pred_logits, logits, inverse, xyz,
                                              PostprocessConfig.class_agnostic(eps, mask_threshold=0.1))
    assert core.dense().tolist() == [[True, True, False, False, False]]
    assert whole.dense().tolist() == [[True, True, True, True, False]]
    objectness = 1 - float(torch.tensor([5.0, -5.0]).softmax(0)[1])
    assert s_core.item() == pytest.approx(objectness * 0.9, rel=1e-5)
    assert s_whole.item() == pytest.approx(objectness * 0.55, rel=1e-5)


def test_dbscan_split_gives_one_proposal_per_separate_part():
    """A query lighting up two objects 1 m apart: without the split one proposal covers both."""
    xyz = torch.tensor([[0.0, 0, 0], [0.02, 0, 0], [1.0, 0, 0], [1.02, 0, 0], [2.0, 0, 0]])
    logits = torch.tensor([[3.0], [3.0], [3.0], [3.0], [-3.0]])          # (V, Q=1)
    pred_logits = torch.tensor([[2.0, -2.0]])                            # object, no-object
    inverse = torch.arange(5)
    whole, _ = class_agnostic_proposals(pred_logits, logits, inverse, xyz, PostprocessConfig.class_agnostic(0.0))
    parts, scores = class_agnostic_proposals(pred_logits, logits, inverse, xyz,
                                             PostprocessConfig.class_agnostic(0.1))
    assert whole.dense().tolist() == [[True, True, True, True, False]]
    assert sorted(parts.dense().tolist()) == [[False, False, True, True, False], [True, True, False, False, False]]
    assert scores.shape == (2,)


def test_parts_under_min_points_are_dropped():
    """min_points counts points, not voxels: the part whose 2 voxels hold 3 points stays at min_points 3,
    the one whose 2 voxels hold 2 points goes (the Segmenter relies on this and filters nothing again)."""
    xyz = torch.tensor([[0.0, 0, 0], [0.02, 0, 0], [1.0, 0, 0], [1.02, 0, 0], [2.0, 0, 0]])
    logits = torch.tensor([[3.0], [3.0], [3.0], [3.0], [-3.0]])          # (V, Q=1): two parts
    pred_logits = torch.tensor([[2.0, -2.0]])
    inverse = torch.tensor([0, 0, 1, 2, 3, 4])                            # voxel 0 holds two points
    kept, _ = class_agnostic_proposals(pred_logits, logits, inverse, xyz,
                                       PostprocessConfig.class_agnostic(0.1, min_points=3))
    assert kept.dense().tolist() == [[True, True, False, False, False]]
    both, _ = class_agnostic_proposals(pred_logits, logits, inverse, xyz,
                                       PostprocessConfig.class_agnostic(0.1, min_points=2))
    assert len(both) == 2


@pytest.fixture(scope="module")
def scene_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask3d_eval")
    scene = box_room_scene(root / "scenes")
    torch.manual_seed(0)
    model = Mask3D(preset("small")).eval()
    save_checkpoint(root / "m.pt", model)
    return scene, model, root / "m.pt"


def test_one_pass_serves_every_postprocessing(scene_and_model):
    scene_dir, model, _ = scene_and_model
    scene = load_scene(scene_dir)
    posts = [PostprocessConfig.class_agnostic(0.0, 0.9), PostprocessConfig.class_agnostic(0.1, 0.5)]
    many = model.predict_many(scene.xyz, scene.rgb, posts)
    for post, got in zip(posts, many):
        one = model.predict(scene.xyz, scene.rgb, post=post)
        assert torch.equal(one.masks, got.masks) and torch.allclose(one.scores, got.scores)
    p = many[1]          # voxel-level proposals expand to the input points as their voxels
    assert p.masks.shape == (p.scores.numel(), len(scene.xyz)) and p.masks.dtype == torch.bool
    assert torch.equal(p.masks, p.voxel_masks.dense()[:, p.inverse_map])
    assert torch.equal(p.point_counts, p.masks.sum(1))
    assert torch.equal(p.point_features, p.voxel_features[p.inverse_map])
    results = class_agnostic_results(model, [scene], posts)
    assert results[1][0].mean == class_agnostic_ap(model, [scene], posts[1]).mean
    assert all(0.0 <= recall <= 1.0 for _, recall in results)


def test_cli_reports_the_grid_and_its_best(scene_and_model, tmp_path, capsys):
    scene_dir, _, ckpt = scene_and_model
    out = tmp_path / "r.json"
    assert main(["--checkpoint", str(ckpt), "--scenes", str(scene_dir), "--mask-threshold", "0.5", "0.2",
                 "--dbscan-eps", "0", "0.1", "--nms-iou", "0.9", "0.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    grid = [(t, e, n) for t in (0.5, 0.2) for e in (0, 0.1) for n in (0.9, 0.5)]
    assert [(r["mask_threshold"], r["dbscan_eps"], r["nms_iou"]) for r in report["rows"]] == grid
    assert report["best"]["ap50"] == max(r["ap50"] for r in report["rows"])
    assert "| mask_threshold | dbscan_eps | nms_iou |" in capsys.readouterr().out
    assert main(["--checkpoint", str(ckpt), "--scenes", str(scene_dir), "--dbscan-eps", "-1"]) == 2
    assert main(["--checkpoint", str(ckpt), "--scenes", str(scene_dir), "--mask-threshold", "1"]) == 2


def test_cli_colourless_gives_the_model_a_grey_cloud(scene_and_model, tmp_path, monkeypatch):
    """--colourless evaluates the scenes as a LiDAR cloud reaches the node: every point the default grey."""
    from training.mask3d import evaluate as module
    scene_dir, _, ckpt = scene_and_model
    seen = []
    real = module.class_agnostic_results
    monkeypatch.setattr(module, "class_agnostic_results", lambda m, scenes, *a, **k: seen.extend(scenes) or
                        real(m, scenes, *a, **k))
    for flag in ([], ["--colourless"]):
        out = tmp_path / f"r{len(flag)}.json"
        assert main(["--checkpoint", str(ckpt), "--scenes", str(scene_dir), *flag, "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert (report["colourless"], report["input_features"]) == (bool(flag), "xyzrgb")
    coloured, grey = seen
    assert np.array_equal(coloured.rgb, load_scene(scene_dir).rgb) and len(np.unique(coloured.rgb, axis=0)) > 1
    assert np.array_equal(grey.xyz, coloured.xyz) and (grey.rgb == 0.5).all()


@pytest.mark.parametrize("columns, eps", [(6, 0.25), (21, 0.3), (3, 0.05), (70, 0.25)])
def test_vectorised_split_equals_query_by_query(monkeypatch, columns, eps):
    """dbscan_parts' one-pass split (cells of diagonal eps, column bit sets over more than one byte, and
    over two 64-bit words as for the official model's 100 queries) equals DBSCAN run per query (the path
    taken when pairs are too many), duplicate points included."""
    from folk_ros.core.mask3d import dbscan
    gen = torch.Generator().manual_seed(columns)
    xyz = torch.rand((400, 3), generator=gen) * torch.tensor([3.0, 3.0, 1.0])
    xyz[300:320] = xyz[:20]                                        # points on top of each other
    logits = torch.randn((400, columns), generator=gen) + 0.5
    fast = dbscan.dbscan_split(logits, xyz, eps, 1)
    monkeypatch.setattr(dbscan, "MAX_SPLIT_PAIRS", 0)         # query by query
    slow = dbscan.dbscan_split(logits, xyz, eps, 1)
    assert fast[0].shape[1] > logits.shape[1]                     # it did split
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_split_in_slabs_on_threads_equals_query_by_query(monkeypatch):
    """The neighbour search split into slabs along x (three threads, slabs of at least 100 points) gives what
    DBSCAN per query gives, on a cloud where whole regions share their masks (cells joined by full links),
    and every neighbour pair lies inside one slab."""
    from scipy.spatial import cKDTree

    from folk_ros.core.mask3d import dbscan
    gen = torch.Generator().manual_seed(5)
    xyz = torch.rand((900, 3), generator=gen) * torch.tensor([4.0, 2.0, 0.5])
    logits = torch.randn((900, 9), generator=gen)
    region = (xyz[:, 0] * 2).long()                                # eight slices of 0.5 m, each one mask set
    logits = torch.where(torch.rand((900, 1), generator=gen) < 0.7, (region[:, None] % 3 == torch.arange(9) % 3)
                         * 6.0 - 3.0, logits)
    xyz_np = xyz.double().numpy()
    active = (logits > 0).any(1).numpy()
    side = 0.2 / np.sqrt(3.0) * (1.0 - 1e-9)
    grid = np.floor((xyz_np[active] - xyz_np[active].min(0)) / side).astype(np.int64)
    order = np.lexsort(grid.T[::-1])
    slabs = dbscan._slabs(grid[order, 0], 3)
    assert len(slabs) == 3
    pairs = cKDTree(xyz_np[active][order]).query_pairs(0.2, output_type="ndarray")
    covered = np.zeros(len(pairs), bool)
    for start, end in slabs:
        covered |= (pairs >= start).all(1) & (pairs < end).all(1)
    assert covered.all()
    monkeypatch.setattr(dbscan, "MIN_SLAB_POINTS", 100)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        fast = dbscan.dbscan_split(logits, xyz, 0.2, 1)
    finally:
        torch.set_num_threads(previous)
    monkeypatch.setattr(dbscan, "MAX_SPLIT_PAIRS", 0)
    slow = dbscan.dbscan_split(logits, xyz, 0.2, 1)
    assert fast[0].shape[1] > logits.shape[1]
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


@pytest.mark.parametrize("fast", [True, False])
def test_proposals_over_atoms_equal_the_dense_parts(monkeypatch, fast):
    """Sizes, scores and NMS over the parts' atoms (the vectorised split's groups of cells, or each voxel
    its own atom when queries are split one by one) give the proposals of the dense candidates of
    dbscan_split: objectness * mean sigmoid over each part, parts under min_points dropped, then NMS."""
    from folk_ros.core.mask3d import dbscan
    from folk_ros.core.mask3d.postprocess import mask_nms
    gen = torch.Generator().manual_seed(7)
    xyz = torch.rand((600, 3), generator=gen) * torch.tensor([3.0, 2.0, 0.5])
    region = (xyz[:, 0] * 2).long()
    logits = torch.where(torch.rand((600, 1), generator=gen) < 0.8, (region[:, None] % 4 == torch.arange(12) % 4)
                         * 6.0 - 3.0, torch.randn((600, 12), generator=gen))
    logits += 0.1 * torch.rand((600, 12), generator=gen)                  # no ties between the parts' scores
    pred_logits = torch.randn((12, 2), generator=gen)
    inverse = torch.randint(0, 600, (900,), generator=gen)
    cfg = PostprocessConfig.class_agnostic(0.15, nms_iou=0.5, min_points=4, mask_threshold=0.5)
    if not fast:
        monkeypatch.setattr(dbscan, "MAX_SPLIT_PAIRS", 0)
    masks, scores = class_agnostic_proposals(pred_logits, logits, inverse, xyz, cfg)

    candidates, src = dbscan.dbscan_split(logits, xyz, 0.15, 1)
    inside = candidates != 0
    objectness = 1 - pred_logits.softmax(-1)[:, 1]
    want = objectness[src] * (candidates.sigmoid() * inside).sum(0) / inside.sum(0)
    points = torch.bincount(inverse, minlength=600).double() @ inside.double()
    keep = (points >= 4).nonzero().flatten()
    voxel, mask = inside[:, keep].nonzero(as_tuple=True)
    kept = keep[mask_nms(voxel, mask, want[keep], 0.5, torch.bincount(inverse, minlength=600))]
    assert len(masks) == len(kept) > 10
    assert torch.equal(masks.dense(), inside[:, kept].T)
    torch.testing.assert_close(scores, want[kept].float())


@pytest.mark.parametrize("path", ["sets", "table too large", "sums collide"])
def test_mask_intersections_equal_the_dense_product(monkeypatch, path):
    """Over the voxels' mask sets, over the voxels (the membership table would be too large), or over the
    voxels after the exact check caught two sets with one key sum: the weighted intersections of the dense
    product."""
    from folk_ros.core.mask3d import postprocess
    gen = torch.Generator().manual_seed(2)
    v, k = 500, 30
    masks = torch.rand((v, k), generator=gen) < 0.3
    masks[:250] = masks[250:]                                       # repeated sets, as Mask3D's parts make
    masks[::7] = False                                              # voxels in no mask
    weights = torch.randint(1, 5, (v,), generator=gen).double()
    if path == "table too large":
        monkeypatch.setattr(postprocess, "MASK_SET_TABLE", 0)
    if path == "sums collide":                                      # every voxel's sum is 0: one "set"
        monkeypatch.setattr(postprocess, "_mask_keys", lambda n: np.zeros(n, np.int64))
    voxel, mask = masks.nonzero(as_tuple=True)
    got = postprocess.mask_intersections(mask.numpy(), voxel.numpy(), weights.numpy(), k).toarray()
    want = (weights[:, None] * masks.double()).T @ masks.double()
    np.testing.assert_allclose(got, want.numpy())


def test_mask_nms_keeps_what_greedy_dense_nms_keeps():
    """The sparse NMS equals greedy NMS over dense point-weighted IoUs, ties broken by index."""
    from folk_ros.core.mask3d.postprocess import mask_nms
    gen = torch.Generator().manual_seed(1)
    v, k = 300, 40
    masks = torch.rand((v, k), generator=gen) < 0.2
    masks[:, 20:] = masks[:, :20] | (torch.rand((v, 20), generator=gen) < 0.05)   # near-duplicates
    scores = torch.rand(k, generator=gen)
    scores[5] = scores[6]                                                             # a tie
    weights = torch.randint(1, 5, (v,), generator=gen)
    for threshold in (0.3, 0.5, 0.9):
        w = weights.double()[:, None] * masks.double()
        inter = w.T @ masks.double()
        area = inter.diagonal()
        iou = inter / (area[:, None] + area[None, :] - inter)
        keep, dropped = [], torch.zeros(k, dtype=torch.bool)
        for i in sorted(range(k), key=lambda j: (-float(scores[j]), j)):
            if not dropped[i]:
                keep.append(i)
                dropped |= iou[i] > threshold
        voxel, mask = masks.nonzero(as_tuple=True)
        assert mask_nms(voxel, mask, scores, threshold, weights).tolist() == keep
        assert len(keep) < k
