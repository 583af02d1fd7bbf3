"""``python -m cambrian_train.llm_pretrain``: build (or find) the ``llama_pt`` tiny asset and
print its pre-training report (held-out drill accuracy before and after, seconds)."""

import json
import logging

from cambrian_train.tiny import ensure_asset

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
path = ensure_asset("llama_pt")
with open(f"{path}/pretrain.json", encoding="utf-8") as handle:
    report = json.load(handle)
print(json.dumps({"path": path, **{k: report[k] for k in ("held_out_accuracy", "seconds")}}))
