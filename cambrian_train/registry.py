"""Explicit-key registries: VISION_TOWERS, CONNECTORS, LLMS, BACKENDS.

Each key equals the YAML field that selects it (``tower.source``, ``connector.name``,
``llm.source``, ``backend.name``). Lookups of unknown keys raise a ValueError listing the choices;
no dispatch ever happens on substrings of checkpoint names.
"""

from __future__ import annotations

from typing import Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → factory table with a clear error for unknown names."""

    def __init__(self, kind: str, field: str):
        self.kind = kind
        self.field = field  # the config field whose value is the key, for error messages
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(
                f"{self.field}={name!r} is not a known {self.kind}; "
                f"choose one of {sorted(self._entries)}"
            )
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)


VISION_TOWERS: Registry = Registry("vision tower family", "source")
CONNECTORS: Registry = Registry("connector", "model.connector.name")
LLMS: Registry = Registry("LLM family", "model.llm.source")
BACKENDS: Registry = Registry("backend", "backend.name")
