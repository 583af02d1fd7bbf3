"""Trainable parameters and training-step memory with and without LoRA, at a mid-size LLM.

Each variant runs in its own process (so peak RSS is its own): a random-init Llama
(``--hidden`` wide, ``--layers`` layers, vocab ``--vocab``) saved as an HF checkpoint and loaded
through ``build_model`` like a real run, the tiny CLIP tower and the MLP connector; the finetune
stage's freezing (``train/stage.py``) and AdamW (``train/optim.py``); ``--steps`` steps of
forward + backward + update on ``--batch`` × ``--length`` random tokens with one image each.

Printed per variant: trainable parameters, bytes of gradients + AdamW moments (counted from the
tensors after the last step), the process's peak RSS, the median step time; then the ratios
LoRA / full. Usage: ``python tools/bench_lora.py [--rank 16]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def run_variant(args) -> dict:
    import torch

    from cambrian_train.data.collate import collate
    from cambrian_train.data.dataset import Sample
    from cambrian_train.infer.export_cli import compose_train_config
    from cambrian_train.models import build_model
    from cambrian_train.train.optim import build_optimizer
    from cambrian_train.train.stage import apply_stage

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    overrides = [
        "experiment=demo",
        "output_dir=/tmp/bench_lora",
        f"model.llm.checkpoint={args.checkpoint}",
        f"model.llm.num_layers={args.layers}",
        f"model.llm.hidden_size={args.hidden}",
    ]
    if args.rank:
        overrides += [f"model.llm.lora.r={args.rank}", f"model.llm.lora.alpha={2 * args.rank}"]
    cfg = compose_train_config(overrides)  # composed and checked as cambrian-train does
    model = build_model(cfg.model)
    stage = cfg.stages["finetune"]
    optimizer = build_optimizer(apply_stage(model, stage), stage)
    model.train()
    slot = model.slot_len
    specs = model.image_specs()
    gen = torch.Generator().manual_seed(1)
    samples = []
    for i in range(args.batch):
        ids = torch.randint(3, args.vocab, (args.length,), generator=gen).tolist()
        ids[1 : 1 + slot] = [0] * slot
        labels = [-100] * (1 + slot) + ids[1 + slot :]
        pixels = {
            n: torch.randint(0, 255, (1, 3, s.image_size, s.image_size), dtype=torch.uint8)
            for n, s in specs.items()
        }
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        samples.append(Sample(str(i), ids, labels, [1], pixels, boxes))
    batch = collate(samples, args.length, 1, slot, 0, specs)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        times.append(time.perf_counter() - start)
    trainable = [p for p in model.parameters() if p.requires_grad]
    state_bytes = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    return dict(
        trainable=sum(p.numel() for p in trainable),
        total=sum(p.numel() for p in model.parameters()),
        grad_optim_mib=(state_bytes + grad_bytes) / 2**20,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        step_s=statistics.median(times[1:] or times),
        loss=float(loss),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        args.rank = int(args.variant)
        print(json.dumps(run_variant(args)))
        return

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cambrian_train.tiny import ensure_asset

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = ensure_asset("llama")
        config = LlamaConfig(
            hidden_size=args.hidden,
            intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 64,
            num_key_value_heads=max(1, args.hidden // 256),
            vocab_size=args.vocab,
            max_position_embeddings=4096,
        )
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
        results = {}
        for rank in (0, args.rank):
            cmd = [sys.executable, __file__, "--variant", str(rank), "--checkpoint", tmp]
            cmd += [f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "vocab", "batch")]
            cmd += [f"--{k}={getattr(args, k)}" for k in ("length", "steps", "threads")]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            results[rank] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"Llama {args.layers}x{args.hidden}, vocab {args.vocab}; batch {args.batch}x{args.length}"
    )
    print("| variant | trainable params | of total | grads + AdamW MiB | peak RSS MiB | step s |")
    print("|---|---|---|---|---|---|")
    for rank, r in results.items():
        name = f"LoRA r={rank}" if rank else "full LLM"
        print(
            f"| {name} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f} % | "
            f"{r['grad_optim_mib']:.1f} | {r['peak_rss_mib']:.0f} | {r['step_s']:.2f} |"
        )
    full, low = results[0], results[args.rank]
    print(
        f"LoRA/full: trainable {low['trainable'] / full['trainable']:.4f}, grads+AdamW "
        f"{low['grad_optim_mib'] / full['grad_optim_mib']:.4f}, peak RSS "
        f"{low['peak_rss_mib'] / full['peak_rss_mib']:.3f}, step time "
        f"{low['step_s'] / full['step_s']:.3f}"
    )


if __name__ == "__main__":
    main()
