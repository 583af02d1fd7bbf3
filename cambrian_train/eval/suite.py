"""Benchmark suites: YAML files naming benchmarks by the paper's categories, and running one.

A suite file (``eval/suites/*.yaml``; ``eval/README.md`` documents each benchmark's data)::

    name: paper                        # optional; default: the file's stem
    description: The paper's table.    # optional
    benchmarks:                        # category -> its entries, in table order
      General:
        - benchmark: mme               # a key of cambrian_train.eval.benchmarks.BENCHMARKS
          data: MME/data               # relative to --data-root (an absolute path is kept)
          split: test                  # optional: the split that path holds (recorded only)
          max_samples: 200             # optional: evaluate only the first N items
      Knowledge:
        - ...

Categories are the registry's (General, Knowledge, OCR & Chart, Vision-Centric, and Other for
POPE and the synthetic set), and an entry must sit under its own benchmark's category, so a suite
cannot file a column under the wrong average. :func:`load_suite` checks the whole file (known
keys only, registered benchmarks, each at most once, non-empty local data paths, ``max_samples``
a positive integer) and raises :class:`SuiteError` naming the file and the entry
(``benchmarks.General[1] (mmbench)``).

Running (:func:`run_suite`; ``eval/run_suite.py``): one process (or every process of a torchrun
group) loads the model once and calls :func:`cambrian_train.eval.runner.run_benchmark` for each
entry, exactly as ``cambrian-eval`` does, writing ``OUT/<benchmark>/{predictions.jsonl,
results.json}`` -- the files ``cambrian-tabulate`` reads. A benchmark whose data path does not
exist is *skipped* with that reason (``--strict``: an error before the model is loaded); with
``--skip-existing`` one whose ``results.json`` already holds this model at the same item limit is
not run again. In one process a benchmark that fails (bad data, a prompt longer than the model
allows) is reported *failed* and the others still run; under torchrun a failure stops the run,
since the processes could not agree on what comes next. ``--num-shards N --shard-index K``: the
entries are split into N shards balanced by their expected item counts (:func:`shard_entries`,
the same split on every worker), and this process runs shard K only -- what a pod worker does.

Afterwards rank 0 writes ``OUT/suite-<name>[.shard-K-of-N].status.jsonl`` (one line per entry:
benchmark, category, data, status, reason, score) and, unsharded, tabulates the suite's results
found in OUT (``cambrian_train.eval.tables``: the paper's layout and averages), prints the table
and writes it as ``OUT/suite-<name>.<md|csv|tex>``. ``--table-only`` just tabulates what OUT
holds (for a pod, once every worker is done; OUT may be a URL: the results files are downloaded
first). Exit status: 0 done (skips included), 1 some benchmark failed, 2 user error (bad suite,
missing data with ``--strict``, bad option, no model), with the message on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from cambrian_train import storage

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parents[2] / "eval" / "suites"
DATA_ROOT_ENV = "CAMBRIAN_EVAL_DATA"
DEFAULT_DATA_ROOT = os.path.join("data", "eval")
TOP_KEYS = ("name", "description", "benchmarks")
ENTRY_KEYS = ("benchmark", "data", "split", "max_samples")
TABLE_SUFFIX = {"md": "md", "csv": "csv", "latex": "tex"}
# Rough item counts of the full releases (MMBench: its circular variants), used only to balance
# shards; an unknown benchmark counts as 1000.
EXPECTED_ITEMS = {
    "mme": 2374,
    "mmbench": 4400,
    "seed_img": 14233,
    "gqa": 12578,
    "sqa_img": 2017,
    "mmmu": 900,
    "mathvista": 1000,
    "ai2d": 3088,
    "chartqa": 2500,
    "ocrbench": 1000,
    "textvqa": 5000,
    "docvqa": 5349,
    "mmvp": 300,
    "realworldqa": 765,
    "cvbench_2d": 1438,
    "cvbench_3d": 1200,
    "pope": 8910,
    "synthetic": 300,
}


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class SuiteEntry:
    """One benchmark of a suite: registry key, its category, data path (as written), options."""

    benchmark: str
    category: str
    data: str
    split: Optional[str] = None
    max_samples: Optional[int] = None


@dataclass(frozen=True)
class Suite:
    """A parsed suite file: its entries in file order (categories in the order written)."""

    name: str
    path: str
    description: str
    entries: Tuple[SuiteEntry, ...]

    @property
    def categories(self) -> Dict[str, Tuple[str, ...]]:
        """category -> its benchmark keys, in file order."""
        out: Dict[str, Tuple[str, ...]] = {}
        for entry in self.entries:
            out[entry.category] = out.get(entry.category, ()) + (entry.benchmark,)
        return out


# ---- loading and validation -------------------------------------------------------------------


def resolve_suite_path(spec: str) -> str:
    """A suite given as a path, or by name (``paper`` -> ``eval/suites/paper.yaml``)."""
    if storage.is_url(spec) or os.sep in spec or spec.endswith((".yaml", ".yml")):
        return spec
    candidate = SUITES_DIR / f"{spec}.yaml"
    if candidate.is_file():
        return str(candidate)
    known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))) or "none found"
    raise SuiteError(f"no suite named {spec!r} in {SUITES_DIR} (known: {known}); give a path")


def _entry(raw: Any, category: str, where: str, path: str) -> SuiteEntry:
    from cambrian_train.eval.benchmarks import BENCHMARKS

    if not isinstance(raw, dict):
        raise SuiteError(f"suite {path}: {where}: expected a mapping with 'benchmark' and 'data'")
    name = raw.get("benchmark")
    label = f"{where} ({name})" if isinstance(name, str) else where
    unknown = sorted(set(map(str, raw)) - set(ENTRY_KEYS))
    if unknown:
        raise SuiteError(
            f"suite {path}: {label}: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(ENTRY_KEYS)}"
        )
    if not isinstance(name, str) or not name:
        raise SuiteError(f"suite {path}: {where}: 'benchmark' must be a registered name")
    if name not in BENCHMARKS:
        known = ", ".join(sorted(BENCHMARKS))
        raise SuiteError(f"suite {path}: {label}: unknown benchmark {name!r}; known: {known}")
    own = BENCHMARKS[name].category
    if own != category:
        raise SuiteError(
            f"suite {path}: {label}: {name} belongs to category {own!r}, not {category!r}"
        )
    data = raw.get("data")
    if not isinstance(data, str) or not data.strip():
        raise SuiteError(f"suite {path}: {label}: 'data' must be a non-empty path, got {data!r}")
    if storage.is_url(data):
        raise SuiteError(
            f"suite {path}: {label}: data {data} is a URL; benchmark loaders read local files"
        )
    split = raw.get("split")
    if split is not None and (not isinstance(split, str) or not split):
        raise SuiteError(f"suite {path}: {label}: 'split' must be a non-empty string")
    limit = raw.get("max_samples")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SuiteError(
            f"suite {path}: {label}: 'max_samples' must be a positive integer or null, "
            f"got {limit!r}"
        )
    return SuiteEntry(name, category, data, split, limit)


def parse_suite(text: str, path: str) -> Suite:
    """A suite from YAML ``text`` (``path`` names it in messages and gives the default name)."""
    from cambrian_train.eval.benchmarks import CATEGORIES

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SuiteError(f"suite {path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"suite {path}: expected a mapping with a 'benchmarks' key")
    unknown = sorted(set(map(str, raw)) - set(TOP_KEYS))
    if unknown:
        raise SuiteError(
            f"suite {path}: unknown top-level key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(TOP_KEYS)}"
        )
    groups = raw.get("benchmarks")
    if not isinstance(groups, dict) or not groups:
        raise SuiteError(f"suite {path}: 'benchmarks' must map categories to lists of entries")
    entries: List[SuiteEntry] = []
    seen: Dict[str, str] = {}
    for category, items in groups.items():
        if category not in CATEGORIES:
            raise SuiteError(
                f"suite {path}: unknown category {category!r}; known: {', '.join(CATEGORIES)}"
            )
        if not isinstance(items, list) or not items:
            raise SuiteError(f"suite {path}: benchmarks.{category} must be a non-empty list")
        for i, item in enumerate(items):
            where = f"benchmarks.{category}[{i}]"
            entry = _entry(item, category, where, path)
            if entry.benchmark in seen:
                raise SuiteError(
                    f"suite {path}: {where} ({entry.benchmark}): listed twice "
                    f"(first at {seen[entry.benchmark]})"
                )
            seen[entry.benchmark] = where
            entries.append(entry)
    name = raw.get("name", Path(storage.basename(path)).stem)
    description = raw.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise SuiteError(f"suite {path}: {key!r} must be a string, got {value!r}")
    if not name or "/" in name:
        raise SuiteError(f"suite {path}: name {name!r} must be non-empty, without '/'")
    return Suite(name, path, description, tuple(entries))


def load_suite(spec: str) -> Suite:
    """The suite file at ``spec`` (a path, a URL, or a name in ``eval/suites/``), validated."""
    path = resolve_suite_path(spec)
    if not storage.isfile(path):
        raise SuiteError(f"suite file {path} does not exist")
    return parse_suite(storage.read_text(path), path)


def data_path(entry: SuiteEntry, data_root: str) -> str:
    """Where ``entry``'s data is: its path under ``data_root`` (an absolute path as given)."""
    data = os.path.expanduser(entry.data)
    return data if os.path.isabs(data) else os.path.join(os.path.expanduser(data_root), data)


