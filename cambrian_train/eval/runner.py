"""The benchmark runner behind ``cambrian-eval``: items → generations → predictions + results.

One benchmark runs as: ``items = load_items(benchmark, data, limit)``; every prompt is encoded
(exact ``item.prompt`` through the model's chat template); items are sorted by prompt length
(longest first, ties in item order) and cut into batches of ``batch_size`` (:func:`plan_batches`);
each batch is left-padded (to its longest prompt, or to the longest of the whole set with
``static_shapes`` so a compiling backend sees one prompt shape) and generated; ``bench.extract``
and ``bench.score`` turn the generations into the results.

Data parallel: with ``world_size`` > 1 (torchrun; ``torch.distributed`` initialised by the
caller) process ``rank`` generates the whole batches ``rank, rank + world_size, ...`` of the
one-process plan -- whole batches, not items, so every row is generated in exactly the batch (same
rows, same padding, same sampling seed ``seed + batch number``) it would have in one process, and
no result depends on how floating-point sums vary with batch composition. The generations are
gathered to every rank (``all_gather_object``) and put back in item order; rank 0 writes the
files, which are byte-identical to a one-process run's.

Files (:func:`run_benchmark`): ``OUT/<benchmark>/predictions.jsonl`` (one line per item, in item
order: id, prompt, prediction, extracted, answer, and ``correct`` for items with options) and
``OUT/<benchmark>/results.json`` (:func:`results_record`); OUT may be an fsspec URL (storage.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from cambrian_train import storage
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import ImageTextEncoder, Sample
from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import IMAGE_TAG
from cambrian_train.data.tiling import enabled
from cambrian_train.data.tokenize import Encoded
from cambrian_train.eval.benchmarks import Benchmark, EvalItem
from cambrian_train.infer.chat import turn_end
from cambrian_train.infer.generate import Sampler, generate

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class Decoding:
    """Decoding settings of an evaluation (recorded in results.json).

    ``temperature`` 0 is greedy; above 0 samples, batch ``k`` of the plan from a generator
    seeded with ``seed + k`` (so sampled results do not depend on the number of processes).
    ``stop`` strings are added to the template's own end-of-turn handling.
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: Tuple[str, ...] = ()

    def __post_init__(self):
        Sampler(self.temperature, self.top_k, self.top_p)  # ValueError naming a bad value
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop={list(self.stop)!r}: stop strings must be non-empty strings")


@dataclass(frozen=True)
class Stopping:
    """How generation ends for the model: eos ids and stop strings (template's + the user's)."""

    eos_ids: Tuple[int, ...]
    stop: Tuple[str, ...]

    @classmethod
    def of(cls, encoder: ImageTextEncoder, decoding: Decoding) -> Stopping:
        eos, template_stop = turn_end(encoder)
        return cls(tuple(eos), tuple(decoding.stop) + tuple(template_stop))


def load_items(
    benchmark: Benchmark, data: Union[str, Path], limit: Optional[int] = None
) -> List[EvalItem]:
    """The benchmark's items read from ``data`` (its first ``limit`` items when given)."""
    if not storage.exists(data):
        raise ValueError(f"{benchmark.name}: data path {data} does not exist")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be >= 1")
    items = benchmark.load(data)
    if not items:
        raise ValueError(f"{benchmark.name}: {data} holds no item")
    return items[:limit] if limit is not None else items


def encode_items(
    encoder: ImageTextEncoder, benchmark: Benchmark, items: Sequence[EvalItem]
) -> List[Encoded]:
    """Each item's generation prompt; ValueError naming the item when it cannot be used."""
    encoded = []
    for item in items:
        tags = item.prompt.count(IMAGE_TAG)
        if tags != len(item.images):
            raise ValueError(
                f"{benchmark.name}: item {item.id} has {tags} {IMAGE_TAG} tags for "
                f"{len(item.images)} images"
            )
        try:
            encoded.append(encoder.encode_prompt(item.prompt, encoder.tile_counts(item.images)))
        except RecordError as err:
            raise ValueError(
                f"{benchmark.name}: item {item.id}: {err} (the model's max_length is "
                f"{encoder.max_length})"
            ) from None
    return encoded


def plan_batches(lengths: Sequence[int], batch_size: int) -> List[List[int]]:
    """Item indices sorted by prompt length (longest first, ties in item order), in batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def shard_batches(num_batches: int, rank: int, world_size: int) -> List[int]:
    """Numbers of the batches process ``rank`` of ``world_size`` generates (strided)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
    return list(range(rank, num_batches, world_size))


