"""What ``cambrian-data`` reports about a stage's data: the skip report of the training dataset
(``validate``) and token-length / image / category statistics (``stats``).

Only the tokenizer and the towers' image processors are loaded (a tower is built only when its
family has no light processor), never the LLM weights.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from cambrian_train.config.schema import ModelConfig, StageConfig, TrainConfig
from cambrian_train.data.dataset import (
    ImageTextEncoder,
    Skipped,
    SupervisedDataset,
    record_images,
    stage_encoder,
)
from cambrian_train.data.media import plan_media
from cambrian_train.data.records import (
    RecordError,
    open_records,
)
from cambrian_train.data.sources import stage_data_path
from cambrian_train.data.templates import parse_turns
from cambrian_train.data.tokenize import IGNORE_INDEX, Encoded, append_segments
from cambrian_train.models.vision.base import ImageSpec

KEEP_IDS = 5
MAX_CATEGORIES = 10_000  # distinct category names kept; the rest count as "(other)"


@dataclass(frozen=True)
class DataFile:
    """One records file a stage reads: the stage's own, or one source of its mixture."""

    label: str  # "stage finetune" or "stage finetune, source NAME"
    key: str  # for file names: "finetune" or "finetune-NAME"
    path: str
    image_folder: str


def stage_files(cfg: TrainConfig, stage: StageConfig) -> List[DataFile]:
    """The files of ``stage`` (data/sources.py decides); a mixture's sources each once."""
    path = stage_data_path(cfg.data, stage)
    if path is not None:
        return [DataFile(f"stage {stage.name}", stage.name, path, cfg.data.image_folder)]
    return [
        DataFile(
            f"stage {stage.name}, source {name}",
            f"{stage.name}-{name}",
            source.path,
            source.image_folder or cfg.data.image_folder,
        )
        for name, source in cfg.data.sources.items()
    ]


def tower_image_specs(model: ModelConfig) -> Dict[str, ImageSpec]:
    """Each tower's ImageSpec from its checkpoint's image processor (HF families), else from
    the tower built alone; the LLM is never loaded."""
    import cambrian_train.models  # noqa: F401  (fills VISION_TOWERS)
    from cambrian_train.models.vision.hf import HFVisionTower
    from cambrian_train.registry import VISION_TOWERS

    specs = {}
    for name, tower in model.towers.items():
        family = VISION_TOWERS.get(tower.source)
        if issubclass(family, HFVisionTower):  # the same processor HFVisionTower reads
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(tower.checkpoint)
            specs[name] = ImageSpec(
                tower.image_size,
                tuple(map(float, proc.image_mean)),
                tuple(map(float, proc.image_std)),
            )
        else:
            specs[name] = family(tower, dtype="float32").image_spec
    return specs


def build_encoder(
    cfg: TrainConfig, stage: StageConfig, image_specs: Dict[str, ImageSpec], image_folder: str
) -> ImageTextEncoder:
    """The training encoder of ``stage`` without the model (only its tokenizer is loaded)."""
    from cambrian_train.models.llm import load_tokenizer

    return stage_encoder(cfg, stage, load_tokenizer(cfg.model.llm), image_specs, image_folder)


def tokenize_unchecked(encoder: ImageTextEncoder, record: dict, record_id: str) -> Encoded:
    """Every token of a record's conversation, with labels, whatever its length.

    RecordError reasons: bad_record, unknown_role, no_assistant_turn, bad_conversation (the
    template cannot render it), image_in_answer.
    """
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise RecordError("bad_record", "not a dict with a 'conversations' list")
    try:
        turns = parse_turns(record["conversations"], record_id)
    except ValueError as err:  # the dataset's reason for any malformed turn list
        raise RecordError("unknown_role", str(err)) from None
    if not any(t.role == "assistant" for t in turns):
        raise RecordError("no_assistant_turn", "no 'gpt' turn")
    try:  # tags expanded as training sees them (tiles, video frames), when the media allow
        turns = plan_media(
            record, turns, encoder.image_folder, encoder.tiling, encoder.num_frames
        ).turns
    except RecordError:
        pass  # the dataset's verdict names the reason; render the record as written
    try:
        segments = encoder.template.render(turns, encoder.system_prompt)
    except RecordError:
        raise
    except ValueError as err:
        raise RecordError("bad_conversation", str(err)) from None
    out = Encoded()
    context = f"template {encoder.template.name!r}, record {record_id}"
    args = (encoder.tokenizer, encoder.slot_len, encoder.placeholder_id, context)
    append_segments(out, segments, *args)
    return out


