"""A whole run: prepare data, then for each stage build, initialise, train, save, evaluate.

Called by ``cli.main`` with a validated :class:`TrainConfig`. Each stage builds the model fresh
through ``from_pretrained`` and, when it follows another stage (or sets ``init_from``), loads the
connector from that checkpoint, so a stage run alone behaves exactly like one run in sequence.
Writes ``results.json`` and logs the evaluation table. ``output_dir``, ``init_from`` and
``resume`` may be local paths or fsspec URLs: every file goes through storage.py, and only the
main process writes shared files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig

from cambrian_train import storage
from cambrian_train.backends import build_backend
from cambrian_train.backends.mesh import resolve_batches
from cambrian_train.config.schema import TrainConfig
from cambrian_train.config.validate import ConfigError
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import SupervisedDataset, stage_encoder
from cambrian_train.data.fit_check import check_fit
from cambrian_train.data.lengths import LengthSpec
from cambrian_train.data.loader import BatchStream, DataError, SkipStats
from cambrian_train.data.packing import batch_shape, collate_rows
from cambrian_train.data.sources import (
    build_sampler,
    open_stage_records,
    record_lengths,
    stage_data_path,
)
from cambrian_train.eval.priors import TextPrior
from cambrian_train.eval.vqa import baselines, evaluate_vqa, load_questions, question_text
from cambrian_train.models import build_model
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.models.weights import checkpoint_dir
from cambrian_train.train.checkpoint import load_connector, save_stage_checkpoint
from cambrian_train.train.metrics import RunLogger
from cambrian_train.train.preempt import StopSignal
from cambrian_train.train.resume import Checkpointer, latest_checkpoint, read_checkpoint_meta
from cambrian_train.train.stage import freeze_for_stage, stage_param_groups
from cambrian_train.train.text_stage import text_stage
from cambrian_train.train.trainer import (
    Persistence,
    TrainingDiverged,
    planned_steps,
    train_stage,
)

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(cfg: TrainConfig) -> None:
    """Generate the synthetic data set when the config asks for it and it is missing."""
    text = cfg.data.text
    if text is not None and text.synthetic is not None:
        from cambrian_train.data.text_synthetic import ensure_text_synthetic

        ensure_text_synthetic(cfg.data.train_path, text.synthetic, text.instruction_tuned)
    if cfg.data.synthetic is None:
        return
    from cambrian_train.data.synthetic import ensure_synthetic

    if cfg.data.root is None:
        raise ValueError("data.synthetic is set but data.root (where to generate it) is not")
    paths = ensure_synthetic(cfg.data.root, cfg.data.synthetic)  # local: generated here
    log.info("synthetic data set at %s", paths.root)


def config_yaml(cfg: TrainConfig) -> str:
    """The resolved run config as YAML (written beside results and into every checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_checkpoint(backend, model, path: str, state: dict, cfg: TrainConfig) -> None:
    """Gather the full state (every process takes part) and write it from the main one."""
    full = backend.full_state_dict(model)
    if backend.is_main:
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        save_stage_checkpoint(full, trainable, path, state, config_yaml(cfg))
    backend.barrier()


def run_stage(
    cfg,
    stage,
    backend,
    tokenizer,
    run_logger,
    init_from: Optional[str],
    out: str,
    persistence: Optional[Persistence] = None,
):
    """Train one stage; returns (results dict, checkpoint dir, model)."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model, defer_weights=True)  # loaded sharded by the backend
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

    encoder = stage_encoder(cfg, stage, tokenizer, model.image_specs())
    text = text_stage(cfg, stage, tokenizer, model.llm.config) if cfg.data.text else None
    stage = text.stage if text else stage
    records = text.data.train if text else open_stage_records(cfg.data, stage, cfg.seed)
    dataset = text.data.train if text else SupervisedDataset(records, encoder)
    skips = SkipStats(strict=cfg.data.strict)
    host_batch = backend.host_batch_size(stage.per_device_batch_size)
    shape = text.shape if text else batch_shape(cfg.data, stage, encoder.slot_len, cfg.mesh.tensor)
    collate_fn = functools.partial(
        collate_rows if shape.uses_packer else collate,
        slot_len=encoder.slot_len,
        pad_id=tokenizer.pad_token_id,
        image_specs=encoder.image_specs,
        **shape.collate_kwargs(),
    )
    log.info("stage %s: %s", stage.name, shape.describe())
    if not text:  # most records longer than the row is a setting to change, not data to skip
        lengths = record_lengths(records, LengthSpec.from_encoder(encoder))
        check_fit(lengths, shape.seq_len, stage.name, cfg.data.packing)
    streams = []

    def open_stream(state: Optional[dict]) -> BatchStream:
        sampler = build_sampler(
            cfg.data,
            records,
            encoder,
            cfg.seed,
            host_batch,
            backend.data_parallel_rank,
            backend.data_parallel_size,
            state,
        )
        if state is not None and "skips" in state:
            skips.load_state_dict(state["skips"])
        packer = shape.packer(host_batch)  # a fresh one per stream: a resume refills it
        stream = BatchStream(
            dataset,
            sampler,
            host_batch,
            collate_fn,
            skips,
            cfg.data.num_workers,
            packer=packer,
            carry=(state or {}).get("carry"),
        )
        streams.append(stream)
        return stream

    tokens = None
    if cfg.data.packing and stage.max_steps is None:  # epochs → steps needs the token count
        tokens = int(record_lengths(records, LengthSpec.from_encoder(encoder)).lengths.sum())
    steps = planned_steps(stage, len(dataset), tokens, shape.seq_len)
    after_step = None
    if text:  # validation loss at epoch ends (train/text_stage.py), and once before training
        after_step = text.validator(model, backend, run_logger, steps, host_batch, collate_fn)
        resuming = persistence is not None and persistence.restore_from
        if after_step is not None and not resuming:
            after_step(0)
    try:
        result = train_stage(
            stage,
            model,
            groups,
            backend,
            open_stream,
            steps,
            run_logger,
            persistence,
            after_step,
        )
    except DataError as err:  # say which file this stage read, and which setting chose it
        raise DataError(f"stage {stage.name}: {err}; {stage_data_source(cfg, stage)}") from None
    except TrainingDiverged as err:
        path = storage.join(out, stage.name, "checkpoint-last-good")
        save_checkpoint(backend, model, path, {"stage": stage.name, "diverged": str(err)}, cfg)
        raise TrainingDiverged(f"{err}; last good state saved to {path}") from None
    finally:
        for stream in streams:
            stream.close()
    ckpt = storage.join(out, stage.name, "checkpoint")
    info = {"stage": stage.name, "steps": steps, "init_from": init_from}
    save_checkpoint(backend, model, ckpt, dict(info, init_digest=init_digest), cfg)
    log.info("stage %s: checkpoint at %s", stage.name, ckpt)
    if skips.total:
        log.warning("stage %s skipped %d records: %s", stage.name, skips.total, skips.counts)
    run_logger.summary(
        {f"{stage.name}/skipped_records/{reason}": n for reason, n in skips.counts.items()}
        | {f"{stage.name}/skipped_records/total": skips.total}
    )
    summary = {
        **asdict(result),
        "checkpoint": ckpt,
        "init_from": init_from,
        "init_digest": init_digest,
        "skipped": skips.summary(),
        **(text.results() if text else {}),
    }
    if stage.eval_after and cfg.data.test_path and not text:
        questions = load_questions(cfg.data.test_path)[: cfg.eval.max_samples]
        # prompts sized by the evaluation's own limit, not the stage's training length
        limit = eval_prompt_limit(cfg, model.llm.config)
        eval_encoder = dataclasses.replace(encoder, max_length=limit)
        with backend.gathered(model):
            scores = evaluate_vqa(
                model,
                eval_encoder,
                questions,
                backend.device,
                cfg.eval.batch_size,
                cfg.eval.max_new_tokens,
            )
        if backend.is_main:
            storage.write_text(
                storage.join(out, stage.name, "predictions.jsonl"),
                "".join(json.dumps(p) + "\n" for p in scores["predictions"]),
            )
        summary["eval"] = {"accuracy": scores["accuracy"], "count": scores["count"]}
        log.info(
            "stage %s: test accuracy %.4f on %d", stage.name, scores["accuracy"], scores["count"]
        )
    return summary, ckpt


def stage_data_source(cfg: TrainConfig, stage) -> str:
    """Which file a stage reads and why, for error messages."""
    path = stage_data_path(cfg.data, stage)
    if path is None:
        return "it read the mixture of data.sources"
    if stage.dataset == "pretrain" and cfg.data.pretrain_path is not None:
        why = f"data.pretrain_path (stages.{stage.name}.dataset=pretrain)"
    else:
        why = "data.train_path"
    return f"it read {path} ({why}) with images under data.image_folder={cfg.data.image_folder}"


def eval_prompt_limit(cfg: TrainConfig, llm_config=None) -> int:
    """The longest evaluation prompt allowed: ``eval.max_length``, else what the LLM's
    positions leave after ``eval.max_new_tokens`` (``llm_config``: the built LLM's config;
    None: read from the checkpoint, before any model is built)."""
    if cfg.eval.max_length is not None:
        return cfg.eval.max_length
    if llm_config is None:
        llm_config = AutoConfig.from_pretrained(checkpoint_dir(cfg.model.llm.checkpoint))
    return int(llm_config.max_position_embeddings) - cfg.eval.max_new_tokens


def check_eval_prompts(cfg: TrainConfig, tokenizer) -> None:
    """Before any training: every post-stage evaluation prompt of ``data.test_path`` fits
    ``eval_prompt_limit``; ConfigError naming the longest one and the setting otherwise."""
    stages = [cfg.stages[s] for s in cfg.run_stages if cfg.stages[s].eval_after]
    if not stages or not cfg.data.test_path:
        return
    limit = eval_prompt_limit(cfg)
    questions = load_questions(cfg.data.test_path)[: cfg.eval.max_samples]
    for stage in stages:
        # prompt text only (with data.tiling, the images' headers); no length limit
        encoder = dataclasses.replace(stage_encoder(cfg, stage, tokenizer, {}), max_length=1 << 30)
        longest, where = 0, None
        for q in questions:
            counts = encoder.tile_counts([q.image])
            n = len(encoder.encode_prompt(question_text(q), counts).input_ids)
            if n > longest:
                longest, where = n, q.id
        if longest > limit:
            setting = (
                f"eval.max_length={cfg.eval.max_length}"
                if cfg.eval.max_length is not None
                else f"the LLM's positions minus eval.max_new_tokens = {limit}"
            )
            raise ConfigError(
                f"data.test_path={cfg.data.test_path}: question {where} makes a prompt of "
                f"{longest} tokens for stage {stage.name} (template {encoder.template.name}), "
                f"more than {setting}; raise eval.max_length (or shorten the questions)"
            )


def train_baselines(cfg: TrainConfig) -> Dict[str, float]:
    """Model-free test accuracies learned from ``data.train_path`` (eval/vqa.py ``baselines``);
    empty when the run reads a mixture (no single training file)."""
    if cfg.data.train_path is None:
        log.info("no text-only baseline: data.train_path is null (a mixture of data.sources)")
        return {}
    questions = load_questions(cfg.data.test_path)[: cfg.eval.max_samples]
    return baselines(questions, TextPrior.from_path(cfg.data.train_path))


def format_table(results: Dict) -> str:
    rows = [("model", "test accuracy")]
    labels = {
        "majority_class_train": "baseline: majority class (from train)",
        "text_only_prior_train": "baseline: text-only prior (from train)",
    }
    for name, value in results.get("baselines", {}).items():
        rows.append((labels.get(name, f"baseline: {name.replace('_', ' ')}"), f"{value:.3f}"))
    for name, stage in results["stages"].items():
        if "eval" in stage:
            rows.append((f"after {name}", f"{stage['eval']['accuracy']:.3f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"| {rows[0][0]:<{width}} | {rows[0][1]} |", f"|{'-' * (width + 2)}|{'-' * 15}|"]
    lines += [f"| {a:<{width}} | {b:>13} |" for a, b in rows[1:]]
    return "\n".join(lines)


def format_val_losses(results: Dict) -> str:
    """One line per text stage (train/text_stage.py): its validation loss before and after."""
    return "\n".join(
        f"stage {name}: val_loss {stage['first_val_loss']:.4f} (first) -> "
        f"{stage['val_loss']:.4f} (last) over {len(stage['val_history'])} validations"
        for name, stage in results["stages"].items()
        if "val_loss" in stage
    )


def checkpoint_root(cfg: TrainConfig, out: str) -> str:
    return cfg.checkpoint.dir or storage.join(out, "checkpoints")


@dataclass
class ResumePlan:
    done: Dict[str, dict] = field(default_factory=dict)  # stage -> its results entry
    restore: Dict[str, str] = field(default_factory=dict)  # stage -> step checkpoint


def plan_resume(cfg: TrainConfig, out: str) -> ResumePlan:
    """What ``resume`` means for this output_dir: finished stages and where the next restarts."""
    plan = ResumePlan()
    if cfg.resume is None:
        return plan
    results_file = storage.join(out, RESULTS_FILE)
    finished = (
        json.loads(storage.read_text(results_file))["stages"]
        if storage.exists(results_file)
        else {}
    )
    pending = [name for name in cfg.run_stages if name not in finished]
    plan.done = {name: finished[name] for name in cfg.run_stages if name in finished}
    if cfg.resume == "auto":
        for name in pending[:1]:
            latest = latest_checkpoint(storage.join(checkpoint_root(cfg, out), name))
            if latest:
                plan.restore[name] = latest
        log.info(
            "resume=auto: %s done; %s",
            sorted(plan.done) or "no stage",
            f"{pending[0]} from {plan.restore[pending[0]]}"
            if plan.restore
            else "nothing to restore, starting the next stage fresh"
            if pending
            else "nothing left to run",
        )
        return plan
    stage = read_checkpoint_meta(cfg.resume).get("stage")
    if stage not in pending:
        raise ValueError(
            f"resume={cfg.resume}: a checkpoint of stage {stage!r}, which is not a pending stage "
            f"of run_stages={cfg.run_stages} (done: {sorted(plan.done)})"
        )
    missing = [name for name in cfg.run_stages[: cfg.run_stages.index(stage)] if name in pending]
    if missing:
        raise ValueError(
            f"resume={cfg.resume}: stage {stage!r} follows {missing}, which have no results in "
            f"{results_file}"
        )
    plan.restore[stage] = cfg.resume
    return plan


def run(cfg: TrainConfig) -> Dict:
    out = storage.absolute(cfg.output_dir)
    backend = build_backend(cfg.backend, cfg.mesh)
    backend.setup()
    if not backend.is_main:  # one voice per run: other processes report only problems
        logging.getLogger("cambrian_train").setLevel(logging.WARNING)
    log.info("output_dir: %s", out)
    cfg = resolve_batches(cfg, backend.mesh)
    prepare_data(cfg)
    if backend.is_main:
        storage.makedirs(out)
        storage.write_text(storage.join(out, "config.yaml"), config_yaml(cfg))
    backend.barrier()
    tokenizer = load_tokenizer(cfg.model.llm)
    check_eval_prompts(cfg, tokenizer)  # known now: no stage trains before it fails
    run_logger = RunLogger(
        cfg.logger,
        out,
        cfg.name,
        OmegaConf.to_container(OmegaConf.structured(cfg)),
        backend.is_main,
    )
    results: Dict = {"name": cfg.name, "output_dir": out, "stages": {}}
    if cfg.data.test_path and any(cfg.stages[s].eval_after for s in cfg.run_stages):
        results["baselines"] = train_baselines(cfg)
    plan = plan_resume(cfg, out)
    previous: Optional[str] = None
    try:
        with StopSignal() as stop:
            for name in cfg.run_stages:
                stage = cfg.stages[name]
                if name in plan.done:
                    results["stages"][name] = plan.done[name]
                    previous = plan.done[name]["checkpoint"]
                    log.info("stage %s: already complete in %s (resume)", name, out)
                    continue
                init_from = stage.init_from or previous
                persistence = Persistence(
                    Checkpointer(
                        checkpoint_root(cfg, out),
                        name,
                        backend,
                        cfg.checkpoint.keep_last,
                        config_yaml(cfg),
                    ),
                    cfg.checkpoint.save_every,
                    stop,
                    plan.restore.get(name),
                )
                summary, previous = run_stage(
                    cfg, stage, backend, tokenizer, run_logger, init_from, out, persistence
                )
                results["stages"][name] = summary
                if backend.is_main:
                    storage.write_text(
                        storage.join(out, RESULTS_FILE), json.dumps(results, indent=2)
                    )
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
        table = format_val_losses(results) if cfg.data.text else format_table(results)
        log.info("results (%s):\n%s", storage.join(out, RESULTS_FILE), table)
    return results
