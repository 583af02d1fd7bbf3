"""Storage faults on a URL store (tests/fake_store.py): a write that fails midway or a read that
fails is retried a bounded number of times; a persistent failure stops with an error naming the
URL, and the previous step checkpoint or end-of-stage checkpoint stays complete and loadable."""

from __future__ import annotations

import json

import pytest
import torch

from cambrian_train import storage
from cambrian_train.backends.cpu import CPUBackend
from cambrian_train.config.schema import BackendConfig, MeshConfig
from cambrian_train.data.records import open_records
from cambrian_train.infer.load import read_run_checkpoint
from cambrian_train.train.checkpoint import (
    connector_state,
    load_connector,
    save_stage_checkpoint,
    tensors_digest,
)
from cambrian_train.train.resume import Checkpointer, committed_steps
from tests.fake_store import PROTOCOL, ROOT_ENV, FakeStore, Fault, register
from tests.unit.test_resume import Toy, _trained

ROOT = f"{PROTOCOL}://bucket/ckpt"


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """The fake store's fault list (empty), with three attempts and no backoff delay."""
    (tmp_path / "store").mkdir()
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "store"))
    monkeypatch.setenv(storage.ATTEMPTS_ENV, "3")
    monkeypatch.setenv(storage.BACKOFF_ENV, "0")
    monkeypatch.setenv("CAMBRIAN_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.setattr(FakeStore, "faults", [])
    register()
    return FakeStore.faults


@pytest.fixture
def backend():
    b = CPUBackend(BackendConfig(), MeshConfig())
    b.setup()
    return b


def test_step_checkpoint_retries_a_shard_write_that_fails_midway(faults, backend):
    model, opt = _trained(0, 2)
    ckpt = Checkpointer(ROOT, "finetune", backend, keep_last=2)
    fault = Fault("write", ".distcp", times=1)
    faults.append(fault)
    path = ckpt.save(2, model, opt, {"position": 4}, {})
    assert fault.hits == 1 and committed_steps(f"{ROOT}/finetune") == [2]
    fresh, fresh_opt = _trained(1, 0)
    assert ckpt.restore(path, fresh, fresh_opt).step == 2
    assert torch.equal(fresh.connector.weight, model.connector.weight)


@pytest.mark.parametrize("part", [".distcp", "rank-00000.pt", "COMMITTED"])
def test_step_checkpoint_failing_for_good_names_the_url_and_keeps_the_previous(
    faults, backend, part
):
    model, opt = _trained(0, 2)
    ckpt = Checkpointer(ROOT, "finetune", backend, keep_last=2)
    ckpt.save(2, model, opt, {"position": 4}, {})
    later, later_opt = _trained(0, 4)
    faults.append(Fault("write", part, times=-1))  # only step 4 writes from here on
    with pytest.raises(storage.StorageError, match=r"step-00000004.* failed 3 times"):
        ckpt.save(4, later, later_opt, {"position": 8}, {})
    assert committed_steps(f"{ROOT}/finetune") == [2]
    fresh, fresh_opt = _trained(1, 0)
    assert ckpt.restore(f"{ROOT}/finetune/step-00000002", fresh, fresh_opt).step == 2
    assert torch.equal(fresh.connector.weight, model.connector.weight)


def test_restore_retries_transient_read_errors(faults, backend):
    model, opt = _trained(0, 2)
    ckpt = Checkpointer(ROOT, "finetune", backend, keep_last=2)
    path = ckpt.save(2, model, opt, {"position": 4}, {})
    faults += [Fault("read", "rank-00000.pt", times=2), Fault("read", "meta.json", times=1)]
    fresh, fresh_opt = _trained(1, 0)
    assert ckpt.restore(path, fresh, fresh_opt).rank.sampler == {"position": 4}
    assert [f.hits for f in faults] == [2, 1]


def _stage_checkpoint(model, path):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {"stage": "finetune"}
    return save_stage_checkpoint(model.state_dict(), trainable, path, state, "name: toy\n")


def test_stage_checkpoint_write_failure_keeps_the_previous_checkpoint(faults):
    final = f"{ROOT}/finetune/checkpoint"
    first = Toy()
    _stage_checkpoint(first, final)
    faults.append(Fault("write", "checkpoint.tmp/trainable", times=-1))
    with pytest.raises(storage.StorageError, match=r"checkpoint\.tmp/trainable.*failed 3 times"):
        _stage_checkpoint(Toy(), final)
    loaded = Toy()
    assert load_connector(loaded, final) == tensors_digest(connector_state(first))


def test_stage_checkpoint_interrupted_while_publishing_does_not_read_as_complete(faults):
    final = f"{ROOT}/finetune/checkpoint"
    faults.append(Fault("write", "checkpoint/state.json", times=-1))
    with pytest.raises(storage.StorageError, match=r"checkpoint/state\.json"):
        _stage_checkpoint(Toy(), final)
    assert storage.exists(f"{final}/trainable.safetensors")
    with pytest.raises(ValueError, match="without state.json"):
        read_run_checkpoint(final)


def test_data_reads_are_retried_then_reported_with_the_url(faults):
    url = f"{PROTOCOL}://bucket/data/train.jsonl"
    storage.write_text(url, "".join(json.dumps({"id": f"r{i}"}) + "\n" for i in range(5)))
    faults.append(Fault("read", "train.jsonl", times=2))
    records = open_records(url)  # the index scan's open fails twice, then succeeds
    assert records[3]["id"] == "r3"
    faults.append(Fault("read", "train.jsonl", times=-1))
    with pytest.raises(storage.StorageError, match=rf"{url}: failed 3 times"):
        open_records(url)[4]