def shard_entries(entries: Sequence[SuiteEntry], index: int, count: int) -> List[SuiteEntry]:
    """Shard ``index`` of ``count``: entries dealt greedily, largest expected item count first,
    each to the least loaded shard (ties: the lower shard); returned in suite order. Every
    process computes the same split; a shard may be empty when there are more shards than
    entries."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    loads = [0] * count
    owner: Dict[int, int] = {}

    def size(entry: SuiteEntry) -> int:
        expected = EXPECTED_ITEMS.get(entry.benchmark, 1000)
        return min(expected, entry.max_samples or expected)

    for i in sorted(range(len(entries)), key=lambda i: (-size(entries[i]), i)):
        shard = min(range(count), key=lambda s: (loads[s], s))
        owner[i] = shard
        loads[shard] += size(entries[i])
    return [e for i, e in enumerate(entries) if owner[i] == index]


# ---- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one entry: ``status`` is done, skipped, existing or failed."""

    entry: SuiteEntry
    data: str
    limit: Optional[int]
    status: str = "pending"
    reason: str = ""
    score: Optional[float] = None
    count: Optional[int] = None

    def record(self) -> Dict[str, Any]:
        return {
            "benchmark": self.entry.benchmark,
            "category": self.entry.category,
            "data": self.data,
            "split": self.entry.split,
            "max_samples": self.limit,
            "status": self.status,
            "reason": self.reason,
            "score": self.score,
            "count": self.count,
        }

    def line(self) -> str:
        name = self.entry.benchmark
        if self.status in ("done", "existing"):
            kept = " (kept from an earlier run)" if self.status == "existing" else ""
            return f"{name}: score {self.score:.2f} over {self.count} items{kept}"
        return f"{name}: {self.status}: {self.reason}"


