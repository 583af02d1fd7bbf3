"""Reading benchmark releases: JSON, JSONL, parquet, TSV/CSV rows; required fields; images.

Used by every benchmark loader. Parquet (the Hugging Face releases, e.g. lmms-lab/*) needs
``pyarrow`` (the ``eval`` extra), imported only when a parquet file is read. A directory given to
:func:`read_rows` means its ``*.parquet`` shards (searched recursively, read in sorted order); they
must all belong to one split (Hugging Face shard names ``<split>-00000-of-00002.parquet``), so a
``data/`` folder that mixes e.g. ``dev-*`` and ``validation-*`` shards is an error naming them.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

Row = Dict[str, Any]
_SHARD = re.compile(r"(.+)-\d+-of-\d+\.parquet")


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; ValueError naming the file if absent or malformed."""
    if not path.is_file():
        raise ValueError(f"benchmark file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def read_jsonl(path: Path) -> List[Row]:
    """One JSON object per non-blank line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not valid JSON: {err}") from None
    return rows


def read_parquet(path: Path) -> List[Row]:
    """All rows of a parquet file as dicts (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"reading {path} needs pyarrow: pip install 'cambrian-train[eval]' (or pyarrow)"
        ) from None
    return pq.read_table(path).to_pylist()


def read_delimited(path: Path, delimiter: str) -> List[Row]:
    """Rows of a TSV/CSV file with a header line (cells are strings)."""
    csv.field_size_limit(sys.maxsize)  # base64 image cells are far longer than the default
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def parquet_shards(folder: Path) -> List[Path]:
    """The sorted ``*.parquet`` files under ``folder``; ValueError if none or several splits."""
    shards = sorted(folder.rglob("*.parquet"))
    if not shards:
        raise ValueError(f"benchmark directory {folder} holds no .parquet file")
    splits = {m.group(1) for m in (_SHARD.fullmatch(s.name) for s in shards) if m}
    if len(splits) > 1:
        raise ValueError(
            f"{folder} holds parquet shards of several splits {sorted(splits)}; "
            "pass the split's file or a folder holding only that split"
        )
    return shards


def read_rows(path: Path) -> List[Row]:
    """Rows of a ``.json`` (a list, or ``{"data": list}``), ``.jsonl``, ``.parquet``, ``.tsv``
    or ``.csv`` file, or of the parquet shards under a directory."""
    if path.is_dir():
        return [row for shard in parquet_shards(path) for row in read_parquet(shard)]
    if not path.is_file():
        raise ValueError(f"benchmark file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of items (or {{'data': [...]}})")
        rows = data
    elif suffix == ".jsonl":
        rows = read_jsonl(path)
    elif suffix == ".parquet":
        rows = read_parquet(path)
    elif suffix in (".tsv", ".csv"):
        rows = read_delimited(path, "\t" if suffix == ".tsv" else ",")
    else:
        raise ValueError(
            f"{path}: unsupported file type {suffix!r} (json, jsonl, parquet, tsv, csv)"
        )
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: item {index} is {type(row).__name__}, not an object")
    return rows


def is_missing(value: Any) -> bool:
    """None, an empty string, NaN, or the string "nan" (how pandas writes an empty TSV cell)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip() in ("", "nan", "NaN")
    return False


def require(row: Row, fields: Sequence[str], path: Path, where: Any) -> None:
    """ValueError naming the file, the item and the first required field that is missing."""
    for name in fields:
        if name not in row or is_missing(row[name]):
            raise ValueError(f"{path}: item {where} lacks required field {name!r}")


def first_field(row: Row, names: Sequence[str], path: Path, where: Any) -> Any:
    """The value of the first of ``names`` (aliases across releases) that ``row`` holds."""
    for name in names:
        if name in row and not is_missing(row[name]):
            return row[name]
    raise ValueError(f"{path}: item {where} lacks required field {' / '.join(map(repr, names))}")


def resolve_image(
    value: Any, folders: Sequence[Path], path: Path, where: Any, name: str = "image"
) -> Union[str, bytes]:
    """An image reference as the runner takes it: a file path (found in ``folders``) or bytes.

    Accepts raw bytes, a parquet image struct ``{"bytes", "path"}`` (bytes win), or a relative
    or absolute path string. A path found in none of the folders is an error naming it.
    """
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}: item {where} field {name!r} holds no image ({value!r})")
    candidate = Path(value)
    if candidate.is_absolute():
        if candidate.is_file():
            return str(candidate)
    else:
        for folder in folders:
            if (folder / candidate).is_file():
                return str(folder / candidate)
    searched = ", ".join(str(f) for f in folders)
    raise ValueError(
        f"{path}: item {where} field {name!r}: image {value!r} not found (searched {searched})"
    )


def decode_base64(value: str, path: Path, where: Any, name: str = "image") -> bytes:
    """The bytes of a base64 image cell (MMBench TSV); ValueError naming the item if invalid."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{path}: item {where} field {name!r} is not valid base64") from None


def optional_str(value: Any) -> Optional[str]:
    """``str(value)`` stripped, or None for a missing value."""
    return None if is_missing(value) else str(value).strip()
