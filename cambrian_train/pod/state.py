"""The local record of a pod, ``~/.cambrian/pod-<name>.json``: its create and setup options.

``create`` and ``setup`` write their section; ``retry`` reads both to re-create and re-install a
pod that was preempted or deleted.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cambrian_train.fileutil import write_text_atomic
from cambrian_train.pod.errors import UsageError
from cambrian_train.pod.gcloud import CreateOptions
from cambrian_train.pod.remote import SetupOptions


def state_path(name: str) -> Path:
    return Path.home() / ".cambrian" / f"pod-{name}.json"


def load(name: str) -> dict[str, Any]:
    """The recorded sections ({} when nothing was recorded yet)."""
    path = state_path(name)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def record(name: str, section: str, options: CreateOptions | SetupOptions) -> Path:
    """Write (replace) one section, keeping the others."""
    data = load(name)
    data[section] = asdict(options)
    path = state_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _section(name: str, section: str, command: str) -> dict[str, Any]:
    data = load(name).get(section)
    if data is None:
        raise UsageError(
            f"no {section} options recorded for pod {name!r} in {state_path(name)}: "
            f"run `cambrian-pod {command}` once first"
        )
    return data


def recorded_create(name: str) -> CreateOptions:
    try:
        return CreateOptions(**_section(name, "create", "create"))
    except TypeError as err:
        raise ValueError(f"{state_path(name)}: bad 'create' section ({err})") from err


def recorded_setup(name: str) -> SetupOptions:
    try:
        return SetupOptions(**_section(name, "setup", "setup"))
    except TypeError as err:
        raise ValueError(f"{state_path(name)}: bad 'setup' section ({err})") from err
