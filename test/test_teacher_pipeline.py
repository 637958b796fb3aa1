"""The teacher as a pipeline: Teacher, classify, OpenMask3D-style baseline, the teacher cache.

One tiny generated scene (160 x 120 frames) and a RANDOM-weight CLIP (labels mean nothing;
the tests check shapes, bookkeeping and the cache's resume logic, not accuracy).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from folk_ros.core.clip import ClipModel
from training.build_teacher_cache import build_cache, run as build_run
from training.data.synthetic import SynthConfig, generate_scene, run_scene
from training.data.vocabularies import label_ids_of
from training.evaluate.instance_ap import GTScene, evaluate
from training.evaluate.teacher_eval import predictions
from training.teacher.baseline import BaselineConfig, OpenMaskBaseline
from training.teacher.cache import (BuildConfig, cache_path, compact_masks, config_hash, hashed_config, is_current,
                                    load_teacher_cache, write_cache)
from training.teacher.config import TeacherConfig, TeacherVariant
from training.teacher.mask_completion import complete_masks
from training.teacher.mask_pooling import MaskPoolingHead, mask_embeddings
from training.teacher.projection import project_instances
from training.teacher.proposals import gt_proposals
from training.teacher.teacher import Classification, Teacher, classify, mask_boxes
from training.teacher.view_selection import rotation_angle

REPO = Path(__file__).resolve().parents[1]
SYNTH = SynthConfig(num_frames=30, width=160, height=120, max_vertices=30000)
CFG = TeacherConfig(frame_stride=5, clip_image_size=(96, 128))


@pytest.fixture(scope="module")
def clip():
    return ClipModel.from_config("folk-tiny-vit", device="cpu", seed=0)


@pytest.fixture(scope="module")
def scene():
    mesh, walk, _ = generate_scene(11, "synth0000_00", SYNTH.num_frames, SYNTH)
    frames = [walk[i] for i in range(0, len(walk), CFG.frame_stride)]
    props = gt_proposals(mesh.instance_ids, mesh.instance_labels)
    return mesh, frames, props


@pytest.fixture(scope="module")
def teacher_result(clip, scene):
    mesh, frames, props = scene
    return Teacher(clip, CFG).embed(mesh.vertices, props.masks, frames)


def test_teacher_views(scene, teacher_result):
    mesh, frames, props = scene
    r = teacher_result
    m = len(props.scores)
    assert r.view_embeddings.shape == (r.num_views, 128) and r.view_embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(r.view_embeddings, axis=1), 1.0, atol=1e-5)
    assert r.visible_counts.shape == (m, len(frames))
    assert set(r.view_frame.tolist()) <= {f.index for f in frames}
    assert np.all(np.diff(r.view_instance) >= 0)
    per = np.bincount(r.view_instance, minlength=m)
    assert per.max() <= CFG.k_pre
    # every instance some frame sees gets views, the others none
    assert np.array_equal(per > 0, (r.visible_counts > 0).any(axis=1))
    assert (per > 0).sum() >= 5
    pose = {f.index: f.pose for f in frames}
    pos = {f.index: i for i, f in enumerate(frames)}
    for i in np.flatnonzero(per):
        fids = r.view_frame[r.view_instance == i]
        assert len(set(fids.tolist())) == len(fids)
        counts = r.visible_counts[i, [pos[f] for f in fids]]
        assert np.all(np.diff(counts) <= 0)  # selection order: most visible first
        rots = np.stack([pose[f][:3, :3] for f in fids])
        ang = rotation_angle(rots[:, None], rots[None])
        assert np.all(ang[~np.eye(len(fids), dtype=bool)] >= CFG.angle_threshold_deg)  # diverse views
    assert set(r.timings) >= {"projection", "selection", "completion", "clip", "pooling"}


def test_teacher_view_equals_direct_pooling(clip, scene, teacher_result):
    """The shared per-frame dense map and the bookkeeping give the same vector as pooling one view by hand."""
    mesh, frames, props = scene
    r = teacher_result
    row = int(np.argmax(np.bincount(r.view_instance)))  # an instance with several views
    v = int(np.flatnonzero(r.view_instance == row)[-1])
    frame = next(f for f in frames if f.index == r.view_frame[v])
    sparse = project_instances(mesh.vertices, props.masks[row:row + 1], frame, CFG.depth_threshold).masks()
    dense = complete_masks(sparse, CFG)
    feats = clip.dense_features(frame.color[None], size=CFG.clip_image_size)
    want = mask_embeddings(feats, torch.from_numpy(dense), MaskPoolingHead(clip.embed_dim),
                           min_coverage=CFG.pool_min_coverage)[0].detach().numpy()
    np.testing.assert_allclose(r.view_embeddings[v], want, atol=1e-5)


def test_teacher_variants(clip, scene, teacher_result):
    mesh, frames, props = scene
    topk = Teacher(clip, CFG, TeacherVariant(views="topk", mask="sparse")).embed(mesh.vertices, props.masks, frames)
    for i in range(len(props.scores)):  # Eq. 1 keeps a subset of the top-k_pre frames
        multi = set(teacher_result.view_frame[teacher_result.view_instance == i].tolist())
        assert multi <= set(topk.view_frame[topk.view_instance == i].tolist())
    assert topk.num_views >= teacher_result.num_views
    few = props.masks[:2]
    crop = Teacher(clip, CFG, TeacherVariant(embedding="bbox_crop")).embed(mesh.vertices, few, frames)
    np.testing.assert_allclose(np.linalg.norm(crop.view_embeddings, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="views"):
        TeacherVariant(views="all")
    with pytest.raises(ValueError, match="re-iterable"):
        Teacher(clip, CFG).embed(mesh.vertices, few, iter(frames))


def test_baseline_same_outputs(clip, scene, teacher_result):
    mesh, frames, props = scene
    masks = props.masks[:4]
    b = OpenMaskBaseline(clip, CFG, BaselineConfig(top_k=5)).embed(mesh.vertices, masks, frames)
    assert b.view_embeddings.shape[1] == teacher_result.view_embeddings.shape[1]
    np.testing.assert_allclose(np.linalg.norm(b.view_embeddings, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(b.visible_counts, teacher_result.visible_counts[:4])
    per = np.bincount(b.view_instance, minlength=4)
    assert per.max() <= 5 and np.array_equal(per > 0, (b.visible_counts > 0).any(axis=1))
    assert set(b.timings) >= {"projection", "selection", "crops", "clip"}
    c = classify(b.view_embeddings, b.view_instance, torch.eye(128)[:4], 4, method="mean")
    assert c.labels.shape == (4,) and c.probs.shape == (4,)


def test_mask_boxes_levels():
    m = np.zeros((1, 20, 30), bool)
    m[0, 5:15, 10:21] = True  # rows 5..14, cols 10..20
    assert mask_boxes(m).tolist() == [[10, 5, 21, 15]]
    assert mask_boxes(m, level=1, expansion=0.1).tolist() == [[9, 5, 22, 15]]  # floor(10 * 0.1) = 1, floor(9 * 0.1) = 0
    assert mask_boxes(m, level=2, expansion=0.5).tolist() == [[0, 0, 30, 20]]  # clipped to the image
    with pytest.raises(ValueError, match="empty"):
        mask_boxes(np.zeros((1, 4, 4), bool))


def test_classify_vote_and_mean():
    text = torch.eye(4)[:3]  # 3 classes in a 4-d space
    views = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1.0, 0, 0],   # instance 0: 2 x class 0, 1 x class 1
                          [0, 0, 1.0, 0],                                       # instance 1: class 2
                          ])
    inst = torch.tensor([0, 0, 0, 1])
    c = classify(views, inst, text, num_instances=3, method="vote")
    assert c.labels.tolist() == [0, 2, -1] and c.num_views.tolist() == [3, 1, 0]
    assert c.probs[2] == 0 and np.all(c.probs[:2] > 1 / 3) and np.all(c.probs <= 1)
    np.testing.assert_allclose(np.linalg.norm(c.embeddings[:2], axis=1), 1.0, atol=1e-6)
    assert c.embeddings[0, 1] < c.embeddings[0, 0]  # vote: the disagreeing view is left out of the mean
    m = classify(views.numpy(), inst.numpy(), text.numpy(), 3, method="mean")
    assert m.labels.tolist() == [0, 2, -1]
    assert m.embeddings[0, 1] > c.embeddings[0, 1]  # mean: all views count
    with pytest.raises(ValueError, match="method"):
        classify(views, inst, text, 3, method="max")


def test_predictions_with_true_labels_score_full_ap(scene):
    mesh, _, props = scene
    vocab = tuple(sorted(set(props.labels)))
    ids = label_ids_of(vocab)
    labels = np.asarray([vocab.index(n) for n in props.labels])
    probs = np.linspace(0.5, 0.9, len(labels)).astype(np.float32)
    emb, views = np.zeros((len(labels), 4), np.float32), np.ones(len(labels), np.int64)
    gt = [GTScene.from_mesh(mesh)]
    pred = predictions(mesh.scene_id, props.masks, Classification(labels, probs, emb, views), ids)
    assert pred.num_predictions == len(labels)
    assert evaluate(gt, [pred]).mean["ap50"] == pytest.approx(1.0)
    big = int(np.argmax(props.masks.sum(axis=1)))
    labels[big] = -1  # unseen by every frame: no prediction, its GT is missed
    pred = predictions(mesh.scene_id, props.masks, Classification(labels, probs, emb, views), ids)
    assert pred.num_predictions == len(labels) - 1
    assert evaluate(gt, [pred]).mean["ap50"] < 1.0


# --------------------------------------------------------------------------- cache


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    for i in range(2):
        run_scene(str(root), 3, i, SYNTH, bag=False)
    return root


def _cfg(**kw):
    kw.setdefault("teacher", CFG)
    return BuildConfig(clip_config="folk-tiny-vit", every=CFG.frame_stride, device="cpu", **kw)


def test_cache_build_resume_and_rebuild(clip, scene_root, tmp_path):
    scenes = sorted(p for p in scene_root.iterdir() if p.is_dir())
    out = tmp_path / "cache"
    s1 = build_cache(scenes, out, _cfg(), workers=1, progress=False, clip=clip)
    assert (s1["built"], s1["skipped"], s1["failed"]) == (2, 0, [])
    paths = [cache_path(out, p.name) for p in scenes]
    assert all(is_current(p, s1["config_hash"]) for p in paths)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))

    # round trip
    c = load_teacher_cache(paths[0])
    assert c.scene_id == scenes[0].name and c.meta["config_hash"] == s1["config_hash"]
    from training.data.scannet import read_scene_mesh
    mesh = read_scene_mesh(scenes[0])
    props = gt_proposals(mesh.instance_ids, mesh.instance_labels)
    assert np.array_equal(c.proposal_masks(), props.masks)
    assert c.meta["proposal_labels"] == props.labels
    assert c.view_embeddings.shape == (c.meta["num_views"], 128)
    assert c.visible_counts.shape == (len(props.scores), c.meta["num_frames"])
    assert np.all(c.view_instance < c.num_instances)
    assert set(c.meta["timings"]) >= {"projection", "selection", "completion", "clip", "pooling"}

    # simulate a kill: scene 1's file never got renamed (a temp is left), scene 0 is done
    mtime0 = os.stat(paths[0]).st_mtime_ns
    paths[1].unlink()
    stale = out / f".{paths[1].name}.12345.tmp"
    stale.write_bytes(b"partial")
    time.sleep(0.01)
    s2 = build_cache(scenes, out, _cfg(), workers=1, progress=False, clip=clip)
    assert (s2["built"], s2["skipped"]) == (1, 1)
    assert os.stat(paths[0]).st_mtime_ns == mtime0 and paths[1].exists() and not stale.exists()

    # a truncated file (e.g. a copy cut short) is not current and is rebuilt
    paths[0].write_bytes(paths[0].read_bytes()[:100])
    assert not is_current(paths[0], s1["config_hash"])
    # a different config hash rebuilds everything
    s3 = build_cache(scenes, out, _cfg(teacher=TeacherConfig(frame_stride=5, clip_image_size=(96, 128), k_pre=3)),
                     workers=1, progress=False, clip=clip)
    assert s3["built"] == 2 and s3["config_hash"] != s1["config_hash"]
    assert np.bincount(load_teacher_cache(paths[0]).view_instance).max() <= 3


def test_cache_write_is_atomic(tmp_path):
    path = tmp_path / "x.teacher.safetensors"
    with pytest.raises(Exception):
        write_cache(path, {"bad": np.array([object()])}, {"format": "x"})
    assert list(tmp_path.iterdir()) == []
    idx, off = compact_masks(np.array([[True, False, True], [False, False, False], [False, True, False]]))
    assert idx.tolist() == [0, 2, 1] and off.tolist() == [0, 2, 2, 3]


def test_cache_two_workers(clip, scene_root, tmp_path):
    scenes = sorted(p for p in scene_root.iterdir() if p.is_dir())
    out = tmp_path / "cache2"
    s = build_cache(scenes, out, _cfg(), workers=2, progress=False)
    assert (s["built"], s["failed"]) == (2, [])
    ref = build_cache(scenes[:1], tmp_path / "ref", _cfg(), workers=1, progress=False, clip=clip)
    assert ref["config_hash"] == s["config_hash"]
    assert config_hash(hashed_config(_cfg(threads=3))) == s["config_hash"]  # threads are not part of the identity
    a = load_teacher_cache(cache_path(out, scenes[0].name))
    b = load_teacher_cache(cache_path(tmp_path / "ref", scenes[0].name))
    assert np.array_equal(a.view_frame, b.view_frame)
    np.testing.assert_allclose(a.view_embeddings, b.view_embeddings, atol=1e-4)


def test_cache_under_torchrun_equals_one_process(scene_root, tmp_path):
    """Two CPU ranks under torchrun (gloo) split the scenes and write the files one process writes, tensor for
    tensor, with one merged summary; then a rerun of the job skips everything (resume works per rank)."""
    args = ["--scenes", str(scene_root), "--clip-config", "folk-tiny-vit", "--every", "5", "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # the ranks run with torchrun's OMP_NUM_THREADS=1
    try:
        one = build_run([*args, "--out", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    job = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training.build_teacher_cache", *args, "--out", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for run in ("first", "again"):
        done = subprocess.run(job, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        two = json.loads((tmp_path / "two" / "build_summary.json").read_text())
        assert two["ranks"] == 2 and two["failed"] == [] and two["config_hash"] == one["config_hash"]
        assert [r["scene_id"] for r in two["scenes"]] == [r["scene_id"] for r in one["scenes"]]
        assert (two["built"], two["skipped"]) == ((2, 0) if run == "first" else (0, 2)), run
    files = sorted(p.name for p in (tmp_path / "one").glob("*.teacher.safetensors"))
    assert len(files) == 2 and files == sorted(p.name for p in (tmp_path / "two").glob("*.teacher.safetensors"))
    for name in files:
        a, b = load_teacher_cache(tmp_path / "one" / name), load_teacher_cache(tmp_path / "two" / name)
        for f in a.__dataclass_fields__:
            if f == "meta":
                drop = ("created", "timings")
                assert {k: v for k, v in a.meta.items() if k not in drop} == \
                    {k: v for k, v in b.meta.items() if k not in drop}
            else:
                assert np.array_equal(getattr(a, f), getattr(b, f)), (name, f)
