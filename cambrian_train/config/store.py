"""ConfigStore registration and OmegaConf resolvers, done once before Hydra composes.

``train_schema`` (the root dataclass) heads ``configs/train.yaml``'s defaults, which types every
composed group. Resolver ``${tiny_asset:NAME}`` gives the directory of a generated tiny checkpoint.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from cambrian_train.config.schema import TrainConfig

_done = False


def register_configs() -> None:
    global _done
    if _done:
        return
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("tiny_asset"):

        def tiny_asset(name: str) -> str:
            from cambrian_train.tiny import ensure_asset

            return ensure_asset(name)

        OmegaConf.register_new_resolver("tiny_asset", tiny_asset)
    _done = True
