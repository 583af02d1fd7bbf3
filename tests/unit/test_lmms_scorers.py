"""Our benchmark scorers (eval/benchmarks/) against lmms-eval's (0.7.3) on identical predictions.

For every benchmark both implement offline, the same fixture predictions go through our
``extract`` + ``score`` and through lmms-eval's task functions (``process_results`` and the
aggregations its YAML names, or the filter + metric pipeline for the tasks scored by
``exact_match``). Where the two should agree the scores are asserted equal (lmms-eval reports
fractions, we report percent); where they differ by design the difference is asserted on the
cases that show it. docs/lmms_eval_crosscheck.md tabulates the outcome. MathVista is not
compared: lmms-eval extracts its answers with an OpenAI model.

Skipped without lmms-eval (``pip install 'lmms-eval==0.7.3'``, the ``lmms`` extra).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("lmms_eval")

from lmms_eval.api.metrics import anls as lmms_anls  # noqa: E402
from lmms_eval.api.metrics import exact_match_hf_evaluate  # noqa: E402
from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor  # noqa: E402
from lmms_eval.tasks.ai2d import utils as ai2d_utils  # noqa: E402
from lmms_eval.tasks.chartqa import utils as chartqa_utils  # noqa: E402
from lmms_eval.tasks.cv_bench import utils as cvbench_utils  # noqa: E402
from lmms_eval.tasks.mmbench import en_utils as mmbench_utils  # noqa: E402
from lmms_eval.tasks.mme import utils as mme_utils  # noqa: E402
from lmms_eval.tasks.mmmu import utils as mmmu_utils  # noqa: E402
from lmms_eval.tasks.mmvp import utils as mmvp_utils  # noqa: E402
from lmms_eval.tasks.ocrbench import utils as ocrbench_utils  # noqa: E402
from lmms_eval.tasks.pope import utils as pope_utils  # noqa: E402
from lmms_eval.tasks.realworldqa import utils as realworldqa_utils  # noqa: E402
from lmms_eval.tasks.scienceqa import utils as sqa_utils  # noqa: E402
from lmms_eval.tasks.seedbench import utils as seed_utils  # noqa: E402
from lmms_eval.tasks.textvqa import utils as textvqa_utils  # noqa: E402

from cambrian_train.eval.benchmarks import EvalItem, get_benchmark  # noqa: E402
from cambrian_train.eval.benchmarks.mcq import LETTERS  # noqa: E402
from cambrian_train.eval.benchmarks.mme import extract_yes_no as mme_yes_no  # noqa: E402
from cambrian_train.eval.benchmarks.vqa_scores import (  # noqa: E402
    anls,
    normalize_vqa_answer,
    relaxed_correct,
)


def ours(name: str, items, predictions):
    """Our results for raw generations: the benchmark's extraction, then its score."""
    bench = get_benchmark(name)
    return bench.score(items, [bench.extract(p, item) for item, p in zip(items, predictions)])


def percent(fraction: float) -> float:
    return 100.0 * fraction


def approx(value: float):
    return pytest.approx(value, rel=1e-9, abs=1e-9)


def item(item_id, answer, choices=(), **meta) -> EvalItem:
    return EvalItem(str(item_id), [], "<image>\nq", answer, list(choices), meta)


# -- MME ---------------------------------------------------------------------------------------

MME_ROWS = [  # (subtask, image id, gold, prediction): two questions per image
    ("existence", "e1.jpg", "Yes", "Yes"),
    ("existence", "e1.jpg", "No", "No"),
    ("existence", "e2.jpg", "Yes", "yes, there is one."),
    ("existence", "e2.jpg", "No", "Yes"),
    ("count", "c1.jpg", "Yes", "No."),
    ("count", "c1.jpg", "No", "no"),
    ("color", "k1.jpg", "Yes", "I cannot tell"),
    ("color", "k1.jpg", "No", "nope"),
    ("OCR", "o1.jpg", "No", "NO"),
    ("OCR", "o1.jpg", "Yes", "Yes."),
    ("code_reasoning", "r1.png", "Yes", "yes"),
    ("code_reasoning", "r1.png", "No", "yes"),
    ("text_translation", "t1.png", "No", "No"),
    ("text_translation", "t1.png", "Yes", "Yes"),
]


