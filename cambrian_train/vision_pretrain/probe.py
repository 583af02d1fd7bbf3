"""Linear probes of frozen towers on held-out synthetic attributes (tools/probe_towers.py).

A tower is loaded from its preset exactly as the VLM loads it, and run frozen on scenes of the
``probe-train`` / ``probe-test`` streams (scenes.py; disjoint from the pre-training stream and
from the demo's data). Its output tokens (``select_layer``, ``num_tokens`` as configured: what
the connector sees) are average-pooled to a 2×2 grid and concatenated, so the features keep
coarse position; a multinomial logistic regression (L2, full-batch L-BFGS; the penalty chosen
on a fifth of the training images, then refit on all) is trained per attribute and scored on
the test images. Attributes of a scene (the "largest" shape: largest box, leftmost on ties):

``color`` (6) and ``shape`` (3) of the largest shape, ``count`` (1-3), ``side`` (is the largest
shape's centre left of the middle), ``word`` (the written word, or none: 9 classes).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from cambrian_train.data.synthetic import COLORS, SHAPES, WORDS, Scene
from cambrian_train.models.vision.base import VisionTower, normalize_pixels
from cambrian_train.vision_pretrain.scenes import scene_batch

ATTRIBUTES = ("color", "shape", "count", "side", "word")
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)
LBFGS_STEPS = 100


def largest_shape(scene: Scene):
    """The shape with the largest box; the leftmost one (scene order) among equals."""
    area = [(s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) for s in scene.shapes]
    return scene.shapes[area.index(max(area))]


def attribute_labels(scene: Scene, image_size: int) -> Dict[str, int]:
    """Class index of every attribute of ``scene`` (see the module docstring)."""
    big = largest_shape(scene)
    centre = (big.box[0] + big.box[2]) / 2
    return dict(
        color=COLORS.index(big.color),
        shape=SHAPES.index(big.kind),
        count=len(scene.shapes) - 1,
        side=int(centre >= image_size / 2),
        word=0 if scene.word is None else 1 + WORDS.index(scene.word),
    )


NUM_CLASSES = dict(color=len(COLORS), shape=len(SHAPES), count=3, side=2, word=1 + len(WORDS))


def load_tower(preset: str, **overrides) -> VisionTower:
    """A tower from ``configs/model/vision_tower/<preset>.yaml`` through the VLM's own loader."""
    from omegaconf import OmegaConf

    import cambrian_train.models  # noqa: F401  (fills VISION_TOWERS)
    from cambrian_train.cli import CONFIG_DIR
    from cambrian_train.config.schema import VisionTowerConfig
    from cambrian_train.config.store import register_configs
    from cambrian_train.registry import VISION_TOWERS

    register_configs()  # the ${tiny_asset:NAME} resolver
    path = CONFIG_DIR / "model" / "vision_tower" / f"{preset}.yaml"
    if not path.is_file():
        raise ValueError(f"no tower preset {preset!r} ({path} does not exist)")
    node = OmegaConf.merge(OmegaConf.structured(VisionTowerConfig), OmegaConf.load(path), overrides)
    cfg = OmegaConf.to_object(node)
    return VISION_TOWERS.get(cfg.source)(cfg).eval()


@torch.no_grad()
def tower_features(tower: VisionTower, pixels: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """uint8 pixels [N, 3, S, S] → features [N, 4·C]: the tower's tokens pooled to 2×2."""
    out = []
    for chunk in pixels.split(batch_size):
        tokens = tower(normalize_pixels(chunk, tower.image_spec))  # [n, T, C]
        n, t, c = tokens.shape
        side = round(t**0.5)
        grid = tokens.transpose(1, 2).reshape(n, c, side, side)
        out.append(F.adaptive_avg_pool2d(grid, 2).flatten(1).float())  # [n, C·4]
    return torch.cat(out)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, penalty: float):
    """Multinomial logistic regression: mean cross-entropy + penalty·|W|² (bias free of it),
    minimised by L-BFGS from zero; returns (W [D, K], b [K])."""
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(x, y, params) -> float:
    weight, bias = params
    return float(((x @ weight + bias).argmax(-1) == y).float().mean())


def probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
) -> float:
    """Test accuracy of the probe; features standardised with the training statistics."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    cut = len(train_x) * 4 // 5
    scores = [
        _accuracy(
            train_x[cut:],
            train_y[cut:],
            fit_logistic(train_x[:cut], train_y[:cut], num_classes, penalty),
        )
        for penalty in PENALTIES
    ]
    best = PENALTIES[scores.index(max(scores))]
    return _accuracy(test_x, test_y, fit_logistic(train_x, train_y, num_classes, best))


def probe_data(num_train: int, num_test: int, image_size: int, seed: int = 0):
    """(pixels, labels) for the train and test streams; labels: attribute → [N] class ids."""
    out = []
    for split, n in (("probe-train", num_train), ("probe-test", num_test)):
        scenes, pixels = scene_batch(seed, split, 0, n, image_size)
        labels = {
            name: torch.tensor([attribute_labels(s, image_size)[name] for s in scenes])
            for name in ATTRIBUTES
        }
        out.append((pixels, labels))
    return out


def probe_tower(
    tower: VisionTower, data, attributes: Sequence[str] = ATTRIBUTES
) -> Dict[str, float]:
    """Test accuracy per attribute of linear probes on ``tower``'s frozen features."""
    (train_pixels, train_labels), (test_pixels, test_labels) = data
    train_x, test_x = tower_features(tower, train_pixels), tower_features(tower, test_pixels)
    return {
        name: probe_accuracy(
            train_x, train_labels[name], test_x, test_labels[name], NUM_CLASSES[name]
        )
        for name in attributes
    }


def majority_baseline(data, attributes: Sequence[str] = ATTRIBUTES) -> Dict[str, float]:
    """Accuracy of answering each attribute's most common training class."""
    (_, train_labels), (_, test_labels) = data
    out = {}
    for name in attributes:
        common = int(torch.bincount(train_labels[name]).argmax())
        out[name] = float((test_labels[name] == common).float().mean())
    return out


def format_table(rows: Dict[str, Dict[str, float]], attributes: List[str]) -> str:
    """Markdown table: one row per tower, accuracies in %."""
    head = "| tower | " + " | ".join(attributes) + " | mean |"
    lines = [head, "|---" * (len(attributes) + 2) + "|"]
    for name, scores in rows.items():
        values = [100 * scores[a] for a in attributes]
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {name} | {cells} | {sum(values) / len(values):.1f} |")
    return "\n".join(lines)
