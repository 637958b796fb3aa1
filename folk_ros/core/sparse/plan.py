"""Gather plans: a kernel map laid out for batched matmuls and gather-sums (no scatter).

A sparse convolution ``out[o] = sum_k in[i] @ W[k]`` over the pairs ``(i, o)`` of
each kernel offset ``k`` is computed here as

1. one gather ``G = in[in_slots]`` of every pair into a padded *slot* layout:
   offsets sorted by pair count are grouped so that each group's offsets have
   nearly the same count (the largest <= ``1 / GROUP_RATIO`` times the
   smallest); every offset of a group gets ``M`` rows (its pairs, then padding);
2. one ``bmm`` per group, ``(g, M, Cin) x (g, Cin, Cout)`` (1-3 groups per map
   in practice, padding overhead under 10 %);
3. one gather-sum per output row over its slots (``F.embedding_bag``, mode sum),
   the terms of a row summed from zero in the order of the pair form (centre
   offset first, then kernel offsets ascending), so both forms give the same
   floating-point result.

Every step is a gather or a dense matmul: no ``index_add_`` / ``scatter_add_``
(their CPU kernels sort the indices and are the slowest part of the pair form),
and a constant number of kernel launches per convolution instead of three per
offset.  The same layout read the other way gives the input gradient (bags per
input row) and, with ``G^T`` per group, the kernel gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP_RATIO = 0.75
"""An offset joins the current group while its pair count >= GROUP_RATIO x the group's largest."""


@dataclass(frozen=True, eq=False)
class GatherPlan:
    """Slot layout of one kernel map (``R`` slots, ``E`` pairs, ``G`` offsets with pairs).

    ``groups`` holds ``(first, g, rows, start)``: offsets ``offsets[first:first+g]``
    use slots ``start .. start + g*rows`` (offset ``first + j`` at
    ``start + j*rows``, pairs first, then padding).  ``in_slots`` / ``out_slots``
    (R,) int64 are the input / output row of each slot (0 on padding slots,
    listed in ``pad_slots`` (P,)).  ``out_bag`` (E,) lists the slots of each output
    row, rows ascending and within a row offset ``first_k`` first, then kernel
    offsets ascending, starting at ``out_bag_offsets`` (n_out,); ``in_bag`` /
    ``in_bag_offsets`` (n_in,) likewise per input row.
    """

    groups: tuple[tuple[int, int, int, int], ...]
    offsets: torch.Tensor          # (G,) int64 kernel offsets in slot order
    in_slots: torch.Tensor         # (R,) int64
    out_slots: torch.Tensor        # (R,) int64
    pad_slots: torch.Tensor        # (P,) int64
    out_bag: torch.Tensor          # (E,) int64
    out_bag_offsets: torch.Tensor  # (n_out,) int64
    in_bag: torch.Tensor           # (E,) int64
    in_bag_offsets: torch.Tensor   # (n_in,) int64
    n_in: int
    n_out: int

    @property
    def num_slots(self) -> int:
        return self.in_slots.numel()

    def transposed(self) -> "GatherPlan":
        """The plan of the transposed map (inputs and outputs swapped; same groups and slots)."""
        return GatherPlan(self.groups, self.offsets, self.out_slots, self.in_slots, self.pad_slots,
                          self.in_bag, self.in_bag_offsets, self.out_bag, self.out_bag_offsets,
                          self.n_out, self.n_in)


def group_offsets(counts: list[int], ratio: float = GROUP_RATIO) -> list[tuple[list[int], int]]:
    """Offsets with pairs, largest count first, in groups ``(offsets, rows)``.

    Ties keep ascending offset order; a new group starts when a count drops below
    ``ratio`` times the group's first (largest) count, which is the group's rows.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    ks = sorted((k for k, c in enumerate(counts) if c > 0), key=lambda k: (-counts[k], k))
    groups: list[tuple[list[int], int]] = []
    for k in ks:
        if groups and counts[k] >= ratio * groups[-1][1]:
            groups[-1][0].append(k)
        else:
            groups.append(([k], counts[k]))
    return groups


def bags_by_row(rows: torch.Tensor, k_of: torch.Tensor, values: torch.Tensor, n: int,
                volume: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group ``values`` (E,) by ``rows`` (E,), ordered by ``k_of`` (in ``[0, volume)``) within a row.

    Each (row, k) holds at most one pair, so a dense ``(n, volume)`` table
    filled by one indexed write and read back in row-major order does the
    grouping without a sort (the table is a temporary ``n * volume`` int64).
    ``values`` must be >= 0.  Returns ``(values in row order (E,), start of each
    row (n,), count of each row (n,))``, all int64.
    """
    table = torch.full((n, volume), -1, dtype=torch.int64, device=values.device)
    table[rows, k_of] = values
    filled = table >= 0
    counts = filled.sum(1)
    return table[filled], torch.cumsum(counts, 0) - counts, counts


def build_plan(in_idx: torch.Tensor, out_idx: torch.Tensor, ptr: tuple[int, ...], n_in: int, n_out: int,
               first_k: int = -1, ratio: float = GROUP_RATIO) -> GatherPlan:
    """The :class:`GatherPlan` of the pairs ``in_idx[ptr[k]:ptr[k+1]] -> out_idx[...]`` of offset ``k``.

    ``first_k``: offset summed first in every row (the pair form's centre offset), or -1.
    """
    dev = in_idx.device
    volume = len(ptr) - 1
    counts = [ptr[k + 1] - ptr[k] for k in range(volume)]
    groups, order, base = [], [], [0] * volume
    start = 0
    for ks, rows in group_offsets(counts, ratio):
        groups.append((len(order), len(ks), rows, start))
        for j, k in enumerate(ks):
            base[k] = start + j * rows
        order += ks
        start += len(ks) * rows
    num_slots = start
    # slot of every pair (pairs are stored grouped by offset: pair e of offset k is ptr[k] + j)
    k_of = torch.repeat_interleave(torch.arange(volume, device=dev), torch.tensor(counts, device=dev))
    pair_slot = (torch.tensor(base, device=dev)[k_of] + torch.arange(len(in_idx), device=dev)
                 - torch.tensor(ptr[:-1], device=dev)[k_of])
    ins, outs = in_idx, out_idx
    in_slots = torch.zeros(num_slots, dtype=torch.int64, device=dev)
    out_slots = torch.zeros(num_slots, dtype=torch.int64, device=dev)
    in_slots[pair_slot] = ins
    out_slots[pair_slot] = outs
    pad = torch.ones(num_slots, dtype=torch.bool, device=dev)
    pad[pair_slot] = False
    if first_k >= 0:   # bag order: first_k, then the others ascending
        rank = torch.arange(volume, device=dev) + 1
        rank[first_k + 1:] -= 1
        rank[first_k] = 0
        k_of = rank[k_of]
    out_bag, out_bag_offsets, _ = bags_by_row(outs, k_of, pair_slot, n_out, volume)
    in_bag, in_bag_offsets, _ = bags_by_row(ins, k_of, pair_slot, n_in, volume)
    return GatherPlan(tuple(groups), torch.tensor(order, dtype=torch.int64, device=dev), in_slots, out_slots,
                      torch.nonzero(pad).flatten(), out_bag, out_bag_offsets, in_bag, in_bag_offsets,
                      n_in, n_out)
