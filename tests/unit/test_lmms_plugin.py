"""The lmms-eval plugin (eval/lmms_plugin.py) on a tiny export: registration through lmms-eval's
entry-point group, requests answered exactly as ``cambrian-eval``'s runner answers the same
prompts and images, log-likelihoods equal to the training loss, and the local fixture tasks of
tests/fixtures/lmms_task run through lmms-eval's own CLI and evaluator (no network).

Skipped without lmms-eval (``pip install 'lmms-eval==0.7.3'``, the ``lmms`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval")

import torch  # noqa: E402
from lmms_eval.api.instance import Instance, unwrap_generation_output  # noqa: E402
from lmms_eval.models.registry_v2 import ModelRegistryV2  # noqa: E402
from PIL import Image  # noqa: E402

from cambrian_train.data.collate import collate  # noqa: E402
from cambrian_train.data.dataset import Sample  # noqa: E402
from cambrian_train.data.tokenize import IGNORE_INDEX  # noqa: E402
from cambrian_train.eval import lmms_plugin  # noqa: E402
from cambrian_train.eval.benchmarks import EvalItem, get_benchmark  # noqa: E402
from cambrian_train.eval.lmms_plugin import (  # noqa: E402
    CambrianTrain,
    image_tensors,
    prompt_with_images,
)
from cambrian_train.eval.runner import Decoding, evaluate  # noqa: E402
from cambrian_train.infer.export_cli import main as export_main  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.unit.test_eval_runner import one_thread, write_checkpoint  # noqa: E402, F401

FIXTURE = REPO / "tests" / "fixtures" / "lmms_task"
FIXTURE_REL = FIXTURE.relative_to(REPO)  # the task YAMLs' data_files are relative to the cwd
IMAGES = FIXTURE / "images"
GENERATE_TASK, CHOICE_TASK = "cambrian_fixture_generate", "cambrian_fixture_choice"
GEN_KWARGS = {"max_new_tokens": 6, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
MAX_LENGTH = 256  # the two-image prompt (2 x 72 vision slots) exceeds the demo's 112
OFFLINE_ENV = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
    "OMP_NUM_THREADS": "1",  # the in-process expectations run on one thread (one_thread)
}


def _fixture_utils():
    spec = importlib.util.spec_from_file_location("lmms_fixture_utils", FIXTURE / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixture_utils = _fixture_utils()


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny export (the demo model with moved weights, as test_eval_runner's checkpoint)."""
    root = tmp_path_factory.mktemp("lmms")
    checkpoint = write_checkpoint(root / "run")
    out = root / "export"
    assert export_main([str(checkpoint), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def model(export) -> CambrianTrain:
    return CambrianTrain(pretrained=str(export), device="cpu", batch_size=2, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def entry_point_dir(tmp_path_factory) -> Path:
    """A directory whose ``*.dist-info`` declares the ``lmms_eval.models`` entry point, as the
    installed distribution would (the lines a ``setup.py`` ``entry_points`` entry writes)."""
    root = tmp_path_factory.mktemp("entry_point")
    info = root / "cambrian_train_lmms_plugin-0.0.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(
        "Metadata-Version: 2.1\nName: cambrian-train-lmms-plugin\nVersion: 0.0\n"
    )
    info.joinpath("entry_points.txt").write_text(
        "[lmms_eval.models]\ncambrian_train = cambrian_train.eval.lmms_plugin:manifests\n"
    )
    return root


def docs(name: str):
    return read_jsonl(FIXTURE / "data" / f"{name}.jsonl")


def request(kind: str, args: tuple, doc_id: int, task: str, idx: int = 0) -> Instance:
    return Instance(kind, args, idx, {"task": task, "doc_id": doc_id, "repeats": 1})


def generate_requests(model, gen_kwargs=GEN_KWARGS):
    rows = docs("generate")
    model.task_dict = {GENERATE_TASK: {"test": rows}}
    return [
        request(
            "generate_until",
            (
                fixture_utils.doc_to_text(doc),
                dict(gen_kwargs),
                fixture_utils.doc_to_visual,
                i,
                GENERATE_TASK,
                "test",
            ),
            i,
            GENERATE_TASK,
        )
        for i, doc in enumerate(rows)
    ]


def choice_requests(model):
    rows = docs("choice")
    model.task_dict = {CHOICE_TASK: {"test": rows}}
    out = []
    for i, doc in enumerate(rows):
        for j, choice in enumerate(doc["choices"]):
            args = (
                fixture_utils.doc_to_text(doc),
                f" {choice}",  # lmms-eval's default target_delimiter
                fixture_utils.doc_to_visual,
                i,
                CHOICE_TASK,
                "test",
            )
            out.append(request("loglikelihood", args, i, CHOICE_TASK, j))
    return out


def runner_generations(model, decoding: Decoding, batch_size: int):
    """What ``cambrian-eval``'s runner generates for the fixture's prompts and image files."""
    items = [
        EvalItem(
            id=doc["id"],
            images=[str(IMAGES / name) for name in doc["images"]],
            prompt=prompt_with_images(fixture_utils.doc_to_text(doc), len(doc["images"])),
            answer=doc["answer"],
        )
        for doc in docs("generate")
    ]
    return evaluate(
        model.model,
        model.tokenizer,
        model.encoder,
        get_benchmark("synthetic"),
        items,
        batch_size=batch_size,
        decoding=decoding,
    )


def variant(model: CambrianTrain, **attributes) -> CambrianTrain:
    """The same loaded model with other settings (``_batch_size``, ``loglikelihood_value``)."""
    other = CambrianTrain.__new__(CambrianTrain)
    other.__dict__.update(model.__dict__, **attributes)
    return other


def reference_loglikelihood(model, context: str, continuation: str, images):
    """(log p(continuation | context), its token count, greedy-ness) from a right-padded training
    batch: the training loss's token sum and the full logits of ``model.logits``."""
    enc = model.encoder
    prompt = enc.encode_prompt(prompt_with_images(context, len(images)))
    cont = model.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = prompt.input_ids + cont
    labels = [IGNORE_INDEX] * len(prompt.input_ids) + cont
    pixels, boxes = enc.load_images([str(IMAGES / name) for name in images])
    sample = Sample("ref", ids, labels, prompt.image_starts, pixels, boxes)
    batch = collate(
        [sample],
        len(ids) + 3,  # right padding, as in training
        max(1, len(images)),
        enc.slot_len,
        model.tokenizer.pad_token_id,
        enc.image_specs,
    )
    with torch.no_grad():
        total, count = model.model(batch, reduction="sum")
        logits = model.model.logits(batch)[0].float()
    assert int(count) == len(cont)
    n = len(prompt.input_ids)
    predicted = logits[n - 1 : n - 1 + len(cont)].argmax(-1)
    return -float(total), len(cont), bool((predicted == torch.tensor(cont)).all())


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4)


# -- registration ------------------------------------------------------------------------------


def test_entry_point_registers_the_model_class(entry_point_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(entry_point_dir))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.get_model_class(lmms_plugin.MODEL_ID) is CambrianTrain
    resolved = registry.resolve(lmms_plugin.MODEL_ID)
    assert resolved.model_type == "simple" and resolved.class_path == lmms_plugin.CLASS_PATH


def test_register_and_module_cli(capsys):
    lmms_plugin.register()
    from lmms_eval import models

    assert models.get_model(lmms_plugin.MODEL_ID) is CambrianTrain
    argv = list(sys.argv)
    lmms_plugin.main(["models"])  # the lmms-eval CLI's model listing, with the model registered
    assert sys.argv == argv
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [lmms_plugin.MODEL_ID, "simple"] in listed


# -- images and prompts ------------------------------------------------------------------------


def test_pil_images_become_the_tensors_of_their_files(model, tmp_path):
    """RGB, RGBA (composited on white), palette, and EXIF-rotated JPEG images: the tensors of
    lmms-eval's PIL visuals equal ``load_images`` of the files and of their bytes."""
    palette = tmp_path / "palette.png"
    Image.open(IMAGES / "blue_circle_wide.png").convert("P").save(palette)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    gradient = Image.linear_gradient("L").resize((40, 24)).convert("RGB")
    gradient.save(rotated, exif=exif)
    paths = [*(IMAGES / n for n in sorted(os.listdir(IMAGES))), palette, rotated]
    encoder = model.encoder
    for path in paths:
        with Image.open(path) as img:
            img.load()
            pixels, boxes = image_tensors(encoder, [img])
        for ref in (str(path), path.read_bytes()):
            want_pixels, want_boxes = encoder.load_images([ref])
            assert want_pixels.keys() == pixels.keys()
            for name in pixels:
                assert torch.equal(pixels[name], want_pixels[name]), (path, name)
            assert torch.equal(boxes, want_boxes), path
    with Image.open(rotated) as img:
        assert img.size == (40, 24)
        _, boxes = image_tensors(encoder, [img])
    assert boxes[0, 0] > 0 and boxes[0, 1] == 0  # displayed upright: 24 x 40, padded sideways
    pixels, boxes = image_tensors(encoder, [])
    assert boxes.shape == (0, 4) and all(p.shape[0] == 0 for p in pixels.values())


def test_tiled_visuals_take_the_slots_of_their_files(model, monkeypatch, tmp_path):
    """With data.tiling, a PIL visual's prompt slots and tensors equal its file's (EXIF-rotated
    JPEG: the header size is swapped as the decoded image is)."""
    import dataclasses

    from cambrian_train.config.schema import TilingConfig

    tiled = dataclasses.replace(model.encoder, tiling=TilingConfig(max_num=4, tile_size=16))
    monkeypatch.setattr(model, "encoder", tiled)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed 24 x 40: aspect 0.6 → a 1×2 grid, + thumbnail = 3 slots
    Image.linear_gradient("L").resize((40, 24)).convert("RGB").save(rotated, exif=exif)
    with Image.open(rotated) as img:
        img.load()
        prepared = model._prepare("<image>\nWhat is it?", [img], "fixture")
    assert tiled.tile_counts([str(rotated)]) == [3]
    assert len(prepared.encoded.image_starts) == 3 and prepared.num_images == 3
    want, _ = tiled.load_images([str(rotated)], [3])
    for name in want:
        assert torch.equal(prepared.pixels[name], want[name])


def test_prompt_image_tags():
    assert prompt_with_images("What?", 2) == "<image>\n<image>\nWhat?"
    assert prompt_with_images("What?", 0) == "What?"
    assert prompt_with_images("<image>\nWhat?", 1) == "<image>\nWhat?"
    with pytest.raises(ValueError, match="2 <image> tags for 1 images"):
        prompt_with_images("<image><image> What?", 1)


# -- generate_until ----------------------------------------------------------------------------


def test_generate_until_answers_as_the_eval_runner(model):
    requests = generate_requests(model)
    texts = model.generate_until(requests)
    assert len(texts) == len(requests) and all(isinstance(t, str) for t in texts)
    expected = runner_generations(model, Decoding(max_new_tokens=6, stop=("\n\n",)), 2)
    assert texts == expected
    assert len(set(texts)) > 1  # the moved weights answer differently per prompt
    one_by_one = variant(model, _batch_size=1)
    assert one_by_one.generate_until(generate_requests(one_by_one)) == texts


def test_sampled_generation_is_seeded_as_the_runner(model):
    sampled = {"max_new_tokens": 5, "do_sample": True, "temperature": 0.9, "top_p": 0.95}
    first = model.generate_until(generate_requests(model, sampled))
    assert model.generate_until(generate_requests(model, sampled)) == first
    decoding = Decoding(max_new_tokens=5, temperature=0.9, top_p=0.95, seed=model.seed)
    assert first == runner_generations(model, decoding, 2)
    other = model.generate_until(generate_requests(model, {**sampled, "seed": 7}))
    assert other != first


def test_generation_kwargs(model, caplog):
    decoding = model._decoding(
        {"until": "###", "max_new_tokens": 3, "temperature": 0.5, "image_aspect_ratio": "original"}
    )
    assert decoding == Decoding(max_new_tokens=3, temperature=0.5, seed=model.seed, stop=("###",))
    assert "image_aspect_ratio" in caplog.text
    assert model._decoding({"temperature": 0.7, "do_sample": False}).temperature == 0
    assert model._decoding({"do_sample": True}).temperature == 1.0
    assert model._decoding({"top_p": None, "until": [""]}) == Decoding(
        max_new_tokens=lmms_plugin.DEFAULT_MAX_NEW_TOKENS, seed=model.seed
    )
    with pytest.raises(NotImplementedError, match="beam search"):
        model._decoding({"num_beams": 4})


# -- loglikelihood -----------------------------------------------------------------------------


def test_loglikelihood_equals_the_training_loss(model):
    """Default: the continuation's mean token loss (lmms-eval's convention: multiple_choice
    takes the argmin); ``loglikelihood=logprob``: the log-probability sum. Both equal the
    training loss of the same tokens, and batching changes neither."""
    requests = choice_requests(model)
    losses = model.loglikelihood(requests)
    logprob_model = variant(model, loglikelihood_value="logprob")
    logprobs = logprob_model.loglikelihood(choice_requests(logprob_model))
    rows = docs("choice")
    for req, (loss, greedy), (logprob, greedy_too) in zip(requests, losses, logprobs):
        context, continuation, _, doc_id, _, _ = req.args
        want, count, want_greedy = reference_loglikelihood(
            model, context, continuation, rows[doc_id]["images"]
        )
        assert close(logprob, want), (req.args[:2], logprob, want)
        assert close(loss, -want / count), (req.args[:2], loss, -want / count)
        assert greedy == greedy_too == want_greedy
    one_by_one = variant(model, _batch_size=1)
    singles = one_by_one.loglikelihood(choice_requests(one_by_one))
    for (a, ga), (b, gb) in zip(losses, singles):
        assert close(a, b) and ga == gb


def test_loglikelihood_greedy_continuation(model):
    """A continuation equal to the greedy generation (as tokens) is flagged greedy."""
    rows = docs("choice")
    model.task_dict = {CHOICE_TASK: {"test": rows}}
    context = fixture_utils.doc_to_text(rows[0])
    gen = model.generate_until(
        [
            request(
                "generate_until",
                (
                    context,
                    {"max_new_tokens": 3},
                    fixture_utils.doc_to_visual,
                    0,
                    CHOICE_TASK,
                    "test",
                ),
                0,
                CHOICE_TASK,
            )
        ]
    )[0]
    ids = model.tokenizer(gen, add_special_tokens=False)["input_ids"]
    if model.tokenizer.decode(ids) != gen or not ids:
        pytest.skip(f"the greedy text {gen!r} does not re-tokenise to itself")
    args = (context, gen, fixture_utils.doc_to_visual, 0, CHOICE_TASK, "test")
    [(loss, greedy)] = model.loglikelihood([request("loglikelihood", args, 0, CHOICE_TASK)])
    want, count, want_greedy = reference_loglikelihood(model, context, gen, rows[0]["images"])
    assert close(loss, -want / count)
    assert greedy and want_greedy


def test_unconditional_and_target_function_requests(model):
    rows = docs("choice")
    model.task_dict = {CHOICE_TASK: {"test": rows}}
    model = variant(model, loglikelihood_value="logprob")
    model.task_dict = {CHOICE_TASK: {"test": rows}}
    [(logprob, _)] = model.loglikelihood([request("loglikelihood", ("", " red"), 0, CHOICE_TASK)])
    want, _, _ = reference_loglikelihood(model, "", " red", [])
    assert close(logprob, want)
    target = lambda doc: " " + doc["choices"][doc["label"]]  # noqa: E731
    context = fixture_utils.doc_to_text(rows[1])
    args = (context, target, fixture_utils.doc_to_visual, 1, CHOICE_TASK, "test")
    [(logprob, _)] = model.loglikelihood([request("loglikelihood", args, 1, CHOICE_TASK)])
    want, _, _ = reference_loglikelihood(model, context, " blue", rows[1]["images"])
    assert close(logprob, want)


# -- user errors -------------------------------------------------------------------------------


def test_unsupported_requests_are_named(model, export):
    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        model.generate_until_multi_round([])
    model.task_dict = {"video": {"test": [{"video": "clip.mp4"}]}}
    args = ("What happens?", {}, lambda doc: [doc["video"]], 0, "video", "test")
    with pytest.raises(NotImplementedError, match="video"):
        model.generate_until([request("generate_until", args, 0, "video")])
    model.task_dict = {"t": {"test": [{}]}}
    args = ("<image> <image> What?", {}, lambda doc: [Image.new("RGB", (8, 8))], 0, "t", "test")
    with pytest.raises(ValueError, match="t document 0: the prompt holds 2 <image> tags"):
        model.generate_until([request("generate_until", args, 0, "t")])
    args = ("word " * 300, {}, None, 0, "t", "test")
    with pytest.raises(ValueError, match="max_length is 256"):
        model.generate_until([request("generate_until", args, 0, "t")])
    with pytest.raises(TypeError, match="unknown model_args \\['pretraind'\\]"):
        CambrianTrain(pretrained=str(export), pretraind="x")
    with pytest.raises(ValueError, match="no 'auto'"):
        CambrianTrain(pretrained=str(export), batch_size="auto")
    with pytest.raises(ValueError, match="loglikelihood='nll' is not one of"):
        CambrianTrain(pretrained=str(export), loglikelihood="nll")


# -- lmms-eval's own CLI and evaluator ---------------------------------------------------------


def copy_fixture(root: Path) -> Path:
    """The fixture tasks under ``root`` at the same relative path (the YAMLs' data_files)."""
    target = root / FIXTURE_REL
    shutil.copytree(FIXTURE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.mark.slow
def test_lmms_eval_cli_runs_the_fixture_task(model, export, entry_point_dir, tmp_path):
    """The stock ``python -m lmms_eval`` finds ``cambrian_train`` through the entry point, runs
    the local generate_until task and scores the runner's generations: the data copy's answers
    are set to the expected generations of documents 0, 2 and 3, so exact_match must be 3/5."""
    expected = runner_generations(model, Decoding(max_new_tokens=6, stop=("\n\n",)), 2)
    task_dir = copy_fixture(tmp_path)
    rows = docs("generate")
    for i in (0, 2, 3):
        rows[i]["answer"] = expected[i].strip().lower().rstrip(".")
    data = task_dir / "data" / "generate.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    pythonpath = [str(entry_point_dir), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p),
    }
    command = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "cambrian_train",
        "--model_args",
        f"pretrained={export},max_length={MAX_LENGTH}",
        "--tasks",
        GENERATE_TASK,
        "--include_path",
        str(FIXTURE_REL),
        "--batch_size",
        "2",
        "--device",
        "cpu",
        "--output_path",
        str(out),
        "--log_samples",
        "--verbosity",
        "WARNING",
    ]
    proc = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [results_file] = out.rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert results["results"][GENERATE_TASK]["exact_match,none"] == pytest.approx(3 / 5)
    assert results["configs"][GENERATE_TASK]["generation_kwargs"]["until"] == ["\n\n"]
    [samples_file] = out.rglob(f"*_samples_{GENERATE_TASK}.jsonl")
    samples = sorted(read_jsonl(samples_file), key=lambda s: s["doc_id"])
    assert [s["filtered_resps"] for s in samples] == [t.strip() for t in expected]
    assert [s["exact_match"] for s in samples] == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_lmms_eval_evaluator_runs_the_choice_task(model, tmp_path, monkeypatch):
    """``simple_evaluate`` on the local multiple_choice task with this model: lmms-eval picks
    the choice of lowest reported value (its models report losses), here the highest mean
    log-probability; the data copy's labels are set so the accuracy must be 2/3.

    lmms-eval 0.7.3 stringifies loglikelihood results before scoring them (see the xfail
    below), which breaks every multiple_choice task; the evaluator's unwrapping is patched here
    to pass the (float, bool) pairs through, as the task code expects."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    scores = model.loglikelihood(choice_requests(model))
    rows = docs("choice")
    best, k = [], 0
    for doc in rows:
        n = len(doc["choices"])
        values = [s for s, _ in scores[k : k + n]]
        best.append(values.index(min(values)))
        k += n
    labels = [best[0], (best[1] + 1) % 3, best[2]]
    task_dir = copy_fixture(tmp_path)
    for doc, label in zip(rows, labels):
        doc["label"] = label
    (task_dir / "data" / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "datasets"))
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)

    def passthrough(output):
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], bool):
            return output, None
        return unwrap_generation_output(output)

    monkeypatch.setattr(evaluator, "unwrap_generation_output", passthrough)
    manager = TaskManager("WARNING", include_path=str(task_dir), include_defaults=False)
    model.task_dict = {}
    results = evaluator.simple_evaluate(
        model=model, tasks=[CHOICE_TASK], task_manager=manager, verbosity="WARNING"
    )
    assert results["results"][CHOICE_TASK]["acc,none"] == pytest.approx(2 / 3)


@pytest.mark.xfail(
    strict=True,
    reason="lmms-eval 0.7.3's evaluator stringifies (logprob, is_greedy) results "
    "(unwrap_generation_output passes only str through), breaking multiple_choice tasks; "
    "when this passes, drop the patch in the test above and the note in lmms_plugin.py",
)
def test_upstream_evaluator_keeps_loglikelihood_pairs():
    assert unwrap_generation_output((-1.5, True))[0] == (-1.5, True)
