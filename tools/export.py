"""Export a run checkpoint or import official Cambrian-1 weights (same as ``cambrian-export``).

python tools/export.py runs/demo/finetune/checkpoint exports/demo
python tools/export.py runs/demo/pretrain/checkpoint exports/demo-connector --connector-only
python tools/export.py import-official /ckpt/cambrian-8b exports/cambrian-8b model=cambrian_8b
"""

from __future__ import annotations

import sys

from cambrian_train.infer.export_cli import main

if __name__ == "__main__":
    sys.exit(main())
