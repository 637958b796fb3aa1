"""Sparse convolution and pooling over kernel maps.

``out[o] = sum_k in[i] @ W[k]`` for every pair ``(i, o)`` of kernel offset ``k``
(MinkowskiEngine's definition, no kernel flip).  Two equal implementations:

* ``"gather"``: the map's :class:`~folk_ros.core.sparse.plan.GatherPlan`:
  one gather into padded slots, one ``bmm`` per offset group, one gather-sum
  (``embedding_bag``) per output row in the pair form's order; no scatter.  A constant number of kernels
  per convolution, which also keeps it fast when the cores are shared.
* ``"pairs"``: per offset gather -> matmul -> ``index_add_`` (the reference form).

``"auto"`` (the default) picks one by device (:func:`resolve_method`).

:class:`SparseConvFunction` has a hand-written backward for both (plain autograd
through the gathers stores every gathered block and is several times slower).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .coords import KernelMap
from .plan import GatherPlan

METHODS = ("auto", "gather", "pairs")


def resolve_method(method: str, device: torch.device) -> str:
    """``"auto"``: the pair form on CPU, the gather form on CUDA.

    Measured on 2 cores with torch 2.14 (models/folk-synth's Mask3D, a 100k-point room, 2 threads, the
    network and its post-processing on the thread that also loaded the model): pairs 0.75-0.96 s, gather
    1.54-1.73 s; with 1 thread the pair form was already ~1.6x faster (bench/bench_sparse_ops.py, an older
    torch). An earlier rule chose the gather form for 2+ threads because the pair form looked slower on
    a worker thread; that was a second OpenMP team in the process (see :mod:`folk_ros.core.torch_threads`),
    which slows every kernel and the pair form's many small ones most. Both forms give the same
    floating-point result (same summation order).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "pairs" if device.type == "cpu" else "gather"
    return method


# ------------------------------------------------------------- pair form ---

