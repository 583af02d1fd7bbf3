"""Colour-presence linear probes along the vision path of trained demo runs (issue 15).

    python tools/probe_colour.py runs/demo [runs/demo_sva ...] [--data data/synthetic-0]

For each run's ``finetune/checkpoint``: the tower features, the SVA's per-tower projection (SVA
runs) and the connector's output tokens of 1,500 training images and the 300 test images of the
synthetic shapes set; a logistic-regression probe per palette colour ("is there a red shape?",
labels read from the exact palette pixels) on mean- and max-pooled tokens is fitted on the
training images and scored on the test images. Prints the accuracy per stage and the
always-absent baseline: where a stage's accuracy drops, that stage loses colour information.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cambrian_train.data.synthetic import PALETTE
from cambrian_train.infer.load import load_pretrained
from cambrian_train.models.vision.base import normalize_pixels

NUM_TRAIN = 1500
CHUNK = 100


def load_images(root: Path):
    train = [json.loads(line) for line in open(root / "train.jsonl")][:NUM_TRAIN]
    test = [json.loads(line) for line in open(root / "test.jsonl")]
    images = [
        np.asarray(Image.open(root / "images" / r["image"]).convert("RGB")) for r in train + test
    ]
    colours = [np.array(c) for c in PALETTE.values()]
    labels = [[np.all(im == c, axis=-1).any() for c in colours] for im in images]
    pixels = torch.tensor(np.stack(images)).permute(0, 3, 1, 2)  # uint8 [N, 3, S, S]
    return pixels, torch.tensor(labels, dtype=torch.float32)


def probe(tokens: torch.Tensor, labels: torch.Tensor, steps: int = 300) -> float:
    """Held-out accuracy of per-colour logistic regressions on [mean; max] over tokens."""
    x = torch.cat([tokens.mean(1), tokens.amax(1)], -1).float()
    x = (x - x[:NUM_TRAIN].mean(0)) / (x[:NUM_TRAIN].std(0) + 1e-5)
    w = torch.zeros(x.shape[1], labels.shape[1], requires_grad=True)
    b = torch.zeros(labels.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        logits = x[:NUM_TRAIN] @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[:NUM_TRAIN])
        (loss + 1e-3 * (w**2).sum()).backward()
        opt.step()
    predicted = (x[NUM_TRAIN:] @ w + b) > 0
    return (predicted == labels[NUM_TRAIN:].bool()).float().mean().item()


@torch.no_grad()
def stages(run: str, pixels: torch.Tensor) -> dict:
    model, _, _ = load_pretrained(str(Path(run) / "finetune" / "checkpoint"))
    model.eval()
    name, tower = next(iter(model.towers.items()))
    chunks = [pixels[i : i + CHUNK] for i in range(0, len(pixels), CHUNK)]
    features = torch.cat([tower(normalize_pixels(c, tower.image_spec)) for c in chunks])
    out = {"tower features": features}
    connector = model.connector
    if hasattr(connector, "mm_projector_aux_0"):
        out["SVA per-tower projection"] = connector.mm_projector_aux_0(features)
    parts = [features[i : i + CHUNK] for i in range(0, len(features), CHUNK)]
    out["connector output"] = torch.cat([connector({name: p}, None)[0] for p in parts])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-0"))
    args = parser.parse_args()
    torch.manual_seed(0)
    pixels, labels = load_images(args.data)
    print(f"always-absent baseline: {1 - labels[NUM_TRAIN:].mean().item():.3f}")
    for run in args.runs:
        scores = {k: f"{probe(v, labels):.3f}" for k, v in stages(run, pixels).items()}
        print(run, scores)


if __name__ == "__main__":
    main()
