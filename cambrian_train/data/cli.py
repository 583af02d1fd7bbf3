"""``cambrian-data``: convert, validate, describe and inspect LLaVA data sets without training.

    cambrian-data convert IN OUT                       # JSON list <-> JSONL, streaming, gs:// ok
    cambrian-data validate experiment=demo [stage=finetune] [--limit N] [--workers N] [--strict]
    cambrian-data stats experiment=demo [stage=pretrain] [--out DIR]
    cambrian-data inspect INDEX experiment=demo [stage=finetune] [--save-images DIR]

The config-driven commands compose ``configs/train.yaml`` with Hydra overrides exactly like
``cambrian-train`` and check it (paths aside); ``stage=NAME`` (or ``--stage``) picks one stage,
default every stage of ``run_stages``. Only the tokenizer and the towers' image processors are
loaded (a tower is built only when its family has no light processor), never the LLM weights.
``validate`` runs the training dataset (data/dataset.py) over every record with loader workers
and reports skips by reason; ``stats`` tokenizes without decoding images. Exit status: 0 ok,
1 skips under ``--strict`` (or no usable record), 2 a user error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from cambrian_train.config.schema import ModelConfig, StageConfig, TrainConfig
from cambrian_train.data.dataset import (
    ImageTextEncoder,
    Skipped,
    SupervisedDataset,
    record_images,
    stage_encoder,
)
from cambrian_train.data.records import (
    RecordError,
    convert_file,
    open_records,
)
from cambrian_train.data.sources import open_stage_records, stage_data_path
from cambrian_train.data.templates import IMAGE_TAG, parse_turns
from cambrian_train.data.tokenize import IGNORE_INDEX, Encoded, append_segments
from cambrian_train.models.vision.base import ImageSpec

KEEP_IDS = 5
MAX_CATEGORIES = 10_000  # distinct category names kept; the rest count as "(other)"
GREEN, CYAN, RESET = "\x1b[1;32m", "\x1b[36m", "\x1b[0m"


# ---- configuration: compose like cambrian-train, then the pieces the data path needs ----


def compose_train_config(overrides: Sequence[str]) -> TrainConfig:
    """Compose ``configs/train.yaml`` with Hydra overrides, type it and check it (not paths)."""
    from hydra import compose, initialize_config_dir

    from cambrian_train.cli import CONFIG_DIR, to_train_config
    from cambrian_train.config.store import register_configs
    from cambrian_train.config.validate import validate

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = to_train_config(compose(config_name="train", overrides=list(overrides)))
    validate(cfg, check_paths=False)
    if cfg.data.synthetic is not None:  # generated when missing, as a training run would
        from cambrian_train.data.synthetic import ensure_synthetic

        ensure_synthetic(Path(cfg.data.root), cfg.data.synthetic)
    return cfg


def select_stages(cfg: TrainConfig, names: Sequence[str]) -> List[StageConfig]:
    for name in names:
        if name not in cfg.stages:
            raise ValueError(f"stage={name!r} is not one of {sorted(cfg.stages)}")
    return [cfg.stages[name] for name in names or cfg.run_stages]


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


# ---- inspect ----


def render_tokens(encoder: ImageTextEncoder, encoded: Encoded, color: bool) -> str:
    """Decoded text: each placeholder run as ``<image×N>``, supervised spans in [[...]] (or
    green on a terminal)."""
    starts = set(encoded.image_starts)
    pieces, run, run_flag, i = [], [], None, 0

    def flush():
        if run:
            text = encoder.tokenizer.decode(run, clean_up_tokenization_spaces=False)
            pieces.append(
                (f"{GREEN}{text}{RESET}" if color else f"[[{text}]]") if run_flag else text
            )
            run.clear()

    while i < len(encoded.input_ids):
        if i in starts:
            flush()
            tag = f"<image×{encoder.slot_len}>"
            pieces.append(f"{CYAN}{tag}{RESET}" if color else tag)
            i += encoder.slot_len
            continue
        flag = encoded.labels[i] != IGNORE_INDEX
        if flag != run_flag:
            flush()
            run_flag = flag
        run.append(encoded.input_ids[i])
        i += 1
    flush()
    return "".join(pieces)


def _image_lines(encoder: ImageTextEncoder, paths: List[str]) -> List[str]:
    from PIL import Image

    lines = []
    for k, rel in enumerate(paths):
        full = Path(encoder.image_folder) / rel
        try:
            with Image.open(full) as img:
                lines.append(f"  [{k}] {full}  {img.width}x{img.height} {img.mode}")
        except (OSError, ValueError) as err:
            lines.append(f"  [{k}] {full}  unreadable: {err}")
    return lines


def save_tower_images(encoder: ImageTextEncoder, paths: List[str], out: Path, stem: str):
    """Each tower's preprocessed image (normalisation undone) as ``{stem}-{k}-{tower}.png``."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    pixels, _ = encoder.load_images(paths)
    written = []
    for name, spec in encoder.image_specs.items():
        mean, std = torch.tensor(spec.mean)[:, None, None], torch.tensor(spec.std)[:, None, None]
        for k, tensor in enumerate(pixels[name]):  # [3, S, S]
            rgb = ((tensor * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
            target = out / f"{stem}-{k}-{name}.png"
            Image.fromarray(rgb.numpy()).save(target)
            written.append(target)
    return written


def inspect_record(
    cfg: TrainConfig,
    stage: StageConfig,
    index: int,
    save_images: Optional[Path] = None,
    color: bool = False,
) -> tuple[int, str]:
    """(exit status, the rendered record): 0 usable, 1 skipped by training.

    ``index`` counts in the stage's records as training sees them (a mixture's, when it has one).
    """
    path = stage_data_path(cfg.data, stage) or f"the mixture of {sorted(cfg.data.sources)}"
    records = open_stage_records(cfg.data, stage, cfg.seed)
    if not -len(records) <= index < len(records):
        raise ValueError(f"INDEX={index} is outside the {len(records)} records of {path}")
    index %= len(records)
    encoder = build_encoder(cfg, stage, tower_image_specs(cfg.model), cfg.data.image_folder)
    verdict = SupervisedDataset(records, encoder)[index]
    head = f"record {index} of {len(records)} in {path}, stage {stage.name}, "
    head += f"template {encoder.template.name}, max_length {encoder.max_length}"
    status = "usable" if not isinstance(verdict, Skipped) else f"skipped ({verdict.reason})"
    lines = [head, f"id: {verdict.id}", f"status: {status}"]
    if isinstance(verdict, Skipped):
        lines[-1] += f": {verdict.detail}"
    try:
        record = records[index]
        encoded = tokenize_unchecked(encoder, record, verdict.id)
        images = record_images(record)
    except RecordError as err:
        return 1, "\n".join(lines + [f"cannot render: {err}"])
    num_image = len(encoded.image_starts) * encoder.slot_len
    num_text = len(encoded.input_ids) - num_image
    supervised = sum(label != IGNORE_INDEX for label in encoded.labels)
    lines.append(
        f"tokens: {len(encoded.input_ids)} = {num_image} image placeholders "
        f"({len(encoded.image_starts)} x {encoder.slot_len}) + {num_text} text; "
        f"{supervised} supervised; {IMAGE_TAG} tags {len(encoded.image_starts)}, "
        f"images {len(images)}"
    )
    lines += ["images:"] + (_image_lines(encoder, images) or ["  (none)"])
    marks = "green" if color else "[[...]]"
    lines += [f"text (supervised spans {marks}):", render_tokens(encoder, encoded, color)]
    if save_images is not None and images:
        try:
            for target in save_tower_images(encoder, images, save_images, f"{index}"):
                lines.append(f"saved {target}")
        except RecordError as err:
            lines.append(f"images not saved: {err}")
    return int(isinstance(verdict, Skipped)), "\n".join(lines)


# ---- command line ----


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cambrian-data", description="convert, validate, describe and inspect LLaVA data"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="JSON list <-> JSONL (streaming)")
    conv.add_argument("src")
    conv.add_argument("dst")
    for name, text in (
        ("validate", "run the training dataset over every record; skips by reason"),
        ("stats", "records, images, token lengths (histogram PNG), categories"),
        ("inspect", "one record rendered: placeholder runs, supervised spans, images"),
    ):
        cmd = sub.add_parser(name, help=text)
        if name == "inspect":
            cmd.add_argument("index", type=int, help="record index (negative counts from the end)")
            cmd.add_argument("--save-images", type=Path, help="write each tower's input as PNG")
            cmd.add_argument("--color", choices=("auto", "always", "never"), default="auto")
        else:
            cmd.add_argument("--limit", type=int, help="only the first N records")
            cmd.add_argument(
                "--workers", type=int, help="loader processes (default data.num_workers)"
            )
        if name == "validate":
            cmd.add_argument("--strict", action="store_true", help="exit 1 when any record skips")
            cmd.add_argument("--json", type=Path, help="also write the reports as JSON")
        if name == "stats":
            cmd.add_argument("--out", type=Path, help="output dir (default runs/data-stats/NAME)")
        cmd.add_argument("--stage", action="append", default=[], help="stage (repeatable)")
        cmd.add_argument("overrides", nargs="*", help="Hydra overrides; stage=NAME picks a stage")
    return parser


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    else:
        args.overrides += extra  # overrides after options
    if hasattr(args, "overrides"):
        picks = [o for o in args.overrides if re.fullmatch(r"stage=\w+", o)]
        args.stage += [o.split("=", 1)[1] for o in picks]
        args.overrides = [o for o in args.overrides if o not in picks]
    return args


def _run(args: argparse.Namespace) -> int:
    if args.command == "convert":
        print(f"wrote {convert_file(args.src, args.dst)} records to {args.dst}")
        return 0
    cfg = compose_train_config(args.overrides)
    stages = select_stages(cfg, args.stage)
    if args.command == "inspect":
        if len(stages) != 1:
            raise ValueError(
                f"inspect needs one stage (stage=NAME), got {[s.name for s in stages]}"
            )
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        status, text = inspect_record(cfg, stages[0], args.index, args.save_images, color)
        print(text)
        return status
    workers = cfg.data.num_workers if args.workers is None else args.workers
    if args.command == "stats":
        out = args.out or Path("runs") / "data-stats" / cfg.name
        out.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            for data in stage_files(cfg, stage):
                stats = file_stats(cfg, stage, data, args.limit, workers)
                (out / f"{data.key}.json").write_text(json.dumps(stats.summary(), indent=2))
                stats.plot(out / f"{data.key}_token_lengths.png")
                print(stats.format() + f"\n  written: {out}/{data.key}{{.json,_token_lengths.png}}")
        return 0
    specs = tower_image_specs(cfg.model)
    reports = [
        validate_file(cfg, stage, data, specs, args.limit, workers)
        for stage in stages
        for data in stage_files(cfg, stage)
    ]
    print("\n".join(r.format() for r in reports))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in reports], indent=2))
    if any(r.num_records and not r.num_usable for r in reports):
        print("no usable record in a stage's data: training would stop", file=sys.stderr)
        return 1
    return int(args.strict and any(r.num_skipped for r in reports))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(args)
    except (ValueError, HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ if isinstance(err, HydraException) else None
        why = f" ({str(cause).splitlines()[0]})" if cause else ""  # Hydra hides the reason there
        print(f"cambrian-data: {type(err).__name__}: {err}{why}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
