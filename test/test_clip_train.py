"""Training of the synthetic-world CLIP (training/clip): object views, losses, checkpoints.

Everything runs on one tiny rendered scene (160x120, 3 frames) and a tiny CLIP config
written here (64-px images, 2 vision layers, 1 text layer), so the module takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from folk_ros.core.bundle import file_sha256
from folk_ros.core.clip import ClipModel
from training.clip import train as T
from training.clip.batches import crop_weights
from training.clip.evaluation import evaluate, make_eval_set
from training.clip.losses import crop_contrastive_loss
from training.clip.vocabulary import build_vocabulary, text_embeddings, tokenize
from training.clip.dataset import (BACKGROUND_CLASSES, ViewConfig, crop_square, frame_masks,
                                   instance_boxes, load_views, square_box)
from training.data import scannet200
from training.data.scenes import find_scenes, has_instance_images
from training.data.synthetic import SynthConfig, generate_scene, scene_seed, write_scene

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
MIN_PIXELS = 30


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """(scene root, mesh, rendered frames) of one tiny generated scene in ScanNet layout."""
    root = tmp_path_factory.mktemp("clip_scenes")
    mesh, walk, _ = generate_scene(scene_seed(0, 0), "synth0000_00", 3,
                                   SynthConfig(width=160, height=120, cloud_every=10 ** 9))
    write_scene(root, mesh, walk, bag=False, meta={"frames": 3})
    return root, mesh, list(walk)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip_cfg") / "clip-test-tiny.json"
    path.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def views(scene):
    root, _, _ = scene
    return load_views(find_scenes(root, has_instance_images), ViewConfig(min_pixels=MIN_PIXELS, crop_size=64))


def test_instance_boxes_hand_made():
    inst = np.zeros((6, 8), np.int32)
    inst[1:3, 2:5] = 4
    inst[5, 7] = 2
    ids, pixels, boxes = instance_boxes(inst)
    assert ids.tolist() == [2, 4] and pixels.tolist() == [1, 6]
    assert boxes.tolist() == [[5, 7, 6, 8], [1, 2, 3, 5]]
    with pytest.raises(ValueError):
        instance_boxes(inst.astype(np.float32))


def test_square_box_contains_the_mask_box_and_stays_inside():
    top, left, side = square_box(np.array([10, 20, 30, 60]), 0.25, (120, 160))
    assert side == 60 and top <= 10 and top + side >= 30 and left <= 20 and left + side >= 60
    top, left, side = square_box(np.array([0, 150, 10, 160]), 0.5, (120, 160))  # at the corner: moved in
    assert (top, left) == (0, 160 - side)


def test_views_have_right_names_and_crops_show_the_instance(scene, views):
    _, mesh, frames = scene
    assert len(views) > 0 and views.scene_ids == [mesh.scene_id]
    assert not {"wall", "floor"} & set(views.name.tolist())  # background gives no object views
    for i in range(len(views)):
        frame = frames[views.frames[views.frame[i]].index]
        inst = int(views.instance[i])
        assert views.name[i] == mesh.instance_labels[inst]
        mask = frame.instance == inst
        assert mask.sum() == views.pixels[i] >= MIN_PIXELS
        y0, x0, y1, x1 = views.box[i]
        assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the box holds the whole mask
        # the crop window, applied to the mask, shows the instance (a good share of it)
        top, left, side = square_box(views.box[i], views.config.context, mask.shape)
        crop_mask = crop_square(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, 2), top, left, side, 64)
        visible = (crop_mask[..., 0] > 127).mean()
        assert visible > 0.5 * mask.sum() / side ** 2
    # crops come from the frame's colour at that window (decoded JPEG, so compare loosely)
    i = int(np.argmax(views.pixels))
    frame = frames[views.frames[views.frame[i]].index]
    top, left, side = square_box(views.box[i], views.config.context, frame.color.shape[:2])
    want = crop_square(frame.color, top, left, side, 64).astype(float)
    got = views.crop(i).astype(float)
    assert got.shape == (64, 64, 3) and np.abs(got - want).mean() < 6.0


def test_frame_masks_keep_known_classes_only(scene):
    _, mesh, frames = scene
    classes = {n: k for k, n in enumerate(sorted({v for v in mesh.instance_labels.values() if v != "wall"}))}
    ids, masks, targets = frame_masks(frames[0].instance, mesh.instance_labels, classes, MIN_PIXELS)
    assert masks.shape[1:] == frames[0].instance.shape and len(ids) == len(targets) > 0
    for i, m, t in zip(ids, masks, targets):
        assert np.array_equal(m, frames[0].instance == i) and m.sum() >= MIN_PIXELS
        assert mesh.instance_labels[int(i)] != "wall" and classes[mesh.instance_labels[int(i)]] == t


def test_short_context_text_matches_open_clip(tiny_config):
    clip = ClipModel.from_config(tiny_config, device="cpu", seed=0)
    tokens = tokenize(clip, ("chair", "coffee table", "kitchen counter"), "a {} in the scene")
    with torch.no_grad():
        full = torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1)
        short = text_embeddings(clip.model, tokens)
    assert torch.allclose(full, short, atol=1e-5)


def test_crop_loss_does_not_treat_same_class_crops_as_negatives():
    text = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    targets = torch.tensor([0, 0, 2, 2, 3])
    image = text[targets]  # each crop equals its class prompt; two pairs share a class
    terms = crop_contrastive_loss(image, text, targets, torch.tensor(100.0))
    # t2i: a uniform target over a class's crops; its minimum is that target's entropy, log 2 for
    # classes 0 and 2, 0 for class 3 (instance-level InfoNCE would push the pairs apart instead)
    assert terms["i2t"] < 1e-3 and terms["t2i"] == pytest.approx(2 / 3 * np.log(2), abs=1e-3)
    wrong = crop_contrastive_loss(text[torch.tensor([0, 1, 2, 2, 3])], text, targets, torch.tensor(100.0))
    assert wrong["i2t"] > 1.0 and wrong["t2i"] > terms["t2i"] + 1.0


def test_optimisation_steps_reduce_the_loss_on_a_fixed_batch(views, tiny_config):
    clip = ClipModel.from_config(tiny_config, device="cpu", seed=0)
    cfg = T.TrainConfig(scenes=["-"], val_scenes=["-"], crop_batch=8, frame_batch=1, dense_size=(64, 80),
                        min_pixels=MIN_PIXELS)
    vocab = build_vocabulary(views, cfg.background)
    assert set(vocab.objects) == set(views.class_counts()) and "wall" in vocab.background and not vocab.negatives
    wide = build_vocabulary(views, cfg.background, scannet200_negatives=True)
    assert wide.names[:len(vocab.names)] == vocab.names and len(set(wide.names)) == len(wide.names)
    assert set(wide.names) == (set(scannet200.class_labels()) - set(BACKGROUND_CLASSES)) | set(vocab.background)
    tokens = tokenize(clip, vocab.names, cfg.template)
    weights, pool = crop_weights(views, cfg.class_balance), np.unique(views.frame)
    opt = torch.optim.AdamW(T.param_groups(clip.model, cfg.weight_decay), lr=2e-3)
    clip.model.train()

    def batch_terms():  # the same seed -> the same crops, jitter and frame every time
        torch.manual_seed(0)
        return T.train_step(clip, tokens, views, cfg, np.random.default_rng(0), weights, pool, vocab.index())

    before = batch_terms()
    for _ in range(3):
        terms = batch_terms()
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    after = batch_terms()
    assert after["loss"].item() < before["loss"].item()
    assert after["crop"].item() < before["crop"].item() and after["dense"].item() < before["dense"].item()


def _argv(root, out, config, *extra):
    return ["--scenes", str(root), "--val-scenes", str(root), "--out", str(out), "--config", config,
            "--minutes", "0", "--epochs", "2", "--epoch-steps", "1", "--crop-batch", "4", "--frame-batch", "1",
            "--dense-size", "64", "80", "--min-pixels", str(MIN_PIXELS), "--max-eval-views", "12",
            "--max-eval-frames", "2", "--final-eval-views", "12", "--final-eval-frames", "2", "--val-every", "1",
            "--seed", "3", *extra]


def test_checkpoint_resume_round_trip_and_saved_model_loads(scene, tiny_config, tmp_path, monkeypatch):
    root, _, _ = scene
    argv = _argv(root, tmp_path / "a", tiny_config)
    straight = T.train(T.parse_args(argv), argv)

    # the same run, killed during the second evaluation (after epoch 1's checkpoint), then resumed
    real_evaluate, calls = evaluate, []

    def dying_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(T, "evaluate", dying_evaluate)
    with pytest.raises(KeyboardInterrupt):
        T.train(T.parse_args(_argv(root, tmp_path / "b", tiny_config)))
    monkeypatch.setattr(T, "evaluate", real_evaluate)
    state = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["step"] == 1
    resumed = T.train(T.parse_args(_argv(root, tmp_path / "b", tiny_config, "--resume")))

    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["metrics"]["steps"] == straight["metrics"]["steps"] == 2
    assert [h["step"] for h in resumed["history"]] == [1, 2]

    # the saved best model: an open_clip folder, loaded like a real checkpoint, as recorded
    out = tmp_path / "a"
    assert straight["model"]["sha256"] == file_sha256(out / "open_clip_model.safetensors")
    assert json.loads((out / "manifest.json").read_text())["model"]["sha256"] == straight["model"]["sha256"]
    loaded = ClipModel(f"local-dir:{out}", device="cpu")
    objects = tuple(straight["vocabulary"]["objects"])
    views = load_views(find_scenes(root, has_instance_images), ViewConfig(min_pixels=MIN_PIXELS, crop_size=64))
    data = make_eval_set(views, objects, 12, 2)
    again = evaluate(loaded, loaded.encode_text(list(objects)), objects, data, (64, 80), MIN_PIXELS)
    assert again["crop"]["acc"] == straight["metrics"]["val"]["crop"]["acc"]
    assert again["dense"]["acc"] == straight["metrics"]["val"]["dense"]["acc"]
    assert straight["metrics"]["val"]["crop"]["chance"] == pytest.approx(1 / len(objects))
    assert straight["command"] == "python -m training.clip.train " + " ".join(argv)


def test_init_warm_starts_from_an_open_clip_folder(scene, tiny_config, tmp_path):
    root, _, _ = scene
    start = ClipModel.from_config(tiny_config, device="cpu", seed=11)
    start.save(tmp_path / "start")
    (tmp_path / "start" / "manifest.json").write_text(json.dumps({"what": "the earlier run"}))
    argv = _argv(root, tmp_path / "warm", tiny_config, "--init", str(tmp_path / "start"), "--epochs", "1")
    manifest = T.train(T.parse_args(argv), argv)
    assert manifest["init"] == {"what": "the earlier run"}
    trained = ClipModel(f"local-dir:{tmp_path / 'warm'}", device="cpu").model.state_dict()
    fresh = ClipModel.from_config(tiny_config, device="cpu", seed=3).model.state_dict()   # the run's own seed

    def dist(a, b):
        return sum(float((a[k].float() - b[k].float()).norm()) for k in a if a[k].is_floating_point())

    start_sd = start.model.state_dict()
    assert 0 < dist(trained, start_sd) < 0.1 * dist(trained, fresh)   # one step away from the init
