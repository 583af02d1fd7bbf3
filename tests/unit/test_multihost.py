"""Multi-host data feeding without a pod: two simulated hosts' batches form the one-host batch.

On a pod the xla_spmd backend runs one process per host. Each host loads
``host_batch_size(per_device) = per_device x (data x fsdp) / hosts`` samples per micro-step from
a sampler sharded by host (rank = process index, world size = process count; run.py passes
``backend.data_parallel_rank`` / ``data_parallel_size`` to ``build_sampler``), and
``ShardingSpec(minibatch=True)`` concatenates the hosts' rows in host order into the global batch.
A CPU process cannot join another in one SPMD program (no distributed PJRT runtime on CPU), so
these tests simulate the hosts with the real samplers: host 0's batch followed by host 1's batch
must hold exactly the records of the one-host batch of twice the size, at every step (the
length-grouped sampler: in the same order), and an epoch must cover every record once.

Where this holds: within the first epoch always; across epochs when every host's epoch has the
same size and the epoch splits into whole global batches (shuffled: an even number of records;
length-grouped: no left-over step). Otherwise the batch that straddles an epoch boundary, and
the ones after it, differ from one host's (no record is lost or repeated; the order differs).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cambrian_train.config.schema import DataConfig
from cambrian_train.data.sampler import LengthGroupedSampler
from cambrian_train.data.sources import build_sampler

REPO = Path(__file__).resolve().parents[2]
HOSTS = 2
GLOBAL = 8  # one micro-step's global batch; each host loads GLOBAL // HOSTS
SEED = 5


def batches(sampler, batch_size: int, num_steps: int) -> list:
    """The first ``num_steps`` batches of ``batch_size`` consecutive indices of ``sampler``."""
    stream = iter(sampler)
    return [list(itertools.islice(stream, batch_size)) for _ in range(num_steps)]


def shuffled(num_records: int, batch_size: int, rank: int = 0, world_size: int = 1):
    """The sampler run.py builds for ``data.group_by_length=false``."""
    cfg = DataConfig(group_by_length=False)
    return build_sampler(cfg, range(num_records), None, SEED, batch_size, rank, world_size)


def grouped(lengths, multimodal, batch_size: int, rank: int = 0, world_size: int = 1):
    return LengthGroupedSampler(
        lengths, multimodal, batch_size, SEED, rank=rank, world_size=world_size, group_batches=2
    )


def lengths_and_modality(num_records: int, num_multimodal: int):
    rng = np.random.default_rng(11)
    multimodal = np.zeros(num_records, dtype=bool)
    multimodal[rng.permutation(num_records)[:num_multimodal]] = True
    return rng.integers(5, 300, num_records), multimodal


def test_host_batch_size_is_each_hosts_share_of_the_global_micro_batch():
    """The real xla_spmd backend (in a subprocess: torch_xla stays out of this process) on a
    2 x 4 mesh of 8 devices with 2 samples per device: a global micro-batch of 16 rows, so one
    host loads 16, each of two hosts 8, each of four hosts 4."""
    pytest.importorskip("torch_xla")
    code = (
        "import json\n"
        "from cambrian_train.backends.xla_spmd import XlaSpmdBackend\n"
        "from cambrian_train.config.schema import BackendConfig, MeshConfig\n"
        "mesh = MeshConfig(name='m', num_devices=8, data=2, fsdp=4, tensor=1)\n"
        "backend = XlaSpmdBackend(BackendConfig(name='xla_spmd'), mesh)\n"
        "sizes = {}\n"
        "for hosts in (1, 2, 4):\n"
        "    backend.world_size = hosts\n"
        "    sizes[hosts] = backend.host_batch_size(2)\n"
        "print(json.dumps(sizes))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"1": 16, "2": 8, "4": 4}


@pytest.mark.parametrize("num_records", [96, 98])
def test_two_hosts_shuffled_batches_are_the_one_host_batch(num_records):
    """Step by step over three epochs the two hosts' rows are the one host's records (as a set:
    host h takes every other index of the epoch order)."""
    num_steps = 3 * num_records // GLOBAL
    one = batches(shuffled(num_records, GLOBAL), GLOBAL, num_steps)
    hosts = [
        batches(shuffled(num_records, GLOBAL // HOSTS, h, HOSTS), GLOBAL // HOSTS, num_steps)
        for h in range(HOSTS)
    ]
    for step, (single, first, second) in enumerate(zip(one, *hosts)):
        assert len(first) == len(second) == GLOBAL // HOSTS
        assert sorted(first + second) == sorted(single), f"step {step}"
        assert not set(first) & set(second), f"step {step}: a record on both hosts"


def test_two_hosts_length_grouped_batches_are_the_one_host_batch_in_order():
    """The length-grouped order cuts each sorted step into contiguous per-host runs, so host 0's
    rows followed by host 1's are the one host's batch in the same order, over three epochs
    (64 multimodal + 32 text-only records: whole steps, no left-overs)."""
    lengths, multimodal = lengths_and_modality(96, 64)
    num_steps = 3 * 96 // GLOBAL
    one = batches(grouped(lengths, multimodal, GLOBAL), GLOBAL, num_steps)
    hosts = [
        batches(grouped(lengths, multimodal, GLOBAL // HOSTS, h, HOSTS), GLOBAL // HOSTS, num_steps)
        for h in range(HOSTS)
    ]
    for step, (single, first, second) in enumerate(zip(one, *hosts)):
        assert first + second == single, f"step {step}"
        assert len(set(multimodal[single])) == 1, f"step {step} mixes modalities"


@pytest.mark.parametrize("num_records, num_multimodal", [(96, 64), (100, 61), (97, 50), (101, 0)])
def test_an_epoch_of_two_hosts_covers_every_record_once(num_records, num_multimodal):
    """Uneven sizes too: the hosts' epoch shares are disjoint and together every record."""
    lengths, multimodal = lengths_and_modality(num_records, num_multimodal)
    for epoch in range(3):
        for make in (
            lambda h: shuffled(num_records, GLOBAL // HOSTS, h, HOSTS),
            lambda h: grouped(lengths, multimodal, GLOBAL // HOSTS, h, HOSTS),
        ):
            shares = [make(h).epoch_indices(epoch) for h in range(HOSTS)]
            assert sorted(shares[0] + shares[1]) == list(range(num_records))
            assert abs(len(shares[0]) - len(shares[1])) <= 1


@pytest.mark.parametrize("num_records, num_multimodal", [(100, 61), (97, 50)])
def test_uneven_epochs_match_one_host_up_to_the_epoch_boundary(num_records, num_multimodal):
    """An epoch that does not split into whole global batches: every step before the one that
    straddles the boundary still equals the one-host batch (in order, length-grouped)."""
    lengths, multimodal = lengths_and_modality(num_records, num_multimodal)
    whole_steps = num_records // GLOBAL
    for make, ordered in (
        (lambda size, h=0, n=1: shuffled(num_records, size, h, n), False),
        (lambda size, h=0, n=1: grouped(lengths, multimodal, size, h, n), True),
    ):
        one = batches(make(GLOBAL), GLOBAL, whole_steps)
        hosts = [
            batches(make(GLOBAL // HOSTS, h, HOSTS), GLOBAL // HOSTS, whole_steps)
            for h in range(HOSTS)
        ]
        for step, (single, first, second) in enumerate(zip(one, *hosts)):
            rows = first + second
            expected = single if ordered else sorted(single)
            assert (rows if ordered else sorted(rows)) == expected, f"step {step}"
