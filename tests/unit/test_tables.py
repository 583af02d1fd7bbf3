"""Tests for cambrian_train.eval.tables: results files -> paper-layout tables, CLI via main()."""

from __future__ import annotations

import csv
import io
import json
import logging

import pytest

from cambrian_train.eval import table_output, tables
from cambrian_train.eval.paper_results import PAPER_ROWS, paper_row

# Hand-picked scores on the paper's scale; MME-P and OCRBench chosen so that forgetting the /20 and
# /10 scaling changes every average that contains them.
FULL = {
    "mme": 1600.0,
    "mmbench": 70.0,
    "seed_img": 60.0,
    "gqa": 50.0,
    "sqa_img": 72.0,
    "mmmu": 36.0,
    "mathvista": 44.0,
    "ai2d": 68.0,
    "chartqa": 60.0,
    "ocrbench": 700.0,
    "textvqa": 64.0,
    "docvqa": 78.0,
    "mmvp": 40.0,
    "realworldqa": 56.0,
    "cvbench_2d": 62.0,
    "cvbench_3d": 66.0,
}


def write_result(root, model, bench, score, name=None):
    """One results file as the eval runner writes it."""
    path = root / (name or f"{model}__{bench}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": model,
        "benchmark": bench,
        "score": score,
        "count": 100,
        "metrics": {"accuracy": score},
        "prompt_suffix_sha256": "0" * 64,
        "decoding": {"temperature": 0.0},
    }
    path.write_text(json.dumps(record))
    return path


def run_cli(capsys, *argv):
    """main(argv) -> (exit status, stdout, stderr)."""
    status = table_output.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def parse_csv(text):
    return {row["model"]: row for row in csv.DictReader(io.StringIO(text))}


def test_averages_match_hand_computation_with_mme_and_ocrbench_scaling(tmp_path, capsys):
    for bench, score in FULL.items():
        write_result(tmp_path, "m", bench, score)
    write_result(tmp_path, "m", "pope", 86.0)  # "Other": shown, never averaged
    general = (1600 / 20 + 70 + 60 + 50) / 4
    knowledge = (72 + 36 + 44 + 68) / 4
    ocr_chart = (60 + 700 / 10 + 64 + 78) / 4
    vision = (40 + 56 + 62 + 66) / 4
    overall = (general + knowledge + ocr_chart + vision) / 4

    row = tables.build_table(tables.load_results([tmp_path])).rows[0]
    assert row.averages == pytest.approx(
        {
            "General": general,
            "Knowledge": knowledge,
            "OCR & Chart": ocr_chart,
            "Vision-Centric": vision,
        }
    )
    assert row.overall == pytest.approx(overall)

    status, out, _ = run_cli(capsys, tmp_path, "--format", "csv")
    assert status == 0
    cells = parse_csv(out)["m"]
    assert float(cells["General avg"]) == pytest.approx(general, abs=0.05)
    assert float(cells["OCR & Chart avg"]) == pytest.approx(ocr_chart, abs=0.05)
    assert float(cells["Overall"]) == pytest.approx(overall, abs=0.05)
    assert cells["MME-P"] == "1600.0" and cells["OCRBench"] == "700.0"  # own scale in cells
    assert cells["POPE"] == "86.0"
    header = next(csv.reader(io.StringIO(out)))
    assert header.index("Overall") < header.index("POPE")  # Other group after the averages


def test_missing_benchmark_gives_dash_and_footnote(tmp_path, capsys):
    for bench in ("mmbench", "seed_img", "gqa"):
        write_result(tmp_path, "m", bench, 50.0)
    status, out, _ = run_cli(capsys, tmp_path)
    assert status == 0
    header, _, row = out.splitlines()[:3]
    assert header == "| model | MMB | SEED-I | GQA | General avg | Overall |"
    assert row == "| m | 50.0 | 50.0 | 50.0 | – | – |"
    assert "- – General avg: m lacks MME-P" in out.splitlines()


def test_duplicate_model_benchmark_is_an_error_naming_both_files(tmp_path, capsys):
    first = write_result(tmp_path / "a", "m", "mmvp", 40.0)
    second = write_result(tmp_path / "b", "m", "mmvp", 41.0)
    with pytest.raises(ValueError, match="two results for model 'm', benchmark 'mmvp'") as err:
        tables.load_results([tmp_path])
    assert str(first) in str(err.value) and str(second) in str(err.value)
    status, _, stderr = run_cli(capsys, tmp_path)
    assert status == 2 and str(first) in stderr and str(second) in stderr


def test_same_file_named_twice_is_not_a_duplicate(tmp_path):
    path = write_result(tmp_path, "m", "mmvp", 40.0)
    assert len(tables.load_results([tmp_path, path])) == 1


