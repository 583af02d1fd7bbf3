"""The xla_spmd backend on four virtual CPU devices (PJRT_DEVICE=CPU CPU_NUM_DEVICES=4)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
XLA_ENV = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}


def ragged_jsonl(synthetic_root, path, count=200, seed=0):
    """Records of different text lengths with 0, 1 or 2 images (from the synthetic set)."""
    rng = random.Random(seed)
    records = [json.loads(line) for line in open(synthetic_root / "train.jsonl")]
    words = "the shapes in this small picture are drawn on a light background".split()
    out = []
    for i in range(count):
        rec = records[i % len(records)]
        question = rec["conversations"][0]["value"].replace("<image>\n", "")
        question += " " + " ".join(rng.choices(words, k=rng.randint(0, 12)))
        images = rng.choice([0, 1, 1, 2])
        other = records[(i + 7) % len(records)]["image"]
        entry = {
            "id": f"r{i}",
            "conversations": [
                {"from": "human", "value": "<image>\n" * images + question},
                {"from": "gpt", "value": rec["conversations"][1]["value"]},
            ],
        }
        if images:
            entry["image"] = [rec["image"], other][:images]
        out.append(json.dumps(entry))
    path.write_text("\n".join(out) + "\n")
    return path


def test_compile_count_constant_after_warmup(synthetic_root, tmp_path):
    data = ragged_jsonl(synthetic_root, tmp_path / "ragged.jsonl")
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cambrian_train",
            "experiment=demo",
            "backend=xla_spmd",
            "data=llava",
            f"data.train_path={data}",
            f"data.image_folder={synthetic_root}/images",
            "data.max_images=2",
            "data.num_workers=0",
            "run_stages=[finetune]",
            "stages.finetune.require_init=false",
            "stages.finetune.eval_after=false",
            "stages.finetune.max_steps=30",
            "stages.finetune.log_every=1",
            "stages.finetune.max_length=224",
            "data.system_prompt=",
            "stages.finetune.global_batch_size=8",
            "stages.finetune.grad_accum_steps=1",
            "backend.compile_warmup_steps=3",
            "backend.on_recompile=error",
            f"output_dir={run}",
            "logger.wandb=false",
            "logger.progress_bar=false",
        ],
        env=XLA_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    compiles = {r["step"]: r["compiles"] for r in rows if "compiles" in r}
    assert sorted(compiles) == list(range(1, 31))
    assert len({compiles[s] for s in range(3, 31)}) == 1, compiles
    assert all(r["loss"] == r["loss"] for r in rows)  # no NaN
