"""Exact resume through the real command line: a crash inside a save, SIGTERM, XLA resharding,
FSDP2 over two processes, and an XLA checkpoint continued under FSDP2.

Every test trains the finetune stage of the tiny model for a few steps with a step checkpoint
every 2 steps, then compares the per-step losses (metrics.jsonl) of an interrupted-and-resumed run
with those of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cambrian_train.train.preempt import EXIT_RESUME
from cambrian_train.train.resume import CRASH_ENV, committed_steps

pytestmark = pytest.mark.integration
XLA_ENV = {"PJRT_DEVICE": "CPU"}
XLA_STEPS = 8
FSDP_STEPS = 6
# two torchrun processes over gloo, float32 compute like the cpu and xla runs
FSDP_BACKEND = ["backend=cuda_fsdp", "backend.dtype=float32"]
FSDP = [*FSDP_BACKEND, "data.group_by_length=false"]


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


def launch_fsdp(args, cwd, env=None):
    """``launch`` under torchrun: two processes, one thread each, a free rendezvous port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", f"--master_port={port}"]
    return subprocess.Popen(
        [sys.executable, *torchrun, "-m", "cambrian_train", *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


@pytest.fixture(scope="module")
def xla_reference(synthetic_root, tmp_path_factory):
    """The uninterrupted run on one XLA host with 4 virtual devices: (its directory, step ->
    loss), the losses the XLA resume tests compare with; its step-4 checkpoint is also what
    test_xla_checkpoint_continues_under_fsdp continues under FSDP2."""
    full = tmp_path_factory.mktemp("xla_reference") / "run"
    env = {**XLA_ENV, "CPU_NUM_DEVICES": "4"}
    xla = ["backend=xla_spmd"]
    code, out = finish(launch(overrides(synthetic_root, full, XLA_STEPS, xla), full.parent, env))
    assert code == 0, out[-3000:]
    return full, losses(full)


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


def test_lora_crash_then_resume_auto_is_exact(synthetic_root, tmp_path):
    """Adapters (with dropout: the random stream resumes too) and their optimiser state are in
    the step checkpoint; the base is read from its checkpoint again."""
    lora = ["model.llm.lora.r=4", "model.llm.lora.dropout=0.1"]
    ref_run, run = tmp_path / "ref", tmp_path / "run"
    code, out = finish(launch(overrides(synthetic_root, ref_run, 8, lora), tmp_path))
    assert code == 0, out[-3000:]
    code, out = finish(launch(overrides(synthetic_root, run, 8, lora), tmp_path, {CRASH_ENV: "6"}))
    assert code == 13, out[-3000:]
    code, out = finish(launch(overrides(synthetic_root, run, 8, [*lora, "resume=auto"]), tmp_path))
    assert code == 0 and "step-00000004" in out, out[-3000:]
    expected, resumed = losses(ref_run), losses(run)
    assert [resumed[s] for s in range(5, 9)] == [expected[s] for s in range(5, 9)]


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


PACKED = ["data.packing=true", "data.pack_length=336", "stages.finetune.global_batch_size=2"]


def test_packed_stream_crash_then_resume_auto_is_exact(synthetic_root, tmp_path):
    """Packing keeps a carry of drawn-but-unpacked samples: a resume restores it exactly."""
    steps = 8
    full = tmp_path / "full"
    code, out = finish(launch(overrides(synthetic_root, full, steps, PACKED), tmp_path))
    assert code == 0, out[-3000:]
    assert "packed rows of 336 positions" in out
    run = tmp_path / "run"
    args = overrides(synthetic_root, run, steps, PACKED)
    code, out = finish(launch(args, tmp_path, {CRASH_ENV: "4"}))
    assert code == 13, out[-3000:]
    code, out = finish(launch([*args, "resume=auto"], tmp_path))
    assert code == 0, out[-3000:]
    reference, resumed = losses(full), losses(run)
    assert [resumed[s] for s in range(3, steps + 1)] == [reference[s] for s in range(3, steps + 1)]


@pytest.mark.slow
def test_xla_resume_is_exact_and_reshards_4_to_2(synthetic_root, tmp_path, xla_reference):
    xla = ["backend=xla_spmd"]
    _, expected = xla_reference
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


def test_fsdp_two_processes_crash_inside_a_save_then_resume_auto_is_exact(synthetic_root, tmp_path):
    """Both torchrun processes die inside the step-4 save (after their shards and rank files,
    before the commit); resume=auto restarts both from step 2 and continues exactly."""
    full = tmp_path / "full" / "run"
    code, out = finish(launch_fsdp(overrides(synthetic_root, full, FSDP_STEPS, FSDP), tmp_path))
    assert code == 0, out[-3000:]
    expected = losses(full)
    assert sorted(expected) == list(range(1, FSDP_STEPS + 1))

    run = tmp_path / "run"
    crash = launch_fsdp(
        overrides(synthetic_root, run, FSDP_STEPS, FSDP), tmp_path, {CRASH_ENV: "4"}
    )
    code, out = finish(crash)
    assert code != 0 and "exitcode  : 13" in out, out[-3000:]
    stage_root = run / "checkpoints" / "finetune"
    assert committed_steps(str(stage_root)) == [2]
    partial = stage_root / "step-00000004.partial"
    assert {"rank-00000.pt", "rank-00001.pt"} <= {p.name for p in partial.iterdir()}
    assert not (partial / "COMMITTED").exists()

    resume = overrides(synthetic_root, run, FSDP_STEPS, [*FSDP, "resume=auto"])
    code, out = finish(launch_fsdp(resume, tmp_path))
    assert code == 0, out[-3000:]
    assert "resumed from" in out and "step-00000002" in out
    resumed = losses(run)
    assert [resumed[s] for s in range(3, FSDP_STEPS + 1)] == [
        expected[s] for s in range(3, FSDP_STEPS + 1)
    ]
    assert "saved by" not in out  # same process count: each process reads its own rank file


@pytest.mark.slow
def test_xla_checkpoint_continues_under_fsdp(synthetic_root, tmp_path, xla_reference):
    """A step checkpoint of one XLA host with 4 virtual devices, resumed by two FSDP2 processes:
    the DCP shards reshard into DTensors, the single sampler cursor is shared out over the two
    processes, and the continuation's losses match the XLA run's to float32 reduction order.
    With the (default) length-grouped sampler: one host's batch of 4 and two processes' batches
    of 2 cut the same sorted steps, so the global batches are the same records."""
    full, expected = xla_reference
    ckpt = full / "checkpoints" / "finetune" / "step-00000004"

    fsdp = tmp_path / "fsdp" / "run"
    resume = overrides(synthetic_root, fsdp, XLA_STEPS, [*FSDP_BACKEND, f"resume={ckpt}"])
    code, out = finish(launch_fsdp(resume, tmp_path))
    assert code == 0, out[-3000:]
    assert "saved by 1 process(es), resumed by 2" in out
    continued = losses(fsdp)
    assert sorted(continued) == list(range(5, XLA_STEPS + 1))
    for step in range(5, XLA_STEPS + 1):
        assert continued[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5)