def test_non_results_json_files_are_skipped_with_a_logged_reason(tmp_path, caplog):
    write_result(tmp_path, "m", "mmvp", 40.0)
    (tmp_path / "config.json").write_text(json.dumps({"lr": 1e-3}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.json").write_text("[1, 2]")
    (tmp_path / "sub" / "broken.json").write_text("{not json")
    (tmp_path / "notes.txt").write_text("not a json file")
    with caplog.at_level(logging.INFO, logger="cambrian_train.eval.tables"):
        results = tables.load_results([tmp_path])
    assert [(r.model, r.benchmark, r.score) for r in results] == [("m", "mmvp", 40.0)]
    skipped = {m.split(":")[0] for m in caplog.messages if m.startswith("skipping")}
    assert skipped == {
        f"skipping {tmp_path / 'config.json'}",
        f"skipping {tmp_path / 'sub' / 'list.json'}",
        f"skipping {tmp_path / 'sub' / 'broken.json'}",
    }
    assert any("no model, benchmark, score" in m for m in caplog.messages)


def test_no_results_and_missing_path_are_errors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no results files found"):
        tables.load_results([tmp_path])
    with pytest.raises(ValueError, match="does not exist"):
        tables.load_results([tmp_path / "nope"])


@pytest.mark.parametrize(
    "bench, score, message",
    [
        ("mme", 2500.0, "2500.0 for 'mme' is outside \\[0, 2000\\]"),
        ("mmbench", 101.0, "101.0 for 'mmbench' is outside \\[0, 100\\]"),
        ("ocrbench", -1, "-1 for 'ocrbench' is outside"),
        ("gqa", "61.0", "'score' must be a finite number, got '61.0'"),
        ("gqa", True, "'score' must be a finite number, got True"),
    ],
)
def test_bad_scores_are_errors_naming_file_and_value(tmp_path, bench, score, message):
    path = write_result(tmp_path, "m", bench, score)
    with pytest.raises(ValueError, match=message) as err:
        tables.load_results([tmp_path])
    assert str(path) in str(err.value)


def test_markdown_exact_text_two_models_two_benchmarks(tmp_path, capsys):
    write_result(tmp_path, "b", "mmbench", 65.3)
    write_result(tmp_path, "b", "mmvp", 50.0)
    write_result(tmp_path, "a", "mmbench", 70.0)
    write_result(tmp_path, "a", "mmvp", 40.0)
    status, out, _ = run_cli(capsys, tmp_path, "--format", "md")
    assert status == 0
    assert out == (
        "| model | MMB | General avg | MMVP | Vision-Centric avg | Overall |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| a | 70.0 | – | 40.0 | – | – |\n"
        "| b | 65.3 | – | 50.0 | – | – |\n"
        "\n"
        "- – General avg: a, b lack MME-P, SEED-I, GQA\n"
        "- – Vision-Centric avg: a, b lack RealWorldQA, CV-Bench-2D, CV-Bench-3D\n"
        "- – Overall: a, b lack General avg, Knowledge avg, OCR & Chart avg, Vision-Centric avg\n"
        "- Averages on a 0-100 scale (paper convention: MME-P/20, OCRBench/10); "
        "Overall = mean of the four category averages.\n"
    )


def test_all_columns_keeps_benchmarks_nobody_has(tmp_path):
    write_result(tmp_path, "m", "mmvp", 40.0)
    narrow = tables.build_table(tables.load_results([tmp_path]))
    wide = tables.build_table(tables.load_results([tmp_path]), all_columns=True)
    assert [c.key for c in narrow.columns if c.kind == "score"] == ["mmvp"]
    assert [c.key for c in wide.columns if c.kind == "score"] == [*FULL, "pope", "synthetic"]


def test_csv_parses_back_to_the_scores(tmp_path, capsys):
    write_result(tmp_path, "run_1", "mme", 1510.4)
    write_result(tmp_path, "run_1", "chartqa", 61.25)
    write_result(tmp_path, "run_2", "chartqa", 55.0)
    write_result(tmp_path, "run_2", "mystery", 3.5)
    out_file = tmp_path / "out" / "table.csv"
    status, stdout, _ = run_cli(capsys, tmp_path, "--out", out_file)
    assert status == 0 and stdout == ""
    rows = parse_csv(out_file.read_text())
    assert list(rows) == ["run_1", "run_2"]
    assert float(rows["run_1"]["MME-P"]) == pytest.approx(1510.4)
    assert float(rows["run_1"]["ChartQA"]) == pytest.approx(61.2, abs=0.051)
    assert rows["run_1"]["mystery"] == "" and float(rows["run_2"]["mystery"]) == 3.5
    assert rows["run_2"]["MME-P"] == "" and rows["run_2"]["General avg"] == ""


def test_latex_booktabs_with_category_headers_and_escaping(tmp_path, capsys):
    write_result(tmp_path, "my_run", "chartqa", 60.0)
    write_result(tmp_path, "my_run", "mmvp", 40.0)
    out_file = tmp_path / "table.tex"
    assert run_cli(capsys, tmp_path, "--out", out_file)[0] == 0
    tex = out_file.read_text()
    for command in (r"\begin{tabular}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}"):
        assert command in tex
    assert r"\multicolumn{2}{c}{OCR \& Chart}" in tex
    assert r"\cmidrule(lr){2-3}" in tex
    assert r"my\_run & 60.0 & --" in tex
    assert "my_run" not in tex.replace(r"my\_run", "")


def test_paper_rows_are_added_and_marked_published(tmp_path, capsys):
    write_result(tmp_path, "ours", "mmbench", 70.0)
    status, out, _ = run_cli(capsys, tmp_path, "--paper", "--format", "csv")
    assert status == 0
    rows = parse_csv(out)
    assert list(rows) == [p.model for p in PAPER_ROWS] + ["ours"]
    assert rows["ours"]["source"] == "ours"
    cambrian = rows["Cambrian-1-8B"]
    assert cambrian["source"] == "published" and cambrian["#vis tok"] == "576"
    published = {k: cambrian[k] for k in ("MMB", "SQA-I", "MathVista-M", "ChartQA", "MMVP")}
    assert published == {
        "MMB": "75.9",
        "SQA-I": "80.4",
        "MathVista-M": "49.0",
        "ChartQA": "73.3",
        "MMVP": "51.3",
    }
    gpt4v = rows["GPT-4V"]
    assert gpt4v["SQA-I"] == "" and gpt4v["#vis tok"] == "" and gpt4v["MMB"] == "75.8"
    assert rows["Mini-Gemini-HD-8B"]["#vis tok"] == "2880"


def test_compare_adds_delta_row_for_shared_benchmarks(tmp_path, capsys):
    write_result(tmp_path, "myrun", "mmbench", 78.0)
    write_result(tmp_path, "myrun", "mmvp", 50.0)
    write_result(tmp_path, "myrun", "gqa", 60.0)
    status, out, _ = run_cli(
        capsys, tmp_path, "--compare", "myrun=Cambrian-1-8B", "--format", "csv"
    )
    assert status == 0
    rows = parse_csv(out)
    assert list(rows) == ["myrun", "myrun - Cambrian-1-8B"]
    delta = rows["myrun - Cambrian-1-8B"]
    assert delta["source"] == "delta"
    assert float(delta["MMB"]) == pytest.approx(78.0 - 75.9, abs=1e-6)
    assert float(delta["MMVP"]) == pytest.approx(50.0 - 51.3, abs=1e-6)
    assert delta["MMB"] == "+2.1" and delta["MMVP"] == "-1.3"
    assert delta["GQA"] == ""  # the paper row has no GQA


def test_compare_errors_name_the_bad_value(tmp_path, capsys):
    write_result(tmp_path, "myrun", "mmbench", 78.0)
    status, _, err = run_cli(capsys, tmp_path, "--compare", "other=Cambrian-1-8B")
    assert status == 2 and "no results for model 'other'; have myrun" in err
    status, _, err = run_cli(capsys, tmp_path, "--compare", "myrun=Cambrian-2")
    assert status == 2 and "unknown published row 'Cambrian-2'" in err and "Cambrian-1-34B" in err
    status, _, err = run_cli(capsys, tmp_path, "--compare", "myrun")
    assert status == 2 and "MODEL=PAPER_ROW, got 'myrun'" in err


def test_paper_results_hold_only_the_reference_table():
    assert [p.model for p in PAPER_ROWS] == [
        "GPT-4V",
        "Mini-Gemini-HD-8B",
        "LLaVA-NeXT-8B",
        "Cambrian-1-8B",
        "Cambrian-1-13B",
        "Cambrian-1-34B",
    ]
    allowed = {"mmbench", "sqa_img", "mathvista", "chartqa", "mmvp"}
    assert all(set(p.scores) <= allowed for p in PAPER_ROWS)
    assert paper_row("Cambrian-1-34B").scores["mmvp"] == 52.7
    assert paper_row("LLaVA-NeXT-8B").scores["chartqa"] == 69.5


def test_chart_is_written_as_png(tmp_path, capsys):
    write_result(tmp_path, "a", "mme", 1500.0)
    write_result(tmp_path, "a", "mmvp", 40.0)
    write_result(tmp_path, "b", "mmvp", 45.0)
    png = tmp_path / "charts" / "scores.png"
    status, _, _ = run_cli(capsys, tmp_path, "--paper", "--chart", png)
    assert status == 0
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
