"""Writing ScanNet v2 scene folders (the synthetic scenes; the layout is in :mod:`training.data.scannet`).

The mesh, its over-segments and aggregation (one segment per instance), the frames (colour JPEG, depth
PNG in millimetres, pose, GT instance images), the intrinsics and the metadata; the ``.complete``
marker last, so a folder interrupted half way is never taken for a scene.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from training.atomic import write_text_atomic
from training.data import scannet200
from training.data.ply import write_ply
from training.data.scannet import (COMPLETE_MARKER, FRAME_DIRS, UNKNOWN_LABEL, aggregation_paths, mesh_path,
                                   segs_path)
from training.data.types import Frame, SceneMesh


def _matrix_text(m: np.ndarray) -> str:
    """Rows of space-separated numbers, as ScanNet's SensReader writes them (more decimals)."""
    return "".join(" ".join(f"{v:.9f}" for v in row) + "\n" for row in np.asarray(m, np.float64))


def intrinsic_4x4(k: np.ndarray) -> np.ndarray:
    """(3, 3) pinhole matrix -> (4, 4) ScanNet intrinsic matrix (K in the top-left, 1 at [3, 3])."""
    m = np.eye(4)
    m[:3, :3] = k
    return m


def aggregation_groups(mesh: SceneMesh) -> list[dict]:
    """ScanNet segGroups of a mesh, one per instance id in ascending order (id/objectId 0-based).

    Raises ValueError when the GT cannot be stored through segments exactly: an instance whose
    vertices carry more than one semantic id, a segment shared by two instances (or by an
    instance and unannotated vertices), or an ``instance_labels`` name that contradicts the
    instance's semantic id.
    """
    inst, sem, seg = (np.asarray(a, np.int64) for a in (mesh.instance_ids, mesh.semantic_ids, mesh.segments))
    n = mesh.num_vertices
    if not (inst.shape == sem.shape == seg.shape == (n,)):
        raise ValueError(
            f"instance/semantic/segment ids must each be ({n},), got {inst.shape} {sem.shape} {seg.shape}"
        )

    pairs = np.unique(np.stack([inst, sem], 1)[inst > 0], axis=0)  # (P, 2) (instance, semantic)
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"instances with more than one semantic id: {ids[counts > 1].tolist()}")
    sem_of = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))

    seg_inst = np.unique(np.stack([seg, inst], 1), axis=0)  # (Q, 2) (segment, instance)
    segs, counts = np.unique(seg_inst[:, 0], return_counts=True)
    shared = segs[counts > 1]
    if shared.size:
        raise ValueError(
            f"segments spanning several instances (or instance and unannotated vertices): "
            f"{shared[:10].tolist()}{' ...' if shared.size > 10 else ''}; "
            "ScanNet stores instances as sets of segments"
        )

    id_to_name, name_to_id = scannet200.id_to_name(), scannet200.name_to_id()
    groups = []
    for j, k in enumerate(ids.tolist()):
        sem_k, given = sem_of[k], mesh.instance_labels.get(k)
        if sem_k:
            if sem_k not in id_to_name:
                raise ValueError(f"instance {k}: semantic id {sem_k} is not a ScanNet200 id")
            name = id_to_name[sem_k]
            if given is not None and given != name:
                raise ValueError(
                    f"instance {k}: instance_labels says {given!r} but semantic id {sem_k} is {name!r}"
                )
        else:
            name = UNKNOWN_LABEL if given is None else given
            if name in name_to_id:
                raise ValueError(
                    f"instance {k}: label {name!r} is a ScanNet200 class but its semantic id is 0"
                )
        members = seg_inst[seg_inst[:, 1] == k, 0]
        groups.append({"id": j, "objectId": j, "segments": members.tolist(), "label": name})
    return groups