def mme_lmms(rows):
    scores = {"mme_perception_score": [], "mme_cognition_score": []}
    for n, (task, image, gold, prediction) in enumerate(rows):
        doc = {"question_id": image, "category": task, "answer": gold, "question": f"q{n}"}
        for key, value in mme_utils.mme_process_results(doc, [prediction]).items():
            scores[key].append(value)
    return {k: mme_utils.mme_aggregate_results(v) for k, v in scores.items() if v}


def mme_ours(rows):
    items = [
        item(n, gold.lower(), category=task, image_id=image)
        for n, (task, image, gold, _) in enumerate(rows)
    ]
    return ours("mme", items, [r[3] for r in rows])


def test_mme_perception_and_cognition_agree():
    theirs, mine = mme_lmms(MME_ROWS), mme_ours(MME_ROWS)
    assert mine["perception"] == approx(theirs["mme_perception_score"])
    assert mine["cognition"] == approx(theirs["mme_cognition_score"])
    assert mine["score"] == mine["perception"]


def test_mme_single_letter_answers_differ():
    """lmms-eval (Otter's parser) reads a bare "y" / "n" as yes / no; the official MME rule we
    follow finds no "yes"/"no" in them (unparsed, wrong)."""
    assert mme_utils.parse_pred_ans("y") == "yes" and mme_utils.parse_pred_ans("n") == "no"
    assert mme_yes_no("y") == "" and mme_yes_no("n") == ""
    rows = [("count", "c1.jpg", "Yes", "y"), ("count", "c1.jpg", "No", "n")]
    assert mme_lmms(rows)["mme_perception_score"] == 200.0  # acc 100 + acc+ 100
    assert mme_ours(rows)["perception"] == 0.0


# -- POPE --------------------------------------------------------------------------------------

POPE_ROWS = {  # category -> (gold, prediction); predictions are single words, as prompted
    "adversarial": [("yes", "yes"), ("no", "No"), ("yes", "no"), ("no", "yes"), ("yes", "Yes")],
    "popular": [("no", "no"), ("no", "no"), ("yes", "no"), ("yes", "yes")],
    "random": [("yes", "yes"), ("no", "yes"), ("no", "yes")],
}
POPE_METRICS = {
    "accuracy": pope_utils.pope_aggregate_accuracy,
    "precision": pope_utils.pope_aggregate_precision,
    "recall": pope_utils.pope_aggregate_recall,
    "f1": pope_utils.pope_aggregate_f1_score,
    "yes_ratio": pope_utils.pope_aggregate_yes_ratio,
}


def pope_lmms(rows):
    """lmms-eval's metrics of one task (pope_adv / pope_pop / pope_random is one category)."""
    results = [
        pope_utils.pope_process_results(
            {"question_id": n, "answer": gold}, [prediction.lower().strip()]
        )["pope_accuracy"]
        for n, (gold, prediction) in enumerate(rows)
    ]
    return {name: fn(results) for name, fn in POPE_METRICS.items()}


def pope_ours(by_category):
    items, predictions = [], []
    for category, rows in by_category.items():
        for n, (gold, prediction) in enumerate(rows):
            items.append(item(f"{category}/{n}", gold, category=category))
            predictions.append(prediction)
    return ours("pope", items, predictions)


def test_pope_per_category_metrics_agree():
    mine = pope_ours(POPE_ROWS)
    for category, rows in POPE_ROWS.items():
        theirs, metrics = pope_lmms(rows), mine["by_category"][category]
        for name in ("accuracy", "precision", "recall", "f1"):
            assert metrics[name] == approx(percent(theirs[name])), (category, name)
    # our headline: the mean of the three categories' F1 (lmms-eval: three separate tasks)
    f1 = [percent(pope_lmms(rows)["f1"]) for rows in POPE_ROWS.values()]
    assert mine["score"] == approx(sum(f1) / 3)


def test_pope_yes_ratio_and_sentences_differ():
    """lmms-eval's pope_yes_ratio is the share of *gold* "yes" answers; ours (and the POPE paper)
    the share of predicted "yes". lmms-eval compares the lower-cased generation with yes/no
    exactly, so a sentence is wrong and left out of precision and recall; we apply LLaVA's
    rule (a sentence without no/not is "yes")."""
    rows = POPE_ROWS["random"]  # gold: 1 yes of 3; predicted: 3 yes of 3
    assert pope_lmms(rows)["yes_ratio"] == approx(1 / 3)
    assert pope_ours({"random": rows})["by_category"]["random"]["yes_ratio"] == approx(100.0)
    sentences = [("yes", "Yes, there is a dog."), ("no", "No, there is not."), ("no", "no")]
    theirs = pope_lmms(sentences)
    assert theirs["accuracy"] == approx(1 / 3) and theirs["recall"] == 0
    mine = pope_ours({"popular": sentences})["by_category"]["popular"]
    assert mine["accuracy"] == approx(100.0) and mine["recall"] == approx(100.0)


