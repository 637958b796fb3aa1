"""ScanNet benchmark text files: GT (one ``label_id * 1000 + instance`` per vertex) and predictions
(``<relative mask path> <label id> <confidence>`` per line, one 0/1 mask file per prediction), read into
and written from the scene types of :mod:`training.evaluate.instance_ap`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from training.evaluate.instance_ap import GTScene, PredScene

MASK_DIR = "predicted_masks"  # sub-folder of the mask files written by write_pred_txt


def _read_int_lines(path: Path) -> np.ndarray:
    """(L,) int64 from a file with one integer per line (fast path for 0/1 mask files)."""
    data = Path(path).read_bytes()
    raw = np.frombuffer(data, np.uint8)
    if raw.size % 2 == 0 and raw.size and np.all(raw[1::2] == ord("\n")):
        digits = raw[0::2].astype(np.int64) - ord("0")
        if np.all((digits >= 0) & (digits <= 9)):
            return digits
    try:
        return np.array(data.decode("ascii").split(), dtype=np.int64)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: expected one integer per line ({err})") from None


def read_gt_txt(path: str | os.PathLike) -> GTScene:
    """A benchmark GT file (one ``label_id * 1000 + instance`` per vertex); scene id = file stem."""
    path = Path(path)
    return GTScene(path.stem, _read_int_lines(path))


def read_pred_txt(path: str | os.PathLike, num_vertices: int | None = None,
                  root: str | os.PathLike | None = None) -> PredScene:
    """A benchmark prediction file ``<scene>.txt``: lines ``<relative mask path> <label id> <confidence>``.

    Mask paths are relative to the file's folder and must stay inside ``root`` (default: that
    folder); each mask file holds one integer per vertex (non-zero = inside). ValueError on a
    malformed line, an absolute or escaping path, a missing mask file, or a mask whose line count
    differs from ``num_vertices`` (or from the other masks when ``num_vertices`` is None).
    """
    path = Path(path)
    base = path.parent.resolve()
    root_dir = Path(root).resolve() if root is not None else base
    masks: list[np.ndarray] = []
    labels: list[int] = []
    scores: list[float] = []
    seen: dict[Path, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{path}:{lineno}: expected '<relative mask path> <label id> <confidence>', "
                             f"got {line!r}")
        rel, label, conf = parts
        if os.path.isabs(rel):
            raise ValueError(f"{path}:{lineno}: mask path {rel!r} must be relative")
        mask_path = (base / rel).resolve()
        if not mask_path.is_relative_to(root_dir):
            raise ValueError(f"{path}:{lineno}: mask path {rel!r} points outside {root_dir}")
        if not mask_path.is_file():
            raise ValueError(f"{path}:{lineno}: mask file {mask_path} does not exist")
        if mask_path in seen:
            warnings.warn(f"{path}:{lineno}: mask {rel!r} is named again (first on line {seen[mask_path]}); the "
                          f"official ScanNet200 script keeps only the last such line, this reader keeps both",
                          stacklevel=2)
        seen[mask_path] = lineno
        try:
            labels.append(int(float(label)))
            scores.append(float(conf))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: bad label id or confidence in {line!r}") from None
        mask = _read_int_lines(mask_path) != 0
        expected = num_vertices if num_vertices is not None else (masks[0].size if masks else mask.size)
        if mask.size != expected:
            raise ValueError(f"{mask_path}: wrong number of lines ({mask.size}) vs {expected} mesh vertices "
                             f"(scene {path.stem})")
        masks.append(mask)
    n = num_vertices if num_vertices is not None else (masks[0].size if masks else 0)
    stacked = np.stack(masks) if masks else np.zeros((0, n), bool)
    return PredScene(path.stem, stacked, np.asarray(labels, np.int64), np.asarray(scores, np.float64))


def write_pred_txt(out_dir: str | os.PathLike, scene_id: str, pred: PredScene,
                   mask_dir: str = MASK_DIR) -> Path:
    """Write ``pred`` in the benchmark format; returns the path of ``<out_dir>/<scene_id>.txt``.

    Masks go to ``<out_dir>/<mask_dir>/<scene_id>_<k:03d>.txt`` (one 0/1 per vertex); the
    confidences are written with ``repr`` so that they read back exactly. Lines are sorted by
    descending confidence (ties keep their order): the official ScanNet200 script matches predictions
    in file order, so an unsorted file can score differently there than here.
    """
    if not scene_id or any(ch.isspace() for ch in scene_id) or any(ch.isspace() for ch in mask_dir):
        raise ValueError(f"scene id {scene_id!r} and mask dir {mask_dir!r} must be non-empty without spaces")
    out = Path(out_dir)
    (out / mask_dir).mkdir(parents=True, exist_ok=True)
    lines = []
    buf = np.full(2 * pred.num_vertices, ord("\n"), np.uint8)
    for rank, k in enumerate(np.argsort(-pred.scores, kind="stable")):
        rel = f"{mask_dir}/{scene_id}_{rank:03d}.txt"
        buf[0::2] = ord("0") + pred.masks[k]
        (out / rel).write_bytes(buf.tobytes())
        lines.append(f"{rel} {int(pred.label_ids[k])} {float(pred.scores[k])!r}\n")
    txt = out / f"{scene_id}.txt"
    txt.write_text("".join(lines))
    return txt
