"""Analytic training FLOPs of a VLM step, by part, and model FLOPs utilisation (MFU).

:func:`model_flops` counts the matrix multiplications of one training step of a built
:class:`~cambrian_train.models.vlm.VisionLanguageModel` from its parts' configs (HF config fields,
the connector config, the module shapes of timm/open_clip towers). It works on a model built on
the meta device, so pod-scale presets cost nothing to count. The trainer logs
``mfu(model_flops(...).total, seconds_per_step, num_devices, peak_tflops(kind))`` (train/mfu.py);
train/flop_counter.py teaches ``FlopCounterMode`` what it misses, to check these counts.

Conventions (those of PaLM/Megatron "model FLOPs", stated so figures can be compared):

- 2 FLOPs per multiply-add. Only matmuls and convolutions count: norms, activations, softmax,
  residual adds, bilinear resizes, gathers/scatters and the embedding lookup (and its gradient,
  an index-add) count 0 — as ``torch.utils.flop_counter.FlopCounterMode`` does.
- Static shapes are counted: every sequence position (padding included) and every image slot
  (empty ones included), since that is what the step computes.
- Backward, per matmul ``Y = X @ W``: ``dX`` (as much as the forward) when anything upstream
  trains, plus ``dW`` (as much again) when ``W`` trains. A fully trained part costs 3× its
  forward; the LLM of stage 1 (frozen, but the connector's tokens enter at layer 0) costs 2× on
  its weight matmuls; the first layer of a part fed by frozen inputs (a trained connector after
  frozen towers, a trained tower's patch embedding) has no ``dX``. A frozen tower runs without an
  autograd graph (models/vision/base.py): forward only. Activation×activation matmuls (attention
  ``QK^T`` and ``PV``) cost 2× their forward in the backward (``dQ, dK`` and ``dP, dV``); the
  score recomputation of flash-style kernels is not a model FLOP (torch's registered SDPA
  backward formulas count it: 2.5×).
- Causal attention: with ``causal=True`` (default) the LLM's ``QK^T`` and ``PV`` count half the
  L×L score matrix (L²/2: what a causal kernel computes; MaxText's convention). ``causal=False``
  counts the full L² (PaLM/Megatron/torchtitan, and what FlopCounterMode counts). Vision-tower
  and SVA attention is not causal.
- ``recompute=True`` adds the forward of the decoder layers (and their SVA layers) once more to
  the backward: the hardware FLOPs of gradient checkpointing (HFU). MFU uses ``recompute=False``.
- Under the chunked loss (models/loss.py) the head's gradient matmuls run inside the forward
  pass; they are reported under ``backward`` here (the total is the same).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from torch import nn


@dataclass(frozen=True)
class Flops:
    """Forward and backward FLOPs of one piece of a step."""

    forward: float = 0.0
    backward: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, k: float) -> Flops:
        return Flops(self.forward * k, self.backward * k)

    __rmul__ = __mul__


def _sum(items: Iterable[Flops]) -> Flops:
    total = Flops()
    for f in items:
        total = total + f
    return total


class FlopsBreakdown:
    """FLOPs keyed by dotted names (``tower.clip.attention``, ``llm.lm_head``, ...)."""

    def __init__(self) -> None:
        self.entries: Dict[str, Flops] = defaultdict(Flops)

    def add(self, name: str, flops: Flops) -> None:
        self.entries[name] = self.entries[name] + flops

    def part(self, prefix: str) -> Flops:
        """The sum over ``prefix`` and every name below it."""
        return _sum(f for n, f in self.entries.items() if n == prefix or n.startswith(prefix + "."))

    def parts(self, depth: int = 1) -> Dict[str, Flops]:
        """Sums grouped by the first ``depth`` name components, in insertion order."""
        out: Dict[str, Flops] = defaultdict(Flops)
        for name, f in self.entries.items():
            key = ".".join(name.split(".")[:depth])
            out[key] = out[key] + f
        return dict(out)

    @property
    def forward(self) -> float:
        return sum(f.forward for f in self.entries.values())

    @property
    def backward(self) -> float:
        return sum(f.backward for f in self.entries.values())

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def table(self, depth: int = 2) -> str:
        """A fixed-width table of ``parts(depth)`` and the total, in GFLOPs (TFLOPs from 10 PF)."""
        rows = [*self.parts(depth).items(), ("total", Flops(self.forward, self.backward))]
        scale, unit = (1e12, "TF") if self.total >= 1e16 else (1e9, "GF")
        width = max(len(name) for name, _ in rows)
        head = [f"fwd {unit}", f"bwd {unit}", f"total {unit}"]
        lines = [f"{'part':<{width}}  " + "  ".join(f"{h:>12}" for h in head) + "  share"]
        for name, f in rows:
            share = f.total / self.total if self.total else 0.0
            lines.append(
                f"{name:<{width}}  {f.forward / scale:12.4f}  {f.backward / scale:12.4f}  "
                f"{f.total / scale:12.4f}  {share:6.1%}"
            )
        return "\n".join(lines)


# -- primitives ------------------------------------------------------------------------------


def linear_flops(
    rows: int, d_in: int, d_out: int, *, weight_grad: bool = False, input_grad: bool = False
) -> Flops:
    """``[rows, d_in] @ [d_in, d_out]``: forward 2·rows·d_in·d_out; backward that once for
    ``dX`` (``input_grad``) and once for ``dW`` (``weight_grad``). Bias adds count 0."""
    fwd = 2.0 * rows * d_in * d_out
    return Flops(fwd, fwd * (int(weight_grad) + int(input_grad)))


def conv2d_flops(
    out_pixels: int,
    c_in: int,
    c_out: int,
    kernel: int,
    groups: int = 1,
    *,
    weight_grad: bool = False,
    input_grad: bool = False,
) -> Flops:
    """A k×k convolution producing ``out_pixels`` (N·H_out·W_out) positions: forward
    2·out_pixels·c_out·(c_in/groups)·k²; backward as :func:`linear_flops`."""
    return linear_flops(
        out_pixels,
        c_in // groups * kernel * kernel,
        c_out,
        weight_grad=weight_grad,
        input_grad=input_grad,
    )


def attention_flops(
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    head_dim: int,
    *,
    grad: bool = False,
    causal: bool = False,
) -> Flops:
    """``softmax(Q K^T) V`` for [batch, heads, q_len, head_dim] queries over k_len keys:
    forward 2·2·batch·heads·q_len·k_len·head_dim (``QK^T`` and ``PV``), halved when ``causal``
    (q_len == k_len); backward 2× the forward when ``grad`` (dQ, dK, dP, dV)."""
    if causal and q_len != k_len:
        raise ValueError(f"causal attention needs q_len == k_len, got {q_len} and {k_len}")
    fwd = 4.0 * batch * heads * q_len * k_len * head_dim * (0.5 if causal else 1.0)
    return Flops(fwd, 2.0 * fwd if grad else 0.0)


# -- vision towers ---------------------------------------------------------------------------


def _vit_layer_flops(
    rows: int, images: int, tokens: int, hidden: int, heads: int, mlp: List[int], grad: bool
) -> Dict[str, Flops]:
    """One pre-norm ViT block on ``images`` × ``tokens`` (= rows): q/k/v/o, the MLP
    (``mlp`` = widths of its input matmuls then its output matmul's input), attention."""
    linear = _sum(
        linear_flops(rows, hidden, hidden, weight_grad=grad, input_grad=grad) for _ in "qkvo"
    )
    *inputs, inner = mlp
    linear = linear + _sum(
        linear_flops(rows, hidden, w, weight_grad=grad, input_grad=grad) for w in inputs
    )
    linear = linear + linear_flops(rows, inner, hidden, weight_grad=grad, input_grad=grad)
    attn = attention_flops(images, heads, tokens, tokens, hidden // heads, grad=grad)
    return {"linear": linear, "attention": attn}


def hf_vit_flops(tower, num_images: int) -> Dict[str, Flops]:
    """HF CLIP / SigLIP / DINOv2 vision encoders: patch embedding, the blocks, SigLIP's
    attention-pooling head. All ``num_hidden_layers`` run whatever ``select_layer``; in a
    trainable tower only those up to the selected hidden state get a backward."""
    config = tower.model.config
    trainable = tower.cfg.trainable
    d, heads, patch = config.hidden_size, config.num_attention_heads, config.patch_size
    grid = tower.cfg.image_size // patch  # DINOv2 runs at the tower's size, not the config's
    patches = grid * grid
    tokens = patches + int(tower.has_cls_token)
    rows = num_images * tokens
    if hasattr(config, "intermediate_size"):  # CLIP, SigLIP: fc1, fc2
        mlp = [config.intermediate_size, config.intermediate_size]
    elif getattr(config, "use_swiglu_ffn", False):  # DINOv2 SwiGLU: gate, up, down
        inner = (int(int(d * config.mlp_ratio) * 2 / 3) + 7) // 8 * 8
        mlp = [inner, inner, inner]
    else:  # DINOv2: fc1, fc2 of width hidden × mlp_ratio
        mlp = [int(d * config.mlp_ratio)] * 2
    layers = config.num_hidden_layers
    # hidden state k is layer k-1's output: layers k.. run but feed nothing (no backward)
    used = tower.cfg.select_layer % (layers + 1)
    out = {"patch_embed": conv2d_flops(num_images * patches, 3, d, patch, weight_grad=trainable)}
    layer = _vit_layer_flops(rows, num_images, tokens, d, heads, mlp, trainable)
    idle = _vit_layer_flops(rows, num_images, tokens, d, heads, mlp, False)
    out["linear"] = layer["linear"] * used + idle["linear"] * (layers - used)
    out["attention"] = layer["attention"] * used + idle["attention"] * (layers - used)
    if any(getattr(m, "use_head", False) for m in (tower.model, tower.model.base_model)):
        # SigLIP pooling head (forward only: its output is unused): one probe query; q from
        # the probe, k/v from all tokens; out projection and MLP on the probe
        out["head"] = (
            linear_flops(num_images, d, d)
            + linear_flops(rows, d, 2 * d)
            + attention_flops(num_images, heads, 1, tokens, d // heads)
            + linear_flops(num_images, d, d)
            + linear_flops(num_images, d, config.intermediate_size)
            + linear_flops(num_images, config.intermediate_size, d)
        )
    return out


def timm_vit_flops(tower, num_images: int) -> Dict[str, Flops]:
    """A timm ViT, read from the module (timm has no config object): the patch embedding and
    the blocks kept after pruning (up to the selected one), prefix tokens included."""
    model = tower.model
    trainable = tower.cfg.trainable
    proj = model.patch_embed.proj  # Conv2d(3, D, p, stride=p)
    patch = proj.kernel_size[0]
    patches = (tower.cfg.image_size // patch) ** 2
    tokens = patches + model.num_prefix_tokens
    rows = num_images * tokens
    out = {
        "patch_embed": conv2d_flops(
            num_images * patches, proj.in_channels, proj.out_channels, patch, weight_grad=trainable
        )
    }
    for block in model.blocks:
        mlp = block.mlp
        if not isinstance(getattr(mlp, "fc1", None), nn.Linear):
            raise ValueError(f"tower {tower.cfg.checkpoint}: unsupported timm MLP {type(mlp)}")
        hidden = mlp.fc1.out_features  # fc1 D → hidden, fc2 hidden → D
        layer = _vit_layer_flops(
            rows,
            num_images,
            tokens,
            model.embed_dim,
            block.attn.num_heads,
            [hidden, hidden],
            trainable,
        )
        for key, f in layer.items():
            out[key] = out.get(key, Flops()) + f
    return out


def convnext_flops(tower, num_images: int) -> Dict[str, Flops]:
    """An open_clip timm ConvNeXt trunk: every Conv2d (stem, downsampling, depthwise 7×7) and
    Linear (pointwise MLPs, applied at the current resolution) of the stem and the kept stages,
    walked in execution order while tracking the feature-map side."""
    trunk = tower.trunk
    trainable = tower.cfg.trainable
    side = tower.cfg.image_size
    out: Dict[str, Flops] = {}
    first = True
    for stage_name, part in [("stem", trunk.stem)] + [
        (f"stage_{i}", s) for i, s in enumerate(trunk.stages)
    ]:
        total = Flops()
        for m in part.modules():
            if isinstance(m, nn.Conv2d):
                k, s, p, dil = m.kernel_size[0], m.stride[0], m.padding, m.dilation[0]
                if isinstance(p, str) or m.kernel_size[0] != m.kernel_size[1]:
                    raise ValueError(f"tower {tower.cfg.checkpoint}: unsupported conv {m}")
                side = (side + 2 * p[0] - dil * (k - 1) - 1) // s + 1
                total = total + conv2d_flops(
                    num_images * side * side,
                    m.in_channels,
                    m.out_channels,
                    k,
                    m.groups,
                    weight_grad=trainable,
                    input_grad=trainable and not first,
                )
                first = False
            elif isinstance(m, nn.Linear):
                total = total + linear_flops(
                    num_images * side * side,
                    m.in_features,
                    m.out_features,
                    weight_grad=trainable,
                    input_grad=trainable,
                )
        out[stage_name] = total
    return out


def tower_flops(tower, num_images: int) -> Dict[str, Flops]:
    """FLOPs of one tower over ``num_images`` images, by piece; backward only when trainable
    (a trainable tower's first layer sees pixels: no input gradient)."""
    from cambrian_train.models.vision.hf import HFVisionTower
    from cambrian_train.models.vision.open_clip import OpenCLIPConvNeXtTower
    from cambrian_train.models.vision.timm import TimmViTTower

    if isinstance(tower, HFVisionTower):
        return hf_vit_flops(tower, num_images)
    if isinstance(tower, TimmViTTower):
        return timm_vit_flops(tower, num_images)
    if isinstance(tower, OpenCLIPConvNeXtTower):
        return convnext_flops(tower, num_images)
    raise ValueError(f"no FLOPs formula for tower type {type(tower).__name__}")


def _tower_tokens(tower) -> int:
    """Tokens a tower hands the connector (num_tokens, plus CLS for cls_patch)."""
    return tower.num_tokens + int(tower.cfg.select_feature == "cls_patch")


# -- connectors ------------------------------------------------------------------------------


def sampler_layer_flops(
    num_queries: int,
    q_dim: int,
    context_dim: int,
    hidden: int,
    num_heads: int,
    window_tokens: List[int],
    kv_dim: Optional[int] = None,
    num_contexts: Optional[int] = None,
) -> Dict[str, Flops]:
    """One SVA cross-attention layer (models/connectors/sva.py) on ``num_queries`` queries,
    query t of tower t's windows holding ``window_tokens[t]`` features of width ``kv_dim``
    (default ``hidden``), all trained; windows of more than one token carry a position embedding.
    ``num_contexts``: the contexts the queries share (one per image; default one per query).

    Per tower (``kv``): windows of few tokens are projected to keys and values (one matmul;
    their per-token products with the query are elementwise and count 0). Larger ones are
    folded (``folds_projections``): the query is mapped into feature space per head and the
    attention-weighted feature sum back (2·M·hidden·C each), the two products between them are
    the ``attention`` (4·M·heads·K·C), the query and the weights meet the position embedding
    projected (2·M·hidden·K each), and the backward reduces the position's share of the
    variance (2·M·K·C). ``positions``: projecting the position embedding for keys and values,
    once per forward whatever the batch (2·K·C·hidden each).
    """
    from cambrian_train.models.connectors.sva import folds_projections

    g = dict(weight_grad=True, input_grad=True)
    m = num_queries
    c = hidden if kv_dim is None else kv_dim
    n = m if num_contexts is None else num_contexts
    linear = (
        linear_flops(n, context_dim, hidden, **g)  # proj_context, once per context
        + linear_flops(n, hidden, hidden, **g)  # proj_in's context share, once per context
        + linear_flops(m, q_dim, hidden, **g)  # proj_in's query share
        + linear_flops(m, hidden, hidden, **g)  # q_proj
        + linear_flops(m, hidden, hidden, **g)  # o_proj
        + linear_flops(m, hidden, hidden, **g)  # proj_out.linear_1
        + linear_flops(m, hidden, q_dim, **g)  # proj_out.linear_2
    )
    kv, attn, positions = Flops(), Flops(), Flops()
    for k in window_tokens:
        if not folds_projections(k, c, hidden, num_heads):
            kv = kv + linear_flops(m * k, c, 2 * hidden, **g)  # k_proj_t, v_proj_t
            continue
        kv = kv + linear_flops(m, hidden, c, **g) * 2  # query → feature space, sum → values
        attn = attn + attention_flops(m, num_heads, 1, k, c, grad=True)
        if k > 1:  # a position embedding
            kv = kv + linear_flops(m, hidden, k, **g) * 2 + Flops(0.0, 2.0 * m * k * c)
            positions = positions + linear_flops(k, c, hidden, **g) * 2
    return {"linear": linear, "kv": kv, "attention": attn, "positions": positions}


def mlp_connector_flops(model, num_images: int) -> Dict[str, Flops]:
    """``mlp2x_gelu``: Linear(ΣC_t → D) (no dX unless a tower trains), GELU, Linear(D → D)."""
    towers = list(model.towers.values())
    rows = num_images * _tower_tokens(towers[0])
    d = model.llm.config.hidden_size
    tower_grad = any(t.cfg.trainable for t in towers)
    return {
        "mlp": linear_flops(
            rows, sum(t.hidden_size for t in towers), d, weight_grad=True, input_grad=tower_grad
        )
        + linear_flops(rows, d, d, weight_grad=True, input_grad=True)
    }


def sva_connector_flops(model, num_images: int) -> Dict[str, Flops]:
    """SVA: per-tower projections, ``connector_depth`` layers per query group over s_g×s_g
    windows, the group resize (0) and the final MLP."""
    conn, cfg = model.connector, model.cfg.connector
    width, d = cfg.vision_hidden_size, model.llm.config.hidden_size
    n = num_images
    out: Dict[str, Flops] = {}
    for name, side in zip(conn.tower_names, conn.tower_sides):
        tower = model.towers[name]
        rows = n * side * side
        out[f"aux.{name}"] = linear_flops(
            rows, tower.hidden_size, width, weight_grad=True, input_grad=tower.cfg.trainable
        ) + linear_flops(rows, width, width, weight_grad=True, input_grad=True)
    for g, q_side in enumerate(conn.query_sides):
        windows = [(s // q_side) ** 2 for s in conn.tower_sides]
        layer = sampler_layer_flops(
            n * q_side * q_side, width, width, width, cfg.num_heads, windows, num_contexts=n
        )
        for key, f in layer.items():
            out[f"sampler_{g}.{key}"] = f * cfg.connector_depth
    rows = n * model.cfg.image_token_len
    out["projector"] = linear_flops(
        rows, width * cfg.num_query_group, d, weight_grad=True, input_grad=True
    ) + linear_flops(rows, d, d, weight_grad=True, input_grad=True)
    return out


def perceiver_connector_flops(model, num_images: int) -> Dict[str, Flops]:
    """Perceiver resampler (models/connectors/perceiver.py) on ``num_images`` images: per-tower
    Linear(C_t → W) (no dX unless the tower trains), then per layer, with L latents over
    T = ΣT_t media tokens: ``to_q`` on L rows, ``to_kv`` on the T + L rows of [media; latents],
    attention of L queries over T + L keys (masked keys are still computed), ``to_out``, the
    feed-forward W → mult·W → W on L rows; the final Linear(W → D) on L rows. Embedding adds,
    norms and GELU count 0."""
    conn, cfg = model.connector, model.cfg.connector
    width, d = cfg.vision_hidden_size, model.llm.config.hidden_size
    n, latents = num_images, conn.image_token_len
    g = dict(weight_grad=True, input_grad=True)
    out: Dict[str, Flops] = {}
    media = 0
    for name in conn.tower_names:
        tower = model.towers[name]
        tokens = conn.tower_tokens[name]
        media += tokens
        out[f"media_proj.{name}"] = linear_flops(
            n * tokens, tower.hidden_size, width, weight_grad=True, input_grad=tower.cfg.trainable
        )
    rows, inner = n * latents, cfg.perceiver_ff_mult * width
    linear = (
        linear_flops(rows, width, width, **g)  # to_q
        + linear_flops(n * (media + latents), width, 2 * width, **g)  # to_kv
        + linear_flops(rows, width, width, **g)  # to_out
        + linear_flops(rows, width, inner, **g)  # feed-forward in
        + linear_flops(rows, inner, width, **g)  # feed-forward out
    )
    heads = cfg.num_heads
    attn = attention_flops(n, heads, latents, media + latents, width // heads, grad=True)
    out["layers.linear"] = linear * cfg.connector_depth
    out["layers.attention"] = attn * cfg.connector_depth
    out["projector"] = linear_flops(rows, width, d, **g)
    return out


def llm_sva_flops(model, num_images: int) -> Dict[str, Flops]:
    """The SVA layers inside the LLM: queries are the LLM hidden states at the image_token_len
    grid positions (newlines excluded); context the connector's global context (vision width)
    or their per-image mean (width D), once per image."""
    conn, cfg = model.connector, model.cfg.connector
    count = len(getattr(conn, "insert_after", []))
    if not count:
        return {}
    d, s = model.llm.config.hidden_size, conn.llm_query_side
    windows = [(t // s) ** 2 for t in conn.tower_sides]
    context_dim = cfg.vision_hidden_size if conn.llm_context == "connector" else d
    layer = sampler_layer_flops(
        num_images * s * s,
        d,
        context_dim,
        cfg.vision_hidden_size,
        cfg.num_heads,
        windows,
        num_contexts=num_images,
    )
    return {key: f * count for key, f in layer.items()}


# -- the LLM ---------------------------------------------------------------------------------


def llm_flops(
    llm, batch_size: int, seq_len: int, *, train_llm: bool, causal: bool = True
) -> Dict[str, Flops]:
    """A Llama-style decoder (q/k/v/o with grouped KV heads, gated MLP) on [B, L] from its HF
    config; the embedding lookup counts 0, the head runs on all B·L positions. The layers'
    Linear shapes are checked against the config (ValueError for other families)."""
    from cambrian_train.models.llm import decoder_layers

    c = llm.config
    d, heads, layers = c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or d // heads
    inner = c.intermediate_size
    expected = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim + 3 * d * inner
    from cambrian_train.models.lora import lora_layers

    first = decoder_layers(llm)[0]
    adapted = lora_layers(first)  # LoRA (models/lora.py): frozen bases plus the adapters
    adapter_ids = {id(m) for a in adapted for m in a.modules() if m is not a.get_base_layer()}
    found = sum(
        m.weight.numel()
        for m in first.modules()
        if isinstance(m, nn.Linear) and id(m) not in adapter_ids
    )
    if found != expected:
        raise ValueError(
            f"{type(llm).__name__}: decoder-layer Linear weights hold {found} values but a "
            f"Llama-style layer of this config holds {expected}; no FLOPs formula for this family"
        )
    rows = batch_size * seq_len
    # the connector's tokens enter at layer 0; with adapters only they get weight gradients
    g = dict(weight_grad=train_llm and not adapted, input_grad=True)
    per_layer = (
        linear_flops(rows, d, heads * head_dim, **g)  # q
        + linear_flops(rows, d, kv_heads * head_dim, **g) * 2  # k, v
        + linear_flops(rows, heads * head_dim, d, **g)  # o
        + linear_flops(rows, d, inner, **g) * 2  # gate, up
        + linear_flops(rows, inner, d, **g)  # down
    )
    attn = attention_flops(batch_size, heads, seq_len, seq_len, head_dim, grad=True, causal=causal)
    out = {
        "embed": Flops(),  # a lookup
        "linear": per_layer * layers,
        "attention": attn * layers,
        "lm_head": linear_flops(rows, d, c.vocab_size, **g),
    }
    if adapted:  # x → A (in → r) → B (r → out) per adapted matrix; trained when the LLM is
        a = dict(weight_grad=train_llm, input_grad=True)
        lora = _sum(
            linear_flops(rows, m.in_features, m.r["default"], **a)
            + linear_flops(rows, m.r["default"], m.out_features, **a)
            for m in adapted
        )
        out["lora"] = lora * layers
    return out


# -- the model -------------------------------------------------------------------------------


def model_flops(
    model,
    batch_size: int,
    seq_len: int,
    num_images: int = 1,
    *,
    train_llm: bool,
    causal: bool = True,
    recompute: bool = False,
) -> FlopsBreakdown:
    """FLOPs of one training step of ``model`` on ``batch_size`` samples of ``seq_len``
    positions with ``num_images`` image slots each (data.max_images), by part:
    ``tower.<name>.*``, ``connector.*``, ``llm_sva.*`` (SVA layers inside the LLM), ``llm.*``.

    ``train_llm``: the stage's flag (connector always trains, towers per ``tower.trainable``).
    Everything is linear in ``batch_size`` but the ``*.positions`` entries (the SVA layers'
    position embeddings projected once per forward, well under 1% at real shapes): pass the
    global batch for FLOPs per optimiser step.
    See the module docstring for ``causal`` and ``recompute``.
    """
    out = FlopsBreakdown()
    images = batch_size * num_images
    for name, tower in model.towers.items():
        for key, f in tower_flops(tower, images).items():
            out.add(f"tower.{name}.{key}", f)
    formulas = {"sva": sva_connector_flops, "perceiver": perceiver_connector_flops}
    connector = formulas.get(model.cfg.connector.name, mlp_connector_flops)(model, images)
    for key, f in connector.items():
        out.add(f"connector.{key}", f)
    llm_sva = llm_sva_flops(model, images)
    for key, f in llm_sva.items():
        out.add(f"llm_sva.{key}", f)
    llm = llm_flops(model.llm, batch_size, seq_len, train_llm=train_llm, causal=causal)
    for key, f in llm.items():
        out.add(f"llm.{key}", f)
    if recompute:  # gradient checkpointing reruns each decoder layer (and its SVA hook)
        redo = llm["linear"] + llm["attention"] + _sum(llm_sva.values())
        out.add("recompute", Flops(0.0, redo.forward))
    return out
