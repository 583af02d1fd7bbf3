"""The exact gcloud argument lists ``cambrian-pod`` runs (pure functions, no execution).

The queued resource and its TPU VM node share one name (``--node-id NAME``), so every command
addresses the pod by that name. ``--project`` is added only when given; gcloud otherwise uses its
``core/project`` property.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

GCLOUD = "gcloud"
QUEUED = [GCLOUD, "compute", "tpus", "queued-resources"]
TPU_VM = [GCLOUD, "compute", "tpus", "tpu-vm"]
STATE_FORMAT = "--format=value(state.state)"
PROVISIONING_MODELS = ("spot", "best-effort")

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")
_WORKER = re.compile(r"^(all|[0-9]+(,[0-9]+)*)$")


@dataclass(frozen=True)
class Target:
    """Which pod: queued-resource (and node) name, zone, optional project."""

    name: str
    zone: str
    project: Optional[str] = None

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(
                f"pod name {self.name!r} is not a valid TPU name (lowercase letters, digits and "
                "'-', starting with a letter, at most 63 characters)"
            )
        if not _ZONE.match(self.zone):
            raise ValueError(f"zone {self.zone!r} is not a zone name like 'us-central2-b'")
        if self.project is not None and not self.project:
            raise ValueError("project is empty: leave --project out to use gcloud's default")

    def scope(self) -> list[str]:
        """``--zone Z [--project P]``."""
        flags = ["--zone", self.zone]
        if self.project:
            flags += ["--project", self.project]
        return flags


@dataclass(frozen=True)
class CreateOptions:
    """What ``create`` asks for; recorded locally so ``retry`` can re-create the same pod."""

    accelerator_type: str
    runtime_version: str
    provisioning: Optional[str] = None  # None (on-demand) | "spot" | "best-effort"
    reserved: bool = False

    def __post_init__(self):
        if not self.accelerator_type:
            raise ValueError("accelerator type is empty (e.g. 'v4-64')")
        if not self.runtime_version:
            raise ValueError("runtime version is empty (e.g. 'tpu-ubuntu2204-base')")
        if self.provisioning is not None and self.provisioning not in PROVISIONING_MODELS:
            raise ValueError(
                f"provisioning {self.provisioning!r} is not one of {PROVISIONING_MODELS} or None"
            )


def create_args(target: Target, options: CreateOptions) -> list[str]:
    """Request the queued resource (and its node, same name)."""
    args = [*QUEUED, "create", target.name, "--node-id", target.name, *target.scope()]
    args += ["--accelerator-type", options.accelerator_type]
    args += ["--runtime-version", options.runtime_version]
    if options.provisioning:
        args.append(f"--{options.provisioning}")
    if options.reserved:
        args.append("--reserved")
    return args


def describe_state_args(target: Target) -> list[str]:
    """Print the queued resource's state (ACTIVE, PROVISIONING, SUSPENDED, FAILED, ...)."""
    return [*QUEUED, "describe", target.name, *target.scope(), STATE_FORMAT]


def delete_args(target: Target) -> list[str]:
    """Delete the queued resource; ``--force`` deletes its node first, ``--quiet`` skips
    gcloud's own prompt (``cambrian-pod delete`` asks unless ``--yes``)."""
    return [*QUEUED, "delete", target.name, *target.scope(), "--force", "--quiet"]


def check_worker(worker: str) -> str:
    """``all`` or worker indices (``0``, ``0,3``); anything else is a ValueError."""
    if not _WORKER.match(worker):
        raise ValueError(f"worker {worker!r} is not 'all' or worker indices like '0' or '0,3'")
    return worker


def ssh_args(target: Target, command: str, worker: str = "all") -> list[str]:
    """Run a shell command on the given workers (in parallel for ``all``)."""
    return [
        *TPU_VM,
        "ssh",
        target.name,
        *target.scope(),
        f"--worker={check_worker(worker)}",
        "--command",
        command,
    ]


def scp_args(target: Target, local: str, remote: str, worker: str = "all") -> list[str]:
    """Copy one local file to ``remote`` on the given workers."""
    return [
        *TPU_VM,
        "scp",
        local,
        f"{target.name}:{remote}",
        *target.scope(),
        f"--worker={check_worker(worker)}",
    ]
