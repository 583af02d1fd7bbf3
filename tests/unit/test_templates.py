"""Templates and tokenisation: rendered text, supervised spans, placeholder expansion."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import Turn, get_template, parse_turns
from cambrian_train.data.tokenize import IGNORE_INDEX, encode
from cambrian_train.tiny import ensure_asset


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_asset("tokenizer"))


CONV = [
    Turn("user", "<image>\nWhat color is the circle?"),
    Turn("assistant", "red"),
    Turn("user", "How many shapes are there?"),
    Turn("assistant", "2"),
]


def test_llama3_matches_tokenizer_chat_template(tokenizer):
    text = "".join(s.text for s in get_template("llama3").render(CONV, system_prompt=""))
    messages = [{"role": t.role, "content": t.text} for t in CONV]
    assert text == tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = get_template("llama3").generation_prompt("hi", system_prompt="")
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == expected


def test_supervised_text_is_exactly_the_answers(tokenizer):
    enc = encode(
        CONV,
        get_template("llama3"),
        tokenizer,
        slot_len=5,
        placeholder_id=99,
        max_length=512,
        system_prompt="",
    )
    supervised = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "red<|eot_id|>2<|eot_id|>"
    assert (
        enc.input_ids.count(tokenizer.bos_token_id) == 1
        and enc.input_ids[0] == tokenizer.bos_token_id
    )
    (start,) = enc.image_starts
    assert enc.input_ids[start : start + 5] == [99] * 5
    assert enc.input_ids[start - 1] != 99 and enc.input_ids[start + 5] != 99
    assert all(lab == IGNORE_INDEX for lab in enc.labels[start : start + 5])


def test_default_system_prompt_and_record_system_turn(tokenizer):
    tpl = get_template("llama3")
    text = "".join(s.text for s in tpl.render(CONV[:2]))
    assert "You are Cambrian" in text
    custom = "".join(s.text for s in tpl.render([Turn("system", "Be brief."), *CONV[:2]]))
    assert "Be brief." in custom and "You are Cambrian" not in custom


def test_plain_template_supervises_caption_only(tokenizer):
    turns = [Turn("user", "<image>\nDescribe the image."), Turn("assistant", "a red circle.")]
    enc = encode(turns, get_template("plain"), tokenizer, 4, 99, 64)
    assert enc.image_starts == [0] and enc.input_ids[:4] == [99] * 4
    supervised = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "a red circle.\n"
    assert len(enc.input_ids) == 4 + len(supervised)


def test_errors_name_the_reason(tokenizer):
    with pytest.raises(RecordError, match="too_long"):
        encode(CONV, get_template("llama3"), tokenizer, 500, 99, 100)
    with pytest.raises(RecordError, match="image_in_answer"):
        encode(
            [Turn("user", "q"), Turn("assistant", "<image>")],
            get_template("llama3"),
            tokenizer,
            4,
            99,
            100,
        )
    with pytest.raises(ValueError, match="unknown role 'bot'"):
        parse_turns([{"from": "bot", "value": "x"}], "rec-1")
    with pytest.raises(ValueError, match="template='nope'"):
        get_template("nope")
