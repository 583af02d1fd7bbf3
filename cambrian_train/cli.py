"""``cambrian-train``: the Hydra entry point and the only composition root.

Composes ``configs/train.yaml`` with command-line overrides, converts the result to typed
dataclasses once, validates every cross-field constraint, and only then touches data, models or
devices (``run.run``). Exit status: 0 done; 2 a user error (the message names the field and
value); 3 training diverged (the last good state is saved); 75 stopped by SIGTERM/SIGINT after
saving its state — run the same command with ``resume=auto`` to continue.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cambrian_train.config.schema import TrainConfig
from cambrian_train.config.store import register_configs
from cambrian_train.config.validate import ConfigError, validate

log = logging.getLogger("cambrian_train")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """DictConfig → TrainConfig; missing or ill-typed values become a one-line ConfigError."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        message = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {message}" if key else message) from None


def _compose_variant(overrides: list) -> TrainConfig:
    """One variant's config, composed inside the running app like the command line's."""
    from hydra import compose

    variant = to_train_config(compose(config_name="train", overrides=overrides))
    variant.variants, variant.only_variants = {}, []
    validate(variant)
    return variant


def _main(cfg: DictConfig) -> None:
    from cambrian_train.run import run  # heavy imports only once the config is known good
    from cambrian_train.train.preempt import EXIT_RESUME, Preempted
    from cambrian_train.train.trainer import TrainingDiverged

    try:
        train_cfg = to_train_config(cfg)
        validate(train_cfg)
        if train_cfg.variants:
            from hydra.core.hydra_config import HydraConfig

            from cambrian_train.repro import run_variants

            run_variants(train_cfg, list(HydraConfig.get().overrides.task), _compose_variant)
        else:
            run(train_cfg)
    except TrainingDiverged as err:
        log.error("%s", err)
        sys.exit(3)
    except Preempted as err:
        log.warning("%s; run again with resume=auto (exit %d)", err, EXIT_RESUME)
        sys.exit(EXIT_RESUME)
    except ValueError as err:  # ConfigError, DataError and loaders' checks: user errors
        if os.environ.get("CAMBRIAN_TRACEBACK"):
            raise
        log.error("%s: %s", type(err).__name__, err)
        log.error("(set CAMBRIAN_TRACEBACK=1 for the traceback)")
        sys.exit(2)


def main() -> None:
    if not CONFIG_DIR.is_dir():
        sys.exit(f"cambrian-train: config directory {CONFIG_DIR} not found (install with pip -e)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_configs()
    hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")(_main)()


if __name__ == "__main__":
    main()
