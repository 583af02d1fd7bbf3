"""Training-step throughput on a realistic length mix: padded vs packed, and against HF LLaVA.

One process, the variants' steps interleaved (A B C A B C …) so machine noise hits them alike.
Every variant runs a full training step (forward, backward, AdamW) of stage 2: connector and
LLM train, the tower is frozen. The models are random-init HF checkpoints written to a temporary
directory and loaded through ``from_pretrained``, as a real run loads them:

- LLM: Llama, ``--hidden`` wide, ``--layers`` layers, ``--vocab`` tokens; vision: HF CLIP ViT at
  224 px, patch 16 (196 patch tokens, features from the second-to-last layer); connector
  ``mlp2x_gelu``, no row newlines — the LLaVA-1.5 architecture, so
  ``LlavaForConditionalGeneration`` can be built at exactly the same shapes.
- The length mix (``--mix``), modelled on LLaVA-665K at a 196-token image: 80 % of samples have
  one image and a text part of lognormal length (median 110 tokens, σ 0.9, clipped to [20,
  L - 196]); 20 % are text-only multi-turn conversations (median 300, σ 0.8, clipped to [60, L]).
  Labels supervise the second half of each text part.

Variants, each at ``--batch`` rows of ``--length`` positions:

- ``hf_llava``: ``LlavaForConditionalGeneration`` on the samples padded to L (its towers see only
  the real images; its loss builds the full logits);
- ``padded``: ours, one sample per row padded to L, one image slot per row;
- ``packed``: ours with ``data.packing`` (first-fit rows of L tokens, ``pack_images`` slots per
  row) on the same sample stream;
- ``packed_budget``: packed, with one budget of ``--image-budget`` image slots shared by the
  step's rows (``data.image_budget``): the tower runs on fewer empty slots.

Printed: per variant the median step time, useful (supervised-or-not, non-pad) tokens per
second, samples per step, padding fraction; the ratios packed/padded and ours/HF.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from cambrian_train.config.schema import ConnectorConfig, LLMConfig, ModelConfig, VisionTowerConfig
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import Sample
from cambrian_train.data.packing import RowPacker, collate_rows
from cambrian_train.models import build_model
from cambrian_train.models.llm import causal_attention

IMAGE, PATCH, TOKENS = 224, 16, 196
IMAGE_ID = 3  # the placeholder id at image positions


def save_checkpoints(root: str, args) -> tuple:
    llama = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=args.length,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    clip = CLIPVisionConfig(
        image_size=IMAGE,
        patch_size=PATCH,
        hidden_size=args.vision_hidden,
        intermediate_size=args.vision_hidden * 4,
        num_hidden_layers=args.vision_layers,
        num_attention_heads=args.vision_hidden // 64,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(llama).save_pretrained(f"{root}/llm")
    CLIPVisionModel(clip).save_pretrained(f"{root}/clip")
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
    ).save_pretrained(f"{root}/clip")
    return llama, clip


def ours(root: str, args):
    cfg = ModelConfig(
        llm=LLMConfig(
            checkpoint=f"{root}/llm",
            template="llama3",
            num_layers=args.layers,
            hidden_size=args.hidden,
        ),
        towers={
            "clip": VisionTowerConfig(
                source="hf_clip", checkpoint=f"{root}/clip", image_size=IMAGE, num_tokens=TOKENS
            )
        },
        connector=ConnectorConfig(name="mlp2x_gelu"),
        image_token_len=TOKENS,
        image_newline=False,
    )
    model = build_model(cfg)
    for p in model.towers.parameters():
        p.requires_grad_(False)
    return model.train()


def hf_llava(llama: LlamaConfig, clip: CLIPVisionConfig):
    config = LlavaConfig(
        vision_config=clip,
        text_config=llama,
        image_token_id=IMAGE_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",  # CLS dropped: 196 patch tokens, as ours
        projector_hidden_act="gelu",
        image_seq_length=TOKENS,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    return model.train()


def length_mix(n: int, length: int, rng: np.random.Generator) -> list:
    """[(text tokens, images)] of the mix in the module docstring."""
    out = []
    for _ in range(n):
        if rng.random() < 0.8:
            text = int(np.clip(rng.lognormal(np.log(110), 0.9), 20, length - TOKENS))
            out.append((text, 1))
        else:
            out.append((int(np.clip(rng.lognormal(np.log(300), 0.8), 60, length)), 0))
    return out


def make_samples(mix, vocab: int, rng: np.random.Generator) -> list:
    samples = []
    for i, (text, images) in enumerate(mix):
        ids = rng.integers(10, vocab, text + images * TOKENS).tolist()
        starts = [1] if images else []
        for s in starts:
            ids[s : s + TOKENS] = [IMAGE_ID] * TOKENS
        labels = list(ids)
        cut = len(ids) - text // 2
        labels[:cut] = [-100] * cut
        pixels = {"clip": torch.randn(images, 3, IMAGE, IMAGE)}
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * images).reshape(-1, 4)
        samples.append(Sample(f"s{i}", ids, labels, starts, pixels, boxes, i))
    return samples


def padded_batches(samples, rows: int, length: int, specs):
    for first in range(0, len(samples) - rows + 1, rows):
        chunk = samples[first : first + rows]
        yield collate(chunk, length, 1, TOKENS, 0, specs), len(chunk)


def packed_batches(samples, rows: int, length: int, images: int, specs, group_rows: int = 1):
    packer = RowPacker(rows, length, images, group_rows=group_rows)
    for s in samples:
        if packer.add(s):
            taken = packer.take()
            batch = collate_rows(taken, length, images, TOKENS, 0, specs, group_rows=group_rows)
            yield batch, sum(map(len, taken))


def llava_inputs(batch) -> dict:
    """Our padded batch as HF LLaVA's inputs (the same ids, labels and real images)."""
    real = batch.image_mask.flatten()
    pixels = batch.pixel_values["clip"].flatten(0, 1)[real]
    return dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        pixel_values=pixels if len(pixels) else None,
        labels=batch.labels,
    )


