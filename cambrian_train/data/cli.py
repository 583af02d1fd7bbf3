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
from pathlib import Path
from typing import List, Optional, Sequence

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from cambrian_train.config.schema import StageConfig, TrainConfig
from cambrian_train.data.inspection import inspect_record
from cambrian_train.data.records import convert_file
from cambrian_train.data.report import file_stats, stage_files, tower_image_specs, validate_file

# ---- configuration: composed like cambrian-train ----


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
