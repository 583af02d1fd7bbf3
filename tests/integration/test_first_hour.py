"""What a new user trips over in the first hour (issue 17), through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
WORDS = "please look very carefully at the small picture shown here and then tell me".split()


def cli(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "cambrian_train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def own_data(synthetic_root, tmp_path):
    """A user's LLaVA data set (records and test questions of ~20 words) over the synthetic
    images: (train jsonl, test jsonl)."""
    records = [json.loads(line) for line in open(synthetic_root / "train.jsonl")][:64]
    train = tmp_path / "mine.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    tests = []
    for line in list(open(synthetic_root / "test.jsonl"))[:6]:
        q = json.loads(line)
        q["question"] = " ".join(WORDS) + " " + q["question"]  # about 20 words
        tests.append(json.dumps(q) + "\n")
    test = tmp_path / "mine_test.jsonl"
    test.write_text("".join(tests))
    return train, test


def base(synthetic_root, tmp_path, train, test):
    return [
        "experiment=demo",
        "data=llava",
        f"data.train_path={train}",
        f"data.image_folder={synthetic_root}/images",
        f"data.test_path={test}",
        "data.num_workers=0",
        "data.system_prompt=",
        f"output_dir={tmp_path / 'run'}",
        "stages.pretrain.max_steps=2",
        "stages.finetune.max_steps=2",
        "stages.pretrain.global_batch_size=4",
        "stages.finetune.global_batch_size=4",
        "stages.finetune.grad_accum_steps=1",
        "eval.max_samples=4",
        "logger.wandb=false",
        "logger.progress_bar=false",
    ]


def test_long_eval_questions_are_evaluated_not_a_crash_after_training(synthetic_root, tmp_path):
    """Item 1: test questions longer than a stage's max_length used to kill the run after the
    stage trained (RecordError too_long). The evaluation's prompts now have their own limit
    (eval.max_length, default the LLM's positions), checked before training."""
    train, test = own_data(synthetic_root, tmp_path)
    args = base(synthetic_root, tmp_path, train, test)
    proc = cli([*args, "stages.pretrain.max_length=96"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for stage in ("pretrain", "finetune"):
        assert results["stages"][stage]["eval"]["count"] == 4
    # a limit the questions exceed: refused before any stage trains, naming the setting
    proc = cli([*args, "eval.max_length=64", f"output_dir={tmp_path / 'run2'}"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "raise eval.max_length" in out and "eval.max_length=64" in out
    assert not (tmp_path / "run2" / "pretrain").exists()


def test_own_paths_beside_the_synthetic_captions_are_refused(synthetic_root, tmp_path):
    """Item 2: experiment=demo with only train_path / image_folder swapped kept stage 1 on the
    synthetic captions against the user's images; now a pre-flight error says so and how."""
    train, _ = own_data(synthetic_root, tmp_path)
    folder = tmp_path / "my_images"
    folder.mkdir()
    proc = cli(
        [
            "experiment=demo",
            f"data.train_path={train}",
            f"data.image_folder={folder}",
            f"output_dir={tmp_path / 'run'}",
            "logger.wandb=false",
        ],
        tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "data.pretrain_path" in out and "use data=llava" in out
