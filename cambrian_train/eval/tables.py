"""Evaluation results files -> the Cambrian-1 paper's table layout (Markdown, CSV, LaTeX, chart).

Input: the eval runner's results files, one JSON object per (model, benchmark) holding at least
``{"model": str, "benchmark": str, "score": number}``; the score is on the paper's scale (percent;
MME-P the summed perception score, at most 2000; OCRBench the correct count out of 1000). Other
keys (count, metrics, decoding, ...) are ignored here. Paths may be files or directories (searched
recursively for ``*.json``); JSON files without those three keys are skipped with a logged reason,
and two files for the same (model, benchmark) are an error naming both.

Layout: one row per model; benchmark columns grouped by the paper's categories (``CATEGORIES``),
each group followed by its average, then an overall average; any other benchmark (pope,
synthetic, unknown names) goes to an "Other" group that is never averaged. Benchmarks no row has
are left out unless ``all_columns``. ``paper=True`` adds the published rows of
``cambrian_train.eval.paper_results``; ``compare=[(model, paper_row)]`` adds a delta row
(ours - published) for the benchmarks both have.

Averaging convention (the paper's): scores are brought to 0-100 first, MME-P divided by 20 and
OCRBench by 10 (``Benchmark.divisor``); a category average is the mean of its four scaled scores
and is shown only when all four are present (else "–" and a note naming the missing ones); the
overall average is the mean of the four category averages (equal to the mean of the 16 scaled
scores) and is shown only when all four are. Benchmark cells keep each benchmark's own scale.

Layouts (:class:`Layout`): ``paper`` (the columns above) and ``synthetic`` (the synthetic suite's
twelve ``syn_<task>`` benchmarks, three / two / three / four per category, the same averaging
rule with each category's own number of benchmarks). ``layout=None`` picks ``synthetic`` when
every result is one of its benchmarks, else ``paper``; the published rows exist only for the
paper's layout. A results file with ``"baseline": true`` (e.g. the text-only prior of
``cambrian_train.eval.priors``) is a ``baseline`` row, listed before the models.

Rendering and the ``cambrian-tabulate`` command line: cambrian_train/eval/table_output.py.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from cambrian_train.eval.benchmarks import BENCHMARKS as EVAL_BENCHMARKS
from cambrian_train.eval.benchmarks.base import OTHER, PAPER_CATEGORIES
from cambrian_train.eval.benchmarks.synthetic_suite import SUITE_BENCHMARKS
from cambrian_train.eval.paper_results import PAPER_ROWS, PAPER_SOURCE, paper_row

log = logging.getLogger(__name__)

CATEGORIES = PAPER_CATEGORIES
MISSING = "–"
RESULT_KEYS = ("model", "benchmark", "score")
FORMATS = ("md", "csv", "latex")


@dataclass(frozen=True)
class Benchmark:
    """A benchmark column: registry key, header label, category, and its scale.

    ``score / divisor`` is the 0-100 value that enters averages; ``max_score`` bounds a valid
    score (None: unknown scale, unchecked).
    """

    key: str
    label: str
    category: str
    divisor: float = 1.0
    max_score: Optional[float] = 100.0


# name -> (header label, divisor, max_score), in the paper's column order; the category is the
# eval registry's (cambrian_train.eval.benchmarks), so the two never disagree
COLUMNS: Dict[str, Tuple[str, float, Optional[float]]] = {
    "mme": ("MME-P", 20.0, 2000.0),
    "mmbench": ("MMB", 1.0, 100.0),
    "seed_img": ("SEED-I", 1.0, 100.0),
    "gqa": ("GQA", 1.0, 100.0),
    "sqa_img": ("SQA-I", 1.0, 100.0),
    "mmmu": ("MMMU", 1.0, 100.0),
    "mathvista": ("MathVista-M", 1.0, 100.0),
    "ai2d": ("AI2D", 1.0, 100.0),
    "chartqa": ("ChartQA", 1.0, 100.0),
    "ocrbench": ("OCRBench", 10.0, 1000.0),
    "textvqa": ("TextVQA", 1.0, 100.0),
    "docvqa": ("DocVQA", 1.0, 100.0),
    "mmvp": ("MMVP", 1.0, 100.0),
    "realworldqa": ("RealWorldQA", 1.0, 100.0),
    "cvbench_2d": ("CV-Bench-2D", 1.0, 100.0),
    "cvbench_3d": ("CV-Bench-3D", 1.0, 100.0),
    "pope": ("POPE", 1.0, 100.0),
    "synthetic": ("Synthetic", 1.0, 100.0),
}
BENCHMARKS: Dict[str, Benchmark] = {
    key: Benchmark(key, label, EVAL_BENCHMARKS[key].category, divisor, max_score)
    for key, (label, divisor, max_score) in COLUMNS.items()
}
CATEGORY_BENCHMARKS: Dict[str, Tuple[str, ...]] = {
    c: tuple(k for k, b in BENCHMARKS.items() if b.category == c) for c in CATEGORIES
}
SYNTHETIC_COLUMNS: Dict[str, Benchmark] = {
    key: Benchmark(key, bench.label, bench.category) for key, bench in SUITE_BENCHMARKS.items()
}
KNOWN: Dict[str, Benchmark] = {**BENCHMARKS, **SYNTHETIC_COLUMNS}


@dataclass(frozen=True)
class Layout:
    """A table layout: its columns (in display order) and the categories they average into."""

    name: str
    columns: Dict[str, Benchmark]

    def category_benchmarks(self, category: str) -> Tuple[str, ...]:
        return tuple(k for k, b in self.columns.items() if b.category == category)


PAPER_LAYOUT = Layout("paper", BENCHMARKS)
SYNTHETIC_LAYOUT = Layout("synthetic", SYNTHETIC_COLUMNS)
LAYOUTS = {layout.name: layout for layout in (PAPER_LAYOUT, SYNTHETIC_LAYOUT)}


def choose_layout(results: Sequence[Result], name: Optional[str] = None) -> Layout:
    """The layout called ``name``, or (None) ``synthetic`` when every result is one of its
    benchmarks and ``paper`` otherwise."""
    if name is not None:
        if name not in LAYOUTS:
            raise ValueError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")
        return LAYOUTS[name]
    synthetic = results and all(r.benchmark in SYNTHETIC_COLUMNS for r in results)
    return SYNTHETIC_LAYOUT if synthetic else PAPER_LAYOUT


def benchmark(key: str) -> Benchmark:
    """The registered benchmark ``key``, or an unscaled "Other" column named after it."""
    return KNOWN.get(key) or Benchmark(key, key, OTHER, max_score=None)


@dataclass(frozen=True)
class Result:
    """One results file's headline: (model, benchmark) -> score, and where it came from."""

    model: str
    benchmark: str
    score: float
    path: Path
    baseline: bool = False  # a model-free baseline (e.g. the text-only prior)