def parse_max_samples(value: str) -> Union[int, str]:
    """``--max-samples``: a positive integer, or ``all`` (drop every entry's limit)."""
    if value == "all":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'all', got {value!r}"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"--max-samples={number} must be >= 1 (or 'all')")
    return number


def entry_limit(entry: SuiteEntry, override: Union[int, str, None]) -> Optional[int]:
    """The item limit to use: ``--max-samples`` when given (``all``: none), else the entry's."""
    if override == "all":
        return None
    return override if override is not None else entry.max_samples


def existing_results(out: str, name: str, model_id: str, limit: Optional[int]) -> Optional[dict]:
    """``OUT/<name>/results.json`` when it holds this model at this item limit, else None."""
    from cambrian_train.eval.runner import RESULTS_FILE

    path = storage.join(out, name, RESULTS_FILE)
    if not storage.isfile(path):
        return None
    try:
        results = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(results, dict) or "score" not in results:
        return None
    if results.get("model") != model_id or results.get("limit") != limit:
        return None
    return results


def plan(
    entries: Sequence[SuiteEntry],
    args: argparse.Namespace,
    out: str,
    model_id: str,
) -> List[Outcome]:
    """An outcome per entry, before any evaluation: missing data -> skipped, kept results ->
    existing, else pending. The same on every process (it reads only inputs)."""
    outcomes = []
    for entry in entries:
        limit = entry_limit(entry, args.max_samples)
        outcome = Outcome(entry, data_path(entry, args.data_root), limit)
        if not os.path.exists(outcome.data):
            outcome.status, outcome.reason = "skipped", f"data path {outcome.data} does not exist"
        elif args.skip_existing:
            kept = existing_results(out, entry.benchmark, model_id, limit)
            if kept is not None:
                outcome.status, outcome.score = "existing", kept["score"]
                outcome.count = kept.get("count")
                outcome.reason = "results.json already holds this model at this item limit"
        outcomes.append(outcome)
    return outcomes


