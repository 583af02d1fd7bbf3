"""cambrian-pod against a fake gcloud (tests/fixtures/fake_gcloud), plus the worker shell run
locally: the wrapper's pid/log/exit files, stop by process group, and a tmux end-to-end run."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from cambrian_train.pod import remote, state
from cambrian_train.pod.cli import main, parse_args
from cambrian_train.pod.gcloud import CreateOptions
from cambrian_train.pod.remote import RunSpec, SetupOptions, WorkerStatus
from cambrian_train.pod.retry import judge

REPO = Path(__file__).resolve().parents[2]
FAKE_DIR = REPO / "tests" / "fixtures" / "fake_gcloud"
ZONE = "us-central2-b"
SCOPE = ["--zone", ZONE]
TPU_SSH = ["compute", "tpus", "tpu-vm", "ssh", "my-pod", *SCOPE]
needs_setsid = pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid")
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class FakeGcloud:
    """Scripts the fake's state file and reads back the argv it logged."""

    def __init__(self, root: Path):
        self.log = root / "gcloud.log"
        self.state_file = root / "gcloud-state.json"
        self.set()

    def set(self, **state) -> None:
        self.state_file.write_text(json.dumps(state))
        self.log.write_text("")

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def verbs(self) -> list[str]:
        return [call[3] for call in self.calls()]

    def ssh_commands(self, containing: str = "") -> list[str]:
        return [
            c[c.index("--command") + 1]
            for c in self.calls()
            if c[3] == "ssh" and containing in c[c.index("--command") + 1]
        ]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith(("CAMBRIAN_", "WANDB_")):
            monkeypatch.delenv(name)
    fake = FakeGcloud(tmp_path)
    monkeypatch.setenv("PATH", f"{FAKE_DIR}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_GCLOUD_STATE", str(fake.state_file))
    monkeypatch.setenv("CAMBRIAN_POD_NAME", "my-pod")
    monkeypatch.setenv("CAMBRIAN_POD_ZONE", ZONE)
    fake.home = home
    return fake


def status_line(exit_code="-", session="no", alive="no", host="w-0", pid="12") -> str:
    return (
        f"cambrian-status host={host} session={session} pid={pid} alive={alive} exit={exit_code}\n"
    )


def trainer_words(command: str) -> list[str]:
    """The words of the cambrian-train invocation inside a run command."""
    line = next(li for li in command.splitlines() if li.startswith("setsid "))
    words = shlex.split(line)
    return words[1 : words.index("<")]


# --- dry run ---------------------------------------------------------------------------------


def test_dry_run_create_prints_the_exact_command_and_runs_nothing(fake, capsys):
    argv = ["create", "--accelerator-type", "v4-64", "--spot", "--project", "proj", "--dry-run"]
    assert main(argv) == 0
    assert capsys.readouterr().out == (
        "gcloud compute tpus queued-resources create my-pod --node-id my-pod --zone "
        "us-central2-b --project proj --accelerator-type v4-64 --runtime-version "
        "tpu-ubuntu2204-base --spot\n"
    )
    argv = ["create", "--accelerator-type", "v4-8", "--best-effort", "--reserved", "--dry-run"]
    assert main([*argv, "--runtime-version", "v2-alpha-tpuv5"]) == 0
    assert capsys.readouterr().out.split()[-4:] == [
        "--runtime-version",
        "v2-alpha-tpuv5",
        "--best-effort",
        "--reserved",
    ]
    assert fake.calls() == []
    assert not (fake.home / ".cambrian").exists()
    assert main(["create", "--accelerator-type", "v4-8", "--spot", "--best-effort"]) == 2