def _conv_forward(feats: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Pair form: (n_in, Cin) x (K, Cin, Cout) -> (n_out, Cout)."""
    out_dtype = torch.promote_types(feats.dtype, kernel.dtype)
    if kmap.identity_k >= 0:
        out = feats @ kernel[kmap.identity_k]
    else:
        out = torch.zeros((kmap.n_out, kernel.shape[-1]), dtype=out_dtype, device=feats.device)
    for k in range(kmap.kernel_volume):
        if k == kmap.identity_k or kmap.ptr[k] == kmap.ptr[k + 1]:
            continue
        i, o = kmap.pairs(k)
        out.index_add_(0, o, feats.index_select(0, i) @ kernel[k])
    return out


def _pairs_backward(feats, kernel, kmap: KernelMap, grad_out, need_feats: bool, need_kernel: bool):
    grad_feats = grad_kernel = None
    if need_feats:
        grad_feats = _conv_forward(grad_out, kernel.transpose(1, 2), kmap.transposed())
    if need_kernel:
        grad_kernel = torch.zeros_like(kernel)
        for k in range(kmap.kernel_volume):
            if kmap.ptr[k] == kmap.ptr[k + 1]:
                continue
            if k == kmap.identity_k:
                grad_kernel[k] = feats.T @ grad_out
                continue
            i, o = kmap.pairs(k)
            grad_kernel[k] = feats.index_select(0, i).T @ grad_out.index_select(0, o)
    return grad_feats, grad_kernel


# ----------------------------------------------------------- gather form ---

def _grouped_matmul(rows: torch.Tensor, weights: torch.Tensor, plan: GatherPlan, cols: int) -> torch.Tensor:
    """Slot rows (R, C) times each slot's offset weight ``weights[j]`` (G, C, cols) -> (R, cols)."""
    out = rows.new_empty((plan.num_slots, cols))
    c = rows.shape[1]
    for first, g, m, start in plan.groups:
        stop = start + g * m
        torch.bmm(rows[start:stop].view(g, m, c), weights[first:first + g], out=out[start:stop].view(g, m, cols))
    return out


def _bag_sum(slot_values: torch.Tensor, bag: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per row the sum of its slots' values: (R, C) -> (n, C), n = len(offsets); empty bags give 0."""
    return F.embedding_bag(bag, slot_values, offsets, mode="sum")


def _gather_forward(feats: torch.Tensor, kernel: torch.Tensor, plan: GatherPlan) -> torch.Tensor:
    """Gather form: (n_in, Cin) x (K, Cin, Cout) -> (n_out, Cout)."""
    cout = kernel.shape[-1]
    if not plan.num_slots:
        return feats.new_zeros((plan.n_out, cout))
    y = _grouped_matmul(feats.index_select(0, plan.in_slots), kernel.index_select(0, plan.offsets), plan, cout)
    return _bag_sum(y, plan.out_bag, plan.out_bag_offsets)


def _gather_backward(feats, kernel, plan: GatherPlan, grad_out, need_feats: bool, need_kernel: bool):
    grad_feats = grad_kernel = None
    cin = kernel.shape[1]
    if not plan.num_slots:
        return (feats.new_zeros(feats.shape) if need_feats else None,
                torch.zeros_like(kernel) if need_kernel else None)
    go_slots = grad_out.index_select(0, plan.out_slots)                                # (R, Cout)
    if need_feats:
        w_t = kernel.index_select(0, plan.offsets).transpose(1, 2).contiguous()          # (G, Cout, Cin)
        grad_feats = _bag_sum(_grouped_matmul(go_slots, w_t, plan, cin), plan.in_bag, plan.in_bag_offsets)
    if need_kernel:
        f_slots = feats.index_select(0, plan.in_slots)                                   # (R, Cin)
        if plan.pad_slots.numel():
            f_slots.index_fill_(0, plan.pad_slots, 0)      # padding rows must not reach W's gradient
        gw = kernel.new_empty((plan.offsets.numel(), cin, kernel.shape[-1]))
        for first, g, m, start in plan.groups:
            stop = start + g * m
            torch.bmm(f_slots[start:stop].view(g, m, cin).transpose(1, 2),
                      go_slots[start:stop].view(g, m, -1), out=gw[first:first + g])
        grad_kernel = torch.zeros_like(kernel)
        grad_kernel.index_copy_(0, plan.offsets, gw)
    return grad_feats, grad_kernel


# ------------------------------------------------------------- autograd ---

class SparseConvFunction(torch.autograd.Function):
    """Autograd function of the sparse convolution (forward and backward in the chosen form)."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap,
                method: str = "gather") -> torch.Tensor:
        ctx.kmap, ctx.method = kmap, method
        ctx.save_for_backward(feats, kernel)
        if method == "gather":
            return _gather_forward(feats, kernel, kmap.plan())
        return _conv_forward(feats, kernel, kmap)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        feats, kernel = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        need = ctx.needs_input_grad
        if ctx.method == "gather":
            gf, gk = _gather_backward(feats, kernel, ctx.kmap.plan(), grad_out, need[0], need[1])
        else:
            gf, gk = _pairs_backward(feats, kernel, ctx.kmap, grad_out, need[0], need[1])
        return gf, gk, None, None


def sparse_conv(feats: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap, method: str = "auto") -> torch.Tensor:
    """Sparse convolution of ``(n_in, Cin)`` features with a ``(K, Cin, Cout)`` kernel -> ``(n_out, Cout)``.

    ``method``: ``"gather"`` (see :mod:`folk_ros.core.sparse.plan`), ``"pairs"``, or
    ``"auto"`` (default, :func:`resolve_method`).
    """
    method = resolve_method(method, feats.device)
    if kernel.ndim != 3 or kernel.shape[0] != kmap.kernel_volume:
        raise ValueError(f"kernel must be (K={kmap.kernel_volume}, Cin, Cout), got {tuple(kernel.shape)}")
    if feats.shape != (kmap.n_in, kernel.shape[1]):
        raise ValueError(f"features must be ({kmap.n_in}, {kernel.shape[1]}), got {tuple(feats.shape)}")
    if feats.dtype != kernel.dtype:
        raise ValueError(f"features ({feats.dtype}) and kernel ({kernel.dtype}) must have the same dtype")
    return SparseConvFunction.apply(feats.contiguous(), kernel.contiguous(), kmap, method)


def sparse_avg_pool(feats: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Mean over the existing inputs of each output row (MinkowskiAvgPooling): (n_in, C) -> (n_out, C).

    A gather-sum per output row (``embedding_bag``) in pair order, then division by the count.
    """
    rows, starts, counts = kmap.pool_bags()
    out = F.embedding_bag(rows, feats.contiguous(), starts, mode="sum")
    return out / counts.clamp(min=1).to(out.dtype)[:, None]
