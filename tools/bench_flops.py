"""Analytic FLOPs per training step of a configured model, by part, and the MFU a step time gives.

The model is built on the meta device (no checkpoint, no memory), so pod-scale presets work:

    python tools/bench_flops.py experiment=cambrian8b_finetune_v4_512 --stage finetune
    python tools/bench_flops.py experiment=cambrian8b_pretrain_v4_512 --stage pretrain \\
        --step-seconds 4.1 --devices 256 --device-kind "TPU v4"
    python tools/bench_flops.py experiment=demo model/connector=tiny_sva --pretrained

The batch is the stage's global batch of ``max_length`` positions and ``data.max_images`` image
slots each (train/flops.py gives the conventions).
"""

from __future__ import annotations

import argparse
import sys

from model_summary import configured_model  # tools/ is first on sys.path for a tool

from cambrian_train.train.flops import model_flops
from cambrian_train.train.mfu import mfu, peak_tflops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=demo")
    parser.add_argument("--stage", default=None, help="stage name (default: the first run stage)")
    parser.add_argument(
        "--pretrained", action="store_true", help="load the checkpoints instead of the meta build"
    )
    parser.add_argument("--depth", type=int, default=2, help="name components per table row")
    parser.add_argument("--full-attention", action="store_true", help="no causal halving")
    parser.add_argument("--recompute", action="store_true", help="add checkpointing recompute")
    parser.add_argument("--step-seconds", type=float, default=None, help="measured step time")
    parser.add_argument("--devices", type=int, default=1, help="chips the step ran on")
    parser.add_argument("--device-kind", default="tpu-v4", help="a PEAK_TFLOPS key or name")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the table")
    args = parser.parse_args(argv)
    train_cfg, model = configured_model(args.overrides, args.pretrained)
    name = args.stage or (train_cfg.run_stages or list(train_cfg.stages))[0]
    stage = train_cfg.stages[name]
    flops = model_flops(
        model,
        stage.global_batch_size,
        stage.max_length,
        train_cfg.data.max_images,
        train_llm=stage.train_llm,
        causal=not args.full_attention,
        recompute=args.recompute,
    )
    print(
        f"stage {name}: global batch {stage.global_batch_size} x {stage.max_length} positions, "
        f"{train_cfg.data.max_images} image slot(s), train_llm={stage.train_llm}"
    )
    print(flops.table(args.depth))
    print(f"per sample: {flops.total / stage.global_batch_size / 1e9:.3f} GFLOPs")
    if args.step_seconds:
        peak = args.peak_tflops or peak_tflops(args.device_kind)
        value = mfu(flops.total, args.step_seconds, args.devices, peak)
        print(
            f"MFU at {args.step_seconds} s/step on {args.devices} x {peak:g} TFLOP/s: {value:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
