"""Benchmark registry for ``cambrian-eval``: ``BENCHMARKS`` (name -> Benchmark) and lookup.

Names equal the keys of ``cambrian_train.eval.tables.BENCHMARKS`` (the paper's columns) plus the
extras ``pope`` and ``synthetic``, and the synthetic suite's ``syn_<task>`` benchmarks (their own
table layout, ``cambrian_train.eval.tables.SYNTHETIC_LAYOUT``). Each benchmark's module
docstring documents the public release layout its ``load(path)`` expects, its prompt and its
scoring.
"""

from __future__ import annotations

from typing import Dict

from cambrian_train.eval.benchmarks.ai2d import AI2D
from cambrian_train.eval.benchmarks.base import (
    CATEGORIES,
    MCQ_SUFFIX,
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    EvalItem,
)
from cambrian_train.eval.benchmarks.chartqa import ChartQA
from cambrian_train.eval.benchmarks.cvbench import CVBench2D, CVBench3D
from cambrian_train.eval.benchmarks.docvqa import DocVQA
from cambrian_train.eval.benchmarks.gqa import GQA
from cambrian_train.eval.benchmarks.mathvista import MathVista
from cambrian_train.eval.benchmarks.mmbench import MMBench
from cambrian_train.eval.benchmarks.mme import MME
from cambrian_train.eval.benchmarks.mmmu import MMMU
from cambrian_train.eval.benchmarks.mmvp import MMVP
from cambrian_train.eval.benchmarks.ocrbench import OCRBench
from cambrian_train.eval.benchmarks.pope import POPE
from cambrian_train.eval.benchmarks.realworldqa import RealWorldQA
from cambrian_train.eval.benchmarks.scienceqa import ScienceQAImage
from cambrian_train.eval.benchmarks.seed import SEEDImage
from cambrian_train.eval.benchmarks.synthetic import Synthetic
from cambrian_train.eval.benchmarks.synthetic_suite import SUITE_BENCHMARKS
from cambrian_train.eval.benchmarks.textvqa import TextVQA

__all__ = [
    "BENCHMARKS",
    "CATEGORIES",
    "MCQ_SUFFIX",
    "SHORT_ANSWER_SUFFIX",
    "Benchmark",
    "EvalItem",
    "get_benchmark",
]

BENCHMARKS: Dict[str, Benchmark] = {
    bench.name: bench
    for bench in (
        MME(),
        MMBench(),
        SEEDImage(),
        GQA(),
        ScienceQAImage(),
        MMMU(),
        MathVista(),
        AI2D(),
        ChartQA(),
        OCRBench(),
        TextVQA(),
        DocVQA(),
        MMVP(),
        RealWorldQA(),
        CVBench2D(),
        CVBench3D(),
        POPE(),
        Synthetic(),
        *SUITE_BENCHMARKS.values(),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name``; ValueError listing the known names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        known = ", ".join(sorted(BENCHMARKS))
        raise ValueError(f"unknown benchmark {name!r}; known: {known}") from None
