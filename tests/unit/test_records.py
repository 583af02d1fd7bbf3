"""Lazy records: JSONL offset indexes (cached, invalidated, fallback), fsspec URLs (memory://
standing in for gs://), JSON lists streamed into cached JSONL, and clear errors."""

from __future__ import annotations

import io
import json
import pickle
import random
import re
import sys

import fsspec
import numpy as np
import pytest
import torch

from cambrian_train.data import jsonl_index, records
from cambrian_train.data.records import JsonListReader, RecordError, convert_file, open_records


@pytest.fixture(autouse=True)
def index_dir(tmp_path, monkeypatch):
    cache = tmp_path / "index-cache"
    monkeypatch.setenv("CAMBRIAN_INDEX_DIR", str(cache))
    return cache


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    root = f"/test-{random.getrandbits(64):x}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def write(path, n, start=0):
    with open(path, "a") as fh:
        for i in range(start, start + n):
            fh.write(json.dumps({"id": f"r{i}", "conversations": []}) + "\n")
            if i % 3 == 0:
                fh.write("\n")  # blank lines are not records


def identity(item):
    return item


def jsonl_bytes(n, start=0) -> bytes:
    return b"".join(
        json.dumps({"id": f"r{i}", "text": "é" * (i % 5)}, ensure_ascii=False).encode() + b"\n"
        for i in range(start, start + n)
    )


def test_index_is_cached_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "data.jsonl"
    write(path, 50)
    recs = open_records(str(path))
    assert len(recs) == 50 and recs[49]["id"] == "r49" and recs[0]["id"] == "r0"
    assert recs[-1]["id"] == "r49"
    with pytest.raises(IndexError):
        recs[50]
    assert (tmp_path / "data.jsonl.idx.npy").is_file()
    assert (tmp_path / "data.jsonl.idx.json").is_file()

    def no_scan(*_):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(jsonl_index, "scan_offsets", no_scan)
    again = open_records(str(path))
    assert [again[i]["id"] for i in (0, 17, 49)] == ["r0", "r17", "r49"]


def test_changed_file_is_reindexed(tmp_path):
    path = tmp_path / "data.jsonl"
    write(path, 10)
    assert len(open_records(str(path))) == 10
    write(path, 5, start=10)
    recs = open_records(str(path))
    assert len(recs) == 15 and recs[14]["id"] == "r14"


def test_fallback_to_cache_dir(tmp_path, monkeypatch, index_dir):
    path = tmp_path / "data.jsonl"
    write(path, 8)
    real_save = jsonl_index._save

    def beside_not_writable(base, offsets, stamp):
        return False if base.parent == tmp_path else real_save(base, offsets, stamp)

    monkeypatch.setattr(jsonl_index, "_save", beside_not_writable)
    assert len(open_records(str(path))) == 8
    assert not (tmp_path / "data.jsonl.idx.npy").exists()
    assert list(index_dir.glob("data.jsonl.*.idx.npy"))
    assert len(open_records(str(path))) == 8  # read back from the cache dir


def test_malformed_line_is_a_record_error(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    recs = open_records(str(path))
    assert len(recs) == 3 and recs[2]["id"] == "c"
    with pytest.raises(RecordError, match="malformed_json"):
        recs[1]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
def test_scan_offsets_matches_line_split(chunk):
    rng = random.Random(chunk)
    lines = [
        rng.choice([b"", b" ", b"\t \r", b'{"a": 1}', b'  {"b": "x y"}\r', b"\x0c", "é".encode()])
        for _ in range(300)
    ]
    for tail in (b"\n", b"", b'{"last": true}'):
        data = b"\n".join(lines) + tail
        expected, pos = [], 0
        for line in io.BytesIO(data):  # binary lines end at b"\n" only
            if not line.isspace():
                expected.append(pos)
            pos += len(line)
        got = jsonl_index.scan_offsets(io.BytesIO(data), chunk_bytes=chunk)
        assert got.dtype == np.int64 and got.tolist() == expected
    assert jsonl_index.scan_offsets(io.BytesIO(b"")).tolist() == []


def test_url_records_index_in_cache_and_reindex_on_change(memfs, index_dir, monkeypatch):
    fs, root = memfs
    url = f"memory://{root}/bucket/data.jsonl"
    fs.pipe(f"{root}/bucket/data.jsonl", jsonl_bytes(40))
    recs = open_records(url)
    assert len(recs) == 40 and recs[39]["id"] == "r39" and recs[4]["text"] == "éééé"
    assert len(list(index_dir.glob("data.jsonl.*.idx.npy"))) == 1  # keyed by the URL

    real_scan = jsonl_index.scan_offsets
    monkeypatch.setattr(jsonl_index, "scan_offsets", lambda *_: pytest.fail("not cached"))
    assert open_records(url)[7]["id"] == "r7"
    monkeypatch.setattr(jsonl_index, "scan_offsets", real_scan)

    fs.pipe(f"{root}/bucket/data.jsonl", jsonl_bytes(3, start=100))  # rewritten: new identity
    again = open_records(url)
    assert [r["id"] for r in again] == ["r100", "r101", "r102"]


def test_records_pickle_without_offsets_and_read_in_workers(tmp_path, memfs):
    path = tmp_path / "data.jsonl"
    path.write_bytes(jsonl_bytes(5000))
    recs = open_records(str(path))
    recs[3]  # a reader opened in this process must not travel
    blob = pickle.dumps(recs)
    assert len(blob) < 2000  # the offsets are re-mapped from the index file, not copied
    assert pickle.loads(blob)[4999]["id"] == "r4999"

    fs, root = memfs
    fs.pipe(f"{root}/w.jsonl", jsonl_bytes(64))
    for source in (recs, open_records(f"memory://{root}/w.jsonl")):
        loader = torch.utils.data.DataLoader(
            source, batch_size=None, sampler=range(0, 64, 5), num_workers=2, collate_fn=identity
        )
        assert [r["id"] for r in loader] == [f"r{i}" for i in range(0, 64, 5)]


def test_gs_url_without_gcsfs_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # import gcsfs fails, installed or not
    with pytest.raises(ValueError, match=r"gs://bucket/x.jsonl.*'gcsfs' package.*pip install"):
        open_records("gs://bucket/x.jsonl")


def test_missing_file_and_suffix_errors(tmp_path, memfs):
    with pytest.raises(ValueError, match="does not exist"):
        open_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="does not exist"):
        open_records(f"memory://{memfs[1]}/nope.json")
    with pytest.raises(ValueError, match=r"must end in \.json or \.jsonl"):
        open_records(str(tmp_path / "data.csv"))


