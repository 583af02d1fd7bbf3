"""``cambrian-eval``: evaluate a model on registered benchmarks from local data.

    cambrian-eval (--model PATH | --text-prior TRAIN) (--benchmark NAME --data PATH)...
                  [--suite FILE] [--out DIR]
                  [--model-name NAME] [--batch-size N] [--max-new-tokens N] [--limit N]
                  [--max-length N]
                  [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop S]...
                  [--static-shapes] [--device cpu|cuda]

``--model`` is an export directory or a run checkpoint (``infer/load.py``). Benchmarks are
``--benchmark NAME --data PATH`` pairs (repeatable, matched in order) and/or ``--suite FILE``, a
YAML mapping ``name: data path`` (relative paths are taken from the suite file's folder). Names
are the registry's (``cambrian_train.eval.benchmarks``; ``synthetic`` is the demo's held-out set,
``data/synthetic-0/test.jsonl``). Each benchmark writes ``OUT/<name>/predictions.jsonl`` and
``OUT/<name>/results.json`` (``eval/runner.py``); OUT defaults to ``eval_results/<model name>``,
and the model name (results' ``model``) to the export directory's name, or ``<run>-<stage>`` for
``<run>/<stage>/checkpoint``. ``--model``, ``--suite`` and ``--out`` may be fsspec URLs
(``gs://...``; storage.py).

``--text-prior TRAIN`` answers from the training file instead of a model: the majority training
answer per question text / template (``eval/priors.py``), scored by each benchmark's own rules;
its results are marked ``"baseline": true`` (model name ``text-only-prior`` by default).

Data parallel: ``torchrun --nproc_per_node N -m cambrian_train.eval.cli ...`` (or
``python -m torch.distributed.run``) splits the batches over the processes (gloo on CPU, nccl
with ``--device cuda``, one GPU per process by LOCAL_RANK); the files are byte-identical to a
one-process run's. On CPU run both with the same ``OMP_NUM_THREADS`` (torchrun sets 1): float
sums may differ with the thread count.

Exit status: 0 done, 2 user error (unknown benchmark, missing data or model, bad option, bad
data, a prompt longer than the model's training length: raise ``--max-length``), with the
message on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import yaml

from cambrian_train import storage

log = logging.getLogger(__name__)

DEFAULT_OUT = "eval_results"


@dataclass(frozen=True)
class Process:
    """Where this process runs: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    device: torch.device


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cambrian-eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="export directory or run checkpoint")
    p.add_argument(
        "--text-prior",
        metavar="TRAIN",
        help="no model: answer from this LLaVA training file's majority answers (eval/priors.py)",
    )
    p.add_argument("--benchmark", action="append", default=[], help="benchmark name (repeatable)")
    p.add_argument("--data", action="append", default=[], help="its local data (repeatable)")
    p.add_argument("--suite", help="YAML mapping benchmark name -> data path")
    p.add_argument("--out", help=f"output directory (default {DEFAULT_OUT}/<model name>)")
    p.add_argument("--model-name", help="model id recorded in results.json")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument(
        "--max-length",
        type=int,
        help="longest prompt in tokens (default: the model's training sequence length)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N items of each benchmark")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (batch k uses seed + k)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--static-shapes",
        action="store_true",
        help="pad every batch to the longest prompt of the benchmark (one shape to compile)",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    return p


def read_suite(path: str) -> List[Tuple[str, str]]:
    """A suite YAML (``name: data path``) → (name, path) pairs, relative paths from its folder."""
    if not storage.isfile(path):
        raise ValueError(f"suite file {path} does not exist")
    try:
        entries = yaml.safe_load(storage.read_text(path))
    except yaml.YAMLError as err:
        raise ValueError(f"suite file {path}: not valid YAML: {err}") from None
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"suite file {path}: expected a mapping benchmark name -> data path")
    pairs = []
    for name, data in entries.items():
        if not isinstance(data, str) or not data:
            raise ValueError(f"suite file {path}: {name!r} -> {data!r} is not a data path")
        relative = not (storage.is_url(data) or os.path.isabs(data))
        where = storage.join(storage.parent(path), data) if relative else data
        pairs.append((str(name), where))
    return pairs


