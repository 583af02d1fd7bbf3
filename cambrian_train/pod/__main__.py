"""``python -m cambrian_train.pod``: the same as ``cambrian-pod``."""

from cambrian_train.pod.cli import main

raise SystemExit(main())
