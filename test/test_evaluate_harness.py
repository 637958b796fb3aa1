"""The evaluation harness (python -m training.evaluate) on two tiny generated scenes.

The bundle is the UNTRAINED test double (random Mask3D, CLIP and student): AP values mean
nothing here; the tests check the plumbing (shared proposals, files, report fields, timings
bookkeeping), that the benchmark txt files re-score to the report's AP, the matching rate on
hand-made masks, and that the student path equals the Segmenter's on the same cloud.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from folk_ros.core.segmenter import Segmenter
from test.fixtures import VOCABULARY, box_room_cloud, make_untrained_bundle
from training.data.synthetic import SynthConfig, run_scene
from training.evaluate.__main__ import main, run_cli
from training.evaluate.benchmark import evaluate_dirs
from training.evaluate.harness import label_student, make_proposals, matching_counts
from training.evaluate.instance_ap import EvalConfig, GTScene
from training.data.vocabularies import label_ids_of
from training.evaluate.teacher_eval import predictions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = SynthConfig(num_frames=20, width=160, height=120, max_vertices=20000)
METHODS = ("student", "teacher", "baseline")
FAST = ["--every", "5", "--clip-image-size", "96", "128", "--threads", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_untrained_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    for i in range(2):
        run_scene(str(root), 5, i, SYNTH, bag=False)
    return root


def _check_outputs(out, report, scenes):
    for name in ("report.md", "report.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "ap_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))  # the same figures
    md = (out / "report.md").read_text()
    for m in METHODS:
        assert f"| {m} |" in md
    assert "matching rate" in md and "label time vs student" in md
    assert report["scenes"] == scenes
    for m in METHODS:
        for sid in scenes:
            assert (out / "predictions" / m / f"{sid}.txt").is_file()
    assert sorted(p.stem for p in (out / "gt").glob("*.txt")) == scenes


def _check_report(report, source):
    assert set(report["methods"]) == set(METHODS)
    assert report["proposals"]["source"] == source
    for m, v in report["methods"].items():
        for key in ("ap", "ap50", "ap25"):
            assert v[key] is not None and 0.0 <= v[key] <= 1.0
        assert set(v["splits"]) <= {"head", "common", "tail"}
        assert v["label_seconds_per_scene"] > 0 and v["seconds_per_scene"] >= v["label_seconds_per_scene"]
        assert v["includes_mask3d"] == (m == "student" or source == "mask3d")
    st = report["methods"]["student"]["stage_seconds_per_scene"]
    assert set(st) == {"pool", "mlp", "similarity"}
    assert set(report["methods"]["teacher"]["stage_seconds_per_scene"]) >= {
        "projection", "selection", "completion", "clip", "pooling", "classify"}
    assert set(report["label_time_ratio"]) == {"teacher/student", "baseline/student"}
    assert report["label_time_ratio"]["teacher/student"]["ratio_of_means"] > 0
    for row in report["per_scene"]:
        mask3d = row["shared_seconds"]["mask3d"]
        assert mask3d > 0  # the student pools Mask3D features with either proposal source
        for m, r in row["methods"].items():
            stages = r["stage_seconds"]
            assert r["label_seconds"] == pytest.approx(sum(v for k, v in stages.items() if k != "io"))
            with_mask3d = m == "student" or source == "mask3d"
            assert r["seconds"] == pytest.approx(r["label_seconds"] + (mask3d if with_mask3d else 0.0))
            assert r["predictions"] <= row["proposals"]
        assert row["methods"]["student"]["predictions"] == row["proposals"]  # the student labels every proposal


def test_cli_gt_proposals(bundle, scene_root, tmp_path):
    out = tmp_path / "eval_gt"
    report = run_cli(["--method", *METHODS, "--scenes", str(scene_root), "--bundle", str(bundle),
                      "--proposals", "gt", "--warmup", "0", "--out", str(out), *FAST])
    scenes = sorted(p.name for p in scene_root.iterdir() if p.is_dir())
    _check_outputs(out, report, scenes)
    _check_report(report, "gt")
    # every counted GT instance is one of the proposals: all matched
    props = report["proposals"]
    assert props["gt_instances"] > 5 and props["matched"] == props["gt_instances"] and props["matching_rate"] == 1.0
    for v in report["methods"].values():
        assert 0.0 <= v["accuracy"] <= 1.0
    # the benchmark txt files re-score (training.evaluate.benchmark) to the report's AP
    for m in METHODS:
        res = evaluate_dirs(out / "gt", out / "predictions" / m, EvalConfig.make(), progress=False)
        for key in ("ap", "ap50", "ap25"):
            assert res.mean[key] == pytest.approx(report["methods"][m][key], abs=1e-12)


def test_cli_mask3d_proposals_as_a_module(bundle, scene_root, tmp_path):
    out = tmp_path / "eval_mask3d"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "training.evaluate", "--scenes", str(scene_root), "--bundle",
                           str(bundle), "--out", str(out), *FAST], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| student |" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    scenes = sorted(p.name for p in scene_root.iterdir() if p.is_dir())
    _check_outputs(out, report, scenes)
    _check_report(report, "mask3d")
    assert report["config"]["warmup"] == 1 and report["methods"]["teacher"]["accuracy"] is None
    for row in report["per_scene"]:  # the shared proposals are what the student's prediction file lists
        lines = (out / "predictions" / "student" / f"{row['scene_id']}.txt").read_text().splitlines()
        assert len(lines) == row["proposals"] >= 1


def test_cli_bad_bundle_is_a_clear_error(scene_root, tmp_path):
    with pytest.raises(SystemExit, match="no model bundle"):
        main(["--scenes", str(scene_root), "--bundle", str(tmp_path / "missing"), "--out", str(tmp_path), *FAST])


def test_matching_rate_by_hand():
    n = 1000
    gt_masks = np.zeros((5, n), bool)
    gt_masks[0, 0:200] = True      # chair, 200 vertices
    gt_masks[1, 200:400] = True    # table, 200
    gt_masks[2, 400:450] = True    # lamp, 50 vertices: under min_region_size, not counted
    gt_masks[3, 500:700] = True    # wall: not an evaluated class
    gt_masks[4, 700:900] = True    # box, 200
    gt = GTScene.from_masks("s", gt_masks, label_ids_of(("chair", "table", "lamp", "wall", "box")))
    config = EvalConfig.make()
    props = np.zeros((4, n), bool)
    props[0, 0:150] = True                        # chair: IoU 150/200 = 0.75 -> matched
    props[1, 200:300] = True                      # table: IoU 100/200 = 0.5 exactly -> matched (>=)
    props[2, 200:300] = props[2, 400:500] = True  # table: IoU 100/300; covers the small lamp
    props[3, 700:750] = props[3, 500:700] = True  # box: IoU 50/200 -> not matched
    assert matching_counts(gt, props, config) == (2, 3)
    assert matching_counts(gt, props[[2, 3]], config) == (0, 3)
    assert matching_counts(gt, props[:0], config) == (0, 3)
    assert matching_counts(gt, props, config, iou=0.76) == (0, 3)
    with pytest.raises(ValueError, match="proposal masks"):
        matching_counts(gt, props[:, :10], config)


def test_student_path_equals_the_segmenter(bundle):
    """make_proposals + label_student on a cloud give the Segmenter's instances, confidences and embeddings."""
    torch.manual_seed(0)
    # nms_iou=1.0 keeps all of the untrained Mask3D's (near-identical) proposals: 40 instances to compare
    seg = Segmenter.from_bundle(bundle, device="cpu", score_threshold=0.0, min_points=1, nms_iou=1.0)
    cloud, ids = box_room_cloud(seed=2)
    out = seg.segment(cloud, VOCABULARY)
    props = make_proposals(seg, cloud.xyz, cloud.rgb)
    cls, timings = label_student(seg, props, seg.text_embeddings(VOCABULARY))
    assert set(timings) == {"pool", "mlp", "similarity"}
    pred = predictions("box_room", props.masks, cls, label_ids_of(VOCABULARY), props.scores)
    assert len(out) == props.num == pred.num_predictions > 1
    order = np.argsort(-pred.scores, kind="stable")
    np.testing.assert_allclose(pred.scores[order], out.scores, rtol=1e-6)
    np.testing.assert_array_equal(np.unique(props.masks, axis=0), np.unique(out.masks, axis=0))  # same mask set
    np.testing.assert_array_equal(props.masks[order].sum(1), out.masks.sum(1))
    np.testing.assert_array_equal(cls.labels[order], out.label_indices)
    np.testing.assert_allclose(cls.probs[order], out.label_probs, rtol=1e-6)
    np.testing.assert_allclose(cls.embeddings[order], out.embeddings, atol=1e-6)
    np.testing.assert_allclose(props.scores[order], out.proposal_scores, rtol=1e-6)
    # the matching rate is a property of the proposals: the Segmenter's masks give the same
    gt = GTScene.from_labels("box_room", np.where(ids > 0, label_ids_of(("box",))[0], 0), ids)
    config = EvalConfig.make()
    assert matching_counts(gt, props.masks, config) == matching_counts(gt, out.masks, config)
    assert matching_counts(gt, props.masks, config)[1] == 3
