"""``cambrian-train``: the Hydra entry point and the only composition root.

Composes ``configs/train.yaml`` with command-line overrides, converts the result to typed
dataclasses once, validates every cross-field constraint, and only then touches data, models or
devices (``run.run``). Exit status: 0 done; 2 a user error (the message names the field and
value); 3 training diverged (the last good state is saved); 74 storage kept failing after its
retries (the message names the path; the last complete checkpoint is intact); 75 stopped by
SIGTERM/SIGINT after saving its state — run the same command with ``resume=auto`` to continue.

Hydra's own files (``.hydra/`` and the job log) are written by process 0 only, into
``output_dir`` — or, for a URL ``output_dir``, into its local mirror (``storage.local_mirror``),
since Hydra writes local files. Other processes (``RANK``, ``CAMBRIAN_PROCESS_INDEX``,
``TPU_WORKER_ID`` or ``CLOUD_TPU_TASK_ID`` non-zero) run with ``hydra.output_subdir=null``,
``hydra.run.dir=.`` and stdout-only job logging, so they write nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cambrian_train.config.schema import TrainConfig
from cambrian_train.config.store import register_configs
from cambrian_train.config.validate import ConfigError, validate

log = logging.getLogger("cambrian_train")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
EXIT_STORAGE = 74  # sysexits EX_IOERR
# where launchers put this process's index among the run's processes (the first one set wins)
PROCESS_INDEX_ENVS = ("CAMBRIAN_PROCESS_INDEX", "RANK", "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID")
LOCAL_DIR_RESOLVER = "cambrian_local_dir"


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
    variant.variant_seeds, variant.variant_quick = [variant.seed], False
    validate(variant)
    return variant


def native_torch_only(cfg: DictConfig) -> None:
    """accelerate and transformers import torch_xla whenever it is installed (4-5 s under
    ``python -X importtime``) and switch on their XLA code paths; when no run of this process
    is on the XLA backend (neither the composed config nor a variant's overrides name one), set
    their documented switch for native PyTorch jobs, ``USE_TORCH_XLA=0``, before they are first
    imported (resolving the config may import them). A value the user set is kept."""
    variants = cfg.get("variants") or {}
    overrides = [str(o) for name in variants for o in (variants[name] or [])]
    if cfg.backend.name == "xla_spmd" or any("backend" in o for o in overrides):
        return
    os.environ.setdefault("USE_TORCH_XLA", "0")


def _main(cfg: DictConfig) -> None:
    from cambrian_train.storage import StorageError

    native_torch_only(cfg)
    try:
        train_cfg = to_train_config(cfg)
        validate(train_cfg)
    except ValueError as err:
        _user_error(err)
    from cambrian_train.run import run  # heavy imports only once the config is known good
    from cambrian_train.train.preempt import EXIT_RESUME, Preempted
    from cambrian_train.train.trainer import TrainingDiverged

    try:
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
    except StorageError as err:
        if os.environ.get("CAMBRIAN_TRACEBACK"):
            raise
        log.error("storage failure: %s", err)
        log.error("(fix the storage, then run again with resume=auto; exit %d)", EXIT_STORAGE)
        sys.exit(EXIT_STORAGE)
    except ValueError as err:  # ConfigError, DataError and loaders' checks: user errors
        _user_error(err)


def _user_error(err: ValueError) -> None:
    if os.environ.get("CAMBRIAN_TRACEBACK"):
        raise err
    log.error("%s: %s", type(err).__name__, err)
    log.error("(set CAMBRIAN_TRACEBACK=1 for the traceback)")
    sys.exit(2)


def process_index() -> int:
    """This process's index among the run's processes, from the launcher's environment."""
    for name in PROCESS_INDEX_ENVS:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a process index") from None
    return 0


def hydra_overrides(argv: Sequence[str], index: int) -> List[str]:
    """Overrides of Hydra's own output, put before the command line's (which win: a key it
    sets is left alone): nothing from processes other than 0; a local directory for process 0
    when ``output_dir`` is a URL."""
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in argv if "=" in arg}
    if index != 0:
        wanted = {
            "hydra.output_subdir": "null",
            "hydra.run.dir": ".",
            "hydra/job_logging": "stdout",
        }
    else:
        wanted = {"hydra.run.dir": f"'${{{LOCAL_DIR_RESOLVER}:${{output_dir}}}}'"}
    return [f"{key}={value}" for key, value in wanted.items() if key not in given]


def main() -> None:
    if not CONFIG_DIR.is_dir():
        sys.exit(f"cambrian-train: config directory {CONFIG_DIR} not found (install with pip -e)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_configs()
    from cambrian_train.storage import local_mirror

    if not OmegaConf.has_resolver(LOCAL_DIR_RESOLVER):
        OmegaConf.register_new_resolver(LOCAL_DIR_RESOLVER, local_mirror)
    try:
        index = process_index()
    except ValueError as err:
        sys.exit(f"cambrian-train: {err}")
    sys.argv[1:1] = hydra_overrides(sys.argv[1:], index)
    hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")(_main)()


if __name__ == "__main__":
    main()
