#!/usr/bin/env python3
"""Evaluate one checkpoint or export on every benchmark of a suite, then print the paper's table.

    python eval/run_suite.py --model runs/demo/export --suite paper --data-root /data/eval
    python eval/run_suite.py --model EXPORT --suite quick --max-samples 50
    python -m torch.distributed.run --standalone --nproc_per_node 8 eval/run_suite.py ... \\
        --device cuda                                    # data parallel, same files
    python eval/run_suite.py --table-only --suite paper --out gs://bucket/eval/my-model --paper

``--suite`` is a file or a name in eval/suites/ (paper, quick, general, knowledge, ocr_chart,
vision_centric). Results land in ``OUT/<benchmark>/`` (default ``eval_results/<model name>``)
exactly as ``cambrian-eval`` writes them, so ``cambrian-tabulate OUT`` reads them too. The logic,
the suite format and the exit statuses: ``cambrian_train/eval/suite.py``; usage: eval/README.md.
"""

import sys
from pathlib import Path

# run from a checkout without `pip install -e .` too
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cambrian_train.eval.suite import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
