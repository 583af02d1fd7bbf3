"""JSONL byte-offset indexes: built once, cached, invalidated by changes, with a fallback."""

from __future__ import annotations

import json

import pytest

from cambrian_train.data import jsonl_index
from cambrian_train.data.records import RecordError, open_records


def write(path, n, start=0):
    with open(path, "a") as fh:
        for i in range(start, start + n):
            fh.write(json.dumps({"id": f"r{i}", "conversations": []}) + "\n")
            if i % 3 == 0:
                fh.write("\n")  # blank lines are not records


def test_index_is_cached_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "data.jsonl"
    write(path, 50)
    records = open_records(str(path))
    assert len(records) == 50 and records[49]["id"] == "r49" and records[0]["id"] == "r0"
    assert (tmp_path / "data.jsonl.idx.npy").is_file()
    assert (tmp_path / "data.jsonl.idx.json").is_file()

    def no_scan(_):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(jsonl_index, "scan_offsets", no_scan)
    again = open_records(str(path))
    assert [again[i]["id"] for i in (0, 17, 49)] == ["r0", "r17", "r49"]


def test_changed_file_is_reindexed(tmp_path):
    path = tmp_path / "data.jsonl"
    write(path, 10)
    assert len(open_records(str(path))) == 10
    write(path, 5, start=10)
    records = open_records(str(path))
    assert len(records) == 15 and records[14]["id"] == "r14"


def test_fallback_to_cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "data.jsonl"
    write(path, 8)
    monkeypatch.setenv("CAMBRIAN_INDEX_DIR", str(tmp_path / "cache"))
    real_save = jsonl_index._save

    def beside_not_writable(base, offsets, stamp):
        return False if base.parent == tmp_path else real_save(base, offsets, stamp)

    monkeypatch.setattr(jsonl_index, "_save", beside_not_writable)
    assert len(open_records(str(path))) == 8
    assert not (tmp_path / "data.jsonl.idx.npy").exists()
    assert list((tmp_path / "cache").glob("data.jsonl.*.idx.npy"))
    assert len(open_records(str(path))) == 8  # read back from the cache dir


def test_malformed_line_is_a_record_error(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    records = open_records(str(path))
    assert len(records) == 3 and records[2]["id"] == "c"
    with pytest.raises(RecordError, match="malformed_json"):
        records[1]