def find_json_files(inputs: Sequence[Path]) -> List[Path]:
    """Files given, plus ``*.json`` under directories given (recursive); each path once."""
    files: Dict[Path, Path] = {}
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(path.rglob("*.json"))
        elif path.is_file():
            found = [path]
        else:
            raise ValueError(f"results path {path} does not exist")
        for file in found:
            files.setdefault(file.resolve(), file)
    return list(files.values())


def _parse_result(data: Dict[str, object], path: Path) -> Result:
    model, name, score = (data[k] for k in RESULT_KEYS)
    for key, value in (("model", model), ("benchmark", name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}: field {key!r} must be a non-empty string, got {value!r}")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"{path}: field 'score' must be a finite number, got {score!r}")
    bench = benchmark(name)
    if name not in KNOWN:
        log.warning(
            "%s: benchmark %r is not in the paper's categories; shown under Other", path, name
        )
    upper = math.inf if bench.max_score is None else bench.max_score
    if not 0 <= score <= upper:
        raise ValueError(
            f"{path}: score {score!r} for {name!r} is outside [0, {upper:g}] "
            "(scores are on the paper's scale: percent, MME-P summed, OCRBench out of 1000)"
        )
    baseline = data.get("baseline", False) is True
    return Result(model=model, benchmark=name, score=float(score), path=path, baseline=baseline)


def read_result(path: Path) -> Optional[Result]:
    """The result in ``path``, or None (logged) when it is not a results file."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        log.info("skipping %s: not valid JSON (%s)", path, err)
        return None
    if not isinstance(data, dict):
        log.info("skipping %s: not a results file (top level is %s)", path, type(data).__name__)
        return None
    absent = [k for k in RESULT_KEYS if k not in data]
    if absent:
        log.info("skipping %s: not a results file (no %s)", path, ", ".join(absent))
        return None
    return _parse_result(data, path)


def load_results(inputs: Sequence[Path]) -> List[Result]:
    """All results under ``inputs``; ValueError on a duplicate (model, benchmark) or on none."""
    seen: Dict[Tuple[str, str], Result] = {}
    for path in find_json_files(inputs):
        result = read_result(path)
        if result is None:
            continue
        key = (result.model, result.benchmark)
        if key in seen:
            raise ValueError(
                f"two results for model {key[0]!r}, benchmark {key[1]!r}: "
                f"{seen[key].path} and {result.path}"
            )
        seen[key] = result
    if not seen:
        raise ValueError(f"no results files found in {', '.join(map(str, inputs))}")
    return list(seen.values())


@dataclass
class Row:
    """A row; ``source``: "ours", "baseline", "published" or "delta"; scores on each benchmark's
    own scale."""

    name: str
    source: str
    scores: Dict[str, float]
    num_vision_tokens: Optional[int] = None
    averages: Dict[str, Optional[float]] = field(default_factory=dict)
    overall: Optional[float] = None


@dataclass(frozen=True)
class Column:
    """A column: ``kind`` is "meta" (model/source/vis_tok), "score", "average" or "overall"."""

    key: str
    label: str
    group: str
    kind: str


@dataclass
class Table:
    """Columns in display order, rows in display order, and notes printed under the table."""

    columns: List[Column]
    rows: List[Row]
    notes: List[str]


def category_average(
    scores: Dict[str, float], category: str, layout: Layout = PAPER_LAYOUT
) -> Optional[float]:
    """Mean of the category's scaled scores (MME-P/20, OCRBench/10); None if any is missing."""
    keys = layout.category_benchmarks(category)
    if any(k not in scores for k in keys):
        return None
    return sum(scores[k] / layout.columns[k].divisor for k in keys) / len(keys)


def scored_row(
    name: str, source: str, scores: Dict[str, float], tokens=None, layout: Layout = PAPER_LAYOUT
) -> Row:
    """A row with its category averages and overall average filled in."""
    averages = {c: category_average(scores, c, layout) for c in CATEGORIES}
    values = list(averages.values())
    overall = None if None in values else sum(values) / len(values)
    return Row(name, source, dict(scores), tokens, averages, overall)


def delta_row(ours: Row, published: Row) -> Row:
    """ours - published on the benchmarks (and averages) both rows have."""

    def diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return None if a is None or b is None else a - b

    scores = {k: v - published.scores[k] for k, v in ours.scores.items() if k in published.scores}
    averages = {c: diff(ours.averages.get(c), published.averages.get(c)) for c in CATEGORIES}
    overall = diff(ours.overall, published.overall)
    return Row(f"{ours.name} - {published.name}", "delta", scores, None, averages, overall)


def parse_compare(spec: str) -> Tuple[str, str]:
    """``"MODEL=PAPER_ROW"`` -> (model, paper row name)."""
    model, sep, paper = spec.rpartition("=")
    if not sep or not model or not paper:
        raise ValueError(f"--compare expects MODEL=PAPER_ROW, got {spec!r}")
    return model, paper


def _score_columns(rows: Sequence[Row], all_columns: bool, layout: Layout) -> List[Column]:
    present = {k for row in rows for k in row.scores}
    columns: List[Column] = []
    for category in CATEGORIES:
        keys = [k for k in layout.category_benchmarks(category) if all_columns or k in present]
        if keys:
            columns += [Column(k, layout.columns[k].label, category, "score") for k in keys]
            columns.append(Column(category, f"{category} avg", category, "average"))
    if columns:
        columns.append(Column("overall", "Overall", "", "overall"))
    known = [k for k, b in layout.columns.items() if b.category == OTHER]
    others = [k for k in known if all_columns or k in present]
    others += sorted(present - set(layout.columns))
    return columns + [Column(k, benchmark(k).label, OTHER, "score") for k in others]


def _missing_notes(rows: Sequence[Row], columns: Sequence[Column], layout: Layout) -> List[str]:
    """One note per (average column, missing benchmarks) naming the rows concerned."""
    groups: Dict[Tuple[str, Tuple[str, ...]], List[str]] = {}
    for column in columns:
        for row in rows:
            if row.source == "delta":
                continue
            if column.kind == "average" and row.averages[column.key] is None:
                keys = layout.category_benchmarks(column.key)
                missing = tuple(layout.columns[k].label for k in keys if k not in row.scores)
                groups.setdefault((column.label, missing), []).append(row.name)
            elif column.kind == "overall" and row.overall is None:
                lacking = tuple(f"{c} avg" for c in CATEGORIES if row.averages[c] is None)
                groups.setdefault((column.label, lacking), []).append(row.name)
    return [
        f"{MISSING} {label}: {', '.join(names)} lack{'s' if len(names) == 1 else ''} "
        f"{', '.join(missing)}"
        for (label, missing), names in groups.items()
    ]


def build_table(
    results: Sequence[Result],
    paper: bool = False,
    compare: Sequence[Tuple[str, str]] = (),
    all_columns: bool = False,
    layout: Optional[str] = None,
) -> Table:
    """Rows (published first, then baselines, then ours sorted by name, each followed by its
    deltas) and columns, in ``layout`` (a name of ``LAYOUTS``; None: :func:`choose_layout`)."""
    chosen = choose_layout(results, layout)
    if chosen is not PAPER_LAYOUT and (paper or compare):
        raise ValueError(
            f"--paper / --compare add published rows, which exist only for the paper layout "
            f"(this table's layout is {chosen.name!r})"
        )
    by_model: Dict[str, Dict[str, float]] = {}
    baselines = {r.model for r in results if r.baseline}
    for result in results:
        by_model.setdefault(result.model, {})[result.benchmark] = result.score
    ours = {
        m: scored_row(m, "baseline" if m in baselines else "ours", s, layout=chosen)
        for m, s in sorted(by_model.items(), key=lambda kv: (kv[0] not in baselines, kv[0]))
    }
    published = [
        scored_row(p.model, "published", p.scores, p.num_vision_tokens) for p in PAPER_ROWS
    ]
    deltas: Dict[str, List[Row]] = {}
    for model, paper_name in compare:
        if model not in ours:
            raise ValueError(f"--compare: no results for model {model!r}; have {', '.join(ours)}")
        reference = paper_row(paper_name)
        ref_row = next(r for r in published if r.name == reference.model)
        deltas.setdefault(model, []).append(delta_row(ours[model], ref_row))
    rows = published if paper else []
    for model, row in ours.items():
        rows = rows + [row] + deltas.get(model, [])
    columns = [Column("model", "model", "", "meta")]
    if any(row.source != "ours" for row in rows):
        columns.append(Column("source", "source", "", "meta"))
    if any(row.source == "published" for row in rows):
        columns.append(Column("vis_tok", "#vis tok", "", "meta"))
    columns += _score_columns([r for r in rows if r.source != "delta"], all_columns, chosen)
    notes = _missing_notes(rows, columns, chosen)
    if any(c.kind == "average" for c in columns) and chosen is PAPER_LAYOUT:
        notes.append(
            "Averages on a 0-100 scale (paper convention: MME-P/20, OCRBench/10); "
            "Overall = mean of the four category averages."
        )
    elif any(c.kind == "average" for c in columns):
        notes.append(
            "Synthetic suite (cambrian_train.data.suite), percent; a category average is the "
            "mean of its tasks, Overall the mean of the four category averages."
        )
    if paper:
        notes.append(f"published rows: {PAPER_SOURCE}.")
    if compare:
        notes.append("delta rows: ours - published, on the benchmarks both have.")
    return Table(columns, rows, notes)
