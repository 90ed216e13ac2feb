"""Cross-attention on an all-zero context (guidance's unconditional pass) is a constant: the items with
such a context get it without attending, and every output equals the full computation."""
from __future__ import annotations

import pytest
import torch

from cupid.modules.attention import MultiHeadAttention, empty_context_items
from cupid.sparse import SparseTensor
from cupid.sparse.attention import SparseMultiHeadAttention


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # biases too: a zero context then still has keys and values
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def _rows_seen(linear: torch.nn.Linear) -> list[int]:
    seen: list[int] = []
    linear.register_forward_hook(lambda m, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    return seen


def _contexts(g: torch.Generator) -> torch.Tensor:
    ctx = torch.randn(3, 5, 12, generator=g)
    ctx[1] = 0.0  # the unconditional item, between two conditioned ones
    return ctx


def test_empty_context_items() -> None:
    ctx = torch.ones(4, 3, 2)
    ctx[1] = 0.0
    ctx[3, 2, 1] = 0.0  # one zero entry is not an empty context
    assert empty_context_items(ctx).tolist() == [False, True, False, False]


@pytest.mark.parametrize("qk_rms_norm", [False, True])
def test_dense_cross_attention_with_an_empty_context(qk_rms_norm: bool) -> None:
    attn = _randomised(MultiHeadAttention(16, 4, ctx_channels=12, type="cross", qk_rms_norm=qk_rms_norm), 0)
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(3, 7, 16, generator=g), _contexts(g)
    q_rows = _rows_seen(attn.to_q)
    with torch.no_grad():
        got = attn(x, ctx)
        ref = attn._attend(x, ctx)  # every item through the full computation
        assert q_rows[0] == 2 * 7  # the empty item's queries were never projected
        assert (got - ref).abs().max().item() < 1e-5
        assert torch.allclose(got[1], got[1, :1].expand(7, -1))  # the same row for every query
        assert ref[1].std(0).max().item() < 1e-5                 # as the full computation says
        only_empty = attn(x[1:2], ctx[1:2])                      # the release's separate unconditional pass
        assert (only_empty - ref[1:2]).abs().max().item() < 1e-5
        low = attn.to(torch.bfloat16)(x.bfloat16(), ctx.bfloat16())
    assert low.dtype == torch.bfloat16 and ((low.float() - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.parametrize("qk_rms_norm", [False, True])
def test_sparse_cross_attention_with_an_empty_context(qk_rms_norm: bool) -> None:
    attn = _randomised(SparseMultiHeadAttention(16, 4, ctx_channels=12, type="cross", qk_rms_norm=qk_rms_norm), 2)
    g = torch.Generator().manual_seed(3)
    lens = [5, 9, 4]
    coords = torch.cat([torch.cat([torch.full((n, 1), b), torch.randperm(64, generator=g)[:n, None].repeat(1, 3)], 1)
                        for b, n in enumerate(lens)]).int()
    x = SparseTensor(torch.randn(sum(lens), 16, generator=g), coords)
    ctx = _contexts(g)
    q_rows = _rows_seen(attn.to_q)
    with torch.no_grad():
        got = attn(x, ctx).feats
        ref = attn._cross_rows(x.feats, lens, ctx)
        assert q_rows[0] == lens[0] + lens[2]
        assert (got - ref).abs().max().item() < 1e-5
        middle = got[lens[0]:lens[0] + lens[1]]
        assert torch.allclose(middle, middle[:1].expand(lens[1], -1))
        ctx[:] = 0.0  # every item unconditional
        assert (attn(x, ctx).feats - attn._cross_rows(x.feats, lens, ctx)).abs().max().item() < 1e-5
