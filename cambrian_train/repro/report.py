"""What a ``repro`` comparison reports: columns, category averages, intervals, table and chart.

A run's :class:`Scores` hold one value per column — each ``syn_*`` benchmark of the
four-category suite, or each question type of the ``synthetic`` benchmark — plus, for the suite,
each category's average (the mean of its benchmarks) and the overall average (the mean of the
category averages: cambrian-tabulate's rule), else the benchmark's own overall score. A variant's
row holds, for every column, category and the overall score, the mean over its seeds with a 95 %
t-interval (stats.py), and its paired difference from the first variant over their common seeds
(same seed = same data order, so differences are less noisy than the two intervals suggest).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from cambrian_train import storage
from cambrian_train.config.schema import TrainConfig
from cambrian_train.repro.stats import Estimate, estimate

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
OVERALL = "Overall"
PRIOR = "text-only prior (train)"
FORMAT_LABELS = {"short": "short answer", "mcq": "multiple choice"}


@dataclass
class Scores:
    """One run's (or the prior's) scores, in percent."""

    columns: Dict[str, float]
    categories: Dict[str, float] = field(default_factory=dict)
    overall: float = 0.0
    # suite: the mean over benchmarks of each answer format's accuracy (short / mcq)
    formats: Dict[str, float] = field(default_factory=dict)
    # suite: each benchmark's accuracy per answer format (benchmark → format → score)
    column_formats: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "columns": self.columns,
            "categories": self.categories,
            "overall": self.overall,
            "formats": self.formats,
            "column_formats": self.column_formats,
        }

    @classmethod
    def from_dict(cls, raw: Mapping) -> Scores:
        return cls(
            dict(raw["columns"]),
            dict(raw["categories"]),
            float(raw["overall"]),
            dict(raw.get("formats", {})),
            {c: dict(f) for c, f in raw.get("column_formats", {}).items()},
        )

    def groups(self) -> Dict[str, float]:
        """What the summary table and chart show: categories (if any) and overall."""
        return {**self.categories, OVERALL: self.overall}

    def summary(self) -> Dict[str, float]:
        """The summary table's score columns: the groups, then the answer formats."""
        return {**self.groups(), **{FORMAT_LABELS[f]: v for f, v in self.formats.items()}}


def benchmark_names(cfg: TrainConfig) -> List[str]:
    """``syn_<task>`` for each task of the suite (``data.synthetic.kind: suite``), otherwise
    ``synthetic``."""
    synthetic = cfg.data.synthetic
    if synthetic is not None and synthetic.kind == "suite":
        from cambrian_train.data.suite import BENCHMARK_PREFIX, task_names

        return [BENCHMARK_PREFIX + task for task in task_names(synthetic)]
    return ["synthetic"]


def benchmark_scores(results: Mapping[str, dict]) -> Scores:
    """The cambrian-eval results of one run (benchmark name → results dict) as :class:`Scores`."""
    from cambrian_train.eval.benchmarks import get_benchmark
    from cambrian_train.eval.benchmarks.base import PAPER_CATEGORIES

    if list(results) == ["synthetic"]:
        only = results["synthetic"]
        by_type = only["metrics"].get("by_question_type", {})
        return Scores({t: float(by_type[t]) for t in sorted(by_type)}, {}, float(only["score"]))
    columns = {name: float(r["score"]) for name, r in results.items()}
    members: Dict[str, List[float]] = {}
    for name, score in columns.items():
        members.setdefault(get_benchmark(name).category, []).append(score)
    categories = {c: sum(members[c]) / len(members[c]) for c in PAPER_CATEGORIES if c in members}
    overall = sum(categories.values()) / len(categories)
    column_formats = {
        name: {f: float(r["metrics"]["by_format"][f]) for f in FORMAT_LABELS if f in by_format}
        for name, r in results.items()
        for by_format in [r["metrics"].get("by_format", {})]
    }
    by_format: Dict[str, List[float]] = {}
    for scores in column_formats.values():
        for fmt, score in scores.items():
            by_format.setdefault(fmt, []).append(score)
    formats = {f: sum(by_format[f]) / len(by_format[f]) for f in FORMAT_LABELS if f in by_format}
    return Scores(columns, categories, overall, formats, column_formats)


