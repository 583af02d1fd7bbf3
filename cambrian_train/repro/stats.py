"""Means and Student-t confidence intervals over seeds, for ``repro`` tables.

Written here rather than taken from scipy, which is not a dependency: the two-sided t quantile
comes from the t density (``math.lgamma``) integrated with Simpson's rule and inverted by
bisection, accurate to about 1e-6 for the few degrees of freedom a seed count gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence


def t_density(x: float, df: int) -> float:
    """Student's t probability density with ``df`` degrees of freedom."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int, intervals: int = 4000) -> float:
    """P(T <= x): 1/2 plus the density's integral over [0, |x|] (Simpson; ``intervals`` even)."""
    if df < 1:
        raise ValueError(f"degrees of freedom {df} must be >= 1")
    h = abs(x) / intervals
    total = t_density(0.0, df) + t_density(abs(x), df)
    for i in range(1, intervals):
        total += (4 if i % 2 else 2) * t_density(i * h, df)
    half = total * h / 3
    return 0.5 + half if x >= 0 else 0.5 - half


def t_quantile(confidence: float, df: int) -> float:
    """The t value with ``confidence`` probability between -t and t (0.95, df 2 -> 4.303)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} must lie strictly between 0 and 1")
    target = 0.5 + confidence / 2
    low, high = 0.0, 1.0
    while t_cdf(high, df) < target:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < target else (low, mid)
    return (low + high) / 2


@dataclass
class Estimate:
    """A mean over seeds and its confidence interval's half width (None for one seed)."""

    mean: float
    half_width: Optional[float]
    values: List[float]

    @property
    def low(self) -> Optional[float]:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> Optional[float]:
        return None if self.half_width is None else self.mean + self.half_width

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "half_width": self.half_width,
            "low": self.low,
            "high": self.high,
            "values": list(self.values),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> Estimate:
        return cls(raw["mean"], raw["half_width"], list(raw["values"]))

    def format(self, digits: int = 1) -> str:
        """``61.3 ± 2.4`` (``61.3`` for one seed)."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and ``confidence`` t-interval of ``values`` (one per seed)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to average")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, None, values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_quantile(confidence, n - 1) * std / math.sqrt(n), values)
