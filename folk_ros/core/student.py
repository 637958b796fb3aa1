"""The FOLK student: the VL-adapter over Mask3D point features (paper section 3.2, Eq. 7).

For each instance proposal the adapter averages the point features inside its mask and
maps the average with a two-layer MLP into CLIP's embedding space; the output is
L2-normalised, so a cosine similarity against CLIP text embeddings is a dot product::

    f_i = normalize(MLP(mean_{p in mask_i} F_p))        F: (N, D) Mask3D point features

Pooling is one (sparse or dense) matrix product for all proposals at once
(:func:`masked_mean`); the MLP is :meth:`Student.project`, which training can also run
on pooled features cached once per scene (Mask3D is frozen).

Checkpoints carry their config: ``Student.to_checkpoint()`` ->
``{"format": "folk_ros.student", "config": {...}, "state_dict": {...}, **extra}`` and
``Student.from_checkpoint(obj)`` rebuilds the model from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from folk_ros.core.voxel_masks import VoxelMasks

FORMAT = "folk_ros.student"
# Dense masks are multiplied in row chunks of at most this many mask elements, which
# bounds the float copy of the masks (2^25 float32 = 128 MiB) whatever M is.
_DENSE_CHUNK_ELEMENTS = 1 << 25

Masks = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass(frozen=True)
class StudentConfig:
    """Shape of the VL-adapter (Eq. 7). The paper gives none of these sizes.

    ``out_dim`` must equal the embedding size of the CLIP model whose text embeddings the
    student is scored against (768 for ViT-L/14@336 as in OpenMask3D, 512 for ViT-B/16,
    128 for our folk-tiny-vit bundle).

    ``input_norm``: the scale of point features differs between Mask3D checkpoints and
    feature levels (96-d backbone output vs 128-d mask features). On a synthetic check
    (400 instances, 40 classes, 300 train / 100 held out, features x0.1, x1, x10, +3) the
    LayerNorm made held-out accuracy identical at every scale (0.983) where the plain MLP
    varied (0.973-0.987): it buys scale invariance, not accuracy. Recheck on real features.
    """

    in_dim: int = 96         # D; Mask3D point-feature width: 96 backbone output, 128 mask features
    hidden_dim: int = 512    # width of the MLP's hidden layer
    out_dim: int = 768       # C; CLIP joint embedding size (ViT-L/14@336)
    dropout: float = 0.1     # probability; dropout after the hidden activation (training only)
    input_norm: bool = True  # LayerNorm on the pooled feature, see below

    def __post_init__(self) -> None:
        for name in ("in_dim", "hidden_dim", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"StudentConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"StudentConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "StudentConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        bad = set(d) - set(StudentConfig.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown StudentConfig fields: {sorted(bad)}")
        return StudentConfig(**d)


def _pairs_from_index_lists(masks: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(instance, point) int64 index pairs of M point-index lists."""
    idx = [torch.as_tensor(m, device=device).reshape(-1) for m in masks]
    for i, m in enumerate(idx):
        if m.dtype.is_floating_point or m.dtype == torch.bool:
            raise ValueError(f"masks[{i}] must hold integer point indices, got {m.dtype} "
                             "(pass dense masks as one (M, N) bool tensor)")
    lengths = torch.tensor([len(m) for m in idx], dtype=torch.long, device=device)
    inst = torch.repeat_interleave(torch.arange(len(idx), device=device), lengths)
    return inst, torch.cat(idx).long()


