"""Benchmark suites (eval/suites/*.yaml, cambrian_train/eval/suite.py, eval/run_suite.py and
eval/scripts/): the shipped suites name only registered benchmarks in the paper's layout, a bad
entry is an error naming it, and a suite of the benchmark fixtures runs end to end on a tiny
export into results that ``cambrian-tabulate`` turns into the paper's table (missing data:
skipped; kept results; a failing benchmark; a URL output; pod shards; the shell scripts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cambrian_train.eval import suite as suite_mod
from cambrian_train.eval.benchmarks import BENCHMARKS
from cambrian_train.eval.benchmarks.base import PAPER_CATEGORIES
from cambrian_train.eval.cli import _parser as eval_parser
from cambrian_train.eval.suite import (
    SuiteError,
    entry_limit,
    load_suite,
    parse_max_samples,
    parse_suite,
    shard_entries,
)
from cambrian_train.eval.table_output import main as tabulate_main
from cambrian_train.eval.tables import CATEGORY_BENCHMARKS, COLUMNS
from cambrian_train.infer.export import export_checkpoint
from tests.unit.test_eval_runner import write_checkpoint

REPO = Path(__file__).resolve().parents[2]
SUITES = REPO / "eval" / "suites"
SCRIPTS = REPO / "eval" / "scripts"
BENCH_FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"
FIXTURE_SUITE = REPO / "tests" / "fixtures" / "eval_suite" / "fixtures.yaml"
PAPER_16 = [k for k in COLUMNS if BENCHMARKS[k].category in PAPER_CATEGORIES]
CATEGORY_FILES = {
    "General": "general",
    "Knowledge": "knowledge",
    "OCR & Chart": "ocr_chart",
    "Vision-Centric": "vision_centric",
}
# decoding kept tiny: the fixtures' prompts need more than the demo's 112 training tokens
FAST = ["--max-new-tokens", "2", "--max-length", "256", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny export (the demo model, weights moved off their init) named ``tiny``."""
    root = tmp_path_factory.mktemp("suite")
    checkpoint = write_checkpoint(root / "run")
    return Path(export_checkpoint(checkpoint, root / "tiny"))


def write_suite(path: Path, groups: dict, name: str = "t") -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"name": name, "benchmarks": groups}, sort_keys=False))
    return path


def run_main(capsys, *argv) -> tuple:
    status = suite_mod.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def statuses(path: Path) -> dict:
    return {r["benchmark"]: r for r in (json.loads(line) for line in path.read_text().splitlines())}


# ---- the shipped suite files ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.stem)
def test_suite_files_parse_and_name_registered_benchmarks(path):
    suite = load_suite(str(path))
    assert suite.name == path.stem and suite.description
    for entry in suite.entries:
        assert entry.benchmark in BENCHMARKS
        assert entry.category == BENCHMARKS[entry.benchmark].category
        assert not os.path.isabs(entry.data)  # relative to --data-root
        assert entry.split


def test_paper_suite_is_the_papers_16_in_table_order():
    paper = load_suite("paper")
    assert [e.benchmark for e in paper.entries] == PAPER_16 and len(PAPER_16) == 16
    assert tuple(paper.categories) == PAPER_CATEGORIES
    assert paper.categories == {c: CATEGORY_BENCHMARKS[c] for c in PAPER_CATEGORIES}
    assert all(len(keys) == 4 for keys in paper.categories.values())
    assert all(e.max_samples is None for e in paper.entries)  # the full sets
    assert len({e.data for e in paper.entries}) == 16


def test_category_suites_are_the_papers_entries():
    paper = load_suite("paper")
    for category, stem in CATEGORY_FILES.items():
        part = load_suite(stem)
        assert part.entries == tuple(e for e in paper.entries if e.category == category)


def test_quick_suite_is_one_per_category_with_a_limit():
    quick = load_suite("quick")
    assert tuple(quick.categories) == PAPER_CATEGORIES
    assert all(len(keys) == 1 for keys in quick.categories.values())
    assert all(e.max_samples and e.max_samples <= 500 for e in quick.entries)
    paper = {e.benchmark: e for e in load_suite("paper").entries}
    assert all(e.data == paper[e.benchmark].data for e in quick.entries)