def _validate_frame(frame: Frame) -> None:
    if frame.depth.ndim != 2:
        raise ValueError(f"frame {frame.index}: depth must be (H, W), got {frame.depth.shape}")
    h, w = frame.depth.shape
    if frame.color.shape != (h, w, 3) or frame.color.dtype != np.uint8:
        raise ValueError(
            f"frame {frame.index}: color must be ({h}, {w}, 3) uint8, "
            f"got {frame.color.shape} {frame.color.dtype}"
        )
    if np.asarray(frame.intrinsics).shape != (3, 3) or np.asarray(frame.pose).shape != (4, 4):
        raise ValueError(f"frame {frame.index}: intrinsics must be (3, 3) and pose (4, 4)")
    if frame.instance is not None and frame.instance.shape != (h, w):
        raise ValueError(f"frame {frame.index}: instance must be ({h}, {w}), got {frame.instance.shape}")


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """(H, W) float metres -> (H, W) uint16 millimetres (0 for missing, negative or non-finite; clipped)."""
    d = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    return np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)


def _imwrite(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    if not cv2.imwrite(str(path), image, params or []):
        raise OSError(f"cv2 could not write {path}")


def write_frame(scene_dir: Path, frame: Frame, jpeg_quality: int = 95) -> None:
    """Write one frame's colour, depth, pose and (if set) instance image into a scene folder."""
    d = Path(scene_dir)
    i = int(frame.index)
    _imwrite(d / "color" / f"{i}.jpg", cv2.cvtColor(frame.color, cv2.COLOR_RGB2BGR),
             [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    _imwrite(d / "depth" / f"{i}.png", depth_to_mm(frame.depth))
    write_text_atomic(d / "pose" / f"{i}.txt", _matrix_text(frame.pose))
    if frame.instance is not None:
        inst = np.asarray(frame.instance)
        if inst.min(initial=0) < 0 or inst.max(initial=0) > 65535:
            raise ValueError(f"frame {i}: instance ids must lie in [0, 65535] for uint16 PNG")
        _imwrite(d / "instance" / f"{i}.png", inst.astype(np.uint16))


def metadata_text(intrinsics: np.ndarray | None, size: tuple[int, int] | None, num_frames: int) -> str:
    """``<scene>.txt`` content in ScanNet's ``key = value`` form (identity axis alignment).

    Args:
        intrinsics: (3, 3) camera matrix shared by colour and depth, or None (no frames).
        size: (H, W) of colour and depth, or None.
        num_frames: number of frames written.
    """
    meta = {"axisAlignment": " ".join(f"{v:g}" for v in np.eye(4).ravel())}
    if intrinsics is not None and size is not None:
        k = np.asarray(intrinsics, np.float64)
        meta["colorToDepthExtrinsics"] = " ".join(f"{v:g}" for v in np.eye(4).ravel())
        for cam in ("color", "depth"):
            meta[f"{cam}Height"] = str(size[0])
            meta[f"{cam}Width"] = str(size[1])
            meta[f"fx_{cam}"] = f"{k[0, 0]:.6f}"
            meta[f"fy_{cam}"] = f"{k[1, 1]:.6f}"
            meta[f"mx_{cam}"] = f"{k[0, 2]:.6f}"
            meta[f"my_{cam}"] = f"{k[1, 2]:.6f}"
    meta["numColorFrames"] = str(num_frames)
    meta["numDepthFrames"] = str(num_frames)
    meta["sceneType"] = "synthetic"
    return "".join(f"{key} = {meta[key]}\n" for key in sorted(meta))


def write_scannet_scene(
    scene_dir: Path,
    mesh: SceneMesh,
    frames: Iterable[Frame],
    jpeg_quality: int = 95,
    overwrite: bool = False,
    progress: bool = False,
) -> None:
    """Write a scene folder in ScanNet's layout, streaming the frames (one in memory at a time).

    The ``.complete`` marker is written last and removed first, so a folder that a crash left
    half-written reads as incomplete (:func:`training.data.scannet.is_complete`). All frames must share one
    resolution and one intrinsic matrix (the layout stores one of each); colour and depth are
    registered, so ``intrinsic_color == intrinsic_depth`` and the extrinsics are identity.

    Args:
        scene_dir: output folder (created). Files are named after ``mesh.scene_id``.
        mesh: the mesh and its per-vertex GT; instance ids should be 1..K (they are stored in
            ascending order and read back as 1..K).
        frames: RGB-D frames; ``frame.index`` names the files (``color/<index>.jpg``).
        jpeg_quality: cv2 JPEG quality of the colour images.
        overwrite: allow a folder that already holds frames or a scene (frame folders are cleared).
        progress: show a tqdm bar over the frames.
    """
    scene_dir = Path(scene_dir)
    sid = mesh.scene_id
    groups = aggregation_groups(mesh)  # validates the GT before anything is written
    if scene_dir.exists() and any(scene_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{scene_dir} is not empty; pass overwrite=True to replace the scene")
        (scene_dir / COMPLETE_MARKER).unlink(missing_ok=True)
        for sub in FRAME_DIRS:
            shutil.rmtree(scene_dir / sub, ignore_errors=True)
    scene_dir.mkdir(parents=True, exist_ok=True)

    write_ply(mesh_path(scene_dir, sid), mesh.vertices, mesh.colors, mesh.faces)
    segs = {"params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750",
                       "maxPoints": "30000", "thinThresh": "0.05", "flatThresh": "0.001",
                       "minLength": "0.02", "maxLength": "1"},
            "sceneId": sid, "segIndices": np.asarray(mesh.segments, np.int64).tolist()}
    write_text_atomic(segs_path(scene_dir, sid), json.dumps(segs))
    agg = {"sceneId": f"scannet.{sid}", "appId": "folk_ros.synthetic", "segGroups": groups,
           "segmentsFile": f"scannet.{segs_path(scene_dir, sid).name}"}
    write_text_atomic(aggregation_paths(scene_dir, sid)[0], json.dumps(agg))

    for sub in ("color", "depth", "pose", "intrinsic"):
        (scene_dir / sub).mkdir(exist_ok=True)
    camera: tuple[np.ndarray, tuple[int, int], int] | None = None  # (K, (H, W), index) of the first frame
    count = 0
    for frame in tqdm(frames, desc=f"write {sid}", unit="frame", disable=not progress):
        _validate_frame(frame)
        if camera is None:
            camera = (np.asarray(frame.intrinsics, np.float64), frame.depth.shape, frame.index)
            k4 = _matrix_text(intrinsic_4x4(frame.intrinsics))
            for name, text in (("intrinsic_color", k4), ("intrinsic_depth", k4),
                               ("extrinsic_color", _matrix_text(np.eye(4))),
                               ("extrinsic_depth", _matrix_text(np.eye(4)))):
                write_text_atomic(scene_dir / "intrinsic" / f"{name}.txt", text)
        elif frame.depth.shape != camera[1] or not np.allclose(frame.intrinsics, camera[0]):
            raise ValueError(
                f"frame {frame.index}: resolution/intrinsics differ from frame {camera[2]}; "
                "the ScanNet layout stores one camera per scene"
            )
        if frame.instance is not None:
            (scene_dir / "instance").mkdir(exist_ok=True)
        write_frame(scene_dir, frame, jpeg_quality)
        count += 1
    k, size = (camera[0], camera[1]) if camera else (None, None)
    write_text_atomic(scene_dir / f"{sid}.txt", metadata_text(k, size, count))
    (scene_dir / COMPLETE_MARKER).write_text(f"{count} frames\n", encoding="utf-8")


def write_benchmark_gt(path: Path, mesh: SceneMesh) -> None:
    """Benchmark instance GT txt: one int per vertex, ``label_id * 1000 + instance_id`` (0 = unannotated)."""
    path = Path(path)
    write_text_atomic(path, "".join(f"{v}\n" for v in mesh.gt_encoding().tolist()))
