"""Concurrent requests against cambrian-serve: wall time with and without batching.

    python tools/bench_serve.py --model runs/demo/export --image IMG [--requests 16]
        [--max-tokens 16] [--batch-sizes 1 8]

For each ``--max-batch-size`` the server is started in this process on a free 127.0.0.1 port,
``--requests`` greedy chat completions (the same image, questions varied) are sent at once from
as many threads, and the wall time, requests/s, generated tokens/s and the largest batch the
worker ran are printed as a Markdown table. Answers must be equal across batch sizes (greedy
batched rows equal rows alone); a difference is reported.
"""

from __future__ import annotations

import argparse
import base64
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cambrian_train.serve.cli import Server, build_app, parser  # noqa: E402

QUESTIONS = ["What color is the shape?", "How many shapes are there?", "What shape is it?"]


def run(model, encoder, args, batch_size: int):
    serve_args = parser().parse_args(
        ["--model", args.model, "--port", "0", "--no-ui", "--max-batch-size", str(batch_size)]
    )
    app, engine = build_app(model, encoder, args.model, serve_args)
    url = "data:image/png;base64," + base64.b64encode(args.image.read_bytes()).decode()
    answers, tokens = [None] * args.requests, [0] * args.requests
    with Server(app, engine) as server:

        def ask(i):
            content = [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
            ]
            body = {"messages": [{"role": "user", "content": content}]}
            body["max_tokens"] = args.max_tokens
            out = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600).json()
            answers[i] = out["choices"][0]["message"]["content"]
            tokens[i] = out["usage"]["completion_tokens"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(args.requests)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        wall = time.perf_counter() - start
    return wall, answers, sum(tokens), engine.stats.largest_batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    args = p.parse_args(argv)
    from cambrian_train.infer.load import load_pretrained

    model, _, encoder = load_pretrained(args.model, "cpu")
    print("| max batch | wall s | requests/s | tokens/s | largest batch run |")
    print("|---|---|---|---|---|")
    reference = None
    for size in args.batch_sizes:
        wall, answers, num_tokens, largest = run(model, encoder, args, size)
        print(
            f"| {size} | {wall:.2f} | {args.requests / wall:.1f} | {num_tokens / wall:.0f} "
            f"| {largest} |"
        )
        if reference is not None and answers != reference:
            print(f"answers differ at max batch {size}: {answers} vs {reference}")
        reference = reference or answers
    return 0


if __name__ == "__main__":
    sys.exit(main())
