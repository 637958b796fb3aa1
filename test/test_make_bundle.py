"""training.make_bundle: a bundle assembled from training outputs loads and segments; bad inputs are
one clear error. Uses UNTRAINED weights (test doubles): this checks the assembly, not accuracy."""

import json

import pytest
import torch

from folk_ros.core.bundle import read_manifest
from folk_ros.core.clip import ClipModel
from folk_ros.core.mask3d.checkpoint import save_checkpoint
from folk_ros.core.mask3d.config import preset
from folk_ros.core.mask3d.model import Mask3D
from folk_ros.core.segmenter import Segmenter
from folk_ros.core.student import Student, StudentConfig
from training.make_bundle import main, make_bundle
from test.fixtures import box_room_cloud


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    mask3d = Mask3D(preset("small"))
    save_checkpoint(root / "mask3d_best.pt", mask3d, history=[{"epoch": 1, "val_ap50": 0.5}],
                    optimizer={"big": torch.zeros(1000)})
    clip = ClipModel.from_config("folk-tiny-vit", device="cpu", seed=0)
    clip.save(root / "clip")
    (root / "clip" / "checkpoints").mkdir()
    (root / "clip" / "checkpoints" / "last.pt").write_bytes(b"x" * 1000)
    student = Student(StudentConfig(in_dim=mask3d.cfg.backbone.planes[-1], hidden_dim=32, out_dim=clip.embed_dim))
    torch.save(student.to_checkpoint(tau=0.05, vocabulary=["chair", "table", "box"],
                                     prompt_template="a {} in the scene", point_features="backbone",
                                     metrics={"val_gt_agreement": 0.5}), root / "student_best.pt")
    (root / "eval.json").write_text(json.dumps({"student": {"ap50": 0.1}}))
    return root


def test_bundle_round_trip(sources, tmp_path):
    out = tmp_path / "bundle"
    assert main(["--mask3d", str(sources / "mask3d_best.pt"), "--clip", str(sources / "clip"), "--student",
                 str(sources / "student_best.pt"), "--out", str(out), "--dbscan-eps", "0.1", "--nms-iou", "0.7",
                 "--mask-threshold", "0.2", "--provenance", f"evaluation={sources / 'eval.json'}"]) == 0
    manifest = read_manifest(out)
    assert manifest.vocabulary == ("chair", "table", "box") and manifest.segmenter.temperature == 0.05
    cfg = manifest.segmenter
    assert (cfg.dbscan_eps, cfg.nms_iou, cfg.mask_threshold) == (0.1, 0.7, 0.2)
    assert manifest.provenance["evaluation"] == {"student": {"ap50": 0.1}}
    assert manifest.provenance["mask3d_training"]["history"][0]["val_ap50"] == 0.5
    assert "optimizer" not in torch.load(out / "mask3d.pt", weights_only=False)
    again = make_bundle(sources / "mask3d_best.pt", sources / "clip", sources / "student_best.pt", tmp_path / "again",
                        {}, "")
    assert again.sha256 == read_manifest(tmp_path / "again").sha256        # returned as written, hashes included
    assert set(again.sha256) == {"mask3d.pt", "clip", "student.pt"}
    assert not (out / "clip" / "checkpoints").exists()
    seg = Segmenter.from_bundle(out, device="cpu", score_threshold=0.0, min_points=1)
    assert seg.cfg.temperature == 0.05
    post = seg.cfg.proposal_postprocess()                       # the bundle's post-processing is what runs
    assert post.use_dbscan and (post.dbscan_eps, post.nms_iou, post.mask_threshold) == (0.1, 0.7, 0.2)
    assert Segmenter.from_bundle(out, device="cpu", dbscan_eps=0.0).cfg.proposal_postprocess().use_dbscan is False
    cloud, _ = box_room_cloud()
    assert len(seg.segment(cloud, manifest.vocabulary)) > 0
    # text_cache/: the vocabulary's text, read without loading CLIP, equal to what CLIP gives
    text_cache = manifest.provenance["text_cache"]
    assert text_cache["names"] == 3 and (out / text_cache["file"]).exists()
    lazy = Segmenter.from_bundle(out, device="cpu", text_store=tmp_path / "store")
    torch.testing.assert_close(lazy.text_embeddings(["box", "chair"]), seg.text_embeddings(["box", "chair"]))
    assert not lazy.text.loaded


def test_bad_sources_are_clear_errors(sources, tmp_path):
    with pytest.raises(ValueError, match="not a folk_ros Mask3D checkpoint"):
        make_bundle(sources / "student_best.pt", sources / "clip", sources / "student_best.pt", tmp_path / "b", {}, "")
    plain = tmp_path / "plain_student.pt"
    torch.save(Student(StudentConfig(in_dim=48, hidden_dim=8, out_dim=128)).to_checkpoint(), plain)
    with pytest.raises(ValueError, match="not a distillation checkpoint"):
        make_bundle(sources / "mask3d_best.pt", sources / "clip", plain, tmp_path / "b", {}, "")
    with pytest.raises(FileNotFoundError, match="not an open_clip folder"):
        make_bundle(sources / "mask3d_best.pt", tmp_path, sources / "student_best.pt", tmp_path / "b", {}, "")
    assert main(["--mask3d", "a", "--clip", "b", "--student", "c", "--out", "d", "--provenance", "nofile"]) == 2
    assert main(["--mask3d", "a", "--clip", "b", "--student", "c", "--out", "d", "--mask-threshold", "1"]) == 2
