"""Peak memory of the next-token loss at Llama-3's vocabulary: full logits vs chunked.

    python tools/bench_loss.py            # V=128256, L=2048, B=2, D=4096, float32 (CPU RSS)

Each variant runs in its own process: hidden states [B, L, D] and the head [V, D] are allocated
first, then one forward + backward of the loss; reported is the peak RSS above that starting
point (the head's gradient, V x D floats, is part of it in both variants). "full" is the
computation the model used before (``logits[:, :-1].float()`` and ``F.cross_entropy``);
"chunked" is models/loss.py at ``model.loss_chunk_size``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
GIB = 1024**3


def rss_gib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def worker(args) -> None:
    import torch
    import torch.nn.functional as F

    from cambrian_train.models.loss import token_loss

    torch.manual_seed(0)
    hidden = (torch.randn(args.batch, args.length, args.dim) * 0.1).requires_grad_(True)
    weight = (torch.randn(args.vocab, args.dim) * 0.02).requires_grad_(True)
    labels = torch.randint(0, args.vocab, (args.batch, args.length))
    labels[:, : args.length // 4] = -100  # prompts
    start = rss_gib()
    began = time.perf_counter()
    if args.variant == "full":
        logits = hidden @ weight.t()  # what the LLM's head returned: [B, L, V]
        total = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            labels[:, 1:].flatten(),
            ignore_index=-100,
            reduction="sum",
        )
    else:
        total, _ = token_loss(hidden, weight, labels, args.chunk)
    total.backward()
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    print("BENCH " + json.dumps({"loss": float(total), "extra_gib": peak - start, "s": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--variant", choices=["full", "chunked"])
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return
    shape = f"V={args.vocab} L={args.length} B={args.batch} D={args.dim}, float32"
    head_grad = args.vocab * args.dim * 4 / GIB
    print(f"{shape}; the head's gradient alone is {head_grad:.2f} GiB")
    print("| loss | peak RSS above start (GiB) | of which not the head's gradient | s | loss |")
    print("|---|---|---|---|---|")
    rows = {}
    for variant in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--variant", variant]
        for name in ("vocab", "length", "batch", "dim", "chunk"):
            cmd += [f"--{name}", str(getattr(args, name))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(next(x for x in out.splitlines() if x.startswith("BENCH "))[6:])
        rows[variant] = row
        label = variant if variant == "full" else f"chunked ({args.chunk} tokens)"
        print(
            f"| {label} | {row['extra_gib']:.2f} | {row['extra_gib'] - head_grad:.2f} | "
            f"{row['s']:.1f} | {row['loss']:.4f} |",
            flush=True,
        )
    ratio = (rows["full"]["extra_gib"] - head_grad) / (rows["chunked"]["extra_gib"] - head_grad)
    print(f"loss memory beyond the head's gradient: {ratio:.1f}x lower chunked")


if __name__ == "__main__":
    main()
