"""MFU of a real training run on GPUs: 1B-class Llama + SigLIP-SO400M + CLIP-L/14 + SVA.

For when an accelerator is lent (README "GPU check"). It writes random-init checkpoints of the
real architectures (Llama-3.2-1B shape: 16 layers × 2048, GQA 32/8 heads, vocab 128256;
SigLIP-SO400M/14 at 384 px; CLIP ViT-L/14 at 336 px) into ``--work``, generates the synthetic
data set, and runs the training command itself — ``cambrian-train`` under ``torchrun`` with
``backend=cuda_fsdp backend.dtype=bfloat16`` (FSDP2, float32 master weights), the SVA connector
(576 queries, depth 3, width 1024) re-inserted inside the LLM 3 times, packed rows of 2048
positions, gradient checkpointing — then prints the logged step time, tokens/s, model TFLOP/s
per device and MFU against the device's dense bf16 peak (train/mfu.py).

    python tools/gpu_mfu.py --gpus 1                 # on the GPU machine (~5 min)
    python tools/gpu_mfu.py --size tiny --steps 3    # the same path on CPU, tiny shapes (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SIZES = {
    "1b": dict(
        llm=dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            tie_word_embeddings=False,
        ),
        siglip=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
        ),
        clip=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
        ),
        image_token_len=576,
        width=1024,
        pack_length=2048,
        rows=8,
    ),
    "tiny": dict(
        llm=dict(
            vocab_size=512,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
        ),
        siglip=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
        clip=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
        image_token_len=16,
        width=64,
        pack_length=256,
        rows=4,
    ),
}


def write_checkpoints(work: Path, size: dict) -> None:
    """Random-init HF checkpoints of the three architectures (skipped when present)."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    from cambrian_train.tiny import ensure_asset

    if (work / "done").exists():
        return
    tok = AutoTokenizer.from_pretrained(ensure_asset("tokenizer"))
    torch.manual_seed(0)
    llm = LlamaConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{**size["llm"], "vocab_size": max(size["llm"]["vocab_size"], len(tok))},
    )
    LlamaForCausalLM(llm).save_pretrained(work / "llm")
    tok.save_pretrained(work / "llm")
    SiglipVisionModel(SiglipVisionConfig(**size["siglip"])).save_pretrained(work / "siglip")
    px = size["siglip"]["image_size"]
    SiglipImageProcessor(size={"height": px, "width": px}).save_pretrained(work / "siglip")
    CLIPVisionModel(CLIPVisionConfig(**size["clip"])).save_pretrained(work / "clip")
    px = size["clip"]["image_size"]
    CLIPImageProcessor(
        size={"shortest_edge": px}, crop_size={"height": px, "width": px}
    ).save_pretrained(work / "clip")
    (work / "done").write_text("ok\n")


def overrides(work: Path, size: dict, args) -> list:
    llm = size["llm"]
    return [
        "experiment=demo",
        "model=cambrian_8b",
        "~model.towers.dino",
        "~model.towers.convnext",
        f"model.llm.checkpoint={work / 'llm'}",
        f"model.llm.num_layers={llm['num_hidden_layers']}",
        f"model.llm.hidden_size={llm['hidden_size']}",
        f"model.towers.siglip.checkpoint={work / 'siglip'}",
        f"model.towers.siglip.image_size={size['siglip']['image_size']}",
        f"model.towers.clip.checkpoint={work / 'clip'}",
        f"model.towers.clip.image_size={size['clip']['image_size']}",
        f"model.image_token_len={size['image_token_len']}",
        f"model.towers.siglip.num_tokens={size['image_token_len']}",
        f"model.towers.clip.num_tokens={size['image_token_len']}",
        f"model.connector.vision_hidden_size={size['width']}",
        f"model.connector.query_num_list=[{size['image_token_len']}]",
        "model.connector.insert.count=3",
        f"model.connector.insert.stride={llm['num_hidden_layers'] // 3}",
        f"data.root={work / 'data'}",
        "data.synthetic.num_pretrain=64",
        f"data.synthetic.num_train={max(512, args.steps * size['rows'] * 8)}",
        "data.synthetic.num_test=8",
        "data.system_prompt=",
        "data.packing=true",
        f"data.pack_length={size['pack_length']}",
        "data.num_workers=4" if args.gpus else "data.num_workers=0",
        "run_stages=[finetune]",
        "stages.finetune.require_init=false",
        "stages.finetune.eval_after=false",
        "stages.finetune.train_llm=true",
        f"stages.finetune.max_length={size['pack_length']}",
        f"stages.finetune.max_steps={args.steps}",
        "stages.finetune.log_every=1",
        f"stages.finetune.global_batch_size={size['rows'] * max(1, args.gpus)}",
        "stages.finetune.grad_accum_steps=1",
        "stages.finetune.gradient_checkpointing=true",
        "backend=cuda_fsdp",
        "backend.dtype=bfloat16" if args.gpus else "backend.dtype=float32",
        f"output_dir={work / 'run'}",
        "logger.wandb=false",
        "logger.progress_bar=false",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--gpus", type=int, default=None, help="processes (default: all GPUs)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--work", default="/tmp/cambrian-gpu-mfu")
    args = parser.parse_args(argv)
    import torch

    if args.gpus is None:
        args.gpus = torch.cuda.device_count()
    size = SIZES[args.size]
    work = Path(args.work) / args.size
    work.mkdir(parents=True, exist_ok=True)
    write_checkpoints(work, size)
    nproc = max(1, args.gpus)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["-m", "cambrian_train", *overrides(work, size, args)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stdout[-4000:], proc.stderr[-6000:], sep="\n")
        return proc.returncode
    rows = [json.loads(line) for line in open(work / "run" / "metrics.jsonl")]
    rows = [r for r in rows if r.get("stage") == "finetune" and "step_s" in r]
    logged = (proc.stdout + proc.stderr).splitlines()
    flops_line = [line.split(" - ")[-1] for line in logged if "model FLOPs per" in line]
    print(f"{args.size}: {nproc} process(es); {flops_line[-1] if flops_line else ''}")
    print("| step | loss | step s | tokens/s | padding | data wait | TFLOP/s/device | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['step']} | {r['loss']:.4f} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r['padding_fraction']:.1%} | {r['data_wait_fraction']:.1%} | "
            f"{r.get('model_tflops_per_device', float('nan')):.1f} | "
            f"{r.get('mfu', float('nan')):.1%} |"
        )
    steady = rows[len(rows) // 2 :]  # after warm-up
    if steady and "mfu" in steady[-1]:
        mean = sum(r["mfu"] for r in steady) / len(steady)
        print(f"MFU over the last {len(steady)} steps: {mean:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