# -- TextVQA / GQA normalisation -------------------------------------------------------------

SAME_NORMALISATION = [
    "Two",
    "the Coca-Cola",
    "3.5",
    "STOP.",
    "it's",
    "dont",
    "Hello, World!",
    "1,000",
    "a dog's bone",
    "yes\n",
    "(left) side",
    "well",
    "its",
    "ten dollars",
    "e-mail @ home",
    "what's",
    "5 p.m.",
]


@pytest.mark.parametrize("text", SAME_NORMALISATION)
def test_vqa_normalisation_agrees_with_evalai_processor(text):
    assert normalize_vqa_answer(text) == EvalAIAnswerProcessor()(text)


def test_vqa_normalisation_differs_on_contraction_spellings():
    """We restore every apostrophe-less spelling of the contractions (the module's documented
    generalisation); the EvalAI processor lmms-eval copies maps a fixed list, without e.g.
    "lets" or "shes", and maps "somebody'd" to "somebodyd" (an upstream typo)."""
    processor = EvalAIAnswerProcessor()
    for text, mine, theirs in [
        ("lets go", "let's go", "lets go"),
        ("shes here", "she's here", "shes here"),
        ("couldntve", "couldn't've", "couldntve"),
        ("somebody'd", "somebody'd", "somebodyd"),
    ]:
        assert normalize_vqa_answer(text) == mine and processor(text) == theirs


TEXTVQA_ROWS = [  # (ten answers, prediction)
    (["coca cola"] * 6 + ["coke"] * 4, "Coca-Cola"),
    (["coca cola"] * 6 + ["coke"] * 4, "coke"),
    (["2"] * 2 + ["two"] * 1 + ["3"] * 7, "Two"),
    (["stop"] + ["stop sign"] * 9, "stop"),
    (["yes"] * 10, "no"),
    (["nokia"] * 3 + ["nokia phone"] * 7, "the Nokia."),
]


def test_textvqa_accuracy_agrees():
    mine = ours(
        "textvqa",
        [item(n, a) for n, (a, _) in enumerate(TEXTVQA_ROWS)],
        [p for _, p in TEXTVQA_ROWS],
    )
    theirs = [
        textvqa_utils.textvqa_process_results({"answers": list(a), "question_id": n}, [p])[
            "exact_match"
        ]
        for n, (a, p) in enumerate(TEXTVQA_ROWS)
    ]
    assert mine["score"] == approx(percent(sum(theirs) / len(theirs)))


def test_textvqa_single_answer_differs():
    """With one gold answer lmms-eval's leave-one-out finds no other answers (always 0); we
    score an exact match."""
    doc = {"answers": ["red"], "question_id": 0}
    assert textvqa_utils.textvqa_process_results(doc, ["red"])["exact_match"] == 0
    assert ours("textvqa", [item(0, ["red"])], ["red"])["score"] == 100.0


GQA_SAME = [("yes", "Yes"), ("table", "Table."), ("left", "right"), ("white", "white")]
GQA_DIFFER = [("table", "the table"), ("2", "two"), ("tv", "t.v.")]


def gqa_lmms(rows):
    return [
        exact_match_hf_evaluate(
            predictions=[p.strip()], references=[g], ignore_case=True, ignore_punctuation=True
        )["exact_match"]
        for g, p in rows
    ]


def gqa_ours(rows):
    items = [item(n, g, structural="query") for n, (g, _) in enumerate(rows)]
    return ours("gqa", items, [p for _, p in rows])


def test_gqa_exact_match_agrees_on_plain_answers():
    assert gqa_ours(GQA_SAME)["score"] == approx(percent(sum(gqa_lmms(GQA_SAME)) / 4))


def test_gqa_normalisation_differs():
    """lmms-eval's gqa is HF exact_match (case and punctuation ignored); we apply the VQA
    normalisation (articles, number words, periods) to both sides."""
    assert gqa_lmms(GQA_DIFFER) == [0.0, 0.0, 1.0]
    assert gqa_ours(GQA_DIFFER)["score"] == approx(100.0)


# -- DocVQA (ANLS) -----------------------------------------------------------------------------

