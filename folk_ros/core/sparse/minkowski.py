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
when importable): :func:`resolve_backend`; :func:`backbone_forward` runs a
``Res16UNet34C`` on either; :func:`set_sparse_backend` switches a ``Mask3D``
(or a bare backbone) in place without touching its state dict.
"""

from __future__ import annotations

import functools
import types
import weakref
from typing import TYPE_CHECKING

import torch

from .coords import pack_keys
from .nn import SparseBatchNorm, SparseConv3d
from .tensor import SparseTensor

if TYPE_CHECKING:  # pragma: no cover
    from ..mask3d.backbone import BasicBlock, Res16UNet34C

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


def _bn(layer: SparseBatchNorm, x):
    return _replace(x, layer.bn(x.F))


def _relu(x):
    return _replace(x, torch.relu(x.F))


def _block(block: "BasicBlock", x):
    """``BasicBlock.forward`` on MinkowskiEngine tensors (same parameters)."""
    out = _relu(_bn(block.norm1, minkowski_conv(block.conv1, x)))
    out = _bn(block.norm2, minkowski_conv(block.conv2, out))
    if block.downsample is None:
        residual = x
    else:
        conv, bn = block.downsample
        residual = _bn(bn, minkowski_conv(conv, x))
    return _replace(out, torch.relu(out.F + residual.F))


def _layer(blocks: torch.nn.Sequential, x):
    for block in blocks:
        x = _block(block, x)
    return x


def minkowski_backbone_forward(backbone: "Res16UNet34C", x: SparseTensor,
                               num_threads: int | None = None) -> tuple[SparseTensor, list[SparseTensor]]:
    """``Res16UNet34C.forward`` with every sparse convolution run by MinkowskiEngine.

    Same parameters, same result (up to float rounding), returned on our
    coordinate rows: ``(block8 output (stride 1), [maps at strides 16, 8, 4, 2, 1])``
    exactly as :meth:`Res16UNet34C.forward`, so the decoder is unchanged.
    ``x``: our stride-1 SparseTensor ``(V, in_channels)``.  Differentiable.
    """
    me = require_minkowski()
    if x.stride != 1:
        raise ValueError(f"the backbone input must be at tensor stride 1, got {x.stride}")
    b = backbone
    xm = to_minkowski(x, num_threads)
    out_p1 = _relu(_bn(b.bn0, minkowski_conv(b.conv0p1s1, xm)))
    out_b1p2 = _layer(b.block1, _relu(_bn(b.bn1, minkowski_conv(b.conv1p1s2, out_p1))))
    out_b2p4 = _layer(b.block2, _relu(_bn(b.bn2, minkowski_conv(b.conv2p2s2, out_b1p2))))
    out_b3p8 = _layer(b.block3, _relu(_bn(b.bn3, minkowski_conv(b.conv3p4s2, out_b2p4))))
    out = _layer(b.block4, _relu(_bn(b.bn4, minkowski_conv(b.conv4p8s2, out_b3p8))))
    maps = [out]
    for convtr, bn, skip, blocks in (
            (b.convtr4p16s2, b.bntr4, out_b3p8, b.block5),
            (b.convtr5p8s2, b.bntr5, out_b2p4, b.block6),
            (b.convtr6p4s2, b.bntr6, out_b1p2, b.block7),
            (b.convtr7p2s2, b.bntr7, out_p1, b.block8)):
        out = _layer(blocks, me.cat(_relu(_bn(bn, minkowski_conv(convtr, out))), skip))
        maps.append(out)
    ours = [from_minkowski(m, x.manager) for m in maps]
    return ours[-1], ours


def backbone_forward(backbone: "Res16UNet34C", x: SparseTensor,
                     backend: str = "torch") -> tuple[SparseTensor, list[SparseTensor]]:
    """Run ``backbone`` on ``x`` with the ``"torch" | "minkowski" | "auto"`` sparse backend.

    The plain module call for torch; :func:`minkowski_backbone_forward`
    otherwise.  Both return ``(pcd, maps)`` on our coordinate rows.
    """
    if resolve_backend(backend) == "minkowski":
        return minkowski_backbone_forward(backbone, x)
    return type(backbone).forward(backbone, x)


def set_sparse_backend(model: torch.nn.Module, backend: str) -> str:
    """Switch a ``Mask3D`` (or a bare ``Res16UNet34C``) to a sparse backend in place; returns it resolved.

    ``"minkowski"`` rebinds the backbone's ``forward`` (instance attribute) to
    :func:`minkowski_backbone_forward`; ``"torch"`` restores the class method.
    Parameters, buffers and the state dict are untouched, so checkpoints load
    the same on both.  ``"auto"`` picks MinkowskiEngine when importable.
    """
    resolved = resolve_backend(backend)
    backbone = getattr(model, "backbone", model)
    if not all(hasattr(backbone, name) for name in ("conv0p1s1", "block8", "convtr7p2s2")):
        raise ValueError(f"expected a Mask3D or Res16UNet34C, got {type(model).__name__}")
    if resolved == "minkowski":
        backbone.forward = types.MethodType(minkowski_backbone_forward, backbone)
    else:
        backbone.__dict__.pop("forward", None)
    return resolved


def sparse_backend_of(model: torch.nn.Module) -> str:
    """``"minkowski"`` when :func:`set_sparse_backend` switched ``model`` to it, else ``"torch"``."""
    backbone = getattr(model, "backbone", model)
    fwd = backbone.__dict__.get("forward")
    return "minkowski" if getattr(fwd, "__func__", None) is minkowski_backbone_forward else "torch"
