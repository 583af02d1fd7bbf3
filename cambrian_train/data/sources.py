"""What a stage trains on: its records (one file or a mixture) and the sampler over them.

``run.run_stage`` calls :func:`open_stage_records` and :func:`build_sampler`. A stage with
``dataset: pretrain`` reads ``data.pretrain_path`` when it is set; every other stage reads the
mixture of ``data.sources`` when there is one, else ``data.train_path``. With
``data.group_by_length`` the sampler groups by true token length (computed once per file and
tokenisation, cached: data/lengths.py); otherwise it shuffles.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Optional, Sequence

from cambrian_train.config.schema import DataConfig, StageConfig
from cambrian_train.data.lengths import LengthSpec, RecordLengths, compute_lengths, file_lengths
from cambrian_train.data.mixture import MixtureRecords, MixtureSource
from cambrian_train.data.records import open_records
from cambrian_train.data.sampler import EpochSampler, IndexSampler, LengthGroupedSampler

log = logging.getLogger(__name__)


def stage_data_path(data_cfg: DataConfig, stage_cfg: StageConfig) -> Optional[str]:
    """The single file a stage reads, or None when it reads the mixture of ``data.sources``."""
    if stage_cfg.dataset == "pretrain" and data_cfg.pretrain_path is not None:
        return data_cfg.pretrain_path
    if data_cfg.sources:
        return None
    if data_cfg.train_path is None:
        raise ValueError(
            f"stage {stage_cfg.name} reads data.train_path, which is null, and data.sources "
            "is empty"
        )
    return data_cfg.train_path


def open_mixture(data_cfg: DataConfig, seed: int) -> MixtureRecords:
    """The mixture of ``data.sources`` (each file opened lazily), drawn from ``seed``."""
    sources = [
        MixtureSource(
            name=name,
            records=open_records(source.path),
            image_folder=source.image_folder or data_cfg.image_folder,
            weight=source.weight,
            category=source.category,
            path=source.path,
        )
        for name, source in data_cfg.sources.items()
    ]
    return MixtureRecords(
        sources, seed, total=data_cfg.mixture_size, category_ratios=data_cfg.category_ratios
    )


def open_stage_records(data_cfg: DataConfig, stage_cfg: StageConfig, seed: int = 0) -> Sequence:
    """The records of a stage: one file's (lazy) or the mixture's."""
    path = stage_data_path(data_cfg, stage_cfg)
    return open_mixture(data_cfg, seed) if path is None else open_records(path)


def record_lengths(records: Sequence, spec: LengthSpec) -> RecordLengths:
    """True token lengths of ``records``: per file from the cache (computed when missing);
    a mixture gathers its sources'."""
    if isinstance(records, MixtureRecords):
        return records.gather_lengths(  # each source's images are under its own folder
            [
                record_lengths(s.records, dataclasses.replace(spec, image_folder=s.image_folder))
                for s in records.sources
            ]
        )
    path = getattr(records, "path", None)
    if path is None:
        return compute_lengths(records, spec)
    return file_lengths(records, path, spec)


def build_sampler(
    data_cfg: DataConfig,
    records: Sequence,
    encoder,
    seed: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    state: Optional[Dict] = None,
) -> IndexSampler:
    """The sampler of a stage: length-grouped (``data.group_by_length``) or shuffled.

    Text data (``data.text``) is always shuffled, never length-grouped.
    ``encoder`` (:class:`ImageTextEncoder`) fixes what a length is; ``batch_size`` is one
    process's batch (the host batch); ``state`` (a stream's ``state_dict()``) resumes.
    """
    if data_cfg.group_by_length and data_cfg.text is None:  # text data: shuffled
        lengths = record_lengths(records, LengthSpec.from_encoder(encoder))
        sampler: IndexSampler = LengthGroupedSampler(
            lengths.lengths,
            lengths.multimodal,
            batch_size,
            seed,
            rank=rank,
            world_size=world_size,
            group_batches=data_cfg.length_group_batches,
        )
        log.info(
            "length-grouped sampler: %d records (%d multimodal), mean length %.1f tokens",
            len(lengths),
            int(lengths.multimodal.sum()),
            float(lengths.lengths.mean()),
        )
    else:
        sampler = EpochSampler(len(records), seed, rank, world_size)
    if state is not None:
        sampler.load_state_dict(state)
    return sampler
