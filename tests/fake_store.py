"""A ``gs://``-like fsspec filesystem over a local directory, with injectable faults (tests only).

``testgs://bucket/x`` is ``$CAMBRIAN_TEST_STORE/bucket/x``: the code under test takes the URL
branch of every storage call (``fileutil.is_url``) while the bytes land in a temporary directory.
:attr:`FakeStore.faults` makes chosen operations fail with an ``OSError``: a write breaks midway
and, as on an object store, leaves no new object (the old one, if any, stays); a read fails
before returning.

``python -m tests.fake_store cambrian-train|cambrian-export|cambrian-eval ARGS...`` registers the
protocol in a fresh process and runs that command's ``main`` (how subprocess runs see it), with
the faults of ``$CAMBRIAN_TEST_FAULTS`` (``op:match:times`` entries separated by ``,``).
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from typing import List

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "testgs"
ROOT_ENV = "CAMBRIAN_TEST_STORE"
FAULTS_ENV = "CAMBRIAN_TEST_FAULTS"


@dataclass
class Fault:
    """Fail ``times`` operations of kind ``op`` ("write" or "read") on paths containing
    ``match`` (``times`` -1: every one)."""

    op: str
    match: str
    times: int = 1
    error: type = ConnectionError
    hits: int = 0

    def fires(self, op: str, path: str) -> bool:
        if op != self.op or self.match not in path or self.times == 0:
            return False
        self.times -= 1
        self.hits += 1
        return True


class _BrokenUpload(io.BytesIO):
    """A write stream whose connection breaks at its first ``write``: like an object store's
    upload, nothing of it reaches the store (an existing object stays as it was)."""

    def __init__(self, fault: Fault, path: str):
        super().__init__()
        self._fault, self._path = fault, path

    def write(self, data) -> int:
        raise self._fault.error(f"injected write fault on {self._path}")


class FakeStore(DirFileSystem):
    """``testgs://`` over ``$CAMBRIAN_TEST_STORE`` (parents created on write, like a bucket)."""

    protocol = PROTOCOL
    cachable = False  # the root comes from the environment, which tests change
    faults: List[Fault] = []

    def __init__(self, **kwargs):
        super().__init__(path=os.environ[ROOT_ENV], fs=LocalFileSystem(auto_mkdir=True), **kwargs)

    def _fault(self, op: str, path) -> Fault | None:
        return next((f for f in self.faults if f.fires(op, str(path))), None)

    def open(self, path, mode="rb", *args, **kwargs):
        fault = self._fault("write" if "w" in mode else "read", path)
        if fault is None:
            return super().open(path, mode, *args, **kwargs)
        if "w" not in mode:
            raise fault.error(f"injected read fault on {path}")
        return _BrokenUpload(fault, str(path))

    def pipe_file(self, path, value, *args, **kwargs):
        fault = self._fault("write", path)
        if fault is not None:
            raise fault.error(f"injected write fault on {path}")
        return super().pipe_file(path, value, *args, **kwargs)

    def put_file(self, lpath, rpath, *args, **kwargs):
        if self._fault("write", rpath) is not None:
            raise ConnectionError(f"injected write fault on {rpath}")
        return super().put_file(lpath, rpath, *args, **kwargs)

    def cp_file(self, path1, path2, *args, **kwargs):
        if self._fault("write", path2) is not None:
            raise ConnectionError(f"injected write fault on {path2}")
        return super().cp_file(path1, path2, *args, **kwargs)

    def cat_file(self, path, *args, **kwargs):
        if self._fault("read", path) is not None:
            raise ConnectionError(f"injected read fault on {path}")
        return super().cat_file(path, *args, **kwargs)

    def get_file(self, rpath, lpath, *args, **kwargs):
        if self._fault("read", rpath) is not None:
            raise ConnectionError(f"injected read fault on {rpath}")
        return super().get_file(rpath, lpath, *args, **kwargs)


def register() -> None:
    fsspec.register_implementation(PROTOCOL, FakeStore, clobber=True)


def _main() -> int:
    register()
    for entry in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        op, match, times = entry.split(":")
        FakeStore.faults.append(Fault(op, match, int(times)))
    command, args = sys.argv[1], sys.argv[2:]
    sys.argv = [command, *args]
    if command == "cambrian-train":
        from cambrian_train.cli import main

        main()
        return 0
    if command == "cambrian-export":
        from cambrian_train.infer.export_cli import main as export_main

        return export_main(args)
    if command == "cambrian-eval":
        from cambrian_train.eval.cli import main as eval_main

        return eval_main(args)
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(_main())
