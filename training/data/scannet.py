"""ScanNet v2 scene folders: their names and reading them (ours and real ScanNet); writing them (synthetic
scenes) is :mod:`training.data.scannet_writer`.

Layout of one scene folder (``../shared/notes/scannet-format.md``)::

    <scene>_vh_clean_2.ply                 mesh, binary PLY (x y z float, red green blue alpha uchar)
    <scene>_vh_clean_2.0.010000.segs.json  {"segIndices": one over-segment id per vertex}
    <scene>.aggregation.json               {"segGroups": [{"id", "objectId", "label", "segments"}]}
                                           (older name: <scene>_vh_clean.aggregation.json)
    <scene>.txt                            "key = value" metadata, incl. axisAlignment (16 numbers)
    color/<i>.jpg  depth/<i>.png (uint16 mm)  pose/<i>.txt (4x4 camera-to-world)
    intrinsic/intrinsic_color.txt intrinsic_depth.txt extrinsic_color.txt extrinsic_depth.txt
    instance/<i>.png                       uint16 GT instance id per pixel (synthetic scenes only)
    .complete                              written last by :func:`~training.data.scannet_writer.write_scannet_scene`

Frames come out as :class:`~training.data.types.Frame` at the depth resolution
(colour resized, depth intrinsics), depth in metres, ``stamp = index / fps``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from training.data import scannet200
from training.data.ply import read_ply
from training.data.types import Frame, SceneMesh

log = logging.getLogger(__name__)

SCANNET_FPS = 30.0  # frame rate of ScanNet's .sens streams; Frame.stamp = index / fps
COMPLETE_MARKER = ".complete"
FRAME_DIRS = ("color", "depth", "pose", "intrinsic", "instance")
UNKNOWN_LABEL = "unknown"  # segGroup label of an instance with no ScanNet200 class


# --------------------------------------------------------------------------- names


def mesh_path(scene_dir: Path, scene_id: str) -> Path:
    return Path(scene_dir) / f"{scene_id}_vh_clean_2.ply"


def segs_path(scene_dir: Path, scene_id: str) -> Path:
    return Path(scene_dir) / f"{scene_id}_vh_clean_2.0.010000.segs.json"


def aggregation_paths(scene_dir: Path, scene_id: str) -> tuple[Path, Path]:
    """The current and the older name of the aggregation file, in lookup order."""
    d = Path(scene_dir)
    return d / f"{scene_id}.aggregation.json", d / f"{scene_id}_vh_clean.aggregation.json"


def scene_id_of(scene_dir: Path) -> str:
    """Scene id of a folder: its name when ``<name>_vh_clean_2.ply`` exists, else the only such ply."""
    scene_dir = Path(scene_dir)
    if mesh_path(scene_dir, scene_dir.name).exists():
        return scene_dir.name
    found = sorted(scene_dir.glob("*_vh_clean_2.ply"))
    if len(found) != 1:
        raise ValueError(
            f"{scene_dir}: expected one *_vh_clean_2.ply mesh to name the scene, "
            f"found {[p.name for p in found]}"
        )
    return found[0].name[: -len("_vh_clean_2.ply")]


def is_complete(scene_dir: Path) -> bool:
    """True when :func:`write_scannet_scene` finished this folder (its marker file exists)."""
    return (Path(scene_dir) / COMPLETE_MARKER).exists()


# --------------------------------------------------------------------------- reading


def read_metadata(scene_dir: Path) -> dict[str, str]:
    """``key = value`` pairs of ``<scene>.txt`` (empty when the file is missing)."""
    scene_dir = Path(scene_dir)
    path = scene_dir / f"{scene_id_of(scene_dir)}.txt"
    if not path.exists():
        return {}
    meta = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key.strip()] = value.strip()
    return meta


def read_axis_alignment(scene_dir: Path) -> np.ndarray:
    """(4, 4) float64 ``axisAlignment`` of a scene; identity (logged) when it has none (test scenes)."""
    value = read_metadata(scene_dir).get("axisAlignment")
    if value is None:
        log.info("%s: no axisAlignment in metadata; using identity", scene_dir)
        return np.eye(4)
    m = np.array(value.split(), dtype=np.float64)
    if m.size != 16:
        raise ValueError(f"{scene_dir}: axisAlignment has {m.size} numbers, expected 16")
    return m.reshape(4, 4)


def load_label_map(tsv: Path) -> dict[str, int]:
    """``scannetv2-labels.combined.tsv`` -> {raw_category: ScanNet200 id} (0 for non-ScanNet200 ids)."""
    valid = set(scannet200.class_ids())
    out = {}
    with open(tsv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"raw_category", "id"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{tsv}: missing columns {sorted(missing)}; has {reader.fieldnames}")
        for row in reader:
            i = int(row["id"]) if row["id"].strip() else 0
            out[row["raw_category"]] = i if i in valid else 0
    return out


def _segments_to_instances(segments: np.ndarray, groups: list[dict]) -> np.ndarray:
    """(N,) segIndices + segGroups -> (N,) instance ids 1..K in group order (later groups win on overlap)."""
    uniq, inverse = np.unique(segments, return_inverse=True)
    seg_inst = np.zeros(len(uniq), np.int64)
    for k, group in enumerate(groups, start=1):
        s = np.asarray(group.get("segments", []), np.int64)
        if s.size == 0 or uniq.size == 0:
            continue
        pos = np.clip(np.searchsorted(uniq, s), 0, len(uniq) - 1)
        seg_inst[pos[uniq[pos] == s]] = k
    return seg_inst[inverse.ravel()]


def read_scene_mesh(scene_dir: Path, align: bool = False, label_map: Path | None = None) -> SceneMesh:
    """Read a scene's mesh and per-vertex GT.

    Instance ids are 1..K in segGroup order; semantic ids come from each group's label:
    through ``label_map`` (``scannetv2-labels.combined.tsv``, real ScanNet raw categories) when
    given, else (and as a fallback) by ScanNet200 name; other names get semantic id 0 (their
    vertices keep their instance id but encode as unannotated in :meth:`SceneMesh.gt_encoding`).
    A scene without an aggregation file (ScanNet test scenes) has all-zero GT.

    Args:
        scene_dir: scene folder.
        align: apply the scene's ``axisAlignment`` to the vertices.
        label_map: optional path of ``scannetv2-labels.combined.tsv``.
    """
    scene_dir = Path(scene_dir)
    sid = scene_id_of(scene_dir)
    ply = read_ply(mesh_path(scene_dir, sid))
    vertices, colors = ply.vertices, ply.colors
    n = len(vertices)
    if colors is None:
        colors = np.zeros((n, 3), np.uint8)

    spath = segs_path(scene_dir, sid)
    if not spath.exists():
        raise FileNotFoundError(f"{scene_dir}: over-segmentation {spath.name} is missing")
    segments = np.asarray(json.loads(spath.read_text(encoding="utf-8"))["segIndices"], np.int64)
    if segments.shape != (n,):
        raise ValueError(f"{spath.name}: {segments.size} segIndices for a mesh of {n} vertices")

    apath = next((p for p in aggregation_paths(scene_dir, sid) if p.exists()), None)
    groups = json.loads(apath.read_text(encoding="utf-8"))["segGroups"] if apath else []
    if apath is None:
        log.info("%s: no aggregation file; GT is empty", scene_dir)
    instance_ids = _segments_to_instances(segments, groups)

    by_name = scannet200.name_to_id()
    raw_map = load_label_map(label_map) if label_map is not None else {}
    sem_of = np.zeros(len(groups) + 1, np.int64)
    labels: dict[int, str] = {}
    unknown = set()
    for k, group in enumerate(groups, start=1):
        raw = group.get("label", "")
        sid200 = raw_map.get(raw) or by_name.get(raw, 0)
        sem_of[k] = sid200
        if sid200:
            labels[k] = scannet200.id_to_name()[sid200]
        else:
            unknown.add(raw)
    if unknown:
        log.info("%s: %d labels are no ScanNet200 class (semantic 0): %s",
                 sid, len(unknown), sorted(unknown)[:10])
    semantic_ids = sem_of[instance_ids]

    if align:
        a = read_axis_alignment(scene_dir)
        vertices = (vertices.astype(np.float64) @ a[:3, :3].T + a[:3, 3]).astype(np.float32)
    return SceneMesh(scene_id=sid, vertices=vertices, colors=colors, faces=ply.faces,
                     semantic_ids=semantic_ids, instance_ids=instance_ids, segments=segments,
                     instance_labels=labels)


def _numeric_stems(folder: Path, suffix: str) -> set[int]:
    if not folder.is_dir():
        return set()
    return {int(p.stem) for p in folder.iterdir() if p.suffix == suffix and p.stem.isdigit()}


def frame_ids(scene_dir: Path) -> list[int]:
    """Frame numbers with colour, depth and pose files, in numeric order (0, 5, 10, ..., not '10' < '5')."""
    d = Path(scene_dir)
    sets = {"color": _numeric_stems(d / "color", ".jpg"), "depth": _numeric_stems(d / "depth", ".png"),
            "pose": _numeric_stems(d / "pose", ".txt")}
    empty = [k for k, v in sets.items() if not v]
    if empty:
        raise ValueError(f"{d}: no frames in {empty} (expected color/<i>.jpg, depth/<i>.png, pose/<i>.txt)")
    ids = sets["color"] & sets["depth"] & sets["pose"]
    dropped = len(sets["color"] | sets["depth"] | sets["pose"]) - len(ids)
    if dropped:
        log.info("%s: %d frame ids lack one of colour/depth/pose", d, dropped)
    return sorted(ids)


def _read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if m.shape != shape:
        raise ValueError(f"{path}: expected a {shape} matrix, got {m.shape}")
    return m


def depth_intrinsics(scene_dir: Path, depth_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) intrinsics of the depth camera; from intrinsic_depth.txt, else intrinsic_color.txt
    scaled to ``depth_size`` = (H, W) using the metadata's colour size."""
    d = Path(scene_dir) / "intrinsic"
    if (d / "intrinsic_depth.txt").exists():
        return _read_matrix(d / "intrinsic_depth.txt", (4, 4))[:3, :3]
    k = _read_matrix(d / "intrinsic_color.txt", (4, 4))[:3, :3].copy()
    meta = read_metadata(scene_dir)
    if "colorWidth" not in meta:
        raise ValueError(
            f"{scene_dir}: no intrinsic_depth.txt and no colour size to scale intrinsic_color.txt"
        )
    sx = depth_size[1] / float(meta["colorWidth"])
    sy = depth_size[0] / float(meta["colorHeight"])
    k[0] *= sx
    k[1] *= sy
    return k


