"""``cambrian-eval`` data parallel: two torchrun processes (gloo, CPU) write byte-identical
predictions and results to one process's (greedy; sampled shards equal one process in
tests/unit/test_eval_runner.py, in-process: each subprocess run here costs ~10 s of imports)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_eval_runner import MAX_LENGTH, MMBENCH, write_checkpoint

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = ("synthetic", "mmbench")
FILES = ("predictions.jsonl", "results.json")


def eval_command(checkpoint: Path, synthetic: Path, out: Path) -> list:
    return [
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",
        "--max-length",
        str(MAX_LENGTH),
        "--limit",
        "7",
        "--benchmark",
        "synthetic",
        "--data",
        str(synthetic),
        "--benchmark",
        "mmbench",
        "--data",
        str(MMBENCH),
    ]


def run(prefix: list, args: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, *prefix, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_write_the_files_one_process_writes(synthetic_root, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "run")
    synthetic = synthetic_root / "test.jsonl"
    one = run(
        ["-m", "cambrian_train.eval.cli"],
        eval_command(checkpoint, synthetic, tmp_path / "one"),
    )
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = run(
        [*torchrun, "-m", "cambrian_train.eval.cli"],
        eval_command(checkpoint, synthetic, tmp_path / "two"),
    )
    assert "process 0 of 2 generates 2" in two.stderr  # 7 items in 4 batches of <= 2
    for name in BENCHMARKS:
        for file in FILES:
            expected = (tmp_path / "one" / name / file).read_bytes()
            assert (tmp_path / "two" / name / file).read_bytes() == expected, (name, file)
        assert f"{name}: score" in one.stdout and f"{name}: score" in two.stdout
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(BENCHMARKS)
