"""Neighbour maps for submanifold convolution, built with sort + searchsorted on linearised coordinates.

For a kernel of size k (odd) and every kernel offset (a, b, c) in row-major order — the order of the
spconv weight layout [Cout, kx, ky, kz, Cin] — the map lists the pairs (output row i, input row j) with
coords[j] = coords[i] + (a, b, c) - k//2 (cross-correlation, as spconv and `torch.nn.functional.conv3d`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch


@dataclass
class NeighborMap:
    """Pairs per kernel offset; `center` is the identity offset handled as a plain matmul.

    `in_group` > 1 (see `on_parents`): the input features are stored once per parent voxel, each parent
    standing for `in_group` consecutive rows of the grid the map was built on (a subdivided grid), so
    in_idx index parents and the centre offset maps output row i to input row i // in_group.
    """

    kernel_size: int
    num_rows: int
    out_idx: list[torch.Tensor]  # per offset, int64 [P_k]
    in_idx: list[torch.Tensor]   # per offset, int64 [P_k]
    center: int
    in_group: int = 1
    _table: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_in_rows(self) -> int:
        """Rows of the input features (the missing-neighbour marker of `neighbor_table`)."""
        return self.num_rows // self.in_group

    def on_parents(self, group: int) -> "NeighborMap":
        """This map for input features stored per parent: the map's grid is a subdivision whose rows
        parent*group ... parent*group + group-1 are one parent's children (`sparse_subdivide`'s order),
        every child carrying its parent's features. A convolution over the children then gathers from
        the parents' rows and never materialises the `group`-times larger copy."""
        if self.in_group != 1:
            raise ValueError("the map is already on parents")
        if group < 1 or self.num_rows % group:
            raise ValueError(f"{self.num_rows} rows are not whole groups of {group}")
        return NeighborMap(self.kernel_size, self.num_rows, self.out_idx,
                           [torch.div(t, group, rounding_mode="floor") for t in self.in_idx], self.center, group)

    @property
    def num_pairs(self) -> int:
        return int(sum(t.numel() for t in self.out_idx))

    @property
    def neighbor_table(self) -> torch.Tensor:
        """int64 [N, k³]: input row of each output row's neighbour per offset, `num_in_rows` where it is
        missing.

        That index is a zero row appended to the input features, so one `index_select` gathers a whole
        im2col block. Built on first use and kept: the map is cached across sampler steps.
        """
        if self._table is None:
            table = torch.full((self.num_rows, len(self.out_idx)), self.num_in_rows, dtype=torch.long,
                               device=self.out_idx[self.center].device)
            for k, (outs, ins) in enumerate(zip(self.out_idx, self.in_idx)):
                if outs.numel():  # column by column: no temporaries as large as the table
                    table[:, k].index_copy_(0, outs, ins)
            self._table = table
        return self._table


_DENSE_TABLE_MAX = 1 << 25  # grid cells (int64 entries) up to which a dense lookup table is used


def kernel_offsets(kernel_size: int, dilation: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """[k³, 3] offsets in the row-major order of the spconv kernel dimensions (x slowest, z fastest)."""
    r = torch.arange(kernel_size, device=device) - kernel_size // 2
    g = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
    return g * dilation


def build_neighbor_map(coords: torch.Tensor, kernel_size: int = 3, dilation: int = 1) -> NeighborMap:
    """Vectorised neighbour search over linearised (batch, x, y, z) keys for all offsets at once.

    Small grids use a dense key -> row table (a perfect hash); large ones sort the keys and searchsorted.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"submanifold convolution needs an odd kernel size, got {kernel_size}")
    n = coords.shape[0]
    device = coords.device
    k3 = kernel_size ** 3
    center = k3 // 2
    if kernel_size == 1 or n == 0:
        ident = torch.arange(n, device=device)
        empty = torch.empty(0, dtype=torch.long, device=device)
        outs = [empty] * k3
        ins = [empty] * k3
        outs[center] = ident
        ins[center] = ident
        return NeighborMap(kernel_size, n, outs, ins, center)
    pad = (kernel_size // 2) * dilation
    c = coords.long()
    xyz = c[:, 1:] - c[:, 1:].min(0).values + pad
    size = xyz.max(0).values + 1 + pad  # room for the largest offset on every axis
    sx, sy, sz = (int(v) for v in size.tolist())
    nb = int(c[:, 0].max().item()) + 1
    key = ((c[:, 0] * sx + xyz[:, 0]) * sy + xyz[:, 1]) * sz + xyz[:, 2]
    off = kernel_offsets(kernel_size, dilation, device)
    delta = (off[:, 0] * sy + off[:, 1]) * sz + off[:, 2]  # [k³]
    query = key.unsqueeze(0) + delta.unsqueeze(1)  # [k³, N]
    cells = nb * sx * sy * sz
    if cells <= _DENSE_TABLE_MAX:
        # perfect hash: a dense table of row indices over the padded grid
        table = torch.full((cells,), -1, dtype=torch.long, device=device)
        table[key] = torch.arange(n, device=device)
        in_rows = table[query]
        found = in_rows >= 0
    else:
        sorted_key, order = torch.sort(key)
        pos = torch.searchsorted(sorted_key, query).clamp_(max=n - 1)
        found = sorted_key[pos] == query
        in_rows = order[pos]
    found[center] = False
    kk, rows = found.nonzero(as_tuple=True)  # sorted by offset, then output row
    ins_all = in_rows[kk, rows]
    counts = torch.bincount(kk, minlength=k3).tolist()
    outs = list(torch.split(rows, counts))
    ins = list(torch.split(ins_all, counts))
    ident = torch.arange(n, device=device)
    outs[center] = ident
    ins[center] = ident
    return NeighborMap(kernel_size, n, outs, ins, center)


# Maps for coordinate tensors seen recently, keyed by identity (the sampler reuses one coords tensor
# across its steps, each step building fresh SparseTensors). Entries die with their coords tensor.
_RECENT: dict[tuple[int, int, int], tuple[weakref.ref, int, NeighborMap]] = {}
_RECENT_MAX = 16


def neighbor_map(x, kernel_size: int = 3, dilation: int = 1) -> NeighborMap:
    """Neighbour map of a SparseTensor, from its spatial cache, the recent-coords cache, or built."""
    key = f"submconv_nmap_k{kernel_size}_d{dilation}"
    cached = x.get_spatial_cache(key)
    if cached is not None and cached[0] is x.coords:
        return cached[1]
    coords = x.coords
    if cached is not None and cached[1].num_rows == coords.shape[0] and torch.equal(cached[0], coords):
        return cached[1]
    rkey = (id(coords), kernel_size, dilation)
    hit = _RECENT.get(rkey)
    if hit is not None and hit[0]() is coords and hit[1] == coords._version:
        nmap = hit[2]
    else:
        nmap = build_neighbor_map(coords, kernel_size, dilation)
        for k in [k for k, v in _RECENT.items() if v[0]() is None]:
            del _RECENT[k]
        if len(_RECENT) >= _RECENT_MAX:
            del _RECENT[next(iter(_RECENT))]
        try:
            _RECENT[rkey] = (weakref.ref(coords), coords._version, nmap)
        except TypeError:
            pass
    x.register_spatial_cache(key, (coords, nmap))
    return nmap
