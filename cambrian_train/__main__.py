"""``python -m cambrian_train`` — the same as the ``cambrian-train`` command."""

from cambrian_train.cli import main

main()
