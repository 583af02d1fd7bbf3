"""``cambrian-data inspect``: one record rendered as the model sees it — placeholder runs marked
``<image×N>``, supervised spans marked, token counts, and each tower's preprocessed images.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from cambrian_train.config.schema import StageConfig, TrainConfig
from cambrian_train.data.dataset import (
    ImageTextEncoder,
    Skipped,
    SupervisedDataset,
    record_images,
)
from cambrian_train.data.records import (
    RecordError,
)
from cambrian_train.data.report import build_encoder, tokenize_unchecked, tower_image_specs
from cambrian_train.data.sources import open_stage_records, stage_data_path
from cambrian_train.data.templates import IMAGE_TAG
from cambrian_train.data.tokenize import IGNORE_INDEX, Encoded

GREEN, CYAN, RESET = "\x1b[1;32m", "\x1b[36m", "\x1b[0m"

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
    """Each tower's preprocessed image (the uint8 pixels the model normalises) as
    ``{stem}-{k}-{tower}.png``."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    pixels, _ = encoder.load_images(paths)
    written = []
    for name in encoder.image_specs:
        for k, tensor in enumerate(pixels[name]):  # [3, S, S] uint8
            rgb = tensor.permute(1, 2, 0).contiguous()
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