DOCVQA_ROWS = [  # (answers, prediction)
    (["1/2/2019", "01/02/2019"], "1/2/2019"),
    (["Smith & Co."], "smith & co."),
    (["INVOICE"], "invoce"),
    (["total amount due"], "total"),
    (["Acme Corporation"], "acme corp"),
    (["42"], "forty two"),
]


def docvqa_lmms(rows):
    return [lmms_anls(references=a, predictions=[p.strip()])["anls"] for a, p in rows]


def test_docvqa_anls_agrees():
    mine = ours(
        "docvqa", [item(n, a) for n, (a, _) in enumerate(DOCVQA_ROWS)], [p for _, p in DOCVQA_ROWS]
    )
    theirs = docvqa_lmms(DOCVQA_ROWS)
    assert mine["score"] == approx(percent(sum(theirs) / len(theirs)))


def test_docvqa_anls_threshold_and_lengths_differ():
    """At a normalised distance of exactly 0.5 the ANLS definition gives 0 (similarity counts
    only below the threshold); lmms-eval's copy (Qwen-VL's) keeps 0.5. lmms-eval also divides
    by the raw strings' lengths, we by the normalised ones (doubled spaces)."""
    assert anls("ax", ["ab"]) == 0.0
    assert docvqa_lmms([(["ab"], "ax")]) == [0.5]
    assert anls("hello  worlx", ["hello world"]) == approx(1 - 1 / 11)
    assert docvqa_lmms([(["hello world"], "hello  worlx")]) == [approx(1 - 1 / 12)]


# -- ChartQA (relaxed accuracy) ----------------------------------------------------------------

CHARTQA_ROWS = [  # (split, target, prediction)
    ("human", "12", "12.4"),
    ("human", "12", "13"),
    ("human", "45%", "0.44"),
    ("human", "Yes", "yes"),
    ("human", "0", "0"),
    ("augmented", "2019", "2019"),
    ("augmented", "3.5", "3.6"),
    ("augmented", "Blue", "red"),
]


def chartqa_lmms(rows):
    results = [
        chartqa_utils.chartqa_process_results(
            {"type": f"{split}_test", "answer": target}, [prediction.strip()]
        )
        for split, target, prediction in rows
    ]
    return {
        key: sum(r[key] for r in results if key in r) / sum(key in r for r in results)
        for key in ("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split")
    }


def chartqa_ours(rows):
    items = [item(n, target, split=split) for n, (split, target, _) in enumerate(rows)]
    return ours("chartqa", items, [p for *_, p in rows])


def test_chartqa_relaxed_accuracy_agrees_per_split():
    for _, target, prediction in CHARTQA_ROWS:
        assert relaxed_correct(prediction, target) == chartqa_utils.relaxed_correctness(
            prediction, target
        )
    theirs, mine = chartqa_lmms(CHARTQA_ROWS), chartqa_ours(CHARTQA_ROWS)
    assert mine["by_split"]["human"] == approx(percent(theirs["relaxed_human_split"]))
    assert mine["by_split"]["augmented"] == approx(percent(theirs["relaxed_augmented_split"]))
    assert mine["accuracy"] == approx(percent(theirs["relaxed_overall"]))


def test_chartqa_headline_and_final_period_differ():
    """Our headline averages the two splits (the paper's number; equal to lmms-eval's pooled
    relaxed_overall on the official test set, whose splits have 1250 questions each); and we
    drop one final period before matching, lmms-eval does not."""
    theirs, mine = chartqa_lmms(CHARTQA_ROWS), chartqa_ours(CHARTQA_ROWS)
    assert mine["score"] == approx((4 / 5 * 100 + 2 / 3 * 100) / 2)  # human 4/5, augmented 2/3
    assert percent(theirs["relaxed_overall"]) == approx(6 / 8 * 100)
    assert not chartqa_utils.relaxed_correctness("Yes.", "Yes")
    assert chartqa_ours([("human", "Yes", "Yes.")])["score"] == 100.0


# -- OCRBench ----------------------------------------------------------------------------------

OCR_ROWS = [  # (dataset, question type, answers, prediction)
    ("IIIT5K", "Regular Text Recognition", ["Central"], "The word is CENTRAL."),
    ("IIIT5K", "Regular Text Recognition", ["Hello"], "hallo"),
    ("HME100k", "Handwritten Mathematical Expression Recognition", ["x ^ 2"], "x^2"),
    ("HME100k", "Handwritten Mathematical Expression Recognition", ["X^2"], "x^2"),
    ("docVQA", "Doc-oriented VQA", ["12 March", "March 12"], "It is March 12, 2020"),
    ("textVQA", "Scene Text-centric VQA", ["stop\nsign"], "a stop sign"),
]


