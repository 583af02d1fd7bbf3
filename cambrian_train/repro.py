"""Several training variants from one command, evaluated alike and compared in one table.

An experiment that sets ``variants`` (name → list of Hydra overrides, e.g.
``experiment=repro_small``) makes ``cambrian-train`` compose one config per variant — the
command line's overrides, then the variant's own, then ``output_dir=<output_dir>/<name>`` — and
run each in turn exactly as a single run. Each variant's final checkpoint is then evaluated on
``data.test_path`` through ``cambrian-eval``'s runner (benchmark ``synthetic``), and
``<output_dir>/comparison.md`` / ``.json`` / ``.png`` compare them. A variant whose
``results.json`` already lists every stage is not trained again (re-running the command after an
interruption finishes the rest). ``output_dir`` may be an fsspec URL (storage.py).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Union

from cambrian_train import storage
from cambrian_train.config.schema import TrainConfig

log = logging.getLogger(__name__)


def variant_overrides(
    base: Sequence[str], extra: Sequence[str], out: Union[str, Path], name: str
) -> List[str]:
    """The overrides composing one variant: the command line's, the variant's, its own dir."""
    kept = [o for o in base if o.split("=", 1)[0].lstrip("+~") not in ("output_dir", "name")]
    return [*kept, *extra, f"output_dir={storage.join(out, name)}", f"name={name}"]


def describe(cfg: TrainConfig) -> Dict[str, str]:
    """What distinguishes a variant, read off its composed config."""
    return {
        "connector": cfg.model.connector.name,
        "towers": " + ".join(cfg.model.towers),
        "stage 1": "yes" if "pretrain" in cfg.run_stages else "no",
    }


def run_variants(
    cfg: TrainConfig, base_overrides: Sequence[str], compose: Callable[[List[str]], TrainConfig]
) -> Dict[str, dict]:
    """Train and evaluate every variant of ``cfg``; returns name → row of the comparison."""
    from cambrian_train.run import run

    out = storage.absolute(cfg.output_dir)
    unknown = sorted(set(cfg.only_variants) - set(cfg.variants))
    if unknown:
        raise ValueError(f"only_variants={unknown} are not among variants {sorted(cfg.variants)}")
    names = [n for n in cfg.variants if not cfg.only_variants or n in cfg.only_variants]
    if not cfg.data.test_path:
        raise ValueError("variants are compared on data.test_path, which is not set")
    rows: Dict[str, dict] = {}
    for name in names:
        variant = compose(variant_overrides(base_overrides, cfg.variants[name], out, name))
        results_file = storage.join(variant.output_dir, "results.json")
        earlier = (
            json.loads(storage.read_text(results_file)) if storage.exists(results_file) else None
        )
        train_minutes = None  # not measured for a variant trained by an earlier command
        if earlier and set(variant.run_stages) <= set(earlier["stages"]):
            log.info("variant %s: already trained (%s)", name, results_file)
            results = earlier
        else:
            log.info("variant %s: %s", name, " ".join(cfg.variants[name]) or "(base config)")
            start = time.perf_counter()
            results = run(variant)
            train_minutes = round((time.perf_counter() - start) / 60, 1)
        checkpoint = results["stages"][variant.run_stages[-1]]["checkpoint"]
        scores = evaluate_checkpoint(checkpoint, variant, storage.join(out, "eval"), name)
        rows[name] = {
            **describe(variant),
            "accuracy": scores["score"],
            "by_type": dict(scores["metrics"].get("by_question_type", {})),
            "train_minutes": train_minutes,
            "checkpoint": checkpoint,
        }
    write_comparison(rows, out)
    return rows


def evaluate_checkpoint(checkpoint: str, cfg: TrainConfig, out: str, name: str) -> dict:
    """The ``synthetic`` benchmark on ``data.test_path`` through the cambrian-eval runner."""
    from cambrian_train.eval.benchmarks import get_benchmark
    from cambrian_train.eval.runner import Decoding, run_benchmark
    from cambrian_train.infer.load import load_pretrained

    model, tokenizer, encoder = load_pretrained(checkpoint)
    return run_benchmark(
        model,
        tokenizer,
        encoder,
        get_benchmark("synthetic"),
        cfg.data.test_path,
        storage.join(out, name),
        model_id=name,
        batch_size=cfg.eval.batch_size,
        decoding=Decoding(max_new_tokens=cfg.eval.max_new_tokens),
        limit=cfg.eval.max_samples,
    )


def comparison_markdown(rows: Dict[str, dict]) -> str:
    types = sorted({t for row in rows.values() for t in row["by_type"]})
    header = ["variant", "connector", "towers", "stage 1", "accuracy", *types, "train (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name, row["connector"], row["towers"], row["stage 1"], f"{row['accuracy']:.1f}"]
        cells += [f"{row['by_type'].get(t, float('nan')):.1f}" for t in types]
        minutes = row["train_minutes"]
        cells.append("–" if minutes is None else f"{minutes:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(rows: Dict[str, dict], out: Union[str, Path]) -> None:
    """``comparison.md`` (the table), ``comparison.json`` and ``comparison.png`` (bar chart;
    drawn in ``out``'s local mirror and uploaded when ``out`` is a URL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = comparison_markdown(rows)
    storage.write_text(storage.join(out, "comparison.md"), table)
    storage.write_text(storage.join(out, "comparison.json"), json.dumps(rows, indent=2))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    names = list(rows)
    bars = ax.bar(names, [rows[n]["accuracy"] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("synthetic test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    local = Path(storage.local_mirror(out), "comparison.png")
    local.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(local, dpi=120)
    plt.close(fig)
    if storage.is_url(str(out)):
        storage.upload(local, storage.join(out, "comparison.png"))
    log.info("comparison (%s):\n%s", storage.join(out, "comparison.md"), table)
