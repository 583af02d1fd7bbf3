"""Training-state checkpoints: what is saved, atomic commit, keep-last-N, restore in place."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from cambrian_train.backends.cpu import CPUBackend
from cambrian_train.config.schema import BackendConfig, MeshConfig
from cambrian_train.train.preempt import StopSignal
from cambrian_train.train.resume import (
    COMMIT_FILE,
    Checkpointer,
    committed_steps,
    latest_checkpoint,
    read_checkpoint_meta,
    set_rng_state,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(3, 3)
        self.connector = nn.Linear(3, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.connector(self.frozen(x)).square().mean()


def _trained(seed: int, steps: int):
    torch.manual_seed(seed)
    model = Toy()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        model(torch.randn(4, 3)).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


@pytest.fixture
def backend():
    b = CPUBackend(BackendConfig(), MeshConfig())
    b.setup()
    return b


def test_save_restore_roundtrip_trained_params_and_optimizer(tmp_path, backend):
    model, opt = _trained(0, 3)
    ckpt = Checkpointer(str(tmp_path), "pretrain", backend, keep_last=2, config_yaml="a: 1")
    path = ckpt.save(3, model, opt, {"epoch": 1, "position": 7}, {"total_steps": 9})
    assert (tmp_path / "pretrain" / "step-00000003" / COMMIT_FILE).is_file()
    assert read_checkpoint_meta(path)["step"] == 3
    assert (tmp_path / "pretrain" / "step-00000003" / "config.yaml").read_text() == "a: 1"

    fresh, fresh_opt = _trained(1, 0)  # other init, no optimizer state yet
    frozen_before = fresh.frozen.weight.clone()
    restored = ckpt.restore(path, fresh, fresh_opt)
    assert restored.step == 3 and restored.rank.sampler == {"epoch": 1, "position": 7}
    assert torch.equal(fresh.connector.weight, model.connector.weight)
    assert torch.equal(fresh.frozen.weight, frozen_before)  # frozen parts are not in the state
    for p, q in zip(fresh.connector.parameters(), model.connector.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh_opt.state[p][key], opt.state[q][key])
    # continuing both gives identical parameters
    torch.manual_seed(5)
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m.frozen.load_state_dict(model.frozen.state_dict())
        m(x).backward()
        o.step()
    assert torch.equal(fresh.connector.weight, model.connector.weight)


def test_restore_returns_the_saved_rng_state(tmp_path, backend):
    """restore() reads the random state without applying it (the trainer sets it right
    before the first resumed step, after opening the data stream)."""
    model, opt = _trained(0, 1)
    ckpt = Checkpointer(str(tmp_path), "s", backend, keep_last=1)
    torch.manual_seed(123)
    path = ckpt.save(1, model, opt, {}, {})
    expected = torch.rand(3)
    torch.manual_seed(999)
    untouched = torch.rand(3)
    torch.manual_seed(999)
    restored = ckpt.restore(path, model, opt)
    state = torch.get_rng_state()
    assert torch.equal(torch.rand(3), untouched)
    torch.set_rng_state(state)
    set_rng_state(backend, restored.rank.rng)
    assert torch.equal(torch.rand(3), expected)


def test_keep_last_and_partial_checkpoints_ignored(tmp_path, backend):
    model, opt = _trained(0, 1)
    ckpt = Checkpointer(str(tmp_path), "s", backend, keep_last=2)
    for step in (2, 4, 6):
        ckpt.save(step, model, opt, {}, {})
    assert committed_steps(str(tmp_path / "s")) == [4, 6]
    # an interrupted save: shards but no commit marker
    (tmp_path / "s" / "step-00000008.partial").mkdir()
    (tmp_path / "s" / "step-00000010").mkdir()
    assert latest_checkpoint(str(tmp_path / "s")).endswith("step-00000006")
    ckpt.save(12, model, opt, {}, {})
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "step-00000006",
        "step-00000012",
    ]


def test_wrong_stage_and_incomplete_are_errors(tmp_path, backend):
    model, opt = _trained(0, 1)
    path = Checkpointer(str(tmp_path), "pretrain", backend, 1).save(1, model, opt, {}, {})
    with pytest.raises(ValueError, match="stage 'pretrain', not 'finetune'"):
        Checkpointer(str(tmp_path), "finetune", backend, 1).restore(path, model, opt)
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        read_checkpoint_meta(str(tmp_path / "x"))


def test_fsspec_url_roundtrip(backend):
    """A non-local URL goes through fsspec (memory:// stands in for gs://)."""
    model, opt = _trained(0, 2)
    root = "memory://ckpt-test"
    ckpt = Checkpointer(root, "s", backend, keep_last=1)
    path = ckpt.save(2, model, opt, {"position": 3}, {})
    assert latest_checkpoint(f"{root}/s") == path
    fresh, fresh_opt = _trained(1, 0)
    assert ckpt.restore(path, fresh, fresh_opt).rank.sampler == {"position": 3}
    assert torch.equal(fresh.connector.bias, model.connector.bias)


def test_stop_signal_turns_sigterm_into_a_flag():
    with StopSignal() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is not stop._handle
