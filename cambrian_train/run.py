"""A whole run: prepare data, then for each stage build, initialise, train, save, evaluate.

Called by ``cli.main`` with a validated :class:`TrainConfig`. Each stage builds the model fresh
through ``from_pretrained`` and, when it follows another stage (or sets ``init_from``), loads the
connector from that checkpoint, so a stage run alone behaves exactly like one run in sequence.
Writes ``results.json`` and logs the evaluation table.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from cambrian_train.backends import build_backend
from cambrian_train.config.schema import StageConfig, TrainConfig
from cambrian_train.config.validate import resolve_batches, vision_slot_len
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import ImageTextEncoder, SupervisedDataset
from cambrian_train.data.loader import EpochSampler, SkipStats, batch_stream
from cambrian_train.data.records import open_records
from cambrian_train.data.templates import get_template
from cambrian_train.eval.vqa import baselines, evaluate_vqa, load_questions
from cambrian_train.models import build_model
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.train.checkpoint import load_connector, save_stage_checkpoint
from cambrian_train.train.metrics import RunLogger
from cambrian_train.train.stage import freeze_for_stage, stage_param_groups
from cambrian_train.train.trainer import TrainingDiverged, planned_steps, train_stage

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(cfg: TrainConfig) -> None:
    """Generate the synthetic data set when the config asks for it and it is missing."""
    if cfg.data.synthetic is None:
        return
    from cambrian_train.data.synthetic import ensure_synthetic

    if cfg.data.root is None:
        raise ValueError("data.synthetic is set but data.root (where to generate it) is not")
    paths = ensure_synthetic(Path(cfg.data.root), cfg.data.synthetic)
    log.info("synthetic data set at %s", paths.root)


def stage_data_path(cfg: TrainConfig, stage: StageConfig) -> str:
    if stage.dataset == "pretrain" and cfg.data.pretrain_path is not None:
        return cfg.data.pretrain_path
    return cfg.data.train_path


def make_encoder(cfg: TrainConfig, stage: StageConfig, tokenizer, model) -> ImageTextEncoder:
    return ImageTextEncoder(
        tokenizer=tokenizer,
        template=get_template(stage.template or cfg.model.llm.template),
        image_specs=model.image_specs(),
        image_folder=cfg.data.image_folder,
        slot_len=vision_slot_len(cfg.model.image_token_len, cfg.model.image_newline),
        max_images=cfg.data.max_images,
        max_length=stage.max_length,
        aspect_ratio=cfg.data.image_aspect_ratio,
        system_prompt=cfg.data.system_prompt,
    )


def config_yaml(cfg: TrainConfig) -> str:
    """The resolved run config as YAML (written beside results and into every checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_checkpoint(backend, model, path: Path, state: dict, cfg: TrainConfig) -> None:
    """Gather the full state (every process takes part) and write it from the main one."""
    full = backend.full_state_dict(model)
    if backend.is_main:
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        save_stage_checkpoint(full, trainable, path, state, config_yaml(cfg))
    backend.barrier()


def run_stage(cfg, stage, backend, tokenizer, run_logger, init_from: Optional[str], out: Path):
    """Train one stage; returns (results dict, checkpoint dir, model)."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    init_digest = load_connector(model, init_from) if init_from else None
    if init_from:
        log.info(
            "stage %s: connector initialised from %s (digest %s)",
            stage.name,
            init_from,
            init_digest,
        )
    freeze_for_stage(model, stage)
    model = backend.prepare_model(model)  # may replace parameters (sharding)
    groups = stage_param_groups(model, stage)

    encoder = make_encoder(cfg, stage, tokenizer, model)
    records = open_records(stage_data_path(cfg, stage))
    dataset = SupervisedDataset(records, encoder)
    skips = SkipStats(strict=cfg.data.strict)
    sampler = EpochSampler(
        len(dataset), cfg.seed, backend.data_parallel_rank, backend.data_parallel_size
    )
    collate_fn = functools.partial(
        collate,
        seq_len=stage.max_length,
        max_images=cfg.data.max_images,
        slot_len=encoder.slot_len,
        pad_id=tokenizer.pad_token_id,
        image_specs=encoder.image_specs,
    )
    host_batch = backend.host_batch_size(stage.per_device_batch_size)
    stream = batch_stream(dataset, sampler, host_batch, collate_fn, skips, cfg.data.num_workers)
    steps = planned_steps(stage, len(dataset))
    try:
        result = train_stage(stage, model, groups, backend, stream, steps, run_logger)
    except TrainingDiverged as err:
        path = out / stage.name / "checkpoint-last-good"
        save_checkpoint(backend, model, path, {"stage": stage.name, "diverged": str(err)}, cfg)
        raise TrainingDiverged(f"{err}; last good state saved to {path}") from None
    ckpt = out / stage.name / "checkpoint"
    info = {"stage": stage.name, "steps": steps, "init_from": init_from}
    save_checkpoint(backend, model, ckpt, dict(info, init_digest=init_digest), cfg)
    log.info("stage %s: checkpoint at %s", stage.name, ckpt)
    if skips.total:
        log.warning("stage %s skipped %d records: %s", stage.name, skips.total, skips.counts)
    summary = {
        **asdict(result),
        "checkpoint": str(ckpt),
        "init_from": init_from,
        "init_digest": init_digest,
        "skipped": skips.summary(),
    }
    if stage.eval_after and cfg.data.test_path:
        questions = load_questions(cfg.data.test_path)[: cfg.eval.max_samples]
        with backend.gathered(model):
            scores = evaluate_vqa(
                model,
                encoder,
                questions,
                backend.device,
                cfg.eval.batch_size,
                cfg.eval.max_new_tokens,
            )
        if backend.is_main:
            (out / stage.name / "predictions.jsonl").write_text(
                "".join(json.dumps(p) + "\n" for p in scores["predictions"])
            )
        summary["eval"] = {"accuracy": scores["accuracy"], "count": scores["count"]}
        log.info(
            "stage %s: test accuracy %.4f on %d", stage.name, scores["accuracy"], scores["count"]
        )
    return summary, ckpt


def format_table(results: Dict) -> str:
    rows = [("model", "test accuracy")]
    for name, value in results.get("baselines", {}).items():
        rows.append((f"baseline: {name.replace('_', ' ')}", f"{value:.3f}"))
    for name, stage in results["stages"].items():
        if "eval" in stage:
            rows.append((f"after {name}", f"{stage['eval']['accuracy']:.3f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"| {rows[0][0]:<{width}} | {rows[0][1]} |", f"|{'-' * (width + 2)}|{'-' * 15}|"]
    lines += [f"| {a:<{width}} | {b:>13} |" for a, b in rows[1:]]
    return "\n".join(lines)


def run(cfg: TrainConfig) -> Dict:
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log.info("output_dir: %s", out)
    backend = build_backend(cfg.backend, cfg.mesh)
    backend.setup()
    if not backend.is_main:  # one voice per run: other processes report only problems
        logging.getLogger("cambrian_train").setLevel(logging.WARNING)
    cfg = resolve_batches(cfg, backend.mesh)
    prepare_data(cfg)
    if backend.is_main:
        (out / "config.yaml").write_text(config_yaml(cfg))
    tokenizer = load_tokenizer(cfg.model.llm)
    run_logger = RunLogger(
        cfg.logger,
        out,
        cfg.name,
        OmegaConf.to_container(OmegaConf.structured(cfg)),
        backend.is_main,
    )
    results: Dict = {"name": cfg.name, "output_dir": str(out), "stages": {}}
    if cfg.data.test_path and any(cfg.stages[s].eval_after for s in cfg.run_stages):
        results["baselines"] = baselines(load_questions(cfg.data.test_path)[: cfg.eval.max_samples])
    previous: Optional[Path] = None
    try:
        for name in cfg.run_stages:
            stage = cfg.stages[name]
            init_from = stage.init_from or (str(previous) if previous else None)
            summary, previous = run_stage(
                cfg, stage, backend, tokenizer, run_logger, init_from, out
            )
            results["stages"][name] = summary
            if backend.is_main:
                (out / "results.json").write_text(json.dumps(results, indent=2))
                run_logger.plot_losses()
        run_logger.summary(
            {
                f"{k}/accuracy": v["eval"]["accuracy"]
                for k, v in results["stages"].items()
                if "eval" in v
            }
        )
    finally:
        run_logger.close()
        backend.shutdown()
    if backend.is_main:
        log.info("results (%s):\n%s", out / "results.json", format_table(results))
    return results
