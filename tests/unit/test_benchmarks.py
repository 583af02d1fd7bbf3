"""Benchmark layer: loaders on tiny hand-written releases, extraction rules, official scores.

Fixtures live in tests/fixtures/benchmarks/ (a 2x2 PNG stands in for every image). Expected
scores are worked out by hand in each test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import pytest

from cambrian_train.eval.benchmarks import (
    BENCHMARKS,
    MCQ_SUFFIX,
    SHORT_ANSWER_SUFFIX,
    get_benchmark,
)
from cambrian_train.eval.benchmarks.mcq import extract_choice
from cambrian_train.eval.benchmarks.vqa_scores import (
    anls,
    normalize_vqa_answer,
    relaxed_correct,
    vqa_accuracy,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
PNG = (FIXTURES / "synthetic" / "images" / "test-0.png").read_bytes()


def run(name, path, raw_predictions):
    """Load, extract every raw generation, score: what the eval runner does."""
    bench = get_benchmark(name)
    items = bench.load(path)
    extracted = [bench.extract(p, item) for item, p in zip(items, raw_predictions, strict=True)]
    return items, extracted, bench.score(items, extracted)


# ---------------------------------------------------------------- registry


def test_registry_names_categories_and_lookup_error():
    from cambrian_train.eval.tables import KNOWN as TABLE_COLUMNS

    assert set(BENCHMARKS) == set(TABLE_COLUMNS)  # the paper's and the synthetic suite's
    for name, bench in BENCHMARKS.items():
        assert bench.category == TABLE_COLUMNS[name].category
    with pytest.raises(ValueError, match="unknown benchmark 'mmbenc'.*mmbench"):
        get_benchmark("mmbenc")


def test_suffix_sha256_fingerprints_the_suffixes():
    assert get_benchmark("mmbench").suffix_sha256 == hashlib.sha256(MCQ_SUFFIX.encode()).hexdigest()
    both = f"{MCQ_SUFFIX}\n{SHORT_ANSWER_SUFFIX}".encode()
    assert get_benchmark("mmmu").suffix_sha256 == hashlib.sha256(both).hexdigest()


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "prediction, letter",
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("**B**", "B"),
        ("green", "B"),  # equals option B's text
        ("Green.", "B"),
        ("The answer is C.", "C"),
        ("Answer: (d)", "D"),
        ("B. green", "B"),
        ("(B) green", "B"),
        ("The answer is a dog", ""),  # "a" is an article, not a letter
        ("A cat sits on the mat", ""),
        ("E", ""),  # no fifth option
        ("", ""),
        ("I am not sure", ""),
    ],
)
def test_extract_choice(prediction, letter):
    assert extract_choice(prediction, ["red", "green", "blue", "yellow"]) == letter


def test_vqa_normalisation():
    assert normalize_vqa_answer("Two dogs.") == "2 dogs"
    assert normalize_vqa_answer("The cat") == "cat"
    assert normalize_vqa_answer("dont know") == "don't know"
    assert normalize_vqa_answer("1,000") == "1000"
    assert normalize_vqa_answer("3.5") == "3.5"
    assert normalize_vqa_answer("yes!") == "yes"


def test_vqa_accuracy_partial_credit_ten_choose_nine():
    for k, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["cat"] * k + ["dog"] * (10 - k)
        # k matches: the k subsets leaving a match out see k-1, the 10-k others see k.
        by_hand = (k * min(1, (k - 1) / 3) + (10 - k) * min(1, k / 3)) / 10 if k else 0.0
        assert vqa_accuracy("Cat", answers) == pytest.approx(expected)
        assert vqa_accuracy("Cat", answers) == pytest.approx(by_hand)


def test_anls_exact_near_far():
    assert anls("Annual Report", ["annual report"]) == 1.0
    assert anls("helo", ["hello"]) == pytest.approx(1 - 1 / 5)  # one deletion over length 5
    assert anls("unknown", ["march 3"]) == 0.0  # normalised distance >= 0.5
    assert anls("helo", ["nothing alike", "hello"]) == pytest.approx(0.8)  # best gold answer


def test_relaxed_correct():
    assert relaxed_correct("4.8", "5.0")  # |4.8-5|/5 = 0.04 <= 0.05
    assert not relaxed_correct("4.7", "5.0")  # 0.06 > 0.05
    assert relaxed_correct("48%", "0.5")  # 0.48 vs 0.5
    assert relaxed_correct("Yes", "yes")
    assert not relaxed_correct("0.01", "0")  # zero target: exact match only


# ---------------------------------------------------------------- General


def test_mmbench_generated_circular_variants_and_score():
    predictions = ["B", "A", "The answer is D.", "blue", "A", "C", "C"]
    items, extracted, r = run("mmbench", FIXTURES / "mmbench" / "dev.tsv", predictions)
    assert [i.id for i in items] == [
        "0",
        "1000000",
        "2000000",
        "3000000",
        "1",
        "1000001",
        "2000001",
    ]
    # Row 0 (answer B = blue), rotation k shows option (i + k) % 4 at position i.
    assert items[1].choices == ["blue", "green", "yellow", "red"]
    assert [i.answer for i in items] == ["B", "A", "D", "C", "A", "C", "B"]
    assert items[4].prompt == (
        "<image>\nCount every shape.\nHow many shapes are there?\n"
        f"A. one\nB. two\nC. three\n{MCQ_SUFFIX}"
    )
    assert items[0].images == [PNG]
    assert extracted[3] == "C"  # "blue" is option C of rotation 3
    # group 0: 4/4 right; group 1: 2/3 right -> circular 1 of 2 groups.
    assert r["score"] == pytest.approx(100 * 1 / 2)
    assert r["vanilla"] == pytest.approx(100.0)  # both rotation-0 questions right
    assert r["by_category"] == {"attribute_recognition": 100.0, "counting": 0.0}
    assert (r["count"], r["groups"], r["unparsed"]) == (7, 2, 0)


def test_mmbench_already_circular_tsv_with_image_reference():
    bench = get_benchmark("mmbench")
    items = bench.load(FIXTURES / "mmbench" / "circular.tsv")
    assert [i.id for i in items] == ["5", "1000005"]
    assert [i.meta["group"] for i in items] == [5, 5]
    assert items[1].images == items[0].images == [PNG]  # cell "5" points at row 5's image
    assert bench.score(items, ["B", "B"])["score"] == 0.0  # one variant wrong: group wrong
    assert bench.score(items, ["B", "A"])["score"] == 100.0


def test_seed_image_questions_only():
    items, _, r = run("seed_img", FIXTURES / "seed", ["A", "D"])
    assert [i.id for i in items] == ["101669", "101670"]  # the video question is dropped
    assert (
        items[1].prompt
        == f"<image>\nHow many dogs are there?\nA. 1\nB. 2\nC. 3\nD. 4\n{MCQ_SUFFIX}"
    )
    assert items[0].images == [
        str(FIXTURES / "seed" / "SEED-Bench-image" / "1454426_2591111986.jpg")
    ]
    assert r["score"] == pytest.approx(100 * 1 / 2)
    assert r["by_question_type"] == {"Instance Counting": 0.0, "Scene Understanding": 100.0}


def test_gqa_normalised_exact_match():
    items, extracted, r = run("gqa", FIXTURES / "gqa", ["Yes.", "A laptop", "three"])
    assert items[0].prompt == f"<image>\nIs the table made of wood?\n{SHORT_ANSWER_SUFFIX}"
    assert extracted == ["yes", "laptop", "3"]
    assert r["score"] == pytest.approx(100 * 2 / 3)  # "3" != "2"
    assert r["by_structural"] == {"query": 50.0, "verify": 100.0}


def test_mme_acc_plus_and_sums():
    predictions = ["Yes", "No.", "Yes, there is", "yes", "yes", "No", "no", "No"]
    items, extracted, r = run("mme", FIXTURES / "mme", predictions)
    assert [i.meta["category"] for i in items] == ["existence"] * 4 + ["artwork"] * 2 + [
        "code_reasoning"
    ] * 2
    assert items[4].images == [str(FIXTURES / "mme" / "artwork" / "images" / "a.jpg")]
    assert extracted[:4] == ["yes", "no", "yes", "yes"]
    # existence: 3/4 questions, 1/2 images -> 75 + 50; artwork 100 + 100; code 50 + 0.
    assert r["by_subtask"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert r["perception"] == pytest.approx(125 + 200)
    assert r["cognition"] == pytest.approx(50 + 0)
    assert r["score"] == r["perception"]
    assert "OCR" in r["missing_subtasks"]


def test_mme_parquet_table(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [
        {
            "question_id": "count/1.png",
            "question": "Two dogs?",
            "answer": "Yes",
            "category": "count",
        },
        {
            "question_id": "count/1.png",
            "question": "Three dogs?",
            "answer": "No",
            "category": "count",
        },
    ]
    for row in rows:
        row["image"] = {"bytes": PNG, "path": "1.png"}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    bench = get_benchmark("mme")
    items = bench.load(tmp_path)
    assert [i.images for i in items] == [[PNG], [PNG]]
    assert bench.score(items, ["yes", "no"])["score"] == pytest.approx(100 + 100)
    assert bench.score(items, ["yes", "yes"])["score"] == pytest.approx(50 + 0)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dev-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=r"several splits \['dev', 'test'\]"):
        bench.load(tmp_path)


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError, match=r"x\.parquet needs pyarrow.*cambrian-train\[eval\]"):
        get_benchmark("ai2d").load(tmp_path / "x.parquet")


# ---------------------------------------------------------------- Knowledge


def test_sqa_img_skips_text_only_and_scores():
    items, _, r = run("sqa_img", FIXTURES / "sqa" / "test.jsonl", ["B", "liquid"])
    assert [i.id for i in items] == ["sqa-1", "sqa-3"]
    assert items[0].prompt == (
        "<image>\nLook at the map. Which of these states is farthest north?\n"
        "A. Ohio\nB. Maine\nC. Texas\n"
        "Please answer directly with only the letter of the correct option and nothing else."
    )
    assert r["score"] == pytest.approx(100 * 1 / 2)  # "liquid" is option B, gold A
    assert r["by_subject"] == {"natural science": 0.0, "social science": 100.0}


def test_ai2d_loader_and_accuracy():
    items, extracted, r = run("ai2d", FIXTURES / "ai2d" / "test.jsonl", ["larva", "B"])
    assert [i.answer for i in items] == ["B", "A"]  # answer "1" (str) and 0 (int)
    assert items[0].images == [str(FIXTURES / "ai2d" / "images" / "d1.png")]
    assert extracted == ["B", "B"]
    assert r["score"] == pytest.approx(100 * 1 / 2)


def test_mathvista_choices_and_float_precision():
    predictions = ["B", "The slope is 2.349", "0.64", "1.2", "There are 7 apples."]
    items, extracted, r = run("mathvista", FIXTURES / "mathvista" / "testmini.json", predictions)
    assert items[0].answer == "B"  # "4" is the second choice
    assert items[0].prompt.endswith(f"(C) 5\n{MCQ_SUFFIX}")
    assert items[1].prompt.endswith(f"What is the slope?\n{SHORT_ANSWER_SUFFIX}")
    # 2.349 -> 2 decimals "2.35" == gold; 0.64 -> 1 decimal "0.6" == gold; 1.2 -> "1.20" != "1.25"
    assert extracted == ["B", "2.35", "0.6", "1.20", "7"]
    assert r["score"] == pytest.approx(100 * 4 / 5)
    assert r["by_question_type"] == {"free_form": 75.0, "multi_choice": 100.0}


def test_mmmu_images_in_placeholder_order_and_open_vs_mcq():
    predictions = ["(B)", "The answer is 6.20", "Always open.", "Einstein"]
    items, extracted, r = run("mmmu", FIXTURES / "mmmu" / "validation.jsonl", predictions)
    images = FIXTURES / "mmmu" / "images"
    assert items[0].prompt == (
        "Which animal is shown in <image>?\nA. cat\nB. dog\nC. <image>\n" + MCQ_SUFFIX
    )
    assert items[0].images == [str(images / "dog.png"), str(images / "cat.png")]
    # image_1 present but never referenced: leading <image> line.
    assert items[1].prompt == f"<image>\nCompute the mean of 5.2 and 7.2.\n{SHORT_ANSWER_SUFFIX}"
    assert items[2].answer == ["24/7", "always"]
    assert items[3].images == []  # text-only
    assert extracted[0] == "B"
    # MCQ right; 6.20 == 6.2 to 2 decimals; "always" occurs in "always open"; Einstein wrong.
    assert r["score"] == pytest.approx(100 * 3 / 4)
    assert r["by_question_type"] == pytest.approx({"multiple-choice": 100.0, "open": 100 * 2 / 3})
    assert r["by_subject"] == {"Art_Theory": 100.0, "Math": 100.0, "Physics": 0.0}


# ---------------------------------------------------------------- OCR & Chart


def test_chartqa_relaxed_accuracy_averages_splits():
    items, extracted, r = run("chartqa", FIXTURES / "chartqa", ["4.8", "4.7.", "yes"])
    assert [i.meta["split"] for i in items] == ["human", "human", "augmented"]
    assert items[0].images == [str(FIXTURES / "chartqa" / "png" / "chart1.png")]
    assert extracted[1] == "4.7"
    # human: 4.8 within 5% of 5.0, 4.7 outside -> 50; augmented: "yes" == "Yes" -> 100.
    assert r["score"] == pytest.approx((50 + 100) / 2)
    assert r["accuracy"] == pytest.approx(100 * 2 / 3)


def test_ocrbench_containment_count():
    predictions = ["The word is hello.", "x^{2}+1", "forty-two"]
    items, _, r = run("ocrbench", FIXTURES / "ocrbench" / "OCRBench.json", predictions)
    assert items[2].answer == ["42"]  # a bare string answer becomes a list
    assert items[0].images == [str(FIXTURES / "ocrbench" / "OCRBench_Images" / "IIIT5K" / "1.png")]
    # "hello" in the lower-cased prediction; HME100k compares with spaces removed; "42" absent.
    assert r["score"] == 2
    assert r["percent"] == pytest.approx(100 * 2 / 3)
    assert r["by_type"]["Key Information Extraction"] == 0


def test_textvqa_vqa_accuracy():
    predictions = ["Nike", "nike", "NIKE", "two"]
    items, _, r = run("textvqa", FIXTURES / "textvqa" / "TextVQA_0.5.1_val.json", predictions)
    assert items[0].images == [str(FIXTURES / "textvqa" / "train_images" / "img1.jpg")]
    # nike matches 1, 2, 3 annotators -> 0.3, 0.6, 0.9; "two" -> "2" matches 5 -> 1.0.
    assert r["score"] == pytest.approx(100 * (0.3 + 0.6 + 0.9 + 1.0) / 4)


def test_docvqa_anls():
    predictions = ["annual report", "helo", "unknown"]
    items, _, r = run("docvqa", FIXTURES / "docvqa" / "val_v1.0.json", predictions)
    assert [i.id for i in items] == ["101", "102", "103"]
    assert items[0].images == [str(FIXTURES / "docvqa" / "documents" / "doc1.png")]
    assert r["score"] == pytest.approx(100 * (1.0 + 0.8 + 0.0) / 3)


# ---------------------------------------------------------------- Vision-Centric


def test_mmvp_pair_accuracy():
    items, extracted, r = run("mmvp", FIXTURES / "mmvp", ["A", "Closed", "(a)", "A"])
    assert items[0].choices == ["Open", "Closed"]
    assert items[0].images == [str(FIXTURES / "mmvp" / "MMVP Images" / "1.jpg")]
    assert [i.meta["pair"] for i in items] == [0, 0, 1, 1]
    assert extracted == ["A", "B", "A", "A"]
    # pair 0 both right; pair 1 second wrong -> 1 of 2 pairs, 3 of 4 questions.
    assert r["score"] == pytest.approx(100 * 1 / 2)
    assert r["accuracy"] == pytest.approx(100 * 3 / 4)


def test_realworldqa_mcq_and_open():
    items, extracted, r = run(
        "realworldqa", FIXTURES / "realworldqa" / "test.jsonl", ["B.", "2.", "Yes"]
    )
    assert (
        items[0].prompt
        == "<image>\n"
        + json.loads((FIXTURES / "realworldqa" / "test.jsonl").read_text().splitlines()[0])[
            "question"
        ]
    )
    assert items[0].choices == ["left", "right", "straight"]
    assert items[1].choices == []
    assert extracted == ["B", "2", "yes"]
    assert r["score"] == pytest.approx(100 * 2 / 3)  # gold of the third is "No"


def test_cvbench_2d_per_source_average_and_3d():
    path = FIXTURES / "cvbench" / "test.jsonl"
    items, _, r2 = run("cvbench_2d", path, ["B", "C", "A"])
    assert [i.meta["source"] for i in items] == ["ADE20K", "ADE20K", "COCO"]
    assert items[0].answer == "B"
    # ADE20K 1/2 = 50, COCO 1/1 = 100 -> 2D = mean 75 (plain accuracy would be 66.7).
    assert r2["score"] == pytest.approx((50 + 100) / 2)
    assert r2["accuracy"] == pytest.approx(100 * 2 / 3)
    _, _, r3 = run("cvbench_3d", path, ["B", "B"])
    assert r3["score"] == pytest.approx(100 * 1 / 2)  # Omni3D only


# ---------------------------------------------------------------- extra


def test_pope_precision_recall_f1():
    predictions = [
        "Yes, there is a dog.",  # gold yes: TP
        "No, there is not.",  # gold yes: FN
        "Yes",  # gold no: FP
        "No",  # gold no: TN
        "yes",  # random, gold yes: TP
        "There is no giraffe.",  # random, gold no: TN
    ]
    items, extracted, r = run("pope", FIXTURES / "pope" / "pope.jsonl", predictions)
    assert extracted == ["yes", "no", "yes", "no", "yes", "no"]
    assert items[0].images == [str(FIXTURES / "pope" / "val2014" / "COCO_val2014_000000000001.jpg")]
    adversarial = r["by_category"]["adversarial"]
    # TP=1, FP=1, FN=1: precision 1/2, recall 1/2, F1 1/2; 2 of 4 right; 2 of 4 "yes".
    assert adversarial["precision"] == pytest.approx(50.0)
    assert adversarial["recall"] == pytest.approx(50.0)
    assert adversarial["f1"] == pytest.approx(50.0)
    assert adversarial["accuracy"] == pytest.approx(50.0)
    assert adversarial["yes_ratio"] == pytest.approx(50.0)
    assert r["by_category"]["random"]["f1"] == pytest.approx(100.0)
    assert r["score"] == pytest.approx((50 + 100) / 2)


def test_pope_official_directory_layout():
    items = get_benchmark("pope").load(FIXTURES / "pope_official")
    assert [(i.id, i.answer, i.meta["category"]) for i in items] == [
        ("random/1", "yes", "random"),
        ("random/2", "no", "random"),
    ]
    assert items[0].prompt == f"<image>\nIs there a snowboard in the image?\n{SHORT_ANSWER_SUFFIX}"


def test_synthetic_normalised_exact_match():
    items, extracted, r = run("synthetic", FIXTURES / "synthetic" / "test.jsonl", ["Red.", "3"])
    assert items[0].prompt == "<image>\nWhat color is the square? Answer with a single word."
    assert items[0].images == [str(FIXTURES / "synthetic" / "images" / "test-0.png")]
    assert extracted == ["red", "3"]
    assert r["score"] == pytest.approx(100 * 1 / 2)
    assert r["by_question_type"] == {"color": 100.0, "count": 0.0}


# ---------------------------------------------------------------- bad input


def test_missing_field_names_file_item_and_field(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"data": [{"questionId": 7, "question": "q?", "image": "x.png"}]}))
    with pytest.raises(ValueError, match=r"val\.json: item 0 lacks required field 'answers'"):
        get_benchmark("docvqa").load(path)


def test_missing_image_and_bad_answer_are_errors(tmp_path):
    path = tmp_path / "test.jsonl"
    row = {"question": "q?", "options": ["a", "b"], "answer": 1, "image": "nowhere.png"}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"item 0 field 'image': image 'nowhere.png' not found"):
        get_benchmark("ai2d").load(path)
    (tmp_path / "nowhere.png").write_bytes(PNG)
    path.write_text(json.dumps({**row, "answer": 5}) + "\n")
    with pytest.raises(ValueError, match=r"item 0 answer 5 is not an index into its 2 options"):
        get_benchmark("ai2d").load(path)


def test_mmbench_bad_base64_and_missing_column(tmp_path):
    header = "index\tquestion\tA\tB\tanswer\timage\n"
    path = tmp_path / "mmb.tsv"
    path.write_text(header + "3\tq?\tx\ty\tA\tnot*base64!\n")
    with pytest.raises(ValueError, match=r"item 3 field 'image' is not valid base64"):
        get_benchmark("mmbench").load(path)
    path.write_text("index\tquestion\tA\tB\timage\n3\tq?\tx\ty\t" + base64.b64encode(PNG).decode())
    with pytest.raises(ValueError, match=r"mmb\.tsv: item 0 lacks required field 'answer'"):
        get_benchmark("mmbench").load(path)


def test_score_rejects_misaligned_predictions():
    bench = get_benchmark("ai2d")
    items = bench.load(FIXTURES / "ai2d" / "test.jsonl")
    with pytest.raises(ValueError, match="ai2d: 1 predictions for 2 items"):
        bench.score(items, ["A"])


def test_unparsed_predictions_are_wrong_and_counted():
    bench = get_benchmark("ai2d")
    items = bench.load(FIXTURES / "ai2d" / "test.jsonl")
    extracted = [bench.extract(p, i) for i, p in zip(items, ["I cannot tell", "A"])]
    r = bench.score(items, extracted)
    assert (r["score"], r["unparsed"]) == (pytest.approx(50.0), 1)