def _imread(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise OSError(f"cv2 could not read {path}")
    return img


def read_frames(
    scene_dir: Path,
    every: int = 10,
    with_instance: bool = False,
    align: bool = False,
    fps: float = SCANNET_FPS,
) -> Iterator[Frame]:
    """Stream every ``every``-th frame (of :func:`frame_ids`, numeric order) of a scene folder.

    Frames whose pose holds inf/NaN (ScanNet marks lost tracking so) are skipped and counted
    in a log line. Colour is resized to the depth resolution when they differ (real ScanNet:
    1296x968 colour, 640x480 depth) and the depth intrinsics are used.

    Args:
        scene_dir: scene folder.
        every: keep ids[::every] (the field's practice is 10).
        with_instance: also read ``instance/<i>.png`` (resized nearest to the depth size).
        align: left-multiply poses by the scene's ``axisAlignment``.
        fps: frame rate for ``Frame.stamp = index / fps``.

    Yields:
        Frame with color (H, W, 3) uint8, depth (H, W) float32 metres, intrinsics (3, 3),
        pose (4, 4) camera-to-world, instance (H, W) int32 or None.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    d = Path(scene_dir)
    ids = frame_ids(d)[::every]
    a = read_axis_alignment(d) if align else None
    k = None
    skipped = 0
    for i in ids:
        pose = _read_matrix(d / "pose" / f"{i}.txt", (4, 4))
        if not np.isfinite(pose).all():
            skipped += 1
            continue
        if a is not None:
            pose = a @ pose
        depth_mm = _imread(d / "depth" / f"{i}.png", cv2.IMREAD_UNCHANGED)
        if depth_mm.ndim != 2 or depth_mm.dtype != np.uint16:
            raise ValueError(
                f"{d}/depth/{i}.png: expected a uint16 single-channel PNG, got {depth_mm.dtype} {depth_mm.shape}"
            )
        h, w = depth_mm.shape
        if k is None:
            k = depth_intrinsics(d, (h, w))
        color = cv2.cvtColor(_imread(d / "color" / f"{i}.jpg", cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if color.shape[:2] != (h, w):
            shrink = color.shape[0] > h
            color = cv2.resize(color, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        instance = None
        if with_instance:
            inst = _imread(d / "instance" / f"{i}.png", cv2.IMREAD_UNCHANGED)
            if inst.shape != (h, w):
                inst = cv2.resize(inst, (w, h), interpolation=cv2.INTER_NEAREST)
            instance = inst.astype(np.int32)
        yield Frame(index=i, color=color, depth=depth_mm.astype(np.float32) / 1000.0, intrinsics=k.copy(),
                    pose=pose, stamp=i / fps, instance=instance)
    if skipped:
        log.info("%s: skipped %d of %d frames with non-finite poses", d, skipped, len(ids))
