"""Pre-flight check that a stage's records fit its rows, before the stage trains (run.py).

A record longer than the row (``stages.<stage>.max_length``; with ``data.packing``, the packed
row's length) is skipped as ``too_long`` by the loader. A few such records are normal; a large
share means the row length does not suit the data, and the stage would train on the short part
of it only -- and where the wording's length tracks the kind of question (a user's spatial set:
"left or right of" vs "above or below"), on some kinds only: with the demo's 112-token rows,
half of such a set was skipped and the model answered every question "right" (README, "Your own
data"). :func:`check_fit` reads the true token lengths (data/lengths.py, cached per file, the
sampler's own pass) and raises a :class:`~cambrian_train.data.loader.DataError` naming the
setting when more than :data:`MAX_TOO_LONG_SHARE` of the readable records do not fit.
"""

from __future__ import annotations

import logging

import numpy as np

from cambrian_train.data.lengths import RecordLengths
from cambrian_train.data.loader import DataError

log = logging.getLogger(__name__)
MAX_TOO_LONG_SHARE = 0.05


def check_fit(lengths: RecordLengths, row_length: int, stage: str, packing: bool = False) -> int:
    """Number of records longer than ``row_length``; DataError when they are more than
    :data:`MAX_TOO_LONG_SHARE` of the records whose length is known (not ``estimated``)."""
    known = lengths.lengths[~lengths.estimated]
    if len(known) == 0:
        return 0
    over = int((known > row_length).sum())
    setting = "data.pack_length" if packing else f"stages.{stage}.max_length"
    if over > MAX_TOO_LONG_SHARE * len(known):
        p99 = int(np.ceil(np.percentile(known, 99)))
        raise DataError(
            f"stage {stage}: {over} of {len(known)} records ({100 * over / len(known):.0f} %) are "
            f"longer than {setting}={row_length} tokens (p99 {p99}, longest {int(known.max())}) "
            f"and would be skipped as too_long; raise {setting} to at least {p99} "
            "(cambrian-data stats shows the lengths)"
        )
    if over:
        log.warning(
            "stage %s: %d of %d records are longer than %s=%d and will be skipped as too_long",
            stage,
            over,
            len(known),
            setting,
            row_length,
        )
    return over
