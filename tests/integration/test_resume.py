"""Exact resume through the real command line: a crash inside a save, SIGTERM, XLA resharding.

Every test trains the finetune stage of the tiny model for a few steps with a step checkpoint
every 2 steps, then compares the per-step losses (metrics.jsonl) of an interrupted-and-resumed run
with those of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cambrian_train.train.preempt import EXIT_RESUME
from cambrian_train.train.resume import CRASH_ENV, committed_steps

pytestmark = pytest.mark.integration
XLA_ENV = {"PJRT_DEVICE": "CPU"}
XLA_STEPS = 8


STEPS = 24  # long enough for a signal to land mid-run


def overrides(synthetic_root, run, steps=STEPS, extra=()):
    return [
        "experiment=demo",
        f"output_dir={run}",
        "data.synthetic=null",
        f"data.root={synthetic_root}",
        "run_stages=[finetune]",
        "stages.finetune.require_init=false",
        "stages.finetune.eval_after=false",
        f"stages.finetune.max_steps={steps}",
        "stages.finetune.log_every=1",
        "stages.finetune.global_batch_size=4",
        "stages.finetune.grad_accum_steps=1",
        "checkpoint.save_every=2",
        "checkpoint.keep_last=2",
        "logger.wandb=false",
        "logger.progress_bar=false",
        *extra,
    ]


def launch(args, cwd, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "cambrian_train", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def finish(proc, timeout=900):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def losses(run):
    """step -> loss, the last value logged for each step (a resumed run re-logs none)."""
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if r.get("stage") == "finetune" and "loss" in r}


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory):
    """The uninterrupted run on CPU."""
    run = tmp_path_factory.mktemp("reference") / "run"
    code, out = finish(launch(overrides(synthetic_root, run), run.parent))
    assert code == 0, out[-3000:]
    return losses(run)


def test_crash_inside_a_save_then_resume_auto_is_exact(synthetic_root, tmp_path, reference):
    run = tmp_path / "run"
    code, out = finish(launch(overrides(synthetic_root, run), tmp_path, {CRASH_ENV: "4"}))
    assert code == 13, out[-3000:]  # died inside the step-4 save, after its shards were written
    stage_root = run / "checkpoints" / "finetune"
    assert committed_steps(str(stage_root)) == [2]
    assert (stage_root / "step-00000004.partial").is_dir()

    code, out = finish(launch(overrides(synthetic_root, run, extra=["resume=auto"]), tmp_path))
    assert code == 0, out[-3000:]
    assert "resumed from" in out and "step-00000002" in out
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert [resumed[s] for s in range(3, STEPS + 1)] == [reference[s] for s in range(3, STEPS + 1)]
    # keep_last=2; the partial one is gone
    assert committed_steps(str(stage_root)) == [STEPS - 4, STEPS - 2]
    results = json.loads((run / "results.json").read_text())
    assert results["stages"]["finetune"]["resumed_from_step"] == 2

    # a finished run resumed again has nothing left to do
    code, out = finish(launch(overrides(synthetic_root, run, extra=["resume=auto"]), tmp_path))
    assert code == 0 and "already complete" in out, out[-3000:]


def test_sigterm_saves_and_exits_75_then_resumes_exactly(synthetic_root, tmp_path, reference):
    run = tmp_path / "run"
    proc = launch(overrides(synthetic_root, run), tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and not (
        (run / "metrics.jsonl").exists() and len(losses(run)) >= 2
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == EXIT_RESUME, out[-3000:]
    assert "SIGTERM" in out and "resume=auto" in out
    stopped = committed_steps(str(run / "checkpoints" / "finetune"))[-1]
    assert 2 <= stopped < STEPS and stopped == max(losses(run))  # the step it was in, saved

    code, out = finish(launch(overrides(synthetic_root, run, extra=["resume=auto"]), tmp_path))
    assert code == 0, out[-3000:]
    resumed = losses(run)
    assert [resumed[s] for s in range(stopped + 1, STEPS + 1)] == [
        reference[s] for s in range(stopped + 1, STEPS + 1)
    ]


@pytest.mark.slow
def test_xla_resume_is_exact_and_reshards_4_to_2(synthetic_root, tmp_path):
    xla = ["backend=xla_spmd"]
    full = tmp_path / "full" / "run"
    code, out = finish(
        launch(
            overrides(synthetic_root, full, XLA_STEPS, xla),
            tmp_path,
            {**XLA_ENV, "CPU_NUM_DEVICES": "4"},
        )
    )
    assert code == 0, out[-3000:]
    expected = losses(full)

    run = tmp_path / "run"
    env4 = {**XLA_ENV, "CPU_NUM_DEVICES": "4", CRASH_ENV: "4"}
    code, out = finish(launch(overrides(synthetic_root, run, XLA_STEPS, xla), tmp_path, env4))
    assert code == 13, out[-3000:]
    code, out = finish(
        launch(
            overrides(synthetic_root, run, XLA_STEPS, [*xla, "resume=auto"]),
            tmp_path,
            {**XLA_ENV, "CPU_NUM_DEVICES": "4"},
        )
    )
    assert code == 0, out[-3000:]
    resumed = losses(run)
    assert [resumed[s] for s in range(3, XLA_STEPS + 1)] == [
        expected[s] for s in range(3, XLA_STEPS + 1)
    ]

    # the step-4 checkpoint of that run, resumed on 2 devices: same data, resharded state
    two = tmp_path / "two" / "run"
    ckpt = run / "checkpoints" / "finetune" / "step-00000004"
    code, out = finish(
        launch(
            overrides(synthetic_root, two, XLA_STEPS, [*xla, f"resume={ckpt}"]),
            tmp_path,
            {**XLA_ENV, "CPU_NUM_DEVICES": "2"},
        )
    )
    assert code == 0, out[-3000:]
    resharded = losses(two)
    assert sorted(resharded) == list(range(5, XLA_STEPS + 1))
    for step in range(5, XLA_STEPS + 1):
        assert resharded[step] == pytest.approx(expected[step], rel=1e-4)