def aggregate(runs: Sequence[Mapping]) -> dict:
    """Seeds' scores (``Scores.to_dict`` each) → mean and interval per column, category and
    overall (``Estimate.to_dict`` each)."""
    scores = [Scores.from_dict(r) for r in runs]
    first = scores[0]
    return {
        "columns": {
            c: estimate([s.columns[c] for s in scores], CONFIDENCE).to_dict() for c in first.columns
        },
        "categories": {
            c: estimate([s.categories[c] for s in scores], CONFIDENCE).to_dict()
            for c in first.categories
        },
        "overall": estimate([s.overall for s in scores], CONFIDENCE).to_dict(),
        "formats": {
            f: estimate([s.formats[f] for s in scores], CONFIDENCE).to_dict() for f in first.formats
        },
        "column_formats": {
            c: {
                f: estimate([s.column_formats[c][f] for s in scores], CONFIDENCE).to_dict()
                for f in formats
            }
            for c, formats in first.column_formats.items()
        },
    }


def row_groups(row: Mapping) -> Dict[str, Estimate]:
    return {
        **{c: Estimate.from_dict(e) for c, e in row["categories"].items()},
        OVERALL: Estimate.from_dict(row["overall"]),
    }


def row_summary(row: Mapping) -> Dict[str, Estimate]:
    formats = {FORMAT_LABELS[f]: Estimate.from_dict(e) for f, e in row.get("formats", {}).items()}
    return {**row_groups(row), **formats}


def paired_differences(row: Mapping, reference: Mapping) -> Dict[str, Optional[Estimate]]:
    """Per group: mean and interval of (row − reference) over the seeds both ran; None where
    they share no seed."""
    common = [s for s in row["seeds"] if s in reference["seeds"]]
    out: Dict[str, Optional[Estimate]] = {}
    for group in row_groups(row):
        if not common:
            out[group] = None
            continue
        diffs = []
        for seed in common:
            mine = Scores.from_dict(row["runs"][str(seed)]["scores"]).groups()[group]
            theirs = Scores.from_dict(reference["runs"][str(seed)]["scores"]).groups()[group]
            diffs.append(mine - theirs)
        out[group] = estimate(diffs, CONFIDENCE)
    return out


def _cell(value: Optional[Estimate], signed: bool = False) -> str:
    if value is None:
        return "–"
    text = value.format()
    return f"+{text}" if signed and value.mean >= 0 else text


