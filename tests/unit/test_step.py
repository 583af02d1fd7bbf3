"""The step function: one loss over the global batch, whatever the accumulation.

The reference is written independently of train/step.py: the plain mean cross-entropy of the
whole batch in one forward, and its autograd gradients. With ragged supervised-token counts a
mean of micro-batch means differs from it (checked, so the test can fail); the step's summed
losses divided by the global count must not.
"""

from __future__ import annotations

import pytest
import torch

from cambrian_train.backends import build_backend
from cambrian_train.batch import Batch
from cambrian_train.models import build_model
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.run import seed_everything
from cambrian_train.train.stage import apply_stage
from cambrian_train.train.step import TrainStep
from tests.unit.test_model_training import make_stream


class GradCapture:
    """An optimiser stand-in that keeps the gradients it is asked to apply."""

    def __init__(self, params):
        self.params = params
        self.grads = None
        self.apply = None

    def step(self, apply=None):
        self.grads = [p.grad.detach().clone() for p in self.params]
        self.apply = apply

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def _rows(batch: Batch, rows: slice) -> Batch:
    return batch.map(lambda t: t[rows])


@pytest.fixture
def ragged(compose, tiny_overrides):
    cfg = compose(
        tiny_overrides
        + ["stages.finetune.per_device_batch_size=8", "stages.finetune.global_batch_size=8"]
    )
    seed_everything(0)
    model = build_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model.llm)
    stage = cfg.stages["finetune"]
    groups = apply_stage(model, stage)
    batch = next(make_stream(cfg, stage, model, tokenizer))
    # rows 0-2 also supervise their prompt tokens: counts per micro-batch of 2 become ragged
    real = batch.attention_mask[:3].bool()
    batch.labels[:3] = torch.where(real, batch.input_ids[:3], batch.labels[:3])
    return cfg, model, groups, batch


def test_accumulated_step_equals_one_batch(ragged):
    cfg, model, groups, batch = ragged
    params = [p for g in groups for p in g.params]
    model.train()

    reference = model(batch)  # mean over every supervised token of the 8 rows
    reference.backward()
    ref_grads = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None

    counts = [int((batch.labels[k : k + 2, 1:] != -100).sum()) for k in range(0, 8, 2)]
    assert len(set(counts)) > 1, counts
    with torch.no_grad():
        mean_of_means = sum(model(_rows(batch, slice(k, k + 2))) for k in range(0, 8, 2)) / 4
    assert abs(float(mean_of_means) - float(reference)) > 1e-3  # the old objective differs

    backend = build_backend(cfg.backend, cfg.mesh)
    for accum, rows in ((4, 2), (1, 8)):
        capture = GradCapture(params)
        step = TrainStep(model, capture, params, backend, accum, grad_clip=1e9)
        micro = iter([_rows(batch, slice(k, k + rows)) for k in range(0, 8, rows)])
        out = step(micro)
        assert float(out.loss) == pytest.approx(float(reference), rel=1e-6)
        assert bool(out.finite) and bool(capture.apply)
        for ours, ref in zip(capture.grads, ref_grads):
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
        expected_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in ref_grads]))
        assert float(out.grad_norm) == pytest.approx(float(expected_norm), rel=1e-5)


def test_training_loss_without_a_padding_mask_equals_the_masked_one(ragged):
    """The loss forward attends causally without HF's padding mask (no host read of it); on a
    right-padded batch with padding that is the masked computation's loss at every real token."""
    _, model, _, batch = ragged
    assert (batch.attention_mask == 0).any()  # there is padding to get wrong
    with torch.no_grad():
        logits = model.logits(batch)  # with the padding mask
        targets = batch.labels[:, 1:]
        expected = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        )
        total, count = model(batch, reduction="sum")
    assert model.llm.config._attn_implementation == "sdpa"  # restored after the forward
    assert float(count) == float((targets != -100).sum())
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-4)


def test_eager_attention_gives_the_sdpa_loss(compose, tiny_overrides):
    """model.llm.attn_implementation=eager (HF builds its causal mask) and the default sdpa
    (mask-free causal SDPA in training) compute the same loss."""
    totals = []
    for impl in ("sdpa", "eager"):
        cfg = compose(tiny_overrides + [f"model.llm.attn_implementation={impl}"])
        seed_everything(0)
        model = build_model(cfg.model)
        assert model.llm.config._attn_implementation == impl
        batch = next(make_stream(cfg, cfg.stages["finetune"], model, load_tokenizer(cfg.model.llm)))
        with torch.no_grad():
            totals.append(model(batch, reduction="sum")[0])
    torch.testing.assert_close(totals[0], totals[1], rtol=1e-5, atol=1e-4)
