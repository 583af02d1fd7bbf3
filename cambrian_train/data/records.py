"""LLaVA-format records from JSON (one list) or JSONL (one record a line), read lazily.

JSONL files are indexed by byte offset (data/jsonl_index.py: built in one pass, cached beside
the file, memory-mapped), so a record is read only when asked for and the file is never held in
memory. A line that is not valid JSON raises :class:`RecordError`
(reason ``malformed_json``), which the dataset counts and skips.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from cambrian_train.data.jsonl_index import jsonl_offsets


class RecordError(ValueError):
    """A record that cannot be used; ``reason`` is a short machine-readable key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class JsonlRecords(Sequence):
    """Random access to the non-blank lines of a JSONL file through a byte-offset index."""

    def __init__(self, path: str):
        self.path = path
        self._offsets = jsonl_offsets(path)  # int64 [num_records], memory-mapped
        self._fh = None

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> Any:
        if self._fh is None:  # opened lazily so the object pickles into loader workers
            self._fh = open(self.path, "rb")
        self._fh.seek(int(self._offsets[index]))
        line = self._fh.readline()
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RecordError("malformed_json", f"{self.path} line-record {index}: {err}") from None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fh"] = None
        return state


class JsonListRecords(Sequence):
    """A JSON file holding one list of records."""

    def __init__(self, path: str):
        self.path = path
        with open(path) as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of records, got {type(data).__name__}")
        self._records = data

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Any:
        return self._records[index]


def open_records(path: str) -> Sequence:
    """Open a ``.json`` or ``.jsonl`` file of records."""
    if not os.path.exists(path):
        raise ValueError(f"data file {path} does not exist")
    if path.endswith(".jsonl"):
        return JsonlRecords(path)
    if path.endswith(".json"):
        return JsonListRecords(path)
    raise ValueError(f"data file {path} must end in .json or .jsonl")
