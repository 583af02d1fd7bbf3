"""SVA attention: the fast path (models/connectors/sva.py) against the computation it replaced
(tests/unit/sva_reference.py), forward + backward time and activation memory.

    python tools/bench_sva.py                       # CPU, float32, 1 thread, N=2 images
    python tools/bench_sva.py --device cuda --dtype bf16 --batch 8

Two cases at the issue's shapes (576 queries on a 24² grid; towers 24², 24², 24², 96²
projected to width 256, so windows of 1, 1, 1 and 16 tokens; 16 heads): the connector's
sampler (depth 3, queries of width 256) and one SVA layer inside the LLM (depth 1, queries and
context of width ``--llm-dim``). Both modules get the same state dict and inputs (tower
features requiring grad; image 1 of every pair padded to a 4:3 box, so some windows are fully
padded). Time: median over ``--reps`` interleaved repetitions (alternating which goes first)
of one forward and backward. Memory: on CPU the bytes autograd saves for the backward (unique
storages, parameters and inputs excluded, via ``torch.autograd.graph.saved_tensors_hooks``);
on CUDA also the peak allocated above the inputs during forward + backward.

On CPU the figures move with the machine's load, and glibc hands large freed blocks back to the
system, so fresh tensors page-fault; a caching allocator (as CUDA and XLA have) is closer to
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIB = 1024**2


def build_case(args, llm: bool):
    import torch

    from cambrian_train.models.connectors import sva
    from cambrian_train.models.vision.resample import grid_side
    from tests.unit import sva_reference as ref

    width, q_side = args.width, args.query_side
    q_dim = args.llm_dim if llm else width
    kw = dict(
        q_dim=q_dim,
        context_dim=q_dim,
        kv_dims=[width] * len(args.towers),
        window_sides=[s // q_side for s in args.towers],
        hidden=width,
        num_heads=args.heads,
    )
    depth = 1 if llm else args.depth
    torch.manual_seed(0)
    # the previous implementation's semantics, which the reference has
    new = sva.VisionTokenSampler(depth, **kw, o_proj_bias=True, empty_window="zero")
    with torch.no_grad():  # non-trivial LayerNorm affines and position embeddings
        for name, p in new.named_parameters():
            if ".0." in name or "pos_embed" in name:
                p.add_(torch.randn_like(p) * 0.1)
    old = ref.VisionTokenSampler(depth, **kw)
    old.load_state_dict(new.state_dict())
    device = torch.device(args.device)
    new.to(device)
    old.to(device)
    gen = torch.Generator().manual_seed(1)
    n, m = args.batch, args.batch * q_side * q_side
    queries = torch.randn(m, q_dim, generator=gen).to(device)
    # one context per image, as the connector and the in-LLM layers pass it (the reference
    # repeats it for every query, as the connector did before calling it)
    context = torch.randn(n, q_dim, generator=gen).to(device)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.125, 1.0, 0.875]]).repeat(n, 1)[:n]
    windows, masks = [], []
    for side in args.towers:
        feats = torch.randn(n, side * side, width, generator=gen).to(device)
        windows.append(sva.window_partition(feats, q_side).requires_grad_(True))
        valid = sva.valid_token_mask(boxes, side).to(device)
        masks.append(sva.window_partition(valid[..., None], q_side)[..., 0])
    assert grid_side(q_side * q_side) == q_side
    return {"reference": old, "fast": new}, (queries, context, windows, masks)


def autocast(args):
    import torch

    if args.dtype == "bf16":
        return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step(module, inputs, args):
    """One forward and backward; returns the output (detached) and the gradients."""
    queries, context, windows, masks = inputs
    module.zero_grad(set_to_none=True)
    for w in windows:
        w.grad = None
    with autocast(args):
        out = module(queries, context, windows, masks)
    out.float().square().mean().backward()
    return out.detach().float(), [p.grad for p in module.parameters()]


def saved_bytes(module, inputs, args) -> int:
    """Bytes of the unique storages autograd saves for the backward of one forward."""
    import torch

    exclude = {p.untyped_storage().data_ptr() for p in module.parameters()}
    exclude |= {w.untyped_storage().data_ptr() for w in inputs[2]}
    exclude |= {t.untyped_storage().data_ptr() for t in inputs[:2]}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        queries, context, windows, masks = inputs
        with autocast(args):
            out = module(queries, context, windows, masks)
    del out
    return sum(seen.values())


def peak_bytes(module, inputs, args) -> float:
    import torch

    if not args.device.startswith("cuda"):
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(module, inputs, args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def sync(args):
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def relative(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def run_case(args, llm: bool) -> dict:
    modules, inputs = build_case(args, llm)
    results = {name: step(mod, inputs, args) for name, mod in modules.items()}  # warm-up
    (out_f, grads_f), (out_r, grads_r) = results["fast"], results["reference"]
    out_err = relative(out_f, out_r)
    # per tensor, but for those whose reference gradient vanishes (a lone tower's key bias)
    largest = max(float(b.norm()) for b in grads_r)
    grad_err = max(
        relative(a, b) for a, b in zip(grads_f, grads_r) if float(b.norm()) > 1e-6 * largest
    )
    times = {name: [] for name in modules}
    order = list(modules)
    for rep in range(args.reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            sync(args)
            began = time.perf_counter()
            step(modules[name], inputs, args)
            sync(args)
            times[name].append(time.perf_counter() - began)
    row = {"case": "in-LLM layer" if llm else "connector sampler", "err": (out_err, grad_err)}
    for name, mod in modules.items():
        row[name] = {
            "ms": statistics.median(times[name]) * 1e3,
            "saved": saved_bytes(mod, inputs, args) / MIB,
            "peak": peak_bytes(mod, inputs, args) / MIB,
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch default)")
    parser.add_argument("--batch", type=int, default=2, help="images N")
    parser.add_argument("--query-side", type=int, default=24)
    parser.add_argument("--towers", type=int, nargs="+", default=[24, 24, 24, 96])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--llm-dim", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--cases", nargs="+", choices=["connector", "llm"], default=None)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.cases or ["connector", "llm"]
    rows = [run_case(args, llm=(c == "llm")) for c in cases]
    print(
        f"\nN={args.batch}, queries {args.query_side}², towers "
        f"{', '.join(f'{s}²' for s in args.towers)}, width {args.width}, heads {args.heads}, "
        f"depth {args.depth} (in-LLM: 1, q_dim {args.llm_dim}); {args.device} {args.dtype}, "
        f"{torch.get_num_threads()} thread(s), median of {args.reps}\n"
    )
    cuda = args.device.startswith("cuda")
    head = "| case | variant | fwd+bwd ms | speed-up | saved for bwd MiB |"
    head += " peak MiB |" if cuda else ""
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for row in rows:
        base = row["reference"]
        for name in ("reference", "fast"):
            r = row[name]
            line = (
                f"| {row['case']} | {name} | {r['ms']:.1f} | {base['ms'] / r['ms']:.2f}x | "
                f"{r['saved']:.1f} |"
            )
            line += f" {r['peak']:.1f} |" if cuda else ""
            print(line)
    print()
    for row in rows:
        out_err, grad_err = row["err"]
        print(
            f"{row['case']}: fast vs reference, relative error of the output {out_err:.1e}, "
            f"worst parameter gradient {grad_err:.1e}"
        )


if __name__ == "__main__":
    main()