def ocrbench_lmms(rows, tmp_path, monkeypatch):
    """lmms-eval's score out of 1000 (its aggregation sums into a module-level dict and writes a
    report file: both redirected here)."""
    monkeypatch.setattr(
        ocrbench_utils, "OCRBench_score", dict.fromkeys(ocrbench_utils.OCRBench_score, 0)
    )
    results = [
        ocrbench_utils.ocrbench_process_results(
            {"answer": answers, "dataset": dataset, "question_type": qtype}, [prediction]
        )["ocrbench_accuracy"]
        for dataset, qtype, answers, prediction in rows
    ]
    args = SimpleNamespace(output_path=str(tmp_path))
    return ocrbench_utils.ocrbench_aggregate_accuracy(results, args), results


def ocrbench_ours(rows):
    items = [
        item(n, answers, dataset=dataset, type=qtype)
        for n, (dataset, qtype, answers, _) in enumerate(rows)
    ]
    return ours("ocrbench", items, [r[3] for r in rows])


def test_ocrbench_containment_agrees(tmp_path, monkeypatch):
    theirs, results = ocrbench_lmms(OCR_ROWS, tmp_path, monkeypatch)
    mine = ocrbench_ours(OCR_ROWS)
    assert mine["score"] == sum(r["score"] for r in results) == 4
    assert theirs == mine["score"] / 1000  # lmms-eval: the count over 1000, whatever the count


def test_ocrbench_fullwidth_and_empty_answers_differ(tmp_path, monkeypatch):
    """lmms-eval folds full-width ASCII (and the ideographic space) before matching; and an
    empty gold answer is contained in every prediction there, never here."""
    rows = [
        ("IIIT5K", "Regular Text Recognition", ["ABC"], "ＡＢＣ"),
        ("IIIT5K", "Regular Text Recognition", [""], "anything"),
    ]
    _, results = ocrbench_lmms(rows, tmp_path, monkeypatch)
    assert [r["score"] for r in results] == [1, 1]
    assert ocrbench_ours(rows)["score"] == 0


# -- multiple choice: ScienceQA, AI2D, SEED, MMVP, CV-Bench, RealWorldQA ---------------------

CHOICES = ["cat", "dog", "bird", "fish"]
LETTER_FORMS = ["B", "b", "B.", "B. dog", "A", "D. fish", "C"]  # read alike by all
GOLD = ["B", "B", "B", "B", "B", "D", "A"]


def mc_items(gold, choices=CHOICES, **meta):
    return [item(n, g, choices, **meta) for n, g in enumerate(gold)]


def sqa_lmms(gold, predictions):
    return [
        sqa_utils.sqa_process_results(
            {"choices": CHOICES, "answer": LETTERS.index(g)}, [p.strip()]
        )["exact_match"]
        for g, p in zip(gold, predictions)
    ]


def test_scienceqa_letter_answers_agree():
    theirs = sqa_lmms(GOLD, LETTER_FORMS)
    mine = ours("sqa_img", mc_items(GOLD, subject="natural science"), LETTER_FORMS)
    assert mine["score"] == approx(percent(sum(theirs) / len(theirs)))


def test_scienceqa_answer_forms_differ():
    """lmms-eval takes a bare letter or a leading "X." only; our MCQ rule also reads "(B)",
    "b.", "The answer is B." and an option's text."""
    forms = ["(B)", "b.", "The answer is B.", "dog"]
    assert sqa_lmms(["B"] * 4, forms) == [0.0] * 4
    assert ours("sqa_img", mc_items(["B"] * 4, subject="x"), forms)["score"] == 100.0


def ai2d_lmms(gold, predictions):
    """lmms-eval's ai2d pipeline: its MultiChoiceRegexFilter, then exact_match (case and
    punctuation ignored) against the gold letter."""
    filt = ai2d_utils.MultiChoiceRegexFilter(
        regex_pattern=r"([A-Z])\.", group_select=0, ignore_case=True, ignore_punctuation=True
    )
    filtered = filt.apply([[p] for p in predictions], [{} for _ in predictions])
    return [
        exact_match_hf_evaluate(
            predictions=[f.strip()], references=[g], ignore_case=True, ignore_punctuation=True
        )["exact_match"]
        for g, f in zip(gold, filtered)
    ]