def _identity(item):
    return item


def _iterate(dataset: torch.utils.data.Dataset, count: int, workers: int, label: str):
    """Items 0..count-1 in order, computed by ``workers`` loader processes (0: this one), with
    a progress bar on a terminal."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=range(count), num_workers=workers, collate_fn=_identity
    )
    return tqdm(loader, total=count, desc=label, unit="rec", disable=not sys.stderr.isatty())


def _count(limit: Optional[int], size: int) -> int:
    if limit is not None and limit < 0:
        raise ValueError(f"--limit={limit} must be >= 0")
    return size if limit is None else min(limit, size)


# ---- validate ----


class _Checked(torch.utils.data.Dataset):
    """A SupervisedDataset's verdict per record: (id, skip reason or None, detail)."""

    def __init__(self, dataset: SupervisedDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, Skipped):
            return item.id, item.reason, item.detail
        return item.id, None, ""


@dataclass
class ValidationReport:
    label: str
    path: str
    num_records: int = 0
    num_usable: int = 0
    counts: Dict[str, int] = field(default_factory=dict)  # skip reason -> records
    first_ids: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.counts.values())

    def add(self, record_id: str, reason: Optional[str]) -> None:
        self.num_records += 1
        if reason is None:
            self.num_usable += 1
            return
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ids = self.first_ids.setdefault(reason, [])
        if len(ids) < KEEP_IDS:
            ids.append(record_id)

    def format(self) -> str:
        lines = [
            f"{self.label}: {self.path}",
            f"  records  {self.num_records}",
            f"  usable   {self.num_usable}",
            f"  skipped  {self.num_skipped}",
        ]
        for reason, count in sorted(self.counts.items()):
            lines.append(f"    {reason:<22}{count:>8}  first: {', '.join(self.first_ids[reason])}")
        return "\n".join(lines)


def validate_file(
    cfg: TrainConfig,
    stage: StageConfig,
    data: DataFile,
    image_specs: Dict[str, ImageSpec],
    limit: Optional[int] = None,
    workers: int = 0,
) -> ValidationReport:
    """Run ``stage``'s training dataset over the records of ``data`` (the first ``limit``)."""
    encoder = build_encoder(cfg, stage, image_specs, data.image_folder)
    dataset = SupervisedDataset(open_records(data.path), encoder)
    report = ValidationReport(data.label, data.path)
    count = _count(limit, len(dataset))
    for record_id, reason, _ in _iterate(_Checked(dataset), count, workers, data.label):
        report.add(record_id, reason)
    return report


# ---- stats ----


def category_of(record: dict, record_id: str) -> str:
    """A record's ``source`` or ``category`` field, else its id's leading word (``cap-12``)."""
    for key in ("source", "category"):
        if record.get(key) is not None:
            return str(record[key])
    match = re.match(r"[A-Za-z][A-Za-z0-9]*(?=[-_:/.])", record_id)
    return match.group(0) if match else "(no prefix)"


