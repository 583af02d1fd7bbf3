"""The tiny VLM end to end in-process: shapes, freezing, learning, connector hand-over."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import pytest
import torch

from cambrian_train.backends import build_backend
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import SupervisedDataset, stage_encoder
from cambrian_train.data.loader import EpochSampler, SkipStats, batch_stream
from cambrian_train.data.records import open_records
from cambrian_train.models import build_model
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.run import seed_everything
from cambrian_train.train.checkpoint import (
    connector_state,
    load_connector,
    save_stage_checkpoint,
    tensors_digest,
)
from cambrian_train.train.metrics import RunLogger
from cambrian_train.train.stage import apply_stage
from cambrian_train.train.trainer import train_stage


@pytest.fixture
def setup(compose, tiny_overrides, tmp_path):
    cfg = compose(tiny_overrides)
    seed_everything(0)
    model = build_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model.llm)
    return cfg, model, tokenizer


def make_stream(cfg, stage, model, tokenizer):
    enc = stage_encoder(cfg, stage, tokenizer, model.image_specs())
    path = cfg.data.pretrain_path if stage.dataset == "pretrain" else cfg.data.train_path
    ds = SupervisedDataset(open_records(path), enc)
    fn = functools.partial(
        collate,
        seq_len=stage.max_length,
        max_images=1,
        slot_len=enc.slot_len,
        pad_id=tokenizer.pad_token_id,
        image_specs=enc.image_specs,
    )
    return batch_stream(ds, EpochSampler(len(ds), 0), stage.per_device_batch_size, fn, SkipStats())


def test_shapes_and_newlines(setup):
    cfg, model, tokenizer = setup
    stage = cfg.stages["finetune"]
    batch = next(make_stream(cfg, stage, model, tokenizer))
    assert batch.input_ids.shape == (2, stage.max_length)
    assert batch.vision_positions.shape == (2, 1, 72)  # 8x8 tokens + 8 newlines
    tokens, _ = model.encode_images({k: v[:, 0] for k, v in batch.pixel_values.items()})
    assert tokens.shape == (2, 72, 128)
    rows = tokens.reshape(2, 8, 9, 128)
    assert torch.equal(rows[:, :, 8], model.image_newline.expand(2, 8, 128))
    embeds, _ = model.embed(batch)
    pos = batch.vision_positions[0, 0]
    torch.testing.assert_close(embeds[0, pos], tokens[0])
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_pretrain_freezes_llm_and_towers_and_hands_connector_over(setup, tmp_path):
    cfg, model, tokenizer = setup
    stage = cfg.stages["pretrain"]
    groups = apply_stage(model, stage)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backend = build_backend(cfg.backend, cfg.mesh)
    logger = RunLogger(cfg.logger, tmp_path, "t", {}, active=False)
    result = train_stage(
        stage,
        model,
        groups,
        backend,
        lambda _: make_stream(cfg, stage, model, tokenizer),
        3,
        logger,
    )
    assert result.steps == 3
    after = model.state_dict()
    for name, value in after.items():
        trained = name.startswith("connector.") or name == "image_newline"
        changed = not torch.equal(before[name], value)
        assert changed == trained, f"{name}: changed={changed}, trained={trained}"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    ckpt = save_stage_checkpoint(model.state_dict(), trainable, tmp_path / "ckpt", {"step": 3})
    fresh = build_model(cfg.model)
    assert tensors_digest(connector_state(fresh)) != tensors_digest(connector_state(model))
    digest = load_connector(fresh, str(ckpt))
    assert digest == tensors_digest(connector_state(model))
    for name, value in connector_state(model).items():
        assert torch.equal(fresh.state_dict()[name], value)


def test_finetune_trains_llm_and_loss_decreases(setup, tmp_path):
    cfg, model, tokenizer = setup
    stage = cfg.stages["finetune"]
    groups = apply_stage(model, stage)
    assert {g.name for g in groups} == {"connector", "connector_no_decay", "llm", "llm_no_decay"}
    assert not any(p.requires_grad for p in model.towers.parameters())
    batch = next(make_stream(cfg, stage, model, tokenizer))
    opt = torch.optim.AdamW([p for g in groups for p in g.params], lr=3e-3)
    losses = []
    for _ in range(25):  # overfit one batch
        loss = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_connector_mismatch_is_a_clear_error(setup, tmp_path):
    cfg, model, _ = setup
    from safetensors.torch import save_file

    save_file(
        {"connector.net.0.weight": torch.zeros(3, 3)}, str(tmp_path / "connector.safetensors")
    )
    with pytest.raises(ValueError, match="connector tensors do not match"):
        load_connector(model, str(tmp_path))
    with pytest.raises(ValueError, match="no connector.safetensors"):
        load_connector(model, str(tmp_path / "missing"))


def test_nonfinite_steps_are_skipped_then_the_run_stops(setup, tmp_path):
    from cambrian_train.train.trainer import TrainingDiverged

    cfg, model, tokenizer = setup
    stage = dataclasses.replace(cfg.stages["pretrain"], max_nonfinite_steps=3, log_every=1)
    groups = apply_stage(model, stage)
    backend = build_backend(cfg.backend, cfg.mesh)
    logger = RunLogger(cfg.logger, tmp_path, "t", {}, active=False)
    stream = make_stream(cfg, stage, model, tokenizer)
    calls = {"n": 0}
    poisoned = {2, 5, 6, 7}  # forward calls (one per step here) whose loss becomes NaN

    def poison(module, args, output):  # output: (summed loss, token count)
        calls["n"] += 1
        return (output[0] * float("nan"), output[1]) if calls["n"] in poisoned else output

    model.register_forward_hook(poison)

    def connector():
        return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("connector.")}

    start = connector()
    train_stage(stage, model, groups, backend, lambda _: stream, 1, logger)  # call 1: trains
    after_good = connector()
    assert any(not torch.equal(start[k], after_good[k]) for k in start)
    result = train_stage(stage, model, groups, backend, lambda _: stream, 1, logger)  # call 2: NaN
    assert result.skipped_steps == 1
    assert all(torch.equal(after_good[k], v) for k, v in connector().items())  # untouched
    # calls 3, 4 train; 5, 6, 7 are NaN: the third in a row stops the run
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row"):
        train_stage(stage, model, groups, backend, lambda _: stream, 10, logger)
    assert logger.history["pretrain"][-1]["skipped_steps"] == 2  # logged before the stop


def test_batched_generation_equals_one_by_one(setup):
    from cambrian_train.eval.vqa import evaluate_vqa, load_questions

    cfg, model, tokenizer = setup
    stage = cfg.stages["finetune"]
    encoder = stage_encoder(cfg, stage, tokenizer, model.image_specs())
    questions = load_questions(cfg.data.test_path)[:6]
    torch.manual_seed(0)
    with torch.no_grad():  # make the random model answer something non-trivial
        model.llm.lm_head.weight.mul_(20)
    one = evaluate_vqa(model, encoder, questions, torch.device("cpu"), batch_size=1)
    batched = evaluate_vqa(model, encoder, questions, torch.device("cpu"), batch_size=6)
    assert [p["prediction"] for p in one["predictions"]] == [
        p["prediction"] for p in batched["predictions"]
    ]
    assert any(p["prediction"].strip() for p in one["predictions"])


def test_logged_throughput_padding_and_mfu(setup, tmp_path):
    """Per interval: padding fraction from the batches' masks, model TFLOP/s per device from
    train/flops.py, and MFU against backend.peak_tflops."""
    from cambrian_train.train.flops import model_flops

    cfg, model, tokenizer = setup
    stage = dataclasses.replace(cfg.stages["pretrain"], log_every=2)
    backend_cfg = dataclasses.replace(cfg.backend, peak_tflops=50.0)
    groups = apply_stage(model, stage)
    backend = build_backend(backend_cfg, cfg.mesh)
    logger = RunLogger(cfg.logger, tmp_path, "t", {}, active=False)
    batches = list(itertools.islice(make_stream(cfg, stage, model, tokenizer), 2))
    train_stage(stage, model, groups, backend, lambda _: iter(batches), 2, logger)
    row = logger.history["pretrain"][-1]  # the window of step 2 (step 1 is logged on its own)
    mask = batches[1].attention_mask
    assert row["padding_fraction"] == pytest.approx(1 - float(mask.sum()) / mask.numel())
    flops = model_flops(
        model,
        stage.global_batch_size,
        mask.shape[1],
        batches[0].image_mask.shape[1],
        train_llm=False,
    ).total
    assert row["model_tflops_per_device"] == pytest.approx(flops / row["step_s"] / 1e12, rel=1e-6)
    assert row["mfu"] == pytest.approx(row["model_tflops_per_device"] / 50.0, rel=1e-6)
    assert row["positions_per_s"] == pytest.approx(mask.numel() / row["step_s"], rel=1e-6)
    assert 0.0 <= row["data_wait_fraction"] < 1.0


def test_data_wait_fraction_sees_a_slow_loader(setup, tmp_path):
    """A loader that sleeps 0.3 s per batch shows as most of the interval's time."""
    import time

    cfg, model, tokenizer = setup
    stage = dataclasses.replace(cfg.stages["pretrain"], log_every=3)
    groups = apply_stage(model, stage)
    backend = build_backend(cfg.backend, cfg.mesh)
    logger = RunLogger(cfg.logger, tmp_path, "t", {}, active=False)
    batches = list(itertools.islice(make_stream(cfg, stage, model, tokenizer), 1)) * 4

    def slow(_):
        for b in batches:
            time.sleep(0.3)
            yield b

    train_stage(stage, model, groups, backend, slow, 3, logger)
    row = logger.history["pretrain"][-1]  # steps 2-3
    waited = 0.3 * 2 / (row["step_s"] * 2)
    assert row["data_wait_fraction"] == pytest.approx(waited, rel=0.2)
    assert row["data_wait_fraction"] > 0.3
