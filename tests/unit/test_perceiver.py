"""The perceiver connector: a written-out reference, shapes, padding masks, latent permutations,
a training smoke test of the tiny model, and its configuration errors."""

from __future__ import annotations

import math

import pytest
import torch

from cambrian_train.config.schema import ConnectorConfig
from cambrian_train.config.validate import ConfigError
from cambrian_train.models.connectors.perceiver import PerceiverConnector

WIDTH, HEADS, LLM = 32, 4, 24
TOWERS = {"a": (12, 16), "b": (20, 4)}  # name: (channels, tokens): 4x4 and 2x2 grids


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is fastest (two wait on each other on a loaded 2-core host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_connector(latents=9, depth=2, seed=0, **fields):
    torch.manual_seed(seed)
    cfg = ConnectorConfig(
        name="perceiver",
        vision_hidden_size=WIDTH,
        connector_depth=depth,
        num_heads=HEADS,
        padding_rule="centre",
        **fields,
    )
    conn = PerceiverConnector(
        cfg,
        tower_sizes={n: c for n, (c, _) in TOWERS.items()},
        tower_tokens={n: t for n, (_, t) in TOWERS.items()},
        llm_hidden_size=LLM,
        image_token_len=latents,
    )
    with torch.no_grad():  # non-trivial norms (their init is 1 and 0)
        for name, p in conn.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return conn.eval()


def make_features(n=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, t, c, generator=gen) for name, (c, t) in TOWERS.items()}


# boxes (x0, y0, x1, y1): full, a landscape image padded top and bottom, a portrait one
BOXES = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.25, 1.0, 0.75], [0.3, 0.0, 0.7, 1.0]])


# -- the reference, from the definition ------------------------------------------------------


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def cell_valid(box, side):
    """[side*side] bool, row-major: a cell is content when its centre lies inside the box."""
    x0, y0, x1, y1 = box.tolist()
    out = []
    for r in range(side):
        for c in range(side):
            cx, cy = (c + 0.5) / side, (r + 0.5) / side
            out.append(x0 <= cx < x1 and y0 <= cy < y1)
    return torch.tensor(out)


def reference(conn, features, boxes=None):
    """The perceiver resampler written out for one image at a time, one head at a time."""
    w = {k: v.detach() for k, v in conn.state_dict().items()}
    cfg = conn.cfg
    width, heads = cfg.vision_hidden_size, cfg.num_heads
    dh = width // heads
    outputs = []
    for i in range(next(iter(features.values())).shape[0]):
        media, valid = [], []
        for t, name in enumerate(conn.tower_names):
            x = features[name][i] @ w[f"media_proj.{name}.weight"].T + w[f"media_proj.{name}.bias"]
            x = x + w["media_embed"][t]
            if cfg.perceiver_position_embed:
                x = x + w[f"media_pos_embed.{name}"]
            media.append(x)
            side = math.isqrt(x.shape[0])
            if boxes is not None and cfg.perceiver_mask_padding:
                valid.append(cell_valid(boxes[i], side))
            else:
                valid.append(torch.ones(x.shape[0], dtype=torch.bool))
        media = torch.cat(media)  # [T, W]
        lat = w["resampler.latents"].clone()  # [L, W]
        keys_valid = torch.cat([torch.cat(valid), torch.ones(lat.shape[0], dtype=torch.bool)])
        for k in range(cfg.connector_depth):
            p = f"resampler.layers.{k}."
            m = layer_norm(media, w[p + "attn.norm_media.weight"], w[p + "attn.norm_media.bias"])
            z = layer_norm(lat, w[p + "attn.norm_latents.weight"], w[p + "attn.norm_latents.bias"])
            q = z @ w[p + "attn.to_q.weight"].T
            kv_in = torch.cat([m, z])  # keys and values from the media and the latents
            wkv = w[p + "attn.to_kv.weight"]
            keys, values = kv_in @ wkv[:width].T, kv_in @ wkv[width:].T
            head_out = []
            for h in range(heads):
                cols = slice(h * dh, (h + 1) * dh)
                scores = q[:, cols] @ keys[:, cols].T / math.sqrt(dh)  # [L, T + L]
                scores = scores.masked_fill(~keys_valid, float("-inf"))
                e = torch.exp(scores - scores.max(-1, keepdim=True).values)
                head_out.append((e / e.sum(-1, keepdim=True)) @ values[:, cols])
            lat = lat + torch.cat(head_out, dim=-1) @ w[p + "attn.to_out.weight"].T
            y = layer_norm(lat, w[p + "ff.0.weight"], w[p + "ff.0.bias"])
            lat = lat + gelu(y @ w[p + "ff.1.weight"].T) @ w[p + "ff.3.weight"].T
        lat = layer_norm(lat, w["resampler.norm.weight"], w["resampler.norm.bias"])
        outputs.append(lat @ w["proj.weight"].T + w["proj.bias"])
    return torch.stack(outputs)