def test_fixture_suite_points_at_every_benchmark_fixture():
    fixtures = load_suite(str(FIXTURE_SUITE))
    assert [e.benchmark for e in fixtures.entries][:16] == PAPER_16
    for entry in fixtures.entries:
        assert (BENCH_FIXTURES / entry.data).exists(), entry


def test_suite_by_name_and_unknown_name():
    assert load_suite("quick").path == str(SUITES / "quick.yaml")
    with pytest.raises(SuiteError, match=r"no suite named 'papr'.*known: .*paper"):
        load_suite("papr")
    with pytest.raises(SuiteError, match="suite file /no/such.yaml does not exist"):
        load_suite("/no/such.yaml")


# ---- validation -------------------------------------------------------------------------------

GOOD = {"benchmark": "mmbench", "data": "MMBench/MMBench_DEV_EN.tsv"}


@pytest.mark.parametrize(
    "groups, message",
    [
        (
            {"General": [GOOD, {"benchmark": "mmbenchx", "data": "x"}]},
            "benchmarks.General[1] (mmbenchx): unknown benchmark 'mmbenchx'; known: ai2d",
        ),
        (
            {"Knowledge": [GOOD]},
            "benchmarks.Knowledge[0] (mmbench): mmbench belongs to category 'General', "
            "not 'Knowledge'",
        ),
        ({"General": [{"benchmark": "mmbench"}]}, "(mmbench): 'data' must be a non-empty path"),
        ({"General": [{**GOOD, "data": " "}]}, "(mmbench): 'data' must be a non-empty path"),
        ({"General": [{**GOOD, "max_samples": 0}]}, "(mmbench): 'max_samples' must be a posit"),
        ({"General": [{**GOOD, "max_samples": "ten"}]}, "'max_samples' must be a positive"),
        ({"General": [{**GOOD, "max_samples": True}]}, "'max_samples' must be a positive"),
        ({"General": [{**GOOD, "max_sample": 5}]}, "(mmbench): unknown key(s) max_sample"),
        ({"General": [{**GOOD, "split": 3}]}, "(mmbench): 'split' must be a non-empty string"),
        ({"General": [GOOD, GOOD]}, "benchmarks.General[1] (mmbench): listed twice (first at"),
        ({"General": [{**GOOD, "data": "gs://b/mmb.tsv"}]}, "is a URL; benchmark loaders read"),
        ({"General": ["mmbench"]}, "benchmarks.General[0]: expected a mapping"),
        ({"General": [{"data": "x"}]}, "benchmarks.General[0]: 'benchmark' must be a registered"),
        ({"General": []}, "benchmarks.General must be a non-empty list"),
        ({"Generic": [GOOD]}, "unknown category 'Generic'; known: General, Knowledge"),
    ],
)
def test_bad_suite_entry_names_the_file_and_entry(tmp_path, groups, message):
    path = write_suite(tmp_path / "bad.yaml", groups)
    with pytest.raises(SuiteError) as err:
        load_suite(str(path))
    assert str(err.value).startswith(f"suite {path}: ") and message in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("benchmarks: [oops", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping with a 'benchmarks' key"),
        ("name: x\n", "'benchmarks' must map categories to lists of entries"),
        ("benchmark:\n  General: []\n", "unknown top-level key(s) benchmark"),
        ("name: a/b\nbenchmarks:\n  General: [{benchmark: gqa, data: g}]\n", "without '/'"),
    ],
)
def test_bad_suite_file_is_a_clear_error(text, message):
    with pytest.raises(SuiteError, match="^suite s.yaml: ") as err:
        parse_suite(text, "s.yaml")
    assert message in str(err.value)