def decoding_of(args: argparse.Namespace):
    """The runner's :class:`~cambrian_train.eval.runner.Decoding` (ValueError on a bad value)."""
    from cambrian_train.eval.runner import Decoding

    return Decoding(
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, tuple(args.stop)
    )


def evaluate_entries(
    outcomes: Sequence[Outcome],
    args: argparse.Namespace,
    out: str,
    model_id: str,
    decoding,
    process,
) -> None:
    """Load the model once and run every pending entry through the eval runner."""
    from cambrian_train.eval.benchmarks import get_benchmark
    from cambrian_train.eval.runner import run_benchmark
    from cambrian_train.infer.load import load_pretrained

    pending = [o for o in outcomes if o.status == "pending"]
    if not pending:
        return
    model, tokenizer, encoder = load_pretrained(args.model, process.device)
    if args.max_length is not None:
        encoder = dataclasses.replace(encoder, max_length=args.max_length)
    for outcome in pending:
        name = outcome.entry.benchmark
        try:
            results = run_benchmark(
                model,
                tokenizer,
                encoder,
                get_benchmark(name),
                outcome.data,
                out,
                model_id=model_id,
                batch_size=args.batch_size,
                decoding=decoding,
                limit=outcome.limit,
                rank=process.rank,
                world_size=process.world_size,
                static_shapes=args.static_shapes,
            )
        except ValueError as err:
            if args.strict or process.world_size > 1:
                message = str(err)
                raise ValueError(
                    message if message.startswith(f"{name}:") else f"{name}: {message}"
                ) from None
            outcome.status, outcome.reason = "failed", str(err)
            log.error("%s failed: %s", name, err)
            continue
        outcome.status, outcome.score, outcome.count = "done", results["score"], results["count"]


def status_path(out: str, suite: Suite, index: int, count: int) -> str:
    shard = f".shard-{index}-of-{count}" if count > 1 else ""
    return storage.join(out, f"suite-{suite.name}{shard}.status.jsonl")


def write_status(path: str, outcomes: Sequence[Outcome]) -> None:
    lines = (json.dumps(o.record(), ensure_ascii=False) + "\n" for o in outcomes)
    storage.write_text(path, "".join(lines))


def results_files(out: str, suite: Suite, workdir: str) -> List[Path]:
    """The suite's ``OUT/<benchmark>/results.json`` files that exist, as local paths (a URL
    OUT's are downloaded under ``workdir``)."""
    from cambrian_train.eval.runner import RESULTS_FILE

    files = []
    for entry in suite.entries:
        path = storage.join(out, entry.benchmark, RESULTS_FILE)
        if not storage.isfile(path):
            continue
        if storage.is_url(path):
            local = Path(workdir) / entry.benchmark / RESULTS_FILE
            storage.download(path, local)
            files.append(local)
        else:
            files.append(Path(path))
    return files


def tabulate(out: str, suite: Suite, args: argparse.Namespace) -> Optional[str]:
    """The paper-layout table of the suite's results in OUT (None when there are none)."""
    from cambrian_train.eval.table_output import render
    from cambrian_train.eval.tables import build_table, load_results, parse_compare

    compare = [parse_compare(spec) for spec in args.compare]
    with tempfile.TemporaryDirectory(prefix="cambrian-suite-") as workdir:
        files = results_files(out, suite, workdir)
        if not files:
            return None
        results = load_results(files)
    table = build_table(results, paper=args.paper, compare=compare)
    return render(table, args.format)


def table_path(out: str, suite: Suite, fmt: str) -> str:
    return storage.join(out, f"suite-{suite.name}.{TABLE_SUFFIX[fmt]}")


def default_out(args: argparse.Namespace) -> Tuple[str, str]:
    """(model id, OUT) as ``cambrian-eval`` picks them."""
    from cambrian_train.eval.cli import DEFAULT_OUT, default_model_name

    if args.model_name:
        model_id = args.model_name
        if not storage.exists(args.model):
            raise ValueError(f"model path {args.model} does not exist")
    else:
        model_id = default_model_name(args.model)
    return model_id, args.out or storage.join(DEFAULT_OUT, model_id)


