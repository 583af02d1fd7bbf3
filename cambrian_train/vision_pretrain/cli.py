"""``cambrian-pretrain-towers`` / ``python -m cambrian_train.vision_pretrain``: build the
pre-trained tiny towers.

    cambrian-pretrain-towers                                  # all four, into the tiny cache
    cambrian-pretrain-towers --towers clip siglip --steps 50  # a quick, smaller budget
    cambrian-pretrain-towers --towers dinov2 --out /tmp/towers

Without ``--out`` the towers are the tiny assets ``<family>_pt`` (cambrian_train/tiny.py), built
unless already cached (the directory is keyed by the recipe, so ``--steps`` builds its own);
with ``--out`` each is trained into ``<out>/<family>_pt`` regardless of the cache. Prints one
line per tower: directory, first and last loss, seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cambrian_train.tiny import PRETRAIN_STEPS_ENV, PRETRAINED_FAMILIES, ensure_asset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="cambrian-pretrain-towers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--towers", nargs="+", default=list(PRETRAINED_FAMILIES), choices=PRETRAINED_FAMILIES
    )
    parser.add_argument("--steps", type=int, help="steps per tower (default: each recipe's)")
    parser.add_argument("--out", type=Path, help="train into this directory instead of the cache")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for family in args.towers:
        if args.out is not None:
            from cambrian_train.vision_pretrain.train import pretrain_tower, recipe_for

            path = args.out / f"{family}_pt"
            pretrain_tower(family, path, recipe_for(family, args.steps))
        else:
            if args.steps is not None:
                os.environ[PRETRAIN_STEPS_ENV] = str(args.steps)
            path = Path(ensure_asset(f"{family}_pt"))
        report = json.loads((path / "pretrain.json").read_text())
        losses = report["losses"]
        print(
            f"{family}_pt: {path}  loss {losses[0]:.3f} -> {losses[-1]:.3f}  "
            f"({report['recipe']['steps']} steps, {report['seconds']} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