def test_ai2d_letter_answers_agree():
    forms = [*LETTER_FORMS, "(B)"]
    gold = [*GOLD, "B"]
    theirs = ai2d_lmms(gold, forms)
    assert ours("ai2d", mc_items(gold), forms)["score"] == approx(percent(sum(theirs) / 8))


def test_ai2d_answer_phrases_differ():
    forms = ["The answer is B.", "dog"]
    assert ai2d_lmms(["B", "B"], forms) == [0.0, 0.0]
    assert ours("ai2d", mc_items(["B", "B"]), forms)["score"] == 100.0


def seed_lmms(gold, predictions):
    results = [
        seed_utils.seed_process_result({"answer": g, "data_type": "image", "question_id": n}, [p])[
            "seed_image"
        ]
        for n, (g, p) in enumerate(zip(gold, predictions))
    ]
    return [float(r["pred"].lower() == r["answer"].lower()) for r in results], results


def test_seed_letter_answers_agree():
    theirs, results = seed_lmms(GOLD, LETTER_FORMS)
    assert seed_utils.seed_aggregation_result(results) == approx(sum(theirs) / len(theirs))
    mine = ours("seed_img", mc_items(GOLD, question_type="Instance Identity"), LETTER_FORMS)
    assert mine["score"] == approx(percent(sum(theirs) / len(theirs)))


def test_seed_first_character_differs():
    """lmms-eval takes the first character of the answer: "(B)" is wrong and "answer is B" is
    read as "a" (right when the gold answer is A); we read both as B."""
    theirs, _ = seed_lmms(["B", "A"], ["(B)", "answer is B"])
    assert theirs == [0.0, 1.0]
    mine = ours("seed_img", mc_items(["B", "A"], question_type="x"), ["(B)", "answer is B"])
    assert mine["score"] == 50.0


MMVP_ROWS = [  # (Index, gold "(a)"/"(b)", prediction): pairs (1, 2), (3, 4), (5, 6)
    (1, "(a)", "A"),
    (2, "(b)", "B"),
    (3, "(a)", "(A)"),
    (4, "(b)", "A"),
    (5, "(b)", "B."),
    (6, "(a)", "a"),
]


def mmvp_lmms(rows):
    results = [
        mmvp_utils.mmvp_process_results({"Index": index, "Correct Answer": gold}, [prediction])[
            "mmvp_accuracy"
        ]
        for index, gold, prediction in rows
    ]
    return mmvp_utils.mmvp_aggregate_pair_results(results), mmvp_utils.mmvp_aggregate_results(
        results
    )