def test_dry_run_run_quotes_overrides_and_forwards_env(fake, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "s3cret")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("CAMBRIAN_DATA_ROOT", "/mnt/data")
    monkeypatch.setenv("UNRELATED", "x")
    overrides = ["experiment=demo", 'name=it\'s "quoted" $HOME', "data.image_folder=/a b/c"]
    assert main(["run", "--env", "EXTRA=a b", "--dry-run", "--", *overrides]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "gcloud compute tpus tpu-vm ssh my-pod --zone us-central2-b --worker=all --command '"
    )
    argv = shlex.split(out)
    assert argv[:10] == ["gcloud", *TPU_SSH, "--worker=all", "--command"] and len(argv) == 11
    command = argv[10]
    assert "tmux new-session -d -s cambrian" in command
    assert "tmux has-session -t =cambrian" in command
    assert "export PJRT_DEVICE=TPU" in command.splitlines()
    for line in ("export WANDB_MODE=offline", "export CAMBRIAN_DATA_ROOT=/mnt/data"):
        assert line in command.splitlines()
    assert "export EXTRA='a b'" in command.splitlines()
    assert "export WANDB_API_KEY='***'" in command.splitlines()  # masked in dry-run output
    assert "s3cret" not in out and "UNRELATED" not in out and "export CAMBRIAN_POD_" not in out
    assert trainer_words(command) == [
        "$HOME/.cambrian/venv/bin/cambrian-train",
        "backend=xla_spmd",
        *overrides,
    ]
    assert fake.calls() == []


