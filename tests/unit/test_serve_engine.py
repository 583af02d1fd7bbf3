"""cambrian-serve's core without HTTP: request → prompt checks, batched streaming, the batching
generator worker (tests/unit/test_serve_http.py drives the same pieces through the server).

References are independent of the code under test: prompts are compared with the training
encoder's ``encode_prompt`` (another rendering path), answers with ``generate`` on the same
left-padded batch built by tests/unit/test_generate.py's ``prompt_batch``.
"""

from __future__ import annotations

import base64

import pytest
import torch

from cambrian_train.infer.chat import ChatOptions
from cambrian_train.infer.export_cli import main as export_main
from cambrian_train.infer.generate import generate, generate_ids, stream_generate_batch
from cambrian_train.infer.load import load_pretrained
from cambrian_train.models import build_model
from cambrian_train.run import config_yaml
from cambrian_train.serve.engine import Engine, GenerationError, batch_key
from cambrian_train.serve.prompts import Message, RequestError, build_prompt, image_from_url
from cambrian_train.train.checkpoint import save_stage_checkpoint
from tests.conftest import compose_config

# fixtures: images (wide.png, square.png), one_thread (autouse)
from tests.unit.test_generate import images, one_thread, prompt_batch  # noqa: F401

MAX_LENGTH = 256  # two images of 72 positions and some text


@pytest.fixture(scope="module")
def serve_export(tmp_path_factory):
    """A tiny export (tiny Llama + tiny CLIP, MLP connector) taking two images per prompt."""
    root = tmp_path_factory.mktemp("serve_run")
    cfg = compose_config(
        [
            "experiment=demo",
            f"output_dir={root}",
            "data.max_images=2",
            f"stages.finetune.max_length={MAX_LENGTH}",
        ]
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    trainable = {n for n, _ in model.named_parameters() if not n.startswith("towers.")}
    ckpt = root / "finetune" / "checkpoint"
    save_stage_checkpoint(
        model.state_dict(), trainable, ckpt, {"stage": "finetune"}, config_yaml(cfg)
    )
    out = tmp_path_factory.mktemp("serve_export") / "tiny-serve"
    assert export_main([str(ckpt), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def served(serve_export):
    return load_pretrained(serve_export)


def png_bytes(path) -> bytes:
    return path.read_bytes()


def test_prompts_match_the_training_encoder(served, images):  # noqa: F811
    _, _, encoder = served
    wide, square = str(images / "wide.png"), str(images / "square.png")
    two = build_prompt(encoder, [Message("user", "which is wider?", [wide, square])])
    reference = encoder.encode_prompt("<image>\n<image>\nwhich is wider?")
    assert two.sample.input_ids == reference.input_ids
    assert two.num_tokens == len(reference.input_ids)
    pixels, _ = encoder.load_images([wide, square])
    assert all(torch.equal(two.sample.pixel_values[k], v) for k, v in pixels.items())
    # images as bytes (a data: URL) load like the file
    from_bytes = build_prompt(encoder, [Message("user", "hi", [png_bytes(images / "wide.png")])])
    from_file = build_prompt(encoder, [Message("user", "hi", [wide])])
    assert from_bytes.sample.input_ids == from_file.sample.input_ids
    assert torch.equal(
        from_bytes.sample.pixel_values["clip"], from_file.sample.pixel_values["clip"]
    )
    # a multi-turn conversation renders as the template's multi-turn prompt
    talk = [
        Message("system", "be brief"),
        Message("user", "what color?", [wide]),
        Message("assistant", "red"),
        Message("user", "and now?"),
    ]
    text = encoder.tokenizer.decode(build_prompt(encoder, talk).sample.input_ids)
    assert text.index("be brief") < text.index("what color?") < text.index("red")
    assert text.index("red") < text.index("and now?")
    assert text.endswith("assistant<|end_header_id|>\n\n")


def test_tiled_prompts_match_the_training_encoder(served, images):  # noqa: F811
    """With data.tiling on, an uploaded image takes its tiles' slots, as in training."""
    import dataclasses

    from cambrian_train.config.schema import TilingConfig

    _, _, encoder = served
    tiled = dataclasses.replace(encoder, tiling=TilingConfig(max_num=2, tile_size=32), max_images=3)
    wide = str(images / "wide.png")  # 64 x 40: a 2 x 1 grid plus the thumbnail
    counts = tiled.tile_counts([wide])
    assert counts == [3]
    prompt = build_prompt(tiled, [Message("user", "what is it?", [wide])])
    reference = tiled.encode_prompt("<image>\nwhat is it?", counts)
    assert prompt.sample.input_ids == reference.input_ids
    assert len(prompt.sample.image_starts) == 3
    pixels, _ = tiled.load_images([wide], counts)
    assert torch.equal(prompt.sample.pixel_values["clip"], pixels["clip"])
    with pytest.raises(RequestError, match="image slots as tiles"):
        build_prompt(dataclasses.replace(tiled, max_images=2), [Message("user", "x", [wide])])


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "conversation is empty"),
        ([Message("user", "   ")], "empty question"),
        ([Message("user", "", ["IMG"])], "empty question"),
        ([Message("user", "a <image> b")], "holds <image>"),
        ([Message("user", "hi"), Message("assistant", "x")], "last message must be the user's"),
        ([Message("robot", "hi")], "role='robot'"),
        ([Message("user", "q"), Message("system", "s"), Message("user", "q")], "only come first"),
        ([Message("user", "q", ["IMG", "IMG", "IMG"])], "3 images; this model takes at most 2"),
        ([Message("user", "q", [b"not an image at all"])], "not an image"),
        ([Message("user", "word " * 300)], "more than the model's 256"),
    ],
)
def test_bad_requests_name_the_problem(served, images, messages, match):  # noqa: F811
    _, _, encoder = served
    for msg in messages:
        msg.images = [str(images / "wide.png") if i == "IMG" else i for i in msg.images]
    with pytest.raises(RequestError, match=match):
        build_prompt(encoder, messages)