def test_shards_partition_the_suite_balanced_and_deterministic():
    entries = load_suite("paper").entries
    for count in (1, 2, 3, 5, 20):
        shards = [shard_entries(entries, i, count) for i in range(count)]
        names = [e.benchmark for shard in shards for e in shard]
        assert sorted(names) == sorted(e.benchmark for e in entries)  # each exactly once
        assert shards == [shard_entries(entries, i, count) for i in range(count)]
        for shard in shards:  # suite order within a shard
            assert shard == [e for e in entries if e in shard]
    assert [len(shard_entries(entries, i, 20)) for i in range(20)].count(0) == 4
    two = [shard_entries(entries, i, 2) for i in range(2)]
    loads = [sum(suite_mod.EXPECTED_ITEMS[e.benchmark] for e in s) for s in two]
    assert abs(loads[0] - loads[1]) <= max(suite_mod.EXPECTED_ITEMS.values()) // 2
    with pytest.raises(ValueError, match=r"shard index 2 is not in \[0, 2\)"):
        shard_entries(entries, 2, 2)


def test_max_samples_option_replaces_the_suites_limits():
    entry = load_suite("quick").entries[0]
    assert entry_limit(entry, None) == 200
    assert entry_limit(entry, 5) == 5
    assert entry_limit(entry, "all") is None
    assert parse_max_samples("7") == 7 and parse_max_samples("all") == "all"
    for bad in ("0", "x", "-1"):
        with pytest.raises(Exception, match="must be >= 1|positive integer"):
            parse_max_samples(bad)


def test_decoding_options_default_like_cambrian_eval():
    ours = vars(suite_mod.parser().parse_args(["--suite", "paper"]))
    theirs = vars(eval_parser().parse_args(["--model", "m"]))
    shared = set(ours) & set(theirs) - {"model", "suite", "out"}
    assert {"batch_size", "max_new_tokens", "temperature", "top_p", "stop", "device"} <= shared
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}


# ---- running ----------------------------------------------------------------------------------


