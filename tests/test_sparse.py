"""cupid.sparse against dense / brute-force references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cupid.sparse import (SparseConv3d, SparseTensor, WindowPartition, build_neighbor_map, neighbor_map,
                          submanifold_conv3d,
                          sparse_cat, sparse_downsample, sparse_self_attention, sparse_subdivide, sparse_upsample,
                          sparse_windowed_self_attention, windowed_attention)
from cupid.sparse.conv import gathered_conv3d, per_offset_conv3d


def _random_sparse(batch: int = 2, res: int = 12, n: int = 300, channels: int = 5, seed: int = 0) -> SparseTensor:
    g = torch.Generator().manual_seed(seed)
    parts = []
    for b in range(batch):
        xyz = torch.unique(torch.randint(0, res, (n, 3), generator=g), dim=0)
        parts.append(torch.cat([torch.full((len(xyz), 1), b), xyz], 1))
    coords = torch.cat(parts).int()
    feats = torch.randn(coords.shape[0], channels, generator=g)
    return SparseTensor(feats, coords)


def _dense_conv_at_sites(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, res: int,
                         dilation: int = 1) -> torch.Tensor:
    dense = x.dense((res, res, res))  # [B, C, X, Y, Z]
    k = weight.shape[1]
    out = F.conv3d(dense, weight.permute(0, 4, 1, 2, 3), bias, padding=dilation * (k // 2), dilation=dilation)
    c = x.coords.long()
    return out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


@pytest.mark.parametrize("kernel", [3, 1])
def test_submanifold_conv_matches_dense_conv(kernel: int) -> None:
    x = _random_sparse()
    conv = SparseConv3d(5, 7, kernel)
    with torch.no_grad():
        conv.conv.bias.normal_()
        out = conv(x)
        ref = _dense_conv_at_sites(x, conv.conv.weight, conv.conv.bias, 12)
    assert torch.equal(out.coords, x.coords)
    assert (out.feats - ref).abs().max().item() < 1e-5


def test_conv_unsorted_rows_and_bfloat16() -> None:
    x = _random_sparse(batch=1, seed=3)
    perm = torch.randperm(x.coords.shape[0], generator=torch.Generator().manual_seed(1))
    xs = SparseTensor(x.feats[perm], x.coords[perm])
    conv = SparseConv3d(5, 6, 3)
    with torch.no_grad():
        ref = _dense_conv_at_sites(xs, conv.conv.weight, conv.conv.bias, 12)
        assert (conv(xs).feats - ref).abs().max().item() < 1e-5
        conv.to(torch.bfloat16)
        low = conv(xs.type(torch.bfloat16)).feats
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).norm() / ref.norm()).item() < 2e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("copy_max", [None, 0])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), (1, 1)])
def test_conv_kernels_match_dense_conv(kernel: int, dilation: int, copy_max: int | None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Both kernels against dense conv3d; im2col also with missing neighbours zeroed after the gather
    (copy_max 0: the path of inputs larger than GATHER_COPY_MAX_BYTES)."""
    import cupid.sparse.conv as conv_mod
    if copy_max is not None:
        monkeypatch.setattr(conv_mod, "GATHER_COPY_MAX_BYTES", copy_max)
    x = _random_sparse(batch=3, res=10, n=150, channels=6, seed=4)  # ~15% occupancy: many missing neighbours
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(5, kernel, kernel, kernel, 6, generator=g)
    bias = torch.randn(5, generator=g)
    nmap = build_neighbor_map(x.coords, kernel, dilation)
    n = x.coords.shape[0]
    row_bytes = kernel ** 3 * 6 * 4
    assert n % 7 != 0
    for b in (bias, None):
        ref = _dense_conv_at_sites(x, weight, b, 10, dilation)
        per = per_offset_conv3d(x.feats, nmap, weight, b)
        assert _rel(per, ref) < 1e-5
        # per-offset gathers in 3-row chunks (offsets' pair counts are not multiples of 3)
        assert _rel(per_offset_conv3d(x.feats, nmap, weight, b, 3 * 6 * 4), per) < 1e-6
        # one chunk, 7-row chunks (the last one short), 1-row chunks (budget below one row)
        for chunk in (None, 7 * row_bytes, 1):
            got = gathered_conv3d(x.feats, nmap, weight, b, chunk)
            assert got.shape == (n, 5) and got.dtype == torch.float32
            assert _rel(got, ref) < 1e-5 and _rel(got, per) < 1e-5
    # bfloat16 in, bfloat16 out; both paths agree with the float32 result loosely
    ref = _dense_conv_at_sites(x, weight, bias, 10, dilation)
    wl, bl, fl = weight.bfloat16(), bias.bfloat16(), x.feats.bfloat16()
    for got in (gathered_conv3d(fl, nmap, wl, bl, 7 * row_bytes // 2), per_offset_conv3d(fl, nmap, wl, bl, 3 * 6 * 2)):
        assert got.dtype == torch.bfloat16
        assert _rel(got, ref) < 2e-2


@pytest.mark.parametrize("path", ["gathered", "per_offset"])
def test_conv_dispatch_and_empty_input(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import cupid.sparse.conv as conv_mod
    monkeypatch.setattr(conv_mod, "GATHER_MAX_WIDTH", 1 << 30 if path == "gathered" else 0)
    calls: list[str] = []
    for name in ("gathered_conv3d", "per_offset_conv3d"):
        real = getattr(conv_mod, name)
        monkeypatch.setattr(conv_mod, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    x = _random_sparse(batch=2, res=8, n=60, channels=4, seed=5)
    conv = SparseConv3d(4, 3, 3)
    with torch.no_grad():
        out = conv(x)
        ref = _dense_conv_at_sites(x, conv.conv.weight, conv.conv.bias, 8)
        assert calls == [f"{path}_conv3d"]
        assert _rel(out.feats, ref) < 1e-5
        empty = SparseTensor(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.int32))
        nothing = conv(empty)
    assert nothing.feats.shape == (0, 3) and nothing.coords.shape == (0, 4)
    nmap = build_neighbor_map(empty.coords, 3)
    for kernel in (gathered_conv3d, per_offset_conv3d):
        assert kernel(empty.feats, nmap, conv.conv.weight, conv.conv.bias).shape == (0, 3)
    # kernel 1 is a plain matmul whatever the width
    assert not conv_mod.use_gathered(4, 3, build_neighbor_map(x.coords, 1))


@pytest.mark.parametrize("dense_table", [True, False])
def test_neighbor_map_pairs_and_caching(dense_table: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import cupid.sparse.neighbors as nb
    if not dense_table:
        monkeypatch.setattr(nb, "_DENSE_TABLE_MAX", 0)  # force the sort + searchsorted path
    x = _random_sparse(batch=2, res=6, n=80)
    nmap = build_neighbor_map(x.coords, 3)
    lookup = {tuple(c): i for i, c in enumerate(x.coords.tolist())}
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    want = 0
    for k, (a, b, c) in enumerate(offsets):
        got = set(zip(nmap.out_idx[k].tolist(), nmap.in_idx[k].tolist()))
        ref = set()
        for i, (bb, xx, yy, zz) in enumerate(x.coords.tolist()):
            j = lookup.get((bb, xx + a, yy + b, zz + c))
            if j is not None:
                ref.add((i, j))
        assert got == ref, f"offset {(a, b, c)}"
        want += len(ref)
        table = dict(enumerate(nmap.neighbor_table[:, k].tolist()))
        assert table == {i: dict(ref).get(i, len(table)) for i in range(len(table))}
    assert nmap.num_pairs == want
    assert nmap.neighbor_table is nmap.neighbor_table  # built once per map
    # cached per coordinate set: same tensor, derived tensors, and fresh tensors on the same coords
    first = neighbor_map(x)
    assert neighbor_map(x) is first
    assert neighbor_map(x.replace(x.feats * 2)) is first
    assert neighbor_map(SparseTensor(x.feats, x.coords)) is first
    moved = x.coords.clone()
    second = neighbor_map(SparseTensor(x.feats, moved))
    assert second is not first
    assert neighbor_map(SparseTensor(x.feats, moved)) is second
    moved[0, 1] += 1  # an in-place edit of the coordinates invalidates the cached map
    assert neighbor_map(SparseTensor(x.feats, moved)) is not second


def test_downsample_upsample_roundtrip() -> None:
    x = _random_sparse(batch=2, res=9, n=200, channels=3)
    down = sparse_downsample(x, 2)
    cells: dict[tuple, list] = {}
    for (b, i, j, k), f in zip(x.coords.tolist(), x.feats):
        cells.setdefault((b, i // 2, j // 2, k // 2), []).append(f)
    keys = sorted(cells)
    assert down.coords.tolist() == [list(k) for k in keys]
    # TRELLIS's pooling includes the zero initial value: sum / (count + 1)
    ref = torch.stack([torch.stack(cells[k]).sum(0) / (len(cells[k]) + 1) for k in keys])
    assert (down.feats - ref).abs().max().item() < 1e-6
    assert down.scale == (2, 2, 2)
    up = sparse_upsample(down.replace(down.feats + 1), 2)
    assert torch.equal(up.coords, x.coords) and up.scale == (1, 1, 1)
    lookup = {tuple(c): i for i, c in enumerate(down.coords.tolist())}
    rows = [lookup[(b, i // 2, j // 2, k // 2)] for b, i, j, k in x.coords.tolist()]
    assert torch.equal(up.feats, down.feats[rows] + 1)
    with pytest.raises(ValueError, match="matching sparse downsample"):
        sparse_upsample(x, 2)


def test_subdivide() -> None:
    x = _random_sparse(batch=2, res=5, n=20, channels=4)
    sub = sparse_subdivide(x)
    assert sub.feats.shape == (8 * x.feats.shape[0], 4)
    children = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    for i, (bb, xx, yy, zz) in enumerate(x.coords.tolist()):
        for j, (a, b, c) in enumerate(children):
            assert sub.coords[8 * i + j].tolist() == [bb, 2 * xx + a, 2 * yy + b, 2 * zz + c]
            assert torch.equal(sub.feats[8 * i + j], x.feats[i])
    assert sub.layout == [slice(s.start * 8, s.stop * 8) for s in x.layout]


@pytest.mark.parametrize("copy_max", [None, 0])
@pytest.mark.parametrize("cin,cout", [(6, 5), (160, 24)])
def test_conv_on_parents_equals_conv_of_the_subdivided_copy(cin: int, cout: int, copy_max: int | None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A conv over a subdivision, reading each child's features from its parent's row
    (`NeighborMap.on_parents`), equals the conv of the materialised 8× copy: both kernels (im2col for
    narrow layers, per-offset for wide ones), with and without bias, float32 and bfloat16."""
    import cupid.sparse.conv as conv_mod
    if copy_max is not None:
        monkeypatch.setattr(conv_mod, "GATHER_COPY_MAX_BYTES", copy_max)
    parents = _random_sparse(batch=2, res=6, n=40, channels=cin, seed=7)
    children = sparse_subdivide(parents)
    nmap = build_neighbor_map(children.coords, 3)
    on_parents = nmap.on_parents(8)
    assert on_parents.num_rows == children.coords.shape[0] and on_parents.num_in_rows == parents.feats.shape[0]
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(cout, 3, 3, 3, cin, generator=g)
    bias = torch.randn(cout, generator=g)
    for b in (bias, None):
        ref = per_offset_conv3d(children.feats, nmap, weight, b)
        for kernel in (gathered_conv3d, per_offset_conv3d):
            assert _rel(kernel(parents.feats, on_parents, weight, b), ref) < 1e-6
            # small chunks: a chunk ends inside a parent's group of children
            assert _rel(kernel(parents.feats, on_parents, weight, b, 3 * 27 * cin * 4), ref) < 1e-6
    for kernel in (gathered_conv3d, per_offset_conv3d):
        low = kernel(parents.feats.bfloat16(), on_parents, weight.bfloat16(), bias.bfloat16())
        assert low.dtype == torch.bfloat16 and _rel(low, per_offset_conv3d(children.feats, nmap, weight, bias)) < 2e-2
    conv = SparseConv3d(cin, cout, 3)
    with torch.no_grad():
        got = conv.forward_on_parents(parents, sparse_subdivide(parents.replace(parents.feats[:, :0])))
        assert torch.equal(got.coords, children.coords)
        assert _rel(got.feats, conv(children).feats) < 1e-6
        with pytest.raises(ValueError, match="8 per parent"):
            conv.forward_on_parents(parents, children[0])
        with pytest.raises(ValueError, match="already on parents"):
            on_parents.on_parents(8)
        with pytest.raises(ValueError, match="rows but the neighbour map expects"):
            submanifold_conv3d(children.feats, on_parents, weight, bias)


@pytest.mark.parametrize("channels,out_channels", [(64, 16), (32, 32)])
def test_subdivide_block_equals_the_subdivided_reference(channels: int, out_channels: int) -> None:
    """SparseSubdivideBlock3d's frugal forward (first conv on the parents, skip on the parents added in
    place) equals TRELLIS's formula out_layers(sub(act(x))) + skip(sub(x)), identity skip included."""
    from cupid.models.structured_latent_vae import SparseSubdivideBlock3d
    from cupid.sparse import SparseSubdivide

    torch.manual_seed(0)
    block = SparseSubdivideBlock3d(channels, 8, out_channels=out_channels, num_groups=8).eval()
    with torch.no_grad():
        for p in block.parameters():  # the last conv is zero-initialised: give every weight a value
            p.normal_(0.0, 0.2)
        x = _random_sparse(batch=2, res=8, n=60, channels=channels, seed=9)
        sub = SparseSubdivide()
        ref = block.out_layers(sub(block.act_layers(x))) + block.skip_connection(sub(x))
        got = block(x)
    assert torch.equal(got.coords, ref.coords)
    assert _rel(got.feats, ref.feats) < 1e-6


def test_group_norm_on_rows_equals_the_transposed_group_norm() -> None:
    """SparseGroupNorm(32) normalises each batch item's rows as torch's GroupNorm on the item's [1, C, n]
    transpose (TRELLIS's route), float32 straight on the rows, other dtypes through the transpose."""
    from cupid.sparse import SparseGroupNorm, SparseGroupNorm32

    x = _random_sparse(batch=3, res=8, n=90, channels=12, seed=11)
    x = x.replace(x.feats * 3.0 + 5.0)  # an offset mean, as real activations have
    norm = SparseGroupNorm(4, 12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        ref = torch.cat([torch.nn.functional.group_norm(x.feats[sl].t()[None], 4, norm.weight, norm.bias, norm.eps)[0].t()
                         for sl in x.layout])
        got = norm(x).feats
        assert _rel(got, ref) < 1e-6
        low = norm.to(torch.bfloat16)(x.type(torch.bfloat16)).feats
        assert low.dtype == torch.bfloat16 and _rel(low, ref) < 2e-2
        norm32 = SparseGroupNorm32(4, 12)
        norm32.load_state_dict(norm.float().state_dict())
        got32 = norm32(x.type(torch.bfloat16))
        assert got32.dtype == torch.bfloat16 and _rel(got32.feats, ref) < 2e-2


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w = torch.softmax(torch.einsum("qhc,khc->hqk", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    return torch.einsum("hqk,khc->qhc", w, v)


def _random_qkv(x: SparseTensor, heads: int = 2, dim: int = 8, seed: int = 0) -> SparseTensor:
    g = torch.Generator().manual_seed(seed)
    return x.replace(torch.randn(x.coords.shape[0], 3, heads, dim, generator=g))


def test_full_sparse_attention_per_item() -> None:
    qkv = _random_qkv(_random_sparse(batch=3, res=6, n=40))
    out = sparse_self_attention(qkv).feats
    for sl in qkv.layout:
        q, k, v = qkv.feats[sl].unbind(1)
        assert (out[sl] - _naive_attention(q, k, v)).abs().max().item() < 1e-5


@pytest.mark.parametrize("shift", [0, 2, (1, 3, 0)])
def test_swin_attention_matches_naive_windows(shift) -> None:
    qkv = _random_qkv(_random_sparse(batch=2, res=11, n=250), seed=1)
    window = 4
    out = sparse_windowed_self_attention(qkv, window, shift).feats
    s = (shift,) * 3 if isinstance(shift, int) else shift
    groups: dict[tuple, list[int]] = {}
    for i, (b, xx, yy, zz) in enumerate(qkv.coords.tolist()):
        groups.setdefault((b, (xx + s[0]) // window, (yy + s[1]) // window, (zz + s[2]) // window), []).append(i)
    ref = torch.empty_like(out)
    for rows in groups.values():
        q, k, v = qkv.feats[rows].unbind(1)
        ref[rows] = _naive_attention(q, k, v)
    assert (out - ref).abs().max().item() < 1e-5
    # many small padding buckets give the same result
    part = WindowPartition(qkv.coords, window, s, max_elems=64)
    assert len(part.buckets) > 3
    assert (windowed_attention(qkv.feats, part) - ref).abs().max().item() < 1e-5


def test_batch_broadcast_and_cat() -> None:
    x = _random_sparse(batch=2, res=5, n=10, channels=3)
    per_item = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    y = x * per_item + 1
    rows = x.coords[:, 0].long()
    assert torch.equal(y.feats, x.feats * per_item[rows] + 1)
    both = sparse_cat([x, x])
    assert both.batch_size == 4 and both.coords[:, 0].max().item() == 3
    assert torch.equal(both[3].feats, x[1].feats)
    with pytest.raises(ValueError, match="coords must be"):
        SparseTensor(torch.zeros(2, 1), torch.zeros(2, 3, dtype=torch.int32))
