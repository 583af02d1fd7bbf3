"""The real command line: a short two-stage run and the user-error paths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from cambrian_train.train.checkpoint import tensors_digest

pytestmark = pytest.mark.integration


def cli(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "cambrian_train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_two_stage_run_writes_everything(tiny_overrides, tmp_path):
    overrides = [o for o in tiny_overrides if not o.startswith("logger.wandb")]
    proc = cli([*overrides, "logger.wandb=true", "logger.wandb_mode=offline"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert set(results["stages"]) == {"pretrain", "finetune"}
    assert 0.0 <= results["baselines"]["text_only_prior_train"] <= 1.0
    for stage in ("pretrain", "finetune"):
        assert results["stages"][stage]["eval"]["count"] == 8
        assert (run / stage / "checkpoint" / "connector.safetensors").is_file()
        assert (run / stage / "predictions.jsonl").is_file()
    # stage 2 started from exactly the connector stage 1 saved
    stage1 = load_file(str(run / "pretrain" / "checkpoint" / "connector.safetensors"))
    assert results["stages"]["finetune"]["init_digest"] == tensors_digest(stage1)
    assert results["stages"]["pretrain"]["init_digest"] is None
    # stage 1 saved only connector weights; stage 2 also the LLM
    assert all(
        k.startswith("connector.") or k == "image_newline"
        for k in load_file(str(run / "pretrain" / "checkpoint" / "trainable.safetensors"))
    )
    assert any(
        k.startswith("llm.")
        for k in load_file(str(run / "finetune" / "checkpoint" / "trainable.safetensors"))
    )
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert (run / ".hydra" / "config.yaml").is_file()
    assert list((run / "wandb").glob("offline-run-*"))
    assert "after finetune" in proc.stdout and "majority" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.nonexistent=1"], "nonexistent"),
        (["model=cambrian_99b"], "cambrian_99b"),
        (
            ["data=llava", "data.train_path=/no/such.jsonl", "data.image_folder=/tmp"],
            "data.train_path=/no/such.jsonl does not exist",
        ),
        (
            ["experiment=demo", "model.towers.clip.num_tokens=10"],
            "model.towers.clip.num_tokens=10 is not a perfect square",
        ),
    ],
)
def test_user_errors_are_one_clear_line(args, message, tmp_path):
    proc = cli([*args, f"output_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert message in output
    assert "Traceback" not in output


def test_sva_connector_run(tiny_overrides, tmp_path):
    """model=tiny with the SVA connector (also inside the LLM) trains both stages and evaluates."""
    proc = cli([*tiny_overrides, "model/connector=tiny_sva"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    finetune = results["stages"]["finetune"]
    assert finetune["eval"]["count"] == 8
    stage1 = load_file(str(tmp_path / "run" / "pretrain" / "checkpoint" / "connector.safetensors"))
    assert any(k.startswith("connector.vision_sampler_layers.1.") for k in stage1)
    assert finetune["init_digest"] == tensors_digest(stage1)


def test_variants_train_evaluate_and_compare(tiny_overrides, tmp_path):
    """Two variants x two seeds on the shapes set; a second command trains and scores nothing."""
    overrides = [
        o
        for o in tiny_overrides
        if not o.startswith(("experiment=", "stages.pretrain.max", "stages.finetune.max"))
    ]
    command = [
        "experiment=repro_small",
        *overrides,
        "stages.pretrain.max_steps=2",
        "stages.finetune.max_steps=2",
        "only_variants=[mlp_clip,mlp_clip_no_stage1]",
        "variant_seeds=[0,1]",
    ]
    proc = cli(command, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    saved = json.loads((run / "comparison.json").read_text())
    rows = saved["variants"]
    assert list(rows) == ["mlp_clip", "mlp_clip_no_stage1"] and saved["seeds"] == [0, 1]
    assert rows["mlp_clip_no_stage1"]["stage 1"] == "no"
    for name in rows:
        scores = []
        for seed in (0, 1):
            run_dir = run / name / f"seed-{seed}"
            assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == seed
            results = json.loads(
                (run / "eval" / name / f"seed-{seed}" / "synthetic" / "results.json").read_text()
            )
            assert results["model"] == f"{name}-seed{seed}"
            scores.append(results["score"])
            stages = json.loads((run_dir / "results.json").read_text())["stages"]
            minutes = sum(stage["seconds"] for stage in stages.values()) / 60
            run_row = rows[name]["runs"][str(seed)]
            assert run_row["train_minutes"] == pytest.approx(minutes, abs=0.01)
        overall = rows[name]["overall"]
        assert overall["values"] == scores
        assert overall["mean"] == pytest.approx(sum(scores) / 2)
        # two seeds: t(0.975, 1) = 12.706 times |a - b| / 2
        assert overall["half_width"] == pytest.approx(
            12.706 * abs(scores[0] - scores[1]) / 2, abs=1e-2
        )
    assert not (run / "mlp_clip_no_stage1" / "seed-0" / "pretrain").exists()
    assert (run / "comparison.png").stat().st_size > 1000
    prior = json.loads(
        (run / "eval" / "text-only-prior" / "synthetic" / "results.json").read_text()
    )
    assert prior["baseline"] and saved["prior"]["overall"] == prior["score"]
    scored = (run / "mlp_clip" / "seed-0" / "repro_scores.json").stat().st_mtime_ns
    again = cli([*command, "variant_quick=true"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already trained") == 2  # seed 0 of each variant
    assert (run / "mlp_clip" / "seed-0" / "repro_scores.json").stat().st_mtime_ns == scored
    quick = json.loads((run / "comparison.json").read_text())
    assert quick["seeds"] == [0] and quick["variants"]["mlp_clip"]["overall"]["half_width"] is None
    # not trained by this command: the time still comes from the run's results.json
    assert (
        quick["variants"]["mlp_clip"]["runs"]["0"]["train_minutes"]
        == (rows["mlp_clip"]["runs"]["0"]["train_minutes"])
    )
