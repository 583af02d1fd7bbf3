"""Our SVA, with the original's semantics (the config defaults), computes what the original
code computes: a straightforward reference written here from the original's definitions
(cambrian-mllm/cambrian ``vision_sampler.py`` and ``cambrian_arch.py``; loops over images and
queries), reading its weights by their official names, against our connector and in-LLM layer
holding the same weights, on square and on pad-to-square images.

The original, per image: tower features through ``mm_projector_aux_t``; the global context is
the plain mean of tower 0's projected features; each tower grid S×S is cut into s×s windows of
(S/s)² tokens, row-major; the padding mask of a pad-to-square image comes from its size (w, h)
by ``unmask_attention_mask`` (``int(short · S / long)`` content cells, ``(S - that) // 2``
masked at each end), and a window left without any valid token gets all of them valid. A layer:
``x = proj_in([q, proj_context(context)])``; per tower, keys and values
``k/v_proj_t(window + pos_embed_t)`` (no position for one-token windows); joint softmax
attention of x over every tower's window, 16 heads (here: the config's), scale 1/√hd;
``x = x + o_proj(attn)``; ``q = proj_out(norm(x)) + q``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cambrian_train.config.schema import ConnectorConfig, InsertConfig
from cambrian_train.data.images import content_box
from cambrian_train.models.connectors.sva import SVAConnector
from tests.unit.test_official_names import official_multimodal

WIDTH, LLM, HEADS, SIDES, QUERY_SIDE = 32, 48, 4, [4, 8], 4  # windows of 1 and 4 tokens
WIDTHS = [20, 24]  # tower feature widths


def ln(x, w, prefix):
    return F.layer_norm(x, x.shape[-1:], w[f"{prefix}.weight"], w[f"{prefix}.bias"], 1e-5)


def lin(x, w, prefix):
    return F.linear(x, w[f"{prefix}.weight"], w.get(f"{prefix}.bias"))


def original_mask(side: int, size) -> torch.Tensor:
    """unmask_attention_mask of the original for an image of ``size`` = (w, h) on a side×side
    grid → [side, side] bool."""
    w, h = size
    mask = torch.ones(side, side, dtype=torch.bool)
    if w / h > 1.0:  # wider than the square: bands at top and bottom
        padding = (side - int(h * (side / w))) // 2
        if padding > 0:
            mask[:padding, :] = False
            mask[-padding:, :] = False
    else:
        padding = (side - int(w * (side / h))) // 2
        if padding > 0:
            mask[:, :padding] = False
            mask[:, -padding:] = False
    return mask


def original_layer(w, prefix, query, context, tower_windows, heads):
    """One VisionCrossAttentionLayer for one query: tower_windows = [(tokens [k, W], valid [k],
    window side)] per tower."""
    residual = query
    x = lin(torch.cat([query, lin(context, w, f"{prefix}.proj_context")]), w, f"{prefix}.proj_in")
    attn = f"{prefix}.cross_attn"
    q = lin(ln(x, w, f"{attn}.q_proj.0"), w, f"{attn}.q_proj.1")
    keys, values, valid = [], [], []
    for t, (tokens, ok, side) in enumerate(tower_windows):
        if side > 1:
            tokens = tokens + w[f"{prefix}.pos_embed_{t}"]
        keys.append(lin(ln(tokens, w, f"{attn}.k_proj_{t}.0"), w, f"{attn}.k_proj_{t}.1"))
        values.append(lin(ln(tokens, w, f"{attn}.v_proj_{t}.0"), w, f"{attn}.v_proj_{t}.1"))
        valid.append(ok if ok.any() else torch.ones_like(ok))  # an empty window: all of it
    k, v, ok = torch.cat(keys), torch.cat(values), torch.cat(valid)
    hd = q.shape[0] // heads
    out = []
    for h in range(heads):
        part = slice(h * hd, (h + 1) * hd)
        scores = (k[:, part] @ q[part]) / math.sqrt(hd)
        scores = scores.masked_fill(~ok, float("-inf"))
        out.append(torch.softmax(scores, dim=0) @ v[:, part])
    x = x + lin(torch.cat(out), w, f"{attn}.o_proj")
    hidden = ln(x, w, f"{prefix}.norm")
    hidden = lin(
        F.gelu(lin(hidden, w, f"{prefix}.proj_out.linear_1")), w, f"{prefix}.proj_out.linear_2"
    )
    return hidden + residual


def windows_of(feats, masks, i, j, query_side):
    """Query (i, j)'s window of every tower: (tokens, valid, window side), row-major inside."""
    out = []
    for f, m in zip(feats, masks):
        side = int(math.isqrt(f.shape[0]))
        r = side // query_side
        grid, mask = f.reshape(side, side, -1), m
        tokens = grid[i * r : (i + 1) * r, j * r : (j + 1) * r].reshape(r * r, -1)
        valid = mask[i * r : (i + 1) * r, j * r : (j + 1) * r].reshape(r * r)
        out.append((tokens, valid, r))
    return out


