"""The synthetic suite's benchmarks, the text-only prior from training data, and the suite's
table layout (cambrian_train.eval.benchmarks.synthetic_suite, eval/priors.py, eval/tables.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cambrian_train.eval.benchmarks import BENCHMARKS, get_benchmark
from cambrian_train.eval.cli import main as eval_main
from cambrian_train.eval.priors import TextPrior, question_key
from cambrian_train.eval.table_output import main as tabulate
from cambrian_train.eval.tables import SYNTHETIC_LAYOUT, build_table, load_results
from cambrian_train.eval.vqa import Question, baselines


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def suite_test_file(tmp_path: Path) -> Path:
    """Four spatial items (two MCQ, two short) and one count item, images as tiny PNG files."""
    (tmp_path / "images").mkdir()
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / "images" / f"{name}.png").write_bytes(b"png")
    mcq = (
        "Is the red circle left or right of the blue square?\nA. left\nB. right\n"
        "Answer with the option's letter."
    )
    short = (
        "Is the red circle left or right of the blue square? Answer with a single word or number."
    )
    rows = [
        dict(id="a", image="a.png", question=mcq, answer="B", choices=["left", "right"]),
        dict(id="b", image="b.png", question=mcq, answer="A", choices=["left", "right"]),
        dict(id="c", image="c.png", question=short, answer="left", choices=[]),
        dict(id="d", image="d.png", question=short, answer="right", choices=[]),
        dict(id="e", image="e.png", question="How many shapes are there? ...", answer="3"),
    ]
    for row in rows[:4]:
        fmt = "mcq" if row["choices"] else "short"
        row.update(task="spatial", template=f"spatial/horizontal/{fmt}")
    rows[4].update(task="count", template="count/how_many/short", choices=[])
    return write_jsonl(tmp_path / "test.jsonl", rows)


def test_every_task_is_registered_in_its_category():
    names = [n for n in BENCHMARKS if n.startswith("syn_")]
    assert len(names) == 12
    counts = {}
    for name in names:
        counts[BENCHMARKS[name].category] = counts.get(BENCHMARKS[name].category, 0) + 1
    assert counts == {"General": 3, "Knowledge": 2, "OCR & Chart": 3, "Vision-Centric": 4}


def test_suite_benchmark_loads_its_task_and_scores_by_letter_and_exact_match(tmp_path):
    bench = get_benchmark("syn_spatial")
    items = bench.load(suite_test_file(tmp_path))
    assert [i.id for i in items] == ["a", "b", "c", "d"]  # the count item is another task's
    assert items[0].prompt.startswith("<image>\nIs the red circle") and items[0].choices
    generations = ["B", "the answer is (B)", "Left.", "left"]
    extracted = [bench.extract(g, i) for g, i in zip(generations, items)]
    assert extracted == ["B", "B", "left", "left"]
    results = bench.score(items, extracted)
    # a: B == B right; b: B != A wrong; c: left right; d: left != right wrong -> 2 of 4
    assert results["score"] == pytest.approx(50.0)
    assert results["by_format"] == {"mcq": 50.0, "short": 50.0}
    assert results["count"] == 4 and results["unparsed"] == 0
    # an option's text counts as its letter; an answer naming no option is unparsed
    assert bench.extract("right", items[0]) == "B" and bench.extract("up", items[0]) == ""


def test_mcq_gold_must_be_an_option_letter(tmp_path):
    path = suite_test_file(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["answer"] = "C"
    write_jsonl(path, rows)
    with pytest.raises(ValueError, match="item a answer 'C' is not an option letter of its 2"):
        get_benchmark("syn_spatial").load(path)


def conversation(question: str, answer: str) -> list:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def test_prior_is_learned_from_train_and_not_from_test():
    # train: "Is it red?" is mostly "no"; the test set itself answers it "yes" more often
    train = [{"conversations": conversation("Is it red?", a)} for a in ["no", "no", "yes"]]
    train += [{"conversations": conversation("Q unseen form 1", "3"), "template": "count"}]
    train += [{"conversations": conversation("Q unseen form 2", "3"), "template": "count"}]
    train += [{"conversations": conversation("Q unseen form 3", "4"), "template": "count"}]
    prior = TextPrior.from_records(train)
    test = [
        Question("1", "i.png", "Is it red?", "yes", []),
        Question("2", "i.png", "Is it red?", "yes", []),
        Question("3", "i.png", "Is it red?", "no", []),
        Question("4", "i.png", "Q never seen", "3", [], template="count"),
        Question("5", "i.png", "Q never seen either", "no", []),
    ]
    # by hand: "Is it red?" -> "no" (2 of 3 in train); item 4 -> its template "count" -> "3"
    # (2 of 3); item 5 -> the overall majority: "no" 2, "3" 2, "yes" 1, "4" 1, a tie -> "3"
    assert [prior.predict(q.question, q.template)[0] for q in test] == ["no", "no", "no", "3", "3"]
    assert [prior.predict(q.question, q.template)[1] for q in test] == [
        "text",
        "text",
        "text",
        "template",
        "overall",
    ]
    scores = baselines(test, prior)
    # right: item 3 (no) and item 4 (3) -> 2/5; a prior fitted on the test set would say "yes"
    # for "Is it red?" and score 3/5 on those items alone
    assert scores["text_only_prior_train"] == pytest.approx(2 / 5)
    assert scores["majority_class_train"] == pytest.approx(1 / 5)  # "3" is item 4's answer only


def test_question_key_ignores_image_tags_and_spacing():
    assert question_key("<image>\nHow many?\nA. 1") == question_key("How many? A. 1")


def test_text_prior_through_cambrian_eval_is_a_baseline_row(tmp_path, capsys):
    test = suite_test_file(tmp_path)
    mcq_q = json.loads(test.read_text().splitlines()[0])["question"]
    short_q = json.loads(test.read_text().splitlines()[2])["question"]
    train = [
        {"conversations": conversation(mcq_q, "A"), "template": "spatial/horizontal/mcq"},
        {"conversations": conversation(short_q, "right"), "template": "spatial/horizontal/short"},
    ]
    train_path = write_jsonl(tmp_path / "train.jsonl", train)
    out = tmp_path / "out"
    status = eval_main(
        ["--text-prior", str(train_path), "--benchmark", "syn_spatial", "--data", str(test)]
        + ["--out", str(out)]
    )
    assert status == 0
    results = json.loads((out / "syn_spatial" / "results.json").read_text())
    # prior: MCQ -> "A" (right for b only), short -> "right" (right for d only): 2 of 4
    assert results["score"] == pytest.approx(50.0)
    assert results["baseline"] is True and results["model"] == "text-only-prior"
    assert results["prior"]["answered_from"] == {"text": 4, "template": 0, "overall": 0}
    assert eval_main(["--benchmark", "syn_spatial", "--data", str(test)]) == 2
    assert "exactly one of --model PATH and --text-prior TRAIN" in capsys.readouterr().err


def write_result(root: Path, model: str, bench: str, score: float, baseline: bool = False):
    folder = root / model / bench
    folder.mkdir(parents=True)
    data = {"model": model, "benchmark": bench, "score": score}
    if baseline:
        data["baseline"] = True
    (folder / "results.json").write_text(json.dumps(data))


def test_synthetic_layout_with_category_averages(tmp_path, capsys):
    scores = {
        "syn_objects": 90,
        "syn_attributes": 60,
        "syn_captions": 30,  # General (90 + 60 + 30) / 3 = 60
        "syn_arithmetic": 20,
        "syn_shape_facts": 50,  # Knowledge 35
        "syn_ocr": 10,
        "syn_chart_max": 40,
        "syn_chart_value": 70,  # OCR & Chart 40
        "syn_spatial": 100,
        "syn_count": 80,
        "syn_relative_size": 60,
        "syn_depth": 40,  # Vision-Centric 70
    }  # overall (60 + 35 + 40 + 70) / 4 = 51.25
    for bench, score in scores.items():
        write_result(tmp_path, "model-a", bench, score)
        write_result(tmp_path, "text-only-prior", bench, 25.0, baseline=True)
    write_result(tmp_path, "model-b", "syn_spatial", 55.0)  # its Vision-Centric avg is missing
    assert tabulate([str(tmp_path), "--format", "csv"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    labels = header.split(",")
    assert labels[:5] == ["model", "source", "Objects", "Attributes", "Captions"]
    assert labels[5] == "General avg" and labels[-1] == "Overall"
    assert labels.count("Vision-Centric avg") == 1
    table = {row.split(",")[0]: dict(zip(labels, row.split(","))) for row in rows}
    assert list(table) == ["text-only-prior", "model-a", "model-b"]  # the baseline first
    a = table["model-a"]
    assert (a["General avg"], a["Knowledge avg"], a["OCR & Chart avg"]) == ("60.0", "35.0", "40.0")
    assert (a["Vision-Centric avg"], a["Overall"]) == ("70.0", "51.2")  # 51.25 at one decimal
    assert table["text-only-prior"]["source"] == "baseline"
    assert table["text-only-prior"]["Overall"] == "25.0"
    assert table["model-b"]["Vision-Centric avg"] == "" and table["model-b"]["Spatial"] == "55.0"
    built = build_table(load_results([tmp_path]))
    assert built.rows[1].overall == pytest.approx(51.25)
    assert any("model-b lacks Count, Rel. size, Depth order" in n for n in built.notes)


def test_layout_choice_and_paper_rows(tmp_path, capsys):
    write_result(tmp_path, "m", "syn_count", 50.0)
    assert build_table(load_results([tmp_path])).columns[1].label == "Count"
    assert build_table(load_results([tmp_path]), layout="paper").columns[1].group == "Other"
    assert tabulate([str(tmp_path), "--paper"]) == 2
    assert "exist only for the paper layout" in capsys.readouterr().err
    write_result(tmp_path, "m", "mmvp", 40.0)  # a paper benchmark too: the paper layout
    columns = build_table(load_results([tmp_path])).columns
    assert [c.key for c in columns if c.kind == "score"] == ["mmvp", "syn_count"]
    assert SYNTHETIC_LAYOUT.category_benchmarks("Knowledge") == (
        "syn_arithmetic",
        "syn_shape_facts",
    )
