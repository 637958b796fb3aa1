"""PNG renders of a labeled cloud (what RViz would show): a top view and a perspective view with
each instance's axis-aligned box and its "label score" text. matplotlib only (Agg), numpy inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

# the 12 edges of a box as pairs of corner numbers; corner k has bit 0/1/2 = max x/y/z
_EDGES = np.array([(a, a | bit) for bit in (1, 2, 4) for a in range(8) if not a & bit])


@dataclass(frozen=True)
class Scene:
    """What one render shows.

    Attributes:
        xyz: (N, 3) float32 points (non-finite ones are skipped).
        colors: (N, 3) float RGB in [0, 1] per point.
        boxes: (M, 2, 3) float (min corner, max corner) per instance.
        texts: M strings drawn at the top of each box, e.g. "chair 0.83".
        box_colors: (M, 3) float RGB in [0, 1] per instance.
        legend: {name: (3,) RGB} shown as a legend (may be empty).
    """

    xyz: np.ndarray
    colors: np.ndarray
    boxes: np.ndarray
    texts: list[str]
    box_colors: np.ndarray
    legend: dict[str, tuple[float, float, float]]


def box_corners(box: np.ndarray) -> np.ndarray:
    """(2, 3) min/max corners -> (8, 3) corners, corner k taking max x/y/z where bit 0/1/2 of k is set."""
    bits = (np.arange(8)[:, None] >> np.arange(3)) & 1          # (8, 3)
    return np.where(bits == 1, box[1], box[0])


def _subsample(scene: Scene, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(scene.xyz).all(axis=1)
    idx = np.flatnonzero(keep)
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    return scene.xyz[idx], scene.colors[idx]


def _top_view(ax, xyz: np.ndarray, colors: np.ndarray, scene: Scene) -> None:
    order = np.argsort(xyz[:, 2])   # high points last: objects cover the floor
    ax.scatter(xyz[order, 0], xyz[order, 1], c=colors[order], s=0.8, linewidths=0)
    for box, text, color in zip(scene.boxes, scene.texts, scene.box_colors):
        (x0, y0, _), (x1, y1, _) = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.2))
        ax.text((x0 + x1) / 2, y1, text, fontsize=6, ha="center", va="bottom", color="black",
                bbox=dict(boxstyle="round,pad=0.15", fc=(*color, 0.35), ec="none"))
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]", fontsize=8)
    ax.set_ylabel("y [m]", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("top view", fontsize=9)


def _perspective_view(ax, xyz: np.ndarray, colors: np.ndarray, scene: Scene, elev: float, azim: float) -> None:
    ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=colors, s=0.5, linewidths=0, depthshade=False)
    for box, text, color in zip(scene.boxes, scene.texts, scene.box_colors):
        corners = box_corners(box)
        for a, b in _EDGES:
            ax.plot(*corners[[a, b]].T, color=color, linewidth=1.0)
        top = (box[0] + box[1]) / 2
        ax.text(top[0], top[1], box[1, 2] + 0.05, text, fontsize=6, ha="center", color="black")
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    ax.set_box_aspect(np.maximum(hi - lo, 1e-3))
    ax.view_init(elev=elev, azim=azim)
    ax.tick_params(labelsize=6)
    ax.set_title(f"perspective (elevation {elev:.0f}°, azimuth {azim:.0f}°)", fontsize=9)


def render(scene: Scene, out_png: Path, title: str, max_points: int = 60_000, seed: int = 0,
           elev: float = 40.0, azim: float = -60.0) -> Path:
    """Write ``out_png``: top view (left) and perspective view (right) of ``scene``; returns the path.

    At most ``max_points`` points are drawn (a seeded random subset); boxes and texts are all drawn.
    """
    if len(scene.boxes) != len(scene.texts) or len(scene.boxes) != len(scene.box_colors):
        raise ValueError(f"{len(scene.boxes)} boxes, {len(scene.texts)} texts and {len(scene.box_colors)} "
                         f"colours: one of each per instance")
    xyz, colors = _subsample(scene, max_points, seed)
    if len(xyz) == 0:
        raise ValueError("nothing to render: the cloud has no finite point")
    fig = plt.figure(figsize=(15, 7))
    _top_view(fig.add_subplot(1, 2, 1), xyz, colors, scene)
    _perspective_view(fig.add_subplot(1, 2, 2, projection="3d"), xyz, colors, scene, elev, azim)
    if scene.legend:
        handles = [Patch(color=c, label=name) for name, c in scene.legend.items()]
        fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
