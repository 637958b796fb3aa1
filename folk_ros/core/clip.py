"""CLIP over open_clip: the wrapper the teacher, the student's training and the node use.

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

Its parts: weight resolution in :mod:`folk_ros.core.clip_weights`, the text tower cut to the prompts'
length in :mod:`folk_ros.core.clip_text`, image preprocessing in :mod:`folk_ros.core.clip_preprocess`, the
MaskCLIP dense path in :mod:`folk_ros.core.maskclip`. open_clip is imported lazily (it pulls in torchvision
and takes seconds to import).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from folk_ros.core.clip_preprocess import images_to_float, preprocess_images, resize_images
from folk_ros.core.clip_text import encode_tokens
from folk_ros.core.clip_weights import (LOCAL_DIR_PREFIX, OPEN_CLIP_CONFIG_NAME, WEIGHTS_FILE_NAME, import_open_clip,
                                        read_model_cfg, register_model_config, resolve_weights)
from folk_ros.core.maskclip import check_dense_support, maskclip_dense_features
from folk_ros.core.vocabulary import validate_vocabulary
from folk_ros.core.weight_init import no_weight_init

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a {} in the scene"

ImageBatch = Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]]


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
        open_clip = import_open_clip()
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
            model_cfg = read_model_cfg(Path(source.model_name[len(LOCAL_DIR_PREFIX):]) / OPEN_CLIP_CONFIG_NAME)
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
        open_clip = import_open_clip()
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
        key = (_validate_templates(template), validate_vocabulary(names))
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
                x = resize_images(x, tuple(size), self.preprocess_cfg.get("interpolation", "bicubic"), clamp=False)
        else:
            x = images_to_float(images).to(self.device)
            if size is not None:
                x = resize_images(x, tuple(size), self.preprocess_cfg.get("interpolation", "bicubic"))
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
