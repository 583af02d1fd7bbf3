"""Shared fixtures: composing configs through Hydra exactly as the CLI does, tiny data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
# experiment=demo's tower is the pre-trained tiny asset clip_pt (about 90 s to build once); tests
# that compose the demo without pinning a tower build a 2-step version of it (its own cache
# directory, a few seconds) instead. tests/unit/test_vision_pretrain.py sets its own budgets.
os.environ.setdefault("CAMBRIAN_TINY_PRETRAIN_STEPS", "2")

REPO = Path(__file__).resolve().parent.parent


def compose_config(overrides=(), validate_it=False):
    """Compose configs/train.yaml with overrides and convert to a TrainConfig."""
    from hydra import compose, initialize_config_dir

    from cambrian_train.cli import CONFIG_DIR, to_train_config
    from cambrian_train.config.store import register_configs
    from cambrian_train.config.validate import validate

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    train_cfg = to_train_config(cfg)
    if validate_it:
        validate(train_cfg)
    return train_cfg


@pytest.fixture
def compose():
    return compose_config


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic data set shared by the session's tests."""
    from cambrian_train.config.schema import SyntheticConfig
    from cambrian_train.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "set"
    cfg = SyntheticConfig(seed=3, image_size=64, num_pretrain=64, num_train=96, num_test=24)
    ensure_synthetic(root, cfg)
    return root


@pytest.fixture
def tiny_overrides(synthetic_root, tmp_path):
    """Overrides for a fast tiny run on the shared synthetic set (no wandb, no bar), with the
    random-init CLIP tower (the tests' reference figures predate the pre-trained one)."""
    return [
        "experiment=demo",
        "model/vision_tower@model.towers.clip=tiny_clip",
        f"output_dir={tmp_path / 'run'}",
        "data.synthetic=null",
        f"data.root={synthetic_root}",
        "stages.pretrain.max_steps=3",
        "stages.finetune.max_steps=3",
        "stages.pretrain.global_batch_size=4",
        "stages.pretrain.per_device_batch_size=4",
        "stages.finetune.global_batch_size=4",
        "stages.finetune.per_device_batch_size=2",
        "stages.finetune.grad_accum_steps=2",
        "eval.max_samples=8",
        "logger.wandb=false",
        "logger.progress_bar=false",
    ]
