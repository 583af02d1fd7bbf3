"""Peak host memory per process while a big LLM is loaded for training (issue: sharded loading).

Builds (once) a random Llama of about 1.5B parameters saved as sharded bf16 safetensors with an
index (the layout of a hub checkpoint), then loads it the way training does — the VLM built with
``defer_weights=True`` and ``backend.prepare_model`` — and reports each process's peak RSS
against the model's float32 size:

    python tools/bench_load.py                      # all rows below
    python tools/bench_load.py --only fsdp          # one row: cpu-full | cpu | fsdp | xla

Rows: ``cpu-full`` the old path (``from_pretrained`` of the whole LLM, then prepare); ``cpu`` the
deferred path on one process; ``fsdp`` two FSDP2 processes over gloo (each must hold half);
``xla`` xla_spmd on 4 virtual CPU devices in one process, whose "device" buffers are themselves
host memory (on a TPU they would be HBM), so its RSS includes the whole sharded model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# about 1.5B parameters: 20 layers x (4 x 2048^2 attention + 3 x 2048 x 8192 MLP) + 2 x 32000 x 2048
ARCH = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=20,
    num_attention_heads=16,
    num_key_value_heads=16,
    tie_word_embeddings=False,
)
GIB = 1024**3


def rss_gib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def make_checkpoint(out: Path) -> int:
    """The random checkpoint (bf16, 1 GB shards + index); returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    marker = out / "DONE"
    config = LlamaConfig(**ARCH)
    if not marker.exists():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(out, max_shard_size="1GB")
        marker.write_text(str(sum(p.numel() for p in model.parameters())))
    return int(marker.read_text())


def worker(args) -> None:
    """One process of one row: load, then print its measurements as JSON."""
    import torch

    from cambrian_train.backends import build_backend
    from cambrian_train.models import build_model
    from tests.conftest import compose_config

    cfg = compose_config(
        [
            "experiment=demo",
            f"backend={args.backend}",
            "backend.dtype=float32",
            f"output_dir={args.out}/run",
            f"model.llm.checkpoint={args.ckpt}",
            f"model.llm.num_layers={ARCH['num_hidden_layers']}",
            f"model.llm.hidden_size={ARCH['hidden_size']}",
        ]
    )
    backend = build_backend(cfg.backend, cfg.mesh)
    backend.setup()
    baseline = rss_gib()
    start = time.perf_counter()
    model = build_model(cfg.model, defer_weights=not args.full)
    model = backend.prepare_model(model)
    seconds = time.perf_counter() - start
    local = 0
    for p in model.llm.parameters():
        data = p.to_local() if hasattr(p, "to_local") else p
        local += data.numel() * data.element_size() if data.device.type == "cpu" else 0
    row = {
        "rank": backend.rank,
        "baseline_gib": round(baseline, 2),
        "peak_gib": round(peak_gib(), 2),
        "after_gib": round(rss_gib(), 2),
        "local_llm_gib": round(local / GIB, 2),
        "seconds": round(seconds, 1),
    }
    print("BENCH " + json.dumps(row), flush=True)
    backend.shutdown()
    del torch


ROWS = {
    "cpu-full": (["--backend", "cpu", "--full"], {}, ()),
    "cpu": (["--backend", "cpu"], {}, ()),
    "fsdp": (
        ["--backend", "cuda_fsdp"],
        {"OMP_NUM_THREADS": "1"},
        ("-m", "torch.distributed.run", "--nproc_per_node", "2"),
    ),
    "xla": (["--backend", "xla_spmd"], {"PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}, ()),
}


def run_row(name: str, ckpt: Path, out: Path) -> list:
    flags, env, launcher = ROWS[name]
    cmd = [sys.executable, *launcher, __file__, "--worker", "--ckpt", str(ckpt), "--out", str(out)]
    proc = subprocess.run(
        cmd + flags,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    rows = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode or not rows:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(Path.home() / ".cache/cambrian-train/bench/llama"))
    parser.add_argument("--only", choices=sorted(ROWS), action="append")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="/tmp/bench_load", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    ckpt = Path(args.dir)
    params = make_checkpoint(ckpt)
    fp32 = params * 4 / GIB
    print(f"random Llama: {params / 1e9:.2f}B parameters, float32 {fp32:.2f} GiB, files bf16")
    print("| row | process | peak RSS GiB | RSS at start GiB | peak - start | / fp32 model | s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only or list(ROWS):
        for row in run_row(name, ckpt, Path(args.out)):
            grown = row["peak_gib"] - row["baseline_gib"]
            print(
                f"| {name} | {row['rank']} | {row['peak_gib']:.2f} | {row['baseline_gib']:.2f} | "
                f"{grown:.2f} | {grown / fp32:.2f} | {row['seconds']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
