"""A whole run on an fsspec URL: train two stages into ``testgs://`` (tests/fake_store.py: a
gs://-like store over a local directory), resume it, start a stage from a URL ``init_from``,
export from and to URLs, and evaluate and load from URLs — nothing lands in the working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cambrian_train import storage
from tests.conftest import REPO
from tests.fake_store import FAULTS_ENV, PROTOCOL, ROOT_ENV, FakeStore, register

pytestmark = pytest.mark.integration
RUN = f"{PROTOCOL}://bucket/runs/two"


@pytest.fixture
def store_env(tmp_path, monkeypatch):
    """The store's root and the environment for this process and its subprocesses."""
    env = {
        ROOT_ENV: str(tmp_path / "store"),
        storage.LOCAL_DIR_ENV: str(tmp_path / "local"),
        storage.BACKOFF_ENV: "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    (tmp_path / "store").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(FakeStore, "faults", [])
    register()
    return tmp_path / "store"


def cambrian_train(args, cwd, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fake_store", "cambrian-train", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_train_resume_init_export_eval_all_on_urls(
    tiny_overrides, synthetic_root, store_env, tmp_path
):
    from cambrian_train.eval.cli import main as eval_main
    from cambrian_train.infer.export_cli import main as export_main
    from cambrian_train.infer.load import load_pretrained

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    base = [o for o in tiny_overrides if not o.startswith("output_dir=")]
    code, out = cambrian_train([*base, f"output_dir={RUN}", "checkpoint.save_every=2"], cwd)
    assert code == 0, out[-3000:]
    run_dir = store_env / "bucket" / "runs" / "two"
    for name in ("results.json", "config.yaml", "metrics.jsonl", "loss_curve.png"):
        assert (run_dir / name).is_file(), name
    for stage in ("pretrain", "finetune"):
        assert (run_dir / stage / "checkpoint" / "state.json").is_file()
        assert (run_dir / stage / "predictions.jsonl").is_file()
        assert not (run_dir / stage / "checkpoint.tmp").exists()
    assert (run_dir / "checkpoints" / "pretrain" / "step-00000002" / "COMMITTED").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["output_dir"] == RUN
    assert results["stages"]["finetune"]["init_from"] == f"{RUN}/pretrain/checkpoint"
    assert {json.loads(line)["stage"] for line in open(run_dir / "metrics.jsonl")} == {
        "pretrain",
        "finetune",
    }
    assert os.listdir(cwd) == []  # no local "testgs:" directory, no Hydra files here
    mirror = tmp_path / "local" / "runs" / PROTOCOL / "bucket" / "runs" / "two"
    assert (mirror / ".hydra" / "config.yaml").is_file()

    code, out = cambrian_train([*base, f"output_dir={RUN}", "resume=auto"], cwd)
    assert code == 0 and "already complete" in out, out[-3000:]

    finetune_only = f"{PROTOCOL}://bucket/runs/ft"
    code, out = cambrian_train(
        [
            *base,
            f"output_dir={finetune_only}",
            "run_stages=[finetune]",
            "stages.finetune.eval_after=false",
            f"stages.finetune.init_from={RUN}/pretrain/checkpoint",
        ],
        cwd,
    )
    assert code == 0, out[-3000:]
    again = json.loads(storage.read_text(f"{finetune_only}/results.json"))["stages"]["finetune"]
    assert again["init_digest"] == results["stages"]["finetune"]["init_digest"]

    export = f"{PROTOCOL}://bucket/export/tiny"
    assert export_main([f"{RUN}/finetune/checkpoint", export]) == 0
    assert storage.isfile(f"{export}/cambrian.yaml") and storage.isdir(f"{export}/llm")
    assert export_main([f"{RUN}/pretrain", f"{PROTOCOL}://bucket/c1", "--connector-only"]) == 0
    assert storage.isfile(f"{PROTOCOL}://bucket/c1/connector.json")

    evaluated = f"{PROTOCOL}://bucket/eval"
    data = str(synthetic_root / "test.jsonl")
    args = ["--benchmark", "synthetic", "--data", data, "--limit", "4", "--device", "cpu"]
    assert eval_main(["--model", export, "--out", evaluated, *args]) == 0
    scored = json.loads(storage.read_text(f"{evaluated}/synthetic/results.json"))
    assert scored["model"] == "tiny" and scored["count"] == 4
    model, _, _ = load_pretrained(f"{RUN}/finetune")  # a run checkpoint, read in place
    assert not model.training


def test_a_storage_failure_stops_the_run_naming_the_url(tiny_overrides, store_env, tmp_path):
    base = [o for o in tiny_overrides if not o.startswith("output_dir=")]
    run = f"{PROTOCOL}://bucket/runs/broken"
    args = [*base, f"output_dir={run}", "run_stages=[pretrain]", "stages.pretrain.eval_after=false"]
    env = {FAULTS_ENV: "write:checkpoint.tmp/trainable:-1", storage.ATTEMPTS_ENV: "2"}
    code, out = cambrian_train(args, tmp_path, env)
    assert code == 74, out[-3000:]
    assert f"storage failure: upload to {run}/pretrain/checkpoint.tmp/trainable" in out
    assert "failed 2 times" in out and "Traceback" not in out
    assert not storage.exists(f"{run}/pretrain/checkpoint")