def train_step(model, optimizer, batch, hf: bool) -> float:
    optimizer.zero_grad(set_to_none=True)
    if hf:
        loss = model(**llava_inputs(batch), use_cache=False).loss
    else:
        with causal_attention(model.llm):
            loss = model(batch)
    loss.backward()
    optimizer.step()
    return float(loss)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024, help="L: positions per row")
    parser.add_argument("--batch", type=int, default=4, help="rows per step")
    parser.add_argument("--pack-images", type=int, default=3, help="image slots per packed row")
    parser.add_argument(
        "--image-budget", type=int, default=8, help="image slots per step (packed_budget)"
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--vision-hidden", type=int, default=192)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        llama, clip = save_checkpoints(root, args)
        models = {"padded": ours(root, args)}
        # the same model: only the batches differ
        models["packed"] = models["packed_budget"] = models["padded"]
        if not args.skip_hf:
            models["hf_llava"] = hf_llava(llama, clip)
    specs = models["padded"].image_specs()
    n = args.batch * (args.steps + 1) * 4  # enough samples for every packed step
    samples = make_samples(length_mix(n, args.length, rng), args.vocab, rng)
    streams = {
        "padded": padded_batches(samples, args.batch, args.length, specs),
        "packed": packed_batches(samples, args.batch, args.length, args.pack_images, specs),
        "packed_budget": packed_batches(
            samples, args.batch, args.length, args.image_budget, specs, group_rows=args.batch
        ),
    }
    if "hf_llava" in models:
        streams["hf_llava"] = padded_batches(samples, args.batch, args.length, specs)
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        for name, m in models.items()
    }
    times = {name: [] for name in streams}
    tokens = {name: [] for name in streams}
    counts = {name: [] for name in streams}
    slots = {name: [] for name in streams}
    for step in range(args.steps + 1):  # step 0 warms up
        for name, stream in streams.items():
            batch, count = next(stream)
            start = time.perf_counter()
            train_step(models[name], optimizers[name], batch, name == "hf_llava")
            seconds = time.perf_counter() - start
            if step:
                times[name].append(seconds)
                tokens[name].append(int(batch.attention_mask.sum()))
                counts[name].append(count)
                slots[name].append(batch.image_mask.numel())
    positions = args.batch * args.length
    print(
        f"rows {args.batch} x {args.length} positions; Llama {args.layers} x {args.hidden}, "
        f"vocab {args.vocab}; CLIP {args.vision_layers} x {args.vision_hidden} at {IMAGE} px "
        f"({TOKENS} tokens); mix: 80% one image + text (median 110), 20% text-only (median 300)"
    )
    print(
        "| variant | step s (median) | useful tokens/s | samples/step | image slots/step "
        "| padding |"
    )
    print("|---|---|---|---|---|---|")
    rate = {}
    for name in streams:
        step_s = statistics.median(times[name])
        rate[name] = sum(tokens[name]) / sum(times[name])
        pad = 1 - sum(tokens[name]) / (positions * len(tokens[name]))
        samples_per_step = sum(counts[name]) / len(counts[name])
        tower = statistics.mean(slots[name]) if name != "hf_llava" else float("nan")
        print(
            f"| {name} | {step_s:.3f} | {rate[name]:.0f} | {samples_per_step:.1f} | "
            f"{tower:.0f} | {pad:.1%} |"
        )
    print(f"packed / padded useful tokens/s: {rate['packed'] / rate['padded']:.2f}x")
    print(f"packed_budget / padded useful tokens/s: {rate['packed_budget'] / rate['padded']:.2f}x")
    if "hf_llava" in rate:
        hf_s = statistics.median(times["hf_llava"])
        print(
            f"padded step time, HF LLaVA / ours: {hf_s / statistics.median(times['padded']):.2f}x;"
            f" useful tokens/s, packed ours / HF LLaVA: {rate['packed'] / rate['hf_llava']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