def benchmark_pairs(args: argparse.Namespace) -> List[Tuple[str, str]]:
    """(benchmark name, data path) to run, checked: known names, existing paths, no repeats."""
    from cambrian_train.eval.benchmarks import get_benchmark

    if len(args.benchmark) != len(args.data):
        raise ValueError(
            f"{len(args.benchmark)} --benchmark for {len(args.data)} --data: give them in pairs"
        )
    pairs = list(zip(args.benchmark, args.data))
    if args.suite:
        pairs += read_suite(args.suite)
    if not pairs:
        raise ValueError("nothing to evaluate: give --benchmark NAME --data PATH or --suite FILE")
    seen = set()
    for name, data in pairs:
        get_benchmark(name)
        if name in seen:
            raise ValueError(f"benchmark {name!r} is given twice")
        seen.add(name)
        if not storage.exists(data):
            raise ValueError(f"{name}: data path {data} does not exist")
    return pairs


def check_counts(args: argparse.Namespace) -> None:
    """ValueError for a batch size or limit below 1 (before any model is loaded)."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} must be >= 1")
    if args.max_length is not None and args.max_length < 1:
        raise ValueError(f"--max-length={args.max_length} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit={args.limit} must be >= 1")


def default_model_name(path: str) -> str:
    """The export directory's name, or ``<run>-<stage>`` of a run checkpoint."""
    from cambrian_train.infer.load import checkpoint_dir, is_export

    if not storage.isdir(path):
        raise ValueError(f"model path {path} is not a directory")
    if is_export(path):
        return storage.basename(storage.absolute(path))
    ckpt = storage.absolute(checkpoint_dir(path))
    if storage.basename(ckpt) == "checkpoint":
        stage_dir = storage.parent(ckpt)
        return f"{storage.basename(storage.parent(stage_dir))}-{storage.basename(stage_dir)}"
    return storage.basename(ckpt)


def start_process(device: str) -> Process:
    """This process's rank and device; initialises ``torch.distributed`` under torchrun."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(0, 1, torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    where = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    return Process(dist.get_rank(), dist.get_world_size(), where)


def run(args: argparse.Namespace, process: Process) -> List[str]:
    """Evaluate every requested benchmark → one summary line each."""
    from cambrian_train.eval.benchmarks import get_benchmark
    from cambrian_train.eval.runner import Decoding, run_benchmark
    from cambrian_train.infer.load import load_pretrained

    pairs = benchmark_pairs(args)
    check_counts(args)
    if (args.model is None) == (args.text_prior is None):
        raise ValueError("give exactly one of --model PATH and --text-prior TRAIN")
    if args.text_prior is not None:
        if process.world_size > 1:
            raise ValueError("--text-prior runs in one process (nothing is generated): no torchrun")
        return run_prior(args, pairs)
    decoding = Decoding(
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, tuple(args.stop)
    )
    model_id = args.model_name or default_model_name(args.model)
    out = args.out or storage.join(DEFAULT_OUT, model_id)
    model, tokenizer, encoder = load_pretrained(args.model, process.device)
    if args.max_length is not None:
        encoder = dataclasses.replace(encoder, max_length=args.max_length)
    lines = []
    for name, data in pairs:
        results = run_benchmark(
            model,
            tokenizer,
            encoder,
            get_benchmark(name),
            data,
            out,
            model_id=model_id,
            batch_size=args.batch_size,
            decoding=decoding,
            limit=args.limit,
            rank=process.rank,
            world_size=process.world_size,
            static_shapes=args.static_shapes,
        )
        lines.append(
            f"{name}: score {results['score']:.2f} over {results['count']} items "
            f"({results['metrics'].get('unparsed', 0)} unparsed) -> {storage.join(out, name)}"
        )
    return lines


def run_prior(args: argparse.Namespace, pairs: Sequence[Tuple[str, str]]) -> List[str]:
    """``--text-prior``: every benchmark answered by the training file's prior."""
    from cambrian_train.eval.benchmarks import get_benchmark
    from cambrian_train.eval.priors import TextPrior, run_prior_benchmark

    prior = TextPrior.from_path(args.text_prior)
    model_id = args.model_name or "text-only-prior"
    out = args.out or storage.join(DEFAULT_OUT, model_id)
    lines = []
    for name, data in pairs:
        results = run_prior_benchmark(
            prior,
            args.text_prior,
            get_benchmark(name),
            data,
            out,
            model_id=model_id,
            limit=args.limit,
        )
        lines.append(
            f"{name}: text-only prior {results['score']:.2f} over {results['count']} items "
            f"-> {storage.join(out, name)}"
        )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    process = None
    try:
        process = start_process(args.device)
        if process.rank == 0:
            logging.getLogger("cambrian_train.eval").setLevel(logging.INFO)
        lines = run(args, process)
    except ValueError as err:
        if os.environ.get("CAMBRIAN_TRACEBACK"):
            raise
        print(f"cambrian-eval: error: {err}", file=sys.stderr)
        return 2
    finally:
        if process is not None and process.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if process.rank == 0:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