def _pairs_from_sparse(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(instance, point) pairs of the stored entries of a sparse (M, N) tensor (COO or CSR)."""
    if masks.layout == torch.sparse_csr:
        crow, col = masks.crow_indices(), masks.col_indices()
        inst = torch.repeat_interleave(torch.arange(masks.shape[0], device=masks.device), crow.diff())
        return inst, col.long()
    if masks.layout == torch.sparse_coo:
        ind = masks.coalesce().indices()
        return ind[0], ind[1]
    raise ValueError(f"unsupported sparse layout {masks.layout} for masks (use COO or CSR)")


def _check_counts(counts: torch.Tensor) -> None:
    empty = torch.nonzero(counts == 0).flatten()
    if len(empty):
        raise ValueError(f"{len(empty)} masks have no points (first: {empty[:10].tolist()}): "
                         "nothing to pool; drop them first, e.g. masks[masks.any(dim=1)]")


def masked_mean(point_features: torch.Tensor, masks: Masks) -> torch.Tensor:
    """(M, D) mean of the point features inside each mask, all masks at once (Eq. 7 pooling).

    Args:
        point_features: (N, D) float features of the N points.
        masks: the M instances, as one of
            * (M, N) bool dense tensor: pooled as ``masks.float() @ features / counts``, in row
              chunks that bound the float copy (one dense matmul);
            * a torch sparse (M, N) tensor, COO or CSR: its stored entries are the member
              points (values are ignored);
            * a sequence of M 1-D integer tensors (or arrays) of point indices. Indices must
              be unique within an instance (a repeated index counts twice).
            The sparse forms go through one ``torch.sparse.mm`` over (instance, point) pairs.

    Cost (CPU, M=100, N=200k, D=96, measured on this project's 2-core machine): dense
    ~70 ms on 1 thread, ~45 ms on 2 whatever the mask sizes; index lists ~33 ms at 1% of
    the points per mask and ~150 ms at 5% (sparse.mm is single-threaded, cost ~ nnz).
    Converting dense masks to indices first costs ~33 ms (nonzero), so dense masks stay dense.

    Returns:
        (M, D) tensor of ``point_features``' dtype and device; (0, D) when M == 0.

    Raises:
        ValueError: for bad shapes, out-of-range indices, or any mask with no points (an
            empty instance has no mean; the caller drops it, e.g. ``masks[masks.any(1)]``).
    """
    if point_features.ndim != 2 or not point_features.dtype.is_floating_point:
        raise ValueError(f"point_features must be (N, D) float, got {tuple(point_features.shape)} "
                         f"{point_features.dtype}")
    n, d = point_features.shape
    dev = point_features.device
    if isinstance(masks, torch.Tensor) and masks.layout == torch.strided:
        if masks.ndim != 2 or masks.dtype != torch.bool or masks.shape[1] != n:
            raise ValueError(f"masks must be (M, N={n}) bool, got {tuple(masks.shape)} {masks.dtype}")
        masks = masks.to(dev)
        if masks.shape[0] == 0:
            return point_features.new_zeros(0, d)
        # Measured on CPU (M=100, N=200k): bool.sum() is ~15x slower than summing the float
        # copy, and bool -> uint8 view -> float converts faster than bool -> float.
        chunk = max(1, _DENSE_CHUNK_ELEMENTS // max(n, 1))
        sums, counts = [], []
        for m in masks.split(chunk):
            mf = m.view(torch.uint8).to(point_features.dtype)              # (m, N)
            counts.append(mf.sum(dim=1, dtype=torch.float32))               # exact below 2^24 points
            sums.append(mf @ point_features)                                # (m, D)
        counts = torch.cat(counts)
        _check_counts(counts)
        return (torch.cat(sums) / counts[:, None]).to(point_features.dtype)

    sparse = isinstance(masks, torch.Tensor)
    if sparse and (masks.ndim != 2 or masks.shape[1] != n):
        raise ValueError(f"sparse masks must be (M, N={n}), got {tuple(masks.shape)}")
    num = masks.shape[0] if sparse else len(masks)
    if num == 0:
        return point_features.new_zeros(0, d)
    inst, pts = _pairs_from_sparse(masks.to(dev)) if sparse else _pairs_from_index_lists(masks, dev)
    if len(pts) and (int(pts.min()) < 0 or int(pts.max()) >= n):
        raise ValueError(f"point indices must lie in [0, {n}), got [{int(pts.min())}, {int(pts.max())}]")
    counts = torch.bincount(inst, minlength=num)
    _check_counts(counts)
    ones = torch.ones(len(pts), dtype=point_features.dtype, device=dev)
    # indices were range-checked above, so torch's own invariant check is not needed
    sel = torch.sparse_coo_tensor(torch.stack([inst, pts]), ones, (num, n), check_invariants=False)
    sums = torch.sparse.mm(sel, point_features)
    return (sums / counts.to(torch.float32)[:, None]).to(point_features.dtype)


def voxel_masked_mean(voxel_features: torch.Tensor, voxel_masks: VoxelMasks,
                      voxel_points: torch.Tensor) -> torch.Tensor:
    """(M, D) mean of the point features inside each mask when every point of a voxel carries its voxel's
    features and mask bit (Mask3D's output): ``sum_v m_iv n_v F_v / sum_v m_iv n_v``, exactly
    :func:`masked_mean` over the points (Eq. 7 pooling) without expanding anything to points.

    Args:
        voxel_features: (V, D) float features of the V voxels.
        voxel_masks: the M masks over the V voxels, as (mask, voxel) entries.
        voxel_points: (V,) number of points in each voxel (the weights).

    One weighted ``index_add_`` over the E entries (cost ~ E x D, no dense (M, V) or (M, N) array).
    Raises ValueError for bad shapes or a mask holding no points.
    """
    v, d = voxel_features.shape
    if voxel_masks.shape[1] != v:
        raise ValueError(f"voxel_masks must be over V={v} voxels, got shape {voxel_masks.shape}")
    if voxel_points.shape != (v,):
        raise ValueError(f"voxel_points must be ({v},), got {tuple(voxel_points.shape)}")
    masks = voxel_masks.to(voxel_features.device)
    weights = voxel_points.to(voxel_features.device, voxel_features.dtype)[masks.cols]          # (E,)
    counts = torch.zeros(len(masks), dtype=voxel_features.dtype, device=voxel_features.device)
    counts.index_add_(0, masks.rows, weights)
    _check_counts(counts)
    sums = torch.zeros((len(masks), d), dtype=voxel_features.dtype, device=voxel_features.device)
    sums.index_add_(0, masks.rows, voxel_features[masks.cols] * weights[:, None])
    return sums / counts[:, None]


class Student(nn.Module):
    """VL-adapter (Eq. 7): masked mean of point features -> 2-layer MLP -> L2-normalised.

    Device-agnostic: move it with ``.to(device)``; inputs are moved to the features' device.
    """

    def __init__(self, cfg: StudentConfig = StudentConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.in_dim) if cfg.input_norm else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(cfg.in_dim, cfg.hidden_dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, cfg.out_dim),
        )

    @staticmethod
    def pool(point_features: torch.Tensor, masks: Masks) -> torch.Tensor:
        """(M, D) masked mean; see :func:`masked_mean` for the accepted mask forms."""
        return masked_mean(point_features, masks)

    def embed_voxels(self, voxel_features: torch.Tensor, voxel_masks: VoxelMasks,
                     voxel_points: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on voxel-level proposals (:func:`voxel_masked_mean`, then the MLP): (M, C)."""
        return self.project(voxel_masked_mean(voxel_features, voxel_masks, voxel_points))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """(M, D) pooled features -> (M, C) unit-norm instance embeddings (the MLP of Eq. 7)."""
        if pooled.ndim != 2 or pooled.shape[1] != self.cfg.in_dim:
            raise ValueError(f"pooled features must be (M, {self.cfg.in_dim}), got {tuple(pooled.shape)}")
        return F.normalize(self.mlp(self.norm(pooled)), dim=-1)

    def forward(self, point_features: torch.Tensor, masks: Masks) -> torch.Tensor:
        """(N, D) point features and M masks -> (M, C) unit-norm instance embeddings.

        Empty masks raise ValueError (see :func:`masked_mean`); M == 0 gives (0, C).
        """
        return self.project(self.pool(point_features, masks))

    # --- checkpoints -------------------------------------------------------------------
    def to_checkpoint(self, **extra) -> dict:
        """``{"format", "config", "state_dict" (CPU tensors), **extra}``; ``extra`` may hold
        e.g. the training temperature, vocabulary or metrics (it may not shadow the keys)."""
        clash = {"format", "config", "state_dict"} & set(extra)
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} are reserved")
        sd = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        return {"format": FORMAT, "config": self.cfg.to_dict(), "state_dict": sd, **extra}

    @classmethod
    def from_checkpoint(cls, obj: dict, map_location: Union[str, torch.device] = "cpu") -> "Student":
        """Rebuild a Student (in eval mode) from :meth:`to_checkpoint`'s dict.

        Raises:
            ValueError: not a student checkpoint, or weights that do not fit its config.
        """
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"not a {FORMAT} checkpoint (format={got!r})")
        model = cls(StudentConfig.from_dict(obj["config"]))
        try:
            model.load_state_dict(obj["state_dict"], strict=True)
        except RuntimeError as e:
            raise ValueError(f"student checkpoint weights do not match its config: {e}") from e
        return model.to(map_location).eval()


def classify(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The inference rule: softmax(embeddings @ text.T / tau) over the vocabulary, one matmul.

    Args:
        embeddings: (M, C) unit-norm instance embeddings. text: (K, C) unit-norm text embeddings.

    Returns:
        (label probability (M,), label index (M,) int64) of the best name per instance.
    """
    return (embeddings @ text.T / temperature).softmax(dim=-1).max(dim=-1)
