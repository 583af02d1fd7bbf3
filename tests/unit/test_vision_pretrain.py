"""Tower pre-training (cambrian_train/vision_pretrain): the objectives against written-out
references and open_clip's own losses, the data stream, short runs that lower each family's
loss, the saved assets loading through the tower presets, determinism, and the probe."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from cambrian_train.data.synthetic import SHAPES, Scene, ShapeSpec, _caption
from cambrian_train.tiny import PRETRAIN_STEPS_ENV, ensure_asset
from cambrian_train.vision_pretrain import contrastive, dino, probe, scenes
from cambrian_train.vision_pretrain.train import build_model, pretrain_tower, recipe_for, train

FAMILIES = ("clip", "siglip", "convnext", "dinov2")


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=g), dim=-1)


# --- contrastive objectives -------------------------------------------------------------------


def test_clip_loss_equals_a_loop_over_pairs_and_open_clip():
    image, text = _unit(5, 4, 0).double(), _unit(5, 4, 1).double()
    log_scale = torch.tensor(math.log(7.0), dtype=torch.float64)
    sim = [[sum(image[i, d] * text[j, d] for d in range(4)).item() for j in range(5)]
           for i in range(5)]  # fmt: skip
    i2t = [-math.log(math.exp(7 * sim[i][i]) / sum(math.exp(7 * s) for s in sim[i]))
           for i in range(5)]  # fmt: skip
    t2i = [-math.log(math.exp(7 * sim[j][j]) / sum(math.exp(7 * sim[i][j]) for i in range(5)))
           for j in range(5)]  # fmt: skip
    expected = (sum(i2t) / 5 + sum(t2i) / 5) / 2
    got = contrastive.clip_loss(image, text, log_scale)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    from open_clip.loss import ClipLoss

    assert got.item() == pytest.approx(ClipLoss()(image, text, log_scale.exp()).item(), rel=1e-12)


def test_clip_loss_clamps_the_scale_at_100():
    image, text = _unit(4, 3, 2), _unit(4, 3, 3)
    capped = contrastive.clip_loss(image, text, torch.tensor(math.log(100.0)))
    assert contrastive.clip_loss(image, text, torch.tensor(9.0)).item() == capped.item()


def test_siglip_loss_equals_an_explicit_sum_over_pairs_and_open_clip():
    image, text = _unit(4, 3, 4).double(), _unit(4, 3, 5).double()
    t, b = math.log(10.0), -3.0
    total = 0.0
    for i in range(4):
        for j in range(4):
            z = math.exp(t) * sum(image[i, d] * text[j, d] for d in range(3)).item() + b
            label = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-label * z))  # -log sigmoid(label * z)
    expected = total / 4
    log_scale, bias = torch.tensor(t, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    got = contrastive.siglip_loss(image, text, log_scale, bias)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    from open_clip.loss import SigLipLoss

    peer = SigLipLoss()(image, text, log_scale.exp(), bias)
    assert got.item() == pytest.approx(peer.item(), rel=1e-12)


def test_contrastive_scalars_start_at_the_papers_values_and_normalise():
    clip, siglip = contrastive.ContrastiveScalars("clip"), contrastive.ContrastiveScalars("siglip")
    assert clip.log_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-6) and clip.bias is None
    assert siglip.log_scale.exp().item() == pytest.approx(10.0, rel=1e-6)
    assert siglip.bias.item() == -10.0
    image, text = torch.randn(3, 4), torch.randn(3, 4)
    unit = contrastive.clip_loss(
        torch.nn.functional.normalize(image, dim=-1),
        torch.nn.functional.normalize(text, dim=-1),
        clip.log_scale,
    )
    assert clip(5 * image, text).item() == pytest.approx(unit.item(), rel=1e-6)
    with pytest.raises(ValueError, match="objective='infonce'"):
        contrastive.ContrastiveScalars("infonce")


# --- self-distillation objectives -------------------------------------------------------------


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def test_dino_loss_equals_written_out_cross_entropy_with_centering_and_temperatures():
    g = torch.Generator().manual_seed(0)
    b, k, s_temp, t_temp = 3, 5, 0.1, 0.04
    student = [torch.randn(b, k, generator=g).double() for _ in range(4)]  # 2 global, 2 local
    teacher = [torch.randn(b, k, generator=g).double() for _ in range(2)]
    center = torch.randn(k, generator=g).double()
    total, pairs = 0.0, 0
    for ti in range(2):
        for si in range(4):
            if si == ti:
                continue
            per_image = []
            for i in range(b):
                q = _softmax([(teacher[ti][i, c] - center[c]).item() / t_temp for c in range(k)])
                p = _softmax([student[si][i, c].item() / s_temp for c in range(k)])
                per_image.append(-sum(q[c] * math.log(p[c]) for c in range(k)))
            total += sum(per_image) / b
            pairs += 1
    assert pairs == 6
    targets = [dino.centered_targets(t, center, t_temp) for t in teacher]
    got = dino.dino_loss(student, targets, s_temp)
    assert got.item() == pytest.approx(total / pairs, rel=1e-10)


def test_masked_patch_loss_averages_masked_patches_per_image():
    g = torch.Generator().manual_seed(1)
    b, p, k, s_temp = 3, 4, 6, 0.1
    student = torch.randn(b, p, k, generator=g).double()
    targets = torch.softmax(torch.randn(b, p, k, generator=g).double(), -1)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    per_image = []
    for i in (0, 2):  # image 1 has no masked patch and does not count
        ces = []
        for j in range(p):
            if mask[i, j]:
                lp = [math.log(v) for v in _softmax([student[i, j, c].item() / s_temp
                                                     for c in range(k)])]  # fmt: skip
                ces.append(-sum(targets[i, j, c].item() * lp[c] for c in range(k)))
        per_image.append(sum(ces) / len(ces))
    got = dino.masked_patch_loss(student, targets, mask, s_temp)
    assert got.item() == pytest.approx(sum(per_image) / 2, rel=1e-10)
    none = dino.masked_patch_loss(student, targets, torch.zeros(b, p, dtype=torch.bool), s_temp)
    assert none.item() == 0.0


def test_sinkhorn_targets_follow_the_written_out_iterations_and_balance_prototypes():
    g = torch.Generator().manual_seed(2)
    n, k, temp = 6, 4, 0.5
    logits = torch.randn(n, k, generator=g).double()
    q = [[math.exp(logits[i, c].item() / temp) for i in range(n)] for c in range(k)]  # [K][N]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(3):
        q = [[v / sum(row) / k for v in row] for row in q]
        cols = [sum(q[c][i] for c in range(k)) for i in range(n)]
        q = [[q[c][i] / cols[i] / n for i in range(n)] for c in range(k)]
    expected = torch.tensor(
        [[q[c][i] * n for c in range(k)] for i in range(n)], dtype=torch.float64
    )
    got = dino.sinkhorn_targets(logits, temp, iterations=3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.ones(n, dtype=torch.float64))
    many = dino.sinkhorn_targets(logits, temp, iterations=200)
    torch.testing.assert_close(many.sum(0), torch.full((k,), n / k, dtype=torch.float64))


def test_center_and_ema_updates():
    center = torch.tensor([1.0, 2.0])
    dino.update_center(center, torch.tensor([[3.0, 0.0], [5.0, 4.0]]), momentum=0.75)
    torch.testing.assert_close(center, torch.tensor([0.75 * 1 + 0.25 * 4, 0.75 * 2 + 0.25 * 2]))
    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    for module, value in ((student, 1.0), (teacher, 3.0)):
        torch.nn.init.constant_(module.weight, value)
        torch.nn.init.constant_(module.bias, value)
    dino.ema_update(teacher, student, momentum=0.9)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 0.9 * 3 + 0.1 * 1))
    assert dino.cosine_schedule(0.99, 1.0, 0, 11) == 0.99
    assert dino.cosine_schedule(0.99, 1.0, 10, 11) == 1.0
    assert dino.cosine_schedule(0.99, 1.0, 5, 11) == pytest.approx(0.995)


def test_multi_crop_of_the_whole_image_is_the_image_or_its_mirror():
    images = torch.randn(32, 3, 8, 8)
    crops = dino.multi_crop(images, 8, (1.0, 1.0), torch.Generator().manual_seed(0))
    same = [torch.allclose(c, x, atol=1e-5) for c, x in zip(crops, images)]
    mirror = [torch.allclose(c, x.flip(-1), atol=1e-5) for c, x in zip(crops, images)]
    assert all(s or m for s, m in zip(same, mirror)) and any(same) and any(mirror)
    small = dino.multi_crop(images, 4, (0.1, 0.4), torch.Generator().manual_seed(0), flip=False)
    assert small.shape == (32, 3, 4, 4)


def test_dino_head_outputs_cosines():
    head = dino.DINOHead(8, 16, 4, 10)
    out = head(torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 10) and out.abs().max() <= 1 + 1e-6


# --- data -------------------------------------------------------------------------------------


def test_shape_twins_keep_the_layout_and_change_the_kinds():
    rng = random.Random(0)
    for index in range(40):
        scene = scenes.sample_scene(7, "pretrain", index, 64)
        twin = scenes.shape_twin(scene, rng)
        assert [s.box for s in twin.shapes] == [s.box for s in scene.shapes]
        assert [s.color for s in twin.shapes] == [s.color for s in scene.shapes]
        assert (twin.word, twin.background) == (scene.word, scene.background)
        kinds = [s.kind for s in twin.shapes]
        assert len(set(kinds)) == len(kinds) and set(kinds) <= set(SHAPES)
        assert kinds != [s.kind for s in scene.shapes] and _caption(twin) != _caption(scene)


def test_pretrain_batches_are_deterministic_fresh_and_half_twins():
    a_scenes, a_pixels = scenes.pretrain_batch(3, 0, 8, 64)
    b_scenes, b_pixels = scenes.pretrain_batch(3, 0, 8, 64)
    assert a_scenes == b_scenes and torch.equal(a_pixels, b_pixels)
    assert a_pixels.shape == (8, 3, 64, 64) and a_pixels.dtype == torch.uint8
    assert [s.shapes[0].box for s in a_scenes[:4]] == [s.shapes[0].box for s in a_scenes[4:]]
    next_scenes, _ = scenes.pretrain_batch(3, 1, 8, 64)
    assert not set(a_scenes) & set(next_scenes)
    words = [scenes.sample_scene(3, "pretrain", i, 64).word for i in range(200)]
    assert 60 < sum(w is not None for w in words) < 140  # about half carry a word
    with pytest.raises(ValueError, match="batch_size must be even"):
        scenes.pretrain_batch(3, 0, 7, 64)


def test_captions_tokenize_with_eos_then_padding():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ensure_asset("tokenizer"))
    ids = scenes.tokenize_captions(tok, ["a red circle.", "a blue square and a red circle."])
    assert ids.shape == (2, scenes.CONTEXT_LENGTH)
    for row, text in zip(ids.tolist(), ["a red circle.", "a blue square and a red circle."]):
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        assert row[n] == tok.eos_token_id and set(row[n + 1 :]) == {tok.pad_token_id}
    with pytest.raises(ValueError, match="CONTEXT_LENGTH"):
        scenes.tokenize_captions(tok, ["a red circle " * 20])


# --- training, saving, loading ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_a_short_run_lowers_the_loss(family):
    steps = {"clip": 30, "siglip": 30, "convnext": 20, "dinov2": 16}[family]
    recipe = dataclasses.replace(recipe_for(family, steps), batch_size=32)
    model, tokenizer = build_model(family, recipe)
    losses = train(model, tokenizer, recipe, log_every=0)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses


def _weights(path, family):
    name = "open_clip_model.safetensors" if family == "convnext" else "model.safetensors"
    return load_file(str(path / name))


@pytest.mark.parametrize("family", ["clip", "convnext"])
def test_same_recipe_same_weights(family, tmp_path):
    recipe = dataclasses.replace(recipe_for(family, 2), batch_size=8)
    pretrain_tower(family, tmp_path / "a", recipe, log_every=0)
    pretrain_tower(family, tmp_path / "b", recipe, log_every=0)
    pretrain_tower(family, tmp_path / "c", dataclasses.replace(recipe, seed=1), log_every=0)
    a, b, c = (_weights(tmp_path / n, family) for n in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_pretrained_assets_load_through_the_presets_into_the_model(compose, monkeypatch):
    """The demo with all four _pt towers builds; each tower holds its asset's trained weights,
    not the random-init ones, and the asset is keyed by its budget."""
    from cambrian_train.models import build_model as build_vlm

    monkeypatch.setenv(PRETRAIN_STEPS_ENV, "2")
    cfg = compose(
        [
            "experiment=demo",
            "+model/vision_tower@model.towers.siglip=tiny_siglip_pt",
            "+model/vision_tower@model.towers.dino=tiny_dinov2_pt",
            "+model/vision_tower@model.towers.convnext=tiny_convnext_pt",
            "model.towers.convnext.num_tokens=64",  # the MLP connector needs equal grids
        ]
    )
    assert cfg.model.towers["clip"].checkpoint == ensure_asset("clip_pt")
    model = build_vlm(cfg.model)
    for name, family in (("clip", "clip"), ("siglip", "siglip"), ("dino", "dinov2")):
        tower = model.towers[name].model
        saved = type(tower).from_pretrained(ensure_asset(family + "_pt")).state_dict()
        random_init = type(tower).from_pretrained(ensure_asset(family)).state_dict()
        state = tower.state_dict()
        assert state.keys() == saved.keys() == random_init.keys(), name
        assert all(torch.equal(state[k], saved[k]) for k in saved), name
        assert any(not torch.equal(saved[k], random_init[k]) for k in saved), name
    trunk = model.towers["convnext"].trunk.state_dict()
    saved = load_file(f"{ensure_asset('convnext_pt')}/open_clip_model.safetensors")
    assert all(torch.equal(v, saved[f"visual.trunk.{k}"]) for k, v in trunk.items())
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for tower in model.towers.values():
        from cambrian_train.models.vision.base import normalize_pixels

        out = tower(normalize_pixels(pixels, tower.image_spec))
        assert out.shape[:2] == (2, tower.num_tokens) and torch.isfinite(out).all()
    monkeypatch.setenv(PRETRAIN_STEPS_ENV, "3")
    assert ensure_asset("clip_pt") != cfg.model.towers["clip"].checkpoint


def test_bad_budget_and_unknown_asset_are_clear(monkeypatch):
    monkeypatch.setenv(PRETRAIN_STEPS_ENV, "many")
    with pytest.raises(ValueError, match=f"{PRETRAIN_STEPS_ENV}='many'"):
        ensure_asset("clip_pt")
    with pytest.raises(ValueError, match="clip_pt"):
        ensure_asset("clip_pre")
    with pytest.raises(ValueError, match="tower family 'vit'"):
        recipe_for("vit")


def test_cli_trains_into_a_directory(tmp_path, capsys):
    from cambrian_train.vision_pretrain.cli import main

    assert main(["--towers", "siglip", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert "siglip_pt:" in capsys.readouterr().out
    assert (tmp_path / "siglip_pt" / "preprocessor_config.json").is_file()
    with pytest.raises(SystemExit):
        main(["--towers", "vit"])


# --- the probe --------------------------------------------------------------------------------


def test_attribute_labels_of_a_written_scene():
    shapes = (
        ShapeSpec("circle", "red", (2, 2, 14, 14)),  # 144 px²
        ShapeSpec("triangle", "blue", (40, 30, 60, 50)),  # 400 px², centre x 50: right
        ShapeSpec("square", "green", (20, 40, 40, 60)),  # 400 px² too, but later in order
    )
    scene = Scene(shapes, (240, 240, 240), word="SUN", word_box=(0, 50, 10, 60))
    labels = probe.attribute_labels(scene, 64)
    assert labels == dict(color=2, shape=2, count=2, side=1, word=3)  # blue, triangle, 3, SUN
    plain = Scene(shapes[:1], (240, 240, 240))
    assert probe.attribute_labels(plain, 64) == dict(color=0, shape=0, count=0, side=0, word=0)


def test_logistic_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=g) * 4
    y = torch.arange(300) % 3
    x = centres[y] + 0.3 * torch.randn(300, 5, generator=g)
    accuracy = probe.probe_accuracy(x[:200], y[:200], x[200:], y[200:], 3)
    assert accuracy == 1.0
    noise = torch.randn(300, 5, generator=g)
    assert probe.probe_accuracy(noise[:200], y[:200], noise[200:], y[200:], 3) < 0.6
