"""The storage layer (cambrian_train/storage.py) on local paths and on a gs://-like URL store:
atomic writes, directory publishing, safetensors, downloads, bounded retries naming the URL."""

from __future__ import annotations

import pytest
import torch

from cambrian_train import storage
from tests.fake_store import PROTOCOL, ROOT_ENV, FakeStore, Fault, register


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh ``testgs://`` store rooted in tmp_path/store; no backoff delay; no faults."""
    root = tmp_path / "store"
    root.mkdir()
    monkeypatch.setenv(ROOT_ENV, str(root))
    monkeypatch.setenv(storage.BACKOFF_ENV, "0")
    monkeypatch.setenv(storage.LOCAL_DIR_ENV, str(tmp_path / "local"))
    monkeypatch.setattr(FakeStore, "faults", [])
    register()
    return root


@pytest.fixture(params=["local", "url"])
def base(request, store, tmp_path):
    return str(tmp_path / "dir") if request.param == "local" else f"{PROTOCOL}://bucket/dir"


def test_files_and_directories_roundtrip(base):
    path = storage.join(base, "a", "x.json")
    assert not storage.exists(path) and storage.ls(base) == []
    storage.write_text(path, '{"k": 1}')
    assert storage.read_text(path) == '{"k": 1}' and storage.isfile(path)
    assert storage.isdir(storage.join(base, "a")) and storage.ls(base) == ["a"]
    storage.write_bytes(path, b"new")  # replaced whole
    assert storage.read_bytes(path) == b"new"
    storage.rm(storage.join(base, "a"))
    storage.rm(storage.join(base, "a"))  # missing is fine
    assert not storage.exists(path)


def test_publish_dir_replaces_the_old_directory_marker_last(base):
    final, tmp = storage.join(base, "ckpt"), storage.join(base, "ckpt.tmp")
    storage.write_text(storage.join(final, "old.txt"), "old")
    storage.write_text(storage.join(tmp, "weights"), "w")
    storage.write_text(storage.join(tmp, "state.json"), "{}")
    storage.publish_dir(tmp, final, last="state.json")
    assert storage.ls(final) == ["state.json", "weights"]
    assert not storage.exists(tmp)


def test_safetensors_roundtrip(base):
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    path = storage.join(base, "t.safetensors")
    storage.makedirs(base)
    storage.save_safetensors(tensors, path)
    assert torch.equal(storage.load_safetensors(path)["w"], tensors["w"])


def test_absolute_keeps_urls_and_resolves_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("gs://b/run") == "gs://b/run"
    assert storage.absolute("run") == str(tmp_path / "run")
    assert storage.absolute("file://" + str(tmp_path)) == str(tmp_path)
    assert storage.join("gs://b/run/", "x") == "gs://b/run/x"


def test_download_dir_caches_until_the_directory_changes(store):
    url = f"{PROTOCOL}://bucket/export"
    storage.write_text(storage.join(url, "cfg.yaml"), "a")
    storage.write_text(storage.join(url, "sub", "w.bin"), "bb")
    local = storage.download_dir(url)
    assert open(f"{local}/sub/w.bin").read() == "bb"
    assert storage.download_dir(url) == local
    storage.write_text(storage.join(url, "cfg.yaml"), "abc")
    changed = storage.download_dir(url)
    assert changed != local and open(f"{changed}/cfg.yaml").read() == "abc"


def test_a_transient_fault_is_retried(store, caplog):
    url = f"{PROTOCOL}://bucket/x.txt"
    FakeStore.faults.append(Fault("write", "x.txt", times=2))
    storage.write_text(url, "hello")  # two half writes fail, the third succeeds
    FakeStore.faults.append(Fault("read", "x.txt", times=1, error=TimeoutError))
    assert storage.read_text(url) == "hello"
    assert "attempt 1 of 4" in caplog.text and "retrying" in caplog.text


def test_a_persistent_fault_gives_up_naming_the_url_and_attempts(store, monkeypatch):
    monkeypatch.setenv(storage.ATTEMPTS_ENV, "3")
    url = f"{PROTOCOL}://bucket/y.txt"
    fault = Fault("write", "y.txt", times=-1)
    FakeStore.faults.append(fault)
    with pytest.raises(storage.StorageError, match=rf"write {url}: failed 3 times"):
        storage.write_text(url, "data")
    assert fault.hits == 3


def test_permanent_errors_are_not_retried(store):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{PROTOCOL}://bucket/missing")
    with pytest.raises(FileNotFoundError):  # locally neither
        storage.read_bytes(str(store / "missing"))


def test_plan_resume_reads_results_and_step_checkpoints_of_a_url(store, compose):
    from cambrian_train.run import plan_resume

    out = f"{PROTOCOL}://bucket/run"
    cfg = compose(["experiment=demo", f"output_dir={out}", "resume=auto"])
    storage.write_text(f"{out}/results.json", '{"stages": {"pretrain": {"checkpoint": "x"}}}')
    for step, committed in ((2, True), (4, True), (6, False)):
        step_dir = f"{out}/checkpoints/finetune/step-0000000{step}"
        storage.write_text(f"{step_dir}/meta.json", "{}")
        if committed:
            storage.write_text(f"{step_dir}/COMMITTED", f"{step}\n")
    plan = plan_resume(cfg, out)
    assert plan.done == {"pretrain": {"checkpoint": "x"}}
    assert plan.restore == {"finetune": f"{out}/checkpoints/finetune/step-00000004"}
