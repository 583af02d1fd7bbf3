"""Benchmark the training data path: samples/s with two towers, for 0 and 2 loader workers.

    python tools/bench_loader.py [--records 1024] [--batch-size 8] [--batches 40] [--workers 0 2]

Composes ``experiment=demo`` plus a second tower (tiny CLIP + tiny SigLIP, 64 px each) like
``cambrian-train``, generates a synthetic set (data/synthetic.py) under ``runs/bench/``, and runs
exactly what a training stage runs for its data: ``SupervisedDataset`` (JSONL record → template →
tokens with placeholder runs, image decode, one preprocessed tensor per tower) → ``batch_stream``
(DataLoader workers, skip accounting) → ``collate`` (static-shape Batch). No model is built. After
``--warmup`` batches (worker start-up), ``--repeats`` windows of ``--batches`` batches are timed
(best and median reported: the machine may be shared). Prints a table and writes
``runs/bench/loader.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cambrian_train.data.cli import compose_train_config
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import SupervisedDataset
from cambrian_train.data.loader import EpochSampler, SkipStats, batch_stream
from cambrian_train.data.records import open_records
from cambrian_train.data.report import build_encoder, tower_image_specs

SECOND_TOWER = "+model/vision_tower@model.towers.siglip=tiny_siglip"


def measure(dataset, encoder, stage, cfg, batch_size, workers, warmup, batches, repeats) -> dict:
    """Time ``repeats`` windows of ``batches`` full batches after ``warmup`` ones (one stream).

    The best window is the figure least disturbed by other load on the machine; the median
    is reported beside it.
    """
    collate_fn = functools.partial(
        collate,
        seq_len=stage.max_length,
        max_images=cfg.data.max_images,
        slot_len=encoder.slot_len,
        pad_id=encoder.tokenizer.pad_token_id,
        image_specs=encoder.image_specs,
    )
    skips = SkipStats()
    start = time.perf_counter()
    stream = batch_stream(
        dataset, EpochSampler(len(dataset), cfg.seed), batch_size, collate_fn, skips, workers
    )
    for _ in range(warmup):
        next(stream)
    first = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(stream)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    del stream  # stops the loader workers
    return {
        "workers": workers,
        "samples_per_s_best": max(rates),
        "samples_per_s_median": statistics.median(rates),
        "samples_per_s_windows": rates,
        "warmup_s": first,
        "skipped": skips.total,
        "batch_shapes": {
            "input_ids": list(batch.input_ids.shape),
            **{f"pixel_values.{k}": list(v.shape) for k, v in batch.pixel_values.items()},
        },
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1024, help="synthetic VQA records")
    parser.add_argument("--image-size", type=int, default=64, help="synthetic image side (px)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches first")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    root = args.out / f"synthetic-{args.records}-{args.image_size}px"
    cfg = compose_train_config(
        [
            "experiment=demo",
            SECOND_TOWER,
            f"data.root={root}",
            "data.synthetic.num_pretrain=16",
            f"data.synthetic.num_train={args.records}",
            "data.synthetic.num_test=8",
            f"data.synthetic.image_size={args.image_size}",
        ]
    )
    stage = cfg.stages["finetune"]
    encoder = build_encoder(cfg, stage, tower_image_specs(cfg.model), cfg.data.image_folder)
    dataset = SupervisedDataset(open_records(cfg.data.train_path), encoder)
    results = [
        measure(
            dataset,
            encoder,
            stage,
            cfg,
            args.batch_size,
            w,
            args.warmup,
            args.batches,
            args.repeats,
        )
        for w in args.workers
    ]
    towers = {name: f"{t.source} {t.image_size}px" for name, t in cfg.model.towers.items()}
    print(
        f"loader throughput: {len(dataset)} synthetic records ({args.image_size} px PNG), "
        f"towers {towers}, batch {args.batch_size}, seq {stage.max_length}, "
        f"{args.repeats} x {args.batches} timed batches, {os.cpu_count()} CPUs"
    )
    print("| workers | samples/s (best) | samples/s (median) | warm-up (s) |")
    print("|---|---|---|---|")
    for r in results:
        print(
            f"| {r['workers']} | {r['samples_per_s_best']:.0f} | "
            f"{r['samples_per_s_median']:.0f} | {r['warmup_s']:.2f} |"
        )
    report = {
        "records": len(dataset),
        "image_size": args.image_size,
        "towers": towers,
        "batch_size": args.batch_size,
        "seq_len": stage.max_length,
        "timed_batches": [args.repeats, args.batches],
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader.json").write_text(json.dumps(report, indent=2))
    print(f"written: {args.out / 'loader.json'}")


if __name__ == "__main__":
    main()
