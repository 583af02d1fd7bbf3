"""Variant comparisons from one command (``experiment=repro_small``): variants.py runs every
variant with every seed and scores it, report.py aggregates and writes the comparison,
stats.py has the t-intervals."""

from cambrian_train.repro.report import Scores, comparison_markdown, write_comparison
from cambrian_train.repro.variants import run_variants, variant_overrides

__all__ = ["Scores", "comparison_markdown", "run_variants", "variant_overrides", "write_comparison"]
