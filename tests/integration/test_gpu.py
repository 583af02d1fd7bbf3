"""The cuda_fsdp backend on real GPUs (skipped without CUDA; see README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def train_on_one_gpu(tiny_overrides, tmp_path, *extra) -> dict:
    """The tiny two-stage run under torchrun on one GPU with bf16 compute; → results.json."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1"]
    proc = subprocess.run(
        [*launch, "-m", "cambrian_train", *tiny_overrides, "backend=cuda_fsdp"]
        + ["backend.dtype=bfloat16", *extra],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_fsdp_bf16_on_gpu(tiny_overrides, tmp_path):
    results = train_on_one_gpu(
        tiny_overrides, tmp_path, "stages.finetune.gradient_checkpointing=true"
    )
    assert results["stages"]["finetune"]["final_loss"] < results["stages"]["finetune"]["first_loss"]


def test_gpu_mfu_script_reports_mfu(tmp_path):
    """tools/gpu_mfu.py at tiny shapes on the GPU: the run trains and logs an MFU."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/gpu_mfu.py"), "--size", "tiny", "--steps", "3"]
        + ["--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "MFU over the last" in proc.stdout, proc.stdout


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_qlora_and_int8_base_train_adapters_on_one_gpu(tiny_overrides, tmp_path, quantization):
    """A bitsandbytes-quantised frozen LLM (4-bit NF4 = QLoRA, or LLM.int8()) with LoRA adapters
    on one GPU: the run trains (loss falls), only adapters and connector are saved, and the
    export merges them into the unquantised base."""
    pytest.importorskip("bitsandbytes")
    results = train_on_one_gpu(
        tiny_overrides,
        tmp_path,
        "model.llm.dtype=bfloat16",
        f"model.llm.quantization={quantization}",
        "model.llm.lora.r=8",
        "stages.finetune.lr=5e-3",
    )
    assert results["stages"]["finetune"]["final_loss"] < results["stages"]["finetune"]["first_loss"]
    from safetensors import safe_open

    from cambrian_train.models.lora import is_adapter_name

    ckpt = tmp_path / "run" / "finetune" / "checkpoint"
    with safe_open(str(ckpt / "trainable.safetensors"), framework="pt") as f:
        llm = [k for k in f.keys() if k.startswith("llm.")]
    assert llm and all(is_adapter_name(k) for k in llm)
    from cambrian_train.infer.export import export_checkpoint
    from cambrian_train.infer.load import load_pretrained

    model, _, _ = load_pretrained(export_checkpoint(ckpt, tmp_path / "export"))
    assert model.cfg.llm.quantization is None and model.cfg.llm.lora.r == 0