@pytest.mark.parametrize(
    "fields, boxes",
    [
        ({}, BOXES),
        ({}, None),
        ({"perceiver_mask_padding": False}, BOXES),
        ({"perceiver_position_embed": True, "perceiver_ff_mult": 2}, BOXES),
    ],
)
def test_matches_written_out_reference(fields, boxes):
    conn = make_connector(**fields)
    feats = make_features()
    with torch.no_grad():
        out, context = conn(feats, boxes)
    assert context is None
    torch.testing.assert_close(out, reference(conn, feats, boxes), atol=1e-5, rtol=1e-5)


def test_output_shape_and_parameter_names():
    conn = make_connector(latents=16, depth=3)
    out, _ = conn(make_features(n=2), BOXES[:2])
    assert out.shape == (2, 16, LLM)
    assert len(conn.resampler.layers) == 3
    assert conn.resampler.latents.shape == (16, WIDTH)
    assert conn.media_pos_embed is None
    with_pos = make_connector(perceiver_position_embed=True)
    assert {n: tuple(p.shape) for n, p in with_pos.media_pos_embed.items()} == {
        "a": (16, WIDTH),
        "b": (4, WIDTH),
    }


# -- padding masks ---------------------------------------------------------------------------


def perturb_padding(feats, boxes):
    """Features with every padding cell (by the centre rule) replaced by large noise."""
    out = {}
    gen = torch.Generator().manual_seed(7)
    for name, x in feats.items():
        side = math.isqrt(x.shape[1])
        pad = ~torch.stack([cell_valid(b, side) for b in boxes])  # [N, T]
        noise = 50 * torch.randn(x.shape, generator=gen)
        out[name] = torch.where(pad[..., None], noise, x)
    return out


def test_masked_padding_has_no_influence():
    conn = make_connector()
    feats = make_features()
    changed = perturb_padding(feats, BOXES)
    assert not torch.equal(changed["a"], feats["a"])  # images 1 and 2 have padding cells
    with torch.no_grad():
        before, _ = conn(feats, BOXES)
        after, _ = conn(changed, BOXES)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    # without the mask the same perturbation moves the padded images' tokens, not the full one
    unmasked = make_connector(perceiver_mask_padding=False)
    with torch.no_grad():
        before, _ = unmasked(feats, BOXES)
        after, _ = unmasked(changed, BOXES)
    torch.testing.assert_close(after[0], before[0], atol=1e-6, rtol=0)
    assert (after[1:] - before[1:]).abs().amax() > 1e-2


def test_all_padding_image_sees_only_the_latents():
    """A box of no content masks every media token; the latents still attend to themselves,
    so the output is finite and the same whatever the media."""
    conn = make_connector()
    empty = torch.tensor([[0.0, 0.0, 0.0, 0.0]]).repeat(2, 1)
    with torch.no_grad():
        one, _ = conn(make_features(n=2, seed=1), empty)
        two, _ = conn(make_features(n=2, seed=2), empty)
    assert torch.isfinite(one).all()
    torch.testing.assert_close(one, two, atol=1e-6, rtol=0)
    torch.testing.assert_close(one[0], one[1], atol=1e-6, rtol=0)


# -- permutations ----------------------------------------------------------------------------


def test_permuting_the_latents_permutes_the_outputs():
    conn = make_connector()
    feats = make_features()
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, _ = conn(feats, BOXES)
        conn.resampler.latents.copy_(conn.resampler.latents[perm])
        permuted, _ = conn(feats, BOXES)
    torch.testing.assert_close(permuted, out[:, perm], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(permuted, out, atol=1e-3)  # the latents are distinct


def test_media_order_matters_only_with_position_embeddings():
    """Without position embeddings the media is a set (attention is permutation invariant in
    its keys); with them, reordering one tower's tokens changes the output."""
    feats = make_features()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(4))
    shuffled = dict(feats, a=feats["a"][:, perm])
    for position_embed in (False, True):
        conn = make_connector(perceiver_position_embed=position_embed)
        with torch.no_grad():
            out, _ = conn(feats)
            moved, _ = conn(shuffled)
        if position_embed:
            assert (moved - out).abs().amax() > 1e-3
        else:
            torch.testing.assert_close(moved, out, atol=1e-5, rtol=1e-5)


