"""Which process writes Hydra's files (cli.py): process 0 only, into a local directory even when
``output_dir`` is a URL; the command line's own Hydra settings win."""

from __future__ import annotations

import pytest

from cambrian_train.cli import PROCESS_INDEX_ENVS, hydra_overrides, process_index


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
