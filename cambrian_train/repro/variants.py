"""Several training variants, each with several seeds, from one command; one table compares them.

An experiment that sets ``variants`` (name → list of Hydra overrides, e.g.
``experiment=repro_small``) makes ``cambrian-train`` compose one config per variant and seed —
the command line's overrides, then the variant's own, then ``seed=<k>``,
``output_dir=<output_dir>/<variant>/seed-<k>`` — and run each in turn exactly as a single run.
``variant_seeds`` lists the seeds (``variant_quick=true``: only the first, for a quick look).

Each run's final checkpoint is evaluated on ``data.test_path`` through ``cambrian-eval``'s
runner: the twelve ``syn_*`` benchmarks of the four-category suite (``data.synthetic.kind:
suite``), otherwise the ``synthetic`` benchmark with its question types as columns. The text-only
prior from the training data (eval/priors.py) is scored by the same benchmarks. Means and 95 %
t-intervals over seeds (stats.py), and paired differences against the first variant, go to
``<output_dir>/comparison.md`` / ``.json`` / ``.png`` (report.py).

A run whose ``results.json`` already lists every stage is not trained again, and a run's scores
(``repro_scores.json`` beside it) are not recomputed for the same checkpoint: re-running the
command after an interruption, or with more seeds, does only what is missing. ``output_dir`` may
be an fsspec URL (storage.py).
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Dict, List, Sequence

from cambrian_train import storage
from cambrian_train.config.schema import TrainConfig
from cambrian_train.repro.report import (
    Scores,
    aggregate,
    benchmark_scores,
    write_comparison,
)

log = logging.getLogger(__name__)

SCORES_FILE = "repro_scores.json"
SCORES_FORMAT = 2  # 2: per-benchmark answer-format scores (an older file is scored again)
# keys a variant's overrides may not set: the seed loop sets them
RUN_KEYS = ("output_dir", "name", "seed")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def seed_dir(out: str, name: str, seed: int) -> str:
    return storage.join(out, name, f"seed-{seed}")


def variant_overrides(
    base: Sequence[str], extra: Sequence[str], out: str, name: str, seed: int
) -> List[str]:
    """The overrides composing one run: the command line's, the variant's, its seed and dir."""
    kept = [o for o in base if _key(o) not in RUN_KEYS]
    return [
        *kept,
        *extra,
        f"seed={seed}",
        f"output_dir={seed_dir(out, name, seed)}",
        f"name={name}-seed{seed}",
    ]


def run_seeds(cfg: TrainConfig) -> List[int]:
    """The seeds this command runs: ``variant_seeds`` (checked), or its first with
    ``variant_quick``."""
    seeds = list(cfg.variant_seeds)
    if not seeds:
        raise ValueError("variant_seeds is empty: give at least one seed, e.g. variant_seeds=[0]")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"variant_seeds={seeds} repeats a seed: each seed runs once")
    return seeds[:1] if cfg.variant_quick else seeds


def check_variants(cfg: TrainConfig, base_overrides: Sequence[str]) -> List[str]:
    """The variant names to run, after the checks that need no training (ValueError)."""
    unknown = sorted(set(cfg.only_variants) - set(cfg.variants))
    if unknown:
        raise ValueError(f"only_variants={unknown} are not among variants {sorted(cfg.variants)}")
    if not cfg.data.test_path:
        raise ValueError("variants are compared on data.test_path, which is not set")
    for name, overrides in cfg.variants.items():
        if "/" in name or not name:
            raise ValueError(f"variant name {name!r} must be a non-empty name without '/'")
        fixed = [o for o in overrides if _key(o) in RUN_KEYS]
        if fixed:
            raise ValueError(
                f"variants.{name} sets {fixed}: the seed loop sets {', '.join(RUN_KEYS)} "
                "(use variant_seeds for seeds)"
            )
    if any(_key(o) == "seed" for o in base_overrides):
        log.warning("seed= on the command line is replaced by variant_seeds=%s", cfg.variant_seeds)
    return [n for n in cfg.variants if not cfg.only_variants or n in cfg.only_variants]


def describe(cfg: TrainConfig) -> Dict[str, str]:
    """What distinguishes a variant, read off its composed config."""
    connector = cfg.model.connector.name
    if connector == "sva" and cfg.model.connector.insert.count:
        connector += f" + {cfg.model.connector.insert.count} in LLM"
    trained = [name for name, tower in cfg.model.towers.items() if tower.trainable]
    return {
        "connector": connector,
        "towers": " + ".join(cfg.model.towers),
        "stage 1": "yes" if "pretrain" in cfg.run_stages else "no",
        "trained towers": " + ".join(trained) or "none",
    }


def run_variants(
    cfg: TrainConfig, base_overrides: Sequence[str], compose: Callable[[List[str]], TrainConfig]
) -> Dict[str, dict]:
    """Train and evaluate every variant and seed of ``cfg``; → name → row of the comparison."""
    out = storage.absolute(cfg.output_dir)
    names = check_variants(cfg, base_overrides)
    seeds = run_seeds(cfg)
    # every run composes (and is validated) before the first one trains
    plans = {
        (name, seed): compose(
            variant_overrides(base_overrides, cfg.variants[name], out, name, seed)
        )
        for name in names
        for seed in seeds
    }
    prior = prior_scores(cfg, out)
    rows: Dict[str, dict] = {}
    for name in names:
        runs = {}
        for seed in seeds:
            runs[seed] = train_and_score(plans[name, seed], cfg, out, name, seed)
        rows[name] = {
            **describe(plans[name, seeds[0]]),
            "overrides": list(cfg.variants[name]),
            "seeds": seeds,
            "runs": {str(seed): run for seed, run in runs.items()},
            **aggregate([runs[seed]["scores"] for seed in seeds]),
        }
        log.info("variant %s: overall %s", name, rows[name]["overall"]["mean"])
    write_comparison(rows, prior, out, seeds)
    return rows


def train_and_score(variant: TrainConfig, cfg: TrainConfig, out: str, name: str, seed: int) -> dict:
    """One run of one variant: trained unless already complete, scored unless already scored."""
    from cambrian_train.run import run

    results_file = storage.join(variant.output_dir, "results.json")
    earlier = json.loads(storage.read_text(results_file)) if storage.exists(results_file) else None
    trained_now = not (earlier and set(variant.run_stages) <= set(earlier["stages"]))
    if trained_now:
        log.info("%s seed %d: %s", name, seed, " ".join(cfg.variants[name]) or "(base config)")
        results = run(variant)
    else:
        log.info("%s seed %d: already trained (%s)", name, seed, results_file)
        results = earlier
    checkpoint = results["stages"][variant.run_stages[-1]]["checkpoint"]
    out_dir = storage.join(out, "eval", name, f"seed-{seed}")
    scores = score_checkpoint(checkpoint, variant, out_dir, trained_now)
    # the training stages' own time (results.json), the same whichever command trained them
    seconds = sum(results["stages"][stage].get("seconds", 0.0) for stage in variant.run_stages)
    return {
        "checkpoint": checkpoint,
        "train_minutes": round(seconds / 60, 2),
        "scores": scores["scores"],
    }


def score_checkpoint(checkpoint: str, cfg: TrainConfig, out: str, trained_now: bool) -> dict:
    """The benchmarks of ``data.test_path`` (report.benchmark_names) through the cambrian-eval
    runner. A run trained just now is always scored afresh; one trained by an earlier command
    reuses its ``repro_scores.json`` when that holds the same checkpoint, limit, benchmarks and
    SCORES_FORMAT."""
    from cambrian_train.eval.benchmarks import get_benchmark
    from cambrian_train.eval.runner import Decoding, run_benchmark
    from cambrian_train.infer.load import load_pretrained
    from cambrian_train.repro.report import benchmark_names

    cache = storage.join(cfg.output_dir, SCORES_FILE)
    names = benchmark_names(cfg)
    key = {
        "checkpoint": checkpoint,
        "limit": cfg.eval.max_samples,
        "benchmarks": names,
        "format": SCORES_FORMAT,
    }
    if not trained_now and storage.exists(cache):
        cached = json.loads(storage.read_text(cache))
        if all(cached.get(k) == v for k, v in key.items()):
            return cached
    model, tokenizer, encoder = load_pretrained(checkpoint)
    results = {}
    for bench in names:
        results[bench] = run_benchmark(
            model,
            tokenizer,
            encoder,
            get_benchmark(bench),
            cfg.data.test_path,
            out,
            model_id=cfg.name,
            batch_size=cfg.eval.batch_size,
            decoding=Decoding(max_new_tokens=cfg.eval.max_new_tokens),
            limit=cfg.eval.max_samples,
        )
    scores = {**key, "scores": benchmark_scores(results).to_dict()}
    storage.write_text(cache, json.dumps(scores, indent=2))
    return scores


def prior_scores(cfg: TrainConfig, out: str) -> Scores:
    """The text-only prior of the finetuning data (eval/priors.py), scored by the same
    benchmarks as the variants (one value: no seed)."""
    from cambrian_train.eval.benchmarks import get_benchmark
    from cambrian_train.eval.priors import TextPrior, run_prior_benchmark
    from cambrian_train.repro.report import benchmark_names
    from cambrian_train.run import prepare_data

    prepare_data(cfg)
    train = cfg.data.train_path
    if not train or not storage.exists(train):
        raise ValueError(f"the text-only prior needs data.train_path; {train!r} does not exist")
    prior = TextPrior.from_path(train)
    results = {
        bench: run_prior_benchmark(
            prior,
            train,
            get_benchmark(bench),
            cfg.data.test_path,
            storage.join(out, "eval", "text-only-prior"),
            limit=cfg.eval.max_samples,
        )
        for bench in benchmark_names(cfg)
    }
    return benchmark_scores(results)
