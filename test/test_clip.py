"""Tests of folk_ros.core.clip with a tiny random open_clip model (a test double).

No real CLIP weights exist on these machines, so the tests build `folk-tiny-vit` with
random (and perturbed, so that biases and norms are non-trivial) weights, save it the
way open_clip checkpoints are saved, and load it back through ClipModel's real paths.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

open_clip = pytest.importorskip("open_clip")
safetensors_torch = pytest.importorskip("safetensors.torch")

import folk_ros.core.clip as clip_module  # noqa: E402
from folk_ros.core.clip import ClipModel  # noqa: E402
from folk_ros.core.clip_preprocess import images_to_float, preprocess_images  # noqa: E402
from folk_ros.core.clip_weights import ClipWeightsNotFound, register_model_config  # noqa: E402
from folk_ros.core.maskclip import resize_positional_embedding  # noqa: E402
from folk_ros.core.clip_text import cuts_to_prompt_length, encode_tokens  # noqa: E402
from folk_ros.core.weight_init import no_weight_init  # noqa: E402

TINY = "folk-tiny-vit"
NAMES = ["chair", "table", "mug", "fire extinguisher"]


def _write_open_clip_folder(folder: Path, model_cfg: dict, state: dict) -> Path:
    """An open_clip folder as on the Hugging Face hub: config JSON + safetensors weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg,
              "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                                 "std": list(open_clip.OPENAI_DATASET_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()},
                                str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def tiny_double(tmp_path_factory):
    """Test double of a trained CLIP: folk-tiny-vit, random weights, saved as file and folder."""
    root = tmp_path_factory.mktemp("tiny_clip_double")
    name = register_model_config(TINY)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():  # non-trivial LayerNorm gains and biases, so that slicing bugs show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = model.state_dict()
    checkpoint = root / "tiny_double.pt"
    torch.save(state, checkpoint)
    folder = _write_open_clip_folder(root / "tiny_double_dir", open_clip.get_model_config(name), state)
    return {"model": model, "state": state, "checkpoint": checkpoint, "folder": folder, "root": root}


@pytest.fixture(scope="module")
def clip(tiny_double):
    return ClipModel(TINY, checkpoint=tiny_double["checkpoint"], device="cpu")


def _assert_same_weights(model, state):
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(loaded[k].cpu(), v), k


