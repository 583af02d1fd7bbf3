"""A step checkpoint's per-process RNG state resumed under another backend (train/resume.py).

An XLA checkpoint holds the device RNG as a seed integer, a CUDA one as a byte tensor: handing
one to the other backend's setter fails (``torch.cuda.set_rng_state(int)`` raises), so a device
state is restored only under the backend that saved it; the host RNGs always are.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from cambrian_train.train.resume import rng_state, set_rng_state


class FakeBackend:
    """The two RNG hooks of a Backend, recording what they were given."""

    def __init__(self, name: str, device_state):
        self.name = name
        self.state = device_state
        self.given = []

    def device_rng_state(self):
        return self.state

    def set_device_rng_state(self, state) -> None:
        self.given.append(state)


def test_device_rng_state_restored_under_the_same_backend():
    state = rng_state(FakeBackend("xla_spmd", 1234))
    again = FakeBackend("xla_spmd", None)
    set_rng_state(again, state)
    assert again.given == [1234]


def test_device_rng_state_of_another_backend_is_left_out_with_a_warning(caplog):
    random.seed(7)
    state = rng_state(FakeBackend("xla_spmd", 1234))
    expected = (random.random(), np.random.get_state()[1][0], torch.get_rng_state().clone())
    random.seed(99)
    cuda = FakeBackend("cuda_fsdp", torch.zeros(16, dtype=torch.uint8))
    with caplog.at_level(logging.WARNING, logger="cambrian_train.train.resume"):
        set_rng_state(cuda, state)
    assert cuda.given == []
    assert "saved by backend xla_spmd, not restored under cuda_fsdp" in caplog.text
    assert random.random() == expected[0]  # the host RNGs are restored all the same
    assert np.random.get_state()[1][0] == expected[1]
    assert torch.equal(torch.get_rng_state(), expected[2])


def test_untagged_device_state_counts_as_this_backends():
    state = rng_state(FakeBackend("cuda_fsdp", "cuda-state"))
    del state["device_backend"]  # a checkpoint written before the tag existed
    again = FakeBackend("cuda_fsdp", None)
    set_rng_state(again, state)
    assert again.given == ["cuda-state"]
