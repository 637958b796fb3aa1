"""A one-page PNG preview of a ScanNet-layout scene: top views of the mesh and a few RGB-D frames."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.data import scannet, scannet200  # noqa: E402


def _top_view(ax, xyz: np.ndarray, colors: np.ndarray, title: str) -> None:
    order = np.argsort(xyz[:, 2])  # draw high points last so tables cover the floor
    ax.scatter(xyz[order, 0], xyz[order, 1], c=colors[order], s=0.3, linewidths=0)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x [m]", fontsize=8)
    ax.set_ylabel("y [m]", fontsize=8)
    ax.tick_params(labelsize=7)


def write_preview(scene_dir: Path, out_png: Path, num_frames: int = 3) -> Path:
    """Write ``out_png``: mesh in colour, mesh by GT class with labels, and RGB / depth / GT masks."""
    mesh = scannet.read_scene_mesh(scene_dir)
    ids = scannet.frame_ids(scene_dir)
    every = max(1, len(ids) // num_frames)
    frames = list(scannet.read_frames(scene_dir, every=every, with_instance=True))[:num_frames]

    fig = plt.figure(figsize=(4 * max(3, num_frames), 4 + 3 * 3))
    grid = fig.add_gridspec(4, max(3, num_frames), height_ratios=[4, 3, 3, 3])
    xyz = mesh.vertices
    above_floor = xyz[:, 2] < np.percentile(xyz[:, 2], 99)  # hide nothing but the top 1% (wall tops)
    _top_view(fig.add_subplot(grid[0, 0]), xyz[above_floor], mesh.colors[above_floor] / 255.0,
              f"{mesh.scene_id}: {mesh.num_vertices} vertices (colour)")
    label_rgb = np.array([scannet200.color_of(i) for i in mesh.semantic_ids]) / 255.0
    ax = fig.add_subplot(grid[0, 1])
    _top_view(ax, xyz[above_floor], label_rgb[above_floor], "GT classes (ScanNet200 colours)")
    for inst in np.unique(mesh.instance_ids):
        name = mesh.instance_labels.get(int(inst), "")
        if inst == 0 or name in ("wall", "floor"):
            continue
        c = xyz[mesh.instance_ids == inst].mean(axis=0)
        ax.annotate(name, c[:2], fontsize=6, ha="center")
    inst_rgb = _instance_colors(mesh.instance_ids)
    _top_view(fig.add_subplot(grid[0, 2]), xyz[above_floor], inst_rgb[above_floor], "GT instances")

    for col, frame in enumerate(frames):
        for row, (image, title, cmap) in enumerate([
            (frame.color, f"frame {frame.index}: colour", None),
            (frame.depth, "depth [m]", "viridis"),
            (_instance_colors(frame.instance)[..., :3] if frame.instance is not None else None,
             "GT instance ids", None),
        ], start=1):
            ax = fig.add_subplot(grid[row, col])
            ax.axis("off")
            if image is None:
                continue
            im = ax.imshow(image, cmap=cmap)
            ax.set_title(title, fontsize=8)
            if cmap:
                fig.colorbar(im, ax=ax, fraction=0.035)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _instance_colors(ids: np.ndarray) -> np.ndarray:
    """A stable pseudo-random colour per instance id (black for 0); shape ids.shape + (3,)."""
    rng = np.random.default_rng(12345)
    palette = rng.uniform(0.15, 1.0, size=(int(ids.max()) + 1, 3))
    palette[0] = 0.0
    return palette[ids]
