"""Variants × seeds: how runs are composed, the t-intervals, the suite's averages, the tables."""

from __future__ import annotations

import json
import math

import pytest

from cambrian_train.repro import Scores, comparison_markdown, variant_overrides, write_comparison
from cambrian_train.repro.report import aggregate, benchmark_scores, paired_differences
from cambrian_train.repro.stats import estimate, t_cdf, t_quantile
from cambrian_train.repro.variants import check_variants, run_seeds

# two-sided 95 % Student t values from a printed table (e.g. NIST/SEMATECH e-Handbook 1.4.2.10)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile(0.95, df) == pytest.approx(T_TABLE[df], abs=6e-4)


def test_t_cdf_closed_forms():
    # df 1 is the Cauchy distribution, df 2 has F(x) = 1/2 + x / (2 sqrt(2 + x^2))
    for x in (0.3, 1.0, 4.0):
        assert t_cdf(x, 1) == pytest.approx(0.5 + math.atan(x) / math.pi, abs=1e-9)
        assert t_cdf(-x, 2) == pytest.approx(0.5 - x / (2 * math.sqrt(2 + x * x)), abs=1e-9)


def test_estimate_by_hand():
    # mean 62, s = 2, half width 4.303 * 2 / sqrt(3)
    got = estimate([60.0, 62.0, 64.0])
    assert got.mean == pytest.approx(62.0)
    assert got.half_width == pytest.approx(4.3027 * 2 / math.sqrt(3), abs=1e-3)
    assert got.format() == "62.0 ± 5.0"
    one = estimate([61.0])
    assert one.half_width is None and one.low is None and one.format() == "61.0"
    with pytest.raises(ValueError, match="no values"):
        estimate([])


def _results(score, **by_type):
    return {"score": score, "metrics": {"by_question_type": by_type}}


def test_suite_scores_average_categories_then_categories():
    results = {
        "syn_objects": _results(30.0),
        "syn_attributes": _results(60.0),
        "syn_arithmetic": _results(20.0),
        "syn_spatial": _results(50.0),
        "syn_count": _results(90.0),
        "syn_depth": _results(70.0),
    }
    scores = benchmark_scores(results)
    # General (30+60)/2 = 45, Knowledge 20, Vision-Centric (50+90+70)/3 = 70
    assert scores.categories == pytest.approx(
        {"General": 45.0, "Knowledge": 20.0, "Vision-Centric": 70.0}
    )
    assert list(scores.categories) == ["General", "Knowledge", "Vision-Centric"]
    assert scores.overall == pytest.approx((45 + 20 + 70) / 3)  # not the mean of the six (53.3)
    assert scores.formats == {}


def test_suite_scores_average_each_answer_format_over_benchmarks():
    results = {
        "syn_objects": {"score": 50.0, "metrics": {"by_format": {"mcq": 40.0, "short": 60.0}}},
        "syn_count": {"score": 30.0, "metrics": {"by_format": {"mcq": 20.0, "short": 40.0}}},
        "syn_depth": {"score": 80.0, "metrics": {"by_format": {"short": 80.0}}},  # no MCQ item
    }
    scores = benchmark_scores(results)
    assert scores.formats == pytest.approx({"short": 60.0, "mcq": 30.0})
    assert scores.column_formats["syn_depth"] == {"short": 80.0}
    assert Scores.from_dict(scores.to_dict()) == scores
    assert list(scores.summary()) == [
        "General",
        "Vision-Centric",
        "Overall",
        "short answer",
        "multiple choice",
    ]


def test_shapes_scores_use_question_types():
    scores = benchmark_scores({"synthetic": _results(61.5, shape=40.0, color=70.0)})
    assert scores.columns == {"color": 70.0, "shape": 40.0}
    assert scores.categories == {} and scores.overall == 61.5


def _row(seed_scores, **extra):
    seeds = list(range(len(seed_scores)))
    runs = {
        str(s): {"checkpoint": f"c{s}", "train_minutes": 2.0, "scores": sc.to_dict()}
        for s, sc in zip(seeds, seed_scores)
    }
    return {
        "connector": "mlp2x_gelu",
        "towers": "clip",
        "stage 1": "yes",
        "trained towers": "none",
        "seeds": seeds,
        "runs": runs,
        **aggregate([sc.to_dict() for sc in seed_scores]),
        **extra,
    }


