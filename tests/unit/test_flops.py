"""Analytic FLOPs (train/flops.py) against torch's FlopCounterMode, hand arithmetic, the MFU table.

FlopCounterMode runs with ``counter_formulas()``: on CPU torch 2.9 counts no SDPA kernel (the
CPU flash op is unregistered), misses the in-place ``addmm_`` of the chunked loss and overcounts
grouped-conv weight gradients; the mapping fills those in. The analytic side is compared with
``causal=False``, since the counter counts the full L×L score matrix.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cambrian_train.models import build_model
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.registry import VISION_TOWERS
from cambrian_train.train.flop_counter import counter_formulas
from cambrian_train.train.flops import (
    Flops,
    attention_flops,
    conv2d_flops,
    linear_flops,
    llm_flops,
    model_flops,
    tower_flops,
)
from cambrian_train.train.mfu import PEAK_TFLOPS, mfu, peak_tflops
from cambrian_train.train.stage import apply_stage
from tests.unit.test_model_training import make_stream

TOLERANCE = 0.05


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is fastest, and on a shared 2-core machine two threads make every
    parallel region wait for a descheduled peer (~16 ms per mm seen)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def counted(fn, native: bool = False) -> int:
    """FLOPs FlopCounterMode counts while ``fn`` runs (torch's own formulas only if native)."""
    mapping = None if native else counter_formulas()
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


@contextlib.contextmanager
def frozen(model: nn.Module):
    """No parameter requires grad (forward-only counting: under plain no_grad, views of
    parameters still require grad and trip FlopCounterMode's module tracker in torch 2.9)."""
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in saved:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


def step(module: nn.Module, inputs, backward: bool = False):
    """A closure running ``module(inputs)`` (then backward of its sum) for :func:`counted`."""

    def run():
        out = module(inputs)
        if backward:
            out.sum().backward()

    return run


def check(label: str, analytic: float, count: int) -> None:
    ratio = count / analytic
    print(f"{label}: analytic {analytic / 1e6:.3f} MFLOPs, counted {count / 1e6:.3f}, {ratio:.4f}")
    assert abs(ratio - 1) <= TOLERANCE, f"{label}: counted/analytic = {ratio:.4f}"


# -- whole models against the counter --------------------------------------------------------

CONFIGS = {
    "mlp": [],
    # LoRA adapters on every projection: frozen base matrices (no dW), adapter matmuls added
    "mlp_lora": ["model.llm.lora.r=4"],
    "sva": ["model/connector=tiny_sva", "+model/vision_tower@model.towers.dino=tiny_dinov2"],
    "perceiver": [
        "model/connector=tiny_perceiver",
        "+model/vision_tower@model.towers.dino=tiny_dinov2",
    ],
    # four families at once, two of them trained (their features need dX in the connector)
    "sva_4_towers": [
        "model/connector=tiny_sva",
        "+model/vision_tower@model.towers.siglip=tiny_siglip",
        "+model/vision_tower@model.towers.vit=tiny_timm_vit",
        "+model/vision_tower@model.towers.convnext=tiny_convnext",
        "model.towers.convnext.num_tokens=64",
        "model.towers.convnext.trainable=true",
        "model.towers.vit.trainable=true",
    ],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_model_agrees_with_flop_counter(compose, tiny_overrides, name):
    cfg = compose(tiny_overrides + CONFIGS[name] + ["stages.pretrain.per_device_batch_size=2"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model.llm)
    for stage_name in ("finetune", "pretrain"):
        stage = cfg.stages[stage_name]
        apply_stage(model, stage)
        batch = next(make_stream(cfg, stage, model, tokenizer))
        (b, length), images = batch.input_ids.shape, batch.image_mask.shape[1]
        flops = model_flops(model, b, length, images, train_llm=stage.train_llm, causal=False)
        with frozen(model):
            forward = counted(step(model, batch))
        check(f"{name} {stage_name} forward", flops.forward, forward)
        total = counted(step(model, batch, backward=True))
        check(f"{name} {stage_name} forward+backward", flops.total, total)
        if name == "mlp" and stage_name == "finetune":
            # torch by itself on CPU: no SDPA kernel, no addmm_ (the chunked loss's head dW)
            sdpa = sum(f.total for key, f in flops.entries.items() if key.endswith(".attention"))
            native = counted(step(model, batch, backward=True), native=True)
            print(
                f"{name} {stage_name} torch's formulas alone: {native / 1e6:.3f} MFLOPs "
                f"(analytic minus SDPA attention: {(flops.total - sdpa) / 1e6:.3f})"
            )
            assert native < total
    assert (flops.part("llm_sva").total > 0) == name.startswith("sva")


TOWERS = {
    "clip": "tiny_clip",
    "siglip": "tiny_siglip",
    "dinov2": "tiny_dinov2",
    "timm_vit": "tiny_timm_vit",
    "convnext": "tiny_convnext",
}


def test_tower_families_agree_with_flop_counter(compose, tiny_overrides):
    """Each tower family alone, frozen (forward only) and trainable (first layer without dX)."""
    overrides = [  # clip is the demo's own tower
        f"+model/vision_tower@model.towers.{n}={p}" for n, p in TOWERS.items() if n != "clip"
    ]
    cfg = compose(tiny_overrides + ["model/connector=tiny_sva", *overrides])
    pixels = torch.randn(2, 3, 64, 64)
    for name in TOWERS:
        for trainable in (False, True):
            tcfg = cfg.model.towers[name]
            tcfg.trainable = trainable
            tower = VISION_TOWERS.get(tcfg.source)(tcfg)
            flops = sum(tower_flops(tower, 2).values(), Flops())
            if trainable:
                total = counted(step(tower, pixels, backward=True))
                check(f"tower {name} trainable forward+backward", flops.total, total)
                assert flops.backward < 2 * flops.forward  # the first layer computes no dX
            else:
                forward = counted(step(tower, pixels))
                check(f"tower {name} frozen forward", flops.forward, forward)
                assert flops.backward == 0


@pytest.mark.parametrize(
    "q_dim, context_dim, heads, towers",
    [
        (32, 32, 8, [4, 16, 4, 8]),  # connector: 1- and 4-token windows projected, 16 folded
        (48, 48, 4, [4, 16, 8]),  # in-LLM (q_dim ≠ hidden): 1 projected, 16 and 4 folded
    ],
)
def test_sva_sampler_agrees_with_flop_counter(q_dim, context_dim, heads, towers):
    """The SVA layer's formula (train/flops.py), exactly, on both of its paths per tower."""
    from cambrian_train.models.connectors.sva import VisionTokenSampler, window_partition
    from cambrian_train.train.flops import sampler_layer_flops

    width, query_side, n, depth = 32, 4, 3, 2
    sides = [s // query_side for s in towers]
    sampler = VisionTokenSampler(
        depth,
        q_dim=q_dim,
        context_dim=context_dim,
        kv_dims=[width] * len(towers),
        window_sides=sides,
        hidden=width,
        num_heads=heads,
    )
    m = n * query_side**2
    queries = torch.randn(m, q_dim, requires_grad=True)
    context = torch.randn(m, context_dim, requires_grad=True)
    windows = [
        window_partition(torch.randn(n, s * s, width), query_side).requires_grad_(True)
        for s in towers
    ]
    masks = [torch.ones(w.shape[:2], dtype=torch.bool) for w in windows]
    layer = sampler_layer_flops(m, q_dim, context_dim, width, heads, [s * s for s in sides])
    flops = sum(layer.values(), Flops()) * depth
    with frozen(sampler):
        forward = counted(lambda: sampler(queries, context, windows, masks))
    total = counted(lambda: sampler(queries, context, windows, masks).sum().backward())
    assert (forward, total) == (flops.forward, flops.total)


@pytest.mark.parametrize("trainable, position_embed", [(False, False), (True, True)])
def test_perceiver_connector_agrees_with_flop_counter(trainable, position_embed):
    """The perceiver's formula (train/flops.py), exactly: two towers of different widths and
    token counts, padding masked, forward and forward+backward; a trained tower's features
    need dX in their projection."""
    from types import SimpleNamespace

    from cambrian_train.config.schema import ConnectorConfig
    from cambrian_train.models.connectors.perceiver import PerceiverConnector
    from cambrian_train.train.flops import perceiver_connector_flops

    sizes, tokens, n, latents, d = {"a": 24, "b": 40}, {"a": 16, "b": 64}, 3, 9, 48
    cfg = ConnectorConfig(
        name="perceiver",
        vision_hidden_size=32,
        connector_depth=2,
        num_heads=4,
        perceiver_ff_mult=3,
        perceiver_position_embed=position_embed,
        padding_rule="centre",
    )
    conn = PerceiverConnector(cfg, sizes, tokens, d, latents)
    towers = {  # what the formula reads of a tower
        name: SimpleNamespace(hidden_size=c, cfg=SimpleNamespace(trainable=trainable))
        for name, c in sizes.items()
    }
    model = SimpleNamespace(
        connector=conn,
        towers=towers,
        cfg=SimpleNamespace(connector=cfg),
        llm=SimpleNamespace(config=SimpleNamespace(hidden_size=d)),
    )
    flops = sum(perceiver_connector_flops(model, n).values(), Flops())
    feats = {k: torch.randn(n, tokens[k], c, requires_grad=trainable) for k, c in sizes.items()}
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.25, 1.0, 0.75], [0.0, 0.0, 0.0, 0.0]])
    with frozen(conn):
        forward = counted(lambda: conn(feats, boxes))
    total = counted(lambda: conn(feats, boxes)[0].sum().backward())
    assert (forward, total) == (flops.forward, flops.total)
    # by hand, the forward: projections, per layer q + kv + out + ff and attention, the head
    t, w = 16 + 64, 32
    per_layer = 2 * n * (latents * w * w * 2 + (t + latents) * w * 2 * w + latents * w * 3 * w * 2)
    per_layer += 4 * n * latents * (t + latents) * w  # QK^T and PV over all heads
    by_hand = 2 * n * (16 * 24 + 64 * 40) * w + 2 * per_layer + 2 * n * latents * w * d
    assert flops.forward == by_hand


# -- hand arithmetic -------------------------------------------------------------------------


def test_linear_by_hand():
    f = linear_flops(3, 4, 5)
    assert (f.forward, f.backward) == (2 * 3 * 4 * 5, 0)
    assert linear_flops(3, 4, 5, weight_grad=True).backward == 120
    assert linear_flops(3, 4, 5, weight_grad=True, input_grad=True).total == 360
    layer = nn.Linear(4, 5)
    x = torch.randn(3, 4)
    assert counted(lambda: layer(x).sum().backward()) == 240  # x needs no grad: dW only
    x.requires_grad_(True)
    assert counted(lambda: layer(x).sum().backward()) == 360


def test_attention_by_hand():
    b, h, length, hd = 2, 4, 8, 16
    f = attention_flops(b, h, length, length, hd, grad=True)
    assert f.forward == 2 * (2 * b * h * length * length * hd)  # QK^T and PV
    assert f.backward == 2 * f.forward
    assert attention_flops(b, h, length, length, hd, causal=True).forward == f.forward / 2
    with pytest.raises(ValueError, match="q_len == k_len"):
        attention_flops(b, h, 1, length, hd, causal=True)
    q, k, v = (torch.randn(b, h, length, hd, requires_grad=True) for _ in range(3))

    def eager():  # plain matmuls: torch's own bmm formulas count them
        scores = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5, dim=-1)
        (scores @ v).sum().backward()

    assert counted(eager, native=True) == f.total
    assert counted(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == f.total
    # unregistered on CPU: torch by itself counts 0
    assert counted(lambda: F.scaled_dot_product_attention(q, k, v), native=True) == 0


def test_depthwise_conv_by_hand():
    conv = nn.Conv2d(8, 8, 7, padding=3, groups=8, bias=False)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    f = conv2d_flops(2 * 16 * 16, 8, 8, 7, groups=8, weight_grad=True, input_grad=True)
    assert f.forward == 2 * (2 * 16 * 16) * 8 * 49
    assert counted(lambda: conv(x).sum().backward()) == f.total
    assert counted(lambda: conv(x).sum().backward(), native=True) > f.total  # groups ignored


def test_llm_layer_by_hand(compose, tiny_overrides):
    cfg = compose(tiny_overrides)
    model = build_model(cfg.model)
    c = model.llm.config  # 4 layers, 128 wide, 4 heads of 32, 2 KV heads, MLP 384
    b, length = 2, 16
    rows = b * length
    per_layer = 2 * rows * (128 * 128 + 2 * 128 * 64 + 128 * 128 + 3 * 128 * 384)
    flops = llm_flops(model.llm, b, length, train_llm=True, causal=True)
    assert flops["linear"].forward == 4 * per_layer
    assert flops["attention"].forward == 4 * 2 * (2 * b * 4 * length * length * 32) / 2
    assert flops["lm_head"].forward == 2 * rows * 128 * c.vocab_size
    assert flops["embed"].total == 0
    assert flops["linear"].backward == 2 * flops["linear"].forward  # dX and dW
    frozen_llm = llm_flops(model.llm, b, length, train_llm=False)
    assert frozen_llm["linear"].backward == frozen_llm["linear"].forward  # dX only
    assert frozen_llm["attention"].backward == 2 * frozen_llm["attention"].forward
    c.intermediate_size += 1
    try:
        with pytest.raises(ValueError, match="no FLOPs formula for this family"):
            llm_flops(model.llm, b, length, train_llm=True)
    finally:
        c.intermediate_size -= 1


def test_frozen_towers_recompute_and_breakdown(compose, tiny_overrides):
    cfg = compose(tiny_overrides + ["model/connector=tiny_sva"])
    model = build_model(cfg.model)
    base = model_flops(model, 4, 96, train_llm=True)
    assert base.part("tower.clip").backward == 0
    assert base.part("tower.clip").forward > 0
    # connector's first projection after a frozen tower: dW only
    aux = base.part("connector.aux.clip")  # Linear(64 → 64), GELU, Linear(64 → 64) on 4·64 rows
    first = 2 * (4 * 64) * 64 * 64
    assert (aux.forward, aux.backward) == (2 * first, first + 2 * first)
    redo = model_flops(model, 4, 96, train_llm=True, recompute=True)
    expected = (
        base.entries["llm.linear"].forward
        + base.entries["llm.attention"].forward
        + base.part("llm_sva").forward
    )
    assert redo.total - base.total == pytest.approx(expected)
    # linear in the batch but for the SVA position embeddings, projected once per forward
    fixed = sum(f.total for key, f in base.entries.items() if key.endswith(".positions"))
    assert 0 < fixed < 0.01 * base.total
    assert model_flops(model, 8, 96, train_llm=True).total == pytest.approx(2 * base.total - fixed)
    assert set(base.parts(1)) == {"tower", "connector", "llm_sva", "llm"}
    assert "total" in base.table()


# -- MFU -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("tpu-v4", 275),
        ("TPU v4", 275),
        ("TPU v5 lite", 197),
        ("TPU v5e", 197),
        ("TPU v5p", 459),
        ("TPU v6 lite", 918),
        ("NVIDIA H100 80GB HBM3", 989),
        ("H100 SXM", 989),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
    ],
)
def test_peak_tflops(kind, peak):
    assert peak_tflops(kind) == peak


@pytest.mark.parametrize("kind", ["TPU v3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "cpu", ""])
def test_peak_tflops_unknown(kind):
    with pytest.raises(ValueError) as err:
        peak_tflops(kind)
    message = str(err.value)
    assert "backend.peak_tflops" in message and repr(kind) in message
    assert all(key in message for key in PEAK_TFLOPS)


def test_mfu():
    assert mfu(989e12, 1.0, 1, 989.0) == pytest.approx(1.0)
    assert mfu(275e12, 2.0, 2, 275.0) == pytest.approx(0.25)
    for bad in [(1e12, 0.0, 1, 275.0), (1e12, 1.0, 0, 275.0), (1e12, 1.0, 1, 0.0)]:
        with pytest.raises(ValueError, match="must be positive"):
            mfu(*bad)
