"""Finding scene folders: one walk over the folders a tool is given, one rule per kind of scene it needs.

A tool takes scene folders, or folders of scenes (e.g. the output of ``python -m training.data.synthetic``),
and keeps the folders that hold what it reads:

- :func:`has_mesh`: a ScanNet-layout ``*_vh_clean_2.ply`` mesh (the teacher cache, the evaluations);
- :func:`has_mesh_gt`: the mesh with its segments and aggregation, i.e. instance GT (Mask3D training);
- :func:`has_instance_images`: ``color/`` and ``instance/`` images (CLIP fine-tuning).

The ROS 2 bags written next to the scenes live in ``<root>/bags/<scene_id>`` (:func:`scene_bag`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from training.data import scannet

BAG_DIR = "bags"


def has_mesh(path: Path) -> bool:
    """A ScanNet-layout scene folder: it holds a ``*_vh_clean_2.ply`` mesh."""
    return path.is_dir() and any(path.glob("*_vh_clean_2.ply"))


def has_mesh_gt(path: Path) -> bool:
    """A finished synthetic scene, or a ScanNet folder with its mesh, segments and aggregation."""
    if not path.is_dir():
        return False
    if scannet.is_complete(path):
        return True
    sid = path.name
    return (scannet.mesh_path(path, sid).exists() and scannet.segs_path(path, sid).exists()
            and any(p.exists() for p in scannet.aggregation_paths(path, sid)))


def has_instance_images(path: Path) -> bool:
    """A scene folder with per-frame colour and instance images (``color/`` and ``instance/``)."""
    return (path / "color").is_dir() and (path / "instance").is_dir()


RULES: dict[Callable[[Path], bool], str] = {
    has_mesh: "a *_vh_clean_2.ply mesh",
    has_mesh_gt: "a mesh with its segments and aggregation (instance GT)",
    has_instance_images: "color/ and instance/ images",
}


def find_scenes(roots: Iterable[str | Path] | str | Path, accept: Callable[[Path], bool] = has_mesh) -> list[Path]:
    """Scene folders among ``roots`` (each a scene, or a folder of scenes) that ``accept`` keeps: sorted within a
    root, in the order of the roots, without repeats.

    Raises:
        FileNotFoundError: a root is not a folder, or neither a scene nor a folder holding one.
    """
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"scene folder {root} does not exist")
        if accept(root):
            found.append(root)
            continue
        subs = sorted(p for p in root.iterdir() if p.is_dir() and p.name != BAG_DIR and accept(p))
        if not subs:
            raise FileNotFoundError(f"{root} is neither a scene folder nor a folder of scenes "
                                    f"(looked for {RULES.get(accept, accept.__name__)})")
        found.extend(subs)
    return unique_paths(found)


def unique_paths(paths: Iterable[Path]) -> list[Path]:
    """``paths`` in order, without repeats of the same file or folder (compared resolved)."""
    out, seen = [], set()
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def scene_bag(scene_dir: Path) -> Path:
    """The bag written next to a scene: ``<root>/bags/<scene_id>`` for ``<root>/<scene_id>``."""
    return Path(scene_dir).parent / BAG_DIR / Path(scene_dir).name
