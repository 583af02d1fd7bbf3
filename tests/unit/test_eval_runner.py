"""The benchmark runner and ``cambrian-eval`` on a tiny run checkpoint: files written, scores
equal to the benchmark's own scoring, sharded generation equal to one process, user errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from cambrian_train.eval.benchmarks import get_benchmark
from cambrian_train.eval.cli import main
from cambrian_train.eval.runner import (
    Decoding,
    encode_items,
    evaluate,
    generate_shard,
    item_images,
    load_items,
    plan_batches,
    shard_batches,
)
from cambrian_train.infer.load import load_pretrained
from cambrian_train.models import build_model
from cambrian_train.run import config_yaml
from cambrian_train.train.checkpoint import save_stage_checkpoint
from tests.conftest import compose_config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "benchmarks"
MMBENCH = FIXTURES / "mmbench" / "dev.tsv"
RESULT_KEYS = {
    "model",
    "benchmark",
    "score",
    "count",
    "metrics",
    "prompt_suffix_sha256",
    "decoding",
}
MAX_LENGTH = 256
RECORD_KEYS = {"id", "prompt", "prediction", "extracted", "answer"}


def write_checkpoint(root: Path) -> Path:
    """A tiny stage-2 run checkpoint (the demo model, LLM and connector trainable) under
    ``root/finetune/checkpoint``. The trainable weights are moved well off their random init
    (std 0.02): that init answers every prompt alike, which would hide a mixed-up order."""
    cfg = compose_config(["experiment=demo", f"output_dir={root}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    trainable = {n for n, _ in model.named_parameters() if not n.startswith("towers.")}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trainable:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    ckpt = root / "finetune" / "checkpoint"
    save_stage_checkpoint(
        model.state_dict(), trainable, ckpt, {"stage": "finetune"}, config_yaml(cfg)
    )
    return ckpt


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs faster on one thread than on two busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """(model, tokenizer, encoder) with room for MMBench's prompts (139 tokens; the demo
    trained at 112)."""
    model, tokenizer, encoder = load_pretrained(checkpoint)
    return model, tokenizer, dataclasses.replace(encoder, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def synthetic_test(synthetic_root):
    return synthetic_root / "test.jsonl"


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_plan_sorts_longest_first_and_shards_whole_batches():
    lengths = [5, 9, 5, 7, 9, 1, 7]
    batches = plan_batches(lengths, 3)
    assert batches == [[1, 4, 3], [6, 0, 2], [5]]  # ties keep item order
    assert shard_batches(len(batches), 0, 2) == [0, 2]
    assert shard_batches(len(batches), 1, 2) == [1]
    assert shard_batches(len(batches), 0, 1) == [0, 1, 2]
    assert shard_batches(2, 3, 4) == []  # more processes than batches: nothing to do
    with pytest.raises(ValueError, match="batch_size=0"):
        plan_batches(lengths, 0)
    with pytest.raises(ValueError, match="rank=2"):
        shard_batches(3, 2, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"stop": ("",)}, "stop strings"),
    ],
)
def test_decoding_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Decoding(**kwargs)


def test_bytes_images_equal_files(loaded, synthetic_test):
    _, _, encoder = loaded
    item = load_items(get_benchmark("synthetic"), synthetic_test, limit=1)[0]
    as_bytes = dataclasses.replace(item, images=[Path(item.images[0]).read_bytes()])
    pixels, boxes = item_images(encoder, item)
    pixels_b, boxes_b = item_images(encoder, as_bytes)
    assert set(pixels) == set(encoder.image_specs) and pixels["clip"].shape[0] == 1
    assert all(torch.equal(pixels[k], pixels_b[k]) for k in pixels)
    assert torch.equal(boxes, boxes_b)
    with pytest.raises(ValueError, match=f"item {item.id}: image of 3 bytes cannot be decoded"):
        item_images(encoder, dataclasses.replace(item, images=[b"png"]))
    with pytest.raises(ValueError, match=f"item {item.id}: image /nowhere.png does not exist"):
        item_images(encoder, dataclasses.replace(item, images=["/nowhere.png"]))


def test_bad_items_are_errors_naming_them(loaded):
    _, _, encoder = loaded
    bench = get_benchmark("mmbench")
    item = load_items(bench, MMBENCH)[0]
    with pytest.raises(ValueError, match=f"item {item.id} has 1 <image> tags for 0 images"):
        encode_items(encoder, bench, [dataclasses.replace(item, images=[])])
    short = dataclasses.replace(encoder, max_length=8)
    with pytest.raises(ValueError, match=f"item {item.id}: too_long.*max_length is 8"):
        encode_items(short, bench, [item])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sharded_generation_equals_one_process(loaded, synthetic_test, temperature):
    """Two shards of the plan generate exactly what one process does, greedy and sampled."""
    model, _, encoder = loaded
    bench = get_benchmark("mmbench")
    items = load_items(bench, MMBENCH)  # 7 items: 4 + 3 rotations, two prompt lengths
    prompts = encode_items(encoder, bench, items)
    batches = plan_batches([len(p.input_ids) for p in prompts], 2)
    decoding = Decoding(max_new_tokens=4, temperature=temperature, seed=5)
    single = generate_shard(model, encoder, items, prompts, batches, range(len(batches)), decoding)
    shards = [
        generate_shard(
            model, encoder, items, prompts, batches, shard_batches(len(batches), r, 2), decoding
        )
        for r in range(2)
    ]
    assert sorted(shards[0]) != sorted(shards[1]) and not set(shards[0]) & set(shards[1])
    assert {**shards[0], **shards[1]} == single
    assert sorted(single) == list(range(len(items)))
    assert len(set(single.values())) > 2  # answers differ: a mixed-up order would show
    ordered = evaluate(
        model, encoder.tokenizer, encoder, bench, items, batch_size=2, decoding=decoding
    )
    assert ordered == [single[i] for i in range(len(items))]


def test_cli_writes_predictions_and_results(checkpoint, synthetic_test, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model", str(checkpoint), "--out", str(out), "--limit", "5", "--batch-size", "2"]
    args += ["--max-new-tokens", "3", "--device", "cpu", "--max-length", str(MAX_LENGTH)]
    args += ["--benchmark", "synthetic", "--data", str(synthetic_test)]
    args += ["--benchmark", "mmbench", "--data", str(MMBENCH)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    model_name = f"{checkpoint.parent.parent.name}-finetune"  # <run>-<stage>
    for name, data in (("synthetic", synthetic_test), ("mmbench", MMBENCH)):
        bench = get_benchmark(name)
        items = bench.load(data)[:5]
        records = read_jsonl(out / name / "predictions.jsonl")
        assert [r["id"] for r in records] == [i.id for i in items]  # item order, --limit 5
        for record, item in zip(records, items):
            assert set(record) == RECORD_KEYS | {"correct"}  # both have options
            assert record["prompt"] == item.prompt and record["answer"] == item.answer
            assert record["extracted"] == bench.extract(record["prediction"], item)
        results = json.loads((out / name / "results.json").read_text())
        assert RESULT_KEYS <= set(results)
        expected = bench.score(items, [r["extracted"] for r in records])
        assert results["metrics"] == json.loads(json.dumps(expected))
        assert results["score"] == expected["score"] and results["count"] == 5
        assert results["model"] == model_name and results["benchmark"] == name
        assert results["prompt_suffix_sha256"] == bench.suffix_sha256
        assert results["decoding"]["max_new_tokens"] == 3
        assert results["decoding"]["temperature"] == 0.0
        assert results["limit"] == 5 and results["data"] == str(data)
        assert f"{name}: score" in stdout
    mmbench = json.loads((out / "mmbench" / "results.json").read_text())
    suffix = "Answer with the option's letter from the given choices directly."
    assert mmbench["prompt_suffix_sha256"] == hashlib.sha256(suffix.encode()).hexdigest()
    synthetic = read_jsonl(out / "synthetic" / "predictions.jsonl")
    for record in synthetic:  # the demo's exact-match rule, one item at a time
        gold = get_benchmark("synthetic").extract(record["answer"], None)
        assert record["correct"] == (record["extracted"] != "" and record["extracted"] == gold)


def test_cli_reads_a_suite(checkpoint, synthetic_test, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"synthetic: {synthetic_test}\n")
    args = ["--model", str(checkpoint), "--suite", str(suite), "--out", str(tmp_path / "o")]
    assert main([*args, "--limit", "2", "--max-new-tokens", "2", "--model-name", "tiny"]) == 0
    results = json.loads((tmp_path / "o" / "synthetic" / "results.json").read_text())
    assert results["model"] == "tiny" and results["count"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--benchmark", "mmbenchx", "--data", "{mmbench}"], "unknown benchmark 'mmbenchx'"),
        (["--benchmark", "mmbench", "--data", "/no/such.tsv"], "data path /no/such.tsv"),
        (["--benchmark", "mmbench"], "1 --benchmark for 0 --data"),
        ([], "nothing to evaluate"),
        (["--suite", "/no/s.yaml", "--batch-size", "0"], "suite file /no/s.yaml does not exist"),
        (["--benchmark", "mmbench", "--data", "{mmbench}", "--batch-size", "0"], "--batch-size=0"),
        (["--suite", "/no/suite.yaml"], "suite file /no/suite.yaml does not exist"),
        (["--benchmark", "mmbench", "--data", "{mmbench}"], "item 0: too_long: prompt of 139"),
        (["--benchmark", "mmbench", "--data", "{mmbench}", "--limit", "0"], "--limit=0"),
    ],
)
def test_cli_user_errors_exit_2(checkpoint, extra, message, capsys):
    args = ["--model", str(checkpoint), *[a.format(mmbench=MMBENCH) for a in extra]]
    assert main(args) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after any weight-loading progress bar
    assert error.startswith("cambrian-eval: error: ") and message in error


def test_cli_rejects_a_model_that_is_not_one(tmp_path, capsys):
    args = ["--model", str(tmp_path), "--benchmark", "mmbench", "--data", str(MMBENCH)]
    assert main(args) == 2
    assert "not a run checkpoint" in capsys.readouterr().err


def test_text_only_and_multi_image_items_share_a_batch(loaded, synthetic_test, caplog):
    model, tokenizer, encoder = loaded
    bench = get_benchmark("synthetic")
    item = load_items(bench, synthetic_test, limit=1)[0]
    question = item.prompt.replace("<image>\n", "")
    items = [
        dataclasses.replace(item, id="none", images=[], prompt=question),
        dataclasses.replace(
            item, id="two", images=item.images * 2, prompt=f"<image>\n{item.prompt}"
        ),
        item,
    ]
    decoding = Decoding(max_new_tokens=2)
    texts = evaluate(
        model, tokenizer, encoder, bench, items, batch_size=3, decoding=decoding, static_shapes=True
    )
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert "an item has 2 images; the model was trained with at most 1" in caplog.text
