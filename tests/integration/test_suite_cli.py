"""The synthetic suite end to end through the real commands: a short demo_suite run, every syn_*
benchmark through cambrian-eval, the text-only prior, and the suite's table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
TABULATE = str(Path(__file__).resolve().parents[2] / "tools" / "tables.py")


def run(module, args, cwd):
    command = [sys.executable, module] if module.endswith(".py") else [sys.executable, "-m", module]
    proc = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def tiny_suite(data):
    """Overrides for a two-step run on a suite of 2 test questions per task generated in data."""
    return [
        f"data.root={data}",
        "data.synthetic.num_pretrain=16",
        "data.synthetic.num_train=32",
        "data.synthetic.num_test=2",
        "stages.pretrain.max_steps=2",
        "stages.finetune.max_steps=2",
        "stages.pretrain.global_batch_size=4",
        "stages.finetune.global_batch_size=4",
        "stages.finetune.grad_accum_steps=1",
        "logger.wandb=false",
        "logger.progress_bar=false",
    ]


def test_demo_suite_train_eval_prior_and_table(tmp_path):
    data = tmp_path / "suite"
    run(
        "cambrian_train",
        [
            "experiment=demo_suite",
            f"output_dir={tmp_path / 'run'}",
            *tiny_suite(data),
        ],
        tmp_path,
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["stages"]["finetune"]["eval"]["count"] == 24  # 2 per task
    assert set(results["baselines"]) == {"majority_class_train", "text_only_prior_train"}
    suite = str(data / "suite.yaml")
    checkpoint = str(tmp_path / "run" / "finetune" / "checkpoint")
    out = tmp_path / "eval"
    lines = run(
        "cambrian_train.eval.cli",
        ["--model", checkpoint, "--suite", suite, "--out", str(out / "model")],
        tmp_path,
    )
    assert lines.count("score") == 12
    run(
        "cambrian_train.eval.cli",
        ["--text-prior", str(data / "train.jsonl"), "--suite", suite, "--out", str(out / "prior")],
        tmp_path,
    )
    table = run(TABULATE, [str(out), "--format", "csv"], tmp_path)
    header, *rows = table.strip().splitlines()
    assert header.startswith("model,source,Objects,Attributes,Captions,General avg")
    assert header.endswith("Vision-Centric avg,Overall")
    assert [r.split(",")[:2] for r in rows] == [
        ["text-only-prior", "baseline"],
        ["run-finetune", "ours"],
    ]
    assert all(r.split(",")[-1] for r in rows)  # every row has its overall average


def test_repro_small_on_the_suite_scores_twelve_benchmarks_and_the_prior(tmp_path):
    data = tmp_path / "suite"
    run(
        "cambrian_train",
        [
            "experiment=repro_small",
            "only_variants=[mlp_clip]",
            "variant_seeds=[0,1]",
            "model/vision_tower@model.towers.clip=tiny_clip",
            f"output_dir={tmp_path / 'run'}",
            *tiny_suite(data),
        ],
        tmp_path,
    )
    out = tmp_path / "run"
    saved = json.loads((out / "comparison.json").read_text())
    row = saved["variants"]["mlp_clip"]
    assert len(row["columns"]) == 12
    assert list(row["categories"]) == ["General", "Knowledge", "OCR & Chart", "Vision-Centric"]
    vision = ("syn_spatial", "syn_count", "syn_relative_size", "syn_depth")
    for seed in (0, 1):
        folder = out / "eval" / "mlp_clip" / f"seed-{seed}"
        scores = [json.loads((folder / b / "results.json").read_text())["score"] for b in vision]
        assert row["categories"]["Vision-Centric"]["values"][seed] == pytest.approx(sum(scores) / 4)
    # the prior's overall average as cambrian-tabulate computes it from the same results files
    table = run(TABULATE, [str(out / "eval" / "text-only-prior"), "--format", "csv"], tmp_path)
    header, prior_row = table.strip().splitlines()
    assert prior_row.split(",")[0] == "text-only-prior"
    assert saved["prior"]["overall"] == pytest.approx(float(prior_row.split(",")[-1]), abs=0.05)
    md = (out / "comparison.md").read_text()
    assert "| General | Knowledge | OCR & Chart | Vision-Centric | Overall |" in md
