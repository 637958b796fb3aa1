"""Object views and dense-objective frames for training the synthetic-world CLIP (issue 4, section 1).

Scenes are read through the ScanNet-layout reader (:func:`training.data.scannet.read_frames`
with per-pixel GT ``instance/<i>.png`` and :func:`training.data.scannet.read_scene_mesh` for the
instance -> ScanNet200 name map), so real ScanNet-style folders with instance images work too.

Two kinds of samples come out of the same frames:

* object views: one per (frame, GT object instance) with at least ``min_pixels`` visible
  pixels; a square crop around the instance's mask bounding box with a context margin,
  resized to the model's image size, labelled with the instance's class name (the input of
  the contrastive image-text objective and of the zero-shot crop accuracy);
* dense samples: the whole frame with the instance masks and their class names (the input
  of the mask-pooled dense objective, Eq. 6, and its accuracy).

Background classes (wall, floor, ceiling by default) give no object views and are no
object classes; their masks may still serve the dense objective as extra classes (negatives).

Frames are held in memory re-encoded (colour JPEG, instance PNG) so that random access during
training costs a decode, not a disk read, and 3,000 frames fit in a few hundred MB.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from training.data import scannet

log = logging.getLogger(__name__)

BACKGROUND_CLASSES = ("wall", "floor", "ceiling")


@dataclass(frozen=True)
class ViewConfig:
    """How object views and dense samples are cut from frames.

    Attributes:
        every: frames; keep every n-th frame of each scene (``read_frames(every=...)``).
        min_pixels: pixels (at frame resolution); an instance with fewer visible pixels in a
            frame gives no object view and no dense mask there.
        context: fraction of the mask box's longer side added as margin on every side of a crop.
        crop_size: pixels; side of the square crops (the model's image size).
        background: class names that are no objects (no views; dense negatives only).
        jpeg_quality: quality of the in-memory colour re-encoding (0-100).
    """

    every: int = 1
    min_pixels: int = 400
    context: float = 0.15
    crop_size: int = 224
    background: tuple[str, ...] = BACKGROUND_CLASSES
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {self.min_pixels}")
        if not 0.0 <= self.context <= 2.0:
            raise ValueError(f"context must be in [0, 2] (fraction of the box side), got {self.context}")
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be >= 8 pixels, got {self.crop_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass(frozen=True)
class CropJitter:
    """Random crop augmentation (training only).

    Attributes:
        context: (low, high) range of the context margin, replacing ``ViewConfig.context``.
        shift: maximum centre shift as a fraction of the crop side.
        flip: probability of a horizontal flip.
        brightness: maximum relative brightness change (0.2: x0.8-1.2).
    """

    context: tuple[float, float] = (0.05, 0.4)
    shift: float = 0.08
    flip: float = 0.5
    brightness: float = 0.2


# --------------------------------------------------------------------------- pure helpers


def instance_boxes(instance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visible instances of a GT instance image, their pixel counts and mask bounding boxes.

    Args:
        instance: (H, W) integer instance ids, 0 = none.

    Returns:
        ids (M,) int64 (ascending, > 0), pixels (M,) int64, boxes (M, 4) int64 as
        (y0, x0, y1, x1) with exclusive ends.
    """
    if instance.ndim != 2 or not np.issubdtype(instance.dtype, np.integer):
        raise ValueError(f"instance must be an (H, W) integer image, got {instance.dtype} {instance.shape}")
    if instance.size and instance.min() < 0:
        raise ValueError("instance ids must be >= 0")
    counts = np.bincount(instance.ravel())
    ids = np.flatnonzero(counts[1:]) + 1
    slices = ndimage.find_objects(instance)  # slices[i - 1] is the box of id i (None when absent)
    boxes = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in (slices[i - 1] for i in ids)],
                     np.int64).reshape(-1, 4)
    return ids.astype(np.int64), counts[ids].astype(np.int64), boxes


