"""Variants: how their overrides are composed and how the comparison is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cambrian_train.repro import comparison_markdown, variant_overrides, write_comparison


def test_variant_overrides_replace_output_dir_and_name():
    base = ["experiment=repro_small", "output_dir=/x", "name=n", "seed=3"]
    got = variant_overrides(base, ["model/connector=tiny_sva"], Path("/runs/r"), "sva")
    assert got == [
        "experiment=repro_small",
        "seed=3",
        "model/connector=tiny_sva",
        "output_dir=/runs/r/sva",
        "name=sva",
    ]


def test_repro_small_variants_compose(compose):
    cfg = compose(["experiment=repro_small"])
    assert set(cfg.variants) == {
        "mlp_clip",
        "sva_clip",
        "perceiver_clip",
        "mlp_clip_siglip",
        "mlp_clip_no_stage1",
    }
    two = compose(["experiment=repro_small", *cfg.variants["mlp_clip_siglip"]])
    assert list(two.model.towers) == ["clip", "siglip"]
    sva = compose(["experiment=repro_small", *cfg.variants["sva_clip"]])
    assert sva.model.connector.name == "sva"
    perceiver = compose(["experiment=repro_small", *cfg.variants["perceiver_clip"]], True)
    assert perceiver.model.connector.name == "perceiver"
    assert list(perceiver.model.towers) == ["clip"] and perceiver.run_stages == cfg.run_stages
    alone = compose(["experiment=repro_small", *cfg.variants["mlp_clip_no_stage1"]], True)
    assert alone.run_stages == ["finetune"]


def test_comparison_table_and_files(tmp_path):
    rows = {
        "a": {
            "connector": "mlp2x_gelu",
            "towers": "clip",
            "stage 1": "yes",
            "accuracy": 61.25,
            "by_type": {"color": 50.0, "count": 90.0},
            "train_minutes": 3.0,
        },
        "b": {
            "connector": "sva",
            "towers": "clip",
            "stage 1": "no",
            "accuracy": 40.0,
            "by_type": {"color": 20.0},
            "train_minutes": 4.25,
        },
    }
    table = comparison_markdown(rows)
    assert table.splitlines()[0] == (
        "| variant | connector | towers | stage 1 | accuracy | color | count | train (min) |"
    )
    assert "| a | mlp2x_gelu | clip | yes | 61.2 | 50.0 | 90.0 | 3.0 |" in table
    assert "| b | sva | clip | no | 40.0 | 20.0 | nan | 4.2 |" in table
    write_comparison(rows, tmp_path)
    assert json.loads((tmp_path / "comparison.json").read_text())["b"]["accuracy"] == 40.0
    assert (tmp_path / "comparison.png").stat().st_size > 1000


def test_unknown_only_variant_is_an_error(compose):
    from cambrian_train.repro import run_variants

    cfg = compose(["experiment=repro_small", "only_variants=[nope]"])
    with pytest.raises(ValueError, match=r"only_variants=\['nope'\]"):
        run_variants(cfg, [], lambda overrides: cfg)


def test_variant_trained_earlier_shows_no_time():
    row = {
        "connector": "mlp2x_gelu",
        "towers": "clip",
        "stage 1": "yes",
        "accuracy": 50.0,
        "by_type": {},
        "train_minutes": None,
    }
    assert comparison_markdown({"a": row}).splitlines()[-1] == (
        "| a | mlp2x_gelu | clip | yes | 50.0 | – |"
    )
