"""The pre-flight row-length check (cambrian_train/data/fit_check.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cambrian_train.data.fit_check import check_fit
from cambrian_train.data.lengths import RecordLengths
from cambrian_train.data.loader import DataError


def lengths(values, estimated=None) -> RecordLengths:
    values = np.array(values, dtype=np.int32)
    flags = np.zeros(len(values), bool) if estimated is None else np.array(estimated, bool)
    return RecordLengths(values, np.ones(len(values), bool), flags)


def test_most_records_too_long_is_an_error_naming_the_setting():
    # 3 of 4 exceed 112: 75 % > 5 %; p99 (linear): 114 + 0.97 * (115 - 114) = 114.97, rounded up
    with pytest.raises(DataError) as info:
        check_fit(lengths([100, 113, 114, 115]), 112, "finetune")
    message = str(info.value)
    assert "3 of 4 records (75 %) are longer than stages.finetune.max_length=112" in message
    assert "longest 115" in message
    assert "raise stages.finetune.max_length to at least 115" in message
    with pytest.raises(DataError, match="data.pack_length=112"):
        check_fit(lengths([100, 113, 114, 115]), 112, "finetune", packing=True)


def test_a_few_too_long_records_are_only_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert check_fit(lengths([50] * 99 + [200]), 112, "pretrain") == 1  # 1 % <= 5 %
    assert "1 of 100 records are longer than stages.pretrain.max_length=112" in caplog.text
    assert check_fit(lengths([50] * 10), 112, "pretrain") == 0


def test_estimated_lengths_do_not_count():
    # unreadable records get a guessed length; they are skipped for their own reason
    assert check_fit(lengths([50, 50, 900, 900], estimated=[0, 0, 1, 1]), 112, "finetune") == 0
