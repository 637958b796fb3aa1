"""Segmenter plumbing on an UNTRAINED bundle (random weights: shapes, confidences, errors)."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from folk_ros.core.bundle import BundleError, read_manifest, write_manifest
from folk_ros.core.cloud import PointCloud
from folk_ros.core.mask3d.config import Mask3DConfig, preset
from folk_ros.core.segmenter import Segmenter, mask_geometry
from folk_ros.core.segmenter_config import SegmenterConfig
from folk_ros.core.vocabulary import validate_vocabulary
from test.fixtures import VOCABULARY, box_room_cloud, make_untrained_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_untrained_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def segmenter(bundle):
    return Segmenter.from_bundle(bundle, device="cpu", score_threshold=0.0, min_points=1)


def test_segment_shapes_and_confidence(segmenter):
    cloud, _ = box_room_cloud()
    out = segmenter.segment(cloud, VOCABULARY)
    m = len(out)
    assert m > 0 and out.masks.shape == (m, len(cloud)) and out.masks.dtype == bool
    assert out.embeddings.shape == (m, segmenter.clip.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, rtol=1e-5)
    assert ((out.label_indices >= 0) & (out.label_indices < len(VOCABULARY))).all()
    np.testing.assert_allclose(out.scores, out.proposal_scores * out.label_probs, rtol=1e-6)
    assert (np.diff(out.scores) <= 0).all(), "instances come best first"
    assert set(out.timings) >= {"text", "proposals", "postprocess", "student", "classify", "total"}
    assert all(ms >= 0 for ms in out.timings.values())   # postprocess is apart from the network's time
    parts = sum(ms for stage, ms in out.timings.items() if stage != "total")
    assert parts <= out.timings["total"] + 1e-6          # no stage counted twice
    # boxes and centroids agree with the masks
    i = 0
    pts = cloud.xyz[out.masks[i]]
    np.testing.assert_allclose(out.boxes[i], [pts.min(0), pts.max(0)], atol=1e-6)
    np.testing.assert_allclose(out.centroids[i], pts.mean(0), atol=1e-5)


def test_vocabulary_change_uses_one_matmul_over_new_names(segmenter):
    cloud, _ = box_room_cloud(seed=1)
    a = segmenter.segment(cloud, VOCABULARY)
    b = segmenter.segment(cloud, ["mug"])
    assert b.vocabulary == ("mug",) and (b.label_indices == 0).all()
    # with one name the label probability is 1, so the confidence is the proposal score
    np.testing.assert_allclose(b.label_probs, 1.0, rtol=1e-6)
    assert len(a) >= 1


def test_empty_cloud_gives_no_instances(segmenter):
    empty = PointCloud.from_arrays(np.zeros((0, 3)))
    out = segmenter.segment(empty, VOCABULARY)
    assert len(out) == 0 and out.masks.shape == (0, 0)


@pytest.mark.parametrize("vocab, match", [([], "empty"), ("chair", "list of names"), (["a", ""], "non-empty"),
                                          (["a", 3], "non-empty"), (["a", "a"], "duplicate")])
def test_bad_vocabulary_is_a_clear_error(vocab, match):
    with pytest.raises(ValueError, match=match):
        validate_vocabulary(vocab)


def test_mask_geometry_by_hand():
    xyz = torch.tensor([[0.0, 0, 0], [1, 2, 3], [-1, 5, 0], [4, 4, 4]])
    masks = torch.tensor([[True, True, False, False], [False, True, True, True]])
    boxes, centroids = mask_geometry(xyz, masks)
    torch.testing.assert_close(boxes[0], torch.tensor([[0.0, 0, 0], [1, 2, 3]]))
    torch.testing.assert_close(boxes[1], torch.tensor([[-1.0, 2, 0], [4, 5, 4]]))
    torch.testing.assert_close(centroids[1], torch.tensor([4 / 3, 11 / 3, 7 / 3]))
    # the same points as voxels 0: {p0, p1}, 1: {p2}, 2: {p3}; masks over voxels give the same geometry
    inverse = torch.tensor([0, 0, 1, 2])
    voxel_masks = torch.tensor([[True, False, False], [True, True, True]])
    boxes_v, centroids_v = mask_geometry(xyz, voxel_masks, inverse)
    point_masks = voxel_masks[:, inverse]
    boxes_p, centroids_p = mask_geometry(xyz, point_masks)
    torch.testing.assert_close(boxes_v, boxes_p)
    torch.testing.assert_close(centroids_v, centroids_p)
    torch.testing.assert_close(boxes_v[1], torch.tensor([[-1.0, 0, 0], [4, 5, 4]]))


def test_corrupted_or_mismatched_bundle_is_one_clear_error(bundle, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "student.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="student.pt is corrupted"):
        read_manifest(broken)
    (broken / "mask3d.pt").unlink()
    with pytest.raises(BundleError, match="mask3d file 'mask3d.pt' is missing"):
        read_manifest(broken)
    with pytest.raises(BundleError, match="manifest.json is missing"):
        read_manifest(tmp_path / "nowhere")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["provenance"]["note"].startswith("UNTRAINED")


@pytest.mark.parametrize("field, value, expect", [
    ("vocabulary", "chair", "'vocabulary' must be a list of strings"),
    ("segmenter", {"temperature": "0.07"}, "segmenter field 'temperature' must be a number"),
    ("segmenter", {"nms_iou": True}, "segmenter field 'nms_iou' must be a number"),
    ("segmenter", {"max_instances": 2.5}, "segmenter field 'max_instances' must be an integer"),
    ("segmenter", {"tau": 0.07}, "segmenter has unknown fields ['tau']"),
    ("segmenter", {"nms_iou": 1.5}, "segmenter nms_iou must be in [0, 1]"),
    ("segmenter", [], "segmenter must be an object"),
    ("mask3d", ["mask3d.pt"], "'mask3d' must be a string"),
    ("sha256", [1, 2], "'sha256' must be an object"),
    ("provenance", [], "'provenance' must be an object"),
    (None, None, "expected a JSON object, got a list"),
])
def test_manifest_with_wrong_types_names_the_field(bundle, tmp_path, field, value, expect):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    if field is None:
        manifest = [manifest]
    else:
        manifest[field] = value
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=re.escape(expect)):
        read_manifest(broken, verify=False)


def test_the_segmenter_settings_are_stored_whole_and_version_1_manifests_still_read(bundle, tmp_path):
    import shutil
    cfg = SegmenterConfig(temperature=0.2, nms_iou=0.5, dbscan_eps=0.12, mask_threshold=0.01, min_points=7)
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    write_manifest(replace(read_manifest(copy), segmenter=cfg))
    data = json.loads((copy / "manifest.json").read_text())
    assert data["version"] == 2 and data["segmenter"] == cfg.to_dict()
    assert read_manifest(copy).segmenter == cfg and Segmenter.from_bundle(copy, device="cpu").cfg == cfg
    v1 = {k: v for k, v in data.items() if k != "segmenter"}     # version 1: some settings at the top level
    v1.update(version=1, prompt_template=cfg.prompt_template, temperature=0.2, point_features="backbone",
              mask_threshold=0.01, dbscan_eps=0.12, nms_iou=0.5)
    (copy / "manifest.json").write_text(json.dumps(v1))
    assert read_manifest(copy).segmenter == replace(cfg, min_points=SegmenterConfig.min_points)


def test_sparse_backend_choice(bundle):
    from folk_ros.core.sparse.minkowski import minkowski_available, sparse_backend_of
    seg = Segmenter.from_bundle(bundle, device="cpu", sparse_backend="torch")
    assert sparse_backend_of(seg.mask3d) == "torch"
    auto = Segmenter.from_bundle(bundle, device="cpu", sparse_backend="auto")
    assert sparse_backend_of(auto.mask3d) == ("minkowski" if minkowski_available() else "torch")
    with pytest.raises(ValueError, match="sparse backend must be one of"):
        Segmenter.from_bundle(bundle, device="cpu", sparse_backend="spconv")
    if not minkowski_available():
        with pytest.raises(ImportError, match="scripts/build_minkowski.sh"):
            Segmenter.from_bundle(bundle, device="cpu", sparse_backend="minkowski")


def test_individual_files_replace_the_bundles(bundle, tmp_path):
    from folk_ros.core.student import Student, StudentConfig
    own = Student(StudentConfig(in_dim=48, hidden_dim=16, out_dim=128))
    torch.save(own.to_checkpoint(tau=0.2), tmp_path / "student.pt")
    seg = Segmenter.from_bundle(bundle, device="cpu", files={"student": tmp_path / "student.pt",
                                                             "clip": bundle / "clip", "mask3d": bundle / "mask3d.pt"})
    assert seg.student.cfg.hidden_dim == 16 and seg.cfg.temperature == 0.2
    wrong = Student(StudentConfig(in_dim=48, hidden_dim=16, out_dim=64))
    torch.save(wrong.to_checkpoint(), tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="student embeds into 64-d"):
        Segmenter.from_bundle(bundle, device="cpu", files={"student": tmp_path / "wrong.pt"})
    with pytest.raises(FileNotFoundError, match="no Mask3D checkpoint"):
        Segmenter.from_bundle(bundle, device="cpu", files={"mask3d": tmp_path / "none.ckpt"})
    with pytest.raises(ValueError, match="unknown keys"):
        Segmenter.from_bundle(bundle, device="cpu", files={"backbone": tmp_path})


def test_a_cloud_inside_one_coarse_cell_is_a_clear_error(segmenter):
    from folk_ros.core.mask3d.model import CloudTooSmallError
    rng = np.random.default_rng(0)
    tiny = PointCloud.from_arrays(rng.uniform(0, 0.1, (50, 3)).astype(np.float32), rng.random((50, 3)))
    with pytest.raises(CloudTooSmallError, match="needs a cloud spanning at least two such cells"):
        segmenter.segment(tiny, ["chair"])
    two_cells = PointCloud.from_arrays(np.r_[tiny.xyz, tiny.xyz + 1.0], np.r_[tiny.rgb, tiny.rgb])
    assert segmenter.segment(two_cells, ["chair"]).masks.shape[1] == 100


def test_input_features_is_saved_with_the_model_config():
    cfg = replace(preset("small"), input_features="xyz")
    assert Mask3DConfig.from_dict(cfg.to_dict()) == cfg
    assert Mask3DConfig.from_dict({k: v for k, v in preset("small").to_dict().items() if k != "input_features"}) \
        == preset("small")                           # checkpoints written before the field read as colour models
    with pytest.raises(ValueError, match="input_features must be one of"):
        replace(cfg, input_features="rgb")


def test_a_geometry_only_bundle_does_not_read_colour(segmenter, tmp_path):
    """input_features is the bundle's (its Mask3D config's): an xyz model gives the same proposals and embeddings
    whatever the colours (a LiDAR cloud's default grey included); the colour model's change with them."""
    xyz = Segmenter.from_bundle(make_untrained_bundle(tmp_path / "xyz", input_features="xyz"), device="cpu",
                                score_threshold=0.0, min_points=1)
    assert (xyz.input_features, segmenter.input_features) == ("xyz", "xyzrgb")
    cloud, _ = box_room_cloud()
    grey = PointCloud.from_arrays(cloud.xyz, np.full(cloud.xyz.shape, 0.5))
    for model, same in ((xyz, True), (segmenter, False)):
        a, b = model.embed(cloud), model.embed(grey)
        assert len(a) > 0
        equal = (np.array_equal(a.proposal_scores, b.proposal_scores) and np.array_equal(a.masks, b.masks)
                 and np.array_equal(a.embeddings, b.embeddings))
        assert equal == same, model.input_features
