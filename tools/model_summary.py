"""Build a configured model on the meta device (no checkpoint, no memory) and print its
parameter counts per part.

    python tools/model_summary.py model=cambrian_8b
    python tools/model_summary.py model=tiny model/connector=tiny_sva --pretrained
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from cambrian_train.cli import CONFIG_DIR, to_train_config
from cambrian_train.config.store import register_configs
from cambrian_train.config.validate import ConfigError, validate_model
from cambrian_train.models import build_model
from cambrian_train.models.summary import format_table, parameter_table


def configured_model(overrides, pretrained: bool):
    """(TrainConfig, model) composed from Hydra ``overrides`` as the CLI composes them: built on
    the meta device from the architecture fields, or loaded with ``pretrained``. A config error
    is printed and raised as SystemExit(2)."""
    register_configs()
    with initialize_config_dir(config_dir=str(Path(CONFIG_DIR)), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    try:
        train_cfg = to_train_config(cfg)
        validate_model(train_cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if pretrained:
        return train_cfg, build_model(train_cfg.model)
    with torch.device("meta"):
        return train_cfg, build_model(train_cfg.model, pretrained=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=cambrian_8b")
    parser.add_argument(
        "--pretrained", action="store_true", help="load the checkpoints instead of the meta build"
    )
    args = parser.parse_args(argv)
    _, model = configured_model(args.overrides, args.pretrained)
    print(format_table(parameter_table(model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
