"""Multimodal sequence packing: the packer, the packed collate, the packed stream's resume, and
the model computing on a packed batch exactly what it computes on the same samples unpacked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cambrian_train.config.schema import (
    ConnectorConfig,
    InsertConfig,
    LLMConfig,
    ModelConfig,
    VisionTowerConfig,
)
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import Sample, Skipped
from cambrian_train.data.loader import BatchStream, SkipStats
from cambrian_train.data.packing import RowPacker, collate_packed, collate_rows
from cambrian_train.data.sampler import EpochSampler
from cambrian_train.models import build_model
from cambrian_train.models.loss import next_token_targets
from cambrian_train.tiny import ensure_asset

SIDE = 4  # image_token_len 16 with row newlines: 20 positions per image
SLOT = SIDE * (SIDE + 1)
IMAGE = 64


def make_sample(index: int, length: int, images: int, gen: torch.Generator) -> Sample:
    ids = torch.randint(5, 250, (length,), generator=gen)
    starts = [2 + k * (SLOT + 1) for k in range(images)]
    assert not starts or starts[-1] + SLOT <= length
    labels = ids.clone()
    labels[: length // 3] = -100  # a prompt part, unsupervised
    for s in starts:
        labels[s : s + SLOT] = -100
    pixels = {"clip": torch.randn(images, 3, IMAGE, IMAGE, generator=gen)}
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * images).reshape(-1, 4)
    return Sample(f"s{index}", ids.tolist(), labels.tolist(), starts, pixels, boxes, index)


def build(connector: str, attn: str = "sdpa"):
    llm = LLMConfig(
        checkpoint=ensure_asset("llama"),
        template="llama3",
        num_layers=4,
        hidden_size=128,
        attn_implementation=attn,
    )
    tokens = 64 if connector == "sva" else 16
    tower = VisionTowerConfig(
        source="hf_clip", checkpoint=ensure_asset("clip"), image_size=IMAGE, num_tokens=tokens
    )
    if connector == "sva":
        conn = ConnectorConfig(
            name="sva",
            vision_hidden_size=32,
            num_heads=4,
            query_num_list=[16],
            connector_depth=1,
            insert=InsertConfig(start=0, stride=2, count=2),
        )
    else:
        conn = ConnectorConfig(name="mlp2x_gelu")
    torch.manual_seed(0)
    cfg = ModelConfig(llm=llm, towers={"clip": tower}, connector=conn, image_token_len=16)
    return build_model(cfg).train()


def per_token_losses(model, batch) -> torch.Tensor:
    """[B, L] cross-entropy of each position's next-token target (0 where none): a plain
    full-logits reference, not the chunked loss under test."""
    hidden = model.hidden_states(batch)
    logits = hidden @ model.llm.get_output_embeddings().weight.t()
    targets = next_token_targets(batch.labels)
    flat = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none"
    )
    return flat.reshape(targets.shape)


SAMPLES = [(60, 1), (35, 0), (80, 2), (41, 1), (23, 0), (50, 1)]  # (tokens, images)


@pytest.mark.parametrize("connector,attn", [("sva", "sdpa"), ("mlp", "eager")])
def test_packed_batch_equals_unpacked(connector, attn):
    gen = torch.Generator().manual_seed(1)
    samples = [make_sample(i, n, k, gen) for i, (n, k) in enumerate(SAMPLES)]
    model = build(connector, attn)
    specs = model.image_specs()
    params = [p for p in model.parameters() if p.requires_grad]

    # unpacked: every sample alone in its row, right-padded
    plain = collate(samples, 96, 2, SLOT, 0, specs)
    token = per_token_losses(model, plain)
    reference = token.sum(dim=1)  # per-sample summed loss
    ref_grads = torch.autograd.grad(reference.sum(), params, allow_unused=True)

    # packed: three rows of 128 tokens, three image slots per row
    packer = RowPacker(3, 128, 3)
    ready = [packer.add(s) for s in samples]
    assert not any(ready[:-1])
    rows = packer.take()
    assert sum(len(r) for r in rows) == len(samples) and max(len(r) for r in rows) >= 2
    batch = collate_packed(rows, 128, 3, SLOT, 0, specs)
    token = per_token_losses(model, batch)
    packed = {}
    for r, row in enumerate(rows):
        for seg, s in enumerate(row, start=1):
            packed[s.index] = token[r][batch.segment_ids[r] == seg].sum()
    got = torch.stack([packed[i] for i in range(len(samples))])
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(got.sum(), params, allow_unused=True)
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None
            continue
        # 1e-5 relative to the gradient's scale (float32 sums in another order); a floor for
        # gradients that are zero in exact arithmetic (a LayerNorm bias before a softmax)
        scale = max(float(r.abs().max()), 1e-3)
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5 * scale)

    # and the model's own (chunked) loss over the packed batch is the same total and count
    total, count = model(batch, reduction="sum")
    torch.testing.assert_close(total, reference.sum(), rtol=1e-5, atol=1e-5)
    assert count == sum(1 for lab in plain.labels[:, 1:].flatten() if lab != -100)


def test_packed_collate_layout():
    gen = torch.Generator().manual_seed(0)
    a, b = make_sample(0, 30, 1, gen), make_sample(1, 12, 0, gen)
    batch = collate_packed([[a, b], []], 48, 2, SLOT, 0, {"clip": _spec()})
    assert batch.packed
    assert batch.position_ids[0].tolist() == list(range(30)) + list(range(12)) + [0] * 6
    assert batch.segment_ids[0].tolist() == [1] * 30 + [2] * 12 + [0] * 6
    assert batch.segment_ids[1].tolist() == [0] * 48
    # the second sample's first label is not a target of the first sample's last token
    assert batch.labels[0, 30] == -100 and batch.labels[0, 31] == b.labels[1]
    assert batch.image_mask.tolist() == [[True, False], [False, False]]
    assert batch.vision_positions[0, 0].tolist() == list(range(2, 2 + SLOT))
    assert torch.equal(batch.pixel_values["clip"][0, 0], a.pixel_values["clip"][0])


def _spec():
    from cambrian_train.models.vision.base import ImageSpec

    return ImageSpec(IMAGE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_packer_first_fit_and_carry():
    gen = torch.Generator().manual_seed(0)
    packer = RowPacker(2, 100, 2)
    lengths = [70, 60, 25, 50, 30, 45]
    ready = [packer.add(make_sample(i, n, 0, gen)) for i, n in enumerate(lengths)]
    # 70 → row 0, 60 → row 1, 25 → row 0 (95), 50 fits neither: carried; 30 → row 1 (90);
    # 45 carried: two carried samples close the batch
    assert ready == [False, False, False, False, False, True]
    carried = [s.index for s in packer.carry]
    rows = packer.take()
    assert [[s.index for s in r] for r in rows] == [[0, 2], [1, 4]]
    assert carried == [3, 5]
    assert [[s.index for s in r.samples] for r in packer.rows] == [[3, 5], []]
    with pytest.raises(ValueError, match="3 images cannot fit .* 2 image slots"):
        packer.add(make_sample(9, 80, 3, gen))


def test_shared_image_budget_equals_per_row_slots():
    """Rows of a micro-batch sharing one image budget (text-only rows take no slot) compute
    what one-slot-per-row batches compute, with fewer tower images."""
    gen = torch.Generator().manual_seed(2)
    samples = [make_sample(i, n, k, gen) for i, (n, k) in enumerate(SAMPLES)]  # 5 images
    model = build("sva")
    specs = model.image_specs()
    plain = collate(samples, 96, 2, SLOT, 0, specs)  # 6 rows x 2 slots = 12 tower images
    packer = RowPacker(6, 96, 3, group_rows=3, max_per_row=1)
    assert not any(packer.add(s) for s in samples[:-1]) and packer.add(samples[-1])
    rows = packer.take()
    assert [len(r) for r in rows] == [1] * 6
    batch = collate_rows(rows, 96, 3, SLOT, 0, specs, group_rows=3, packed=False)
    assert not batch.packed and batch.image_mask.shape == (2, 3)  # 6 tower images
    order = [r[0].index for r in rows]
    assert sorted(order) == list(range(6))
    ref = per_token_losses(model, plain)[order]
    torch.testing.assert_close(per_token_losses(model, batch), ref, rtol=1e-5, atol=1e-5)


def test_packer_respects_the_image_budget():
    gen = torch.Generator().manual_seed(0)
    packer = RowPacker(2, 200, 2)
    for i in range(3):
        packer.add(make_sample(i, 50, 2, gen))  # each fills a row's image slots
    assert [[s.index for s in r.samples] for r in packer.rows] == [[0], [1]]
    assert [s.index for s in packer.carry] == [2]
    # one budget of 3 images for both rows: the second 2-image sample waits, text goes in
    packer = RowPacker(2, 200, 3, group_rows=2)
    for i, k in enumerate([2, 2, 0, 1]):
        packer.add(make_sample(i, 50, k, gen))
    assert [[s.index for s in r.samples] for r in packer.rows] == [[0, 2, 3], []]
    assert [s.index for s in packer.carry] == [1]


class ListData(torch.utils.data.Dataset):
    def __init__(self, lengths, bad=()):
        gen = torch.Generator().manual_seed(0)
        self.items = [
            Skipped(i, f"s{i}", "bad_record", "test") if i in bad else make_sample(i, n, 0, gen)
            for i, n in enumerate(lengths)
        ]
        for i, item in enumerate(self.items):  # first token = 5 + index: names the sample
            if isinstance(item, Sample):
                item.input_ids[0] = 5 + i

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _ids(batch):
    """[[5 + index of each sample], …] per row: which samples a batch holds."""
    out = []
    for r in range(batch.batch_size):
        seg = batch.segment_ids[r]
        out.append([int(batch.input_ids[r][seg == k][0]) for k in range(1, int(seg.max()) + 1)])
    return out


def test_packed_stream_resumes_exactly():
    lengths = [int(x) for x in torch.randint(10, 90, (40,), generator=torch.Generator())]
    data = ListData(lengths, bad={7, 19})

    def stream(state=None):
        sampler = EpochSampler(len(data), seed=3)
        if state is not None:
            sampler.load_state_dict(state)
        collate_fn = lambda rows: collate_packed(rows, 100, 1, SLOT, 0, {"clip": _spec()})  # noqa
        return BatchStream(
            data,
            sampler,
            2,
            collate_fn,
            SkipStats(),
            packer=RowPacker(2, 100, 1),
            carry=None if state is None else state["carry"],
        )

    full = stream()
    reference = [_ids(next(full)) for _ in range(12)]
    first = stream()
    for _ in range(5):
        next(first)
    state = first.state_dict()
    assert state["carry"], "the test should resume with carried samples"
    resumed = stream(state)
    assert [_ids(next(resumed)) for _ in range(7)] == reference[5:]
    # nothing lost or repeated: over ~2 epochs every valid sample is packed once or twice
    seen = [i - 5 for b in reference for row in b for i in row]
    valid = [i for i in range(len(data)) if i not in (7, 19)]
    assert len(seen) > len(valid)
    assert sorted(set(seen)) == valid
    assert max(seen.count(i) for i in valid) == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        (["data.packing=true", "data.pack_length=64"], "data.pack_length=64 is shorter than"),
        (["data.pack_length=256"], "data.packing=false"),
        (["data.image_budget=0"], "data.image_budget=0 < data.max_images=1"),
        (
            ["data.packing=true", "data.pack_images=2", "data.image_budget=4"],
            "both set: keep one",
        ),
    ],
)
def test_packing_settings_are_checked_before_start(compose, tiny_overrides, extra, message):
    from cambrian_train.config.validate import ConfigError

    with pytest.raises(ConfigError, match=message):
        compose([*tiny_overrides, *extra], validate_it=True)


def test_batch_shape_from_the_config(compose, tiny_overrides):
    from cambrian_train.data.packing import batch_shape

    cfg = compose([*tiny_overrides, "data.packing=true", "data.pack_length=448"])
    stage = cfg.stages["finetune"]  # max_length 112
    shape = batch_shape(cfg.data, stage, 20)
    assert (shape.seq_len, shape.images, shape.group_rows) == (448, 448 // 20, 1)
    packer = shape.packer(4)
    assert packer.max_per_row is None and packer.images == 22
    cfg = compose([*tiny_overrides, "data.image_budget=3"])
    shape = batch_shape(cfg.data, cfg.stages["finetune"], 20)  # per device batch 2
    assert (shape.seq_len, shape.images, shape.group_rows, shape.packing) == (112, 3, 2, False)
    assert shape.packer(4).max_per_row == 1
