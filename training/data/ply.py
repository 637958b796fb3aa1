"""PLY meshes as numpy arrays: a fixed-layout writer and a tolerant reader over ``plyfile``.

The writer produces ScanNet's ``*_vh_clean_2.ply`` layout::

    element vertex N:  x y z (float32), red green blue alpha (uchar)
    element face F:    list uchar int vertex_indices

The reader accepts whatever ``plyfile`` reads (ascii, binary little/big endian, extra
vertex properties kept in :attr:`PlyMesh.vertex`, other elements ignored). Triangle
meshes, the common case, take plyfile's vectorised fixed-length-list path; polygon
faces fall back to its general reader and are fan-triangulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plyfile

from folk_ros.core.atomic import atomic_path


@dataclass
class PlyMesh:
    """A mesh read from a PLY file.

    Attributes:
        vertex: (N,) structured array with every vertex property of the file
            (e.g. ``x y z red green blue alpha`` and any extras such as ``nx`` or ``label``).
        faces: (F, 3) int64 triangle vertex indices (polygons fan-triangulated; may be empty).
    """

    vertex: np.ndarray
    faces: np.ndarray

    @property
    def vertices(self) -> np.ndarray:
        """(N, 3) float32 x, y, z."""
        return _stack(self.vertex, ("x", "y", "z")).astype(np.float32)

    @property
    def colors(self) -> np.ndarray | None:
        """(N, 3) uint8 red, green, blue, or None when the file has no colours."""
        names = self.vertex.dtype.names or ()
        if not all(c in names for c in ("red", "green", "blue")):
            return None
        rgb = _stack(self.vertex, ("red", "green", "blue"))
        if rgb.dtype.kind == "f":  # some writers store colours as floats in [0, 1]
            rgb = np.clip(np.round(rgb * 255.0), 0, 255)
        return rgb.astype(np.uint8)


def _stack(vertex: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    missing = [n for n in names if n not in (vertex.dtype.names or ())]
    if missing:
        raise ValueError(f"PLY vertex element lacks properties {missing}; has {vertex.dtype.names}")
    return np.stack([vertex[n] for n in names], axis=1)


# --------------------------------------------------------------------------- writing


def write_ply(
    path: Path | str,
    vertices: np.ndarray,
    colors: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    alpha: int = 255,
) -> None:
    """Write a binary little-endian PLY in ScanNet's layout (atomically: temp file + rename).

    Args:
        path: output file.
        vertices: (N, 3) float, stored as float32 metres.
        colors: optional (N, 3) uint8 RGB; stored with a constant ``alpha``.
        faces: optional (F, 3) int triangle vertex indices, stored as ``list uchar int``.
        alpha: alpha value written for every vertex (ScanNet writes 255).
    """
    vertices = np.asarray(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (N, 3), got {vertices.shape}")
    n = len(vertices)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != (n, 3) or colors.dtype != np.uint8:
            raise ValueError(f"colors must be ({n}, 3) uint8, got {colors.shape} {colors.dtype}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    vert = np.empty(n, dtype=fields)
    vert["x"], vert["y"], vert["z"] = vertices.astype(np.float32).T
    if colors is not None:
        vert["red"], vert["green"], vert["blue"] = colors.T
        vert["alpha"] = alpha

    faces = np.zeros((0, 3), np.int64) if faces is None else np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3) triangles, got {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= n):
        raise ValueError(f"face indices must lie in [0, {n}), got [{faces.min()}, {faces.max()}]")
    face = np.empty(len(faces), dtype=[("n", "u1"), ("vertex_indices", "<i4", (3,))])
    face["n"] = 3
    face["vertex_indices"] = faces

    # The layout is fixed, so the body is two buffer dumps (plyfile writes list rows one by one).
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property {'float' if t.endswith('f4') else 'uchar'} {name}" for name, t in fields]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vert.tobytes())
        f.write(face.tobytes())


# --------------------------------------------------------------------------- reading


def read_ply(path: Path | str) -> PlyMesh:
    """Read a PLY file's vertex element and triangulated faces; ValueError for unreadable files."""
    path = Path(path)
    try:
        try:  # fast path: every face a triangle
            data = plyfile.PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
        except plyfile.PlyElementParseError as e:
            if "list length" not in str(e):
                raise
            data = plyfile.PlyData.read(str(path))
    except (plyfile.PlyParseError, plyfile.PlyElementParseError, EOFError) as e:
        raise ValueError(f"{path}: not a readable PLY file ({e})") from e
    names = [el.name for el in data.elements]
    if "vertex" not in names:
        raise ValueError(f"{path}: no vertex element (elements: {names})")
    vertex = np.asarray(data["vertex"].data)
    faces = np.zeros((0, 3), np.int64)
    if "face" in names and len(data["face"].data):
        face_data = data["face"].data
        key = "vertex_indices" if "vertex_indices" in face_data.dtype.names else face_data.dtype.names[0]
        faces = _triangulate(face_data[key])
    return PlyMesh(vertex=vertex, faces=faces)


def _triangulate(lists: np.ndarray) -> np.ndarray:
    """Face index lists -> (T, 3) int64 fan triangles, vectorised per polygon size."""
    if lists.dtype != object:  # fixed-length lists: (F, k)
        return _fan(np.asarray(lists, np.int64))
    sizes = np.fromiter((len(f) for f in lists), np.int64, len(lists))
    order, parts = [], []
    for k in np.unique(sizes):  # one vectorised fan per polygon size
        rows = np.flatnonzero(sizes == k)
        parts.append(_fan(np.stack(lists[rows]).astype(np.int64)))
        order.append(np.repeat(rows, max(int(k) - 2, 0)))
    tri = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    return tri[np.argsort(np.concatenate(order), kind="stable")] if len(tri) else tri


def _fan(idx: np.ndarray) -> np.ndarray:
    """(F, k) polygons of one size -> (F*(k-2), 3) fan triangles (empty for k < 3)."""
    f, k = idx.shape
    if k == 3:
        return idx
    if k < 3:
        return np.zeros((0, 3), np.int64)
    return np.stack([np.repeat(idx[:, :1], k - 2, 1), idx[:, 1:-1], idx[:, 2:]], axis=2).reshape(-1, 3)
