"""``cambrian-export``: a run checkpoint → an export directory (or its connector only), and
official Cambrian-1 weights → the same export layout.

    cambrian-export CHECKPOINT_DIR OUT_DIR [--connector-only] [--overwrite]
    cambrian-export import-official OFFICIAL_DIR OUT_DIR [OVERRIDES ...] [--overwrite]

``CHECKPOINT_DIR`` is ``<run>/<stage>/checkpoint`` (or its stage directory); it and ``OUT_DIR``
may be fsspec URLs (``gs://...``). ``OVERRIDES`` are
``cambrian-train`` config overrides naming the model the official weights belong to, e.g.
``model=cambrian_8b``. User errors exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

IMPORT_COMMAND = "import-official"


def compose_train_config(overrides: Sequence[str]):
    """Compose ``configs/train.yaml`` with ``overrides`` exactly as ``cambrian-train`` does."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from cambrian_train.cli import CONFIG_DIR, to_train_config
    from cambrian_train.config.store import register_configs
    from cambrian_train.config.validate import validate_model

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides))
    except HydraException as err:
        raise ValueError(f"config overrides {list(overrides)}: {err}") from None
    train_cfg = to_train_config(cfg)
    validate_model(train_cfg)
    return train_cfg


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cambrian-export",
        description="Export a run checkpoint (or `cambrian-export import-official -h`).",
    )
    parser.add_argument("checkpoint", help="<run>/<stage>/checkpoint (or the stage directory)")
    parser.add_argument("out_dir", help="directory to write (must not exist or be empty)")
    parser.add_argument(
        "--connector-only",
        action="store_true",
        help="write only connector.safetensors + connector.json (a stage-2 init_from)",
    )
    parser.add_argument(
        "--lora",
        choices=["merge", "peft"],
        default="merge",
        help="LoRA adapters of the LLM: merge them into its weights (default), or write them "
        "as a peft adapter (llm_adapter/) beside the unchanged base",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    return parser


def _import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"cambrian-export {IMPORT_COMMAND}",
        description="Import official Cambrian-1 safetensors into an export directory.",
    )
    parser.add_argument("official_dir", help="directory with model.safetensors(.index.json)")
    parser.add_argument("out_dir", help="directory to write (must not exist or be empty)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=cambrian_8b")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    return parser


def _run(argv: List[str]) -> str:
    from cambrian_train.infer.export import export_checkpoint, export_connector, import_official

    if argv and argv[0] == IMPORT_COMMAND:
        args = _import_parser().parse_args(argv[1:])
        cfg = compose_train_config(args.overrides)
        report = import_official(args.official_dir, args.out_dir, cfg, args.overwrite)
        return (
            f"imported {report.converted} tensors into {report.out_dir} "
            f"({len(report.skipped_towers)} vision-tower tensors skipped: towers load from "
            "their own checkpoints)"
        )
    args = _export_parser().parse_args(argv)
    if args.connector_only:
        out = export_connector(args.checkpoint, args.out_dir, args.overwrite)
        return f"connector written to {out} (use as stages.finetune.init_from={out})"
    out = export_checkpoint(args.checkpoint, args.out_dir, args.overwrite, adapters=args.lora)
    return f"exported to {out} (load with cambrian_train.infer.load.load_pretrained)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error)."""
    from cambrian_train.config.validate import ConfigError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("cambrian_train").setLevel(logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        message = _run(argv)
    except (ConfigError, ValueError) as err:
        if os.environ.get("CAMBRIAN_TRACEBACK"):
            raise
        print(f"cambrian-export: error: {err}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
