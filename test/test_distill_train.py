"""Label-guided distillation trainer (training/distill/train.py) and its feature cache (features.py).

The data are hand-made teacher-cache files in the real format: a few clouds of coloured blobs
(one colour per category, so the pooled Mask3D features carry the category), each blob a
proposal whose teacher views lie near the text embedding of its category (plus noise, and a
minority of wrong views that the vote must outvote). Mask3D and CLIP are the UNTRAINED test
doubles of test/fixtures.py (random weights): the student only has to reproduce the teacher's
pseudo-labels from the frozen random features, which is what distillation asks of it.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from folk_ros.core.clip import ClipModel
from folk_ros.core.mask3d.checkpoint import load_checkpoint, save_checkpoint
from folk_ros.core.mask3d.config import preset
from folk_ros.core.mask3d.model import Mask3D
from folk_ros.core.student import Student
from test.fixtures import VOCABULARY, make_untrained_bundle
from training.data import scannet200
from training.distill import pseudo_labels
from training.distill.features import FEATURES_SUFFIX, FeatureCache, find_teacher_caches
from training.distill.train import TrainConfig, lr_at, train
from training.teacher.cache import (CACHE_FORMAT, BuildConfig, cache_path, clip_identity, compact_masks,
                                    load_teacher_cache, write_cache)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "a {} in the scene"
VOCAB = VOCABULARY + ("couch", "bed", "desk", "door")   # ScanNet200 names, so GT ids exist
PALETTE = np.array([[200, 40, 40], [40, 180, 40], [40, 60, 220], [220, 200, 40], [200, 60, 200], [40, 200, 200],
                    [120, 80, 40], [240, 240, 240]], np.uint8)  # one colour per category


def write_scene(out: Path, scene_id: str, text: np.ndarray, clip_id: str, seed: int, num_objects: int = 12,
                wrong_view_every: int = 3) -> Path:
    """A hand-made teacher cache: blobs on a floor, views near their category's text embedding.

    Proposal layout: ``num_objects`` blobs, then one proposal with no views (skipped: no views)
    and one with views but no points (skipped: no points).
    """
    rng = np.random.default_rng(seed)
    k, c = text.shape
    classes = np.arange(num_objects) % k
    rng.shuffle(classes)
    floor = np.c_[rng.uniform(0, 4, (600, 2)), rng.normal(0, 0.005, 600)]
    parts, colors, owner = [floor], [np.full((600, 3), 128, np.uint8)], [np.full(600, -1)]
    for i, cls in enumerate(classes):
        centre = np.r_[rng.uniform(0.4, 3.6, 2), 0.3]
        parts.append(centre + rng.normal(0, 0.12, (160, 3)))
        colors.append(np.clip(PALETTE[cls].astype(int) + rng.integers(-15, 16, (160, 3)), 0, 255).astype(np.uint8))
        owner.append(np.full(160, i))
    points = np.concatenate(parts).astype(np.float32)
    owner = np.concatenate(owner)
    m = num_objects + 2
    masks = np.zeros((m, len(points)), bool)
    masks[:num_objects] = np.arange(num_objects)[:, None] == owner[None, :]
    masks[num_objects, owner == -1] = True                       # a floor proposal that no view sees
    # views: 3 per object (every wrong_view_every-th object has one view of another category)
    view_inst = np.repeat(np.r_[np.arange(num_objects), num_objects + 1], 3)
    view_cls = np.r_[np.repeat(classes, 3), np.zeros(3, int)]
    wrong = np.arange(0, num_objects, wrong_view_every) * 3
    view_cls[wrong] = (view_cls[wrong] + 1) % k
    emb = text[view_cls] + rng.normal(0, 0.01, (len(view_cls), c))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.r_[[scannet200.label_id(VOCAB[cls]) for cls in classes], -1, -1]
    indices, offsets = compact_masks(masks)
    tensors = {"view_embeddings": emb.astype(np.float32), "view_instance": view_inst.astype(np.int64),
               "view_frame": np.tile(np.arange(3), len(view_inst) // 3).astype(np.int64),
               "visible_counts": np.zeros((m, 3), np.int32), "frame_ids": np.arange(3, dtype=np.int64),
               "proposal_indices": indices, "proposal_offsets": offsets,
               "proposal_scores": np.ones(m, np.float32), "proposal_label_ids": ids.astype(np.int64),
               "proposal_gt_instance": np.r_[np.arange(1, num_objects + 1), -1, -1].astype(np.int64),
               "points": points, "colors": np.concatenate(colors)}
    meta = {"format": CACHE_FORMAT, "scene_id": scene_id, "config_hash": f"hand-made-{seed}",
            "config": {"clip": clip_id}, "proposals": "gt", "num_instances": m, "embed_dim": c}
    out.mkdir(parents=True, exist_ok=True)
    path = cache_path(out, scene_id)
    write_cache(path, tensors, meta)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Untrained bundle (Mask3D + CLIP test doubles), 6 training and 2 validation scenes, features built."""
    root = tmp_path_factory.mktemp("distill")
    bundle = make_untrained_bundle(root / "bundle", seed=0)
    clip_spec = f"local-dir:{bundle / 'clip'}"
    clip = ClipModel(clip_spec, device="cpu")
    text = clip.encode_text(VOCAB, TEMPLATE).numpy()
    clip_id = clip_identity(BuildConfig(clip=clip_spec, clip_config=None))
    for i in range(6):
        write_scene(root / "train", f"synth{i:04d}_00", text, clip_id, seed=i)
    for i in range(6, 8):
        write_scene(root / "val", f"synth{i:04d}_00", text, clip_id, seed=i)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # train(threads=1) sets it too; restored below for the other test files
    FeatureCache(bundle / "mask3d.pt").ensure(find_teacher_caches([root / "train", root / "val"]), progress=False)
    base = TrainConfig(cache=[str(root / "train")], val_cache=[str(root / "val")], mask3d=str(bundle / "mask3d.pt"),
                       clip=clip_spec, out=str(root / "run"), vocabulary=",".join(VOCAB), hidden_dim=64,
                       dropout=0.1, epochs=30, batch_size=16, lr=3e-3, threads=1, device="cpu", progress=False)
    yield {"root": root, "bundle": bundle, "clip": clip, "text": text, "cfg": base}
    torch.set_num_threads(threads)