def mmvp_ours(rows):
    items = [
        item(index, gold.strip("()").upper(), ["open", "closed"], pair=(index - 1) // 2)
        for index, gold, _ in rows
    ]
    return ours("mmvp", items, [p for *_, p in rows])


def test_mmvp_pair_accuracy_agrees():
    pairs, accuracy = mmvp_lmms(MMVP_ROWS)
    mine = mmvp_ours(MMVP_ROWS)
    assert mine["score"] == approx(percent(pairs)) and mine["accuracy"] == approx(percent(accuracy))


def test_mmvp_option_text_differs():
    """We match an answer that is an option's text ("closed" -> B); lmms-eval's letter patterns
    do not (its "standalone A/B" pattern even reads the article in "a closed door" as A)."""
    rows = [(1, "(a)", "open"), (2, "(b)", "closed")]
    assert mmvp_lmms(rows) == (0.0, 0.0)
    assert mmvp_ours(rows)["score"] == 100.0
    assert mmvp_utils._extract_answer_letter("a closed door") == "A"


CVBENCH_ROWS = [  # (source, gold "(A)", prediction)
    ("ADE20K", "(A)", "A"),
    ("ADE20K", "(B)", "(B)"),
    ("ADE20K", "(C)", "A"),
    ("COCO", "(A)", "A."),
    ("COCO", "(D)", "D"),
    ("Omni3D", "(A)", "B"),
    ("Omni3D", "(B)", "B"),
]


def cvbench_lmms(rows):
    return [
        cvbench_utils.cv_bench_process_results(
            {"answer": gold, "idx": n, "type": "", "task": "Count", "source": source},
            [prediction],
        )["cv_bench_acc"]
        for n, (source, gold, prediction) in enumerate(rows)
    ]


def cvbench_ours(name, rows):
    items = [
        item(n, gold.strip("()"), CHOICES, source=source, task="Count")
        for n, (source, gold, _) in enumerate(rows)
    ]
    return ours(name, items, [p for *_, p in rows])


def test_cvbench_accuracy_agrees():
    """Per source, and CV-Bench 3D (one source); lmms-eval's combined cv_bench score is the
    official formula, the mean of our 2D and 3D headlines."""
    results = cvbench_lmms(CVBENCH_ROWS)
    two_d, three_d = CVBENCH_ROWS[:5], CVBENCH_ROWS[5:]
    mine_2d, mine_3d = cvbench_ours("cvbench_2d", two_d), cvbench_ours("cvbench_3d", three_d)
    for source in ("ADE20K", "COCO"):
        subset = [r for r in results if r["source"] == source]
        theirs = cvbench_utils.cv_bench_aggregate_results(subset)
        assert mine_2d["by_source"][source] == approx(percent(theirs))
    assert mine_3d["score"] == approx(
        percent(cvbench_utils.cv_bench_aggregate_results(results[5:]))
    )
    combined = cvbench_utils.cv_bench_default_aggregate_results(results)
    assert percent(combined) == approx((mine_2d["score"] + mine_3d["score"]) / 2)


def test_cvbench_2d_headline_and_extraction_differ():
    """lmms-eval's cv_bench_2d pools ADE20K and COCO questions; ours (the official script's)
    averages the two sources. Its letter regex takes the first letter of any text ("The answer
    is B" -> T, "banana" -> B)."""
    results = cvbench_lmms(CVBENCH_ROWS[:5])
    assert percent(cvbench_utils.cv_bench_aggregate_results(results)) == approx(80.0)
    assert cvbench_ours("cvbench_2d", CVBENCH_ROWS[:5])["score"] == approx((200 / 3 + 100) / 2)
    assert cvbench_utils._extract_answer_letter("The answer is B") == "T"
    assert cvbench_utils._extract_answer_letter("banana") == "B"
    rows = [("Omni3D", "(B)", "The answer is B"), ("Omni3D", "(A)", "banana")]
    assert [r["is_correct"] for r in cvbench_lmms(rows)] == [False, False]
    assert cvbench_ours("cvbench_3d", rows)["score"] == 50.0  # B right, banana unparsed


REALWORLDQA_QUESTION = "Which way?\nA. left\nB. right\nC. straight\nD. back"
REALWORLDQA_ROWS = [  # (gold, prediction, multiple choice?)
    ("B", "B", True),
    ("C", "(C)", True),
    ("D", "The answer is D.", True),
    ("A", "B", True),
    ("Downhill", "downhill.", False),
    ("3", "three", False),
]


def realworldqa_lmms(rows):
    return [
        realworldqa_utils.realworldqa_process_results({"answer": gold}, [prediction])["exact_match"]
        for gold, prediction, _ in rows
    ]


def realworldqa_ours(rows):
    options = ["left", "right", "straight", "back"]
    items = [
        item(
            n,
            gold,
            options if mcq else [],
            question_type="multiple_choice" if mcq else "open",
        )
        for n, (gold, _, mcq) in enumerate(rows)
    ]
    return ours("realworldqa", items, [p for _, p, _ in rows])


def test_realworldqa_agrees():
    theirs = realworldqa_lmms(REALWORLDQA_ROWS)
    assert realworldqa_ours(REALWORLDQA_ROWS)["score"] == approx(percent(sum(theirs) / 6))


def test_realworldqa_extraction_differs():
    """lmms-eval's extract_mcq_answer also takes a letter anywhere ("Option C is right"); ours
    reads no letter there (unparsed)."""
    rows = [("C", "Option C is right", True)]
    assert realworldqa_lmms(rows) == [1.0]
    assert realworldqa_ours(rows)["score"] == 0.0


# -- MMBench (CircularEval) --------------------------------------------------------------------

MMBENCH_QUESTIONS = [  # (index, options, gold letter, category, predictions per rotation)
    (1, ["cat", "dog", "bird", "fish"], "B", "attribute", ["B", "A", "D", "C"]),
    (2, ["red", "green", "blue", "gray"], "A", "attribute", ["A", "D", "C", "A"]),
    (3, ["one", "two", "three", "four"], "C", "counting", ["C", "B", "A", "D"]),
]


def mmbench_rows():
    """CircularEval variants as VLMEvalKit numbers them: rotation k of question i is index
    ``i + k * 1e6`` with option ``(j + k) % 4`` at position j (eval/benchmarks/mmbench.py)."""
    rows = []
    for index, options, gold, category, predictions in MMBENCH_QUESTIONS:
        for k, prediction in enumerate(predictions):
            rotated = options[k:] + options[:k]
            answer = LETTERS[(LETTERS.index(gold) - k) % 4]
            rows.append((index, k, rotated, answer, category, prediction))
    return rows


def test_mmbench_circular_accuracy_agrees():
    rows = mmbench_rows()
    # every question: right in rotations whose predicted letter equals the rotated gold
    results = []
    for index, k, rotated, answer, category, prediction in rows:
        doc = {
            "index": index + k * 1_000_000,
            "question": "q",
            "answer": answer,
            "hint": "nan",
            "source": "s",
            "split": "dev",
            "category": category,
            "L2-category": "l2",
            **dict(zip("ABCD", rotated)),
        }
        results.append(mmbench_utils.mmbench_process_results(doc, [prediction])["gpt_eval_score"])
    overall, by_category, _ = mmbench_utils.mmbench_evaluator.eval_result(
        results, eval_method="static"
    )
    items = [
        item(
            index + k * 1_000_000,
            answer,
            rotated,
            group=index,
            rotation=k,
            category=category,
            l2_category="l2",
        )
        for index, k, rotated, answer, category, _ in rows
    ]
    mine = ours("mmbench", items, [r[-1] for r in rows])
    assert mine["score"] == approx(percent(overall))
    for category, value in by_category.items():
        assert mine["by_category"][category] == approx(percent(value))
    assert 0 < mine["score"] < 100


def test_mmbench_option_text_inside_answer_differs():
    """lmms-eval's static matcher accepts an answer that contains exactly one option's text
    ("I think it is a dog"); our rule needs the whole answer to be that text."""
    evaluator = mmbench_utils.mmbench_evaluator
    choices = dict(zip("ABCD", ["cat", "dog", "bird", "fish"]))
    assert evaluator.can_infer("I think it is a dog", dict(choices)) == "B"
    assert get_benchmark("mmbench").extract("I think it is a dog", item(0, "B", CHOICES)) == ""


# -- MMMU --------------------------------------------------------------------------------------

MMMU_ROWS = [  # (question type, options, gold, prediction)
    ("multiple-choice", ["1", "2", "3", "4"], "B", "B"),
    ("multiple-choice", ["1", "2", "3", "4"], "C", "(C)"),
    ("multiple-choice", ["1", "2", "3", "4"], "A", "The answer is D."),
    ("open", [], "3.14", "3.14159"),
    ("open", [], "Paris", "paris"),
    ("open", [], "12", "13"),
]


def mmmu_lmms(rows):
    samples = []
    for n, (kind, options, gold, prediction) in enumerate(rows):
        doc = {
            "id": f"validation_Math_{n}",
            "question_type": kind,
            "options": str(options),
            "answer": gold,
        }
        samples.append(mmmu_utils.mmmu_process_results(doc, [prediction])["mmmu_acc"])
    return mmmu_utils.evaluate_mmmu(samples)[1]["acc"]


def mmmu_ours(rows):
    items = [
        item(
            f"validation_Math_{n}",
            gold if kind == "multiple-choice" else [gold],
            options,
            question_type=kind,
            subject="Math",
        )
        for n, (kind, options, gold, _) in enumerate(rows)
    ]
    return ours("mmmu", items, [r[3] for r in rows])


def test_mmmu_agrees_on_parsable_answers():
    assert mmmu_ours(MMMU_ROWS)["score"] == approx(percent(mmmu_lmms(MMMU_ROWS)))


def test_mmmu_unparsed_and_sentence_answers_differ():
    """An answer naming no option gets a random option in lmms-eval (the official MMMU code),
    none here; for open questions lmms-eval credits any number of the answer's key phrase (a
    hedged "5 or 6" is right for 5), we take the last number."""
    rows = [("multiple-choice", ["1", "2"], "A", "I am not sure")]
    mmmu_utils_random = mmmu_utils.parse_multi_choice_response
    picks = {
        mmmu_utils_random("I am not sure", ["A", "B"], {"A": "1", "B": "2"}) for _ in range(64)
    }
    assert picks == {"A", "B"}
    assert mmmu_ours(rows)["score"] == 0.0
    rows = [("open", [], "5", "The answer could be 5 or 6")]
    assert mmmu_lmms(rows) == 1.0
    assert mmmu_ours(rows)["score"] == 0.0
