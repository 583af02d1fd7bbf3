"""The SVA connector: window layout, window restriction, a dense reference, padding masks, and
the fast attention against the computation it replaced (tests/unit/sva_reference.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cambrian_train.config.schema import ConnectorConfig
from cambrian_train.models.connectors import sva
from cambrian_train.models.connectors.sva import (
    SVAConnector,
    VisionCrossAttentionLayer,
    valid_token_mask,
    window_partition,
)
from tests.unit import sva_reference

WIDTH = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is fastest (two wait on each other on a loaded 2-core host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# our alternatives to the original's semantics (config/schema.py ConnectorConfig)
OURS = dict(context_masked=True, empty_window="zero", padding_rule="centre", o_proj_bias=True)


def make_connector(query_num=4, depth=2, sides=(8, 4), groups=None, **semantics):
    torch.manual_seed(0)
    cfg = ConnectorConfig(
        name="sva",
        vision_hidden_size=WIDTH,
        num_query_group=len(groups or [query_num]),
        query_num_list=list(groups or [query_num]),
        connector_depth=depth,
        num_heads=4,
        **semantics,
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
    conn = make_connector(query_num=16, depth=2, sides=(8, 4), **OURS)
    feats = features(conn, n=1)
    thin = torch.tensor([[0.0, 0.45, 1.0, 0.55]])  # a very wide image: most windows all padding
    tokens, _ = conn(feats, thin)
    assert torch.isfinite(tokens).all()
    # with our semantics (masked context, empty windows add nothing) padding does not matter
    changed = {k: v.clone() for k, v in feats.items()}
    for name, side in zip(conn.tower_names, conn.tower_sides):
        valid = valid_token_mask(thin, side)[0]
        changed[name][0, ~valid] = 100.0
    torch.testing.assert_close(conn(changed, thin)[0], tokens)
    # with the original's (the default) it does: the context averages padding too, and an
    # all-padding window attends to its padding
    original = make_connector(query_num=16, depth=2, sides=(8, 4))
    original.load_state_dict(conn.state_dict(), strict=False)  # no o_proj bias there
    out, _ = original(feats, thin)
    assert torch.isfinite(out).all()
    assert not torch.allclose(original(changed, thin)[0], out)


def test_original_padding_rule():
    """unmask_attention_mask of the original: int(side · extent) content cells, (side - that)
    // 2 masked at each end; e.g. a 4:3 image on a 24-grid: int(24 · 0.75) = 18, 3 rows."""
    box = torch.tensor([[0.0, 0.125, 1.0, 0.875]])  # 4:3 landscape, padded top and bottom
    mask = valid_token_mask(box, 24, "original").reshape(24, 24)
    assert mask.all(dim=1).tolist() == [False] * 3 + [True] * 18 + [False] * 3
    assert mask.any(dim=0).all()  # the longer side is never masked
    # 16:11 on a 16-grid: int(16 · 11/16) = 11 content rows, (16 - 11) // 2 = 2 masked at
    # each end, so 12 rows stay valid; by cell centres (content spans 0.15625 … 0.84375) row
    # 13's centre 0.84375 is outside, so 11
    h = 11 / 16
    box = torch.tensor([[0.0, (1 - h) / 2, 1.0, (1 + h) / 2]])
    rows = valid_token_mask(box, 16, "original").reshape(16, 16).all(dim=1).tolist()
    assert rows == [False] * 2 + [True] * 12 + [False] * 2
    centre = valid_token_mask(box, 16, "centre").reshape(16, 16).all(dim=1).tolist()
    assert centre == [False] * 2 + [True] * 11 + [False] * 3


def test_sva_parameters_are_queries_and_samplers():
    conn = make_connector()
    names = {n for n, p in conn.named_parameters() if any(p is q for q in conn.sva_parameters())}
    assert all(n.startswith(("vision_query", "vision_sampler_")) for n in names)
    assert "vision_query" in names
    assert not any(n.startswith(("mm_projector", "mm_projector_aux")) for n in names)


# -- the fast path against the computation it replaced (tests/unit/sva_reference.py) ---------