def _student_labels(ckpt: dict, paths: list[Path], fc: FeatureCache, text: torch.Tensor):
    """(student labels, pseudo-labels) over the scenes' kept instances, recomputed from the files."""
    student = Student.from_checkpoint(ckpt)
    got, want = [], []
    for p in paths:
        cache = load_teacher_cache(p)
        feats, status = fc.get(cache, p, compute=False)
        assert status == "reused"
        pl = pseudo_labels(torch.from_numpy(cache.view_embeddings), torch.from_numpy(cache.view_instance), text,
                           cache.num_instances)
        keep = pl.instances[torch.from_numpy(feats.has_points)[pl.instances]]
        with torch.no_grad():
            emb = student.project(torch.from_numpy(feats.pooled)[keep])
        got.append((emb @ text.T).argmax(1))
        want.append(pl.labels[torch.from_numpy(feats.has_points)[pl.instances]])
    return torch.cat(got), torch.cat(want)


def test_tiny_distillation_reaches_the_teachers_labels(world, tmp_path):
    cfg = replace(world["cfg"], out=str(tmp_path / "run"))
    summary = train(cfg, clip=world["clip"])
    st = summary["data"]["train"]
    assert st["scenes"] == 6 and st["proposals"] == 6 * 14
    assert st["instances"] == 6 * 12 and st["skipped_no_views"] == 6 and st["skipped_no_points"] == 6
    assert st["features_reused"] == 6 and st["features_computed"] == 0
    assert summary["select"] == "val_gt_acc"
    hist = summary["history"]
    assert len(hist) == cfg.epochs and hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[0]["val_teacher_gt_acc"] == 1.0       # the teacher's views were placed at the right text
    assert sorted(os.listdir(tmp_path / "run")) == ["best.pt", "last.pt", "metrics.json"]

    best = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)
    assert best["vocabulary"] == list(VOCAB) and best["prompt_template"] == TEMPLATE
    assert best["tau"] == cfg.tau and best["point_features"] == "backbone"
    assert best["epoch"] == summary["best"]["epoch"] and best["metrics"]["epoch"] == best["epoch"]
    fc = FeatureCache(cfg.mask3d)
    text = torch.from_numpy(world["text"])
    got, want = _student_labels(best, find_teacher_caches(cfg.cache), fc, text)
    assert len(got) == 72
    assert (got == want).float().mean() >= 0.9
    torch.manual_seed(cfg.seed)                      # the same student before training: near chance
    untrained = Student(Student.from_checkpoint(best).cfg).to_checkpoint()
    got, want = _student_labels(untrained, find_teacher_caches(cfg.cache), fc, text)
    assert (got == want).float().mean() < 0.5
    got, want = _student_labels(best, find_teacher_caches(cfg.val_cache), fc, text)
    assert (got == want).float().mean() == best["metrics"]["val_pseudo_acc"]


