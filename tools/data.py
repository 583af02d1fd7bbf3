"""``cambrian-data`` from a checkout: convert, validate, stats, inspect (cambrian_train.data.cli).

python tools/data.py validate experiment=demo stage=finetune --workers 2
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cambrian_train.data.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
