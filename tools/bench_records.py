"""Benchmark the lazy JSONL reader: index build time, index memory, random-access latency.

    python tools/bench_records.py --records 1000000

Writes a synthetic LLaVA-format JSONL of the given size into a temporary directory (or --dir),
then reports: the one-pass index build, the size of the index in memory, a cached re-open, and
the mean / p99 latency of random record reads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from cambrian_train.data.records import open_records


def write_jsonl(path: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = "what color shape count image describe the picture shows a small large red".split()
    with open(path, "w") as fh:
        for i in range(count):
            question = " ".join(rng.choices(words, k=rng.randint(4, 30)))
            answer = " ".join(rng.choices(words, k=rng.randint(1, 40)))
            record = {
                "id": f"rec-{i:08d}",
                "image": f"images/{i % 100000:06d}.jpg",
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}?"},
                    {"from": "gpt", "value": answer},
                ],
            }
            fh.write(json.dumps(record) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--dir", default=None, help="where to write the file (default: a tmp dir)")
    args = parser.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-records-"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "bench.jsonl"
    if not path.exists():
        t = time.perf_counter()
        write_jsonl(path, args.records)
        print(
            f"wrote {args.records:,} records, {os.path.getsize(path) / 2**20:.0f} MiB, "
            f"in {time.perf_counter() - t:.1f} s"
        )
    for suffix in (".idx.npy", ".idx.json"):
        Path(str(path) + suffix).unlink(missing_ok=True)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    records = open_records(str(path))
    build = time.perf_counter() - t
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    cached = open_records(str(path))
    reopen = time.perf_counter() - t
    index_bytes = np.asarray(cached._offsets).nbytes

    rng = random.Random(1)
    latencies = []
    for _ in range(args.reads):
        i = rng.randrange(len(cached))
        t = time.perf_counter()
        cached[i]
        latencies.append(time.perf_counter() - t)
    lat = np.asarray(latencies) * 1e3
    print(f"records            {len(records):,}")
    print(f"index build        {build:.2f} s (one pass, stored beside the file)")
    print(f"index re-open      {reopen * 1e3:.1f} ms (cached, memory-mapped)")
    print(
        f"index size         {index_bytes / 2**20:.1f} MiB "
        f"(peak RSS grew {(rss1 - rss0) / 1024:.1f} MiB while building)"
    )
    print(
        f"random access      mean {lat.mean():.3f} ms, p99 {np.percentile(lat, 99):.3f} ms "
        f"over {args.reads:,} reads"
    )


if __name__ == "__main__":
    main()