def test_fixture_suite_end_to_end_gives_the_papers_table(export, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model", export, "--suite", FIXTURE_SUITE, "--data-root", BENCH_FIXTURES]
    status, stdout, _ = run_main(capsys, *args, "--out", out, *FAST)
    assert status == 0
    fixtures = load_suite(str(FIXTURE_SUITE))
    for entry in fixtures.entries:
        results = json.loads((out / entry.benchmark / "results.json").read_text())
        assert results["model"] == "tiny" and results["benchmark"] == entry.benchmark
        assert results["limit"] == entry.max_samples  # pope: 3, the others all items
        assert (out / entry.benchmark / "predictions.jsonl").is_file()
        assert f"{entry.benchmark}: score " in stdout
    recorded = statuses(out / "suite-fixtures.status.jsonl")
    assert list(recorded) == [e.benchmark for e in fixtures.entries]
    assert {r["status"] for r in recorded.values()} == {"done"}
    assert recorded["pope"]["count"] == 3 and recorded["mmbench"]["category"] == "General"
    table = (out / "suite-fixtures.md").read_text()
    assert table in stdout + "\n"
    for label in ("MME-P", "CV-Bench-3D", "General avg", "Vision-Centric avg", "Overall", "POPE"):
        assert label in table.splitlines()[0]
    # cambrian-tabulate reads the same directory (the status and table files are not results)
    assert tabulate_main([str(out), "--paper", "--compare", "tiny=Cambrian-1-8B"]) == 0
    tabulated = capsys.readouterr().out
    assert "| tiny | ours |" in tabulated and "| tiny - Cambrian-1-8B | delta |" in tabulated
    row = next(line for line in tabulated.splitlines() if line.startswith("| tiny | ours"))
    cells = [c.strip() for c in row.strip("|").split("|")][3:]  # after model, source, #vis tok
    assert len(cells) == 16 + 4 + 1 + 1 and "–" not in cells  # every average is filled in


def test_missing_data_is_skipped_unless_strict(export, tmp_path, capsys):
    suite = write_suite(
        tmp_path / "s.yaml",
        {
            "General": [{"benchmark": "gqa", "data": "gqa"}],
            "Knowledge": [{"benchmark": "ai2d", "data": "absent/test.jsonl"}],
        },
        name="partial",
    )
    out = tmp_path / "out"
    args = ["--model", export, "--suite", suite, "--data-root", BENCH_FIXTURES, "--out", out]
    status, stdout, _ = run_main(capsys, *args, *FAST)
    missing = BENCH_FIXTURES / "absent" / "test.jsonl"
    assert status == 0
    assert f"ai2d: skipped: data path {missing} does not exist" in stdout
    assert "gqa: score " in stdout and "| GQA |" in stdout and "AI2D" not in stdout
    recorded = statuses(out / "suite-partial.status.jsonl")
    assert recorded["ai2d"]["status"] == "skipped" and recorded["gqa"]["status"] == "done"
    assert not (out / "ai2d").exists()
    status, stdout, err = run_main(capsys, *args, *FAST, "--strict", "--out", tmp_path / "o2")
    assert status == 2 and stdout == ""
    assert f"run_suite: error: --strict: missing data for ai2d ({missing})" in err
    assert not (tmp_path / "o2").exists()  # nothing ran


def test_skip_existing_keeps_results_of_the_same_model_and_limit(export, tmp_path, capsys):
    suite = write_suite(tmp_path / "s.yaml", {"General": [{"benchmark": "gqa", "data": "gqa"}]})
    out = tmp_path / "out"
    args = ["--model", export, "--suite", suite, "--data-root", BENCH_FIXTURES, "--out", out]
    assert run_main(capsys, *args, *FAST)[0] == 0
    results = out / "gqa" / "results.json"
    before = results.stat().st_mtime_ns
    status, stdout, _ = run_main(capsys, *args, *FAST, "--skip-existing")
    assert status == 0 and "gqa: score 0.00 over 3 items (kept from an earlier run)" in stdout
    assert results.stat().st_mtime_ns == before
    status, stdout, _ = run_main(capsys, *args, *FAST, "--skip-existing", "--max-samples", "2")
    assert status == 0 and "gqa: score" in stdout and "kept" not in stdout
    assert json.loads(results.read_text())["count"] == 2


def test_a_failing_benchmark_is_reported_and_the_others_run(export, tmp_path, capsys):
    bad = tmp_path / "ai2d.jsonl"
    bad.write_text(json.dumps({"question": "which?"}) + "\n")
    suite = write_suite(
        tmp_path / "s.yaml",
        {
            "General": [{"benchmark": "gqa", "data": "gqa"}],
            "Knowledge": [{"benchmark": "ai2d", "data": str(bad)}],  # absolute: kept
        },
    )
    args = ["--model", export, "--suite", suite, "--data-root", BENCH_FIXTURES]
    status, stdout, _ = run_main(capsys, *args, "--out", tmp_path / "out", *FAST)
    assert status == 1
    assert "ai2d: failed: " in stdout and str(bad) in stdout and "gqa: score" in stdout
    status, _, err = run_main(capsys, *args, "--out", tmp_path / "o2", *FAST, "--strict")
    assert status == 2 and "run_suite: error: ai2d: " in err


def test_user_errors_exit_2(export, tmp_path, capsys):
    base = ["--suite", "quick", "--data-root", BENCH_FIXTURES]
    cases = [
        (["--model", tmp_path / "nothing"], "model path"),
        ([], "--model is required"),
        (["--model", export, "--batch-size", "0"], "--batch-size=0"),
        (["--model", export, "--num-shards", "2", "--shard-index", "2"], "shard index 2"),
        (["--table-only"], "--table-only needs --out"),
        (["--table-only", "--out", tmp_path], "no results of suite 'quick'"),
        (["--model", export, "--data-root", "gs://b/data"], "benchmark loaders read local"),
        (["--model", export, "--compare", "tiny"], "--compare expects MODEL=PAPER_ROW"),
        (["--model", export, "--temperature", "-1"], "temperature=-1.0"),
    ]
    for extra, message in cases:
        status, _, err = run_main(capsys, *base, *extra)
        assert status == 2 and err.startswith("run_suite: error: ") and message in err, extra


def test_url_output_and_table_only(export, tmp_path, capsys):
    """Results go through the storage layer (memory:// stands in for gs://); --table-only
    downloads a URL OUT's results files to tabulate them."""
    import fsspec

    url = f"memory:///suite-{os.getpid()}/eval/tiny"
    suite = write_suite(
        tmp_path / "s.yaml",
        {
            "General": [{"benchmark": "gqa", "data": "gqa"}],
            "OCR & Chart": [{"benchmark": "docvqa", "data": "docvqa/val_v1.0.json"}],
        },
        name="two",
    )
    args = ["--suite", suite, "--data-root", BENCH_FIXTURES, "--out", url]
    fs = fsspec.filesystem("memory")
    try:
        status, stdout, _ = run_main(capsys, "--model", export, *args, *FAST, "--no-table")
        assert status == 0 and "|" not in stdout
        assert fs.isfile(f"/suite-{os.getpid()}/eval/tiny/docvqa/results.json")
        status, stdout, _ = run_main(capsys, *args, "--table-only", "--format", "csv")
        assert status == 0
        assert stdout.splitlines()[0].startswith("model,GQA,General avg,DocVQA,")
        assert stdout.splitlines()[1].startswith("tiny,")
        assert fs.isfile(f"/suite-{os.getpid()}/eval/tiny/suite-two.csv")
    finally:
        if fs.exists(f"/suite-{os.getpid()}"):
            fs.rm(f"/suite-{os.getpid()}", recursive=True)


# ---- the scripts ------------------------------------------------------------------------------


def script_env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return {**env, "PYTHON": sys.executable, "DEVICE": "cpu", **extra}


def test_scripts_are_strict_bash_and_shellcheck_clean():
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert [p.name for p in scripts] == [
        "eval_one_process.sh",
        "eval_pod_worker.sh",
        "eval_torchrun.sh",
    ]
    for path in scripts:
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert os.access(path, os.X_OK), path
        subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_pod_workers_split_a_suite_into_a_shared_out(export, tmp_path):
    """Two workers (CAMBRIAN_PROCESS_INDEX 0 and 1 of 2) each evaluate their shard into one
    OUT; together they cover the suite once, and --table-only tabulates the whole."""
    suite = write_suite(
        tmp_path / "s.yaml",
        {
            "General": [{"benchmark": "gqa", "data": "gqa"}],
            "Vision-Centric": [
                {"benchmark": "mmvp", "data": "mmvp"},
                {"benchmark": "cvbench_3d", "data": "cvbench/test.jsonl"},
            ],
        },
        name="pod",
    )
    out = tmp_path / "shared"
    for index in ("0", "1"):
        env = script_env(
            CAMBRIAN_PROCESS_INDEX=index, CAMBRIAN_PROCESS_COUNT="2", DATA_ROOT=str(BENCH_FIXTURES)
        )
        proc = subprocess.run(
            [str(SCRIPTS / "eval_pod_worker.sh"), str(export), str(suite), str(out), *FAST],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"worker {index} of 2" in proc.stderr and "--table-only" in proc.stdout
    shards = [statuses(out / f"suite-pod.shard-{i}-of-2.status.jsonl") for i in range(2)]
    assert sorted([*shards[0], *shards[1]]) == ["cvbench_3d", "gqa", "mmvp"]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cvbench_3d", "gqa", "mmvp"]
    assert suite_mod.main(["--table-only", "--suite", str(suite), "--out", str(out)]) == 0


@pytest.mark.integration
def test_torchrun_script_writes_the_files_one_process_writes(export, tmp_path, capsys):
    """eval_torchrun.sh with two gloo processes: byte-identical files to an in-process run."""
    suite = write_suite(
        tmp_path / "s.yaml",
        {"General": [{"benchmark": "mmbench", "data": "mmbench/dev.tsv"}]},
        name="dp",
    )
    flags = ["--max-new-tokens", "3", "--max-length", "256", "--batch-size", "2"]
    one = tmp_path / "one"
    args = ["--model", export, "--suite", suite, "--data-root", BENCH_FIXTURES, "--out", one]
    assert run_main(capsys, *args, *flags, "--device", "cpu")[0] == 0
    env = script_env(NPROC="2", DATA_ROOT=str(BENCH_FIXTURES), OUT=str(tmp_path / "two"))
    proc = subprocess.run(
        [str(SCRIPTS / "eval_torchrun.sh"), str(export), str(suite), *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 0 of 2 generates 2" in proc.stderr  # 7 items in 4 batches of <= 2
    assert proc.stdout.count("| model |") == 1  # rank 0 alone prints the table
    for name in ("predictions.jsonl", "results.json"):
        expected = (one / "mmbench" / name).read_bytes()
        assert (tmp_path / "two" / "mmbench" / name).read_bytes() == expected, name