def original_connector(w, tower_features, size, depth, heads):
    """tokens [s², D] and (projected features, masks, global context) of one image."""
    feats = []
    for t, x in enumerate(tower_features):
        p = f"mm_projector_aux_{t}"
        y = lin(F.gelu(lin(x, w, f"{p}.0")), w, f"{p}.2")
        feats.append(ln(y, w, f"{p}.3"))
    context = feats[0].mean(dim=0)  # unmasked
    masks = [original_mask(int(math.isqrt(f.shape[0])), size) for f in feats]
    out = []
    for i in range(QUERY_SIDE):
        for j in range(QUERY_SIDE):
            q = w["vision_query"][0]
            wins = windows_of(feats, masks, i, j, QUERY_SIDE)
            for k in range(depth):
                q = original_layer(w, f"vision_sampler_0.layers.{k}", q, context, wins, heads)
            out.append(q)
    grouped = torch.stack(out)  # [s², W]; s = the final side: no interpolation
    tokens = lin(F.gelu(lin(grouped, w, "mm_projector.0")), w, "mm_projector.2")
    return tokens, feats, masks, context


@pytest.fixture(scope="module")
def official():
    """Connector weights under their official names (random, LayerNorms not at 1/0)."""
    names = official_multimodal(
        LLM, 1, WIDTHS, SIDES, width=WIDTH, query_side=QUERY_SIDE, depth=2, token_side=QUERY_SIDE
    )
    gen = torch.Generator().manual_seed(0)
    state = {
        k[len("model.") :]: torch.randn(shape, generator=gen) * (0.3 if len(shape) > 1 else 1.0)
        for k, shape in names.items()
        if k != "model.image_newline"
    }
    return state


def ours(official_state):
    cfg = ConnectorConfig(
        name="sva",
        vision_hidden_size=WIDTH,
        query_num_list=[QUERY_SIDE**2],
        connector_depth=2,
        num_heads=HEADS,
        insert=InsertConfig(start=0, stride=1, count=1),
    )  # every semantic field at its default: the original's
    conn = SVAConnector(
        cfg,
        tower_sizes={"a": WIDTHS[0], "b": WIDTHS[1]},
        tower_tokens={"a": SIDES[0] ** 2, "b": SIDES[1] ** 2},
        llm_hidden_size=LLM,
        image_token_len=QUERY_SIDE**2,
    )
    conn.load_state_dict(official_state, strict=True)  # exactly the official names
    return conn.eval()


# (w, h): square; 4:3 landscape (bands top and bottom); 5:8 portrait (bands left and right);
# very wide, so some 1-token windows are all padding and the all-valid rule applies
SIZES = [(64, 64), (64, 48), (40, 64), (64, 12)]


@pytest.mark.parametrize("size", SIZES)
def test_connector_and_in_llm_layer_equal_the_original(official, size):
    conn = ours(official)
    gen = torch.Generator().manual_seed(1)
    n = 2
    tower_features = [torch.randn(n, s * s, c, generator=gen) for s, c in zip(SIDES, WIDTHS)]
    boxes = torch.tensor([content_box(*size, "pad")] * n)
    with torch.no_grad():
        tokens, ctx = conn({"a": tower_features[0], "b": tower_features[1]}, boxes)
        # the in-LLM layer: queries are LLM hidden states at the image's 4x4 grid positions
        queries = torch.randn(n, QUERY_SIDE**2, LLM, generator=gen)
        windows, masks = ctx.windows(QUERY_SIDE)
        layer = conn.vision_sampler_layers[0]
        in_llm = layer(queries.reshape(-1, LLM), ctx.global_context, windows, masks)
        in_llm = in_llm.reshape(n, QUERY_SIDE**2, LLM)
        for b in range(n):
            want, feats, masks_b, context = original_connector(
                official, [f[b] for f in tower_features], size, depth=2, heads=HEADS
            )
            torch.testing.assert_close(tokens[b], want, rtol=1e-5, atol=1e-5)
            for t, m in enumerate(masks_b):  # the padding rule itself
                assert torch.equal(ctx.valid[t][b].reshape(m.shape), m), (size, t)
            expected = []
            for i in range(QUERY_SIDE):
                for j in range(QUERY_SIDE):
                    q = queries[b, i * QUERY_SIDE + j]
                    wins = windows_of(feats, masks_b, i, j, QUERY_SIDE)
                    prefix = "vision_sampler_layers.0.layers.0"
                    expected.append(original_layer(official, prefix, q, context, wins, HEADS))
            torch.testing.assert_close(in_llm[b], torch.stack(expected), rtol=1e-5, atol=1e-5)
    if size == (64, 12):  # one-token windows of padding: the all-valid rule decides them
        assert not ctx.valid[0].all()
