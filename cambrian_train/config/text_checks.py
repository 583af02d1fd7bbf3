"""Cross-field checks of ``data.text`` (text-only fine-tuning), called by ``validate``.

Everything that can be known before the tokenizer is loaded: value ranges, file types, the
template.json and the data files (unless generated: ``data.text.synthetic``), and the settings
a text run does not take (mixtures, packing). The row length's cap by the tokenizer and the
LLM's positions is checked at start-up, when they are known (data/text_data.py).
"""

from __future__ import annotations

import os

from cambrian_train.config.schema import TrainConfig

CORPUS_SUFFIXES = (".txt", ".csv", ".json", ".jsonl")
RECORD_SUFFIXES = (".json", ".jsonl")


def check_text(cfg: TrainConfig, errors: list[str], check_paths: bool = True) -> None:
    """Append one line per problem of ``cfg.data.text`` to ``errors`` (nothing when unset)."""
    d = cfg.data
    t = d.text
    if t is None:
        return
    if not 0.0 <= t.validation_split_ratio < 1.0:
        errors.append(
            f"data.text.validation_split_ratio={t.validation_split_ratio} must be in [0, 1)"
        )
    for key in ("max_train_samples", "max_val_samples"):
        value = getattr(t, key)
        if value != -1 and value < 1:
            errors.append(f"data.text.{key}={value} must be -1 (all) or >= 1")
    if t.max_input_length != -1 and t.max_input_length < 2:
        errors.append(f"data.text.max_input_length={t.max_input_length} must be -1 or >= 2")
    if t.txt_unit not in ("line", "file"):
        errors.append(f"data.text.txt_unit={t.txt_unit!r} is not one of ['line', 'file']")
    if t.synthetic is not None and t.synthetic.num_records < 2:
        errors.append(f"data.text.synthetic.num_records={t.synthetic.num_records} must be >= 2")
    if d.sources:
        errors.append(
            "data.text reads data.train_path; data.sources (a mixture) is not read by text "
            "fine-tuning: remove one of them"
        )
    if d.packing:
        errors.append(
            "data.packing=true with data.text: text batches are not packed (domain-adaptation "
            "blocks already fill their rows); set data.packing=false"
        )
    if d.train_path is None:
        errors.append("data.text is set but data.train_path is null: point it at the text data")
        return
    suffixes = RECORD_SUFFIXES if t.instruction_tuned else CORPUS_SUFFIXES
    kind = "instruction records" if t.instruction_tuned else "a domain-adaptation corpus"
    for key, path in (("train_path", d.train_path), ("text.validation_path", t.validation_path)):
        if path is not None and not path.endswith(suffixes):
            errors.append(f"data.{key}={path}: {kind} must end in one of {list(suffixes)}")
    if not check_paths or t.synthetic is not None:
        return
    needed = {"data.train_path": d.train_path, "data.text.validation_path": t.validation_path}
    if t.instruction_tuned:
        default = os.path.join(os.path.dirname(d.train_path), "template.json")
        needed["data.text.template"] = t.template or default
    for key, path in needed.items():
        if path is not None and "://" not in path and not os.path.exists(path):
            hint = " (default: template.json beside data.train_path)" if "template" in key else ""
            errors.append(f"{key}={path} does not exist{hint}")
        elif key == "data.text.template" and "://" not in path:
            from cambrian_train.data.instruct import parse_template  # torch: only when needed

            try:
                with open(path, encoding="utf-8") as handle:
                    parse_template(handle.read(), path)
            except ValueError as err:
                errors.append(f"data.text.template: {err}")