def _randomised(module, seed=0):
    """Non-trivial LayerNorm affines, biases and position embeddings (init leaves γ=1, β=0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)
    return module


# the semantics the reference (the previous implementation) has
REFERENCE_SEMANTICS = dict(o_proj_bias=True, empty_window="zero")


def _pair(cls_name, dtype, **kw):
    """The fast module and the reference one, holding the same state dict."""
    torch.manual_seed(0)
    fast = _randomised(getattr(sva, cls_name)(**kw, **REFERENCE_SEMANTICS)).to(dtype)
    slow = getattr(sva_reference, cls_name)(**kw).to(dtype)
    slow.load_state_dict(fast.state_dict())
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in slow.named_parameters()]
    return fast, slow


def _windows(n, query_side, tower_sides, width, dtype, seed=1):
    """Windows of tower grids (features with a mean offset, as after a LayerNorm with β) and
    masks of pad-to-square boxes; image 0 keeps a single content row, so most of its windows
    are fully padded."""
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[0.0, 0.45, 1.0, 0.55], [0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 0.8, 1.0]])
    boxes = boxes[torch.arange(n) % 3]
    windows, masks = [], []
    for side in tower_sides:
        feats = torch.randn(n, side * side, width, generator=gen, dtype=dtype) * 1.5 + 0.3
        valid = valid_token_mask(boxes, side)
        # a few more padded tokens inside the content
        valid &= torch.rand(n, side * side, generator=gen) > 0.2
        windows.append(window_partition(feats, query_side).requires_grad_(True))
        masks.append(window_partition(valid[..., None], query_side)[..., 0])
    return windows, masks


def _relative(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _forward_backward(module, args, windows, seed=2):
    for w in windows:
        w.grad = None
    module.zero_grad(set_to_none=True)
    out = module(*args)
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return out.detach(), grads, [w.grad.clone() for w in windows]


def _assert_same(fast, slow, args, windows, tol):
    out_f, grads_f, win_f = _forward_backward(fast, args, windows)
    out_s, grads_s, win_s = _forward_backward(slow, args, windows)
    assert _relative(out_f, out_s) <= tol
    assert grads_f.keys() == grads_s.keys()
    for name in grads_s:
        assert _relative(grads_f[name], grads_s[name]) <= tol, name
    for t, (a, b) in enumerate(zip(win_f, win_s)):
        assert _relative(a, b) <= tol, f"window gradient of tower {t}"


# query grid 4²; towers 4², 16², 4², 8²: windows of 1, 16, 1 and 4 tokens. At 8 heads of
# width 32 the 16-token windows fold, the 4-token (with a position) and 1-token ones are
# projected (sva.folds_projections); at 4 heads the 4-token ones fold too.
LAYER_CASES = {
    # the connector's sampler: q_dim = context = hidden
    "connector": dict(q_dim=32, context_dim=32, heads=8, depth=2, n=3),
    "connector_4_heads": dict(q_dim=32, context_dim=32, heads=4, depth=3, n=3),
    # an SVA layer inside the LLM: q_dim ≠ hidden
    "in_llm": dict(q_dim=48, context_dim=48, heads=8, depth=1, n=2),
}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-11)])
@pytest.mark.parametrize("case", list(LAYER_CASES))
@pytest.mark.parametrize("per_image", [False, True])
def test_fast_sampler_matches_reference(case, dtype, tol, per_image):
    c = LAYER_CASES[case]
    query_side, towers, width = 4, [4, 16, 4, 8], 32
    kw = dict(
        q_dim=c["q_dim"],
        context_dim=c["context_dim"],
        kv_dims=[width] * len(towers),
        window_sides=[s // query_side for s in towers],
        hidden=width,
        num_heads=c["heads"],
    )
    fast, slow = _pair("VisionTokenSampler", dtype, depth=c["depth"], **kw)
    windows, masks = _windows(c["n"], query_side, towers, width, dtype)
    assert (~torch.cat(masks, 1).any(1)).sum() >= 4  # fully padded windows
    m = c["n"] * query_side**2
    gen = torch.Generator().manual_seed(3)
    queries = torch.randn(m, c["q_dim"], generator=gen, dtype=dtype).requires_grad_(True)
    context = torch.randn(m, c["context_dim"], generator=gen, dtype=dtype)
    if per_image:  # one context per image (as the connector and the in-LLM layers pass it):
        # the layers project it once; the reference gets it repeated for every query
        context = context[:: query_side**2].clone().requires_grad_(True)
    _assert_same(fast, slow, (queries, context, windows, masks), windows, tol)


@pytest.mark.parametrize("value_eps", [None, 1e-2])
def test_fast_attention_matches_reference_without_positions(value_eps):
    """MultiKVCrossAttention called directly (keys = the windows as given): a folded 16-token
    tower with no position embedding, and a projected one-token tower; also with the value
    LayerNorms' eps differing from the keys'."""
    width, heads = 32, 4
    fast, slow = _pair(
        "MultiKVCrossAttention",
        torch.float32,
        q_dim=width,
        kv_dims=[width, width],
        hidden=width,
        num_heads=heads,
    )
    if value_eps is not None:
        for module in (fast, slow):
            for t in range(2):
                getattr(module, f"v_proj_{t}")[0].eps = value_eps
    windows, masks = _windows(2, 4, [16, 4], width, torch.float32)
    queries = torch.randn(32, width, generator=torch.Generator().manual_seed(4))
    assert sva.folds_projections(16, width, width, heads)
    assert not sva.folds_projections(1, width, width, heads)
    _assert_same(fast, slow, (queries, windows, masks), windows, 1e-5)


def test_fast_connector_matches_reference_samplers():
    """The whole connector (tower projections, windows, groups, resize, projector) with its
    samplers swapped for the reference ones holding the same weights."""
    # the previous implementation's semantics (masked context, centre rule, zero windows)
    conn = make_connector(query_num=16, depth=2, sides=(16, 4), groups=[16, 4], **OURS)
    _randomised(conn)
    slow = copy.deepcopy(conn)
    for name, module in list(slow.named_children()):
        if name.startswith("vision_sampler_") and name != "vision_sampler_layers":
            layers = module.layers
            first = layers[0]
            kw = dict(
                q_dim=first.proj_in.in_features - first.proj_context.out_features,
                context_dim=first.proj_context.in_features,
                kv_dims=[WIDTH] * len(conn.tower_names),
                window_sides=first.window_sides,
                hidden=first.proj_context.out_features,
                num_heads=first.cross_attn.num_heads,
            )
            reference = sva_reference.VisionTokenSampler(len(layers), **kw)
            reference.load_state_dict(module.state_dict())
            setattr(slow, name, reference)
    feats = {k: v.requires_grad_(True) for k, v in features(conn, n=3).items()}
    boxes = torch.tensor([[0.0, 0.45, 1.0, 0.55], [0.0, 0.0, 1.0, 1.0], [0.2, 0.0, 0.8, 1.0]])
    results = []
    for module in (conn, slow):
        module.zero_grad(set_to_none=True)
        tokens, _ = module(feats, boxes)
        weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(5))
        (tokens * weights).sum().backward()
        results.append((tokens.detach(), {n: p.grad for n, p in module.named_parameters()}))
    (out_f, grads_f), (out_s, grads_s) = results
    assert _relative(out_f, out_s) <= 1e-5
    assert grads_f.keys() == grads_s.keys()
    for name in grads_s:
        assert _relative(grads_f[name], grads_s[name]) <= 1e-5, name


def test_fast_sampler_under_bf16_autocast():
    """Under bf16 autocast the fast path is as close to the float32 reference as the
    reference under autocast is, and gives the same output dtype."""
    query_side, towers, width = 4, [4, 16], 32
    kw = dict(
        q_dim=48,
        context_dim=48,
        kv_dims=[width] * 2,
        window_sides=[1, 4],
        hidden=width,
        num_heads=4,
    )
    fast, slow = _pair("VisionTokenSampler", torch.float32, depth=2, **kw)
    windows, masks = _windows(3, query_side, towers, width, torch.float32)
    gen = torch.Generator().manual_seed(3)
    queries, context = torch.randn(48, 48, generator=gen), torch.randn(48, 48, generator=gen)
    args = (queries, context, windows, masks)
    exact = _forward_backward(slow, args, windows)
    errors = {}
    for name, module in (("fast", fast), ("reference", slow)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, grads, _ = _forward_backward(module, args, windows)
        assert out.dtype == exact[0].dtype and torch.isfinite(out).all()
        errors[name] = (
            _relative(out, exact[0]),
            max(_relative(grads[n], exact[1][n]) for n in grads),
        )
    assert errors["fast"][0] <= 2 * errors["reference"][0] + 1e-3
    assert errors["fast"][1] <= 2 * errors["reference"][1] + 1e-2
