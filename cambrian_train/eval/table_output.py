"""Rendering of a built table (cambrian_train.eval.tables) as Markdown, CSV or LaTeX, the bar
chart, and the ``cambrian-tabulate`` command line (``tools/tables.py``)::

    cambrian-tabulate RESULTS... [--format md|csv|latex] [--paper] [--compare MODEL=PAPER_ROW]
        [--all-columns] [--layout paper|synthetic] [--out FILE] [--chart PNG]
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from cambrian_train.eval.tables import (
    FORMATS,
    LAYOUTS,
    MISSING,
    Column,
    Row,
    Table,
    benchmark,
    build_table,
    load_results,
    parse_compare,
)

log = logging.getLogger(__name__)


def cell_value(row: Row, column: Column) -> Union[str, int, float, None]:
    """The raw value of ``row`` in ``column`` (None when absent)."""
    meta = {"model": row.name, "source": row.source, "vis_tok": row.num_vision_tokens}
    if column.kind == "meta":
        return meta[column.key]
    if column.kind == "average":
        return row.averages.get(column.key)
    return row.overall if column.kind == "overall" else row.scores.get(column.key)


def format_cell(row: Row, column: Column, missing: str = MISSING) -> str:
    """Text of a cell: scores with one decimal (signed on delta rows), ``missing`` when absent."""
    value = cell_value(row, column)
    if value is None:
        return missing
    if isinstance(value, str) or column.key == "vis_tok":
        return str(value)
    return f"{value:+.1f}" if row.source == "delta" else f"{value:.1f}"


def render_markdown(table: Table) -> str:
    """A GitHub table, then the notes as a list."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = ["---" if c.kind == "meta" and c.key != "vis_tok" else "---:" for c in table.columns]
    lines = [line([c.label for c in table.columns]), "|" + "|".join(rule) + "|"]
    lines += [line([format_cell(r, c) for c in table.columns]) for r in table.rows]
    if table.notes:
        lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """One header row of labels, one row per table row; empty cells where absent; no notes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.label for c in table.columns])
    for row in table.rows:
        writer.writerow([format_cell(row, c, missing="") for c in table.columns])
    return buffer.getvalue()


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    """A booktabs tabular: category headers with \\multicolumn and \\cmidrule, notes below."""
    cols = table.columns
    spec = "".join("l" if c.kind == "meta" and c.key != "vis_tok" else "r" for c in cols)
    groups: List[Tuple[str, int, int]] = []  # (group, first column 1-based, span)
    for i, column in enumerate(cols, start=1):
        if groups and groups[-1][0] == column.group and column.group:
            groups[-1] = (column.group, groups[-1][1], groups[-1][2] + 1)
        else:
            groups.append((column.group, i, 1))
    header = [
        rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(group)}}}" if group else ""
        for group, _, span in groups
    ]
    rules = [rf"\cmidrule(lr){{{i}-{i + n - 1}}}" for group, i, n in groups if group]
    labels = ["Avg" if c.kind == "average" else c.label for c in cols]
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines += [" & ".join(header) + r" \\", " ".join(rules)]
    lines += [" & ".join(latex_escape(label) for label in labels) + r" \\", r"\midrule"]
    for row in table.rows:
        lines.append(" & ".join(latex_escape(format_cell(row, c)) for c in cols) + r" \\")
    lines.append(r"\bottomrule")
    for note in table.notes:
        lines.append(rf"\multicolumn{{{len(cols)}}}{{l}}{{\footnotesize {latex_escape(note)}}} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


RENDERERS = {"md": render_markdown, "csv": render_csv, "latex": render_latex}


def render(table: Table, fmt: str) -> str:
    """``table`` as text in ``fmt`` (one of ``FORMATS``)."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](table)


def write_chart(table: Table, path: Path) -> Path:
    """Grouped bar chart of every non-delta row's scaled score (0-100) per benchmark column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = [c for c in table.columns if c.kind == "score"]
    rows = [r for r in table.rows if r.source != "delta"]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(min(20.0, 2 + len(benches) * (0.4 + 0.1 * len(rows))), 4.5))
    for i, row in enumerate(rows):
        offset = (i - (len(rows) - 1) / 2) * width
        points = [
            (j + offset, row.scores[c.key] / benchmark(c.key).divisor)
            for j, c in enumerate(benches)
            if c.key in row.scores
        ]
        label = row.name if row.source == "ours" else f"{row.name} ({row.source})"
        ax.bar([x for x, _ in points], [y for _, y in points], width, label=label)
    ticks = [
        c.label if benchmark(c.key).divisor == 1 else f"{c.label} /{benchmark(c.key).divisor:g}"
        for c in benches
    ]
    ax.set_xticks(range(len(benches)), ticks, rotation=30, ha="right")
    ax.set_ylabel("score (0-100)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cambrian-tabulate", description="Eval results files -> Cambrian-1 style tables."
    )
    parser.add_argument("results", nargs="+", type=Path, help="results JSON files or directories")
    parser.add_argument(
        "--format", choices=FORMATS, help="table format (default: from --out suffix, else md)"
    )
    parser.add_argument("--paper", action="store_true", help="add the published rows")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="MODEL=PAPER_ROW",
        help="add a delta row ours - published (repeatable)",
    )
    parser.add_argument(
        "--all-columns", action="store_true", help="keep benchmarks that no row has"
    )
    parser.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        help="table layout (default: synthetic when every result is a syn_* benchmark, else paper)",
    )
    parser.add_argument("--out", type=Path, help="write the table here instead of stdout")
    parser.add_argument("--chart", type=Path, metavar="PNG", help="also write a bar chart")
    return parser.parse_args(argv)


def _format_for(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = args.out.suffix.lower() if args.out else ""
    return {".csv": "csv", ".tex": "latex"}.get(suffix, "md")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``cambrian-tabulate``); returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        compare = [parse_compare(spec) for spec in args.compare]
        results = load_results(args.results)
        table = build_table(results, args.paper, compare, args.all_columns, args.layout)
        text = render(table, _format_for(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        log.info("wrote %s", args.out)
    else:
        sys.stdout.write(text)
    if args.chart:
        log.info("wrote %s", write_chart(table, args.chart))
    return 0