def _smooth_images(b, h, w, seed=0):
    """(b, h, w, 3) uint8 smooth colour patterns (noise is a poor stand-in for frames)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(b):
        f = rng.uniform(5, 30, size=3)
        out.append(np.stack([127 + 100 * np.sin(xx / f[0]), 127 + 100 * np.cos(yy / f[1]),
                             127 + 80 * np.sin((xx + yy) / f[2])], -1))
    return np.stack(out).astype(np.uint8)


# ------------------------------------------------------------------------- loading


def test_load_from_checkpoint_file(clip, tiny_double):
    _assert_same_weights(clip.model, tiny_double["state"])
    assert not clip.model.training
    assert clip.device == torch.device("cpu")
    assert clip.embed_dim == 128 and clip.patch_size == 16 and clip.image_size == (224, 224)
    assert clip.image_mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert clip.image_std == pytest.approx(open_clip.OPENAI_DATASET_STD)


def test_load_from_local_dir_matches_file(clip, tiny_double):
    from_dir = ClipModel(f"local-dir:{tiny_double['folder']}", device="cpu")
    _assert_same_weights(from_dir.model, tiny_double["state"])
    torch.testing.assert_close(from_dir.encode_text(NAMES), clip.encode_text(NAMES))


def test_save_round_trip(clip, tmp_path):
    folder = clip.save(tmp_path / "saved")
    again = ClipModel(f"local-dir:{folder}", device="cpu")
    _assert_same_weights(again.model, clip.model.state_dict())
    assert again.model_cfg == clip.model_cfg


def test_missing_weights_give_clear_errors(tiny_double, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ClipWeightsNotFound, match="nope.pt"):
        ClipModel(TINY, checkpoint=missing, device="cpu")
    with pytest.raises(ClipWeightsNotFound, match="does not exist"):
        ClipModel(f"local-dir:{tmp_path / 'no_dir'}", device="cpu")
    no_weights = tmp_path / "config_only"
    no_weights.mkdir()
    (no_weights / "open_clip_config.json").write_text(
        (tiny_double["folder"] / "open_clip_config.json").read_text())
    with pytest.raises(ClipWeightsNotFound, match="no weights file"):
        ClipModel(f"local-dir:{no_weights}", device="cpu")
    with pytest.raises(ValueError, match="no weights named"):
        ClipModel(TINY, device="cpu")
    with pytest.raises(ValueError, match="unknown CLIP architecture"):
        ClipModel("no-such-arch", checkpoint=tiny_double["checkpoint"], device="cpu")


def test_pretrained_tag_not_on_disk(tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained tag 'no_such_tag'.*laion2b_s34b_b88k"):
        ClipModel("ViT-B-16", pretrained="no_such_tag", device="cpu")
    # a real tag whose download is absent: names the repo, the file and where it goes
    with pytest.raises(ClipWeightsNotFound) as err:
        ClipModel("ViT-B-16", pretrained="laion2b_s34b_b88k", cache_dir=str(tmp_path), device="cpu")
    msg = str(err.value)
    assert "laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in msg and "open_clip_pytorch_model.bin" in msg
    assert str(tmp_path) in msg and "checkpoint=PATH" in msg
    with pytest.raises(ClipWeightsNotFound, match="hf download folk/absent"):
        ClipModel("hf-hub:folk/absent", cache_dir=str(tmp_path), device="cpu")


def _fake_hf_cache(cache: Path, repo_id: str, files: dict) -> None:
    """The on-disk layout huggingface_hub leaves after a download (refs/main -> snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for name, src in files.items():
        (snap / name).write_bytes(Path(src).read_bytes())


def test_cached_downloads_are_found(tiny_double, tmp_path, monkeypatch):
    folder = tiny_double["folder"]
    _fake_hf_cache(tmp_path, "folk/tiny-double", {
        "open_clip_config.json": folder / "open_clip_config.json",
        "open_clip_model.safetensors": folder / "open_clip_model.safetensors"})
    from_hub = ClipModel("hf-hub:folk/tiny-double", cache_dir=str(tmp_path), device="cpu")
    _assert_same_weights(from_hub.model, tiny_double["state"])

    # a pretrained tag for the tiny architecture (a test double of open_clip's tag table)
    real_cfg = open_clip.get_pretrained_cfg

    def tag_table_double(arch, tag):
        if (arch, tag) == (TINY, "double"):
            return {"hf_hub": "folk/tiny-double/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                    "quick_gelu": True}
        return real_cfg(arch, tag)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", tag_table_double)
    from_tag = ClipModel(TINY, pretrained="double", cache_dir=str(tmp_path), device="cpu")
    _assert_same_weights(from_tag.model, tiny_double["state"])
    assert from_tag.image_mean == (0.5, 0.5, 0.5) and from_tag.image_std == (0.25, 0.25, 0.25)
    assert from_tag.model_cfg["quick_gelu"]  # the tag's activation wins, as the weights need it
    assert isinstance(from_tag.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


def test_register_json_path_and_device_validation(tmp_path):
    cfg = json.loads((Path(__file__).parents[1] / "folk_ros/core/model_configs/folk-tiny-vit.json").read_text())
    path = tmp_path / "folk-test-json-arch.json"
    path.write_text(json.dumps(cfg))
    assert register_model_config(path) == "folk-test-json-arch"
    assert register_model_config(path) == "folk-test-json-arch"  # idempotent
    assert register_model_config("ViT-B-16") == "ViT-B-16"
    with pytest.raises(ValueError, match="device"):
        ClipModel.from_config(TINY, device="tpu")


# ------------------------------------------------------------------------- text


def test_encode_text_shape_norm_and_cache(clip, monkeypatch):
    calls = []
    real = clip_module.encode_tokens

    def counting(model, tokens):
        calls.append(tokens.shape[0])
        return real(model, tokens)

    monkeypatch.setattr(clip_module, "encode_tokens", counting)
    clip._text_cache.clear()
    emb = clip.encode_text(NAMES)
    assert emb.shape == (4, 128) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert len(calls) == 1
    again = clip.encode_text(list(NAMES))  # same vocabulary: cache hit, tower not run
    assert len(calls) == 1 and torch.equal(again, emb)
    again.zero_()  # callers get a copy; the cache is not corrupted
    assert torch.equal(clip.encode_text(NAMES), emb)
    clip.encode_text(NAMES, template="a photo of a {}")
    assert len(calls) == 2
    clip.encode_text(NAMES[:2], batch_size=1)  # batched: one call per prompt
    assert calls[-2:] == [1, 1]


def test_text_tower_cut_to_the_prompts_length_gives_open_clips_embeddings(clip):
    """The causal text tower over the first L positions (L = the longest prompt's end token + 1) gives what
    open_clip's encode_text gives over the whole 77-token context, for short and long prompts together."""
    prompts = ["a mug", "a fire extinguisher in the scene", " ".join(["very"] * 60) + " long chair", "x"]
    tokens = clip.tokenizer(prompts)
    assert cuts_to_prompt_length(clip.model)
    with torch.no_grad():
        full = clip.model.encode_text(tokens)
        cut = encode_tokens(clip.model, tokens)
        short = encode_tokens(clip.model, tokens[[0, 3]])       # a batch of short prompts: L = 4
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(short, full[[0, 3]], rtol=1e-5, atol=1e-5)


def test_text_models_without_a_causal_argmax_tower_are_encoded_whole():
    class OtherTextTower(torch.nn.Module):
        def encode_text(self, tokens):
            return tokens.float()[:, :2] * 2

    tokens = torch.tensor([[49406, 320, 49407, 0], [49406, 49407, 0, 0]])
    assert not cuts_to_prompt_length(OtherTextTower())
    assert torch.equal(encode_tokens(OtherTextTower(), tokens), tokens.float()[:, :2] * 2)


def test_text_cache_is_lru(tiny_double):
    clip = ClipModel(TINY, checkpoint=tiny_double["checkpoint"], device="cpu", text_cache_size=2)
    for vocab in (["a"], ["b"], ["a"], ["c"]):
        clip.encode_text(vocab)
    assert [k[1] for k in clip._text_cache] == [("a",), ("c",)]  # "b" was least recently used


def test_template_averaging(clip):
    t1, t2 = "a {} in the scene", "a photo of a {}"
    e1, e2 = clip.encode_text(NAMES, t1), clip.encode_text(NAMES, t2)
    both = clip.encode_text(NAMES, [t1, t2])
    torch.testing.assert_close(both, F.normalize(e1 + e2, dim=-1))
    assert not torch.allclose(both, e1, atol=1e-3)
    # the prompt embedding itself is open_clip's, normalised
    tokens = clip.tokenizer([t1.replace("{}", NAMES[0])])
    with torch.no_grad():
        direct = F.normalize(clip.model.encode_text(tokens).float(), dim=-1)[0]
    torch.testing.assert_close(e1[0], direct)


def test_encode_text_validation(clip):
    for bad in ([], "chair", ["chair", 3], ["chair", ""], None):
        with pytest.raises(ValueError):
            clip.encode_text(bad)
    for bad in ("no placeholder", "{} and {}", []):
        with pytest.raises(ValueError):
            clip.encode_text(NAMES, template=bad)


# ------------------------------------------------------------------------- images


def test_encode_images(clip):
    imgs = _smooth_images(3, 224, 224)
    emb = clip.encode_images(imgs)
    assert emb.shape == (3, 128)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    # 224x224 input: preprocessing is only the normalisation, then open_clip's own forward
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
         - torch.tensor(clip.image_mean).view(1, 3, 1, 1)) / torch.tensor(clip.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = F.normalize(clip.model.encode_image(x), dim=-1)
    torch.testing.assert_close(emb, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clip.encode_images(x), ref, rtol=1e-4, atol=1e-5)  # preprocessed floats
    crops = [_smooth_images(1, 60, 90)[0], _smooth_images(1, 300, 120, seed=1)[0]]  # varying crop sizes
    assert clip.encode_images(crops).shape == (2, 128)
    with pytest.raises(ValueError, match="uint8"):
        clip.encode_images(imgs.astype(np.float32))
    with pytest.raises(ValueError, match="preprocessed"):
        clip.encode_images(torch.zeros(1, 3, 100, 100))


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
def test_preprocess_matches_open_clip_transform(mode):
    from PIL import Image
    from open_clip.transform import PreprocessCfg, image_transform_v2

    img = _smooth_images(1, 240, 320)[0]
    cfg = dict(size=224, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD,
               interpolation="bicubic", resize_mode=mode, fill_color=0)
    ref = image_transform_v2(PreprocessCfg(**cfg), is_train=False)(Image.fromarray(img))
    ours = preprocess_images(images_to_float(img[None]), cfg)[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    # PIL and torch bicubic differ by about one grey level (1/255/std ~ 0.015)
    assert (ours - ref).abs().max() < 0.04


# ------------------------------------------------------------------------- dense features


def maskclip_reference(visual, x, full_last_block=False):
    """Hand-written MaskCLIP path from the module's weights (independent of folk_ros.core.clip).

    Returns (B, D, gh, gw) normalised dense features, or with full_last_block=True the
    pooled class-token embedding (B, D) of the ordinary forward pass.
    """
    b, _, h, w = x.shape
    p = visual.conv1.weight.shape[-1]
    gh, gw = h // p, w // p
    c = visual.class_embedding.shape[0]
    tok = F.conv2d(x, visual.conv1.weight, stride=p).reshape(b, c, gh * gw).transpose(1, 2)
    tok = torch.cat([visual.class_embedding.reshape(1, 1, c).expand(b, 1, c), tok], dim=1)
    pos = visual.positional_embedding
    og = visual.grid_size
    if (gh, gw) != tuple(og):
        grid = pos[1:].T.reshape(1, c, og[0], og[1])
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False, antialias=True)
        pos = torch.cat([pos[:1], grid.reshape(c, gh * gw).T], dim=0)
    ln = visual.ln_pre
    tok = F.layer_norm(tok + pos, (c,), ln.weight, ln.bias, ln.eps)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        tok = blk(tok)
    last = blocks[-1]
    if full_last_block:
        tok = last(tok)
        cls = F.layer_norm(tok[:, 0], (c,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
        return cls @ visual.proj
    hid = F.layer_norm(tok, (c,), last.ln_1.weight, last.ln_1.bias, last.ln_1.eps)
    v = hid @ last.attn.in_proj_weight[2 * c:].T + last.attn.in_proj_bias[2 * c:]
    out = v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    out = F.layer_norm(out[:, 1:], (c,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
    out = F.normalize(out @ visual.proj, dim=-1)
    return out.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)


def _normalised(clip, imgs):
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(clip.image_mean).view(1, 3, 1, 1)) / torch.tensor(clip.image_std).view(1, 3, 1, 1)


@pytest.mark.parametrize("hw", [(224, 224), (240, 320)])
def test_dense_features_shape(clip, hw):
    imgs = _smooth_images(2, *hw)
    feats = clip.dense_features(imgs)
    assert feats.shape == (2, 128, hw[0] // 16, hw[1] // 16) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2, hw[0] // 16, hw[1] // 16))


def test_dense_features_downscale_and_errors(clip):
    frames = _smooth_images(1, 480, 640)
    assert clip.dense_features(frames, size=(240, 320)).shape == (1, 128, 15, 20)
    with pytest.raises(ValueError, match="multiple of the patch"):
        clip.dense_features(_smooth_images(1, 250, 320))
    with pytest.raises(ValueError, match="uint8"):
        clip.dense_features(frames[0])  # no batch axis


@pytest.mark.parametrize("hw", [(224, 224), (240, 320)])
def test_maskclip_matches_hand_reference(clip, hw):
    imgs = _smooth_images(2, *hw, seed=3)
    x = _normalised(clip, imgs)
    feats = clip.dense_features(imgs)
    with torch.no_grad():
        ref = maskclip_reference(clip.model.visual, x)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clip.dense_features(x), ref, rtol=1e-5, atol=1e-5)  # normalised float input
    if hw == (224, 224):
        with torch.no_grad():
            glob = F.normalize(clip.model.encode_image(x), dim=-1)
            hand_glob = F.normalize(maskclip_reference(clip.model.visual, x, full_last_block=True), dim=-1)
        torch.testing.assert_close(hand_glob, glob, rtol=1e-4, atol=1e-5)  # the reference is open_clip's forward
        mean_patch = F.normalize(feats.mean(dim=(2, 3)), dim=-1)
        assert (mean_patch * glob).sum(-1).max() < 0.99  # value path != global embedding


def test_pos_embed_resize_identity_and_shape(clip):
    visual = clip.model.visual
    pos = visual.positional_embedding
    assert resize_positional_embedding(pos, visual.grid_size, (14, 14)) is pos
    resized = resize_positional_embedding(pos, visual.grid_size, (15, 20))
    assert resized.shape == (1 + 15 * 20, pos.shape[1])
    assert torch.equal(resized[0], pos[0])  # class token untouched
    with pytest.raises(ValueError):
        resize_positional_embedding(pos[:-1], visual.grid_size, (15, 20))


def _small_cfg(tmp_path, name, vision_cfg):
    cfg = {"embed_dim": 32, "vision_cfg": vision_cfg,
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_attention_pooled_tower(tmp_path):
    path = _small_cfg(tmp_path, "folk-test-attnpool", {
        "image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16,
        "attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2})
    clip = ClipModel.from_config(path, device="cpu")
    feats = clip.dense_features(_smooth_images(1, 48, 80))
    assert feats.shape == (1, 32, 3, 5)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(1, 3, 5))


def test_non_vit_tower_is_rejected(tmp_path):
    path = _small_cfg(tmp_path, "folk-test-resnet", {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16})
    clip = ClipModel.from_config(path, device="cpu")
    assert clip.encode_text(["chair"]).shape == (1, 32)  # text still works
    with pytest.raises(ValueError, match="VisionTransformer"):
        clip.dense_features(_smooth_images(1, 64, 64))


def test_no_weight_init_skips_fills_only_inside_the_block():
    with no_weight_init():
        layer = torch.nn.Linear(64, 64)          # built without its kaiming fill
        assert torch.equal(torch.nn.init.normal_(torch.zeros(5)), torch.zeros(5))
    assert not torch.equal(torch.nn.init.normal_(torch.zeros(5)), torch.zeros(5))   # restored
    with pytest.raises(RuntimeError), no_weight_init():
        raise RuntimeError("a failed load")
    assert torch.nn.init.kaiming_uniform_ is not None and not torch.equal(
        torch.nn.init.kaiming_uniform_(torch.zeros(4, 4)), torch.zeros(4, 4))      # restored after an error too
    assert layer.weight.shape == (64, 64)
