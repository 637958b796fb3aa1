"""ScanNet v2 scene folders: write (synthetic scenes) and read (ours and real ScanNet).

Layout of one scene folder (``../shared/notes/scannet-format.md``)::

    <scene>_vh_clean_2.ply                 mesh, binary PLY (x y z float, red green blue alpha uchar)
    <scene>_vh_clean_2.0.010000.segs.json  {"segIndices": one over-segment id per vertex}
    <scene>.aggregation.json               {"segGroups": [{"id", "objectId", "label", "segments"}]}
                                           (older name: <scene>_vh_clean.aggregation.json)
    <scene>.txt                            "key = value" metadata, incl. axisAlignment (16 numbers)
    color/<i>.jpg  depth/<i>.png (uint16 mm)  pose/<i>.txt (4x4 camera-to-world)
    intrinsic/intrinsic_color.txt intrinsic_depth.txt extrinsic_color.txt extrinsic_depth.txt
    instance/<i>.png                       uint16 GT instance id per pixel (synthetic scenes only)
    .complete                              written last by :func:`write_scannet_scene`

Frames come out as :class:`~training.data.types.Frame` at the depth resolution
(colour resized, depth intrinsics), depth in metres, ``stamp = index / fps``.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from training.atomic import write_text_atomic
from training.data import scannet200
from training.data.ply import read_ply, write_ply
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


# --------------------------------------------------------------------------- writing


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
    half-written reads as incomplete (:func:`is_complete`). All frames must share one
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
