"""Where a CLIP's architecture and weights come from, all on local disk: open_clip model configs (built-ins,
ours in ``folk_ros/core/model_configs/``, JSON paths), ``local-dir:`` folders, the Hugging Face cache and
open_clip's pretrained tags. Nothing is downloaded here (``training.fetch_weights`` does that on a machine
with internet access); a missing file raises :class:`ClipWeightsNotFound` saying what to fetch.

open_clip is imported lazily (:func:`import_open_clip`: it pulls in torchvision and takes seconds to import).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

PACKAGED_CONFIG_DIR = Path(__file__).with_name("model_configs")
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
WEIGHTS_FILE_NAME = "open_clip_model.safetensors"
# open_clip's local-dir loader only looks at these suffixes (factory._find_checkpoint_in_dir).
_LOCAL_DIR_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


class ClipWeightsNotFound(FileNotFoundError):
    """No CLIP weights on disk for the requested model; the message says what to fetch."""


def import_open_clip():
    """The open_clip module, imported on first use, with a clear message when it is not installed."""
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "folk_ros.core.clip needs open_clip: pip install torch==2.14.1 torchvision==0.29.1 "
            "open-clip-torch==3.3.0 (pinned together, see requirements.txt)") from e
    return open_clip


# --------------------------------------------------------------------------- model configs


def read_model_cfg(path: Path) -> Dict[str, Any]:
    """The open_clip model config in a JSON file (a bare config or a folder's ``{"model_cfg": ...}``)."""
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
    open_clip = import_open_clip()
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
    cfg = read_model_cfg(path)
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
    read_model_cfg(folder / OPEN_CLIP_CONFIG_NAME)
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
    open_clip = import_open_clip()
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
        open_clip = import_open_clip()
        if not open_clip.get_pretrained_cfg(arch, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ValueError(f"unknown pretrained tag {pretrained!r} for {arch!r} (and no such file); "
                             f"known tags: {tags or 'none'}")
        return _tag_source(arch, pretrained, cache_dir)
    raise ValueError(f"no weights named for {arch!r}: pass checkpoint=PATH or pretrained=TAG, "
                     "use 'local-dir:PATH', or ClipModel.from_config() for random weights")
