"""A resume compares its config with the checkpoint's beyond run control (issue 17): the diff
function, the warning a restore logs, and ``resume=auto`` through the real command line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from cambrian_train.backends.cpu import CPUBackend
from cambrian_train.config.schema import BackendConfig, MeshConfig
from cambrian_train.run import config_yaml
from cambrian_train.train.resume import (
    CRASH_ENV,
    LOCATION_FIELDS,
    RUN_CONTROL_FIELDS,
    Checkpointer,
    config_differences,
    describe_differences,
    is_run_control,
    parse_config,
)

WARNING = "the config differs from the one"


def demo_config(compose, *overrides) -> dict:
    """A composed run config as a resume sees it: config_yaml(cfg) read back."""
    return parse_config(config_yaml(compose(["experiment=demo", *overrides])))


def diff(saved, current, saved_locations=None):
    return [str(d) for d in config_differences(saved, current, saved_locations)]


# --- the diff function -----------------------------------------------------------------------


def test_run_control_fields_are_left_out(compose, tmp_path):
    out = tmp_path / "run"
    saved = demo_config(compose, f"output_dir={out}")
    current = demo_config(
        compose,
        f"output_dir={out}/",  # the same directory, spelt another way
        "resume=auto",
        "name=again",
        "logger.wandb=false",
        "logger.wandb_mode=online",
        "logger.project=other",
        "logger.run_name=r2",
        "logger.progress_bar=false",
        "checkpoint.save_every=7",
        "checkpoint.keep_last=5",
        "stages.finetune.log_every=1",
        "stages.pretrain.log_every=3",
        "backend.on_recompile=error",
        "backend.compile_warmup_steps=9",
        "backend.peak_tflops=123.0",
        "data.num_workers=2",
    )
    assert saved != current
    assert diff(saved, current) == []


def test_every_excluded_field_is_a_config_field(compose):
    config = demo_config(compose)
    for pattern in (*RUN_CONTROL_FIELDS, *LOCATION_FIELDS):
        node = config
        for key in pattern.split("."):
            assert isinstance(node, dict), pattern
            assert key == "*" or key in node, pattern
            node = next(iter(node.values())) if key == "*" else node[key]


def test_is_run_control_matches_whole_keys():
    assert is_run_control("logger.wandb") and is_run_control("stages.finetune.log_every")
    assert is_run_control("resume")
    assert not is_run_control("stages.finetune.lr")
    assert not is_run_control("resumed")  # whole keys only
    assert not is_run_control("stages.finetune")


def test_same_output_dir_relative_absolute_and_url_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"seed": 0, "checkpoint": {"dir": None}}
    relative = dict(base, output_dir="runs/x")
    assert diff(relative, dict(base, output_dir=f"{tmp_path}/runs/x")) == []
    assert diff(dict(base, output_dir="./runs/../runs/x/"), relative) == []
    url = dict(base, output_dir="gs://bucket/runs/x", checkpoint={"dir": "gs://b/ck"})
    same = dict(base, output_dir="GS://bucket//runs/x/", checkpoint={"dir": "gs://b/ck/"})
    assert diff(url, same) == []
    assert diff(url, dict(url, output_dir="gs://bucket/runs/y")) == [
        "output_dir: gs://bucket/runs/x -> gs://bucket/runs/y"
    ]
    # the location recorded at save time wins over the saved relative spelling
    recorded = {"output_dir": "/elsewhere/runs/x", "checkpoint.dir": None}
    assert diff(relative, relative, recorded) == [
        f"output_dir: /elsewhere/runs/x -> {tmp_path}/runs/x"
    ]
    assert diff(relative, dict(base, output_dir="/elsewhere/runs/x"), recorded) == []


def test_real_differences_are_named_with_both_values(compose, tmp_path):
    out = tmp_path / "run"
    saved = demo_config(compose, f"output_dir={out}")
    current = demo_config(
        compose,
        f"output_dir={out}",
        "resume=auto",  # run control, left out
        "stages.finetune.lr=0.0002",
        "seed=3",
        "stages.finetune.betas=[0.9,0.95]",
        "data.system_prompt=null",
        "stages.finetune.warmup_ratio=1e-05",
    )
    assert diff(saved, current) == [
        "seed: 0 -> 3",
        "data.system_prompt: '' -> null",
        "stages.finetune.lr: 0.001 -> 0.0002",
        "stages.finetune.betas: [0.9, 0.999] -> [0.9, 0.95]",
        "stages.finetune.warmup_ratio: 0.03 -> 1e-05",
    ]
    other = demo_config(compose, f"output_dir={tmp_path / 'other'}")
    assert diff(saved, other) == [f"output_dir: {out} -> {tmp_path / 'other'}"]


def test_fields_on_one_side_only_and_the_and_n_more_tail():
    saved = {"a": 1, "b": {"c": 2}, "gone": True}
    current = {"a": 1, "b": {"c": 3, "new": "x"}}
    differences = config_differences(saved, current)
    assert [str(d) for d in differences] == [
        "b.c: 2 -> 3",
        "b.new: (absent) -> x",
        "gone: true -> (absent)",
    ]
    many = config_differences({f"k{i}": i for i in range(8)}, {f"k{i}": -i for i in range(8)})
    text = describe_differences(many)
    assert text == "k1: 1 -> -1; k2: 2 -> -2; k3: 3 -> -3; k4: 4 -> -4; k5: 5 -> -5; and 2 more"
    assert describe_differences(many[:2]) == "k1: 1 -> -1; k2: 2 -> -2"


# --- the warning of a restore ----------------------------------------------------------------


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.connector = nn.Linear(3, 2)


@pytest.fixture
def backend():
    b = CPUBackend(BackendConfig(), MeshConfig())
    b.setup()
    return b


def test_restore_warns_only_about_real_differences(tmp_path, backend, caplog):
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.connector(torch.ones(1, 3)).sum().backward()
    opt.step()  # optimiser state to save
    out = tmp_path / "run"
    saved = f"output_dir: {out}\nresume: null\nstages:\n  finetune:\n    lr: 0.001\n"
    path = Checkpointer(str(out), "finetune", backend, 2, saved).save(2, model, opt, {}, {})
    caplog.set_level(logging.WARNING, logger="cambrian_train")

    auto = f"output_dir: {out}/\nresume: auto\nstages:\n  finetune:\n    lr: 0.001\n"
    Checkpointer(str(out), "finetune", backend, 2, auto).restore(path, model, opt)
    assert WARNING not in caplog.text

    changed = auto.replace("0.001", "0.0002")
    Checkpointer(str(out), "finetune", backend, 2, changed).restore(path, model, opt)
    assert f"{WARNING} {path} was saved with: stages.finetune.lr: 0.001 -> 0.0002" in caplog.text


# --- resume=auto through the command line ----------------------------------------------------


def overrides(synthetic_root, run, extra=()):
    """Three finetune steps of the demo, a step checkpoint after each but the last (the setup
    of tests/integration/test_resume.py, shorter)."""
    return [
        "experiment=demo",
        f"output_dir={run}",
        "data.synthetic=null",
        f"data.root={synthetic_root}",
        "run_stages=[finetune]",
        "stages.finetune.require_init=false",
        "stages.finetune.eval_after=false",
        "stages.finetune.max_steps=3",
        "stages.finetune.log_every=1",
        "stages.finetune.global_batch_size=2",
        "stages.finetune.grad_accum_steps=1",
        "checkpoint.save_every=1",
        "checkpoint.keep_last=2",
        "logger.wandb=false",
        "logger.progress_bar=false",
        *extra,
    ]


def cambrian_train(args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cambrian_train", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
def test_resume_auto_warns_only_when_the_config_really_differs(synthetic_root, tmp_path):
    run = tmp_path / "run"
    crash = {CRASH_ENV: "2"}  # dies inside the step-2 save: step 1 is the one to resume from
    first = cambrian_train(overrides(synthetic_root, run), tmp_path, crash)
    assert first.returncode == 13, first.stdout[-3000:] + first.stderr[-3000:]
    ckpt = run / "checkpoints" / "finetune" / "step-00000001"
    assert (ckpt / "COMMITTED").is_file()

    # the user's command again with resume=auto (and another log setting): no warning
    again = overrides(synthetic_root, run, ["resume=auto", "stages.finetune.log_every=2"])
    resumed = cambrian_train(again, tmp_path, crash)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 13, log[-3000:]  # died in the same save again: still step 1
    assert f"resumed from {ckpt}" in log
    assert WARNING not in log

    # a real change: named, with both values
    changed = cambrian_train([*again, "stages.finetune.lr=0.0002"], tmp_path)
    log = changed.stdout + changed.stderr
    assert changed.returncode == 0, log[-3000:]
    assert f"resumed from {ckpt}" in log
    (warning,) = [line for line in log.splitlines() if WARNING in line]
    assert warning.endswith(f"{WARNING} {ckpt} was saved with: stages.finetune.lr: 0.001 -> 0.0002")
