"""Two "hosts" write one checkpoint that one host loads: the project's Checkpointer over gloo.

Two torchrun processes stand in for two hosts (a CPU process cannot join another in one XLA SPMD
program, so the cuda_fsdp backend's gloo process group is the multi-process path on CPU). Each
holds half of every parameter and moment (FSDP2 ``fully_shard``: DTensor ``Shard(0)`` over the
backend's 2-rank CPU mesh, one dimension uneven) and both save through ``Checkpointer.save`` into
one directory. A single process with the cpu backend then restores it into whole tensors, which
must equal the originals; only process 0 may write the shared files, each process its own
``rank-0000k.pt``. This file is also the worker: ``torchrun ... test_multihost.py OUT``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cambrian_train import storage
from cambrian_train.backends.cpu import CPUBackend
from cambrian_train.config.schema import BackendConfig, MeshConfig
from cambrian_train.train.adamw import MaskedAdamW
from cambrian_train.train.resume import Checkpointer

STEP = 3
CONFIG_YAML = "seed: 1\n"
GRAD = 0.5  # every gradient entry in the one optimiser step
SHARED = {"meta.json", "config.yaml", "COMMITTED"}


class Toy(nn.Module):
    """Parameters with known values: rows split 4/4 and (uneven) 3/2 over two ranks, a
    vector, and a frozen matrix (not part of the checkpoint)."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.arange(24, dtype=torch.float32).reshape(8, 3))
        self.proj = nn.Linear(3, 5)
        self.frozen = nn.Parameter(torch.ones(4, 2), requires_grad=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.arange(15, dtype=torch.float32).reshape(5, 3) / 10)
            self.proj.bias.copy_(-torch.arange(5, dtype=torch.float32))


def expected_params() -> dict:
    """The toy's values (lr 0 and no weight decay: the step leaves them unchanged)."""
    return {
        "table": torch.arange(24, dtype=torch.float32).reshape(8, 3),
        "proj.weight": torch.arange(15, dtype=torch.float32).reshape(5, 3) / 10,
        "proj.bias": -torch.arange(5, dtype=torch.float32),
    }


def optimizer_for(model: nn.Module) -> MaskedAdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return MaskedAdamW(params, lr=0.0, weight_decay=0.0)


def worker(out: str) -> None:
    """One of two processes: shard the toy, take one AdamW step, save, record what it wrote."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    from cambrian_train.backends.cuda_fsdp import CudaFsdpBackend

    backend = CudaFsdpBackend(BackendConfig(name="cuda_fsdp"), MeshConfig())
    backend.setup()
    assert backend.world_size == 2
    model = fully_shard(Toy(), mesh=backend.device_mesh)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(isinstance(p, DTensor) and p.placements == (Shard(0),) for p in trained.values())
    optimizer = optimizer_for(model)
    for p in trained.values():
        p.grad = torch.full_like(p, GRAD)
    optimizer.step()

    writes = []  # (storage function, file name) of every write this process makes
    originals = {
        name: getattr(storage, name) for name in ("write_bytes", "makedirs", "publish_dir")
    }
    for name, original in originals.items():

        def record(path, *args, _original=original, _name=name, **kwargs):
            writes.append([_name, storage.basename(path)])
            return _original(path, *args, **kwargs)

        setattr(storage, name, record)
    checkpointer = Checkpointer(out, "finetune", backend, keep_last=2, config_yaml=CONFIG_YAML)
    sampler = {"position": 10 + backend.rank}
    checkpointer.save(STEP, model, optimizer, sampler, {"total_steps": 9})
    for name, original in originals.items():
        setattr(storage, name, original)

    local = {n: list(p.to_local().shape) for n, p in trained.items()}
    whole = {f"model.{n}": p.full_tensor() for n, p in trained.items()}
    for n, p in trained.items():
        for key, value in optimizer.state[p].items():
            whole[f"optim.{n}.{key}"] = value.full_tensor() if isinstance(value, DTensor) else value
    report = {"writes": writes, "local_shapes": local}
    Path(out, f"report-{backend.rank}.json").write_text(json.dumps(report))
    if backend.rank == 0:
        torch.save(whole, Path(out, "gathered.pt"))
    backend.shutdown()


@pytest.mark.integration
def test_two_processes_save_one_checkpoint_that_one_process_loads(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        f"--master_port={port}",
        __file__,
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ckpt = tmp_path / "finetune" / f"step-{STEP:08d}"
    names = {p.name for p in ckpt.iterdir()}
    # one DCP checkpoint: one .metadata (rank 0) and each process's shard file
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= names
    assert (
        names
        == {".metadata", "__0_0.distcp", "__1_0.distcp", "rank-00000.pt", "rank-00001.pt"} | SHARED
    )
    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in range(2)]
    assert reports[0]["local_shapes"] == {"table": [4, 3], "proj.weight": [3, 3], "proj.bias": [3]}
    assert reports[1]["local_shapes"] == {"table": [4, 3], "proj.weight": [2, 3], "proj.bias": [2]}
    written = [{name for kind, name in r["writes"] if kind == "write_bytes"} for r in reports]
    assert written[0] == {"rank-00000.pt"} | SHARED
    assert written[1] == {"rank-00001.pt"}
    assert not [w for w in reports[1]["writes"] if w[0] != "write_bytes"]  # no dirs, no publish

    # one process, the cpu backend: whole tensors
    model = Toy()
    for p in model.parameters():
        if p.requires_grad:
            p.data.zero_()
    optimizer = optimizer_for(model)
    backend = CPUBackend(BackendConfig(name="cpu"), MeshConfig())
    checkpointer = Checkpointer(str(tmp_path), "finetune", backend, 2, config_yaml=CONFIG_YAML)
    restored = checkpointer.restore(str(ckpt), model, optimizer)
    assert restored.step == STEP and restored.meta["world_size"] == 2
    assert restored.rank.sampler["position"] == 21  # 10 + 11 records consumed, now on one process

    params = dict(model.named_parameters())
    gathered = torch.load(tmp_path / "gathered.pt")
    for name, value in expected_params().items():
        assert torch.equal(params[name], value), name
        state = optimizer.state[params[name]]
        assert torch.equal(state["step"], torch.tensor(1.0))
        # first AdamW moments after one step of constant gradient g: (1-b1) g and (1-b2) g^2
        assert torch.allclose(state["exp_avg"], torch.full_like(value, 0.1 * GRAD))
        assert torch.allclose(state["exp_avg_sq"], torch.full_like(value, 0.001 * GRAD**2))
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], gathered[f"optim.{name}.{key}"]), (name, key)
    assert torch.equal(params["frozen"], torch.ones(4, 2))


if __name__ == "__main__":
    worker(sys.argv[1])
