"""Generation with the tiny VLM: batched = single, KV cache = full forward, stop strings,
seeded sampling, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import Sample
from cambrian_train.infer.generate import (
    Sampler,
    StopStrings,
    cut_at_stop,
    generate,
    generate_ids,
    stream_generate,
)
from cambrian_train.infer.load import PromptSettings, make_encoder
from cambrian_train.models import build_model
from cambrian_train.models.llm import load_tokenizer
from tests.conftest import compose_config

CONNECTORS = {
    "mlp": [],
    "sva_in_llm": ["model/connector=tiny_sva", "model.connector.insert.count=1"],
}
QUESTIONS = [
    ("<image>\nwhat color is the large shape in the picture?", "wide.png"),
    ("<image>\ncount", "square.png"),
    ("describe the picture briefly please", None),
]
NEW_TOKENS = 8
TIE = 2e-4  # a top-2 logit gap below this is a genuine tie: rounding may pick either token


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs faster on one thread than on two busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)).save(root / "wide.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "square.png")
    return root


def tiny_setup(overrides):
    cfg = compose_config(overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    tokenizer = load_tokenizer(cfg.model.llm)
    prompt = PromptSettings(template="llama3", system_prompt="", max_length=256)
    return model, tokenizer, make_encoder(tokenizer, model, prompt)


@pytest.fixture(scope="module", params=sorted(CONNECTORS))
def setup(request):
    return tiny_setup(CONNECTORS[request.param])


@pytest.fixture(scope="module")
def mlp_setup():
    return tiny_setup(CONNECTORS["mlp"])


def prompt_batch(encoder, items, image_root):
    """Left-padded batch of (question, image file or None)."""
    samples = []
    for question, image in items:
        enc = encoder.encode_prompt(question)
        pixels, boxes = encoder.load_images([str(image_root / image)] if image else [])
        samples.append(Sample("q", enc.input_ids, enc.labels, enc.image_starts, pixels, boxes))
    return collate(
        samples,
        max(len(s.input_ids) for s in samples),
        encoder.max_images,
        encoder.slot_len,
        encoder.tokenizer.pad_token_id,
        encoder.image_specs,
        left_pad=True,
    )


def greedy_with_logits(model, batch, eos):
    steps = []
    ids = generate_ids(model, batch, eos, NEW_TOKENS, on_step=lambda lg, tk: steps.append(lg))
    return ids, torch.stack(steps, dim=1)  # [B, T], [B, T, V]


def test_batched_greedy_equals_batch_size_one(setup, images):
    model, tokenizer, encoder = setup
    batch = prompt_batch(encoder, QUESTIONS, images)
    assert batch.attention_mask.sum(1).unique().numel() == 3  # three prompt lengths: real padding
    ids, logits = greedy_with_logits(model, batch, tokenizer.eos_token_id)
    for row, item in enumerate(QUESTIONS):
        one_ids, one_logits = greedy_with_logits(
            model, prompt_batch(encoder, [item], images), tokenizer.eos_token_id
        )
        for t in range(one_ids.shape[1]):
            torch.testing.assert_close(one_logits[0, t], logits[row, t], atol=1e-4, rtol=1e-4)
            if one_ids[0, t] != ids[row, t]:  # only a tie may flip; later steps then differ
                top2 = torch.topk(one_logits[0, t], 2).values
                assert top2[0] - top2[1] < TIE, (row, t)
                break


def test_kv_cache_decoding_equals_full_forward(setup, images):
    """Each cached step's logits equal a full forward over prompt + answer so far (the in-LLM
    SVA layers see the vision context only in the prefill, as in a full forward)."""
    model, tokenizer, encoder = setup
    batch = prompt_batch(encoder, QUESTIONS[:1], images)
    ids, logits = greedy_with_logits(model, batch, tokenizer.eos_token_id)
    full = prompt_batch(encoder, QUESTIONS[:1], images)
    full.input_ids = torch.cat([batch.input_ids, ids[:, :-1]], dim=1)
    full.attention_mask = torch.ones_like(full.input_ids)
    with torch.no_grad():
        reference = model.logits(full)[:, batch.input_ids.shape[1] - 1 :]  # [1, T, V]
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_stop_strings_cut_rows_independently(mlp_setup, images):
    model, tokenizer, encoder = mlp_setup
    batch = prompt_batch(encoder, QUESTIONS, images)
    full = generate(model, batch, tokenizer, NEW_TOKENS)
    # a stop string of five ASCII characters inside one answer (it spans a token boundary)
    row, k = next(
        (r, k)
        for r, text in enumerate(full)
        for k in range(1, len(text) - 5)
        if text[k : k + 5].isascii() and text[k].isalpha()
    )
    text = full[row]
    stop = text[k : k + 5]
    cut = generate(model, batch, tokenizer, NEW_TOKENS, stop=[stop, "never-said"])
    assert cut == [cut_at_stop(t, [stop])[0] for t in full]
    assert cut[row] == text[: text.find(stop)]
    ids = generate_ids(
        model, batch, tokenizer.eos_token_id, NEW_TOKENS, stop_check=StopStrings(tokenizer, [stop])
    )
    full_ids = generate_ids(model, batch, tokenizer.eos_token_id, NEW_TOKENS)
    for r in range(len(QUESTIONS)):
        prefixes = [tokenizer.decode(full_ids[r, : t + 1]) for t in range(NEW_TOKENS)]
        end = next((t + 1 for t, p in enumerate(prefixes) if stop in p), NEW_TOKENS)
        assert torch.equal(ids[r, :end], full_ids[r, :end])
        assert (ids[r, end:] == tokenizer.eos_token_id).all()  # finished on its own step
    one = prompt_batch(encoder, QUESTIONS[row : row + 1], images)
    streamed = "".join(stream_generate(model, one, tokenizer, NEW_TOKENS, stop=[stop]))
    assert streamed == cut[row]


def test_eos_ends_a_row(mlp_setup, images):
    model, tokenizer, encoder = mlp_setup
    batch = prompt_batch(encoder, QUESTIONS, images)
    ids = generate_ids(model, batch, tokenizer.eos_token_id, NEW_TOKENS)
    forced = int(ids[1, 2])  # row 1's third token becomes an end-of-sequence id
    out = generate_ids(model, batch, [tokenizer.eos_token_id, forced], NEW_TOKENS)
    first = (ids[1] == forced).nonzero()[0, 0]
    assert torch.equal(out[1, : first + 1], ids[1, : first + 1])
    assert (out[1, first + 1 :] == tokenizer.eos_token_id).all()


def test_sampling_is_seeded(mlp_setup, images):
    model, tokenizer, encoder = mlp_setup
    batch = prompt_batch(encoder, QUESTIONS, images)

    def sample(seed, **kw):
        return generate(model, batch, tokenizer, 6, temperature=1.0, seed=seed, **kw)

    samples = [sample(seed) for seed in range(3)]
    assert sample(0) == samples[0]
    assert len(set(map(tuple, samples))) == 3
    greedy = generate(model, batch, tokenizer, 6)
    assert greedy not in samples
    assert sample(1, top_k=1) == greedy  # top-k 1 leaves only the argmax
    assert sample(2, top_p=1e-6) == greedy  # so does a vanishing nucleus


def test_sampler_filters_and_checks():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = Sampler(1.0, top_k=2).filtered_logits(logits).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = Sampler(1.0, top_p=0.75).filtered_logits(logits).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.5 + 0.3
    kept = Sampler(1.0, top_p=0.85).filtered_logits(logits).isfinite()
    assert kept.tolist() == [[True, True, True, False]]
    shuffled = logits[:, [2, 0, 3, 1]]
    kept = Sampler(1.0, top_k=3, top_p=0.75).filtered_logits(shuffled).isfinite()
    assert kept.tolist() == [[False, True, False, True]]
    for bad, match in (
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(top_k=-2), "top_k=-2"),
        (dict(top_p=0.0), "top_p=0.0"),
    ):
        with pytest.raises(ValueError, match=match):
            Sampler(**bad)


def test_stream_joins_to_generate(mlp_setup, images):
    model, tokenizer, encoder = mlp_setup
    batch = prompt_batch(encoder, QUESTIONS[:1], images)
    deltas = list(stream_generate(model, batch, tokenizer, NEW_TOKENS))
    assert len(deltas) > 1
    assert "".join(deltas) == generate(model, batch, tokenizer, NEW_TOKENS)[0]
    with pytest.raises(ValueError, match="batch of 3"):
        next(stream_generate(model, prompt_batch(encoder, QUESTIONS, images), tokenizer))
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate(model, batch, tokenizer, 0)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, batch, tokenizer, 4, stop=[""])