# -- through the config path -----------------------------------------------------------------


def test_tiny_model_trains(compose, tiny_overrides):
    from cambrian_train.models import build_model
    from cambrian_train.models.llm import load_tokenizer
    from cambrian_train.run import seed_everything
    from cambrian_train.train.stage import apply_stage
    from tests.unit.test_model_training import make_stream

    cfg = compose(tiny_overrides + ["model/connector=tiny_perceiver"], True)
    assert cfg.model.connector.name == "perceiver"
    seed_everything(0)
    model = build_model(cfg.model)
    assert isinstance(model.connector, PerceiverConnector)
    assert model.connector.resampler.latents.shape == (64, 64)  # image_token_len x width
    stage = cfg.stages["pretrain"]  # the connector alone trains
    groups = apply_stage(model, stage)
    connector_ids = {id(p) for p in model.connector.parameters()}
    assert connector_ids <= {
        id(p) for g in groups if g.name.startswith("connector") for p in g.params
    }
    batch = next(make_stream(cfg, stage, model, load_tokenizer(cfg.model.llm)))
    opt = torch.optim.AdamW([p for g in groups for p in g.params], lr=3e-3)
    latents = model.connector.resampler.latents.detach().clone()
    losses = []
    for _ in range(12):
        loss = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert not torch.equal(model.connector.resampler.latents, latents)  # gradients reach them
    # a frozen random LLM: the connector alone lowers the caption loss steadily (6.43 → 5.77)
    assert losses[-1] < 0.95 * losses[0] and losses[-1] == min(losses), losses


def test_parameter_summary_covers_the_perceiver(compose, tiny_overrides):
    from cambrian_train.models import build_model
    from cambrian_train.models.summary import parameter_table

    cfg = compose(tiny_overrides + ["model/connector=tiny_perceiver"])
    model = build_model(cfg.model)
    rows = dict(parameter_table(model))
    assert rows["connector: tower projectors"] == 64 * 64 + 64  # one tower: Linear(64, 64)
    assert rows["connector: projector"] == 64 * 128 + 128
    layer = 2 * 64 * 2 + 64 * 64 * 4 + 2 * 64 + 64 * 256 * 2  # 2 norms, q kv out, ff norm+ff
    assert rows["connector: perceiver"] == 64 + 64 * 64 + 2 * layer + 2 * 64


# -- configuration errors --------------------------------------------------------------------


def errors_of(compose, overrides):
    with pytest.raises(ConfigError) as err:
        compose(overrides, True)
    return str(err.value)


def test_bad_latent_count_is_a_config_error(compose, tiny_overrides):
    base = tiny_overrides + ["model/connector=tiny_perceiver"]
    message = errors_of(compose, base + ["model.image_token_len=60"])
    assert "model.image_token_len=60" in message and "perceiver" in message


def test_other_perceiver_config_errors(compose, tiny_overrides):
    base = tiny_overrides + ["model/connector=tiny_perceiver"]
    message = errors_of(compose, base + ["model.connector.num_heads=5"])
    assert "model.connector.vision_hidden_size=64 is not divisible by" in message
    message = errors_of(compose, base + ["model.connector.perceiver_ff_mult=0"])
    assert "model.connector.perceiver_ff_mult=0 must be >= 1" in message
    message = errors_of(compose, base + ["model.connector.insert.count=1"])
    assert "model.connector.insert.count=1" in message
    message = errors_of(compose, base + ["model.connector.padding_rule=edge"])
    assert "model.connector.padding_rule='edge'" in message


def test_connector_rejects_a_non_square_latent_count():
    with pytest.raises(ValueError, match=r"model.image_token_len=10 is not a perfect square"):
        make_connector(latents=10)
    with pytest.raises(ValueError, match="not divisible by model.connector.num_heads"):
        PerceiverConnector(
            ConnectorConfig(name="perceiver", vision_hidden_size=30, num_heads=4),
            {"a": 8},
            {"a": 4},
            16,
            4,
        )
