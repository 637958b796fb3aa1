"""CLIP over open_clip: weight resolution, text and image embeddings, MaskCLIP dense features.

The FOLK teacher (paper Sec. 3.1) needs three things from CLIP: text embeddings of the
vocabulary (scored against instance embeddings), image embeddings of crops (the
OpenMask3D-style baseline) and a per-patch feature map of whole frames that mask pooling
(Eq. 6) averages inside each instance mask. The per-patch map follows MaskCLIP (Zhou et
al., ECCV 2022): the last transformer block keeps only its value path, so each patch
token is projected into the joint space on its own instead of being mixed by attention.

Weights are never downloaded here. A model comes from, in order of preference:
  * ``ClipModel("ViT-B-16", checkpoint="weights.bin")``: an architecture name (open_clip's
    built-ins, a config in ``folk_ros/core/model_configs/`` or a JSON path) and a file;
  * ``ClipModel("local-dir:/models/clip")``: an open_clip folder (``open_clip_config.json``
    and a ``.safetensors``/``.bin``/``.pth`` file), as written by :meth:`ClipModel.save`;
  * ``ClipModel("ViT-B-16", pretrained="laion2b_s34b_b88k")`` or ``ClipModel("hf-hub:org/repo")``:
    only when the files already lie in the Hugging Face cache (or ``~/.cache/clip``);
    otherwise :class:`ClipWeightsNotFound` says what to download and where to put it;
  * ``ClipModel.from_config("folk-tiny-vit")``: random weights (tests, benchmarks, the
    start of training), named as such.

open_clip is imported lazily (it pulls in torchvision and takes seconds to import).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from folk_ros.core.clip_text import encode_tokens
from folk_ros.core.weight_init import no_weight_init

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a {} in the scene"
PACKAGED_CONFIG_DIR = Path(__file__).with_name("model_configs")
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
WEIGHTS_FILE_NAME = "open_clip_model.safetensors"
# open_clip's local-dir loader only looks at these suffixes (factory._find_checkpoint_in_dir).
_LOCAL_DIR_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")

ImageBatch = Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]]


class ClipWeightsNotFound(FileNotFoundError):
    """No CLIP weights on disk for the requested model; the message says what to fetch."""


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "folk_ros.core.clip needs open_clip: pip install torch==2.14.1 torchvision==0.29.1 "
            "open-clip-torch==3.3.0 (pinned together, see requirements.txt)") from e
    return open_clip


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cpu' / 'cuda' / 'cuda:N' as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or str(device).startswith("cuda"):
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use 'cpu' or 'auto'")
        return torch.device(device)
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


# --------------------------------------------------------------------------- model configs


def _read_model_cfg(path: Path) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg = cfg.get("model_cfg", cfg)
    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{path} is not an open_clip model config: missing {missing}")
    return cfg


def register_model_config(name_or_path: Union[str, Path]) -> str:
    """Make an architecture known to open_clip by name and return that name.

    Accepts an open_clip built-in name (returned unchanged, nothing registered), the name
    of a config shipped in ``folk_ros/core/model_configs/`` (e.g. ``"folk-tiny-vit"``) or
    a path to a JSON file holding ``{"embed_dim", "vision_cfg", "text_cfg"}`` (the
    file's stem becomes the name). Registration happens here, at call time, through
    ``open_clip.add_model_config``; it is idempotent. Nothing is registered on import.
    """
    open_clip = _open_clip()
    name = str(name_or_path)
    known = open_clip.list_models()
    path = Path(name)
    if path.suffix != ".json" or not path.is_file():
        if name in known:
            return name
        path = PACKAGED_CONFIG_DIR / f"{name}.json"
        if not path.is_file():
            packaged = sorted(p.stem for p in PACKAGED_CONFIG_DIR.glob("*.json"))
            raise ValueError(
                f"unknown CLIP architecture {name!r}: not an open_clip model "
                f"({len(known)} known, e.g. ViT-B-16), not a folk_ros config {packaged}, "
                "and not a JSON file")
    if "model_cfg" in json.loads(path.read_text(encoding="utf-8")):
        raise ValueError(f"{path} holds an open_clip folder config; load its folder with "
                         f"'local-dir:{path.parent}' instead")
    cfg = _read_model_cfg(path)
    if path.stem in known:
        if open_clip.get_model_config(path.stem) != cfg:
            raise ValueError(f"model config {path} clashes with the already known {path.stem!r}")
        return path.stem
    open_clip.add_model_config(path)
    return path.stem


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's architecture and weights come from, all on local disk.

    model_name: what ``open_clip.create_model`` receives (registered name or ``local-dir:``).
    checkpoint: weights file passed as ``pretrained=``; None for ``local-dir:`` folders.
    preprocess: preprocessing overrides of a pretrained tag (mean, std, resize mode, ...).
    quick_gelu: the weights were trained with QuickGELU (OpenAI tags).
    description: human-readable origin, for logs and ``repr``.
    """

    model_name: str
    checkpoint: Optional[str] = None
    preprocess: Dict[str, Any] = field(default_factory=dict)
    quick_gelu: bool = False
    description: str = ""


def _hf_cache_dir(cache_dir: Optional[str]) -> str:
    if cache_dir:
        return str(cache_dir)
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return os.path.expanduser("~/.cache/huggingface/hub")


def _hf_cached_file(repo_id: str, filenames: Sequence[str], cache_dir: Optional[str]) -> Optional[str]:
    """First of `filenames` present in the local HF cache for `repo_id`; never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for filename in filenames:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _hf_weight_names(filename: str) -> List[str]:
    """Candidate files for an HF weights entry, safetensors first (as open_clip prefers)."""
    if filename == "open_clip_pytorch_model.bin":
        return [WEIGHTS_FILE_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _local_dir_source(folder: Path) -> WeightsSource:
    if not folder.is_dir():
        raise ClipWeightsNotFound(
            f"CLIP folder {folder} does not exist; expected an open_clip folder holding "
            f"{OPEN_CLIP_CONFIG_NAME} and a weights file ({', '.join(_LOCAL_DIR_WEIGHT_SUFFIXES)}), "
            "e.g. one written by ClipModel.save() or downloaded from an open_clip Hugging Face repo")
    if not (folder / OPEN_CLIP_CONFIG_NAME).is_file():
        raise ClipWeightsNotFound(f"CLIP folder {folder} has no {OPEN_CLIP_CONFIG_NAME}")
    _read_model_cfg(folder / OPEN_CLIP_CONFIG_NAME)
    if not any(p.suffix in _LOCAL_DIR_WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        raise ClipWeightsNotFound(
            f"CLIP folder {folder} has {OPEN_CLIP_CONFIG_NAME} but no weights file "
            f"(*{', *'.join(_LOCAL_DIR_WEIGHT_SUFFIXES)}); put the model's weights next to it")
    return WeightsSource(f"{LOCAL_DIR_PREFIX}{folder}", description=f"folder {folder}")


def _hf_hub_source(repo_id: str, cache_dir: Optional[str]) -> WeightsSource:
    config = _hf_cached_file(repo_id, [OPEN_CLIP_CONFIG_NAME], cache_dir)
    weights = _hf_cached_file(repo_id, _hf_weight_names("open_clip_pytorch_model.bin"), cache_dir)
    if config is None or weights is None or Path(config).parent != Path(weights).parent:
        hub = _hf_cache_dir(cache_dir)
        raise ClipWeightsNotFound(
            f"'{HF_HUB_PREFIX}{repo_id}' is not in the Hugging Face cache {hub} (nothing is downloaded "
            f"here). On a machine with internet access run `hf download {repo_id} "
            f"{OPEN_CLIP_CONFIG_NAME} open_clip_pytorch_model.bin --cache-dir {hub}` and copy that "
            f"cache here, or put both files in one folder and load 'local-dir:/that/folder'")
    return WeightsSource(f"{LOCAL_DIR_PREFIX}{Path(config).parent}",
                         description=f"{HF_HUB_PREFIX}{repo_id} (HF cache)")


def _tag_source(arch: str, tag: str, cache_dir: Optional[str]) -> WeightsSource:
    """Weights of a known open_clip pretrained tag, if a previous download left them on disk."""
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    searched, hints = [], []
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])  # 'org/repo/' -> default file name
        filename = filename or "open_clip_pytorch_model.bin"
        names = _hf_weight_names(filename)
        hit = _hf_cached_file(repo_id, names, cache_dir)
        if hit:
            return WeightsSource(arch, hit, preprocess, bool(cfg.get("quick_gelu")),
                                 f"{arch} pretrained={tag} ({hit})")
        hub = _hf_cache_dir(cache_dir)
        searched.append(f"{repo_id}/{{{', '.join(names)}}} in the Hugging Face cache {hub}")
        hints.append(f"`hf download {repo_id} {filename} --cache-dir {hub}` "
                     f"(https://huggingface.co/{repo_id}/resolve/main/{filename})")
    if cfg.get("url"):
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if target.is_file():
            return WeightsSource(arch, str(target), preprocess, bool(cfg.get("quick_gelu")),
                                 f"{arch} pretrained={tag} ({target})")
        searched.append(str(target))
        hints.append(f"{cfg['url']} saved as {target}")
    raise ClipWeightsNotFound(
        f"no weights on disk for open_clip {arch!r} pretrained={tag!r}; searched "
        f"{' and '.join(searched)}. Nothing is downloaded here (offline use, HF_HUB_OFFLINE "
        f"respected). On a machine with internet access fetch {' or '.join(hints)}, "
        f"then either copy it into that cache or pass ClipModel({arch!r}, checkpoint=PATH)")


def resolve_weights(
    model_name: str,
    checkpoint: Optional[Union[str, Path]] = None,
    pretrained: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> WeightsSource:
    """Find a model's weights on local disk, or raise at once (no network, no retries).

    Raises:
        ClipWeightsNotFound: a file, folder, or cached download is missing; says what to fetch.
        ValueError: bad arguments (unknown architecture or tag, no weights named at all).
    """
    name = str(model_name)
    if name.startswith(LOCAL_DIR_PREFIX) or name.startswith(HF_HUB_PREFIX):
        if checkpoint is not None or pretrained is not None:
            raise ValueError(f"{name!r} carries its own weights; do not pass checkpoint or pretrained")
        if name.startswith(LOCAL_DIR_PREFIX):
            return _local_dir_source(Path(name[len(LOCAL_DIR_PREFIX):]).expanduser())
        return _hf_hub_source(name[len(HF_HUB_PREFIX):], cache_dir)
    if checkpoint is not None and pretrained is not None:
        raise ValueError("pass either checkpoint=PATH or pretrained=TAG, not both")
    arch = register_model_config(name)
    if pretrained is not None and Path(pretrained).is_file():  # open_clip's habit: a path as `pretrained`
        checkpoint, pretrained = pretrained, None
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ClipWeightsNotFound(
                f"CLIP checkpoint {path} not found for architecture {arch!r}; put the open_clip "
                "state dict (.safetensors, .bin, .pt or .pth) there or pass the right path")
        return WeightsSource(arch, str(path), description=f"{arch} from {path}")
    if pretrained is not None:
        open_clip = _open_clip()
        if not open_clip.get_pretrained_cfg(arch, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ValueError(f"unknown pretrained tag {pretrained!r} for {arch!r} (and no such file); "
                             f"known tags: {tags or 'none'}")
        return _tag_source(arch, pretrained, cache_dir)
    raise ValueError(f"no weights named for {arch!r}: pass checkpoint=PATH or pretrained=TAG, "
                     "use 'local-dir:PATH', or ClipModel.from_config() for random weights")


# --------------------------------------------------------------------------- pure tensor helpers


def resize_positional_embedding(
    pos: torch.Tensor, grid: Tuple[int, int], new_grid: Tuple[int, int]
) -> torch.Tensor:
    """Bicubic resize of a ViT positional embedding to another patch grid.

    pos: (1 + gh*gw, C), class token first, patches in row-major order. Returns
    (1 + nh*nw, C); the same tensor object when `new_grid == grid` (identity).
    """
    grid, new_grid = tuple(int(g) for g in grid), tuple(int(g) for g in new_grid)
    if new_grid == grid:
        return pos
    gh, gw = grid
    if pos.ndim != 2 or pos.shape[0] != 1 + gh * gw:
        raise ValueError(f"positional embedding {tuple(pos.shape)} does not match grid {grid} + class token")
    patches = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], patches], dim=0)


def _value_projection(attn: torch.nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Value weights (C_out, C_in) and bias of nn.MultiheadAttention or open_clip's Attention."""
    if getattr(attn, "in_proj_weight", None) is not None:
        w = attn.in_proj_weight
        w_v = w[2 * w.shape[0] // 3:]
    elif getattr(attn, "v_proj_weight", None) is not None:  # nn.MultiheadAttention with vdim != embed_dim
        w_v = attn.v_proj_weight
    else:
        raise ValueError(f"cannot find the value projection of {type(attn).__name__}")
    b = getattr(attn, "in_proj_bias", None)
    b_v = None if b is None else b[2 * b.shape[0] // 3:]
    return w_v, b_v


def value_path(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: the attention branch with the attention matrix set to identity.

    x: (B, L, C) tokens entering `block` (open_clip ResidualAttentionBlock or
    CustomResidualAttentionBlock). Returns (B, L, C): ls_1(out_proj(W_v ln_1(x) + b_v)),
    with the custom block's head scale and inner norms; no residual, no MLP.
    """
    attn = block.attn
    w_v, b_v = _value_projection(attn)
    v = F.linear(block.ln_1(x), w_v, b_v)
    if getattr(attn, "head_scale", None) is not None:  # open_clip Attention(scale_heads=True)
        b, n, c = v.shape
        v = (v.reshape(b, n, attn.num_heads, -1) * attn.head_scale.view(1, 1, attn.num_heads, 1)).reshape(b, n, c)
    v = getattr(attn, "ln_inner", torch.nn.Identity())(v)
    v = attn.out_proj(v)
    v = getattr(block, "ln_attn", torch.nn.Identity())(v)
    return block.ls_1(v)


def _pooler_value_path(pooler: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Value path of an open_clip AttentionalPooler: (B, L, C) -> (B, L, output_dim)."""
    w_v, b_v = _value_projection(pooler.attn)
    return pooler.attn.out_proj(F.linear(pooler.ln_k(x), w_v, b_v))


def check_dense_support(visual: torch.nn.Module) -> None:
    """Raise ValueError unless `visual` is an open_clip VisionTransformer that dense features support."""
    from open_clip.transformer import VisionTransformer
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"dense_features needs an open_clip VisionTransformer image tower; this model has "
            f"{type(visual).__name__} (ResNet and timm towers are not supported)")
    if visual.attn_pool is not None and visual.attn_pool_contrastive is not None:
        raise ValueError(f"dense_features does not support attentional_pool={visual.attn_pool_type!r} towers")
    if visual.proj is None:
        raise ValueError("dense_features needs the image projection (visual.proj is None)")


def maskclip_dense_features(visual: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-patch CLIP features, MaskCLIP style, for any input size divisible by the patch.

    x: (B, 3, H, W) normalised images (model mean/std, not cropped). Returns
    (B, D, H/p, W/p) float32, L2-normalised along D. Standard towers: all but the last
    residual block, then the last block's value path (:func:`value_path`), ln_post and
    proj on the patch tokens. Attention-pooled towers (CoCa style): all blocks, then the
    pooler's value path, ln_post and proj. The positional embedding is resized
    bicubically to the input's patch grid.
    """
    check_dense_support(visual)
    b, _, h, w = x.shape
    ph, pw = visual.patch_size
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}")
    gh, gw = h // ph, w // pw
    x = visual.conv1(x.to(visual.conv1.weight.dtype))       # (B, C, gh, gw)
    x = x.flatten(2).transpose(1, 2)                         # (B, gh*gw, C)
    cls = visual.class_embedding.view(1, 1, -1).expand(b, -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)                           # (B, 1 + gh*gw, C)
    x = x + resize_positional_embedding(visual.positional_embedding, visual.grid_size, (gh, gw)).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    pooled = visual.attn_pool is not None
    for block in (blocks if pooled else blocks[:-1]):
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    x = _pooler_value_path(visual.attn_pool, x) if pooled else value_path(blocks[-1], x)
    x = visual.ln_post(x[:, 1:]) @ visual.proj               # (B, gh*gw, D)
    x = F.normalize(x.float(), dim=-1)
    return x.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous()


def images_to_float(images: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy or torch images -> (B, 3, H, W) float32 in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        shape = tuple(getattr(images, "shape", ()))
        raise ValueError(f"expected uint8 RGB images of shape (B, H, W, 3), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {shape}")
    if images.shape[0] == 0:
        raise ValueError("empty image batch")
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def _resize(x: torch.Tensor, size: Tuple[int, int], interpolation: str, clamp: bool = True) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size); antialiased like PIL; clamp to [0, 1] for raw images."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"
    if mode == "nearest":
        return F.interpolate(x, size=size, mode=mode)
    x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return x.clamp_(0, 1) if clamp else x


def preprocess_images(x: torch.Tensor, cfg: Dict[str, Any]) -> torch.Tensor:
    """open_clip's eval transform, vectorised over a batch of equally sized images.

    x: (B, 3, H, W) float in [0, 1]. cfg: the model's preprocess config (size, mean, std,
    interpolation, resize_mode in {'shortest', 'longest', 'squash'}, fill_color).
    Returns (B, 3, S_h, S_w) normalised images.
    """
    size = cfg.get("size", 224)
    sh, sw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = x.shape[-2:]
    mode = cfg.get("resize_mode", "shortest")
    interp = cfg.get("interpolation", "bicubic")
    if mode == "squash":
        x = _resize(x, (sh, sw), interp)
    elif mode in ("shortest", "longest"):
        scale = max(sh / h, sw / w) if mode == "shortest" else min(sh / h, sw / w)
        if mode == "shortest" and sh == sw:  # torchvision Resize(int): short side = size, long side truncated
            nh, nw = (sh, int(sh * w / h)) if h <= w else (int(sh * h / w), sh)
        else:
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = _resize(x, (nh, nw), interp)
        if nh < sh or nw < sw:  # 'longest': pad to the target, image centred
            pt, pl = (sh - nh) // 2, (sw - nw) // 2
            fill = float(cfg.get("fill_color", 0)) / 255.0
            x = F.pad(x, (pl, sw - nw - pl, pt, sh - nh - pt), value=fill)
            nh, nw = sh, sw
        top, left = int(round((nh - sh) / 2.0)), int(round((nw - sw) / 2.0))
        x = x[..., top:top + sh, left:left + sw]
    else:
        raise ValueError(f"unknown resize_mode {mode!r}")
    mean = torch.as_tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(cfg["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _validate_names(names: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"names must be a list of strings, got {type(names).__name__}")
    if not names:
        raise ValueError("names is empty: give at least one class name")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"names must be non-empty strings; bad entries: {bad[:5]!r}")
    return tuple(names)


def _validate_templates(template: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    templates = (template,) if isinstance(template, str) else tuple(template)
    if not templates:
        raise ValueError("template list is empty")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ValueError(f"each template must be a string with exactly one '{{}}'; bad: {bad[:3]!r}")
    return templates


# --------------------------------------------------------------------------- the wrapper


class ClipModel:
    """An open_clip model in eval mode with cached text embeddings and MaskCLIP dense features.

    Args:
        model_name: architecture (open_clip name, folk_ros config name, or JSON path),
            or ``'local-dir:PATH'`` / ``'hf-hub:org/repo'`` (the latter only when cached).
        checkpoint: weights file for `model_name` (open_clip state dict).
        pretrained: open_clip pretrained tag, used only when its download is already on disk.
        device: 'auto' (CUDA when available), 'cpu' or 'cuda'.
        cache_dir: where to look for cached downloads (default: the HF cache and ~/.cache/clip).
        text_cache_size: vocabularies (template, names) whose text embeddings are kept (LRU).

    A pretrained tag trained with QuickGELU (OpenAI's) gets QuickGELU even under the plain
    architecture name (open_clip itself only warns). Attributes: ``model`` (the open_clip
    module, eval mode), ``model_cfg`` (its architecture dict), ``tokenizer``, ``device``,
    ``preprocess_cfg`` (size, mean, std, interpolation, resize_mode).
    """

    def __init__(
        self,
        model_name: str,
        checkpoint: Optional[Union[str, Path]] = None,
        pretrained: Optional[str] = None,
        *,
        device: Union[str, torch.device] = "auto",
        cache_dir: Optional[str] = None,
        text_cache_size: int = 8,
    ) -> None:
        source = resolve_weights(model_name, checkpoint, pretrained, cache_dir)
        open_clip = _open_clip()
        dev = resolve_device(device)
        with no_weight_init():   # every weight is loaded next (strictly; require_pretrained: never left random)
            model = open_clip.create_model(
                source.model_name,
                pretrained=source.checkpoint,
                device=dev,
                force_quick_gelu=source.quick_gelu,
                force_preprocess_cfg=source.preprocess or None,
                require_pretrained=True,
            )
        if source.model_name.startswith(LOCAL_DIR_PREFIX):
            model_cfg = _read_model_cfg(Path(source.model_name[len(LOCAL_DIR_PREFIX):]) / OPEN_CLIP_CONFIG_NAME)
        else:
            model_cfg = open_clip.get_model_config(source.model_name)
            if source.quick_gelu:
                model_cfg["quick_gelu"] = True
        self._setup(model, model_cfg, open_clip.get_tokenizer(source.model_name), dev,
                    source.description, text_cache_size)

    @classmethod
    def from_config(
        cls,
        name_or_path: Union[str, Path],
        *,
        device: Union[str, torch.device] = "auto",
        seed: Optional[int] = 0,
        text_cache_size: int = 8,
    ) -> "ClipModel":
        """A model with RANDOM weights from an architecture name or JSON config.

        For tests, benchmarks and as the starting point of training; never for inference
        results. `seed` makes the initialisation reproducible (None: torch's global RNG).
        """
        open_clip = _open_clip()
        arch = register_model_config(name_or_path)
        dev = resolve_device(device)
        with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            model = open_clip.create_model(arch, pretrained=None, device=dev)
        self = cls.__new__(cls)
        self._setup(model, open_clip.get_model_config(arch), open_clip.get_tokenizer(arch), dev,
                    f"{arch} (random weights, seed={seed})", text_cache_size)
        return self

    def _setup(self, model, model_cfg, tokenizer, device, description, text_cache_size) -> None:
        if text_cache_size < 1:
            raise ValueError(f"text_cache_size must be >= 1, got {text_cache_size}")
        self.model = model.eval()
        self.model_cfg: Dict[str, Any] = model_cfg
        self.tokenizer = tokenizer
        self.device = device
        self.description = description
        self._text_cache: "OrderedDict[Tuple[Tuple[str, ...], Tuple[str, ...]], torch.Tensor]" = OrderedDict()
        self._text_cache_size = text_cache_size
        self._text_lock = threading.Lock()
        self.preprocess_cfg: Dict[str, Any] = dict(getattr(model.visual, "preprocess_cfg", {}))
        log.info("CLIP model: %s on %s", description, device)

    def __repr__(self) -> str:
        return f"ClipModel({self.description}, embed_dim={self.embed_dim}, device={self.device})"

    # ----------------------------------------------------------------------- properties

    @property
    def embed_dim(self) -> int:
        """D, the size of the joint image-text space."""
        return int(self.model_cfg["embed_dim"])

    @property
    def patch_size(self) -> int:
        """ViT patch side p in pixels (dense features are (H/p, W/p))."""
        check_dense_support(self.model.visual)
        ph, pw = self.model.visual.patch_size
        if ph != pw:
            raise ValueError(f"non-square patches {ph}x{pw}: use model.visual.patch_size")
        return int(ph)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(S_h, S_w) input size of encode_images."""
        size = self.preprocess_cfg.get("size", 224)
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def image_mean(self) -> Tuple[float, float, float]:
        return tuple(float(v) for v in self.preprocess_cfg["mean"])

    @property
    def image_std(self) -> Tuple[float, float, float]:
        return tuple(float(v) for v in self.preprocess_cfg["std"])

    # ----------------------------------------------------------------------- text

    def encode_text(
        self,
        names: Sequence[str],
        template: Union[str, Sequence[str]] = DEFAULT_TEMPLATE,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Text embeddings of a vocabulary, (K, D) float32, L2-normalised, on `self.device`.

        With several templates each prompt embedding is normalised, the templates are
        averaged per name and the mean normalised again (open_clip's
        build_zero_shot_classifier). Results are cached per (templates, names) in an LRU.
        """
        key = (_validate_templates(template), _validate_names(names))
        with self._text_lock:  # the node may change the vocabulary while a worker encodes
            cached = self._text_cache.get(key)
            if cached is None:
                cached = self._encode_prompts(*key, batch_size=batch_size)
                self._text_cache[key] = cached
                while len(self._text_cache) > self._text_cache_size:
                    self._text_cache.popitem(last=False)
            self._text_cache.move_to_end(key)
            return cached.clone()

    def _encode_prompts(self, templates: Tuple[str, ...], names: Tuple[str, ...], batch_size: int) -> torch.Tensor:
        prompts = [t.replace("{}", n) for t in templates for n in names]  # (T*K,), template-major
        tokens = self.tokenizer(prompts)                                    # (T*K, context)
        with torch.inference_mode():
            feats = torch.cat([encode_tokens(self.model, chunk.to(self.device)).float()
                               for chunk in tokens.split(batch_size)])      # (T*K, D)
            feats = F.normalize(feats.view(len(templates), len(names), -1), dim=-1).mean(0)
            feats = F.normalize(feats, dim=-1)                              # (K, D)
        return feats.clone()  # a normal tensor: usable in autograd graphs outside inference mode

    # ----------------------------------------------------------------------- images

    def _preprocessed(self, images: ImageBatch) -> torch.Tensor:
        """(B, 3, S_h, S_w) model input from uint8 images (batch or list of crops) or a float batch."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != self.image_size:
                raise ValueError(f"a float batch must be preprocessed (B, 3, {self.image_size[0]}, "
                                 f"{self.image_size[1]}), got {tuple(images.shape)}")
            return images.to(self.device)
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("empty image list")
            shapes = {tuple(np.shape(im)) for im in images}
            if len(shapes) > 1:  # crops of different sizes: resize each, then one batch
                return torch.cat([self._preprocessed(np.asarray(im)[None]) for im in images])
            images = np.stack([np.asarray(im) for im in images])
        x = images_to_float(images).to(self.device)
        return preprocess_images(x, self.preprocess_cfg)

    def encode_images(self, images: ImageBatch, batch_size: int = 64) -> torch.Tensor:
        """Global image embeddings, (B, D) float32 L2-normalised.

        images: uint8 (B, H, W, 3) numpy/torch, a list of uint8 (H_i, W_i, 3) crops, or a float
        (B, 3, S_h, S_w) tensor already preprocessed. uint8 input goes through the model's own
        eval preprocessing (resize, centre crop, normalise), vectorised over the batch.
        """
        x = self._preprocessed(images)
        with torch.inference_mode():
            feats = torch.cat([self.model.encode_image(chunk).float() for chunk in x.split(batch_size)])
            feats = F.normalize(feats, dim=-1)
        return feats.clone()

    def dense_features(
        self,
        images: Union[np.ndarray, torch.Tensor],
        *,
        size: Optional[Tuple[int, int]] = None,
        batch_size: int = 8,
    ) -> torch.Tensor:
        """MaskCLIP per-patch features of whole frames, (B, D, H/p, W/p) float32, normalised along D.

        images: uint8 (B, H, W, 3) numpy/torch (normalised with the model's mean/std, not
        cropped), or a float (B, 3, H, W) tensor already normalised. size: optional (H', W')
        to resize to first (e.g. (240, 320) for 480x640 frames). H and W must be multiples of
        the patch size. See :func:`maskclip_dense_features`.
        """
        check_dense_support(self.model.visual)
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"a float batch must be (B, 3, H, W), got {tuple(images.shape)}")
            x = images.to(self.device)
            if size is not None:
                x = _resize(x, tuple(size), self.preprocess_cfg.get("interpolation", "bicubic"), clamp=False)
        else:
            x = images_to_float(images).to(self.device)
            if size is not None:
                x = _resize(x, tuple(size), self.preprocess_cfg.get("interpolation", "bicubic"))
            mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        p = self.model.visual.patch_size
        if x.shape[-2] % p[0] or x.shape[-1] % p[1]:
            h, w = x.shape[-2:]
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p[0]}; pass "
                             f"size=({h // p[0] * p[0]}, {w // p[1] * p[1]}) or crop the images")
        with torch.inference_mode():
            feats = torch.cat([maskclip_dense_features(self.model.visual, chunk) for chunk in x.split(batch_size)])
        return feats.clone()

    # ----------------------------------------------------------------------- saving

    def save(self, folder: Union[str, Path]) -> Path:
        """Write an open_clip folder (open_clip_config.json + open_clip_model.safetensors).

        Loadable with ``ClipModel('local-dir:' + str(folder))`` and by open_clip itself.
        Returns the folder.
        """
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.preprocess_cfg.items()}
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": preprocess}
        (folder / OPEN_CLIP_CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE_NAME))
        return folder