def test_image_urls(images, tmp_path):  # noqa: F811
    raw = png_bytes(images / "wide.png")
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    assert image_from_url(url, allow_local_files=False) == raw
    path = str(images / "wide.png")
    assert image_from_url(path, allow_local_files=True) == path
    assert image_from_url("file://" + path, allow_local_files=True) == path
    for url, allow, match in [
        (path, False, "--allow-local-files"),
        ("file://" + path, False, "--allow-local-files"),
        (str(tmp_path / "gone.png"), True, "does not exist"),
        ("https://example.com/cat.png", True, "fetches no remote images"),
        ("data:image/png;base64,@@@", False, "not valid base64"),
        ("data:image/png,plain", False, "base64"),
        ("", False, "non-empty string"),
    ]:
        with pytest.raises(RequestError, match=match):
            image_from_url(url, allow_local_files=allow)


QUESTIONS = [
    ("<image>\nwhat color?", "wide.png"),
    ("count the shapes", None),
    ("<image>\nhi", "square.png"),
]


def test_batched_stream_rows_equal_generate_with_own_limits(served, images):  # noqa: F811
    model, tokenizer, encoder = served
    batch = prompt_batch(encoder, QUESTIONS, images)
    limits = [3, 8, 5]
    steps = list(stream_generate_batch(model, batch, tokenizer, limits))
    assert len(steps) == max(limits)
    for row, limit in enumerate(limits):
        text = "".join(step[row].text for step in steps)
        assert text == generate(model, batch, tokenizer, limit)[row]
        ends = [(s, step[row]) for s, step in enumerate(steps) if step[row].finish_reason]
        assert [(s, d.finish_reason, d.num_tokens) for s, d in ends] == [
            (limit - 1, "length", limit)
        ]
    # an end-of-sequence id ends a row early, with reason "stop"
    forced = int(generate_ids(model, batch, tokenizer.eos_token_id, 8)[1, 2])
    eos = [tokenizer.eos_token_id, forced]  # row 1's third token ends it
    steps = list(stream_generate_batch(model, batch, tokenizer, 8, eos_token_id=eos))
    end = next(d for d in (s[1] for s in steps) if d.finish_reason)
    assert end.finish_reason == "stop" and end.num_tokens < 8
    assert (
        "".join(s[1].text for s in steps)
        == generate(model, batch, tokenizer, 8, eos_token_id=eos)[1]
    )
    # a cancelled row stops at the next step; the batch ends once every row is done
    gone = [False, True, True]
    steps = list(
        stream_generate_batch(model, batch, tokenizer, [2, 50, 50], cancelled=lambda: gone)
    )
    assert len(steps) == 2
    assert [steps[0][r].finish_reason for r in range(3)] == [None, "cancelled", "cancelled"]
    with pytest.raises(ValueError, match=r"max_new_tokens=\[1, 0, 2\]"):
        next(stream_generate_batch(model, batch, tokenizer, [1, 0, 2]))


