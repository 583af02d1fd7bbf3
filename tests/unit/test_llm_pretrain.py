"""Text drills of the tiny Llama's pre-training: answers re-derived from the prompt text, the
supervision mask, and the asset built and loaded like any HF checkpoint."""

from __future__ import annotations

import re

from cambrian_train.llm_pretrain.drills import CLASSES, DRILLS, drill

OPTION = re.compile(r"^([A-D])\. (.+)$")


def parse(prompt):
    lines = prompt.split("\n")
    options = {m.group(1): m.group(2) for m in map(OPTION.match, lines) if m}
    return lines[0], options


def expected(kind, question, options):
    """The answer, worked out from the question text alone (independent of drills.py)."""
    body = question.replace(" Answer with a single word or number.", "")
    if kind == "copy":
        return re.fullmatch(r"Say the word (.+)\.", body).group(1)
    if kind == "sum":
        a, b = map(int, re.fullmatch(r"What is (\d) plus (\d)\?", body).groups())
        value = str(a + b)
    elif kind == "count":
        value = str(len(re.fullmatch(r"How many words are in: (.+)\?", body).group(1).split()))
    elif kind == "match":
        value = re.search(r" is (\S+)\?$", body).group(1)
    else:  # category: the one listed word of the named class
        name = re.search(r" is an? (.+)\?$", body).group(1)
        listed = list(options.values()) or re.search(r"Which of (.+) is an? ", body).group(1).split(
            ", "
        )
        members = [w for w in listed if w in CLASSES[name]]
        assert len(members) == 1, (body, members)
        value = members[0]
    if options:
        return next(letter for letter, text in options.items() if text == value)
    return value


def test_every_drill_answer_follows_from_its_text():
    seen = set()
    for index in range(3000):
        kind, prompt, answer = drill(0, index)
        question, options = parse(prompt)
        if options:
            assert prompt.endswith("Answer with the option's letter.")
            assert 2 <= len(options) <= 4 and len(set(options.values())) == len(options)
        else:
            assert prompt.endswith("Answer with a single word or number.")
        assert answer == expected(kind, question, options), prompt
        seen.add((kind, bool(options)))
    assert seen == {(k, m) for k in DRILLS for m in (False, True)} - {("copy", True)}
    assert drill(0, 5) == drill(0, 5) and drill(0, 5) != drill(1, 5)


def test_only_answers_and_end_of_turn_are_supervised():
    from transformers import AutoTokenizer

    from cambrian_train.llm_pretrain.train import IGNORE, batch
    from cambrian_train.tiny import ensure_asset

    tokenizer = AutoTokenizer.from_pretrained(ensure_asset("tokenizer"))
    drills = [("sum", "What is 3 plus 4? Answer with a single word or number.", "7")]
    inputs = batch(tokenizer, drills)
    supervised = inputs["input_ids"][0][inputs["labels"][0] != IGNORE]
    assert tokenizer.decode(supervised) == "7<|eot_id|>"


def test_llama_pt_asset_trains_and_loads_through_the_llm_preset(compose):
    """$CAMBRIAN_TINY_PRETRAIN_STEPS=2 (conftest): a quick asset, then the preset's loader."""
    import json
    from pathlib import Path

    import torch

    from cambrian_train.models.llm import load_causal_lm
    from cambrian_train.tiny import ensure_asset

    path = Path(ensure_asset("llama_pt"))
    report = json.loads((path / "pretrain.json").read_text())
    assert report["recipe"]["steps"] == 2 and len(report["losses"]) == 2
    cfg = compose(["experiment=demo", "model/llm=tiny_llama_pt"])
    assert cfg.model.llm.checkpoint == str(path)
    llm = load_causal_lm(cfg.model.llm)
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(path)
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.equal(llm(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_drill_accuracy_per_kind_and_answer_format():
    """A stand-in model that predicts every gold token of the multiple-choice drills and
    nothing of the short ones: 100 on every ``<kind>/mcq`` and on ``mcq``, 0 on the short
    forms, and overall the multiple-choice share of the drills (counted here from the layout)."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoTokenizer

    from cambrian_train.llm_pretrain.train import HELD_OUT_SEED, batch, drill_accuracy
    from cambrian_train.tiny import ensure_asset

    tokenizer = AutoTokenizer.from_pretrained(ensure_asset("llama"))
    count = 120
    drills = [drill(HELD_OUT_SEED, i) for i in range(count)]
    gold = {}
    for start in range(0, count, 100):
        chunk = drills[start : start + 100]
        inputs = batch(tokenizer, chunk)
        for row, (_, prompt, _) in enumerate(chunk):
            ids = tuple(inputs["input_ids"][row].tolist())
            gold[ids] = (inputs["labels"][row], prompt.endswith("option's letter."))

    class Oracle(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            vocab = len(tokenizer)
            logits = torch.zeros(*input_ids.shape, vocab)
            for row, ids in enumerate(input_ids.tolist()):
                labels, mcq = gold[tuple(ids)]
                for t in range(1, len(ids)):
                    if labels[t] != -100:
                        right = int(labels[t])
                        logits[row, t - 1, right if mcq else (right + 1) % vocab] = 1.0
            return SimpleNamespace(logits=logits)

    scores = drill_accuracy(Oracle(), tokenizer, count)
    mcq_share = 100.0 * sum(p.endswith("option's letter.") for _, p, _ in drills) / count
    assert scores["mcq"] == 100.0 and scores["short"] == 0.0
    assert all(scores[f"{k}/mcq"] == 100.0 for k in DRILLS if k != "copy")
    assert all(scores[f"{k}/short"] == 0.0 for k in DRILLS)
    assert "copy/mcq" not in scores
    assert abs(scores["overall"] - mcq_share) < 1e-9
