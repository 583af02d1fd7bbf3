"""One tiny config, data set and seed on three backends and accumulations gives the same losses.

cpu: one process. xla_spmd: four virtual XLA CPU devices, one SPMD program. cuda_fsdp: two
torchrun processes with FSDP2 over gloo. The global batch (8 samples; the unsorted sampler, so
every layout draws the same 8) is the same everywhere, and the loss of a step is the sum of its
token losses over all micro-batches and ranks divided by their number of supervised tokens
(train/step.py), so 1 x 8 on one process, 4 x 2 accumulated, 2 x 1 on four XLA devices and
2 x 2 on two FSDP processes all optimise the same objective: equal to ~1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
STEPS = 5


TOLERANCE = dict(rel=1e-5, abs=1e-5)


def run_losses(tmp_path, synthetic_root, name, backend, launcher=(), env=None, extra=(), accum=1):
    out = tmp_path / name
    args = [
        *extra,
        "experiment=demo",
        f"backend={backend}",
        f"output_dir={out}",
        "data.synthetic=null",
        f"data.root={synthetic_root}",
        "run_stages=[finetune]",
        "stages.finetune.require_init=false",
        "stages.finetune.eval_after=false",
        f"stages.finetune.max_steps={STEPS}",
        "stages.finetune.log_every=1",
        "stages.finetune.global_batch_size=8",
        f"stages.finetune.grad_accum_steps={accum}",
        "data.group_by_length=false",
        "stages.finetune.warmup_ratio=0",
        "logger.wandb=false",
        "logger.progress_bar=false",
    ]
    cmd = [sys.executable, *launcher, "-m", "cambrian_train", *args]
    proc = subprocess.run(
        cmd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    losses = {r["step"]: r["loss"] for r in rows}
    return [losses[s] for s in range(1, STEPS + 1)]


def run_fsdp_losses(tmp_path, synthetic_root, extra=(), accum=1):
    """Two torchrun processes (FSDP2 over gloo), one thread each, float32 compute like the
    others (the backend's default is bf16 mixed precision)."""
    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2")
    extra = ("backend.dtype=float32", *extra)
    return run_losses(
        tmp_path,
        synthetic_root,
        "fsdp",
        "cuda_fsdp",
        launcher=launcher,
        env={"OMP_NUM_THREADS": "1"},
        extra=extra,
        accum=accum,
    )


def test_cpu_xla_fsdp_and_accumulation_losses_agree(tmp_path, synthetic_root):
    cpu = run_losses(tmp_path, synthetic_root, "cpu", "cpu")
    accumulated = run_losses(tmp_path, synthetic_root, "cpu_accum", "cpu", accum=4)
    xla = run_losses(
        tmp_path,
        synthetic_root,
        "xla",
        "xla_spmd",
        env={"PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"},
        accum=2,
    )
    fsdp = run_fsdp_losses(tmp_path, synthetic_root, accum=2)
    print({"cpu": cpu, "cpu 4x2": accumulated, "xla 4 devices": xla, "fsdp 2 procs": fsdp})
    assert cpu[-1] < cpu[0]  # it learns
    assert accumulated == pytest.approx(cpu, **TOLERANCE)
    assert xla == pytest.approx(cpu, **TOLERANCE)
    assert fsdp == pytest.approx(cpu, **TOLERANCE)


def test_fsdp_with_sva_inside_the_llm(tmp_path, synthetic_root):
    """The in-LLM SVA layers run from decoder-layer hooks: under FSDP2 they gather their own
    parameters; losses match the single-process run."""
    extra = ("model/connector=tiny_sva",)
    cpu = run_losses(tmp_path, synthetic_root, "cpu", "cpu", extra=extra)
    fsdp = run_fsdp_losses(tmp_path, synthetic_root, extra=extra)
    assert fsdp == pytest.approx(cpu, **TOLERANCE)


def test_fsdp_with_perceiver_layers_as_units(tmp_path, synthetic_root):
    """Each perceiver layer is its own FSDP2 unit (VisionLanguageModel.shard_units); losses
    match the single-process run."""
    extra = ("model/connector=tiny_perceiver",)
    cpu = run_losses(tmp_path, synthetic_root, "cpu", "cpu", extra=extra)
    fsdp = run_fsdp_losses(tmp_path, synthetic_root, extra=extra)
    assert fsdp == pytest.approx(cpu, **TOLERANCE)


def test_lora_losses_agree_on_cpu_xla_fsdp_x_tensor_and_fsdp(tmp_path, synthetic_root):
    """LoRA adapters on every LLM projection (frozen base, seeded fp32 adapters; dropout off so
    no backend's random stream enters): one process, four XLA devices as 2 fsdp x 2 tensor
    (each adapter follows its base where the base splits over tensor, and splits over fsdp
    otherwise: both adapter rule tables), two FSDP2 processes — the same losses."""
    extra = ("model.llm.lora.r=4", "model.llm.lora.dropout=0.0", "stages.finetune.lr=5e-3")
    xla_env = {"PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}
    cpu = run_losses(tmp_path, synthetic_root, "cpu", "cpu", extra=extra)
    tp = run_losses(
        tmp_path,
        synthetic_root,
        "xla_tp",
        "xla_spmd",
        env=xla_env,
        extra=(*extra, "mesh=xla_cpu_4", "mesh.fsdp=2", "mesh.tensor=2"),
    )
    fsdp = run_fsdp_losses(tmp_path, synthetic_root, extra=extra)
    print({"cpu": cpu, "xla 2x2": tp, "fsdp": fsdp})
    assert cpu[-1] < cpu[0]
    assert tp == pytest.approx(cpu, **TOLERANCE)
    assert fsdp == pytest.approx(cpu, **TOLERANCE)