def test_batch_keys():
    greedy = ChatOptions(max_new_tokens=4)
    assert batch_key(greedy) == batch_key(ChatOptions(max_new_tokens=9, seed=3))
    assert batch_key(greedy) != batch_key(ChatOptions(stop=["\n"]))
    sampled = ChatOptions(temperature=0.7, top_p=0.9)
    assert batch_key(sampled) == batch_key(
        ChatOptions(max_new_tokens=2, temperature=0.7, top_p=0.9)
    )
    assert batch_key(sampled) != batch_key(ChatOptions(temperature=0.7))
    assert batch_key(ChatOptions(temperature=0.7, seed=1)) is None  # seeded: alone


def prompt_of(encoder, question, image_root):
    text, image = question
    messages = [
        Message("user", text.removeprefix("<image>\n"), [str(image_root / image)] if image else [])
    ]
    return build_prompt(encoder, messages)


def test_engine_batches_compatible_jobs_and_seeds_alone(served, images):  # noqa: F811
    model, tokenizer, encoder = served
    engine = Engine(model, encoder, max_batch_size=3)
    greedy = [ChatOptions(max_new_tokens=n) for n in (4, 7, 2)]
    seeded = ChatOptions(max_new_tokens=5, temperature=1.0, seed=11)
    # queued before the worker starts: the first batch holds the three greedy jobs, the seeded
    # one (submitted second) runs alone, the fourth greedy job after
    jobs = [
        engine.submit(prompt_of(encoder, QUESTIONS[0], images), greedy[0]),
        engine.submit(prompt_of(encoder, QUESTIONS[1], images), seeded),
        engine.submit(prompt_of(encoder, QUESTIONS[1], images), greedy[1]),
        engine.submit(prompt_of(encoder, QUESTIONS[2], images), greedy[2]),
        engine.submit(prompt_of(encoder, QUESTIONS[2], images), greedy[0]),
    ]
    engine.start()
    try:
        texts = [job.result(timeout=60) for job in jobs]
    finally:
        engine.stop()
    assert (engine.stats.batches, engine.stats.rows, engine.stats.largest_batch) == (3, 5, 3)
    batch = prompt_batch(encoder, [QUESTIONS[0], QUESTIONS[1], QUESTIONS[2]], images)
    for job, row, limit in ((jobs[0], 0, 4), (jobs[2], 1, 7), (jobs[3], 2, 2)):
        assert texts[jobs.index(job)] == generate(model, batch, tokenizer, limit)[row]
        assert (job.finish_reason, job.num_tokens) == ("length", limit)
    alone = prompt_batch(encoder, [QUESTIONS[1]], images)
    assert texts[1] == generate(model, alone, tokenizer, 5, temperature=1.0, seed=11)[0]
    assert (
        texts[4] == generate(model, prompt_batch(encoder, [QUESTIONS[2]], images), tokenizer, 4)[0]
    )
    assert sum(j.prompt.num_tokens for j in jobs) > 0


def test_engine_survives_a_failing_batch_and_cancels(served, images, monkeypatch):  # noqa: F811
    model, _, encoder = served
    engine = Engine(model, encoder).start()
    try:
        prompt = prompt_of(encoder, QUESTIONS[0], images)
        calls = {"n": 0}
        real = model.embed

        def broken(batch):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("device fell over")
            return real(batch)

        monkeypatch.setattr(model, "embed", broken)
        with pytest.raises(GenerationError, match="RuntimeError: device fell over"):
            engine.submit(prompt, ChatOptions(max_new_tokens=3)).result(timeout=60)
        assert engine.submit(prompt, ChatOptions(max_new_tokens=3)).result(timeout=60)
        assert engine.stats.failed_batches == 1
        # a reader that leaves after the first delta frees its row
        job = engine.submit(prompt, ChatOptions(max_new_tokens=200))
        stream = job.stream(timeout=60)
        next(stream)
        stream.close()
        reasons = []
        while not reasons:
            kind, value = job.events.get(timeout=60)
            if kind == "done":
                reasons.append(value)
        assert reasons[0][0] == "cancelled" and reasons[0][1] < 200
        idle = Engine(model, encoder, max_queue=1)  # never started: its queue only fills
        idle.submit(prompt, ChatOptions())
        with pytest.raises(RequestError, match="busy") as busy:
            idle.submit(prompt, ChatOptions())
        assert busy.value.status == 503
    finally:
        engine.stop()
