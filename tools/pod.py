"""TPU VM pod operations: ``python tools/pod.py ...`` is ``cambrian-pod ...``."""

from cambrian_train.pod.cli import main

raise SystemExit(main())