def comparison_markdown(rows: Dict[str, dict], prior: Scores, seeds: Sequence[int]) -> str:
    """Up to four tables: summary (groups, with the prior first), paired differences from the
    first variant, every column, and every column per answer format (the suite)."""
    if not rows:
        return "no variant was run\n"
    groups = list(prior.groups())
    summary = list(prior.summary())
    lines = [
        f"Mean ± 95 % t-interval over seeds {list(seeds)} (t · s/√n; no interval for one seed). "
        "Scores in percent.",
        "",
    ]
    header = ["variant", "connector", "towers", "stage 1", "trained towers", *summary, "train min"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    prior_cells = [f"{v:.1f}" for v in prior.summary().values()]
    lines.append("| " + " | ".join([PRIOR, "–", "–", "–", "–", *prior_cells, "–"]) + " |")
    for name, row in rows.items():
        minutes = [r["train_minutes"] for r in row["runs"].values() if r["train_minutes"]]
        cells = [name, row["connector"], row["towers"], row["stage 1"], row["trained towers"]]
        mine = row_summary(row)
        cells += [_cell(mine.get(column)) for column in summary]
        cells.append(f"{sum(minutes) / len(minutes):.1f}" if minutes else "–")
        lines.append("| " + " | ".join(cells) + " |")
    names = list(rows)
    if len(names) > 1:
        reference = rows[names[0]]
        lines += [
            "",
            f"Paired difference from `{names[0]}` over the seeds both ran (mean ± 95 % "
            "t-interval); an interval that excludes 0 is a difference these seeds resolve.",
            "",
            "| variant | " + " | ".join(groups) + " |",
            "|" + "---|" * (len(groups) + 1),
        ]
        for name in names[1:]:
            diffs = paired_differences(rows[name], reference)
            lines.append(
                "| " + " | ".join([name, *(_cell(diffs[g], signed=True) for g in groups)]) + " |"
            )
    columns = list(prior.columns)
    lines += [
        "",
        "| variant | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
        "| " + " | ".join([PRIOR, *(f"{prior.columns[c]:.1f}" for c in columns)]) + " |",
    ]
    for name, row in rows.items():
        cells = [_cell(Estimate.from_dict(row["columns"][c])) for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    if prior.column_formats:
        lines += format_table(rows, prior, columns)
    return "\n".join(lines) + "\n"


def format_table(rows: Dict[str, dict], prior: Scores, columns: Sequence[str]) -> List[str]:
    """Every column as "short answer / multiple choice" (means over seeds; "–" where a row has
    no split): a format at chance while the other is not shows what the model cannot answer."""

    def pair(values: Mapping[str, float]) -> str:
        return " / ".join(f"{values[f]:.1f}" if f in values else "–" for f in FORMAT_LABELS)

    lines = [
        "",
        "Per benchmark and answer format: " + " / ".join(FORMAT_LABELS.values()) + " (means).",
        "",
        "| variant | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
        "| "
        + " | ".join([PRIOR, *(pair(prior.column_formats.get(c, {})) for c in columns)])
        + " |",
    ]
    for name, row in rows.items():
        split = row.get("column_formats", {})
        means = {c: {f: e["mean"] for f, e in split.get(c, {}).items()} for c in columns}
        lines.append("| " + " | ".join([name, *(pair(means[c]) for c in columns)]) + " |")
    return lines


def draw_chart(rows: Dict[str, dict], prior: Scores, path: Path) -> None:
    """Grouped bars (groups = categories + overall, one bar per variant) with the intervals as
    error bars and the text-only prior as a black line across each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(prior.groups())
    names = list(rows)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(2.2 * len(groups) + 3, 4.2))
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        estimates = row_groups(rows[name])
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        means = [estimates[g].mean for g in groups]
        errors = [estimates[g].half_width or 0.0 for g in groups]
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=name, color=colours(i % 10))
    for g, group in enumerate(groups):
        value = prior.groups()[group]
        ax.hlines(
            value,
            g - 0.45,
            g + 0.45,
            colors="black",
            linewidth=1.5,
            label=PRIOR if g == 0 else None,
        )
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_comparison(rows: Dict[str, dict], prior: Scores, out: str, seeds: Sequence[int]) -> str:
    """``comparison.md`` (tables), ``comparison.json`` (rows and prior) and ``comparison.png``
    (chart; drawn in ``out``'s local mirror and uploaded when ``out`` is a URL). → the tables."""
    table = comparison_markdown(rows, prior, seeds)
    storage.write_text(storage.join(out, "comparison.md"), table)
    storage.write_text(
        storage.join(out, "comparison.json"),
        json.dumps({"seeds": list(seeds), "prior": prior.to_dict(), "variants": rows}, indent=2),
    )
    local = Path(storage.local_mirror(out), "comparison.png")
    draw_chart(rows, prior, local)
    if storage.is_url(str(out)):
        storage.upload(local, storage.join(out, "comparison.png"))
    logging.getLogger(__name__).info(
        "comparison (%s):\n%s", storage.join(out, "comparison.md"), table
    )
    return table