def run_suite(args: argparse.Namespace) -> Tuple[int, List[str]]:
    """Evaluate (or, ``--table-only``, tabulate) a suite → (exit status, lines to print)."""
    from cambrian_train.eval.cli import check_counts, start_process
    from cambrian_train.eval.tables import parse_compare

    suite = load_suite(args.suite)
    for spec in args.compare:
        parse_compare(spec)  # a malformed spec fails now, not after the run
    if storage.is_url(args.data_root):
        raise ValueError(f"--data-root {args.data_root}: benchmark loaders read local files")
    if args.table_only:
        if not args.out:
            raise ValueError("--table-only needs --out (the results directory)")
        table = tabulate(args.out, suite, args)
        if table is None:
            raise ValueError(f"no results of suite {suite.name!r} in {args.out}")
        storage.write_text(table_path(args.out, suite, args.format), table)
        return 0, [table.rstrip("\n")]
    if not args.model:
        raise ValueError("--model is required (or --table-only with --out)")
    limit = args.max_samples if isinstance(args.max_samples, int) else None
    check_counts(
        argparse.Namespace(batch_size=args.batch_size, max_length=args.max_length, limit=limit)
    )
    decoding = decoding_of(args)
    entries = shard_entries(suite.entries, args.shard_index, args.num_shards)
    model_id, out = default_out(args)
    outcomes = plan(entries, args, out, model_id)
    missing = [o for o in outcomes if o.status == "skipped"]
    if args.strict and missing:
        listed = "; ".join(f"{o.entry.benchmark} ({o.data})" for o in missing)
        raise ValueError(f"--strict: missing data for {listed}")
    process = start_process(args.device)
    if process.rank == 0:
        logging.getLogger("cambrian_train.eval").setLevel(logging.INFO)
    evaluate_entries(outcomes, args, out, model_id, decoding, process)
    if process.rank != 0:
        return (1 if any(o.status == "failed" for o in outcomes) else 0), []
    shard = f" (shard {args.shard_index} of {args.num_shards})" if args.num_shards > 1 else ""
    lines = [f"suite {suite.name}{shard}: model {model_id} -> {out}"]
    lines += [o.line() for o in outcomes] or ["nothing to do: this shard holds no benchmark"]
    write_status(status_path(out, suite, args.shard_index, args.num_shards), outcomes)
    if args.num_shards > 1:
        lines.append(
            "sharded run: once every shard is done, tabulate with "
            f"eval/run_suite.py --table-only --suite {args.suite} --out {out}"
        )
    elif not args.no_table:
        table = tabulate(out, suite, args)
        if table is None:
            lines.append("no results to tabulate")
        else:
            storage.write_text(table_path(out, suite, args.format), table)
            lines += ["", table.rstrip("\n")]
    return (1 if any(o.status == "failed" for o in outcomes) else 0), lines


# ---- command line -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """``run_suite.py``'s options; decoding options and defaults are ``cambrian-eval``'s."""
    import torch

    p = argparse.ArgumentParser(
        prog="run_suite.py", description="Evaluate a model on a benchmark suite, then tabulate."
    )
    p.add_argument("--model", help="export directory or run checkpoint")
    p.add_argument("--suite", required=True, help="suite file, or a name in eval/suites/")
    p.add_argument(
        "--data-root",
        default=os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT),
        help=f"folder the suite's data paths are relative to (${DATA_ROOT_ENV}, "
        f"else {DEFAULT_DATA_ROOT})",
    )
    p.add_argument("--out", help="output directory or URL (default eval_results/<model name>)")
    p.add_argument(
        "--max-samples",
        type=parse_max_samples,
        help="first N items of every benchmark, replacing the suite's limits ('all': none)",
    )
    p.add_argument("--strict", action="store_true", help="missing data or a failure is an error")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep results.json files of this model at the same item limit",
    )
    p.add_argument("--shard-index", type=int, default=0, help="this worker's shard (pods)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (pods)")
    p.add_argument("--table-only", action="store_true", help="only tabulate OUT's results")
    p.add_argument("--no-table", action="store_true", help="do not tabulate after the run")
    p.add_argument("--format", choices=tuple(TABLE_SUFFIX), default="md", help="table format")
    p.add_argument("--paper", action="store_true", help="add the published rows")
    p.add_argument(
        "--compare", action="append", default=[], metavar="MODEL=PAPER_ROW", help="delta row"
    )
    p.add_argument("--model-name", help="model id recorded in results.json")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-length", type=int, help="longest prompt in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (batch k uses seed + k)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--static-shapes", action="store_true", help="one prompt shape per benchmark")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``eval/run_suite.py``; returns the exit status (0, 1 failed, 2 user error)."""
    import torch.distributed as dist

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        status, lines = run_suite(args)
    except ValueError as err:
        if os.environ.get("CAMBRIAN_TRACEBACK"):
            raise
        print(f"run_suite: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if lines:
        print("\n".join(lines))
    return status