def test_feature_cache_reuse_and_invalidation(world, tmp_path):
    clip_id = clip_identity(BuildConfig(clip=f"local-dir:{world['bundle'] / 'clip'}", clip_config=None))
    paths = [write_scene(tmp_path / "cache", f"synth{i:04d}_00", world["text"], clip_id, seed=20 + i)
             for i in range(2)]
    ckpt = world["bundle"] / "mask3d.pt"
    fc = FeatureCache(ckpt, device="cpu")
    assert fc.ensure(paths, progress=False)["computed"] == 2
    files = sorted((tmp_path / "cache").glob(f"*{FEATURES_SUFFIX}"))
    assert [f.name for f in files] == [f"synth{i:04d}_00{FEATURES_SUFFIX}" for i in range(2)]
    stamp = [f.stat().st_mtime_ns for f in files]
    assert FeatureCache(ckpt).ensure(paths, progress=False)["reused"] == 2
    assert [f.stat().st_mtime_ns for f in files] == stamp

    # the pooled rows are Eq. 7's masked mean of Mask3D's backbone features over the proposal
    cache = load_teacher_cache(paths[0])
    feats, _ = fc.get(cache, paths[0])
    model, _ = load_checkpoint(ckpt)
    pf = model.predict(cache.points, cache.colors).point_features
    masks = torch.from_numpy(cache.proposal_masks())
    assert feats.has_points.tolist() == masks.any(1).tolist() == [True] * 13 + [False]
    torch.testing.assert_close(torch.from_numpy(feats.pooled[:13]), Student.pool(pf, masks[:13]))
    assert not feats.pooled[13].any()

    # another feature kind, another checkpoint, another cloud: recomputed
    assert FeatureCache(ckpt, "mask").ensure(paths, progress=False)["computed"] == 2
    assert FeatureCache(ckpt, "mask").get(cache, paths[0])[0].dim == preset("small").hidden_dim
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "other.pt", Mask3D(preset("small")))
    other = FeatureCache(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no current feature file"):
        other.get(cache, paths[0], compute=False)
    assert other.ensure(paths, progress=False)["computed"] == 2
    assert FeatureCache(ckpt).ensure(paths, progress=False)["computed"] == 2
    write_scene(tmp_path / "cache", "synth0001_00", world["text"], clip_id, seed=99)   # rebuilt teacher cache
    summary = FeatureCache(ckpt).ensure(paths, progress=False)
    assert (summary["computed"], summary["reused"]) == (1, 1)
    # a separate folder keeps the teacher caches' folder untouched
    sep = FeatureCache(ckpt, out_dir=tmp_path / "feats")
    assert sep.ensure(paths, progress=False)["computed"] == 2
    assert len(list((tmp_path / "feats").glob(f"*{FEATURES_SUFFIX}"))) == 2
    assert not list((tmp_path / "cache").glob(".*.tmp")) and not list((tmp_path / "feats").glob(".*.tmp"))


class _Killed(Exception):
    pass


def test_resume_after_a_kill_matches_an_uninterrupted_run(world, tmp_path):
    cfg = replace(world["cfg"], epochs=8)
    whole = train(replace(cfg, out=str(tmp_path / "whole")), clip=world["clip"])

    def kill_after_epoch_3(rec):
        if rec["epoch"] == 3:
            raise _Killed

    cut = replace(cfg, out=str(tmp_path / "cut"))
    with pytest.raises(_Killed):
        train(cut, clip=world["clip"], on_epoch_end=kill_after_epoch_3)
    with pytest.raises(ValueError, match="--resume"):
        train(cut, clip=world["clip"])
    with pytest.raises(ValueError, match="lr"):
        train(replace(cut, resume=True, lr=1e-2), clip=world["clip"])
    resumed = train(replace(cut, resume=True), clip=world["clip"])

    def strip(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert strip(resumed["history"]) == strip(whole["history"]) and len(whole["history"]) == 8
    assert resumed["best"] == whole["best"]
    for name in ("best.pt", "last.pt"):
        a = torch.load(tmp_path / "whole" / name, map_location="cpu", weights_only=False)
        b = torch.load(tmp_path / "cut" / name, map_location="cpu", weights_only=False)
        sa = a["state_dict"] if name == "best.pt" else a["student"]["state_dict"]
        sb = b["state_dict"] if name == "best.pt" else b["student"]["state_dict"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ddp_two_cpu_processes(world, tmp_path):
    cfg, out = world["cfg"], tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = launcher + ["--standalone", "--nproc_per_node", "2", "-m", "training.distill.train",
                      "--cache", *cfg.cache, "--val-cache", *cfg.val_cache, "--mask3d", cfg.mask3d,
                      "--clip", cfg.clip, "--out", str(out), "--vocabulary", cfg.vocabulary,
                      "--hidden-dim", "64", "--epochs", "10", "--batch-size", "16", "--lr", "3e-3",
                      "--threads", "1", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["best.pt", "last.pt", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 10
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    Student.from_checkpoint(best)
    assert res.stdout.count("distilled student: best") == 1     # only rank 0 reports


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.05, abs=1e-3)


def test_bad_configs_are_refused(world):
    with pytest.raises(ValueError, match="clip"):
        replace(world["cfg"], clip_config="folk-tiny-vit")
    with pytest.raises(ValueError, match="lambda"):
        replace(world["cfg"], lambda1=0.0, lambda2=0.0)
    with pytest.raises(ValueError, match="neither a folder"):
        find_teacher_caches([world["root"] / "nope"])
