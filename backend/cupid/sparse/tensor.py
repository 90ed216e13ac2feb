"""`SparseTensor`: features on the active voxels of a batch of 3D grids.

Rows are grouped per batch item (all rows of item 0 first, then item 1, ...), which lets attention and
norms work on contiguous slices. A tensor also carries a `scale` (voxel size relative to the input grid)
and a `spatial_cache` dict shared with every tensor derived from it by `replace`, so neighbour maps,
window partitions and the down/upsample bookkeeping are computed once per coordinate set.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, Iterable, Sequence

import torch

Scale = tuple  # tuple[Fraction, Fraction, Fraction]


def _as_scale(scale: Iterable) -> Scale:
    return tuple(Fraction(s) for s in scale)


class SparseTensor:
    """Sparse voxel features: `feats` [N, ...] and int32 `coords` [N, 4] = (batch, x, y, z)."""

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        shape: Sequence[int] | None = None,
        layout: list[slice] | None = None,
        *,
        scale: Iterable = (1, 1, 1),
        spatial_cache: dict | None = None,
    ):
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be [N, 4] (batch, x, y, z), got {tuple(coords.shape)}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats has {feats.shape[0]} rows but coords has {coords.shape[0]}")
        if coords.dtype != torch.int32:
            if coords.is_floating_point():
                raise ValueError(f"coords must be integers, got {coords.dtype}")
            coords = coords.to(torch.int32)
        self.feats = feats
        self.coords = coords
        if shape is None:
            batch = int(coords[:, 0].max().item()) + 1 if coords.shape[0] > 0 else 0
        else:
            batch = int(shape[0])
        self._batch_size = batch
        self._layout = layout
        self._batch_ids: torch.Tensor | None = None
        self._scale = _as_scale(scale)
        self._spatial_cache = {} if spatial_cache is None else spatial_cache

    # ------------------------------------------------------------------ basic properties
    @property
    def shape(self) -> torch.Size:
        return torch.Size([self._batch_size, *self.feats.shape[1:]])

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def scale(self) -> Scale:
        return self._scale

    def dim(self) -> int:
        return len(self.shape)

    @property
    def layout(self) -> list[slice]:
        """Row slice of each batch item (rows must be grouped by batch index)."""
        if self._layout is None:
            counts = torch.bincount(self.coords[:, 0].long(), minlength=self._batch_size).tolist()
            layout, start = [], 0
            for c in counts[: self._batch_size]:
                layout.append(slice(start, start + c))
                start += c
            self._layout = layout
        return self._layout

    @property
    def batch_ids(self) -> torch.Tensor:
        """Batch index of every row as int64 (cached; used for per-item broadcasting)."""
        if self._batch_ids is None:
            self._batch_ids = self.coords[:, 0].long()
        return self._batch_ids

    def seq_lens(self) -> list[int]:
        return [s.stop - s.start for s in self.layout]

    # ------------------------------------------------------------------ derivation
    def replace(self, feats: torch.Tensor, coords: torch.Tensor | None = None) -> "SparseTensor":
        """Same voxels (or `coords`, same row grouping) with new features; shares the spatial cache."""
        if coords is None or coords is self.coords:
            out = SparseTensor(
                feats, self.coords, (self._batch_size,), self._layout,
                scale=self._scale, spatial_cache=self._spatial_cache,
            )
            out._batch_ids = self._batch_ids
            return out
        return SparseTensor(feats, coords, (self._batch_size,), self._layout, scale=self._scale)

    def type(self, dtype: torch.dtype) -> "SparseTensor":
        return self if self.feats.dtype == dtype else self.replace(self.feats.type(dtype))

    def float(self) -> "SparseTensor":
        return self.type(torch.float32)

    def half(self) -> "SparseTensor":
        return self.type(torch.float16)

    def to(self, *args: Any, **kwargs: Any) -> "SparseTensor":
        """Like `Tensor.to`: a dtype changes the features, a device moves both features and coords."""
        feats = self.feats.to(*args, **kwargs)
        if feats.device != self.coords.device:
            out = SparseTensor(feats, self.coords.to(feats.device), (self._batch_size,), self._layout, scale=self._scale)
            return out
        return self.replace(feats)

    def cpu(self) -> "SparseTensor":
        return self.to("cpu")

    def detach(self) -> "SparseTensor":
        return self.replace(self.feats.detach())

    def reshape(self, *shape: int) -> "SparseTensor":
        return self.replace(self.feats.reshape(self.feats.shape[0], *shape))

    def unbind(self, dim: int) -> list["SparseTensor"]:
        return sparse_unbind(self, dim)

    def dense(self, spatial_shape: Sequence[int] | None = None) -> torch.Tensor:
        """Dense [B, C..., X, Y, Z] grid with zeros at inactive voxels."""
        c = self.coords.long()
        if spatial_shape is None:
            spatial_shape = (c[:, 1:].max(0).values + 1).tolist()
        out = self.feats.new_zeros(self._batch_size, *spatial_shape, *self.feats.shape[1:])
        out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = self.feats
        nd = self.feats.dim() - 1
        return out.permute(0, *range(4, 4 + nd), 1, 2, 3).contiguous()

    def __getitem__(self, idx: int | slice | torch.Tensor | list) -> "SparseTensor":
        """Select batch items (renumbered from 0)."""
        if isinstance(idx, int):
            ids = [idx]
        elif isinstance(idx, slice):
            ids = list(range(*idx.indices(self._batch_size)))
        elif isinstance(idx, torch.Tensor):
            ids = (idx.nonzero().squeeze(1) if idx.dtype == torch.bool else idx).tolist()
        else:
            ids = list(idx)
        coords, feats = [], []
        for new, old in enumerate(ids):
            c = self.coords[self.layout[old]].clone()
            c[:, 0] = new
            coords.append(c)
            feats.append(self.feats[self.layout[old]])
        return SparseTensor(torch.cat(feats, 0), torch.cat(coords, 0), (len(ids),))

    # ------------------------------------------------------------------ arithmetic
    def _broadcast(self, other: torch.Tensor) -> torch.Tensor:
        """Per-batch-item tensors ([B, ...] matching the shape) are spread to rows; others broadcast."""
        if other.dim() >= 1 and other.dim() == len(self.shape) and other.shape[0] == self._batch_size:
            try:
                torch.broadcast_shapes(other.shape, self.shape)
                return other[self.batch_ids]
            except RuntimeError:
                pass
        return other

    def _elementwise(self, other: Any, op: Callable) -> "SparseTensor":
        if isinstance(other, SparseTensor):
            other = other.feats
        elif isinstance(other, torch.Tensor):
            other = self._broadcast(other)
        return self.replace(op(self.feats, other))

    def __neg__(self) -> "SparseTensor":
        return self.replace(-self.feats)

    def __add__(self, other: Any) -> "SparseTensor":
        return self._elementwise(other, torch.add)

    __radd__ = __add__

    def __sub__(self, other: Any) -> "SparseTensor":
        return self._elementwise(other, torch.sub)

    def __rsub__(self, other: Any) -> "SparseTensor":
        return self._elementwise(other, lambda a, b: b - a)

    def __mul__(self, other: Any) -> "SparseTensor":
        return self._elementwise(other, torch.mul)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "SparseTensor":
        return self._elementwise(other, torch.div)

    def __rtruediv__(self, other: Any) -> "SparseTensor":
        return self._elementwise(other, lambda a, b: b / a)

    # ------------------------------------------------------------------ spatial cache
    def register_spatial_cache(self, key: str, value: Any) -> None:
        self._spatial_cache.setdefault(str(self._scale), {})[key] = value

    def get_spatial_cache(self, key: str) -> Any:
        return self._spatial_cache.get(str(self._scale), {}).get(key)

    def derived(self, feats: torch.Tensor, coords: torch.Tensor, scale: Iterable,
                layout: list[slice] | None = None) -> "SparseTensor":
        """A tensor on other voxels/scale that keeps sharing this tensor's spatial cache."""
        return SparseTensor(feats, coords, (self._batch_size,), layout, scale=scale,
                            spatial_cache=self._spatial_cache)

    def __repr__(self) -> str:
        return (f"SparseTensor(shape={tuple(self.shape)}, rows={self.feats.shape[0]}, "
                f"dtype={self.dtype}, scale={tuple(str(s) for s in self._scale)})")


def sparse_batch_broadcast(x: SparseTensor, other: torch.Tensor) -> torch.Tensor:
    """Row-wise copy of a per-batch-item tensor [B, ...]."""
    return other[x.batch_ids]


def sparse_batch_op(x: SparseTensor, other: torch.Tensor, op: Callable = torch.add) -> SparseTensor:
    return x.replace(op(x.feats, sparse_batch_broadcast(x, other)))


def sparse_cat(inputs: list[SparseTensor], dim: int = 0) -> SparseTensor:
    """dim=0 stacks batches (renumbering batch indices); other dims concatenate features."""
    if dim == 0:
        coords, start = [], 0
        for t in inputs:
            c = t.coords.clone()
            c[:, 0] += start
            start += t.batch_size
            coords.append(c)
        return SparseTensor(torch.cat([t.feats for t in inputs], 0), torch.cat(coords, 0), (start,))
    return inputs[0].replace(torch.cat([t.feats for t in inputs], dim=dim))


def sparse_unbind(x: SparseTensor, dim: int) -> list[SparseTensor]:
    if dim == 0:
        return [x[i] for i in range(x.batch_size)]
    return [x.replace(f) for f in x.feats.unbind(dim)]