def test_dry_run_stop_signals_the_recorded_process_group(fake, capsys):
    assert main(["stop", "--grace", "7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    argv = shlex.split(out)
    assert argv[:10] == ["gcloud", *TPU_SSH, "--worker=all", "--command"]
    command = argv[10]
    assert 'p=$(cat "$HOME/.cambrian"/cambrian.pid)' in command
    assert 'kill -TERM -"$p"' in command and 'kill -KILL -"$p"' in command
    assert '"$i" -lt 70' in command
    assert "pkill" not in command and "killall" not in command
    assert fake.calls() == []


def test_dry_run_retry_prints_the_happy_path(fake, capsys):
    assert main(["retry", "--dry-run", "--", "experiment=demo"]) == 0
    commands = shlex.split(capsys.readouterr().out)
    assert commands[:8] == [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "describe",
        "my-pod",
        *SCOPE,
    ]
    run = commands[commands.index("--command") + 1]
    assert trainer_words(run)[-2:] == ["experiment=demo", "resume=auto"]
    assert fake.calls() == []


CREATE = ["create", "--accelerator-type", "v4-64", "--spot", "--project", "proj"]


def test_global_flags_before_the_command_and_from_the_environment(fake, capsys, monkeypatch):
    """``cambrian-pod --dry-run create ...`` and ``CAMBRIAN_POD_DRY_RUN=1 cambrian-pod create ...``
    print exactly what ``cambrian-pod create ... --dry-run`` prints (issue 17)."""
    assert main([*CREATE, "--dry-run"]) == 0
    expected = capsys.readouterr().out
    assert expected.startswith("gcloud compute tpus queued-resources create my-pod ")
    assert main(["--dry-run", *CREATE]) == 0
    assert capsys.readouterr().out == expected
    assert main(["--dry-run", "--project", "proj", *CREATE[:4], "--dry-run"]) == 0
    assert capsys.readouterr().out == expected
    monkeypatch.setenv("CAMBRIAN_POD_DRY_RUN", "1")
    assert main(CREATE) == 0
    assert capsys.readouterr().out == expected
    assert fake.calls() == []
    assert not (fake.home / ".cambrian").exists()

    # name and zone are global too; run keeps its overrides after '--'
    monkeypatch.delenv("CAMBRIAN_POD_DRY_RUN")
    where = ["--name", "other", "--zone", "europe-west4-a"]
    assert main(["stop", *where, "--dry-run"]) == 0
    expected = capsys.readouterr().out
    assert main([*where, "--dry-run", "stop"]) == 0
    assert capsys.readouterr().out == expected and "ssh other --zone europe-west4-a" in expected
    assert main(["run", "--dry-run", "--", "experiment=demo"]) == 0
    expected = capsys.readouterr().out
    assert main(["--dry-run", "run", "--", "experiment=demo", "--dry-run"]) == 0
    assert capsys.readouterr().out != expected  # after '--' it is an override for the trainer
    assert main(["--dry-run", "run", "--", "experiment=demo"]) == 0
    assert capsys.readouterr().out == expected
    assert fake.calls() == []


def test_global_flags_parse_the_same_on_either_side_of_the_command(fake):
    after = parse_args([*CREATE, "--name", "p2", "--zone", "z", "--dry-run"])
    for argv in (
        ["--name", "p2", "--zone", "z", "--dry-run", *CREATE],
        ["--zone", "z", *CREATE, "--name", "p2", "--dry-run"],
        ["--name", "p2", "--dry-run", *CREATE, "--name", "p2", "--zone", "z", "--dry-run"],
    ):
        assert parse_args(argv) == after, argv
    assert (after.name, after.zone, after.project, after.dry_run) == ("p2", "z", "proj", True)
    assert "before_name" not in vars(after)
    env = {"CAMBRIAN_POD_NAME": "env-pod", "CAMBRIAN_POD_ZONE": "z", "CAMBRIAN_POD_DRY_RUN": "1"}
    assert parse_args(CREATE, env) == parse_args([*CREATE, "--name", "env-pod", "--zone", "z"], env)
    assert parse_args(CREATE, env).dry_run is True
    for off in ("0", "false", "", "no"):
        assert parse_args(CREATE, {"CAMBRIAN_POD_DRY_RUN": off}).dry_run is False


def test_global_flags_in_both_places_must_agree(fake, capsys, monkeypatch):
    assert main(["--name", "a", "delete", "--name", "b", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--name is given before and after 'delete' with different values: 'a' and 'b'" in err
    assert main(["--zone", "z1", "--dry-run", "delete", "--zone", "z2"]) == 2
    assert "--zone is given before and after" in capsys.readouterr().err
    assert main(["--project", "p", "delete", "--project", "p", "--dry-run"]) == 0
    monkeypatch.setenv("CAMBRIAN_POD_DRY_RUN", "maybe")
    assert main(["delete"]) == 2
    assert "CAMBRIAN_POD_DRY_RUN='maybe'" in capsys.readouterr().err
    monkeypatch.setenv("CAMBRIAN_POD_DRY_RUN", "0")  # off: runs (against the fake)
    assert main(["delete", "--yes"]) == 0
    assert fake.verbs() == ["delete"]


def test_dry_run_before_the_command_through_the_entry_point(fake):
    """The user's command lines, as processes."""

    def pod(*argv, **env):
        result = subprocess.run(
            [sys.executable, "-m", "cambrian_train.pod", *argv],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    expected = pod(*CREATE, "--dry-run")
    assert expected.startswith("gcloud compute tpus queued-resources create my-pod ")
    assert pod("--dry-run", *CREATE) == expected
    assert pod(*CREATE, CAMBRIAN_POD_DRY_RUN="1") == expected
    assert fake.calls() == []


# --- wait ------------------------------------------------------------------------------------


def test_wait_polls_until_active(fake):
    fake.set(describe=["PROVISIONING", "PROVISIONING", "ACTIVE"])
    assert main(["wait", "--poll", "0"]) == 0
    describe = ["compute", "tpus", "queued-resources", "describe", "my-pod", *SCOPE]
    assert fake.calls() == [[*describe, "--format=value(state.state)"]] * 3


@pytest.mark.parametrize(
    ("states", "timeout", "message"),
    [
        (["PROVISIONING", "FAILED"], "60", "is FAILED"),
        (["SUSPENDED"], "60", "is SUSPENDED"),
        ([None], "60", "not found"),
        (["WAITING_FOR_RESOURCES"], "0", "still WAITING_FOR_RESOURCES after 0 s"),
    ],
)
def test_wait_fails_on_dead_states_and_timeout(fake, capsys, states, timeout, message):
    fake.set(describe=states)
    assert main(["wait", "--poll", "0", "--timeout", timeout]) == 3
    assert message in capsys.readouterr().err


# --- setup / logs / status / delete / stop argument lists ------------------------------------


def test_setup_from_git_records_options(fake):
    url = "https://github.com/me/cambrian train.git"
    assert main(["setup", "--repo-url", url, "--ref", "v1.0"]) == 0
    (call,) = fake.calls()
    assert call[:9] == [*TPU_SSH, "--worker=all", "--command"]
    command = call[9]
    assert f'git clone {shlex.quote(url)} "$HOME"/cambrian-train' in command
    assert 'git -C "$HOME"/cambrian-train fetch origin v1.0' in command
    assert 'python3 -m venv "$HOME"/.cambrian/venv' in command
    assert "pip install -e '.[tpu]'" in command
    recorded = json.loads((fake.home / ".cambrian" / "pod-my-pod.json").read_text())
    assert recorded["setup"]["repo_url"] == url and recorded["setup"]["ref"] == "v1.0"


def test_setup_from_source_copies_an_archive(fake, tmp_path):
    src = tmp_path / "src"
    for rel in ("setup.py", "pkg/mod.py", ".git/HEAD", "runs/x/log", "pkg/__pycache__/m.pyc"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    assert main(["setup", "--source", str(src), "--extras", ""]) == 0
    scp, ssh = fake.calls()
    archive = str(fake.home / ".cambrian" / "pod-my-pod-source.tar.gz")
    assert scp == [
        *["compute", "tpus", "tpu-vm", "scp", archive, "my-pod:/tmp/cambrian-pod-source.tar.gz"],
        *SCOPE,
        "--worker=all",
    ]
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["pkg/mod.py", "setup.py"]
    assert 'tar -xzf /tmp/cambrian-pod-source.tar.gz -C "$HOME"/cambrian-train' in ssh[-1]
    assert "pip install -e ." in ssh[-1] and "[tpu]" not in ssh[-1]
    assert main(["setup", "--source", str(tmp_path / "missing")]) == 2
    assert main(["setup", "--source", str(src), "--ref", "main"]) == 2


def test_logs_argument_lists(fake):
    assert main(["logs", "--worker", "all", "--lines", "20", "--follow"]) == 0
    assert main(["logs", "--session", "exp2"]) == 0
    first, second = fake.calls()
    assert first[:8] == [*TPU_SSH, "--worker=all"]
    assert 'tail -n 20 -F "$HOME/.cambrian"/cambrian.log | sed -u' in first[9]
    assert second[7] == "--worker=0"
    assert 'tail -n 100 "$HOME/.cambrian"/exp2.log' in second[9] and "sed" not in second[9]
    assert main(["logs", "--worker", "first"]) == 2
    assert main(["logs", "--session", "a b"]) == 2


def test_status_reports_every_worker(fake, capsys):
    lines = status_line(pid="12", session="yes", alive="yes") + status_line(
        exit_code="75", host="w-1", pid="13"
    )
    fake.set(
        describe=["ACTIVE"], ssh=[{"match": "cambrian-status", "replies": [{"stdout": lines}]}]
    )
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "my-pod (us-central2-b): ACTIVE" in out
    assert "w-0: running (pid 12); last exit code: -" in out
    assert "w-1: not running; last exit code: 75" in out
    assert fake.verbs() == ["describe", "ssh"]
    fake.set(describe=["SUSPENDED"])
    assert main(["status"]) == 0
    assert "SUSPENDED" in capsys.readouterr().out and fake.verbs() == ["describe"]


def test_delete_asks_unless_yes(fake, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert main(["delete"]) == 4
    assert fake.calls() == []
    assert main(["delete", "--yes", "--project", "proj"]) == 0
    assert fake.calls() == [
        [
            *["compute", "tpus", "queued-resources", "delete", "my-pod", *SCOPE],
            *["--project", "proj", "--force", "--quiet"],
        ]
    ]


def test_stop_prints_the_workers_reports(fake, capsys):
    report = "cambrian-stop host=w-0 pid=4242 result=stopped\n"
    fake.set(ssh=[{"match": 'kill -TERM -"$p"', "replies": [{"stdout": report}]}])
    assert main(["stop", "--grace", "3"]) == 0
    assert capsys.readouterr().out == report
    (command,) = fake.ssh_commands()
    assert "pkill" not in command and '"$i" -lt 30' in command


def test_gcloud_failure_and_usage_errors(fake, capsys, monkeypatch):
    fake.set(fail={"create": {"rc": 1, "stderr": "ERROR: QUOTA_EXCEEDED for v4 chips\n"}})
    assert main(["create", "--accelerator-type", "v4-64"]) == 1
    assert "QUOTA_EXCEEDED" in capsys.readouterr().err
    assert not (fake.home / ".cambrian" / "pod-my-pod.json").exists()
    fake.set()
    assert main(["create", "--accelerator-type", "v4-64", "--best-effort"]) == 0
    assert state.recorded_create("my-pod") == CreateOptions(
        "v4-64", "tpu-ubuntu2204-base", "best-effort"
    )
    assert main(["status", "--", "experiment=demo"]) == 2
    assert main(["run", "--env", "1BAD=x", "--", "experiment=demo"]) == 2
    assert main(["run", "--workdir", "relative/dir", "--", "experiment=demo"]) == 2
    monkeypatch.delenv("CAMBRIAN_POD_ZONE")
    assert main(["status"]) == 2
    assert "CAMBRIAN_POD_ZONE" in capsys.readouterr().err


def test_run_refuses_a_running_session(fake, capsys):
    refusal = "cambrian-pod: tmux session cambrian already runs on w-0; stop it or pass --force"
    fake.set(ssh=[{"match": "tmux new-session", "replies": [{"stderr": refusal, "rc": 4}]}])
    assert main(["run", "--", "experiment=demo"]) == 4
    assert "already runs on w-0" in capsys.readouterr().err


def test_module_entry_point(fake):
    result = subprocess.run(
        [sys.executable, "-m", "cambrian_train.pod", "delete", "--dry-run"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gcloud compute tpus queued-resources delete my-pod")


# --- retry -----------------------------------------------------------------------------------


def recorded_pod() -> None:
    """The options ``create --spot`` and ``setup --repo-url`` record (tested above)."""
    state.record("my-pod", "create", CreateOptions("v4-64", "tpu-ubuntu2204-base", "spot"))
    state.record("my-pod", "setup", SetupOptions(repo_url="https://example.com/c.git"))


def status_replies(*codes) -> list[dict]:
    """Status answers, one per poll: an exit code, or ``-`` for a worker still running."""
    lines = [status_line(c, "yes", "yes") if c == "-" else status_line(c) for c in codes]
    return [{"match": "cambrian-status", "replies": [{"stdout": line} for line in lines]}]


def test_retry_resumes_after_preemption_and_recreates_a_suspended_pod(fake):
    recorded_pod()
    fake.set(
        describe=["ACTIVE", "SUSPENDED"],
        on_create=["PROVISIONING", "ACTIVE"],
        ssh=status_replies("75", "0"),
    )
    assert main(["retry", "--poll", "0", "--", "experiment=demo", "name=a b"]) == 0
    assert fake.verbs() == [
        *["describe", "ssh", "ssh"],  # attempt 1: ACTIVE, run, exit 75
        *["describe", "delete", "create", "describe", "describe", "ssh"],  # SUSPENDED: re-create
        *["ssh", "ssh"],  # attempt 2: run, exit 0
    ]
    create = next(c for c in fake.calls() if c[3] == "create")
    assert create[-3:] == ["--runtime-version", "tpu-ubuntu2204-base", "--spot"]
    assert len(fake.ssh_commands("git clone https://example.com/c.git")) == 1
    runs = fake.ssh_commands("tmux new-session")
    assert len(runs) == 2
    for run in runs:
        assert trainer_words(run)[2:] == ["experiment=demo", "name=a b", "resume=auto"]
    assert "tmux kill-session" not in runs[0] and "tmux kill-session" in runs[1]


def test_retry_stops_on_another_exit_code(fake, capsys):
    fake.set(describe=["ACTIVE"], ssh=status_replies("-", "3"))
    assert main(["retry", "--poll", "0", "--", "experiment=demo"]) == 5
    assert "exited with 3" in capsys.readouterr().err
    assert len(fake.ssh_commands("tmux new-session")) == 1
    assert len(fake.ssh_commands("cambrian-status")) == 2


def test_retry_respects_max_attempts(fake, capsys):
    fake.set(describe=["ACTIVE"], ssh=status_replies("75"))
    assert main(["retry", "--poll", "0", "--max-attempts", "2", "--", "experiment=demo"]) == 6
    assert "gave up after 2 attempts" in capsys.readouterr().err
    assert len(fake.ssh_commands("tmux new-session")) == 2


def test_retry_recreates_a_vanished_node(fake):
    recorded_pod()
    lost = {"stderr": "ssh: connect to host: Connection refused\n", "rc": 255}
    replies = [lost, {"stdout": status_line("0")}]
    fake.set(
        describe=["ACTIVE", None],
        ssh=[{"match": "cambrian-status", "replies": replies}],
    )
    assert main(["retry", "--poll", "0", "--", "experiment=demo"]) == 0
    assert fake.verbs() == [
        *["describe", "ssh", "ssh", "describe"],  # run, status fails, node gone
        *["describe", "create", "describe", "ssh"],  # gone: create (nothing to delete), setup
        *["ssh", "ssh"],
    ]


def test_retry_refuses_a_resume_override_and_needs_recorded_options(fake, capsys):
    assert main(["retry", "--", "experiment=demo", "resume=/ckpt"]) == 2
    fake.set(describe=[None])
    assert main(["retry", "--poll", "0", "--", "experiment=demo"]) == 2
    assert "run `cambrian-pod create` once first" in capsys.readouterr().err
    assert fake.verbs() == ["describe"]


def test_judge_outcomes():
    def w(exit_code=None, session=False, alive=False):
        return WorkerStatus("h", session, 1, alive, exit_code)

    assert judge([w(0), w(0)]).kind == "done"
    assert judge([w(0), w(session=True, alive=True)]) is None
    assert judge([w(75), w(0)]).kind == "resume"
    failed = judge([w(2), w(session=True, alive=True)])
    assert (failed.kind, failed.exit_code, failed.running) == ("failed", 2, True)
    assert judge([w(None), w(75)]).kind == "resume"  # a worker lost its process
    assert judge([]).kind == "resume"


# --- the worker shell, run locally ------------------------------------------------------------


def fake_trainer(root: Path, on_term: str) -> Path:
    """A venv whose cambrian-train prints its arguments and env, then loops until signalled."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    trainer = venv / "bin" / "cambrian-train"
    trainer.write_text(
        "#!/usr/bin/env bash\n"
        f"trap '{on_term}' TERM\n"
        'for a in "$@"; do echo "arg: $a"; done\n'
        'echo "env: PJRT_DEVICE=$PJRT_DEVICE EXTRA=$EXTRA cwd=$(pwd)"\n'
        "while true; do sleep 0.05; done\n"
    )
    trainer.chmod(0o755)
    return venv


def wait_for(path: Path, text: str = "", timeout: float = 10.0) -> str:
    """``path``'s content once it exists, is not empty and contains ``text``."""
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip() or text not in path.read_text():
        assert time.monotonic() < deadline, f"{path} did not appear (with {text!r})"
        time.sleep(0.02)
    return path.read_text().strip()


def wait_started(files: Path, session: str) -> int:
    """The trainer's pid, once it has installed its TERM handler (it then prints ``env:``)."""
    pid = int(wait_for(files / f"{session}.pid"))
    wait_for(files / f"{session}.log", "env: ")
    return pid


def sh(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout


@needs_setsid
def test_wrapper_records_pid_log_and_exit_and_stop_uses_the_process_group(fake, tmp_path):
    work = tmp_path / "work dir"
    work.mkdir()
    override = 'name=it\'s "x" $HOME'
    spec = RunSpec(
        session="t1",
        workdir=str(work),
        venv=str(fake_trainer(tmp_path, "echo got TERM; exit 75")),
        env={"EXTRA": "a b"},
        overrides=(override,),
    )
    files = fake.home / ".cambrian"
    files.mkdir()
    wrapper = subprocess.Popen(["bash", "-c", remote.wrapper_script(spec)])
    try:
        pid = wait_started(files, "t1")
        assert os.getpgid(pid) == pid  # its own process group: what stop signals
        (worker,) = remote.parse_status(sh(remote.status_command("t1")))
        assert (worker.alive, worker.pid, worker.exit_code) == (True, pid, None)
        assert sh(remote.stop_command("t1", grace=5)).endswith(f"pid={pid} result=stopped\n")
        assert wait_for(files / "t1.exit") == "75"
    finally:
        wrapper.wait(timeout=10)
    log = (files / "t1.log").read_text()
    assert "arg: backend=xla_spmd\n" in log and f"arg: {override}\n" in log
    assert f"env: PJRT_DEVICE=TPU EXTRA=a b cwd={work}" in log and "got TERM" in log
    (worker,) = remote.parse_status(sh(remote.status_command("t1")))
    assert (worker.alive, worker.exit_code, worker.lost) == (False, 75, False)
    assert "result=not-running" in sh(remote.stop_command("t1", grace=5))


@needs_setsid
def test_wrapper_records_a_missing_workdir_as_exit_code_1(fake, tmp_path):
    spec = RunSpec(session="t3", workdir=str(tmp_path / "missing"), venv=str(tmp_path))
    (fake.home / ".cambrian").mkdir()
    subprocess.run(["bash", "-c", remote.wrapper_script(spec)], check=False, timeout=10)
    assert (fake.home / ".cambrian" / "t3.exit").read_text() == "1\n"
    assert (
        f"no directory {tmp_path / 'missing'}" in (fake.home / ".cambrian" / "t3.log").read_text()
    )
    assert not (fake.home / ".cambrian" / "t3.pid").exists()


@needs_setsid
def test_stop_kills_after_the_grace_period(fake, tmp_path):
    spec = RunSpec(session="t2", workdir=str(tmp_path), venv=str(fake_trainer(tmp_path, "")))
    (fake.home / ".cambrian").mkdir()
    wrapper = subprocess.Popen(["bash", "-c", remote.wrapper_script(spec)])
    try:
        wait_started(fake.home / ".cambrian", "t2")
        assert sh(remote.stop_command("t2", grace=1)).endswith("result=killed\n")
    finally:
        wrapper.wait(timeout=10)
    assert wait_for(fake.home / ".cambrian" / "t2.exit") == str(128 + 9)


@needs_setsid
@needs_tmux
def test_end_to_end_run_status_stop_in_tmux(fake, tmp_path, capsys):
    venv = fake_trainer(tmp_path, "exit 75")
    fake.set(describe=["ACTIVE"], exec_ssh=True)
    layout = ["--workdir", str(tmp_path), "--venv", str(venv)]
    try:
        assert main(["run", *layout, "--", "experiment=demo"]) == 0
        wait_started(fake.home / ".cambrian", "cambrian")
        assert main(["run", *layout, "--", "experiment=demo"]) == 4
        assert main(["status"]) == 0
        assert "running (pid" in capsys.readouterr().out
        assert main(["stop", "--grace", "5"]) == 0
        assert "result=stopped" in capsys.readouterr().out
        assert wait_for(fake.home / ".cambrian" / "cambrian.exit") == "75"
        assert main(["status"]) == 0
        assert "last exit code: 75" in capsys.readouterr().out
    finally:
        subprocess.run(["tmux", "kill-server"], capture_output=True)


# --- the launch scripts ----------------------------------------------------------------------


def test_tpu_pod_script_is_cambrian_pod_run(fake, monkeypatch):
    monkeypatch.setenv("TPU", "other-pod")
    monkeypatch.setenv("PYTHON", sys.executable)
    subprocess.run(["bash", str(REPO / "scripts" / "tpu_pod.sh"), "experiment=demo"], check=True)
    (call,) = fake.calls()
    assert call[4] == "other-pod" and call[5:7] == SCOPE
    assert trainer_words(call[-1])[1:] == ["backend=xla_spmd", "experiment=demo"]


@pytest.mark.parametrize(
    ("restarts", "srun_exit", "expected"), [("0", "0", 0), ("1", "75", 0), ("2", "1", 1)]
)
def test_slurm_script_requeues_on_75_and_resumes(tmp_path, restarts, srun_exit, expected):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    fakes = {
        "srun": f'echo "srun $*" >> {log}; exit {srun_exit}',
        "scontrol": f'if [ "$1" = show ]; then echo node-a; echo node-b; '
        f'else echo "scontrol $*" >> {log}; fi',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "77",
        "SLURM_RESTART_COUNT": restarts,
    }
    script = str(REPO / "scripts" / "slurm.sbatch")
    done = subprocess.run(["bash", script, "experiment=demo"], env=env, capture_output=True)
    assert done.returncode == expected, done.stderr
    calls = log.read_text().splitlines()
    resume = " resume=auto" if restarts != "0" else ""
    assert calls[0].endswith(f'scripts/torchrun.sh "$@" bash experiment=demo{resume}')
    assert calls[1:] == (["scontrol requeue 77"] if srun_exit == "75" else [])
