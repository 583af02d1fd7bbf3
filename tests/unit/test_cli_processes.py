"""Which process writes Hydra's files (cli.py): process 0 only, into a local directory even when
``output_dir`` is a URL; the command line's own Hydra settings win."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from cambrian_train.cli import PROCESS_INDEX_ENVS, hydra_overrides, native_torch_only, process_index


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for name in PROCESS_INDEX_ENVS:
        monkeypatch.delenv(name, raising=False)


def test_process_index_from_the_launchers_environment(monkeypatch):
    assert process_index() == 0
    monkeypatch.setenv("RANK", "3")
    assert process_index() == 3
    monkeypatch.setenv("CAMBRIAN_PROCESS_INDEX", "1")  # the explicit one wins
    assert process_index() == 1
    monkeypatch.setenv("CAMBRIAN_PROCESS_INDEX", "one")
    with pytest.raises(ValueError, match="CAMBRIAN_PROCESS_INDEX='one'"):
        process_index()


def test_other_processes_write_no_hydra_files():
    assert hydra_overrides(["experiment=demo"], 2) == [
        "hydra.output_subdir=null",
        "hydra.run.dir=.",
        "hydra/job_logging=stdout",
    ]
    assert hydra_overrides(["hydra.run.dir=/tmp/x"], 1) == [
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]


def test_process_zero_writes_them_into_output_dirs_local_mirror():
    assert hydra_overrides(["output_dir=gs://b/run"], 0) == [
        "hydra.run.dir='${cambrian_local_dir:${output_dir}}'"
    ]
    assert hydra_overrides(["hydra.run.dir=elsewhere"], 0) == []


@pytest.mark.parametrize(
    "backend, variants, expected",
    [
        ("cpu", {}, "0"),
        ("cuda_fsdp", {"a": ["model/connector=tiny_sva"]}, "0"),
        ("xla_spmd", {}, None),  # an XLA run keeps accelerate's and transformers' XLA paths
        ("cpu", {"a": [], "b": ["backend=xla_spmd"]}, None),  # a variant may run on XLA
    ],
)
def test_native_torch_only_switches_off_xla_imports_unless_a_run_uses_xla(
    monkeypatch, backend, variants, expected
):
    monkeypatch.delenv("USE_TORCH_XLA", raising=False)
    native_torch_only(OmegaConf.create({"backend": {"name": backend}, "variants": variants}))
    assert os.environ.get("USE_TORCH_XLA") == expected


def test_native_torch_only_keeps_the_users_setting(monkeypatch):
    monkeypatch.setenv("USE_TORCH_XLA", "1")
    native_torch_only(OmegaConf.create({"backend": {"name": "cpu"}, "variants": {}}))
    assert os.environ["USE_TORCH_XLA"] == "1"
