"""True-length modality/length-grouped sampling, resume cursors, mixtures and their config."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cambrian_train.config.schema import DataConfig, DataSourceConfig, LLMConfig, StageConfig
from cambrian_train.config.validate import ConfigError, validate
from cambrian_train.data import lengths as lengths_module
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import ImageTextEncoder, SupervisedDataset
from cambrian_train.data.lengths import LengthSpec, file_lengths
from cambrian_train.data.loader import SkipStats, batch_stream
from cambrian_train.data.mixture import MixtureRecords, MixtureSource, apportion
from cambrian_train.data.records import open_records
from cambrian_train.data.sampler import EpochSampler, LengthGroupedSampler
from cambrian_train.data.sources import build_sampler, open_stage_records, record_lengths
from cambrian_train.data.templates import get_template, parse_turns
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.models.vision.base import ImageSpec
from cambrian_train.tiny import ensure_asset

SPECS = {"a": ImageSpec(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
SLOT = 6
REFERENCE_PERCENT = {  # REFERENCE §3
    "language": 21.00,
    "general": 34.52,
    "ocr": 27.22,
    "counting": 8.71,
    "math": 7.20,
    "code": 0.87,
    "science": 0.88,
}


def conversation(question, answer, image=None, rid="r"):
    record = {"id": rid, "conversations": [_turn("human", question), _turn("gpt", answer)]}
    if image is not None:
        record["image"] = image
    return record


def _turn(role, text):
    return {"from": role, "value": text}


def write_jsonl(path: Path, records) -> str:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(
        LLMConfig(
            checkpoint=ensure_asset("llama"), template="llama3", num_layers=4, hidden_size=128
        )
    )


def make_encoder(
    tokenizer, folder, template="llama3", slot_len=SLOT, max_length=4096, system_prompt=None
):
    return ImageTextEncoder(
        tokenizer,
        get_template(template),
        SPECS,
        str(folder),
        slot_len=slot_len,
        max_images=1,
        max_length=max_length,
        system_prompt=system_prompt,
    )


# ---------------------------------------------------------------- lengths


def test_lengths_equal_encoded_lengths(tokenizer, tmp_path):
    records = [
        conversation("<image>\nWhat colour is the square?", "Red.", image="x.png"),
        conversation("Tell me a story about a fox.", "Once upon a time " * 7),
        {
            "id": "multi",
            "conversations": [
                _turn("system", "Be brief."),
                _turn("human", "Hi <image> there"),
                _turn("gpt", "Hello."),
                _turn("human", "And now?"),
                _turn("gpt", "Bye."),
            ],
            "image": "y.png",
        },
    ]
    bad = ['{"id": "broken", "conversations": [', conversation("q", "a") | {"id": "x"}]
    bad[1]["conversations"][0]["from"] = "robot"  # unknown role
    path = write_jsonl(tmp_path / "d.jsonl", [*records, *bad])
    encoder = make_encoder(tokenizer, tmp_path)
    got = file_lengths(open_records(path), path, LengthSpec.from_encoder(encoder))
    expected = [
        len(encoder.encode_turns(parse_turns(r["conversations"], "t")).input_ids) for r in records
    ]
    assert got.lengths[:3].tolist() == expected
    assert got.lengths[0] > SLOT  # the image counts as slot_len tokens
    assert got.multimodal.tolist() == [True, False, True, False, False]
    assert got.estimated.tolist() == [False, False, False, True, True]
    assert (got.lengths[3:] >= 1).all()
    assert got.signed()[:3].tolist() == [expected[0], -expected[1], expected[2]]
    # the stage-1 'plain' template drops the question text: a different, shorter length
    plain = make_encoder(tokenizer, tmp_path, template="plain")
    plain_lengths = file_lengths(open_records(path), path, LengthSpec.from_encoder(plain))
    turns = parse_turns(records[0]["conversations"], "t")
    assert plain_lengths.lengths[0] == len(plain.encode_turns(turns).input_ids) < expected[0]


def test_lengths_in_processes_equal_one_process(tokenizer, tmp_path, monkeypatch):
    records = [conversation(f"<image>\n{'q ' * i}", "a" * i, image="x.png") for i in range(7)]
    records += ['{"broken', conversation("text only " * 9, "b")]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    spec = LengthSpec.from_encoder(make_encoder(tokenizer, tmp_path))
    monkeypatch.setattr(lengths_module, "CHUNK_RECORDS", 2)  # 5 chunks over 2 processes
    one = lengths_module.compute_lengths(open_records(path), spec, processes=1)
    two = lengths_module.compute_lengths(open_records(path), spec, processes=2)
    assert np.array_equal(one.to_array(), two.to_array())
    assert one.estimated.tolist() == [False] * 7 + [True, False]


def test_lengths_cache_is_reused_and_invalidated(tokenizer, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [conversation("short?", "yes")] * 3)
    spec = LengthSpec.from_encoder(make_encoder(tokenizer, tmp_path))
    first = file_lengths(open_records(path), path, spec)
    stored = sorted(p.name for p in tmp_path.glob("d.jsonl.len-*") if p.suffix != ".lock")
    assert stored == [f"d.jsonl.len-{spec.key()}.json", f"d.jsonl.len-{spec.key()}.npy"]

    calls = []
    real = lengths_module.compute_lengths
    monkeypatch.setattr(
        lengths_module, "compute_lengths", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    again = file_lengths(open_records(path), path, spec)
    assert calls == [] and again.lengths.tolist() == first.lengths.tolist()

    write_jsonl(tmp_path / "d.jsonl", [conversation("a much longer question " * 5, "yes")] * 4)
    changed = file_lengths(open_records(path), path, spec)
    assert calls == [1] and len(changed) == 4 and changed.lengths[0] > first.lengths[0]

    other = LengthSpec.from_encoder(make_encoder(tokenizer, tmp_path, slot_len=SLOT + 1))
    assert other.key() != spec.key()
    file_lengths(open_records(path), path, other)
    system = LengthSpec(spec.tokenizer, spec.template, spec.slot_len, "Another system prompt.")
    assert system.key() != spec.key()
    file_lengths(open_records(path), path, system)
    assert calls == [1, 1, 1]


def test_lengths_fall_back_to_the_cache_dir(tokenizer, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [conversation("q?", "a")])
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAMBRIAN_INDEX_DIR", str(cache))
    real_save = lengths_module._save
    monkeypatch.setattr(  # the data directory refuses writes
        lengths_module,
        "_save",
        lambda base, *a: (
            not str(base).startswith(str(tmp_path / "d.jsonl")) and real_save(base, *a)
        ),
    )
    spec = LengthSpec.from_encoder(make_encoder(tokenizer, tmp_path))
    file_lengths(open_records(path), path, spec)
    assert len(list(cache.glob(f"d.jsonl.*.len-{spec.key()}.npy"))) == 1


# ---------------------------------------------------------------- sampler


def random_lengths(n, seed=0, mm_share=0.6):
    rng = np.random.default_rng(seed)
    return rng.integers(8, 2048, n), rng.random(n) < mm_share


def test_grouped_order_is_deterministic_per_seed_and_epoch():
    lengths, mm = random_lengths(500)
    a = LengthGroupedSampler(lengths, mm, 4, seed=3, world_size=2, rank=1)
    b = LengthGroupedSampler(lengths, mm, 4, seed=3, world_size=2, rank=1)
    assert np.array_equal(a.epoch_array(0), b.epoch_array(0))
    assert np.array_equal(a.epoch_array(5), b.epoch_array(5))
    assert not np.array_equal(a.epoch_array(0), a.epoch_array(1))
    c = LengthGroupedSampler(lengths, mm, 4, seed=4, world_size=2, rank=1)
    assert not np.array_equal(a.epoch_array(0), c.epoch_array(0))


def _groups(order, batch):
    usable = len(order) // batch * batch
    return order[:usable].reshape(-1, batch)


def test_batches_are_length_homogeneous_and_one_modality():
    lengths, mm = random_lengths(4000)
    batch = 8
    grouped = LengthGroupedSampler(lengths, mm, batch, seed=0).epoch_array(0)
    shuffled = EpochSampler(4000, seed=0).epoch_array(0)
    spread = np.ptp(lengths[_groups(grouped, batch)], axis=1).mean()
    random_spread = np.ptp(lengths[_groups(shuffled, batch)], axis=1).mean()
    assert spread < 0.1 * random_spread

    def mixed(order):
        return sum(0 < mm[g].sum() < batch for g in _groups(order, batch))

    assert mixed(shuffled) > 300  # of 500 batches: both modalities are plentiful
    assert mixed(grouped) <= 1  # only the epoch's left-overs may meet


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 37, 1000])
def test_rank_shards_are_disjoint_and_cover(world, n):
    lengths, mm = random_lengths(n, seed=n)
    for epoch in (0, 1):
        for make in (
            lambda r: LengthGroupedSampler(lengths, mm, 3, seed=1, rank=r, world_size=world),
            lambda r: EpochSampler(n, seed=1, rank=r, world_size=world),
        ):
            if n < world:
                continue
            shares = [make(r).epoch_array(epoch) for r in range(world)]
            joined = np.concatenate(shares)
            assert sorted(joined.tolist()) == list(range(n))
            assert [len(s) for s in shares] == [make(r).epoch_size for r in range(world)]


def test_grouped_ranks_see_similar_lengths_at_each_step():
    lengths, mm = random_lengths(4096, seed=2)
    world, batch = 4, 4
    shares = [
        LengthGroupedSampler(lengths, mm, batch, seed=0, rank=r, world_size=world).epoch_array(0)
        for r in range(world)
    ]
    steps = min(len(s) for s in shares) // batch - 2  # leave the tail out
    step_max = np.stack([lengths[s[: steps * batch]].reshape(steps, batch).max(1) for s in shares])
    assert np.ptp(step_max, axis=0).mean() < 0.1 * np.ptp(lengths)


def test_iteration_resumes_from_any_position():
    lengths, mm = random_lengths(50)
    sampler = LengthGroupedSampler(lengths, mm, 4, seed=0, world_size=2, rank=0)
    stream = iter(sampler)
    first = [next(stream) for _ in range(80)]  # crosses epoch boundaries (25 a rank and epoch)
    for start in (0, 7, 25, 61):
        resumed = LengthGroupedSampler(lengths, mm, 4, seed=0, world_size=2, rank=0, start=start)
        it = iter(resumed)
        assert [next(it) for _ in range(80 - start)] == first[start:]


def test_state_dict_checks_the_data_order(caplog):
    lengths, mm = random_lengths(50)
    sampler = LengthGroupedSampler(lengths, mm, 4, seed=0)
    state = sampler.state_dict(12)
    fresh = LengthGroupedSampler(lengths, mm, 4, seed=0)
    fresh.load_state_dict(state)
    assert fresh.start == 12
    with pytest.raises(ValueError, match="seed=0 but this sampler has seed=1"):
        LengthGroupedSampler(lengths, mm, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="kind='length_grouped'"):
        EpochSampler(50, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="position=-1"):
        fresh.load_state_dict(dict(state, position=-1))
    other_layout = LengthGroupedSampler(lengths, mm, 4, seed=0, world_size=2, rank=1)
    with caplog.at_level(logging.WARNING, logger="cambrian_train.data.sampler"):
        other_layout.load_state_dict(state)  # another world size: allowed, with a warning
        LengthGroupedSampler(lengths + 1, mm, 4, seed=0).load_state_dict(state)
    assert other_layout.start == 12
    assert "world_size 1 -> 2" in caplog.text and "lengths_digest" in caplog.text
    with pytest.raises(ValueError, match="1 records leave rank 1 of world_size=2 nothing"):
        EpochSampler(1, seed=0, rank=1, world_size=2)


# ---------------------------------------------------------------- resume of the batch stream


@pytest.fixture(scope="module")
def dirty_dataset(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("dirty")
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (20 + 4 * k, 16), colour).save(root / f"{k}.png")
    records = []
    for i in range(30):
        words = " ".join(["word"] * (1 + (i * 7) % 23))
        if i % 3:
            records.append(conversation(f"<image>\n{words}?", f"a{i}", image=f"{i % 3}.png", rid=i))
        else:
            records.append(conversation(f"{words}?", f"t{i}", rid=i))
    records[4] = '{"id": 4, "conversations": ['  # malformed JSON
    records[8]["image"] = "gone.png"  # missing image
    records[15]["conversations"][0]["from"] = "robot"  # unknown role
    path = write_jsonl(root / "d.jsonl", records)
    return SupervisedDataset(
        open_records(path), make_encoder(tokenizer, root, max_length=96, system_prompt="")
    )


def _stream(dataset, sampler, workers, stats=None):
    fn = functools.partial(
        collate, seq_len=96, max_images=1, slot_len=SLOT, pad_id=5, image_specs=SPECS
    )
    return batch_stream(dataset, sampler, 4, fn, stats or SkipStats(), num_workers=workers)


def _same(a, b):
    return all(
        torch.equal(x, y)
        for x, y in [
            (a.input_ids, b.input_ids),
            (a.labels, b.labels),
            (a.image_mask, b.image_mask),
            (a.pixel_values["a"], b.pixel_values["a"]),
        ]
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_equals_the_uninterrupted_one(dirty_dataset, workers):
    lengths = record_lengths(dirty_dataset.records, LengthSpec.from_encoder(dirty_dataset.encoder))

    def sampler(state=None):
        s = LengthGroupedSampler(lengths.lengths, lengths.multimodal, 4, seed=7, world_size=2)
        if state is not None:
            s.load_state_dict(state)
        return s

    stats = SkipStats()
    batches, states = [], []
    with _stream(dirty_dataset, sampler(), workers, stats) as stream:
        for _ in range(9):  # 15 positions a rank and epoch: several epochs, with skips
            batches.append(next(stream))
            states.append(stream.state_dict())
    assert stats.total > 0  # skips are part of the positions consumed
    positions = [s["position"] for s in states]
    assert positions == sorted(positions) and positions[-1] > 9 * 4  # skips moved it further
    for k in (0, 3, 6):
        resumed_stats = SkipStats()
        resumed_stats.load_state_dict(states[k]["skips"])
        with _stream(dirty_dataset, sampler(states[k]), workers, resumed_stats) as resumed:
            for j in range(k + 1, 9):
                assert _same(next(resumed), batches[j]), (k, j)
                assert resumed.state_dict()["position"] == states[j]["position"]
        assert resumed_stats.counts == stats.counts


# ---------------------------------------------------------------- mixtures


def _source(tmp_path, name, size, weight=None, category=None, folder="imgs"):
    records = [
        conversation("<image>\nq", f"{name}{i}", image=f"{name}/{i}.png") for i in range(size)
    ]
    path = write_jsonl(tmp_path / f"{name}.jsonl", records)
    return MixtureSource(name, open_records(path), str(tmp_path / folder), weight, category, path)


def _drawn(mixture, k):
    return mixture.local[mixture.slice(k)]


def test_apportion_sums_exactly():
    assert apportion(10, [1, 1, 1]).tolist() == [4, 3, 3]
    assert apportion(60, [1, 1, 2]).tolist() == [15, 15, 30]
    assert apportion(7, [0.5, 0.25, 0.25]).tolist() == [3, 2, 2]  # 3.5, 1.75, 1.75
    with pytest.raises(ValueError, match="cannot share"):
        apportion(5, [0, 0])


def test_mixture_by_weights(tmp_path):
    sources = [_source(tmp_path, "a", 10, 1.0), _source(tmp_path, "b", 20, 1.0)]
    sources.append(_source(tmp_path, "c", 30, 2.0))
    mixture = MixtureRecords(sources, seed=0)
    assert len(mixture) == 60 and mixture.counts.tolist() == [15, 15, 30]
    a = np.bincount(_drawn(mixture, 0), minlength=10)  # upsampled: every record once, 5 twice
    assert a.min() == 1 and a.max() == 2 and (a == 2).sum() == 5
    b = _drawn(mixture, 1)  # 15 of 20 without replacement
    assert len(set(b.tolist())) == 15 and b.max() < 20
    assert sorted(_drawn(mixture, 2).tolist()) == list(range(30))
    again = MixtureRecords(sources, seed=0)
    assert np.array_equal(again.local, mixture.local)
    assert not np.array_equal(MixtureRecords(sources, seed=1).local, mixture.local)
    assert len(MixtureRecords(sources, seed=0, total=8)) == 8
    assert MixtureRecords(sources, seed=0, total=8).counts.tolist() == [2, 2, 4]


def test_mixture_by_category_ratios(tmp_path):
    sources = [
        _source(tmp_path, "a1", 10, category="a"),
        _source(tmp_path, "a2", 30, category="a"),
        _source(tmp_path, "b1", 20, category="b"),
    ]
    mixture = MixtureRecords(sources, seed=0, category_ratios={"a": 0.25, "b": 0.75})
    # total 60: a gets 15 split 10:30 (3.75 / 11.25 -> 4, 11), b gets 45 of its 20 (2 copies + 5)
    assert mixture.counts.tolist() == [4, 11, 45]
    b = np.bincount(_drawn(mixture, 2), minlength=20)
    assert b.min() == 2 and (b == 3).sum() == 5
    # a source's draw depends on the seed and its name, not on the other sources
    alone = MixtureRecords(sources[2:], seed=0, total=45, category_ratios={"b": 1.0})
    assert np.array_equal(_drawn(alone, 0), _drawn(mixture, 2))
    with pytest.raises(ValueError, match="ratios without a source: \\['c'\\]"):
        MixtureRecords(sources, seed=0, category_ratios={"a": 0.5, "b": 0.25, "c": 0.25})


def test_mixture_records_have_absolute_images_and_source(tmp_path):
    sources = [
        _source(tmp_path, "a", 3, 1.0, folder="imgs_a"),
        _source(tmp_path, "b", 3, 1.0, folder="imgs_b"),
    ]
    mixture = MixtureRecords(sources, seed=0)
    first, last = mixture[0], mixture[5]
    assert first["source"] == "a" and last["source"] == "b"
    assert first["image"] == os.path.join(str(tmp_path), "imgs_a", "a", "0.png")
    assert os.path.isabs(last["image"]) and "imgs_b" in last["image"]
    assert sources[0].records[0]["image"] == "a/0.png"  # the source's record is untouched
    with pytest.raises(IndexError):
        mixture[6]


def test_mixture_lengths_gather_the_sources(tokenizer, tmp_path):
    sources = [_source(tmp_path, "a", 4, 1.0), _source(tmp_path, "b", 6, 3.0)]
    sources[1].records = open_records(
        write_jsonl(tmp_path / "b.jsonl", [conversation("text " * i, "x") for i in range(6)])
    )
    mixture = MixtureRecords(sources, seed=0, total=12)
    encoder = make_encoder(tokenizer, tmp_path)
    got = record_lengths(mixture, LengthSpec.from_encoder(encoder))
    expected = [
        len(encoder.encode_turns(parse_turns(mixture[j]["conversations"], "t")).input_ids)
        for j in range(12)
    ]
    assert got.lengths.tolist() == expected
    assert got.multimodal.tolist() == [bool(mixture[j].get("image")) for j in range(12)]


# ---------------------------------------------------------------- sources and config


def test_open_stage_records_and_build_sampler(tokenizer, tmp_path):
    pre = write_jsonl(tmp_path / "pre.jsonl", [conversation("<image>", "cap", image="p.png")] * 2)
    train = write_jsonl(tmp_path / "train.jsonl", [conversation("q", "a")] * 3)
    data = DataConfig(name="x", train_path=train, pretrain_path=pre, image_folder=str(tmp_path))
    pretrain = StageConfig(name="pretrain", dataset="pretrain")
    finetune = StageConfig(name="finetune", dataset="train")
    assert len(open_stage_records(data, pretrain)) == 2
    assert len(open_stage_records(data, finetune)) == 3
    data.sources = {
        "s": DataSourceConfig(path=train, weight=1.0),
        "t": DataSourceConfig(path=pre, weight=1.0, image_folder=str(tmp_path / "i")),
    }
    data.mixture_size = 10
    mixture = open_stage_records(data, finetune, seed=0)
    assert isinstance(mixture, MixtureRecords) and len(mixture) == 10
    assert mixture[9]["image"] == str(tmp_path / "i" / "p.png")
    assert len(open_stage_records(data, pretrain)) == 2  # pretrain_path still wins

    encoder = make_encoder(tokenizer, tmp_path)
    grouped = build_sampler(data, mixture, encoder, seed=0, batch_size=2, world_size=2)
    assert isinstance(grouped, LengthGroupedSampler) and grouped.epoch_size == 5
    state = grouped.state_dict(7)
    resumed = build_sampler(data, mixture, encoder, 0, 2, world_size=2, state=state)
    assert resumed.start == 7
    data.group_by_length = False
    assert type(build_sampler(data, mixture, encoder, 0, 2)) is EpochSampler


def _errors(cfg, check_paths=False) -> str:
    with pytest.raises(ConfigError) as info:
        validate(cfg, check_paths=check_paths)
    return str(info.value)


@pytest.fixture
def mixture_overrides(tmp_path):
    paths = []
    for name in REFERENCE_PERCENT:
        write_jsonl(tmp_path / f"{name}.jsonl", [conversation("q", "a")])
        paths.append(f"data.sources.{name}.path={tmp_path / name}.jsonl")
    return ["data=cambrian_7m_mixture", f"data.image_folder={tmp_path}", *paths]


def test_cambrian_7m_mixture_preset(compose, mixture_overrides):
    cfg = compose(mixture_overrides)
    ratios = cfg.data.category_ratios
    assert set(ratios) == set(REFERENCE_PERCENT)
    assert abs(sum(ratios.values()) - 1) < 1e-6
    for name, percent in REFERENCE_PERCENT.items():
        assert ratios[name] == pytest.approx(percent / 100.40, abs=1e-8)
        assert cfg.data.sources[name].category == name
    validate(cfg)  # paths exist, ratios sum to 1, every category has a source
    finetune = cfg.stages["finetune"]
    mixture = open_stage_records(cfg.data, finetune, cfg.seed)
    assert isinstance(mixture, MixtureRecords) and len(mixture) == 7


def test_mixture_config_errors(compose, mixture_overrides, tmp_path):
    cfg = compose(
        [
            *mixture_overrides,
            "data.sources.code.weight=2.0",
            "data.category_ratios.math=0.5",
            "+data.category_ratios.video=0.1",
            "data.length_group_batches=0",
        ]
    )
    msg = _errors(cfg)
    assert "data.sources.code: set exactly one of weight and category" in msg
    assert "data.category_ratios sum to" in msg and "not 1 (within 1e-6)" in msg
    assert "data.category_ratios.video has no source" in msg
    assert "data.length_group_batches=0 must be >= 1" in msg

    cfg = compose([*mixture_overrides, "~data.sources.code"])
    cfg.data.sources["extra"] = DataSourceConfig(path="/no/such.jsonl", weight=-1.0)
    msg = _errors(cfg, check_paths=True)
    assert "data.sources.extra.weight=-1.0 must be > 0" in msg
    assert "data.sources mixes weights and categories" in msg
    assert "data.category_ratios.code has no source" in msg
    assert "data.sources.extra.path=/no/such.jsonl does not exist" in msg

    plain = compose(
        [
            "data=llava",
            "data.train_path=null",
            f"data.image_folder={tmp_path}",
            "data.mixture_size=5",
        ]
    )
    msg = _errors(plain, check_paths=True)
    assert "data.mixture_size=5 is set but data.sources is empty" in msg
    assert "stages.finetune reads data.train_path, which is null, and data.sources is empty" in msg