def item_images(
    encoder: ImageTextEncoder, item: EvalItem
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """→ ({tower: [n, 3, S, S]}, content boxes [n, 4]) for the item's images (paths or bytes);
    ValueError naming the item when one is missing or cannot be decoded."""
    try:
        return encoder.load_images(item.images)
    except RecordError as err:
        raise ValueError(f"item {item.id}: {err.detail}") from None


def make_batch(
    encoder: ImageTextEncoder,
    items: Sequence[EvalItem],
    prompts: Sequence[Encoded],
    seq_len: int,
    num_slots: int,
):
    """A left-padded generation batch of ``items`` (their prompts padded to ``seq_len``)."""
    samples = []
    for item, enc in zip(items, prompts):
        pixels, boxes = item_images(encoder, item)
        samples.append(Sample(item.id, enc.input_ids, enc.labels, enc.image_starts, pixels, boxes))
    return collate(
        samples,
        seq_len,
        num_slots,
        encoder.slot_len,
        encoder.tokenizer.pad_token_id,
        encoder.image_specs,
        left_pad=True,
    )


@torch.no_grad()
def generate_shard(
    model,
    encoder: ImageTextEncoder,
    items: Sequence[EvalItem],
    prompts: Sequence[Encoded],
    batches: Sequence[Sequence[int]],
    batch_numbers: Sequence[int],
    decoding: Decoding,
    static_shapes: bool = False,
) -> Dict[int, str]:
    """Generate the batches numbered ``batch_numbers`` of the plan → {item index: text}.

    Every batch has as many image slots as the item with the most images (at least one).
    """
    stopping = Stopping.of(encoder, decoding)
    device = next(model.parameters()).device
    num_slots = max(1, max(len(p.image_starts) for p in prompts))  # tiles with data.tiling
    longest = max(len(p.input_ids) for p in prompts)
    out: Dict[int, str] = {}
    for number in batch_numbers:
        rows = batches[number]
        seq_len = longest if static_shapes else max(len(prompts[i].input_ids) for i in rows)
        batch = make_batch(
            encoder, [items[i] for i in rows], [prompts[i] for i in rows], seq_len, num_slots
        )
        texts = decode_batch(model, batch.to(device), encoder.tokenizer, decoding, stopping, number)
        out.update(zip(rows, texts))
    return out


def decode_batch(
    model, batch, tokenizer, decoding: Decoding, stopping: Stopping, number: int
) -> List[str]:
    """``generate`` with the run's decoding settings; batch ``number`` of a plan draws from
    seed ``decoding.seed + number`` (so a plan's sampled answers do not depend on sharding)."""
    return generate(
        model,
        batch,
        tokenizer,
        decoding.max_new_tokens,
        temperature=decoding.temperature,
        top_k=decoding.top_k,
        top_p=decoding.top_p,
        seed=decoding.seed + number,
        stop=stopping.stop,
        eos_token_id=list(stopping.eos_ids),
    )


def gather_generations(local: Dict[int, str], num_items: int, world_size: int) -> List[str]:
    """Every process's {item index: text} → all texts in item order (on every process)."""
    parts = [local]
    if world_size > 1:
        parts = [None] * world_size
        dist.all_gather_object(parts, local)
    merged: Dict[int, str] = {}
    for part in parts:
        assert not set(part) & set(merged), "two processes generated the same item"
        merged.update(part)
    assert sorted(merged) == list(range(num_items)), "some item was generated by no process"
    return [merged[i] for i in range(num_items)]


def evaluate(
    model,
    tokenizer,
    encoder: ImageTextEncoder,
    benchmark: Benchmark,
    items: Sequence[EvalItem],
    *,
    batch_size: int = 8,
    decoding: Optional[Decoding] = None,
    rank: int = 0,
    world_size: int = 1,
    static_shapes: bool = False,
) -> List[str]:
    """The generated text for every item, in item order (returned on every process).

    With ``world_size`` > 1, ``torch.distributed`` must be initialised; each process generates
    its strided share of the batches (module docstring). ``decoding`` None: greedy defaults.
    """
    decoding = decoding or Decoding()
    if tokenizer is not encoder.tokenizer:
        raise ValueError("the tokenizer must be the encoder's (load_pretrained returns both)")
    if not items:
        raise ValueError(f"{benchmark.name}: no item to evaluate")
    prompts = encode_items(encoder, benchmark, items)
    batches = plan_batches([len(p.input_ids) for p in prompts], batch_size)
    mine = shard_batches(len(batches), rank, world_size)
    most_images = max(len(p.image_starts) for p in prompts)
    if most_images > encoder.max_images:
        log.warning(
            "%s: an item has %d %s; the model was trained with at most %d per prompt",
            benchmark.name,
            most_images,
            "image slots (tiles)" if enabled(encoder.tiling) else "images",
            encoder.max_images,
        )
    log.info(
        "%s: %d items in %d batches; process %d of %d generates %d",
        benchmark.name,
        len(items),
        len(batches),
        rank,
        world_size,
        len(mine),
    )
    was_training = model.training
    model.eval()
    try:
        local = generate_shard(
            model, encoder, items, prompts, batches, mine, decoding, static_shapes
        )
    finally:
        model.train(was_training)
    return gather_generations(local, len(items), world_size)


def item_correct(benchmark: Benchmark, item: EvalItem, extracted: str) -> Optional[bool]:
    """For an item with options: whether the extracted answer equals the gold answer put through
    the same extraction; None otherwise (open answers are scored by the benchmark's own rules:
    several annotators, tolerances, pairs -- see results.json)."""
    if not item.choices or not isinstance(item.answer, str):
        return None
    return extracted != "" and extracted == benchmark.extract(item.answer, item)


def prediction_records(
    benchmark: Benchmark, items: Sequence[EvalItem], generations: Sequence[str]
) -> Tuple[List[Dict[str, Any]], List[str]]:
    """→ (one predictions.jsonl record per item, the extracted answers)."""
    records, extracted = [], []
    for item, text in zip(items, generations):
        answer = benchmark.extract(text, item)
        record = {
            "id": item.id,
            "prompt": item.prompt,
            "prediction": text,
            "extracted": answer,
            "answer": item.answer,
        }
        correct = item_correct(benchmark, item, answer)
        if correct is not None:
            record["correct"] = correct
        records.append(record)
        extracted.append(answer)
    return records, extracted


def results_record(
    model_id: str,
    benchmark: Benchmark,
    metrics: Dict[str, Any],
    decoding: Decoding,
    stopping: Stopping,
    **extra: Any,
) -> Dict[str, Any]:
    """results.json: the keys ``eval/tables.py`` reads, then ``extra`` (data, limit, ...)."""
    return {
        "model": model_id,
        "benchmark": benchmark.name,
        "score": metrics["score"],
        "count": metrics["count"],
        "metrics": metrics,
        "prompt_suffix_sha256": benchmark.suffix_sha256,
        "decoding": {
            **asdict(decoding),
            "stop": list(stopping.stop),
            "eos_ids": list(stopping.eos_ids),
        },
        **extra,
    }


def write_outputs(
    out_dir: Union[str, Path], records: Sequence[Dict[str, Any]], results: Dict[str, Any]
) -> Tuple[str, str]:
    """Write ``predictions.jsonl`` and ``results.json`` into ``out_dir`` (local or URL)."""
    predictions = storage.join(out_dir, PREDICTIONS_FILE)
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    storage.write_text(predictions, "".join(lines))
    results_path = storage.join(out_dir, RESULTS_FILE)
    storage.write_text(results_path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return predictions, results_path


def run_benchmark(
    model,
    tokenizer,
    encoder: ImageTextEncoder,
    benchmark: Benchmark,
    data: Union[str, Path],
    out: Union[str, Path],
    *,
    model_id: str,
    batch_size: int = 8,
    decoding: Optional[Decoding] = None,
    limit: Optional[int] = None,
    rank: int = 0,
    world_size: int = 1,
    static_shapes: bool = False,
) -> Dict[str, Any]:
    """Evaluate one benchmark; rank 0 writes ``out/<benchmark>/{predictions.jsonl,
    results.json}``. → the results dict (on every process)."""
    decoding = decoding or Decoding()
    if not model_id or "/" in model_id:
        raise ValueError(f"model id {model_id!r} must be a non-empty name without '/'")
    items = load_items(benchmark, data, limit)
    generations = evaluate(
        model,
        tokenizer,
        encoder,
        benchmark,
        items,
        batch_size=batch_size,
        decoding=decoding,
        rank=rank,
        world_size=world_size,
        static_shapes=static_shapes,
    )
    records, extracted = prediction_records(benchmark, items, generations)
    metrics = benchmark.score(items, extracted)
    results = results_record(
        model_id,
        benchmark,
        metrics,
        decoding,
        Stopping.of(encoder, decoding),
        data=str(data),
        limit=limit,
        batch_size=batch_size,
        static_shapes=static_shapes,
    )
    if rank == 0:
        write_outputs(storage.join(out, benchmark.name), records, results)
    return results
