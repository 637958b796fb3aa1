"""Optional MinkowskiEngine backend: our ``SparseConv3d`` parameters run through MinkowskiEngine.

The pure-PyTorch backend (:mod:`folk_ros.core.sparse`) needs no compiled code;
this module runs the *same* parameter tensors (``kernel`` ``[K, Cin, Cout]`` /
``[Cin, Cout]``, ``bias`` ``[1, Cout]``, shared, never copied) through
``MinkowskiConvolution`` / ``MinkowskiConvolutionTranspose`` (MinkowskiEngine
0.5.4, Choy et al., CVPR 2019), so one checkpoint runs on both and the two can
be checked against each other (test/test_minkowski_equality.py).

MinkowskiEngine is imported lazily: importing this module never fails; the
functions that need it raise ImportError naming ``scripts/build_minkowski.sh``
(the documented CPU-only build) when it is absent.

Row order: MinkowskiEngine stores each coordinate set in its own order.
:func:`to_minkowski` / :func:`from_minkowski` permute feature rows between the
two (matching packed coordinate keys), so results come back on our
coordinate rows and plug into the rest of the model unchanged.

Backend selection (``"torch" | "minkowski" | "auto"``, auto = MinkowskiEngine
when importable): :func:`resolve_backend`; :class:`MinkowskiSparseOps` is the
backbone's sparse operations on MinkowskiEngine (its forward is written once, in
:mod:`folk_ros.core.mask3d.backbone`); :func:`backbone_forward` runs a
``Res16UNet34C`` on either; :func:`set_sparse_backend` switches a ``Mask3D``
(or a bare backbone) in place without touching its state dict.
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING

import torch

from .coords import pack_keys
from .nn import SparseBatchNorm, SparseConv3d
from .tensor import SparseTensor

if TYPE_CHECKING:  # pragma: no cover
    from ..mask3d.backbone import Res16UNet34C

BACKENDS = ("torch", "minkowski", "auto")
BUILD_HINT = "scripts/build_minkowski.sh"


@functools.lru_cache(maxsize=1)
def _import_minkowski():
    """The MinkowskiEngine module (cached), or the ImportError raised when importing it."""
    try:
        import MinkowskiEngine as ME  # noqa: N817
    except Exception as err:  # ImportError, or a compiled extension built against another torch
        return err
    return ME


def minkowski_available() -> bool:
    """True when MinkowskiEngine imports (it is an optional dependency)."""
    return not isinstance(_import_minkowski(), Exception)


def require_minkowski():
    """The ``MinkowskiEngine`` module; ImportError with the build instructions when absent."""
    me = _import_minkowski()
    if isinstance(me, Exception):
        raise ImportError(
            f"the 'minkowski' sparse backend needs MinkowskiEngine 0.5.4, which failed to import "
            f"({type(me).__name__}: {me}); build and install it with `{BUILD_HINT}` "
            f"(CPU-only, ~7 min on 2 cores) or use sparse_backend='torch'") from me
    return me


def resolve_backend(backend: str) -> str:
    """``"torch"`` or ``"minkowski"`` for a requested ``"torch" | "minkowski" | "auto"``.

    ``"auto"`` is MinkowskiEngine when importable, else torch; ``"minkowski"``
    raises ImportError (naming the build script) when it is not.
    """
    if backend not in BACKENDS:
        raise ValueError(f"sparse backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "minkowski" if minkowski_available() else "torch"
    if backend == "minkowski":
        require_minkowski()
    return backend


# ------------------------------------------------------------ row order ----

def row_permutation(src_coords: torch.Tensor, dst_coords: torch.Tensor) -> torch.Tensor:
    """``(V,)`` int64 ``idx`` with ``src_coords[idx] == dst_coords`` (same set, other order).

    Both ``(V, 4)`` int ``[batch, x, y, z]`` with unique rows; ValueError when
    the two sets differ.
    """
    if src_coords.shape != dst_coords.shape:
        raise ValueError(f"coordinate sets differ in size: {tuple(src_coords.shape)} vs {tuple(dst_coords.shape)}")
    ks = pack_keys(src_coords.to(torch.int64))
    kd = pack_keys(dst_coords.to(dst_coords.device, torch.int64).to(ks.device))
    ks_sorted, os_ = torch.sort(ks)
    kd_sorted, od = torch.sort(kd)
    if not torch.equal(ks_sorted, kd_sorted):
        bad = int((ks_sorted != kd_sorted).sum())
        raise ValueError(f"coordinate sets differ ({bad} of {ks.numel()} sorted keys): the backends "
                         "disagree on the coordinates of this tensor stride")
    idx = torch.empty_like(os_)
    idx[od] = os_
    return idx


def _map_type(me, device: torch.device):
    if device.type == "cuda":
        if not me.is_cuda_available():
            raise ValueError("MinkowskiEngine was built CPU-only (scripts/build_minkowski.sh); "
                             "move the model and input to the CPU or use sparse_backend='torch'")
        return me.CoordinateMapType.CUDA
    return me.CoordinateMapType.CPU


def to_minkowski(x: SparseTensor, num_threads: int | None = None):
    """Our SparseTensor -> ``MinkowskiEngine.SparseTensor`` with the same features (rows permuted).

    A fresh MinkowskiEngine coordinate manager receives the stride-1
    coordinates of ``x.manager`` and, for ``x.stride > 1``, every coarser stride
    up to ``x.stride`` (so that transposed convolutions find their targets, as
    in a MinkowskiEngine network).  ``num_threads`` (default
    ``torch.get_num_threads()``) sets MinkowskiEngine's coordinate-map threads.
    Differentiable in ``x.F``.
    """
    me = require_minkowski()
    manager = me.CoordinateManager(
        D=3, num_threads=num_threads or torch.get_num_threads(),
        coordinate_map_type=_map_type(me, x.device))
    base = x.manager.coords(1).to(torch.int32).contiguous()
    key, _ = manager.insert_and_map(base, [1, 1, 1], "")
    stride = 1
    while stride < x.stride:
        key = manager.stride(key, [2, 2, 2])
        stride *= 2
    if stride != x.stride:
        raise ValueError(f"tensor stride must be a power of 2, got {x.stride}")
    idx = row_permutation(x.C, manager.get_coordinates(key))
    return me.SparseTensor(x.F.index_select(0, idx.to(x.device)), coordinate_map_key=key,
                           coordinate_manager=manager)


def from_minkowski(y, manager) -> SparseTensor:
    """``MinkowskiEngine.SparseTensor`` -> our SparseTensor on ``manager``'s rows of the same stride.

    ``manager`` is our :class:`CoordinateManager` of the same input; ValueError
    when its coordinate set at that stride differs from MinkowskiEngine's.
    Differentiable in ``y.F``.
    """
    strides = set(int(s) for s in y.tensor_stride)
    if len(strides) != 1:
        raise ValueError(f"anisotropic tensor stride {y.tensor_stride} is not supported")
    stride = strides.pop()
    idx = row_permutation(y.C, manager.coords(stride))
    return SparseTensor(y.F.index_select(0, idx.to(y.F.device)), stride, manager)


# ------------------------------------------------------------- layers ------

_TWINS: "weakref.WeakKeyDictionary[SparseConv3d, torch.nn.Module]" = weakref.WeakKeyDictionary()


def minkowski_twin(layer: SparseConv3d) -> torch.nn.Module:
    """The MinkowskiEngine convolution of ``layer``, holding ``layer``'s own kernel/bias tensors.

    ``MinkowskiConvolution`` (or ``MinkowskiConvolutionTranspose`` when
    ``layer.transposed``) with the same kernel size, stride and dilation; its
    ``kernel`` and ``bias`` parameters ARE ``layer.kernel`` / ``layer.bias``
    (re-bound on every call, so ``load_state_dict`` or ``.to()`` on the model
    are always seen).  Cached per layer, outside the layer's module tree (its
    state dict is unchanged).
    """
    me = require_minkowski()
    twin = _TWINS.get(layer)
    if twin is None:
        cls = me.MinkowskiConvolutionTranspose if layer.transposed else me.MinkowskiConvolution
        twin = cls(layer.in_channels, layer.out_channels, kernel_size=layer.kernel_size, stride=layer.stride,
                   dilation=layer.dilation, bias=layer.bias is not None, dimension=3)
        _TWINS[layer] = twin
    if tuple(twin.kernel.shape) != tuple(layer.kernel.shape):
        raise ValueError(f"MinkowskiEngine expects a kernel of shape {tuple(twin.kernel.shape)} for {layer}, "
                         f"the layer holds {tuple(layer.kernel.shape)}")
    twin.kernel = layer.kernel
    twin.bias = layer.bias
    return twin


def minkowski_conv(layer: SparseConv3d, x):
    """Apply ``layer`` (our parameters) to a ``MinkowskiEngine.SparseTensor`` with MinkowskiEngine.

    Submanifold (stride 1): same coordinates; k2 s2: ``floor(c / 2s) * 2s``;
    transposed k2 s2: onto the existing finer coordinate map.  Returns a
    MinkowskiEngine SparseTensor (MinkowskiEngine's row order).
    """
    return minkowski_twin(layer)(x)


def _replace(x, feats: torch.Tensor):
    """MinkowskiEngine tensor with the coordinates of ``x`` and new ``(V, C')`` features."""
    me = require_minkowski()
    return me.SparseTensor(feats, coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager)


class MinkowskiSparseOps:
    """The backbone's sparse operations on MinkowskiEngine tensors, with our layers' parameters (the
    backend protocol of :class:`folk_ros.core.mask3d.backbone.TorchSparseOps`). ``enter`` converts our
    stride-1 input (:func:`to_minkowski`), ``leave`` brings every feature map back onto our coordinate rows
    (:func:`from_minkowski`), so the decoder is unchanged. Differentiable."""

    name = "minkowski"

    def __init__(self, num_threads: int | None = None):
        self.num_threads = num_threads

    def enter(self, x: SparseTensor):
        require_minkowski()
        if x.stride != 1:
            raise ValueError(f"the backbone input must be at tensor stride 1, got {x.stride}")
        return to_minkowski(x, self.num_threads)

    def leave(self, maps: list, x: SparseTensor) -> list[SparseTensor]:
        return [from_minkowski(m, x.manager) for m in maps]

    def conv(self, layer: SparseConv3d, x):
        return minkowski_conv(layer, x)

    def norm(self, layer: SparseBatchNorm, x):
        return _replace(x, layer.bn(x.F))

    def relu(self, x):
        return _replace(x, torch.relu(x.F))

    def replace(self, x, feats: torch.Tensor):
        return _replace(x, feats)

    def cat(self, a, b):
        return require_minkowski().cat(a, b)


def backbone_forward(backbone: "Res16UNet34C", x: SparseTensor,
                     backend: str = "torch") -> tuple[SparseTensor, list[SparseTensor]]:
    """Run ``backbone`` on ``x`` with the ``"torch" | "minkowski" | "auto"`` sparse backend, whatever
    backend the module is set to. Both return ``(pcd, maps)`` on our coordinate rows."""
    if resolve_backend(backend) == "minkowski":
        return backbone.run(x, MinkowskiSparseOps())
    return backbone.run(x, type(backbone).sparse_ops)   # the class default: the pure-PyTorch backend


def set_sparse_backend(model: torch.nn.Module, backend: str) -> str:
    """Switch a ``Mask3D`` (or a bare ``Res16UNet34C``) to a sparse backend in place; returns it resolved.

    Sets the backbone's ``sparse_ops`` (:class:`MinkowskiSparseOps` or the class default, torch).
    Parameters, buffers and the state dict are untouched, so checkpoints load the same on both.
    ``"auto"`` picks MinkowskiEngine when importable.
    """
    resolved = resolve_backend(backend)
    backbone = getattr(model, "backbone", model)
    if not all(hasattr(backbone, name) for name in ("conv0p1s1", "block8", "convtr7p2s2")):
        raise ValueError(f"expected a Mask3D or Res16UNet34C, got {type(model).__name__}")
    if resolved == "minkowski":
        backbone.sparse_ops = MinkowskiSparseOps()
    else:
        backbone.__dict__.pop("sparse_ops", None)
    return resolved


def sparse_backend_of(model: torch.nn.Module) -> str:
    """``"minkowski"`` when :func:`set_sparse_backend` switched ``model`` to it, else ``"torch"``."""
    return getattr(model, "backbone", model).sparse_ops.name
