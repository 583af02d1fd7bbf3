"""Linear-probe accuracy of the tiny towers, random init vs pre-trained, on held-out scenes.

    python tools/probe_towers.py                       # all four families, 2000 / 1000 images
    python tools/probe_towers.py --towers clip --num-train 500 --json probe.json

For each family the random-init preset ``tiny_<family>`` and the pre-trained ``tiny_<family>_pt``
(built on first use, cached) are loaded as the VLM loads them and probed frozen
(cambrian_train/vision_pretrain/probe.py); a Markdown table of test accuracies (%) is printed,
with the majority-class baseline first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from cambrian_train.tiny import PRETRAINED_FAMILIES
from cambrian_train.vision_pretrain.probe import (
    ATTRIBUTES,
    format_table,
    load_tower,
    majority_baseline,
    probe_data,
    probe_tower,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towers", nargs="+", default=list(PRETRAINED_FAMILIES))
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the probe scenes' stream seed")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.towers) - set(PRETRAINED_FAMILIES))
    if unknown:
        parser.error(f"--towers {unknown} not among {list(PRETRAINED_FAMILIES)}")
    if args.num_train < 10 or args.num_test < 1:
        parser.error(
            f"need --num-train >= 10 and --num-test >= 1, got {args.num_train}, {args.num_test}"
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = probe_data(args.num_train, args.num_test, image_size=64, seed=args.seed)
    rows = {"majority class": majority_baseline(data)}
    for family in args.towers:
        for preset in (f"tiny_{family}", f"tiny_{family}_pt"):
            start = time.perf_counter()
            rows[preset] = probe_tower(load_tower(preset), data)
            logging.info("probed %s in %.1f s", preset, time.perf_counter() - start)
    table = format_table(rows, list(ATTRIBUTES))
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
