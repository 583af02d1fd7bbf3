"""Turn eval results files into Cambrian-1 style tables (see cambrian_train.eval.table_output).

Installed as ``cambrian-tabulate``. Not named tools/tabulate.py: a script directory is first on
sys.path, and a ``tabulate.py`` there would shadow the ``tabulate`` package torch imports.

Example::

    python tools/tables.py runs/myrun/eval --paper --compare myrun=Cambrian-1-8B \
        --format latex --out table.tex --chart scores.png
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cambrian_train.eval.table_output import main

if __name__ == "__main__":
    sys.exit(main())
