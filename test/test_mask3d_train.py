"""The class-agnostic Mask3D trainer end to end: a tiny overfit run on one scene (loss falls, AP50 -> 1),
checkpoints, resume, and the CLI options."""

import json

import numpy as np
import pytest
import torch

from folk_ros.core.mask3d.checkpoint import load_checkpoint
from training.data.scenes import find_scenes, has_mesh_gt
from training.mask3d.data import load_scene
from training.mask3d.train import TrainConfig, class_agnostic_ap, parse_args, train
from test.fixtures import box_room_scene

pytestmark = pytest.mark.slow   # every test shares a fixture that trains Mask3D for about 80 s on 2 cores


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask3d_train")
    scene = box_room_scene(root / "scenes")
    cfg = TrainConfig(train=[str(scene)], val=[str(scene)], out=str(root / "run"), epochs=80, lr=3e-3,
                      augment=False, seed=0, threads=1, voxel_size=0.04)
    threads = torch.get_num_threads()
    try:
        metrics = train(cfg)
    finally:
        torch.set_num_threads(threads)
    return cfg, scene, metrics


def test_one_scene_overfits(overfit_run):
    cfg, scene, metrics = overfit_run
    history = metrics["history"]
    assert len(history) == cfg.epochs
    first, last = history[0]["loss"], np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.5 * first, (first, last)
    # AP50 reaches 1 (the last epochs may lose a box at the 0.5 mask threshold: how far depends on the
    # CPU's float rounding), and best.pt is that epoch's model
    assert max(h["val_ap50"] for h in history) == pytest.approx(1.0), [h["val_ap50"] for h in history]
    # the saved best checkpoint reproduces it through the public loader, at the trained voxel size
    model, _ = load_checkpoint(f"{cfg.out}/best.pt")
    assert model.cfg.voxel_size == pytest.approx(0.04)
    assert class_agnostic_ap(model.eval(), [load_scene(scene)]).mean["ap50"] == pytest.approx(1.0)
    saved = json.loads((scene.parents[1] / "run" / "metrics.json").read_text())
    assert saved["history"][-1]["loss"] == pytest.approx(history[-1]["loss"])


def test_killed_run_resumes_to_the_same_result(overfit_run, tmp_path, monkeypatch):
    _, scene, _ = overfit_run
    cfg = TrainConfig(train=[str(scene)], out=str(tmp_path / "whole"), epochs=3, augment=True, seed=1,
                      threads=1, voxel_size=0.04)
    whole = train(cfg)["history"]

    import training.mask3d.train as trainer
    real_save = trainer.save_checkpoint

    def save_then_die(path, model, **extra):
        real_save(path, model, **extra)
        if path.name == "last.pt" and extra["epoch"] == 1:
            raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    cut = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "cut")})
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = train(TrainConfig(**{**cut.__dict__, "resume": True}))["history"]
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(resumed, whole):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_cli_options_and_scene_discovery(tmp_path):
    cfg = parse_args(["--train", "a", "b", "--val", "c", "--epochs", "2", "--threads", "0", "--voxel-size",
                      "0.05", "--no-augment"])
    assert (cfg.train, cfg.val, cfg.epochs, cfg.threads, cfg.voxel_size, cfg.augment) == \
        (("a", "b"), ("c",), 2, 0, 0.05, False)
    assert (cfg.input_features, parse_args(["--train", "a", "--input-features", "xyz"]).input_features) == \
        ("xyzrgb", "xyz")
    with pytest.raises(SystemExit):
        parse_args(["--train", "a", "--input-features", "rgb"])
    with pytest.raises(FileNotFoundError, match="neither a scene folder nor a folder of scenes"):
        find_scenes([tmp_path], has_mesh_gt)


def test_init_starts_from_a_trained_checkpoint(overfit_run, tmp_path):
    cfg, scene, _ = overfit_run
    again = TrainConfig(train=[str(scene)], val=[str(scene)], out=str(tmp_path / "again"), epochs=1, lr=1e-6,
                        augment=False, seed=2, threads=1, voxel_size=0.04, init=f"{cfg.out}/best.pt")
    assert train(again)["history"][0]["val_ap50"] == pytest.approx(1.0)      # a random start is at 0
    with pytest.raises(ValueError, match="model config differs"):
        train(TrainConfig(**{**again.__dict__, "voxel_size": 0.05, "out": str(tmp_path / "other")}))
    with pytest.raises(ValueError, match="model config differs"):
        train(TrainConfig(**{**again.__dict__, "input_features": "xyz", "out": str(tmp_path / "xyz")}))
