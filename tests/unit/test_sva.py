"""The SVA connector: window layout, window restriction, a dense reference, padding masks."""

from __future__ import annotations

import math

import pytest
import torch

from cambrian_train.config.schema import ConnectorConfig
from cambrian_train.models.connectors.sva import (
    SVAConnector,
    VisionCrossAttentionLayer,
    valid_token_mask,
    window_partition,
)

WIDTH = 32


def make_connector(query_num=4, depth=2, sides=(8, 4), groups=None):
    torch.manual_seed(0)
    cfg = ConnectorConfig(
        name="sva",
        vision_hidden_size=WIDTH,
        num_query_group=len(groups or [query_num]),
        query_num_list=list(groups or [query_num]),
        connector_depth=depth,
        num_heads=4,
    )
    names = [f"t{i}" for i in range(len(sides))]
    return SVAConnector(
        cfg,
        tower_sizes={n: 12 + 4 * i for i, n in enumerate(names)},
        tower_tokens={n: s * s for n, s in zip(names, sides)},
        llm_hidden_size=24,
        image_token_len=query_num,
    ).eval()


def features(conn, n=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(n, side * side, 12 + 4 * i, generator=gen)
        for i, (name, side) in enumerate(zip(conn.tower_names, conn.tower_sides))
    }


def test_window_partition_layout():
    grid = torch.arange(16.0).reshape(1, 16, 1)  # 4x4, value = row*4 + col
    windows = window_partition(grid, 2)[..., 0]  # [4, 4]
    assert windows.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    with pytest.raises(ValueError, match="query grid side 3 does not divide tower grid side 4"):
        window_partition(grid, 3)


def test_output_shape_and_groups():
    conn = make_connector(query_num=16, groups=[16, 4])
    tokens, ctx = conn(features(conn))
    assert tokens.shape == (2, 16, 24)
    assert [f.shape for f in ctx.features] == [(2, 64, WIDTH), (2, 16, WIDTH)]


def test_query_sees_only_its_window():
    conn = make_connector(query_num=4)  # 2x2 queries; windows 4x4 (tower 0) and 2x2 (tower 1)
    for layer in conn.vision_sampler_0.layers:
        torch.nn.init.zeros_(layer.proj_context.weight)  # no global context
    feats = features(conn, n=1)
    base, _ = conn(feats)
    changed = {k: v.clone() for k, v in feats.items()}
    for name, side in zip(conn.tower_names, conn.tower_sides):
        grid = changed[name].reshape(1, side, side, -1)
        half = side // 2
        grid[:, half:, :] += 5.0  # bottom windows (queries 2 and 3)
        grid[:, :half, half:] -= 3.0  # top-right window (query 1)
    out, _ = conn(changed)
    torch.testing.assert_close(out[0, 0], base[0, 0])  # query (0, 0): its windows untouched
    for q in (1, 2, 3):
        assert not torch.allclose(out[0, q], base[0, q])


def dense_layer(layer, queries, context, feats, valid, side, num_heads):
    """The same maths with full (unwindowed) keys and an explicit window mask."""
    n, q, _ = queries.shape
    x = layer.proj_in(
        torch.cat([queries, layer.proj_context(context)[:, None].expand(-1, q, -1)], -1)
    )
    attn = layer.cross_attn
    qh = attn.q_proj(x).reshape(n, q, num_heads, -1).transpose(1, 2)  # [N, H, q, hd]
    keys, values, allowed = [], [], []
    for t, (f, v) in enumerate(zip(feats, valid)):
        big = math.isqrt(f.shape[1])
        w = big // side
        r, c = torch.meshgrid(torch.arange(big), torch.arange(big), indexing="ij")
        local = ((r % w) * w + (c % w)).flatten()
        window = ((r // w) * side + (c // w)).flatten()
        kv = f + getattr(layer, f"pos_embed_{t}")[local] if w > 1 else f
        keys.append(getattr(attn, f"k_proj_{t}")(kv))
        values.append(getattr(attn, f"v_proj_{t}")(kv))
        allowed.append((window[None, :] == torch.arange(q)[:, None])[None] & v[:, None, :])
    k = torch.cat(keys, 1).reshape(n, -1, num_heads, qh.shape[-1]).transpose(1, 2)
    vv = torch.cat(values, 1).reshape(n, -1, num_heads, qh.shape[-1]).transpose(1, 2)
    mask = torch.cat(allowed, -1)[:, None]  # [N, 1, q, K]
    scores = qh @ k.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ vv).transpose(1, 2).reshape(n, q, -1)
    x = x + attn.o_proj(out)
    return layer.proj_out(layer.norm(x)) + queries


def test_matches_dense_masked_attention():
    conn = make_connector(query_num=4, depth=1)
    feats = features(conn)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.25, 1.0, 0.75]])
    ctx = conn.tower_context(feats, boxes)
    layer: VisionCrossAttentionLayer = conn.vision_sampler_0.layers[0]
    side, n = 2, 2
    queries = torch.randn(n, side * side, WIDTH)
    context = torch.randn(n, WIDTH)
    windows, masks = ctx.windows(side)
    fast = layer(
        queries.reshape(-1, WIDTH), context.repeat_interleave(side * side, 0), windows, masks
    ).reshape(n, side * side, WIDTH)
    dense = dense_layer(layer, queries, context, ctx.features, ctx.valid, side, 4)
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-4)


def test_valid_mask_and_fully_padded_windows_stay_finite():
    mask = valid_token_mask(torch.tensor([[0.0, 0.25, 1.0, 0.75]]), 4)
    assert mask.reshape(4, 4).tolist() == [[False] * 4, [True] * 4, [True] * 4, [False] * 4]
    conn = make_connector(query_num=16, depth=2, sides=(8, 4))
    feats = features(conn, n=1)
    thin = torch.tensor([[0.0, 0.45, 1.0, 0.55]])  # a very wide image: most windows all padding
    tokens, _ = conn(feats, thin)
    assert torch.isfinite(tokens).all()
    # padded features do not matter
    changed = {k: v.clone() for k, v in feats.items()}
    for name, side in zip(conn.tower_names, conn.tower_sides):
        valid = valid_token_mask(thin, side)[0]
        changed[name][0, ~valid] = 100.0
    torch.testing.assert_close(conn(changed, thin)[0], tokens)


def test_sva_parameters_are_queries_and_samplers():
    conn = make_connector()
    names = {n for n, p in conn.named_parameters() if any(p is q for q in conn.sva_parameters())}
    assert all(n.startswith(("vision_query", "vision_sampler_")) for n in names)
    assert "vision_query" in names
    assert not any(n.startswith(("mm_projector", "mm_projector_aux")) for n in names)