class _Measured(torch.utils.data.Dataset):
    """Per record: (reason or None, category, images, turns, tokens, supervised tokens)."""

    def __init__(self, records: Sequence, encoder: ImageTextEncoder):
        self.records, self.encoder = records, encoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            record = self.records[index]
            record_id = str(record.get("id", f"#{index}")) if isinstance(record, dict) else ""
            encoded = tokenize_unchecked(self.encoder, record, record_id)
            images = len(record_images(record))
        except RecordError as err:
            return err.reason, None, 0, 0, 0, 0
        supervised = sum(label != IGNORE_INDEX for label in encoded.labels)
        turns = len(record["conversations"])
        return (
            None,
            category_of(record, record_id),
            images,
            turns,
            len(encoded.input_ids),
            supervised,
        )


@dataclass
class DataStats:
    label: str
    path: str
    max_length: int
    num_records: int = 0
    unreadable: Counter = field(default_factory=Counter)
    with_image: int = 0
    text_only: int = 0
    num_images: int = 0
    num_turns: int = 0
    num_supervised: int = 0
    categories: Counter = field(default_factory=Counter)
    token_lengths: array = field(default_factory=lambda: array("i"))

    def add(self, reason, category, images, turns, tokens, supervised) -> None:
        self.num_records += 1
        if reason is not None:
            self.unreadable[reason] += 1
            return
        self.with_image += images > 0
        self.text_only += images == 0
        self.num_images += images
        self.num_turns += turns
        self.num_supervised += supervised
        known = category in self.categories or len(self.categories) < MAX_CATEGORIES
        self.categories[category if known else "(other)"] += 1
        self.token_lengths.append(tokens)

    def summary(self) -> dict:
        lengths = np.frombuffer(self.token_lengths, dtype=np.int32)
        tokens = {}
        if len(lengths):
            tokens = {f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 99)}
            tokens.update(mean=float(lengths.mean()), max=int(lengths.max()))
            tokens["over_max_length"] = int((lengths > self.max_length).sum())
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["token_lengths"]
        out["unreadable"] = dict(self.unreadable)
        return dict(out, tokens=tokens, categories=dict(self.categories.most_common()))

    def format(self) -> str:
        s = self.summary()
        lines = [f"{self.label}: {self.path}", f"  records      {self.num_records}"]
        for reason, count in sorted(self.unreadable.items()):
            lines.append(f"    unreadable ({reason}): {count}")
        lines += [
            f"  with image   {self.with_image}   text-only {self.text_only}",
            f"  images       {self.num_images}   turns {self.num_turns}",
        ]
        if s["tokens"]:
            t = s["tokens"]
            lines.append(
                f"  tokens       p50 {t['p50']:.0f}  p90 {t['p90']:.0f}  p99 {t['p99']:.0f}  "
                f"max {t['max']}  mean {t['mean']:.1f}  over max_length={self.max_length}: "
                f"{t['over_max_length']}"
            )
        lines.append("  categories (source / category field, else id prefix):")
        lines += [f"    {name:<24}{count:>8}" for name, count in self.categories.most_common(20)]
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """The token-length histogram with the stage's max_length marked, as a PNG."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.subplots()
        ax.hist(np.frombuffer(self.token_lengths, dtype=np.int32), bins=50, color="tab:blue")
        ax.axvline(self.max_length, color="tab:red", linestyle="--", label="max_length")
        ax.set(xlabel="tokens per record", ylabel="records", title=f"{self.label}: {self.path}")
        ax.title.set_fontsize(8)
        ax.legend()
        fig.savefig(path, dpi=100)


def file_stats(
    cfg: TrainConfig,
    stage: StageConfig,
    data: DataFile,
    limit: Optional[int] = None,
    workers: int = 0,
) -> DataStats:
    """Describe the records of ``data`` as ``stage`` tokenizes them (no image is decoded)."""
    records = open_records(data.path)
    measured = _Measured(records, build_encoder(cfg, stage, {}, data.image_folder))
    stats = DataStats(data.label, data.path, stage.max_length)
    for item in _iterate(measured, _count(limit, len(records)), workers, data.label):
        stats.add(*item)
    return stats
