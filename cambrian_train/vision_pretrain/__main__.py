"""``python -m cambrian_train.vision_pretrain``: the ``cambrian-pretrain-towers`` command."""

import sys

from cambrian_train.vision_pretrain.cli import main

sys.exit(main())