def test_tables_intervals_and_paired_differences(tmp_path):
    def s(general, vision):
        return Scores(
            {"a": general, "b": vision},
            {"General": general, "Vision-Centric": vision},
            (general + vision) / 2,
        )

    base = _row([s(40, 60), s(44, 62), s(42, 64)])
    other = _row([s(41, 70), s(46, 71), s(45, 75)], connector="sva")
    prior = Scores({"a": 20.0, "b": 39.0}, {"General": 20.0, "Vision-Centric": 39.0}, 29.5)
    rows = {"mlp": base, "sva": other}
    table = comparison_markdown(rows, prior, [0, 1, 2])
    lines = table.splitlines()
    header = "| variant | connector | towers | stage 1 | trained towers | General |"
    assert header + " Vision-Centric | Overall | train min |" in lines
    assert "| text-only prior (train) | – | – | – | – | 20.0 | 39.0 | 29.5 | – |" in lines
    # mlp General: 42 ± 4.303 * 2 / sqrt(3) = 5.0; Vision-Centric 62 ± 5.0; overall 50, 53, 53:
    # s = sqrt(3), so 52 ± 4.303
    assert (
        "| mlp | mlp2x_gelu | clip | yes | none | 42.0 ± 5.0 | 62.0 ± 5.0 | 52.0 ± 4.3 | 2.0 |"
        in lines
    )
    # paired: General diffs 1, 2, 3 -> 2 ± 4.303 * 1 / sqrt(3) = 2.5; Vision-Centric 10, 9, 11
    # -> 10 ± 2.5; overall 5.5, 5.5, 7 -> 6 ± 4.303 * sqrt(0.75) / sqrt(3) = 2.2
    diffs = paired_differences(other, base)
    assert diffs["General"].mean == pytest.approx(2.0)
    assert diffs["General"].half_width == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    assert "| sva | +2.0 ± 2.5 | +10.0 ± 2.5 | +6.0 ± 2.2 |" in lines
    write_comparison(rows, prior, str(tmp_path), [0, 1, 2])
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["prior"]["overall"] == 29.5
    assert saved["variants"]["sva"]["categories"]["Vision-Centric"]["values"] == [70, 71, 75]
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    assert (tmp_path / "comparison.md").read_text() == table


def test_variant_overrides_set_seed_dir_and_name():
    base = ["experiment=repro_small", "output_dir=/x", "name=n", "seed=3", "variant_quick=true"]
    got = variant_overrides(base, ["model/connector=tiny_sva"], "/runs/r", "sva", 2)
    assert got == [
        "experiment=repro_small",
        "variant_quick=true",
        "model/connector=tiny_sva",
        "seed=2",
        "output_dir=/runs/r/sva/seed-2",
        "name=sva-seed2",
    ]


def test_repro_small_variants_compose(compose):
    cfg = compose(["experiment=repro_small"])
    assert cfg.variant_seeds == [0, 1, 2] and cfg.data.synthetic.kind == "suite"
    got = {}
    for name, overrides in cfg.variants.items():
        variant = compose(["experiment=repro_small", *overrides], True)
        got[name] = (
            list(variant.model.towers),
            variant.model.connector.name,
            variant.model.connector.insert.count,
            variant.run_stages,
            [t.trainable for t in variant.model.towers.values()],
        )
    both = ["pretrain", "finetune"]
    assert got == {
        "mlp_clip": (["clip"], "mlp2x_gelu", 0, both, [False]),
        "sva_clip": (["clip"], "sva", 0, both, [False]),
        "sva_clip_in_llm": (["clip"], "sva", 2, both, [False]),
        "mlp_dinov2": (["dinov2"], "mlp2x_gelu", 0, both, [False]),
        "mlp_clip_dinov2": (["clip", "dinov2"], "mlp2x_gelu", 0, both, [False, False]),
        "mlp_clip_siglip_dinov2": (
            ["clip", "siglip", "dinov2"],
            "mlp2x_gelu",
            0,
            both,
            [False, False, False],
        ),
        "mlp_clip_no_stage1": (["clip"], "mlp2x_gelu", 0, ["finetune"], [False]),
        "mlp_clip_trained": (["clip"], "mlp2x_gelu", 0, both, [True]),
    }


def test_seed_and_variant_checks(compose):
    cfg = compose(["experiment=repro_small"])
    assert run_seeds(cfg) == [0, 1, 2]
    cfg.variant_quick = True
    assert run_seeds(cfg) == [0]
    cfg.variant_seeds = []
    with pytest.raises(ValueError, match="variant_seeds is empty"):
        run_seeds(cfg)
    cfg.variant_seeds = [1, 1]
    with pytest.raises(ValueError, match=r"variant_seeds=\[1, 1\] repeats"):
        run_seeds(cfg)
    cfg.variants["bad"] = ["seed=4"]
    with pytest.raises(ValueError, match=r"variants.bad sets \['seed=4'\]"):
        check_variants(cfg, [])


def test_unknown_only_variant_is_an_error(compose):
    from cambrian_train.repro import run_variants

    cfg = compose(["experiment=repro_small", "only_variants=[nope]"])
    with pytest.raises(ValueError, match=r"only_variants=\['nope'\]"):
        run_variants(cfg, [], lambda overrides: cfg)


def test_format_table_shows_each_benchmark_per_answer_format():
    def s(short, mcq):
        return Scores(
            {"syn_count": (short + mcq) / 2},
            {"Vision-Centric": (short + mcq) / 2},
            (short + mcq) / 2,
            {"short": short, "mcq": mcq},
            {"syn_count": {"short": short, "mcq": mcq}},
        )

    row = _row([s(90, 20), s(80, 30)])
    # means over the two seeds: short (90 + 80) / 2 = 85, mcq (20 + 30) / 2 = 25
    assert row["column_formats"]["syn_count"]["short"]["values"] == [90, 80]
    prior = Scores({"syn_count": 10.0}, {"Vision-Centric": 10.0}, 10.0, {}, {"syn_count": {}})
    prior.column_formats = {"syn_count": {"mcq": 25.0}}
    lines = comparison_markdown({"mlp": row}, prior, [0, 1]).splitlines()
    assert "| text-only prior (train) | – / 25.0 |" in lines
    assert "| mlp | 85.0 / 25.0 |" in lines
    # a row scored before the split existed has no column_formats: dashes, not an error
    old = {k: v for k, v in row.items() if k != "column_formats"}
    assert "| old | – / – |" in comparison_markdown({"old": old}, prior, [0, 1]).splitlines()
