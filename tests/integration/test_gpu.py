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


def test_fsdp_bf16_on_gpu(tiny_overrides, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "1",
            "-m",
            "cambrian_train",
            *tiny_overrides,
            "backend=cuda_fsdp",
            "backend.dtype=bfloat16",
            "stages.finetune.gradient_checkpointing=true",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
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