def square_box(box: np.ndarray, context: float, shape: tuple[int, int],
               shift: tuple[float, float] = (0.0, 0.0)) -> tuple[int, int, int]:
    """A square crop window around a mask box: (top, left, side) in pixels.

    The side is the box's longer side times (1 + 2 * context) (at least 8 px); the centre may
    be shifted by `shift` (fractions of the side, (dy, dx)). The window is moved inside the
    (H, W) image where it fits, so margins show scene context instead of padding.
    """
    y0, x0, y1, x1 = (float(v) for v in box)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty box {tuple(box)}")
    side = max(8.0, max(y1 - y0, x1 - x0) * (1.0 + 2.0 * context))
    cy, cx = (y0 + y1) / 2 + shift[0] * side, (x0 + x1) / 2 + shift[1] * side
    s = int(round(side))
    top, left = int(round(cy - s / 2)), int(round(cx - s / 2))
    h, w = shape
    if s <= h:
        top = min(max(top, 0), h - s)
    if s <= w:
        left = min(max(left, 0), w - s)
    return top, left, s


def crop_square(image: np.ndarray, top: int, left: int, side: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8 crop of an (H, W, 3) image; parts outside the image are black."""
    h, w = image.shape[:2]
    out = np.zeros((side, side, 3), np.uint8)
    ys, xs = slice(max(top, 0), min(top + side, h)), slice(max(left, 0), min(left + side, w))
    if ys.stop > ys.start and xs.stop > xs.start:
        out[ys.start - top:ys.stop - top, xs.start - left:xs.stop - left] = image[ys, xs]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(out, (size, size), interpolation=interp)


def frame_masks(instance: np.ndarray, labels: dict[int, str], classes: dict[str, int],
                min_pixels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT masks of one frame for the dense objective.

    Args:
        instance: (H, W) integer instance image.
        labels: instance id -> class name (the scene's ``instance_labels``).
        classes: class name -> index; instances of other classes are left out.
        min_pixels: smallest visible mask kept.

    Returns:
        ids (K,) int64, masks (K, H, W) bool, targets (K,) int64 class indices.
    """
    ids, pixels, _ = instance_boxes(instance)
    target = np.array([classes.get(labels.get(int(i), ""), -1) for i in ids], np.int64)
    keep = (pixels >= min_pixels) & (target >= 0)
    ids, target = ids[keep], target[keep]
    return ids, instance[None] == ids[:, None, None], target


# --------------------------------------------------------------------------- frames in memory


@dataclass(frozen=True)
class EncodedFrame:
    """One frame kept in memory: colour as JPEG bytes, GT instance image as 16-bit PNG bytes."""

    scene: int   # index into ViewSet.scene_ids
    index: int   # frame number in its scene (``color/<index>.jpg``)
    color: np.ndarray = field(repr=False)
    instance: np.ndarray = field(repr=False)

    @classmethod
    def encode(cls, scene: int, index: int, color: np.ndarray, instance: np.ndarray,
               jpeg_quality: int = 95) -> "EncodedFrame":
        if instance.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError(f"instance ids above 65535 cannot be stored (max {instance.max()})")
        ok_c, jpg = cv2.imencode(".jpg", cv2.cvtColor(color, cv2.COLOR_RGB2BGR),
                                 [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        ok_i, png = cv2.imencode(".png", instance.astype(np.uint16))
        if not (ok_c and ok_i):
            raise OSError(f"could not encode frame {index} of scene {scene}")
        return cls(scene, index, jpg, png)

    def decode(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB and (H, W) int32 instance ids."""
        color = cv2.cvtColor(cv2.imdecode(self.color, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        instance = cv2.imdecode(self.instance, cv2.IMREAD_UNCHANGED).astype(np.int32)
        return color, instance

    @property
    def nbytes(self) -> int:
        return int(self.color.nbytes + self.instance.nbytes)


@dataclass
class ViewSet:
    """The frames of some scenes and their object views (structure of arrays over V views).

    Attributes:
        scene_ids: (S,) scene names.
        labels: (S,) instance id -> class name per scene.
        frames: (F,) frames of all scenes.
        frame: (V,) int64 index into ``frames`` of each view.
        instance: (V,) int64 instance id of each view.
        name: (V,) object (str) class name of each view.
        box: (V, 4) int64 mask bounding box (y0, x0, y1, x1), exclusive ends.
        pixels: (V,) int64 visible pixels of the instance in the frame.
        config: the :class:`ViewConfig` used.
    """

    scene_ids: list[str]
    labels: list[dict[int, str]]
    frames: list[EncodedFrame]
    frame: np.ndarray
    instance: np.ndarray
    name: np.ndarray
    box: np.ndarray
    pixels: np.ndarray
    config: ViewConfig

    def __len__(self) -> int:
        return int(len(self.frame))

    def class_counts(self) -> dict[str, int]:
        """Object views per class name, sorted by name."""
        return dict(sorted(Counter(self.name.tolist()).items()))

    def all_classes(self) -> list[str]:
        """Every class name of every scene's instances (objects and background), sorted."""
        return sorted({n for lab in self.labels for n in lab.values()})

    def crop(self, i: int, color: np.ndarray | None = None, rng: np.random.Generator | None = None,
             jitter: CropJitter | None = None) -> np.ndarray:
        """(S, S, 3) uint8 crop of view `i` (S = ``config.crop_size``); jittered when `rng` is given.

        `color` is the view's decoded frame if the caller has it (avoids a second decode).
        """
        if color is None:
            color, _ = self.frames[self.frame[i]].decode()
        context, shift, flip, gain = self.config.context, (0.0, 0.0), False, 1.0
        if rng is not None:
            j = jitter or CropJitter()
            context = float(rng.uniform(*j.context))
            shift = tuple(rng.uniform(-j.shift, j.shift, 2))
            flip = bool(rng.random() < j.flip)
            gain = float(rng.uniform(1 - j.brightness, 1 + j.brightness))
        top, left, side = square_box(self.box[i], context, color.shape[:2], shift)
        out = crop_square(color, top, left, side, self.config.crop_size)
        if flip:
            out = out[:, ::-1]
        if gain != 1.0:
            out = np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out)

    def crops(self, indices: np.ndarray, rng: np.random.Generator | None = None,
              jitter: CropJitter | None = None) -> np.ndarray:
        """(B, S, S, 3) uint8 crops of views `indices`, each frame decoded once."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), self.config.crop_size, self.config.crop_size, 3), np.uint8)
        order = np.argsort(self.frame[indices], kind="stable")
        last, color = -1, None
        for k in order:
            f = int(self.frame[indices[k]])
            if f != last:
                color, _ = self.frames[f].decode()
                last = f
            out[k] = self.crop(int(indices[k]), color, rng, jitter)
        return out

    def memory_mb(self) -> float:
        return sum(f.nbytes for f in self.frames) / 2 ** 20


def load_views(scene_dirs: list[Path], config: ViewConfig = ViewConfig(), desc: str = "scenes") -> ViewSet:
    """Read scenes (ScanNet layout with ``instance/``) into memory and index their object views.

    Raises:
        OSError: a frame's ``instance/<i>.png`` cannot be read (from the reader).
        ValueError: no frames at all.
    """
    scene_ids, labels, frames = [], [], []
    cols: dict[str, list[np.ndarray]] = {"frame": [], "instance": [], "name": [], "box": [], "pixels": []}
    background = set(config.background)
    for s, d in enumerate(tqdm(scene_dirs, desc=desc, unit="scene")):
        mesh = scannet.read_scene_mesh(Path(d))
        scene_ids.append(mesh.scene_id)
        labels.append(dict(mesh.instance_labels))
        for fr in scannet.read_frames(Path(d), every=config.every, with_instance=True):
            if fr.instance is None:  # pragma: no cover - read_frames raises on a missing file first
                raise ValueError(f"{d}: frame {fr.index} has no instance image")
            ids, pixels, boxes = instance_boxes(fr.instance)
            names = np.array([mesh.instance_labels.get(int(i), "") for i in ids], object)
            keep = (pixels >= config.min_pixels) & (names != "") & ~np.isin(names, list(background))
            cols["frame"].append(np.full(int(keep.sum()), len(frames), np.int64))
            cols["instance"].append(ids[keep])
            cols["name"].append(names[keep])
            cols["box"].append(boxes[keep])
            cols["pixels"].append(pixels[keep])
            frames.append(EncodedFrame.encode(s, fr.index, fr.color, fr.instance, config.jpeg_quality))
    if not frames:
        raise ValueError(f"no frames in {[str(d) for d in scene_dirs]}")
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    views = ViewSet(scene_ids, labels, frames, cat["frame"].astype(np.int64), cat["instance"].astype(np.int64),
                    cat["name"].astype(object), cat["box"].reshape(-1, 4).astype(np.int64),
                    cat["pixels"].astype(np.int64), config)
    log.info("%s: %d scenes, %d frames (%.0f MB in memory), %d object views of %d classes", desc,
             len(scene_ids), len(frames), views.memory_mb(), len(views), len(views.class_counts()))
    return views
