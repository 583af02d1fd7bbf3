"""Generate the synthetic shapes data set (cambrian_train.data.synthetic) from the command line.

Example::

    python tools/make_synthetic.py --out data/synthetic --seed 0 --num-pretrain 2000 \
        --num-train 4000 --num-test 300 --image-size 64 --max-shapes 3 \
        --question-types color,shape,count
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cambrian_train.config.schema import SyntheticConfig
from cambrian_train.data.synthetic import ensure_synthetic, generate


def parse_args(argv=None) -> argparse.Namespace:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="data set root directory")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-pretrain", type=int, default=defaults.num_pretrain)
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-test", type=int, default=defaults.num_test)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--max-shapes", type=int, default=defaults.max_shapes)
    parser.add_argument(
        "--question-types",
        default=",".join(defaults.question_types),
        help="comma-separated subset of color,shape,count,word",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep --out as is when its manifest matches"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = SyntheticConfig(
        seed=args.seed,
        image_size=args.image_size,
        num_pretrain=args.num_pretrain,
        num_train=args.num_train,
        num_test=args.num_test,
        max_shapes=args.max_shapes,
        question_types=[q.strip() for q in args.question_types.split(",") if q.strip()],
    )
    try:
        paths = (ensure_synthetic if args.reuse else generate)(args.out, cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = json.loads((paths.root / "manifest.json").read_text())["counts"]
    print(f"image_folder: {paths.image_folder}")
    print(f"pretrain:     {paths.pretrain_path} ({counts['pretrain']} records)")
    print(f"train:        {paths.train_path} ({counts['train']} records)")
    print(f"test:         {paths.test_path} ({counts['test']} records)")
    print(f"manifest:     {paths.root / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