LIST_TEXT = (
    '\ufeff [ {"id": "a", "n": 12345, "s": "x\\"y\\u00e9"},\n'
    '  {"id": "b", "nested": {"l": [1, 2.5e3, -0.25, true, null]}, "t": "日本語"} ,\n'
    '  {"id": "c", "big": "' + "z" * 3000 + '"}, 7, "str", [1, [2]]\n]\n  '
)


@pytest.mark.parametrize("chunk", [1, 3, 16, 1 << 20])
def test_json_list_reader_matches_json_load(chunk):
    data = LIST_TEXT.encode()
    items = list(JsonListReader(io.BytesIO(data), "x.json", chunk_bytes=chunk))
    assert items == json.loads(LIST_TEXT.lstrip("\ufeff"))


def test_json_list_reader_memory_is_bounded_by_the_largest_record():
    data = json.dumps([{"id": i, "pad": "p" * 100} for i in range(3000)]).encode()
    reader = JsonListReader(io.BytesIO(data), "big.json", chunk_bytes=256)
    largest, ids = 0, []
    for item in reader:
        ids.append(item["id"])
        largest = max(largest, len(reader._buf))
    assert ids == list(range(3000)) and len(data) > 300_000
    assert largest < 1024  # a chunk or two plus one record, never the file


@pytest.mark.parametrize(
    "text, what, at",
    [
        ('[{"id": "é"},\n {"id": tru}, {"id": 3}]', "malformed JSON", "tru}"),
        ('[{"a": 1} {"b": 2}]', "expected ',' or ']'", '{"b"'),
        ('[{"a": 1},]', "malformed JSON", "]"),
        ('[{"a": 1}', "expected ',' or ']'", None),
        ('[{"a": 1}] {"b": 2}', "data after the end of the list", '{"b"'),
        ('{"a": 1}', "expected a JSON list", '{"a"'),
        ("", "expected a JSON list of records, found an empty file", None),
    ],
)
def test_malformed_json_list_names_file_and_byte_offset(tmp_path, text, what, at):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    data = text.encode()
    offset = data.index(at.encode()) if at else len(data)
    with pytest.raises(ValueError, match=f"{re.escape(f'{path}: {what}')}.* at byte {offset};"):
        open_records(str(path))


def test_json_list_is_converted_once_into_the_cache(tmp_path, index_dir, monkeypatch):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": f"r{i}", "conversations": []} for i in range(30)]))
    recs = open_records(str(path))
    assert len(recs) == 30 and recs[29]["id"] == "r29" and recs.source == str(path)
    converted = list(index_dir.glob("data.*.jsonl"))
    assert len(converted) == 1 and recs.path == str(converted[0])

    class NoParse:
        def __init__(self, *_, **__):
            raise AssertionError("the cached conversion should have been used")

    with monkeypatch.context() as patched:
        patched.setattr(records, "JsonListReader", NoParse)
        assert open_records(str(path))[5]["id"] == "r5"

    path.write_text(json.dumps([{"id": "new"}]))  # changed source: converted again
    assert [r["id"] for r in open_records(str(path))] == ["new"]


def test_json_list_from_url_and_convert_round_trip(tmp_path, memfs):
    fs, root = memfs
    items = [{"id": f"r{i}", "v": "ü" * i} for i in range(12)]
    fs.pipe(f"{root}/in.json", json.dumps(items).encode())
    assert [r["id"] for r in open_records(f"memory://{root}/in.json")] == [i["id"] for i in items]

    assert convert_file(f"memory://{root}/in.json", f"memory://{root}/out.jsonl") == 12
    assert convert_file(f"memory://{root}/out.jsonl", str(tmp_path / "back.json")) == 12
    assert json.loads((tmp_path / "back.json").read_text()) == items
    assert fs.ls(root, detail=False) == [f"{root}/in.json", f"{root}/out.jsonl"]  # no temp left


def test_failed_conversion_leaves_no_output(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": 1}\n{"id": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 \(byte 10\) is not valid JSON"):
        convert_file(str(src), str(tmp_path / "out.json"))
    assert [p.name for p in tmp_path.iterdir() if "out" in p.name] == []  # nor a temporary


def test_unwritable_cache_dir_for_a_json_list_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CAMBRIAN_INDEX_DIR", str(tmp_path / "a-file" / "cache"))
    path = tmp_path / "data.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="cannot write its JSONL copy.*CAMBRIAN_INDEX_DIR"):
        open_records(str(path))
